//! Server transactions: RFC 3261 §17.2.1 / RFC 6026 Figure 7 and RFC 3261 §17.2.2 Figure 8.

use super::super::server::RespondError;
use super::super::{AckOutcome, Action, ServerInviteTxn, ServerNonInviteTxn, ServerState};
use super::super::{Timer, TxnConfig};
use super::{arms, bytes, sends};

const R180: &[u8] = b"SIP/2.0 180 Ringing\r\n\r\n";
const R486: &[u8] = b"SIP/2.0 486 Busy Here\r\n\r\n";
const R200: &[u8] = b"SIP/2.0 200 OK\r\n\r\n";
const R100: &[u8] = b"SIP/2.0 100 Trying\r\n\r\n";

fn cfg() -> TxnConfig {
    TxnConfig::default()
}

#[test]
fn invite_proceeding_resends_the_last_provisional() {
    let mut t = ServerInviteTxn::new(false);
    let mut out = Vec::new();
    t.on_request(0, &mut out);
    assert!(out.is_empty(), "nothing sent yet: nothing to resend");
    t.send_response(&cfg(), 180, bytes(R180), 10, &mut out)
        .unwrap();
    assert_eq!(out, vec![Action::Send(bytes(R180))]);
    assert_eq!(t.state(), ServerState::Proceeding);
    out.clear();
    t.on_request(20, &mut out);
    assert_eq!(out, vec![Action::Send(bytes(R180))]);
}

#[test]
fn invite_non2xx_timer_g_doubles_to_t2_and_timer_h_times_out() {
    let c = cfg();
    let mut t = ServerInviteTxn::new(false);
    let mut out = Vec::new();
    t.send_response(&c, 486, bytes(R486), 0, &mut out).unwrap();
    assert_eq!(t.state(), ServerState::Completed);
    assert_eq!(out[0], Action::Send(bytes(R486)));
    assert_eq!(arms(&out), vec![(Timer::G, 500), (Timer::H, 32_000)]);
    // Early firing: ignored.
    out.clear();
    t.on_timer(&c, Timer::G, 499, &mut out);
    assert!(out.is_empty());
    // 500, 1000, 2000, 4000, then capped at T2 = 4000.
    let mut at = 500;
    for next in [1500, 3500, 7500, 11_500, 15_500] {
        out.clear();
        t.on_timer(&c, Timer::G, at, &mut out);
        assert_eq!(
            out,
            vec![Action::Send(bytes(R486)), Action::Arm(Timer::G, next)]
        );
        at = next;
    }
    // A retransmitted INVITE gets the final response again.
    out.clear();
    t.on_request(16_000, &mut out);
    assert_eq!(out, vec![Action::Send(bytes(R486))]);
    // The TU cannot send another response.
    assert_eq!(
        t.send_response(&c, 200, bytes(R200), 16_000, &mut out),
        Err(RespondError::WrongState)
    );
    out.clear();
    t.on_timer(&c, Timer::H, 32_000, &mut out);
    assert_eq!(out, vec![Action::Timeout, Action::Terminated]);
    assert_eq!(t.state(), ServerState::Terminated);
}

