//! What one shard does with each request and response after the dispatcher (`server/`) has
//! parsed it and found it is this shard's: RFC 3261 §16.3 request checks (Max-Forwards,
//! loops, Proxy-Require), §22.3 digest authentication of callers (407), §16.5 target
//! selection (the bindings of a user of our domain), the choice between proxying (§16.6,
//! `stateful.rs`), relaying statelessly (§16.11) and redirecting (§8.3, 302); §10.3 REGISTER
//! (domain check, digest auth, the registrar), §11 OPTIONS to the server, §8.2 UAS checks
//! (416, 420, 501 with Allow), and the NAT fix-ups of RFC 3581 on what is forwarded.

use super::reply::Reply;
use super::settings::{CoreConfig, Forking, Mode};
use super::stateful::{flow_destination, next_hop, uri_address, Fork, Handled, Proxy, Target};
use crate::auth::{AuthOutcome, Authenticator};
use crate::registrar::{Binding, Flow, Registrar, RegistrarConfig, ResponseCtx};
use crate::server::outbox::Outbox;
use crate::sip::write::write_with_fixed_via;
use crate::sip::{HeaderName, Message, Method, Scheme, Uri};
use crate::stats::{DropReason, ShardStats};
use std::net::SocketAddr;
use std::sync::Arc;

/// Methods this server handles (the Allow header): REGISTER and OPTIONS it answers itself,
/// the rest it proxies (every method it knows; an unknown one gets 501).
pub const ALLOW: &[u8] =
    b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, PUBLISH";
/// Option tags this server supports (the Supported header).
pub const SUPPORTED: &[u8] = b"path";

/// How often the nonce-count replay table drops expired nonces.
const AUTH_PRUNE_MS: u64 = 10_000;

/// One shard's SIP element: its registrar, its authenticator and its proxy, and what it does
/// with each request and response.
pub struct Element {
    pub(super) shard: usize,
    pub(super) cfg: Arc<CoreConfig>,
    pub(super) stats: Arc<ShardStats>,
    pub(super) tag_seq: u64,
    pub(super) auth: Option<Authenticator>,
    /// When the nonce-count table is next pruned.
    pub(super) next_auth_prune: u64,
    pub(super) registrar: Registrar,
    pub(super) proxy: Proxy,
    /// Scratch buffer for AOR keys.
    pub(super) key: Vec<u8>,
    /// Scratch: a request copied with its top Via fixed up before it is forwarded.
    pub(super) fixed_via_buf: Vec<u8>,
    /// Scratch: the same with its Contact fixed for NAT.
    pub(super) fixed_contact_buf: Vec<u8>,
    /// Our address as peers see it (where a group's member legs are sent, to come back).
    pub(super) local: SocketAddr,
    /// Round-robin groups: the member who starts the next call, by group.
    pub(super) round_robin: Vec<usize>,
    /// Shard 0: the trunks' health checks.
    pub(super) checker: Option<crate::routing::TrunkChecker>,
    /// Set by the shell while this shard is past its capacity: new requests for users get
    /// 503 (see [`Element::sheds`]).
    pub(super) overloaded: bool,
    /// What the shards share for edge security: here, the users' call counts.
    pub(super) board: Arc<crate::security::board::Board>,
    /// With a shared store: requests waiting for it (`super::lookup`).
    pub(super) lookups: Option<super::lookup::StoreLookups>,
}

impl Element {
    /// See [`crate::server::Core::new`].
    pub fn new(
        shard: usize,
        cfg: Arc<CoreConfig>,
        stats: Arc<ShardStats>,
        auth: Option<Authenticator>,
        local: &[crate::sip::Local],
    ) -> Element {
        let registrar = Registrar::new(registrar_config(&cfg));
        let local: Vec<crate::sip::Local> = if local.is_empty() {
            cfg.local_addrs.iter().map(|&a| a.into()).collect()
        } else {
            local.to_vec()
        };
        let proxy = Proxy::new(shard, &local, cfg.proxy.clone(), stats.clone());
        // Our UDP address: where trunk checks leave from and group legs come back to.
        let udp = local[proxy.default_socket() as usize].addr;
        let checker =
            (shard == 0).then(|| crate::routing::TrunkChecker::new(&cfg.routing, shard, &local, 0));
        Element {
            round_robin: vec![0; cfg.routing.groups.len()],
            checker,
            local: udp,
            shard,
            cfg,
            stats,
            tag_seq: 0,
            auth,
            next_auth_prune: 0,
            registrar,
            proxy,
            key: Vec::with_capacity(128),
            fixed_via_buf: Vec::new(),
            fixed_contact_buf: Vec::new(),
            overloaded: false,
            board: Arc::default(),
            lookups: None,
        }
    }

    /// The registrar, to change (the binding store: journal and restore at start).
    pub fn registrar_mut(&mut self) -> &mut Registrar {
        &mut self.registrar
    }

    /// Publishes the binding count (after bindings were put back at start).
    pub fn publish_bindings(&self) {
        self.stats
            .bindings
            .set(self.registrar.binding_count() as u64);
    }

    /// Shares the call counts of the toll-fraud limits with the other shards.
    pub fn share_board(&mut self, board: Arc<crate::security::board::Board>) {
        self.board = board;
    }

