//! TCP for one shard (RFC 3261 §18, §18.3 framing; RFC 5626 keepalives): the shard's
//! SO_REUSEPORT listeners (the kernel spreads accepted connections over the shards, so no
//! acceptor thread hands them out), its connections on an epoll set of its own, reads framed
//! into messages for the core, and writes of the core's output.
//!
//! A connection belongs to the shard that accepted (or opened) it; a message on it may be
//! owned by another shard (its AOR or dialog lives there) and is handed over like a datagram.
//! What that shard sends back to the peer must leave over the same connection: the
//! [`StreamHub`] knows which shard holds the connection to each peer and carries the bytes to
//! it. A peer without a connection gets one opened (a UA whose Contact says `transport=tcp`).
//!
//! Limits keep a shard up under abuse: a message size limit, a timeout for a message that
//! does not complete (a peer dribbling bytes), an idle timeout, connections per source address
//! and per shard, and a bound on what waits for a peer that does not read. Each refusal or
//! close is counted (`sipshard_connection_events`) and logged once per source.

use super::framing::{next_frame, only_line_breaks, Frame, FrameError, FrameState};
use super::websocket::{WsError, WsItem, WsSession};
use super::{RecvHandler, Waker};
use crate::server::outbox::Outbox;
use crate::stats::{ShardStats, StreamEvent};
use crossbeam_queue::SegQueue;
use hashbrown::{HashMap, HashSet};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The stream transports' limits (`--tcp-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// Largest message accepted (header section and body).
    pub max_message: usize,
    /// A message started must complete within this long (and a new connection must bring
    /// its first complete message within it).
    pub message_timeout_ms: u64,
    /// A connection without a byte for this long is closed (phones keep theirs open with
    /// CRLF keepalives, RFC 5626 §4.4.1).
    pub idle_timeout_ms: u64,
    /// Connections one source address may hold on one shard.
    pub max_per_source: u32,
    /// Connections one shard holds at most.
    pub max_per_shard: u32,
    /// Bytes waiting for a peer that does not read before its connection is closed.
    pub max_output: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_message: 65_535,
            message_timeout_ms: 10_000,
            idle_timeout_ms: 3_600_000,
            max_per_source: 256,
            max_per_shard: 100_000,
            max_output: 1 << 20,
        }
    }
}

/// Bytes for a connection held by another shard.
struct Outgoing {
    socket: u16,
    dst: SocketAddr,
    bytes: Box<[u8]>,
}

/// What the shards share about connections: which shard holds the connection to a peer,
/// and each shard's queue of bytes to write to its connections.
pub struct StreamHub {
    /// (local socket, peer) -> (shard, token) of the connection.
    owners: RwLock<std::collections::HashMap<(u16, SocketAddr), (usize, u64)>>,
    inboxes: Vec<SegQueue<Outgoing>>,
    /// Per shard: connections that closed and when (ms), for the core (bindings registered
    /// over them go).
    closed: Vec<SegQueue<(u16, SocketAddr, u64)>>,
    wakers: Vec<Arc<Waker>>,
}

impl StreamHub {
    pub fn new(wakers: Vec<Arc<Waker>>) -> StreamHub {
        StreamHub {
            owners: RwLock::default(),
            inboxes: wakers.iter().map(|_| SegQueue::new()).collect(),
            closed: wakers.iter().map(|_| SegQueue::new()).collect(),
            wakers,
        }
    }

    fn owner(&self, socket: u16, peer: SocketAddr) -> Option<usize> {
        Some(self.owners.read().ok()?.get(&(socket, peer))?.0)
    }

    fn set_owner(&self, socket: u16, peer: SocketAddr, shard: usize, token: u64) {
        if let Ok(mut o) = self.owners.write() {
            o.insert((socket, peer), (shard, token));
        }
    }

    /// Forgets the owner of (`socket`, `peer`) if it is still this connection (a newer one
    /// to the same peer may have taken the entry).
    fn clear_owner(&self, socket: u16, peer: SocketAddr, shard: usize, token: u64) {
        if let Ok(mut o) = self.owners.write() {
            if o.get(&(socket, peer)) == Some(&(shard, token)) {
                o.remove(&(socket, peer));
            }
        }
    }
}

/// One shard's TCP listener: the socket index the core knows it by, for a TLS one (`tls:`,
/// `wss:`) the server's TLS configuration, and whether its connections speak WebSocket.
pub struct StreamListener {
    pub listener: TcpListener,
    pub socket: u16,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// For a `tls:` listener: the configuration of the connections we open over TLS.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    pub ws: bool,
}

/// Binds a TCP listener on `addr` (SO_REUSEPORT: every shard has one on the same address).
pub fn tcp_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    socket: u16,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// EPOLLOUT is armed (a write waits, or a connect is in progress).
    want_out: bool,
    connecting: bool,
    last_byte: Instant,
    /// When the bytes of the message not yet complete began to arrive (or the connection
    /// was accepted, before its first message).
    partial_since: Option<Instant>,
    inbound: bool,
    /// What the framing knows of the message being received.
    frame: FrameState,
    /// A TLS connection's state: the socket carries its records, `rbuf` the plaintext.
    tls: Option<Box<rustls::Connection>>,
    /// A WebSocket connection's state: `rbuf` holds frames (after TLS for `wss:`), and
    /// messages to the peer go out framed.
    ws: Option<Box<WsSession>>,
    /// Addresses this connection also stands for (RFC 5923 aliases its peer asked for).
    aliases: Vec<SocketAddr>,
}

