//! Registrar behaviour tests: real REGISTER requests parsed with `Message::parse`, explicit
//! times, and the responses parsed back to check status, contacts and expiries.

use std::net::SocketAddr;

use super::*;
use crate::sip::{HeaderName, Message};

const T0: u64 = 1_700_000_000_000;
const AOR: &[u8] = b"sip:alice@example.com";

fn src() -> SocketAddr {
    "192.0.2.33:5060".parse().unwrap()
}

/// A REGISTER for alice with the given Call-ID, CSeq and extra header lines.
fn register(call_id: &str, cseq: u32, lines: &[&str]) -> Vec<u8> {
    register_to("<sip:alice@example.com>", call_id, cseq, lines)
}

fn register_to(to: &str, call_id: &str, cseq: u32, lines: &[&str]) -> Vec<u8> {
    let mut s = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.33:5060;branch=z9hG4bK{cseq}x\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=f1\r\n\
         To: {to}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n"
    );
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s.into_bytes()
}

struct Answer {
    outcome: RegisterOutcome,
    raw: Vec<u8>,
}

impl Answer {
    fn msg(&self) -> Message<'_> {
        Message::parse(&self.raw).expect("response parses")
    }
    fn status(&self) -> u16 {
        self.msg().status().unwrap()
    }
    /// (URI, expires, q) of every Contact.
    fn contacts(&self) -> Vec<(String, u32, Option<u16>)> {
        let msg = self.msg();
        msg.contacts()
            .map(|c| {
                let c = c.unwrap();
                (
                    String::from_utf8(c.uri_raw.to_vec()).unwrap(),
                    c.expires().expect("every contact has expires"),
                    c.q(),
                )
            })
            .collect()
    }
    fn header(&self, name: HeaderName) -> Option<String> {
        self.msg()
            .header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

fn handle_from(reg: &mut Registrar, raw: &[u8], now: u64, source: SocketAddr) -> Answer {
    let req = Message::parse(raw).expect("request parses");
    req.validate().expect("request is valid");
    let ctx = ResponseCtx {
        to_tag: b"srv1",
        via_fixup: None,
    };
    let mut out = Vec::new();
    let outcome = reg.handle_register(&req, source, now, &ctx, &mut out);
    let answer = Answer { outcome, raw: out };
    assert_eq!(answer.status(), outcome.status);
    answer
}

fn handle(reg: &mut Registrar, raw: &[u8], now: u64) -> Answer {
    handle_from(reg, raw, now, src())
}

fn uris(reg: &Registrar, now: u64) -> Vec<String> {
    reg.lookup(AOR, now)
        .map(|b| String::from_utf8(b.contact_uri().to_vec()).unwrap())
        .collect()
}

fn registrar() -> Registrar {
    Registrar::new(RegistrarConfig::default())
}

#[test]
fn adds_a_binding_and_lists_it_with_the_default_expiry() {
    let mut reg = registrar();
    let a = handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:alice@192.0.2.33:5060>"]),
        T0,
    );
    assert_eq!(a.status(), 200);
    assert_eq!(a.outcome.added, 1);
    assert_eq!(a.outcome.bindings, 1);
    assert_eq!(
        a.contacts(),
        vec![("sip:alice@192.0.2.33:5060".into(), 3600, None)]
    );
    assert!(a.header(HeaderName::To).unwrap().ends_with(";tag=srv1"));
    assert_eq!(reg.aor_count(), 1);
    assert_eq!(reg.binding_count(), 1);
    let b: Vec<_> = reg.lookup(AOR, T0).collect();
    assert_eq!(b[0].expires_at_ms(), T0 + 3_600_000);
    assert_eq!(b[0].call_id(), b"c1");
    assert_eq!(b[0].cseq(), 1);
}

#[test]
fn expires_header_applies_and_the_contact_parameter_wins() {
    let mut reg = registrar();
    let a = handle(
        &mut reg,
        &register(
            "c1",
            1,
            &[
                "Contact: <sip:a@192.0.2.1>, <sip:b@192.0.2.1>;expires=120",
                "Expires: 300",
            ],
        ),
        T0,
    );
    assert_eq!(
        a.contacts(),
        vec![
            ("sip:a@192.0.2.1".into(), 300, None),
            ("sip:b@192.0.2.1".into(), 120, None)
        ]
    );
}

#[test]
fn non_zero_expiry_below_minimum_is_423_with_min_expires() {
    let mut reg = registrar();
    for lines in [
        &["Contact: <sip:a@192.0.2.1>;expires=59"][..],
        &["Contact: <sip:a@192.0.2.1>", "Expires: 1"][..],
    ] {
        let a = handle(&mut reg, &register("c1", 1, lines), T0);
        assert_eq!(a.status(), 423);
        assert_eq!(a.outcome.error, Some(RegisterError::IntervalTooBrief));
        assert_eq!(a.header(HeaderName::MinExpires).as_deref(), Some("60"));
        assert_eq!(reg.binding_count(), 0);
    }
    // Exactly the minimum is fine.
    let a = handle(
        &mut reg,
        &register("c1", 2, &["Contact: <sip:a@192.0.2.1>;expires=60"]),
        T0,
    );
    assert_eq!(a.status(), 200);
}

