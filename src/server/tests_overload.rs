//! Overload control through the core (issue 17, RFC 3261 §21.5.4): a shard past its capacity
//! refuses new requests for users with 503 and Retry-After, goes on with calls in progress,
//! never refuses an emergency call, and holds at most `max_transactions`.

use super::tests::{addr, answer, core_with, register, send, status, CALLER, T0};
use super::{Core, CoreConfig};
use crate::proxy::settings::{Mode, OverloadSettings};
use crate::registrar::RegistrarSettings;
use crate::sip::Message;
use crate::stats::ShardStats;
use std::sync::Arc;

const LISTEN: &str = "127.0.0.1:5060";
const BOB: &str = "192.0.2.20:5062";

fn invite(user: &str, branch: &str) -> Vec<u8> {
    format!(
        "INVITE sip:{user}@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:{user}@localhost>\r\n\
         Call-ID: call-{branch}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{CALLER}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn in_dialog(m: &str, cseq: u32, branch: &str) -> Vec<u8> {
    format!(
        "{m} sip:bob@{BOB} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{m}\r\n\
         Route: <sip:{LISTEN};lr;ss=0>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\n\
         To: <sip:bob@localhost>;tag=b1\r\nCall-ID: call-{branch}\r\nCSeq: {cseq} {m}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn retry_after(b: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(b).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .map(str::to_owned)
}

fn core_with_plan(plan: &str, overload: OverloadSettings) -> Core {
    let spec: crate::routing::DialPlanSpec = toml::from_str(plan).unwrap();
    let cfg = Arc::new(CoreConfig {
        routing: Arc::new(crate::routing::DialPlan::build(&spec).unwrap()),
        overload,
        ..CoreConfig::single("localhost", addr(LISTEN), Mode::Proxy)
    });
    Core::new(
        0,
        cfg,
        Arc::new(ShardStats::default()),
        None,
        &[addr(LISTEN).into()],
    )
}

#[test]
fn an_overloaded_shard_refuses_new_calls_and_finishes_those_in_progress() {
    let mut c = core_with(Mode::Proxy, RegistrarSettings::default(), None);
    register(&mut c, "bob", BOB);
    // A call admitted before the overload.
    let out = send(&mut c, &invite("bob", "z9hG4bKold"), CALLER, 0, T0);
    assert_eq!(out.len(), 2);
    let fwd = out[1].1.clone();
    c.set_overloaded(true);
    let held = c.proxy().transactions();
    // A new call: 503 with Retry-After, nothing forwarded, and nothing kept: the refusal is
    // stateless, so memory under overload follows the admitted calls, not the offered ones.
    let out = send(&mut c, &invite("bob", "z9hG4bKnew"), CALLER, 0, T0 + 1);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 503));
    assert_eq!(retry_after(&out[0].1).as_deref(), Some("5"));
    assert_eq!(c.proxy().transactions(), held);
    // The old call goes on: its INVITE retransmission is absorbed (no 503), the answer is
    // relayed, ACK and BYE are forwarded and BYE's 200 relayed.
    let out = send(&mut c, &invite("bob", "z9hG4bKold"), CALLER, 0, T0 + 2);
    assert!(out.iter().all(|(_, b)| status_or_zero(b) != 503), "{out:?}");
    let out = send(&mut c, &answer(&fwd, 200, "OK", "b1"), BOB, 0, T0 + 3);
    assert_eq!((out[0].0, status(&out[0].1)), (addr(CALLER), 200));
    for (m, cseq) in [("ACK", 1), ("BYE", 2)] {
        let out = send(&mut c, &in_dialog(m, cseq, "z9hG4bKold"), CALLER, 0, T0 + 4);
        assert_eq!(out.len(), 1, "{m}");
        assert_eq!(out[0].0, addr(BOB), "{m} forwarded");
    }
    // REGISTER and OPTIONS to the server are still answered normally.
    register(&mut c, "carol", "192.0.2.30:5060");
    // Back below capacity: new calls go through again.
    c.set_overloaded(false);
    let out = send(&mut c, &invite("bob", "z9hG4bKafter"), CALLER, 0, T0 + 5);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].0, addr(BOB));
}

fn status_or_zero(b: &[u8]) -> u16 {
    Message::parse(b).ok().and_then(|m| m.status()).unwrap_or(0)
}

#[test]
fn an_overloaded_shard_still_routes_emergency_calls() {
    let plan = r#"
[[trunk]]
name = "psap"
address = "127.0.0.1:5071"
check_interval_ms = 0

[emergency]
numbers = ["112"]
trunks = ["psap"]
"#;
    let mut c = core_with_plan(plan, OverloadSettings::default());
    c.set_overloaded(true);
    let out = send(&mut c, &invite("112", "z9hG4bKsos"), CALLER, 0, T0);
    assert!(
        out.iter().any(|(d, _)| *d == addr("127.0.0.1:5071")),
        "the emergency call goes out: {out:?}"
    );
    let out = send(&mut c, &invite("+4930123", "z9hG4bKother"), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 503);
}

#[test]
fn past_max_transactions_new_calls_get_503_whatever_the_load() {
    let overload = OverloadSettings {
        retry_after_s: 30,
        max_transactions: 4,
        ..OverloadSettings::default()
    };
    let mut c = core_with_plan("", overload);
    register(&mut c, "bob", BOB);
    // Each call holds a server and a client transaction: two calls fill the table.
    for i in 0..2 {
        let out = send(
            &mut c,
            &invite("bob", &format!("z9hG4bKf{i}")),
            CALLER,
            0,
            T0,
        );
        assert_eq!(out.len(), 2, "call {i} forwarded");
    }
    assert_eq!(c.proxy().transactions(), 4);
    let out = send(&mut c, &invite("bob", "z9hG4bKf2"), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 503);
    assert_eq!(retry_after(&out[0].1).as_deref(), Some("30"));
}

#[test]
fn a_full_hand_off_queue_answers_new_requests_503_and_leaves_the_rest() {
    let mut c = core_with(Mode::Proxy, RegistrarSettings::default(), None);
    let mut out = crate::server::outbox::Outbox::new();
    assert!(c.overflow(&invite("bob", "z9hG4bKq1"), addr(CALLER), 0, &mut out));
    let sent = super::tests::drain(&out);
    assert_eq!((sent[0].0, status(&sent[0].1)), (addr(CALLER), 503));
    assert!(retry_after(&sent[0].1).is_some());
    let mut out = crate::server::outbox::Outbox::new();
    assert!(!c.overflow(&in_dialog("BYE", 2, "x"), addr(CALLER), 0, &mut out));
    assert!(!c.overflow(b"SIP/2.0 200 OK\r\n\r\n", addr(CALLER), 0, &mut out));
    assert!(out.is_empty());
}
