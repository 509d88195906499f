//! The per-shard dispatcher of the protocol core (sans-I/O): takes one datagram with its source
//! and the current time, answers keepalives (RFC 5626 §4.4), parses it (a malformed request
//! gets a 400 naming the problem, RFC 3261 §21.4.1), decides which shard owns it (AOR
//! ownership, `ownership.rs`) and hands what is this shard's to its SIP element
//! (`proxy::request`); what to send goes into an [`Outbox`]. It never touches a socket,
//! thread or clock.

pub mod outbox;
pub mod ownership;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cdr;
#[cfg(test)]
mod tests_nat;
#[cfg(test)]
mod tests_overload;
#[cfg(test)]
mod tests_responder;
#[cfg(test)]
mod tests_routing;
#[cfg(test)]
mod tests_security;
#[cfg(test)]
mod tests_steering;
#[cfg(test)]
mod tests_streams;

use crate::auth::Authenticator;
use crate::proxy::request::Element;
use crate::proxy::stateful::{shard_of_branch, Proxy};
use crate::registrar::Registrar;
use crate::responder::Responder;
use crate::security::board::Board;
use crate::security::{Admit, Guard};
use crate::server::ownership::{aor_hash, owner_shard, user_aor_hash};
use crate::sip::{Framing, HeaderName, Limits, Message, Method};
use crate::stats::{DropReason, ShardStats};
use outbox::Outbox;
use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::proxy::reply::response_destination;
pub use crate::proxy::request::{ALLOW, SUPPORTED};
pub use crate::proxy::settings::CoreConfig;

/// What the shell does with a datagram after the core looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handled here (responses, if any, are in the outbox).
    Done,
    /// Another shard owns it: move the datagram there.
    HandOff(usize),
    /// Another shard owns it and took it at once, as parsed ([`Neighbours`]): its answers
    /// are in that shard's outbox.
    Dispatched(usize),
}

/// The shards that run on the calling thread and whose round comes later in this pass
/// (consolidation): a message one of them owns is dispatched to its core at once, parsed
/// once, instead of being handed over through its queue ([`Disposition::HandOff`]) and
/// parsed again there. Its answers go into the owner's own outbox, which the owner's round
/// then treats as its own (held for the disk under `sync` durability, sent with its
/// connections' writes). The runtime offers a shard only when nothing of it can be
/// overtaken: its queue and what it has yet to take in before new work are empty.
pub trait Neighbours {
    /// The core of shard `shard` and its outbox, when it may take a message now.
    fn core(&mut self, shard: usize) -> Option<(&mut Core, &mut Outbox)>;
}

/// No neighbours: a shard alone on its thread, or the last of a pass.
impl Neighbours for () {
    fn core(&mut self, _shard: usize) -> Option<(&mut Core, &mut Outbox)> {
        None
    }
}

