//! A hashed timer wheel (Varghese & Lauck, scheme 6) generic over the payload, for the
//! per-shard timers: registration expiry (RFC 3261 §10.3) now, transaction timers (§17.1.1.2,
//! §17.2) later.
//!
//! Time is a `u64` of milliseconds passed in by the caller. The wheel has `slots` buckets of
//! `tick_ms` each; a timer goes into the bucket of its deadline's tick. Entries keep their
//! absolute deadline, so a deadline beyond the wheel's span simply stays in its bucket for more
//! rounds and fires when a poll reaches it: no rounds counter or overflow list is needed.
//!
//! All entries live in one `Vec` (a slab with a free list) threaded into one doubly linked
//! list per bucket, so insert and cancel are O(1) and allocate nothing once the slab has grown.
//! A bitmap of non-empty buckets and a per-bucket minimum deadline make
//! [`TimerWheel::next_deadline`] cheap, and its answer is cached until the next poll (an
//! insert lowers the cached value; a cancel leaves it, still a lower bound), since the
//! runtime asks on every loop iteration.

use core::cell::Cell;

/// End of a list.
const NIL: u32 = u32::MAX;
/// Flag in `Entry::prev`: the entry is the head of the bucket given by the low bits.
const HEAD: u32 = 1 << 31;

/// Identifies an inserted timer, for [`TimerWheel::cancel`]. A key whose timer has fired or
/// been cancelled is stale and ignored, even after its slot is reused (generation check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

impl TimerKey {
    /// A key that names no timer (a placeholder for "no timer armed").
    pub const DANGLING: TimerKey = TimerKey {
        index: NIL,
        generation: 0,
    };
}

struct Entry<T> {
    deadline_ms: u64,
    /// Next entry in the bucket, or next free entry.
    next: u32,
    /// Previous entry in the bucket, or `HEAD | bucket`.
    prev: u32,
    generation: u32,
    /// `None` while the entry is free.
    payload: Option<T>,
}

/// A hashed timer wheel; see the module documentation.
pub struct TimerWheel<T> {
    tick_ms: u64,
    mask: u64,
    entries: Vec<Entry<T>>,
    free: u32,
    /// First entry of each bucket.
    heads: Box<[u32]>,
    /// A lower bound of the deadlines in each bucket (exact after the bucket was scanned or
    /// only inserted into); `u64::MAX` when empty.
    bucket_min: Box<[u64]>,
    /// One bit per non-empty bucket.
    occupied: Box<[u64]>,
    /// The tick the next poll starts scanning at. Every entry with a deadline tick below it
    /// has fired; entries inserted with a deadline tick below it go into its bucket.
    next_tick: u64,
    len: usize,
    /// Scratch: (deadline, entry) of the timers due in the current poll.
    due: Vec<(u64, u32)>,
    /// The last answer of `next_deadline` (a lower bound of the earliest deadline), or
    /// `UNKNOWN` after a poll.
    next_cache: Cell<u64>,
}

/// `next_cache` holds nothing.
const UNKNOWN: u64 = u64::MAX;

impl<T> TimerWheel<T> {
    /// A wheel of `slots` buckets (rounded up to a power of two) of `tick_ms` milliseconds.
    /// Deadlines are honoured exactly (a timer never fires before its deadline); `tick_ms` only
    /// sets how many timers share a bucket.
    pub fn new(tick_ms: u64, slots: usize) -> Self {
        assert!(tick_ms > 0, "tick_ms must be positive");
        let slots = slots.max(1).next_power_of_two();
        assert!(slots < HEAD as usize, "too many slots");
        TimerWheel {
            tick_ms,
            mask: slots as u64 - 1,
            entries: Vec::new(),
            free: NIL,
            heads: vec![NIL; slots].into_boxed_slice(),
            bucket_min: vec![u64::MAX; slots].into_boxed_slice(),
            occupied: vec![0; slots.div_ceil(64)].into_boxed_slice(),
            next_tick: 0,
            len: 0,
            due: Vec::new(),
            next_cache: Cell::new(UNKNOWN),
        }
    }