#[test]
fn expiry_above_maximum_is_shortened() {
    let mut reg = registrar();
    let a = handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>;expires=99999"]),
        T0,
    );
    assert_eq!(a.contacts()[0].1, 7200);
    assert_eq!(
        reg.lookup(AOR, T0).next().unwrap().expires_at_ms(),
        T0 + 7_200_000
    );
}

#[test]
fn refresh_matches_by_uri_comparison() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register(
            "c1",
            1,
            &["Contact: <sip:alice@pc33.example.com;transport=udp>;expires=600"],
        ),
        T0,
    );
    // Host and parameter names compare case-insensitively (§19.1.4): the same binding.
    let a = handle(
        &mut reg,
        &register(
            "c1",
            2,
            &["Contact: <sip:alice@PC33.Example.COM;Transport=udp>;expires=1200"],
        ),
        T0 + 100_000,
    );
    assert_eq!((a.outcome.added, a.outcome.refreshed), (0, 1));
    assert_eq!(reg.binding_count(), 1);
    assert_eq!(a.contacts()[0].1, 1200);
    // The stored URI is the latest as written.
    assert_eq!(
        uris(&reg, T0 + 100_000),
        vec!["sip:alice@PC33.Example.COM;Transport=udp"]
    );
    // The user part is case-sensitive: a different binding.
    let a = handle(
        &mut reg,
        &register(
            "c1",
            3,
            &["Contact: <sip:ALICE@pc33.example.com;transport=udp>"],
        ),
        T0 + 100_000,
    );
    assert_eq!(a.outcome.added, 1);
    assert_eq!(reg.binding_count(), 2);
}

#[test]
fn expires_zero_removes_the_binding_and_the_empty_aor() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register(
            "c1",
            1,
            &["Contact: <sip:a@192.0.2.1>, <sip:b@192.0.2.1>, <sip:c@192.0.2.1>"],
        ),
        T0,
    );
    let a = handle(
        &mut reg,
        &register("c1", 2, &["Contact: <sip:b@192.0.2.1>;expires=0"]),
        T0,
    );
    assert_eq!(a.outcome.removed, 1);
    assert_eq!(uris(&reg, T0), vec!["sip:a@192.0.2.1", "sip:c@192.0.2.1"]);
    let a = handle(
        &mut reg,
        &register(
            "c1",
            3,
            &[
                "Contact: <sip:a@192.0.2.1>, <sip:c@192.0.2.1>",
                "Expires: 0",
            ],
        ),
        T0,
    );
    assert_eq!(a.outcome.removed, 2);
    assert!(a.contacts().is_empty());
    assert_eq!(reg.aor_count(), 0);
    assert_eq!(reg.binding_count(), 0);
    assert_eq!(reg.next_timeout(), None);
}

#[test]
fn removing_an_unknown_contact_is_a_no_op() {
    let mut reg = registrar();
    let a = handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>;expires=0"]),
        T0,
    );
    assert_eq!(a.status(), 200);
    assert_eq!(a.outcome.added + a.outcome.removed, 0);
    assert_eq!(reg.aor_count(), 0);
}

#[test]
fn star_with_expires_zero_removes_all() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>, <sip:b@192.0.2.1>"]),
        T0,
    );
    handle(
        &mut reg,
        &register("other", 1, &["Contact: <sip:c@192.0.2.1>"]),
        T0,
    );
    let a = handle(
        &mut reg,
        &register("c1", 2, &["Contact: *", "Expires: 0"]),
        T0,
    );
    assert_eq!(a.status(), 200);
    assert_eq!(a.outcome.removed, 3);
    assert!(a.contacts().is_empty());
    assert_eq!(reg.aor_count(), 0);
    assert_eq!(reg.binding_count(), 0);
}

#[test]
fn star_misuse_is_400() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>"]),
        T0,
    );
    for lines in [
        &["Contact: *"][..],
        &["Contact: *", "Expires: 3600"][..],
        &["Contact: *", "Contact: <sip:b@192.0.2.1>", "Expires: 0"][..],
    ] {
        let a = handle(&mut reg, &register("c2", 1, lines), T0);
        assert_eq!(a.status(), 400);
        assert_eq!(a.outcome.error, Some(RegisterError::BadWildcard));
        assert_eq!(reg.binding_count(), 1);
    }
}

