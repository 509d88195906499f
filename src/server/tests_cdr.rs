//! Call detail records through the whole core (`crate::proxy::cdr`): one record per call
//! attempt with the right disposition, times, caller, target and who hung up, for calls
//! answered, cancelled, refused, unanswered and challenged first.

use super::tests::{
    addr, answer, core_with_auth, core_with_proxy, invite, invite_with_credentials, register, send,
    status, tick, CALLER, T0,
};
use super::Core;
use crate::proxy::cdr::{CallRecord, CdrSettings, Disposition, Hangup};
use crate::proxy::settings::{Mode, ProxySettings};
use crate::registrar::RegistrarSettings;

const BOB: &str = "192.0.2.20:5062";

fn cdr_core(max_duration_ms: u64) -> Core {
    core_with_proxy(
        Mode::Proxy,
        RegistrarSettings::default(),
        None,
        ProxySettings {
            cdr: Some(CdrSettings { max_duration_ms }),
            ..Default::default()
        },
    )
}

fn records(c: &mut Core) -> Vec<CallRecord> {
    let mut v = Vec::new();
    c.take_records(&mut v);
    v
}

fn in_dialog(m: &str, call_id: &str, from_caller: bool, cseq: u32) -> Vec<u8> {
    let (from, to) = if from_caller {
        ("<sip:alice@localhost>;tag=a1", "<sip:bob@localhost>;tag=b1")
    } else {
        ("<sip:bob@localhost>;tag=b1", "<sip:alice@localhost>;tag=a1")
    };
    let (via, ruri) = if from_caller {
        (CALLER, format!("sip:bob@{BOB}"))
    } else {
        (BOB, format!("sip:alice@{CALLER}"))
    };
    format!(
        "{m} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{m}{cseq}\r\n\
         Route: <sip:127.0.0.1:5060;lr;ss=0>\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} {m}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Calls bob, who answers at +300 ms; returns the INVITE as forwarded.
fn answered(c: &mut Core, branch: &str) -> Vec<u8> {
    register(c, "bob", BOB);
    let out = send(c, &invite(branch), CALLER, 0, T0);
    let fwd = out[1].1.clone();
    send(c, &answer(&fwd, 180, "Ringing", "b1"), BOB, 0, T0 + 100);
    let out = send(c, &answer(&fwd, 200, "OK", "b1"), BOB, 0, T0 + 300);
    assert_eq!(status(&out[0].1), 200);
    fwd
}

#[test]
fn an_answered_call_is_recorded_when_its_bye_passes() {
    for (caller_hangs_up, who) in [(true, Hangup::Caller), (false, Hangup::Callee)] {
        let mut c = cdr_core(3_600_000);
        answered(&mut c, "z9hG4bKa1");
        assert!(records(&mut c).is_empty(), "no record before the end");
        let calls = c.calls(T0 + 1_300);
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].state.as_str(), calls[0].seconds), ("answered", 1));
        assert_eq!(calls[0].from.as_deref(), Some("sip:alice@localhost"));
        let bye = in_dialog("BYE", "call-z9hG4bKa1", caller_hangs_up, 2);
        let src = if caller_hangs_up { CALLER } else { BOB };
        let out = send(&mut c, &bye, src, 0, T0 + 5_300);
        assert_eq!(out.len(), 1, "the BYE goes on");
        let r = records(&mut c);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.call_id, "call-z9hG4bKa1");
        assert_eq!(
            (r.start_ms, r.answer_ms, r.end_ms, r.setup_ms, r.duration_ms),
            (T0, Some(T0 + 300), T0 + 5_300, 300, 5_000)
        );
        assert_eq!(
            (r.code, r.disposition, r.hangup),
            (200, Disposition::Answered, Some(who))
        );
        assert_eq!(
            (r.from.as_str(), r.to.as_str()),
            ("sip:alice@localhost", "sip:bob@localhost")
        );
        assert_eq!(r.dialed, "bob");
        assert_eq!(r.target, Some(addr(BOB)));
        assert_eq!(r.route.as_deref(), Some("user"));
        assert_eq!((r.source, r.caller_user.as_deref()), (addr(CALLER), None));
        assert!(c.calls(T0 + 5_400).is_empty());
    }
}

#[test]
fn a_cancelled_call_is_recorded_as_cancelled_by_the_caller() {
    let mut c = cdr_core(3_600_000);
    register(&mut c, "bob", BOB);
    let out = send(&mut c, &invite("z9hG4bKx1"), CALLER, 0, T0);
    let fwd = out[1].1.clone();
    send(&mut c, &answer(&fwd, 180, "Ringing", "b1"), BOB, 0, T0 + 5);
    assert_eq!(c.calls(T0 + 6)[0].state, "ringing");
    let cancel = b"CANCEL sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx1\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
Call-ID: call-z9hG4bKx1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
    send(&mut c, cancel, CALLER, 0, T0 + 2_000);
    send(
        &mut c,
        &answer(&fwd, 487, "Request Terminated", "b1"),
        BOB,
        0,
        T0 + 2_010,
    );
    let r = records(&mut c);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].code, r[0].disposition, r[0].hangup),
        (487, Disposition::Cancelled, Some(Hangup::Caller))
    );
    assert_eq!(
        (r[0].setup_ms, r[0].answer_ms, r[0].duration_ms),
        (2_010, None, 0)
    );
    assert!(c.calls(T0 + 3_000).is_empty());
}

