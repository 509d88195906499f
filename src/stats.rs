//! The counters the protocol core writes, one set per shard, and the in-server latency
//! histogram. Each shard is the only writer of its [`ShardStats`]: counters are atomics written
//! with a relaxed load+store (no locked instruction on the hot path) and read by the metrics
//! thread (`metrics.rs`, which renders them for Prometheus). The latency histogram
//! (hdrhistogram, µs resolution) is recorded locally by the shard and merged into the shared
//! copy at most every few milliseconds.

use crate::sip::Method;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A counter with a single writer.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a plain load+store avoids the locked read-modify-write.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a datagram was dropped without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Unparseable and no Via to answer to.
    Malformed,
    /// A response that matches nothing here.
    StrayResponse,
    /// The owner shard's hand-off queue was full.
    QueueFull,
    /// A datagram that was only whitespace (keep-alive).
    KeepAlive,
    /// Responses the RFC says to drop (e.g. malformed responses).
    BadResponse,
    /// An ACK that matched no transaction (absorbed).
    Ack,
    /// Transport: a datagram larger than the receive buffer.
    Truncated,
    /// Transport: the kernel refused to send a datagram.
    SendError,
    /// Transport: a receive call or completion failed.
    RecvError,
    /// Transport (io_uring): the receive stopped with every provided buffer in use; the
    /// datagrams wait in the socket buffer (dropped only if that overflows too).
    NoBuffers,
    /// Responder mode: lost on purpose (the configured drop probability).
    SimulatedLoss,
    /// From a banned address (flood, scanner or brute-force ban).
    Banned,
    /// From an address the access control lists deny.
    Denied,
    /// A request from a known scanner (by User-Agent).
    Scanner,
}

pub const DROP_REASONS: [(DropReason, &str); 14] = [
    (DropReason::Malformed, "malformed"),
    (DropReason::StrayResponse, "stray_response"),
    (DropReason::QueueFull, "queue_full"),
    (DropReason::KeepAlive, "keepalive"),
    (DropReason::BadResponse, "bad_response"),
    (DropReason::Ack, "ack_absorbed"),
    (DropReason::Truncated, "truncated"),
    (DropReason::SendError, "send_error"),
    (DropReason::RecvError, "recv_error"),
    (DropReason::NoBuffers, "no_buffers"),
    (DropReason::SimulatedLoss, "simulated_loss"),
    (DropReason::Banned, "banned"),
    (DropReason::Denied, "denied"),
    (DropReason::Scanner, "scanner"),
];

pub(crate) const METHODS: [Method; 15] = [
    Method::Invite,
    Method::Ack,
    Method::Bye,
    Method::Cancel,
    Method::Register,
    Method::Options,
    Method::Info,
    Method::Update,
    Method::Prack,
    Method::Subscribe,
    Method::Notify,
    Method::Refer,
    Method::Message,
    Method::Publish,
    Method::Other,
];

/// One shard's counters.
pub struct ShardStats {
    pub received_requests: [Counter; 15],
    pub received_responses: Counter,
    /// Responses sent, by status code 100..=699 (index code - 100).
    pub sent_responses: Box<[Counter]>,
    pub dropped: [Counter; DROP_REASONS.len()],
    /// Datagrams this shard handed to their owner shard.
    pub handoffs_out: Counter,
    /// Datagrams this shard received from other shards.
    pub handoffs_in: Counter,
    /// Datagrams received on this shard's sockets.
    pub datagrams_in: Counter,
    pub datagrams_out: Counter,
    /// Bindings currently held by this shard's registrar.
    pub bindings: Counter,
    /// Cross-shard wake-ups issued by this shard.
    pub wakeups: Counter,
    /// Requests sent (forwarded by the proxy), by method.
    pub sent_requests: [Counter; 15],
    /// Transactions currently held by this shard's proxy.
    pub transactions: Counter,
    /// 1 while the shard is past its capacity (new requests for users get 503).
    pub overloaded: Counter,
    /// UDP listen addresses whose datagrams the kernel steers to their owner shard (set
    /// on shard 0's counters at start).
    pub steered: Counter,
    /// 1 while this shard runs on another shard's thread (consolidation, shard/consolidation.rs).
    pub hosted: Counter,
    /// Times this shard moved to another shard's thread or back.
    pub moves: Counter,
    /// Connections of the stream transports (TCP) this shard holds and what became of them.
    pub streams: StreamStats,
    pub latency: Mutex<Histogram<u64>>,
    /// Where the in-server latency goes, one histogram per [`Stage`] (µs).
    pub stages: [Mutex<Histogram<u64>>; Stage::ALL.len()],
}

/// A part of a message's time in the server (issue 20), each with its own histogram: the
/// in-server latency of a datagram answered in its own round is its socket wait, the core
/// time of the datagrams before it and its own, and the send; a handed-over one adds its
/// wait in the owner's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Stage {
    /// From the kernel's receive timestamp to the start of the receive round that reads it
    /// (UDP with timestamps only).
    SocketWait,
    /// `Core::handle` of one message: parsing, security checks, digest, registrar or
    /// transaction and proxy work, writing what it sends into the outbox.
    Core,
    /// From a hand-over by the receiving shard to the owner taking it off its queue.
    HandoffQueue,
    /// The send call of a round (recorded once per datagram it carries).
    Send,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::SocketWait,
        Stage::Core,
        Stage::HandoffQueue,
        Stage::Send,
    ];

    /// Its `stage` label in the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Stage::SocketWait => "socket_wait",
            Stage::Core => "core",
            Stage::HandoffQueue => "handoff_queue",
            Stage::Send => "send",
        }
    }
}

