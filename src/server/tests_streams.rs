//! Stream transports through the core (RFC 3261 §18, RFC 5626 flows, RFC 5658 double
//! Record-Route): a phone registered over a TCP connection is reached over that connection
//! (socket and peer), responses go back on the connection the request came on, a dialog
//! between a UDP and a TCP side carries two Record-Route values (one per transport) and both
//! are removed when in-dialog requests come back, the caller's connection is named for the
//! callee's requests, and the bindings of a connection go when it closes.

use super::tests::{addr, status, CALLER, LISTEN, T0};
use super::Core;
use crate::proxy::settings::{CoreConfig, Mode};
use crate::server::outbox::Outbox;
use crate::sip::{HeaderName, Local, Message, Proto};
use crate::stats::ShardStats;
use std::net::SocketAddr;
use std::sync::Arc;

/// The core's sockets: UDP (0) and TCP (1) on the same address.
const UDP: usize = 0;
const TCP: usize = 1;
/// The TCP phone: where it listens (its Via and Contact) and the connection's far end.
const PHONE: &str = "192.0.2.50:5060";
const PHONE_CONN: &str = "192.0.2.50:40001";

fn core() -> Core {
    let cfg = Arc::new(CoreConfig::single("localhost", addr(LISTEN), Mode::Proxy));
    let locals = [
        Local::from(addr(LISTEN)),
        Local {
            addr: addr(LISTEN),
            proto: Proto::Tcp,
        },
    ];
    Core::new(0, cfg, Arc::new(ShardStats::default()), None, &locals)
}

/// What the core sent: (socket, destination, bytes).
fn send(
    c: &mut Core,
    data: &[u8],
    src: &str,
    socket: usize,
    now: u64,
) -> Vec<(usize, SocketAddr, Vec<u8>)> {
    let mut out = Outbox::new();
    c.handle(data, addr(src), socket, now, false, &mut out);
    out.items()
        .iter()
        .map(|d| (d.socket as usize, d.dst, out.bytes(d).to_vec()))
        .collect()
}

fn register_over_tcp(c: &mut Core) {
    let reg = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/TCP {PHONE};branch=z9hG4bKtreg\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: reg-tcp\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@{PHONE};transport=tcp>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(c, reg.as_bytes(), PHONE_CONN, TCP, T0);
    assert_eq!(out.len(), 1);
    // §18.2.2: over a connection the response goes back on it, not to the Via's port.
    assert_eq!((out[0].0, out[0].1), (TCP, addr(PHONE_CONN)));
    assert_eq!(status(&out[0].2), 200);
}

fn invite(from_via: &str, transport: &str, branch: &str, ruri: &str) -> Vec<u8> {
    format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/{transport} {from_via};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: call-{branch}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{from_via}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn answer(inv: &[u8], contact: &str) -> Vec<u8> {
    let m = Message::parse(inv).unwrap();
    let mut out = Vec::new();
    crate::sip::write::response_head(&mut out, &m, 200, b"OK", Some(b"bt"), None);
    for rr in m.header_all(HeaderName::RecordRoute) {
        crate::sip::write::header(&mut out, "Record-Route", rr);
    }
    crate::sip::write::header(&mut out, "Contact", contact.as_bytes());
    crate::sip::write::finish(&mut out, b"");
    out
}

fn record_routes(msg: &[u8]) -> Vec<String> {
    Message::parse(msg)
        .unwrap()
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.unwrap().uri_raw).into_owned())
        .collect()
}

fn bye(ruri: &str, via: &str, transport: &str, routes: &[String], from: &str, to: &str) -> Vec<u8> {
    let route: Vec<String> = routes.iter().map(|r| format!("<{r}>")).collect();
    format!(
        "BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/{transport} {via};branch=z9hG4bKbye{transport}\r\n\
         Route: {}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: call-z9hG4bKs1\r\n\
         CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        route.join(", ")
    )
    .into_bytes()
}