/// Epoll tokens below this are listeners.
const CONN_BASE: u64 = 1 << 32;
/// Bytes read from one connection per round at most (fairness between connections).
const READ_ROUND: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Sources whose refusals were logged, kept at most (then forgotten and logged again).
const LOGGED_MAX: usize = 4096;
/// Connections accepted per listener per round at most.
const ACCEPT_ROUND: usize = 64;
/// Addresses one connection may stand for (RFC 5923 aliases).
const ALIASES_MAX: usize = 8;

/// One shard's TCP connections.
pub struct TcpShard {
    shard: usize,
    epoll: OwnedFd,
    listeners: Vec<StreamListener>,
    conns: HashMap<u64, Conn>,
    by_peer: HashMap<(u16, SocketAddr), u64>,
    per_source: HashMap<IpAddr, u32>,
    next_token: u64,
    hub: Arc<StreamHub>,
    settings: StreamSettings,
    stats: Arc<ShardStats>,
    events: Vec<libc::epoll_event>,
    logged: HashSet<(IpAddr, StreamEvent)>,
    last_sweep: Instant,
    /// Connections to close after the current pass (token, why).
    doomed: Vec<(u64, StreamEvent)>,
    /// Connections the peer closed: closed at the next round, after this round's responses
    /// were written.
    closing_next: Vec<(u64, StreamEvent)>,
    /// Listeners taken out of the epoll set after an accept error (out of descriptors):
    /// put back at the next sweep.
    paused: Vec<bool>,
    /// Work left for the next round (a read or accept budget ran out): no sleeping.
    more: bool,
    /// The shared clock's reading this round (close notices carry it).
    now_ms: u64,
    scratch: Vec<u8>,
    /// TLS records on their way to a socket.
    tls_out: Vec<u8>,
    /// WebSocket frames on their way to a connection (messages, or the codec's replies).
    ws_out: Vec<u8>,
    /// Destinations a request could not be delivered to (no connection and none may be
    /// opened, a refused connect, a failed write), for the core (RFC 3261 §17.1.4).
    failed: Vec<(u16, SocketAddr)>,
    /// In a send call: writes to a connection are gathered in its `wbuf` and written at the
    /// end, one write call per connection per round instead of one per message (on a VM a
    /// system call costs more than a REGISTER's SIP work, and each write is a TCP segment
    /// through the whole stack on both ends).
    batching: bool,
    /// Connections with gathered bytes to write at the end of the send call.
    unflushed: Vec<u64>,
}

/// Gathered bytes of one connection written before the end of the send call past this.
const GATHER_MAX: usize = 64 * 1024;

