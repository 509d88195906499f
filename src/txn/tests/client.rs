//! Client transactions: RFC 3261 §17.1.1 / RFC 6026 Figure 5, §17.1.1.3 (ACK), and RFC 3261
//! §17.1.2 Figure 6.

use super::super::{build_ack, Action, ClientEvent, ClientInviteTxn, ClientNonInviteTxn};
use super::super::{ClientState, Timer, TxnConfig};
use super::{arms, bytes, response, sends};
use crate::sip::Message;

/// An INVITE as a proxy forwards it: our Via on top (sharing a line with the previous hop's),
/// Route headers, a body.
pub(super) const PROXIED_INVITE: &[u8] = b"INVITE sip:bob@192.0.2.4 SIP/2.0\r\n\
Via: SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKp1, SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n\
Via: SIP/2.0/UDP first.example.com;branch=z9hG4bKx\r\n\
Route: <sip:r1.example.com;lr>\r\n\
Max-Forwards: 69\r\n\
Route: <sip:r2.example.com;lr>, <sip:r3.example.com;lr>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

pub(super) const OUR_VIA: &str = "SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKp1";

const EXPECTED_ACK: &[u8] = b"ACK sip:bob@192.0.2.4 SIP/2.0\r\n\
Via: SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKp1\r\n\
Route: <sip:r1.example.com;lr>\r\n\
Route: <sip:r2.example.com;lr>, <sip:r3.example.com;lr>\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 ACK\r\n\
Content-Length: 0\r\n\r\n";

fn cfg() -> TxnConfig {
    TxnConfig::default()
}

fn resp(status: u16) -> Vec<u8> {
    response(status, OUR_VIA, "INVITE", Some("a6c85cf"))
}

fn new_invite(reliable: bool, out: &mut Vec<Action>) -> ClientInviteTxn {
    ClientInviteTxn::new(&cfg(), bytes(PROXIED_INVITE), reliable, 0, out)
}

#[test]
fn ack_for_non2xx_follows_17_1_1_3() {
    let req = Message::parse(PROXIED_INVITE).unwrap();
    let raw = resp(486);
    let res = Message::parse(&raw).unwrap();
    let mut ack = Vec::new();
    build_ack(&req, &res, &mut ack);
    assert_eq!(
        String::from_utf8(ack.clone()).unwrap(),
        String::from_utf8(EXPECTED_ACK.to_vec()).unwrap()
    );
    let parsed = Message::parse(&ack).unwrap();
    parsed.validate().unwrap();
    assert_eq!(parsed.vias().count(), 1);
}

#[test]
fn invite_calling_timer_a_doubles_until_timer_b() {
    let mut out = Vec::new();
    let mut t = new_invite(false, &mut out);
    assert_eq!(t.state(), ClientState::Calling);
    assert_eq!(out[0], Action::Send(bytes(PROXIED_INVITE)));
    assert_eq!(arms(&out), vec![(Timer::A, 500), (Timer::B, 32_000)]);
    // A: 500, 1000, 2000, 4000, 8000, 16000 (no cap for INVITE).
    let mut at = 500;
    for next in [1500, 3500, 7500, 15_500, 31_500, 63_500] {
        out.clear();
        t.on_timer(Timer::A, at, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Send(bytes(PROXIED_INVITE)),
                Action::Arm(Timer::A, next)
            ]
        );
        at = next;
    }
    out.clear();
    t.on_timer(Timer::B, 31_999, &mut out);
    assert!(out.is_empty());
    t.on_timer(Timer::B, 32_000, &mut out);
    assert_eq!(out, vec![Action::Timeout, Action::Terminated]);
    assert_eq!(t.state(), ClientState::Terminated);
}