#[test]
fn a_udp_caller_reaches_a_tcp_phone_over_its_connection_with_a_double_record_route() {
    let mut c = core();
    register_over_tcp(&mut c);
    let out = send(
        &mut c,
        &invite(CALLER, "UDP", "z9hG4bKs1", "sip:bob@localhost"),
        CALLER,
        UDP,
        T0 + 10,
    );
    // 100 Trying to the caller over UDP; the INVITE over the phone's connection.
    let to_phone: Vec<_> = out.iter().filter(|o| o.1 == addr(PHONE_CONN)).collect();
    assert_eq!(to_phone.len(), 1, "{out:?}");
    assert_eq!(to_phone[0].0, TCP);
    let inv = to_phone[0].2.clone();
    let fwd = Message::parse(&inv).unwrap();
    let via = fwd.top_via().unwrap();
    assert_eq!(
        via.transport, b"TCP",
        "our Via names the transport it leaves on"
    );
    // RFC 5658: the value facing the phone (TCP) first, the caller's side (UDP) second; both
    // name the phone's flow.
    let rr = record_routes(&inv);
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(
        rr[0].contains(";transport=tcp") && rr[0].contains(";ft=tcp:192.0.2.50:40001"),
        "{rr:?}"
    );
    assert!(!rr[1].contains("transport="), "{rr:?}");
    // The phone answers over its connection; the caller gets the 200 over UDP.
    let out = send(
        &mut c,
        &answer(&inv, &format!("<sip:bob@{PHONE};transport=tcp>")),
        PHONE_CONN,
        TCP,
        T0 + 20,
    );
    let ok: Vec<_> = out.iter().filter(|o| o.1 == addr(CALLER)).collect();
    assert_eq!((ok.len(), ok[0].0, status(&ok[0].2)), (1, UDP, 200));
    let (alice, bob) = ("<sip:alice@localhost>;tag=a1", "<sip:bob@localhost>;tag=bt");
    // The caller's BYE: its route set is the Record-Route reversed. It reaches the phone over
    // the connection with both of our values gone.
    let reversed: Vec<String> = rr.iter().rev().cloned().collect();
    let b = bye(
        &format!("sip:bob@{PHONE};transport=tcp"),
        CALLER,
        "UDP",
        &reversed,
        alice,
        bob,
    );
    let out = send(&mut c, &b, CALLER, UDP, T0 + 30);
    let at_phone: Vec<_> = out.iter().filter(|o| o.1 == addr(PHONE_CONN)).collect();
    assert_eq!(at_phone.len(), 1, "{out:?}");
    assert_eq!(at_phone[0].0, TCP);
    let m = Message::parse(&at_phone[0].2).unwrap();
    assert!(
        m.header(HeaderName::Route).is_none(),
        "both Route values removed"
    );
    assert_eq!(m.top_via().unwrap().transport, b"TCP");
    // The phone hangs up itself: over its connection, with the Record-Route as its route
    // set; the BYE goes on to the caller over UDP.
    let mut c2 = core();
    register_over_tcp(&mut c2);
    let out = send(
        &mut c2,
        &invite(CALLER, "UDP", "z9hG4bKs1", "sip:bob@localhost"),
        CALLER,
        UDP,
        T0 + 10,
    );
    let inv = out
        .iter()
        .find(|o| o.1 == addr(PHONE_CONN))
        .unwrap()
        .2
        .clone();
    let rr = record_routes(&inv);
    send(
        &mut c2,
        &answer(&inv, &format!("<sip:bob@{PHONE};transport=tcp>")),
        PHONE_CONN,
        TCP,
        T0 + 20,
    );
    let b = bye(
        &format!("sip:alice@{CALLER}"),
        PHONE,
        "TCP",
        &rr,
        bob,
        alice,
    );
    let out = send(&mut c2, &b, PHONE_CONN, TCP, T0 + 30);
    let at_caller: Vec<_> = out.iter().filter(|o| o.1 == addr(CALLER)).collect();
    assert_eq!(at_caller.len(), 1, "{out:?}");
    assert_eq!(at_caller[0].0, UDP);
    let m = Message::parse(&at_caller[0].2).unwrap();
    assert!(m.header(HeaderName::Route).is_none());
    assert_eq!(m.top_via().unwrap().transport, b"UDP");
}

