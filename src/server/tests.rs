//! The core driven without sockets: a caller, the proxy core and callees exchange datagrams
//! through the outbox with explicit times (RFC 3261 §16 behaviour end to end: forking, CANCEL,
//! Timer C, record-routing and loose routing, and no state left behind).

use super::outbox::Outbox;
use super::{Core, CoreConfig};
use crate::proxy::settings::{Forking, Mode, ProxySettings};
use crate::registrar::RegistrarSettings;
use crate::sip::write::{finish, header, response_head};
use crate::sip::{HeaderName, Message};
use crate::stats::ShardStats;
use std::net::SocketAddr;
use std::sync::Arc;

pub(super) const LISTEN: &str = "127.0.0.1:5060";
pub(super) const CALLER: &str = "192.0.2.10:5060";
pub(super) const T0: u64 = 1_000_000;

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A one-shard core on LISTEN.
pub(super) fn core_with(
    mode: Mode,
    registrar: RegistrarSettings,
    auth: Option<crate::auth::Authenticator>,
) -> Core {
    core_with_proxy(mode, registrar, auth, ProxySettings::default())
}

/// [`core_with`] with proxy settings (forking).
pub(super) fn core_with_proxy(
    mode: Mode,
    registrar: RegistrarSettings,
    auth: Option<crate::auth::Authenticator>,
    proxy: ProxySettings,
) -> Core {
    shard_core(0, Arc::new(config(1, mode, registrar, proxy)), auth)
}

/// The configuration of `shards` shards on LISTEN for the domain localhost, without a dial
/// plan, security or overload settings.
pub(super) fn config(
    shards: usize,
    mode: Mode,
    registrar: RegistrarSettings,
    proxy: ProxySettings,
) -> CoreConfig {
    CoreConfig {
        domains: vec!["localhost".into()],
        local_addrs: vec![addr(LISTEN)],
        shards,
        mode,
        registrar,
        proxy,
        routing: Arc::new(crate::routing::DialPlan::empty()),
        responder: Default::default(),
        security: Default::default(),
        overload: Default::default(),
    }
}

/// Shard `shard` of `cfg`, listening on LISTEN.
pub(super) fn shard_core(
    shard: usize,
    cfg: Arc<CoreConfig>,
    auth: Option<crate::auth::Authenticator>,
) -> Core {
    Core::new(
        shard,
        cfg,
        Arc::new(ShardStats::default()),
        auth,
        &[addr(LISTEN).into()],
    )
}

pub(super) fn core() -> Core {
    core_with(Mode::Proxy, RegistrarSettings::default(), None)
}

/// Sends `data` from `src` to the core's listen socket `socket`; returns what it
/// sent as (destination, bytes).
pub(super) fn send(
    c: &mut Core,
    data: &[u8],
    src: &str,
    socket: usize,
    now: u64,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Outbox::new();
    c.handle(data, addr(src), socket, now, false, &mut out);
    drain(&out)
}

pub(super) fn tick(c: &mut Core, now: u64) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Outbox::new();
    c.handle_timeout(now, &mut out);
    drain(&out)
}

pub(super) fn drain(out: &Outbox) -> Vec<(SocketAddr, Vec<u8>)> {
    out.items()
        .iter()
        .map(|d| (d.dst, out.bytes(d).to_vec()))
        .collect()
}

pub(super) fn register(c: &mut Core, user: &str, contact: &str) {
    register_q(c, user, contact, "");
}

/// Registers `contact` for `user` with Contact parameters `params` (e.g. `;q=0.5`).
pub(super) fn register_q(c: &mut Core, user: &str, contact: &str, params: &str) {
    let msg = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {contact};branch=z9hG4bKreg{user}{contact}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@localhost>;tag=r\r\nTo: <sip:{user}@localhost>\r\n\
         Call-ID: reg-{user}-{contact}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{contact}>{params}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(c, msg.as_bytes(), contact, 0, T0);
    assert_eq!(status(&out[0].1), 200);
}

pub(super) fn invite(branch: &str) -> Vec<u8> {
    format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: call-{branch}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{CALLER}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0"
    )
    .into_bytes()
}

pub(super) fn status(b: &[u8]) -> u16 {
    Message::parse(b).unwrap().status().unwrap()
}

/// The branch of the top Via of a message.
pub(super) fn top_branch(b: &[u8]) -> Vec<u8> {
    Message::parse(b)
        .unwrap()
        .top_via()
        .unwrap()
        .branch()
        .unwrap()
        .to_vec()
}

pub(super) fn method(b: &[u8]) -> Vec<u8> {
    Message::parse(b).unwrap().method_bytes().unwrap().to_vec()
}

/// A callee's response to a request it received from the proxy.
pub(super) fn answer(req: &[u8], code: u16, reason: &str, tag: &str) -> Vec<u8> {
    let m = Message::parse(req).unwrap();
    let mut out = Vec::new();
    response_head(
        &mut out,
        &m,
        code,
        reason.as_bytes(),
        Some(tag.as_bytes()),
        None,
    );
    if code == 200 && m.method_bytes() == Some(b"INVITE") {
        for rr in m.header_all(HeaderName::RecordRoute) {
            header(&mut out, "Record-Route", rr);
        }
        header(&mut out, "Contact", b"<sip:bob@192.0.2.20:5062>");
    }
    finish(&mut out, b"");
    out
}

pub(super) fn assert_no_state(c: &mut Core, now: u64) {
    // Every timer (Timer D/K/J 32 s on UDP, Timer C) runs out within 200 s.
    let mut t = now;
    while t < now + 200_000 {
        t += 500;
        tick(c, t);
    }
    assert_eq!(c.proxy().state_len(), (0, 0, 0), "state left behind");
}

#[test]
fn answered_call_with_record_route_and_bye_through_the_proxy() {
    let mut c = core();
    register(&mut c, "bob", "192.0.2.20:5062");
    let out = send(&mut c, &invite("z9hG4bKc1"), CALLER, 0, T0);
    // 100 Trying to the caller, the INVITE to the callee.
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 100));
    let (dst, fwd) = &out[1];
    assert_eq!(*dst, addr("192.0.2.20:5062"));
    let f = Message::parse(fwd).unwrap();
    assert_eq!(f.request_uri_bytes(), Some(&b"sip:bob@192.0.2.20:5062"[..]));
    assert_eq!(f.vias().count(), 2);
    assert_eq!(f.max_forwards().unwrap(), Some(69));
    let rr = f.record_routes().next().unwrap().unwrap().uri().unwrap();
    assert_eq!(
        (rr.host, rr.port),
        (&b"127.0.0.1"[..], Some(5060)),
        "Record-Route names the listen address"
    );
    assert!(rr.lr());
    // 180 and 200 come back to the proxy's own port and are relayed without our Via.
    let out = send(
        &mut c,
        &answer(fwd, 180, "Ringing", "b1"),
        "192.0.2.20:5062",
        1,
        T0 + 10,
    );
    assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 180));
    let ok = answer(fwd, 200, "OK", "b1");
    let out = send(&mut c, &ok, "192.0.2.20:5062", 0, T0 + 20);
    assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 200));
    // Answered: the context keeps no message (no CANCEL, 408 or 487 can follow), though it
    // lingers with its transactions for 64*T1.
    assert_eq!(c.proxy().held_message_bytes(), 0);
    let relayed = Message::parse(&out[0].1).unwrap();
    assert_eq!(relayed.vias().count(), 1);
    // ACK and BYE follow the route set: to our own port, then on to the callee's Contact.
    let route = format!("<sip:{LISTEN};lr;ss=0>");
    for (m, cseq) in [("ACK", 1), ("BYE", 2)] {
        let req = format!(
            "{m} sip:bob@192.0.2.20:5062 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{m}\r\n\
             Route: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\n\
             To: <sip:bob@localhost>;tag=b1\r\nCall-ID: call-z9hG4bKc1\r\nCSeq: {cseq} {m}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let out = send(&mut c, req.as_bytes(), CALLER, 0, T0 + 30);
        assert_eq!(out.len(), 1, "{m}");
        assert_eq!(out[0].0, addr("192.0.2.20:5062"));
        let f = Message::parse(&out[0].1).unwrap();
        assert_eq!(f.method_bytes(), Some(m.as_bytes()));
        assert!(f.header(HeaderName::Route).is_none(), "our Route popped");
        if m == "BYE" {
            let out = send(
                &mut c,
                &answer(&out[0].1, 200, "OK", "b1"),
                "192.0.2.20:5062",
                1,
                T0 + 40,
            );
            assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 200));
        }
    }
    assert_no_state(&mut c, T0 + 50);
}

#[test]
fn forked_call_cancels_the_other_branch_when_one_answers() {
    let mut c = core();
    register(&mut c, "bob", "192.0.2.20:5062");
    register(&mut c, "bob", "192.0.2.21:5062");
    let out = send(&mut c, &invite("z9hG4bKf1"), CALLER, 0, T0);
    assert_eq!(out.len(), 3, "100 and two branches");
    let branches: Vec<_> = out[1..].to_vec();
    let (ans_dst, ans_req) = &branches[0];
    let (other_dst, other_req) = &branches[1];
    assert_ne!(ans_dst, other_dst);
    send(
        &mut c,
        &answer(other_req, 180, "Ringing", "o1"),
        &other_dst.to_string(),
        1,
        T0 + 5,
    );
    let out = send(
        &mut c,
        &answer(ans_req, 200, "OK", "b1"),
        &ans_dst.to_string(),
        1,
        T0 + 10,
    );
    // The 200 goes to the caller and a CANCEL to the other branch.
    let to_caller: Vec<_> = out.iter().filter(|(d, _)| *d == addr(CALLER)).collect();
    assert_eq!(to_caller.len(), 1);
    assert_eq!(status(&to_caller[0].1), 200);
    let cancel: Vec<_> = out.iter().filter(|(d, _)| d == other_dst).collect();
    assert_eq!(cancel.len(), 1);
    assert_eq!(method(&cancel[0].1), b"CANCEL");
    // The other branch answers the CANCEL and 487s its INVITE; the proxy ACKs the 487 and
    // the caller hears nothing more.
    let out = send(
        &mut c,
        &answer(&cancel[0].1, 200, "OK", "o1"),
        &other_dst.to_string(),
        1,
        T0 + 15,
    );
    assert!(out.is_empty());
    let out = send(
        &mut c,
        &answer(other_req, 487, "Request Terminated", "o1"),
        &other_dst.to_string(),
        1,
        T0 + 16,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, *other_dst);
    assert_eq!(method(&out[0].1), b"ACK");
    assert_no_state(&mut c, T0 + 20);
}

