//! Edge security through the core (issue 17): the flood ban, the scanner drop, the
//! brute-force lockout and ACLs, driven with datagrams and explicit times.

use super::tests::{addr, send, status, T0};
use super::{Core, CoreConfig};
use crate::auth::{Authenticator, UserDb};
use crate::proxy::settings::Mode;
use crate::registrar::RegistrarSettings;
use crate::security::{DenyAnswer, FloodLimit, SecuritySettings};
use crate::sip::{HeaderName, Message};
use crate::stats::{DropReason, ShardStats};
use std::sync::Arc;

const LISTEN: &str = "127.0.0.1:5060";

fn core(security: SecuritySettings, auth: bool) -> (Core, Arc<ShardStats>) {
    let cfg = Arc::new(CoreConfig {
        security: Arc::new(security.clone()),
        ..CoreConfig::single("localhost", addr(LISTEN), Mode::Proxy)
    });
    // One board for the guard and the lockout: the lockout's bans must reach the guard.
    let board = Arc::new(crate::security::board::Board::default());
    let auth = auth.then(|| {
        let mut db = UserDb::new("localhost");
        db.add_password("alice", "secret").unwrap();
        Authenticator::new("localhost", Arc::new(db), [7; 32], 300)
            .with_lockout(&security, board.clone())
    });
    let stats = Arc::new(ShardStats::default());
    let mut c = Core::new(0, cfg, stats.clone(), auth, &[addr(LISTEN).into()]);
    c.share_board(board);
    (c, stats)
}