#[test]
fn star_with_an_old_cseq_of_the_same_call_id_fails_and_keeps_everything() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 5, &["Contact: <sip:a@192.0.2.1>"]),
        T0,
    );
    let star = String::from_utf8(register("c1", 5, &["Contact: *", "Expires: 0"]))
        .unwrap()
        .replace("branch=z9hG4bK5x", "branch=z9hG4bKstar");
    let a = handle(&mut reg, star.as_bytes(), T0);
    assert_eq!(a.status(), 500);
    assert_eq!(reg.binding_count(), 1);
}

#[test]
fn register_without_contact_lists_current_bindings() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register(
            "c1",
            1,
            &["Contact: <sip:a@192.0.2.1>;q=0.5, <sip:b@192.0.2.1>;expires=600"],
        ),
        T0,
    );
    let a = handle(&mut reg, &register("c9", 1, &[]), T0 + 100_500);
    assert_eq!(a.status(), 200);
    assert_eq!(
        a.contacts(),
        vec![
            ("sip:a@192.0.2.1".into(), 3500, Some(500)),
            ("sip:b@192.0.2.1".into(), 500, None)
        ]
    );
    assert_eq!(reg.binding_count(), 2);
    // An unknown AOR lists nothing.
    let a = handle(
        &mut reg,
        &register_to("<sip:bob@example.com>", "c9", 2, &[]),
        T0,
    );
    assert_eq!(a.status(), 200);
    assert!(a.contacts().is_empty());
}

#[test]
fn same_call_id_with_cseq_not_higher_is_500_and_changes_nothing() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 10, &["Contact: <sip:a@192.0.2.1>;expires=600"]),
        T0,
    );
    for cseq in [10, 9] {
        // One new contact and one stale refresh: the whole request fails. A new request has
        // a new branch (an equal branch would make it a retransmission).
        let raw = register(
            "c1",
            cseq,
            &["Contact: <sip:new@192.0.2.1>, <sip:a@192.0.2.1>;expires=3600"],
        );
        let raw = String::from_utf8(raw)
            .unwrap()
            .replace(&format!("branch=z9hG4bK{cseq}x"), "branch=z9hG4bKnew");
        let a = handle(&mut reg, raw.as_bytes(), T0);
        assert_eq!(a.status(), 500);
        assert_eq!(a.outcome.error, Some(RegisterError::OutOfOrder));
        assert_eq!(uris(&reg, T0), vec!["sip:a@192.0.2.1"]);
        let b = reg.lookup(AOR, T0).next().unwrap();
        assert_eq!((b.cseq(), b.expires_at_ms()), (10, T0 + 600_000));
    }
    // A removal with a stale CSeq fails too.
    let a = handle(
        &mut reg,
        &register("c1", 3, &["Contact: <sip:a@192.0.2.1>;expires=0"]),
        T0,
    );
    assert_eq!(a.status(), 500);
    assert_eq!(reg.binding_count(), 1);
}

#[test]
fn a_retransmission_gets_200_with_the_current_bindings_and_changes_nothing() {
    let mut reg = registrar();
    let first = register("c1", 10, &["Contact: <sip:a@192.0.2.1>;expires=600"]);
    assert_eq!(handle(&mut reg, &first, T0).status(), 200);
    // The same bytes again, 2 s later (the 200 was lost): same branch, Call-ID and CSeq.
    let a = handle(&mut reg, &first, T0 + 2_000);
    assert_eq!(a.status(), 200);
    assert_eq!(a.outcome.refreshed + a.outcome.added, 0);
    assert_eq!(
        a.contacts(),
        vec![("sip:a@192.0.2.1".to_string(), 598, None)]
    );
    let b = reg.lookup(AOR, T0).next().unwrap();
    assert_eq!(
        b.expires_at_ms(),
        T0 + 600_000,
        "not refreshed by the retransmission"
    );
}

#[test]
fn other_call_id_updates_whatever_its_cseq() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 10, &["Contact: <sip:a@192.0.2.1>;expires=600"]),
        T0,
    );
    let a = handle(
        &mut reg,
        &register("c2", 1, &["Contact: <sip:a@192.0.2.1>;expires=900"]),
        T0,
    );
    assert_eq!((a.status(), a.outcome.refreshed), (200, 1));
    let b = reg.lookup(AOR, T0).next().unwrap();
    assert_eq!((b.call_id(), b.cseq()), (&b"c2"[..], 1));
    assert_eq!(b.expires_at_ms(), T0 + 900_000);
}

