//! One shard's event loop: receive a batch, run the core on each datagram, move datagrams
//! owned by other shards to them, drain our own hand-off queue, run timers, send the outbox
//! in one batch, and sleep in `poll` only when there is nothing to do (setting the flag that
//! lets other shards wake us).

use super::{Clock, Handoff, Peer, Reload};
use crate::server::outbox::Outbox;
use crate::server::{Core, Disposition, Neighbours};
use crate::stats::{DropReason, ShardStats, Stage};
use crate::transport::{RecvHandler, Transport};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a shard publishes its latency samples to the metrics endpoint.
const MERGE_EVERY: Duration = Duration::from_millis(50);
/// Latency samples kept before publishing regardless of the time.
const PENDING_MAX: usize = 1024;
/// Hand-offs taken from the queue per round.
const HANDOFF_ROUND: usize = 256;
/// Longest sleep (ms) when no timer is due sooner.
const IDLE_MAX_MS: u64 = 200;
/// The other nodes' binding changes a shard applies per round at most (`--store`).
const REMOTE_PER_ROUND: usize = 4_096;
/// Overload log lines at most this often per shard (the share a shard refuses changes every
/// interval while it is at its limit).
const OVERLOAD_LOG_EVERY: Duration = Duration::from_secs(10);

/// The overload detector (the signal of `Core::set_overloaded`): a shard whose socket has not
/// emptied for a whole interval (every round a full batch) is past its capacity, and stays so
/// until a round empties it. While overloaded the core refuses new requests for users with 503
/// (cheap: about a sixth of a call's cost here) so that the calls it admitted are served
/// instead of queueing behind new ones and being retransmitted. Refusing only a growing share
/// (1/8 more per saturated interval, 1/16 less per drained one, RFC 7339's loss idea) served
/// fewer calls in the overload runs (1.9k against 2.2k-2.9k calls/s): admitted calls kept
/// the socket full longer.
struct OverloadDetector {
    /// None: never overloaded by saturation.
    interval: Option<Duration>,
    /// The start of the first of the rounds in a row that read a full batch (None after a
    /// round that emptied the socket). A shard that slept had emptied its socket before, so
    /// a burst read after a sleep starts a new run of full rounds.
    full_since: Option<Instant>,
    overloaded: bool,
    last_log: Option<Instant>,
}

impl OverloadDetector {
    fn new(interval_ms: u32) -> OverloadDetector {
        OverloadDetector {
            interval: (interval_ms > 0).then(|| Duration::from_millis(interval_ms.into())),
            full_since: None,
            overloaded: false,
            last_log: None,
        }
    }

    /// Records a round that started at `t`; `full` when it read a full batch (or a full
    /// hand-off round). Returns the new state when it changed.
    fn round(&mut self, t: Instant, full: bool) -> Option<bool> {
        let interval = self.interval?;
        let was = self.overloaded;
        if full {
            let since = *self.full_since.get_or_insert(t);
            if t.saturating_duration_since(since) >= interval {
                self.overloaded = true;
            }
        } else {
            self.full_since = None;
            self.overloaded = false;
        }
        (self.overloaded != was).then_some(self.overloaded)
    }
}

/// Latency samples (µs, count) not yet published. Recording them one by one into the shared
/// histogram under its lock costs a few instructions each; merging a local histogram instead
/// walked and zeroed its ~140 KB of counters at every publication.
struct PendingLatency {
    samples: Vec<(u64, u64)>,
}

impl PendingLatency {
    fn record(&mut self, us: u64, count: u64) {
        self.samples.push((us.max(1), count));
    }

    fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn publish(&mut self, shared: &std::sync::Mutex<Histogram<u64>>) {
        if let Ok(mut h) = shared.lock() {
            for &(us, n) in &self.samples {
                let _ = h.record_n(us, n);
            }
        }
        self.samples.clear();
    }
}

