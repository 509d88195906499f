//! Consolidation: at low load the shards run on one thread, and spread out again when it gets
//! busy.
//!
//! Every shard owns its sockets, tables and queues, whichever thread runs it. A thread that
//! sleeps and is woken for every burst of datagrams pays for the wake-up, and on a VM a
//! wake-up on a vCPU that went idle costs ~25 µs of CPU, more than a REGISTER
//! (perf/results/2026-12-07-wake-cost.md): with two shards each asleep half the time, every
//! burst woke two threads instead of one and a second shard cost 1.4-1.5x the CPU per
//! REGISTER of one. So while the shard threads together use less than `consolidate_below`
//! percent of one core, shard `i > 0` hands its whole [`ShardLoop`] to shard 0's thread (the
//! host) and parks; the host runs every shard it holds in turn and sleeps on all their epoll
//! sets at once (each guest's set is watched by the host's). When the host's thread uses more
//! than `spread_above` percent of a core it gives the last shard it took back to that
//! shard's own thread. Nothing is locked on the way: a shard moves as a value through a
//! channel, and it is never run by two threads at once.
//!
//! Loads are thread CPU time (`CLOCK_THREAD_CPUTIME_ID`, which includes what the hypervisor
//! charges for waking up) over windows of at least [`WINDOW`], read once per window.

use super::runtime::ShardLoop;
use super::Peer;
use crate::transport::steering::SteeringProgram;
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest time over which a thread's load is measured.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Windows in a row a lender must see a low combined load before it moves (and after it
/// came back).
pub const QUIET_WINDOWS: u32 = 3;

/// When shards move, in per mille of one core (from the config's percentages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// A shard moves to the host while its thread and the host's together use less.
    pub below: u32,
    /// The host gives a shard back while its thread uses more.
    pub above: u32,
}

impl Thresholds {
    /// From percentages of one core (the config's `consolidate_below` and `spread_above`).
    pub fn from_percent(below: u32, above: u32) -> Thresholds {
        Thresholds {
            below: below * 10,
            above: above * 10,
        }
    }
}

/// A lender's decision, one window at a time.
#[derive(Debug, Default)]
pub struct LenderPolicy {
    quiet: u32,
}

impl LenderPolicy {
    /// At the end of a window with this thread's and the host's loads (‰): true when the
    /// shard should move to the host now.
    pub fn window(&mut self, own: u32, host: u32, t: Thresholds) -> bool {
        if own.saturating_add(host) < t.below {
            self.quiet += 1;
        } else {
            self.quiet = 0;
        }
        self.quiet >= QUIET_WINDOWS
    }

    /// The shard came back: it waits for quiet windows again before the next move.
    pub fn came_back(&mut self) {
        self.quiet = 0;
    }
}

/// The host's decision at the end of a window: give a shard back.
pub fn host_returns(load: u32, guests: usize, t: Thresholds) -> bool {
    guests > 0 && load > t.above
}

/// The host's decision at the end of a window: take one more shard in the next.
pub fn host_accepts(load: u32, guests: usize, max_guests: usize, t: Thresholds) -> bool {
    guests < max_guests && load < t.below
}

/// What the shard threads share to move shards between them.
pub struct Consolidation {
    thresholds: Thresholds,
    /// Each thread's load over its last window (‰ of one core).
    loads: Vec<AtomicU32>,
    /// Set by the host when it takes one more shard; a lender clears it when it moves, so
    /// that one shard moves per host window.
    accepting: AtomicBool,
    to_host: (Sender<ShardLoop>, Receiver<ShardLoop>),
    /// Per shard: where the host sends it back (only shard `i`'s thread receives on it).
    back: Vec<(Sender<ShardLoop>, Receiver<ShardLoop>)>,
    peers: Arc<Vec<Peer>>,
    /// The kernel steering program, when loaded: while every shard runs on the host it
    /// sends every datagram to shard 0's socket.
    steering: Option<Arc<SteeringProgram>>,
    /// What the steering program was last told (only the host changes it).
    all_to_first: AtomicBool,
    /// False once the host stops taking shards (set under the lock a lender sends under).
    open: std::sync::Mutex<bool>,
}