    /// The toll-fraud limits (RFC 3261 leaves them to the operator): a new INVITE of an
    /// authenticated `user` over its concurrent calls (486) or calls per minute (403) is
    /// refused. True when the call may go on. Emergency calls never come here.
    pub(super) fn call_allowed(
        &mut self,
        msg: &Message<'_>,
        user: &str,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) -> bool {
        let limits = self.cfg.security.calls;
        if !limits.enabled() || msg.method() != Some(Method::Invite) {
            return true;
        }
        let Some(call_id) = msg.header(HeaderName::CallId) else {
            return true;
        };
        let board = Arc::clone(&self.board);
        match self
            .proxy
            .calls
            .admit(call_id, user, &limits, &board.calls, now_ms)
        {
            Ok(()) => true,
            Err(refusal) => {
                let (status, reason) = refusal.response();
                tracing::warn!(
                    "call refused src={} user={} reason={}",
                    reply.source(),
                    crate::auth::failure::Escaped(user.as_bytes()),
                    match refusal {
                        crate::security::calls::CallRefusal::Concurrent => "concurrent-calls",
                        crate::security::calls::CallRefusal::Rate => "calls-per-minute",
                    }
                );
                reply.simple(out, status, reason);
                false
            }
        }
    }

    /// While `on`, new requests for users get 503 with Retry-After (overload control).
    pub fn set_overloaded(&mut self, on: bool) {
        self.overloaded = on;
    }

    /// True for a request to refuse with 503 (RFC 3261 §21.5.4) because this shard is past
    /// its capacity or holds its maximum of transactions: a new request that would start
    /// proxy work. What is already in progress goes on (in-dialog requests, retransmissions
    /// of a transaction held, CANCEL, ACK), and emergency calls are never refused. REGISTER
    /// and OPTIONS to the server are answered at about the cost of a 503, so they are not.
    fn sheds(&self, msg: &Message<'_>, ruri: &Uri<'_>) -> bool {
        let full = self.proxy.transactions() >= self.cfg.overload.max_transactions;
        if !(self.overloaded || full) {
            return false;
        }
        if msg.to().ok().and_then(|t| t.tag()).is_some() || self.proxy.has_server_transaction(msg) {
            return false;
        }
        !self.cfg.routing.is_emergency_user(ruri.user)
    }

    /// A reload: see [`crate::server::Core::reload`].
    pub fn reload(&mut self, cfg: Arc<CoreConfig>, users: Option<Arc<crate::auth::UserDb>>) {
        self.registrar.set_config(registrar_config(&cfg));
        self.proxy.set_settings(cfg.proxy.clone());
        if !Arc::ptr_eq(&cfg.routing, &self.cfg.routing) {
            // A new dial plan: calls in progress keep their targets; the checks start over
            // (the trunks' up/down state was carried over by name when the plan was built).
            self.round_robin = vec![0; cfg.routing.groups.len()];
            if let Some(c) = &mut self.checker {
                *c = crate::routing::TrunkChecker::new(
                    &cfg.routing,
                    self.shard,
                    self.proxy.locals(),
                    0,
                );
            }
        }
        if let Some(auth) = &mut self.auth {
            auth.reload_security(&cfg.security);
        }
        self.cfg = cfg;
        if let (Some(auth), Some(users)) = (&mut self.auth, users) {
            auth.replace_users(users);
        }
    }

    /// True when REGISTER needs credentials (a credential-less one may be challenged by any
    /// shard).
    pub fn challenges_registers(&self) -> bool {
        self.auth.is_some()
    }