/// Everything a shard thread owns.
pub struct ShardContext {
    pub id: usize,
    pub core: Core,
    pub transport: Box<dyn Transport>,
    pub peers: Arc<Vec<Peer>>,
    pub stats: Arc<ShardStats>,
    pub stop: Arc<AtomicBool>,
    pub reload: Arc<Reload>,
    pub clock: Clock,
    /// The binding store's writer (`--data-dir`): None without persistence.
    pub journal: Option<crate::store::Journal>,
    /// The other nodes' binding changes (`--store`): None without a shared store.
    pub remote: Option<crossbeam_channel::Receiver<crate::registrar::RemoteChange>>,
    /// Where questions to the shared store go (`crate::proxy::lookup`): (shard, AOR key).
    pub lookups: Option<crossbeam_channel::Sender<(usize, Box<[u8]>)>>,
    /// Questions of the admin API (`crate::admin`), answered between rounds.
    pub admin: crossbeam_channel::Receiver<crate::admin::ShardQuery>,
    /// The way to the CDR writer (`--cdr`): None without call detail records.
    pub cdr: Option<crate::cdr::CdrOutlet>,
    /// The shard's TCP listeners and connections: None without `--listen tcp:`.
    pub streams: Option<crate::transport::tcp::TcpShard>,
    /// The first socket index of the stream listeners (usize::MAX: none).
    pub first_stream_socket: usize,
}

/// Stage samples not yet published, one [`PendingLatency`] per [`Stage`].
struct PendingStages([PendingLatency; Stage::ALL.len()]);

impl PendingStages {
    fn new() -> PendingStages {
        PendingStages(Stage::ALL.map(|_| PendingLatency {
            samples: Vec::with_capacity(PENDING_MAX),
        }))
    }

    #[inline]
    fn record(&mut self, stage: Stage, us: u64, count: u64) {
        self.0[stage as usize].record(us, count);
    }

    fn len(&self) -> usize {
        self.0.iter().map(PendingLatency::len).max().unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(PendingLatency::is_empty)
    }

    fn publish(&mut self, stats: &ShardStats) {
        for (pending, shared) in self.0.iter_mut().zip(&stats.stages) {
            if !pending.is_empty() {
                pending.publish(shared);
            }
        }
    }
}

/// µs of a duration, rounded to the nearest (a stage of 0.6 µs counts as 1, not 0).
fn rounded_us(d: Duration) -> u64 {
    (d.as_nanos() as u64 + 500) / 1000
}

/// The part of the shard the receive callback needs (the transport is borrowed separately).
struct Handler<'s> {
    core: &'s mut Core,
    /// The shards after this one on its thread (consolidation), which take what they own
    /// directly when they may.
    later: Later<'s>,
    stages: &'s mut PendingStages,
    out: &'s mut Outbox,
    peers: &'s [Peer],
    stats: &'s ShardStats,
    now_ms: u64,
    batch_start: Instant,
    /// Datagrams handled locally in this round.
    local: u64,
    /// CLOCK_REALTIME at `batch_start` (ns): the kernel's receive timestamps are on it.
    realtime_start_ns: u64,
    /// The receive timestamp of the datagram passed next (from the transport).
    rx_ns: Option<u64>,
    /// For each datagram handled locally this round, µs between its kernel receive timestamp
    /// and `batch_start` (0 without one): its in-server latency is that plus the time to
    /// the send that carries its answer.
    waits: &'s mut Vec<u64>,
    /// Peers that were handed datagrams in the current receive batch and may need waking.
    to_wake: &'s mut PeerSet,
    /// Socket indexes from here on are connections (their messages are never retransmitted:
    /// one the owner's full queue refused waits in `later.retry` instead of being dropped).
    first_stream_socket: usize,
}

/// A set of shard indexes (a bitmap), for waking each peer once per receive batch.
struct PeerSet {
    words: Vec<u64>,
    any: bool,
}

impl PeerSet {
    fn new(n: usize) -> PeerSet {
        PeerSet {
            words: vec![0; n.div_ceil(64)],
            any: false,
        }
    }

    #[inline]
    fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
        self.any = true;
    }

    /// Calls `f` on every member in increasing order and empties the set.
    fn drain(&mut self, mut f: impl FnMut(usize)) {
        if !self.any {
            return;
        }
        self.any = false;
        for (w, word) in self.words.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                f(w * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
    }
}

/// µs from a datagram's kernel receive timestamp to the start of the round that read it
/// (0 without a timestamp, or for one taken after the round started).
fn socket_wait_us(rx_ns: Option<u64>, realtime_start_ns: u64) -> u64 {
    rx_ns.map_or(0, |ns| realtime_start_ns.saturating_sub(ns) / 1000)
}

