//! The dial plan through the core, without sockets: extensions, prefix routes to trunks with
//! failover on 503 and on silence (and not on 486), trunks taken down by their OPTIONS checks,
//! least-cost order, time windows, classes of service and emergency calls, calls from inbound
//! trunks without a challenge, ring groups (parallel, sequential, round-robin) and paging,
//! whose member legs spiral through the core itself.

use super::tests::{
    addr, answer, config, method, register, send, sent_to, shard_core, status, tick, top_branch,
    CALLER, T0,
};
use super::{Core, CoreConfig};
use crate::proxy::settings::{Mode, ProxySettings};
use crate::registrar::RegistrarSettings;
use crate::routing::{DialPlan, DialPlanSpec};
use crate::sip::{HeaderName, Message};
use crate::stats::ShardStats;
use std::net::SocketAddr;
use std::sync::Arc;

const LISTEN: &str = "127.0.0.1:5060";
const TRUNK_A: &str = "127.0.0.1:5071";
const TRUNK_B: &str = "127.0.0.1:5072";

/// Trunks a and b without checks, a route for +49 through a then b, national for everyone.
const TRUNKS: &str = r#"
[[trunk]]
name = "a"
address = "127.0.0.1:5071"
check_interval_ms = 0

[[trunk]]
name = "b"
address = "127.0.0.1:5072"
check_interval_ms = 0
inbound_from = ["127.0.0.5"]

[[route]]
prefix = "+49"
trunks = ["a", "b"]
class = "national"

[routing]
trunk_timeout_ms = 2000
"#;

fn plan(text: &str) -> Arc<DialPlan> {
    let spec: DialPlanSpec = toml::from_str(text).expect("the test plan parses");
    Arc::new(DialPlan::build(&spec).expect("the test plan is valid"))
}

fn routed_core(text: &str, auth: Option<crate::auth::Authenticator>) -> Core {
    let registrar = RegistrarSettings {
        match_auth_user: false,
        ..RegistrarSettings::default()
    };
    let cfg = CoreConfig {
        routing: plan(text),
        ..config(1, Mode::Proxy, registrar, ProxySettings::default())
    };
    shard_core(0, Arc::new(cfg), auth)
}

