//! The core driven without sockets: a caller, the proxy core and callees exchange datagrams
//! through the outbox with explicit times (RFC 3261 §16 behaviour end to end: forking, CANCEL,
//! Timer C, record-routing and loose routing, and no state left behind).

use super::outbox::Outbox;
use super::{Core, CoreConfig};
use crate::config::{Mode, RegistrarSettings};
use crate::metrics::ShardStats;
use crate::sip::write::{finish, header, response_head};
use crate::sip::{HeaderName, Message};
use std::net::SocketAddr;
use std::sync::Arc;

const LISTEN: &str = "127.0.0.1:5060";
const OWN: &str = "127.0.0.1:40000";
const CALLER: &str = "192.0.2.10:5060";
const T0: u64 = 1_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A one-shard core on LISTEN with its own port OWN.
pub(super) fn core_with(
    mode: Mode,
    registrar: RegistrarSettings,
    auth: Option<crate::auth::Authenticator>,
) -> Core {
    let cfg = Arc::new(CoreConfig {
        domains: vec!["localhost".into()],
        local_addrs: vec![addr(LISTEN)],
        shards: 1,
        mode,
        registrar,
        proxy: crate::config::ProxySettings::default(),
    });
    Core::new(
        0,
        cfg,
        Arc::new(ShardStats::default()),
        auth,
        &[addr(LISTEN), addr(OWN)],
    )
}

fn core() -> Core {
    core_with(Mode::Proxy, RegistrarSettings::default(), None)
}

/// Sends `data` from `src` to the core's listen socket (0) or own socket (1); returns what it
/// sent as (destination, bytes).
fn send(
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

fn tick(c: &mut Core, now: u64) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Outbox::new();
    c.handle_timeout(now, &mut out);
    drain(&out)
}

fn drain(out: &Outbox) -> Vec<(SocketAddr, Vec<u8>)> {
    out.items()
        .iter()
        .map(|d| (d.dst, out.bytes(d).to_vec()))
        .collect()
}

fn register(c: &mut Core, user: &str, contact: &str) {
    let msg = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {contact};branch=z9hG4bKreg{user}{contact}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@localhost>;tag=r\r\nTo: <sip:{user}@localhost>\r\n\
         Call-ID: reg-{user}-{contact}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{contact}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(c, msg.as_bytes(), contact, 0, T0);
    assert_eq!(status(&out[0].1), 200);
}

fn invite(branch: &str) -> Vec<u8> {
    format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: call-{branch}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{CALLER}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0"
    )
    .into_bytes()
}

fn status(b: &[u8]) -> u16 {
    Message::parse(b).unwrap().status().unwrap()
}

fn method(b: &[u8]) -> Vec<u8> {
    Message::parse(b).unwrap().method_bytes().unwrap().to_vec()
}

/// A callee's response to a request it received from the proxy.
fn answer(req: &[u8], code: u16, reason: &str, tag: &str) -> Vec<u8> {
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

fn assert_no_state(c: &mut Core, now: u64) {
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
        rr.port,
        Some(40000),
        "Record-Route names the shard's own port"
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
    let out = send(&mut c, &ok, "192.0.2.20:5062", 1, T0 + 20);
    assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 200));
    let relayed = Message::parse(&out[0].1).unwrap();
    assert_eq!(relayed.vias().count(), 1);
    // ACK and BYE follow the route set: to our own port, then on to the callee's Contact.
    let route = format!("<sip:{OWN};lr;ss=0>");
    for (m, cseq) in [("ACK", 1), ("BYE", 2)] {
        let req = format!(
            "{m} sip:bob@192.0.2.20:5062 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{m}\r\n\
             Route: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\n\
             To: <sip:bob@localhost>;tag=b1\r\nCall-ID: call-z9hG4bKc1\r\nCSeq: {cseq} {m}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let out = send(&mut c, req.as_bytes(), CALLER, 1, T0 + 30);
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
fn core_with_auth() -> Core {
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
fn invite_with_credentials(
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
    let b1 = Message::parse(&fwd)
        .unwrap()
        .top_via()
        .unwrap()
        .branch()
        .unwrap()
        .to_vec();
    let b2 = Message::parse(&again[0].1)
        .unwrap()
        .top_via()
        .unwrap()
        .branch()
        .unwrap()
        .to_vec();
    assert_eq!(b1, b2);
    assert_eq!(c.proxy().state_len(), (0, 0, 0));
}