/// CLOCK_REALTIME now, in ns since the epoch (what SO_TIMESTAMPNS stamps datagrams with).
fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Handler<'_> {
    /// When a datagram that waited `wait_us` in its socket before this round was received.
    fn received(&self, wait_us: u64) -> Instant {
        self.batch_start
            .checked_sub(Duration::from_micros(wait_us))
            .unwrap_or(self.batch_start)
    }
}

impl RecvHandler for Handler<'_> {
    fn received_at(&mut self, realtime_ns: u64) {
        self.rx_ns = Some(realtime_ns);
    }

    fn datagram(&mut self, data: &[u8], src: SocketAddr, socket: usize) {
        self.stats.datagrams_in.inc();
        let stamped = self.rx_ns.take();
        let wait_us = socket_wait_us(stamped, self.realtime_start_ns);
        if stamped.is_some() {
            self.stages.record(Stage::SocketWait, wait_us, 1);
        }
        let core_start = Instant::now();
        let disposition = self.core.handle_with(
            data,
            src,
            socket,
            self.now_ms,
            false,
            self.out,
            &mut self.later,
        );
        self.stages
            .record(Stage::Core, rounded_us(core_start.elapsed()), 1);
        match disposition {
            Disposition::Done => {
                self.local += 1;
                self.waits.push(wait_us);
            }
            Disposition::Dispatched(owner) => {
                // Its latency is the owner's: from its receive to the send of the pass.
                let received = self.received(wait_us);
                self.later.taken(owner, received);
            }
            Disposition::HandOff(owner) => {
                let peer = &self.peers[owner];
                let h = Handoff {
                    data: data.into(),
                    src,
                    socket: socket as u16,
                    received: self.received(wait_us),
                    queued: Instant::now(),
                };
                match peer.queue.push(h) {
                    Ok(()) => {
                        self.stats.handoffs_out.inc();
                        // Woken at the end of the batch: one wake-up for all we move there.
                        self.to_wake.insert(owner);
                    }
                    Err(h) => {
                        // The owner is past its capacity: a new request gets its 503 here;
                        // the rest is dropped (the client retransmits over UDP), or over a
                        // connection (nothing is retransmitted) tried again next round.
                        if !self.core.overflow(&h.data, src, socket, self.out) {
                            if socket >= self.first_stream_socket {
                                // What comes after it for the same owner must not pass it.
                                self.later.retry.push((owner, h));
                            } else {
                                self.stats.dropped(DropReason::QueueFull);
                            }
                        }
                    }
                }
            }
        }
    }

    fn batch_end(&mut self) {
        let (peers, stats) = (self.peers, self.stats);
        self.to_wake.drain(|owner| {
            if peers[owner].waker.wake_if_sleeping() {
                stats.wakeups.inc();
            }
        });
    }
}

/// The shards that run after the current one in this pass of its thread (consolidation).
/// One of them takes a message directly ([`Neighbours`]) only when nothing it has yet to
/// take in could be overtaken: its last round on this thread drained its sockets (while
/// shards share a thread the kernel steers new datagrams to shard 0's socket, so what a
/// guest's socket still holds is from before), its hand-off queue and admin questions are
/// empty, it has applied the latest reload, the other nodes' changes and its failed
/// deliveries wait for none of its rounds, and the current shard holds no refused message of
/// a connection for it (in `retry`).
/// Its round comes later in the pass, so what it answers is held, sent and accounted by that
/// round as its own.
struct Later<'s> {
    shards: &'s mut [ShardLoop],
    /// The current shard's messages of connections that their owners' full queues refused,
    /// in order, to be pushed again next round.
    retry: &'s mut Vec<(usize, Handoff)>,
}

impl Later<'_> {
    /// Shard `owner` took a message read at `received`: its round records the latency.
    fn taken(&mut self, owner: usize, received: Instant) {
        if let Some(s) = self.shards.iter_mut().find(|s| s.ctx.id == owner) {
            s.direct.push(received);
        }
    }
}

impl Neighbours for Later<'_> {
    fn core(&mut self, shard: usize) -> Option<(&mut Core, &mut Outbox)> {
        if self.shards.is_empty() || self.retry.iter().any(|(owner, _)| *owner == shard) {
            return None;
        }
        let s = self.shards.iter_mut().find(|s| s.ctx.id == shard)?;
        let ctx = &s.ctx;
        let idle = s.drained
            && ctx.peers[ctx.id].queue.is_empty()
            && ctx.admin.is_empty()
            && ctx.reload.generation() == s.reload_seen
            && ctx.remote.as_ref().is_none_or(|r| r.is_empty())
            && ctx.streams.as_ref().is_none_or(|t| !t.has_failed());
        idle.then_some((&mut s.ctx.core, &mut s.out))
    }
}

