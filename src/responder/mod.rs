//! The responder (`--mode responder`): the far end of a load test, answering like a phone
//! that always picks up, per shard and keeping only the state RFC 3261 requires of a UAS.
//!
//! - INVITE (§13.3.1): 100 Trying (by default only with a ring time), 180 Ringing and, after the ring time, a final
//!   response chosen from the configured mix by a hash of the Call-ID; a 200 carries Contact,
//!   the Record-Route set (§12.1.1) and an SDP answer built from the offer (`sdp.rs`).
//! - The state kept per call: the INVITE while it rings (so CANCEL gets 200 and the INVITE 487,
//!   §9.2), the final response until its ACK arrives (retransmitted on Timer G up to T2 for a
//!   non-2xx, §17.2.1; the same schedule for a 2xx, §13.3.1.4; given up after 64*T1), and with
//!   a hold time the dialog until the responder's own BYE is answered (a non-INVITE client
//!   transaction, Timer E/F, §17.1.2). With no ring and no hold time a call's state lives from
//!   the 200 to its ACK, one round trip.
//! - ACK is absorbed; BYE, UPDATE, INFO, MESSAGE, OPTIONS, PRACK and REGISTER get 200 (UPDATE
//!   and re-INVITE with an SDP answer, REGISTER with its Contacts and their expiry, nothing
//!   stored); CANCEL of a call that no longer rings gets 200, of an unknown one 481.
//! - With users configured, REGISTER, INVITE and MESSAGE outside a dialog are challenged
//!   (401, §22.2), as the registrar does.
//! - To tags are derived from the Call-ID and From tag (`s<shard>.<hash>`), so a retransmitted
//!   INVITE gets the same tag, and the dispatcher sends in-dialog requests to the shard named
//!   in the tag.
//!
//! Sans-I/O like the rest of the core: requests, responses and `now` in, datagrams out.

pub mod sdp;
pub mod settings;

pub use settings::ResponderSettings;

use crate::auth::{AuthOutcome, Authenticator};
use crate::proxy::messages::{hex16, write_branch};
use crate::proxy::reply::Reply;
use crate::proxy::stateful::uri_address;
use crate::server::outbox::Outbox;
use crate::sip::write::header;
use crate::sip::{HeaderName, Message, Method};
use crate::stats::{DropReason, ShardStats};
use crate::timer::wheel::{TimerKey, TimerWheel};
use hashbrown::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// RFC 3261 timer values (§17.1.1.1), ms.
const T1: u64 = 500;
const T2: u64 = 4_000;
/// How often the nonce-count replay table drops expired nonces.
const AUTH_PRUNE_MS: u64 = 10_000;
/// The methods the responder answers (the Allow header of its 501 and 200s).
pub const ALLOW: &[u8] =
    b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, PRACK";

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// 180 sent; `bytes` holds the INVITE until the final response.
    Ringing,
    /// Final response sent; `bytes` holds it, retransmitted until the ACK.
    Answered,
    /// ACK received; `bye` is sent when the hold time ends.
    Held,
    /// BYE sent; `bytes` holds it, retransmitted until it is answered.
    Hanging,
}

/// One call the responder keeps state for.
struct Call {
    phase: Phase,
    timer: TimerKey,
    /// See [`Phase`].
    bytes: Vec<u8>,
    /// The BYE that ends the call after the hold time (empty without one).
    bye: Vec<u8>,
    /// Where `bytes` go (the caller for responses; the next hop for the BYE).
    dst: SocketAddr,
    bye_dst: SocketAddr,
    /// Ringing: the INVITE's source, whose Via rules say where responses go.
    src: SocketAddr,
    socket: usize,
    /// The final status of the call (Ringing: the one it will get).
    status: u16,
    /// Current retransmission interval, and when to give up.
    interval: u64,
    give_up: u64,
}

/// One shard's responder.
pub struct Responder {
    shard: usize,
    settings: Arc<ResponderSettings>,
    stats: Arc<ShardStats>,
    auth: Option<Authenticator>,
    next_auth_prune: u64,
    /// The address our Via, Contact and SDP name (its IP unspecified: the Request-URI's host).
    local: SocketAddr,
    /// `<sip:IP:PORT>` of `local` (empty when its IP is unspecified).
    local_contact: Vec<u8>,
    /// Calls by [`call_key`].
    calls: HashMap<u64, Call>,
    timers: TimerWheel<u64>,
    /// xorshift64 state for the simulated loss.
    rng: u64,
    /// Counter for the branches of our BYEs.
    branch_seq: u64,
    tag_seq: u64,
    scratch: Vec<u8>,
    /// Scratch: the keys whose timers fired.
    fired: Vec<u64>,
}

