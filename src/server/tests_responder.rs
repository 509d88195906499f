//! Responder mode (`crate::responder`) driven without sockets: the answers to each method, the
//! response mix, ring and hold times, CANCEL, retransmission until ACK (RFC 3261 §13.3.1.4,
//! §17.2.1), the responder's own BYE (§15.1.1), simulated loss, digest, and which shard
//! handles a call's in-dialog requests.

use super::outbox::Outbox;
use super::tests::{addr, drain, send, status, tick, CALLER, T0};
use super::{Core, CoreConfig, Disposition};
use crate::proxy::settings::Mode;
use crate::responder::ResponderSettings;
use crate::sip::{HeaderName, Message};
use crate::stats::ShardStats;
use std::sync::Arc;

const LISTEN: &str = "127.0.0.1:5060";

fn responder_cores(
    shards: usize,
    settings: ResponderSettings,
    auth: Option<crate::auth::Authenticator>,
) -> Vec<Core> {
    let cfg = Arc::new(CoreConfig {
        domains: vec!["localhost".into()],
        local_addrs: vec![addr(LISTEN)],
        shards,
        mode: Mode::Responder,
        registrar: Default::default(),
        proxy: Default::default(),
        routing: Arc::new(crate::routing::DialPlan::empty()),
        responder: Arc::new(settings),
        security: std::sync::Arc::new(crate::security::SecuritySettings::off()),
        overload: Default::default(),
    });
    (0..shards)
        .map(|s| {
            let auth = auth.as_ref().map(|a| a.for_shard(s));
            Core::new(
                s,
                cfg.clone(),
                Arc::new(ShardStats::default()),
                auth,
                &[addr(LISTEN).into()],
            )
        })
        .collect()
}

fn responder(settings: ResponderSettings) -> Core {
    responder_cores(1, settings, None).pop().unwrap()
}

fn calls(c: &Core) -> usize {
    c.responder().unwrap().calls()
}

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
                     m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn invite(call_id: &str) -> Vec<u8> {
    format!(
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:sipp@192.0.2.10>;tag=a1\r\nTo: <sip:service@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:sipp@{CALLER}>\r\n\
         Record-Route: <sip:192.0.2.77;lr>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    )
    .into_bytes()
}