/// One shard's protocol state: the dispatcher in front of the shard's SIP element.
pub struct Core {
    shard: usize,
    cfg: Arc<CoreConfig>,
    stats: Arc<ShardStats>,
    /// Registrar and proxy: what is done with each request and response.
    element: Element,
    /// In responder mode, what answers everything instead of the element.
    responder: Option<Responder>,
    /// ACLs and bans: the first look at every datagram (`crate::security`).
    guard: Guard,
    /// To tags of the 503s written by [`Core::overflow`].
    tag_seq: u64,
    /// A request with what topology hiding sealed put back.
    restored: Vec<u8>,
    /// When the other nodes' expired bindings are swept next.
    next_remote_sweep_ms: u64,
}

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
        local: &[crate::sip::Local],
    ) -> Core {
        let responder_mode = cfg.mode == crate::proxy::settings::Mode::Responder;
        let (element_auth, responder_auth) = if responder_mode {
            (None, auth)
        } else {
            (auth, None)
        };
        let element = Element::new(shard, cfg.clone(), stats.clone(), element_auth, local);
        let responder = responder_mode.then(|| {
            let addr = local
                .iter()
                .find(|l| l.proto == crate::sip::Proto::Udp)
                .map(|l| l.addr)
                .or(cfg.local_addrs.first().copied());
            let addr = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)));
            Responder::new(
                shard,
                cfg.responder.clone(),
                stats.clone(),
                responder_auth,
                addr,
            )
        });
        let guard = Guard::new(cfg.security.clone(), Arc::default(), stats.clone());
        Core {
            shard,
            cfg,
            stats,
            element,
            responder,
            guard,
            tag_seq: 0,
            restored: Vec::new(),
            next_remote_sweep_ms: 0,
        }
    }

    /// Shares `board` (the bans every shard obeys) with the other shards' cores; without it
    /// a core keeps its bans to itself.
    pub fn share_board(&mut self, board: Arc<Board>) {
        self.element.share_board(board.clone());
        self.guard.share_board(board);
    }

    /// Overload control, set by the shell: while `on`, new requests for users get 503 with
    /// Retry-After; what is in progress and emergency calls go on.
    pub fn set_overloaded(&mut self, on: bool) {
        self.element.set_overloaded(on);
    }

    /// The overload settings the core runs with.
    pub fn overload_settings(&self) -> crate::proxy::settings::OverloadSettings {
        self.cfg.overload
    }

    /// True when [`Core::set_overloaded`] changes anything (not in responder mode: a load
    /// test's far end answers everything it reads).
    pub fn refuses_on_overload(&self) -> bool {
        self.responder.is_none()
    }

    /// The owner of `data` cannot take it (its hand-off queue is full: it is past its
    /// capacity). A new request that is not an emergency call gets 503 with Retry-After
    /// here (true); anything else is left to be dropped (false): the client retransmits.
    pub fn overflow(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        socket: usize,
        out: &mut Outbox,
    ) -> bool {
        let mut slot = core::mem::MaybeUninit::uninit();
        let Ok(msg) = Message::parse_in(&mut slot, data, Limits::default(), Framing::Datagram)
        else {
            return false;
        };
        let msg = &*msg;
        let Some(method) = msg.method() else {
            return false;
        };
        if matches!(method, Method::Ack | Method::Cancel)
            || msg.to().ok().and_then(|t| t.tag()).is_some()
            || msg.validate_for_proxy().is_err()
        {
            return false;
        }
        let user = msg.request_uri().ok().and_then(|u| u.user);
        if self.cfg.routing.is_emergency_user(user) {
            return false;
        }
        crate::proxy::reply::Reply::new(msg, src, socket, &mut self.tag_seq, self.shard)
            .overloaded(out, self.cfg.overload.retry_after_s);
        self.stats.response_sent(503);
        true
    }

    /// Puts back the bindings the binding store kept for this shard (at start) and starts
    /// recording binding changes for it ([`Core::take_journal`]).
    pub fn restore_bindings(
        &mut self,
        aors: Vec<(Vec<u8>, Vec<crate::registrar::Binding>)>,
        now_ms: u64,
    ) {
        let registrar = self.element.registrar_mut();
        for (key, bindings) in aors {
            registrar.restore(&key, bindings, now_ms);
        }
        registrar.enable_journal();
        self.element.publish_bindings();
    }

    /// The registrar key of an AOR an operator typed (`sip:alice@example.com`, or without the
    /// scheme), or why it is not one.
    fn aor_key(&self, aor: &str) -> Result<Vec<u8>, String> {
        let text = if aor.contains(':') {
            aor.to_owned()
        } else {
            format!("sip:{aor}")
        };
        let uri = crate::sip::Uri::parse(text.as_bytes())
            .map_err(|e| format!("'{aor}': not a SIP URI ({e:?})"))?;
        let mut key = Vec::new();
        if !self.element.registrar().write_aor_key(&uri, &mut key) {
            return Err(format!("'{aor}': not a sip: or sips: URI"));
        }
        Ok(key)
    }

    /// The shard that owns `aor`'s bindings (None: it cannot be told, or one shard).
    pub fn aor_owner(&self, aor: &str) -> Result<usize, String> {
        let key = self.aor_key(aor)?;
        Ok(crate::server::ownership::key_owner(&key, self.cfg.shards))
    }

    /// The unexpired bindings this shard holds (of `aor` only, when given).
    pub fn registrations(
        &self,
        aor: Option<&str>,
        now_ms: u64,
    ) -> Result<Vec<crate::registrar::Registration>, String> {
        let key = aor.map(|a| self.aor_key(a)).transpose()?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut rows = Vec::new();
        self.element
            .registrar()
            .for_each_binding(key.as_deref(), now_ms, |key, b, node| {
                rows.push(crate::registrar::Registration {
                    aor: text(key),
                    contact: text(b.contact_uri()),
                    expires: b.remaining_secs(now_ms),
                    q: b.q(),
                    source: b.source().to_string(),
                    nat: b.reached_by_flow(),
                    instance: b.instance().map(text),
                    reg_id: b.reg_id(),
                    call_id: text(b.call_id()),
                    shard: self.shard,
                    node: node.map(str::to_owned),
                })
            });
        Ok(rows)
    }

    /// The answered calls in progress whose dialogs this shard record-routed.
    pub fn calls(&self, now_ms: u64) -> Vec<crate::proxy::calls::CallInProgress> {
        self.element.proxy().calls.in_progress(self.shard, now_ms)
    }

    /// The dial plan's trunks and their health (shard 0 checks them; every shard sees it).
    pub fn trunks(&self) -> Vec<crate::routing::plan::TrunkStatus> {
        self.cfg.routing.trunks.iter().map(|t| t.status()).collect()
    }

    /// Removes `aor`'s bindings held here (only `contact`, when given). Returns how many.
    pub fn unregister(&mut self, aor: &str, contact: Option<&str>) -> Result<usize, String> {
        let key = self.aor_key(aor)?;
        let n = self
            .element
            .registrar_mut()
            .unregister(&key, contact.map(str::as_bytes));
        self.element.publish_bindings();
        Ok(n)
    }

    /// The server stops: calls in progress get their call detail records now (`hangup`
    /// `shutdown`), to be taken with [`Core::take_records`].
    pub fn close_calls(&mut self, now_ms: u64) {
        if self.responder.is_none() {
            self.element.close_calls(now_ms);
        }
    }

    /// Moves the finished call detail records to the end of `into` (none in responder mode).
    pub fn take_records(&mut self, into: &mut Vec<crate::proxy::cdr::CallRecord>) {
        if self.responder.is_none() {
            self.element.take_records(into);
        }
    }

    /// The stream connection (`socket`, `peer`) closed (the shell says so, on every shard):
    /// the bindings registered over it go (RFC 5626 §5.3).
    pub fn connection_closed(&mut self, socket: u16, peer: SocketAddr, closed_ms: u64) {
        let removed = self
            .element
            .registrar_mut()
            .flow_closed(socket, peer, closed_ms);
        if removed > 0 {
            self.element.publish_bindings();
            tracing::info!(shard = self.shard, %peer, bindings = removed, "unregistered: connection closed");
        }
    }

    /// The shell could not deliver to `dst` over stream `socket` (a connection refused, or
    /// gone and not to be reopened, RFC 3261 §17.1.4): the requests sent there fail now, as
    /// if answered 503, and the next target is tried (§16.9).
    pub fn transport_error(&mut self, socket: u16, dst: SocketAddr, now_ms: u64, out: &mut Outbox) {
        let failed = self.element.transport_error(socket, dst, now_ms, out);
        if failed > 0 {
            tracing::debug!(shard = self.shard, %dst, requests = failed, "transport error");
        }
    }

    /// Moves the binding-store records written since the last call to the end of `into`.
    /// Applies what the shared store says about the other nodes' bindings (and sweeps
    /// their expired ones now and then).
    pub fn apply_remote(
        &mut self,
        changes: impl Iterator<Item = crate::registrar::RemoteChange>,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        for c in changes {
            match c {
                crate::registrar::RemoteChange::LookedUp { key, failed } => {
                    self.element.store_answered(&key, failed, now_ms, out)
                }
                c => self.element.registrar_mut().apply_remote(c, now_ms),
            }
        }
        if now_ms >= self.next_remote_sweep_ms {
            self.element.registrar_mut().sweep_remote(now_ms);
            self.next_remote_sweep_ms = now_ms + 60_000;
        }
    }

    /// Turns on asking the shared store about AORs never heard of here (`--store`).
    pub fn enable_store_lookups(&mut self) {
        self.element.enable_store_lookups();
    }

    /// The AOR keys to ask the shared store about ([`Core::enable_store_lookups`]).
    pub fn take_lookups(&mut self, into: &mut Vec<Box<[u8]>>) {
        self.element.take_lookups(into);
    }

    pub fn take_journal(&mut self, into: &mut Vec<u8>) {
        self.element.registrar_mut().take_journal(into);
    }

    /// The shard's guard (bans, ACLs).
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Applies a reload (SIGHUP): the registrar and proxy settings of `cfg` (the rest of it
    /// must equal the running configuration: listen addresses, domains and mode need a
    /// restart) and, when given, new users. Bindings, transactions and nonces stay.
    pub fn reload(&mut self, cfg: Arc<CoreConfig>, users: Option<Arc<crate::auth::UserDb>>) {
        if let Some(r) = &mut self.responder {
            r.reload(cfg.responder.clone(), users.clone());
            r.reload_security(&cfg.security);
        }
        self.element.reload(cfg.clone(), users);
        self.guard.reload(cfg.security.clone());
        self.cfg = cfg;
    }

    /// When the core next needs [`Core::handle_timeout`], in ms.
    pub fn next_timeout(&self) -> Option<u64> {
        match &self.responder {
            Some(r) => r.next_timeout(),
            None => self.element.next_timeout(),
        }
    }

    /// Runs expired timers: transactions, binding expiry and nonce-table pruning.
    pub fn handle_timeout(&mut self, now_ms: u64, out: &mut Outbox) {
        match &mut self.responder {
            Some(r) => r.handle_timeout(now_ms, out),
            None => self.element.handle_timeout(now_ms, out),
        }
    }

    /// The shard's responder (responder mode only).
    pub fn responder(&self) -> Option<&Responder> {
        self.responder.as_ref()
    }

    /// The shard's registrar (for tests and the proxy).
    pub fn registrar(&self) -> &Registrar {
        self.element.registrar()
    }

    /// The shard's proxy (for tests: its state sizes).
    pub fn proxy(&self) -> &Proxy {
        self.element.proxy()
    }

    /// The shard that owns the message in `data` (None when it does not parse or has no
    /// owner by content): what the kernel steering program must agree with.
    pub fn owner_of(&self, data: &[u8]) -> Option<usize> {
        self.owner(&Message::parse(data).ok()?)
    }

    /// The shard that owns this request: the To AOR for REGISTER, the Request-URI AOR for
    /// other requests. None when it cannot be told (then it is handled where it arrived).
    fn owner(&self, msg: &Message<'_>) -> Option<usize> {
        if self.cfg.shards <= 1 {
            return None;
        }
        if self.responder.is_some() {
            return self.responder_owner(msg);
        }
        let Some(method) = msg.method() else {
            // A response on the shared port: the shard that sent the request wrote its id
            // into the branch.
            // A number past our shards (forged, or another server's branch) names no owner:
            // handled here (handing it to shard 99 would index past the peers).
            let via = msg.top_via().ok()?;
            return shard_of_branch(via.branch()?).filter(|&s| s < self.cfg.shards);
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
            _ => {
                let ruri = msg.request_uri().ok()?;
                // An extension reaches its user: the shard that holds the user's bindings.
                let user = ruri.user.filter(|_| !self.cfg.routing.is_empty());
                let extension_user = user.and_then(|u| {
                    let number: Vec<u8> = crate::sip::uri::Unescape::new(u).collect();
                    let plan = &self.cfg.routing;
                    plan.extension_user(&number)
                        .map(|u| u.to_owned())
                        .or_else(|| {
                            // A number that reaches an extension once normalised (a DID
                            // dialed nationally): only dialable ones are normalised here, so
                            // calls to users by name pay no regex.
                            let dialable = crate::routing::plan::is_dialable(&number);
                            let normalized = dialable.then(|| plan.normalize(&number)).flatten()?;
                            plan.extension_user(&normalized).map(|u| u.to_owned())
                        })
                });
                match extension_user {
                    Some(u) => user_aor_hash(ruri.scheme, u.as_bytes())?,
                    None => aor_hash(&ruri)?,
                }
            }
        };
        Some(owner_shard(hash, self.cfg.shards))
    }

    /// Responder mode: the shard that sent a request (its id is in the branch) gets the
    /// response; the shard that answered a call (its id is in the To tag) gets the call's
    /// in-dialog requests; the rest (new calls, their CANCEL) stays where it arrived.
    fn responder_owner(&self, msg: &Message<'_>) -> Option<usize> {
        let owner = match msg.method() {
            None => shard_of_branch(msg.top_via().ok()?.branch()?),
            Some(_) => crate::responder::shard_of_tag(msg.to().ok()?.tag()?),
        };
        owner.filter(|&s| s < self.cfg.shards)
    }

    /// True for a request another shard owns that this one can answer itself, in full: a
    /// REGISTER without credentials, when registration needs them. Every check before the
    /// challenge is stateless, and the challenge is too: its nonce is issued for the owner,
    /// where the retry with credentials goes. Half the hand-offs of digest registration go.
    fn challenge_here(&self, msg: &Message<'_>) -> bool {
        self.element.challenges_registers()
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
        self.handle_with(data, src, socket, now_ms, handed_off, out, &mut ())
    }

    /// [`Core::handle`] on a thread that runs other shards too: what one of `neighbours`
    /// owns is dispatched to it here (its answers in its own outbox), not handed over.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_with(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        socket: usize,
        now_ms: u64,
        handed_off: bool,
        out: &mut Outbox,
        neighbours: &mut dyn Neighbours,
    ) -> Disposition {
        // Bans and ACLs before anything else (a datagram handed over was admitted already).
        if !handed_off {
            match self
                .guard
                .admit(src.ip(), socket, !data.starts_with(b"SIP/"), now_ms)
            {
                Admit::Pass => {}
                Admit::Drop => return Disposition::Done,
                Admit::Forbid => {
                    let (buf, start) = out.begin();
                    let reason = b"Forbidden (source address not allowed)";
                    if !data.starts_with(b"SIP/")
                        && crate::sip::write::salvage_response(buf, data, 403, reason)
                    {
                        out.commit(start, src, socket);
                        self.stats.response_sent(403);
                    } else {
                        out.abort(start);
                        self.stats.dropped(DropReason::Denied);
                    }
                    return Disposition::Done;
                }
            }
        }
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
        if !handed_off && msg.method().is_some() {
            if let Some(ua) = msg.header(HeaderName::UserAgent) {
                if self.guard.is_scanner(ua, src.ip(), now_ms) {
                    tracing::debug!(%src, "scanner dropped");
                    return Disposition::Done;
                }
            }
        }
        if msg.method().is_some() && self.responder.is_none() {
            // Topology hiding: a Request-URI or Route that is one of our sealed values gets
            // what it seals back before anything reads it (`proxy::topology`).
            let proxy = self.element.proxy();
            if let Some(hider) = proxy.hider() {
                let mut restored = core::mem::take(&mut self.restored);
                restored.clear();
                let ours = |u: &crate::sip::Uri<'_>| proxy.is_ours(u);
                let mut slot = core::mem::MaybeUninit::uninit();
                let parsed = hider
                    .restore_request(msg, &ours, &mut restored)
                    .then(|| {
                        Message::parse_in(
                            &mut slot,
                            &restored,
                            Limits::default(),
                            Framing::Datagram,
                        )
                        .ok()
                    })
                    .flatten();
                let d = match parsed {
                    Some(m) => self.dispatch(m, src, socket, now_ms, handed_off, out, neighbours),
                    None => self.dispatch(msg, src, socket, now_ms, handed_off, out, neighbours),
                };
                self.restored = restored;
                return d;
            }
        }
        self.dispatch(msg, src, socket, now_ms, handed_off, out, neighbours)
    }

    /// [`Core::handle`] once the datagram is a message that passed the guard.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        msg: &Message<'_>,
        src: SocketAddr,
        socket: usize,
        now_ms: u64,
        handed_off: bool,
        out: &mut Outbox,
        neighbours: &mut dyn Neighbours,
    ) -> Disposition {
        // The shard whose nonce a challenge carries: ours, or the owner's for a REGISTER
        // challenged here on its behalf.
        let mut nonce_shard = self.shard;
        if !handed_off {
            if let Some(owner) = self.owner(msg) {
                if owner != self.shard {
                    if !self.challenge_here(msg) {
                        let Some((core, out)) = neighbours.core(owner) else {
                            return Disposition::HandOff(owner);
                        };
                        // The owner runs later on this thread: it takes the message as
                        // parsed (already admitted and restored here).
                        self.stats.handoffs_out.inc();
                        core.stats.handoffs_in.inc();
                        core.dispatch(msg, src, socket, now_ms, true, out, &mut ());
                        return Disposition::Dispatched(owner);
                    }
                    nonce_shard = owner;
                }
            }
        }
        if let Some(r) = &mut self.responder {
            match msg.method() {
                Some(method) => r.request(msg, method, src, socket, now_ms, out),
                None => r.response(msg, now_ms),
            }
            return Disposition::Done;
        }
        let Some(method) = msg.method() else {
            self.stats.received_responses.inc();
            self.element.response(msg, now_ms, out);
            return Disposition::Done;
        };
        self.element
            .request(msg, method, src, socket, now_ms, nonce_shard, out);
        Disposition::Done
    }
}