#[test]
fn a_branch_is_cancelled_once_even_when_the_2xx_is_retransmitted_later() {
    let mut c = core();
    register(&mut c, "bob", "192.0.2.20:5062");
    register(&mut c, "bob", "192.0.2.21:5062");
    let out = send(&mut c, &invite("z9hG4bKonce"), CALLER, 0, T0);
    let (ans_dst, ans_req) = out[1].clone();
    let (other_dst, other_req) = out[2].clone();
    send(
        &mut c,
        &answer(&other_req, 180, "Ringing", "o1"),
        &other_dst.to_string(),
        1,
        T0 + 5,
    );
    let ok = answer(&ans_req, 200, "OK", "b1");
    let out = send(&mut c, &ok, &ans_dst.to_string(), 0, T0 + 10);
    let cancel: Vec<_> = out.iter().filter(|(d, _)| *d == other_dst).collect();
    assert_eq!(cancel.len(), 1);
    send(
        &mut c,
        &answer(&cancel[0].1, 200, "OK", "o1"),
        &other_dst.to_string(),
        1,
        T0 + 15,
    );
    // The other phone never sends its 487 (yet). Once our CANCEL transaction is gone (Timer
    // K, 5 s), the answering phone retransmits its 200 (no ACK reached it): relayed, and no
    // second CANCEL goes out (RFC 3261 §9.1: a branch is cancelled once).
    let mut t = T0 + 15;
    while t < T0 + 6_000 {
        t += 500;
        tick(&mut c, t);
    }
    let out = send(&mut c, &ok, &ans_dst.to_string(), 0, T0 + 6_100);
    assert!(
        out.iter()
            .all(|(d, m)| *d != other_dst || method(m) != b"CANCEL"),
        "a second CANCEL"
    );
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 200);
}

#[test]
fn a_cancel_without_a_response_context_is_forwarded_statelessly() {
    let mut c = core();
    register(&mut c, "bob", "192.0.2.20:5062");
    // No INVITE went through us (§16.10): the CANCEL goes on where an INVITE would have
    // gone, and the caller gets downstream's answer, not ours.
    let out = send(&mut c, &caller_cancel("z9hG4bKnoctx"), CALLER, 0, T0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr("192.0.2.20:5062"));
    assert_eq!(method(&out[0].1), b"CANCEL");
    assert_eq!(c.proxy().state_len(), (0, 0, 0));
    let out = send(
        &mut c,
        &answer(&out[0].1, 481, "Call/Transaction Does Not Exist", "b1"),
        "192.0.2.20:5062",
        1,
        T0 + 5,
    );
    assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 481));
}

#[test]
fn a_header_the_proxy_does_not_use_is_forwarded_as_it_came() {
    // §16.3 step 1: a malformed Contact (or Record-Route, or a lower Via) is not the proxy's
    // business; the callee decides. A REGISTER with it is ours to reject.
    let mut c = core();
    register(&mut c, "bob", "192.0.2.20:5062");
    let bad = "Contact: <sip:alice@[::1>";
    let inv = String::from_utf8(invite("z9hG4bKodd"))
        .unwrap()
        .replace("Contact: <sip:alice@192.0.2.10:5060>", bad);
    assert!(inv.contains(bad));
    let out = send(&mut c, inv.as_bytes(), CALLER, 0, T0);
    let fwd = sent_to(&out, "192.0.2.20:5062");
    assert_eq!(fwd.len(), 1, "forwarded");
    assert!(String::from_utf8_lossy(&fwd[0]).contains(bad), "unchanged");
    let reg = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKregbad\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=r\r\nTo: <sip:alice@localhost>\r\n\
         Call-ID: regbad\r\nCSeq: 1 REGISTER\r\n{bad}\r\nContent-Length: 0\r\n\r\n"
    );
    let out = send(&mut c, reg.as_bytes(), CALLER, 0, T0 + 1);
    assert_eq!(status(&out[0].1), 400);
}

#[test]
fn loose_routing_goes_to_the_route_after_ours_on_one_line_or_two() {
    // §16.12: our Route is popped and the request goes to the next Route value, not to the
    // Request-URI, whether the values share a line or not.
    for routes in [
        format!("Route: <sip:{LISTEN};lr;ss=0>, <sip:192.0.2.30:5070;lr>"),
        format!("Route: <sip:{LISTEN};lr;ss=0>\r\nRoute: <sip:192.0.2.30:5070;lr>"),
    ] {
        let mut c = core();
        let bye = format!(
            "BYE sip:bob@192.0.2.20:5062 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKlr2\r\n\
             {routes}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\n\
             To: <sip:bob@localhost>;tag=b1\r\nCall-ID: lr2\r\nCSeq: 2 BYE\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let out = send(&mut c, bye.as_bytes(), CALLER, 0, T0);
        assert_eq!(out.len(), 1, "{routes}");
        assert_eq!(out[0].0, addr("192.0.2.30:5070"), "{routes}");
        let f = Message::parse(&out[0].1).unwrap();
        let left: Vec<_> = f.header_all(HeaderName::Route).collect();
        assert_eq!(left, vec![&b"<sip:192.0.2.30:5070;lr>"[..]], "{routes}");
    }
}

#[test]
fn a_caller_behind_nat_gets_received_and_rport_in_the_forwarded_via() {
    // RFC 3261 §18.2.1 and RFC 3581 §4: the Via says 10.0.0.5:5060 with a valueless rport,
    // the datagram came from 192.0.2.10:40001. The forwarded request carries both, so that
    // a response relayed by the Via alone (stateless mode here) reaches the NAT binding.
    let mut c = core_with(Mode::Stateless, RegistrarSettings::default(), None);
    register(&mut c, "bob", "192.0.2.20:5062");
    let inv = String::from_utf8(invite("z9hG4bKnat"))
        .unwrap()
        .replace(&format!("{CALLER};branch"), "10.0.0.5:5060;rport;branch");
    let out = send(&mut c, inv.as_bytes(), "192.0.2.10:40001", 0, T0);
    let fwd = sent_to(&out, "192.0.2.20:5062").remove(0);
    let f = Message::parse(&fwd).unwrap();
    let caller_via = f.vias().nth(1).unwrap().unwrap();
    assert_eq!(caller_via.received(), Some(&b"192.0.2.10"[..]));
    assert_eq!(caller_via.rport(), Some(Some(40001)));
    let out = send(
        &mut c,
        &answer(&fwd, 486, "Busy Here", "b1"),
        "192.0.2.20:5062",
        1,
        T0 + 5,
    );
    assert_eq!(
        out[0].0,
        addr("192.0.2.10:40001"),
        "back through the NAT binding"
    );
    // Without NAT (sent-by = source, no rport) the request goes on byte for byte.
    let out = send(&mut c, &invite("z9hG4bKnonat"), CALLER, 0, T0 + 10);
    let fwd = sent_to(&out, "192.0.2.20:5062").remove(0);
    let f = Message::parse(&fwd).unwrap();
    let caller_via = f.vias().nth(1).unwrap().unwrap();
    assert_eq!(caller_via.received(), None);
}

#[test]
fn cancel_from_the_caller_ends_in_487() {
    let mut c = core();
    register(&mut c, "bob", "192.0.2.20:5062");
    let inv = invite("z9hG4bKx1");
    let out = send(&mut c, &inv, CALLER, 0, T0);
    let fwd = out[1].1.clone();
    send(
        &mut c,
        &answer(&fwd, 180, "Ringing", "b1"),
        "192.0.2.20:5062",
        1,
        T0 + 5,
    );
    let cancel = b"CANCEL sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx1\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
Call-ID: call-z9hG4bKx1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
    let out = send(&mut c, cancel, CALLER, 0, T0 + 10);
    let ok: Vec<_> = out.iter().filter(|(d, _)| *d == addr(CALLER)).collect();
    assert_eq!(status(&ok[0].1), 200, "200 to the CANCEL");
    let down: Vec<_> = out
        .iter()
        .filter(|(d, _)| *d == addr("192.0.2.20:5062"))
        .collect();
    assert_eq!(method(&down[0].1), b"CANCEL");
    send(
        &mut c,
        &answer(&down[0].1, 200, "OK", "b1"),
        "192.0.2.20:5062",
        1,
        T0 + 12,
    );
    let out = send(
        &mut c,
        &answer(&fwd, 487, "Request Terminated", "b1"),
        "192.0.2.20:5062",
        1,
        T0 + 13,
    );
    let to_caller: Vec<_> = out.iter().filter(|(d, _)| *d == addr(CALLER)).collect();
    assert_eq!(status(&to_caller[0].1), 487);
    // The caller's ACK for the 487 is absorbed by the INVITE server transaction.
    let ack =
        b"ACK sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx1\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>;tag=b1\r\n\
Call-ID: call-z9hG4bKx1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
    assert!(send(&mut c, ack, CALLER, 0, T0 + 14).is_empty());
    assert_no_state(&mut c, T0 + 20);
}

#[test]
fn timer_c_cancels_an_unanswered_branch_with_408() {
    let mut c = core();
    register(&mut c, "bob", "192.0.2.20:5062");
    let out = send(&mut c, &invite("z9hG4bKt1"), CALLER, 0, T0);
    let fwd = out[1].1.clone();
    send(
        &mut c,
        &answer(&fwd, 180, "Ringing", "b1"),
        "192.0.2.20:5062",
        1,
        T0 + 5,
    );
    // Nothing before Timer C (3 min after the last provisional).
    let mut t = T0 + 5;
    while t < T0 + 5 + super::super::proxy::stateful::TIMER_C_MS - 1_000 {
        t += 1_000;
        let out = tick(&mut c, t);
        assert!(
            out.iter().all(|(d, _)| *d != addr(CALLER)),
            "early answer at {t}"
        );
    }
    let mut sent = Vec::new();
    for _ in 0..5 {
        t += 1_000;
        sent.extend(tick(&mut c, t));
    }
    // The 408 goes to the caller (and is retransmitted by Timer G until an ACK comes).
    let to_caller: Vec<_> = sent.iter().filter(|(d, _)| *d == addr(CALLER)).collect();
    assert!(!to_caller.is_empty());
    assert!(to_caller.iter().all(|(_, b)| status(b) == 408));
    assert!(sent
        .iter()
        .any(|(d, b)| *d == addr("192.0.2.20:5062") && method(b) == b"CANCEL"));
    assert_no_state(&mut c, t);
}

#[test]
fn retransmitted_invite_is_absorbed() {
    let mut c = core();
    register(&mut c, "bob", "192.0.2.20:5062");
    let inv = invite("z9hG4bKr1");
    let first = send(&mut c, &inv, CALLER, 0, T0);
    assert_eq!(first.len(), 2);
    // The retransmission gets the 100 again and is not forwarded a second time.
    let again = send(&mut c, &inv, CALLER, 0, T0 + 500);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].0, status(&again[0].1)), (addr(CALLER), 100));
}