/// An in-dialog request of the caller (`method`, CSeq `seq`) with the To tag of `resp`.
fn in_dialog(method: &str, call_id: &str, resp: &[u8], seq: u32) -> Vec<u8> {
    let to = Message::parse(resp).unwrap();
    let to = String::from_utf8(to.header(HeaderName::To).unwrap().to_vec()).unwrap();
    let branch = if method == "ACK" && !resp.starts_with(b"SIP/2.0 2") {
        format!("z9hG4bK{call_id}") // the ACK of a non-2xx is in the INVITE's transaction
    } else {
        format!("z9hG4bK{method}{seq}")
    };
    format!(
        "{method} sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:sipp@192.0.2.10>;tag=a1\r\nTo: {to}\r\n\
         Call-ID: {call_id}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn statuses(out: &[(std::net::SocketAddr, Vec<u8>)]) -> Vec<u16> {
    out.iter().map(|(_, b)| status(b)).collect()
}

fn to_tag(b: &[u8]) -> Vec<u8> {
    Message::parse(b)
        .unwrap()
        .to()
        .unwrap()
        .tag()
        .unwrap()
        .to_vec()
}

/// A Call-ID that the mix answers with `want`.
fn call_id_for(settings: &ResponderSettings, want: u16) -> String {
    (0..10_000)
        .map(|i| format!("mix-{i}"))
        .find(|id| settings.status_for(crate::responder::call_id_hash(id.as_bytes())) == want)
        .unwrap()
}

#[test]
fn invite_is_answered_100_180_200_with_an_sdp_answer_and_forgotten_at_the_ack() {
    // By default an immediate answer goes without 100 Trying (RFC 3261 §17.2.1).
    let mut c = responder(ResponderSettings::default());
    let out = send(&mut c, &invite("c0"), CALLER, 0, T0);
    assert_eq!(statuses(&out), [180, 200]);
    let mut c = responder(ResponderSettings {
        trying: Some(true),
        ..Default::default()
    });
    let out = send(&mut c, &invite("c1"), CALLER, 0, T0);
    assert_eq!(statuses(&out), [100, 180, 200]);
    assert!(out.iter().all(|(dst, _)| *dst == addr(CALLER)));
    let ok = Message::parse(&out[2].1).unwrap();
    assert_eq!(to_tag(&out[1].1), to_tag(&out[2].1), "one dialog");
    assert_eq!(
        ok.header(HeaderName::Contact).unwrap(),
        b"<sip:127.0.0.1:5060>"
    );
    assert_eq!(
        ok.header(HeaderName::RecordRoute).unwrap(),
        b"<sip:192.0.2.77;lr>"
    );
    assert_eq!(
        ok.header(HeaderName::ContentType).unwrap(),
        b"application/sdp"
    );
    let body = std::str::from_utf8(ok.body()).unwrap();
    assert!(body.contains("c=IN IP4 127.0.0.1\r\n"), "{body}");
    assert!(
        body.contains("m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000"),
        "{body}"
    );
    assert_eq!(calls(&c), 1, "the 200 is kept until its ACK");

    let ack = in_dialog("ACK", "c1", &out[2].1, 1);
    assert!(send(&mut c, &ack, CALLER, 0, T0 + 10).is_empty());
    assert_eq!(calls(&c), 0);
    // No more retransmissions of the 200.
    assert!(tick(&mut c, T0 + 600).is_empty());
    let bye = in_dialog("BYE", "c1", &out[2].1, 2);
    assert_eq!(statuses(&send(&mut c, &bye, CALLER, 0, T0 + 20)), [200]);
}

#[test]
fn the_200_is_retransmitted_until_the_ack_and_a_retransmitted_invite_gets_it_again() {
    let mut c = responder(ResponderSettings {
        trying: Some(false),
        ..Default::default()
    });
    let out = send(&mut c, &invite("c2"), CALLER, 0, T0);
    assert_eq!(statuses(&out), [180, 200]);
    let ok = out[1].1.clone();
    // T1, then doubling to T2 (§13.3.1.4).
    assert!(tick(&mut c, T0 + 499).is_empty());
    let mut at = T0;
    for interval in [500, 1000, 2000, 4000, 4000] {
        at += interval;
        let again = tick(&mut c, at);
        assert_eq!(again.len(), 1, "retransmission at +{}", at - T0);
        assert_eq!(again[0].1, ok, "the same 200");
    }
    // A retransmitted INVITE gets the same 200 (and no new call).
    let again = send(&mut c, &invite("c2"), CALLER, 0, at + 1);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, ok);
    assert_eq!(calls(&c), 1);
    // Timer H: without an ACK the call is given up after 64*T1.
    tick(&mut c, T0 + 32_000);
    assert!(tick(&mut c, T0 + 40_000).is_empty());
    assert_eq!(calls(&c), 0);
}

