//! Phones behind NAT through the core: a REGISTER through a NAT is reached at its source,
//! our Record-Route carries the flow so the ACK and BYE reach the phone too, a caller behind
//! NAT has its Contact fixed, and a third-party registration still reaches its Contact.

use super::tests::{addr, core, method, send, sent_to, status, CALLER, T0};
use crate::sip::write::{finish, header, response_head};
use crate::sip::{HeaderName, Message};

/// The phone's private address (its Via, its Contact) and the NAT's public mapping.
const PRIVATE: &str = "10.0.0.5:5060";
const MAPPED: &str = "203.0.113.7:40000";

fn register_behind_nat(c: &mut super::Core, contact_params: &str) {
    let reg = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {PRIVATE};branch=z9hG4bKnatreg;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: reg-nat\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@{PRIVATE}>{contact_params}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(c, reg.as_bytes(), MAPPED, 0, T0);
    assert_eq!(
        out[0].0,
        addr(MAPPED),
        "the 200 goes back through the NAT (rport)"
    );
    assert_eq!(status(&out[0].1), 200);
    // The 200 lists the Contact as the phone registered it.
    let ok = Message::parse(&out[0].1).unwrap();
    let contact = String::from_utf8_lossy(ok.header(HeaderName::Contact).unwrap()).into_owned();
    assert!(contact.contains(PRIVATE), "{contact}");
}