#[test]
fn busy_and_refused_calls_are_recorded_once() {
    let mut c = cdr_core(3_600_000);
    // Nobody registered: the server answers 480 itself.
    let out = send(&mut c, &invite("z9hG4bKr1"), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 480);
    // Its retransmission is absorbed: no second record.
    send(&mut c, &invite("z9hG4bKr1"), CALLER, 0, T0 + 500);
    let r = records(&mut c);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].code, r[0].disposition), (480, Disposition::NoAnswer));
    assert_eq!((r[0].target, r[0].route.as_deref()), (None, Some("user")));
    // bob is busy.
    register(&mut c, "bob", BOB);
    let out = send(&mut c, &invite("z9hG4bKb1"), CALLER, 0, T0 + 1_000);
    let fwd = out[1].1.clone();
    send(
        &mut c,
        &answer(&fwd, 486, "Busy Here", "b1"),
        BOB,
        0,
        T0 + 1_040,
    );
    let r = records(&mut c);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].code, r[0].disposition, r[0].setup_ms, r[0].hangup),
        (486, Disposition::Busy, 40, None)
    );
    assert_eq!(r[0].target, Some(addr(BOB)));
}

#[test]
fn an_unanswered_call_ends_as_no_answer_at_timer_c() {
    let mut c = cdr_core(3_600_000);
    register(&mut c, "bob", BOB);
    let out = send(&mut c, &invite("z9hG4bKt2"), CALLER, 0, T0);
    let fwd = out[1].1.clone();
    send(&mut c, &answer(&fwd, 180, "Ringing", "b1"), BOB, 0, T0 + 5);
    let mut got = Vec::new();
    let mut t = T0;
    while got.is_empty() && t < T0 + 200_000 {
        t += 1_000;
        tick(&mut c, t);
        c.take_records(&mut got);
    }
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].code, got[0].disposition),
        (408, Disposition::NoAnswer)
    );
}

#[test]
fn a_call_whose_bye_never_comes_closes_at_the_maximum_duration() {
    let mut c = cdr_core(60_000);
    answered(&mut c, "z9hG4bKm1");
    assert!(c.next_timeout().is_some());
    let mut got = Vec::new();
    let mut t = T0 + 300;
    while got.is_empty() && t < T0 + 120_000 {
        t += 1_000;
        tick(&mut c, t);
        c.take_records(&mut got);
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].hangup, Some(Hangup::MaxDuration));
    assert_eq!((got[0].end_ms, got[0].duration_ms), (T0 + 60_300, 60_000));
}

#[test]
fn a_session_timer_without_refresh_closes_the_call_and_a_reinvite_refreshes_it() {
    let mut c = cdr_core(3_600_000);
    register(&mut c, "bob", BOB);
    let out = send(&mut c, &invite("z9hG4bKs1"), CALLER, 0, T0);
    let fwd = out[1].1.clone();
    let ok = String::from_utf8(answer(&fwd, 200, "OK", "b1"))
        .unwrap()
        .replace(
            "Content-Length: 0",
            "Session-Expires: 90;refresher=uac\r\nContent-Length: 0",
        );
    send(&mut c, ok.as_bytes(), BOB, 0, T0 + 100);
    // The caller refreshes at 45 s with a re-INVITE.
    let reinvite = in_dialog("INVITE", "call-z9hG4bKs1", true, 3);
    let out = send(&mut c, &reinvite, CALLER, 0, T0 + 45_000);
    let to_bob = out
        .iter()
        .find(|(d, _)| *d == addr(BOB))
        .expect("forwarded");
    let ok = String::from_utf8(answer(&to_bob.1, 200, "OK", "b1"))
        .unwrap()
        .replace(
            "Content-Length: 0",
            "Session-Expires: 90\r\nContent-Length: 0",
        );
    send(&mut c, ok.as_bytes(), BOB, 0, T0 + 45_000);
    let mut got = Vec::new();
    let mut t = T0 + 45_000;
    while got.is_empty() && t < T0 + 300_000 {
        t += 1_000;
        tick(&mut c, t);
        c.take_records(&mut got);
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].hangup, Some(Hangup::SessionTimer));
    assert_eq!(got[0].end_ms, T0 + 135_000, "90 s after the refresh");
}

#[test]
fn a_challenged_call_is_one_record_with_the_authenticated_caller() {
    let mut c = core_with_auth();
    // core_with_auth has records off: turn them on as a reload would.
    let mut cfg = (*c.cfg).clone();
    cfg.proxy.cdr = Some(CdrSettings::default());
    c.reload(std::sync::Arc::new(cfg), None);
    let out = send(&mut c, &invite("z9hG4bKauth1"), CALLER, 0, T0);
    assert_eq!(status(&out[0].1), 407);
    let good = invite_with_credentials(&out[0].1, "alice", "secret", "alice", 1);
    let out = send(&mut c, &good, CALLER, 0, T0 + 30);
    assert_eq!(status(&out[0].1), 480, "bob has no binding");
    let r = records(&mut c);
    assert_eq!(r.len(), 1, "the 407 round is not an attempt");
    assert_eq!(r[0].caller_user.as_deref(), Some("alice"));
    assert_eq!(r[0].start_ms, T0 + 30);
    assert_eq!(r[0].source, addr(CALLER));
}

#[test]
fn without_records_nothing_is_kept() {
    let mut c = core_with_proxy(
        Mode::Proxy,
        RegistrarSettings::default(),
        None,
        ProxySettings::default(),
    );
    answered(&mut c, "z9hG4bKn1");
    assert!(records(&mut c).is_empty());
    assert_eq!(c.calls(T0 + 400)[0].state, "answered");
    assert_eq!(c.calls(T0 + 400)[0].from, None);
}