#[test]
fn a_tcp_caller_is_reached_over_its_connection_by_the_callees_requests() {
    let mut c = core();
    super::tests::register(&mut c, "bob", "192.0.2.60:5060");
    let caller_conn = "192.0.2.70:50123";
    let out = send(
        &mut c,
        &invite("192.0.2.70:5060", "TCP", "z9hG4bKs1", "sip:bob@localhost"),
        caller_conn,
        TCP,
        T0 + 10,
    );
    // 100 Trying over the caller's connection.
    assert!(
        out.iter()
            .any(|o| o.0 == TCP && o.1 == addr(caller_conn) && status(&o.2) == 100),
        "{out:?}"
    );
    let inv = out.iter().find(|o| o.1 == addr("192.0.2.60:5060")).unwrap();
    assert_eq!(inv.0, UDP);
    let rr = record_routes(&inv.2);
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(!rr[0].contains("transport="), "UDP side first: {rr:?}");
    assert!(rr[1].contains(";transport=tcp"), "{rr:?}");
    assert!(
        rr.iter().all(|r| r.contains(";fc=tcp:192.0.2.70:50123")),
        "{rr:?}"
    );
    let inv = inv.2.clone();
    let out = send(
        &mut c,
        &answer(&inv, "<sip:bob@192.0.2.60:5060>"),
        "192.0.2.60:5060",
        UDP,
        T0 + 20,
    );
    assert!(
        out.iter()
            .any(|o| o.0 == TCP && o.1 == addr(caller_conn) && status(&o.2) == 200),
        "{out:?}"
    );
    // The callee's BYE names the caller's Contact (its listening port, unreachable behind a
    // NAT); it goes over the caller's connection.
    let b = bye(
        "sip:alice@192.0.2.70:5060;transport=tcp",
        "192.0.2.60:5060",
        "UDP",
        &rr,
        "<sip:bob@localhost>;tag=bt",
        "<sip:alice@localhost>;tag=a1",
    );
    let out = send(&mut c, &b, "192.0.2.60:5060", UDP, T0 + 30);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].0, out[0].1), (TCP, addr(caller_conn)));
    assert_eq!(
        Message::parse(&out[0].2)
            .unwrap()
            .top_via()
            .unwrap()
            .transport,
        b"TCP"
    );
}

#[test]
fn the_bindings_of_a_connection_go_when_it_closes() {
    let mut c = core();
    register_over_tcp(&mut c);
    // Another connection closing changes nothing.
    c.connection_closed(TCP as u16, addr("192.0.2.50:40002"), T0 + 5);
    let out = send(
        &mut c,
        &invite(CALLER, "UDP", "z9hG4bKc1", "sip:bob@localhost"),
        CALLER,
        UDP,
        T0 + 10,
    );
    assert!(out.iter().any(|o| o.1 == addr(PHONE_CONN)), "{out:?}");
    // News of the close that comes after a new REGISTER over a connection from the same
    // address and port changes nothing; the close of the last one removes the binding.
    c.connection_closed(TCP as u16, addr(PHONE_CONN), T0 - 1);
    let out = send(
        &mut c,
        &invite(CALLER, "UDP", "z9hG4bKc3", "sip:bob@localhost"),
        CALLER,
        UDP,
        T0 + 15,
    );
    assert!(out.iter().any(|o| o.1 == addr(PHONE_CONN)), "{out:?}");
    c.connection_closed(TCP as u16, addr(PHONE_CONN), T0 + 12);
    let out = send(
        &mut c,
        &invite(CALLER, "UDP", "z9hG4bKc2", "sip:bob@localhost"),
        CALLER,
        UDP,
        T0 + 20,
    );
    assert!(out.iter().all(|o| o.1 == addr(CALLER)), "{out:?}");
    assert_eq!(status(&out.last().unwrap().2), 480, "no binding left");
}

#[test]
fn a_contact_that_asks_for_tcp_is_reached_over_tcp() {
    let mut c = core();
    // Registered over UDP (a third party, say) with a Contact that says transport=tcp.
    let reg = "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.80:5060;branch=z9hG4bKu\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carol@localhost>;tag=r\r\nTo: <sip:carol@localhost>\r\n\
         Call-ID: reg-u\r\nCSeq: 1 REGISTER\r\nContact: <sip:carol@192.0.2.80:5060;transport=tcp>\r\n\
         Content-Length: 0\r\n\r\n";
    let out = send(&mut c, reg.as_bytes(), "192.0.2.80:5060", UDP, T0);
    assert_eq!(status(&out[0].2), 200);
    let out = send(
        &mut c,
        &invite(CALLER, "UDP", "z9hG4bKt1", "sip:carol@localhost"),
        CALLER,
        UDP,
        T0 + 10,
    );
    let inv = out.iter().find(|o| o.1 == addr("192.0.2.80:5060")).unwrap();
    // Over TCP, and the shell may open a connection for it (the Contact names where carol
    // listens); a flow or a response never carries that permission.
    assert_eq!(
        inv.0 as u16,
        TCP as u16 | crate::sip::proto::CONNECT,
        "{out:?}"
    );
}

