//! The brute-force lockout (issue 17; RFC 3261 §22.4 leaves the policy to the server):
//! failed digest authentications ([`super::Failure`]) are counted per source address and per
//! account within a window. An address past its limit is banned (silence, on every shard,
//! through [`crate::security::board::Board`]); an account past its much higher limit is locked
//! (403, even with the right password) so that a distributed attack cannot go on guessing.
//! The address limit is the low one: an attacker locks itself out long before it locks the
//! real user, who goes on registering from its own address. Exempt addresses
//! (`security.exempt`) are never banned; their failures still count for the account.
//!
//! Counting is per shard: a user's REGISTERs all reach the shard owning its AOR, so that is
//! exact for registration; a user's calls are authenticated on the shards of their callees.

use crate::security::board::{BanReason, Board};
use crate::security::{LockoutLimit, SecuritySettings};
use hashbrown::HashMap;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// Failures counted in one window.
#[derive(Debug, Clone, Copy)]
struct Count {
    window_start_ms: u64,
    failures: u32,
}

impl Count {
    /// Counts one failure at `now_ms`; the count in the current window.
    fn add(&mut self, now_ms: u64, window_ms: u64) -> u32 {
        if now_ms.saturating_sub(self.window_start_ms) >= window_ms {
            self.window_start_ms = now_ms;
            self.failures = 0;
        }
        self.failures += 1;
        self.failures
    }
}

/// One shard's lockout state. See the module documentation.
pub struct Lockout {
    limit: LockoutLimit,
    exempt: Vec<IpNet>,
    board: Arc<Board>,
    /// The board generation `locked` reflects.
    seen: u64,
    sources: HashMap<IpAddr, Count>,
    users: HashMap<Box<[u8]>, Count>,
    /// Locked accounts (the board's, copied) and until when.
    locked: HashMap<Box<[u8]>, u64>,
    /// Entries kept per table (failures are rare; this bounds a spray of made-up names).
    max_entries: usize,
}

impl Lockout {
    /// None when the settings have no lockout.
    pub fn new(settings: &SecuritySettings, board: Arc<Board>) -> Option<Lockout> {
        Some(Lockout {
            limit: settings.lockout?,
            exempt: settings.exempt.clone(),
            board,
            seen: u64::MAX,
            sources: HashMap::new(),
            users: HashMap::new(),
            locked: HashMap::new(),
            max_entries: settings.max_sources,
        })
    }

    /// Takes new limits (a reload); counts and locks stay.
    pub fn reload(&mut self, settings: &SecuritySettings) -> bool {
        match settings.lockout {
            Some(l) => {
                self.limit = l;
                self.exempt = settings.exempt.clone();
                self.max_entries = settings.max_sources;
                true
            }
            None => false,
        }
    }

    fn sync(&mut self, now_ms: u64) {
        let g = self.board.generation();
        if g != self.seen {
            self.seen = g;
            self.locked = self
                .board
                .locked_users(now_ms)
                .into_iter()
                .map(|(u, until)| (Box::<[u8]>::from(u.as_bytes()), until))
                .collect();
        }
    }

    /// True while the account `user` (as sent in `username`) is locked.
    pub fn is_locked(&mut self, user: &[u8], now_ms: u64) -> bool {
        self.sync(now_ms);
        !self.locked.is_empty() && self.locked.get(user).is_some_and(|&until| until > now_ms)
    }

    /// Counts a failed authentication from `src` for the known account `user` (None: no such
    /// user, only the address counts). Bans the address or locks the account at its limit.
    pub fn failed(&mut self, src: IpAddr, user: Option<&[u8]>, now_ms: u64) {
        let l = self.limit;
        let src = src.to_canonical();
        if l.source_failures > 0 && !crate::security::contains(&self.exempt, src) {
            bound(&mut self.sources, self.max_entries, now_ms, l.window_ms);
            let n = self
                .sources
                .entry(src)
                .or_insert(Count {
                    window_start_ms: now_ms,
                    failures: 0,
                })
                .add(now_ms, l.window_ms);
            if n >= l.source_failures {
                let until = now_ms + l.lock_ms;
                if self.board.ban(src, until, BanReason::BruteForce, now_ms) {
                    crate::security::log_ban(src, BanReason::BruteForce, l.lock_ms);
                }
            }
        }
        if let (Some(user), true) = (user, l.user_failures > 0) {
            bound(&mut self.users, self.max_entries, now_ms, l.window_ms);
            let n = match self.users.get_mut(user) {
                Some(c) => c.add(now_ms, l.window_ms),
                None => {
                    self.users.insert(
                        user.into(),
                        Count {
                            window_start_ms: now_ms,
                            failures: 1,
                        },
                    );
                    1
                }
            };
            if n >= l.user_failures {
                let name = String::from_utf8_lossy(user);
                if self.board.lock_user(&name, now_ms + l.lock_ms, now_ms) {
                    tracing::warn!(
                        "lock user={} reason=brute-force seconds={}",
                        crate::auth::failure::Escaped(user),
                        l.lock_ms.div_ceil(1000)
                    );
                }
                self.sync(now_ms);
            }
        }
    }
}