fn invite_to(user: &str, branch: &str) -> Vec<u8> {
    format!(
        "INVITE sip:{user}@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carol@localhost>;tag=c1\r\nTo: <sip:{user}@localhost>\r\n\
         Call-ID: call-{branch}\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@{CALLER}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn ruri(b: &[u8]) -> String {
    String::from_utf8_lossy(Message::parse(b).unwrap().request_uri_bytes().unwrap()).into_owned()
}

fn header_of(b: &[u8], name: &str) -> Option<String> {
    let m = Message::parse(b).unwrap();
    m.header_by_name(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Feeds every datagram the core sent to itself back in (from its own address), until it
/// sends nothing more to itself; returns everything it sent elsewhere.
fn settle(
    c: &mut Core,
    mut out: Vec<(SocketAddr, Vec<u8>)>,
    now: u64,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut elsewhere = Vec::new();
    for _ in 0..20 {
        let (to_us, rest): (Vec<_>, Vec<_>) =
            out.into_iter().partition(|(d, _)| *d == addr(LISTEN));
        elsewhere.extend(rest);
        if to_us.is_empty() {
            return elsewhere;
        }
        out = Vec::new();
        for (_, d) in to_us {
            out.extend(send(c, &d, LISTEN, 0, now));
        }
    }
    panic!("the core keeps sending to itself");
}

#[test]
fn a_prefix_route_sends_the_normalised_number_to_the_first_trunk() {
    let text =
        format!("{TRUNKS}\n[normalize]\nrules = [{{ match = \"^0\", replace = \"+49\" }}]\n");
    let mut c = routed_core(&text, None);
    let out = send(&mut c, &invite_to("030123", "z9hG4bKt1"), CALLER, 0, T0);
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 100);
    let at_a = sent_to(&out, TRUNK_A);
    assert_eq!(at_a.len(), 1, "{out:?}");
    assert_eq!(ruri(&at_a[0]), "sip:+4930123@127.0.0.1:5071");
    assert!(header_of(&at_a[0], "Record-Route").is_some());
    assert!(sent_to(&out, TRUNK_B).is_empty());
    // The trunk answers: relayed to the caller.
    let out = send(
        &mut c,
        &answer(&at_a[0], 200, "OK", "t"),
        TRUNK_A,
        0,
        T0 + 10,
    );
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 200);
}

#[test]
fn a_503_fails_over_to_the_next_trunk_and_a_486_does_not() {
    let mut c = routed_core(TRUNKS, None);
    let out = send(&mut c, &invite_to("+4930123", "z9hG4bKf1"), CALLER, 0, T0);
    let at_a = sent_to(&out, TRUNK_A).remove(0);
    let out = send(
        &mut c,
        &answer(&at_a, 503, "Service Unavailable", "a"),
        TRUNK_A,
        0,
        T0 + 5,
    );
    let at_b = sent_to(&out, TRUNK_B);
    assert_eq!(at_b.len(), 1, "on to trunk b: {out:?}");
    assert_eq!(ruri(&at_b[0]), "sip:+4930123@127.0.0.1:5072");
    assert!(sent_to(&out, CALLER).iter().all(|r| status(r) < 200));
    let out = send(
        &mut c,
        &answer(&at_b[0], 200, "OK", "b"),
        TRUNK_B,
        0,
        T0 + 10,
    );
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 200);

    // Busy is an answer, not a routing failure: the caller gets the 486, trunk b nothing.
    let out = send(
        &mut c,
        &invite_to("+4930123", "z9hG4bKf2"),
        CALLER,
        0,
        T0 + 100,
    );
    let at_a = sent_to(&out, TRUNK_A).remove(0);
    let out = send(
        &mut c,
        &answer(&at_a, 486, "Busy Here", "a"),
        TRUNK_A,
        0,
        T0 + 105,
    );
    assert!(sent_to(&out, TRUNK_B).is_empty(), "{out:?}");
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 486);
}

#[test]
fn a_silent_trunk_is_left_after_trunk_timeout_but_one_that_answers_100_is_not() {
    let mut c = routed_core(TRUNKS, None);
    let out = send(&mut c, &invite_to("+4930123", "z9hG4bKs1"), CALLER, 0, T0);
    assert_eq!(sent_to(&out, TRUNK_A).len(), 1);
    let out = tick(&mut c, T0 + 1_999);
    assert!(sent_to(&out, TRUNK_B).is_empty());
    let out = tick(&mut c, T0 + 2_000);
    assert_eq!(sent_to(&out, TRUNK_B).len(), 1, "silence: on to b {out:?}");

    // A trunk that says 100 Trying is working on it: no failover at the timeout.
    let out = send(
        &mut c,
        &invite_to("+4930123", "z9hG4bKs2"),
        CALLER,
        0,
        T0 + 10_000,
    );
    let at_a = sent_to(&out, TRUNK_A).remove(0);
    send(
        &mut c,
        &answer(&at_a, 100, "Trying", "a"),
        TRUNK_A,
        0,
        T0 + 10_010,
    );
    let out = tick(&mut c, T0 + 13_000);
    let second_call_at_b = sent_to(&out, TRUNK_B)
        .into_iter()
        .filter(|m| String::from_utf8_lossy(m).contains("call-z9hG4bKs2"))
        .count();
    assert_eq!(second_call_at_b, 0, "{out:?}");
}

