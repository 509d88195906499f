//! The stateful proxy of one shard (RFC 3261 §16, on the transaction layer of §17): forwards
//! initial requests to every current binding of the target AOR, in parallel or in groups of
//! descending q-value (§16.6), relays provisional responses, picks the best final response and
//! aggregates 401/407 challenges (§16.7), cancels pending branches on a 2xx or 6xx and on
//! CANCEL (§16.10), detects loops by the hash part of its Via branches (§16.3 item 4),
//! record-routes dialog-creating requests through this shard's own port and loose-routes
//! in-dialog requests (§16.4, §16.12). Sans-I/O: everything it sends goes into the
//! [`Outbox`]; time is a parameter.

use super::messages::{
    collect_challenges, hex16, loop_hash_keyed, loop_part, write_branch, write_branch_head,
    write_cancel, write_response_upstream, write_with_challenges,
};
use super::settings::{Forking, ProxySettings};
use super::topology::Hider;
use crate::server::outbox::Outbox;
use crate::sip::uri::HostKind;
use crate::sip::write::{finish, header, response_head, write_forward, ForwardEdits};
use crate::sip::Proto;
use crate::sip::{HeaderName, Message, Method, Uri};
use crate::timer::{TimerKey, TimerWheel};
use crate::txn::{
    AckOutcome, Bytes, ClientEvent, ClientKey, ClientState, ClientTxnId, Match, ServerTxnId,
    TransactionTable, TxnConfig, TxnEvent, TxnOut,
};
use hashbrown::HashMap;
use std::net::{IpAddr, SocketAddr};

/// A target of a forwarded request: the URI to put in the Request-URI, where to send it, its
/// q-value in thousandths (a redirect lists it) and its group: with sequential forking the
/// groups are tried one after the other in ascending order, the targets of a group at once.
#[derive(Debug, Clone, Copy)]
pub struct Target<'t> {
    pub uri: &'t [u8],
    pub dst: SocketAddr,
    pub q: u16,
    pub group: u16,
    /// `dst` is the flow a UA registered on (behind NAT, or RFC 5626 outbound), not its
    /// Contact: our Record-Route names it (`ft=`) so that in-dialog requests follow it too.
    pub flow: bool,
    /// The local socket it leaves from (its transport: a UA registered over a connection
    /// is reached over that connection, a URI with `transport=tcp` over TCP).
    pub socket: u16,
    /// The Path its binding was registered through (RFC 3327 §5.3): it becomes the branch's
    /// Route set, and `dst` is its first hop.
    pub paths: crate::registrar::PathIter<'t>,
}

/// A target of a later group of sequential forking, kept until its turn comes.
struct PendingTarget {
    uri: Box<[u8]>,
    dst: SocketAddr,
    q: u16,
    group: u16,
    flow: bool,
    socket: u16,
    /// [`crate::registrar::PathIter::raw`].
    paths: Box<[u8]>,
}

/// How the targets of one request are tried (§16.6, §16.7), and the policies routing adds:
/// trunk failover, hunt groups, ring groups.
#[derive(Debug, Clone, Copy)]
pub struct Fork<'a> {
    /// Initial requests: each branch's Request-URI is its target's URI.
    pub rewrite_uri: bool,
    /// Dialog-creating requests get our Record-Route (false for a request we sent ourselves,
    /// coming back to us: the first pass record-routed it).
    pub record_route: bool,
    /// How long a group of targets may try before its pending branches are cancelled (as
    /// 408) and the next group starts.
    pub group_timeout_ms: Option<u64>,
    /// The timeout also bounds the last group (else only Timer C does).
    pub timeout_last: bool,
    /// Any response from the group, even a 100, stops its timeout ("no response at all").
    pub timeout_until_response: bool,
    /// A 4xx other than 408 ends the search like a 6xx (a busy or wrong number is not a
    /// routing failure).
    pub final_4xx: bool,
    /// Header lines added to every branch, each ending in CRLF.
    pub extra_headers: &'a [u8],
}

impl Fork<'_> {
    /// Forwarding to the bindings of a user (targets grouped by the caller: one group in
    /// parallel forking, one per q-value in sequential forking) with the proxy's settings.
    pub fn bindings(settings: &ProxySettings) -> Fork<'static> {
        Fork {
            rewrite_uri: true,
            record_route: true,
            group_timeout_ms: (settings.forking == Forking::Sequential)
                .then_some(settings.branch_timeout_ms),
            timeout_last: false,
            timeout_until_response: false,
            final_4xx: false,
            extra_headers: b"",
        }
    }

    /// Forwarding an in-dialog request to its next hop.
    pub fn next_hop() -> Fork<'static> {
        Fork {
            rewrite_uri: false,
            record_route: false,
            group_timeout_ms: None,
            timeout_last: false,
            timeout_until_response: false,
            final_4xx: false,
            extra_headers: b"",
        }
    }
}

/// The parts of a [`Fork`] kept with a request for its later groups.
#[derive(Debug, Clone, Copy)]
struct Policy {
    group_timeout_ms: Option<u64>,
    timeout_last: bool,
    timeout_until_response: bool,
    final_4xx: bool,
}

/// How the branches of one request are written (kept for the later groups of sequential
/// forking, which are written from the stored original request).
#[derive(Debug, Clone, Copy)]
struct Plan {
    rewrite_uri: bool,
    /// Route values of ours at the top, removed when forwarding (2: a double Record-Route).
    pop_route: u8,
    /// The socket the request came in on, and the caller's connection when that is a
    /// stream (named in our Record-Route, `fc=`, so the callee's requests reach it).
    in_socket: u16,
    caller_flow: Option<SocketAddr>,
    dialog_creating: bool,
    /// §16.6 step 8: the loop-detection hash of the request as received.
    loop_hash: u64,
    policy: Policy,
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
    /// Sequential forking: the group with this number has tried long enough.
    Group(ServerTxnId, u32),
}

/// One forwarded copy of a request.
struct Branch {
    id: ClientTxnId,
    /// Timer C of an INVITE branch.
    timer_c: Option<TimerKey>,
    /// The request as forwarded (for CANCEL).
    request: Bytes,
    dst: SocketAddr,
    socket: u16,
    done: bool,
    /// A provisional response came (a CANCEL may be sent, §9.1).
    provisional: bool,
    /// A CANCEL is owed as soon as the first provisional response comes.
    cancel_wanted: bool,
}

impl Branch {
    /// The request as forwarded, leaving the branch without it: it is kept only to build
    /// this branch's CANCEL, so once that is sent (or can no longer be) its bytes go.
    fn take_request(&mut self) -> Bytes {
        core::mem::replace(&mut self.request, crate::txn::empty_bytes())
    }
}