#[test]
fn invite_ack_confirms_and_timer_i_terminates() {
    let c = cfg();
    let mut t = ServerInviteTxn::new(false);
    let mut out = Vec::new();
    t.send_response(&c, 486, bytes(R486), 0, &mut out).unwrap();
    out.clear();
    assert_eq!(t.on_ack(&c, 100, &mut out), AckOutcome::Absorbed);
    assert_eq!(
        out,
        vec![
            Action::Disarm(Timer::G),
            Action::Disarm(Timer::H),
            Action::Arm(Timer::I, 5100)
        ]
    );
    assert_eq!(t.state(), ServerState::Confirmed);
    assert!(
        t.last_response().is_none(),
        "Confirmed never re-sends: nothing kept"
    );
    // Retransmitted ACKs and INVITEs are absorbed silently; old G and H firings are stale.
    out.clear();
    assert_eq!(t.on_ack(&c, 200, &mut out), AckOutcome::Absorbed);
    t.on_request(300, &mut out);
    t.on_timer(&c, Timer::G, 500, &mut out);
    t.on_timer(&c, Timer::H, 32_000, &mut out);
    assert!(out.is_empty());
    t.on_timer(&c, Timer::I, 5099, &mut out);
    assert!(out.is_empty());
    t.on_timer(&c, Timer::I, 5100, &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn invite_2xx_accepted_state_timer_l() {
    let c = cfg();
    let mut t = ServerInviteTxn::new(false);
    let mut out = Vec::new();
    t.send_response(&c, 180, bytes(R180), 0, &mut out).unwrap();
    out.clear();
    t.send_response(&c, 200, bytes(R200), 1000, &mut out)
        .unwrap();
    assert_eq!(
        out,
        vec![Action::Send(bytes(R200)), Action::Arm(Timer::L, 33_000)]
    );
    assert_eq!(t.state(), ServerState::Accepted);
    assert!(
        t.last_response().is_none(),
        "Accepted never re-sends: the 2xx is not kept"
    );
    // RFC 6026 §8.6: INVITE retransmissions are absorbed, not answered by the transaction.
    out.clear();
    t.on_request(1500, &mut out);
    assert!(out.is_empty());
    // §8.5: 2xx retransmissions come from the TU and are sent.
    t.send_response(&c, 200, bytes(R200), 1500, &mut out)
        .unwrap();
    assert_eq!(out, vec![Action::Send(bytes(R200))]);
    assert_eq!(
        t.send_response(&c, 486, bytes(R486), 1600, &mut out),
        Err(RespondError::WrongState)
    );
    // §8.7: ACKs go to the TU.
    out.clear();
    assert_eq!(t.on_ack(&c, 2000, &mut out), AckOutcome::PassToTu);
    assert!(out.is_empty());
    assert_eq!(t.state(), ServerState::Accepted);
    t.on_timer(&c, Timer::L, 33_000, &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn invite_reliable_has_no_timer_g_and_zero_timer_i() {
    let c = cfg();
    let mut t = ServerInviteTxn::new(true);
    let mut out = Vec::new();
    t.send_response(&c, 486, bytes(R486), 0, &mut out).unwrap();
    assert_eq!(arms(&out), vec![(Timer::H, 32_000)]);
    out.clear();
    assert_eq!(t.on_ack(&c, 10, &mut out), AckOutcome::Absorbed);
    assert_eq!(out, vec![Action::Disarm(Timer::H), Action::Terminated]);
    assert_eq!(t.state(), ServerState::Terminated);
}

#[test]
fn invite_ack_before_final_is_ignored_and_errors() {
    let c = cfg();
    let mut t = ServerInviteTxn::new(false);
    let mut out = Vec::new();
    assert_eq!(t.on_ack(&c, 0, &mut out), AckOutcome::Ignored);
    assert_eq!(
        t.send_response(&c, 99, bytes(R100), 0, &mut out),
        Err(RespondError::BadStatus)
    );
    assert!(out.is_empty());
    t.on_transport_error(&mut out);
    assert_eq!(out, vec![Action::TransportError, Action::Terminated]);
}

#[test]
fn non_invite_trying_proceeding_completed_timer_j() {
    let c = cfg();
    let mut t = ServerNonInviteTxn::new(false);
    let mut out = Vec::new();
    assert_eq!(t.state(), ServerState::Trying);
    t.on_request(0, &mut out);
    assert!(out.is_empty(), "Trying absorbs retransmissions silently");
    t.send_response(&c, 100, bytes(R100), 100, &mut out)
        .unwrap();
    assert_eq!(out, vec![Action::Send(bytes(R100))]);
    assert_eq!(t.state(), ServerState::Proceeding);
    out.clear();
    t.on_request(500, &mut out);
    assert_eq!(out, vec![Action::Send(bytes(R100))]);
    out.clear();
    t.send_response(&c, 200, bytes(R200), 1000, &mut out)
        .unwrap();
    assert_eq!(
        out,
        vec![Action::Send(bytes(R200)), Action::Arm(Timer::J, 33_000)]
    );
    assert_eq!(t.state(), ServerState::Completed);
    out.clear();
    t.on_request(1500, &mut out);
    assert_eq!(out, vec![Action::Send(bytes(R200))]);
    assert_eq!(
        t.send_response(&c, 500, bytes(R486), 1600, &mut out),
        Err(RespondError::WrongState)
    );
    out.clear();
    t.on_timer(Timer::J, 32_999, &mut out);
    assert!(out.is_empty());
    t.on_timer(Timer::J, 33_000, &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn non_invite_final_from_trying_and_reliable_zero_timer_j() {
    let c = cfg();
    let mut t = ServerNonInviteTxn::new(false);
    let mut out = Vec::new();
    t.send_response(&c, 404, bytes(R486), 0, &mut out).unwrap();
    assert_eq!(t.state(), ServerState::Completed);
    assert_eq!(sends(&out), 1);
    let mut t = ServerNonInviteTxn::new(true);
    out.clear();
    t.send_response(&c, 200, bytes(R200), 0, &mut out).unwrap();
    assert_eq!(out, vec![Action::Send(bytes(R200)), Action::Terminated]);
    assert_eq!(t.state(), ServerState::Terminated);
    let mut t = ServerNonInviteTxn::new(false);
    out.clear();
    t.on_transport_error(&mut out);
    assert_eq!(out, vec![Action::TransportError, Action::Terminated]);
}