#[test]
fn a_trunk_that_misses_its_checks_is_skipped_without_delay_and_comes_back() {
    let text = TRUNKS.replacen(
        "check_interval_ms = 0",
        "check_interval_ms = 1000\ndown_after = 2",
        1,
    );
    let mut c = routed_core(&text, None);
    // Checks at 0, 1000 and 2000 go unanswered: trunk a is down after the third poll.
    let mut last_check = Vec::new();
    for t in [T0, T0 + 1000, T0 + 2000] {
        let out = tick(&mut c, t);
        let checks = sent_to(&out, TRUNK_A);
        assert_eq!(checks.len(), 1, "one OPTIONS per interval {out:?}");
        assert_eq!(method(&checks[0]), b"OPTIONS");
        last_check = checks[0].clone();
    }
    let out = send(
        &mut c,
        &invite_to("+4930123", "z9hG4bKd1"),
        CALLER,
        0,
        T0 + 2100,
    );
    assert!(sent_to(&out, TRUNK_A).is_empty(), "a is down {out:?}");
    assert_eq!(sent_to(&out, TRUNK_B).len(), 1);
    // Any answer to a check brings it back.
    let reply = answer(&last_check, 404, "Not Found", "x");
    let out = send(&mut c, &reply, TRUNK_A, 0, T0 + 2200);
    assert!(out.is_empty());
    let out = send(
        &mut c,
        &invite_to("+4930123", "z9hG4bKd2"),
        CALLER,
        0,
        T0 + 2300,
    );
    assert_eq!(sent_to(&out, TRUNK_A).len(), 1, "a is back");
}

#[test]
fn every_trunk_down_is_503_and_no_route_is_404() {
    let text = TRUNKS.replace(
        "check_interval_ms = 0",
        "check_interval_ms = 1000\ndown_after = 1",
    );
    let mut c = routed_core(&text, None);
    tick(&mut c, T0);
    tick(&mut c, T0 + 1000);
    let out = send(
        &mut c,
        &invite_to("+4930123", "z9hG4bKn1"),
        CALLER,
        0,
        T0 + 1100,
    );
    assert_eq!(status(&out[0].1), 503);
    let out = send(
        &mut c,
        &invite_to("+3312345", "z9hG4bKn2"),
        CALLER,
        0,
        T0 + 1100,
    );
    assert_eq!(status(&out[0].1), 404);
}

#[test]
fn lcr_orders_the_trunks_by_the_rate_of_the_longest_prefix() {
    let text = TRUNKS.replace("class = \"national\"", "class = \"national\"\nlcr = true")
        + r#"
[[rate]]
trunk = "a"
prefix = "+49"
cost = 0.02
[[rate]]
trunk = "b"
prefix = "+49"
cost = 0.03
[[rate]]
trunk = "b"
prefix = "+4930"
cost = 0.01
"#;
    let mut c = routed_core(&text, None);
    // Berlin: b is cheaper (its +4930 rate).
    let out = send(&mut c, &invite_to("+4930123", "z9hG4bKl1"), CALLER, 0, T0);
    assert_eq!(sent_to(&out, TRUNK_B).len(), 1, "{out:?}");
    // Munich: a is cheaper.
    let out = send(&mut c, &invite_to("+4989123", "z9hG4bKl2"), CALLER, 0, T0);
    assert_eq!(sent_to(&out, TRUNK_A).len(), 1, "{out:?}");
}

#[test]
fn a_route_outside_its_time_window_does_not_exist() {
    // Monday 2026-12-07 09:00 UTC = 10:00 in Berlin: inside mon-fri 08:00-18:00.
    let monday_9_utc: u64 = 1_796_634_000_000;
    let text = TRUNKS.replace(
        "class = \"national\"",
        "class = \"national\"\ntime = \"mon-fri 08:00-18:00\"\ntimezone = \"Europe/Berlin\"",
    ) + "\n[[route]]\nprefix = \"+4\"\ntrunks = [\"b\"]\n";
    let mut c = routed_core(&text, None);
    let out = send(
        &mut c,
        &invite_to("+4930123", "z9hG4bKw1"),
        CALLER,
        0,
        monday_9_utc,
    );
    assert_eq!(
        sent_to(&out, TRUNK_A).len(),
        1,
        "office hours: the +49 route {out:?}"
    );
    // 18:30 Berlin: the +49 route is gone, the shorter +4 route takes the call.
    let evening = monday_9_utc + (8 * 60 + 30) * 60_000;
    let out = send(
        &mut c,
        &invite_to("+4930123", "z9hG4bKw2"),
        CALLER,
        0,
        evening,
    );
    assert!(sent_to(&out, TRUNK_A).is_empty());
    assert_eq!(sent_to(&out, TRUNK_B).len(), 1, "{out:?}");
}

