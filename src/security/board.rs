//! The bans and account locks every shard obeys: one shard decides (a flood it counted, a
//! scanner it saw, failed logins it checked), every shard drops. Shards keep their own copy
//! of what is on the board and look at its generation once per datagram (one relaxed load of
//! a cache line that is only written when something is banned), so the board's lock is taken
//! only when a ban is published or a shard catches up with one.

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
    bans: Vec<Ban>,
    /// Locked accounts and until when (ms).
    locked_users: Vec<(Box<str>, u64)>,
}

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

    /// Bans `ip` until `until_ms`. False when it was already banned at least that long (then
    /// nothing changes and nothing should be logged again).
    pub fn ban(&self, ip: IpAddr, until_ms: u64, reason: BanReason, now_ms: u64) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        s.bans.retain(|b| b.until_ms > now_ms);
        if let Some(b) = s.bans.iter_mut().find(|b| b.ip == ip) {
            if b.until_ms >= until_ms {
                return false;
            }
            b.until_ms = until_ms;
            b.reason = reason;
        } else {
            s.bans.push(Ban {
                ip,
                until_ms,
                reason,
            });
        }
        self.generation.fetch_add(1, Ordering::Release);
        true
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

    /// The bans in force at `now_ms`.
    pub fn bans(&self, now_ms: u64) -> Vec<Ban> {
        self.state.lock().map_or_else(
            |_| Vec::new(),
            |s| {
                s.bans
                    .iter()
                    .filter(|b| b.until_ms > now_ms)
                    .copied()
                    .collect()
            },
        )
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
    fn locks_expire() {
        let b = Board::default();
        assert!(b.lock_user("alice", 1_000, 0));
        assert!(!b.lock_user("alice", 500, 0));
        assert_eq!(b.locked_users(999).len(), 1);
        assert!(b.locked_users(1_000).is_empty());
    }
}