/// One shard's loop: its context and what its rounds carry from one to the next. A thread
/// runs one or several of them ([`super::consolidation`]): a round never blocks, and the
/// thread sleeps only when every shard it runs may.
pub struct ShardLoop {
    pub ctx: ShardContext,
    out: Outbox,
    hist: PendingLatency,
    stages: PendingStages,
    last_merge: Instant,
    handed: Vec<Instant>,
    waits: Vec<u64>,
    to_wake: PeerSet,
    /// With one shard nothing is ever handed over: the queue is not looked at.
    sharded: bool,
    reload_seen: u64,
    overload: OverloadDetector,
    retry: Vec<(usize, Handoff)>,
    /// The last round on the current thread received less than a batch (its sockets were
    /// empty then); false when the shard has just moved to another thread.
    drained: bool,
    /// When the messages a shard before this one dispatched to it directly in this pass were
    /// received (for their latency, recorded at the end of the round).
    direct: Vec<Instant>,
    /// `sync` durability: rounds of responses waiting for their binding changes to be on
    /// disk (with the flush number that covers them), oldest first, and emptied outboxes to
    /// reuse.
    parked: std::collections::VecDeque<(u64, Outbox)>,
    spare_outboxes: Vec<Outbox>,
    /// What the current round's first part leaves for its end.
    round_state: RoundState,
    /// Datagrams of this shard the current round sent (or moved to its host's outbox).
    sent: usize,
}

/// What a round's first part ([`ShardLoop::handle`]) leaves for its end.
#[derive(Clone, Copy)]
struct RoundState {
    batch_start: Instant,
    /// Datagrams handled locally.
    local: u64,
    /// Messages received from the sockets and connections.
    received: usize,
}

impl ShardLoop {
    pub fn new(ctx: ShardContext) -> ShardLoop {
        let saturated_ms = if ctx.core.refuses_on_overload() {
            ctx.core.overload_settings().saturated_ms
        } else {
            0
        };
        tracing::debug!(
            shard = ctx.id,
            backend = ctx.transport.name(),
            "shard started"
        );
        ShardLoop {
            out: Outbox::new(),
            hist: PendingLatency {
                samples: Vec::with_capacity(PENDING_MAX),
            },
            stages: PendingStages::new(),
            last_merge: Instant::now(),
            handed: Vec::with_capacity(HANDOFF_ROUND),
            waits: Vec::with_capacity(crate::transport::BATCH * 4),
            to_wake: PeerSet::new(ctx.peers.len()),
            sharded: ctx.peers.len() > 1,
            reload_seen: 0,
            overload: OverloadDetector::new(saturated_ms),
            retry: Vec::new(),
            drained: false,
            direct: Vec::new(),
            parked: Default::default(),
            spare_outboxes: Vec::new(),
            round_state: RoundState {
                batch_start: Instant::now(),
                local: 0,
                received: 0,
            },
            sent: 0,
            ctx,
        }
    }