/// A core with digest users alice (national, international) and carol (default classes:
/// internal only).
fn core_with_users(text: &str) -> Core {
    use crate::auth::{Authenticator, UserDb};
    let mut db = UserDb::new("localhost");
    db.add_password("alice", "secret").unwrap();
    db.add_password("carol", "pw").unwrap();
    let auth = Authenticator::new("localhost", Arc::new(db), [7; 32], 300);
    routed_core(text, Some(auth))
}

/// Registers `contact` for `user`, answering the registrar's challenge.
fn register_as(c: &mut Core, user: &str, pw: &str, contact: &str) {
    let reg = |auth: &str| {
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {contact};branch=z9hG4bKreg{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@localhost>;tag=r\r\nTo: <sip:{user}@localhost>\r\n\
             Call-ID: reg-{user}\r\nCSeq: {} REGISTER\r\n{auth}Contact: <sip:{user}@{contact}>\r\n\
             Content-Length: 0\r\n\r\n",
            auth.len(),
            if auth.is_empty() { 1 } else { 2 }
        )
    };
    let out = send(c, reg("").as_bytes(), contact, 0, T0);
    assert_eq!(status(&out[0].1), 401);
    let ch = Message::parse(&out[0].1).unwrap();
    let params = crate::auth::client::first_supported_challenge(&ch, HeaderName::WwwAuthenticate)
        .expect("a challenge we can answer");
    let creds =
        crate::auth::client_response(&params, user, pw, b"REGISTER", b"sip:localhost", 1, "0b1c")
            .unwrap();
    let out = send(
        c,
        reg(&format!("Authorization: {creds}\r\n")).as_bytes(),
        contact,
        0,
        T0,
    );
    assert_eq!(status(&out[0].1), 200);
}

/// `req` answered with credentials for `user` after the 407 `challenge`.
fn with_credentials(req: &[u8], challenge: &[u8], user: &str, pw: &str) -> Vec<u8> {
    let ch = Message::parse(challenge).unwrap();
    let params = crate::auth::client::first_supported_challenge(&ch, HeaderName::ProxyAuthenticate)
        .expect("a challenge we can answer");
    let m = Message::parse(req).unwrap();
    let uri = m.request_uri_bytes().unwrap().to_vec();
    let creds =
        crate::auth::client_response(&params, user, pw, b"INVITE", &uri, 1, "0a4f113b").unwrap();
    String::from_utf8(req.to_vec())
        .unwrap()
        .replace(
            "<sip:carol@localhost>;tag",
            &format!("<sip:{user}@localhost>;tag"),
        )
        .replace("z9hG4bK", "z9hG4bKa")
        .replace(
            "Max-Forwards: 70",
            &format!("Max-Forwards: 70\r\nProxy-Authorization: {creds}"),
        )
        .into_bytes()
}

/// Sends `req` as `user`: the 407, then the request with credentials.
fn call_as(c: &mut Core, req: &[u8], user: &str, pw: &str, now: u64) -> Vec<(SocketAddr, Vec<u8>)> {
    let out = send(c, req, CALLER, 0, now);
    assert_eq!(status(&out[0].1), 407, "challenged first");
    let again = with_credentials(req, &out[0].1, user, pw);
    send(c, &again, CALLER, 0, now + 1)
}

const CLASSES: &str = r#"
[routing]
default_classes = ["internal"]

[classes]
alice = ["internal", "national"]

[emergency]
numbers = ["112"]
trunks = ["b"]
"#;

