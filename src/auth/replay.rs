//! Nonce-count replay protection (RFC 7616 §3.4 and §5.5; RFC 3261 §22.4): per shard, the
//! highest `nc` accepted for each nonce. A request whose `nc` is not greater than the highest
//! seen is a replay.
//!
//! The table is bounded. Entries whose nonce has expired are pruned (they would be stale
//! anyway). If the table is still full, the entries with the oldest nonces are dropped and a
//! floor remembers the newest issue time dropped: a nonce at or below the floor that is not in
//! the table can no longer be checked for replay and is reported as
//! [`NcVerdict::Forgotten`], which the authenticator answers with a fresh (stale) challenge.
//! Replay safety is thus never traded for memory.

use hashbrown::HashMap;

use super::nonce::NonceId;

/// Default bound on the number of nonces tracked per shard.
pub const DEFAULT_MAX_TRACKED: usize = 65_536;

/// What the table says about an `nc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NcVerdict {
    /// Greater than any seen for this nonce; now recorded.
    Accepted,
    /// Not greater than the highest seen: a replay.
    Replay,
    /// The nonce's entry was dropped to bound the table; it cannot be used any more.
    Forgotten,
}

/// The highest nc per nonce.
#[derive(Debug, Clone)]
pub struct NcTable {
    seen: HashMap<NonceId, u32>,
    max: usize,
    /// Nonces issued at or before this second that are not in the table were dropped.
    floor_s: Option<u64>,
}

impl NcTable {
    /// A table holding at most `max` nonces (at least 1).
    pub fn new(max: usize) -> NcTable {
        NcTable {
            seen: HashMap::new(),
            max: max.max(1),
            floor_s: None,
        }
    }

    /// Number of nonces tracked.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True if no nonce is tracked.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records `nc` for a nonce whose response was verified, if it is greater than any seen.
    pub fn record(&mut self, id: NonceId, nc: u32, now_ms: u64, ttl_s: u32) -> NcVerdict {
        if let Some(highest) = self.seen.get_mut(&id) {
            if nc <= *highest {
                return NcVerdict::Replay;
            }
            *highest = nc;
            return NcVerdict::Accepted;
        }
        if self.floor_s.is_some_and(|f| id.issued_s <= f) {
            return NcVerdict::Forgotten;
        }
        if nc == 0 {
            // nc starts at 1 (RFC 7616 §3.4); 0 is never greater than "nothing seen".
            return NcVerdict::Replay;
        }
        if self.seen.len() >= self.max {
            self.prune(now_ms, ttl_s);
        }
        if self.seen.len() >= self.max {
            self.drop_oldest();
            if self.floor_s.is_some_and(|f| id.issued_s <= f) {
                return NcVerdict::Forgotten;
            }
        }
        self.seen.insert(id, nc);
        NcVerdict::Accepted
    }

    /// Removes the entries of nonces older than the TTL at `now_ms`.
    pub fn prune(&mut self, now_ms: u64, ttl_s: u32) {
        let now_s = now_ms / 1000;
        self.seen
            .retain(|id, _| now_s.saturating_sub(id.issued_s) <= u64::from(ttl_s));
    }

    /// Drops at least a quarter of the entries, those with the oldest nonces, and raises the
    /// floor to the newest issue time dropped.
    fn drop_oldest(&mut self) {
        let mut times: Vec<u64> = self.seen.keys().map(|id| id.issued_s).collect();
        let k = (times.len() / 4).min(times.len().saturating_sub(1));
        let (_, cutoff, _) = times.select_nth_unstable(k);
        let cutoff = *cutoff;
        self.seen.retain(|id, _| id.issued_s > cutoff);
        self.floor_s = Some(self.floor_s.map_or(cutoff, |f| f.max(cutoff)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn id(issued_s: u64, salt: u64) -> NonceId {
        NonceId { issued_s, salt }
    }

    #[test]
    fn increasing_nc_accepted_replays_refused() {
        let mut t = NcTable::new(10);
        let n = id(T0 / 1000, 1);
        assert_eq!(t.record(n, 1, T0, 300), NcVerdict::Accepted);
        assert_eq!(t.record(n, 1, T0, 300), NcVerdict::Replay);
        assert_eq!(t.record(n, 3, T0, 300), NcVerdict::Accepted);
        assert_eq!(t.record(n, 2, T0, 300), NcVerdict::Replay);
        assert_eq!(t.record(n, 4, T0, 300), NcVerdict::Accepted);
        assert_eq!(t.record(id(T0 / 1000, 2), 1, T0, 300), NcVerdict::Accepted);
        assert_eq!(t.record(id(T0 / 1000, 3), 0, T0, 300), NcVerdict::Replay);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn prune_removes_expired() {
        let mut t = NcTable::new(10);
        t.record(id(T0 / 1000, 1), 1, T0, 300);
        t.record(id(T0 / 1000 + 100, 2), 1, T0 + 100_000, 300);
        t.prune(T0 + 301_000, 300);
        assert_eq!(t.len(), 1);
        t.prune(T0 + 401_000, 300);
        assert!(t.is_empty());
    }

    #[test]
    fn full_table_prunes_expired_first() {
        let mut t = NcTable::new(2);
        t.record(id(T0 / 1000, 1), 1, T0, 300);
        t.record(id(T0 / 1000 + 200, 2), 1, T0, 300);
        let late = T0 + 400_000;
        assert_eq!(
            t.record(id(late / 1000, 3), 1, late, 300),
            NcVerdict::Accepted
        );
        assert_eq!(t.len(), 2);
        // Nothing was forgotten: the dropped entry had expired.
        assert_eq!(
            t.record(id(T0 / 1000 + 200, 2), 1, late, 300),
            NcVerdict::Replay
        );
    }

    #[test]
    fn full_table_forgets_oldest_without_allowing_replay() {
        let mut t = NcTable::new(4);
        let s0 = T0 / 1000;
        for i in 0..4 {
            assert_eq!(t.record(id(s0 + i, i), 1, T0, 300), NcVerdict::Accepted);
        }
        assert_eq!(t.record(id(s0 + 10, 9), 1, T0, 300), NcVerdict::Accepted);
        assert!(t.len() <= 4);
        // The oldest nonce was dropped: a replay of it is not accepted.
        assert_eq!(t.record(id(s0, 0), 1, T0, 300), NcVerdict::Forgotten);
        assert_eq!(t.record(id(s0, 0), 2, T0, 300), NcVerdict::Forgotten);
        // Newer ones are still tracked.
        assert_eq!(t.record(id(s0 + 3, 3), 1, T0, 300), NcVerdict::Replay);
    }
}