    /// When [`Element::handle_timeout`] is next needed, in ms.
    pub fn next_timeout(&self) -> Option<u64> {
        let auth = self.auth.as_ref().map(|_| self.next_auth_prune);
        let checks = self
            .checker
            .as_ref()
            .and_then(|c| c.next_timeout(&self.cfg.routing));
        [
            auth,
            self.registrar.next_timeout(),
            self.proxy.next_timeout(),
            self.proxy.calls.next_timeout(),
            checks,
            self.next_lookup_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs expired timers: transactions, binding expiry and nonce-table pruning.
    pub fn handle_timeout(&mut self, now_ms: u64, out: &mut Outbox) {
        if self.proxy.next_timeout().is_some_and(|t| t <= now_ms) {
            self.proxy.handle_timeout(now_ms, out);
            self.stats
                .transactions
                .set(self.proxy.transactions() as u64);
        }
        if self.registrar.next_timeout().is_some_and(|t| t <= now_ms) {
            self.registrar.poll_expired(now_ms);
            self.stats
                .bindings
                .set(self.registrar.binding_count() as u64);
        }
        if let Some(auth) = &mut self.auth {
            if now_ms >= self.next_auth_prune {
                auth.prune(now_ms);
                self.next_auth_prune = now_ms + AUTH_PRUNE_MS;
            }
        }
        if let Some(c) = &mut self.checker {
            c.poll(&self.cfg.routing, now_ms, out);
        }
        self.proxy.calls.poll(now_ms);
        self.lookups_timed_out(now_ms, out);
    }

    /// The server stops: calls in progress get their call detail records now.
    pub fn close_calls(&mut self, now_ms: u64) {
        self.proxy.calls.close_all(now_ms);
    }

    /// What routing chose for the initial INVITE being handled, for its call record.
    pub(super) fn note_route(&mut self, route: &str) {
        if let Some(note) = self.proxy.calls.note() {
            if note.route.is_none() {
                note.route = Some(route.to_owned());
            }
        }
    }

    /// Moves the finished call detail records into `into`, each with the trunk it left
    /// through (its target is a trunk's address) or came in from (its source is one).
    pub fn take_records(&mut self, into: &mut Vec<crate::proxy::cdr::CallRecord>) {
        let from = into.len();
        self.proxy.calls.take_records(into);
        let plan = &self.cfg.routing;
        if plan.trunks.is_empty() {
            return;
        }
        for r in &mut into[from..] {
            let out = r
                .target
                .and_then(|t| plan.trunks.iter().find(|k| k.addr == t));
            let inbound = || {
                plan.inbound_trunk(r.source.ip())
                    .map(|i| &plan.trunks[i as usize])
            };
            if let Some(t) = out.or_else(inbound) {
                r.trunk = Some(t.name.to_string());
            }
        }
    }

    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// The shell could not deliver to `dst` over `socket`: requests waiting on it fail now
    /// ([`Proxy::transport_error`]).
    pub fn transport_error(
        &mut self,
        socket: u16,
        dst: std::net::SocketAddr,
        now_ms: u64,
        out: &mut Outbox,
    ) -> usize {
        self.proxy.transport_error(socket, dst, now_ms, out)
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// A response from downstream: relayed by the proxy, or dropped as stray.
    pub fn response(&mut self, msg: &Message<'_>, now_ms: u64, out: &mut Outbox) {
        if let Some(checker) = &mut self.checker {
            let branch = msg.top_via().ok().and_then(|v| v.branch());
            if let Some(b) = branch.filter(|b| crate::routing::TrunkChecker::is_check_branch(b)) {
                checker.response(&self.cfg.routing, b);
                return;
            }
        }
        // Responses are relayed: only what the proxy reads must be well-formed (§16.3).
        if msg.validate_for_proxy().is_err() || !self.proxy.response(msg, now_ms, out) {
            self.stats.dropped(DropReason::StrayResponse);
        }
    }

    /// A request this shard owns. `nonce_shard` is the shard whose nonce a challenge carries
    /// (this one, or the owner of a REGISTER challenged here on its behalf).
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        msg: &Message<'_>,
        method: Method,
        src: SocketAddr,
        socket: usize,
        now_ms: u64,
        nonce_shard: usize,
        out: &mut Outbox,
    ) {
        self.stats.request(method);
        if let Some(l) = &mut self.lookups {
            // Set by this request's digest check, if it has one.
            l.authenticated = None;
        }
        if method == Method::Ack {
            // ACK is never answered: the transaction of a non-2xx absorbs it, the ACK of a
            // 2xx goes on to the next hop.
            self.ack(msg, src, now_ms, out);
            return;
        }
        let cdr_attempt = method == Method::Invite
            && self.proxy.calls.cdr_on()
            && msg.to().ok().and_then(|t| t.tag()).is_none();
        if cdr_attempt {
            let ours = self.proxy.is_ours_addr(src);
            self.proxy.calls.attempt_starts(src, ours);
        }
        let mut reply = Reply::new(msg, src, socket, &mut self.tag_seq, self.shard);
        if self.proxy.proto_of(socket as u16).is_stream() {
            reply.over_stream();
        }
        // What we answer ourselves (REGISTER, OPTIONS) is checked in full; what we proxy,
        // only in what the proxy reads (§16.3 step 1: the rest goes on unchanged).
        let valid = match method {
            Method::Register | Method::Options => msg.validate(),
            _ => msg.validate_for_proxy(),
        };
        match valid {
            Err(e) => reply.simple(out, e.status(), e.reason().as_bytes()),
            Ok(()) => self.dispatch(msg, method, now_ms, nonce_shard, &mut reply, out),
        }
        if let Some(status) = reply.sent_status {
            self.stats.response_sent(status);
            if method == Method::Invite && status >= 300 {
                self.proxy.calls.rejected(msg, status, now_ms);
            }
        }
        if cdr_attempt {
            self.proxy.calls.attempt_handled();
        }
        self.stats
            .transactions
            .set(self.proxy.transactions() as u64);
    }

    fn dispatch(
        &mut self,
        msg: &Message<'_>,
        method: Method,
        now_ms: u64,
        nonce_shard: usize,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        let ruri = match msg.request_uri() {
            Ok(u) => u,
            Err(e) => return reply.simple(out, 400, e.reason().as_bytes()),
        };
        if !matches!(ruri.scheme, Scheme::Sip | Scheme::Sips | Scheme::Tel) {
            return reply.with(out, 416, b"Unsupported URI Scheme", |_| {});
        }
        // RFC 3261 §26.2.2 / RFC 5630: a sips request only travels over TLS; without a TLS
        // address there is no way to honour one (a REGISTER is answered, not forwarded).
        if ruri.scheme == Scheme::Sips
            && method != Method::Register
            && self.proxy.socket_for(crate::sip::Proto::Tls).is_none()
        {
            return reply.with(
                out,
                416,
                b"Unsupported URI Scheme (sips needs a TLS address here)",
                |_| {},
            );
        }
        match method {
            Method::Register => self.register(msg, &ruri, now_ms, nonce_shard, reply, out),
            Method::Options if ruri.user.is_none() => self.options(msg, reply, out),
            Method::Cancel if self.cfg.mode == Mode::Stateless => {
                // §16.11: a stateless proxy forwards the CANCEL where the INVITE went (same
                // branch); the response comes from downstream.
                if !self.relay_stateless_like_invite(msg, &ruri, reply.source(), now_ms, out) {
                    reply.simple(out, 481, b"Call/Transaction Does Not Exist");
                }
            }
            Method::Cancel => match self.proxy.cancel(msg, now_ms, out) {
                Some(status) => reply.simple(out, status, b"OK"),
                // §16.10: no response context; the CANCEL MUST be forwarded statelessly (its
                // INVITE may have gone on without us keeping state); 481 only if there is
                // nowhere to send it.
                None => {
                    if !self.relay_stateless_like_invite(msg, &ruri, reply.source(), now_ms, out) {
                        reply.simple(out, 481, b"Call/Transaction Does Not Exist");
                    }
                }
            },
            Method::Other => reply.with(out, 501, b"Not Implemented", |o| {
                crate::sip::write::header(o, "Allow", ALLOW)
            }),
            Method::Invite | Method::Update
                if self.cfg.security.require_srtp
                    && crate::security::srtp::refuses(
                        msg.header(HeaderName::ContentType),
                        msg.body(),
                    ) =>
            {
                reply.simple(out, 488, b"Not Acceptable Here (SRTP required)");
            }
            _ if self.sheds(msg, &ruri) => reply.overloaded(out, self.cfg.overload.retry_after_s),
            _ => {
                let fix = reply.via_fixup();
                let src = reply.source();
                // A dialog's remote target behind a NAT: its Contact gets the address the
                // request came from, so the other side's in-dialog requests reach it.
                let fix_contact =
                    crate::nat::contact_matters(msg) && crate::nat::behind_nat(msg, src);
                if !fix.add_received && !fix_contact {
                    return self.for_user(msg, &ruri, now_ms, reply, out);
                }
                // What we forward carries received/rport in the caller's Via (§18.2.1, RFC
                // 3581 §4), so that responses relayed by the Via alone reach it through NAT.
                let mut buf = core::mem::take(&mut self.fixed_via_buf);
                buf.clear();
                let written = if fix.add_received {
                    write_with_fixed_via(&mut buf, msg, fix)
                } else {
                    buf.extend_from_slice(&msg.buf()[msg.start_offset()..msg.len()]);
                    true
                };
                if written && fix_contact {
                    let mut fixed = core::mem::take(&mut self.fixed_contact_buf);
                    fixed.clear();
                    let changed = Message::parse(&buf)
                        .is_ok_and(|m| crate::nat::write_fixed_contact(&mut fixed, &m, src));
                    if changed {
                        core::mem::swap(&mut buf, &mut fixed);
                    }
                    self.fixed_contact_buf = fixed;
                }
                let fixed = written.then(|| Message::parse(&buf).ok()).flatten();
                match fixed.as_ref().map(|m| (m, m.request_uri())) {
                    Some((m, Ok(u))) => self.for_user(m, &u, now_ms, reply, out),
                    _ => self.for_user(msg, &ruri, now_ms, reply, out),
                }
                self.fixed_via_buf = buf;
            }
        }
    }

    /// Checks Require against what we support (RFC 3261 §8.2.2.3); answers 420 if needed.
    fn unsupported_required(
        &self,
        msg: &Message<'_>,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) -> bool {
        let mut unsupported: Vec<&[u8]> = Vec::new();
        for tag in msg.option_tags(HeaderName::Require).flatten() {
            let known = SUPPORTED
                .split(|&c| c == b',')
                .any(|s| crate::sip::scan::trim(s).eq_ignore_ascii_case(tag));
            if !known {
                unsupported.push(tag);
            }
        }
        if unsupported.is_empty() {
            return false;
        }
        reply.with(out, 420, b"Bad Extension", |o| {
            crate::sip::write::header(o, "Unsupported", &unsupported.join(&b", "[..]))
        });
        true
    }

    /// OPTIONS addressed to the server (RFC 3261 §11.2).
    fn options(&mut self, msg: &Message<'_>, reply: &mut Reply<'_, '_>, out: &mut Outbox) {
        if self.unsupported_required(msg, reply, out) {
            return;
        }
        reply.with(out, 200, b"OK", |o| {
            crate::sip::write::header(o, "Allow", ALLOW);
            crate::sip::write::header(o, "Accept", b"application/sdp");
            crate::sip::write::header(o, "Supported", SUPPORTED);
        });
    }

    /// REGISTER (RFC 3261 §10.3).
    /// A REGISTER (RFC 3261 §10.3). `nonce_shard` is the shard that owns its AOR: this one,
    /// or another for which a credential-less REGISTER is challenged here (`challenge_here`).
    fn register(
        &mut self,
        msg: &Message<'_>,
        ruri: &Uri<'_>,
        now_ms: u64,
        nonce_shard: usize,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        if !self.cfg.is_our_host(ruri.host) {
            return reply.simple(out, 403, b"Forbidden (domain not served here)");
        }
        // validate() has checked that To parses, URI included.
        let Ok(to) = msg.to_uri() else {
            return reply.simple(out, 400, b"Bad Request (malformed To)");
        };
        if !to.is_sip() {
            return reply.simple(out, 400, b"Bad Request (To is not a SIP or SIPS URI)");
        }
        if !self.cfg.is_our_host(to.host) {
            return reply.simple(out, 403, b"Forbidden (domain not served here)");
        }
        if self.unsupported_required(msg, reply, out) {
            return;
        }
        if let Some(auth) = &mut self.auth {
            match auth.check_from(msg, HeaderName::Authorization, now_ms, reply.source()) {
                // Only credential-less REGISTERs stay on a shard that does not own the AOR,
                // and those are challenged: never reached.
                AuthOutcome::Authenticated { .. } if nonce_shard != self.shard => {
                    return reply.simple(out, 500, b"Server Internal Error (wrong shard)");
                }
                AuthOutcome::Authenticated { user } => {
                    let own = to
                        .user
                        .is_some_and(|u| crate::sip::uri::eq_unescaped(u, user.as_bytes(), false));
                    if self.cfg.registrar.match_auth_user && !own {
                        return reply.simple(out, 403, b"Forbidden (user does not own this AOR)");
                    }
                }
                AuthOutcome::Challenge { stale } => {
                    let auth = &*auth;
                    return reply.with(out, 401, b"Unauthorized", |o| {
                        auth.write_challenge_for(nonce_shard, o, "WWW-Authenticate", stale, now_ms)
                    });
                }
                AuthOutcome::BadRequest(why) => {
                    return reply.simple(out, 400, format!("Bad Request ({why})").as_bytes())
                }
                AuthOutcome::Locked => {
                    return reply.simple(out, 403, b"Forbidden (account locked)");
                }
            }
        }
        let ctx = ResponseCtx {
            to_tag: reply.to_tag(),
            via_fixup: Some(reply.via_fixup()),
        };
        let socket = reply.socket() as u16;
        let flow = Flow {
            addr: reply.source(),
            nat: crate::nat::behind_nat(msg, reply.source()),
            socket,
            stream: self.proxy.proto_of(socket).is_stream(),
        };
        let (buf, start) = out.begin();
        let outcome = self.registrar.handle_register(msg, flow, now_ms, &ctx, buf);
        out.commit(start, reply.destination(), reply.socket());
        if outcome.status == 200 && tracing::enabled!(tracing::Level::INFO) {
            log_registration(msg, flow, outcome.bindings);
        }
        reply.sent(outcome.status);
        self.stats
            .bindings
            .set(self.registrar.binding_count() as u64);
    }

    /// The ACK of a request: absorbed by the INVITE transaction it acknowledges (non-2xx), or
    /// relayed statelessly to the next hop (2xx, §16.11 / §13.2.2.4).
    fn ack(&mut self, msg: &Message<'_>, src: SocketAddr, now_ms: u64, out: &mut Outbox) {
        if msg.validate_for_proxy().is_err() {
            self.stats.dropped(DropReason::Malformed);
            return;
        }
        if self.proxy.absorb(msg, now_ms, out).is_some() {
            return;
        }
        match self.in_dialog_destination(msg, src) {
            Some(dst) if !self.proxy.is_ours_addr(dst.0) => {
                self.proxy.relay_stateless(msg, None, dst, out);
            }
            _ => {
                // §16.11: in stateless mode the ACK of a non-2xx (Request-URI of the INVITE)
                // goes where the INVITE went.
                let relayed = self.cfg.mode == Mode::Stateless
                    && msg.request_uri().is_ok_and(|ruri| {
                        self.relay_stateless_like_invite(msg, &ruri, src, now_ms, out)
                    });
                if !relayed {
                    self.stats.dropped(DropReason::Ack)
                }
            }
        }
    }

    /// Forwards a CANCEL or an ACK statelessly (§16.11, and §16.10 for a CANCEL without a
    /// response context) to its next hop if that is elsewhere, else to the target its INVITE
    /// was (or would have been) forwarded to (the binding of highest q,
    /// as [`Element::for_user`] chooses), with the branch derived from the incoming one like the
    /// INVITE's. Returns false if there is nowhere to send it.
    fn relay_stateless_like_invite(
        &mut self,
        msg: &Message<'_>,
        ruri: &Uri<'_>,
        src: SocketAddr,
        now_ms: u64,
        out: &mut Outbox,
    ) -> bool {
        if let Some(dst) = self.in_dialog_destination(msg, src) {
            if !self.proxy.is_ours_addr(dst.0) {
                return self.proxy.relay_stateless(msg, None, dst, out) == Handled::Relayed;
            }
        }
        if !ruri.is_sip() || !self.cfg.is_our_host(ruri.host) {
            return false;
        }
        self.key.clear();
        self.registrar.write_aor_key(ruri, &mut self.key);
        let mut bindings: Vec<&crate::registrar::Binding> =
            self.registrar.lookup(&self.key, now_ms).collect();
        bindings.sort_by_key(|b| std::cmp::Reverse(b.q()));
        let Some(b) = bindings.first() else {
            return false;
        };
        let t = binding_target(b, &self.proxy);
        self.proxy
            .relay_stateless(msg, Some(t.uri), (t.dst, t.socket), out)
            == Handled::Relayed
    }

    /// Where a request goes by its Route set and Request-URI, and the local socket it leaves
    /// from: a flow named in our Record-Route (unless it comes from that flow), else the next
    /// hop (§16.12) over the transport its URI names.
    fn in_dialog_destination(
        &self,
        msg: &Message<'_>,
        src: SocketAddr,
    ) -> Option<(SocketAddr, u16)> {
        if msg.header(HeaderName::Route).is_some() {
            if let Some(flow) = flow_destination(msg, &self.proxy, src) {
                return Some(flow);
            }
        }
        let (u, _) = next_hop(msg, &self.proxy)?;
        Some((uri_address(&u)?, self.proxy.socket_for_uri(&u)?))
    }

    /// Digest-authenticates a request from one of our users (RFC 3261 §22.3, 407). None
    /// when a response was sent instead; Some(None) without authentication configured;
    /// Some(Some(user)) for an authenticated user (its name only when `want_user`).
    pub(super) fn proxy_authorized(
        &mut self,
        msg: &Message<'_>,
        now_ms: u64,
        want_user: bool,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) -> Option<Option<Box<str>>> {
        let Some(auth) = &mut self.auth else {
            return Some(None);
        };
        if let Some(l) = &mut self.lookups {
            // A request resumed after a store lookup was authenticated before it waited.
            if let Some(user) = l.resumed_user.take() {
                if let Some(note) = self.proxy.calls.note() {
                    note.user = Some(user.clone());
                }
                return Some(want_user.then_some(user));
            }
            // A retransmission of a request waiting for the store waits with it: checked
            // again, its used nonce count would get it a 407.
            if l.is_parked(msg) {
                return None;
            }
        }
        match auth.check_from(msg, HeaderName::ProxyAuthorization, now_ms, reply.source()) {
            AuthOutcome::Authenticated { user } => {
                if let Some(note) = self.proxy.calls.note() {
                    note.user = Some(user.as_str().into());
                }
                if let Some(l) = &mut self.lookups {
                    l.authenticated = Some(user.as_str().into());
                }
                let from_user = msg
                    .from()
                    .ok()
                    .and_then(|f| f.uri().ok())
                    .and_then(|u| u.user);
                if from_user
                    .is_some_and(|u| crate::sip::uri::eq_unescaped(u, user.as_bytes(), false))
                {
                    Some(want_user.then(|| user.into()))
                } else {
                    reply.simple(
                        out,
                        403,
                        b"Forbidden (From does not match the authenticated user)",
                    );
                    None
                }
            }
            AuthOutcome::Challenge { stale } => {
                let auth = &*auth;
                reply.with(out, 407, b"Proxy Authentication Required", |o| {
                    auth.write_challenge(o, "Proxy-Authenticate", stale, now_ms)
                });
                None
            }
            AuthOutcome::BadRequest(why) => {
                reply.simple(out, 400, format!("Bad Request ({why})").as_bytes());
                None
            }
            AuthOutcome::Locked => {
                reply.simple(out, 403, b"Forbidden (account locked)");
                None
            }
        }
    }

    /// A request for a user (INVITE, MESSAGE, OPTIONS to a user, BYE in a dialog, ...):
    /// checked (§16.3), its caller authenticated, its targets chosen (§16.5: the bindings of
    /// a user, or what the dial plan says, `route.rs`) and then proxied (§16.6), relayed
    /// statelessly (§16.11), redirected (§8.3) or refused.
    fn for_user(
        &mut self,
        msg: &Message<'_>,
        ruri: &Uri<'_>,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        if self.proxy.absorb(msg, now_ms, out).is_some() {
            return;
        }
        if msg.max_forwards().ok().flatten() == Some(0) {
            return reply.simple(out, 483, b"Too Many Hops");
        }
        // §16.3 item 4: our own Via with this request's loop hash means it came back unchanged.
        if self.proxy.loop_detected(msg) {
            return reply.simple(out, 482, b"Loop Detected");
        }
        let proxy_require: Vec<&[u8]> = msg
            .option_tags(HeaderName::ProxyRequire)
            .flatten()
            .collect();
        if !proxy_require.is_empty() {
            return reply.with(out, 420, b"Bad Extension", |o| {
                crate::sip::write::header(o, "Unsupported", &proxy_require.join(&b", "[..]))
            });
        }
        if msg.to().ok().and_then(|t| t.tag()).is_some() {
            return self.in_dialog(msg, now_ms, reply, out);
        }
        if let Some(flow) = self.peer_flow(msg, reply.source()) {
            return self.forward_down_peer_flow(msg, flow, now_ms, reply, out);
        }
        if !ruri.is_sip() || !self.cfg.is_our_host(ruri.host) {
            return reply.simple(out, 403, b"Forbidden (relaying denied)");
        }
        if !self.cfg.routing.is_empty() {
            return self.routed(msg, ruri, now_ms, reply, out);
        }
        let want_user = self.cfg.security.calls.enabled();
        let Some(user) = self.proxy_authorized(msg, now_ms, want_user, reply, out) else {
            return;
        };
        if let Some(user) = user {
            if !self.call_allowed(msg, &user, now_ms, reply, out) {
                return;
            }
        }
        self.note_route("user");
        if !self.forward_to_bindings(
            msg,
            ruri,
            &Fork::bindings(&self.cfg.proxy),
            now_ms,
            reply,
            out,
        ) {
            // With a shared store, an AOR never heard of here is asked about first.
            if self.park_for_aor(msg, ruri, reply, now_ms) {
                return;
            }
            // With a user list, a user not in it does not exist (404); a known user with no
            // binding is only unreachable now (480).
            if self.auth.as_ref().is_some_and(|a| !knows_user(a, ruri)) {
                return reply.simple(out, 404, b"Not Found");
            }
            reply.simple(out, 480, b"Temporarily Unavailable");
        }
    }

    /// The flow a request from another node of the cluster names in its top Route, ours
    /// (the Path this node gave a phone's binding in the shared store: RFC 3327 with an
    /// RFC 5626 flow token), with the socket that reaches it. None for anyone else: only
    /// the nodes that read the store may send a request down a flow without digest.
    fn peer_flow(&self, msg: &Message<'_>, src: SocketAddr) -> Option<(SocketAddr, u16)> {
        if !self.registrar.is_peer(src) {
            return None;
        }
        let top = msg.top_route_uri()?;
        if !self.proxy.is_ours(&top) {
            return None;
        }
        let (proto, dst) = crate::nat::flow_token(&top)?;
        Some((dst, self.proxy.socket_for(proto)?))
    }

    /// Forwards a request from another node down the flow of a phone registered here; our
    /// Record-Route names the flow so that the dialog's requests take it too.
    fn forward_down_peer_flow(
        &mut self,
        msg: &Message<'_>,
        (dst, socket): (SocketAddr, u16),
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        self.note_route("peer");
        let fork = Fork {
            record_route: true,
            ..Fork::next_hop()
        };
        self.forward_to_hop(msg, (dst, socket), true, &fork, now_ms, reply, out);
    }

    /// Sends a request on to one hop (`dst` over local `socket`): statelessly in stateless
    /// mode (§16.11: no transaction state), else through a transaction. `flow`: the hop is a
    /// UA's flow, which our Record-Route then names.
    #[allow(clippy::too_many_arguments)]
    fn forward_to_hop(
        &mut self,
        msg: &Message<'_>,
        (dst, socket): (SocketAddr, u16),
        flow: bool,
        fork: &Fork<'_>,
        now_ms: u64,
        reply: &Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        if self.cfg.mode == Mode::Stateless {
            self.proxy.relay_stateless(msg, None, (dst, socket), out);
            return;
        }
        let target = [Target {
            uri: b"",
            dst,
            q: crate::registrar::DEFAULT_Q,
            group: 0,
            flow,
            socket,
            paths: crate::registrar::PathIter::empty(),
        }];
        let (response_dst, in_socket) = (reply.destination(), reply.socket());
        self.proxy
            .forward(msg, response_dst, in_socket, &target, fork, now_ms, out);
    }

    /// An in-dialog request: loose routing to the next hop (§16.12).
    fn in_dialog(
        &mut self,
        msg: &Message<'_>,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        let Some((dst, socket)) = self.in_dialog_destination(msg, reply.source()) else {
            return reply.simple(out, 404, b"Not Found (no route for this dialog)");
        };
        if self.proxy.is_ours_addr(dst) {
            if msg.header(HeaderName::Route).is_none() {
                // No Route brought it and its Request-URI names us: a dialog we never knew
                // (a UA ending a call that never connected), not a loop.
                return reply.simple(out, 481, b"Call/Transaction Does Not Exist");
            }
            return reply.simple(out, 482, b"Loop Detected");
        }
        match msg.method() {
            Some(Method::Bye) => {
                let call_id = self.proxy.canonical_call_id(msg);
                self.proxy.calls.bye(msg, &call_id, now_ms);
            }
            Some(Method::Invite | Method::Update) if self.proxy.calls.cdr_on() => {
                let call_id = self.proxy.canonical_call_id(msg);
                self.proxy.calls.refresh(msg, &call_id, now_ms);
            }
            _ => {}
        }
        self.forward_to_hop(
            msg,
            (dst, socket),
            false,
            &Fork::next_hop(),
            now_ms,
            reply,
            out,
        );
    }