#[test]
fn classes_of_service_refuse_a_route_but_never_an_emergency_call() {
    let text = TRUNKS.replace("[routing]\ntrunk_timeout_ms = 2000", "") + CLASSES;
    let mut c = core_with_users(&text);
    let out = call_as(
        &mut c,
        &invite_to("+4930123", "z9hG4bKc1"),
        "carol",
        "pw",
        T0,
    );
    assert_eq!(status(&out[0].1), 403);
    let reason = String::from_utf8_lossy(&out[0].1).into_owned();
    assert!(reason.contains("class of service national"), "{reason}");
    let out = call_as(
        &mut c,
        &invite_to("+4930123", "z9hG4bKc2"),
        "alice",
        "secret",
        T0,
    );
    assert_eq!(sent_to(&out, TRUNK_A).len(), 1, "alice may: {out:?}");
    // carol may not call nationally, but 112 always goes out, marked as an emergency.
    let out = call_as(&mut c, &invite_to("112", "z9hG4bKc3"), "carol", "pw", T0);
    let at_b = sent_to(&out, TRUNK_B);
    assert_eq!(at_b.len(), 1, "{out:?}");
    assert_eq!(ruri(&at_b[0]), "sip:112@127.0.0.1:5072");
    assert_eq!(
        header_of(&at_b[0], "Priority").as_deref(),
        Some("emergency")
    );
}

#[test]
fn calls_from_an_inbound_trunk_reach_extensions_without_a_challenge_but_not_trunks() {
    let text = TRUNKS.to_string() + "\n[[extension]]\nnumber = \"+4930555\"\nuser = \"alice\"\n";
    let mut c = core_with_users(&text);
    register_as(&mut c, "alice", "secret", "192.0.2.30:5060");
    // From trunk b's inbound address: no 407, straight to alice's phone.
    let out = send(
        &mut c,
        &invite_to("+4930555", "z9hG4bKi1"),
        "127.0.0.5:5060",
        0,
        T0,
    );
    let at_alice = sent_to(&out, "192.0.2.30:5060");
    assert_eq!(at_alice.len(), 1, "{out:?}");
    assert_eq!(ruri(&at_alice[0]), "sip:alice@192.0.2.30:5060");
    // A trunk cannot use us to reach another trunk (no transit).
    let out = send(
        &mut c,
        &invite_to("+4930777", "z9hG4bKi2"),
        "127.0.0.5:5060",
        0,
        T0,
    );
    assert_eq!(status(&out[0].1), 404);
    // Anyone else is challenged as before.
    let out = send(
        &mut c,
        &invite_to("+4930555", "z9hG4bKi3"),
        "127.0.0.6:5060",
        0,
        T0,
    );
    assert_eq!(status(&out[0].1), 407);
}

const GROUPS: &str = r#"
[[group]]
number = "600"
members = ["alice", "bob"]
strategy = "parallel"
ring_ms = 10000

[[group]]
number = "601"
members = ["alice", "bob"]
strategy = "sequential"
ring_ms = 5000

[[group]]
number = "602"
members = ["alice", "bob"]
strategy = "round-robin"
ring_ms = 5000

[[paging]]
number = "700"
members = ["alice", "bob"]
"#;

const ALICE: &str = "192.0.2.30:5060";
const BOB: &str = "192.0.2.31:5060";

#[test]
fn a_parallel_group_rings_every_member_and_cancels_the_rest_on_answer() {
    let mut c = routed_core(GROUPS, None);
    register(&mut c, "alice", ALICE);
    register(&mut c, "bob", BOB);
    let out = send(&mut c, &invite_to("600", "z9hG4bKg1"), CALLER, 0, T0);
    let out = settle(&mut c, out, T0);
    let (a, b) = (sent_to(&out, ALICE), sent_to(&out, BOB));
    assert_eq!((a.len(), b.len()), (1, 1), "{out:?}");
    assert_eq!(ruri(&a[0]), format!("sip:alice@{ALICE}"));
    // One Record-Route (the group's pass), not two.
    let rr: Vec<_> = Message::parse(&a[0])
        .unwrap()
        .header_all(HeaderName::RecordRoute)
        .collect();
    assert_eq!(rr.len(), 1, "{rr:?}");
    // Both ring; alice answers; bob's leg is cancelled, the caller gets alice's 200.
    let out = send(&mut c, &answer(&b[0], 180, "Ringing", "b"), BOB, 0, T0 + 10);
    let out = settle(&mut c, out, T0 + 10);
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 180);
    let out = send(
        &mut c,
        &answer(&a[0], 180, "Ringing", "a"),
        ALICE,
        0,
        T0 + 11,
    );
    settle(&mut c, out, T0 + 11);
    let out = send(&mut c, &answer(&a[0], 200, "OK", "a"), ALICE, 0, T0 + 20);
    let out = settle(&mut c, out, T0 + 20);
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 200, "{out:?}");
    let to_bob = sent_to(&out, BOB);
    assert_eq!(to_bob.len(), 1, "{out:?}");
    assert_eq!(method(&to_bob[0]), b"CANCEL");
    assert_eq!(top_branch(&to_bob[0]), top_branch(&b[0]));
}

