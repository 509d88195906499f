//! One generator thread's calls, sans-I/O: `start` begins a call on schedule, `datagram`
//! takes what the target sent, `handle_timeout` runs retransmissions (RFC 3261 §17.1.1.2 Timer
//! A for INVITE until a provisional, §17.1.2.2 Timer E capped at T2 for the rest), pauses and
//! timeouts (Timer B/F, configurable). What to send goes into an [`Outbox`]; time is a
//! parameter (µs since the run started).
//!
//! Calls are found by their Call-ID, `<seq>-<thread>-<run>@sipshard-load`: the sequence number
//! is the key of the call table. Dialogs follow §12: the To tag, remote target (Contact) and
//! route set (Record-Route reversed) of the 2xx make the ACK and BYE; digest challenges (401,
//! 407) are answered with MD5 or SHA-256 (RFC 7616/8760) when a password is configured.

use super::report::{Exchange, LoadReport};
use super::spec::{expand, LoadSpec, Scenario};
use crate::proxy::stateful::uri_address;
use crate::server::outbox::Outbox;
use crate::sip::write::{finish, header, response_head};
use crate::sip::{HeaderName, Message, Method};
use crate::timer::wheel::{TimerKey, TimerWheel};
use hashbrown::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

const T1_MS: u64 = 500;
const T2_MS: u64 = 4_000;

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// INVITE sent, no final response yet.
    Inviting,
    /// CANCEL sent; waiting for its 200 and the INVITE's 487.
    Cancelling,
    /// ACK sent; the BYE goes when the pause ends (or the far end hangs up).
    InCall,
    /// BYE sent.
    Byeing,
    /// REGISTER or OPTIONS sent.
    Asking,
}

struct Call {
    state: State,
    socket: usize,
    /// The call's number in the run (for the AOR and password patterns).
    n: u64,
    cseq: u32,
    /// The request being retransmitted, and where it goes.
    request: Vec<u8>,
    dst: SocketAddr,
    /// When `request` was first sent (µs), for latency.
    sent_us: u64,
    /// The INVITE's branch (CANCEL and non-2xx ACK reuse it).
    invite_branch: u32,
    branch_n: u32,
    retransmit: bool,
    interval_ms: u64,
    /// When the current transaction times out (ms).
    timeout_at_ms: u64,
    timer: TimerKey,
    got_100: bool,
    got_180: bool,
    challenged: bool,
    cancel_ok: bool,
    /// The dialog (from the 2xx).
    to_tag: Vec<u8>,
    remote_target: Vec<u8>,
    routes: Vec<u8>,
    dialog_dst: SocketAddr,
}

/// One thread's share of a load run.
pub struct Engine {
    spec: Arc<LoadSpec>,
    thread: usize,
    run: u32,
    /// Our address per socket (Via, Contact, From).
    local: Vec<SocketAddr>,
    calls: HashMap<u64, Call>,
    timers: TimerWheel<u64>,
    next_seq: u64,
    pub report: LoadReport,
    fired: Vec<u64>,
}