#[test]
fn the_mix_answers_by_call_id_and_a_busy_call_does_not_ring() {
    let settings = ResponderSettings {
        mix: vec![(200, 50), (486, 30), (503, 20)],
        trying: Some(true),
        ..Default::default()
    };
    let mut c = responder(settings.clone());
    for (k, (want, expect)) in [
        (200, vec![100, 180, 200]),
        (486, vec![100, 486]),
        (503, vec![100, 503]),
    ]
    .into_iter()
    .enumerate()
    {
        let t = T0 + 10_000 * k as u64;
        let id = call_id_for(&settings, want);
        let out = send(&mut c, &invite(&id), CALLER, 0, t);
        assert_eq!(statuses(&out), expect, "{id}");
        // The same Call-ID always gets the same answer.
        let mut again = responder(settings.clone());
        let out2 = send(&mut again, &invite(&id), CALLER, 0, t + 5);
        assert_eq!(statuses(&out2), expect);
        // The non-2xx is retransmitted until its ACK too (§17.2.1).
        let last = out.last().unwrap().1.clone();
        assert_eq!(tick(&mut c, t + 500).len(), 1);
        let ack = in_dialog("ACK", &id, &last, 1);
        assert!(send(&mut c, &ack, CALLER, 0, t + 600).is_empty());
        assert!(
            tick(&mut c, t + 2_000).is_empty(),
            "{want}: no retransmission after the ACK"
        );
    }
    assert_eq!(calls(&c), 0);
    // Over many calls the proportions are the mix's.
    let mut counts = [0; 3];
    for i in 0..2_000 {
        let out = send(
            &mut c,
            &invite(&format!("many-{i}")),
            CALLER,
            0,
            T0 + 40_000,
        );
        match out.last().map(|(_, b)| status(b)) {
            Some(200) => counts[0] += 1,
            Some(486) => counts[1] += 1,
            Some(503) => counts[2] += 1,
            s => panic!("{s:?}"),
        }
    }
    assert!((900..1100).contains(&counts[0]), "{counts:?}");
    assert!((500..700).contains(&counts[1]), "{counts:?}");
    assert!((320..480).contains(&counts[2]), "{counts:?}");
}

#[test]
fn a_ringing_call_is_answered_after_the_ring_time_or_cancelled_with_487() {
    let mut c = responder(ResponderSettings {
        ring_ms: 2_000,
        ..Default::default()
    });
    let out = send(&mut c, &invite("r1"), CALLER, 0, T0);
    assert_eq!(statuses(&out), [100, 180]);
    // A retransmitted INVITE rings again, with the same tag.
    let again = send(&mut c, &invite("r1"), CALLER, 0, T0 + 500);
    assert_eq!(statuses(&again), [100, 180]);
    assert_eq!(to_tag(&again[1].1), to_tag(&out[1].1));
    assert!(tick(&mut c, T0 + 1_999).is_empty());
    let answered = tick(&mut c, T0 + 2_000);
    assert_eq!(statuses(&answered), [200]);
    assert_eq!(to_tag(&answered[0].1), to_tag(&out[1].1));
    assert!(Message::parse(&answered[0].1)
        .unwrap()
        .body()
        .starts_with(b"v=0"));

    // CANCEL while ringing: 200 to the CANCEL, 487 to the INVITE, kept until its ACK.
    send(&mut c, &invite("r2"), CALLER, 0, T0);
    let cancel = String::from_utf8(invite("r2"))
        .unwrap()
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let cancel =
        cancel.split("Content-Type").next().unwrap().to_string() + "Content-Length: 0\r\n\r\n";
    let out = send(&mut c, cancel.as_bytes(), CALLER, 0, T0 + 1_000);
    assert_eq!(statuses(&out), [200, 487]);
    let terminated = Message::parse(&out[1].1).unwrap();
    assert_eq!(terminated.cseq().unwrap().method, b"INVITE");
    assert!(
        tick(&mut c, T0 + 2_000)
            .iter()
            .all(|(_, b)| status(b) != 200),
        "no 200 after 487"
    );
    let ack = in_dialog("ACK", "r2", &out[1].1, 1);
    send(&mut c, &ack, CALLER, 0, T0 + 1_010);
    // A CANCEL for nothing: 481; for an answered call: 200 and nothing else.
    let unknown = cancel.replace("r2", "r9");
    assert_eq!(
        statuses(&send(&mut c, unknown.as_bytes(), CALLER, 0, T0)),
        [481]
    );
    let late = cancel.replace("r2", "r1");
    assert_eq!(
        statuses(&send(&mut c, late.as_bytes(), CALLER, 0, T0 + 2_100)),
        [200]
    );
}

