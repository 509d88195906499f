//! What a load run does (`sipshard load SCENARIO TARGET [options]`): the scenario, the
//! open-loop schedule (a fixed rate or ramp steps), when it stops, and what the requests
//! carry (AOR and password patterns, call hold time, timeouts).

use std::net::SocketAddr;

/// The message flow of one "call" of a load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// OPTIONS -> 200.
    Options,
    /// REGISTER -> 200 (a 401 is answered when a password is given).
    Register,
    /// REGISTER -> 401 -> REGISTER with credentials (MD5 or SHA-256) -> 200.
    RegisterDigest,
    /// INVITE -> (100) (180) 200 -> ACK -> pause -> BYE -> 200 (401/407 answered with a
    /// password).
    Call,
    /// INVITE -> 180 -> CANCEL -> 200 + 487 -> ACK.
    CallCancel,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        Some(match s {
            "options" => Scenario::Options,
            "register" => Scenario::Register,
            "register-digest" => Scenario::RegisterDigest,
            "call" => Scenario::Call,
            "call-cancel" => Scenario::CallCancel,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Options => "options",
            Scenario::Register => "register",
            Scenario::RegisterDigest => "register-digest",
            Scenario::Call => "call",
            Scenario::CallCancel => "call-cancel",
        }
    }
}

/// One step of the schedule: `rate` new calls per second for `duration_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub rate: f64,
    pub duration_ms: u64,
}

/// A whole load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub scenario: Scenario,
    pub target: SocketAddr,
    /// The schedule; the run stops starting calls after the last step or `total` calls.
    pub steps: Vec<Step>,
    pub total: Option<u64>,
    /// The host part of the Request-URI, To and From (default: the target's IP, and its port
    /// unless 5060).
    pub domain: String,
    /// The user called (Request-URI and To of INVITE and OPTIONS).
    pub callee: String,
    /// The AOR user of call `n` (`{n}`, `{n:04}` replaced by n modulo `aors`).
    pub user_pattern: String,
    /// The password of call `n` (same placeholders); None: challenges are not answered.
    pub password_pattern: Option<String>,
    /// Distinct AORs (register) or callers (call): n cycles over 0..aors.
    pub aors: u64,
    /// Time between the ACK and the BYE of a call.
    pub pause_ms: u64,
    /// A transaction that gets no final response within this time has timed out (RFC 3261
    /// Timer B/F are 64*T1 = 32 s).
    pub timeout_ms: u64,
    /// Expires of REGISTER.
    pub expires: u32,
    /// Sockets (source ports) per thread: the target's SO_REUSEPORT hash spreads them.
    pub sockets: usize,
    pub threads: usize,
    /// µs between a thread's wake-ups.
    pub tick_us: u64,
}

impl LoadSpec {
    /// A spec with the defaults for `scenario` against `target` at `rate`.
    pub fn new(scenario: Scenario, target: SocketAddr, rate: f64) -> LoadSpec {
        LoadSpec {
            scenario,
            target,
            steps: vec![Step {
                rate,
                duration_ms: u64::MAX,
            }],
            total: None,
            // As SIPp's [remote_ip]:[remote_port]: the port too unless it is 5060 (a
            // server's `myself` check compares it).
            domain: match (target.ip(), target.port()) {
                (ip, 5060) => ip.to_string(),
                (std::net::IpAddr::V6(ip), port) => format!("[{ip}]:{port}"),
                (ip, port) => format!("{ip}:{port}"),
            },
            callee: "service".into(),
            user_pattern: "user{n:04}".into(),
            password_pattern: None,
            aors: 1000,
            pause_ms: 0,
            timeout_ms: 32_000,
            expires: 3600,
            sockets: 8,
            threads: 1,
            tick_us: 1000,
        }
    }

    /// When (µs from the start) the `k`-th call of the run is due, or None once the
    /// schedule is over. Thread `t` of `threads` starts calls t, t + threads, ...
    pub fn due_us(&self, k: u64) -> Option<u64> {
        if self.total.is_some_and(|t| k >= t) {
            return None;
        }
        let mut start_us = 0f64;
        let mut before = 0f64; // calls scheduled in earlier steps
        for s in &self.steps {
            let in_step = s.rate * s.duration_ms as f64 / 1000.0;
            if (k as f64) < before + in_step || s.duration_ms == u64::MAX {
                let offset = (k as f64 - before) / s.rate * 1e6;
                return Some((start_us + offset) as u64);
            }
            before += in_step;
            start_us += s.duration_ms as f64 * 1000.0;
        }
        None
    }

    /// The schedule's end in µs (None: open-ended, `total` stops it).
    pub fn duration_us(&self) -> Option<u64> {
        self.steps.iter().try_fold(0u64, |a, s| {
            (s.duration_ms != u64::MAX).then(|| a + s.duration_ms * 1000)
        })
    }
}

/// `pattern` with `{n}` or `{n:0W}` replaced by `n`.
pub fn expand(pattern: &str, n: u64) -> String {
    let Some(open) = pattern.find("{n") else {
        return pattern.to_string();
    };
    let Some(close) = pattern[open..].find('}').map(|c| open + c) else {
        return pattern.to_string();
    };
    let spec = &pattern[open + 2..close];
    let width: usize = spec
        .strip_prefix(":0")
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    format!(
        "{}{:0width$}{}",
        &pattern[..open],
        n,
        &pattern[close + 1..],
        width = width
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(expand("user{n:04}", 7), "user0007");
        assert_eq!(expand("u{n}x", 12), "u12x");
        assert_eq!(expand("alice", 3), "alice");
    }

    #[test]
    fn the_schedule_is_open_loop_over_steps() {
        let mut s = LoadSpec::new(Scenario::Options, "127.0.0.1:5060".parse().unwrap(), 100.0);
        assert_eq!(s.due_us(0), Some(0));
        assert_eq!(s.due_us(1), Some(10_000));
        assert_eq!(s.due_us(250), Some(2_500_000));
        s.total = Some(10);
        assert_eq!(s.due_us(10), None);
        s.total = None;
        // Ramp: 10/s for 1 s, then 100/s for 1 s.
        s.steps = vec![
            Step {
                rate: 10.0,
                duration_ms: 1000,
            },
            Step {
                rate: 100.0,
                duration_ms: 1000,
            },
        ];
        assert_eq!(s.due_us(9), Some(900_000));
        assert_eq!(s.due_us(10), Some(1_000_000));
        assert_eq!(s.due_us(11), Some(1_010_000));
        assert_eq!(s.due_us(109), Some(1_990_000));
        assert_eq!(s.due_us(110), None);
        assert_eq!(s.duration_us(), Some(2_000_000));
    }
}
