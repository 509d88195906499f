//! The stateful proxy of one shard (RFC 3261 §16, on the transaction layer of §17): forwards
//! initial requests to every current binding of the target AOR in parallel (§16.6), relays
//! provisional responses, picks the best final response (§16.7), cancels pending branches on a
//! 2xx or 6xx and on CANCEL (§16.10), record-routes dialog-creating requests through this
//! shard's own port and loose-routes in-dialog requests (§16.4, §16.12). Sans-I/O: everything
//! it sends goes into the [`Outbox`]; time is a parameter.

use super::messages::{write_branch, write_cancel, write_response_upstream};
use crate::server::outbox::Outbox;
use crate::sip::uri::HostKind;
use crate::sip::write::{finish, header, response_head, write_forward, ForwardEdits};
use crate::sip::{HeaderName, Message, Method, Uri};
use crate::timer::{TimerKey, TimerWheel};
use crate::txn::{
    Bytes, ClientEvent, ClientKey, ClientTxnId, Match, ServerTxnId, TransactionTable, TxnConfig,
    TxnEvent, TxnOut,
};
use hashbrown::HashMap;
use std::net::{IpAddr, SocketAddr};

/// A target of a forwarded request: the URI to put in the Request-URI and where to send it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'t> {
    pub uri: &'t [u8],
    pub dst: SocketAddr,
}

/// Timer C (RFC 3261 §16.6 step 11): an INVITE branch that has not answered finally within
/// this long after its last provisional response is cancelled and counts as 408.
pub const TIMER_C_MS: u64 = 180_000;

/// After a CANCEL, how long a branch may take to send its final response before its INVITE
/// client transaction is destroyed anyway (§9.1: 64*T1).
pub const CANCEL_GUARD_MS: u64 = 32_000;

/// The proxy's own timers.
#[derive(Debug, Clone, Copy)]
enum ProxyTimer {
    /// Timer C of an INVITE branch.
    C(ClientTxnId),
    /// A cancelled branch that must be gone by now.
    CancelGuard(ClientTxnId),
}

/// One forwarded copy of a request.
struct Branch {
    id: ClientTxnId,
    /// Timer C of an INVITE branch.
    timer_c: Option<TimerKey>,
    /// The request as forwarded (for CANCEL).
    request: Bytes,
    dst: SocketAddr,
    done: bool,
    /// A provisional response came (a CANCEL may be sent, §9.1).
    provisional: bool,
    /// A CANCEL is owed as soon as the first provisional response comes.
    cancel_wanted: bool,
}

/// The response context of one server transaction (§16.7).
struct Forwarding {
    is_invite: bool,
    /// The request as received (to build a 408 or 487 ourselves).
    original: Bytes,
    branches: Vec<Branch>,
    /// Best final response so far: (status, bytes ready to send upstream).
    best: Option<(u16, Bytes)>,
    final_sent: bool,
    cancelled: bool,
}

/// What the proxy did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Absorbed by an existing transaction (retransmission or ACK of a non-2xx).
    Absorbed,
    /// Forwarded on `n` branches.
    Forwarded(usize),
    /// A response was sent (status).
    Answered(u16),
    /// Forwarded statelessly (ACK of a 2xx).
    Relayed,
}

/// The stateful proxy of one shard.
pub struct Proxy {
    shard: usize,
    stats: std::sync::Arc<crate::metrics::ShardStats>,
    txns: TransactionTable,
    /// `ip:port` written in our Via and Record-Route.
    host: String,
    /// The shard socket our forwarded requests leave from.
    socket: u16,
    /// Addresses that are this proxy (for loose routing): listen addresses and our own port.
    ours: Vec<SocketAddr>,
    branch_seq: u64,
    contexts: HashMap<ServerTxnId, Forwarding>,
    client_ctx: HashMap<ClientTxnId, ServerTxnId>,
    txn_out: Vec<TxnOut>,
    scratch: Vec<u8>,
    /// Timer C of every pending INVITE branch, and the guards of cancelled branches.
    timer_c: TimerWheel<ProxyTimer>,
}

fn bytes(v: &[u8]) -> Bytes {
    Bytes::from(v)
}