#[test]
fn after_the_hold_time_the_responder_hangs_up_through_the_route_set() {
    let mut c = responder(ResponderSettings {
        hold_ms: 3_000,
        ..Default::default()
    });
    let out = send(&mut c, &invite("h1"), CALLER, 0, T0);
    let ok = out[1].1.clone();
    send(&mut c, &in_dialog("ACK", "h1", &ok, 1), CALLER, 0, T0 + 10);
    assert_eq!(calls(&c), 1, "held");
    assert!(tick(&mut c, T0 + 3_009).is_empty());
    let bye = tick(&mut c, T0 + 3_010);
    assert_eq!(bye.len(), 1);
    // To the first Record-Route, which the BYE carries as its Route.
    assert_eq!(bye[0].0, addr("192.0.2.77:5060"));
    let m = Message::parse(&bye[0].1).unwrap();
    assert_eq!(m.method(), Some(crate::sip::Method::Bye));
    assert_eq!(
        m.request_uri_bytes().unwrap(),
        format!("sip:sipp@{CALLER}").as_bytes()
    );
    assert_eq!(m.header(HeaderName::Route).unwrap(), b"<sip:192.0.2.77;lr>");
    assert_eq!(m.from().unwrap().tag().unwrap(), to_tag(&ok).as_slice());
    assert_eq!(m.to().unwrap().tag().unwrap(), b"a1");
    assert_eq!(m.call_id().unwrap(), b"h1");
    // Retransmitted (Timer E) until answered.
    let again = tick(&mut c, T0 + 3_510);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, bye[0].1);
    let via = m.header(HeaderName::Via).unwrap();
    let ok_bye = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: h1\r\nCSeq: 1 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        String::from_utf8_lossy(via),
        String::from_utf8_lossy(m.header(HeaderName::From).unwrap()),
        String::from_utf8_lossy(m.header(HeaderName::To).unwrap()),
    );
    assert!(send(&mut c, ok_bye.as_bytes(), "192.0.2.77:5060", 0, T0 + 3_600).is_empty());
    assert_eq!(calls(&c), 0);
    assert!(tick(&mut c, T0 + 10_000).is_empty());

    // A caller that hangs up first ends the held call.
    let out = send(&mut c, &invite("h2"), CALLER, 0, T0);
    send(
        &mut c,
        &in_dialog("ACK", "h2", &out[1].1, 1),
        CALLER,
        0,
        T0 + 10,
    );
    assert_eq!(
        statuses(&send(
            &mut c,
            &in_dialog("BYE", "h2", &out[1].1, 2),
            CALLER,
            0,
            T0 + 100
        )),
        [200]
    );
    assert_eq!(calls(&c), 0);
    assert!(tick(&mut c, T0 + 5_000).is_empty());
}