/// The response context of one server transaction (§16.7).
struct Forwarding {
    is_invite: bool,
    /// When the request arrived (the setup time in call logs).
    started_ms: u64,
    /// The request as received (to build a 408 or 487 ourselves).
    original: Bytes,
    branches: Vec<Branch>,
    /// Best final response so far: (status, bytes ready to send upstream), and the branch
    /// destination it came from (None: our own 408).
    best: Option<(u16, Bytes)>,
    best_dst: Option<SocketAddr>,
    /// A call attempt (with call detail records): its final response ends the record.
    attempt: bool,
    final_sent: bool,
    cancelled: bool,
    plan: Plan,
    /// Sequential forking: the targets of the groups not tried yet, highest q first (empty,
    /// and never allocated, in parallel forking).
    rest: Vec<PendingTarget>,
    /// Sequential forking: the number of the current group and the timer that ends it.
    group: u32,
    group_timer: Option<TimerKey>,
    /// Header lines every branch gets (None: none).
    extra_headers: Option<Bytes>,
    /// §16.7 step 7: the WWW-Authenticate / Proxy-Authenticate lines of every 401/407
    /// received, and how many responses they came from.
    challenges: Vec<u8>,
    challenge_responses: u16,
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
    stats: std::sync::Arc<crate::stats::ShardStats>,
    txns: TransactionTable,
    /// `ip:port` written in our Via and Record-Route (of the default socket).
    host: String,
    /// The shard socket our forwarded requests leave from unless their target says
    /// otherwise: the first UDP socket.
    socket: u16,
    /// Every local socket by index (what it speaks) and its `ip:port` text.
    sockets: Vec<crate::sip::Local>,
    hosts: Vec<String>,
    /// Addresses that are this proxy (for loose routing and loop detection): the listen
    /// addresses.
    ours: Vec<SocketAddr>,
    branch_seq: u64,
    settings: ProxySettings,
    contexts: HashMap<ServerTxnId, Forwarding>,
    /// The server transaction key `absorb` found new, for the `forward` of the same request
    /// (identified by its buffer address and length).
    new_key: Option<(usize, usize, crate::txn::ServerKey)>,
    client_ctx: HashMap<ClientTxnId, ServerTxnId>,
    txn_out: Vec<TxnOut>,
    scratch: Vec<u8>,
    /// The Via and Record-Route values being written for a branch.
    via: Vec<u8>,
    record_route: Vec<u8>,
    /// Where a request is rewritten for topology hiding.
    hide_buf: Vec<u8>,
    /// Timer C of every pending INVITE branch, the guards of cancelled branches and the
    /// group timers of sequential forking.
    timer_c: TimerWheel<ProxyTimer>,
    /// Call logs (info level): answered calls and when.
    pub calls: super::calls::CallLog,
}

fn bytes(v: &[u8]) -> Bytes {
    Bytes::from(v)
}

/// An IP address written as text: dotted-quad IPv4 read directly from the bytes (the
/// common case on every hop), anything else through `std`'s parser (the same verdict: the
/// fast path takes only the canonical form `std` accepts, without leading zeros).
pub fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    let mut i = 0;
    while n < 4 {
        let start = i;
        let mut v: u32 = 0;
        while i < host.len() && host[i].is_ascii_digit() && i - start < 3 {
            v = v * 10 + (host[i] - b'0') as u32;
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || v > 255 || (digits > 1 && host[start] == b'0') {
            break;
        }
        octets[n] = v as u8;
        n += 1;
        if n < 4 {
            if host.get(i) != Some(&b'.') {
                break;
            }
            i += 1;
        }
    }
    if n == 4 && i == host.len() {
        return Some(IpAddr::from(octets));
    }
    std::str::from_utf8(host).ok()?.parse().ok()
}

/// The address a SIP URI names when its host is an IP literal (no DNS here).
pub fn uri_address(uri: &Uri<'_>) -> Option<SocketAddr> {
    let ip = parse_ip(uri.maddr().unwrap_or(uri.host))?;
    let default = if matches!(uri.scheme, crate::sip::Scheme::Sips) {
        5061
    } else {
        5060
    };
    Some(SocketAddr::new(ip, uri.port.unwrap_or(default)))
}

/// The flow an in-dialog request must take (RFC 5626 §5.3), with the local socket to send
/// on: when its top Route is ours, the callee's flow (`ft`) unless the request comes from it,
/// else the caller's connection (`fc`) unless it comes from that (a request from the UA
/// itself goes on by its Route set and Request-URI).
pub fn flow_destination(
    msg: &Message<'_>,
    proxy: &Proxy,
    src: SocketAddr,
) -> Option<(SocketAddr, u16)> {
    let top = msg.top_route_uri()?;
    if !proxy.is_ours(&top) {
        return None;
    }
    let callee = crate::nat::flow_token(&top);
    let caller = crate::nat::caller_flow_token(&top);
    // Which side sent it, by its flow exactly (not by IP address: phones behind one NAT
    // share theirs).
    let is = |f: Option<(Proto, SocketAddr)>| f.is_some_and(|(_, a)| a == src);
    let (proto, dst) = if is(callee) {
        caller?
    } else if is(caller) {
        callee?
    } else {
        // From neither flow: a caller reached at its Contact toward the callee's flow, or a
        // callee reached at its Contact toward the caller's connection.
        callee.or(caller)?
    };
    Some((dst, proxy.socket_for(proto)?))
}

/// The IP address a Via host (or `received`) names, IPv6 brackets or not; None for a name.
pub fn via_host_ip(host: &[u8]) -> Option<IpAddr> {
    let host = host.strip_prefix(b"[").unwrap_or(host);
    let host = host.strip_suffix(b"]").unwrap_or(host);
    parse_ip(host)
}