#[test]
fn invite_provisional_stops_retransmissions_and_timer_b() {
    let c = cfg();
    let mut out = Vec::new();
    let mut t = new_invite(false, &mut out);
    out.clear();
    let r = resp(180);
    let ev = t.on_response(&c, &Message::parse(&r).unwrap(), 200, &mut out);
    assert_eq!(ev, ClientEvent::Provisional { status: 180 });
    assert_eq!(
        out,
        vec![Action::Disarm(Timer::A), Action::Disarm(Timer::B)]
    );
    assert_eq!(t.state(), ClientState::Proceeding);
    out.clear();
    t.on_timer(Timer::A, 500, &mut out);
    t.on_timer(Timer::B, 32_000, &mut out);
    assert!(out.is_empty(), "A and B are stale in Proceeding");
    let ev = t.on_response(&c, &Message::parse(&r).unwrap(), 300, &mut out);
    assert_eq!(ev, ClientEvent::Provisional { status: 180 });
}

#[test]
fn invite_non2xx_sends_ack_absorbs_retransmissions_and_waits_timer_d() {
    let c = cfg();
    let mut out = Vec::new();
    let mut t = new_invite(false, &mut out);
    out.clear();
    let r = resp(486);
    let ev = t.on_response(&c, &Message::parse(&r).unwrap(), 100, &mut out);
    assert_eq!(ev, ClientEvent::Final { status: 486 });
    assert_eq!(
        out,
        vec![
            Action::Disarm(Timer::A),
            Action::Disarm(Timer::B),
            Action::Send(bytes(EXPECTED_ACK)),
            Action::Arm(Timer::D, 32_100)
        ]
    );
    assert_eq!(t.state(), ClientState::Completed);
    assert!(t.request().is_empty(), "only the ACK is kept");
    // A retransmitted final response: absorbed, the same ACK resent.
    out.clear();
    let ev = t.on_response(&c, &Message::parse(&r).unwrap(), 600, &mut out);
    assert_eq!(ev, ClientEvent::Absorbed);
    assert_eq!(out, vec![Action::Send(bytes(EXPECTED_ACK))]);
    out.clear();
    t.on_timer(Timer::D, 32_099, &mut out);
    assert!(out.is_empty());
    t.on_timer(Timer::D, 32_100, &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn invite_2xx_accepted_passes_retransmissions_up_until_timer_m() {
    let c = cfg();
    let mut out = Vec::new();
    let mut t = new_invite(false, &mut out);
    out.clear();
    let ok = resp(200);
    let ev = t.on_response(&c, &Message::parse(&ok).unwrap(), 1000, &mut out);
    assert_eq!(ev, ClientEvent::Final { status: 200 });
    assert_eq!(arms(&out), vec![(Timer::M, 33_000)]);
    assert_eq!(
        sends(&out),
        0,
        "the TU acknowledges a 2xx, not the transaction"
    );
    assert_eq!(t.state(), ClientState::Accepted);
    assert!(
        t.request().is_empty(),
        "Accepted never re-sends: the INVITE is not kept"
    );
    out.clear();
    let ev = t.on_response(&c, &Message::parse(&ok).unwrap(), 2000, &mut out);
    assert_eq!(ev, ClientEvent::Final { status: 200 });
    let ev = t.on_response(&c, &Message::parse(&resp(486)).unwrap(), 2100, &mut out);
    assert_eq!(ev, ClientEvent::Absorbed);
    let ev = t.on_response(&c, &Message::parse(&resp(180)).unwrap(), 2200, &mut out);
    assert_eq!(ev, ClientEvent::Absorbed);
    assert!(out.is_empty());
    t.on_timer(Timer::M, 33_000, &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn invite_reliable_has_no_timer_a_and_zero_timer_d() {
    let c = cfg();
    let mut out = Vec::new();
    let mut t = new_invite(true, &mut out);
    assert_eq!(arms(&out), vec![(Timer::B, 32_000)]);
    out.clear();
    let ev = t.on_response(&c, &Message::parse(&resp(603)).unwrap(), 50, &mut out);
    assert_eq!(ev, ClientEvent::Final { status: 603 });
    assert_eq!(
        out,
        vec![
            Action::Disarm(Timer::B),
            Action::Send(t.ack().unwrap().clone()),
            Action::Terminated
        ]
    );
    out.clear();
    t.on_transport_error(&mut out);
    assert!(out.is_empty(), "nothing after Terminated");
}

#[test]
fn non_invite_timer_e_doubles_capped_at_t2_until_timer_f() {
    let c = cfg();
    let req = super::request("OPTIONS", OUR_VIA, None);
    let mut out = Vec::new();
    let mut t = ClientNonInviteTxn::new(&c, bytes(&req), false, 0, &mut out);
    assert_eq!(t.state(), ClientState::Trying);
    assert_eq!(out[0], Action::Send(bytes(&req)));
    assert_eq!(arms(&out), vec![(Timer::E, 500), (Timer::F, 32_000)]);
    // 500, 1000, 2000, 4000, 4000, ...
    let mut at = 500;
    for next in [1500, 3500, 7500, 11_500, 15_500, 19_500] {
        out.clear();
        t.on_timer(&c, Timer::E, at, &mut out);
        assert_eq!(
            out,
            vec![Action::Send(bytes(&req)), Action::Arm(Timer::E, next)]
        );
        at = next;
    }
    out.clear();
    t.on_timer(&c, Timer::F, 32_000, &mut out);
    assert_eq!(out, vec![Action::Timeout, Action::Terminated]);
}

#[test]
fn non_invite_proceeding_retransmits_at_t2_then_completed_timer_k() {
    let c = cfg();
    let req = super::request("BYE", OUR_VIA, Some("x"));
    let mut out = Vec::new();
    let mut t = ClientNonInviteTxn::new(&c, bytes(&req), false, 0, &mut out);
    out.clear();
    t.on_timer(&c, Timer::E, 500, &mut out);
    assert_eq!(arms(&out), vec![(Timer::E, 1500)]);
    out.clear();
    assert_eq!(
        t.on_response(&c, 100, 600, &mut out),
        ClientEvent::Provisional { status: 100 }
    );
    assert_eq!(t.state(), ClientState::Proceeding);
    assert!(out.is_empty(), "E keeps running in Proceeding");
    // In Proceeding, E fires again and is reset to T2 (not 2000).
    t.on_timer(&c, Timer::E, 1500, &mut out);
    assert_eq!(
        out,
        vec![Action::Send(bytes(&req)), Action::Arm(Timer::E, 5500)]
    );
    out.clear();
    assert_eq!(
        t.on_response(&c, 200, 2000, &mut out),
        ClientEvent::Final { status: 200 }
    );
    assert_eq!(
        out,
        vec![
            Action::Disarm(Timer::E),
            Action::Disarm(Timer::F),
            Action::Arm(Timer::K, 7000)
        ]
    );
    assert_eq!(t.state(), ClientState::Completed);
    assert!(
        t.request().is_empty(),
        "Completed never re-sends the request"
    );
    out.clear();
    assert_eq!(
        t.on_response(&c, 200, 2500, &mut out),
        ClientEvent::Absorbed
    );
    t.on_timer(&c, Timer::E, 5500, &mut out);
    t.on_timer(&c, Timer::F, 32_000, &mut out);
    assert!(out.is_empty(), "stale E and F");
    t.on_timer(&c, Timer::K, 7000, &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn non_invite_reliable_has_no_timer_e_and_zero_timer_k() {
    let c = cfg();
    let req = super::request("OPTIONS", OUR_VIA, None);
    let mut out = Vec::new();
    let mut t = ClientNonInviteTxn::new(&c, bytes(&req), true, 0, &mut out);
    assert_eq!(arms(&out), vec![(Timer::F, 32_000)]);
    out.clear();
    assert_eq!(
        t.on_response(&c, 404, 10, &mut out),
        ClientEvent::Final { status: 404 }
    );
    assert_eq!(out, vec![Action::Disarm(Timer::F), Action::Terminated]);
    let mut t = ClientNonInviteTxn::new(&c, bytes(&req), false, 0, &mut out);
    out.clear();
    t.on_transport_error(&mut out);
    assert_eq!(out, vec![Action::TransportError, Action::Terminated]);
}
