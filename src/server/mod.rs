//! The per-shard protocol core (sans-I/O): takes one datagram with its source and the current
//! time, decides which shard owns it, and writes the responses into an [`Outbox`]. It owns the
//! shard's registrar and authenticator; it never touches a socket, thread or clock.
//!
//! RFC 3261 behaviour implemented here: §8.2 UAS request checks (416, 420, 501 with Allow),
//! §10.3 registrar dispatch (domain check, digest auth, AOR ownership), §11 OPTIONS, §18.2.2
//! response destination with RFC 3581 rport, §21.4.1 400 with a reason naming the problem.

pub mod outbox;
mod reply;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_nat;

use crate::auth::{AuthOutcome, Authenticator};
use crate::config::{Mode, ProxySettings, RegistrarSettings};
use crate::metrics::{DropReason, ShardStats};
use crate::proxy::stateful::{
    flow_destination, next_hop, shard_of_branch, uri_address, Handled, Proxy, Target,
};
use crate::registrar::{Binding, Flow, Registrar, RegistrarConfig, ResponseCtx};
use crate::shard::ownership::{aor_hash, owner_shard};
use crate::sip::write::write_with_fixed_via;
use crate::sip::{Framing, HeaderName, Limits, Message, Method, Scheme, Uri};
use outbox::Outbox;
use reply::Reply;
use std::net::SocketAddr;
use std::sync::Arc;

pub use reply::response_destination;

/// Methods this server handles (the Allow header): REGISTER and OPTIONS it answers itself,
/// the rest it proxies (every method it knows; an unknown one gets 501).
pub const ALLOW: &[u8] =
    b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, PUBLISH";
/// Option tags this server supports (the Supported header).
pub const SUPPORTED: &[u8] = b"path";

/// Settings shared by every shard's core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Domains we are responsible for, lower case.
    pub domains: Vec<String>,
    /// Our listen addresses (their IPs count as our domain too).
    pub local_addrs: Vec<SocketAddr>,
    pub shards: usize,
    pub mode: Mode,
    pub registrar: RegistrarSettings,
    pub proxy: ProxySettings,
}

impl CoreConfig {
    /// True if `host` (from a URI) names this server: a configured domain or a listen IP.
    pub fn is_our_host(&self, host: &[u8]) -> bool {
        if self
            .domains
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(host))
        {
            return true;
        }
        let Ok(text) = std::str::from_utf8(host) else {
            return false;
        };
        let Ok(ip) = text.parse::<std::net::IpAddr>() else {
            return false;
        };
        self.local_addrs
            .iter()
            .any(|a| a.ip() == ip || (a.ip().is_unspecified() && ip.is_loopback()))
    }
}

/// What the shell does with a datagram after the core looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handled here (responses, if any, are in the outbox).
    Done,
    /// Another shard owns it: move the datagram there.
    HandOff(usize),
}

/// One shard's protocol state.
pub struct Core {
    shard: usize,
    cfg: Arc<CoreConfig>,
    stats: Arc<ShardStats>,
    tag_seq: u64,
    auth: Option<Authenticator>,
    /// When the nonce-count table is next pruned.
    next_auth_prune: u64,
    registrar: Registrar,
    proxy: Proxy,
    /// Scratch buffer for AOR keys.
    key: Vec<u8>,
    /// Scratch: a request copied with its top Via fixed up before it is forwarded.
    fixed_via_buf: Vec<u8>,
    /// Scratch: the same with its Contact fixed for NAT.
    fixed_contact_buf: Vec<u8>,
}

/// How often the nonce-count replay table drops expired nonces.
const AUTH_PRUNE_MS: u64 = 10_000;