#[test]
fn unknown_user_and_max_forwards_zero() {
    let mut c = core();
    let out = send(&mut c, &invite("z9hG4bKu1"), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 480);
    register(&mut c, "bob", "192.0.2.20:5062");
    let zero = String::from_utf8(invite("z9hG4bKu2"))
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    let out = send(&mut c, zero.as_bytes(), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 483);
    let pr = String::from_utf8(invite("z9hG4bKu3"))
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 70\r\nProxy-Require: foo");
    let out = send(&mut c, pr.as_bytes(), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 420);
}

/// A core with digest users alice and bob.
pub(super) fn core_with_auth() -> Core {
    use crate::auth::{Authenticator, UserDb};
    let mut db = UserDb::new("localhost");
    db.add_password("alice", "secret").unwrap();
    db.add_password("bob", "pw").unwrap();
    let auth = Authenticator::new("localhost", Arc::new(db), [7; 32], 300);
    let registrar = RegistrarSettings {
        match_auth_user: false,
        ..RegistrarSettings::default()
    };
    core_with(Mode::Proxy, registrar, Some(auth))
}

/// The INVITE of `invite()` with a Proxy-Authorization answering `challenge` as `user`.
pub(super) fn invite_with_credentials(
    challenge: &[u8],
    user: &str,
    pw: &str,
    from_user: &str,
    nc: u32,
) -> Vec<u8> {
    let ch = Message::parse(challenge).unwrap();
    let params = crate::auth::client::first_supported_challenge(&ch, HeaderName::ProxyAuthenticate)
        .expect("a challenge we can answer");
    let creds = crate::auth::client_response(
        &params,
        user,
        pw,
        b"INVITE",
        b"sip:bob@localhost",
        nc,
        "0a4f113b",
    )
    .unwrap();
    String::from_utf8(invite("z9hG4bKauth2"))
        .unwrap()
        .replace(
            "From: <sip:alice@localhost>",
            &format!("From: <sip:{from_user}@localhost>"),
        )
        .replace(
            "Max-Forwards: 70",
            &format!("Max-Forwards: 70\r\nProxy-Authorization: {creds}"),
        )
        .into_bytes()
}

#[test]
fn proxied_requests_from_our_users_need_digest_auth_with_matching_from() {
    let mut c = core_with_auth();
    // bob's phone registers (with credentials: the registrar asks too).
    let reg = "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKr1\r\n\
Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
Call-ID: reg-bob\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@192.0.2.20:5062>\r\nContent-Length: 0\r\n\r\n";
    let out = send(&mut c, reg.as_bytes(), "192.0.2.20:5062", 0, T0);
    assert_eq!(status(&out[0].1), 401);
    // An INVITE without credentials gets 407 with Proxy-Authenticate.
    let out = send(&mut c, &invite("z9hG4bKauth1"), CALLER, 0, T0);
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0].1), 407);
    let challenge = out[0].1.clone();
    assert!(Message::parse(&challenge)
        .unwrap()
        .header(HeaderName::ProxyAuthenticate)
        .is_some());
    // Right credentials but a From that is not the authenticated user: 403.
    let spoofed = invite_with_credentials(&challenge, "alice", "secret", "carol", 1);
    let out = send(&mut c, &spoofed, CALLER, 0, T0 + 10);
    assert_eq!(status(&out[0].1), 403);
    // Wrong password: challenged again.
    let wrong = invite_with_credentials(&challenge, "alice", "guess", "alice", 2);
    let out = send(&mut c, &wrong.clone(), CALLER, 0, T0 + 20);
    assert_eq!(status(&out[0].1), 407);
    // Right credentials and From (the next nonce count): past authentication (480: bob has
    // no binding yet).
    let good = String::from_utf8(invite_with_credentials(
        &challenge, "alice", "secret", "alice", 2,
    ))
    .unwrap()
    .replace("z9hG4bKauth2", "z9hG4bKauth3")
    .into_bytes();
    let out = send(&mut c, &good, CALLER, 0, T0 + 30);
    assert_eq!(status(&out[0].1), 480);
}

#[test]
fn with_a_user_list_unknown_users_get_404_and_known_ones_without_binding_480() {
    let mut c = core_with_auth();
    let out = send(&mut c, &invite("z9hG4bKnf1"), CALLER, 0, T0);
    let ch = Message::parse(&out[0].1).unwrap();
    let params = crate::auth::client::first_supported_challenge(&ch, HeaderName::ProxyAuthenticate)
        .expect("a challenge we can answer");
    for (nc, callee, want) in [(1, "nobody", 404), (2, "bob", 480), (3, "%62ob", 480)] {
        let ruri = format!("sip:{callee}@localhost");
        let creds = crate::auth::client_response(
            &params,
            "alice",
            "secret",
            b"INVITE",
            ruri.as_bytes(),
            nc,
            "0a4f113b",
        )
        .unwrap();
        let req = String::from_utf8(invite(&format!("z9hG4bKnf-{nc}")))
            .unwrap()
            .replace("INVITE sip:bob@localhost", &format!("INVITE {ruri}"))
            .replace(
                "Max-Forwards: 70",
                &format!("Max-Forwards: 70\r\nProxy-Authorization: {creds}"),
            );
        let out = send(&mut c, req.as_bytes(), CALLER, 0, T0 + nc as u64);
        assert_eq!(status(&out[0].1), want, "{callee}");
    }
    // Without a user list nobody is known: 480, as before.
    let mut open = core();
    let nobody = String::from_utf8(invite("z9hG4bKnf9"))
        .unwrap()
        .replace("INVITE sip:bob@localhost", "INVITE sip:nobody@localhost");
    let out = send(&mut open, nobody.as_bytes(), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 480);
}

#[test]
fn stateless_mode_relays_in_dialog_requests_without_transactions() {
    let mut c = core_with(Mode::Stateless, RegistrarSettings::default(), None);
    // A BYE inside a dialog set up through us: no Route (we add no Record-Route in this
    // mode), the Request-URI is the callee's Contact.
    let bye = format!(
        "BYE sip:bob@192.0.2.20:5062 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKslbye\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\n\
         To: <sip:bob@localhost>;tag=b1\r\nCall-ID: sl-dialog\r\nCSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(&mut c, bye.as_bytes(), CALLER, 0, T0);
    assert_eq!(out.len(), 1, "forwarded, not answered");
    assert_eq!(out[0].0, addr("192.0.2.20:5062"));
    assert_eq!(method(&out[0].1), b"BYE");
    assert_eq!(c.proxy().state_len(), (0, 0, 0), "§16.11: no transaction");
    let out = send(
        &mut c,
        &answer(&out[0].1, 200, "OK", "b1"),
        "192.0.2.20:5062",
        1,
        T0 + 5,
    );
    assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 200));
}

#[test]
fn stateless_mode_forwards_and_relays_without_transactions() {
    let mut c = core_with(Mode::Stateless, RegistrarSettings::default(), None);
    register(&mut c, "bob", "192.0.2.20:5062");
    // No 100 Trying: the request goes straight on (§16.11).
    let out = send(&mut c, &invite("z9hG4bKsl1"), CALLER, 0, T0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr("192.0.2.20:5062"));
    let fwd = out[0].1.clone();
    assert_eq!(Message::parse(&fwd).unwrap().vias().count(), 2);
    // The response goes back by the Via alone.
    let out = send(
        &mut c,
        &answer(&fwd, 486, "Busy Here", "b1"),
        "192.0.2.20:5062",
        1,
        T0 + 5,
    );
    assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 486));
    assert_eq!(Message::parse(&out[0].1).unwrap().vias().count(), 1);
    // A retransmission is forwarded again with the same branch (stateless, deterministic).
    let again = send(&mut c, &invite("z9hG4bKsl1"), CALLER, 0, T0 + 500);
    assert_eq!(top_branch(&fwd), top_branch(&again[0].1));
    assert_eq!(c.proxy().state_len(), (0, 0, 0));
}

