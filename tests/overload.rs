//! Overload (issue 17): three times the measured capacity for 30 s, then normal service. On a
//! 2-core machine the generator cannot offer three times what a whole CPU of sipshard does,
//! so the server runs in a cgroup (v1 `cpu` controller) limited to a fifth of a CPU: its
//! capacity drops to what the generator can triple. Needs root and a writable
//! /sys/fs/cgroup/cpu; without them each test prints a SKIPPED line, and
//! SIPSHARD_REQUIRE_CGROUP=1 (CI sets it) makes that a failure.
//!
//! The figures (capacity, goodput, 503s, RSS) are printed for the record; the assertions are
//! the bounds the overload control keeps (README, Performance).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A cgroup with a CPU quota, removed when dropped (after the processes in it ended).
struct CpuQuota {
    dir: PathBuf,
}

impl CpuQuota {
    /// `percent` of one CPU, in 10 ms periods. None when cgroups cannot be written here.
    fn new(name: &str, percent: u32) -> Option<CpuQuota> {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/cpu/sipshard-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let q = CpuQuota { dir };
        std::fs::write(q.dir.join("cpu.cfs_period_us"), "10000").ok()?;
        std::fs::write(q.dir.join("cpu.cfs_quota_us"), (percent * 100).to_string()).ok()?;
        Some(q)
    }