#[test]
fn q_values_are_stored_and_reported() {
    let mut reg = registrar();
    let a = handle(
        &mut reg,
        &register(
            "c1",
            1,
            &["Contact: <sip:a@192.0.2.1>;q=0.25, <sip:b@192.0.2.1>;q=1.0, <sip:c@192.0.2.1>;q=0"],
        ),
        T0,
    );
    assert_eq!(
        a.contacts().into_iter().map(|c| c.2).collect::<Vec<_>>(),
        vec![Some(250), None, Some(0)]
    );
    let qs: Vec<_> = reg.lookup(AOR, T0).map(|b| b.q()).collect();
    assert_eq!(qs, vec![250, 1000, 0]);
}

#[test]
fn malformed_contact_parameters_are_400() {
    let mut reg = registrar();
    for c in [
        "Contact: <sip:a@192.0.2.1>;q=2",
        "Contact: <sip:a@192.0.2.1>;expires=soon",
        "Contact: <sip:a@192.0.2.1>;expires",
    ] {
        let a = handle(&mut reg, &register("c1", 1, &[c]), T0);
        assert_eq!(a.status(), 400, "{c}");
        assert_eq!(a.outcome.error, Some(RegisterError::BadContact));
    }
    assert_eq!(reg.binding_count(), 0);
}

#[test]
fn malformed_contact_uris_are_bad_contacts_even_without_validation() {
    // The registrar reads contacts with their URIs unchecked and parses each URI once; a bad
    // one must still be refused (validation also refuses it, but the registrar must not
    // depend on that).
    let mut reg = registrar();
    for c in [
        "Contact: <sip:a@[::1>",
        "Contact: <sip:a@192.0.2.1>, <sip:b@bad..host>",
    ] {
        let raw = register("c1", 1, &[c]);
        let req = Message::parse(&raw).unwrap();
        assert!(req.validate().is_err(), "{c}");
        let ctx = ResponseCtx {
            to_tag: b"srv1",
            via_fixup: None,
        };
        let mut out = Vec::new();
        let outcome = reg.handle_register(
            &req,
            "192.0.2.9:5060".parse::<std::net::SocketAddr>().unwrap(),
            T0,
            &ctx,
            &mut out,
        );
        assert_eq!(outcome.error, Some(RegisterError::BadContact), "{c}");
    }
    assert_eq!(reg.binding_count(), 0);
}

#[test]
fn too_many_contacts_is_503_and_changes_nothing() {
    let mut reg = Registrar::new(RegistrarConfig {
        max_contacts_per_aor: 2,
        ..RegistrarConfig::default()
    });
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>, <sip:b@192.0.2.1>"]),
        T0,
    );
    let a = handle(
        &mut reg,
        &register("c1", 2, &["Contact: <sip:b@192.0.2.1>, <sip:c@192.0.2.1>"]),
        T0,
    );
    assert_eq!(a.status(), 503);
    assert_eq!(a.msg().reason(), Some(&b"Too Many Registered Contacts"[..]));
    assert_eq!(a.outcome.error, Some(RegisterError::TooManyContacts));
    assert_eq!(uris(&reg, T0), vec!["sip:a@192.0.2.1", "sip:b@192.0.2.1"]);
    // Refreshing at the limit is fine, and so is replacing one contact by another.
    let a = handle(
        &mut reg,
        &register("c1", 3, &["Contact: <sip:a@192.0.2.1>, <sip:b@192.0.2.1>"]),
        T0,
    );
    assert_eq!(a.status(), 200);
    let a = handle(
        &mut reg,
        &register(
            "c1",
            4,
            &["Contact: <sip:b@192.0.2.1>;expires=0, <sip:c@192.0.2.1>"],
        ),
        T0,
    );
    assert_eq!(a.status(), 200);
    assert_eq!(uris(&reg, T0), vec!["sip:a@192.0.2.1", "sip:c@192.0.2.1"]);
}

#[test]
fn path_is_stored_in_order_and_echoed() {
    let mut reg = registrar();
    let a = handle(
        &mut reg,
        &register(
            "c1",
            1,
            &[
                "Path: <sip:edge1.example.net;lr>, <sip:edge2.example.net;lr>",
                "Path: <sip:core.example.net;lr>",
                "Supported: path",
                "Contact: <sip:a@192.0.2.1>",
            ],
        ),
        T0,
    );
    let paths: Vec<_> = a
        .msg()
        .header_all(HeaderName::Path)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(
        paths,
        vec![
            "<sip:edge1.example.net;lr>, <sip:edge2.example.net;lr>",
            "<sip:core.example.net;lr>"
        ]
    );
    let b = reg.lookup(AOR, T0).next().unwrap();
    assert_eq!(
        b.paths().collect::<Vec<_>>(),
        vec![
            &b"<sip:edge1.example.net;lr>"[..],
            b"<sip:edge2.example.net;lr>",
            b"<sip:core.example.net;lr>"
        ]
    );
}

