//! The proxy over real UDP with `--shards 2`: the server is one address, every datagram
//! arrives on the one shared port and every datagram sent leaves from it, so responses and
//! in-dialog requests must find the shard holding their transactions by the shard id in our
//! Via branch and in the Record-Route (`ss=N`), and be handed over. Complete calls with the
//! BYE sent by the callee.

mod common;

use common::*;
use sipshard::sip::write::{finish, header, response_head};
use sipshard::sip::{HeaderName, Message};
use std::time::{Duration, Instant};

/// Waits for a datagram on `c` that `want` accepts (others, e.g. 100 Trying, are skipped).
/// The next datagram at `c` that `want` accepts; every datagram a client receives in these
/// tests comes from the server, and must come from its one address.
fn recv_matching(
    s: &ServerProcess,
    c: &Client,
    what: &str,
    want: impl Fn(&Message<'_>) -> bool,
) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        let Some(d) = c.recv_timeout(left) else {
            panic!("timed out waiting for {what}")
        };
        assert_eq!(
            c.last_src.get(),
            Some(s.addr),
            "{what}: every datagram leaves from the listen address"
        );
        if Message::parse(&d).is_ok_and(|m| want(&m)) {
            return d;
        }
    }
}

fn is_request(m: &Message<'_>, method: &str) -> bool {
    m.method_bytes() == Some(method.as_bytes())
}

fn is_status(m: &Message<'_>, status: u16, cseq_method: &str) -> bool {
    m.status() == Some(status) && m.cseq().is_ok_and(|c| c.method == cseq_method.as_bytes())
}

/// A UAS response to `req` (Record-Route copied and a Contact for a 2xx to INVITE).
fn respond(req: &[u8], code: u16, reason: &str, tag: &str, contact: &Client) -> Vec<u8> {
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
    if m.method_bytes() == Some(b"INVITE") && code > 100 {
        for rr in m.header_all(HeaderName::RecordRoute) {
            header(&mut out, "Record-Route", rr);
        }
        header(
            &mut out,
            "Contact",
            format!("<sip:x@{}>", contact.addr).as_bytes(),
        );
    }
    finish(&mut out, b"");
    out
}

/// One call: INVITE/100/180/200/ACK from `caller` to `user` at `callee`, then the callee
/// hangs up (BYE along the Record-Route set) and the caller answers 200.
fn call(s: &ServerProcess, caller: &Client, callee: &Client, user: &str) {
    let id = unique("np-call-");
    let invite = format!(
        "INVITE sip:{user}@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a-{id}\r\nTo: <sip:{user}@localhost>\r\n\
         Call-ID: {id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{a}>\r\nContent-Length: 0\r\n\r\n",
        a = caller.addr
    );
    caller.send(&invite, s.addr);
    let inv = recv_matching(s, callee, "INVITE at the callee", |m| {
        is_request(m, "INVITE")
    });
    let rr = Message::parse(&inv)
        .unwrap()
        .header(HeaderName::RecordRoute)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("record-routed");
    assert!(
        rr.contains(";ss="),
        "the shard rides in the Record-Route: {rr}"
    );
    assert!(rr.contains(&s.addr.to_string()), "the shared port: {rr}");
    callee.send_bytes(&respond(&inv, 180, "Ringing", "b", callee), s.addr);
    recv_matching(s, caller, "180", |m| is_status(m, 180, "INVITE"));
    callee.send_bytes(&respond(&inv, 200, "OK", "b", callee), s.addr);
    recv_matching(s, caller, "200 to the INVITE", |m| {
        is_status(m, 200, "INVITE")
    });
    let in_dialog = |method: &str, from: &Client, ruri: &str, from_tag: &str, to_tag: &str| {
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{method}{id};rport\r\n\
             Route: {rr}\r\nMax-Forwards: 70\r\nFrom: {from_tag}\r\nTo: {to_tag}\r\n\
             Call-ID: {id}\r\nCSeq: {n} {method}\r\nContent-Length: 0\r\n\r\n",
            a = from.addr,
            n = if method == "ACK" { 1 } else { 1000 },
        )
    };
    let (alice, bob) = (
        format!("<sip:alice@localhost>;tag=a-{id}"),
        format!("<sip:{user}@localhost>;tag=b"),
    );
    let ack = in_dialog(
        "ACK",
        caller,
        &format!("sip:x@{}", callee.addr),
        &alice,
        &bob,
    );
    caller.send(&ack, s.addr);
    recv_matching(s, callee, "ACK at the callee", |m| is_request(m, "ACK"));
    let bye = in_dialog(
        "BYE",
        callee,
        &format!("sip:alice@{}", caller.addr),
        &bob,
        &alice,
    );
    callee.send(&bye, s.addr);
    let bye = recv_matching(s, caller, "BYE at the caller", |m| is_request(m, "BYE"));
    caller.send_bytes(
        &respond(&bye, 200, "OK", &format!("a-{id}"), caller),
        s.addr,
    );
    recv_matching(s, callee, "200 to the BYE", |m| is_status(m, 200, "BYE"));
}

