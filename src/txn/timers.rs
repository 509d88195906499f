//! Transaction timers (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2, Table 4 of Appendix
//! A) with Timers L and M of RFC 6026 §8.7 and §8.4.
//!
//! A transaction has at most one timer of each role armed at a time: a retransmission timer
//! (A, E or G), a transaction timeout (B, F or H) and a wait timer (D, I, J, K, L or M).
//! [`TimerSlots`] is quinn-proto's `TimerTable` idea sized to that: one deadline per role,
//! 24 bytes. The table's wheel may fire a timer that was disarmed or re-armed since (lazy
//! cancellation); [`TimerSlots::take_due`] only reports a timer that is armed and due.

/// The base timer values. Defaults are the RFC 3261 §17.1.1.1 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnConfig {
    /// T1, the RTT estimate: 500 ms.
    pub t1_ms: u64,
    /// T2, the longest retransmit interval for non-INVITE requests and INVITE responses: 4 s.
    pub t2_ms: u64,
    /// T4, the longest time a message stays in the network: 5 s.
    pub t4_ms: u64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
        }
    }
}

/// Timer D for unreliable transports: "at least 32 seconds" (§17.1.1.2).
pub const TIMER_D_UNRELIABLE_MS: u64 = 32_000;

impl TxnConfig {
    /// 64*T1: Timers B, F, H, L and M.
    #[inline]
    pub fn t1x64(&self) -> u64 {
        64 * self.t1_ms
    }

    /// The duration of a timer armed afresh (for A, E and G: the first interval). Wait
    /// timers that are zero on reliable transports return 0 there.
    pub fn duration(&self, timer: Timer, reliable: bool) -> u64 {
        use Timer::*;
        match timer {
            A | E | G => {
                if reliable {
                    0
                } else {
                    self.t1_ms
                }
            }
            B | F | H | J | L | M => {
                if reliable && timer == J {
                    0
                } else {
                    self.t1x64()
                }
            }
            D => {
                if reliable {
                    0
                } else {
                    TIMER_D_UNRELIABLE_MS.max(self.t1x64())
                }
            }
            I | K => {
                if reliable {
                    0
                } else {
                    self.t4_ms
                }
            }
        }
    }
}

/// The transaction timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// INVITE request retransmit (client, Calling): T1, doubling; not on reliable transports.
    A,
    /// INVITE transaction timeout (client, Calling): 64*T1.
    B,
    /// Wait time for response retransmits (client INVITE, Completed): >32 s UDP, 0 reliable.
    D,
    /// Non-INVITE request retransmit (client): T1 doubling up to T2 (T2 in Proceeding); UDP only.
    E,
    /// Non-INVITE transaction timeout (client): 64*T1.
    F,
    /// INVITE response retransmit (server, Completed): T1 doubling up to T2; UDP only.
    G,
    /// Wait time for ACK receipt (server INVITE, Completed): 64*T1.
    H,
    /// Wait time for ACK retransmits (server INVITE, Confirmed): T4 UDP, 0 reliable.
    I,
    /// Wait time for non-INVITE request retransmits (server, Completed): 64*T1 UDP, 0 reliable.
    J,
    /// Wait time for response retransmits (client non-INVITE, Completed): T4 UDP, 0 reliable.
    K,
    /// Wait time for accepted INVITE request retransmits (server, Accepted; RFC 6026): 64*T1.
    L,
    /// Wait time for retransmitted 2xx responses (client INVITE, Accepted; RFC 6026): 64*T1.
    M,
}

impl Timer {
    /// The role slot of the timer in [`TimerSlots`].
    #[inline]
    pub fn slot(self) -> usize {
        use Timer::*;
        match self {
            A | E | G => 0,
            B | F | H => 1,
            D | I | J | K | L | M => 2,
        }
    }
}

const UNARMED: u64 = u64::MAX;

/// One deadline per timer role; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerSlots {
    at: [u64; 3],
}

impl Default for TimerSlots {
    fn default() -> Self {
        TimerSlots { at: [UNARMED; 3] }
    }
}

impl TimerSlots {
    #[inline]
    pub fn set(&mut self, timer: Timer, at_ms: u64) {
        self.at[timer.slot()] = at_ms;
    }

    #[inline]
    pub fn clear(&mut self, timer: Timer) {
        self.at[timer.slot()] = UNARMED;
    }

    /// The deadline of the timer's role, if armed.
    #[inline]
    pub fn get(&self, timer: Timer) -> Option<u64> {
        let at = self.at[timer.slot()];
        (at != UNARMED).then_some(at)
    }

    /// If the timer's role is armed with a deadline at or before `now_ms`, disarms it and
    /// returns true; otherwise (a stale firing) returns false.
    #[inline]
    pub fn take_due(&mut self, timer: Timer, now_ms: u64) -> bool {
        let slot = &mut self.at[timer.slot()];
        if *slot != UNARMED && *slot <= now_ms {
            *slot = UNARMED;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_values() {
        let c = TxnConfig::default();
        assert_eq!(c.duration(Timer::A, false), 500);
        assert_eq!(c.duration(Timer::A, true), 0);
        assert_eq!(c.duration(Timer::B, false), 32_000);
        assert_eq!(c.duration(Timer::B, true), 32_000);
        assert_eq!(c.duration(Timer::D, false), 32_000);
        assert_eq!(c.duration(Timer::D, true), 0);
        assert_eq!(c.duration(Timer::H, true), 32_000);
        assert_eq!(c.duration(Timer::I, false), 5000);
        assert_eq!(c.duration(Timer::I, true), 0);
        assert_eq!(c.duration(Timer::J, false), 32_000);
        assert_eq!(c.duration(Timer::J, true), 0);
        assert_eq!(c.duration(Timer::K, false), 5000);
        assert_eq!(c.duration(Timer::K, true), 0);
        assert_eq!(c.duration(Timer::L, true), 32_000);
        assert_eq!(c.duration(Timer::M, false), 32_000);
    }

    #[test]
    fn slots_ignore_stale_firings() {
        let mut s = TimerSlots::default();
        s.set(Timer::G, 1000);
        assert!(!s.take_due(Timer::G, 999));
        s.set(Timer::G, 2000); // re-armed later: the firing at 1000 is stale
        assert!(!s.take_due(Timer::G, 1000));
        assert!(s.take_due(Timer::G, 2000));
        assert!(!s.take_due(Timer::G, 2000));
        s.set(Timer::H, 5);
        s.clear(Timer::H);
        assert!(!s.take_due(Timer::H, 10));
    }
}