    /// Number of pending timers.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the wheel's own tables (entries slab, buckets, bitmap), for memory
    /// accounting.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * core::mem::size_of::<Entry<T>>()
            + self.heads.len() * (4 + 8)
            + self.occupied.len() * 8
            + self.due.capacity() * 16
    }

    /// Schedules `payload` to fire at the first poll with `now_ms >= deadline_ms`. A deadline
    /// in the past fires at the next poll.
    pub fn insert(&mut self, deadline_ms: u64, payload: T) -> TimerKey {
        let tick = (deadline_ms / self.tick_ms).max(self.next_tick);
        let bucket = (tick & self.mask) as usize;
        let head = self.heads[bucket];
        let entry = Entry {
            deadline_ms,
            next: head,
            prev: HEAD | bucket as u32,
            generation: 0,
            payload: Some(payload),
        };
        let index = if self.free != NIL {
            let i = self.free;
            let slot = &mut self.entries[i as usize];
            self.free = slot.next;
            let generation = slot.generation;
            *slot = Entry {
                generation,
                ..entry
            };
            i
        } else {
            assert!(self.entries.len() < NIL as usize, "timer wheel full");
            self.entries.push(entry);
            (self.entries.len() - 1) as u32
        };
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        self.heads[bucket] = index;
        self.occupied[bucket / 64] |= 1 << (bucket % 64);
        let min = &mut self.bucket_min[bucket];
        *min = (*min).min(deadline_ms);
        self.len += 1;
        let cached = self.next_cache.get();
        if cached != UNKNOWN {
            self.next_cache.set(cached.min(deadline_ms));
        }
        TimerKey {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// The deadline of a pending timer.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        let e = self.entries.get(key.index as usize)?;
        (e.generation == key.generation && e.payload.is_some()).then_some(e.deadline_ms)
    }

    /// Cancels a pending timer and returns its payload; `None` if it already fired or was
    /// cancelled.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        self.deadline(key)?;
        self.unlink(key.index);
        self.release(key.index)
    }

    /// Fires, in deadline order, every timer with `deadline <= now_ms`. Returns how many fired.
    /// The callback cannot touch the wheel; collect what it needs and act after the poll.
    pub fn poll(&mut self, now_ms: u64, fire: &mut impl FnMut(T)) -> usize {
        let target = now_ms / self.tick_ms;
        if target < self.next_tick {
            return 0;
        }
        self.next_cache.set(UNKNOWN);
        if self.len == 0 {
            self.next_tick = target;
            return 0;
        }
        let slots = self.heads.len() as u64;
        let count = (target - self.next_tick + 1).min(slots);
        for k in 0..count {
            let bucket = ((self.next_tick + k) & self.mask) as usize;
            if self.occupied[bucket / 64] & (1 << (bucket % 64)) != 0 {
                self.scan_bucket(bucket, now_ms);
            }
        }
        // The target tick may still hold later deadlines: it is scanned again next time.
        self.next_tick = target;
        let mut due = core::mem::take(&mut self.due);
        due.sort_unstable();
        for &(_, index) in &due {
            if let Some(payload) = self.release(index) {
                fire(payload);
            }
        }
        let fired = due.len();
        due.clear();
        self.due = due;
        fired
    }

    /// A lower bound of the earliest pending deadline, never later than it: exact unless a
    /// cancelled timer was the earliest of its bucket (then a poll at the returned time fires
    /// nothing and the next call is exact for that bucket). Scans the occupancy bitmap from
    /// the current tick and stops as soon as later buckets cannot hold anything earlier.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let cached = self.next_cache.get();
        if cached != UNKNOWN {
            return Some(cached);
        }
        let best = self.scan_next_deadline();
        if let Some(b) = best {
            self.next_cache.set(b);
        }
        best
    }

    fn scan_next_deadline(&self) -> Option<u64> {
        let slots = self.heads.len();
        let mut best = u64::MAX;
        let mut i = 0usize;
        while i < slots {
            let start = ((self.next_tick + i as u64) & self.mask) as usize;
            let Some(d) = self.occupied_distance(start) else {
                break;
            };
            i += d;
            if i >= slots {
                break;
            }
            // Every entry of a bucket after the first has a deadline tick >= its tick here.
            let tick = self.next_tick + i as u64;
            if i > 0 && tick.saturating_mul(self.tick_ms) >= best {
                break;
            }
            let bucket = (tick & self.mask) as usize;
            best = best.min(self.bucket_min[bucket]);
            i += 1;
        }
        (best != u64::MAX).then_some(best)
    }

    /// The distance from bucket `start` (circularly) to the first non-empty bucket.
    fn occupied_distance(&self, start: usize) -> Option<usize> {
        let n = self.heads.len();
        let mut pos = start;
        let mut d = 0;
        while d < n {
            let bit = pos % 64;
            let bits = self.occupied[pos / 64] >> bit;
            if bits != 0 {
                let found = d + bits.trailing_zeros() as usize;
                return (found < n).then_some(found);
            }
            let step = (64 - bit).min(n - pos);
            d += step;
            pos += step;
            if pos >= n {
                pos = 0;
            }
        }
        None
    }

    /// Moves the entries of `bucket` that are due into `self.due` and recomputes its minimum.
    fn scan_bucket(&mut self, bucket: usize, now_ms: u64) {
        let mut min = u64::MAX;
        let mut i = self.heads[bucket];
        while i != NIL {
            let e = &self.entries[i as usize];
            let next = e.next;
            if e.deadline_ms <= now_ms {
                self.due.push((e.deadline_ms, i));
                self.unlink(i);
            } else {
                min = min.min(e.deadline_ms);
            }
            i = next;
        }
        if self.heads[bucket] != NIL {
            self.bucket_min[bucket] = min;
        }
    }

    fn unlink(&mut self, index: u32) {
        let (prev, next) = {
            let e = &self.entries[index as usize];
            (e.prev, e.next)
        };
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if prev & HEAD != 0 {
            let bucket = (prev & !HEAD) as usize;
            self.heads[bucket] = next;
            if next == NIL {
                self.occupied[bucket / 64] &= !(1 << (bucket % 64));
                self.bucket_min[bucket] = u64::MAX;
            }
        } else {
            self.entries[prev as usize].next = next;
        }
    }

    /// Frees an unlinked entry and returns its payload.
    fn release(&mut self, index: u32) -> Option<T> {
        let e = &mut self.entries[index as usize];
        let payload = e.payload.take()?;
        e.generation = e.generation.wrapping_add(1);
        e.next = self.free;
        self.free = index;
        self.len -= 1;
        Some(payload)
    }
}