/// Where a response written for upstream goes: its top Via (received, rport, sent-by).
fn top_via_destination(upstream: &[u8]) -> Option<SocketAddr> {
    let resp = Message::parse(upstream).ok()?;
    let via = resp.vias().next()?.ok()?;
    let ip = via_host_ip(via.received().unwrap_or(via.host))?;
    let port = match via.rport() {
        Some(Some(p)) => p,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

/// True if `uri` routes to one of `ours` (what [`Proxy::is_ours`] asks, for callers that
/// hold other fields of the proxy borrowed).
fn routes_to(ours: &[SocketAddr], uri: &Uri<'_>) -> bool {
    uri_address(uri).is_some_and(|a| addr_is_ours(ours, a))
}

fn addr_is_ours(ours: &[SocketAddr], addr: SocketAddr) -> bool {
    ours.iter()
        .any(|o| o.port() == addr.port() && (o.ip() == addr.ip() || o.ip().is_unspecified()))
}

/// Writes `resp` for upstream (§16.7 step 3): without our Via, or, when the request left
/// with topology hiding, with what was hidden put back (`super::topology`).
fn write_upstream(
    hider: Option<&Hider>,
    host: &str,
    ours: &[SocketAddr],
    out: &mut Vec<u8>,
    resp: &Message<'_>,
) -> bool {
    if let Some(h) = hider {
        let start = out.len();
        if h.hide_response(resp, host, &|u: &Uri<'_>| routes_to(ours, u), out) {
            return true;
        }
        out.truncate(start);
        // Our Via without a sealed chain: the request left as it was (to ourselves, or
        // before hiding was turned on); a forged chain leaves nothing to relay.
        if resp
            .top_via()
            .ok()
            .is_some_and(|v| v.params.get("th").is_some())
        {
            return false;
        }
    }
    write_response_upstream(out, resp)
}

/// §16.7 step 6: the better of two final responses (6xx first, then the lowest class; in
/// the 4xx class those that let the caller resubmit: 401, 407, 415, 420, 484).
fn better(new: u16, old: u16) -> bool {
    let resubmittable = |s: u16| matches!(s, 401 | 407 | 415 | 420 | 484);
    match (new / 100, old / 100) {
        (6, 6) => new < old,
        (6, _) => true,
        (_, 6) => false,
        (4, 4) => resubmittable(new) && !resubmittable(old),
        (a, b) => a < b,
    }
}

impl Proxy {
    /// A proxy on the local sockets `sockets` (by index; the first UDP one is where requests
    /// leave by default and what our Via names then); every address of them routes to this
    /// server.
    pub fn new(
        shard: usize,
        sockets: &[crate::sip::Local],
        settings: ProxySettings,
        stats: std::sync::Arc<crate::stats::ShardStats>,
    ) -> Proxy {
        let mut calls = super::calls::CallLog::default();
        calls.set_cdr(shard, settings.cdr.clone());
        let socket = sockets
            .iter()
            .position(|l| l.proto == Proto::Udp)
            .unwrap_or(0);
        let hosts: Vec<String> = sockets.iter().map(|l| l.addr.to_string()).collect();
        let mut ours: Vec<SocketAddr> = Vec::new();
        for l in sockets {
            if !ours.contains(&l.addr) {
                ours.push(l.addr);
            }
        }
        Proxy {
            shard,
            stats,
            txns: TransactionTable::new(TxnConfig::default()),
            host: hosts.get(socket).cloned().unwrap_or_default(),
            socket: socket as u16,
            sockets: sockets.to_vec(),
            hosts,
            ours,
            branch_seq: 0,
            settings,
            contexts: HashMap::new(),
            new_key: None,
            client_ctx: HashMap::new(),
            txn_out: Vec::new(),
            scratch: Vec::with_capacity(2048),
            via: Vec::with_capacity(96),
            record_route: Vec::with_capacity(64),
            hide_buf: Vec::new(),
            timer_c: TimerWheel::new(1_000, 512),
            calls,
        }
    }

    /// New settings (a reload): forking and the group timeout of the requests that follow.
    pub fn set_settings(&mut self, mut settings: ProxySettings) {
        // A reload without a configured key keeps the key in use: a new random one would
        // leave every dialog in progress with values nobody can open.
        if let (Some(old), Some(new)) = (&self.settings.topology, &settings.topology) {
            if new.is_random() {
                settings.topology = Some(old.clone());
            }
        }
        self.calls.set_cdr(self.shard, settings.cdr.clone());
        self.settings = settings;
    }

    /// §16.3 item 4: true if the request carries a Via this server wrote (its sent-by is one
    /// of our addresses) whose branch has the loop hash of this very request: it has been
    /// here before unchanged, a loop. A different hash is a spiral, which is allowed.
    pub fn loop_detected(&self, msg: &Message<'_>) -> bool {
        // Cheap test first: almost no request carries one of our branches.
        let finder = memchr::memmem::Finder::new(b"z9hG4bK-ss");
        if !msg
            .header_all(HeaderName::Via)
            .any(|v| finder.find(v).is_some())
        {
            return false;
        }
        // The hash a stateful branch carries, and the one of a stateless forward (no To tag).
        let mut ours: Option<([u8; 16], [u8; 16])> = None;
        for via in msg.vias().filter_map(|v| v.ok()) {
            let Some(part) = via.branch().and_then(loop_part) else {
                continue;
            };
            let Some(ip) = parse_ip(via.host) else {
                continue;
            };
            if !self.is_ours_addr(SocketAddr::new(ip, via.port.unwrap_or(5060))) {
                continue;
            }
            let (full, stateless) = ours.get_or_insert_with(|| {
                let id = self.canonical_call_id(msg);
                (
                    hex16(loop_hash_keyed(msg, &id, true)),
                    hex16(loop_hash_keyed(msg, &id, false)),
                )
            });
            if part == full || part == stateless {
                return true;
            }
        }
        false
    }

    /// Transactions in the table.
    pub fn transactions(&self) -> usize {
        self.txns.len()
    }

    /// True if a server transaction of this request exists (it is a retransmission).
    pub fn has_server_transaction(&self, msg: &Message<'_>) -> bool {
        self.txns.server_lookup(msg).is_some()
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
        routes_to(&self.ours, uri)
    }

    /// True if `addr` is one of this server's addresses.
    pub fn is_ours_addr(&self, addr: SocketAddr) -> bool {
        addr_is_ours(&self.ours, addr)
    }

    /// What local socket `socket` speaks (UDP for an index out of range).
    pub fn proto_of(&self, socket: u16) -> Proto {
        self.sockets
            .get(crate::sip::proto::socket_index(socket) as usize)
            .map_or(Proto::Udp, |l| l.proto)
    }

    /// The `ip:port` text of local socket `socket`.
    fn host_of(&self, socket: u16) -> &str {
        self.hosts
            .get(crate::sip::proto::socket_index(socket) as usize)
            .unwrap_or(&self.host)
    }

    /// The first local socket speaking `proto`.
    pub fn socket_for(&self, proto: Proto) -> Option<u16> {
        if proto == Proto::Udp {
            return Some(self.socket);
        }
        self.sockets
            .iter()
            .position(|l| l.proto == proto)
            .map(|i| i as u16)
    }

    /// The socket a request to `uri` leaves from: the one its `transport` parameter names
    /// (a `sips:` URI: TLS), else UDP. None when we have no socket of that transport.
    pub fn socket_for_uri(&self, uri: &Uri<'_>) -> Option<u16> {
        let proto = match uri.transport().and_then(Proto::parse) {
            Some(p) => p,
            None if uri.scheme == crate::sip::Scheme::Sips => Proto::Tls,
            None => Proto::Udp,
        };
        let socket = self.socket_for(proto)?;
        // Over a stream the URI names where the peer listens: the shell may connect there.
        Some(if proto.is_stream() {
            socket | crate::sip::proto::CONNECT
        } else {
            socket
        })
    }

    /// Our sockets, by index.
    pub fn locals(&self) -> &[crate::sip::Local] {
        &self.sockets
    }

    /// The default socket (the first UDP one).
    pub fn default_socket(&self) -> u16 {
        self.socket
    }

    /// The topology hider, when topology hiding is on.
    pub fn hider(&self) -> Option<&Hider> {
        self.settings.topology.as_deref()
    }

    /// The Call-ID a request is keyed by: a masked one unmasked (topology hiding).
    pub fn canonical_call_id<'m>(&self, msg: &Message<'m>) -> std::borrow::Cow<'m, [u8]> {
        let id = msg.call_id().unwrap_or_default();
        match self.hider() {
            Some(h) => h.canonical_call_id(id),
            None => std::borrow::Cow::Borrowed(id),
        }
    }

    /// Rewrites the request in `buf` (forwarded to `dst`) for topology hiding; nothing when
    /// it is off or `dst` is this server (a spiral is hidden where it leaves for good).
    fn hide_forwarded(&mut self, buf: &mut Vec<u8>, from: usize, dst: SocketAddr) {
        let Some(h) = self.settings.topology.clone() else {
            return;
        };
        if self.is_ours_addr(dst) {
            return;
        }
        let mut hidden = core::mem::take(&mut self.hide_buf);
        hidden.clear();
        if let Ok(fwd) = Message::parse(&buf[from..]) {
            let ours = &self.ours;
            h.hide_request(
                &fwd,
                &self.host,
                &|u: &Uri<'_>| routes_to(ours, u),
                &mut hidden,
            );
            buf.truncate(from);
            buf.extend_from_slice(&hidden);
        }
        self.hide_buf = hidden;
    }

    /// True if the first Route names this proxy (it is removed when forwarding, §16.4).
    fn top_route_is_ours(&self, msg: &Message<'_>) -> bool {
        msg.top_route_uri().is_some_and(|u| self.is_ours(&u))
    }

    /// How many Route values at the top name this proxy (removed when forwarding): 0, 1, or
    /// 2 for the double Record-Route we write when a dialog crosses transports (RFC 5658).
    fn our_top_routes(&self, msg: &Message<'_>) -> u8 {
        if !self.top_route_is_ours(msg) {
            return 0;
        }
        if msg.has_one_value(HeaderName::Route) {
            return 1;
        }
        let mut routes = msg.routes().filter_map(|r| r.ok());
        routes.next();
        match routes.next().and_then(|r| r.uri().ok()) {
            Some(u) if self.is_ours(&u) && u.param("ss").is_some() => 2,
            _ => 1,
        }
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
                    // One that got its final response ends by itself (Timer D or M).
                    if matches!(
                        self.txns.client_state(cid),
                        Some(ClientState::Calling | ClientState::Proceeding)
                    ) {
                        // The branch counts as unanswered (408), not as a transport error.
                        if let Some(&sid) = self.client_ctx.get(&cid) {
                            self.branch_final(sid, cid, 408, None, now_ms, &mut txn_out);
                        }
                        self.txns.client_transport_error(cid, &mut txn_out);
                    }
                }
                ProxyTimer::Group(sid, group) => {
                    self.group_timeout(sid, group, now_ms, &mut txn_out)
                }
            }
        }
        self.drain(&mut txn_out, now_ms, out);
        self.txn_out = txn_out;
    }

    /// Matches a request against the server transactions: retransmissions are absorbed (the
    /// last response resent) and so are ACKs of non-2xx finals. Returns Some(Absorbed) then.
    pub fn absorb(&mut self, msg: &Message<'_>, now_ms: u64, out: &mut Outbox) -> Option<Handled> {
        self.new_key = None;
        let mut txn_out = core::mem::take(&mut self.txn_out);
        let m = self.txns.on_server_request(msg, now_ms, &mut txn_out);
        self.drain(&mut txn_out, now_ms, out);
        self.txn_out = txn_out;
        match m {
            Ok(Match::New(key)) => {
                // `forward` of this same request creates its transaction with this key
                // instead of building it again.
                self.new_key = Some((msg.buf().as_ptr() as usize, msg.len(), key));
                None
            }
            // RFC 6026 §8.7: an ACK in Accepted is passed to the TU (it is forwarded).
            Ok(Match::Ack(_, AckOutcome::PassToTu)) => None,
            Ok(Match::Retransmission(_)) | Ok(Match::Ack(..)) => Some(Handled::Absorbed),
            _ => None,
        }
    }

    /// Forwards a request statefully to `targets` as `fork` says (initial requests: one
    /// branch per target, the targets of the first group at once, the next group when every
    /// branch of one has ended or its timeout fired; targets come sorted by group) or to the
    /// next hop of an in-dialog request (one target, [`Fork::next_hop`]). `response_dst` is
    /// where responses go (§18.2.2).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        msg: &Message<'_>,
        response_dst: SocketAddr,
        in_socket: usize,
        targets: &[Target<'_>],
        fork: &Fork<'_>,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Handled {
        let method = msg.method().unwrap_or(Method::Other);
        let is_invite = method == Method::Invite;
        let key = self
            .new_key
            .take()
            .filter(|(at, len, _)| *at == msg.buf().as_ptr() as usize && *len == msg.len());
        let reliable = self.proto_of(in_socket as u16).is_stream();
        let created = match key {
            Some((_, _, key)) => {
                self.txns
                    .insert_server(key, method, response_dst, in_socket as u16, reliable)
            }
            None => self
                .txns
                .new_server(msg, response_dst, in_socket as u16, reliable),
        };
        let sid = match created {
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
        let plan = Plan {
            rewrite_uri: fork.rewrite_uri,
            pop_route: self.our_top_routes(msg),
            in_socket: in_socket as u16,
            caller_flow: reliable.then_some(response_dst),
            dialog_creating: fork.record_route
                && msg.to().ok().and_then(|t| t.tag()).is_none()
                && matches!(method, Method::Invite | Method::Subscribe | Method::Refer),
            loop_hash: loop_hash_keyed(msg, &self.canonical_call_id(msg), true),
            policy: Policy {
                group_timeout_ms: fork.group_timeout_ms,
                timeout_last: fork.timeout_last,
                timeout_until_response: fork.timeout_until_response,
                final_4xx: fork.final_4xx,
            },
        };
        let extra_headers = (!fork.extra_headers.is_empty()).then(|| bytes(fork.extra_headers));
        // The first group goes now; the others wait (§16.6: with sequential forking, "in
        // descending q order when q-values differ").
        let first_group = match targets.first() {
            Some(first) => targets
                .iter()
                .take_while(|t| t.group == first.group)
                .count(),
            None => 0,
        };
        let mut ctx = Forwarding {
            is_invite,
            started_ms: now_ms,
            original: bytes(&msg.buf()[msg.start_offset()..msg.len()]),
            branches: Vec::with_capacity(first_group),
            best: None,
            best_dst: None,
            attempt: false,
            final_sent: false,
            cancelled: false,
            plan,
            rest: targets[first_group..]
                .iter()
                .map(|t| PendingTarget {
                    uri: t.uri.into(),
                    dst: t.dst,
                    q: t.q,
                    group: t.group,
                    flow: t.flow,
                    socket: t.socket,
                    paths: t.paths.raw().into(),
                })
                .collect(),
            group: 0,
            group_timer: None,
            extra_headers: extra_headers.clone(),
            challenges: Vec::new(),
            challenge_responses: 0,
        };
        let mut status_err = None;
        let extra = extra_headers.as_deref().unwrap_or_default();
        for t in &targets[..first_group] {
            match self.start_branch(sid, msg, &plan, extra, is_invite, *t, now_ms, &mut txn_out) {
                Ok(Some(b)) => ctx.branches.push(b),
                Ok(None) => {}
                Err(status) => {
                    status_err = Some(status);
                    break;
                }
            }
        }
        let n = ctx.branches.len();
        if let Some(ms) = plan.policy.group_timeout_ms {
            if n > 0 && (!ctx.rest.is_empty() || plan.policy.timeout_last) {
                ctx.group_timer = Some(self.timer_c.insert(now_ms + ms, ProxyTimer::Group(sid, 0)));
            }
        }
        let more = !ctx.rest.is_empty();
        if is_invite && self.calls.cdr_on() && msg.to().ok().and_then(|t| t.tag()).is_none() {
            ctx.attempt = self.calls.attempt_forwarded(msg, now_ms);
        }
        self.contexts.insert(sid, ctx);
        if n == 0 && more && status_err.is_none() {
            // No branch of the first group could start: on to the next.
            self.advance(sid, now_ms, &mut txn_out);
        } else if n == 0 {
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

    /// Writes and sends one branch of `msg` to `target` (§16.6 steps 1-10). Ok(None) if
    /// the client transaction could not be created, Err(483) if the request cannot be
    /// forwarded at all.
    #[allow(clippy::too_many_arguments)]
    fn start_branch(
        &mut self,
        sid: ServerTxnId,
        msg: &Message<'_>,
        plan: &Plan,
        extra_headers: &[u8],
        is_invite: bool,
        target: Target<'_>,
        now_ms: u64,
        txn_out: &mut Vec<TxnOut>,
    ) -> Result<Option<Branch>, u16> {
        let (uri, dst, socket) = (target.uri, target.dst, target.socket);
        let out_proto = self.proto_of(socket);
        self.branch_seq += 1;
        // Via (with the branch) and Record-Route go into reused buffers: no allocation.
        let mut via = core::mem::take(&mut self.via);
        via.clear();
        via.extend_from_slice(b"SIP/2.0/");
        via.extend_from_slice(out_proto.via_token().as_bytes());
        via.push(b' ');
        via.extend_from_slice(self.host_of(socket).as_bytes());
        via.extend_from_slice(b";branch=");
        let branch_at = via.len();
        write_branch(&mut via, self.shard, plan.loop_hash, self.branch_seq);
        if plan.dialog_creating {
            let mut rr = core::mem::take(&mut self.record_route);
            rr.clear();
            // The callee's flow (RFC 5626 §5.3): in-dialog requests toward it go there; and
            // the caller's connection, for requests toward the caller.
            let callee_flow = target.flow.then_some((out_proto, dst));
            let in_proto = self.proto_of(plan.in_socket);
            let caller_flow = plan.caller_flow.map(|a| (in_proto, a));
            // The side facing the callee first; when the request changes transport, a second
            // value for the caller's side (RFC 5658 double Record-Route).
            self.write_rr(&mut rr, socket, callee_flow, caller_flow);
            if in_proto != out_proto {
                rr.extend_from_slice(b", ");
                self.write_rr(&mut rr, plan.in_socket, callee_flow, caller_flow);
            }
            self.record_route = rr;
        }
        // A target registered through a Path: the Path is the branch's Route set (RFC 3327
        // §5.3), on top of what the request brought.
        let routed;
        let extra_headers = if target.paths.is_empty() {
            extra_headers
        } else {
            let mut h = Vec::with_capacity(extra_headers.len() + 128);
            for p in target.paths {
                crate::sip::write::header(&mut h, "Route", p);
            }
            h.extend_from_slice(extra_headers);
            routed = h;
            &routed[..]
        };
        let edits = ForwardEdits {
            request_uri: plan.rewrite_uri.then_some(uri),
            via: Some(&via),
            record_route: plan.dialog_creating.then_some(&self.record_route[..]),
            pop_route: plan.pop_route,
            decrement_max_forwards: true,
            extra_headers,
        };
        self.scratch.clear();
        if write_forward(&mut self.scratch, msg, &edits).is_err() {
            self.via = via;
            return Err(483);
        }
        if self.settings.topology.is_some() {
            let mut scratch = core::mem::take(&mut self.scratch);
            self.hide_forwarded(&mut scratch, 0, dst);
            self.scratch = scratch;
        }
        let request = bytes(&self.scratch);
        let key = ClientKey::new(&via[branch_at..], msg.method_bytes().unwrap_or(b"OTHER"));
        self.via = via;
        let Ok(cid) = self.txns.new_client(
            key,
            request.clone(),
            dst,
            socket,
            out_proto.is_stream(),
            now_ms,
            txn_out,
        ) else {
            return Ok(None);
        };
        self.client_ctx.insert(cid, sid);
        let timer_c =
            is_invite.then(|| self.timer_c.insert(now_ms + TIMER_C_MS, ProxyTimer::C(cid)));
        Ok(Some(Branch {
            id: cid,
            timer_c,
            request,
            dst,
            socket,
            done: false,
            provisional: false,
            cancel_wanted: false,
        }))
    }

    /// Appends one Record-Route value for local socket `socket`: `<sip:ip:port;transport=x;
    /// lr;ss=N;ft=..;fc=..>` (no transport parameter for UDP, the default of RFC 3263).
    fn write_rr(
        &self,
        rr: &mut Vec<u8>,
        socket: u16,
        callee_flow: Option<(Proto, SocketAddr)>,
        caller_flow: Option<(Proto, SocketAddr)>,
    ) {
        let proto = self.proto_of(socket);
        rr.extend_from_slice(b"<sip:");
        rr.extend_from_slice(self.host_of(socket).as_bytes());
        if proto != Proto::Udp {
            rr.extend_from_slice(b";transport=");
            rr.extend_from_slice(proto.uri_param().as_bytes());
        }
        rr.extend_from_slice(b";lr;ss=");
        rr.extend_from_slice(itoa::Buffer::new().format(self.shard).as_bytes());
        if let Some((p, a)) = callee_flow {
            rr.extend_from_slice(b";ft=");
            crate::sip::proto::write_flow(rr, p, a);
        }
        if let Some((p, a)) = caller_flow {
            rr.extend_from_slice(b";fc=");
            crate::sip::proto::write_flow(rr, p, a);
        }
        rr.push(b'>');
    }

    /// Every branch started so far has ended: start the next group of sequential forking,
    /// or send the best final response upstream (§16.7 steps 6-7).
    fn advance(&mut self, sid: ServerTxnId, now_ms: u64, txn_out: &mut Vec<TxnOut>) {
        loop {
            let Some(ctx) = self.contexts.get_mut(&sid) else {
                return;
            };
            if let Some(k) = ctx.group_timer.take() {
                self.timer_c.cancel(k);
            }
            if ctx.final_sent {
                return;
            }
            if ctx.rest.is_empty() || ctx.cancelled {
                return self.send_best(sid, now_ms, txn_out);
            }
            let g = ctx.rest[0].group;
            let k = ctx.rest.iter().take_while(|t| t.group == g).count();
            let group: Vec<PendingTarget> = ctx.rest.drain(..k).collect();
            let more = !ctx.rest.is_empty();
            ctx.group += 1;
            let number = ctx.group;
            let (original, plan, is_invite) = (ctx.original.clone(), ctx.plan, ctx.is_invite);
            let extra = ctx.extra_headers.clone();
            let Ok(msg) = Message::parse(&original) else {
                return self.send_best(sid, now_ms, txn_out);
            };
            let mut started = Vec::with_capacity(group.len());
            for t in &group {
                let target = Target {
                    uri: &t.uri,
                    dst: t.dst,
                    q: t.q,
                    group: t.group,
                    flow: t.flow,
                    socket: t.socket,
                    paths: crate::registrar::PathIter::from_raw(&t.paths),
                };
                let extra = extra.as_deref().unwrap_or_default();
                match self.start_branch(sid, &msg, &plan, extra, is_invite, target, now_ms, txn_out)
                {
                    Ok(Some(b)) => started.push(b),
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
            let timer = plan
                .policy
                .group_timeout_ms
                .filter(|_| (more || plan.policy.timeout_last) && !started.is_empty())
                .map(|ms| {
                    self.timer_c
                        .insert(now_ms + ms, ProxyTimer::Group(sid, number))
                });
            let Some(ctx) = self.contexts.get_mut(&sid) else {
                return;
            };
            ctx.group_timer = timer;
            if !started.is_empty() {
                ctx.branches.extend(started);
                return;
            }
        }
    }

    /// Sends the best final response collected (§16.7 steps 6-7): with the challenges of
    /// every 401/407 when it is one of them, a 503 as 500; 480 if no branch ever answered.
    fn send_best(&mut self, sid: ServerTxnId, now_ms: u64, txn_out: &mut Vec<TxnOut>) {
        let Some(ctx) = self.contexts.get_mut(&sid) else {
            return;
        };
        if ctx.final_sent {
            return;
        }
        let Some((s, r)) = ctx.best.take() else {
            let original = ctx.original.clone();
            if let Ok(req) = Message::parse(&original) {
                self.answer(sid, &req, 480, b"Temporarily Unavailable", now_ms, txn_out);
            }
            return;
        };
        let r = if matches!(s, 401 | 407) && ctx.challenge_responses > 1 {
            match Message::parse(&r) {
                Ok(m) => {
                    let mut v = Vec::with_capacity(r.len() + ctx.challenges.len());
                    write_with_challenges(&mut v, &m, &ctx.challenges);
                    bytes(&v)
                }
                Err(_) => r,
            }
        } else {
            r
        };
        // §16.7 step 6: a 503 from downstream is relayed as 500.
        let (s, r) = if s == 503 {
            (500, rewrite_status(&r, 500, b"Server Internal Error"))
        } else {
            (s, r)
        };
        ctx.final_sent = true;
        // Nothing more is built from them.
        ctx.original = crate::txn::empty_bytes();
        ctx.challenges = Default::default();
        if ctx.is_invite {
            let setup = now_ms.saturating_sub(ctx.started_ms);
            let (target, attempt, cancelled) = (ctx.best_dst, ctx.attempt, ctx.cancelled);
            self.calls
                .setup_ended(&r, s, setup, target, attempt, cancelled, now_ms);
        }
        let _ = self.txns.server_respond(sid, s, r, now_ms, txn_out);
    }

    /// The group `group` tried for its timeout without a final answer. Its pending branches are cancelled and count as 408, and the next group starts.
    fn group_timeout(
        &mut self,
        sid: ServerTxnId,
        group: u32,
        now_ms: u64,
        txn_out: &mut Vec<TxnOut>,
    ) {
        let Some(ctx) = self.contexts.get_mut(&sid) else {
            return;
        };
        if ctx.group != group || ctx.final_sent || ctx.cancelled {
            return;
        }
        ctx.group_timer = None;
        // §9.1: only an INVITE is cancelled; another request's branch is just given up.
        let is_invite = ctx.is_invite;
        let pending: Vec<ClientTxnId> = ctx
            .branches
            .iter()
            .filter(|b| !b.done)
            .map(|b| b.id)
            .collect();
        for cid in pending {
            if is_invite {
                self.cancel_branch(sid, cid, now_ms, txn_out);
            }
            self.branch_final(sid, cid, 408, None, now_ms, txn_out);
        }
    }

    /// Cancels one pending branch (§9.1: at once if it sent a provisional response, else when
    /// its first provisional response comes).
    fn cancel_branch(
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
        if b.done {
            return;
        }
        if !b.provisional {
            b.cancel_wanted = true;
            return;
        }
        // A branch is cancelled once: its request goes with its CANCEL.
        let request = b.take_request();
        let dst = (b.dst, b.socket);
        self.send_cancel(cid, &request, dst, now_ms, txn_out);
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
            ctx.original = crate::txn::empty_bytes();
            if ctx.is_invite {
                let setup = now_ms.saturating_sub(ctx.started_ms);
                let (attempt, cancelled) = (ctx.attempt, ctx.cancelled);
                self.calls.setup_ended(
                    &self.scratch,
                    status,
                    setup,
                    None,
                    attempt,
                    cancelled,
                    now_ms,
                );
            }
        }
    }

    /// Forwards an ACK for a 2xx (or any request we keep no state for) statelessly to `dst`
    /// (§16.11 behaviour for an end-to-end ACK), adding a Via whose branch is derived from the
    /// request alone, so a retransmission gets the same branch:
    /// `z9hG4bK-ss<shard>.<stateless loop hash>.sl<hash of the incoming branch>`, the shape of
    /// [`write_branch`]'s, so that a request coming back unchanged is a loop in stateless mode
    /// too (§16.3 item 4).
    pub fn relay_stateless(
        &mut self,
        msg: &Message<'_>,
        target_uri: Option<&[u8]>,
        (dst, socket): (SocketAddr, u16),
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
        // In the Via buffer the stateful forwards use, as they do (no allocation per relay).
        let mut via = core::mem::take(&mut self.via);
        via.clear();
        via.extend_from_slice(b"SIP/2.0/");
        via.extend_from_slice(self.proto_of(socket).via_token().as_bytes());
        via.push(b' ');
        via.extend_from_slice(self.host_of(socket).as_bytes());
        via.extend_from_slice(b";branch=");
        let loop_hash = loop_hash_keyed(msg, &self.canonical_call_id(msg), false);
        write_branch_head(&mut via, self.shard, loop_hash);
        // Writing to a Vec cannot fail.
        let _ = std::io::Write::write_fmt(&mut via, format_args!("sl{h:x}"));
        let pop_route = self.our_top_routes(msg);
        let edits = ForwardEdits {
            request_uri: target_uri,
            via: Some(&via),
            record_route: None,
            pop_route,
            decrement_max_forwards: true,
            extra_headers: b"",
        };
        let (buf, start) = out.begin();
        let relayed = if write_forward(buf, msg, &edits).is_err() {
            out.abort(start);
            Handled::Absorbed
        } else {
            if self.settings.topology.is_some() {
                self.hide_forwarded(buf, start, dst);
            }
            self.stats.message_sent(&buf[start..]);
            out.commit(start, dst, socket as usize);
            Handled::Relayed
        };
        self.via = via;
        relayed
    }

    /// CANCEL (§16.10): answers 200 if it matches an INVITE we forward, and cancels every
    /// pending branch; 481 otherwise. Returns the status sent for the CANCEL.
    pub fn cancel(&mut self, msg: &Message<'_>, now_ms: u64, out: &mut Outbox) -> Option<u16> {
        let sid = self.txns.cancel_target(msg)?;
        let mut txn_out = core::mem::take(&mut self.txn_out);
        self.cancel_branches(sid, now_ms, &mut txn_out);
        if let Some(ctx) = self.contexts.get_mut(&sid) {
            // No further group of sequential forking starts either.
            ctx.cancelled = true;
            ctx.rest.clear();
            if let Some(k) = ctx.group_timer.take() {
                self.timer_c.cancel(k);
            }
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
        // A branch is cancelled once (a retransmitted 2xx or CANCEL comes back here): its
        // request goes with its CANCEL, and an empty one means the CANCEL was sent.
        let pending: Vec<(ClientTxnId, Bytes, (SocketAddr, u16))> = ctx
            .branches
            .iter_mut()
            .filter(|b| !b.done && b.provisional && !b.request.is_empty())
            .map(|b| {
                let request = b.take_request();
                (b.id, request, (b.dst, b.socket))
            })
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
        (dst, socket): (SocketAddr, u16),
        now_ms: u64,
        txn_out: &mut Vec<TxnOut>,
    ) {
        if request.is_empty() {
            // Already cancelled.
            return;
        }
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
                socket,
                self.proto_of(socket).is_stream(),
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
                    self.response_stops_group_timeout(sid);
                    let live = self.restart_timer_c(sid, cid, now_ms, &mut txn_out);
                    let final_sent = self.contexts.get(&sid).is_none_or(|c| c.final_sent);
                    if live && status > 100 && !final_sent {
                        self.scratch.clear();
                        let hider = self.settings.topology.as_deref();
                        if write_upstream(hider, &self.host, &self.ours, &mut self.scratch, resp) {
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
                    let hider = self.settings.topology.as_deref();
                    if write_upstream(hider, &self.host, &self.ours, &mut self.scratch, resp) {
                        let upstream = bytes(&self.scratch);
                        let sent = self.branch_final(
                            sid,
                            cid,
                            status,
                            Some(upstream.clone()),
                            now_ms,
                            &mut txn_out,
                        );
                        let invite = resp.cseq().is_ok_and(|c| c.method == b"INVITE");
                        if !sent && invite && (200..300).contains(&status) {
                            // §16.7 steps 5 and 10: a 2xx to an INVITE is forwarded even
                            // after a non-2xx final went upstream; the server transaction
                            // (Completed, Confirmed or gone) cannot send it, so it goes
                            // statelessly.
                            let dst = self
                                .txns
                                .server_destination(sid)
                                .or_else(|| Some((top_via_destination(&upstream)?, self.socket)));
                            if let Some((dst, socket)) = dst {
                                txn_out.push(TxnOut::Send {
                                    bytes: upstream,
                                    dst,
                                    socket,
                                });
                            }
                        }
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
                    let (buf, start) = out.begin();
                    let hider = self.settings.topology.as_deref();
                    let dst = write_upstream(hider, &self.host, &self.ours, buf, resp)
                        .then(|| top_via_destination(&buf[start..]))
                        .flatten();
                    match dst {
                        Some(dst) => {
                            self.stats.message_sent(&buf[start..]);
                            out.commit(start, dst, self.socket as usize);
                            ok = true;
                        }
                        None => out.abort(start),
                    }
                }
            }
        }
        self.drain(&mut txn_out, now_ms, out);
        self.txn_out = txn_out;
        ok
    }

    /// A branch ended with `status` (`upstream` = the response to relay, None for our own
    /// 408 on timeout). §16.7 steps 5-10. Returns true if a 2xx went upstream through the
    /// server transaction.
    fn branch_final(
        &mut self,
        sid: ServerTxnId,
        cid: ClientTxnId,
        status: u16,
        upstream: Option<Bytes>,
        now_ms: u64,
        txn_out: &mut Vec<TxnOut>,
    ) -> bool {
        let Some(ctx) = self.contexts.get_mut(&sid) else {
            return false;
        };
        let success = (200..300).contains(&status);
        let mut branch_dst = None;
        if let Some(b) = ctx.branches.iter_mut().find(|b| b.id == cid) {
            branch_dst = upstream.is_some().then_some(b.dst);
            if b.done && !success {
                // Already counted (Timer C or the group timeout gave it its 408).
                return false;
            }
            b.done = true;
            if !b.cancel_wanted {
                // A finished branch is never cancelled: free its copy of the request.
                b.take_request();
            }
            if let Some(k) = b.timer_c.take() {
                self.timer_c.cancel(k);
            }
        }
        if success {
            // Every 2xx is relayed at once (§16.7 step 5), and the other branches cancelled;
            // no further group starts.
            ctx.final_sent = true;
            ctx.original = crate::txn::empty_bytes();
            ctx.rest.clear();
            if let Some(k) = ctx.group_timer.take() {
                self.timer_c.cancel(k);
            }
            let is_invite = ctx.is_invite;
            if let (true, Some(up)) = (is_invite, &upstream) {
                let setup = now_ms.saturating_sub(ctx.started_ms);
                let (attempt, cancelled) = (ctx.attempt, ctx.cancelled);
                self.calls
                    .setup_ended(up, status, setup, branch_dst, attempt, cancelled, now_ms);
            }
            let sent = upstream.is_some_and(|up| {
                self.txns
                    .server_respond(sid, status, up, now_ms, txn_out)
                    .is_ok()
            });
            if is_invite {
                self.cancel_branches(sid, now_ms, txn_out);
            }
            return sent;
        }
        if ctx.final_sent {
            return false;
        }
        let response = match upstream {
            Some(up) => {
                if matches!(status, 401 | 407) {
                    // §16.7 step 7: keep every challenge for the response we send.
                    if let Ok(m) = Message::parse(&up) {
                        if collect_challenges(&mut ctx.challenges, &m) > 0 {
                            ctx.challenge_responses += 1;
                        }
                    }
                }
                up
            }
            None => {
                // Our own 408 for a branch that never answered.
                let Ok(req) = Message::parse(&ctx.original) else {
                    return false;
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
            ctx.best_dst = branch_dst;
        }
        let ends_search = status >= 600
            || (ctx.plan.policy.final_4xx && (400..500).contains(&status) && status != 408);
        if ends_search {
            // §16.7: a 6xx ends the search (and, for a trunk route, a 4xx other than 408): no
            // further group, the pending branches cancelled.
            ctx.rest.clear();
            if ctx.is_invite {
                self.cancel_branches(sid, now_ms, txn_out);
            }
        }
        let all_done = self
            .contexts
            .get(&sid)
            .is_some_and(|c| c.branches.iter().all(|b| b.done));
        if all_done {
            self.advance(sid, now_ms, txn_out);
        }
        false
    }

    /// A response from the current group stops its timeout when the policy says any
    /// response will do (trunk failover waits only for silence).
    fn response_stops_group_timeout(&mut self, sid: ServerTxnId) {
        if let Some(ctx) = self.contexts.get_mut(&sid) {
            if ctx.plan.policy.timeout_until_response {
                if let Some(k) = ctx.group_timer.take() {
                    self.timer_c.cancel(k);
                }
            }
        }
    }

    /// §16.7 step 2: a provisional response restarts the branch's Timer C (and releases a
    /// CANCEL that waited for it). Returns false if the branch is no longer wanted (its
    /// response is not relayed then).
    fn restart_timer_c(
        &mut self,
        sid: ServerTxnId,
        cid: ClientTxnId,
        now_ms: u64,
        txn_out: &mut Vec<TxnOut>,
    ) -> bool {
        let Some(b) = self
            .contexts
            .get_mut(&sid)
            .and_then(|c| c.branches.iter_mut().find(|b| b.id == cid))
        else {
            return false;
        };
        b.provisional = true;
        if b.cancel_wanted {
            b.cancel_wanted = false;
            // The request is only kept to build this CANCEL.
            let request = b.take_request();
            let dst = (b.dst, b.socket);
            self.send_cancel(cid, &request, dst, now_ms, txn_out);
            return false;
        }
        if b.done {
            return false;
        }
        if let Some(k) = b.timer_c.take() {
            self.timer_c.cancel(k);
            b.timer_c = Some(self.timer_c.insert(now_ms + TIMER_C_MS, ProxyTimer::C(cid)));
        }
        true
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
        let request = b.take_request();
        let dst = (b.dst, b.socket);
        self.send_cancel(cid, &request, dst, now_ms, txn_out);
        self.branch_final(sid, cid, 408, None, now_ms, txn_out);
    }

    /// The shell could not deliver to `dst` over `socket` (a connection refused or gone,
    /// RFC 3261 §17.1.4): the requests waiting on it fail now, as if answered 503 (§16.9).
    pub fn transport_error(
        &mut self,
        socket: u16,
        dst: SocketAddr,
        now_ms: u64,
        out: &mut Outbox,
    ) -> usize {
        let mut txn_out = core::mem::take(&mut self.txn_out);
        let failed = self
            .txns
            .client_transport_errors_to(socket, dst, &mut txn_out);
        self.drain(&mut txn_out, now_ms, out);
        self.txn_out = txn_out;
        failed
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
                    // No answer: 408. Not sent (§16.9): as if the branch had answered 503,
                    // so the next target is tried now and the caller is not kept waiting
                    // for Timer B.
                    TxnEvent::Timeout | TxnEvent::TransportError => {
                        if let Some(&sid) = self.client_ctx.get(&id) {
                            let status = if event == TxnEvent::Timeout { 408 } else { 503 };
                            let mut more = Vec::new();
                            self.branch_final(sid, id, status, None, now_ms, &mut more);
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
                            if let Some(k) = ctx.group_timer {
                                self.timer_c.cancel(k);
                            }
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

/// The shard named by a branch this proxy wrote (`z9hG4bK-ss<shard>.<loop hash>.<n>`).
pub fn shard_of_branch(branch: &[u8]) -> Option<usize> {
    let rest = branch.strip_prefix(b"z9hG4bK-ss")?;
    let end = rest.iter().position(|&c| c == b'.')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The header carrying the next hop of an in-dialog request after loose routing: the first
/// Route that is not us (ours at the top: one, or the two of a double Record-Route), else the
/// Request-URI (§16.12).
pub fn next_hop<'a>(msg: &Message<'a>, proxy: &Proxy) -> Option<(Uri<'a>, bool)> {
    if msg.header(HeaderName::Route).is_some() {
        let u = msg.top_route_uri()?;
        if !proxy.is_ours(&u) {
            return Some((u, true));
        }
        // Only walk the values (parsing the first again) when there can be a second one.
        if !msg.has_one_value(HeaderName::Route) {
            let mut routes = msg.routes().filter_map(|r| r.ok());
            routes.next();
            if let Some(second) = routes.next() {
                let uri = second.uri().ok()?;
                if !(proxy.is_ours(&uri) && uri.param("ss").is_some()) {
                    return Some((uri, true));
                }
                if let Some(third) = routes.next() {
                    return Some((third.uri().ok()?, true));
                }
            }
        }
    }
    Some((msg.request_uri().ok()?, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ip_agrees_with_std() {
        let mut cases: Vec<String> = [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.",
            "1.2.3.4.5",
            "1..2.3",
            "",
            "1.2.3.04",
            "1.2.3.0",
            "::1",
            "fe80::1",
            "2001:db8::1",
            "a.b.c.d",
            "1.2.3.4 ",
            "1234.1.1.1",
            "192.168.000.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut random = crate::sip::mutate::Mutator::new(0x1234_5678_9abc_def1);
        for _ in 0..50_000 {
            let rng = random.next_u64();
            let len = (rng % 16) as usize;
            let s: String = (0..len)
                .map(|k| b"0123456789.:a"[((rng >> (k * 4)) % 13) as usize] as char)
                .collect();
            cases.push(s);
        }
        for c in cases {
            assert_eq!(parse_ip(c.as_bytes()), c.parse::<IpAddr>().ok(), "{c:?}");
        }
    }

    #[test]
    fn best_response_order() {
        assert!(better(600, 486));
        assert!(!better(486, 603));
        assert!(better(486, 503));
        assert!(better(302, 404));
        assert!(!better(408, 404));
        assert!(better(407, 486));
        assert!(better(484, 408));
        assert!(!better(486, 401));
        assert!(!better(401, 407));
        assert!(better(302, 407));
    }

    #[test]
    fn branch_shard() {
        let mut b = Vec::new();
        write_branch(&mut b, 3, u64::MAX, 99);
        assert_eq!(shard_of_branch(&b), Some(3));
        let mut b = Vec::new();
        write_branch(&mut b, 12, 0, 1);
        assert_eq!(shard_of_branch(&b), Some(12));
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