#[test]
fn instance_and_reg_id_identify_a_flow() {
    let mut reg = registrar();
    let inst = "+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"";
    let a = handle(
        &mut reg,
        &register(
            "c1",
            1,
            &[&format!(
                "Contact: <sip:line1@192.0.2.2;transport=tcp>;reg-id=1;{inst}"
            )],
        ),
        T0,
    );
    assert_eq!(a.status(), 200);
    let reply_contact = a.header(HeaderName::Contact).unwrap();
    assert!(reply_contact.contains(inst) && reply_contact.contains("reg-id=1"));
    // Same instance and reg-id from a new address (another Call-ID, after a reboot): replaces.
    let a = handle(
        &mut reg,
        &register(
            "c2",
            1,
            &[&format!(
                "Contact: <sip:line1@198.51.100.9:3333;transport=tcp>;reg-id=1;{inst}"
            )],
        ),
        T0 + 1000,
    );
    assert_eq!((a.outcome.added, a.outcome.refreshed), (0, 1));
    assert_eq!(
        uris(&reg, T0 + 1000),
        vec!["sip:line1@198.51.100.9:3333;transport=tcp"]
    );
    let b = reg.lookup(AOR, T0 + 1000).next().unwrap();
    assert_eq!(
        b.instance(),
        Some(&b"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"[..])
    );
    assert_eq!(b.reg_id(), Some(1));
    // Another reg-id of the same instance is a second flow, even with the same URI.
    let a = handle(
        &mut reg,
        &register(
            "c2",
            2,
            &[&format!(
                "Contact: <sip:line1@198.51.100.9:3333;transport=tcp>;reg-id=2;{inst}"
            )],
        ),
        T0 + 1000,
    );
    assert_eq!(a.outcome.added, 1);
    assert_eq!(reg.binding_count(), 2);
}

#[test]
fn reg_id_without_instance_is_ignored() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>;reg-id=1"]),
        T0,
    );
    assert_eq!(reg.lookup(AOR, T0).next().unwrap().reg_id(), None);
    // Matched by URI, so a different URI with the same reg-id is a new binding.
    let a = handle(
        &mut reg,
        &register("c1", 2, &["Contact: <sip:b@192.0.2.1>;reg-id=1"]),
        T0,
    );
    assert_eq!(a.outcome.added, 1);
}

#[test]
fn the_source_address_is_stored() {
    let mut reg = registrar();
    let from: SocketAddr = "[2001:db8::7]:41000".parse().unwrap();
    handle_from(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>"]),
        T0,
        from,
    );
    assert_eq!(reg.lookup(AOR, T0).next().unwrap().source(), from);
}

#[test]
fn a_contact_named_twice_takes_the_later_values() {
    let mut reg = registrar();
    let a = handle(
        &mut reg,
        &register(
            "c1",
            1,
            &["Contact: <sip:a@192.0.2.1>;expires=600, <sip:a@192.0.2.1>;expires=900"],
        ),
        T0,
    );
    assert_eq!(a.outcome.added, 1);
    assert_eq!(a.contacts(), vec![("sip:a@192.0.2.1".into(), 900, None)]);
}

#[test]
fn non_sip_aor_is_400() {
    let mut reg = registrar();
    let a = handle(
        &mut reg,
        &register_to(
            "<tel:+12125551212>",
            "c1",
            1,
            &["Contact: <sip:a@192.0.2.1>"],
        ),
        T0,
    );
    assert_eq!(a.status(), 400);
    assert_eq!(a.outcome.error, Some(RegisterError::NotSipAor));
    assert_eq!(reg.aor_count(), 0);
}

#[test]
fn aor_key_ignores_host_case_display_name_and_uri_parameters() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register_to(
            "\"Alice\" <sip:alice@EXAMPLE.com;user=phone>",
            "c1",
            1,
            &["Contact: <sip:a@192.0.2.1>"],
        ),
        T0,
    );
    assert_eq!(uris(&reg, T0), vec!["sip:a@192.0.2.1"]);
}

#[test]
fn bindings_expire_and_lookup_hides_them_before_the_sweep() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register(
            "c1",
            1,
            &["Contact: <sip:a@192.0.2.1>;expires=60, <sip:b@192.0.2.1>;expires=120"],
        ),
        T0,
    );
    assert_eq!(reg.next_timeout(), Some(T0 + 60_000));
    assert_eq!(reg.poll_expired(T0 + 59_999), 0);
    // Expired but not yet swept: not returned.
    assert_eq!(uris(&reg, T0 + 60_000), vec!["sip:b@192.0.2.1"]);
    assert_eq!(reg.binding_count(), 2);
    assert_eq!(reg.poll_expired(T0 + 60_000), 1);
    assert_eq!(reg.binding_count(), 1);
    assert_eq!(reg.next_timeout(), Some(T0 + 120_000));
    assert_eq!(reg.poll_expired(T0 + 120_000), 1);
    assert_eq!((reg.aor_count(), reg.binding_count()), (0, 0));
    assert_eq!(reg.next_timeout(), None);
}