impl Consolidation {
    pub fn new(
        thresholds: Thresholds,
        peers: Arc<Vec<Peer>>,
        steering: Option<Arc<SteeringProgram>>,
    ) -> Consolidation {
        let n = peers.len();
        Consolidation {
            steering,
            all_to_first: AtomicBool::new(false),
            open: std::sync::Mutex::new(true),
            thresholds,
            loads: (0..n).map(|_| AtomicU32::new(0)).collect(),
            accepting: AtomicBool::new(false),
            to_host: crossbeam_channel::unbounded(),
            back: (0..n).map(|_| crossbeam_channel::bounded(1)).collect(),
            peers,
        }
    }
}

impl Consolidation {
    /// Has the kernel send every datagram to shard 0's socket (`on`), or each to its owner's.
    fn all_to_first(&self, on: bool) {
        let Some(p) = &self.steering else { return };
        if self.all_to_first.load(Ordering::Relaxed) == on {
            return;
        }
        // Remembered only when the kernel took it: a failed switch is tried again next time.
        match p.set_all_to_first(on) {
            Ok(()) => self.all_to_first.store(on, Ordering::Relaxed),
            Err(e) => tracing::warn!("kernel steering: cannot switch consolidation to {on}: {e}"),
        }
    }
}

/// CPU time of the calling thread (ns).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One thread's load over windows of at least [`WINDOW`].
struct LoadWindow {
    start: Instant,
    cpu_ns: u64,
}

impl LoadWindow {
    fn new() -> LoadWindow {
        LoadWindow {
            start: Instant::now(),
            cpu_ns: thread_cpu_ns(),
        }
    }

    /// At a round that started at `now`: the load of the window that ended (‰ of one
    /// core), or None while it lasts.
    fn tick(&mut self, now: Instant) -> Option<u32> {
        let wall = now.saturating_duration_since(self.start);
        if wall < WINDOW {
            return None;
        }
        let cpu = thread_cpu_ns();
        let load = cpu.saturating_sub(self.cpu_ns) * 1000 / (wall.as_nanos() as u64).max(1);
        self.start = now;
        self.cpu_ns = cpu;
        Some(load.min(u64::from(u32::MAX)) as u32)
    }
}

/// Runs shard `own` on this thread until the server stops: alone, or with consolidation
/// (`plan`) as a lender (shard `i > 0`) or as the host (shard 0).
pub fn run(own: ShardLoop, plan: Option<Arc<Consolidation>>) {
    match plan {
        None => run_alone(own),
        Some(plan) if own.id() == 0 => run_host(own, &plan),
        Some(plan) => run_lender(own, &plan),
    }
}

/// One shard, one thread, no moves.
fn run_alone(mut s: ShardLoop) {
    while !s.ctx.stop.load(Ordering::Relaxed) {
        s.step();
    }
    s.finish();
}

/// A shard that moves to the host's thread when both are quiet, and parks its own thread
/// until the host gives it back.
fn run_lender(mut s: ShardLoop, plan: &Consolidation) {
    let id = s.id();
    let mut window = LoadWindow::new();
    let mut policy = LenderPolicy::default();
    while !s.ctx.stop.load(Ordering::Relaxed) {
        let start = s.step();
        let Some(load) = window.tick(start) else {
            continue;
        };
        plan.loads[id].store(load, Ordering::Relaxed);
        let host = plan.loads[0].load(Ordering::Relaxed);
        if !policy.window(load, host, plan.thresholds)
            || plan
                .accepting
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        let stats = s.ctx.stats.clone();
        {
            // The host closes this before it stops and takes what was sent before: a shard
            // sent here is always taken and given back.
            let Ok(open) = plan.open.lock() else { break };
            if !*open || s.ctx.stop.load(Ordering::Relaxed) {
                continue;
            }
            tracing::debug!(shard = id, load, host, "shard moves to shard 0's thread");
            // `hosted` is set by the host once the shard has had a round there.
            stats.moves.inc();
            plan.loads[id].store(0, Ordering::Relaxed);
            if plan.to_host.0.send(s).is_err() {
                return;
            }
        }
        plan.peers[0].waker.wake();
        // Parked until the host gives the shard back (it does at the latest when the server
        // stops; a host thread that panicked takes the shard and this thread with it).
        let Ok(back) = plan.back[id].1.recv() else {
            return;
        };
        s = back;
        stats.hosted.set(0);
        stats.moves.inc();
        tracing::debug!(shard = id, "shard back on its own thread");
        policy.came_back();
        window = LoadWindow::new();
    }
    s.finish();
}