fn invite_from(via: &str, src_contact: &str, branch: &str) -> Vec<u8> {
    format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch={branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: call-{branch}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{src_contact}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The phone's 200 to the INVITE it received, with its private Contact.
fn phone_ok(inv: &[u8]) -> Vec<u8> {
    let m = Message::parse(inv).unwrap();
    let mut out = Vec::new();
    response_head(&mut out, &m, 200, b"OK", Some(b"ph"), None);
    for rr in m.header_all(HeaderName::RecordRoute) {
        header(&mut out, "Record-Route", rr);
    }
    header(
        &mut out,
        "Contact",
        format!("<sip:bob@{PRIVATE}>").as_bytes(),
    );
    finish(&mut out, b"");
    out
}

fn in_dialog(method: &str, ruri: &str, via: &str, route: &str, from: &str, to: &str) -> Vec<u8> {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{method}x;rport\r\n\
         Route: {route}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: call-z9hG4bKnat1\r\nCSeq: {n} {method}\r\nContent-Length: 0\r\n\r\n",
        n = if method == "ACK" { 1 } else { 2 }
    )
    .into_bytes()
}

#[test]
fn a_phone_behind_nat_gets_the_invite_ack_and_bye_at_its_mapped_address() {
    let mut c = core();
    register_behind_nat(&mut c, "");
    let out = send(
        &mut c,
        &invite_from(CALLER, CALLER, "z9hG4bKnat1"),
        CALLER,
        0,
        T0 + 10,
    );
    let inv = sent_to(&out, MAPPED);
    assert_eq!(
        inv.len(),
        1,
        "the INVITE goes to the NAT mapping, not {PRIVATE}"
    );
    assert!(sent_to(&out, PRIVATE).is_empty());
    let fwd = Message::parse(&inv[0]).unwrap();
    // The Request-URI stays the Contact the phone registered (it recognises it as its own).
    assert_eq!(
        fwd.request_uri_bytes(),
        Some(format!("sip:bob@{PRIVATE}").as_bytes())
    );
    let rr = String::from_utf8_lossy(fwd.header(HeaderName::RecordRoute).unwrap()).into_owned();
    assert!(rr.contains(&format!(";ft={MAPPED}")), "flow token: {rr}");
    // The phone answers through the NAT; the caller gets it.
    let out = send(&mut c, &phone_ok(&inv[0]), MAPPED, 0, T0 + 20);
    let ok = sent_to(&out, CALLER);
    assert_eq!(status(&ok[0]), 200);
    // The caller's route set is the Record-Route; its remote target the phone's private
    // Contact. ACK and BYE still reach the phone, at the mapping.
    let (alice, bob) = ("<sip:alice@localhost>;tag=a1", "<sip:bob@localhost>;tag=ph");
    let ruri = format!("sip:bob@{PRIVATE}");
    for (m, t) in [("ACK", T0 + 30), ("BYE", T0 + 40)] {
        let req = in_dialog(m, &ruri, CALLER, &rr, alice, bob);
        let out = send(&mut c, &req, CALLER, 0, t);
        let at_phone = sent_to(&out, MAPPED);
        assert_eq!(at_phone.len(), 1, "{m} through the NAT");
        assert_eq!(method(&at_phone[0]), m.as_bytes());
        assert!(sent_to(&out, PRIVATE).is_empty(), "{m}");
    }
    // The phone hangs up itself: its BYE comes from the flow and goes on to the caller.
    let bye = in_dialog(
        "BYE",
        &format!("sip:alice@{CALLER}"),
        PRIVATE,
        &rr,
        bob,
        alice,
    );
    let out = send(&mut c, &bye, MAPPED, 0, T0 + 50);
    let at_caller = sent_to(&out, CALLER);
    assert_eq!(at_caller.len(), 1, "the phone's BYE reaches the caller");
    assert_eq!(method(&at_caller[0]), b"BYE");
}

#[test]
fn a_caller_behind_nat_has_its_contact_fixed() {
    let mut c = core();
    super::tests::register(&mut c, "bob", "192.0.2.20:5062");
    let out = send(
        &mut c,
        &invite_from(PRIVATE, PRIVATE, "z9hG4bKnat2"),
        MAPPED,
        0,
        T0 + 10,
    );
    let fwd = sent_to(&out, "192.0.2.20:5062");
    assert_eq!(fwd.len(), 1);
    let m = Message::parse(&fwd[0]).unwrap();
    assert_eq!(
        m.header(HeaderName::Contact),
        Some(format!("<sip:alice@{MAPPED}>").as_bytes()),
        "the callee's in-dialog requests go to the caller's NAT mapping"
    );
    // The caller's Via carries where it really is (received, rport).
    let via = m.vias().nth(1).unwrap().unwrap();
    assert_eq!(via.received(), Some(&b"203.0.113.7"[..]));
    assert_eq!(via.rport(), Some(Some(40000)));
    // A caller not behind NAT keeps its Contact byte for byte.
    let out = send(
        &mut c,
        &invite_from(CALLER, CALLER, "z9hG4bKnat3"),
        CALLER,
        0,
        T0 + 20,
    );
    let m = Message::parse(&sent_to(&out, "192.0.2.20:5062")[0])
        .unwrap()
        .header(HeaderName::Contact)
        .map(<[u8]>::to_vec);
    assert_eq!(m, Some(format!("<sip:alice@{CALLER}>").into_bytes()));
}

#[test]
fn a_third_party_registration_reaches_its_contact_and_an_outbound_flow_its_source() {
    let mut c = core();
    // Registered by a tool at 198.51.100.9 for a phone at 192.0.2.44: Via matches the source.
    let reg =
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK3p\r\n\
         Max-Forwards: 70\r\nFrom: <sip:admin@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: reg-3p\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@192.0.2.44:5070>\r\n\
         Content-Length: 0\r\n\r\n";
    let out = send(&mut c, reg.as_bytes(), "198.51.100.9:5060", 0, T0);
    assert_eq!(status(&out[0].1), 200);
    let out = send(
        &mut c,
        &invite_from(CALLER, CALLER, "z9hG4bK3p1"),
        CALLER,
        0,
        T0 + 1,
    );
    assert_eq!(sent_to(&out, "192.0.2.44:5070").len(), 1);
    // An RFC 5626 outbound registration (instance + reg-id, no NAT seen) uses its flow.
    let mut c = core();
    let reg = "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKob;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: reg-ob\r\nCSeq: 1 REGISTER\r\nSupported: outbound\r\n\
         Contact: <sip:bob@192.0.2.50:5090;ob>;+sip.instance=\"<urn:uuid:1>\";reg-id=1\r\n\
         Content-Length: 0\r\n\r\n";
    let out = send(&mut c, reg.as_bytes(), "192.0.2.50:5060", 0, T0);
    assert_eq!(status(&out[0].1), 200);
    let out = send(
        &mut c,
        &invite_from(CALLER, CALLER, "z9hG4bKob1"),
        CALLER,
        0,
        T0 + 1,
    );
    assert_eq!(sent_to(&out, "192.0.2.50:5060").len(), 1, "over the flow");
    assert!(sent_to(&out, "192.0.2.50:5090").is_empty());
}
