//! Client transactions: INVITE (RFC 3261 §17.1.1 as changed by RFC 6026 §7.2 and §8.4,
//! Figure 5 of RFC 6026) and non-INVITE (RFC 3261 §17.1.2, Figure 6), with the ACK of a
//! non-2xx final response (§17.1.1.3).
//!
//! A transaction is created with the request bytes the TU built (its top Via carries the
//! branch of the [`super::ClientKey`]) and sends them at once. Responses go to `on_response`,
//! which says what the TU gets ([`ClientEvent`]). A 2xx to an INVITE moves to Accepted (RFC
//! 6026): retransmitted 2xx are still passed up, since a proxy forwards each one, until
//! Timer M ends the transaction.

use super::timers::{Timer, TimerSlots, TxnConfig};
use super::{Action, Bytes};
use crate::sip::header_name::HeaderName;
use crate::sip::scan::CommaSplit;
use crate::sip::write::{finish, header};
use crate::sip::Message;

/// States of both client machines (non-INVITE uses Trying, Proceeding, Completed,
/// Terminated; INVITE uses Calling, Proceeding, Completed, Accepted, Terminated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Accepted,
    Terminated,
}

/// What a response means for the TU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    /// A provisional response to pass up.
    Provisional { status: u16 },
    /// A final response to pass up (for INVITE, every 2xx including retransmissions in
    /// Accepted, and the first non-2xx).
    Final { status: u16 },
    /// A retransmission or late response the transaction absorbed; the TU ignores it.
    Absorbed,
}