/// The address a SIP URI names when its host is an IP literal (no DNS here).
pub fn uri_address(uri: &Uri<'_>) -> Option<SocketAddr> {
    let host = std::str::from_utf8(uri.maddr().unwrap_or(uri.host)).ok()?;
    let ip: IpAddr = host.parse().ok()?;
    let default = if matches!(uri.scheme, crate::sip::Scheme::Sips) {
        5061
    } else {
        5060
    };
    Some(SocketAddr::new(ip, uri.port.unwrap_or(default)))
}

/// Where a response goes next: the Via after ours (received, rport, sent-by; §18.2.2).
fn next_via_destination(resp: &Message<'_>) -> Option<SocketAddr> {
    let via = resp.vias().nth(1)?.ok()?;
    let host = via.received().unwrap_or(via.host);
    let host = host.strip_prefix(b"[").unwrap_or(host);
    let host = host.strip_suffix(b"]").unwrap_or(host);
    let ip: IpAddr = std::str::from_utf8(host).ok()?.parse().ok()?;
    let port = match via.rport() {
        Some(Some(p)) => p,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

/// §16.7 step 6: the better of two final responses (6xx first, then the lowest class).
fn better(new: u16, old: u16) -> bool {
    match (new / 100, old / 100) {
        (6, 6) => new < old,
        (6, _) => true,
        (_, 6) => false,
        (a, b) => a < b,
    }
}

impl Proxy {
    /// A proxy whose Via and Record-Route name `local` (the shard's own port), sending from
    /// shard socket `socket`; `ours` lists every address that routes to this server.
    pub fn new(
        shard: usize,
        local: SocketAddr,
        socket: usize,
        ours: Vec<SocketAddr>,
        stats: std::sync::Arc<crate::metrics::ShardStats>,
    ) -> Proxy {
        Proxy {
            shard,
            stats,
            txns: TransactionTable::new(TxnConfig::default()),
            host: local.to_string(),
            socket: socket as u16,
            ours,
            branch_seq: 0,
            contexts: HashMap::new(),
            client_ctx: HashMap::new(),
            txn_out: Vec::new(),
            scratch: Vec::with_capacity(2048),
            timer_c: TimerWheel::new(1_000, 512),
        }
    }

    /// Transactions in the table.
    pub fn transactions(&self) -> usize {
        self.txns.len()
    }

    /// Transactions and response contexts alive (for tests: 0 when everything ended).
    pub fn state_len(&self) -> (usize, usize, usize) {
        (self.txns.len(), self.contexts.len(), self.client_ctx.len())
    }

    /// Bytes of messages the response contexts keep (the request as received, each branch's
    /// request, the best response so far): what a call in progress costs beyond the tables.
    pub fn held_message_bytes(&self) -> usize {
        self.contexts
            .values()
            .map(|c| {
                c.original.len()
                    + c.branches.iter().map(|b| b.request.len()).sum::<usize>()
                    + c.best.as_ref().map_or(0, |b| b.1.len())
            })
            .sum()
    }

    pub fn next_timeout(&self) -> Option<u64> {
        match (self.txns.next_timeout(), self.timer_c.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True if `uri` routes to this server (host is one of our IPs and the port ours).
    pub fn is_ours(&self, uri: &Uri<'_>) -> bool {
        uri_address(uri).is_some_and(|a| self.is_ours_addr(a))
    }

    /// True if `addr` is one of this server's addresses.
    pub fn is_ours_addr(&self, addr: SocketAddr) -> bool {
        self.ours
            .iter()
            .any(|o| o.port() == addr.port() && (o.ip() == addr.ip() || o.ip().is_unspecified()))
    }

    /// True if the first Route names this proxy (it is removed when forwarding, §16.4).
    fn top_route_is_ours(&self, msg: &Message<'_>) -> bool {
        msg.routes()
            .next()
            .and_then(|r| r.ok())
            .and_then(|r| r.uri().ok())
            .is_some_and(|u| self.is_ours(&u))
    }

    /// Runs transaction timers.
    pub fn handle_timeout(&mut self, now_ms: u64, out: &mut Outbox) {
        let mut txn_out = core::mem::take(&mut self.txn_out);
        self.txns.poll_timers(now_ms, &mut txn_out);
        let mut fired = Vec::new();
        self.timer_c.poll(now_ms, &mut |t| fired.push(t));
        for t in fired {
            match t {
                ProxyTimer::C(cid) => self.timer_c_fired(cid, now_ms, &mut txn_out),
                ProxyTimer::CancelGuard(cid) => {
                    // No final response since our CANCEL: destroy the INVITE transaction.
                    if self.txns.client_state(cid).is_some() {
                        self.txns.client_transport_error(cid, &mut txn_out);
                    }
                }
            }
        }
        self.drain(&mut txn_out, now_ms, out);
        self.txn_out = txn_out;
    }

    /// Matches a request against the server transactions: retransmissions are absorbed (the
    /// last response resent) and so are ACKs of non-2xx finals. Returns Some(Absorbed) then.
    pub fn absorb(&mut self, msg: &Message<'_>, now_ms: u64, out: &mut Outbox) -> Option<Handled> {
        let mut txn_out = core::mem::take(&mut self.txn_out);
        let m = self.txns.on_server_request(msg, now_ms, &mut txn_out);
        self.drain(&mut txn_out, now_ms, out);
        self.txn_out = txn_out;
        match m {
            Ok(Match::Retransmission(_)) | Ok(Match::Ack(..)) => Some(Handled::Absorbed),
            _ => None,
        }
    }

    fn next_branch(&mut self) -> Vec<u8> {
        self.branch_seq += 1;
        let mut b = Vec::with_capacity(32);
        write_branch(&mut b, self.shard, self.branch_seq);
        b
    }

    /// Forwards a request statefully to `targets` (initial requests: one branch per binding,
    /// in parallel) or to the next hop of an in-dialog request (one target, `rewrite_uri`
    /// false). `src` is where the request came from; responses go where §18.2.2 says.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        msg: &Message<'_>,
        response_dst: SocketAddr,
        in_socket: usize,
        targets: &[Target<'_>],
        rewrite_uri: bool,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Handled {
        let method = msg.method().unwrap_or(Method::Other);
        let is_invite = method == Method::Invite;
        let sid = match self
            .txns
            .new_server(msg, response_dst, in_socket as u16, false)
        {
            Ok(id) => id,
            Err(_) => return Handled::Absorbed,
        };
        let mut txn_out = core::mem::take(&mut self.txn_out);
        if is_invite {
            // §16.2: answer 100 at once so the caller stops retransmitting.
            self.scratch.clear();
            response_head(&mut self.scratch, msg, 100, b"Trying", None, None);
            finish(&mut self.scratch, b"");
            let _ = self
                .txns
                .server_respond(sid, 100, bytes(&self.scratch), now_ms, &mut txn_out);
        }
        let pop_route = self.top_route_is_ours(msg);
        let dialog_creating = msg.to().ok().and_then(|t| t.tag()).is_none()
            && matches!(method, Method::Invite | Method::Subscribe | Method::Refer);
        let mut ctx = Forwarding {
            is_invite,
            original: bytes(&msg.buf()[msg.start_offset()..msg.len()]),
            branches: Vec::with_capacity(targets.len()),
            best: None,
            final_sent: false,
            cancelled: false,
        };
        let mut status_err = None;
        for t in targets {
            let branch = self.next_branch();
            let mut via = Vec::with_capacity(64);
            via.extend_from_slice(b"SIP/2.0/UDP ");
            via.extend_from_slice(self.host.as_bytes());
            via.extend_from_slice(b";branch=");
            via.extend_from_slice(&branch);
            let rr = format!("<sip:{};lr;ss={}>", self.host, self.shard);
            let edits = ForwardEdits {
                request_uri: rewrite_uri.then_some(t.uri),
                via: Some(&via),
                record_route: dialog_creating.then_some(rr.as_bytes()),
                pop_route,
                decrement_max_forwards: true,
            };
            self.scratch.clear();
            if write_forward(&mut self.scratch, msg, &edits).is_err() {
                status_err = Some(483);
                break;
            }
            let request = bytes(&self.scratch);
            let key = ClientKey::new(&branch, msg.method_bytes().unwrap_or(b"OTHER"));
            match self.txns.new_client(
                key,
                request.clone(),
                t.dst,
                self.socket,
                false,
                now_ms,
                &mut txn_out,
            ) {
                Ok(cid) => {
                    self.client_ctx.insert(cid, sid);
                    let timer_c = is_invite
                        .then(|| self.timer_c.insert(now_ms + TIMER_C_MS, ProxyTimer::C(cid)));
                    ctx.branches.push(Branch {
                        id: cid,
                        timer_c,
                        request,
                        dst: t.dst,
                        done: false,
                        provisional: false,
                        cancel_wanted: false,
                    });
                }
                Err(_) => continue,
            }
        }
        let n = ctx.branches.len();
        self.contexts.insert(sid, ctx);
        if n == 0 {
            let status = status_err.unwrap_or(480);
            let reason: &[u8] = if status == 483 {
                b"Too Many Hops"
            } else {
                b"Temporarily Unavailable"
            };
            self.answer(sid, msg, status, reason, now_ms, &mut txn_out);
            self.drain(&mut txn_out, now_ms, out);
            self.txn_out = txn_out;
            return Handled::Answered(status);
        }
        self.drain(&mut txn_out, now_ms, out);
        self.txn_out = txn_out;
        Handled::Forwarded(n)
    }

    /// Sends our own final response on a server transaction.
    fn answer(
        &mut self,
        sid: ServerTxnId,
        req: &Message<'_>,
        status: u16,
        reason: &[u8],
        now_ms: u64,
        txn_out: &mut Vec<TxnOut>,
    ) {
        self.scratch.clear();
        let tag = format!("p{}.{}", self.shard, self.branch_seq);
        response_head(
            &mut self.scratch,
            req,
            status,
            reason,
            Some(tag.as_bytes()),
            None,
        );
        finish(&mut self.scratch, b"");
        let _ = self
            .txns
            .server_respond(sid, status, bytes(&self.scratch), now_ms, txn_out);
        if let Some(ctx) = self.contexts.get_mut(&sid) {
            ctx.final_sent = true;
        }
    }

    /// Forwards an ACK for a 2xx (or any request we keep no state for) statelessly to `dst`
    /// (§16.11 behaviour for an end-to-end ACK), adding a Via whose branch is derived from the
    /// incoming one so a retransmission gets the same branch.
    pub fn relay_stateless(
        &mut self,
        msg: &Message<'_>,
        target_uri: Option<&[u8]>,
        dst: SocketAddr,
        out: &mut Outbox,
    ) -> Handled {
        let incoming = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch())
            .unwrap_or_default();
        let h = incoming.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
            (h ^ c as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let via = format!("SIP/2.0/UDP {};branch=z9hG4bK-sl{h:x}", self.host);
        let pop_route = self.top_route_is_ours(msg);
        let edits = ForwardEdits {
            request_uri: target_uri,
            via: Some(via.as_bytes()),
            record_route: None,
            pop_route,
            decrement_max_forwards: true,
        };
        let (buf, start) = out.begin();
        if write_forward(buf, msg, &edits).is_err() {
            out.abort(start);
            return Handled::Absorbed;
        }
        self.stats.message_sent(&buf[start..]);
        out.commit(start, dst, self.socket as usize);
        Handled::Relayed
    }

    /// CANCEL (§16.10): answers 200 if it matches an INVITE we forward, and cancels every
    /// pending branch; 481 otherwise. Returns the status sent for the CANCEL.
    pub fn cancel(&mut self, msg: &Message<'_>, now_ms: u64, out: &mut Outbox) -> Option<u16> {
        let sid = self.txns.cancel_target(msg)?;
        let mut txn_out = core::mem::take(&mut self.txn_out);
        self.cancel_branches(sid, now_ms, &mut txn_out);
        if let Some(ctx) = self.contexts.get_mut(&sid) {
            ctx.cancelled = true;
        }
        // If no branch is pending any more, answer the INVITE ourselves.
        let pending = self
            .contexts
            .get(&sid)
            .is_some_and(|c| c.branches.iter().any(|b| !b.done));
        let final_sent = self.contexts.get(&sid).is_none_or(|c| c.final_sent);
        if !pending && !final_sent {
            if let Some(orig) = self.contexts.get(&sid).map(|c| c.original.clone()) {
                if let Ok(req) = Message::parse(&orig) {
                    self.answer(sid, &req, 487, b"Request Terminated", now_ms, &mut txn_out);
                }
            }
        }
        self.drain(&mut txn_out, now_ms, out);
        self.txn_out = txn_out;
        Some(200)
    }

    fn cancel_branches(&mut self, sid: ServerTxnId, now_ms: u64, txn_out: &mut Vec<TxnOut>) {
        // §9.1: a branch that has sent no provisional response yet gets its CANCEL when one
        // comes (until then the INVITE may not even have arrived).
        let Some(ctx) = self.contexts.get_mut(&sid) else {
            return;
        };
        for b in ctx
            .branches
            .iter_mut()
            .filter(|b| !b.done && !b.provisional)
        {
            b.cancel_wanted = true;
        }
        let pending: Vec<(ClientTxnId, Bytes, SocketAddr)> = ctx
            .branches
            .iter()
            .filter(|b| !b.done && b.provisional)
            .map(|b| (b.id, b.request.clone(), b.dst))
            .collect();
        for (cid, request, dst) in pending {
            self.send_cancel(cid, &request, dst, now_ms, txn_out);
        }
    }

    /// Sends a CANCEL for one forwarded INVITE (§9.1) and arms the guard that destroys the
    /// INVITE transaction if no final response follows.
    fn send_cancel(
        &mut self,
        cid: ClientTxnId,
        request: &[u8],
        dst: SocketAddr,
        now_ms: u64,
        txn_out: &mut Vec<TxnOut>,
    ) {
        self.timer_c
            .insert(now_ms + CANCEL_GUARD_MS, ProxyTimer::CancelGuard(cid));
        let Ok(req) = Message::parse(request) else {
            return;
        };
        let Some(branch) = req.top_via().ok().and_then(|v| v.branch()) else {
            return;
        };
        self.scratch.clear();
        if write_cancel(&mut self.scratch, &req) {
            let key = ClientKey::new(branch, b"CANCEL");
            let _ = self.txns.new_client(
                key,
                bytes(&self.scratch),
                dst,
                self.socket,
                false,
                now_ms,
                txn_out,
            );
        }
    }

    /// A response from downstream. Returns false if it matched nothing and was not ours to
    /// relay (the caller counts it as stray).
    pub fn response(&mut self, resp: &Message<'_>, now_ms: u64, out: &mut Outbox) -> bool {
        let mut txn_out = core::mem::take(&mut self.txn_out);
        let matched = self.txns.on_response(resp, now_ms, &mut txn_out);
        let mut ok = true;
        match matched {
            Some((cid, ClientEvent::Absorbed)) => {
                let _ = cid;
            }
            Some((cid, ClientEvent::Provisional { status })) => {
                if let Some(&sid) = self.client_ctx.get(&cid) {
                    self.restart_timer_c(sid, cid, now_ms, &mut txn_out);
                    let final_sent = self.contexts.get(&sid).is_none_or(|c| c.final_sent);
                    if status > 100 && !final_sent {
                        self.scratch.clear();
                        if write_response_upstream(&mut self.scratch, resp) {
                            let _ = self.txns.server_respond(
                                sid,
                                status,
                                bytes(&self.scratch),
                                now_ms,
                                &mut txn_out,
                            );
                        }
                    }
                }
            }
            Some((cid, ClientEvent::Final { status })) => {
                if let Some(&sid) = self.client_ctx.get(&cid) {
                    self.scratch.clear();
                    if write_response_upstream(&mut self.scratch, resp) {
                        let upstream = bytes(&self.scratch);
                        self.branch_final(sid, cid, status, Some(upstream), now_ms, &mut txn_out);
                    }
                }
                // Responses to our CANCELs have no context: nothing to do.
            }
            None => {
                // No transaction (e.g. a 2xx retransmitted after ours ended): relay it
                // statelessly if the top Via is ours (§16.7 step 3 / §16.11).
                let ours = resp.top_via().ok().is_some_and(|v| {
                    v.branch().is_some_and(|b| {
                        b.starts_with(b"z9hG4bK-ss") || b.starts_with(b"z9hG4bK-sl")
                    })
                });
                ok = false;
                if ours {
                    if let Some(dst) = next_via_destination(resp) {
                        let (buf, start) = out.begin();
                        if write_response_upstream(buf, resp) {
                            self.stats.message_sent(&buf[start..]);
                            out.commit(start, dst, self.socket as usize);
                            ok = true;
                        } else {
                            out.abort(start);
                        }
                    }
                }
            }
        }
        self.drain(&mut txn_out, now_ms, out);
        self.txn_out = txn_out;
        ok
    }

    /// A branch ended with `status` (`upstream` = the response to relay, None for our own
    /// 408 on timeout). §16.7 steps 5-10.
    fn branch_final(
        &mut self,
        sid: ServerTxnId,
        cid: ClientTxnId,
        status: u16,
        upstream: Option<Bytes>,
        now_ms: u64,
        txn_out: &mut Vec<TxnOut>,
    ) {
        let Some(ctx) = self.contexts.get_mut(&sid) else {
            return;
        };
        if let Some(b) = ctx.branches.iter_mut().find(|b| b.id == cid) {
            b.done = true;
            // A finished branch is never cancelled: free its copy of the request.
            b.request = crate::txn::empty_bytes();
            if let Some(k) = b.timer_c.take() {
                self.timer_c.cancel(k);
            }
        }
        if (200..300).contains(&status) {
            // Every 2xx is relayed at once (§16.7 step 5), and the other branches cancelled.
            ctx.final_sent = true;
            ctx.original = crate::txn::empty_bytes();
            if let Some(up) = upstream {
                let _ = self.txns.server_respond(sid, status, up, now_ms, txn_out);
            }
            if ctx.is_invite {
                self.cancel_branches(sid, now_ms, txn_out);
            }
            return;
        }
        if ctx.final_sent {
            return;
        }
        let response = match upstream {
            Some(up) => up,
            None => {
                // Our own 408 for a branch that never answered.
                let Ok(req) = Message::parse(&ctx.original) else {
                    return;
                };
                let mut b = Vec::new();
                response_head(&mut b, &req, 408, b"Request Timeout", Some(b"to"), None);
                finish(&mut b, b"");
                bytes(&b)
            }
        };
        let replace = ctx.best.as_ref().is_none_or(|(s, _)| better(status, *s));
        if replace {
            ctx.best = Some((status, response));
        }
        let six = status >= 600;
        if six && ctx.is_invite {
            self.cancel_branches(sid, now_ms, txn_out);
        }
        let Some(ctx) = self.contexts.get_mut(&sid) else {
            return;
        };
        if ctx.branches.iter().all(|b| b.done) {
            if let Some((s, r)) = ctx.best.take() {
                // §16.7 step 6: a 503 from downstream is relayed as 500.
                let (s, r) = if s == 503 {
                    (500, rewrite_status(&r, 500, b"Server Internal Error"))
                } else {
                    (s, r)
                };
                ctx.final_sent = true;
                ctx.original = crate::txn::empty_bytes();
                let _ = self.txns.server_respond(sid, s, r, now_ms, txn_out);
            }
        }
    }

    /// §16.7 step 2: a provisional response restarts the branch's Timer C (and releases a
    /// CANCEL that waited for it).
    fn restart_timer_c(
        &mut self,
        sid: ServerTxnId,
        cid: ClientTxnId,
        now_ms: u64,
        txn_out: &mut Vec<TxnOut>,
    ) {
        let Some(b) = self
            .contexts
            .get_mut(&sid)
            .and_then(|c| c.branches.iter_mut().find(|b| b.id == cid))
        else {
            return;
        };
        b.provisional = true;
        if b.cancel_wanted && !b.done {
            b.cancel_wanted = false;
            let (request, dst) = (b.request.clone(), b.dst);
            self.send_cancel(cid, &request, dst, now_ms, txn_out);
            return;
        }
        if let Some(k) = b.timer_c.take() {
            self.timer_c.cancel(k);
            b.timer_c = Some(self.timer_c.insert(now_ms + TIMER_C_MS, ProxyTimer::C(cid)));
        }
    }

    /// Timer C fired (§16.8): cancel the branch and let it count as 408.
    fn timer_c_fired(&mut self, cid: ClientTxnId, now_ms: u64, txn_out: &mut Vec<TxnOut>) {
        let Some(&sid) = self.client_ctx.get(&cid) else {
            return;
        };
        let Some(b) = self
            .contexts
            .get_mut(&sid)
            .and_then(|c| c.branches.iter_mut().find(|b| b.id == cid))
        else {
            return;
        };
        b.timer_c = None;
        if b.done {
            return;
        }
        let (request, dst) = (b.request.clone(), b.dst);
        self.send_cancel(cid, &request, dst, now_ms, txn_out);
        self.branch_final(sid, cid, 408, None, now_ms, txn_out);
    }

    /// Moves transaction output into the outbox and handles TU events.
    fn drain(&mut self, txn_out: &mut Vec<TxnOut>, now_ms: u64, out: &mut Outbox) {
        let mut i = 0;
        while i < txn_out.len() {
            match txn_out[i].clone() {
                TxnOut::Send { bytes, dst, socket } => {
                    self.stats.message_sent(&bytes);
                    out.push(&bytes, dst, socket as usize)
                }
                TxnOut::Client { id, event } => match event {
                    TxnEvent::Timeout | TxnEvent::TransportError => {
                        if let Some(&sid) = self.client_ctx.get(&id) {
                            let mut more = Vec::new();
                            self.branch_final(sid, id, 408, None, now_ms, &mut more);
                            txn_out.extend(more);
                        }
                    }
                    TxnEvent::Terminated => {
                        self.client_ctx.remove(&id);
                    }
                },
                TxnOut::Server { id, event } => {
                    if event == TxnEvent::Terminated {
                        if let Some(ctx) = self.contexts.remove(&id) {
                            for b in ctx.branches {
                                if self.txns.client_state(b.id).is_none() {
                                    self.client_ctx.remove(&b.id);
                                }
                            }
                        }
                    }
                }
            }
            i += 1;
        }
        txn_out.clear();
    }
}

/// A copy of `resp` with another status line.
fn rewrite_status(resp: &[u8], status: u16, reason: &[u8]) -> Bytes {
    let eol = memchr::memchr(b'\n', resp).map_or(resp.len(), |i| i + 1);
    let mut v = Vec::with_capacity(resp.len());
    v.extend_from_slice(b"SIP/2.0 ");
    v.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    v.push(b' ');
    v.extend_from_slice(reason);
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(&resp[eol..]);
    bytes(&v)
}

/// Writes `Contact` lines for a 302 (redirect mode) from targets.
pub fn write_contacts(out: &mut Vec<u8>, uris: &[&[u8]]) {
    for u in uris {
        let mut v = Vec::with_capacity(u.len() + 2);
        v.push(b'<');
        v.extend_from_slice(u);
        v.push(b'>');
        header(out, "Contact", &v);
    }
}

/// True if the host of `uri` is an IP literal (we route without DNS).
pub fn is_ip_literal(uri: &Uri<'_>) -> bool {
    matches!(uri.host_kind, HostKind::Ipv4 | HostKind::Ipv6)
}

/// The shard named by a branch this proxy wrote (`z9hG4bK-ss<shard>.<n>`).
pub fn shard_of_branch(branch: &[u8]) -> Option<usize> {
    let rest = branch.strip_prefix(b"z9hG4bK-ss")?;
    let end = rest.iter().position(|&c| c == b'.')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The header carrying the next hop of an in-dialog request after loose routing: the first
/// Route that is not us, else the Request-URI (§16.12).
pub fn next_hop<'a>(msg: &Message<'a>, proxy: &Proxy) -> Option<(Uri<'a>, bool)> {
    let mut routes = msg.name_addrs(HeaderName::Route).filter_map(|r| r.ok());
    if let Some(first) = routes.next() {
        let u = first.uri().ok()?;
        if !proxy.is_ours(&u) {
            return Some((u, true));
        }
        if let Some(second) = routes.next() {
            return Some((second.uri().ok()?, true));
        }
    }
    Some((msg.request_uri().ok()?, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_response_order() {
        assert!(better(600, 486));
        assert!(!better(486, 603));
        assert!(better(486, 503));
        assert!(better(302, 404));
        assert!(!better(408, 404));
    }

    #[test]
    fn branch_shard() {
        let mut b = Vec::new();
        write_branch(&mut b, 3, 99);
        assert_eq!(shard_of_branch(&b), Some(3));
        assert_eq!(shard_of_branch(b"z9hG4bKabc"), None);
    }

    #[test]
    fn status_rewrite() {
        let r = rewrite_status(
            b"SIP/2.0 503 Busy\r\nVia: x\r\n\r\n",
            500,
            b"Server Internal Error",
        );
        assert!(r.starts_with(b"SIP/2.0 500 Server Internal Error\r\nVia: x"));
    }
}