#[test]
fn stateless_mode_detects_a_loop_and_lets_a_spiral_through() {
    let mut c = core_with(Mode::Stateless, RegistrarSettings::default(), None);
    let (branch, _) = loop_then_spiral(&mut c, "z9hG4bKslloop");
    // The shape of a stateful branch, loop hash included, so the loop check can read it.
    assert!(branch.starts_with(b"z9hG4bK-ss0."));
    assert!(crate::proxy::messages::loop_part(&branch).is_some());
    assert_eq!(c.proxy().state_len(), (0, 0, 0));
}

/// What went to `dst`.
pub(super) fn sent_to(out: &[(SocketAddr, Vec<u8>)], dst: &str) -> Vec<Vec<u8>> {
    out.iter()
        .filter(|(d, _)| *d == addr(dst))
        .map(|(_, b)| b.clone())
        .collect()
}

/// A proxy core with sequential forking and a 2 s group timeout.
fn sequential_core() -> Core {
    core_with_proxy(
        Mode::Proxy,
        RegistrarSettings::default(),
        None,
        ProxySettings {
            forking: Forking::Sequential,
            branch_timeout_ms: 2_000,
            ..Default::default()
        },
    )
}

const PHONE_A: &str = "192.0.2.20:5062";
const PHONE_B: &str = "192.0.2.21:5062";
const PHONE_C: &str = "192.0.2.22:5062";

/// bob has A and B at q=1.0 and C at q=0.5 (registered first, so the order of
/// registration is not what orders the groups).
fn register_three_phones(c: &mut Core) {
    register_q(c, "bob", PHONE_C, ";q=0.5");
    register_q(c, "bob", PHONE_A, ";q=1.0");
    register_q(c, "bob", PHONE_B, "");
}

/// The caller's CANCEL for `invite(branch)`.
fn caller_cancel(branch: &str) -> Vec<u8> {
    format!(
        "CANCEL sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: call-{branch}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn sequential_forking_tries_the_lower_q_group_after_the_higher_one_failed() {
    let mut c = sequential_core();
    register_three_phones(&mut c);
    let out = send(&mut c, &invite("z9hG4bKseq1"), CALLER, 0, T0);
    // The q=1.0 group (A and B) in parallel; C waits.
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 100);
    let (a, b) = (sent_to(&out, PHONE_A), sent_to(&out, PHONE_B));
    assert_eq!((a.len(), b.len(), out.len()), (1, 1, 3), "only A and B");
    // A is busy: nothing for the caller yet (B still tries), C still waits.
    let out = send(
        &mut c,
        &answer(&a[0], 486, "Busy Here", "a"),
        PHONE_A,
        1,
        T0 + 10,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(method(&sent_to(&out, PHONE_A)[0]), b"ACK");
    // B fails too: the group is over, the INVITE goes to C.
    let out = send(
        &mut c,
        &answer(&b[0], 404, "Not Found", "b"),
        PHONE_B,
        1,
        T0 + 20,
    );
    assert!(sent_to(&out, CALLER).is_empty(), "no final response yet");
    let to_c = sent_to(&out, PHONE_C);
    assert_eq!(to_c.len(), 1);
    let fwd_c = Message::parse(&to_c[0]).unwrap();
    assert_eq!(fwd_c.method_bytes(), Some(&b"INVITE"[..]));
    assert_eq!(
        fwd_c.request_uri_bytes(),
        Some(&b"sip:bob@192.0.2.22:5062"[..])
    );
    assert_eq!(fwd_c.max_forwards().unwrap(), Some(69));
    // C answers: the caller gets that 200.
    let out = send(
        &mut c,
        &answer(&to_c[0], 200, "OK", "c"),
        PHONE_C,
        1,
        T0 + 30,
    );
    let to_caller = sent_to(&out, CALLER);
    assert_eq!(to_caller.len(), 1);
    assert_eq!(status(&to_caller[0]), 200);
    assert_eq!(
        Message::parse(&to_caller[0]).unwrap().to().unwrap().tag(),
        Some(&b"c"[..])
    );
    assert_no_state(&mut c, T0 + 40);
}

#[test]
fn sequential_forking_cancels_a_group_that_does_not_answer_in_time() {
    let mut c = sequential_core();
    register_three_phones(&mut c);
    let out = send(&mut c, &invite("z9hG4bKseq2"), CALLER, 0, T0);
    let (a, b) = (sent_to(&out, PHONE_A), sent_to(&out, PHONE_B));
    // A rings (relayed); B stays silent.
    let out = send(
        &mut c,
        &answer(&a[0], 180, "Ringing", "a"),
        PHONE_A,
        1,
        T0 + 5,
    );
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 180);
    // Nothing happens before the group timeout (2 s)...
    let mut t = T0 + 5;
    while t < T0 + 1_999 {
        t += 100;
        let out = tick(&mut c, t.min(T0 + 1_999));
        assert!(sent_to(&out, PHONE_C).is_empty(), "C too early at {t}");
        assert!(sent_to(&out, CALLER).is_empty());
    }
    // ... then A gets its CANCEL and C the INVITE; the caller hears nothing.
    let out = tick(&mut c, T0 + 2_000);
    let cancel_a = sent_to(&out, PHONE_A);
    assert_eq!(cancel_a.len(), 1);
    assert_eq!(method(&cancel_a[0]), b"CANCEL");
    let to_c = sent_to(&out, PHONE_C);
    assert_eq!(to_c.len(), 1);
    assert_eq!(method(&to_c[0]), b"INVITE");
    assert!(sent_to(&out, CALLER).is_empty());
    // B had sent no provisional response (§9.1: no CANCEL yet); when its 180 comes it gets
    // the CANCEL and the 180 is not relayed.
    assert!(sent_to(&out, PHONE_B)
        .iter()
        .all(|m| method(m) != b"CANCEL"));
    let out = send(
        &mut c,
        &answer(&b[0], 180, "Ringing", "b"),
        PHONE_B,
        1,
        T0 + 2_100,
    );
    assert!(
        sent_to(&out, CALLER).is_empty(),
        "180 of a cancelled branch"
    );
    assert_eq!(method(&sent_to(&out, PHONE_B)[0]), b"CANCEL");
    // A's 487 is ACKed and swallowed.
    send(
        &mut c,
        &answer(&cancel_a[0], 200, "OK", "a"),
        PHONE_A,
        1,
        T0 + 2_200,
    );
    let out = send(
        &mut c,
        &answer(&a[0], 487, "Request Terminated", "a"),
        PHONE_A,
        1,
        T0 + 2_210,
    );
    assert!(sent_to(&out, CALLER).is_empty());
    // C answers.
    let out = send(
        &mut c,
        &answer(&to_c[0], 200, "OK", "c"),
        PHONE_C,
        1,
        T0 + 3_000,
    );
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 200);
    assert_no_state(&mut c, T0 + 3_000);
}

#[test]
fn sequential_forking_ends_on_6xx_and_sends_the_best_response_when_exhausted() {
    // A 6xx ends the search (§16.7): C never gets the INVITE.
    let mut c = sequential_core();
    register_three_phones(&mut c);
    let out = send(&mut c, &invite("z9hG4bKseq3"), CALLER, 0, T0);
    let (a, b) = (sent_to(&out, PHONE_A), sent_to(&out, PHONE_B));
    send(
        &mut c,
        &answer(&b[0], 180, "Ringing", "b"),
        PHONE_B,
        1,
        T0 + 5,
    );
    let out = send(
        &mut c,
        &answer(&a[0], 603, "Decline", "a"),
        PHONE_A,
        1,
        T0 + 10,
    );
    assert_eq!(method(&sent_to(&out, PHONE_B)[0]), b"CANCEL");
    assert!(sent_to(&out, PHONE_C).is_empty());
    let out = send(
        &mut c,
        &answer(&b[0], 487, "Request Terminated", "b"),
        PHONE_B,
        1,
        T0 + 20,
    );
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 603);
    assert!(sent_to(&out, PHONE_C).is_empty());
    let mut t = T0 + 20;
    while t < T0 + 10_000 {
        t += 500;
        assert!(sent_to(&tick(&mut c, t), PHONE_C).is_empty());
    }
    assert_no_state(&mut c, t);

    // Every group fails: the best of all the finals goes upstream (5xx loses to 4xx).
    let mut c = sequential_core();
    register_three_phones(&mut c);
    let out = send(&mut c, &invite("z9hG4bKseq4"), CALLER, 0, T0);
    let (a, b) = (sent_to(&out, PHONE_A), sent_to(&out, PHONE_B));
    send(
        &mut c,
        &answer(&a[0], 500, "Oops", "a"),
        PHONE_A,
        1,
        T0 + 10,
    );
    let out = send(
        &mut c,
        &answer(&b[0], 503, "Unavailable", "b"),
        PHONE_B,
        1,
        T0 + 11,
    );
    let to_c = sent_to(&out, PHONE_C);
    let out = send(
        &mut c,
        &answer(&to_c[0], 486, "Busy Here", "c"),
        PHONE_C,
        1,
        T0 + 20,
    );
    let to_caller = sent_to(&out, CALLER);
    assert_eq!(to_caller.len(), 1);
    assert_eq!(status(&to_caller[0]), 486);
    assert_no_state(&mut c, T0 + 20);
}