fn push_u64(b: &mut Vec<u8>, n: u64) {
    b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The sequence number in a Call-ID of ours.
fn seq_of(call_id: &[u8]) -> Option<u64> {
    let end = call_id.iter().position(|&c| c == b'-')?;
    std::str::from_utf8(&call_id[..end]).ok()?.parse().ok()
}

impl Engine {
    pub fn new(spec: Arc<LoadSpec>, thread: usize, run: u32, local: Vec<SocketAddr>) -> Engine {
        Engine {
            spec,
            thread,
            run,
            local,
            calls: HashMap::new(),
            timers: TimerWheel::new(4, 4096),
            next_seq: 0,
            report: LoadReport::default(),
            fired: Vec::new(),
        }
    }

    /// Calls in progress.
    pub fn active(&self) -> usize {
        self.calls.len()
    }

    /// When `handle_timeout` is next needed, in ms.
    pub fn next_timeout_ms(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    /// Starts call number `n` of the run (`lag_us` late against the schedule).
    pub fn start(&mut self, n: u64, now_us: u64, lag_us: u64, out: &mut Outbox) {
        let seq = self.next_seq;
        self.next_seq += 1;
        // One source port per AOR, as a phone has: its registrations refresh one binding.
        let socket = ((n % self.spec.aors.max(1)) % self.local.len() as u64) as usize;
        self.report.started += 1;
        let _ = self.report.start_lag.record(lag_us.max(1));
        let (state, request) = match self.spec.scenario {
            Scenario::Options => (State::Asking, Method::Options),
            Scenario::Register | Scenario::RegisterDigest => (State::Asking, Method::Register),
            Scenario::Call | Scenario::CallCancel => (State::Inviting, Method::Invite),
        };
        let mut call = Call {
            state,
            socket,
            n,
            cseq: 1,
            request: Vec::with_capacity(700),
            dst: self.spec.target,
            sent_us: now_us,
            invite_branch: 0,
            branch_n: 0,
            retransmit: true,
            interval_ms: T1_MS,
            timeout_at_ms: 0,
            timer: TimerKey::DANGLING,
            got_100: false,
            got_180: false,
            challenged: false,
            cancel_ok: false,
            to_tag: Vec::new(),
            remote_target: Vec::new(),
            routes: Vec::new(),
            dialog_dst: self.spec.target,
        };
        self.write_request(&mut call, seq, request, None);
        self.send(seq, call, now_us, out);
    }

    /// Sends `call.request` as a new transaction and arms its timer.
    fn send(&mut self, seq: u64, mut call: Call, now_us: u64, out: &mut Outbox) {
        out.push(&call.request, call.dst, call.socket);
        let now_ms = now_us / 1000;
        call.sent_us = now_us;
        call.retransmit = true;
        call.interval_ms = T1_MS;
        call.timeout_at_ms = now_ms + self.spec.timeout_ms;
        self.timers.cancel(call.timer);
        call.timer = self
            .timers
            .insert((now_ms + T1_MS).min(call.timeout_at_ms), seq);
        self.calls.insert(seq, call);
    }

    fn user(&self, n: u64) -> String {
        expand(&self.spec.user_pattern, n % self.spec.aors.max(1))
    }

    /// Writes the call's next out-of-dialog request (`method`) into `call.request`, with
    /// `authorization` (a full header line) when answering a challenge.
    fn write_request(
        &self,
        call: &mut Call,
        seq: u64,
        method: Method,
        authorization: Option<&str>,
    ) {
        let spec = &*self.spec;
        let local = self.local[call.socket];
        let user = self.user(call.n);
        let b = &mut call.request;
        b.clear();
        call.branch_n += 1;
        if method == Method::Invite {
            call.invite_branch = call.branch_n;
        }
        // OPTIONS asks the server itself (no user part), REGISTER names the AOR in To.
        let (ruri_user, to_user) = match method {
            Method::Register => (None, Some(user.as_str())),
            Method::Options => (None, None),
            _ => (Some(spec.callee.as_str()), Some(spec.callee.as_str())),
        };
        let name = method_name(method);
        b.extend_from_slice(name);
        b.extend_from_slice(b" sip:");
        if let Some(u) = ruri_user {
            b.extend_from_slice(u.as_bytes());
            b.push(b'@');
        }
        b.extend_from_slice(spec.domain.as_bytes());
        b.extend_from_slice(b" SIP/2.0\r\n");
        self.write_via(b, local, seq, call.branch_n);
        b.extend_from_slice(b"Max-Forwards: 70\r\nFrom: <sip:");
        b.extend_from_slice(user.as_bytes());
        b.push(b'@');
        b.extend_from_slice(spec.domain.as_bytes());
        b.extend_from_slice(b">;tag=");
        push_u64(b, seq);
        b.extend_from_slice(b"\r\nTo: <sip:");
        if let Some(u) = to_user {
            b.extend_from_slice(u.as_bytes());
            b.push(b'@');
        }
        b.extend_from_slice(spec.domain.as_bytes());
        b.extend_from_slice(b">\r\n");
        self.write_call_id(b, seq);
        b.extend_from_slice(b"CSeq: ");
        push_u64(b, u64::from(call.cseq));
        b.push(b' ');
        b.extend_from_slice(name);
        b.extend_from_slice(b"\r\n");
        if method != Method::Options {
            let _ = write!(b, "Contact: <sip:{user}@{local}>\r\n");
        }
        if method == Method::Register {
            let _ = write!(b, "Expires: {}\r\n", spec.expires);
        }
        if let Some(a) = authorization {
            b.extend_from_slice(a.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"User-Agent: sipshard-load\r\n");
        if method == Method::Invite {
            let sdp = format!(
                "v=0\r\no=load {seq} {seq} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
                 m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
                ip = local.ip(),
                port = 20_000 + (seq % 20_000) * 2
            );
            header(b, "Content-Type", b"application/sdp");
            finish(b, sdp.as_bytes());
        } else {
            finish(b, b"");
        }
    }

    fn write_via(&self, b: &mut Vec<u8>, local: SocketAddr, seq: u64, branch_n: u32) {
        let _ = write!(
            b,
            "Via: SIP/2.0/UDP {local};rport;branch=z9hG4bK-l{}.{seq}.{branch_n}\r\n",
            self.thread
        );
    }

    fn write_call_id(&self, b: &mut Vec<u8>, seq: u64) {
        let _ = write!(
            b,
            "Call-ID: {seq}-{}-{}@sipshard-load\r\n",
            self.thread, self.run
        );
    }

    /// An in-dialog request (ACK of a 2xx, BYE) of `call`, into `out_buf`.
    fn write_in_dialog(
        &self,
        call: &Call,
        seq: u64,
        method: Method,
        cseq: u32,
        branch_n: u32,
        b: &mut Vec<u8>,
    ) {
        let spec = &*self.spec;
        let local = self.local[call.socket];
        let user = self.user(call.n);
        let name = method_name(method);
        b.clear();
        b.extend_from_slice(name);
        b.push(b' ');
        b.extend_from_slice(&call.remote_target);
        b.extend_from_slice(b" SIP/2.0\r\n");
        self.write_via(b, local, seq, branch_n);
        b.extend_from_slice(&call.routes);
        let _ = write!(
            b,
            "Max-Forwards: 70\r\nFrom: <sip:{user}@{d}>;tag={seq}\r\nTo: <sip:{c}@{d}>;tag=",
            d = spec.domain,
            c = spec.callee
        );
        b.extend_from_slice(&call.to_tag);
        b.extend_from_slice(b"\r\n");
        self.write_call_id(b, seq);
        let _ = write!(b, "CSeq: {cseq} ");
        b.extend_from_slice(name);
        b.extend_from_slice(b"\r\n");
        finish(b, b"");
    }

    /// A request in the INVITE's client transaction: the ACK of a non-2xx final response
    /// (§17.1.1.3, `to` the response's To) or the CANCEL (§9.1, `to` None: the INVITE's
    /// To). Both carry the INVITE's branch, Request-URI, From, Call-ID and CSeq number.
    fn write_invite_txn_request(
        &self,
        call: &Call,
        seq: u64,
        method: Method,
        to: Option<&[u8]>,
        b: &mut Vec<u8>,
    ) {
        let spec = &*self.spec;
        let local = self.local[call.socket];
        let user = self.user(call.n);
        let name = std::str::from_utf8(method_name(method)).unwrap_or("ACK");
        b.clear();
        let _ = write!(b, "{name} sip:{}@{} SIP/2.0\r\n", spec.callee, spec.domain);
        self.write_via(b, local, seq, call.invite_branch);
        let _ = write!(
            b,
            "Max-Forwards: 70\r\nFrom: <sip:{user}@{d}>;tag={seq}\r\n",
            d = spec.domain
        );
        match to {
            Some(to) => header(b, "To", to),
            None => {
                let _ = write!(b, "To: <sip:{}@{}>\r\n", spec.callee, spec.domain);
            }
        }
        self.write_call_id(b, seq);
        let _ = write!(b, "CSeq: {} {name}\r\n", call.cseq);
        finish(b, b"");
    }

    /// A datagram from the target, received now.
    pub fn datagram(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        socket: usize,
        now_us: u64,
        out: &mut Outbox,
    ) {
        self.datagram_at(data, src, socket, now_us, now_us, out)
    }

    /// A datagram from the target that the kernel received at `received_us` (its receive
    /// timestamp: the latency measured does not depend on when the thread got to read it);
    /// what it causes to be sent is stamped `now_us`.
    pub fn datagram_at(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        socket: usize,
        received_us: u64,
        now_us: u64,
        out: &mut Outbox,
    ) {
        let Ok(msg) = Message::parse(data) else {
            self.report.unexpected += 1;
            return;
        };
        let seq = msg.call_id().ok().and_then(seq_of);
        if let Some(method) = msg.method() {
            return self.request(&msg, method, seq, src, socket, out);
        }
        let (Some(seq), Some(status)) = (seq, msg.status()) else {
            self.report.unexpected += 1;
            return;
        };
        let Some(mut call) = self.calls.remove(&seq) else {
            self.report.unexpected += 1;
            return;
        };
        let method = msg
            .cseq()
            .map(|c| Method::from_bytes(c.method))
            .unwrap_or(Method::Other);
        let elapsed = received_us.saturating_sub(call.sent_us);
        match (call.state, method) {
            (State::Asking, Method::Options | Method::Register) => {
                if status < 200 {
                    // Timer E continues at T2 after a provisional (§17.1.2.2).
                    call.interval_ms = T2_MS;
                } else if (status == 401 || status == 407) && !call.challenged {
                    return self.answer_challenge(seq, call, &msg, status, now_us, out);
                } else {
                    self.end(call, status, |r| {
                        r.record(
                            if method == Method::Options {
                                Exchange::Options200
                            } else {
                                Exchange::Register200
                            },
                            elapsed,
                        )
                    });
                    return;
                }
            }
            (State::Inviting | State::Cancelling, Method::Invite) => {
                if status < 200 {
                    if status == 100 && !call.got_100 {
                        call.got_100 = true;
                        self.report.record(Exchange::Invite100, elapsed);
                    }
                    if status > 100 && !call.got_180 {
                        call.got_180 = true;
                        self.report.record(Exchange::Invite180, elapsed);
                        if self.spec.scenario == Scenario::CallCancel
                            && call.state == State::Inviting
                        {
                            return self.cancel(seq, call, now_us, out);
                        }
                    }
                    // A provisional stops Timer A (§17.1.1.2); Timer B still runs.
                    if call.state == State::Inviting {
                        call.retransmit = false;
                    }
                } else if status < 300 {
                    if call.state == State::Inviting {
                        self.report.record(Exchange::Invite200, elapsed);
                    }
                    return self.answered(seq, call, &msg, now_us, out);
                } else {
                    // §17.1.1.3: the ACK of a non-2xx goes in the INVITE's transaction.
                    let mut ack = Vec::with_capacity(400);
                    self.write_invite_txn_request(
                        &call,
                        seq,
                        Method::Ack,
                        Some(msg.header(HeaderName::To).unwrap_or(b"")),
                        &mut ack,
                    );
                    out.push(&ack, call.dst, call.socket);
                    if (status == 401 || status == 407)
                        && !call.challenged
                        && call.state == State::Inviting
                    {
                        return self.answer_challenge(seq, call, &msg, status, now_us, out);
                    }
                    if status == 487 && call.state == State::Cancelling {
                        self.end(call, 200, |_| {});
                    } else {
                        self.end(call, status, |_| {});
                    }
                    return;
                }
            }
            (State::Cancelling, Method::Cancel) => {
                if status >= 200 && !call.cancel_ok {
                    call.cancel_ok = true;
                    self.report.record(Exchange::Cancel200, elapsed);
                    // The CANCEL is done; the INVITE's 487 remains (Timer B still runs).
                    call.retransmit = false;
                }
            }
            // A provisional overtaken by the final (UDP reorders; a multi-process proxy such as
            // Kamailio does): the INVITE transaction is over, it means nothing.
            (State::InCall | State::Byeing, Method::Invite) if status < 200 => {}
            (State::InCall | State::Byeing, Method::Invite) if (200..300).contains(&status) => {
                // A retransmitted 2xx: its ACK again (§13.2.2.4).
                let mut ack = Vec::with_capacity(400);
                self.write_in_dialog(&call, seq, Method::Ack, call.cseq, call.branch_n, &mut ack);
                out.push(&ack, call.dialog_dst, call.socket);
            }
            (State::Byeing, Method::Bye) => {
                if status >= 200 {
                    let status = if status < 300 { 200 } else { status };
                    self.end(call, status, |r| r.record(Exchange::Bye200, elapsed));
                    return;
                }
                call.interval_ms = T2_MS;
            }
            _ => self.report.unexpected += 1,
        }
        self.calls.insert(seq, call);
    }

    /// Ends a call: completed for a 2xx (`status` 200), failed otherwise (0: timeout).
    fn end(&mut self, call: Call, status: u16, ok: impl FnOnce(&mut LoadReport)) {
        self.timers.cancel(call.timer);
        if (200..300).contains(&status) {
            self.report.completed += 1;
            ok(&mut self.report);
        } else {
            self.report.fail(status);
        }
    }

    /// Resends the request with credentials answering the challenge in `resp`.
    fn answer_challenge(
        &mut self,
        seq: u64,
        mut call: Call,
        resp: &Message<'_>,
        status: u16,
        now_us: u64,
        out: &mut Outbox,
    ) {
        let Some(pattern) = &self.spec.password_pattern else {
            return self.end(call, status, |_| {});
        };
        let header_name = if status == 401 {
            HeaderName::WwwAuthenticate
        } else {
            HeaderName::ProxyAuthenticate
        };
        let Some(challenge) = crate::auth::client::first_supported_challenge(resp, header_name)
        else {
            return self.end(call, status, |_| {});
        };
        let method = match call.state {
            State::Asking if self.spec.scenario == Scenario::Options => Method::Options,
            State::Asking => Method::Register,
            _ => Method::Invite,
        };
        let user = self.user(call.n);
        let password = expand(pattern, call.n % self.spec.aors.max(1));
        let uri = match method {
            Method::Register | Method::Options => format!("sip:{}", self.spec.domain),
            _ => format!("sip:{}@{}", self.spec.callee, self.spec.domain),
        };
        let creds = crate::auth::client_response(
            &challenge,
            &user,
            &password,
            method_name(method),
            uri.as_bytes(),
            1,
            "5f3c1a2b",
        );
        let Ok(creds) = creds else {
            return self.end(call, status, |_| {});
        };
        let name = if status == 401 {
            "Authorization"
        } else {
            "Proxy-Authorization"
        };
        call.challenged = true;
        call.cseq += 1;
        call.got_100 = false;
        call.got_180 = false;
        let line = format!("{name}: {creds}");
        self.write_request(&mut call, seq, method, Some(&line));
        self.send(seq, call, now_us, out);
    }

    /// CANCEL the ringing INVITE.
    fn cancel(&mut self, seq: u64, mut call: Call, now_us: u64, out: &mut Outbox) {
        let mut b = Vec::with_capacity(400);
        self.write_invite_txn_request(&call, seq, Method::Cancel, None, &mut b);
        call.request = b;
        call.state = State::Cancelling;
        self.send(seq, call, now_us, out);
    }

    /// A 2xx to the INVITE: the dialog, the ACK, and the BYE now or after the pause.
    fn answered(
        &mut self,
        seq: u64,
        mut call: Call,
        resp: &Message<'_>,
        now_us: u64,
        out: &mut Outbox,
    ) {
        call.to_tag = resp.to().ok().and_then(|t| t.tag()).unwrap_or(b"").to_vec();
        let contact = resp.contacts().next().and_then(|c| c.ok());
        call.remote_target = contact
            .as_ref()
            .map(|c| c.uri_raw.to_vec())
            .unwrap_or_else(|| {
                format!("sip:{}@{}", self.spec.callee, self.spec.domain).into_bytes()
            });
        // §12.1.2: the route set is the Record-Route list reversed.
        let rrs: Vec<&[u8]> = resp.header_all(HeaderName::RecordRoute).collect();
        call.routes.clear();
        for rr in rrs.iter().rev() {
            header(&mut call.routes, "Route", rr);
        }
        let first_route = resp
            .record_routes()
            .filter_map(|r| r.ok())
            .last()
            .and_then(|r| r.uri().ok().and_then(|u| uri_address(&u)));
        let target = contact.and_then(|c| c.uri().ok().and_then(|u| uri_address(&u)));
        call.dialog_dst = first_route.or(target).unwrap_or(self.spec.target);
        let ack_branch = call.branch_n + 1;
        call.branch_n += 1;
        let mut ack = Vec::with_capacity(400);
        self.write_in_dialog(&call, seq, Method::Ack, call.cseq, ack_branch, &mut ack);
        out.push(&ack, call.dialog_dst, call.socket);
        if self.spec.scenario == Scenario::CallCancel {
            // Answered before the CANCEL took: hang up, count it as failed (200).
            self.report.fail(200);
            self.bye(seq, call, now_us, out, false);
            return;
        }
        call.state = State::InCall;
        if self.spec.pause_ms == 0 {
            return self.bye(seq, call, now_us, out, true);
        }
        self.timers.cancel(call.timer);
        call.retransmit = false;
        call.timer = self.timers.insert(now_us / 1000 + self.spec.pause_ms, seq);
        self.calls.insert(seq, call);
    }

    /// Sends BYE. `counts`: its 200 completes the call (false: the call was already counted).
    fn bye(&mut self, seq: u64, mut call: Call, now_us: u64, out: &mut Outbox, counts: bool) {
        call.cseq += 1;
        call.branch_n += 1;
        let mut b = Vec::with_capacity(400);
        self.write_in_dialog(&call, seq, Method::Bye, call.cseq, call.branch_n, &mut b);
        call.request = b;
        call.dst = call.dialog_dst;
        call.state = State::Byeing;
        if !counts {
            // Already counted: the call only needs its BYE sent, not its answer.
            out.push(&call.request, call.dst, call.socket);
            self.timers.cancel(call.timer);
            return;
        }
        self.send(seq, call, now_us, out);
    }

    /// A request from the target: a BYE ending a call in progress (the far end hung up) gets
    /// 200 and completes the call; anything else gets 200 (OPTIONS) or 481.
    fn request(
        &mut self,
        msg: &Message<'_>,
        method: Method,
        seq: Option<u64>,
        src: SocketAddr,
        socket: usize,
        out: &mut Outbox,
    ) {
        if method == Method::Ack {
            return;
        }
        let call = seq.and_then(|s| self.calls.get(&s).map(|c| (s, c.state)));
        let status: u16 = match (method, call) {
            (Method::Bye, Some((s, State::InCall | State::Byeing))) => {
                let call = self.calls.remove(&s).expect("looked up above");
                self.end(call, 200, |_| {});
                200
            }
            (Method::Options, _) => 200,
            _ => {
                self.report.unexpected += 1;
                481
            }
        };
        let (buf, start) = out.begin();
        let reason: &[u8] = if status == 200 {
            b"OK"
        } else {
            b"Call/Transaction Does Not Exist"
        };
        response_head(buf, msg, status, reason, Some(b"load"), None);
        finish(buf, b"");
        let dst = crate::proxy::reply::response_destination(msg, src);
        out.commit(start, dst, socket);
    }

    /// Runs expired timers: retransmissions, the end of pauses, timeouts.
    pub fn handle_timeout(&mut self, now_us: u64, out: &mut Outbox) {
        let now_ms = now_us / 1000;
        let mut fired = core::mem::take(&mut self.fired);
        fired.clear();
        self.timers.poll(now_ms, &mut |seq| fired.push(seq));
        for &seq in &fired {
            let Some(mut call) = self.calls.remove(&seq) else {
                continue;
            };
            call.timer = TimerKey::DANGLING;
            if call.state == State::InCall {
                self.bye(seq, call, now_us, out, true);
                continue;
            }
            if now_ms >= call.timeout_at_ms {
                self.report.timeouts += 1;
                self.end(call, 0, |_| {});
                continue;
            }
            if call.retransmit {
                out.push(&call.request, call.dst, call.socket);
                self.report.retransmissions += 1;
                let cap = if call.state == State::Inviting {
                    u64::MAX
                } else {
                    T2_MS
                };
                call.interval_ms = (call.interval_ms * 2).min(cap);
                call.timer = self
                    .timers
                    .insert((now_ms + call.interval_ms).min(call.timeout_at_ms), seq);
            } else {
                call.timer = self.timers.insert(call.timeout_at_ms, seq);
            }
            self.calls.insert(seq, call);
        }
        self.fired = fired;
    }
}

fn method_name(m: Method) -> &'static [u8] {
    match m {
        Method::Invite => b"INVITE",
        Method::Ack => b"ACK",
        Method::Bye => b"BYE",
        Method::Cancel => b"CANCEL",
        Method::Register => b"REGISTER",
        _ => b"OPTIONS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "192.0.2.1:5060";

    fn engine(scenario: Scenario) -> Engine {
        let mut spec = LoadSpec::new(scenario, TARGET.parse().unwrap(), 100.0);
        spec.timeout_ms = 10_000;
        Engine::new(
            Arc::new(spec),
            0,
            1,
            vec!["192.0.2.9:40000".parse().unwrap()],
        )
    }

    fn sent(out: &mut Outbox) -> Vec<(SocketAddr, String)> {
        let v = out
            .items()
            .iter()
            .map(|d| (d.dst, String::from_utf8_lossy(out.bytes(d)).into_owned()))
            .collect();
        out.clear();
        v
    }

    /// A response to `req` from the target with `status` and extra header lines.
    fn respond(req: &str, status: u16, extra: &str) -> Vec<u8> {
        let m = Message::parse(req.as_bytes()).unwrap();
        let mut b = Vec::new();
        let tag = (status > 100).then_some(&b"far"[..]);
        response_head(&mut b, &m, status, b"X", tag, None);
        b.extend_from_slice(extra.as_bytes());
        finish(&mut b, b"");
        b
    }

    #[test]
    fn invite_is_retransmitted_until_a_provisional_then_times_out() {
        let mut e = engine(Scenario::Call);
        let mut out = Outbox::new();
        e.start(0, 0, 0, &mut out);
        let invite = sent(&mut out).remove(0).1;
        assert!(invite.starts_with("INVITE sip:service@192.0.2.1 SIP/2.0\r\n"));
        // Timer A: 500, then 1000 ms later (§17.1.1.2).
        e.handle_timeout(499_000, &mut out);
        assert!(sent(&mut out).is_empty());
        e.handle_timeout(500_000, &mut out);
        assert_eq!(sent(&mut out)[0].1, invite);
        e.handle_timeout(1_499_000, &mut out);
        assert!(sent(&mut out).is_empty());
        e.handle_timeout(1_500_000, &mut out);
        assert_eq!(sent(&mut out).len(), 1);
        assert_eq!(e.report.retransmissions, 2);
        // A 100 stops the retransmissions; the call still times out.
        let trying = respond(&invite, 100, "");
        e.datagram(&trying, TARGET.parse().unwrap(), 0, 1_600_000, &mut out);
        e.handle_timeout(3_600_000, &mut out);
        assert!(sent(&mut out).is_empty());
        assert_eq!(e.report.latency[Exchange::Invite100 as usize].len(), 1);
        e.handle_timeout(10_000_000, &mut out);
        assert_eq!((e.report.timeouts, e.report.failed, e.active()), (1, 1, 0));
    }

    #[test]
    fn the_2xx_dialog_follows_record_route_and_contact() {
        let mut e = engine(Scenario::Call);
        let mut out = Outbox::new();
        e.start(0, 0, 0, &mut out);
        let invite = sent(&mut out).remove(0).1;
        let ok = respond(
            &invite,
            200,
            "Record-Route: <sip:198.51.100.7:5070;lr>\r\nRecord-Route: <sip:198.51.100.8;lr>\r\n\
             Contact: <sip:far@203.0.113.5:5062>\r\n",
        );
        e.datagram(&ok, TARGET.parse().unwrap(), 0, 2_000, &mut out);
        let msgs = sent(&mut out);
        assert_eq!(msgs.len(), 2, "ACK and BYE (no pause)");
        let (dst, ack) = &msgs[0];
        // The route set is the Record-Route list reversed; the first route is the next hop.
        assert_eq!(*dst, "198.51.100.8:5060".parse().unwrap());
        assert!(
            ack.starts_with("ACK sip:far@203.0.113.5:5062 SIP/2.0\r\n"),
            "{ack}"
        );
        assert!(
            ack.contains("Route: <sip:198.51.100.8;lr>\r\nRoute: <sip:198.51.100.7:5070;lr>\r\n"),
            "{ack}"
        );
        assert!(
            ack.contains(";tag=far\r\n") && ack.contains("CSeq: 1 ACK"),
            "{ack}"
        );
        let bye = &msgs[1].1;
        assert!(bye.starts_with("BYE sip:far@203.0.113.5:5062") && bye.contains("CSeq: 2 BYE"));
        // A retransmitted 200 is acknowledged again.
        e.datagram(&ok, TARGET.parse().unwrap(), 0, 3_000, &mut out);
        assert!(sent(&mut out)[0].1.starts_with("ACK "));
        let bye_ok = respond(bye, 200, "");
        e.datagram(&bye_ok, TARGET.parse().unwrap(), 0, 4_000, &mut out);
        assert_eq!((e.report.completed, e.active()), (1, 0));
        assert_eq!(e.report.latency[Exchange::Invite200 as usize].len(), 1);
        assert_eq!(e.report.latency[Exchange::Bye200 as usize].len(), 1);
    }

    #[test]
    fn a_provisional_overtaken_by_the_200_is_not_unexpected() {
        let mut e = engine(Scenario::Call);
        let mut out = Outbox::new();
        e.start(0, 0, 0, &mut out);
        let invite = sent(&mut out).remove(0).1;
        let ok = respond(&invite, 200, "Contact: <sip:far@192.0.2.1>\r\n");
        e.datagram(&ok, TARGET.parse().unwrap(), 0, 1_000, &mut out);
        // The call is now hanging up (no pause): its INVITE's late 180 arrives.
        let ringing = respond(&invite, 180, "");
        e.datagram(&ringing, TARGET.parse().unwrap(), 0, 1_100, &mut out);
        assert_eq!(e.report.unexpected, 0);
    }

    #[test]
    fn a_busy_callee_is_acknowledged_in_the_invite_transaction_and_counted_by_status() {
        let mut e = engine(Scenario::Call);
        let mut out = Outbox::new();
        e.start(0, 0, 0, &mut out);
        let invite = sent(&mut out).remove(0).1;
        let busy = respond(&invite, 486, "");
        e.datagram(&busy, TARGET.parse().unwrap(), 0, 1_000, &mut out);
        let ack = sent(&mut out).remove(0).1;
        let branch = |m: &str| {
            m.split("branch=")
                .nth(1)
                .unwrap()
                .split("\r\n")
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            branch(&ack),
            branch(&invite),
            "§17.1.1.3: the INVITE's branch"
        );
        assert_eq!(e.report.failed_by_status.get(&486), Some(&1));
        assert_eq!(e.active(), 0);
    }
}