#[test]
fn a_sequential_group_rings_members_in_turn_for_ring_ms_each() {
    let mut c = routed_core(GROUPS, None);
    register(&mut c, "alice", ALICE);
    register(&mut c, "bob", BOB);
    let out = send(&mut c, &invite_to("601", "z9hG4bKq1"), CALLER, 0, T0);
    let out = settle(&mut c, out, T0);
    let a = sent_to(&out, ALICE);
    assert_eq!(a.len(), 1);
    assert!(sent_to(&out, BOB).is_empty(), "bob waits his turn");
    let out = send(
        &mut c,
        &answer(&a[0], 180, "Ringing", "a"),
        ALICE,
        0,
        T0 + 10,
    );
    settle(&mut c, out, T0 + 10);
    let out = tick(&mut c, T0 + 4_999);
    assert!(settle(&mut c, out, T0 + 4_999).is_empty());
    let out = tick(&mut c, T0 + 5_000);
    let out = settle(&mut c, out, T0 + 5_000);
    assert_eq!(sent_to(&out, BOB).len(), 1, "bob's turn: {out:?}");
    assert_eq!(method(&sent_to(&out, ALICE)[0]), b"CANCEL");
}

#[test]
fn a_round_robin_group_starts_with_the_next_member_each_call() {
    let mut c = routed_core(GROUPS, None);
    register(&mut c, "alice", ALICE);
    register(&mut c, "bob", BOB);
    let mut first = Vec::new();
    for (i, branch) in ["z9hG4bKr1", "z9hG4bKr2", "z9hG4bKr3"].iter().enumerate() {
        let now = T0 + i as u64 * 100;
        let out = send(&mut c, &invite_to("602", branch), CALLER, 0, now);
        let out = settle(&mut c, out, now);
        let who = if !sent_to(&out, ALICE).is_empty() {
            "alice"
        } else {
            "bob"
        };
        assert_eq!(sent_to(&out, ALICE).len() + sent_to(&out, BOB).len(), 1);
        first.push(who);
    }
    assert_eq!(first, ["alice", "bob", "alice"]);
}

#[test]
fn paging_reaches_every_member_with_auto_answer_headers() {
    let mut c = routed_core(GROUPS, None);
    register(&mut c, "alice", ALICE);
    register(&mut c, "bob", BOB);
    let out = send(&mut c, &invite_to("700", "z9hG4bKp1"), CALLER, 0, T0);
    let out = settle(&mut c, out, T0);
    for phone in [ALICE, BOB] {
        let inv = sent_to(&out, phone);
        assert_eq!(inv.len(), 1, "{out:?}");
        assert_eq!(
            header_of(&inv[0], "Call-Info").as_deref(),
            Some("<sip:localhost>;answer-after=0")
        );
        assert!(
            header_of(&inv[0], "Alert-Info").is_some_and(|v| v.contains("info=alert-autoanswer"))
        );
    }
}

#[test]
fn an_extension_reaches_its_users_bindings_and_unknown_numbers_get_404() {
    let text = "[[extension]]\nnumber = \"1001\"\nuser = \"alice\"\n";
    let mut c = routed_core(text, None);
    let out = send(&mut c, &invite_to("1001", "z9hG4bKe1"), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 480, "alice has no binding yet");
    register(&mut c, "alice", ALICE);
    let out = send(&mut c, &invite_to("1001", "z9hG4bKe2"), CALLER, 0, T0);
    assert_eq!(sent_to(&out, ALICE).len(), 1, "{out:?}");
    let out = send(&mut c, &invite_to("1002", "z9hG4bKe3"), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 404);
}