#[test]
fn a_refresh_moves_the_expiry_and_the_early_timer_keeps_it() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>;expires=60"]),
        T0,
    );
    handle(
        &mut reg,
        &register("c1", 2, &["Contact: <sip:a@192.0.2.1>;expires=3600"]),
        T0 + 30_000,
    );
    // The old timer fires at T0+60s, finds the binding refreshed, and re-arms.
    assert_eq!(reg.poll_expired(T0 + 60_000), 0);
    assert_eq!(reg.binding_count(), 1);
    assert_eq!(reg.next_timeout(), Some(T0 + 3_630_000));
    assert_eq!(reg.poll_expired(T0 + 3_629_999), 0);
    assert_eq!(reg.poll_expired(T0 + 3_630_000), 1);
    assert_eq!(reg.aor_count(), 0);
}

#[test]
fn a_shorter_refresh_brings_the_timer_forward() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>;expires=3600"]),
        T0,
    );
    handle(
        &mut reg,
        &register("c1", 2, &["Contact: <sip:a@192.0.2.1>;expires=60"]),
        T0,
    );
    assert_eq!(reg.next_timeout(), Some(T0 + 60_000));
    assert_eq!(reg.poll_expired(T0 + 60_000), 1);
}

#[test]
fn expired_bindings_are_dropped_when_the_aor_registers_again() {
    let mut reg = Registrar::new(RegistrarConfig {
        max_contacts_per_aor: 1,
        ..RegistrarConfig::default()
    });
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>;expires=60"]),
        T0,
    );
    // No poll: the expired binding neither counts against the limit nor is listed.
    let a = handle(
        &mut reg,
        &register("c1", 2, &["Contact: <sip:b@192.0.2.1>"]),
        T0 + 61_000,
    );
    assert_eq!(a.status(), 200);
    assert_eq!(a.outcome.expired, 1);
    assert_eq!(a.contacts(), vec![("sip:b@192.0.2.1".into(), 3600, None)]);
    assert_eq!(reg.binding_count(), 1);
}

#[test]
fn many_aors_expire_independently() {
    let mut reg = registrar();
    for i in 0..100u32 {
        let to = format!("<sip:user{i}@example.com>");
        let c = format!("Contact: <sip:u{i}@192.0.2.1>;expires={}", 60 + i);
        handle(&mut reg, &register_to(&to, "c1", 1, &[&c]), T0);
    }
    assert_eq!(reg.aor_count(), 100);
    assert_eq!(reg.poll_expired(T0 + 109_000), 50);
    assert_eq!(reg.aor_count(), 50);
    assert!(reg.lookup(b"sip:user49@example.com", T0).next().is_none());
    assert!(reg.lookup(b"sip:user50@example.com", T0).next().is_some());
    assert_eq!(reg.next_timeout(), Some(T0 + 110_000));
}

#[test]
fn an_aor_over_a_lowered_limit_can_still_refresh_but_not_add() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:a@192.0.2.1>, <sip:b@192.0.2.1>"]),
        T0,
    );
    reg.config.max_contacts_per_aor = 1;
    let a = handle(
        &mut reg,
        &register("c1", 2, &["Contact: <sip:a@192.0.2.1>, <sip:b@192.0.2.1>"]),
        T0,
    );
    assert_eq!((a.status(), a.outcome.refreshed), (200, 2));
    let a = handle(
        &mut reg,
        &register("c1", 3, &["Contact: <sip:c@192.0.2.1>"]),
        T0,
    );
    assert_eq!(a.status(), 503);
}