#[test]
fn cancel_from_the_caller_stops_sequential_forking() {
    let mut c = sequential_core();
    register_three_phones(&mut c);
    let out = send(&mut c, &invite("z9hG4bKseq5"), CALLER, 0, T0);
    let (a, b) = (sent_to(&out, PHONE_A), sent_to(&out, PHONE_B));
    send(
        &mut c,
        &answer(&a[0], 180, "Ringing", "a"),
        PHONE_A,
        1,
        T0 + 5,
    );
    send(
        &mut c,
        &answer(&b[0], 180, "Ringing", "b"),
        PHONE_B,
        1,
        T0 + 6,
    );
    let out = send(&mut c, &caller_cancel("z9hG4bKseq5"), CALLER, 0, T0 + 100);
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 200);
    let (ca, cb) = (sent_to(&out, PHONE_A), sent_to(&out, PHONE_B));
    assert_eq!(
        (method(&ca[0]), method(&cb[0])),
        (b"CANCEL".to_vec(), b"CANCEL".to_vec())
    );
    send(
        &mut c,
        &answer(&ca[0], 200, "OK", "a"),
        PHONE_A,
        1,
        T0 + 110,
    );
    send(
        &mut c,
        &answer(&cb[0], 200, "OK", "b"),
        PHONE_B,
        1,
        T0 + 110,
    );
    let out = send(
        &mut c,
        &answer(&a[0], 487, "Request Terminated", "a"),
        PHONE_A,
        1,
        T0 + 120,
    );
    assert!(sent_to(&out, PHONE_C).is_empty());
    let out = send(
        &mut c,
        &answer(&b[0], 487, "Request Terminated", "b"),
        PHONE_B,
        1,
        T0 + 121,
    );
    assert!(
        sent_to(&out, PHONE_C).is_empty(),
        "no next group after CANCEL"
    );
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 487);
    // Past the group timeout: still nothing for C.
    let mut t = T0 + 121;
    while t < T0 + 10_000 {
        t += 500;
        assert!(sent_to(&tick(&mut c, t), PHONE_C).is_empty());
    }
    assert_no_state(&mut c, t);
}

#[test]
fn parallel_forking_ignores_q_values() {
    let mut c = core();
    register_three_phones(&mut c);
    let out = send(&mut c, &invite("z9hG4bKpar1"), CALLER, 0, T0);
    for p in [PHONE_A, PHONE_B, PHONE_C] {
        assert_eq!(sent_to(&out, p).len(), 1, "{p}");
    }
}

/// A 401/407 from a callee with one challenge line per `(header, realm)`.
fn challenge(req: &[u8], code: u16, tag: &str, lines: &[(&str, &str)]) -> Vec<u8> {
    let m = Message::parse(req).unwrap();
    let mut out = Vec::new();
    let reason: &[u8] = if code == 401 {
        b"Unauthorized"
    } else {
        b"Proxy Authentication Required"
    };
    response_head(&mut out, &m, code, reason, Some(tag.as_bytes()), None);
    for (name, realm) in lines {
        header(
            &mut out,
            name,
            format!("Digest realm=\"{realm}\", nonce=\"n-{realm}\"").as_bytes(),
        );
    }
    finish(&mut out, b"");
    out
}

#[test]
fn challenges_of_every_branch_are_aggregated_into_the_401_or_407() {
    let mut c = core();
    register_three_phones(&mut c);
    let out = send(&mut c, &invite("z9hG4bKauthagg"), CALLER, 0, T0);
    let (a, b, cc) = (
        sent_to(&out, PHONE_A),
        sent_to(&out, PHONE_B),
        sent_to(&out, PHONE_C),
    );
    let r = challenge(&a[0], 401, "a", &[("WWW-Authenticate", "a.example")]);
    assert!(sent_to(&send(&mut c, &r, PHONE_A, 0, T0 + 10), CALLER).is_empty());
    let r = challenge(
        &b[0],
        407,
        "b",
        &[
            ("Proxy-Authenticate", "b.example"),
            ("WWW-Authenticate", "b2.example"),
        ],
    );
    assert!(sent_to(&send(&mut c, &r, PHONE_B, 0, T0 + 11), CALLER).is_empty());
    let out = send(
        &mut c,
        &answer(&cc[0], 404, "Not Found", "c"),
        PHONE_C,
        1,
        T0 + 12,
    );
    let to_caller = sent_to(&out, CALLER);
    assert_eq!(to_caller.len(), 1);
    let m = Message::parse(&to_caller[0]).unwrap();
    m.validate().unwrap();
    assert_eq!(m.status(), Some(401));
    let www: Vec<String> = m
        .header_all(HeaderName::WwwAuthenticate)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(
        www,
        vec![
            "Digest realm=\"a.example\", nonce=\"n-a.example\"",
            "Digest realm=\"b2.example\", nonce=\"n-b2.example\""
        ]
    );
    assert_eq!(
        m.header(HeaderName::ProxyAuthenticate),
        Some(&b"Digest realm=\"b.example\", nonce=\"n-b.example\""[..])
    );
    assert_eq!(m.vias().count(), 1, "our Via removed");
    assert_no_state(&mut c, T0 + 20);
}

/// `req` as a downstream element would send it back to us: its own Via on top and another
/// Request-URI.
fn sent_back(req: &[u8], ruri: &str, via_branch: &str) -> Vec<u8> {
    let m = Message::parse(req).unwrap();
    let old = std::str::from_utf8(m.request_uri_bytes().unwrap()).unwrap();
    let text = String::from_utf8(req.to_vec())
        .unwrap()
        .replacen(old, ruri, 1);
    text.replacen(
        "\r\nVia: ",
        &format!("\r\nVia: SIP/2.0/UDP {PHONE_A};branch={via_branch}\r\nVia: "),
        1,
    )
    .into_bytes()
}

/// Registers bob at PHONE_A and carol at PHONE_B, calls bob (`call` is the caller's branch),
/// then sends what was forwarded to bob back to the proxy twice, as the next hop would: for
/// the same Request-URI (a loop: 482 to the sender), then retargeted to carol (a spiral: the
/// INVITE goes on to carol, with the Vias ours, downstream, ours, caller). Returns the branch
/// of the Via the proxy added to the first forward, and what the spiral made the proxy send.
fn loop_then_spiral(c: &mut Core, call: &str) -> (Vec<u8>, Vec<(SocketAddr, Vec<u8>)>) {
    register(c, "bob", PHONE_A);
    register(c, "carol", PHONE_B);
    let out = send(c, &invite(call), CALLER, 0, T0);
    let fwd = sent_to(&out, PHONE_A).remove(0);
    // Sent back to us for the same Request-URI: nothing changed, a loop (482 to the sender).
    let back = sent_back(&fwd, "sip:bob@localhost", "z9hG4bKdown1");
    let out = send(c, &back, PHONE_A, 0, T0 + 10);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0, status(&out[0].1)), (addr(PHONE_A), 482));
    // Retargeted to carol (call forwarding downstream): a spiral, forwarded to carol.
    let spiral = sent_back(&fwd, "sip:carol@localhost", "z9hG4bKdown2");
    let out = send(c, &spiral, PHONE_A, 0, T0 + 20);
    let to_carol = sent_to(&out, PHONE_B);
    assert_eq!(to_carol.len(), 1, "{out:?}");
    let f = Message::parse(&to_carol[0]).unwrap();
    assert_eq!(f.method_bytes(), Some(&b"INVITE"[..]));
    assert_eq!(f.vias().count(), 4, "ours, downstream, ours, caller");
    (top_branch(&fwd), out)
}

#[test]
fn a_request_that_returns_unchanged_is_a_loop_and_a_changed_one_a_spiral() {
    let mut c = core();
    let (branch, spiral_out) = loop_then_spiral(&mut c, "z9hG4bKloop1");
    assert!(branch.starts_with(b"z9hG4bK-ss0."), "shard id first");
    assert_eq!(crate::proxy::stateful::shard_of_branch(&branch), Some(0));
    // The stateful proxy answers the spiralled INVITE with 100 Trying.
    assert_eq!(status(&sent_to(&spiral_out, PHONE_A)[0]), 100);
}

#[test]
fn a_binding_that_points_back_at_the_proxy_spirals_once_then_loops() {
    // bob's contact is the proxy itself: pass 2 is a spiral (the Request-URI changed from
    // the AOR to the contact), pass 3 comes back unchanged: 482.
    let mut c = core();
    register(&mut c, "bob", LISTEN);
    let out = send(&mut c, &invite("z9hG4bKself"), CALLER, 0, T0);
    let pass2 = sent_to(&out, LISTEN).remove(0);
    let out = send(&mut c, &pass2, LISTEN, 0, T0 + 1);
    // Requests to LISTEN: the forwarded spiral (its 100 Trying goes there too).
    let pass3: Vec<_> = sent_to(&out, LISTEN)
        .into_iter()
        .filter(|b| Message::parse(b).unwrap().method().is_some())
        .collect();
    assert_eq!(pass3.len(), 1, "the spiral is forwarded");
    assert_eq!(method(&pass3[0]), b"INVITE");
    let out = send(&mut c, &pass3[0], LISTEN, 0, T0 + 2);
    let sent: Vec<_> = sent_to(&out, LISTEN);
    assert_eq!(sent.len(), 1, "answered, not forwarded a third time");
    assert_eq!(status(&sent[0]), 482);
}

/// Two shards sharing LISTEN: every datagram arrives on the shared socket of whichever
/// shard the kernel picks.
fn two_shards_plain() -> Vec<Core> {
    two_shards(None)
}

/// [`two_shards_plain`], each shard with its authenticator from `auth`.
fn two_shards(auth: Option<crate::auth::Authenticator>) -> Vec<Core> {
    let cfg = Arc::new(config(
        2,
        Mode::Proxy,
        RegistrarSettings::default(),
        ProxySettings::default(),
    ));
    (0..2)
        .map(|i| shard_core(i, cfg.clone(), auth.as_ref().map(|a| a.for_shard(i))))
        .collect()
}

/// A shard on the same thread whose round comes later: it takes what it owns while `open`.
struct Neighbour<'a> {
    core: &'a mut Core,
    out: Outbox,
    open: bool,
}

impl super::Neighbours for Neighbour<'_> {
    fn core(&mut self, shard: usize) -> Option<(&mut Core, &mut Outbox)> {
        (self.open && shard == 1).then_some((&mut *self.core, &mut self.out))
    }
}

/// A user whose AOR the second of two shards owns.
fn user_of_shard(shard: usize) -> String {
    use crate::server::ownership::{aor_hash, owner_shard};
    (0..)
        .map(|i| format!("user{i}"))
        .find(|u| {
            let uri = format!("sip:{u}@localhost");
            let hash = aor_hash(&crate::sip::Uri::parse(uri.as_bytes()).unwrap()).unwrap();
            owner_shard(hash, 2) == shard
        })
        .unwrap()
}