/// Keeps `map` below `max` entries: drops those whose window is over, and when that is not
/// enough, all of them (a spray of made-up names must not grow memory).
fn bound<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Count>, max: usize, now: u64, win: u64) {
    if map.len() >= max {
        map.retain(|_, c| now.saturating_sub(c.window_start_ms) < win);
        if map.len() >= max {
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockout(source: u32, user: u32) -> (Lockout, Arc<Board>) {
        let s = SecuritySettings {
            lockout: Some(LockoutLimit {
                source_failures: source,
                user_failures: user,
                window_ms: 60_000,
                lock_ms: 600_000,
            }),
            ..SecuritySettings::default()
        };
        let board: Arc<Board> = Arc::default();
        (Lockout::new(&s, board.clone()).unwrap(), board)
    }

    #[test]
    fn the_address_is_banned_at_its_limit_and_the_account_much_later() {
        let (mut l, board) = lockout(3, 10);
        let attacker: IpAddr = "127.0.0.3".parse().unwrap();
        l.failed(attacker, Some(b"alice"), 0);
        l.failed(attacker, Some(b"alice"), 1);
        assert!(board.bans(2).is_empty());
        l.failed(attacker, Some(b"alice"), 2);
        let bans = board.bans(3);
        assert_eq!(bans.len(), 1);
        assert_eq!(
            (bans[0].ip, bans[0].reason),
            (attacker, BanReason::BruteForce)
        );
        assert_eq!(bans[0].until_ms, 600_002);
        assert!(
            !l.is_locked(b"alice", 3),
            "the account is not locked by 3 failures"
        );
    }

    #[test]
    fn a_distributed_attack_locks_the_account_until_the_lock_expires() {
        let (mut l, board) = lockout(100, 5);
        for i in 0..5u8 {
            let src = IpAddr::from([198, 51, 100, i]);
            assert!(!l.is_locked(b"alice", 10));
            l.failed(src, Some(b"alice"), 10);
        }
        assert!(l.is_locked(b"alice", 11));
        assert!(!l.is_locked(b"bob", 11));
        assert_eq!(board.locked_users(11).len(), 1);
        // Another shard learns it from the board.
        let mut other = Lockout::new(
            &SecuritySettings {
                lockout: Some(l.limit),
                ..SecuritySettings::default()
            },
            board,
        )
        .unwrap();
        assert!(other.is_locked(b"alice", 12));
        assert!(!l.is_locked(b"alice", 600_010), "expired");
    }

    #[test]
    fn exempt_addresses_are_not_banned_but_count_for_the_account() {
        let (mut l, board) = lockout(2, 3);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        for t in 0..3 {
            l.failed(local, Some(b"alice"), t);
        }
        assert!(board.bans(5).is_empty());
        assert!(l.is_locked(b"alice", 5));
    }

    #[test]
    fn unknown_users_count_for_the_address_only_and_windows_start_over() {
        let (mut l, board) = lockout(3, 3);
        let src: IpAddr = "192.0.2.8".parse().unwrap();
        l.failed(src, None, 0);
        l.failed(src, None, 1);
        // The window (60 s) is over: the count starts again.
        l.failed(src, None, 70_000);
        l.failed(src, None, 70_001);
        assert!(board.bans(70_002).is_empty());
        assert!(board.locked_users(70_002).is_empty());
        l.failed(src, None, 70_002);
        assert_eq!(board.bans(70_003).len(), 1);
    }

    #[test]
    fn tables_stay_bounded() {
        let (mut l, _) = lockout(1_000, 1_000);
        l.max_entries = 50;
        for i in 0..10_000u32 {
            l.failed(IpAddr::from(i.to_be_bytes()), Some(&i.to_be_bytes()), 5);
        }
        assert!(l.sources.len() <= 50 && l.users.len() <= 50);
    }
}