/// Shard 0's thread: its own shard and the shards lent to it, in turn.
fn run_host(own: ShardLoop, plan: &Consolidation) {
    let max_guests = plan.peers.len() - 1;
    let mut shards = vec![own];
    let mut window = LoadWindow::new();
    let stop = shards[0].ctx.stop.clone();
    while !stop.load(Ordering::Relaxed) {
        let mut joined = false;
        while let Ok(guest) = plan.to_host.1.try_recv() {
            let watched = guest
                .ctx
                .transport
                .wait_fd()
                .map(|fd| shards[0].ctx.transport.watch_shard(fd, guest.id() as u32));
            match watched {
                Some(Ok(())) => {
                    let mut guest = guest;
                    guest.moved();
                    shards.push(guest);
                    joined = true;
                    if shards.len() == plan.peers.len() {
                        plan.all_to_first(true);
                    }
                }
                // Never seen (a lender's backend always has one, checked at start): the
                // guest goes back rather than sleep unwatched.
                other => {
                    tracing::warn!(shard = guest.id(), ?other, "cannot watch a moved shard");
                    give_back(plan, &mut shards[0], guest);
                }
            }
        }
        // Every shard's receive and handling first, then one send call for all of them.
        // A message read for a shard whose turn comes later is dispatched to its core at once
        // when it may take it (no queue, parsed once); its answers wait in its own outbox.
        let start = {
            let (host, guests) = shards.split_at_mut(1);
            host[0].handle_with(guests)
        };
        for i in 1..shards.len() {
            let (before, rest) = shards.split_at_mut(i);
            let (guest, after) = rest.split_at_mut(1);
            guest[0].handle_with(after);
            guest[0].move_out(before[0].outbox());
        }
        let sent_at = shards[0].send_own();
        let mut idle = true;
        for s in shards.iter_mut() {
            idle &= s.end_round(sent_at);
        }
        if joined {
            // A guest counts as consolidated once the kernel steers its datagrams to shard
            // 0's socket and it has had its first round here (what its socket held from
            // before is read): from then on what shard 0 reads for it goes to its core.
            for g in &shards[1..] {
                g.ctx.stats.hosted.set(1);
            }
        }
        if idle {
            let mut timeout = Some(i32::MAX);
            for s in shards.iter_mut() {
                match s.prepare_sleep() {
                    Some(t) => timeout = timeout.map(|m| m.min(t)),
                    None => {
                        timeout = None;
                        break;
                    }
                }
            }
            if plan.to_host.1.is_empty() {
                if let Some(t) = timeout {
                    shards[0].wait(t);
                    // What woke us may be a guest's: a guest whose set is ready asks it
                    // which of its sockets are (and drains its waker: one epoll_wait, no
                    // sleep); the others read no socket in the next round.
                    let (host, guests) = shards.split_at_mut(1);
                    let ready = host[0].ctx.transport.watched_ready();
                    for g in guests.iter_mut() {
                        if ready.contains(&(g.id() as u32)) {
                            g.wait(0);
                        } else {
                            g.ctx.transport.nothing_ready();
                        }
                    }
                }
            }
            for s in shards.iter() {
                s.awake();
            }
        }
        let Some(load) = window.tick(start) else {
            continue;
        };
        plan.loads[0].store(load, Ordering::Relaxed);
        let guests = shards.len() - 1;
        if host_returns(load, guests, plan.thresholds) {
            if let Some(guest) = shards.pop() {
                tracing::debug!(
                    shard = guest.id(),
                    load,
                    "shard 0's thread gives a shard back"
                );
                give_back(plan, &mut shards[0], guest);
            }
        }
        let accepts = host_accepts(load, shards.len() - 1, max_guests, plan.thresholds);
        plan.accepting.store(accepts, Ordering::Release);
    }
    plan.accepting.store(false, Ordering::Release);
    // No lender sends its shard after this (it checks under the same lock).
    if let Ok(mut open) = plan.open.lock() {
        *open = false;
    }
    // The guests stop on their own threads (which are parked waiting for them).
    while shards.len() > 1 {
        if let Some(guest) = shards.pop() {
            give_back(plan, &mut shards[0], guest);
        }
    }
    // A lender that moved while we were stopping.
    while let Ok(guest) = plan.to_host.1.try_recv() {
        let id = guest.id();
        let _ = plan.back[id].0.send(guest);
    }
    if let Some(own) = shards.pop() {
        own.finish();
    }
}