#[test]
fn a_message_for_a_shard_later_on_the_same_thread_is_dispatched_to_it_with_its_answer() {
    use super::Disposition;
    let mut cores = two_shards_plain();
    let (first, second) = cores.split_at_mut(1);
    let (reader, owner) = (&mut first[0], &mut second[0]);
    let theirs = user_of_shard(1);
    let mut out = Outbox::new();
    // Closed (its queue is not empty, say): handed over as before, nothing answered here.
    let mut n = Neighbour {
        core: owner,
        out: Outbox::new(),
        open: false,
    };
    let reg = register_request(&theirs, 1, None);
    let d = reader.handle_with(&reg, addr(PHONE_A), 0, T0, false, &mut out, &mut n);
    assert_eq!(d, Disposition::HandOff(1));
    assert!(out.is_empty() && n.out.is_empty());
    // Open: the owner takes it at once, its 200 in the owner's outbox, not the reader's.
    n.open = true;
    let d = reader.handle_with(&reg, addr(PHONE_A), 0, T0, false, &mut out, &mut n);
    assert_eq!(d, Disposition::Dispatched(1));
    assert!(out.is_empty(), "the answer went to the reader's outbox");
    let sent = drain(&n.out);
    assert_eq!(sent.len(), 1);
    assert_eq!(status(&sent[0].1), 200);
    // The binding is the owner's: a query there lists it.
    let query = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE_A};branch=z9hG4bKq\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{theirs}@localhost>;tag=r\r\nTo: <sip:{theirs}@localhost>\r\n\
         Call-ID: q-{theirs}\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    );
    let mut q = Outbox::new();
    n.core
        .handle(query.as_bytes(), addr(PHONE_A), 0, T0 + 1, true, &mut q);
    let answer = String::from_utf8_lossy(&drain(&q)[0].1).into_owned();
    assert!(
        answer.contains(&format!("<sip:{theirs}@{PHONE_A}>")),
        "{answer}"
    );
    // What the reader owns stays with it.
    let ours = register_request(&user_of_shard(0), 1, None);
    n.out.clear();
    let d = reader.handle_with(&ours, addr(PHONE_A), 0, T0, false, &mut out, &mut n);
    assert_eq!(d, Disposition::Done);
    assert_eq!(status(&drain(&out)[0].1), 200);
    assert!(n.out.is_empty());
}

/// A REGISTER from PHONE_A for `user`, with an Authorization line when `auth` is given.
fn register_request(user: &str, cseq: u32, auth: Option<&str>) -> Vec<u8> {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE_A};branch=z9hG4bKr{user}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@localhost>;tag=r\r\nTo: <sip:{user}@localhost>\r\n\
         Call-ID: reg-{user}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{PHONE_A}>\r\n\
         {auth}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The Authorization value answering the 401 `challenge` for `user`.
fn answer_challenge(challenge: &[u8], user: &str, pw: &str) -> String {
    use crate::auth::client::{client_response, first_supported_challenge};
    let m = Message::parse(challenge).unwrap();
    let ch = first_supported_challenge(&m, HeaderName::WwwAuthenticate).unwrap();
    client_response(&ch, user, pw, b"REGISTER", b"sip:localhost", 1, "c0ffee").unwrap()
}

#[test]
fn a_register_without_credentials_is_challenged_where_it_arrives_for_the_owning_shard() {
    use crate::auth::{Authenticator, UserDb};
    use crate::server::ownership::{aor_hash, owner_shard};
    let mut db = UserDb::new("localhost");
    let users = ["alice", "bob", "carol", "dave", "erin", "frank"];
    for u in users {
        db.add_password(u, "pw").unwrap();
    }
    let mut cores = two_shards(Some(Authenticator::new(
        "localhost",
        Arc::new(db),
        [7; 32],
        300,
    )));
    let owner = |u: &str| {
        let uri = format!("sip:{u}@localhost");
        owner_shard(
            aor_hash(&crate::sip::Uri::parse(uri.as_bytes()).unwrap()).unwrap(),
            2,
        )
    };
    let mut crossed = 0;
    for (i, u) in users.iter().enumerate() {
        let own = owner(u);
        for at in [0, 1] {
            let cseq = 1 + 2 * at as u32;
            let (by, out) = deliver(
                &mut cores,
                at,
                &register_request(u, cseq, None),
                PHONE_A,
                T0,
            );
            // The challenge comes from the shard the datagram reached, no hand-off...
            assert_eq!(by, at, "{u}");
            assert_eq!(status(&out[0].1), 401);
            // ...and the retry, which goes to the owner, is accepted there.
            let creds = answer_challenge(&out[0].1, u, "pw");
            let retry = register_request(u, cseq + 1, Some(&creds));
            let (by, out) = deliver(&mut cores, at, &retry, PHONE_A, T0 + 1 + i as u64);
            assert_eq!(by, own, "{u}");
            assert_eq!(
                status(&out[0].1),
                200,
                "{}",
                String::from_utf8_lossy(&out[0].1)
            );
            crossed += usize::from(at != own);
        }
    }
    assert_eq!(
        crossed,
        users.len(),
        "each user arrived once at the other shard"
    );
    // A nonce is only good at its owner: credentials from a challenge issued for one AOR's
    // owner, sent for an AOR of the other shard, get a fresh nonce (stale=true).
    let (a, b) = match (
        users.iter().find(|u| owner(u) == 0),
        users.iter().find(|u| owner(u) == 1),
    ) {
        (Some(a), Some(b)) => (*a, *b),
        _ => panic!("the users cover both shards"),
    };
    let (_, out) = deliver(
        &mut cores,
        0,
        &register_request(a, 9, None),
        PHONE_A,
        T0 + 10,
    );
    let creds = answer_challenge(&out[0].1, b, "pw");
    let (by, out) = deliver(
        &mut cores,
        0,
        &register_request(b, 10, Some(&creds)),
        PHONE_A,
        T0 + 11,
    );
    assert_eq!(by, 1);
    assert_eq!(status(&out[0].1), 401);
    assert!(String::from_utf8_lossy(&out[0].1).contains("stale=true"));
}

/// Delivers `data` to shard `at` on the shared socket; follows a hand-off like the runtime
/// does. Returns the shard that handled it and what it sent.
fn deliver(
    cores: &mut [Core],
    at: usize,
    data: &[u8],
    src: &str,
    now: u64,
) -> (usize, Vec<(SocketAddr, Vec<u8>)>) {
    let mut out = Outbox::new();
    match cores[at].handle(data, addr(src), 0, now, false, &mut out) {
        super::Disposition::Done => (at, drain(&out)),
        super::Disposition::HandOff(to) => {
            assert_eq!(out.len(), 0, "nothing sent before a hand-off");
            cores[to].handle(data, addr(src), 0, now, true, &mut out);
            (to, drain(&out))
        }
        super::Disposition::Dispatched(_) => unreachable!("no neighbours"),
    }
}

/// An in-dialog request of the call of `invite(branch)`, from the caller (`from_caller`) or
/// from the callee, with `route` as its Route.
fn in_dialog(m: &str, cseq: u32, branch: &str, route: &str, from_caller: bool) -> Vec<u8> {
    let (ruri, via, from, to) = if from_caller {
        (
            format!("sip:bob@{PHONE_A}"),
            CALLER,
            "<sip:alice@localhost>;tag=a1",
            "<sip:bob@localhost>;tag=b1",
        )
    } else {
        (
            format!("sip:alice@{CALLER}"),
            PHONE_A,
            "<sip:bob@localhost>;tag=b1",
            "<sip:alice@localhost>;tag=a1",
        )
    };
    format!(
        "{m} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{m}{cseq}{from_caller}\r\n\
         Route: {route}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: call-{branch}\r\nCSeq: {cseq} {m}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn responses_and_in_dialog_requests_reach_the_owning_shard() {
    let mut cores = two_shards_plain();
    // The REGISTER and the INVITE go to the AOR's owner whichever shard receives them.
    let reg = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE_A};branch=z9hG4bKnp-reg\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: np-reg\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@{PHONE_A}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let (owner, out) = deliver(&mut cores, 0, reg.as_bytes(), PHONE_A, T0);
    assert_eq!(status(&out[0].1), 200);
    let other = 1 - owner;
    // Everything below arrives at the shard that does NOT own the call.
    let branch = "z9hG4bKnp1";
    let (by, out) = deliver(&mut cores, other, &invite(branch), CALLER, T0);
    assert_eq!(by, owner);
    let fwd = sent_to(&out, PHONE_A).remove(0);
    let f = Message::parse(&fwd).unwrap();
    let rr = f.record_routes().next().unwrap().unwrap().uri().unwrap();
    assert_eq!(rr.port, Some(5060), "Record-Route names the shared port");
    let ss = owner.to_string();
    assert_eq!(rr.param("ss"), Some(Some(ss.as_bytes())));
    let route = format!("<sip:{LISTEN};lr;ss={owner}>");
    // 180 and 200 from the callee: routed by the shard id in our branch.
    for (code, reason) in [(180, "Ringing"), (200, "OK")] {
        let (by, out) = deliver(
            &mut cores,
            other,
            &answer(&fwd, code, reason, "b1"),
            PHONE_A,
            T0 + 10,
        );
        assert_eq!(by, owner, "{code}");
        assert_eq!(status(&sent_to(&out, CALLER)[0]), code);
    }
    // ACK from the caller: by the Route's ss parameter, relayed to the callee.
    let (by, out) = deliver(
        &mut cores,
        other,
        &in_dialog("ACK", 1, branch, &route, true),
        CALLER,
        T0 + 20,
    );
    assert_eq!(by, owner);
    assert_eq!(method(&sent_to(&out, PHONE_A)[0]), b"ACK");
    // BYE from the callee (its route set is the Record-Route): to the caller...
    let bye = in_dialog("BYE", 1, branch, &route, false);
    let (by, out) = deliver(&mut cores, other, &bye, PHONE_A, T0 + 30);
    assert_eq!(by, owner);
    let fwd_bye = sent_to(&out, CALLER).remove(0);
    assert_eq!(method(&fwd_bye), b"BYE");
    // ... and the caller's 200 comes back through the shard that forwarded the BYE.
    let (by, out) = deliver(
        &mut cores,
        other,
        &answer(&fwd_bye, 200, "OK", "a1"),
        CALLER,
        T0 + 40,
    );
    assert_eq!(by, owner);
    assert_eq!(status(&sent_to(&out, PHONE_A)[0]), 200);

    // A cancelled call: CANCEL (by the AOR), the 487 (by the branch) and the caller's ACK of
    // the 487 (no Route: by the AOR of its Request-URI) all reach the owner; the ACK is
    // absorbed there, so the 487 is not retransmitted.
    let branch = "z9hG4bKnp2";
    let (_, out) = deliver(&mut cores, other, &invite(branch), CALLER, T0 + 100);
    let fwd = sent_to(&out, PHONE_A).remove(0);
    deliver(
        &mut cores,
        other,
        &answer(&fwd, 180, "Ringing", "b1"),
        PHONE_A,
        T0 + 110,
    );
    let (by, out) = deliver(&mut cores, other, &caller_cancel(branch), CALLER, T0 + 120);
    assert_eq!(by, owner);
    let cancel = sent_to(&out, PHONE_A).remove(0);
    let (by, _) = deliver(
        &mut cores,
        other,
        &answer(&cancel, 200, "OK", "b1"),
        PHONE_A,
        T0 + 130,
    );
    assert_eq!(by, owner);
    let (by, out) = deliver(
        &mut cores,
        other,
        &answer(&fwd, 487, "Request Terminated", "b1"),
        PHONE_A,
        T0 + 140,
    );
    assert_eq!(by, owner);
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 487);
    let ack = format!(
        "ACK sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>;tag=b1\r\n\
         Call-ID: call-{branch}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    let (by, out) = deliver(&mut cores, other, ack.as_bytes(), CALLER, T0 + 150);
    assert_eq!(by, owner, "the ACK of the 487 reaches the INVITE's shard");
    assert!(out.is_empty());
    // Absorbed: Timer G does not resend the 487 to the caller.
    let mut t = T0 + 150;
    while t < T0 + 10_000 {
        t += 100;
        let mut o = Outbox::new();
        cores[owner].handle_timeout(t, &mut o);
        assert!(
            sent_to(&drain(&o), CALLER).is_empty(),
            "487 retransmitted at {t}: its ACK was lost on the wrong shard"
        );
    }
    for c in cores.iter_mut() {
        assert_no_state(c, t);
    }
}