    /// Moves every thread of process `pid` into the cgroup.
    fn add(&self, pid: u32) {
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let tid = t.unwrap().file_name();
            std::fs::write(self.dir.join("tasks"), tid.to_str().unwrap()).unwrap();
        }
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The two floods need the machine to themselves (each measures a capacity, then offers
/// three times it; a generator of the other test running meanwhile takes the CPU both need).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn quota_available(test: &str, name: &str) -> Option<CpuQuota> {
    let q = CpuQuota::new(name, 20);
    if q.is_none() {
        skip_or_fail(
            test,
            "no writable /sys/fs/cgroup/cpu (needs root and the cgroup v1 cpu controller)",
            "SIPSHARD_REQUIRE_CGROUP",
        );
    }
    q
}

struct Run {
    completed: f64,
    failed: f64,
    retransmissions: f64,
    timeouts: f64,
}

/// `sipshard load SCENARIO` against `target` at `rate` for `seconds`.
fn load(scenario: &str, target: &str, rate: u32, seconds: u32, extra: &[&str]) -> Run {
    let out = Command::new(binary())
        .args(["load", scenario, target, "--rate", &rate.to_string()])
        .args(["--duration", &seconds.to_string(), "--timeout-ms", "8000"])
        .args(["--sockets", "16", "--json", "--quiet"])
        .args(extra)
        .output()
        .expect("run sipshard load");
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    Run {
        completed: field(&json, "completed"),
        failed: field(&json, "failed"),
        retransmissions: field(&json, "retransmissions"),
        timeouts: field(&json, "timeouts"),
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The highest of `rates` (tried in order, 3 s each) completed without a failure or a
/// retransmission: the capacity, as a rate of new calls or registrations per second.
fn capacity(scenario: &str, target: &str, rates: &[u32], extra: &[&str]) -> u32 {
    let mut best = 0;
    for &rate in rates {
        let r = load(scenario, target, rate, 3, extra);
        eprintln!(
            "{scenario} at {rate}/s: completed {} failed {} retransmissions {}",
            r.completed, r.failed, r.retransmissions
        );
        if r.failed > 0.0 || r.retransmissions > 0.0 {
            break;
        }
        best = rate;
    }
    assert!(best > 0, "{scenario}: not even {} per second", rates[0]);
    best
}

/// The flood: three times `capacity` for 30 s. Returns the run and the RSS growth (kB).
fn flood(scenario: &str, s: &ServerProcess, capacity: u32, extra: &[&str]) -> (Run, u64) {
    let pid = s.child.id();
    let before = rss_kb(pid);
    let r = load(scenario, &s.addr.to_string(), 3 * capacity, 30, extra);
    let after = rss_kb(pid);
    let refused = s
        .metric("sipshard_responses_sent_total{status=\"503\"}")
        .unwrap_or(0.0);
    eprintln!(
        "{scenario} flood at {}/s for 30 s (capacity {capacity}/s): completed {} ({:.0}/s, \
         {:.0}% of capacity), failed {}, 503 sent {refused}, retransmissions {}, timeouts {}, \
         RSS {before} -> {after} kB",
        3 * capacity,
        r.completed,
        r.completed / 30.0,
        r.completed / 30.0 / capacity as f64 * 100.0,
        r.failed,
        r.retransmissions,
        r.timeouts
    );
    (r, after.saturating_sub(before))
}

#[test]
fn registrations_at_three_times_capacity_keep_nine_tenths_of_it() {
    let test = "registrations_at_three_times_capacity_keep_nine_tenths_of_it";
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(quota) = quota_available(test, "reg") else {
        return;
    };
    let s = ServerProcess::start_with(&["--shards", "1"], true);
    quota.add(s.child.id());
    let target = s.addr.to_string();
    let c = capacity("register", &target, &[10_000, 15_000, 20_000, 25_000], &[]);
    let (r, rss_growth) = flood("register", &s, c, &[]);
    // The kernel drops what the socket cannot hold; what is read is answered in time.
    assert!(
        r.completed / 30.0 >= 0.9 * c as f64,
        "goodput {} of capacity {c}",
        r.completed / 30.0
    );
    assert!(rss_growth < 64 * 1024, "RSS grew {rss_growth} kB");
    // Normal service a second after the flood.
    std::thread::sleep(Duration::from_secs(1));
    let after = load("register", &target, 1_000, 2, &[]);
    assert_eq!((after.failed, after.completed), (0.0, 2_000.0));
}

#[test]
fn calls_at_three_times_capacity_get_503_and_the_admitted_ones_complete() {
    let test = "calls_at_three_times_capacity_get_503_and_the_admitted_ones_complete";
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(quota) = quota_available(test, "call") else {
        return;
    };
    // The callee: a responder reached through a trunk route (outside the quota).
    let responder = ServerProcess::start(&["--shards", "1", "--mode", "responder"]);
    let plan = write_scratch(
        "plan.toml",
        &format!(
            "[[trunk]]\nname = \"far\"\naddress = \"{}\"\ncheck_interval_ms = 0\n\n\
             [[route]]\nprefix = \"+49\"\ntrunks = [\"far\"]\n",
            responder.addr
        ),
    );
    let s = ServerProcess::start_with(&["--shards", "1", "--config", &plan], true);
    quota.add(s.child.id());
    let target = s.addr.to_string();
    let call = ["--domain", "localhost", "--callee", "+4930123456"];
    // From 500/s: in CI the first probe at 1,500/s once saturated the fifth of a CPU (1,498
    // of 4,500 calls refused) and later one at 1,000/s did (15 of 3,000 refused) where other
    // runs measured 3,000-3,500/s: this VM's speed varies about twofold between runs. The
    // assertions below are relative to whatever capacity is measured.
    let c = capacity(
        "call",
        &target,
        &[500, 750, 1_000, 1_500, 2_000, 2_500, 3_000, 3_500],
        &call,
    );
    let (r, rss_growth) = flood("call", &s, c, &call);
    let refused = s
        .metric("sipshard_responses_sent_total{status=\"503\"}")
        .unwrap();
    // Every call got an answer: admitted and completed, or refused with 503 (counted as
    // failed by the generator), none left to time out or retransmitted into a collapse.
    assert!(refused > 0.0);
    assert_eq!(r.timeouts, 0.0, "timeouts");
    assert!(
        r.completed / 30.0 >= 0.8 * c as f64,
        "goodput {} of capacity {c}",
        r.completed / 30.0
    );
    // Memory follows what was admitted, not what was offered: an admitted call keeps its
    // four transactions in their RFC 3261/6026 wait states (Timers J, K, L, M) for up to
    // 32 s, about 2 KB (measured 2.0 and 2.25 KB per call at 4,575 and 3,585 calls/s), so
    // all 30 s of admitted calls are still held at the end; a refused one keeps nothing
    // (stateless 503, checked in server/tests_overload.rs). A fixed bound failed when the
    // measured capacity came out higher (3,500/s: 271 MB for 137k calls, 2.0 KB each).
    let per_call = rss_growth as f64 * 1024.0 / r.completed.max(1.0);
    assert!(
        per_call < 3072.0,
        "RSS grew {rss_growth} kB: {per_call:.0} bytes per admitted call"
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = load("call", &target, 100, 3, &call);
    assert_eq!((after.failed, after.completed), (0.0, 300.0));
}