fn epoll_ctl(ep: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: ep and fd are open descriptors; ev is a valid epoll_event.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The last words on a connection being closed, best effort and without blocking: a
/// WebSocket close frame when the server ends it (1001, going away), TLS close_notify, what
/// still waits to be written; then the unread input is discarded so that closing does not
/// reset the connection (Linux sends RST, dropping what we sent, when input is unread).
fn finish(mut c: Conn, why: StreamEvent) {
    let mut last = Vec::new();
    if let Some(ws) = &mut c.ws {
        if !matches!(why, StreamEvent::SlowReader | StreamEvent::PeerClosed) {
            ws.close(&mut last, 1001);
        }
    }
    if let Some(tls) = &mut c.tls {
        let _ = tls.writer().write_all(&last);
        last.clear();
        tls.send_close_notify();
        while tls.wants_write() {
            if tls.write_tls(&mut last).is_err() {
                break;
            }
        }
    }
    if c.connecting {
        return;
    }
    c.wbuf.extend_from_slice(&last);
    if !c.wbuf.is_empty() {
        let _ = write_some(&mut c.stream, &c.wbuf);
    }
    let mut sink = [0u8; 4096];
    for _ in 0..64 {
        if !matches!(read_once(&mut c.stream, &mut sink), ReadOutcome::Bytes(_)) {
            break;
        }
    }
    let _ = c.stream.shutdown(std::net::Shutdown::Write);
}

/// After a read's messages were handled: an idle connection keeps no read buffer (each read
/// takes a fresh one from the allocator's per-thread cache), and one holding a partial message
/// keeps only about what it holds. A registration front end holds its phones' connections
/// idle between messages: a 16-32 KiB buffer kept by each was most of a connection's memory
/// (32.6 KiB per connection at 19,000 that had each sent one OPTIONS, perf/conn-memory.py).
fn release_read_buffer(rbuf: &mut Vec<u8>) {
    if rbuf.is_empty() {
        *rbuf = Vec::new();
    } else if rbuf.capacity() > 2 * rbuf.len() + 1024 {
        rbuf.shrink_to(rbuf.len() + 1024);
    }
}

/// What one read of a socket gave.
enum ReadOutcome {
    Bytes(usize),
    /// Nothing more for now (EAGAIN).
    Drained,
    /// End of stream or an error: the connection is over.
    Closed,
}

/// One read of `stream` into `buf` (retried on EINTR).
fn read_once(stream: &mut TcpStream, buf: &mut [u8]) -> ReadOutcome {
    loop {
        return match stream.read(buf) {
            Ok(0) => ReadOutcome::Closed,
            Ok(n) => ReadOutcome::Bytes(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadOutcome::Drained,
            Err(_) => ReadOutcome::Closed,
        };
    }
}

/// Writes as much of `bytes` as the socket takes now: how many it took, or Err when the
/// connection failed.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> Result<usize, ()> {
    let mut at = 0;
    while at < bytes.len() {
        match stream.write(&bytes[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Err(()),
        }
    }
    Ok(at)
}

/// Asks epoll to report the connection writable (bytes wait in its `wbuf`).
fn arm_writable(epoll: &OwnedFd, c: &Conn, token: u64) {
    let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLOUT) as u32;
    let _ = epoll_ctl(
        epoll.as_raw_fd(),
        libc::EPOLL_CTL_MOD,
        c.stream.as_raw_fd(),
        events,
        token,
    );
}

impl TcpShard {
    pub fn new(
        shard: usize,
        listeners: Vec<StreamListener>,
        hub: Arc<StreamHub>,
        settings: StreamSettings,
        stats: Arc<ShardStats>,
    ) -> io::Result<TcpShard> {
        // SAFETY: epoll_create1 has no memory-safety preconditions; we check the result.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ep is a fresh descriptor we own from here on.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        for (i, l) in listeners.iter().enumerate() {
            epoll_ctl(
                ep,
                libc::EPOLL_CTL_ADD,
                l.listener.as_raw_fd(),
                libc::EPOLLIN as u32,
                i as u64,
            )?;
        }
        let paused = vec![false; listeners.len()];
        Ok(TcpShard {
            shard,
            epoll,
            paused,
            closing_next: Vec::new(),
            more: false,
            now_ms: 0,
            tls_out: Vec::new(),
            ws_out: Vec::new(),
            failed: Vec::new(),
            batching: false,
            unflushed: Vec::new(),
            listeners,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            per_source: HashMap::new(),
            next_token: CONN_BASE,
            hub,
            settings,
            stats,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            logged: HashSet::new(),
            last_sweep: Instant::now(),
            doomed: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The descriptor that becomes readable when a connection or listener has work (the
    /// shard's sleep watches it).
    pub fn wait_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// True if the socket index is one of ours (a stream listener).
    #[inline]
    pub fn is_stream_socket(&self, socket: u16) -> bool {
        let socket = crate::sip::proto::socket_index(socket);
        self.listeners.iter().any(|l| l.socket == socket)
    }

    /// True when another shard left bytes for our connections or news of a closed one, or
    /// a round left work undone.
    pub fn has_pending(&self) -> bool {
        self.more
            || !self.failed.is_empty()
            || !self.closing_next.is_empty()
            || !self.hub.inboxes[self.shard].is_empty()
            || !self.hub.closed[self.shard].is_empty()
    }

    /// Connections closed (on any shard) since the last call, with when (ms), for the core.
    pub fn take_closed(&mut self, mut f: impl FnMut(u16, SocketAddr, u64)) {
        while let Some((socket, peer, ms)) = self.hub.closed[self.shard].pop() {
            f(socket, peer, ms);
        }
    }

    /// True when deliveries failed that [`TcpShard::take_failed`] has not passed on yet.
    pub fn has_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Destinations this shard could not deliver a request to since the last call
    /// (transport errors, RFC 3261 §17.1.4), for the core.
    pub fn take_failed(&mut self, mut f: impl FnMut(u16, SocketAddr)) {
        for (socket, dst) in self.failed.drain(..) {
            f(socket, dst);
        }
    }

    /// Connections open on this shard.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accepts, reads and frames what is ready, hands each message to `handler`, writes
    /// what other shards left for our connections, and closes the connections past their
    /// timeouts. Returns the number of messages handled.
    pub fn poll(&mut self, handler: &mut dyn RecvHandler, now: Instant, now_ms: u64) -> usize {
        self.now_ms = now_ms;
        self.more = false;
        let closing = std::mem::take(&mut self.closing_next);
        for &(token, _) in &closing {
            // A peer's WebSocket close is answered now, after the responses of last round.
            self.ws_close_echo(token);
        }
        self.doomed.extend(closing);
        self.close_doomed();
        // What other shards left for our connections: gathered as a send call's writes.
        self.gathering(|t| {
            while let Some(o) = t.hub.inboxes[t.shard].pop() {
                if let Some(&token) = t.by_peer.get(&(o.socket, o.dst)) {
                    t.write(token, &o.bytes);
                }
            }
        });
        self.close_doomed();
        let mut handled = 0;
        loop {
            // SAFETY: events is a valid, writable array of epoll_event of the given length.
            let r = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    self.events.len() as libc::c_int,
                    0,
                )
            };
            if r <= 0 {
                break;
            }
            for i in 0..r as usize {
                let (events, token) = (self.events[i].events, self.events[i].u64);
                if token < CONN_BASE {
                    self.accept(token as usize, now);
                    continue;
                }
                if events & libc::EPOLLOUT as u32 != 0 {
                    self.writable(token);
                }
                if events
                    & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
                    != 0
                {
                    handled += self.readable(token, handler, now);
                }
            }
            self.close_doomed();
            if (r as usize) < self.events.len() {
                break;
            }
        }
        if now.saturating_duration_since(self.last_sweep) >= Duration::from_millis(500) {
            self.last_sweep = now;
            self.sweep(now);
        }
        handled
    }

    /// Sends the outbox's messages for stream sockets (and takes them out of it, leaving the
    /// datagrams for the UDP transport).
    pub fn send(&mut self, out: &mut Outbox) -> usize {
        let sent = self.gathering(|t| {
            let mut sent = 0;
            for d in out.items() {
                if t.is_stream_socket(d.socket) {
                    t.send_to(d.socket, d.dst, out.bytes(d));
                    sent += 1;
                }
            }
            sent
        });
        if sent > 0 {
            let listeners = &self.listeners;
            out.retain_items(|d| {
                let socket = crate::sip::proto::socket_index(d.socket);
                !listeners.iter().any(|l| l.socket == socket)
            });
            self.close_doomed();
        }
        sent
    }

    /// Writes to the connection to `dst`: ours, another shard's (handed over), or a new one
    /// when the core allows it ([`crate::sip::proto::CONNECT`]); else the bytes are dropped
    /// (a response or flow whose connection is gone).
    fn send_to(&mut self, socket: u16, dst: SocketAddr, bytes: &[u8]) {
        let may_connect = socket & crate::sip::proto::CONNECT != 0;
        let socket = crate::sip::proto::socket_index(socket);
        if let Some(&token) = self.by_peer.get(&(socket, dst)) {
            self.write(token, bytes);
            return;
        }
        match self.hub.owner(socket, dst) {
            Some(owner) if owner != self.shard => {
                self.hub.inboxes[owner].push(Outgoing {
                    socket,
                    dst,
                    bytes: bytes.into(),
                });
                if self.hub.wakers[owner].wake_if_sleeping() {
                    self.stats.wakeups.inc();
                }
            }
            // TCP, or TLS with a client configuration; a WebSocket server does not open
            // connections (its clients are browsers).
            _ if may_connect
                && self.listeners.iter().any(|l| {
                    l.socket == socket && !l.ws && (l.tls.is_none() || l.tls_client.is_some())
                }) =>
            {
                self.connect(socket, dst, bytes)
            }
            _ => {
                self.stats.dropped(crate::stats::DropReason::SendError);
                tracing::debug!(%dst, "no connection to send on");
                if !bytes.starts_with(b"SIP/2.0 ") {
                    // A request (a response's sender has no transaction waiting on it).
                    self.failed.push((socket, dst));
                }
            }
        }
    }

    fn register(&mut self, conn: Conn, events: u32) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        let fd = conn.stream.as_raw_fd();
        if epoll_ctl(
            self.epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd,
            events,
            token,
        )
        .is_err()
        {
            return None;
        }
        self.by_peer.insert((conn.socket, conn.peer), token);
        *self.per_source.entry(conn.peer.ip()).or_default() += 1;
        self.hub
            .set_owner(conn.socket, conn.peer, self.shard, token);
        self.conns.insert(token, conn);
        self.stats.streams.open.set(self.conns.len() as u64);
        Some(token)
    }

    fn accept(&mut self, idx: usize, now: Instant) {
        for _ in 0..ACCEPT_ROUND {
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let (socket, tls_cfg, ws) = (l.socket, l.tls.clone(), l.ws);
            let (stream, peer) = match l.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the pending connection stays in the backlog and the
                    // listener readable. Out of the epoll set until the next sweep, so the
                    // shard does not spin on it.
                    tracing::warn!(
                        shard = self.shard,
                        "accept failed: {e}; pausing the listener"
                    );
                    let fd = l.listener.as_raw_fd();
                    let _ = epoll_ctl(
                        self.epoll.as_raw_fd(),
                        libc::EPOLL_CTL_MOD,
                        fd,
                        0,
                        idx as u64,
                    );
                    self.paused[idx] = true;
                    return;
                }
            };
            let refused = if self.conns.len() >= self.settings.max_per_shard as usize {
                Some(StreamEvent::RefusedPerShard)
            } else if self.per_source.get(&peer.ip()).copied().unwrap_or(0)
                >= self.settings.max_per_source
            {
                Some(StreamEvent::RefusedPerSource)
            } else {
                None
            };
            if let Some(why) = refused {
                self.stats.streams.event(why);
                self.log_once(peer.ip(), why);
                drop(stream);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let tls = match tls_cfg.map(rustls::ServerConnection::new) {
                None => None,
                Some(Ok(t)) => {
                    let mut t = rustls::Connection::Server(t);
                    t.set_buffer_limit(Some(self.settings.max_output));
                    Some(Box::new(t))
                }
                Some(Err(e)) => {
                    tracing::warn!(shard = self.shard, "TLS session not created: {e}");
                    continue;
                }
            };
            let conn = Conn {
                stream,
                peer,
                socket,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                want_out: false,
                connecting: false,
                last_byte: now,
                partial_since: Some(now),
                inbound: true,
                frame: FrameState::default(),
                tls,
                ws: ws.then(Box::default),
                aliases: Vec::new(),
            };
            let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
            if self.register(conn, events).is_some() {
                self.stats.streams.accepted.inc();
            }
        }
        // The budget ran out: more may wait in the backlog.
        self.more = true;
    }

    /// Opens a connection to `dst` for `socket`'s transport and queues `bytes` on it.
    fn connect(&mut self, socket: u16, dst: SocketAddr, bytes: &[u8]) {
        let made = (|| -> io::Result<TcpStream> {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            match s.connect(&dst.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            Ok(s.into())
        })();
        // Over TLS the peer's certificate must name the address connected to.
        let client = self
            .listeners
            .iter()
            .find(|l| l.socket == socket)
            .and_then(|l| l.tls_client.clone());
        let tls = match client.map(|cfg| {
            let name = rustls::pki_types::ServerName::IpAddress(dst.ip().into());
            rustls::ClientConnection::new(cfg, name)
        }) {
            None => Ok(None),
            Some(Ok(c)) => {
                let mut c = rustls::Connection::Client(c);
                c.set_buffer_limit(Some(self.settings.max_output));
                Ok(Some(Box::new(c)))
            }
            Some(Err(e)) => Err(io::Error::other(e)),
        };
        let stream = match made.and_then(|s| tls.map(|t| (s, t))) {
            Ok(s) => s,
            Err(e) => {
                self.stats.streams.event(StreamEvent::ConnectFailed);
                tracing::debug!(%dst, "connect failed: {e}");
                self.failed.push((socket, dst));
                return;
            }
        };
        let (stream, tls) = stream;
        let encrypted = tls.is_some();
        let now = Instant::now();
        let conn = Conn {
            stream,
            peer: dst,
            socket,
            rbuf: Vec::new(),
            // Over TLS the message goes through the session (after the handshake).
            wbuf: if encrypted {
                Vec::new()
            } else {
                bytes.to_vec()
            },
            want_out: true,
            connecting: true,
            last_byte: now,
            partial_since: None,
            inbound: false,
            frame: FrameState::default(),
            tls,
            ws: None,
            aliases: Vec::new(),
        };
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLOUT) as u32;
        if let Some(token) = self.register(conn, events) {
            self.stats.streams.connected.inc();
            if encrypted {
                // The ClientHello now; the message once the handshake is done.
                self.write_stream(token, bytes);
            }
        }
    }

    /// Writes a message (or a pong) to a connection: in a WebSocket frame on a WebSocket
    /// connection, then as it is or through its TLS session.
    fn write(&mut self, token: u64, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let Some(ws) = &c.ws else {
            return self.write_stream(token, bytes);
        };
        if !ws.is_open() {
            // Not upgraded yet, or closing: no message can go.
            self.stats.dropped(crate::stats::DropReason::SendError);
            if !bytes.starts_with(b"SIP/2.0 ") && !only_line_breaks(bytes) {
                self.failed.push((c.socket, c.peer));
            }
            return;
        }
        let mut framed = std::mem::take(&mut self.ws_out);
        framed.clear();
        super::websocket::message_frame(&mut framed, bytes);
        self.write_stream(token, &framed);
        self.ws_out = framed;
    }

    /// Writes bytes to a connection's stream: as they are, or through its TLS session.
    fn write_stream(&mut self, token: u64, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let Some(tls) = &mut c.tls else {
            return self.write_raw(token, bytes);
        };
        // Before the handshake ends rustls keeps the plaintext and sends it after.
        if tls.writer().write_all(bytes).is_err() {
            self.doomed.push((token, StreamEvent::SlowReader));
            return;
        }
        self.flush_tls(token);
    }

    /// Sends what a TLS session has for the socket (records, handshake messages, alerts).
    fn flush_tls(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let Some(tls) = &mut c.tls else {
            return;
        };
        let mut records = std::mem::take(&mut self.tls_out);
        records.clear();
        while tls.wants_write() {
            if tls.write_tls(&mut records).is_err() {
                break;
            }
        }
        if !records.is_empty() {
            self.write_raw(token, &records);
        }
        self.tls_out = records;
    }

    /// Writes `bytes` to a connection's socket now, keeping what the kernel does not take for
    /// when the socket is writable again.
    fn write_raw(&mut self, token: u64, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if self.batching && !c.connecting && !c.want_out {
            // Gathered for one write at the end of the send call: nothing else waits in
            // `wbuf` (bytes that wait for EPOLLOUT arm it), so an empty one is this call's
            // first write to the connection.
            if c.wbuf.is_empty() {
                self.unflushed.push(token);
            }
            c.wbuf.extend_from_slice(bytes);
            if c.wbuf.len() >= GATHER_MAX {
                self.flush_gathered(token);
            }
            return;
        }
        if !c.wbuf.is_empty() || c.connecting {
            if c.wbuf.len() + bytes.len() > self.settings.max_output {
                self.doomed.push((token, StreamEvent::SlowReader));
                return;
            }
            c.wbuf.extend_from_slice(bytes);
            return;
        }
        self.stats.streams.writes.inc();
        let Ok(at) = write_some(&mut c.stream, bytes) else {
            // What waits for a response from there will not get one over this connection.
            self.failed.push((c.socket, c.peer));
            self.doomed.push((token, StreamEvent::PeerClosed));
            return;
        };
        if at < bytes.len() {
            c.wbuf.extend_from_slice(&bytes[at..]);
            if !c.want_out {
                c.want_out = true;
                arm_writable(&self.epoll, c, token);
            }
        }
    }

    /// Runs `f` with writes to connections gathered ([`TcpShard::write_raw`]), then writes
    /// each connection's gathered bytes in one call.
    fn gathering<R>(&mut self, f: impl FnOnce(&mut TcpShard) -> R) -> R {
        self.batching = true;
        let r = f(self);
        self.batching = false;
        for token in std::mem::take(&mut self.unflushed) {
            self.flush_gathered(token);
        }
        r
    }

    /// Writes what a send call gathered for a connection ([`TcpShard::write_raw`]); what
    /// the kernel does not take waits for EPOLLOUT.
    fn flush_gathered(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.want_out || c.wbuf.is_empty() {
            return;
        }
        self.stats.streams.writes.inc();
        let Ok(at) = write_some(&mut c.stream, &c.wbuf) else {
            c.wbuf.clear();
            self.failed.push((c.socket, c.peer));
            self.doomed.push((token, StreamEvent::PeerClosed));
            return;
        };
        if at == c.wbuf.len() {
            // All written: an idle connection keeps no write buffer (memory per connection).
            c.wbuf = Vec::new();
            return;
        }
        c.wbuf.drain(..at);
        c.want_out = true;
        arm_writable(&self.epoll, c, token);
    }

    /// The socket can take more (or its connect finished): write what waits.
    fn writable(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.connecting {
            match c.stream.take_error() {
                Ok(None) => c.connecting = false,
                _ => {
                    self.stats.streams.event(StreamEvent::ConnectFailed);
                    self.failed.push((c.socket, c.peer));
                    self.doomed.push((token, StreamEvent::PeerClosed));
                    return;
                }
            }
        }
        self.stats.streams.writes.inc();
        let Ok(at) = write_some(&mut c.stream, &c.wbuf) else {
            self.failed.push((c.socket, c.peer));
            self.doomed.push((token, StreamEvent::PeerClosed));
            return;
        };
        c.wbuf.drain(..at);
        if c.wbuf.is_empty() && c.want_out {
            c.want_out = false;
            let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
            let fd = c.stream.as_raw_fd();
            let _ = epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_MOD,
                fd,
                events,
                token,
            );
        }
    }

    /// Reads what a connection has, frames it and hands the messages over.
    fn readable(&mut self, token: u64, handler: &mut dyn RecvHandler, now: Instant) -> usize {
        let max = self.settings.max_message;
        let Some(c) = self.conns.get_mut(&token) else {
            return 0;
        };
        let mut read = 0;
        let mut closed = false;
        let mut tls_failed = false;
        while c.tls.is_some() {
            if read >= READ_ROUND {
                self.more = true;
                break;
            }
            let mut raw = [0u8; READ_CHUNK];
            let n = match read_once(&mut c.stream, &mut raw) {
                ReadOutcome::Bytes(n) => n,
                ReadOutcome::Drained => break,
                ReadOutcome::Closed => {
                    closed = true;
                    break;
                }
            };
            read += n;
            c.last_byte = now;
            let mut records = &raw[..n];
            let Some(tls) = c.tls.as_mut() else { break };
            while !records.is_empty() && !tls_failed && !closed {
                match tls.read_tls(&mut records) {
                    // After close_notify rustls takes nothing more: what follows is dropped
                    // (looping on it would spin the shard).
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        tls_failed = true;
                        break;
                    }
                }
                if tls.process_new_packets().is_err() {
                    tls_failed = true;
                    break;
                }
                // The plaintext out of rustls into the framing buffer.
                loop {
                    let len = c.rbuf.len();
                    c.rbuf.resize(len + READ_CHUNK, 0);
                    match tls.reader().read(&mut c.rbuf[len..]) {
                        Ok(0) => {
                            // close_notify: the peer is done.
                            c.rbuf.truncate(len);
                            closed = true;
                            break;
                        }
                        Ok(k) => c.rbuf.truncate(len + k),
                        Err(_) => {
                            // WouldBlock: no more plaintext for now.
                            c.rbuf.truncate(len);
                            break;
                        }
                    }
                }
            }
            if tls_failed || closed {
                break;
            }
        }
        // A plain connection reads straight into the framing buffer.
        while c.tls.is_none() {
            if read >= READ_ROUND {
                // Fair to the other connections: the rest next round.
                self.more = true;
                break;
            }
            let len = c.rbuf.len();
            c.rbuf.resize(len + READ_CHUNK, 0);
            let got = read_once(&mut c.stream, &mut c.rbuf[len..]);
            c.rbuf.truncate(
                len + if let ReadOutcome::Bytes(n) = got {
                    n
                } else {
                    0
                },
            );
            match got {
                ReadOutcome::Bytes(n) => {
                    read += n;
                    c.last_byte = now;
                }
                ReadOutcome::Drained => break,
                ReadOutcome::Closed => {
                    closed = true;
                    break;
                }
            }
        }
        let (peer, socket, inbound) = (c.peer, c.socket, c.inbound);
        let handshaking = c.tls.as_ref().is_some_and(|t| t.is_handshaking());
        if closed && !inbound && handshaking && !tls_failed {
            // A peer that closed before our TLS session was up: what waits in it is lost.
            self.failed.push((socket, peer));
        }
        if tls_failed {
            if !inbound {
                // A connection we opened (a TLS trunk whose certificate we do not trust, say):
                // what was to go over it was not delivered.
                self.failed.push((socket, peer));
            }
            // The alert rustls queued goes out, then the connection closes.
            self.stats.streams.event(StreamEvent::TlsFailed);
            self.log_once(peer.ip(), StreamEvent::TlsFailed);
            self.flush_tls(token);
            self.doomed.push((token, StreamEvent::PeerClosed));
            return 0;
        }
        let Some(c) = self.conns.get_mut(&token) else {
            return 0;
        };
        if c.ws.is_some() {
            return self.ws_frames(token, handler, now, closed);
        }
        let mut aliases = Vec::new();
        let mut consumed = 0;
        let mut handled = 0;
        let mut pongs = 0;
        let mut failure = None;
        loop {
            match next_frame(&c.rbuf[consumed..], max, &mut c.frame) {
                Ok(Frame::Message { skip, len }) => {
                    let start = consumed + skip;
                    let msg = &c.rbuf[start..start + len];
                    if let Some(tls) = &c.tls {
                        if let Some(a) =
                            super::alias::requested_alias(msg, tls.peer_certificates(), peer)
                        {
                            aliases.push(a);
                        }
                    }
                    handler.datagram(msg, peer, socket as usize);
                    consumed = start + len;
                    handled += 1;
                    c.partial_since = None;
                }
                Ok(Frame::Ping) => {
                    consumed += 4;
                    pongs += 1;
                }
                Ok(Frame::Pong) => consumed += 2,
                Ok(Frame::Incomplete) => break,
                Err(e) => {
                    failure = Some((e, consumed));
                    break;
                }
            }
        }
        if !only_line_breaks(&c.rbuf[consumed..]) {
            c.partial_since.get_or_insert(now);
        }
        self.stats.streams.messages_in.add(handled as u64);
        if let Some((e, at)) = failure {
            // Where the next message starts is unknown: answer a request, then close.
            let (status, reason) = e.response();
            self.scratch.clear();
            let rest = &c.rbuf[at..];
            if !rest.starts_with(b"SIP/")
                && crate::sip::write::salvage_response(
                    &mut self.scratch,
                    rest,
                    status,
                    reason.as_bytes(),
                )
            {
                let _ = c.stream.write_all(&self.scratch);
                self.stats.response_sent(status);
            }
            let why = match e {
                FrameError::TooLarge => StreamEvent::TooLarge,
                FrameError::Malformed(_) => StreamEvent::Unframeable,
            };
            self.log_once(peer.ip(), why);
            self.doomed.push((token, why));
            return handled;
        }
        c.rbuf.drain(..consumed);
        release_read_buffer(&mut c.rbuf);
        for _ in 0..pongs {
            self.stats.streams.pings.inc();
            self.write(token, b"\r\n");
        }
        // Handshake messages (and anything else the session wants to send).
        self.flush_tls(token);
        for a in aliases {
            self.alias(token, socket, a);
        }
        if closed {
            // This round's responses to what it sent go out first.
            self.stop_reading(token);
            self.closing_next.push((token, StreamEvent::PeerClosed));
        }
        handled
    }

    /// Decodes a WebSocket connection's frames (RFC 7118): each message to the core, the
    /// codec's replies (101, pong, close) to the peer; a failed or closed session closes the
    /// connection once its reply is written.
    fn ws_frames(
        &mut self,
        token: u64,
        handler: &mut dyn RecvHandler,
        now: Instant,
        mut closed: bool,
    ) -> usize {
        let max = self.settings.max_message;
        let Some(c) = self.conns.get_mut(&token) else {
            return 0;
        };
        let Conn {
            rbuf,
            ws,
            peer,
            socket,
            partial_since,
            ..
        } = c;
        let (peer, socket) = (*peer, *socket);
        let Some(ws) = ws.as_mut() else {
            return 0;
        };
        let mut reply = std::mem::take(&mut self.ws_out);
        reply.clear();
        let mut consumed = 0;
        let mut handled = 0;
        let mut pongs = 0;
        let mut failure = None;
        while consumed < rbuf.len() {
            let at = consumed;
            let item = match ws.next(&mut rbuf[at..], max, &mut reply) {
                Ok((used, item)) => {
                    consumed += used;
                    item
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let message = match item {
                WsItem::Message { start, len } => &rbuf[at + start..at + start + len],
                WsItem::Reassembled => ws.message(),
                WsItem::Upgraded => {
                    // Upgraded: the first SIP message has its own timeout from now.
                    *partial_since = None;
                    continue;
                }
                WsItem::Control => continue,
                WsItem::Closed => {
                    closed = true;
                    break;
                }
                WsItem::Incomplete => break,
            };
            // A keepalive inside a message (RFC 5626 §3.5.1 over WebSocket): answered.
            if only_line_breaks(message) {
                pongs += usize::from(message == b"\r\n\r\n");
                continue;
            }
            handler.datagram(message, peer, socket as usize);
            handled += 1;
            *partial_since = None;
        }
        rbuf.drain(..consumed.min(rbuf.len()));
        // The message timeout runs while something is incomplete: the handshake, a frame,
        // or a fragmented message (a slow or stalled sender), and only then.
        if ws.is_open() && rbuf.is_empty() && !ws.mid_message() {
            *partial_since = None;
        } else {
            partial_since.get_or_insert(now);
        }
        release_read_buffer(rbuf);
        self.stats.streams.messages_in.add(handled as u64);
        if !reply.is_empty() {
            self.write_stream(token, &reply);
        }
        self.ws_out = reply;
        for _ in 0..pongs {
            self.stats.streams.pings.inc();
            self.write(token, b"\r\n");
        }
        self.flush_tls(token);
        if let Some(e) = failure {
            let why = match e {
                WsError::Refused(_) => StreamEvent::WsRefused,
                WsError::Failed(super::websocket::CLOSE_TOO_BIG, _) => StreamEvent::TooLarge,
                WsError::Failed(..) => StreamEvent::WsFailed,
            };
            tracing::debug!(shard = self.shard, %peer, ?e, "WebSocket connection failed");
            self.log_once(peer.ip(), why);
            // Closed once the reply is written (next round).
            self.stop_reading(token);
            self.closing_next.push((token, why));
            return handled;
        }
        if closed {
            self.stop_reading(token);
            self.closing_next.push((token, StreamEvent::PeerClosed));
        }
        handled
    }

    /// Sends the answer to a peer's WebSocket close, if one is due.
    fn ws_close_echo(&mut self, token: u64) {
        let Some(ws) = self.conns.get_mut(&token).and_then(|c| c.ws.as_mut()) else {
            return;
        };
        let mut frame = std::mem::take(&mut self.ws_out);
        frame.clear();
        ws.close_echo(&mut frame);
        if !frame.is_empty() {
            self.write_stream(token, &frame);
            self.flush_tls(token);
        }
        self.ws_out = frame;
    }

    /// Takes a connection out of the epoll set (it closes next round).
    fn stop_reading(&mut self, token: u64) {
        if let Some(c) = self.conns.get(&token) {
            let fd = c.stream.as_raw_fd();
            let _ = epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, 0, token);
        }
    }

    /// Closes connections past their message or idle timeout.
    fn sweep(&mut self, now: Instant) {
        for (idx, paused) in self.paused.iter_mut().enumerate() {
            if *paused {
                *paused = false;
                let fd = self.listeners[idx].listener.as_raw_fd();
                let events = libc::EPOLLIN as u32;
                let _ = epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_MOD,
                    fd,
                    events,
                    idx as u64,
                );
            }
        }
        let message = Duration::from_millis(self.settings.message_timeout_ms);
        let idle = Duration::from_millis(self.settings.idle_timeout_ms);
        for (&token, c) in &self.conns {
            // An outgoing connection not up within the message timeout (no answer to the
            // connect or to our ClientHello) fails what waits on it.
            let stuck_out = !c.inbound
                && (c.connecting || c.tls.as_ref().is_some_and(|t| t.is_handshaking()))
                && now.saturating_duration_since(c.last_byte) >= message;
            if stuck_out {
                self.failed.push((c.socket, c.peer));
                self.doomed.push((token, StreamEvent::MessageTimeout));
            } else if c
                .partial_since
                .is_some_and(|t| now.saturating_duration_since(t) >= message)
                && c.inbound
            {
                self.doomed.push((token, StreamEvent::MessageTimeout));
            } else if now.saturating_duration_since(c.last_byte) >= idle {
                self.doomed.push((token, StreamEvent::Idle));
            }
        }
        let doomed = std::mem::take(&mut self.doomed);
        for &(token, why) in &doomed {
            if let Some(c) = self.conns.get(&token) {
                if why == StreamEvent::MessageTimeout {
                    self.log_once(c.peer.ip(), why);
                }
            }
        }
        self.doomed = doomed;
        self.close_doomed();
    }

    /// Connection `token` also stands for `alias` (RFC 5923, [`super::alias`]): our requests
    /// to that address go down it, from every shard, until it closes. An address another
    /// live connection already stands for is not taken from it, and a connection stands for
    /// at most [`ALIASES_MAX`] addresses.
    fn alias(&mut self, token: u64, socket: u16, alias: SocketAddr) {
        let Some(c) = self.conns.get(&token) else {
            return;
        };
        if !c.inbound
            || c.aliases.contains(&alias)
            || alias == c.peer
            || c.aliases.len() >= ALIASES_MAX
        {
            return;
        }
        let taken_here = self
            .by_peer
            .get(&(socket, alias))
            .is_some_and(|t| *t != token && self.conns.contains_key(t));
        if taken_here
            || self
                .hub
                .owner(socket, alias)
                .is_some_and(|s| s != self.shard)
        {
            return;
        }
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        c.aliases.push(alias);
        tracing::debug!(shard = self.shard, peer = %c.peer, %alias, "connection aliased (RFC 5923)");
        self.by_peer.insert((socket, alias), token);
        self.hub.set_owner(socket, alias, self.shard, token);
        self.stats.streams.event(StreamEvent::Aliased);
    }

    fn close_doomed(&mut self) {
        while let Some((token, why)) = self.doomed.pop() {
            let Some(c) = self.conns.remove(&token) else {
                continue;
            };
            // Closing the descriptor takes it out of the epoll set.
            for &a in c.aliases.iter().chain([&c.peer]) {
                if self.by_peer.get(&(c.socket, a)) == Some(&token) {
                    self.by_peer.remove(&(c.socket, a));
                }
                if a != c.peer {
                    self.hub.clear_owner(c.socket, a, self.shard, token);
                }
            }
            if let Some(n) = self.per_source.get_mut(&c.peer.ip()) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&c.peer.ip());
                }
            }
            self.hub.clear_owner(c.socket, c.peer, self.shard, token);
            if c.inbound {
                // Every shard: the bindings registered over it may live anywhere.
                for (i, q) in self.hub.closed.iter().enumerate() {
                    q.push((c.socket, c.peer, self.now_ms));
                    if i != self.shard {
                        self.hub.wakers[i].wake_if_sleeping();
                    }
                }
            }
            self.stats.streams.event(why);
            tracing::debug!(shard = self.shard, peer = %c.peer, reason = ?why, "connection closed");
            finish(c, why);
        }
        self.stats.streams.open.set(self.conns.len() as u64);
    }

    fn log_once(&mut self, ip: IpAddr, why: StreamEvent) {
        if self.logged.len() >= LOGGED_MAX {
            self.logged.clear();
        }
        if self.logged.insert((ip, why)) {
            tracing::warn!(shard = self.shard, source = %ip, reason = ?why, "connection refused or closed");
        }
    }
}