/// §16.7 step 5 and 10: a 2xx to an INVITE is forwarded even after a final response went
/// upstream. Sequential forking: A rings past the group timeout and is cancelled, C is busy,
/// so a non-2xx goes to the caller; then A answers 200 in the race with our CANCEL. The
/// server transaction (Completed) cannot send it: it must go statelessly, not be dropped.
#[test]
fn a_2xx_after_a_non_2xx_final_response_is_still_forwarded() {
    let mut c = sequential_core();
    register_q(&mut c, "bob", PHONE_C, ";q=0.5");
    register_q(&mut c, "bob", PHONE_A, ";q=1.0");
    let out = send(&mut c, &invite("z9hG4bKlate1"), CALLER, 0, T0);
    let a = sent_to(&out, PHONE_A);
    send(
        &mut c,
        &answer(&a[0], 180, "Ringing", "a"),
        PHONE_A,
        1,
        T0 + 5,
    );
    let out = tick(&mut c, T0 + 2_000);
    assert_eq!(method(&sent_to(&out, PHONE_A)[0]), b"CANCEL");
    let to_c = sent_to(&out, PHONE_C);
    let out = send(
        &mut c,
        &answer(&to_c[0], 486, "Busy Here", "c"),
        PHONE_C,
        1,
        T0 + 2_010,
    );
    let final_status = status(&sent_to(&out, CALLER)[0]);
    assert!(final_status >= 400, "{final_status}");
    // A's user picked up before our CANCEL arrived.
    let ok = answer(&a[0], 200, "OK", "a");
    let out = send(&mut c, &ok, PHONE_A, 0, T0 + 2_020);
    let to_caller = sent_to(&out, CALLER);
    assert_eq!(to_caller.len(), 1, "the 2xx reaches the caller");
    assert_eq!(status(&to_caller[0]), 200);
    assert_eq!(Message::parse(&to_caller[0]).unwrap().vias().count(), 1);
    // And so does its retransmission.
    let out = send(&mut c, &ok, PHONE_A, 0, T0 + 2_520);
    assert_eq!(sent_to(&out, CALLER).len(), 1);
    assert_no_state(&mut c, T0 + 3_000);
}

/// §16.11: a stateless proxy forwards the CANCEL and the ACK of a non-2xx like the INVITE
/// (same target, same branch, so the callee's INVITE server transaction matches them), never
/// answers the CANCEL itself and never drops that ACK.
#[test]
fn stateless_mode_forwards_cancel_and_the_ack_of_a_non_2xx_like_the_invite() {
    let mut c = core_with(Mode::Stateless, RegistrarSettings::default(), None);
    register(&mut c, "bob", "192.0.2.20:5062");
    let out = send(&mut c, &invite("z9hG4bKsl2"), CALLER, 0, T0);
    let fwd = out[0].1.clone();
    let out = send(&mut c, &caller_cancel("z9hG4bKsl2"), CALLER, 0, T0 + 100);
    assert!(sent_to(&out, CALLER).is_empty(), "no answer of our own");
    let cancel = sent_to(&out, PHONE_A);
    assert_eq!(cancel.len(), 1, "the CANCEL goes where the INVITE went");
    assert_eq!(method(&cancel[0]), b"CANCEL");
    assert_eq!(top_branch(&cancel[0]), top_branch(&fwd));
    let out = send(
        &mut c,
        &answer(&fwd, 487, "Request Terminated", "b1"),
        PHONE_A,
        1,
        T0 + 110,
    );
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 487);
    let ack =
        b"ACK sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKsl2\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>;tag=b1\r\n\
Call-ID: call-z9hG4bKsl2\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
    let out = send(&mut c, ack, CALLER, 0, T0 + 120);
    let acks = sent_to(&out, PHONE_A);
    assert_eq!(acks.len(), 1, "the ACK of the 487 reaches the callee");
    assert_eq!(method(&acks[0]), b"ACK");
    assert_eq!(top_branch(&acks[0]), top_branch(&fwd));
    assert_eq!(c.proxy().state_len(), (0, 0, 0));
}

/// §16.7 step 6: within the 4xx class the proxy SHOULD prefer the responses that let the
/// caller resubmit (401, 407, 415, 420, 484): a 486 that came first must not hide the 407
/// of another branch, or the caller can never authenticate to it.
#[test]
fn a_challenge_is_preferred_to_an_earlier_4xx() {
    let mut c = core();
    register(&mut c, "bob", PHONE_A);
    register(&mut c, "bob", PHONE_B);
    let out = send(&mut c, &invite("z9hG4bKpref1"), CALLER, 0, T0);
    let (a, b) = (sent_to(&out, PHONE_A), sent_to(&out, PHONE_B));
    send(
        &mut c,
        &answer(&a[0], 486, "Busy Here", "a"),
        PHONE_A,
        1,
        T0 + 10,
    );
    let r = challenge(&b[0], 407, "b", &[("Proxy-Authenticate", "b.example")]);
    let out = send(&mut c, &r, PHONE_B, 0, T0 + 11);
    let to_caller = sent_to(&out, CALLER);
    assert_eq!(to_caller.len(), 1);
    let m = Message::parse(&to_caller[0]).unwrap();
    assert_eq!(m.status(), Some(407));
    assert_eq!(
        m.header(HeaderName::ProxyAuthenticate),
        Some(&b"Digest realm=\"b.example\", nonce=\"n-b.example\""[..])
    );
    assert_no_state(&mut c, T0 + 20);
}

/// RFC 6026 §8.7: an ACK that matches an INVITE server transaction in Accepted (a caller
/// that reuses the INVITE's branch for the ACK of the 2xx) is passed to the TU, which
/// forwards it: it must not be absorbed, or the callee never gets its ACK.
#[test]
fn an_ack_matching_the_invite_transaction_in_accepted_is_forwarded() {
    let mut c = core();
    register(&mut c, "bob", PHONE_A);
    let out = send(&mut c, &invite("z9hG4bKacc1"), CALLER, 0, T0);
    let fwd = sent_to(&out, PHONE_A);
    let out = send(
        &mut c,
        &answer(&fwd[0], 200, "OK", "b1"),
        PHONE_A,
        1,
        T0 + 10,
    );
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 200);
    let ack = format!(
        "ACK sip:bob@192.0.2.20:5062 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKacc1\r\n\
         Route: <sip:{LISTEN};lr;ss=0>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\n\
         To: <sip:bob@localhost>;tag=b1\r\nCall-ID: call-z9hG4bKacc1\r\nCSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(&mut c, ack.as_bytes(), CALLER, 0, T0 + 20);
    let acks = sent_to(&out, PHONE_A);
    assert_eq!(acks.len(), 1, "the ACK goes on to the callee");
    assert_eq!(method(&acks[0]), b"ACK");
    assert_no_state(&mut c, T0 + 30);
}

