//! The bans and account locks every shard obeys: one shard decides (a flood it counted, a
//! scanner it saw, failed logins it checked), every shard drops. Shards keep their own copy
//! of what is on the board and look at its generation once per datagram (one relaxed load of
//! a cache line that is only written when something is banned), so the board's lock is taken
//! only when a ban is published or a shard catches up with one.

use hashbrown::HashMap;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why an address was banned (the `reason=` of the log line and of `sipshard ctl bans`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    /// More requests than the flood limit allows in one window.
    Flood,
    /// A request from a known scanner (its User-Agent).
    Scanner,
    /// Too many failed digest authentications.
    BruteForce,
}

impl BanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::Flood => "flood",
            BanReason::Scanner => "scanner",
            BanReason::BruteForce => "brute-force",
        }
    }
}

/// A banned address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    pub ip: IpAddr,
    /// Banned until this time (ms on the shards' clock).
    pub until_ms: u64,
    pub reason: BanReason,
}

#[derive(Default)]
struct State {
    /// Every ban published, in order; `log[0]` has the sequence number `base`. Shards copy
    /// the entries they have not seen (not the whole list), so a storm of bans costs each
    /// shard one copy per ban.
    log: VecDeque<Ban>,
    base: u64,
    /// Until when each address is banned (deduplicates bans).
    banned: HashMap<IpAddr, u64>,
    /// Locked accounts and until when.
    locked_users: Vec<(Box<str>, u64)>,
}

/// Bans held at most (a flood from spoofed addresses must not grow memory without bound);
/// past it a shard still drops the address itself, without telling the others.
pub const MAX_BANS: usize = 65_536;

/// The shared board. See the module documentation.
#[derive(Default)]
pub struct Board {
    generation: AtomicU64,
    state: Mutex<State>,
    /// The calls of each user, for the toll-fraud limits (`super::calls`).
    pub calls: std::sync::Arc<super::calls::CallCounts>,
}

impl Board {
    /// Changes each time something is published: a shard whose copy is older syncs.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Bans `ip` until `until_ms`. False when it was already banned at least that long, or
    /// the board is full (then nothing changes and nothing should be logged again).
    pub fn ban(&self, ip: IpAddr, until_ms: u64, reason: BanReason, now_ms: u64) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if s.banned.get(&ip).is_some_and(|&u| u >= until_ms) {
            return false;
        }
        // Expired bans leave the front of the log (and the index) as it grows.
        if s.banned.len() >= MAX_BANS || s.log.len() >= 2 * MAX_BANS {
            s.banned.retain(|_, u| *u > now_ms);
            while s.log.front().is_some_and(|b| b.until_ms <= now_ms) {
                s.log.pop_front();
                s.base += 1;
            }
            if s.banned.len() >= MAX_BANS || s.log.len() >= 2 * MAX_BANS {
                return false;
            }
        }
        s.banned.insert(ip, until_ms);
        s.log.push_back(Ban {
            ip,
            until_ms,
            reason,
        });
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// The bans published since sequence number `seen` (0: all still in the log), and the
    /// sequence number to pass next time.
    pub fn bans_since(&self, seen: u64) -> (Vec<Ban>, u64) {
        let Ok(s) = self.state.lock() else {
            return (Vec::new(), seen);
        };
        let end = s.base + s.log.len() as u64;
        let from = seen.max(s.base);
        let bans = s
            .log
            .iter()
            .skip((from - s.base) as usize)
            .copied()
            .collect();
        (bans, end)
    }

    /// Locks the account `user` until `until_ms`. False when it was already locked that long.
    pub fn lock_user(&self, user: &str, until_ms: u64, now_ms: u64) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        s.locked_users.retain(|(_, u)| *u > now_ms);
        if let Some((_, u)) = s.locked_users.iter_mut().find(|(n, _)| &**n == user) {
            if *u >= until_ms {
                return false;
            }
            *u = until_ms;
        } else {
            s.locked_users.push((user.into(), until_ms));
        }
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// The bans in force at `now_ms` (the latest of each address).
    pub fn bans(&self, now_ms: u64) -> Vec<Ban> {
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        s.log
            .iter()
            .filter(|b| b.until_ms > now_ms && s.banned.get(&b.ip) == Some(&b.until_ms))
            .copied()
            .collect()
    }

    /// The accounts locked at `now_ms`, with until when.
    pub fn locked_users(&self, now_ms: u64) -> Vec<(Box<str>, u64)> {
        self.state.lock().map_or_else(
            |_| Vec::new(),
            |s| {
                s.locked_users
                    .iter()
                    .filter(|(_, u)| *u > now_ms)
                    .cloned()
                    .collect()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_is_published_once_and_extended_only_when_longer() {
        let b = Board::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let g0 = b.generation();
        assert!(b.ban(ip, 5_000, BanReason::Flood, 0));
        assert_ne!(b.generation(), g0);
        let g1 = b.generation();
        assert!(!b.ban(ip, 4_000, BanReason::Flood, 0));
        assert_eq!(b.generation(), g1);
        assert!(b.ban(ip, 9_000, BanReason::Scanner, 0));
        assert_eq!(
            b.bans(100),
            vec![Ban {
                ip,
                until_ms: 9_000,
                reason: BanReason::Scanner
            }]
        );
        assert!(b.bans(9_000).is_empty(), "expired");
    }

    #[test]
    fn shards_copy_only_the_bans_they_have_not_seen() {
        let b = Board::default();
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        b.ban(ip(1), 1_000, BanReason::Flood, 0);
        b.ban(ip(2), 1_000, BanReason::Flood, 0);
        let (all, seen) = b.bans_since(0);
        assert_eq!(all.len(), 2);
        b.ban(ip(3), 1_000, BanReason::Scanner, 0);
        let (new, seen2) = b.bans_since(seen);
        assert_eq!(new.iter().map(|b| b.ip).collect::<Vec<_>>(), [ip(3)]);
        assert_eq!(b.bans_since(seen2).0.len(), 0);
    }

    #[test]
    fn the_board_is_bounded() {
        let b = Board::default();
        for i in 0..(MAX_BANS as u32 + 10) {
            b.ban(IpAddr::from(i.to_be_bytes()), 1_000, BanReason::Flood, 0);
        }
        assert_eq!(b.bans(0).len(), MAX_BANS);
        // Once they expire, room again.
        assert!(b.ban(
            IpAddr::from([203, 0, 113, 1]),
            5_000,
            BanReason::Flood,
            2_000
        ));
        assert_eq!(b.bans(2_000).len(), 1);
    }

    #[test]
    fn locks_expire() {
        let b = Board::default();
        assert!(b.lock_user("alice", 1_000, 0));
        assert!(!b.lock_user("alice", 500, 0));
        assert_eq!(b.locked_users(999).len(), 1);
        assert!(b.locked_users(1_000).is_empty());
    }
}