    /// Sends the request to every current binding of the AOR `aor` (highest q first; in
    /// groups of equal q with sequential forking). False if it has none (nothing was sent).
    pub(super) fn forward_to_bindings(
        &mut self,
        msg: &Message<'_>,
        aor: &Uri<'_>,
        fork: &Fork<'_>,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) -> bool {
        self.key.clear();
        self.registrar.write_aor_key(aor, &mut self.key);
        let mut bindings: Vec<&crate::registrar::Binding> =
            self.registrar.lookup(&self.key, now_ms).collect();
        if bindings.is_empty() {
            return false;
        }
        // Highest q first (§16.6: a proxy may use q-values to order targets).
        bindings.sort_by_key(|b| std::cmp::Reverse(b.q()));
        let sequential = self.cfg.proxy.forking == Forking::Sequential;
        let mut group = 0u16;
        let mut last_q = bindings[0].q();
        let mut targets: Vec<Target<'_>> = bindings
            .iter()
            .map(|b| {
                if sequential && b.q() != last_q {
                    group += 1;
                    last_q = b.q();
                }
                Target {
                    group,
                    ..binding_target(b, &self.proxy)
                }
            })
            .collect();
        // A sips request never leaves over an unencrypted hop (RFC 5630 §3.1.3): only the
        // bindings reached over TLS.
        if msg.request_uri().is_ok_and(|u| u.scheme == Scheme::Sips) {
            let proxy = &self.proxy;
            targets.retain(|t| proxy.proto_of(t.socket).is_secure());
            if targets.is_empty() {
                reply.simple(
                    out,
                    480,
                    b"Temporarily Unavailable (no TLS connection to this user for a sips request)",
                );
                return true;
            }
        }
        deliver(
            &mut self.proxy,
            self.cfg.mode,
            msg,
            &targets,
            fork,
            now_ms,
            reply,
            out,
        );
        true
    }
}