/// Why a stream connection was refused or closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum StreamEvent {
    /// Refused at accept: the source address holds its limit of connections.
    RefusedPerSource,
    /// Refused at accept: the shard holds its limit of connections.
    RefusedPerShard,
    /// Closed: no complete message within the message timeout (slowloris).
    MessageTimeout,
    /// Closed: idle (not a byte) for the idle timeout.
    Idle,
    /// Closed: a message larger than the limit.
    TooLarge,
    /// Closed: a message that cannot be framed (missing Content-Length, ...).
    Unframeable,
    /// Closed: the peer does not read what we send (the output buffer overflowed).
    SlowReader,
    /// Closed by the peer or by an error.
    PeerClosed,
    /// An outgoing connection that could not be made.
    ConnectFailed,
    /// A TLS handshake or record that failed (the connection closes).
    TlsFailed,
    /// A WebSocket upgrade refused (no `sip` subprotocol, not an upgrade, ...).
    WsRefused,
    /// A WebSocket protocol error (unmasked frame, bad UTF-8, ...): closed with its code.
    WsFailed,
    /// Not a close: a peer proxy's TLS connection aliased for our requests to it (RFC 5923).
    Aliased,
}

pub const STREAM_EVENTS: [(StreamEvent, &str); 13] = [
    (StreamEvent::RefusedPerSource, "refused_per_source"),
    (StreamEvent::RefusedPerShard, "refused_per_shard"),
    (StreamEvent::MessageTimeout, "message_timeout"),
    (StreamEvent::Idle, "idle"),
    (StreamEvent::TooLarge, "too_large"),
    (StreamEvent::Unframeable, "unframeable"),
    (StreamEvent::SlowReader, "slow_reader"),
    (StreamEvent::PeerClosed, "peer_closed"),
    (StreamEvent::ConnectFailed, "connect_failed"),
    (StreamEvent::TlsFailed, "tls_failed"),
    (StreamEvent::WsRefused, "ws_refused"),
    (StreamEvent::WsFailed, "ws_failed"),
    (StreamEvent::Aliased, "aliased"),
];

/// The stream transports' counters of one shard.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Connections open now (accepted and outgoing).
    pub open: Counter,
    pub accepted: Counter,
    pub connected: Counter,
    /// Messages received on connections, and keepalive pings answered.
    pub messages_in: Counter,
    pub pings: Counter,
    /// Write calls on connection sockets (a round's messages to one connection go in one).
    pub writes: Counter,
    pub events: [Counter; STREAM_EVENTS.len()],
}

impl StreamStats {
    #[inline]
    pub fn event(&self, e: StreamEvent) {
        self.events[e as usize].inc();
    }
}

/// A new latency histogram: 1 µs to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// A new stage histogram: 1 µs to 10 s, 2 significant digits (about 1% resolution; a tenth
/// of the latency histogram's memory).
pub fn new_stage_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000, 2).expect("valid histogram bounds")
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            received_requests: Default::default(),
            received_responses: Counter::default(),
            sent_responses: (0..600).map(|_| Counter::default()).collect(),
            dropped: Default::default(),
            handoffs_out: Counter::default(),
            handoffs_in: Counter::default(),
            datagrams_in: Counter::default(),
            datagrams_out: Counter::default(),
            bindings: Counter::default(),
            wakeups: Counter::default(),
            sent_requests: Default::default(),
            transactions: Counter::default(),
            streams: StreamStats::default(),
            overloaded: Counter::default(),
            steered: Counter::default(),
            hosted: Counter::default(),
            moves: Counter::default(),
            latency: Mutex::new(new_histogram()),
            stages: Stage::ALL.map(|_| Mutex::new(new_stage_histogram())),
        }
    }
}

impl ShardStats {
    #[inline]
    pub fn request(&self, m: Method) {
        let i = METHODS.iter().position(|&x| x == m).unwrap_or(14);
        self.received_requests[i].inc();
    }

    #[inline]
    pub fn request_sent(&self, m: Method) {
        let i = METHODS.iter().position(|&x| x == m).unwrap_or(14);
        self.sent_requests[i].inc();
    }

    /// Counts a datagram the proxy sends: a response by status, a request by method.
    pub fn message_sent(&self, bytes: &[u8]) {
        if let Some(rest) = bytes.strip_prefix(b"SIP/2.0 ") {
            let code = rest
                .iter()
                .take(3)
                .fold(0u16, |a, &d| a * 10 + d.wrapping_sub(b'0') as u16);
            self.response_sent(code);
        } else {
            let end = memchr::memchr(b' ', bytes).unwrap_or(0);
            self.request_sent(Method::from_bytes(&bytes[..end]));
        }
    }

    #[inline]
    pub fn response_sent(&self, status: u16) {
        if let Some(c) = self.sent_responses.get((status as usize).wrapping_sub(100)) {
            c.inc();
        }
    }

    #[inline]
    pub fn dropped(&self, r: DropReason) {
        self.dropped[r as usize].inc();
    }
}
