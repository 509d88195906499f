//! Server transactions: INVITE (RFC 3261 §17.2.1 as changed by RFC 6026 §7.1 and §8.5-8.7,
//! Figure 7 of RFC 6026) and non-INVITE (RFC 3261 §17.2.2, Figure 8).
//!
//! The TU sends responses through [`ServerInviteTxn::send_response`]; retransmitted requests
//! go to `on_request`, which resends the last response; timers go to `on_timer`. A 2xx to an
//! INVITE moves to Accepted (RFC 6026): the transaction stays to absorb INVITE
//! retransmissions for Timer L while retransmissions of the 2xx come from the TU and ACKs are
//! passed to it. No automatic `100 Trying` is sent: the TU sends it (§17.2.1 lets the TU do
//! so within 200 ms).

use super::timers::{Timer, TimerSlots, TxnConfig};
use super::{Action, Bytes};

/// States of both server machines (non-INVITE uses Trying, Proceeding, Completed,
/// Terminated; INVITE uses Proceeding, Completed, Confirmed, Accepted, Terminated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
    Terminated,
}

/// Why the machine refused a response from the TU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespondError {
    /// Not a status code (100-699).
    BadStatus,
    /// The state takes no response from the TU (a final response was already sent, or only a
    /// 2xx retransmission is allowed in Accepted).
    WrongState,
}

/// What an ACK did to an INVITE server transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The ACK of our non-2xx final response: consumed (Completed to Confirmed, or a
    /// retransmitted ACK in Confirmed).
    Absorbed,
    /// An ACK in Accepted: the TU gets it (RFC 6026 §8.7; a proxy forwards it).
    PassToTu,
    /// An ACK before any final response: ignored.
    Ignored,
}

fn arm(timers: &mut TimerSlots, out: &mut Vec<Action>, t: Timer, at: u64) {
    timers.set(t, at);
    out.push(Action::Arm(t, at));
}

fn disarm(timers: &mut TimerSlots, out: &mut Vec<Action>, t: Timer) {
    if timers.get(t).is_some() {
        timers.clear(t);
        out.push(Action::Disarm(t));
    }
}

/// An INVITE server transaction (RFC 6026 Figure 7).
#[derive(Debug, Clone)]
pub struct ServerInviteTxn {
    state: ServerState,
    reliable: bool,
    /// Current Timer G interval.
    interval_ms: u32,
    timers: TimerSlots,
    /// The last response sent, for retransmission.
    last: Option<Bytes>,
}

