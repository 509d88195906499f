//! What a load run measured: counts (completed, failed by status, retransmissions, timeouts,
//! unexpected messages) and latency histograms per message exchange (hdrhistogram, µs),
//! merged over threads and rendered as a summary or as JSON.

use crate::stats::new_histogram;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

/// The exchanges whose latency is measured, from the first transmission of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    Invite100,
    Invite180,
    Invite200,
    Register200,
    Options200,
    Bye200,
    Cancel200,
}

pub const EXCHANGES: [(Exchange, &str); 7] = [
    (Exchange::Invite100, "invite_100"),
    (Exchange::Invite180, "invite_180"),
    (Exchange::Invite200, "invite_200"),
    (Exchange::Register200, "register_200"),
    (Exchange::Options200, "options_200"),
    (Exchange::Bye200, "bye_200"),
    (Exchange::Cancel200, "cancel_200"),
];

/// One thread's (or the merged) results.
pub struct LoadReport {
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    /// Failed calls by the final status that ended them.
    pub failed_by_status: BTreeMap<u16, u64>,
    pub retransmissions: u64,
    pub timeouts: u64,
    /// Responses and requests that matched no call (late retransmissions, strays).
    pub unexpected: u64,
    pub latency: Vec<Histogram<u64>>,
    /// How late calls were started against the schedule, µs (the generator's own lag).
    pub start_lag: Histogram<u64>,
}

impl Default for LoadReport {
    fn default() -> Self {
        LoadReport {
            started: 0,
            completed: 0,
            failed: 0,
            failed_by_status: BTreeMap::new(),
            retransmissions: 0,
            timeouts: 0,
            unexpected: 0,
            latency: EXCHANGES.iter().map(|_| new_histogram()).collect(),
            start_lag: new_histogram(),
        }
    }
}

impl LoadReport {
    pub fn record(&mut self, e: Exchange, us: u64) {
        let _ = self.latency[e as usize].record(us.max(1));
    }

    pub fn fail(&mut self, status: u16) {
        self.failed += 1;
        *self.failed_by_status.entry(status).or_default() += 1;
    }

    pub fn merge(&mut self, o: &LoadReport) {
        self.started += o.started;
        self.completed += o.completed;
        self.failed += o.failed;
        for (s, n) in &o.failed_by_status {
            *self.failed_by_status.entry(*s).or_default() += n;
        }
        self.retransmissions += o.retransmissions;
        self.timeouts += o.timeouts;
        self.unexpected += o.unexpected;
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            let _ = a.add(b);
        }
        let _ = self.start_lag.add(&o.start_lag);
    }

    /// The summary printed at the end of a run.
    pub fn text(&self, elapsed_s: f64) -> String {
        let mut s = format!(
            "started {}  completed {}  failed {}  retransmissions {}  timeouts {}  unexpected {}\n",
            self.started,
            self.completed,
            self.failed,
            self.retransmissions,
            self.timeouts,
            self.unexpected
        );
        if !self.failed_by_status.is_empty() {
            let by: Vec<String> = self
                .failed_by_status
                .iter()
                .map(|(st, n)| {
                    if *st == 0 {
                        format!("timeout: {n}")
                    } else {
                        format!("{st}: {n}")
                    }
                })
                .collect();
            s.push_str(&format!("failed by status: {}\n", by.join(", ")));
        }
        s.push_str(&format!(
            "elapsed {:.2} s, {:.0} completed/s\n",
            elapsed_s,
            self.completed as f64 / elapsed_s.max(1e-9)
        ));
        s.push_str("latency µs        count      p50      p90      p99    p99.9      max\n");
        for ((_, name), h) in EXCHANGES.iter().zip(&self.latency) {
            if h.is_empty() {
                continue;
            }
            s.push_str(&format!(
                "{:<14} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                name,
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            ));
        }
        s.push_str(&format!(
            "start lag µs: p99 {} max {}\n",
            self.start_lag.value_at_quantile(0.99),
            self.start_lag.max()
        ));
        s
    }

    /// The JSON summary (`--json`).
    pub fn json(&self, scenario: &str, target: &str, elapsed_s: f64) -> String {
        let hist = |h: &Histogram<u64>| {
            format!(
                "{{\"count\": {}, \"mean\": {:.1}, \"p50\": {}, \"p90\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}}}",
                h.len(),
                h.mean(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            )
        };
        let latency: Vec<String> = EXCHANGES
            .iter()
            .zip(&self.latency)
            .filter(|(_, h)| !h.is_empty())
            .map(|((_, name), h)| format!("\"{name}\": {}", hist(h)))
            .collect();
        let by: Vec<String> = self
            .failed_by_status
            .iter()
            .map(|(s, n)| {
                format!(
                    "\"{}\": {n}",
                    if *s == 0 {
                        "timeout".to_string()
                    } else {
                        s.to_string()
                    }
                )
            })
            .collect();
        format!(
            "{{\"scenario\": \"{scenario}\", \"target\": \"{target}\", \"elapsed_s\": {elapsed_s:.3}, \
             \"started\": {}, \"completed\": {}, \"failed\": {}, \"failed_by_status\": {{{}}}, \
             \"retransmissions\": {}, \"timeouts\": {}, \"unexpected\": {}, \
             \"rate_completed\": {:.1}, \"latency\": {{{}}}, \"start_lag_us\": {}}}\n",
            self.started,
            self.completed,
            self.failed,
            by.join(", "),
            self.retransmissions,
            self.timeouts,
            self.unexpected,
            self.completed as f64 / elapsed_s.max(1e-9),
            latency.join(", "),
            hist(&self.start_lag)
        )
    }
}