/// FNV-1a over `bytes`, continuing from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The key of a call: its Call-ID and the caller's tag (the From tag of the caller's requests,
/// the To tag of responses to ours).
pub fn call_key(call_id: &[u8], remote_tag: &[u8]) -> u64 {
    fnv(fnv(FNV_OFFSET, call_id) ^ 0x9e37_79b9_7f4a_7c15, remote_tag)
}

/// The hash of a Call-ID that picks the call's final status from the mix (and its SDP
/// session id): the same for every shard and run.
pub fn call_id_hash(call_id: &[u8]) -> u64 {
    fnv(FNV_OFFSET, call_id)
}

/// The shard named by a To tag the responder gave (`s<shard>.…`).
pub fn shard_of_tag(tag: &[u8]) -> Option<usize> {
    let rest = tag.strip_prefix(b"s")?;
    let end = rest.iter().position(|&c| c == b'.')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The To tag of the call with key `key` on `shard`.
fn write_tag(buf: &mut [u8; 24], shard: usize, key: u64) -> usize {
    let mut n = itoa::Buffer::new();
    let s = n.format(shard).as_bytes();
    buf[0] = b's';
    buf[1..1 + s.len()].copy_from_slice(s);
    buf[1 + s.len()] = b'.';
    let at = 2 + s.len();
    buf[at..at + 16].copy_from_slice(&hex16(key));
    at + 16
}

impl Responder {
    pub fn new(
        shard: usize,
        settings: Arc<ResponderSettings>,
        stats: Arc<ShardStats>,
        auth: Option<Authenticator>,
        local: SocketAddr,
    ) -> Responder {
        Responder {
            shard,
            settings,
            stats,
            auth,
            next_auth_prune: 0,
            local_contact: if local.ip().is_unspecified() {
                Vec::new()
            } else {
                format!("<sip:{local}>").into_bytes()
            },
            local,
            calls: HashMap::new(),
            timers: TimerWheel::new(10, 1024),
            rng: 0x2545_f491_4f6c_dd1d ^ (shard as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            branch_seq: 0,
            tag_seq: 0,
            scratch: Vec::new(),
            fired: Vec::new(),
        }
    }

    /// New settings (a reload); calls in progress keep what they were given.
    pub fn reload(
        &mut self,
        settings: Arc<ResponderSettings>,
        users: Option<Arc<crate::auth::UserDb>>,
    ) {
        self.settings = settings;
        if let (Some(auth), Some(users)) = (&mut self.auth, users) {
            auth.replace_users(users);
        }
    }

    /// New lockout limits for the authenticator (a reload).
    pub fn reload_security(&mut self, settings: &crate::security::SecuritySettings) {
        if let Some(auth) = &mut self.auth {
            auth.reload_security(settings);
        }
    }

    /// Calls holding state (ringing, waiting for an ACK, held or hanging up).
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    pub fn next_timeout(&self) -> Option<u64> {
        let auth = self.auth.as_ref().map(|_| self.next_auth_prune);
        [auth, self.timers.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// True for the datagrams the configured loss takes.
    fn lose(&mut self) -> bool {
        if self.settings.drop <= 0.0 {
            return false;
        }
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        ((x >> 11) as f64 / (1u64 << 53) as f64) < self.settings.drop
    }

    /// A response (to one of our BYEs).
    pub fn response(&mut self, msg: &Message<'_>, _now_ms: u64) {
        self.stats.received_responses.inc();
        if self.lose() {
            self.stats.dropped(DropReason::SimulatedLoss);
            return;
        }
        let key = match (msg.call_id(), msg.to()) {
            (Ok(id), Ok(to)) => call_key(id, to.tag().unwrap_or(b"")),
            _ => return self.stats.dropped(DropReason::BadResponse),
        };
        let is_bye = msg.cseq().is_ok_and(|c| c.method == b"BYE");
        match self.calls.get(&key) {
            Some(c) if c.phase == Phase::Hanging && is_bye => {
                if msg.status().is_some_and(|s| s >= 200) {
                    self.remove(key);
                }
            }
            _ => self.stats.dropped(DropReason::StrayResponse),
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(c) = self.calls.remove(&key) {
            self.timers.cancel(c.timer);
        }
    }

    /// A request.
    pub fn request(
        &mut self,
        msg: &Message<'_>,
        method: Method,
        src: SocketAddr,
        socket: usize,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        self.stats.request(method);
        if self.lose() {
            self.stats.dropped(DropReason::SimulatedLoss);
            return;
        }
        if method == Method::Ack {
            return self.ack(msg, now_ms);
        }
        let sent_before = out.len();
        let mut reply = Reply::new(msg, src, socket, &mut self.tag_seq, self.shard);
        // What the responder reads must be well-formed: the transaction fields (Via, From, To,
        // Call-ID, CSeq, Content-Length) of every request, the Contacts of a REGISTER. The
        // Record-Route values it copies verbatim, like a proxy (§16.3), are not parsed.
        let valid = if method == Method::Register {
            msg.validate()
        } else {
            msg.validate_for_proxy()
        };
        if let Err(e) = valid {
            reply.simple(out, e.status(), e.reason().as_bytes());
        } else {
            self.dispatch(msg, method, now_ms, &mut reply, out);
        }
        self.count_sent(out, sent_before);
    }

    /// Counts what was queued since `before` (responses by status, BYEs).
    fn count_sent(&self, out: &Outbox, before: usize) {
        for d in &out.items()[before..] {
            self.stats.message_sent(out.bytes(d));
        }
    }

    fn dispatch(
        &mut self,
        msg: &Message<'_>,
        method: Method,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        // validate() has checked Call-ID, From and To.
        let (Ok(call_id), Ok(from), Ok(to)) = (msg.call_id(), msg.from(), msg.to()) else {
            return reply.simple(out, 400, b"Bad Request");
        };
        let key = call_key(call_id, from.tag().unwrap_or(b""));
        let mut tag = [0u8; 24];
        let len = write_tag(&mut tag, self.shard, key);
        reply.set_to_tag(&tag[..len]);
        let in_dialog = to.tag().is_some();
        if !matches!(method, Method::Cancel | Method::Ack)
            && self.unsupported_required(msg, reply, out)
        {
            return;
        }
        if matches!(method, Method::Register | Method::Invite | Method::Message)
            && !in_dialog
            && !self.authenticated(msg, now_ms, reply, out)
        {
            return;
        }
        match method {
            Method::Invite if !in_dialog => self.invite(msg, key, now_ms, reply, out),
            Method::Invite | Method::Update => self.ok_with_sdp(msg, reply, out, false),
            Method::Cancel => self.cancel(key, now_ms, reply, out),
            Method::Bye => {
                self.remove(key);
                reply.simple(out, 200, b"OK");
            }
            Method::Register => self.register(msg, reply, out),
            Method::Options => reply.with(out, 200, b"OK", |o| {
                header(o, "Allow", ALLOW);
                header(o, "Accept", b"application/sdp");
            }),
            Method::Info | Method::Message | Method::Prack => reply.simple(out, 200, b"OK"),
            _ => reply.with(out, 501, b"Not Implemented", |o| header(o, "Allow", ALLOW)),
        }
    }

    /// 420 for a Require the responder does not support (it supports no extension), §8.2.2.3.
    fn unsupported_required(
        &self,
        msg: &Message<'_>,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) -> bool {
        let Some(value) = msg.header(HeaderName::Require) else {
            return false;
        };
        reply.with(out, 420, b"Bad Extension", |o| {
            header(o, "Unsupported", value)
        });
        true
    }

    /// Digest authentication when users are configured: false when a 401 or 400 was sent.
    fn authenticated(
        &mut self,
        msg: &Message<'_>,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) -> bool {
        let Some(auth) = &mut self.auth else {
            return true;
        };
        match auth.check_from(msg, HeaderName::Authorization, now_ms, reply.source()) {
            AuthOutcome::Authenticated { .. } => true,
            AuthOutcome::Challenge { stale } => {
                let auth = &*auth;
                reply.with(out, 401, b"Unauthorized", |o| {
                    auth.write_challenge(o, "WWW-Authenticate", stale, now_ms)
                });
                false
            }
            AuthOutcome::BadRequest(why) => {
                reply.simple(out, 400, format!("Bad Request ({why})").as_bytes());
                false
            }
            AuthOutcome::Locked => {
                reply.simple(out, 403, b"Forbidden (account locked)");
                false
            }
        }
    }

    /// An initial INVITE.
    fn invite(
        &mut self,
        msg: &Message<'_>,
        key: u64,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        if let Some(call) = self.calls.get(&key) {
            // A retransmission (§17.2.1): the ringing call rings again, an answered one
            // repeats its final response.
            match call.phase {
                Phase::Ringing => {
                    if self.settings.sends_trying() {
                        reply.simple(out, 100, b"Trying");
                    }
                    self.ringing(msg, reply, out);
                }
                Phase::Answered => out.push(&call.bytes, call.dst, call.socket),
                Phase::Held | Phase::Hanging => {}
            }
            return;
        }
        let status = self
            .settings
            .status_for(call_id_hash(msg.call_id().unwrap_or(b"")));
        if self.settings.sends_trying() {
            reply.simple(out, 100, b"Trying");
        }
        if self.settings.ring_ms > 0 {
            self.ringing(msg, reply, out);
            let timer = self.timers.insert(now_ms + self.settings.ring_ms, key);
            let call = Call {
                phase: Phase::Ringing,
                timer,
                bytes: msg.buf()[msg.start_offset()..msg.len()].to_vec(),
                bye: Vec::new(),
                dst: reply.destination(),
                bye_dst: reply.source(),
                src: reply.source(),
                socket: reply.socket(),
                status,
                interval: T1,
                give_up: 0,
            };
            self.calls.insert(key, call);
            return;
        }
        if status == 200 {
            self.ringing(msg, reply, out);
        }
        self.answer(msg, key, status, now_ms, reply, out);
    }

    /// 180 Ringing, with Contact and the Record-Route set: it creates an early dialog.
    fn ringing(&self, msg: &Message<'_>, reply: &mut Reply<'_, '_>, out: &mut Outbox) {
        let contact = self.contact(msg);
        reply.with(out, 180, b"Ringing", |o| {
            for rr in msg.header_all(HeaderName::RecordRoute) {
                header(o, "Record-Route", rr);
            }
            header(o, "Contact", &contact);
        });
    }

    /// Our Contact: `<sip:IP:PORT>` of the listen address, or the Request-URI's host when
    /// we listen on an unspecified address.
    fn contact(&self, msg: &Message<'_>) -> std::borrow::Cow<'_, [u8]> {
        if !self.local_contact.is_empty() {
            return std::borrow::Cow::Borrowed(&self.local_contact);
        }
        let mut c = Vec::with_capacity(48);
        c.extend_from_slice(b"<sip:");
        if self.local.ip().is_unspecified() {
            match msg.request_uri() {
                Ok(u) if !u.host.is_empty() => {
                    if u.host_kind == crate::sip::uri::HostKind::Ipv6 {
                        c.push(b'[');
                        c.extend_from_slice(u.host);
                        c.push(b']');
                    } else {
                        c.extend_from_slice(u.host);
                    }
                    if let Some(p) = u.port {
                        c.push(b':');
                        c.extend_from_slice(itoa::Buffer::new().format(p).as_bytes());
                    }
                }
                _ => c.extend_from_slice(b"127.0.0.1"),
            }
        } else {
            c.extend_from_slice(self.local.to_string().as_bytes());
        }
        c.push(b'>');
        std::borrow::Cow::Owned(c)
    }

    /// The IP our SDP names.
    fn media_ip(&self, msg: &Message<'_>) -> IpAddr {
        if !self.local.ip().is_unspecified() {
            return self.local.ip();
        }
        msg.request_uri()
            .ok()
            .and_then(|u| std::str::from_utf8(u.host).ok()?.parse().ok())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }

    /// 200 with Contact and an SDP answer to the request's offer (an INVITE without one gets
    /// an offer), and the Record-Route set when `record_route`.
    fn ok_with_sdp(
        &mut self,
        msg: &Message<'_>,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
        record_route: bool,
    ) {
        let offer = msg.body();
        let mut sdp = core::mem::take(&mut self.scratch);
        sdp.clear();
        let has_offer = !offer.is_empty();
        if has_offer || msg.method() == Some(Method::Invite) {
            let session = call_id_hash(msg.call_id().unwrap_or(b"")) >> 1;
            sdp::write_answer(&mut sdp, offer, self.media_ip(msg), session);
        }
        let contact = self.contact(msg);
        reply.with_body(
            out,
            200,
            b"OK",
            |o| {
                if record_route {
                    for rr in msg.header_all(HeaderName::RecordRoute) {
                        header(o, "Record-Route", rr);
                    }
                }
                header(o, "Contact", &contact);
                if !sdp.is_empty() {
                    header(o, "Content-Type", b"application/sdp");
                }
            },
            &sdp,
        );
        self.scratch = sdp;
    }

    /// Sends the final response of a new call and keeps it until the ACK.
    fn answer(
        &mut self,
        msg: &Message<'_>,
        key: u64,
        status: u16,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        if status == 200 {
            self.ok_with_sdp(msg, reply, out, true);
        } else {
            reply.simple(out, status, settings::reason_phrase(status));
        }
        let bytes = out
            .items()
            .last()
            .map(|d| out.bytes(d).to_vec())
            .unwrap_or_default();
        let (bye, bye_dst) = if status == 200 && self.settings.hold_ms > 0 {
            self.write_bye(msg, key, reply.source())
        } else {
            (Vec::new(), reply.source())
        };
        let timer = self.timers.insert(now_ms + T1, key);
        let call = Call {
            phase: Phase::Answered,
            timer,
            bytes,
            bye,
            dst: reply.destination(),
            bye_dst,
            src: reply.source(),
            socket: reply.socket(),
            status,
            interval: T1,
            give_up: now_ms + 64 * T1,
        };
        if let Some(old) = self.calls.insert(key, call) {
            self.timers.cancel(old.timer);
        }
    }

    /// The BYE that ends a held call (§15.1.1, §12.2.1.1): to the caller's Contact, through
    /// the Record-Route set in order, From our To with our tag. It goes to the first route's
    /// address, or back to where the INVITE came from (as responses do, which reaches a
    /// caller behind NAT).
    fn write_bye(&mut self, msg: &Message<'_>, key: u64, src: SocketAddr) -> (Vec<u8>, SocketAddr) {
        let mut b = Vec::with_capacity(512);
        let target = msg
            .contacts()
            .next()
            .and_then(|c| c.ok())
            .map(|c| c.uri_raw)
            .or_else(|| msg.from().ok().map(|f| f.uri_raw))
            .unwrap_or(b"sip:invalid");
        b.extend_from_slice(b"BYE ");
        b.extend_from_slice(target);
        b.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/UDP ");
        b.extend_from_slice(
            self.contact(msg)
                .strip_prefix(b"<sip:")
                .unwrap_or(b"")
                .strip_suffix(b">")
                .unwrap_or(b""),
        );
        b.extend_from_slice(b";rport;branch=");
        self.branch_seq += 1;
        write_branch(&mut b, self.shard, key, self.branch_seq);
        b.extend_from_slice(b"\r\n");
        let mut dst = src;
        let mut first = true;
        for rr in msg.header_all(HeaderName::RecordRoute) {
            header(&mut b, "Route", rr);
            if first {
                first = false;
                let hop = msg
                    .record_routes()
                    .next()
                    .and_then(|r| r.ok())
                    .and_then(|r| r.uri().ok())
                    .and_then(|u| uri_address(&u));
                if let Some(hop) = hop {
                    dst = hop;
                }
            }
        }
        b.extend_from_slice(b"Max-Forwards: 70\r\nFrom: ");
        b.extend_from_slice(msg.header(HeaderName::To).unwrap_or(b""));
        b.extend_from_slice(b";tag=");
        let mut tag = [0u8; 24];
        let len = write_tag(&mut tag, self.shard, key);
        b.extend_from_slice(&tag[..len]);
        b.extend_from_slice(b"\r\n");
        header(&mut b, "To", msg.header(HeaderName::From).unwrap_or(b""));
        header(&mut b, "Call-ID", msg.call_id().unwrap_or(b""));
        b.extend_from_slice(b"CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n");
        (b, dst)
    }

    /// CANCEL (§9.2): 200, and 487 to the INVITE if it still rings.
    fn cancel(&mut self, key: u64, now_ms: u64, reply: &mut Reply<'_, '_>, out: &mut Outbox) {
        let Some(call) = self.calls.get(&key) else {
            return reply.simple(out, 481, b"Call/Transaction Does Not Exist");
        };
        reply.simple(out, 200, b"OK");
        if call.phase != Phase::Ringing {
            return;
        }
        let call = self.calls.remove(&key).expect("looked up above");
        self.timers.cancel(call.timer);
        self.finish_ringing(call, key, 487, now_ms, out);
    }

    /// The ring time of `call` is over (or it was cancelled): its final response `status`.
    fn finish_ringing(&mut self, call: Call, key: u64, status: u16, now_ms: u64, out: &mut Outbox) {
        let Ok(invite) = Message::parse(&call.bytes) else {
            return;
        };
        let mut reply = Reply::new(
            &invite,
            call.src,
            call.socket,
            &mut self.tag_seq,
            self.shard,
        );
        let mut tag = [0u8; 24];
        let len = write_tag(&mut tag, self.shard, key);
        reply.set_to_tag(&tag[..len]);
        self.answer(&invite, key, status, now_ms, &mut reply, out);
    }

    /// ACK: ends the retransmission of a final response; a 200's call is then held (if a hold
    /// time is set) or forgotten. An ACK for nothing is absorbed.
    fn ack(&mut self, msg: &Message<'_>, now_ms: u64) {
        let key = match (msg.call_id(), msg.from()) {
            (Ok(id), Ok(from)) => call_key(id, from.tag().unwrap_or(b"")),
            _ => return self.stats.dropped(DropReason::Ack),
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return self.stats.dropped(DropReason::Ack);
        };
        if call.phase != Phase::Answered {
            return self.stats.dropped(DropReason::Ack);
        }
        self.timers.cancel(call.timer);
        if call.bye.is_empty() {
            self.calls.remove(&key);
            return;
        }
        call.phase = Phase::Held;
        call.bytes = Vec::new();
        call.timer = self.timers.insert(now_ms + self.settings.hold_ms, key);
    }

    /// REGISTER: 200 with the Contacts given and their expiry; nothing is stored.
    fn register(&mut self, msg: &Message<'_>, reply: &mut Reply<'_, '_>, out: &mut Outbox) {
        let default = msg.expires().ok().flatten().unwrap_or(3600);
        let mut contacts = core::mem::take(&mut self.scratch);
        contacts.clear();
        if !msg.contact_star() {
            for c in msg.contacts().filter_map(|c| c.ok()) {
                let expires = c.expires().unwrap_or(default);
                contacts.extend_from_slice(b"Contact: <");
                contacts.extend_from_slice(c.uri_raw);
                contacts.extend_from_slice(b">;expires=");
                contacts.extend_from_slice(itoa::Buffer::new().format(expires).as_bytes());
                contacts.extend_from_slice(b"\r\n");
            }
        }
        reply.with(out, 200, b"OK", |o| o.extend_from_slice(&contacts));
        self.scratch = contacts;
    }

    /// Runs expired timers: ring times, retransmissions, hold times.
    pub fn handle_timeout(&mut self, now_ms: u64, out: &mut Outbox) {
        if let Some(auth) = &mut self.auth {
            if now_ms >= self.next_auth_prune {
                auth.prune(now_ms);
                self.next_auth_prune = now_ms + AUTH_PRUNE_MS;
            }
        }
        let sent_before = out.len();
        let mut fired = core::mem::take(&mut self.fired);
        fired.clear();
        self.timers.poll(now_ms, &mut |key| fired.push(key));
        for &key in &fired {
            let Some(call) = self.calls.get_mut(&key) else {
                continue;
            };
            match call.phase {
                Phase::Ringing => {
                    let call = self.calls.remove(&key).expect("looked up above");
                    let status = call.status;
                    self.finish_ringing(call, key, status, now_ms, out);
                }
                Phase::Answered | Phase::Hanging => {
                    if now_ms >= call.give_up {
                        // Timer H / F: no ACK or no answer to our BYE; the call is over.
                        self.calls.remove(&key);
                        continue;
                    }
                    out.push(&call.bytes, call.dst, call.socket);
                    call.interval = (call.interval * 2).min(T2);
                    call.timer = self.timers.insert(now_ms + call.interval, key);
                }
                Phase::Held => {
                    call.phase = Phase::Hanging;
                    call.bytes = core::mem::take(&mut call.bye);
                    call.dst = call.bye_dst;
                    call.interval = T1;
                    call.give_up = now_ms + 64 * T1;
                    out.push(&call.bytes, call.dst, call.socket);
                    call.timer = self.timers.insert(now_ms + T1, key);
                }
            }
        }
        self.fired = fired;
        self.count_sent(out, sent_before);
    }
}