/// Sends a guest back to its own thread, no longer watched by the host (and the kernel
/// steers its datagrams to its own socket again first).
fn give_back(plan: &Consolidation, host: &mut ShardLoop, guest: ShardLoop) {
    plan.all_to_first(false);
    if let Some(fd) = guest.ctx.transport.wait_fd() {
        let _ = host.ctx.transport.unwatch_shard(fd);
    }
    let id = guest.id();
    let _ = plan.back[id].0.send(guest);
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        below: 500,
        above: 750,
    };

    #[test]
    fn a_lender_moves_after_quiet_windows_in_a_row_only() {
        let mut p = LenderPolicy::default();
        // Together under the threshold: quiet, but not yet for long enough.
        assert!(!p.window(100, 200, T));
        assert!(!p.window(100, 200, T));
        // A busy window starts the count again.
        assert!(!p.window(300, 200, T));
        assert!(!p.window(100, 200, T));
        assert!(!p.window(100, 200, T));
        assert!(p.window(100, 200, T));
        // Back on its own thread: the count starts again.
        p.came_back();
        assert!(!p.window(0, 0, T));
        assert!(!p.window(0, 0, T));
        assert!(p.window(0, 0, T));
    }

    #[test]
    fn the_host_gives_back_above_and_takes_below_with_a_gap_between() {
        assert!(!host_returns(900, 0, T), "nothing to give back");
        assert!(host_returns(751, 1, T));
        assert!(!host_returns(750, 1, T));
        // Between the two thresholds the host neither takes nor gives: no flapping.
        assert!(!host_accepts(600, 0, 1, T));
        assert!(!host_returns(600, 1, T));
        assert!(host_accepts(499, 0, 1, T));
        assert!(
            !host_accepts(100, 1, 1, T),
            "every other shard is here already"
        );
        assert!(host_accepts(100, 1, 3, T));
    }

    #[test]
    fn thresholds_come_from_percentages_of_a_core() {
        assert_eq!(Thresholds::from_percent(50, 75), T);
    }

    #[test]
    fn a_window_measures_the_threads_cpu_over_the_wall_time() {
        let mut w = LoadWindow::new();
        assert_eq!(w.tick(w.start), None, "a window lasts at least WINDOW");
        // Busy for a whole window: most of a core (other tests' threads may take some).
        let end = Instant::now() + WINDOW;
        let mut x = 0u64;
        while Instant::now() < end {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let busy = w.tick(Instant::now()).expect("a window ended");
        assert!(busy > 100, "busy loop measured as {busy}‰");
        // Asleep for a whole window: close to nothing.
        std::thread::sleep(WINDOW);
        let idle = w.tick(Instant::now()).expect("a window ended");
        assert!(idle < 50, "sleep measured as {idle}‰");
    }
}