/// Sends a request to its targets as the mode says: a 302 listing them (redirect, §8.3), the
/// first one statelessly (§16.11), or statefully on every target (§16.6).
#[allow(clippy::too_many_arguments)]
pub(super) fn deliver(
    proxy: &mut Proxy,
    mode: Mode,
    msg: &Message<'_>,
    targets: &[Target<'_>],
    fork: &Fork<'_>,
    now_ms: u64,
    reply: &mut Reply<'_, '_>,
    out: &mut Outbox,
) {
    let Some(first) = targets.first() else {
        return reply.simple(out, 480, b"Temporarily Unavailable");
    };
    match mode {
        Mode::Redirect => reply.with(out, 302, b"Moved Temporarily", |o| {
            // RFC 3261 §8.3: 302 with the targets as Contacts.
            for t in targets {
                o.extend_from_slice(b"Contact: <");
                o.extend_from_slice(t.uri);
                o.push(b'>');
                if t.q != crate::registrar::DEFAULT_Q {
                    o.extend_from_slice(b";q=");
                    crate::registrar::write_qvalue(o, t.q);
                }
                o.extend_from_slice(b"\r\n");
            }
        }),
        Mode::Stateless => {
            // §16.11: no transaction state; the first (best) target only.
            proxy.relay_stateless(msg, Some(first.uri), (first.dst, first.socket), out);
        }
        // The dispatcher hands every request of responder mode to the responder.
        Mode::Proxy | Mode::Responder => {
            // The proxy counts what it sends itself (its answers go through its transactions).
            let (response_dst, in_socket) = (reply.destination(), reply.socket());
            proxy.forward(msg, response_dst, in_socket, targets, fork, now_ms, out);
        }
    }
}

/// True if the Request-URI's user (unescaped) is in the authenticator's user list.
pub(super) fn knows_user(auth: &Authenticator, ruri: &Uri<'_>) -> bool {
    let Some(user) = ruri.user else {
        return false;
    };
    if !user.contains(&b'%') {
        return auth.users().get(user).is_some();
    }
    let name: Vec<u8> = crate::sip::uri::Unescape::new(user).collect();
    auth.users().get(&name).is_some()
}

/// Where requests for a binding go: the flow it registered on when it came through a NAT,
/// over a connection or is an RFC 5626 outbound flow (over the socket it came in on), else
/// its Contact address (an IP literal; else the source) over the transport it names.
pub(super) fn binding_target<'b>(b: &'b Binding, proxy: &Proxy) -> Target<'b> {
    // Registered through a Path (RFC 3327 §5.3): to its first hop, which takes it on.
    if let Some((dst, socket)) = b.paths().next().and_then(|p| first_hop(p, proxy)) {
        return Target {
            uri: b.contact_uri(),
            dst,
            q: b.q(),
            group: 0,
            flow: false,
            socket,
            paths: b.paths(),
        };
    }
    let flow = b.reached_by_flow();
    let contact = Uri::parse(b.contact_uri()).ok();
    let (dst, socket) = if flow {
        (b.source(), b.socket())
    } else {
        let dst = contact.as_ref().and_then(uri_address);
        let socket = contact.as_ref().and_then(|u| proxy.socket_for_uri(u));
        (
            dst.unwrap_or_else(|| b.source()),
            socket.unwrap_or(proxy.default_socket()),
        )
    };
    Target {
        uri: b.contact_uri(),
        dst,
        q: b.q(),
        group: 0,
        flow,
        socket,
        paths: crate::registrar::PathIter::empty(),
    }
}