/// Writes the ACK of a non-2xx final response to an INVITE (§17.1.1.3): the request's
/// Request-URI, Call-ID, From and CSeq number with method ACK, the To of the response (with
/// its tag), only the top Via of the request, the request's Route headers, `Max-Forwards: 70`
/// and no body.
pub fn build_ack(request: &Message<'_>, response: &Message<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"ACK ");
    out.extend_from_slice(request.request_uri_bytes().unwrap_or_default());
    out.extend_from_slice(b" SIP/2.0\r\n");
    if let Some(line) = request.header(HeaderName::Via) {
        let top = CommaSplit::new(line).next().map_or(line, |(_, v)| v);
        header(out, "Via", top);
    }
    for route in request.header_all(HeaderName::Route) {
        header(out, "Route", route);
    }
    header(out, "Max-Forwards", b"70");
    for (name, value) in [
        ("From", request.header(HeaderName::From)),
        ("To", response.header(HeaderName::To)),
        ("Call-ID", request.header(HeaderName::CallId)),
    ] {
        if let Some(v) = value {
            header(out, name, v);
        }
    }
    let seq = request.cseq().map_or(0, |c| c.seq);
    out.extend_from_slice(b"CSeq: ");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(b" ACK\r\n");
    finish(out, b"");
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

/// An INVITE client transaction (RFC 6026 Figure 5).
#[derive(Debug, Clone)]
pub struct ClientInviteTxn {
    state: ClientState,
    reliable: bool,
    /// Current Timer A interval.
    interval_ms: u32,
    timers: TimerSlots,
    request: Bytes,
    /// The ACK sent for a non-2xx final response, resent on its retransmissions.
    ack: Option<Bytes>,
}

impl ClientInviteTxn {
    /// Starts the transaction in Calling: sends the request, arms Timer A (unreliable
    /// transports) and Timer B.
    pub fn new(
        cfg: &TxnConfig,
        request: Bytes,
        reliable: bool,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Self {
        let mut t = ClientInviteTxn {
            state: ClientState::Calling,
            reliable,
            interval_ms: cfg.t1_ms as u32,
            timers: TimerSlots::default(),
            request,
            ack: None,
        };
        out.push(Action::Send(t.request.clone()));
        if !reliable {
            arm(&mut t.timers, out, Timer::A, now_ms + cfg.t1_ms);
        }
        arm(&mut t.timers, out, Timer::B, now_ms + cfg.t1x64());
        t
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The request as sent.
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// The ACK sent for a non-2xx final response.
    pub fn ack(&self) -> Option<&Bytes> {
        self.ack.as_ref()
    }

    /// A response matched this transaction (§17.1.1.2; RFC 6026 §7.2, §8.4).
    pub fn on_response(
        &mut self,
        cfg: &TxnConfig,
        response: &Message<'_>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> ClientEvent {
        let Some(status) = response.status() else {
            return ClientEvent::Absorbed;
        };
        match self.state {
            ClientState::Calling | ClientState::Proceeding => {
                disarm(&mut self.timers, out, Timer::A);
                disarm(&mut self.timers, out, Timer::B);
                if status < 200 {
                    self.state = ClientState::Proceeding;
                    return ClientEvent::Provisional { status };
                }
                if status < 300 {
                    // Accepted never re-sends the INVITE.
                    self.request = super::empty_bytes();
                    self.state = ClientState::Accepted;
                    let m = now_ms + cfg.duration(Timer::M, self.reliable);
                    arm(&mut self.timers, out, Timer::M, m);
                    return ClientEvent::Final { status };
                }
                // The request is ours and parses; should it not, no ACK is sent and the
                // server's retransmissions end with its Timer H.
                if let Ok(request) = Message::parse(&self.request) {
                    let mut ack = Vec::with_capacity(self.request.len().min(1024));
                    build_ack(&request, response, &mut ack);
                    let ack: Bytes = ack.into();
                    out.push(Action::Send(ack.clone()));
                    self.ack = Some(ack);
                }
                self.request = super::empty_bytes();
                self.state = ClientState::Completed;
                let d = cfg.duration(Timer::D, self.reliable);
                if d == 0 {
                    self.terminate(out);
                } else {
                    arm(&mut self.timers, out, Timer::D, now_ms + d);
                }
                ClientEvent::Final { status }
            }
            ClientState::Completed => {
                if status >= 300 {
                    if let Some(ack) = &self.ack {
                        out.push(Action::Send(ack.clone()));
                    }
                }
                ClientEvent::Absorbed
            }
            ClientState::Accepted if (200..300).contains(&status) => ClientEvent::Final { status },
            _ => ClientEvent::Absorbed,
        }
    }

    /// A timer fired. Stale firings do nothing.
    pub fn on_timer(&mut self, timer: Timer, now_ms: u64, out: &mut Vec<Action>) {
        if !self.timers.take_due(timer, now_ms) {
            return;
        }
        match (self.state, timer) {
            (ClientState::Calling, Timer::A) => {
                out.push(Action::Send(self.request.clone()));
                self.interval_ms = self.interval_ms.saturating_mul(2);
                let a = now_ms + self.interval_ms as u64;
                arm(&mut self.timers, out, Timer::A, a);
            }
            (ClientState::Calling, Timer::B) => {
                out.push(Action::Timeout);
                self.terminate(out);
            }
            (ClientState::Completed, Timer::D) | (ClientState::Accepted, Timer::M) => {
                self.terminate(out)
            }
            _ => {}
        }
    }

    /// The transport could not send the request (§17.1.1.2).
    pub fn on_transport_error(&mut self, out: &mut Vec<Action>) {
        if self.state != ClientState::Terminated {
            out.push(Action::TransportError);
            self.terminate(out);
        }
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = ClientState::Terminated;
        self.timers = TimerSlots::default();
        out.push(Action::Terminated);
    }
}

/// A non-INVITE client transaction (RFC 3261 Figure 6).
#[derive(Debug, Clone)]
pub struct ClientNonInviteTxn {
    state: ClientState,
    reliable: bool,
    /// Current Timer E interval.
    interval_ms: u32,
    timers: TimerSlots,
    request: Bytes,
}

impl ClientNonInviteTxn {
    /// Starts the transaction in Trying: sends the request, arms Timer E (unreliable
    /// transports) and Timer F.
    pub fn new(
        cfg: &TxnConfig,
        request: Bytes,
        reliable: bool,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Self {
        let mut t = ClientNonInviteTxn {
            state: ClientState::Trying,
            reliable,
            interval_ms: cfg.t1_ms as u32,
            timers: TimerSlots::default(),
            request,
        };
        out.push(Action::Send(t.request.clone()));
        if !reliable {
            arm(&mut t.timers, out, Timer::E, now_ms + cfg.t1_ms);
        }
        arm(&mut t.timers, out, Timer::F, now_ms + cfg.t1x64());
        t
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// A response with this status matched the transaction (§17.1.2.2).
    pub fn on_response(
        &mut self,
        cfg: &TxnConfig,
        status: u16,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> ClientEvent {
        if !matches!(self.state, ClientState::Trying | ClientState::Proceeding) {
            return ClientEvent::Absorbed;
        }
        if status < 200 {
            // Timer E keeps running; it fires at T2 intervals from now on.
            self.state = ClientState::Proceeding;
            return ClientEvent::Provisional { status };
        }
        disarm(&mut self.timers, out, Timer::E);
        disarm(&mut self.timers, out, Timer::F);
        self.state = ClientState::Completed;
        // Completed only absorbs response retransmissions.
        self.request = super::empty_bytes();
        let k = cfg.duration(Timer::K, self.reliable);
        if k == 0 {
            self.terminate(out);
        } else {
            arm(&mut self.timers, out, Timer::K, now_ms + k);
        }
        ClientEvent::Final { status }
    }

    /// A timer fired. Stale firings do nothing.
    pub fn on_timer(&mut self, cfg: &TxnConfig, timer: Timer, now_ms: u64, out: &mut Vec<Action>) {
        if !self.timers.take_due(timer, now_ms) {
            return;
        }
        match (self.state, timer) {
            (ClientState::Trying | ClientState::Proceeding, Timer::E) => {
                out.push(Action::Send(self.request.clone()));
                self.interval_ms = if self.state == ClientState::Proceeding {
                    cfg.t2_ms as u32
                } else {
                    (self.interval_ms * 2).min(cfg.t2_ms as u32)
                };
                let e = now_ms + self.interval_ms as u64;
                arm(&mut self.timers, out, Timer::E, e);
            }
            (ClientState::Trying | ClientState::Proceeding, Timer::F) => {
                out.push(Action::Timeout);
                self.terminate(out);
            }
            (ClientState::Completed, Timer::K) => self.terminate(out),
            _ => {}
        }
    }

    /// The transport could not send the request (§17.1.2.2).
    pub fn on_transport_error(&mut self, out: &mut Vec<Action>) {
        if self.state != ClientState::Terminated {
            out.push(Action::TransportError);
            self.terminate(out);
        }
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = ClientState::Terminated;
        self.timers = TimerSlots::default();
        out.push(Action::Terminated);
    }
}