impl ServerInviteTxn {
    /// A new transaction in Proceeding. Arms nothing.
    pub fn new(reliable: bool) -> Self {
        ServerInviteTxn {
            state: ServerState::Proceeding,
            reliable,
            interval_ms: 0,
            timers: TimerSlots::default(),
            last: None,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The last response sent.
    pub fn last_response(&self) -> Option<&Bytes> {
        self.last.as_ref()
    }

    /// A response from the TU (§17.2.1; RFC 6026 §7.1, §8.5).
    pub fn send_response(
        &mut self,
        cfg: &TxnConfig,
        status: u16,
        bytes: Bytes,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), RespondError> {
        if !(100..=699).contains(&status) {
            return Err(RespondError::BadStatus);
        }
        match self.state {
            ServerState::Proceeding => {
                if (200..300).contains(&status) {
                    // Accepted never re-sends it (retransmitted INVITEs are absorbed; 2xx
                    // retransmissions come from the TU): do not keep it for 64*T1.
                    out.push(Action::Send(bytes));
                    self.last = None;
                } else {
                    out.push(Action::Send(bytes.clone()));
                    self.last = Some(bytes);
                }
                if (200..300).contains(&status) {
                    // RFC 6026 §7.1: Accepted; Timer L absorbs INVITE retransmissions.
                    self.state = ServerState::Accepted;
                    let l = now_ms + cfg.duration(Timer::L, self.reliable);
                    arm(&mut self.timers, out, Timer::L, l);
                } else if status >= 300 {
                    self.state = ServerState::Completed;
                    if !self.reliable {
                        self.interval_ms = cfg.t1_ms as u32;
                        let g = now_ms + cfg.t1_ms;
                        arm(&mut self.timers, out, Timer::G, g);
                    }
                    let h = now_ms + cfg.duration(Timer::H, self.reliable);
                    arm(&mut self.timers, out, Timer::H, h);
                }
                Ok(())
            }
            // RFC 6026 §8.5: 2xx retransmissions from the TU go out; nothing else does.
            ServerState::Accepted if (200..300).contains(&status) => {
                out.push(Action::Send(bytes));
                Ok(())
            }
            _ => Err(RespondError::WrongState),
        }
    }

    /// A retransmission of the INVITE (§17.2.1): resend the last provisional in Proceeding
    /// and the final response in Completed; absorb it otherwise (RFC 6026 §8.6 for Accepted).
    pub fn on_request(&mut self, _now_ms: u64, out: &mut Vec<Action>) {
        if matches!(self.state, ServerState::Proceeding | ServerState::Completed) {
            if let Some(last) = &self.last {
                out.push(Action::Send(last.clone()));
            }
        }
    }

    /// An ACK matched this transaction (§17.2.1; RFC 6026 §8.7).
    pub fn on_ack(&mut self, cfg: &TxnConfig, now_ms: u64, out: &mut Vec<Action>) -> AckOutcome {
        match self.state {
            ServerState::Completed => {
                disarm(&mut self.timers, out, Timer::G);
                disarm(&mut self.timers, out, Timer::H);
                self.state = ServerState::Confirmed;
                // Confirmed absorbs retransmissions without answering them.
                self.last = None;
                let i = cfg.duration(Timer::I, self.reliable);
                if i == 0 {
                    self.terminate(out);
                } else {
                    arm(&mut self.timers, out, Timer::I, now_ms + i);
                }
                AckOutcome::Absorbed
            }
            ServerState::Confirmed => AckOutcome::Absorbed,
            ServerState::Accepted => AckOutcome::PassToTu,
            _ => AckOutcome::Ignored,
        }
    }

    /// A timer fired. Stale firings (disarmed or re-armed since) do nothing.
    pub fn on_timer(&mut self, cfg: &TxnConfig, timer: Timer, now_ms: u64, out: &mut Vec<Action>) {
        if !self.timers.take_due(timer, now_ms) {
            return;
        }
        match (self.state, timer) {
            (ServerState::Completed, Timer::G) => {
                if let Some(last) = &self.last {
                    out.push(Action::Send(last.clone()));
                }
                self.interval_ms = (self.interval_ms * 2).min(cfg.t2_ms as u32);
                let g = now_ms + self.interval_ms as u64;
                arm(&mut self.timers, out, Timer::G, g);
            }
            (ServerState::Completed, Timer::H) => {
                out.push(Action::Timeout);
                self.terminate(out);
            }
            (ServerState::Confirmed, Timer::I) | (ServerState::Accepted, Timer::L) => {
                self.terminate(out)
            }
            _ => {}
        }
    }

    /// The transport could not send a response (§17.2.4).
    pub fn on_transport_error(&mut self, out: &mut Vec<Action>) {
        if self.state != ServerState::Terminated {
            out.push(Action::TransportError);
            self.terminate(out);
        }
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = ServerState::Terminated;
        self.timers = TimerSlots::default();
        out.push(Action::Terminated);
    }
}

/// A non-INVITE server transaction (RFC 3261 Figure 8).
#[derive(Debug, Clone)]
pub struct ServerNonInviteTxn {
    state: ServerState,
    reliable: bool,
    timers: TimerSlots,
    last: Option<Bytes>,
}

impl ServerNonInviteTxn {
    /// A new transaction in Trying. Arms nothing.
    pub fn new(reliable: bool) -> Self {
        ServerNonInviteTxn {
            state: ServerState::Trying,
            reliable,
            timers: TimerSlots::default(),
            last: None,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn last_response(&self) -> Option<&Bytes> {
        self.last.as_ref()
    }

    /// A response from the TU (§17.2.2).
    pub fn send_response(
        &mut self,
        cfg: &TxnConfig,
        status: u16,
        bytes: Bytes,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), RespondError> {
        if !(100..=699).contains(&status) {
            return Err(RespondError::BadStatus);
        }
        if !matches!(self.state, ServerState::Trying | ServerState::Proceeding) {
            return Err(RespondError::WrongState);
        }
        out.push(Action::Send(bytes.clone()));
        self.last = Some(bytes);
        if status < 200 {
            self.state = ServerState::Proceeding;
        } else {
            self.state = ServerState::Completed;
            let j = cfg.duration(Timer::J, self.reliable);
            if j == 0 {
                self.terminate(out);
            } else {
                arm(&mut self.timers, out, Timer::J, now_ms + j);
            }
        }
        Ok(())
    }

    /// A retransmission of the request: absorbed in Trying, answered with the last response
    /// in Proceeding and Completed.
    pub fn on_request(&mut self, _now_ms: u64, out: &mut Vec<Action>) {
        if matches!(self.state, ServerState::Proceeding | ServerState::Completed) {
            if let Some(last) = &self.last {
                out.push(Action::Send(last.clone()));
            }
        }
    }

    /// A timer fired (only Timer J exists here).
    pub fn on_timer(&mut self, timer: Timer, now_ms: u64, out: &mut Vec<Action>) {
        if self.timers.take_due(timer, now_ms)
            && self.state == ServerState::Completed
            && timer == Timer::J
        {
            self.terminate(out);
        }
    }

    /// The transport could not send a response (§17.2.4).
    pub fn on_transport_error(&mut self, out: &mut Vec<Action>) {
        if self.state != ServerState::Terminated {
            out.push(Action::TransportError);
            self.terminate(out);
        }
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = ServerState::Terminated;
        self.timers = TimerSlots::default();
        out.push(Action::Terminated);
    }
}