/// The address and local socket of a Path value's URI (a name-addr; None: not a SIP URI
/// with an IP address, or no socket for its transport).
fn first_hop(path: &[u8], proxy: &Proxy) -> Option<(SocketAddr, u16)> {
    let value = path.split(|&c| c == b',').next()?;
    let na = crate::sip::NameAddr::parse(value.trim_ascii()).ok()?;
    let uri = na.uri().ok()?;
    Some((uri_address(&uri)?, proxy.socket_for_uri(&uri)?))
}

/// The info line of an accepted REGISTER: the AOR, each Contact as sent (with its expires
/// parameter), the Expires header, where it came from, whether through a NAT, and how many
/// bindings the AOR has now (0: unregistered).
fn log_registration(msg: &Message<'_>, flow: Flow, bindings: u16) {
    let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or(b"-")).into_owned();
    let aor = text(msg.to().ok().map(|t| t.uri_raw));
    let contacts: Vec<&[u8]> = msg.header_all(HeaderName::Contact).collect();
    let contact = if contacts.is_empty() {
        "-".to_owned()
    } else {
        String::from_utf8_lossy(&contacts.join(&b", "[..])).into_owned()
    };
    let expires = text(msg.header(HeaderName::Expires));
    let what = if bindings == 0 {
        "unregistered"
    } else if contacts.is_empty() {
        "bindings queried"
    } else {
        "registered"
    };
    // Wire text goes in with Debug (quoted, control characters escaped): a folded header
    // must not start a new log line (fail2ban reads them).
    tracing::info!(
        aor = ?aor, contact = ?contact, expires = ?expires, src = %flow.addr,
        nat = flow.nat, bindings, "{what}"
    );
}

/// The registrar's settings from the core's.
fn registrar_config(cfg: &CoreConfig) -> RegistrarConfig {
    let r = &cfg.registrar;
    RegistrarConfig {
        default_expires: r.default_expires,
        min_expires: r.min_expires,
        max_expires: r.max_expires,
        max_contacts_per_aor: r.max_contacts,
        canonical_domain: cfg.domains.first().cloned(),
    }
}