#[test]
fn an_extension_dialed_before_normalisation_goes_to_its_users_shard() {
    use super::Disposition;
    use crate::server::ownership::{aor_hash, owner_shard, user_aor_hash};
    use crate::sip::{Scheme, Uri};
    let alice_shard = owner_shard(user_aor_hash(Scheme::Sip, b"alice").unwrap(), 2);
    let other = 1 - alice_shard;
    // A national number whose own shard is not alice's (else the test would prove nothing).
    let dialed = (0..100)
        .map(|i| format!("0305{i:02}"))
        .find(|n| {
            let uri = format!("sip:{n}@localhost");
            owner_shard(aor_hash(&Uri::parse(uri.as_bytes()).unwrap()).unwrap(), 2) == other
        })
        .unwrap();
    let extension = format!("+49{}", &dialed[1..]);
    let text = format!(
        "[normalize]\nrules = [{{ match = \"^0\", replace = \"+49\" }}]\n\
         [[extension]]\nnumber = \"{extension}\"\nuser = \"alice\"\n"
    );
    let cfg = Arc::new(CoreConfig {
        domains: vec!["localhost".into()],
        local_addrs: vec![addr(LISTEN)],
        shards: 2,
        mode: Mode::Proxy,
        registrar: RegistrarSettings::default(),
        proxy: ProxySettings::default(),
        routing: plan(&text),
        responder: Default::default(),
        security: Default::default(),
        overload: Default::default(),
    });
    let mut cores: Vec<Core> = (0..2)
        .map(|i| {
            Core::new(
                i,
                cfg.clone(),
                Arc::new(ShardStats::default()),
                None,
                &[addr(LISTEN).into()],
            )
        })
        .collect();
    // As normalised and as dialed, the INVITE is handed to the shard of alice's bindings.
    for number in [extension.as_str(), dialed.as_str()] {
        let mut out = super::outbox::Outbox::new();
        let inv = invite_to(number, "z9hG4bKo1");
        let d = cores[other].handle(&inv, addr(CALLER), 0, T0, false, &mut out);
        assert_eq!(d, Disposition::HandOff(alice_shard), "{number}");
    }
    register(&mut cores[alice_shard], "alice", ALICE);
    let out = send(
        &mut cores[alice_shard],
        &invite_to(&dialed, "z9hG4bKo2"),
        CALLER,
        0,
        T0,
    );
    assert_eq!(sent_to(&out, ALICE).len(), 1, "{out:?}");
}

#[test]
fn a_bye_for_a_dialog_that_never_existed_gets_481() {
    let mut c = routed_core(TRUNKS, None);
    // SIPp ends a call it gave up on: no Route, the Request-URI is the server itself.
    let bye = format!(
        "BYE sip:+4930123@{LISTEN} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKb481\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carol@localhost>;tag=c1\r\n\
         To: <sip:+4930123@localhost>;tag=never\r\nCall-ID: gone\r\nCSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let out = send(&mut c, bye.as_bytes(), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 481);
}

#[test]
fn a_group_call_is_one_call_record_whatever_its_members_answer() {
    let mut c = routed_core(GROUPS, None);
    let mut cfg = (*c.cfg).clone();
    cfg.proxy.cdr = Some(crate::proxy::cdr::CdrSettings::default());
    c.reload(Arc::new(cfg), None);
    register(&mut c, "alice", ALICE);
    register(&mut c, "bob", BOB);
    let out = send(&mut c, &invite_to("600", "z9hG4bKcdr1"), CALLER, 0, T0);
    let out = settle(&mut c, out, T0);
    let (a, b) = (sent_to(&out, ALICE), sent_to(&out, BOB));
    // bob is busy first (his leg's 486 must not end the caller's record), then alice answers.
    let out = send(
        &mut c,
        &answer(&b[0], 486, "Busy Here", "b"),
        BOB,
        0,
        T0 + 10,
    );
    settle(&mut c, out, T0 + 10);
    let out = send(&mut c, &answer(&a[0], 200, "OK", "a"), ALICE, 0, T0 + 20);
    let out = settle(&mut c, out, T0 + 20);
    assert_eq!(status(&sent_to(&out, CALLER)[0]), 200);
    let mut records = Vec::new();
    c.take_records(&mut records);
    assert!(records.is_empty(), "{records:?}");
    let calls = c.calls(T0 + 30);
    assert_eq!((calls.len(), calls[0].state.as_str()), (1, "answered"));
    // The server stops with the call in progress: its record is written then.
    c.close_calls(T0 + 5_020);
    c.take_records(&mut records);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (r.code, r.disposition),
        (200, crate::proxy::cdr::Disposition::Answered)
    );
    assert_eq!(r.route.as_deref(), Some("group 600"));
    assert_eq!((r.dialed.as_str(), r.duration_ms), ("600", 5_000));
    assert_eq!(r.hangup, Some(crate::proxy::cdr::Hangup::Shutdown));
}