/// The records the binding store gets: the AOR's whole set after each change, nothing for a
/// query or a retransmission; replayed, they give the registrar's state.
#[test]
fn every_binding_change_is_journaled_as_the_aors_whole_set() {
    use crate::store::record::{Reader, Record, MAGIC};
    let mut reg = registrar();
    reg.enable_journal();
    let records = |reg: &mut Registrar| -> Vec<(Vec<u8>, Vec<String>)> {
        let mut bytes = MAGIC.to_vec();
        reg.take_journal(&mut bytes);
        Reader::new(&bytes)
            .unwrap()
            .map(|r| match r {
                Record::Put { key, bindings, .. } => (
                    key.to_vec(),
                    bindings
                        .iter()
                        .map(|b| String::from_utf8_lossy(b.contact_uri()).into_owned())
                        .collect(),
                ),
                Record::Delete { key } => (key.to_vec(), Vec::new()),
                Record::End { .. } => panic!("no end record in a log"),
            })
            .collect()
    };
    let first = register("c1", 1, &["Contact: <sip:alice@192.0.2.33>"]);
    assert_eq!(handle(&mut reg, &first, T0).status(), 200);
    assert_eq!(
        records(&mut reg),
        vec![(AOR.to_vec(), vec!["sip:alice@192.0.2.33".to_owned()])]
    );
    // A retransmission and a query change nothing: no record.
    handle(&mut reg, &first, T0 + 10);
    handle(&mut reg, &register("c2", 1, &[]), T0 + 20);
    assert!(records(&mut reg).is_empty());
    // A second contact, then a refresh: each time the whole set.
    handle(
        &mut reg,
        &register("c1", 2, &["Contact: <sip:alice@192.0.2.34>"]),
        T0 + 30,
    );
    handle(
        &mut reg,
        &register("c1", 3, &["Contact: <sip:alice@192.0.2.33>"]),
        T0 + 40,
    );
    let r = records(&mut reg);
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].1.len(), 2, "{r:?}");
    // Removing both: a Delete.
    handle(
        &mut reg,
        &register("c1", 4, &["Contact: *", "Expires: 0"]),
        T0 + 50,
    );
    assert_eq!(records(&mut reg), vec![(AOR.to_vec(), Vec::new())]);
    // An operator's unregister is journaled too; one contact of two.
    handle(
        &mut reg,
        &register(
            "c3",
            1,
            &["Contact: <sip:alice@192.0.2.33>, <sip:alice@192.0.2.35>"],
        ),
        T0 + 60,
    );
    records(&mut reg);
    assert_eq!(reg.unregister(AOR, Some(b"sip:alice@192.0.2.35")), 1);
    assert_eq!(
        records(&mut reg),
        vec![(AOR.to_vec(), vec!["sip:alice@192.0.2.33".to_owned()])]
    );
    assert_eq!(reg.unregister(AOR, None), 1);
    assert_eq!(reg.unregister(AOR, None), 0);
    assert_eq!(records(&mut reg), vec![(AOR.to_vec(), Vec::new())]);
    assert_eq!(reg.binding_count(), 0);
}

/// Bindings put back at start are served like registered ones; expired ones are not put back.
#[test]
fn restored_bindings_are_looked_up_and_expire() {
    let mut reg = registrar();
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:alice@192.0.2.33>", "Expires: 60"]),
        T0,
    );
    let kept: Vec<Binding> = reg.lookup(AOR, T0).cloned().collect();
    let mut fresh = registrar();
    fresh.restore(AOR, kept.clone(), T0 + 1_000);
    assert_eq!(uris(&fresh, T0 + 1_000), vec!["sip:alice@192.0.2.33"]);
    assert_eq!(fresh.binding_count(), 1);
    assert_eq!(fresh.poll_expired(T0 + 61_000), 1);
    assert_eq!(fresh.aor_count(), 0);
    let mut late = registrar();
    late.restore(AOR, kept, T0 + 60_000);
    assert_eq!(late.binding_count(), 0);
}

/// A binding another node registered (`remote`), reached at `contact`, expiring at `exp`.
fn remote_binding(contact: &str, exp: u64) -> Binding {
    let source = "198.51.100.7:5060".parse().unwrap();
    Binding::new(
        &BindingFields::plain(contact.as_bytes(), source, exp),
        std::iter::empty(),
    )
    .unwrap()
}

fn remote_set(node: &str, version: u64, epoch: u64, contacts: &[&str]) -> RemoteChange {
    RemoteChange::Set {
        key: AOR.into(),
        node: node.into(),
        version,
        epoch,
        bindings: contacts
            .iter()
            .map(|c| remote_binding(c, T0 + 60_000))
            .collect(),
    }
}

fn looked_up(reg: &Registrar, now: u64) -> Vec<String> {
    reg.lookup(AOR, now)
        .map(|b| String::from_utf8_lossy(b.contact_uri()).into_owned())
        .collect()
}

