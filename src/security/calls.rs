//! Toll-fraud call limits (issue 17): how many calls one authenticated user may have at once
//! and may start per minute. A user's calls are proxied by the shards of their callees, so the
//! counts are shared: a small table of counters per user, split into stripes each behind its
//! own lock, touched twice per call (start and end) and only when a limit is configured.
//! Emergency calls are never counted or refused. Each shard remembers which user each call
//! it admitted belongs to (`crate::proxy::calls`) and ends it on its final non-2xx response,
//! its BYE, or after `max_call_ms` without one.

use hashbrown::HashMap;
use std::sync::Mutex;

/// Stripes of the shared table (a power of two).
const STRIPES: usize = 16;

/// The limits (`[security]` keys); 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    pub max_concurrent: u32,
    pub max_per_minute: u32,
    /// A call whose end was never seen stops counting after this long.
    pub max_call_ms: u64,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            max_concurrent: 0,
            max_per_minute: 0,
            max_call_ms: 4 * 3600 * 1000,
        }
    }
}

impl CallLimits {
    pub fn enabled(&self) -> bool {
        self.max_concurrent > 0 || self.max_per_minute > 0
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallRefusal {
    /// The user has `max_concurrent` calls already: 486.
    Concurrent,
    /// The user started `max_per_minute` calls in the last minute: 403.
    Rate,
}

impl CallRefusal {
    /// The status and reason phrase of the refusal.
    pub fn response(self) -> (u16, &'static [u8]) {
        match self {
            CallRefusal::Concurrent => (486, b"Busy Here (too many calls in progress)"),
            CallRefusal::Rate => (403, b"Forbidden (too many calls per minute)"),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct UserCalls {
    active: u32,
    minute_start_ms: u64,
    in_minute: u32,
}

/// The counts of every user, shared by the shards.
#[derive(Default)]
pub struct CallCounts {
    stripes: [Mutex<HashMap<Box<str>, UserCalls>>; STRIPES],
}

fn stripe(user: &str) -> usize {
    // FNV-1a: a few bytes, no hasher state to build.
    let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h as usize) & (STRIPES - 1)
}

impl CallCounts {
    /// Starts a call of `user` at `now_ms` if `limits` allow it.
    pub fn try_start(
        &self,
        user: &str,
        limits: &CallLimits,
        now_ms: u64,
    ) -> Result<(), CallRefusal> {
        let Ok(mut map) = self.stripes[stripe(user)].lock() else {
            return Ok(());
        };
        let c = map.entry_ref(user).or_default();
        if now_ms.saturating_sub(c.minute_start_ms) >= 60_000 {
            c.minute_start_ms = now_ms;
            c.in_minute = 0;
        }
        if limits.max_concurrent > 0 && c.active >= limits.max_concurrent {
            return Err(CallRefusal::Concurrent);
        }
        if limits.max_per_minute > 0 && c.in_minute >= limits.max_per_minute {
            return Err(CallRefusal::Rate);
        }
        c.active += 1;
        c.in_minute += 1;
        Ok(())
    }

    /// A call of `user` ended.
    pub fn end(&self, user: &str, now_ms: u64) {
        let Ok(mut map) = self.stripes[stripe(user)].lock() else {
            return;
        };
        if let Some(c) = map.get_mut(user) {
            c.active = c.active.saturating_sub(1);
            // Nothing left to count: forget the user (the table holds active users only,
            // and those of the current minute).
            if c.active == 0 && now_ms.saturating_sub(c.minute_start_ms) >= 60_000 {
                map.remove(user);
            }
        }
    }

    /// Calls `user` has in progress.
    pub fn active(&self, user: &str) -> u32 {
        self.stripes[stripe(user)]
            .lock()
            .ok()
            .and_then(|m| m.get(user).map(|c| c.active))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_calls_are_limited_and_ending_one_frees_a_place() {
        let limits = CallLimits {
            max_concurrent: 2,
            ..CallLimits::default()
        };
        let c = CallCounts::default();
        assert_eq!(c.try_start("alice", &limits, 0), Ok(()));
        assert_eq!(c.try_start("alice", &limits, 1), Ok(()));
        assert_eq!(
            c.try_start("alice", &limits, 2),
            Err(CallRefusal::Concurrent)
        );
        assert_eq!(c.try_start("bob", &limits, 2), Ok(()), "per user");
        c.end("alice", 3);
        assert_eq!(c.active("alice"), 1);
        assert_eq!(c.try_start("alice", &limits, 4), Ok(()));
    }

    #[test]
    fn calls_per_minute_are_limited_per_minute() {
        let limits = CallLimits {
            max_per_minute: 3,
            ..CallLimits::default()
        };
        let c = CallCounts::default();
        for t in 0..3 {
            assert_eq!(c.try_start("alice", &limits, t), Ok(()));
            c.end("alice", t);
        }
        assert_eq!(c.try_start("alice", &limits, 10), Err(CallRefusal::Rate));
        assert_eq!(
            c.try_start("alice", &limits, 60_000),
            Ok(()),
            "a new minute"
        );
    }
}