impl Core {
    /// `local` lists the listen addresses as bound (empty: `cfg.local_addrs`); the first is
    /// the one our Via and Record-Route name. Every shard names the same address: the server
    /// is one address to the world, and a response or in-dialog request that reaches another
    /// shard finds its owner by the shard id in the branch or the Record-Route.
    pub fn new(
        shard: usize,
        cfg: Arc<CoreConfig>,
        stats: Arc<ShardStats>,
        auth: Option<Authenticator>,
        local: &[SocketAddr],
    ) -> Core {
        let registrar = Registrar::new(registrar_config(&cfg));
        let local: Vec<SocketAddr> = if local.is_empty() {
            cfg.local_addrs.clone()
        } else {
            local.to_vec()
        };
        let proxy = Proxy::new(
            shard,
            local[0],
            0,
            local.clone(),
            cfg.proxy.clone(),
            stats.clone(),
        );
        Core {
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
        }
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Applies a reload (SIGHUP): the registrar and proxy settings of `cfg` (the rest of it
    /// must equal the running configuration: listen addresses, domains and mode need a
    /// restart) and, when given, new users. Bindings, transactions and nonces stay.
    pub fn reload(&mut self, cfg: Arc<CoreConfig>, users: Option<Arc<crate::auth::UserDb>>) {
        self.registrar.set_config(registrar_config(&cfg));
        self.proxy.set_settings(cfg.proxy.clone());
        self.cfg = cfg;
        if let (Some(auth), Some(users)) = (&mut self.auth, users) {
            auth.replace_users(users);
        }
    }

    /// When the core next needs [`Core::handle_timeout`], in ms.
    pub fn next_timeout(&self) -> Option<u64> {
        let auth = self.auth.as_ref().map(|_| self.next_auth_prune);
        [
            auth,
            self.registrar.next_timeout(),
            self.proxy.next_timeout(),
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
    }

    /// The shard's registrar (for tests and the proxy).
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// The shard's proxy (for tests: its state sizes).
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The shard that owns this request: the To AOR for REGISTER, the Request-URI AOR for
    /// other requests. None when it cannot be told (then it is handled where it arrived).
    fn owner(&self, msg: &Message<'_>) -> Option<usize> {
        if self.cfg.shards <= 1 {
            return None;
        }
        let Some(method) = msg.method() else {
            // A response on the shared port: the shard that sent the request wrote its id
            // into the branch.
            let via = msg.top_via().ok()?;
            return shard_of_branch(via.branch()?);
        };
        if msg.to().ok().and_then(|t| t.tag()).is_some() {
            // In-dialog: the shard that record-routed named itself in the Route (`ss=`).
            let ss = msg
                .routes()
                .next()
                .and_then(|r| r.ok())
                .and_then(|r| r.uri().ok())
                .and_then(|u| u.param("ss").flatten());
            if let Some(ss) = ss {
                return std::str::from_utf8(ss)
                    .ok()?
                    .parse()
                    .ok()
                    .filter(|&s| s < self.cfg.shards);
            }
            // No Route of ours: the ACK of a non-2xx final (§17.1.1.3) has the Request-URI
            // of its INVITE and no Route, so the AOR below finds the shard holding the INVITE
            // transaction that absorbs it.
        }
        let hash = match method {
            Method::Register => aor_hash(&msg.to_uri().ok()?)?,
            _ => aor_hash(&msg.request_uri().ok()?)?,
        };
        Some(owner_shard(hash, self.cfg.shards))
    }

    /// True for a request another shard owns that this one can answer itself, in full: a
    /// REGISTER without credentials, when registration needs them. Every check before the
    /// challenge is stateless, and the challenge is too: its nonce is issued for the owner,
    /// where the retry with credentials goes. Half the hand-offs of digest registration go.
    fn challenge_here(&self, msg: &Message<'_>) -> bool {
        self.auth.is_some()
            && msg.method() == Some(Method::Register)
            && msg.header(HeaderName::Authorization).is_none()
    }

    /// Handles one datagram. `handed_off` is true when another shard already routed it here.
    pub fn handle(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        socket: usize,
        now_ms: u64,
        handed_off: bool,
        out: &mut Outbox,
    ) -> Disposition {
        if data.first().is_some_and(|&b| b < 2) {
            // No SIP message starts with byte 0 or 1: a STUN keepalive (RFC 5626 §4.4.2).
            let (buf, start) = out.begin();
            if crate::nat::stun::answer(data, src, buf) {
                out.commit(start, src, socket);
                self.stats.dropped(DropReason::KeepAlive);
            } else {
                out.abort(start);
                self.stats.dropped(DropReason::Malformed);
            }
            return Disposition::Done;
        }
        if data.iter().all(|c| c.is_ascii_whitespace()) {
            // A CRLF keepalive: a double CRLF ping gets its CRLF pong (RFC 5626 §4.4.1); a
            // lone CRLF (a pong itself) is not answered, so two servers never ping-pong.
            if data == b"\r\n\r\n" {
                out.push(b"\r\n", src, socket);
            }
            self.stats.dropped(DropReason::KeepAlive);
            return Disposition::Done;
        }
        // Parsed where it stays: a message returned by value (~1.7 KB) is copied.
        let mut slot = core::mem::MaybeUninit::uninit();
        let msg = match Message::parse_in(&mut slot, data, Limits::default(), Framing::Datagram) {
            Ok(m) => &*m,
            Err(e) => {
                let (buf, start) = out.begin();
                if crate::sip::write::salvage_response(buf, data, e.status(), e.reason().as_bytes())
                {
                    // Unparseable: we cannot trust the Via, answer the source address.
                    out.commit(start, src, socket);
                    self.stats.response_sent(e.status());
                } else {
                    out.abort(start);
                    let reason = if data.starts_with(b"SIP/") {
                        DropReason::BadResponse
                    } else {
                        DropReason::Malformed
                    };
                    self.stats.dropped(reason);
                }
                tracing::debug!(%src, error = %e, "unparseable datagram");
                return Disposition::Done;
            }
        };
        // The shard whose nonce a challenge carries: ours, or the owner's for a REGISTER
        // challenged here on its behalf.
        let mut nonce_shard = self.shard;
        if !handed_off {
            if let Some(owner) = self.owner(msg) {
                if owner != self.shard {
                    if !self.challenge_here(msg) {
                        return Disposition::HandOff(owner);
                    }
                    nonce_shard = owner;
                }
            }
        }
        let Some(method) = msg.method() else {
            self.stats.received_responses.inc();
            // Responses are relayed: only what the proxy reads must be well-formed (§16.3).
            if msg.validate_for_proxy().is_err() || !self.proxy.response(msg, now_ms, out) {
                self.stats.dropped(DropReason::StrayResponse);
            }
            return Disposition::Done;
        };
        self.stats.request(method);
        if method == Method::Ack {
            // ACK is never answered: the transaction of a non-2xx absorbs it, the ACK of a
            // 2xx goes on to the next hop.
            self.ack(msg, src, now_ms, out);
            return Disposition::Done;
        }
        let mut reply = Reply::new(msg, src, socket, &mut self.tag_seq, self.shard);
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
                self.proxy.calls.rejected(msg, status);
            }
        }
        self.stats
            .transactions
            .set(self.proxy.transactions() as u64);
        Disposition::Done
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
            }
        }
        let ctx = ResponseCtx {
            to_tag: reply.to_tag(),
            via_fixup: Some(reply.via_fixup()),
        };
        let flow = Flow {
            addr: reply.source(),
            nat: crate::nat::behind_nat(msg, reply.source()),
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
            Some(dst) if !self.proxy.is_ours_addr(dst) => {
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
    /// as [`Core::for_user`] chooses), with the branch derived from the incoming one like the
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
            if !self.proxy.is_ours_addr(dst) {
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
        let t = binding_target(b);
        self.proxy.relay_stateless(msg, Some(t.uri), t.dst, out) == Handled::Relayed
    }

    /// Where a request goes by its Route set and Request-URI: the flow of a NATed callee named
    /// in our Record-Route (unless it comes from that flow), else the next hop (§16.12).
    fn in_dialog_destination(&self, msg: &Message<'_>, src: SocketAddr) -> Option<SocketAddr> {
        if msg.header(HeaderName::Route).is_some() {
            if let Some(flow) = flow_destination(msg, &self.proxy, src) {
                return Some(flow);
            }
        }
        next_hop(msg, &self.proxy).and_then(|(u, _)| uri_address(&u))
    }

    /// Digest-authenticates a request from one of our users (RFC 3261 §22.3, 407). Returns
    /// false when a response was sent instead.
    fn proxy_authorized(
        &mut self,
        msg: &Message<'_>,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) -> bool {
        let Some(auth) = &mut self.auth else {
            return true;
        };
        match auth.check_from(msg, HeaderName::ProxyAuthorization, now_ms, reply.source()) {
            AuthOutcome::Authenticated { user } => {
                let from_user = msg
                    .from()
                    .ok()
                    .and_then(|f| f.uri().ok())
                    .and_then(|u| u.user);
                if from_user
                    .is_some_and(|u| crate::sip::uri::eq_unescaped(u, user.as_bytes(), false))
                {
                    true
                } else {
                    reply.simple(
                        out,
                        403,
                        b"Forbidden (From does not match the authenticated user)",
                    );
                    false
                }
            }
            AuthOutcome::Challenge { stale } => {
                let auth = &*auth;
                reply.with(out, 407, b"Proxy Authentication Required", |o| {
                    auth.write_challenge(o, "Proxy-Authenticate", stale, now_ms)
                });
                false
            }
            AuthOutcome::BadRequest(why) => {
                reply.simple(out, 400, format!("Bad Request ({why})").as_bytes());
                false
            }
        }
    }

    /// A request for a user (INVITE, MESSAGE, OPTIONS to a user, BYE in a dialog, ...):
    /// proxied (RFC 3261 §16), redirected (§8.3) or refused.
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
        let response_dst = reply.destination();
        let in_socket = reply.socket();
        if msg.to().ok().and_then(|t| t.tag()).is_some() {
            // In-dialog: loose routing to the next hop (§16.12).
            let Some(dst) = self.in_dialog_destination(msg, reply.source()) else {
                return reply.simple(out, 404, b"Not Found (no route for this dialog)");
            };
            if self.proxy.is_ours_addr(dst) {
                return reply.simple(out, 482, b"Loop Detected");
            }
            if msg.method() == Some(Method::Bye) {
                self.proxy.calls.bye(msg, now_ms);
            }
            if self.cfg.mode == Mode::Stateless {
                // §16.11: no transaction state for in-dialog requests either.
                self.proxy.relay_stateless(msg, None, dst, out);
                return;
            }
            let target = [Target {
                uri: b"",
                dst,
                q: crate::registrar::DEFAULT_Q,
                flow: false,
            }];
            self.proxy
                .forward(msg, response_dst, in_socket, &target, false, now_ms, out);
            return;
        }
        if !ruri.is_sip() || !self.cfg.is_our_host(ruri.host) {
            return reply.simple(out, 403, b"Forbidden (relaying denied)");
        }
        if !self.proxy_authorized(msg, now_ms, reply, out) {
            return;
        }
        self.key.clear();
        self.registrar.write_aor_key(ruri, &mut self.key);
        let mut bindings: Vec<&crate::registrar::Binding> =
            self.registrar.lookup(&self.key, now_ms).collect();
        if bindings.is_empty() {
            // With a user list, a user not in it does not exist (404); a known user with no
            // binding is only unreachable now (480).
            if self.auth.as_ref().is_some_and(|a| !knows_user(a, ruri)) {
                return reply.simple(out, 404, b"Not Found");
            }
            return reply.simple(out, 480, b"Temporarily Unavailable");
        }
        // Highest q first (§16.6: a proxy may use q-values to order targets).
        bindings.sort_by_key(|b| std::cmp::Reverse(b.q()));
        if self.cfg.mode == Mode::Redirect {
            // RFC 3261 §8.3: 302 with the current bindings as Contacts.
            return reply.with(out, 302, b"Moved Temporarily", |o| {
                for b in &bindings {
                    o.extend_from_slice(b"Contact: <");
                    o.extend_from_slice(b.contact_uri());
                    o.push(b'>');
                    if b.q() != crate::registrar::DEFAULT_Q {
                        o.extend_from_slice(b";q=");
                        crate::registrar::write_qvalue(o, b.q());
                    }
                    o.extend_from_slice(b"\r\n");
                }
            });
        }
        let targets: Vec<Target<'_>> = bindings.iter().map(|b| binding_target(b)).collect();
        if self.cfg.mode == Mode::Stateless {
            // §16.11: no transaction state; the first (best) target only.
            let t = targets[0];
            self.proxy.relay_stateless(msg, Some(t.uri), t.dst, out);
            return;
        }
        // The proxy counts what it sends itself (its answers go through its transactions).
        self.proxy
            .forward(msg, response_dst, in_socket, &targets, true, now_ms, out);
    }
}

/// True if the Request-URI's user (unescaped) is in the authenticator's user list.
fn knows_user(auth: &Authenticator, ruri: &Uri<'_>) -> bool {
    let Some(user) = ruri.user else {
        return false;
    };
    if !user.contains(&b'%') {
        return auth.users().get(user).is_some();
    }
    let name: Vec<u8> = crate::sip::uri::Unescape::new(user).collect();
    auth.users().get(&name).is_some()
}

/// Where requests for a binding go: the flow it registered on when it came through a NAT or
/// is an RFC 5626 outbound flow, else its Contact address (an IP literal; else the source).
fn binding_target(b: &Binding) -> Target<'_> {
    let flow = b.reached_by_flow();
    let dst = if flow {
        b.source()
    } else {
        Uri::parse(b.contact_uri())
            .ok()
            .and_then(|u| uri_address(&u))
            .unwrap_or_else(|| b.source())
    };
    Target {
        uri: b.contact_uri(),
        dst,
        q: b.q(),
        flow,
    }
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