/// §9.1: a CANCEL is never sent for a request other than INVITE. When a group of sequential
/// forking of a MESSAGE times out, its pending branch is given up (408) and the next group
/// tried, but no CANCEL goes out, even after a provisional response.
#[test]
fn a_group_timeout_does_not_cancel_a_non_invite_branch() {
    let mut c = sequential_core();
    register_q(&mut c, "bob", PHONE_C, ";q=0.5");
    register_q(&mut c, "bob", PHONE_A, ";q=1.0");
    let msg = format!(
        "MESSAGE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKmsg1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: msg1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    );
    let out = send(&mut c, msg.as_bytes(), CALLER, 0, T0);
    let a = sent_to(&out, PHONE_A);
    assert_eq!(method(&a[0]), b"MESSAGE");
    send(
        &mut c,
        &answer(&a[0], 100, "Trying", "a"),
        PHONE_A,
        1,
        T0 + 5,
    );
    let out = tick(&mut c, T0 + 2_000);
    assert!(
        sent_to(&out, PHONE_A)
            .iter()
            .all(|m| method(m) != b"CANCEL"),
        "CANCEL for a MESSAGE"
    );
    assert_eq!(method(&sent_to(&out, PHONE_C)[0]), b"MESSAGE");
}

/// §17.1.1.2: an INVITE client transaction that got its final response stays in Completed
/// for Timer D, answering each retransmission of that response with the ACK. The guard that
/// ends a cancelled branch which never answered must leave such a transaction alone: a 487
/// retransmitted (our ACK was lost) just before Timer D ends is ACKed again, not relayed to
/// the caller as a stray response.
#[test]
fn the_cancel_guard_leaves_a_completed_branch_to_timer_d() {
    let mut c = core();
    register(&mut c, "bob", PHONE_A);
    let out = send(&mut c, &invite("z9hG4bKgd1"), CALLER, 0, T0);
    let fwd = sent_to(&out, PHONE_A);
    send(
        &mut c,
        &answer(&fwd[0], 180, "Ringing", "b1"),
        PHONE_A,
        1,
        T0 + 5,
    );
    let out = send(&mut c, &caller_cancel("z9hG4bKgd1"), CALLER, 0, T0 + 10);
    let cancel = sent_to(&out, PHONE_A);
    assert_eq!(method(&cancel[0]), b"CANCEL");
    send(
        &mut c,
        &answer(&cancel[0], 200, "OK", "b1"),
        PHONE_A,
        1,
        T0 + 20,
    );
    // The callee's 487 comes 1 s later (it was busy); our ACK to it is lost.
    let r487 = answer(&fwd[0], 487, "Request Terminated", "b1");
    let out = send(&mut c, &r487, PHONE_A, 0, T0 + 1_010);
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 487);
    assert_eq!(method(&sent_to(&out, PHONE_A)[0]), b"ACK");
    // 32.5 s later (within Timer D of the 487, past 32 s after the CANCEL).
    let mut t = T0 + 1_010;
    while t < T0 + 32_500 {
        t += 100;
        tick(&mut c, t);
    }
    let out = send(&mut c, &r487, PHONE_A, 1, t);
    assert!(
        sent_to(&out, CALLER).is_empty(),
        "a stray 487 to the caller"
    );
    assert_eq!(sent_to(&out, PHONE_A).len(), 1, "the ACK again");
    assert_no_state(&mut c, t);
}

/// RFC 3327 §5.3: a binding registered through an edge proxy (Path) is reached through it:
/// the INVITE goes to the first Path hop with the Path as its Route set, its Request-URI the
/// Contact; a binding without Path is sent straight to its Contact.
#[test]
fn a_binding_registered_through_a_path_gets_its_requests_through_that_path() {
    let mut c = core();
    let edge = "192.0.2.40:5070";
    let reg = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {edge};branch=z9hG4bKedge1\r\n\
         Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKphone1\r\n\
         Path: <sip:{edge};lr;ob>\r\nPath: <sip:192.0.2.41:5080;lr>\r\n\
         Max-Forwards: 69\r\nFrom: <sip:bob@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: reg-path\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@10.0.0.9:5060>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(&mut c, reg.as_bytes(), edge, 0, T0);
    assert_eq!(status(&out[0].1), 200);
    let out = send(&mut c, &invite("z9hG4bKpath1"), CALLER, 0, T0 + 1);
    assert_eq!(out.len(), 2, "100 and the INVITE");
    let (dst, fwd) = &out[1];
    assert_eq!(*dst, addr(edge), "to the first Path hop, not the Contact");
    let f = Message::parse(fwd).unwrap();
    assert_eq!(f.request_uri_bytes(), Some(&b"sip:bob@10.0.0.9:5060"[..]));
    let routes: Vec<_> = f.header_all(HeaderName::Route).collect();
    assert_eq!(
        routes,
        vec![
            format!("<sip:{edge};lr;ob>").as_bytes(),
            &b"<sip:192.0.2.41:5080;lr>"[..]
        ]
    );
    // Without Path: straight to the Contact, no Route.
    let mut c = core();
    register(&mut c, "bob", "192.0.2.20:5062");
    let out = send(&mut c, &invite("z9hG4bKpath2"), CALLER, 0, T0 + 1);
    assert_eq!(out[1].0, addr("192.0.2.20:5062"));
    let f = Message::parse(&out[1].1).unwrap();
    assert_eq!(f.header_all(HeaderName::Route).count(), 0);
}

/// An INVITE to `user@localhost` (branch `b`).
fn invite_to(user: &str, b: &str) -> Vec<u8> {
    String::from_utf8(invite(b))
        .unwrap()
        .replace("sip:bob@localhost", &format!("sip:{user}@localhost"))
        .into_bytes()
}

pub(super) fn store_says(
    c: &mut Core,
    changes: Vec<crate::registrar::RemoteChange>,
    now: u64,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Outbox::new();
    c.apply_remote(changes.into_iter(), now, &mut out);
    drain(&out)
}

pub(super) fn asked(c: &mut Core) -> Vec<String> {
    let mut keys = Vec::new();
    c.take_lookups(&mut keys);
    keys.iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// With a shared store (issue 21), a request for an AOR never heard of here waits for the
/// store instead of getting 480: the core asks (the shell takes the question), and resumes
/// the request when the answer comes back as input: forwarded to what the store holds, 480
/// when it holds nothing (remembered: the next call is answered at once), 503 when the store
/// could not be asked or did not answer in time. A retransmission is not asked about twice.
#[test]
fn a_request_for_an_aor_never_heard_of_waits_for_the_shared_store() {
    use crate::registrar::{Binding, BindingFields, RemoteChange};
    let mut c = core();
    c.enable_store_lookups();
    let bob = b"sip:bob@localhost";
    let out = send(&mut c, &invite_to("bob", "z9hG4bKs1"), CALLER, 0, T0);
    assert!(out.is_empty(), "parked: {out:?}");
    assert_eq!(asked(&mut c), ["sip:bob@localhost"]);
    // Its retransmission waits with it, without a second question.
    assert!(send(&mut c, &invite_to("bob", "z9hG4bKs1"), CALLER, 0, T0 + 5).is_empty());
    assert!(asked(&mut c).is_empty());
    let fields = BindingFields::plain(
        b"sip:bob@192.0.2.20:5062",
        addr("192.0.2.20:5062"),
        T0 + 60_000,
    );
    let binding = Binding::new(&fields, std::iter::empty()).unwrap();
    let out = store_says(
        &mut c,
        vec![
            RemoteChange::Set {
                key: bob[..].into(),
                node: "node-b".into(),
                version: 1,
                epoch: 0,
                bindings: vec![binding],
            },
            RemoteChange::LookedUp {
                key: bob[..].into(),
                failed: false,
            },
        ],
        T0 + 10,
    );
    assert_eq!(out.len(), 2, "100 and the INVITE: {out:?}");
    assert_eq!(status(&out[0].1), 100);
    assert_eq!(out[1].0, addr("192.0.2.20:5062"));

    // Nothing in the store: 480, and the next call for carol is answered at once.
    assert!(send(&mut c, &invite_to("carol", "z9hG4bKs2"), CALLER, 0, T0).is_empty());
    assert_eq!(asked(&mut c), ["sip:carol@localhost"]);
    let out = store_says(
        &mut c,
        vec![RemoteChange::LookedUp {
            key: b"sip:carol@localhost"[..].into(),
            failed: false,
        }],
        T0 + 10,
    );
    assert_eq!(status(&out[0].1), 480);
    let out = send(&mut c, &invite_to("carol", "z9hG4bKs3"), CALLER, 0, T0 + 20);
    assert_eq!(status(&out[0].1), 480);
    assert!(asked(&mut c).is_empty());

    // The store could not be asked: 503 saying so.
    assert!(send(&mut c, &invite_to("dave", "z9hG4bKs4"), CALLER, 0, T0).is_empty());
    asked(&mut c);
    let out = store_says(
        &mut c,
        vec![RemoteChange::LookedUp {
            key: b"sip:dave@localhost"[..].into(),
            failed: true,
        }],
        T0 + 10,
    );
    assert_eq!(status(&out[0].1), 503);
    assert!(common_reason(&out[0].1).contains("location store unreachable"));

    // No answer within the wait: 503 at the deadline, not before.
    assert!(send(&mut c, &invite_to("erin", "z9hG4bKs5"), CALLER, 0, T0).is_empty());
    asked(&mut c);
    assert!(c.next_timeout().is_some_and(|t| t <= T0 + 1_000));
    assert!(tick(&mut c, T0 + 999)
        .iter()
        .all(|(_, m)| !m.starts_with(b"SIP/2.0 503")));
    let out = tick(&mut c, T0 + 1_000);
    assert_eq!(status(&out[0].1), 503);
    assert!(common_reason(&out[0].1).contains("did not answer"));

    // Without a store nothing waits: 480 at once.
    let mut plain = core();
    let out = send(&mut plain, &invite_to("frank", "z9hG4bKs6"), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 480);
}

/// The reason phrase of a response.
fn common_reason(b: &[u8]) -> String {
    let line = b.split(|&c| c == b'\r').next().unwrap();
    String::from_utf8_lossy(&line[12..]).into_owned()
}