    /// The outbox a round sends (where a guest's datagrams join the host's).
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.out
    }

    /// The shard now runs on another thread: until its first round there, what its sockets
    /// hold is unknown (no message is dispatched to it directly).
    pub fn moved(&mut self) {
        self.drained = false;
    }

    /// The shard's id.
    pub fn id(&self) -> usize {
        self.ctx.id
    }

    /// One round: receive, handle, hand over, time out, send. Returns true when the shard
    /// may sleep (its sockets and its queue were drained in this round), the time of the
    /// round's start with it.
    pub fn round(&mut self) -> (bool, Instant) {
        let start = self.handle();
        let sent_at = self.send_own();
        (self.end_round(sent_at), start)
    }

    /// One round on a thread that runs only this shard, then a sleep when it may. Returns
    /// the round's start.
    pub fn step(&mut self) -> Instant {
        let (idle, start) = self.round();
        if idle {
            if let Some(timeout) = self.prepare_sleep() {
                self.wait(timeout);
                self.awake();
            }
        }
        start
    }

    /// The first part of a round: receive, handle, hand over, time out; what is to be sent
    /// waits in the outbox. Returns the round's start.
    pub fn handle(&mut self) -> Instant {
        self.handle_with(&mut [])
    }

    /// [`ShardLoop::handle`] on a thread that runs `later` after this shard in the same
    /// pass: a message one of them owns is dispatched to its core here when it may take it
    /// ([`Later`]), not handed over through its queue.
    pub fn handle_with(&mut self, later: &mut [ShardLoop]) -> Instant {
        let ctx = &mut self.ctx;
        let out = &mut self.out;
        let me = &ctx.peers[ctx.id];
        let generation = ctx.reload.generation();
        if generation != self.reload_seen {
            self.reload_seen = generation;
            if let Some(u) = ctx.reload.latest() {
                ctx.core.reload(u.core, u.users);
                tracing::debug!(shard = ctx.id, "reloaded");
            }
        }
        // The admin API's questions (rare; an empty channel costs one load).
        while let Ok(q) = ctx.admin.try_recv() {
            q.answer(&mut ctx.core, ctx.clock.now_ms());
        }
        // One clock read per round for the core's time and the latency start; one more after
        // the send, and one before sleeping.
        let batch_start = Instant::now();
        let realtime_start_ns = realtime_ns();
        let now_ms = ctx.clock.ms_at(batch_start);
        self.waits.clear();
        // The other nodes' binding changes (an empty channel costs one load), a bounded
        // number per round: a whole store read after a reconnect does not hold up the
        // traffic (what is left is taken in the next rounds, without sleeping).
        if let Some(r) = &ctx.remote {
            ctx.core
                .apply_remote(r.try_iter().take(REMOTE_PER_ROUND), now_ms, out);
        }
        // Deliveries that failed in the last round's send, before this round creates new
        // transactions to the same destinations (those must not be failed with them).
        if let Some(t) = &mut ctx.streams {
            let core = &mut ctx.core;
            t.take_failed(|socket, dst| core.transport_error(socket, dst, now_ms, out));
        }
        // Messages of connections the owners' full queues refused before: in order, first.
        if !self.retry.is_empty() {
            let mut kept = Vec::new();
            for (owner, h) in self.retry.drain(..) {
                if !kept.is_empty() {
                    kept.push((owner, h));
                    continue;
                }
                match ctx.peers[owner].queue.push(h) {
                    Ok(()) => self.to_wake.insert(owner),
                    Err(h) => kept.push((owner, h)),
                }
            }
            self.retry = kept;
        }
        let first_stream_socket = ctx.first_stream_socket;
        let mut handler = Handler {
            core: &mut ctx.core,
            later: Later {
                shards: later,
                retry: &mut self.retry,
            },
            stages: &mut self.stages,
            out,
            peers: &ctx.peers,
            stats: &ctx.stats,
            now_ms,
            batch_start,
            local: 0,
            realtime_start_ns,
            rx_ns: None,
            waits: &mut self.waits,
            to_wake: &mut self.to_wake,
            first_stream_socket,
        };
        let received = match ctx.transport.poll_recv(&mut handler) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(shard = ctx.id, "receive failed: {e}");
                0
            }
        };
        // Messages on the shard's connections (framed), as the datagrams were.
        let received = received
            + ctx
                .streams
                .as_mut()
                .map_or(0, |t| t.poll(&mut handler, batch_start, now_ms));
        // A transport that failed mid-batch may not have ended it.
        handler.batch_end();
        let local = handler.local;
        // Saturated: a socket still delivered full batches when the receive reached its cap
        // (not merely more than a batch read: a burst that the round emptied is not), or
        // a full hand-off round waits.
        let full = ctx.transport.saturated() || me.queue.len() >= HANDOFF_ROUND;
        if let Some(on) = self.overload.round(batch_start, full) {
            ctx.core.set_overloaded(on);
            ctx.stats.overloaded.set(u64::from(on));
            let quiet = self
                .overload
                .last_log
                .is_none_or(|l| batch_start.duration_since(l) >= OVERLOAD_LOG_EVERY);
            if on && quiet {
                tracing::warn!(
                    shard = ctx.id,
                    "overloaded: new requests for users get 503 until the shard catches up"
                );
                self.overload.last_log = Some(batch_start);
            }
        }
        // Datagrams other shards moved to us.
        let handed = &mut self.handed;
        handed.clear();
        while self.sharded && handed.len() < HANDOFF_ROUND {
            let Some(h) = me.queue.pop() else { break };
            ctx.stats.handoffs_in.inc();
            let core_start = Instant::now();
            self.stages.record(
                Stage::HandoffQueue,
                rounded_us(core_start.saturating_duration_since(h.queued)),
                1,
            );
            let d = ctx
                .core
                .handle(&h.data, h.src, h.socket as usize, now_ms, true, out);
            self.stages
                .record(Stage::Core, rounded_us(core_start.elapsed()), 1);
            debug_assert_eq!(d, Disposition::Done);
            handed.push(h.received);
        }
        if let Some(t) = &mut ctx.streams {
            let core = &mut ctx.core;
            t.take_closed(|socket, peer, ms| core.connection_closed(socket, peer, ms));
        }
        if ctx.core.next_timeout().is_some_and(|t| t <= now_ms) {
            ctx.core.handle_timeout(now_ms, out);
        }
        // Call detail records finished this round go to the CDR writer (in batches).
        if let Some(c) = &mut ctx.cdr {
            ctx.core.take_records(c.records());
            c.round(now_ms);
        }
        // The binding store: this round's binding changes go to the writer; with `sync`
        // durability the round's responses (and everything after them, in order) wait until
        // those changes are on disk.
        if let Some(l) = &ctx.lookups {
            let mut keys = Vec::new();
            ctx.core.take_lookups(&mut keys);
            for k in keys {
                // Unbounded: at most one question per parked request (bounded by the core).
                let _ = l.send((ctx.id, k));
            }
        }
        if let Some(j) = &mut ctx.journal {
            ctx.core.take_journal(j.pending());
            let number = j.flush();
            if j.durability() == crate::store::Durability::Sync {
                if !out.is_empty() && (number > j.durable() || !self.parked.is_empty()) {
                    let spare = self.spare_outboxes.pop().unwrap_or_default();
                    self.parked
                        .push_back((number, core::mem::replace(out, spare)));
                }
                let durable = j.durable();
                while self.parked.front().is_some_and(|(n, _)| *n <= durable) {
                    let Some((_, mut held)) = self.parked.pop_front() else {
                        break;
                    };
                    if let Some(t) = &mut ctx.streams {
                        ctx.stats.datagrams_out.add(t.send(&mut held) as u64);
                    }
                    match ctx.transport.send(&mut held) {
                        Ok(sent) => ctx.stats.datagrams_out.add(sent as u64),
                        Err(e) => tracing::warn!(shard = ctx.id, "send failed: {e}"),
                    }
                    held.clear();
                    self.spare_outboxes.push(held);
                }
            }
        }
        self.round_state = RoundState {
            batch_start,
            local,
            received,
        };
        // This shard's datagrams of the round (not those held for the disk); a guest's
        // joining this outbox later are not this shard's (their latency is theirs).
        self.sent = self.out.len();
        batch_start
    }

    /// The second part of a round: sends the outbox. Returns when it was sent (None when
    /// there was nothing to send).
    pub fn send_own(&mut self) -> Option<Instant> {
        let (ctx, out) = (&mut self.ctx, &mut self.out);
        if out.is_empty() {
            return None;
        }
        let n = out.len();
        let send_start = Instant::now();
        if let Some(t) = &mut ctx.streams {
            ctx.stats.datagrams_out.add(t.send(out) as u64);
        }
        match ctx.transport.send(out) {
            Ok(sent) => ctx.stats.datagrams_out.add(sent as u64),
            Err(e) => tracing::warn!(shard = ctx.id, "send failed: {e}"),
        }
        let sent_at = Instant::now();
        self.stages
            .record(Stage::Send, rounded_us(sent_at - send_start), n as u64);
        Some(sent_at)
    }

    /// Instead of [`ShardLoop::send_own`] on a shard that runs on another's thread: writes
    /// to its own connections, and moves its datagrams into the host's outbox, to go out in
    /// the host's send call (the sockets of all shards share their addresses, so a datagram
    /// leaves from the same address whichever shard's socket sends it).
    pub fn move_out(&mut self, to: &mut Outbox) {
        let (ctx, out) = (&mut self.ctx, &mut self.out);
        if out.is_empty() {
            return;
        }
        if let Some(t) = &mut ctx.streams {
            ctx.stats.datagrams_out.add(t.send(out) as u64);
        }
        for d in out.items() {
            to.push(out.bytes(d), d.dst, usize::from(d.socket));
        }
        out.clear();
    }

    /// The end of a round whose datagrams left at `sent_at`: latencies, publication.
    /// Returns true when the shard may sleep (its sockets and its queue were drained in
    /// this round).
    pub fn end_round(&mut self, sent_at: Option<Instant>) -> bool {
        let RoundState {
            batch_start,
            local,
            received,
        } = self.round_state;
        let ctx = &self.ctx;
        let mut last_read = batch_start;
        if let Some(sent_at) = sent_at.filter(|_| self.sent > 0) {
            last_read = sent_at;
            if local > 0 {
                // Each datagram answered this round: from its kernel receive timestamp to now.
                let us = sent_at.duration_since(batch_start).as_micros() as u64;
                for &w in self.waits.iter().take(self.sent) {
                    self.hist.record(us + w, 1);
                }
            }
            for t in self.handed.iter().chain(&self.direct) {
                self.hist
                    .record(sent_at.duration_since(*t).as_micros() as u64, 1);
            }
        }
        self.direct.clear();
        // A partial batch means every socket was drained a moment ago, and a hand-off round
        // that was not full means the queue was: go straight to poll (which returns at once if
        // more arrived) instead of another empty receive.
        self.drained = received < crate::transport::BATCH;
        let going_idle = self.drained && self.handed.len() < HANDOFF_ROUND;
        // Publish latencies every MERGE_EVERY or PENDING_MAX samples (not per batch: that
        // would take the lock the metrics endpoint reads under); an idle shard wakes up to
        // publish what it holds (below).
        if (!self.hist.is_empty() || !self.stages.is_empty())
            && (self.hist.samples.len() >= PENDING_MAX
                || self.stages.len() >= PENDING_MAX
                || last_read.saturating_duration_since(self.last_merge) >= MERGE_EVERY)
        {
            self.hist.publish(&ctx.stats.latency);
            self.stages.publish(&ctx.stats);
            self.last_merge = last_read;
        }
        crate::metrics::publish_transport_drops(&ctx.stats, ctx.transport.drops());
        going_idle
    }

    /// Before the thread sleeps: marks the shard asleep (so that other shards wake it) and
    /// returns how long it may sleep (ms), or None when it has work after all (then it is
    /// marked awake again).
    pub fn prepare_sleep(&mut self) -> Option<i32> {
        let ctx = &self.ctx;
        let me = &ctx.peers[ctx.id];
        me.waker.sleeping.store(true, Ordering::SeqCst);
        // Responses held for the disk whose changes are durable now: no sleep.
        let released = ctx
            .journal
            .as_ref()
            .is_some_and(|j| self.parked.front().is_some_and(|(n, _)| *n <= j.durable()));
        let stream_bytes =
            !self.retry.is_empty() || ctx.streams.as_ref().is_some_and(|t| t.has_pending());
        let remote = ctx.remote.as_ref().is_some_and(|r| !r.is_empty());
        if (self.sharded && !me.queue.is_empty())
            || released
            || stream_bytes
            || remote
            || ctx.stop.load(Ordering::Relaxed)
        {
            me.waker.sleeping.store(false, Ordering::SeqCst);
            return None;
        }
        let now = Instant::now();
        let now_ms = ctx.clock.ms_at(now);
        // Records held for a batch are sent when due, asleep or not.
        let cdr_due = ctx.cdr.as_ref().and_then(|c| c.next_send_ms());
        let mut timeout = [ctx.core.next_timeout(), cdr_due]
            .into_iter()
            .flatten()
            .min()
            .map_or(IDLE_MAX_MS, |t| t.saturating_sub(now_ms).min(IDLE_MAX_MS))
            as i32;
        if !self.parked.is_empty() {
            // The writer wakes us when it syncs; this bounds a missed wake-up.
            timeout = timeout.min(5);
        }
        if !self.hist.is_empty() || !self.stages.is_empty() {
            let left = MERGE_EVERY.saturating_sub(now.saturating_duration_since(self.last_merge));
            timeout = timeout.min(left.as_millis() as i32 + 1);
        }
        Some(timeout)
    }

    /// After the thread woke (or decided not to sleep): the shard is awake.
    pub fn awake(&self) {
        self.ctx.peers[self.ctx.id]
            .waker
            .sleeping
            .store(false, Ordering::SeqCst);
    }

    /// Sleeps on this shard's own transport (its sockets, its waker, and whatever it
    /// watches: its connections and the shards it runs for others).
    pub fn wait(&mut self, timeout_ms: i32) {
        if let Err(e) = self.ctx.transport.wait(timeout_ms) {
            tracing::warn!(shard = self.ctx.id, "wait failed: {e}");
        }
    }

    /// After the shard stopped: publishes what it holds and closes its calls' records.
    pub fn finish(mut self) {
        let ctx = &mut self.ctx;
        self.hist.publish(&ctx.stats.latency);
        self.stages.publish(&ctx.stats);
        // Calls in progress get their records before the shard goes.
        if let Some(c) = &mut ctx.cdr {
            ctx.core.close_calls(ctx.clock.now_ms());
            ctx.core.take_records(c.records());
            c.flush();
        }
        tracing::debug!(shard = ctx.id, "shard stopped");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_socket_wait_is_the_time_from_the_kernel_stamp_to_the_round() {
        // Stamped 250 µs before the round started: 250 µs of the latency were in the socket.
        assert_eq!(super::socket_wait_us(Some(1_000_000), 1_250_000), 250);
        // No stamp, or one after the round started (a datagram read later in the round):
        // nothing before the round.
        assert_eq!(super::socket_wait_us(None, 1_250_000), 0);
        assert_eq!(super::socket_wait_us(Some(1_300_000), 1_250_000), 0);
    }

    use super::{OverloadDetector, PeerSet};
    use std::time::{Duration, Instant};

    #[test]
    fn a_whole_interval_without_an_empty_socket_is_overload_until_it_empties() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = OverloadDetector::new(50);
        // Busy from 10 ms on, but not for a whole interval yet.
        assert_eq!(d.round(at(10), true), None);
        assert_eq!(d.round(at(59), true), None);
        assert_eq!(d.round(at(60), true), Some(true));
        assert_eq!(d.round(at(70), true), None);
        // The socket emptied: over at once.
        assert_eq!(d.round(at(80), false), Some(false));
        // An interval with an empty socket in it is not overload, even if busy at its end.
        assert_eq!(d.round(at(100), true), None);
        assert_eq!(d.round(at(149), true), None);
        assert_eq!(d.round(at(150), true), Some(true));
    }

    /// Found at 2,000 calls/s with the server at a quarter of a core: a full batch read
    /// right after the shard slept through an interval's end was taken for an interval
    /// without an empty socket, and INVITEs got 503 (overloaded) for a burst.
    #[test]
    fn a_burst_after_a_sleep_is_not_overload() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = OverloadDetector::new(50);
        assert_eq!(d.round(at(50), false), None);
        // Asleep for 70 ms; then a burst fills a few rounds, and the last one empties it.
        for ms in [120, 121, 122] {
            assert_eq!(d.round(at(ms), true), None, "{ms}");
        }
        assert_eq!(d.round(at(123), false), None);
        // Asleep for 30 ms, then full rounds for 40 ms: 70 ms since the last empty round
        // before the sleep, but 40 ms of saturation.
        for ms in [153, 170, 192] {
            assert_eq!(d.round(at(ms), true), None, "{ms}");
        }
        assert_eq!(d.round(at(203), true), Some(true));
    }

    #[test]
    fn zero_interval_never_refuses() {
        let t0 = Instant::now();
        let mut c = OverloadDetector::new(0);
        for i in 0..100 {
            assert_eq!(c.round(t0 + Duration::from_millis(i * 100), true), None);
        }
    }

    fn members(set: &mut PeerSet) -> Vec<usize> {
        let mut v = Vec::new();
        set.drain(|i| v.push(i));
        v
    }

    #[test]
    fn peer_set_yields_each_member_once_in_order_and_empties() {
        let mut set = PeerSet::new(130);
        assert!(members(&mut set).is_empty());
        for i in [129, 3, 64, 3, 0, 63, 129] {
            set.insert(i);
        }
        assert_eq!(members(&mut set), vec![0, 3, 63, 64, 129]);
        assert!(members(&mut set).is_empty());
        set.insert(7);
        assert_eq!(members(&mut set), vec![7]);
    }
}