#[test]
fn calls_with_bye_from_the_callee_across_two_shards_through_one_address() {
    // Kernel steering off (it would put every message on the shard holding the call): this
    // test is about the hand-offs.
    let s = ServerProcess::start_with(&["--shards", "2", "--steering", "off"], true);
    // Fresh sockets per call: the kernel spreads their 4-tuples over both shards, so the
    // INVITE, the responses, the ACK and the BYE keep landing on the shard that does not
    // hold the call.
    for i in 0..8 {
        let user = format!("np{i}");
        let (caller, callee) = (Client::new(), Client::new());
        let reg = Register::new(&format!("sip:{user}@localhost"))
            .contact(&format!("<sip:{user}@{}>", callee.addr))
            .send(&callee, s.addr);
        assert_status(&reg, 200);
        call(&s, &caller, &callee, &user);
    }
    assert!(
        s.metric("sipshard_handoffs_total").unwrap() > 0.0,
        "no datagram crossed shards: the test proved nothing"
    );
    // A response handled by the wrong shard would still be relayed (statelessly, by the
    // Via), but the client transaction on the owner would never see it and would resend
    // its INVITE or BYE after Timer A/E (500 ms). Nothing may be sent twice.
    std::thread::sleep(Duration::from_millis(1_200));
    for m in ["INVITE", "ACK", "BYE"] {
        assert_eq!(
            s.metric(&format!("sipshard_requests_sent_total{{method=\"{m}\"}}")),
            Some(8.0),
            "{m} sent once per call"
        );
    }
}

#[test]
fn registrations_and_calls_are_logged_at_info() {
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("calls-log-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let s = ServerProcess::start_logging_to(&["--shards", "2", "--log", "info"], &log);
    let (caller, callee) = (Client::new(), Client::new());
    let reg = Register::new("sip:logged@localhost")
        .contact(&format!("<sip:logged@{}>", callee.addr))
        .send(&callee, s.addr);
    assert_status(&reg, 200);
    call(&s, &caller, &callee, "logged");
    // An INVITE nobody answers: 480 from the proxy itself.
    let r = caller.request(
        &format!(
            "INVITE sip:nobody@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKlog480;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=l1\r\nTo: <sip:nobody@localhost>\r\n\
             Call-ID: log-480\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{a}>\r\nContent-Length: 0\r\n\r\n",
            a = caller.addr
        ),
        s.addr,
    );
    assert_eq!(status(&r), 480);
    drop(s);
    let text = std::fs::read_to_string(&log).unwrap();
    let line = |what: &str| {
        text.lines()
            .find(|l| l.contains(" INFO ") && l.contains(what))
            .unwrap_or_else(|| panic!("no INFO line with {what:?} in:\n{text}"))
            .to_owned()
    };
    let reg = line("registered");
    for part in [
        "aor=\"sip:logged@localhost\"".to_owned(),
        format!("contact=\"<sip:logged@{}>\"", callee.addr),
        format!("src={}", callee.addr),
        "nat=false".to_owned(),
        "bindings=1".to_owned(),
    ] {
        assert!(reg.contains(&part), "{part} in {reg}");
    }
    let answered = line("call answered");
    assert!(
        answered.contains("code=200") && answered.contains("setup_ms="),
        "{answered}"
    );
    assert!(
        answered.contains("from=\"sip:alice@localhost\""),
        "{answered}"
    );
    assert!(
        answered.contains("to=\"sip:logged@localhost\""),
        "{answered}"
    );
    let ended = line("call ended");
    assert!(ended.contains("duration_s="), "{ended}");
    let failed = line("call not answered");
    assert!(
        failed.contains("call_id=\"log-480\"") && failed.contains("code=480"),
        "{failed}"
    );
}