fn options(src: &str, n: u32, user_agent: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bKo{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@localhost>;tag=o{n}\r\nTo: <sip:localhost>\r\n\
         Call-ID: opt-{n}@{src}\r\nCSeq: {n} OPTIONS\r\nUser-Agent: {user_agent}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn register(src: &str, n: u32, authorization: Option<&str>) -> Vec<u8> {
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bKr{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=r{n}\r\nTo: <sip:alice@localhost>\r\n\
         Call-ID: reg-{src}\r\nCSeq: {n} REGISTER\r\nContact: <sip:alice@{src}>\r\n{auth}\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// REGISTER as alice from `src` with `password`: the challenge, then the answer; the status
/// of the answer (None: no answer to it, or none to the challenge).
fn login(c: &mut Core, src: &str, n: u32, password: &str, now: u64) -> Option<u16> {
    let out = send(c, &register(src, n, None), src, 0, now);
    let challenge = out.first()?.1.clone();
    let ch = Message::parse(&challenge).unwrap();
    let params =
        crate::auth::client::first_supported_challenge(&ch, HeaderName::WwwAuthenticate).unwrap();
    let creds = crate::auth::client_response(
        &params,
        "alice",
        password,
        b"REGISTER",
        b"sip:localhost",
        1,
        "c0ffee",
    )
    .unwrap();
    let out = send(c, &register(src, n + 1, Some(&creds)), src, 0, now + 1);
    out.first().map(|(_, b)| status(b))
}

fn dropped(stats: &ShardStats, r: DropReason) -> u64 {
    stats.dropped[r as usize].get()
}

#[test]
fn a_flooding_source_is_banned_while_others_are_served() {
    let security = SecuritySettings {
        flood: Some(FloodLimit {
            requests: 20,
            window_ms: 2_000,
        }),
        ..SecuritySettings::default()
    };
    let (mut c, stats) = core(security, false);
    let flooder = "127.0.0.3:5070";
    let mut answered = 0;
    for n in 0..200 {
        answered += send(
            &mut c,
            &options(flooder, n, "SIPp"),
            flooder,
            0,
            T0 + n as u64,
        )
        .len();
        // A normal source keeps being answered throughout.
        let other = "127.0.0.2:5080";
        if n % 20 == 0 {
            let out = send(&mut c, &options(other, n, "SIPp"), other, 0, T0 + n as u64);
            assert_eq!(status(&out[0].1), 200, "request {n} from the other source");
        }
    }
    assert_eq!(
        answered, 20,
        "only the requests within the limit were answered"
    );
    assert_eq!(dropped(&stats, DropReason::Banned), 180);
    // Exempt (127.0.0.1): never banned.
    for n in 0..200 {
        let out = send(
            &mut c,
            &options(LISTEN, n, "SIPp"),
            "127.0.0.1:5090",
            0,
            T0 + 5,
        );
        assert_eq!(out.len(), 1, "request {n} from 127.0.0.1");
    }
    // The ban lasts ban_s (300 s); then the source is served again.
    let later = T0 + 300_000 + 200;
    assert_eq!(
        send(&mut c, &options(flooder, 999, "x"), flooder, 0, later).len(),
        1
    );
}

#[test]
fn a_scanner_gets_no_answer_and_its_address_is_banned() {
    let (mut c, stats) = core(SecuritySettings::default(), false);
    let scanner = "127.0.0.3:5060";
    assert!(send(
        &mut c,
        &options(scanner, 1, "friendly-scanner"),
        scanner,
        0,
        T0
    )
    .is_empty());
    // Whatever it sends next: banned.
    assert!(send(
        &mut c,
        &options(scanner, 2, "Linphone/5"),
        scanner,
        0,
        T0 + 1
    )
    .is_empty());
    assert_eq!(dropped(&stats, DropReason::Scanner), 1);
    assert_eq!(dropped(&stats, DropReason::Banned), 1);
    let phone = "127.0.0.2:5060";
    assert_eq!(
        send(&mut c, &options(phone, 3, "Linphone/5"), phone, 0, T0 + 2).len(),
        1
    );
}

#[test]
fn guessing_passwords_locks_the_address_out_and_the_real_user_still_registers() {
    let (mut c, _) = core(SecuritySettings::default(), true);
    let attacker = "127.0.0.3:5060";
    // Nine wrong guesses get their 401; the tenth bans the address.
    for i in 0..10 {
        let got = login(
            &mut c,
            attacker,
            10 * i,
            &format!("guess{i}"),
            T0 + i as u64 * 10,
        );
        assert_eq!(got, Some(401), "guess {i}");
    }
    // Banned: the right password gets nothing, nor does anything else from there.
    assert_eq!(login(&mut c, attacker, 500, "secret", T0 + 200), None);
    // alice's phone elsewhere is not locked out.
    assert_eq!(
        login(&mut c, "127.0.0.2:5060", 600, "secret", T0 + 300),
        Some(200)
    );
    // After the lockout (900 s) the address may try again.
    let later = T0 + 900_000 + 500;
    assert_eq!(login(&mut c, attacker, 700, "secret", later), Some(200));
}

#[test]
fn an_attack_from_many_addresses_locks_the_account_with_403() {
    let (mut c, _) = core(SecuritySettings::default(), true);
    // 100 addresses, one wrong guess each: no address reaches its limit, the account does.
    for i in 0..100u32 {
        let src = format!("198.51.100.{}:5060", i + 1);
        let got = login(&mut c, &src, 10 * i, "guess", T0 + i as u64);
        let want = if i < 99 { 401 } else { 403 };
        assert_eq!(got, Some(want), "attempt {i}");
    }
    // Locked: even the right password from alice's own address gets 403.
    assert_eq!(
        login(&mut c, "127.0.0.2:5060", 5_000, "secret", T0 + 1_000),
        Some(403)
    );
    // Until the lock ends.
    let later = T0 + 100 + 900_000;
    assert_eq!(
        login(&mut c, "127.0.0.2:5060", 6_000, "secret", later),
        Some(200)
    );
}

#[test]
fn without_a_lockout_guessing_goes_on() {
    let (mut c, _) = core(SecuritySettings::off(), true);
    let attacker = "127.0.0.3:5060";
    for i in 0..30 {
        let got = login(&mut c, attacker, 10 * i, "guess", T0 + i as u64 * 10);
        assert_eq!(got, Some(401));
    }
    assert_eq!(login(&mut c, attacker, 999, "secret", T0 + 500), Some(200));
}

#[test]
fn a_denied_source_gets_nothing_or_403() {
    let mut security = SecuritySettings {
        deny: vec!["203.0.113.0/24".parse().unwrap()],
        ..SecuritySettings::default()
    };
    let (mut c, stats) = core(security.clone(), false);
    let denied = "203.0.113.9:5060";
    assert!(send(&mut c, &options(denied, 1, "x"), denied, 0, T0).is_empty());
    assert_eq!(dropped(&stats, DropReason::Denied), 1);
    assert_eq!(
        send(
            &mut c,
            &options("192.0.2.1:5060", 2, "x"),
            "192.0.2.1:5060",
            0,
            T0
        )
        .len(),
        1
    );
    security.deny_answer = DenyAnswer::Forbidden;
    let (mut c, _) = core(security, false);
    let out = send(&mut c, &options(denied, 3, "x"), denied, 0, T0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(denied));
    assert_eq!(status(&out[0].1), 403);
    let m = Message::parse(&out[0].1).unwrap();
    assert_eq!(
        m.reason().unwrap(),
        b"Forbidden (source address not allowed)"
    );
}

/// A core with alice (digest) and the call limits `limits`, bob registered at BOB, and the
/// dial plan `plan` (emergency numbers).
fn limited_core(limits: crate::security::calls::CallLimits, plan: &str) -> Core {
    let security = SecuritySettings {
        calls: limits,
        ..SecuritySettings::default()
    };
    let spec: crate::routing::DialPlanSpec = toml::from_str(plan).unwrap();
    let cfg = Arc::new(CoreConfig {
        registrar: RegistrarSettings {
            match_auth_user: false,
            ..RegistrarSettings::default()
        },
        routing: Arc::new(crate::routing::DialPlan::build(&spec).unwrap()),
        security: Arc::new(security),
        ..CoreConfig::single("localhost", addr(LISTEN), Mode::Proxy)
    });
    let mut db = UserDb::new("localhost");
    db.add_password("alice", "secret").unwrap();
    db.add_password("bob", "pw").unwrap();
    let auth = Authenticator::new("localhost", Arc::new(db), [7; 32], 300);
    let mut c = Core::new(
        0,
        cfg,
        Arc::new(ShardStats::default()),
        Some(auth),
        &[addr(LISTEN).into()],
    );
    // bob's phone registers.
    let reg = |auth: Option<&str>| {
        let a = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bKrb{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=r\r\nTo: <sip:bob@localhost>\r\n\
             Call-ID: reg-bob\r\nCSeq: {} REGISTER\r\nContact: <sip:bob@{BOB}>\r\n{a}\
             Content-Length: 0\r\n\r\n",
            a.len(),
            if a.is_empty() { 1 } else { 2 }
        )
        .into_bytes()
    };
    let out = send(&mut c, &reg(None), BOB, 0, T0);
    let ch = Message::parse(&out[0].1).unwrap();
    let params =
        crate::auth::client::first_supported_challenge(&ch, HeaderName::WwwAuthenticate).unwrap();
    let creds = crate::auth::client_response(
        &params,
        "bob",
        "pw",
        b"REGISTER",
        b"sip:localhost",
        1,
        "b0b",
    )
    .unwrap();
    let out = send(&mut c, &reg(Some(&creds)), BOB, 0, T0);
    assert_eq!(status(&out[0].1), 200);
    c
}

const BOB: &str = "192.0.2.20:5062";
const ALICE: &str = "192.0.2.10:5060";

fn alice_invite(to: &str, n: u32, auth: Option<&str>) -> Vec<u8> {
    let a = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
    let cseq = if auth.is_some() { 2 } else { 1 };
    format!(
        "INVITE sip:{to}@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKi{n}-{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a{n}\r\nTo: <sip:{to}@localhost>\r\n\
         Call-ID: toll-{n}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:alice@{ALICE}>\r\n{a}\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// alice calls `to` (call number `n`): the 407, then the INVITE with credentials. What the
/// core sent for the second.
fn alice_calls(c: &mut Core, to: &str, n: u32, now: u64) -> Vec<(std::net::SocketAddr, Vec<u8>)> {
    let out = send(c, &alice_invite(to, n, None), ALICE, 0, now);
    assert_eq!(status(&out[0].1), 407, "call {n}");
    let ch = Message::parse(&out[0].1).unwrap();
    let params =
        crate::auth::client::first_supported_challenge(&ch, HeaderName::ProxyAuthenticate).unwrap();
    let uri = format!("sip:{to}@localhost");
    let creds = crate::auth::client_response(
        &params,
        "alice",
        "secret",
        b"INVITE",
        uri.as_bytes(),
        1,
        "a11ce",
    )
    .unwrap();
    // The ACK of the 407 is absorbed; the INVITE with credentials follows.
    send(c, &alice_invite(to, n, Some(&creds)), ALICE, 0, now + 1)
}

fn forwarded_to(out: &[(std::net::SocketAddr, Vec<u8>)], dst: &str) -> Option<Vec<u8>> {
    out.iter()
        .find(|(d, b)| *d == addr(dst) && b.starts_with(b"INVITE"))
        .map(|(_, b)| b.clone())
}

#[test]
fn the_call_past_a_users_concurrent_limit_gets_486_until_one_ends() {
    let limits = crate::security::calls::CallLimits {
        max_concurrent: 2,
        ..Default::default()
    };
    let mut c = limited_core(limits, "");
    let first = forwarded_to(&alice_calls(&mut c, "bob", 1, T0), BOB).expect("call 1");
    let second = forwarded_to(&alice_calls(&mut c, "bob", 2, T0), BOB).expect("call 2");
    let out = alice_calls(&mut c, "bob", 3, T0);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(status(&out[0].1), 486);
    assert_eq!(
        Message::parse(&out[0].1).unwrap().reason().unwrap(),
        b"Busy Here (too many calls in progress)"
    );
    // bob declines call 1 (its final response goes upstream): a place is free again.
    let out = send(
        &mut c,
        &super::tests::answer(&first, 603, "Decline", "b1"),
        BOB,
        0,
        T0 + 10,
    );
    assert!(out.iter().any(|(_, b)| b.starts_with(b"SIP/2.0 603")));
    assert!(forwarded_to(&alice_calls(&mut c, "bob", 4, T0 + 20), BOB).is_some());
    // Call 2 is answered, then hung up: another place.
    send(
        &mut c,
        &super::tests::answer(&second, 200, "OK", "b2"),
        BOB,
        0,
        T0 + 30,
    );
    assert_eq!(status(&alice_calls(&mut c, "bob", 5, T0 + 40)[0].1), 486);
    let bye = format!(
        "BYE sip:bob@{BOB} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKbye2\r\n\
         Route: <sip:{LISTEN};lr;ss=0>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a2\r\n\
         To: <sip:bob@localhost>;tag=b2\r\nCall-ID: toll-2\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let out = send(&mut c, bye.as_bytes(), ALICE, 0, T0 + 50);
    assert_eq!(out[0].0, addr(BOB), "BYE forwarded");
    assert!(forwarded_to(&alice_calls(&mut c, "bob", 6, T0 + 60), BOB).is_some());
}

#[test]
fn calls_per_minute_are_limited_and_emergency_calls_never_are() {
    let limits = crate::security::calls::CallLimits {
        max_concurrent: 1,
        max_per_minute: 1,
        ..Default::default()
    };
    let plan =
        "[[trunk]]\nname = \"psap\"\naddress = \"127.0.0.1:5071\"\ncheck_interval_ms = 0\n\n\
                [emergency]\nnumbers = [\"112\"]\ntrunks = [\"psap\"]\n";
    let mut c = limited_core(limits, plan);
    let first = forwarded_to(&alice_calls(&mut c, "bob", 1, T0), BOB).expect("call 1");
    // At both limits now: 112 still goes out.
    let out = alice_calls(&mut c, "112", 2, T0 + 1);
    assert!(forwarded_to(&out, "127.0.0.1:5071").is_some(), "{out:?}");
    // Call 1 ends; within the same minute a new call is over the rate.
    send(
        &mut c,
        &super::tests::answer(&first, 486, "Busy", "b1"),
        BOB,
        0,
        T0 + 2,
    );
    let out = alice_calls(&mut c, "bob", 3, T0 + 3);
    assert_eq!(status(&out[0].1), 403);
    assert_eq!(
        Message::parse(&out[0].1).unwrap().reason().unwrap(),
        b"Forbidden (too many calls per minute)"
    );
    // A minute later: allowed.
    assert!(forwarded_to(&alice_calls(&mut c, "bob", 4, T0 + 60_001), BOB).is_some());
}

fn invite_with_sdp(branch: &str, proto: &str, to_tag: &str) -> Vec<u8> {
    let body = format!(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio 4000 {proto} 0\r\n"
    );
    let (to, route) = if to_tag.is_empty() {
        (String::new(), String::new())
    } else {
        (
            format!(";tag={to_tag}"),
            format!("Route: <sip:{LISTEN};lr;ss=0>\r\n"),
        )
    };
    let ruri = if to_tag.is_empty() {
        "sip:bob@localhost".to_string()
    } else {
        format!("sip:bob@{BOB}")
    };
    format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch={branch}\r\n{route}\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>{to}\r\n\
         Call-ID: srtp-{branch}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ALICE}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn with_the_srtp_policy_plain_rtp_offers_get_488_and_srtp_ones_pass() {
    for require_srtp in [true, false] {
        let security = SecuritySettings {
            require_srtp,
            ..SecuritySettings::default()
        };
        let (mut c, _) = core(security, false);
        super::tests::register(&mut c, "bob", BOB);
        let plain = send(
            &mut c,
            &invite_with_sdp("z9hG4bKp1", "RTP/AVP", ""),
            ALICE,
            0,
            T0,
        );
        let srtp = send(
            &mut c,
            &invite_with_sdp("z9hG4bKs1", "RTP/SAVP", ""),
            ALICE,
            0,
            T0,
        );
        let reinvite = send(
            &mut c,
            &invite_with_sdp("z9hG4bKr1", "RTP/AVP", "b1"),
            ALICE,
            0,
            T0,
        );
        assert!(forwarded_to(&srtp, BOB).is_some(), "SRTP offer forwarded");
        if require_srtp {
            for out in [&plain, &reinvite] {
                assert_eq!(out.len(), 1, "{out:?}");
                assert_eq!(status(&out[0].1), 488);
                assert_eq!(
                    Message::parse(&out[0].1).unwrap().reason().unwrap(),
                    b"Not Acceptable Here (SRTP required)"
                );
            }
        } else {
            assert!(
                forwarded_to(&plain, BOB).is_some(),
                "policy off: plain RTP passes"
            );
            assert!(forwarded_to(&reinvite, BOB).is_some());
        }
    }
}

#[test]
fn retransmitted_credentials_are_not_guesses() {
    // A phone whose 200 was lost retransmits its REGISTER with the nonce count already used:
    // a replay for the digest layer, not a wrong password for the lockout.
    let (mut c, _) = core(SecuritySettings::default(), true);
    let phone = "192.0.2.77:5060";
    let out = send(&mut c, &register(phone, 1, None), phone, 0, T0);
    let ch = Message::parse(&out[0].1).unwrap();
    let params =
        crate::auth::client::first_supported_challenge(&ch, HeaderName::WwwAuthenticate).unwrap();
    let creds = crate::auth::client_response(
        &params,
        "alice",
        "secret",
        b"REGISTER",
        b"sip:localhost",
        1,
        "c0ffee",
    )
    .unwrap();
    let again = register(phone, 2, Some(&creds));
    assert_eq!(status(&send(&mut c, &again, phone, 0, T0 + 1)[0].1), 200);
    for i in 0..20 {
        let out = send(&mut c, &again, phone, 0, T0 + 500 * (i + 1));
        assert_eq!(out.len(), 1, "retransmission {i} answered");
    }
    assert!(c.guard().board().bans(T0 + 20_000).is_empty());
    assert_eq!(login(&mut c, phone, 100, "secret", T0 + 20_000), Some(200));
}
