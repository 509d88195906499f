//! One shard's event loop: receive a batch, run the core on each datagram, move datagrams
//! owned by other shards to them, drain our own hand-off queue, run timers, send the outbox
//! in one batch, and sleep in `poll` only when there is nothing to do (setting the flag that
//! lets other shards wake us).

use super::{Clock, Handoff, Peer};
use crate::metrics::{DropReason, ShardStats};
use crate::server::outbox::Outbox;
use crate::server::{Core, Disposition};
use crate::transport::{RecvHandler, Transport};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a shard publishes its latency samples to the metrics endpoint.
const MERGE_EVERY: Duration = Duration::from_millis(50);
/// Latency samples kept before publishing regardless of the time.
const PENDING_MAX: usize = 1024;

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
    pub clock: Clock,
}

/// The part of the shard the receive callback needs (the transport is borrowed separately).
struct Handler<'s> {
    core: &'s mut Core,
    out: &'s mut Outbox,
    peers: &'s [Peer],
    stats: &'s ShardStats,
    now_ms: u64,
    batch_start: Instant,
    /// Datagrams handled locally in this round (their latency is measured from batch_start).
    local: u64,
}

impl RecvHandler for Handler<'_> {
    fn datagram(&mut self, data: &[u8], src: SocketAddr, socket: usize) {
        self.stats.datagrams_in.inc();
        match self
            .core
            .handle(data, src, socket, self.now_ms, false, self.out)
        {
            Disposition::Done => self.local += 1,
            Disposition::HandOff(owner) => {
                let peer = &self.peers[owner];
                let h = Handoff {
                    data: data.into(),
                    src,
                    socket: socket as u16,
                    received: self.batch_start,
                };
                if peer.queue.push(h).is_ok() {
                    self.stats.handoffs_out.inc();
                    if peer.waker.wake_if_sleeping() {
                        self.stats.wakeups.inc();
                    }
                } else {
                    // The client retransmits over UDP; counting is what matters.
                    self.stats.dropped(DropReason::QueueFull);
                }
            }
        }
    }
}

/// Runs the shard until the stop flag is set.
pub fn run(mut ctx: ShardContext) {
    let mut out = Outbox::new();
    let mut hist = PendingLatency {
        samples: Vec::with_capacity(PENDING_MAX),
    };
    let mut last_merge = Instant::now();
    let mut handed: Vec<Instant> = Vec::with_capacity(256);
    tracing::debug!(
        shard = ctx.id,
        backend = ctx.transport.name(),
        "shard started"
    );
    let me = &ctx.peers[ctx.id];
    while !ctx.stop.load(Ordering::Relaxed) {
        let batch_start = Instant::now();
        let now_ms = ctx.clock.now_ms();
        let mut handler = Handler {
            core: &mut ctx.core,
            out: &mut out,
            peers: &ctx.peers,
            stats: &ctx.stats,
            now_ms,
            batch_start,
            local: 0,
        };
        let received = match ctx.transport.poll_recv(&mut handler) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(shard = ctx.id, "receive failed: {e}");
                0
            }
        };
        let local = handler.local;
        // Datagrams other shards moved to us.
        handed.clear();
        while handed.len() < 256 {
            let Some(h) = me.queue.pop() else { break };
            ctx.stats.handoffs_in.inc();
            let d = ctx
                .core
                .handle(&h.data, h.src, h.socket as usize, now_ms, true, &mut out);
            debug_assert_eq!(d, Disposition::Done);
            handed.push(h.received);
        }
        if ctx.core.next_timeout().is_some_and(|t| t <= now_ms) {
            ctx.core.handle_timeout(now_ms, &mut out);
        }
        if !out.is_empty() {
            let n = out.len() as u64;
            match ctx.transport.send(&mut out) {
                Ok(sent) => ctx.stats.datagrams_out.add(sent as u64),
                Err(e) => tracing::warn!(shard = ctx.id, "send failed: {e}"),
            }
            let sent_at = Instant::now();
            if local > 0 {
                let us = sent_at.duration_since(batch_start).as_micros() as u64;
                hist.record(us, local.min(n));
            }
            for t in &handed {
                hist.record(sent_at.duration_since(*t).as_micros() as u64, 1);
            }
        }
        let going_idle = received < crate::transport::BATCH && handed.is_empty();
        // Publish latencies every MERGE_EVERY or PENDING_MAX samples (not per batch: that
        // would take the lock the metrics endpoint reads under); an idle shard wakes up to
        // publish what it holds (below).
        if !hist.is_empty()
            && (hist.samples.len() >= PENDING_MAX || last_merge.elapsed() >= MERGE_EVERY)
        {
            hist.publish(&ctx.stats.latency);
            last_merge = Instant::now();
        }
        // A partial batch means every socket was drained a moment ago: go straight to poll
        // (which returns at once if more arrived) instead of another empty receive.
        if going_idle {
            me.waker.sleeping.store(true, Ordering::SeqCst);
            if !me.queue.is_empty() || ctx.stop.load(Ordering::Relaxed) {
                me.waker.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            let now = ctx.clock.now_ms();
            let mut timeout =
                ctx.core
                    .next_timeout()
                    .map_or(200, |t| t.saturating_sub(now).min(200)) as i32;
            if !hist.is_empty() {
                let left = MERGE_EVERY.saturating_sub(last_merge.elapsed());
                timeout = timeout.min(left.as_millis() as i32 + 1);
            }
            if let Err(e) = ctx.transport.wait(timeout) {
                tracing::warn!(shard = ctx.id, "wait failed: {e}");
            }
            me.waker.sleeping.store(false, Ordering::SeqCst);
        }
    }
    hist.publish(&ctx.stats.latency);
    tracing::debug!(shard = ctx.id, "shard stopped");
}