impl<T> core::fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TimerWheel")
            .field("tick_ms", &self.tick_ms)
            .field("slots", &self.heads.len())
            .field("len", &self.len)
            .field("next_tick", &self.next_tick)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<T>(w: &mut TimerWheel<T>, now: u64) -> Vec<T> {
        let mut out = Vec::new();
        w.poll(now, &mut |t| out.push(t));
        out
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = TimerWheel::new(10, 16);
        w.insert(1_005, 'a');
        assert_eq!(w.next_deadline(), Some(1_005));
        assert!(drain(&mut w, 1_004).is_empty());
        assert_eq!(drain(&mut w, 1_005), vec!['a']);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn same_tick_later_deadline_waits_for_its_time() {
        let mut w = TimerWheel::new(100, 8);
        w.insert(1_010, 1);
        w.insert(1_090, 2);
        assert_eq!(drain(&mut w, 1_050), vec![1]);
        // The partly scanned bucket reports its remaining minimum.
        assert_eq!(w.next_deadline(), Some(1_090));
        assert!(drain(&mut w, 1_089).is_empty());
        assert_eq!(drain(&mut w, 1_090), vec![2]);
    }

    #[test]
    fn fires_in_deadline_order_across_a_jump() {
        let mut w = TimerWheel::new(10, 8);
        for (d, v) in [(500, 5), (120, 2), (3_000, 9), (119, 1), (490, 4), (130, 3)] {
            w.insert(d, v);
        }
        assert_eq!(drain(&mut w, 10_000), vec![1, 2, 3, 4, 5, 9]);
    }

    #[test]
    fn long_deadlines_beyond_the_span() {
        // Span is 8 buckets x 10 ms = 80 ms; deadlines are many rounds away.
        let mut w = TimerWheel::new(10, 8);
        w.insert(10_000, "far");
        w.insert(1_000_000, "farther");
        w.insert(45, "near");
        let mut fired = Vec::new();
        let mut now = 0;
        while now < 1_000_000 {
            now += 7;
            w.poll(now, &mut |t| fired.push((now, t)));
        }
        assert_eq!(
            fired,
            vec![(49, "near"), (10_003, "far"), (1_000_006, "farther")]
        );
    }

    #[test]
    fn past_deadline_fires_on_next_poll() {
        let mut w = TimerWheel::new(10, 8);
        assert!(drain(&mut w, 5_000).is_empty());
        w.insert(100, 'p');
        assert_eq!(w.next_deadline(), Some(100));
        assert_eq!(drain(&mut w, 5_000), vec!['p']);
    }

    #[test]
    fn cancel_removes_and_stale_keys_are_ignored() {
        let mut w = TimerWheel::new(10, 8);
        let a = w.insert(100, 'a');
        let b = w.insert(100, 'b');
        let c = w.insert(100, 'c');
        assert_eq!(w.cancel(b), Some('b'));
        assert_eq!(w.cancel(b), None);
        assert_eq!(w.len(), 2);
        assert_eq!(w.deadline(a), Some(100));
        assert_eq!(w.cancel(a), Some('a'));
        // The freed slot is reused; the old key must not cancel the new timer.
        let d = w.insert(200, 'd');
        assert_eq!(w.cancel(a), None);
        assert_eq!(w.deadline(d), Some(200));
        assert_eq!(drain(&mut w, 1_000), vec!['c', 'd']);
        assert_eq!(w.cancel(c), None);
        assert_eq!(w.cancel(TimerKey::DANGLING), None);
        assert!(w.is_empty());
    }

    #[test]
    fn many_timers_in_one_bucket() {
        // 8 buckets: deadlines 0, 80, 160, ... all land in bucket 0, across many rounds.
        let mut w = TimerWheel::new(10, 8);
        let keys: Vec<_> = (0..1_000u64).map(|i| w.insert(i * 80, i)).collect();
        for k in keys.iter().skip(1).step_by(2) {
            w.cancel(*k);
        }
        assert_eq!(w.len(), 500);
        let mut fired = Vec::new();
        for now in (0..80_000).step_by(40) {
            w.poll(now, &mut |i| fired.push((now, i)));
        }
        let expect: Vec<_> = (0..1_000u64).step_by(2).map(|i| (i * 80, i)).collect();
        assert_eq!(fired, expect);
    }

    #[test]
    fn next_deadline_after_cancel_of_minimum_is_a_lower_bound() {
        let mut w = TimerWheel::new(10, 8);
        let a = w.insert(103, 'a');
        w.insert(107, 'b');
        w.cancel(a);
        let nd = w.next_deadline().unwrap();
        assert!(nd <= 107);
        assert!(drain(&mut w, nd).is_empty() || nd == 107);
        assert_eq!(w.next_deadline(), Some(107));
    }

    #[test]
    fn matches_a_reference_model() {
        // Pseudo-random inserts, cancels and polls, checked against a plain list.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut w = TimerWheel::new(10, 16);
        let mut model: Vec<(u64, u32, TimerKey)> = Vec::new();
        let mut now = 1_000u64;
        for id in 0..20_000u32 {
            match rnd(10) {
                0..=5 => {
                    let range = if rnd(4) == 0 { 5_000 } else { 200 };
                    let d = now + rnd(range);
                    let k = w.insert(d, id);
                    model.push((d, id, k));
                    // The cached answer must drop with an earlier insert.
                    if rnd(2) == 0 {
                        let m = model.iter().map(|m| m.0).min().unwrap();
                        assert!(w.next_deadline().unwrap() <= m);
                    }
                }
                6 if !model.is_empty() => {
                    let at = rnd(model.len() as u64) as usize;
                    let (_, v, k) = model.swap_remove(at);
                    assert_eq!(w.cancel(k), Some(v));
                }
                _ => {
                    now += rnd(60);
                    let true_min = model.iter().map(|m| m.0).min();
                    let nd = w.next_deadline();
                    assert_eq!(nd.is_some(), true_min.is_some());
                    if let (Some(nd), Some(m)) = (nd, true_min) {
                        assert!(nd <= m, "next_deadline {nd} later than {m}");
                    }
                    let mut fired = Vec::new();
                    w.poll(now, &mut |v| fired.push(v));
                    let mut due: Vec<_> = model.iter().filter(|m| m.0 <= now).copied().collect();
                    due.sort_by_key(|m| (m.0, m.2.index));
                    model.retain(|m| m.0 > now);
                    let due_ids: Vec<_> = due.iter().map(|m| m.1).collect();
                    assert_eq!(fired, due_ids);
                    assert_eq!(w.len(), model.len());
                }
            }
        }
    }
}