#[test]
fn other_methods_get_200_and_unknown_ones_501() {
    let mut c = responder(ResponderSettings::default());
    let req = |method: &str, extra: &str| {
        format!(
            "{method} sip:service@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{method}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:sipp@192.0.2.10>;tag=a1\r\nTo: <sip:service@127.0.0.1>\r\n\
             Call-ID: m-{method}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    };
    for m in ["OPTIONS", "INFO", "MESSAGE", "UPDATE", "PRACK"] {
        assert_eq!(
            statuses(&send(&mut c, req(m, "").as_bytes(), CALLER, 0, T0)),
            [200],
            "{m}"
        );
    }
    let out = send(&mut c, req("SUBSCRIBE", "").as_bytes(), CALLER, 0, T0);
    assert_eq!(statuses(&out), [501]);
    assert!(Message::parse(&out[0].1)
        .unwrap()
        .header(HeaderName::Allow)
        .is_some());
    let out = send(
        &mut c,
        req("OPTIONS", "Require: 100rel\r\n").as_bytes(),
        CALLER,
        0,
        T0,
    );
    assert_eq!(statuses(&out), [420]);
    // REGISTER: the Contacts with their expiry, nothing stored.
    let out = send(
        &mut c,
        req(
            "REGISTER",
            "Contact: <sip:sipp@192.0.2.10:5060>\r\nExpires: 120\r\n",
        )
        .as_bytes(),
        CALLER,
        0,
        T0,
    );
    let ok = Message::parse(&out[0].1).unwrap();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.header(HeaderName::Contact).unwrap(),
        b"<sip:sipp@192.0.2.10:5060>;expires=120"
    );
    assert_eq!(calls(&c), 0);
    // A stray ACK is absorbed; a malformed request gets 400 naming the problem.
    assert!(send(&mut c, req("ACK", "").as_bytes(), CALLER, 0, T0).is_empty());
    let bad = req("INFO", "").replace("CSeq: 1 INFO", "CSeq: x INFO");
    let out = send(&mut c, bad.as_bytes(), CALLER, 0, T0);
    assert_eq!(statuses(&out), [400]);
    assert!(Message::parse(&out[0].1).unwrap().reason().unwrap().len() > "Bad Request".len());
}

#[test]
fn the_drop_probability_loses_that_share_of_requests() {
    let mut c = responder(ResponderSettings {
        drop: 1.0,
        ..Default::default()
    });
    assert!(send(&mut c, &invite("d1"), CALLER, 0, T0).is_empty());
    assert_eq!(
        c.responder().unwrap().calls(),
        0,
        "a lost INVITE leaves nothing"
    );
    let mut c = responder(ResponderSettings {
        drop: 0.25,
        ..Default::default()
    });
    let answered = (0..2_000)
        .filter(|i| !send(&mut c, &invite(&format!("d-{i}")), CALLER, 0, T0).is_empty())
        .count();
    assert!((1_400..1_600).contains(&answered), "{answered}");
}

#[test]
fn with_users_new_calls_and_registrations_are_challenged() {
    use crate::auth::{Authenticator, UserDb};
    let mut db = UserDb::new("localhost");
    db.add_password("sipp", "secret").unwrap();
    let auth = Authenticator::new("localhost", Arc::new(db), [7; 32], 300);
    let mut c = responder_cores(1, ResponderSettings::default(), Some(auth))
        .pop()
        .unwrap();
    let out = send(&mut c, &invite("a1"), CALLER, 0, T0);
    assert_eq!(statuses(&out), [401]);
    let ch = Message::parse(&out[0].1).unwrap();
    let params =
        crate::auth::client::first_supported_challenge(&ch, HeaderName::WwwAuthenticate).unwrap();
    let creds = crate::auth::client_response(
        &params,
        "sipp",
        "secret",
        b"INVITE",
        b"sip:service@127.0.0.1:5060",
        1,
        "0a4f113b",
    )
    .unwrap();
    let retry = String::from_utf8(invite("a1")).unwrap().replace(
        "CSeq: 1 INVITE",
        &format!("CSeq: 2 INVITE\r\nAuthorization: {creds}"),
    );
    assert_eq!(
        statuses(&send(&mut c, retry.as_bytes(), CALLER, 0, T0 + 5)),
        [180, 200]
    );
    // OPTIONS is not challenged.
    let opt = String::from_utf8(invite("o1"))
        .unwrap()
        .replace("INVITE", "OPTIONS");
    assert_eq!(
        statuses(&send(&mut c, opt.as_bytes(), CALLER, 0, T0)),
        [200]
    );
}

#[test]
fn in_dialog_requests_and_responses_go_to_the_shard_that_answered() {
    let mut cores = responder_cores(2, ResponderSettings::default(), None);
    let out = send(&mut cores[1], &invite("s1"), CALLER, 0, T0);
    let ok = out[1].1.clone();
    assert!(to_tag(&ok).starts_with(b"s1."));
    let ack = in_dialog("ACK", "s1", &ok, 1);
    let mut o = Outbox::new();
    assert_eq!(
        cores[0].handle(&ack, addr(CALLER), 0, T0, false, &mut o),
        Disposition::HandOff(1)
    );
    // A new call stays where it arrived.
    assert_eq!(
        cores[0].handle(&invite("s2"), addr(CALLER), 0, T0, false, &mut o),
        Disposition::Done
    );
    assert_eq!(drain(&o).len(), 2);
}