/// The other nodes' bindings (issue 21): lookups and query REGISTERs see them after this
/// node's own, each node's set is replaced whole and only by a newer version, a removal
/// empties it, a phone that moved here is not listed twice, a resynchronisation sweeps what
/// it did not see, and REGISTER processing never touches them.
#[test]
fn other_nodes_bindings_are_seen_by_lookups_and_queries_but_never_changed_here() {
    let mut reg = registrar();
    reg.apply_remote(remote_set("b", 10, 1, &["sip:alice@198.51.100.7"]), T0);
    assert_eq!(looked_up(&reg, T0), ["sip:alice@198.51.100.7"]);
    assert_eq!(reg.remote_binding_count(), 1);
    // An older version of b's set is ignored; a newer one replaces it whole.
    reg.apply_remote(remote_set("b", 9, 1, &["sip:old@198.51.100.7"]), T0);
    assert_eq!(looked_up(&reg, T0), ["sip:alice@198.51.100.7"]);
    reg.apply_remote(
        remote_set(
            "b",
            11,
            1,
            &["sip:alice@198.51.100.8", "sip:alice@198.51.100.9"],
        ),
        T0,
    );
    assert_eq!(looked_up(&reg, T0).len(), 2);
    reg.apply_remote(remote_set("c", 1, 1, &["sip:alice@203.0.113.1"]), T0);
    assert_eq!(looked_up(&reg, T0).len(), 3);

    // A REGISTER here adds this node's binding first; the 200 lists all four.
    let a = handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:alice@192.0.2.33>"]),
        T0,
    );
    assert_eq!(a.status(), 200);
    assert_eq!(a.outcome.bindings, 1, "this node holds one");
    let listed: Vec<String> = a.contacts().into_iter().map(|c| c.0).collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(listed[0], "sip:alice@192.0.2.33");
    // A query REGISTER lists them too.
    let q = handle(&mut reg, &register("c9", 1, &[]), T0 + 1);
    assert_eq!(q.contacts().len(), 4);
    // Removing every binding here (`*`) leaves the other nodes' sets alone.
    let gone = handle(
        &mut reg,
        &register("c1", 2, &["Contact: *", "Expires: 0"]),
        T0 + 2,
    );
    assert_eq!(gone.status(), 200);
    assert_eq!(looked_up(&reg, T0 + 2).len(), 3);

    // The phone moves here from c: its contact is listed once, as this node's.
    handle(
        &mut reg,
        &register("m1", 1, &["Contact: <sip:alice@203.0.113.1>"]),
        T0 + 3,
    );
    assert_eq!(looked_up(&reg, T0 + 3).len(), 3);
    // c removes its set.
    reg.apply_remote(remote_set("c", 2, 1, &[]), T0 + 4);
    assert_eq!(looked_up(&reg, T0 + 4).len(), 3);
    assert_eq!(reg.remote_binding_count(), 2);

    // A resynchronisation (epoch 2) that only saw b's set drops the rest; expired sets go
    // from lookups at once and from memory at the next sweep.
    reg.apply_remote(remote_set("d", 1, 1, &["sip:alice@203.0.113.9"]), T0 + 5);
    reg.apply_remote(
        remote_set(
            "b",
            11,
            2,
            &["sip:alice@198.51.100.8", "sip:alice@198.51.100.9"],
        ),
        T0 + 5,
    );
    // An older version of b's set read in epoch 2 (a lagging replica) counts as seen.
    reg.apply_remote(remote_set("b", 3, 2, &["sip:alice@198.51.100.1"]), T0 + 5);
    reg.apply_remote(RemoteChange::Sweep { epoch: 2 }, T0 + 5);
    let now = looked_up(&reg, T0 + 5);
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(!now.contains(&"sip:alice@203.0.113.9".to_owned()));
    assert!(
        looked_up(&reg, T0 + 61_000).len() == 1,
        "only this node's is left"
    );
    reg.sweep_remote(T0 + 61_000);
    assert_eq!(reg.remote_binding_count(), 0);
}

/// A node whose store lost its bindings writes every AOR again; its own bindings found in
/// the store later are restored only where it holds none.
#[test]
fn rejournal_writes_every_aor_and_restore_never_overrides_a_live_aor() {
    use crate::store::record::frames;
    let mut reg = registrar();
    reg.enable_journal();
    handle(
        &mut reg,
        &register("c1", 1, &["Contact: <sip:alice@192.0.2.33>"]),
        T0,
    );
    handle(
        &mut reg,
        &register_to(
            "<sip:bob@example.com>",
            "c2",
            1,
            &["Contact: <sip:bob@192.0.2.34>"],
        ),
        T0,
    );
    let mut bytes = Vec::new();
    reg.take_journal(&mut bytes);
    reg.apply_remote(RemoteChange::Rejournal, T0 + 1);
    bytes.clear();
    reg.take_journal(&mut bytes);
    let mut keys: Vec<Vec<u8>> = frames(&bytes).map(|(k, _)| k.to_vec()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            b"sip:alice@example.com".to_vec(),
            b"sip:bob@example.com".to_vec()
        ]
    );
    // A restore for alice (held) is ignored; one for carol (not held) is taken.
    reg.apply_remote(
        RemoteChange::Restore {
            key: AOR.into(),
            bindings: vec![remote_binding("sip:stale@192.0.2.99", T0 + 60_000)],
        },
        T0 + 2,
    );
    assert_eq!(looked_up(&reg, T0 + 2), ["sip:alice@192.0.2.33"]);
    reg.apply_remote(
        RemoteChange::Restore {
            key: b"sip:carol@example.com"[..].into(),
            bindings: vec![remote_binding("sip:carol@192.0.2.35", T0 + 60_000)],
        },
        T0 + 2,
    );
    assert_eq!(reg.lookup(b"sip:carol@example.com", T0 + 2).count(), 1);
}