/// With a shared store (issue 21), a dial plan's extension whose user has no binding here,
/// and a known user called by name, wait for the store like a plain user route does: the
/// core asks, and the request goes on to the binding the store holds (480 only when it
/// holds none).
#[test]
fn with_a_shared_store_extensions_and_known_users_wait_for_the_store() {
    use super::tests::{asked, store_says};
    use crate::registrar::{Binding, BindingFields, RemoteChange};
    let binding_of = |contact: &str, dst: &str| {
        let fields = BindingFields::plain(contact.as_bytes(), addr(dst), T0 + 60_000);
        vec![Binding::new(&fields, std::iter::empty()).unwrap()]
    };
    let answer_with = |c: &mut Core, key: &str, bindings: Vec<Binding>| {
        let mut changes = Vec::new();
        if !bindings.is_empty() {
            changes.push(RemoteChange::Set {
                key: key.as_bytes().into(),
                node: "node-b".into(),
                version: 1,
                epoch: 0,
                bindings,
            });
        }
        changes.push(RemoteChange::LookedUp {
            key: key.as_bytes().into(),
            failed: false,
        });
        store_says(c, changes, T0 + 10)
    };
    // An extension.
    let mut c = routed_core(
        "[[extension]]\nnumber = \"1001\"\nuser = \"bob\"\n\n[[extension]]\nnumber = \"1002\"\nuser = \"dave\"\n",
        None,
    );
    c.enable_store_lookups();
    let out = send(&mut c, &invite_to("1001", "z9hG4bKx1"), CALLER, 0, T0);
    assert!(out.is_empty(), "parked: {out:?}");
    assert_eq!(asked(&mut c), ["sip:bob@localhost"]);
    let out = answer_with(
        &mut c,
        "sip:bob@localhost",
        binding_of("sip:bob@192.0.2.20:5062", "192.0.2.20:5062"),
    );
    assert_eq!(sent_to(&out, "192.0.2.20:5062").len(), 1, "{out:?}");
    // The store holds nothing for dave: 480.
    assert!(send(&mut c, &invite_to("1002", "z9hG4bKx2"), CALLER, 0, T0).is_empty());
    assert_eq!(asked(&mut c), ["sip:dave@localhost"]);
    let out = answer_with(&mut c, "sip:dave@localhost", Vec::new());
    assert_eq!(status(&out[0].1), 480);

    // A known user called by name (after the caller's digest).
    let mut c = core_with_users(TRUNKS);
    c.enable_store_lookups();
    let req = invite_to("carol", "z9hG4bKx3");
    let out = send(&mut c, &req, CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 407);
    let again = with_credentials(&req, &out[0].1, "alice", "secret");
    let out = send(&mut c, &again, CALLER, 0, T0 + 1);
    assert!(out.is_empty(), "parked: {out:?}");
    // Its retransmission waits with it (checked again, its used nonce count got a 407).
    let out = send(&mut c, &again, CALLER, 0, T0 + 500);
    assert!(out.is_empty(), "the retransmission: {out:?}");
    assert_eq!(asked(&mut c), ["sip:carol@localhost"]);
    let out = answer_with(
        &mut c,
        "sip:carol@localhost",
        binding_of("sip:carol@192.0.2.21:5062", "192.0.2.21:5062"),
    );
    assert_eq!(sent_to(&out, "192.0.2.21:5062").len(), 1, "{out:?}");
}