#[test]
fn a_response_goes_back_over_the_connection_whatever_the_via_says() {
    let mut c = core();
    // A Via that says UDP without rport, over TCP: the 200 still goes back on the connection
    // (to its source port), never to a new connection to the Via's port.
    let reg = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bKvia\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: reg-via\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@{PHONE}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(&mut c, reg.as_bytes(), PHONE_CONN, TCP, T0);
    assert_eq!((out[0].0, out[0].1), (TCP, addr(PHONE_CONN)));
    assert_eq!(status(&out[0].2), 200);
    // The INVITE for bob goes to the flow, without permission to connect.
    let out = send(
        &mut c,
        &invite(CALLER, "UDP", "z9hG4bKv1", "sip:bob@localhost"),
        CALLER,
        UDP,
        T0 + 10,
    );
    let inv = out.iter().find(|o| o.1 == addr(PHONE_CONN)).unwrap();
    assert_eq!(inv.0, TCP, "{out:?}");
}

#[test]
fn an_outbound_registration_gets_require_outbound_and_its_flow_timer() {
    let mut c = core();
    let reg = |transport: &str, supported: &str, id: &str| {
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/{transport} {PHONE};branch=z9hG4bK{id}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
             Call-ID: reg-{id}\r\nCSeq: 1 REGISTER\r\n{supported}\
             Contact: <sip:bob@{PHONE};transport={transport}>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let header = |resp: &[u8], name: &str| {
        let m = Message::parse(resp).unwrap();
        m.slots()
            .iter()
            .find(|s| m.slice(s.name_span()).eq_ignore_ascii_case(name.as_bytes()))
            .map(|s| String::from_utf8_lossy(m.slice(s.value)).into_owned())
    };
    for (transport, socket, src, timer) in
        [("TCP", TCP, PHONE_CONN, "120"), ("UDP", UDP, PHONE, "29")]
    {
        let out = send(
            &mut c,
            reg(transport, "Supported: path, outbound\r\n", transport).as_bytes(),
            src,
            socket,
            T0,
        );
        assert_eq!(status(&out[0].2), 200);
        assert_eq!(
            header(&out[0].2, "Require").as_deref(),
            Some("outbound"),
            "{transport}"
        );
        assert_eq!(
            header(&out[0].2, "Flow-Timer").as_deref(),
            Some(timer),
            "{transport}"
        );
    }
    // A UA that does not say it supports outbound gets neither.
    let out = send(
        &mut c,
        reg("TCP", "", "plain").as_bytes(),
        PHONE_CONN,
        TCP,
        T0 + 1,
    );
    assert_eq!(status(&out[0].2), 200);
    assert_eq!(header(&out[0].2, "Flow-Timer"), None);
    assert_eq!(header(&out[0].2, "Require"), None);
}

#[test]
fn a_sips_request_never_leaves_over_an_unencrypted_hop() {
    // Without a TLS address: 416 says why.
    let mut c = core();
    register_over_tcp(&mut c);
    let out = send(
        &mut c,
        &invite(CALLER, "UDP", "z9hG4bKsips1", "sips:bob@localhost"),
        CALLER,
        UDP,
        T0 + 10,
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(status(&out[0].2), 416);
    assert!(String::from_utf8_lossy(&out[0].2).contains("TLS"));
    // With one: a user reached only over TCP gets 480, one over TLS gets the INVITE.
    let cfg = Arc::new(CoreConfig::single("localhost", addr(LISTEN), Mode::Proxy));
    let tls: SocketAddr = "127.0.0.1:5061".parse().unwrap();
    let locals = [
        Local::from(addr(LISTEN)),
        Local {
            addr: addr(LISTEN),
            proto: Proto::Tcp,
        },
        Local {
            addr: tls,
            proto: Proto::Tls,
        },
    ];
    let mut c = Core::new(0, cfg, Arc::new(ShardStats::default()), None, &locals);
    // sips:bob registered over plain TCP (sip: and sips: AORs are distinct, §19.1.4).
    let reg_tcp = format!(
        "REGISTER sips:localhost SIP/2.0\r\nVia: SIP/2.0/TCP {PHONE};branch=z9hG4bKsreg0\r\n\
         Max-Forwards: 70\r\nFrom: <sips:bob@localhost>;tag=r\r\nTo: <sips:bob@localhost>\r\n\
         Call-ID: reg-s0\r\nCSeq: 1 REGISTER\r\nContact: <sips:bob@{PHONE}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(&mut c, reg_tcp.as_bytes(), PHONE_CONN, TCP, T0);
    assert_eq!(status(&out[0].2), 200);
    let out = send(
        &mut c,
        &invite(CALLER, "UDP", "z9hG4bKsips2", "sips:bob@localhost"),
        CALLER,
        UDP,
        T0 + 10,
    );
    assert!(
        out.iter().all(|o| o.1 == addr(CALLER)),
        "nothing to the TCP phone: {out:?}"
    );
    assert_eq!(status(&out.last().unwrap().2), 480);
    assert!(
        String::from_utf8_lossy(&out.last().unwrap().2).contains("no TLS connection"),
        "bob's binding was found and refused for its transport"
    );
    let reg = "REGISTER sips:localhost SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.51:5061;branch=z9hG4bKsreg\r\n\
         Max-Forwards: 70\r\nFrom: <sips:carol@localhost>;tag=r\r\nTo: <sips:carol@localhost>\r\n\
         Call-ID: reg-tls\r\nCSeq: 1 REGISTER\r\nContact: <sips:carol@192.0.2.51:5061>\r\n\
         Content-Length: 0\r\n\r\n";
    let out = send(&mut c, reg.as_bytes(), "192.0.2.51:40500", 2, T0);
    assert_eq!(status(&out[0].2), 200);
    let out = send(
        &mut c,
        &invite(CALLER, "UDP", "z9hG4bKsips3", "sips:carol@localhost"),
        CALLER,
        UDP,
        T0 + 20,
    );
    let inv = out
        .iter()
        .find(|o| o.1 == addr("192.0.2.51:40500"))
        .unwrap();
    assert_eq!(inv.0, 2, "over the TLS connection");
}

#[test]
fn a_request_the_shell_could_not_deliver_fails_now_as_a_503_not_after_timer_b() {
    let mut c = core();
    let reg = "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.80:5060;branch=z9hG4bKu\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carol@localhost>;tag=r\r\nTo: <sip:carol@localhost>\r\n\
         Call-ID: reg-u\r\nCSeq: 1 REGISTER\r\nContact: <sip:carol@192.0.2.80:5060;transport=tcp>\r\n\
         Content-Length: 0\r\n\r\n";
    assert_eq!(
        status(&send(&mut c, reg.as_bytes(), "192.0.2.80:5060", UDP, T0)[0].2),
        200
    );
    let inv = invite(CALLER, "UDP", "z9hG4bKte", "sip:carol@localhost");
    let out = send(&mut c, &inv, CALLER, UDP, T0 + 10);
    assert!(
        out.iter().any(|o| o.1 == addr("192.0.2.80:5060")),
        "{out:?}"
    );
    // Another destination's failure touches nothing.
    let mut out = Outbox::new();
    c.transport_error(TCP as u16, addr("192.0.2.81:5060"), T0 + 20, &mut out);
    assert!(out.items().is_empty());
    // The connection to carol could not be made (RFC 3261 §17.1.4): the caller hears now
    // (a 503 branch is relayed as 500, §16.7 step 6), not 32 s later.
    c.transport_error(
        TCP as u16 | crate::sip::proto::CONNECT,
        addr("192.0.2.80:5060"),
        T0 + 20,
        &mut out,
    );
    let finals: Vec<u16> = out
        .items()
        .iter()
        .filter(|d| d.dst == addr(CALLER))
        .map(|d| status(out.bytes(d)))
        .collect();
    assert_eq!(finals, [500], "one final response to the caller");
}
