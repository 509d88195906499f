//! SIPp against the real server: the scenarios in sipp-scenarios/ must complete with zero
//! failed calls and zero retransmissions. Without SIPp each test prints a SKIPPED line (and
//! build.rs warns); SIPSHARD_REQUIRE_SIPP=1 (CI sets it) makes that a failure.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// True when SIPp is installed; otherwise the test calling it skips visibly (or fails when
/// SIPSHARD_REQUIRE_SIPP=1).
fn sipp_available(test: &str) -> bool {
    let found = Command::new("sipp").arg("-v").output().is_ok();
    if !found {
        skip_or_fail(
            test,
            "SIPp not installed (apt-get install sip-tester)",
            "SIPSHARD_REQUIRE_SIPP",
        );
    }
    found
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp-scenarios")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sipshard-sipp-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes users.csv for SIPp (user;password) and users.txt for sipshard (user:password).
fn users(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let mut csv = String::from("SEQUENTIAL\n");
    let mut txt = String::new();
    for i in 0..n {
        csv.push_str(&format!("user{i:04};pw{i:04}x\n"));
        txt.push_str(&format!("user{i:04}:pw{i:04}x\n"));
    }
    let (c, t) = (dir.join("users.csv"), dir.join("users.txt"));
    std::fs::write(&c, csv).unwrap();
    std::fs::write(&t, txt).unwrap();
    (c, t)
}

struct SippResult {
    successful: u64,
    failed: u64,
    retransmissions: u64,
}

/// Runs SIPp to completion and reads its final statistics line.
fn run_sipp(dir: &Path, server: &ServerProcess, args: &[&str]) -> SippResult {
    run_sipp_to(dir, server.addr, args)
}

/// [`run_sipp`] against `target` (a tunnel in front of the server, say).
fn run_sipp_to(dir: &Path, target: std::net::SocketAddr, args: &[&str]) -> SippResult {
    let stat = dir.join("stat.csv");
    let _ = std::fs::remove_file(&stat);
    // SIPp without -p takes the first free port from 5060 up, one that a SIPp of another
    // test may just have left: a server of that test retransmitting to it would then reach
    // this one. A fresh port keeps each SIPp to its own traffic.
    let port = free_udp_port().to_string();
    let own_port: &[&str] = if args.contains(&"-p") {
        &[]
    } else {
        &["-p", &port]
    };
    let out = Command::new("timeout")
        .arg("120")
        .arg("sipp")
        .arg(target.to_string())
        .args(args)
        .args(own_port)
        .args(["-nostdin", "-trace_stat", "-stf"])
        .arg(&stat)
        .args(["-fd", "1", "-buff_size", "4194304", "-timeout", "100s"])
        .current_dir(dir)
        .output()
        .expect("run sipp");
    read_stat(&stat).unwrap_or_else(|| {
        panic!(
            "no SIPp statistics; stdout: {} stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The cumulative counters of the last line of a SIPp `-trace_stat` file.
fn read_stat(stat: &Path) -> Option<SippResult> {
    let text = std::fs::read_to_string(stat).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let col = |name: &str| -> u64 {
        let i = header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name}"));
        last[i].trim().parse().unwrap()
    };
    Some(SippResult {
        successful: col("SuccessfulCall(C)"),
        failed: col("FailedCall(C)"),
        retransmissions: col("Retransmissions(C)"),
    })
}

/// Asserts that SIPp completed `n` calls with no failure and no retransmission.
fn assert_clean(r: &SippResult, n: u64) {
    assert_eq!(
        (r.failed, r.retransmissions, r.successful),
        (0, 0, n),
        "(failed, retransmissions, successful)"
    );
}

/// Runs `scenario_name` from the test SIPp for `calls` calls at `rate` per second with the
/// injection file `csv` (plus `extra` arguments) and asserts all of them went through cleanly.
fn run_clean(
    dir: &Path,
    server: &ServerProcess,
    scenario_name: &str,
    csv: &Path,
    calls: u64,
    rate: u32,
    extra: &[&str],
) {
    run_clean_to(dir, server.addr, scenario_name, csv, calls, rate, extra);
}

/// [`run_clean`] against `target` (a tunnel in front of the server, say).
fn run_clean_to(
    dir: &Path,
    target: std::net::SocketAddr,
    scenario_name: &str,
    csv: &Path,
    calls: u64,
    rate: u32,
    extra: &[&str],
) {
    let sf = scenario(scenario_name);
    let (m, r) = (calls.to_string(), rate.to_string());
    let mut args = vec![
        "-sf",
        sf.to_str().unwrap(),
        "-inf",
        csv.to_str().unwrap(),
        "-m",
        &m,
        "-r",
        &r,
    ];
    args.extend_from_slice(extra);
    assert_clean(&run_sipp_to(dir, target, &args), calls);
}

#[test]
fn sipp_register_without_auth() {
    if !sipp_available("sipp_register_without_auth") {
        return;
    }
    let dir = scratch("reg");
    let (csv, _) = users(&dir, 1000);
    let s = ServerProcess::start_with(&["--shards", "2"], true);
    run_clean(&dir, &s, "register.xml", &csv, 5000, 2000, &[]);
    assert_eq!(s.metric("sipshard_bindings"), Some(1000.0));
    assert_eq!(
        s.metric("sipshard_requests_received_total{method=\"REGISTER\"}"),
        Some(5000.0)
    );
}

#[test]
fn sipp_10k_digest_registrations_over_1k_users() {
    if !sipp_available("sipp_10k_digest_registrations_over_1k_users") {
        return;
    }
    let dir = scratch("regauth");
    let (csv, txt) = users(&dir, 1000);
    // The default challenges (MD5 first, then SHA-256): SIPp 3.6 answers the first one, and
    // only MD5.
    let s = ServerProcess::start_with(&["--shards", "2", "--users", txt.to_str().unwrap()], true);
    run_clean(
        &dir,
        &s,
        "register-digest.xml",
        &csv,
        10_000,
        2000,
        &["-au", "[field0]", "-ap", "[field1]"],
    );
    // Every call: one 401, one 200; 1,000 AORs bound.
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"401\"}"),
        Some(10000.0)
    );
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"200\"}")
            .map(|v| v >= 10000.0),
        Some(true)
    );
    assert_eq!(s.metric("sipshard_bindings"), Some(1000.0));
}

/// SIPp's `[authentication]` hashes `uri="sip:HOST:PORT"` whatever the Request-URI: with the
/// AOR as Request-URI (`sip:user@HOST`) the default server verifies it over that uri, and
/// `--strict-digest-uri` refuses it.
#[test]
fn sipp_digest_register_with_the_aor_as_request_uri() {
    if !sipp_available("sipp_digest_register_with_the_aor_as_request_uri") {
        return;
    }
    let dir = scratch("regauth-aor");
    let (csv, txt) = users(&dir, 10);
    let stock = std::fs::read_to_string(scenario("register-digest.xml")).unwrap();
    let from = "REGISTER sip:[remote_ip]:[remote_port] SIP/2.0";
    assert_eq!(stock.matches(from).count(), 2);
    let sf = dir.join("register-digest-aor.xml");
    std::fs::write(
        &sf,
        stock.replace(from, "REGISTER sip:[field0]@[remote_ip] SIP/2.0"),
    )
    .unwrap();
    let args = |sf: &Path, csv: &Path| {
        let (sf, csv) = (
            sf.to_str().unwrap().to_owned(),
            csv.to_str().unwrap().to_owned(),
        );
        [
            "-sf", &sf, "-inf", &csv, "-m", "20", "-r", "100", "-au", "[field0]", "-ap", "[field1]",
        ]
        .map(str::to_owned)
    };
    let a = args(&sf, &csv);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let s = ServerProcess::start(&["--shards", "2", "--users", txt.to_str().unwrap()]);
    assert_clean(&run_sipp(&dir, &s, &a), 20);
    drop(s);
    let strict = ServerProcess::start(&[
        "--shards",
        "1",
        "--users",
        txt.to_str().unwrap(),
        "--strict-digest-uri",
    ]);
    let mut a = a.clone();
    a[5] = "2";
    let r = run_sipp(&dir, &strict, &[&a[..], &["-recv_timeout", "2s"]].concat());
    assert_eq!((r.successful, r.failed), (0, 2));
}

/// A SIPp UAS in the background (killed if dropped before [`Background::finish`]), writing
/// its statistics to `stat`.
struct Background {
    child: std::process::Child,
    stat: PathBuf,
    name: String,
}

impl Background {
    /// Waits for the UAS to end (it stops after the `-m` calls it was started for) and checks
    /// its own account: exit code 0 (SIPp: every call successful) and `calls` successful,
    /// none failed, in its statistics. The caller's counters alone would not show a UAS that
    /// saw fewer calls, or failed some.
    fn finish(mut self, calls: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: the SIPp UAS did not finish its {calls} calls",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let r = read_stat(&self.stat)
            .unwrap_or_else(|| panic!("{}: no UAS statistics at {:?}", self.name, self.stat));
        assert_eq!(
            (r.failed, r.successful),
            (0, calls),
            "{}: UAS (failed, successful)",
            self.name
        );
        assert_eq!(status.code(), Some(0), "{}: UAS exit status", self.name);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    free_port()
}

/// Registers `user` with Contact at 127.0.0.1:`port` (SIPp's own socket), then starts the
/// SIPp UAS `scenario` on that port for `calls` calls. Returns the UAS and the injection file
/// naming `user` for the caller.
fn callee(
    dir: &Path,
    s: &ServerProcess,
    user: &str,
    port: u16,
    scenario_name: &str,
    calls: usize,
) -> (Background, PathBuf) {
    let csv = dir.join(format!("callee-{user}.csv"));
    std::fs::write(&csv, format!("SEQUENTIAL\n{user}\n")).unwrap();
    let reg = scenario("register.xml");
    let st = Command::new("timeout")
        .args(["20", "sipp"])
        .arg(s.addr.to_string())
        .args(["-sf", reg.to_str().unwrap(), "-inf", csv.to_str().unwrap()])
        .args(["-p", &port.to_string(), "-m", "1", "-nostdin"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(st.status.success(), "callee registration failed");
    let name = format!("{scenario_name} for {user} on port {port}");
    let stat = dir.join(format!("uas-{user}-{port}.csv"));
    (uas(dir, port, scenario_name, calls, stat, name), csv)
}

/// Starts the SIPp UAS `scenario` on `port` for `calls` calls, its statistics in `stat`.
fn uas(
    dir: &Path,
    port: u16,
    scenario_name: &str,
    calls: usize,
    stat: PathBuf,
    name: String,
) -> Background {
    uas_with(dir, port, scenario_name, calls, stat, name, &[])
}

/// [`uas`] with `extra` SIPp arguments (a local address, message tracing).
fn uas_with(
    dir: &Path,
    port: u16,
    scenario_name: &str,
    calls: usize,
    stat: PathBuf,
    name: String,
    extra: &[&str],
) -> Background {
    let sf = scenario(scenario_name);
    let _ = std::fs::remove_file(&stat);
    let child = Command::new("sipp")
        .args(["-sf", sf.to_str().unwrap(), "-p", &port.to_string()])
        .args([
            "-m",
            &calls.to_string(),
            "-nostdin",
            "-buff_size",
            "4194304",
        ])
        .args(["-trace_stat", "-fd", "1", "-stf"])
        .arg(&stat)
        .args(extra)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    Background { child, stat, name }
}

/// Starts the SIPp UAS `scenario` on `port` for `calls` calls, with no registration: a trunk
/// (a gateway the dial plan routes numbers to).
fn trunk(dir: &Path, port: u16, scenario_name: &str, calls: usize) -> Background {
    let name = format!("{scenario_name} as a trunk on port {port}");
    let stat = dir.join(format!("trunk-{port}.csv"));
    uas(dir, port, scenario_name, calls, stat, name)
}

/// The dial plan of the trunk tests: numbers +49... through `trunks` (names of trunks at
/// `addresses`, no OPTIONS checks: a SIPp UAS would count them as unexpected messages).
fn trunk_plan(dir: &Path, trunks: &[(&str, u16)], route: &[&str]) -> String {
    let mut text = String::new();
    for (name, port) in trunks {
        text.push_str(&format!(
            "[[trunk]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\ncheck_interval_ms = 0\n\n"
        ));
    }
    let list: Vec<String> = route.iter().map(|t| format!("\"{t}\"")).collect();
    text.push_str(&format!(
        "[[route]]\nprefix = \"+49\"\ntrunks = [{}]\n\n[routing]\ntrunk_timeout_ms = 300\n",
        list.join(", ")
    ));
    let path = dir.join("plan.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn sipp_calls_through_a_trunk_route() {
    if !sipp_available("sipp_calls_through_a_trunk_route") {
        return;
    }
    let dir = scratch("trunk");
    let port = free_udp_port();
    let plan = trunk_plan(&dir, &[("gw", port)], &["gw"]);
    let s = ServerProcess::start_with(&["--shards", "2", "--config", &plan], true);
    let gw = trunk(&dir, port, "uas.xml", 1000);
    let csv = dir.join("numbers.csv");
    std::fs::write(&csv, "SEQUENTIAL\n+4930123456\n").unwrap();
    run_clean(&dir, &s, "uac.xml", &csv, 1000, 250, &["-d", "50"]);
    gw.finish(1000);
    for m in ["INVITE", "ACK", "BYE"] {
        let series = format!("sipshard_requests_sent_total{{method=\"{m}\"}}");
        assert_eq!(
            s.metric(&series),
            Some(1000.0),
            "{m} forwarded to the trunk"
        );
    }
}

#[test]
fn sipp_calls_fail_over_from_a_silent_trunk() {
    if !sipp_available("sipp_calls_fail_over_from_a_silent_trunk") {
        return;
    }
    let dir = scratch("failover");
    // Nothing listens on the first trunk's port: every call waits trunk_timeout_ms (300)
    // there, then goes to the SIPp trunk.
    let (dead, port) = (free_udp_port(), free_udp_port());
    let plan = trunk_plan(&dir, &[("dead", dead), ("gw", port)], &["dead", "gw"]);
    let s = ServerProcess::start_with(&["--shards", "2", "--config", &plan], true);
    let gw = trunk(&dir, port, "uas.xml", 200);
    let csv = dir.join("numbers.csv");
    std::fs::write(&csv, "SEQUENTIAL\n+4989123\n").unwrap();
    run_clean(&dir, &s, "uac.xml", &csv, 200, 50, &["-d", "50"]);
    gw.finish(200);
    // Every INVITE went out twice: to the silent trunk, then to the SIPp one.
    let invites = s
        .metric("sipshard_requests_sent_total{method=\"INVITE\"}")
        .unwrap();
    assert!(invites >= 400.0, "{invites} INVITEs sent");
}

#[test]
fn sipp_calls_through_the_record_routing_proxy() {
    if !sipp_available("sipp_calls_through_the_record_routing_proxy") {
        return;
    }
    let dir = scratch("calls");
    let s = ServerProcess::start_with(&["--shards", "2"], true);
    let (uas, csv) = callee(&dir, &s, "callee", free_udp_port(), "uas.xml", 2000);
    run_clean(&dir, &s, "uac.xml", &csv, 2000, 500, &["-d", "50"]);
    uas.finish(2000);
    assert_eq!(
        s.metric("sipshard_requests_received_total{method=\"INVITE\"}"),
        Some(2000.0)
    );
    assert_eq!(
        s.metric("sipshard_requests_received_total{method=\"BYE\"}"),
        Some(2000.0)
    );
    // ACKs of the 2xx pass through the proxy (record-routed), one per call.
    assert_eq!(
        s.metric("sipshard_requests_received_total{method=\"ACK\"}"),
        Some(2000.0)
    );
    // What the proxy sent agrees with SIPp: every request forwarded once, 100/180 per call,
    // a 200 for every INVITE and BYE (plus the callee's REGISTER and start-up OPTIONS).
    for m in ["INVITE", "ACK", "BYE"] {
        let series = format!("sipshard_requests_sent_total{{method=\"{m}\"}}");
        assert_eq!(s.metric(&series), Some(2000.0), "{m} forwarded");
    }
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"100\"}"),
        Some(2000.0)
    );
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"180\"}"),
        Some(2000.0)
    );
    assert!(
        s.metric("sipshard_responses_sent_total{status=\"200\"}")
            .unwrap()
            >= 4000.0
    );
}

/// Kernel steering (issue 20): SIPp sends from one socket (`-t u1`, its default), which
/// the kernel's SO_REUSEPORT hash of the source would put on one shard, half of it then
/// handed to the other. With the steering program each REGISTER and each message of a call
/// lands on the shard that owns it: both shards read datagrams and none is handed on.
/// `--steering off` is the contrast: the same traffic from the same socket is handed on.
#[test]
fn sipp_from_one_socket_every_message_lands_on_its_owner_shard() {
    if !sipp_available("sipp_from_one_socket_every_message_lands_on_its_owner_shard") {
        return;
    }
    let dir = scratch("steer");
    let (csv, _) = users(&dir, 1000);
    // One thread per shard (consolidation would have everything read by shard 0, below).
    let s = ServerProcess::start_with(&["--shards", "2", "--consolidate", "off"], true);
    if !s.steering_or_skip("sipp_from_one_socket_every_message_lands_on_its_owner_shard") {
        return;
    }
    run_clean(&dir, &s, "register.xml", &csv, 2000, 1000, &["-t", "u1"]);
    let on_shard = |i: usize| {
        s.metric(&format!(
            "sipshard_datagrams_received_total{{shard=\"{i}\"}}"
        ))
        .unwrap()
    };
    // 1,000 AORs: about half are each shard's.
    let (a, b) = (on_shard(0), on_shard(1));
    eprintln!("REGISTERs read: shard 0 {a}, shard 1 {b}");
    assert!(a > 0.35 * (a + b) && b > 0.35 * (a + b), "{a} / {b}");
    assert_eq!(s.metric("sipshard_handoffs_total"), Some(0.0));
    // Calls to one callee: its shard reads the INVITEs, the callee's responses (our branch)
    // and the caller's ACKs and BYEs (our Record-Route's ss=); the other shard reads none.
    let (uas, callee_csv) = callee(&dir, &s, "callee", free_udp_port(), "uas.xml", 300);
    run_clean(&dir, &s, "uac.xml", &callee_csv, 300, 100, &["-t", "u1"]);
    uas.finish(300);
    let (a2, b2) = (on_shard(0) - a, on_shard(1) - b);
    eprintln!("call datagrams read: shard 0 {a2}, shard 1 {b2}");
    assert!(
        a2.min(b2) <= 1.0 && a2.max(b2) >= 300.0 * 5.0,
        "{a2} / {b2}"
    );
    assert_eq!(s.metric("sipshard_handoffs_total"), Some(0.0));
    drop(s);

    // Consolidated (both shards on shard 0's thread): the program sends everything to shard
    // 0's socket, which hands shard 1's REGISTERs on.
    let c = ServerProcess::start_with(&["--shards", "2"], true);
    c.wait_metric("sipshard_consolidated_shards", 1.0);
    let read = |i: usize| {
        c.metric(&format!(
            "sipshard_datagrams_received_total{{shard=\"{i}\"}}"
        ))
        .unwrap_or(0.0)
    };
    // (The start-up probe was read before the shards consolidated.)
    let (a0, b0) = (read(0), read(1));
    run_clean(&dir, &c, "register.xml", &csv, 2000, 1000, &["-t", "u1"]);
    let (a, b) = (read(0) - a0, read(1) - b0);
    assert_eq!(b, 0.0, "shard 1's socket read {b} of {}", a + b);
    let handed = c.metric("sipshard_handoffs_total").unwrap();
    assert!(handed > 0.35 * a && handed < 0.65 * a, "{handed} of {a}");
    drop(c);

    let off = ServerProcess::start_with(&["--shards", "2", "--steering", "off"], true);
    assert_eq!(off.metric("sipshard_kernel_steering"), Some(0.0));
    run_clean(&dir, &off, "register.xml", &csv, 2000, 1000, &["-t", "u1"]);
    let handed = off.metric("sipshard_handoffs_total").unwrap();
    assert!(handed > 500.0, "{handed} hand-offs without steering");
}

#[test]
fn sipp_cancel_before_answer() {
    if !sipp_available("sipp_cancel_before_answer") {
        return;
    }
    let dir = scratch("cancel");
    let s = ServerProcess::start_with(&["--shards", "1"], true);
    let (uas, csv) = callee(&dir, &s, "ringer", free_udp_port(), "uas-cancel.xml", 200);
    run_clean(&dir, &s, "uac-cancel.xml", &csv, 200, 100, &[]);
    uas.finish(200);
    assert_eq!(
        s.metric("sipshard_requests_received_total{method=\"CANCEL\"}"),
        Some(200.0)
    );
}

#[test]
fn sipp_forking_to_two_contacts_answered_by_one() {
    if !sipp_available("sipp_forking_to_two_contacts_answered_by_one") {
        return;
    }
    let dir = scratch("fork");
    let s = ServerProcess::start_with(&["--shards", "1"], true);
    // Two phones registered for the same user: one answers, the other rings until cancelled.
    let (answers, csv) = callee(&dir, &s, "forked", free_udp_port(), "uas.xml", 100);
    let (rings, _) = callee(&dir, &s, "forked", free_udp_port(), "uas-cancel.xml", 100);
    assert_eq!(s.metric("sipshard_bindings"), Some(2.0));
    run_clean(&dir, &s, "uac.xml", &csv, 100, 20, &["-d", "50"]);
    // Each phone saw every call: one answered all 100, the other was cancelled 100 times.
    answers.finish(100);
    rings.finish(100);
    // Every INVITE went to both phones; the ringing one was cancelled each time.
    assert_eq!(
        s.metric("sipshard_requests_sent_total{method=\"INVITE\"}"),
        Some(200.0)
    );
    assert_eq!(
        s.metric("sipshard_requests_sent_total{method=\"CANCEL\"}"),
        Some(100.0)
    );
}

#[test]
fn sipp_callee_hangs_up_through_the_proxy() {
    if !sipp_available("sipp_callee_hangs_up_through_the_proxy") {
        return;
    }
    let dir = scratch("byecallee");
    let s = ServerProcess::start_with(&["--shards", "2"], true);
    let (uas, csv) = callee(&dir, &s, "hangup", free_udp_port(), "uas-bye.xml", 100);
    run_clean(&dir, &s, "uac-callee-bye.xml", &csv, 100, 50, &[]);
    uas.finish(100);
    // The callee's BYEs were routed back to the callers through the proxy.
    assert_eq!(
        s.metric("sipshard_requests_sent_total{method=\"BYE\"}"),
        Some(100.0)
    );
}

#[test]
fn sipp_reinvite_in_a_dialog_through_the_proxy() {
    if !sipp_available("sipp_reinvite_in_a_dialog_through_the_proxy") {
        return;
    }
    let dir = scratch("reinvite");
    let s = ServerProcess::start_with(&["--shards", "2"], true);
    let (uas, csv) = callee(&dir, &s, "reinv", free_udp_port(), "uas-reinvite.xml", 100);
    run_clean(&dir, &s, "uac-reinvite.xml", &csv, 100, 50, &["-d", "20"]);
    uas.finish(100);
    // Two INVITEs per call (the initial one and the re-INVITE), both forwarded.
    assert_eq!(
        s.metric("sipshard_requests_sent_total{method=\"INVITE\"}"),
        Some(200.0)
    );
}

/// `--mode responder`: SIPp's stock `uac` scenario (INVITE, 200, ACK, BYE) against a
/// two-shard responder, no second UA needed.
#[test]
fn sipp_stock_uac_against_the_responder() {
    if !sipp_available("sipp_stock_uac_against_the_responder") {
        return;
    }
    let dir = scratch("responder-uac");
    let s = ServerProcess::start_with(&["--shards", "2", "--mode", "responder"], true);
    let r = run_sipp(&dir, &s, &["-sn", "uac", "-m", "3000", "-r", "1000"]);
    assert_clean(&r, 3000);
    let m = |series: &str| s.metric(series).unwrap_or(0.0);
    assert_eq!(
        m("sipshard_requests_received_total{method=\"INVITE\"}"),
        3000.0
    );
    assert_eq!(
        m("sipshard_requests_received_total{method=\"ACK\"}"),
        3000.0
    );
    assert_eq!(
        m("sipshard_requests_received_total{method=\"BYE\"}"),
        3000.0
    );
    // 200 to each INVITE and each BYE (and to the start-up OPTIONS probes); no retransmission
    // was needed.
    let options = m("sipshard_requests_received_total{method=\"OPTIONS\"}");
    assert_eq!(
        m("sipshard_responses_sent_total{status=\"200\"}"),
        6000.0 + options
    );
    assert_eq!(m("sipshard_responses_sent_total{status=\"180\"}"), 3000.0);
}

/// The response mix: every branch (200, 486, 503) is taken, each call ends cleanly for the
/// caller, and the shares are the configured ones.
#[test]
fn sipp_response_mix_against_the_responder() {
    if !sipp_available("sipp_response_mix_against_the_responder") {
        return;
    }
    let dir = scratch("responder-mix");
    let s = ServerProcess::start_with(
        &[
            "--shards",
            "2",
            "--mode",
            "responder",
            "--mix",
            "200:60,486:25,503:15",
        ],
        true,
    );
    let csv = dir.join("service.csv");
    std::fs::write(&csv, "SEQUENTIAL\nservice\n").unwrap();
    run_clean(&dir, &s, "uac-mix.xml", &csv, 2000, 500, &[]);
    let m = |series: &str| s.metric(series).unwrap_or(0.0);
    let busy = m("sipshard_responses_sent_total{status=\"486\"}");
    let unavailable = m("sipshard_responses_sent_total{status=\"503\"}");
    let answered = m("sipshard_requests_received_total{method=\"BYE\"}");
    assert_eq!(answered + busy + unavailable, 2000.0, "one final per call");
    assert!((1080.0..1320.0).contains(&answered), "200: {answered}");
    assert!((400.0..600.0).contains(&busy), "486: {busy}");
    assert!((200.0..400.0).contains(&unavailable), "503: {unavailable}");
    // Every final was acknowledged: no retransmission of a 486/503 or 200.
    assert_eq!(
        m("sipshard_requests_received_total{method=\"ACK\"}"),
        2000.0
    );
}

/// With a ring time the caller can CANCEL: 200 to the CANCEL and 487 to the INVITE.
#[test]
fn sipp_cancels_a_ringing_responder() {
    if !sipp_available("sipp_cancels_a_ringing_responder") {
        return;
    }
    let dir = scratch("responder-cancel");
    let s = ServerProcess::start_with(&["--mode", "responder", "--ring-ms", "10000"], true);
    let csv = dir.join("service.csv");
    std::fs::write(&csv, "SEQUENTIAL\nservice\n").unwrap();
    run_clean(&dir, &s, "uac-cancel.xml", &csv, 300, 150, &[]);
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"487\"}"),
        Some(300.0)
    );
}

/// With a hold time the responder hangs up: the SIPp caller receives its BYE (through the
/// caller's own socket) and answers it.
#[test]
fn sipp_caller_receives_the_responders_bye_after_the_hold_time() {
    if !sipp_available("sipp_caller_receives_the_responders_bye_after_the_hold_time") {
        return;
    }
    let dir = scratch("responder-hold");
    let s = ServerProcess::start_with(
        &["--shards", "2", "--mode", "responder", "--hold-ms", "300"],
        true,
    );
    let csv = dir.join("service.csv");
    std::fs::write(&csv, "SEQUENTIAL\nservice\n").unwrap();
    run_clean(&dir, &s, "uac-callee-bye.xml", &csv, 500, 250, &[]);
    assert_eq!(
        s.metric("sipshard_requests_sent_total{method=\"BYE\"}"),
        Some(500.0)
    );
    assert_eq!(s.metric("sipshard_responses_received_total"), Some(500.0));
}

/// With users the responder challenges new calls (401, as a UAS does) and SIPp's stock
/// `[authentication]` answers.
#[test]
fn sipp_digest_calls_to_the_responder() {
    if !sipp_available("sipp_digest_calls_to_the_responder") {
        return;
    }
    let dir = scratch("responder-digest");
    let stock = std::fs::read_to_string(scenario("uac-digest.xml")).unwrap();
    assert_eq!(stock.matches("response=\"407\"").count(), 1);
    let sf = dir.join("uac-digest-401.xml");
    std::fs::write(&sf, stock.replace("response=\"407\"", "response=\"401\"")).unwrap();
    let s = ServerProcess::start_with(
        &[
            "--shards",
            "2",
            "--mode",
            "responder",
            "--user",
            "grace:secret",
        ],
        true,
    );
    let r = run_sipp(
        &dir,
        &s,
        &[
            "-sf",
            sf.to_str().unwrap(),
            "-s",
            "service",
            "-key",
            "caller",
            "grace",
            "-au",
            "grace",
            "-ap",
            "secret",
            "-m",
            "200",
            "-r",
            "100",
        ],
    );
    assert_clean(&r, 200);
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"401\"}"),
        Some(200.0)
    );
}

/// Issue 17: SIPp floods from 127.0.0.3 far above the flood limit while a second source,
/// 127.0.0.2, registers and calls at a normal rate: the flooder is banned (every shard drops
/// it, logged once), the other source completes everything with zero failures and zero
/// retransmissions.
#[test]
fn sipp_flood_from_one_source_is_banned_while_another_registers_and_calls() {
    if !sipp_available("sipp_flood_from_one_source_is_banned_while_another_registers_and_calls") {
        return;
    }
    let dir = scratch("flood");
    let (csv, _) = users(&dir, 100);
    let log = dir.join("server.log");
    let s = ServerProcess::start_logged(&["--shards", "2", "--log", "warn"], true, &log);
    // The flood: REGISTERs at 4,000/s from one address (the default limit is 400 requests in
    // 2 s), for longer than the normal traffic below lasts.
    let reg = scenario("register.xml");
    let flood = Command::new("sipp")
        .arg(s.addr.to_string())
        .args(["-sf", reg.to_str().unwrap(), "-inf", csv.to_str().unwrap()])
        .args(["-i", "127.0.0.3", "-p", &free_udp_port().to_string()])
        .args(["-r", "4000", "-m", "200000", "-l", "4000", "-nostdin"])
        .args(["-timeout", "60s", "-recv_timeout", "1000"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let flood = Background {
        child: flood,
        stat: dir.join("none"),
        name: "flood".into(),
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Normal traffic from 127.0.0.2 meanwhile: registrations, then calls to a registered
    // callee.
    run_clean(
        &dir,
        &s,
        "register.xml",
        &csv,
        300,
        50,
        &["-i", "127.0.0.2"],
    );
    let (uas, callee_csv) = callee(&dir, &s, "callee", free_udp_port(), "uas.xml", 100);
    run_clean(
        &dir,
        &s,
        "uac.xml",
        &callee_csv,
        100,
        20,
        &["-i", "127.0.0.2", "-d", "50"],
    );
    uas.finish(100);
    let banned = s
        .metric("sipshard_dropped_total{reason=\"banned\"}")
        .unwrap();
    assert_eq!(s.metric("sipshard_banned_sources"), Some(1.0));
    drop(flood);
    assert!(banned > 3_000.0, "{banned} datagrams of the flood dropped");
    let text = std::fs::read_to_string(&log).unwrap();
    let bans: Vec<&str> = text.lines().filter(|l| l.contains(" ban src=")).collect();
    assert_eq!(bans.len(), 1, "{bans:#?}");
    assert!(
        bans[0].ends_with("ban src=127.0.0.3 reason=flood seconds=300"),
        "{}",
        bans[0]
    );
}

/// The header lines of the messages SIPp logged as received in its `-trace_msg` file that
/// contain `needle` (the SDP bodies are left out: media addresses are not hidden).
fn received_header_lines_with(log: &Path, needle: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log)
        .unwrap_or_default()
        .replace("\r\n", "\n");
    let mut found = Vec::new();
    for part in text.split("message received").skip(1) {
        // After "[N] bytes :" comes the message, up to the next separator line.
        let msg = part.split_once(":\n").map_or(part, |(_, m)| m);
        let msg = msg.split("\n-----").next().unwrap_or_default();
        let head = msg
            .split("\n\n")
            .find(|p| !p.trim().is_empty())
            .unwrap_or_default();
        found.extend(
            head.lines()
                .filter(|l| l.contains(needle))
                .map(|l| l.trim().to_owned()),
        );
    }
    found
}

/// One run of `calls` calls from a caller at 127.0.0.3 to a callee at 127.0.0.4 through a
/// two-shard proxy (topology hiding on or off): the callee re-INVITEs the caller, the caller
/// hangs up. Returns the header lines the callee received naming 127.0.0.3 and those the
/// caller received naming 127.0.0.4, and the server.
fn call_between_two_addresses(
    dir: &Path,
    hiding: bool,
    calls: u64,
) -> (Vec<String>, Vec<String>, ServerProcess) {
    let cfg = config_file(&format!("[security]\ntopology_hiding = {hiding}\n"));
    let s = ServerProcess::start_with(&["--config", &cfg, "--shards", "2"], true);
    let port = free_udp_port().to_string();
    let csv = dir.join("hidden-callee.csv");
    std::fs::write(&csv, "SEQUENTIAL\nhidden\n").unwrap();
    let reg = Command::new("timeout")
        .args(["20", "sipp"])
        .arg(s.addr.to_string())
        .args(["-sf", scenario("register.xml").to_str().unwrap()])
        .args([
            "-inf",
            csv.to_str().unwrap(),
            "-i",
            "127.0.0.4",
            "-p",
            &port,
        ])
        .args(["-m", "1", "-nostdin"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(reg.status.success(), "callee registration failed");
    let (uas_log, uac_log) = (
        dir.join(format!("uas-{hiding}.log")),
        dir.join(format!("uac-{hiding}.log")),
    );
    let uas = uas_with(
        dir,
        port.parse().unwrap(),
        "uas-hidden.xml",
        calls as usize,
        dir.join(format!("uas-hidden-{hiding}.csv")),
        format!("uas-hidden.xml (topology hiding {hiding})"),
        &[
            "-i",
            "127.0.0.4",
            "-trace_msg",
            "-message_file",
            uas_log.to_str().unwrap(),
        ],
    );
    let log = uac_log.to_str().unwrap().to_owned();
    run_clean(
        dir,
        &s,
        "uac-hidden.xml",
        &csv,
        calls,
        20,
        &[
            "-i",
            "127.0.0.3",
            "-d",
            "20",
            "-trace_msg",
            "-message_file",
            &log,
        ],
    );
    uas.finish(calls);
    (
        received_header_lines_with(&uas_log, "127.0.0.3"),
        received_header_lines_with(&uac_log, "127.0.0.4"),
        s,
    )
}

/// Topology hiding (issue 17): with `security.topology_hiding`, no header the callee
/// receives names the caller's address and none the caller receives names the callee's
/// (Via, Record-Route, Contact, Call-ID), while the call, the callee's re-INVITE and the
/// caller's BYE all go through. Without it, both sides see each other (the check finds them).
#[test]
fn sipp_topology_hiding_keeps_each_side_from_the_others_addresses() {
    if !sipp_available("sipp_topology_hiding_keeps_each_side_from_the_others_addresses") {
        return;
    }
    let dir = scratch("hidden");
    let (to_callee, to_caller, s) = call_between_two_addresses(&dir, true, 20);
    assert!(
        to_callee.is_empty(),
        "the callee saw the caller: {to_callee:?}"
    );
    assert!(
        to_caller.is_empty(),
        "the caller saw the callee: {to_caller:?}"
    );
    // Two INVITEs a call (the re-INVITE came from the callee), each forwarded once.
    assert_eq!(
        s.metric("sipshard_requests_sent_total{method=\"INVITE\"}"),
        Some(40.0)
    );
    drop(s);
    let (to_callee, to_caller, _s) = call_between_two_addresses(&dir, false, 5);
    assert!(
        to_callee.iter().any(|l| l.starts_with("Via:")),
        "{to_callee:?}"
    );
    assert!(
        to_caller.iter().any(|l| l.starts_with("Contact:")),
        "{to_caller:?}"
    );
}

/// The binding store (issue 18): 10,000 AORs registered with SIPp and a callee registered
/// from the port its UAS will answer on; the server killed with SIGKILL and started again on
/// the same data directory with three shards instead of two. Every binding is back (10,000
/// query REGISTERs each get a Contact, on the shard that now owns the AOR) and calls reach the
/// restored callee. In both durability modes (`batch` loses at most its 10 ms window: the kill
/// comes 200 ms after the last 200).
#[test]
fn sipp_10k_bindings_survive_kill_9_in_both_durability_modes() {
    if !sipp_available("sipp_10k_bindings_survive_kill_9_in_both_durability_modes") {
        return;
    }
    for mode in ["batch", "sync"] {
        let dir = scratch(&format!("store-{mode}"));
        let data = dir.join("data");
        let _ = std::fs::remove_dir_all(&data);
        let data_arg = data.to_str().unwrap();
        let args = |shards| {
            [
                "--data-dir",
                data_arg,
                "--durability",
                mode,
                "--shards",
                shards,
            ]
        };
        let mut s = ServerProcess::start_with(&args("2"), true);
        let (csv, _) = users(&dir, 10_000);
        run_clean(&dir, &s, "register.xml", &csv, 10_000, 2_000, &[]);
        let port = free_udp_port();
        let callee_csv = dir.join("callee.csv");
        std::fs::write(&callee_csv, "SEQUENTIAL\nrestored\n").unwrap();
        run_clean(
            &dir,
            &s,
            "register.xml",
            &callee_csv,
            1,
            1,
            &["-p", &port.to_string()],
        );
        assert_eq!(s.metric("sipshard_bindings"), Some(10_001.0), "{mode}");
        std::thread::sleep(std::time::Duration::from_millis(200));
        s.child.kill().unwrap();
        s.child.wait().unwrap();

        let s = ServerProcess::start_with(&args("3"), true);
        assert_eq!(s.metric("sipshard_bindings"), Some(10_001.0), "{mode}");
        run_clean(&dir, &s, "register-query.xml", &csv, 10_000, 2_000, &[]);
        let stat = dir.join("uas-restored.csv");
        let callee = uas(
            &dir,
            port,
            "uas.xml",
            5,
            stat,
            format!("uas.xml for a restored binding ({mode})"),
        );
        run_clean(&dir, &s, "uac.xml", &callee_csv, 5, 5, &["-d", "10"]);
        callee.finish(5);
    }
}

/// What SIPp saw of one call in its `-trace_msg` file (times in ms of the day).
#[derive(Debug, Default)]
struct SippCall {
    invite_sent: Option<f64>,
    /// The final response to the INVITE: status and when it came.
    final_received: Option<(u16, f64)>,
    bye_sent: Option<f64>,
}

/// Reads a SIPp `-trace_msg` file: each message after a line of dashes and its time.
fn sipp_calls(trace: &Path) -> std::collections::HashMap<String, SippCall> {
    let text = std::fs::read_to_string(trace).unwrap();
    let mut calls: std::collections::HashMap<String, SippCall> = Default::default();
    for block in text
        .split("-----------------------------------------------")
        .skip(1)
    {
        let mut lines = block.lines();
        let stamp = lines.next().unwrap().trim();
        let time = stamp.split_whitespace().nth(1).unwrap();
        let ms = time
            .split(':')
            .fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap())
            * 1000.0;
        let sent = lines.next().unwrap().contains("sent");
        let msg: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        let Some(first) = msg.first() else { continue };
        let header = |name: &str| {
            msg.iter()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_default()
        };
        let call = calls.entry(header("Call-ID:")).or_default();
        if sent && first.starts_with("INVITE ") {
            call.invite_sent.get_or_insert(ms);
        } else if sent && first.starts_with("BYE ") {
            call.bye_sent.get_or_insert(ms);
        } else if !sent && first.starts_with("SIP/2.0 ") && header("CSeq:").ends_with("INVITE") {
            let code: u16 = first[8..11].parse().unwrap();
            if code >= 200 && call.final_received.is_none() {
                call.final_received = Some((code, ms));
            }
        }
    }
    // A message of a call SIPp did not start (a stray retransmission to its port) is no call.
    calls.retain(|_, call| call.invite_sent.is_some());
    calls
}

/// The records of a JSON-lines CDR file, once it holds `n` (waits up to 10 s).
fn cdr_records(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        if records.len() >= n || std::time::Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs the caller scenarios of every call outcome against `s` (whose callees `answer`,
/// `busy`, `ringer` are registered and ring group 600 rings `noanswer` for 1.5 s) and returns
/// SIPp's view of every call with its expected disposition.
fn calls_of_every_outcome(
    dir: &Path,
    s: &ServerProcess,
    per_kind: usize,
) -> Vec<(String, &'static str, SippCall)> {
    let n = per_kind as u64;
    let (answer, answer_csv) = callee(dir, s, "answer", free_udp_port(), "uas.xml", per_kind);
    let (busy, busy_csv) = callee(dir, s, "busy", free_udp_port(), "uas-busy.xml", per_kind);
    let (ringer, ringer_csv) = callee(
        dir,
        s,
        "ringer",
        free_udp_port(),
        "uas-cancel.xml",
        per_kind,
    );
    let (noanswer, _) = callee(
        dir,
        s,
        "noanswer",
        free_udp_port(),
        "uas-noanswer.xml",
        per_kind,
    );
    let group_csv = dir.join("group.csv");
    std::fs::write(&group_csv, "SEQUENTIAL\n600\n").unwrap();
    let mut all = Vec::new();
    for (kind, scenario_name, csv, extra, disposition) in [
        (
            "answered",
            "uac.xml",
            &answer_csv,
            &["-d", "1000"][..],
            "answered",
        ),
        ("busy", "uac-busy.xml", &busy_csv, &[][..], "busy"),
        (
            "cancelled",
            "uac-cancel.xml",
            &ringer_csv,
            &[][..],
            "cancelled",
        ),
        (
            "noanswer",
            "uac-noanswer.xml",
            &group_csv,
            &[][..],
            "no_answer",
        ),
    ] {
        let trace = dir.join(format!("trace-{kind}.log"));
        let _ = std::fs::remove_file(&trace);
        let mut args = vec!["-trace_msg", "-message_file", trace.to_str().unwrap()];
        args.extend_from_slice(extra);
        run_clean(dir, s, scenario_name, csv, n, 20, &args);
        for (call_id, call) in sipp_calls(&trace) {
            all.push((call_id, disposition, call));
        }
    }
    answer.finish(n);
    busy.finish(n);
    ringer.finish(n);
    noanswer.finish(n);
    all
}

/// The plan of [`calls_of_every_outcome`]: ring group 600 rings `noanswer` for 1.5 s.
const CDR_PLAN: &str = "[[group]]\nnumber = \"600\"\nmembers = [\"noanswer\"]\nstrategy = \"parallel\"\nring_ms = 1500\n";

/// Checks `records` against SIPp's view: one record per call, its disposition, and its
/// setup time and duration within 10 ms of what SIPp measured.
fn assert_records_match(records: &[serde_json::Value], calls: &[(String, &str, SippCall)]) {
    assert_eq!(records.len(), calls.len(), "one record per call attempt");
    let by_call: std::collections::HashMap<&str, &serde_json::Value> = records
        .iter()
        .map(|r| (r["call_id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_call.len(), records.len(), "no call has two records");
    for (call_id, disposition, sipp) in calls {
        let r = by_call
            .get(call_id.as_str())
            .unwrap_or_else(|| panic!("no record of {call_id}"));
        assert_eq!(r["disposition"], *disposition, "{call_id}: {r}");
        let (code, got_final) = sipp.final_received.unwrap();
        assert_eq!(r["code"], code, "{call_id}");
        let setup = got_final - sipp.invite_sent.unwrap();
        let cdr_setup = r["setup_ms"].as_f64().unwrap();
        assert!(
            (cdr_setup - setup).abs() <= 10.0,
            "{call_id}: setup {cdr_setup} ms in the record, {setup:.1} ms for SIPp"
        );
        match *disposition {
            "answered" => {
                let duration = sipp.bye_sent.unwrap() - got_final;
                let cdr = r["duration_ms"].as_f64().unwrap();
                assert!(
                    (cdr - duration).abs() <= 10.0,
                    "{call_id}: duration {cdr} ms in the record, {duration:.1} ms for SIPp"
                );
                assert!(cdr >= 990.0, "{call_id}: SIPp paused 1 s before its BYE");
                assert_eq!(r["hangup"], "caller");
                assert_eq!(r["dialed"], "answer");
                assert!(r["target"].as_str().unwrap().starts_with("127.0.0.1:"));
                let start = r["start_ms"].as_u64().unwrap();
                assert_eq!(r["answer_ms"].as_u64().unwrap() - start, cdr_setup as u64);
                assert_eq!(
                    r["end_ms"].as_u64().unwrap() - r["answer_ms"].as_u64().unwrap(),
                    cdr as u64
                );
            }
            "cancelled" => assert_eq!(r["hangup"], "caller"),
            "no_answer" => {
                assert_eq!(
                    (r["code"].as_u64(), r["route"].as_str()),
                    (Some(408), Some("group 600"))
                );
                assert!(
                    (1_490.0..2_500.0).contains(&cdr_setup),
                    "rang {cdr_setup} ms of 1500"
                );
            }
            _ => assert!(r["hangup"].is_null()),
        }
        if *disposition != "answered" {
            assert_eq!(r["duration_ms"], 0);
            assert!(r["answer_ms"].is_null());
        }
    }
}

#[test]
fn sipp_calls_of_every_outcome_leave_one_cdr_each_in_jsonl_and_csv() {
    if !sipp_available("sipp_calls_of_every_outcome_leave_one_cdr_each_in_jsonl_and_csv") {
        return;
    }
    let dir = scratch("cdr");
    let jsonl = dir.join("cdr.jsonl");
    let csv = dir.join("cdr.csv");
    for f in [&jsonl, &csv] {
        let _ = std::fs::remove_file(f);
    }
    let plan = config_file(CDR_PLAN);
    let (j, c) = (
        format!("jsonl:{}", jsonl.display()),
        format!("csv:{}", csv.display()),
    );
    let s = ServerProcess::start_with(
        &["--shards", "2", "--config", &plan, "--cdr", &j, "--cdr", &c],
        true,
    );
    let calls = calls_of_every_outcome(&dir, &s, 10);
    assert_eq!(calls.len(), 40);
    let records = cdr_records(&jsonl, calls.len());
    assert_records_match(&records, &calls);
    // The CSV sink has the same records, field for field.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[..3], ["id", "call_id", "start_ms"]);
    let rows: Vec<Vec<String>> = lines.map(sipshard::cdr::sink::parse_csv_line).collect();
    assert_eq!(rows.len(), records.len());
    for row in &rows {
        let r = records
            .iter()
            .find(|r| r["id"] == row[0].as_str())
            .expect("same ids");
        for (i, name) in header.iter().enumerate() {
            let want = match &r[*name] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(v) => v.clone(),
                v => v.to_string(),
            };
            assert_eq!(row[i], want, "{name}");
        }
    }
    assert_eq!(s.metric("sipshard_cdr_records_total"), Some(40.0));
    assert_eq!(s.metric("sipshard_cdr_spilled_total"), Some(0.0));
}

/// A PostgreSQL server of its own for a test: initdb in a scratch directory, listening on
/// 127.0.0.1 at a free port, trust authentication. As root it runs as the `postgres` user
/// (PostgreSQL refuses root).
struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_root: bool,
}

impl Postgres {
    /// None (after a SKIPPED line, or a failure with SIPSHARD_REQUIRE_POSTGRES=1) when
    /// PostgreSQL is not installed.
    fn init(test: &str) -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists());
        let Some(bin) = bin else {
            skip_or_fail(
                test,
                "PostgreSQL not installed (apt-get install postgresql)",
                "SIPSHARD_REQUIRE_POSTGRES",
            );
            return None;
        };
        let as_root = current_uid() == 0;
        let dir = std::env::temp_dir().join(format!("sipshard-pg-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
            as_root,
        };
        if as_root {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.start();
        Some(pg)
    }

    fn run(&self, prog: &str, args: &[&str]) {
        let path = self.bin.join(prog);
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{prog}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let (data, log) = (self.dir.join("data"), self.dir.join("log"));
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The records in sipshard's table once it holds `n` rows (waits up to 15 s).
    fn records(&self, n: usize) -> Vec<postgres::Row> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let rows = postgres::Client::connect(&self.url(), postgres::NoTls)
                .and_then(|mut c| {
                    c.query(
                        "SELECT id, call_id, disposition, code, setup_ms, duration_ms, hangup \
                         FROM sipshard_cdr ORDER BY id",
                        &[],
                    )
                })
                .unwrap_or_default();
            if rows.len() >= n || std::time::Instant::now() > deadline {
                return rows;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new(if self.as_root { "runuser" } else { "true" })
            .args(if self.as_root {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn current_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Asserts that PostgreSQL's rows are the JSON-lines records, field for field.
fn assert_rows_are(rows: &[postgres::Row], records: &[serde_json::Value]) {
    assert_eq!(rows.len(), records.len());
    for row in rows {
        let id: String = row.get("id");
        let r = records
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("row {id} is not in the file sink"));
        assert_eq!(r["call_id"], row.get::<_, String>("call_id").as_str());
        assert_eq!(
            r["disposition"],
            row.get::<_, String>("disposition").as_str()
        );
        assert_eq!(r["code"], row.get::<_, i32>("code"));
        assert_eq!(r["setup_ms"], row.get::<_, i64>("setup_ms"));
        assert_eq!(r["duration_ms"], row.get::<_, i64>("duration_ms"));
        assert_eq!(
            r["hangup"].as_str(),
            row.get::<_, Option<String>>("hangup").as_deref()
        );
    }
}

#[test]
fn sipp_cdrs_reach_postgresql_and_wait_on_disk_while_it_is_down() {
    let test = "sipp_cdrs_reach_postgresql_and_wait_on_disk_while_it_is_down";
    if !sipp_available(test) {
        return;
    }
    let Some(pg) = Postgres::init("cdr") else {
        return;
    };
    let dir = scratch("cdr-pg");
    let data = dir.join("data");
    let jsonl = dir.join("cdr.jsonl");
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&jsonl);
    let plan = config_file(CDR_PLAN);
    let (j, p) = (
        format!("jsonl:{}", jsonl.display()),
        format!("postgres:{}", pg.url()),
    );
    let args = [
        "--shards",
        "2",
        "--config",
        &plan,
        "--data-dir",
        data.to_str().unwrap(),
        "--cdr",
        &j,
        "--cdr",
        &p,
    ];
    let mut s = ServerProcess::start_with(&args, true);
    // PostgreSQL up: every call of every outcome becomes a row, the same as in the file.
    let calls = calls_of_every_outcome(&dir, &s, 5);
    let records = cdr_records(&jsonl, calls.len());
    assert_records_match(&records, &calls);
    let rows = pg.records(calls.len());
    assert_rows_are(&rows, &records);
    assert_eq!(
        s.metric("sipshard_cdr_postgres_delivered_total"),
        Some(20.0)
    );

    // PostgreSQL stopped: the next calls' records wait on disk, through a kill -9 of the
    // server, and arrive once PostgreSQL is back (delivered by the restarted server).
    pg.stop();
    let (callee, csv) = callee(&dir, &s, "later", free_udp_port(), "uas.xml", 5);
    run_clean(&dir, &s, "uac.xml", &csv, 5, 20, &["-d", "100"]);
    callee.finish(5);
    let records = cdr_records(&jsonl, 25);
    assert_eq!(records.len(), 25);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s
        .metric("sipshard_cdr_postgres_errors_total")
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed delivery while PostgreSQL is down"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(s.metric("sipshard_cdr_postgres_waiting"), Some(5.0));
    // Segments are closed (fdatasync'd) within 200 ms.
    std::thread::sleep(std::time::Duration::from_millis(500));
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = ServerProcess::start_with(&args, true);
    assert_eq!(
        s.metric("sipshard_cdr_postgres_waiting"),
        Some(5.0),
        "found in the spool at start"
    );
    pg.start();
    let rows = pg.records(25);
    assert_rows_are(&rows, &records);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.metric("sipshard_cdr_postgres_waiting") != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the spool never emptied"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let spool: Vec<_> = std::fs::read_dir(data.join("cdr"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        spool.is_empty(),
        "delivered segments are deleted: {spool:?}"
    );
}

/// A phone on TCP: SIPp registers `user` over one connection (`-t t1`) and stays on it,
/// answering the INVITEs the proxy sends over that connection with `uas.xml` (SIPp's
/// out-of-call scenario). Killed when dropped.
struct TcpPhone(std::process::Child);

impl TcpPhone {
    fn start(dir: &Path, s: &ServerProcess, user: &str) -> (TcpPhone, PathBuf) {
        let csv = dir.join(format!("phone-{user}.csv"));
        std::fs::write(&csv, format!("SEQUENTIAL\n{user}\n")).unwrap();
        let child = Command::new("sipp")
            .arg(s.addr.to_string())
            .args(["-t", "t1", "-sf"])
            .arg(scenario("register-wait.xml"))
            .arg("-oocsf")
            .arg(scenario("uas.xml"))
            .arg("-inf")
            .arg(&csv)
            .args([
                "-p",
                &free_udp_port().to_string(),
                "-m",
                "1",
                "-d",
                "120000",
            ])
            .args(["-nostdin", "-buff_size", "4194304"])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let phone = TcpPhone(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.metric("sipshard_bindings") != Some(1.0) {
            assert!(
                std::time::Instant::now() < deadline,
                "the TCP phone did not register"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (phone, csv)
    }
}

impl Drop for TcpPhone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sipp_digest_registrations_over_tcp_one_connection_and_one_per_call() {
    if !sipp_available("sipp_digest_registrations_over_tcp_one_connection_and_one_per_call") {
        return;
    }
    let dir = scratch("tcp-reg");
    let (csv, txt) = users(&dir, 100);
    let s = ServerProcess::start_with(
        &[
            "--shards",
            "2",
            "--users",
            txt.to_str().unwrap(),
            "--listen",
            "tcp:SAME",
        ],
        true,
    );
    let auth = ["-au", "[field0]", "-ap", "[field1]"];
    // One connection for every REGISTER (t1), then one connection per registration (tn).
    let mut args = vec!["-t", "t1"];
    args.extend_from_slice(&auth);
    run_clean(&dir, &s, "register-digest.xml", &csv, 2000, 500, &args);
    let mut args = vec!["-t", "tn", "-max_socket", "2000"];
    args.extend_from_slice(&auth);
    run_clean(&dir, &s, "register-digest.xml", &csv, 500, 250, &args);
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"401\"}"),
        Some(2500.0)
    );
    assert_eq!(
        s.metric("sipshard_stream_messages_total"),
        Some(5000.0),
        "every REGISTER came over TCP"
    );
    // Over 500 connections (tn) plus one (t1), and each registration was bound to its
    // connection: they are all closed now, and the bindings went with them.
    let accepted = s.metric("sipshard_connections_accepted_total").unwrap();
    assert!(accepted >= 501.0, "{accepted} connections accepted");
    s.wait_metric("sipshard_connections", 0.0);
    s.wait_metric("sipshard_bindings", 0.0);
}

#[test]
fn sipp_calls_over_tcp_through_the_proxy_to_a_phone_on_its_connection() {
    if !sipp_available("sipp_calls_over_tcp_through_the_proxy_to_a_phone_on_its_connection") {
        return;
    }
    let dir = scratch("tcp-calls");
    let s = ServerProcess::start_with(&["--shards", "2", "--listen", "tcp:SAME"], true);
    let (phone, csv) = TcpPhone::start(&dir, &s, "bob");
    // TCP callers on one connection and on one connection per call, then a UDP caller (the
    // dialog crosses transports: double Record-Route).
    run_clean(
        &dir,
        &s,
        "uac.xml",
        &csv,
        300,
        150,
        &["-t", "t1", "-d", "50"],
    );
    run_clean(
        &dir,
        &s,
        "uac.xml",
        &csv,
        100,
        100,
        &["-t", "tn", "-max_socket", "2000", "-d", "50"],
    );
    run_clean(&dir, &s, "uac.xml", &csv, 200, 100, &["-d", "50"]);
    for m in ["INVITE", "ACK", "BYE"] {
        assert_eq!(
            s.metric(&format!("sipshard_requests_sent_total{{method=\"{m}\"}}")),
            Some(600.0),
            "{m} forwarded to the phone"
        );
    }
    // Every request reached the phone over its one connection: the server opened none.
    assert_eq!(s.metric("sipshard_connections_made_total"), Some(0.0));
    drop(phone);
    // The phone's connection closed: its binding went with it.
    s.wait_metric("sipshard_bindings", 0.0);
}

#[test]
fn sipp_callee_on_udp_hangs_up_a_tcp_caller_over_the_callers_connection() {
    if !sipp_available("sipp_callee_on_udp_hangs_up_a_tcp_caller_over_the_callers_connection") {
        return;
    }
    let dir = scratch("tcp-bye");
    let s = ServerProcess::start_with(&["--shards", "2", "--listen", "tcp:SAME"], true);
    let (uas, csv) = callee(&dir, &s, "carol", free_udp_port(), "uas-bye.xml", 100);
    // The callee's BYE names the caller's Contact (a UDP address SIPp does not serve in TCP
    // mode): it must go over the caller's connection, named in our Record-Route.
    run_clean(&dir, &s, "uac-callee-bye.xml", &csv, 100, 50, &["-t", "t1"]);
    uas.finish(100);
    assert_eq!(s.metric("sipshard_connections_made_total"), Some(0.0));
}

/// stunnel in client mode on a free port: SIPp's TCP becomes TLS to `tls` (Debian's SIPp has
/// no TLS), verifying the server's certificate against `ca` and its address. Killed on drop.
struct Stunnel {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Stunnel {
    fn start(dir: &Path, tls: std::net::SocketAddr, ca: &str) -> Stunnel {
        let port = free_port();
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\n[sip]\nclient = yes\naccept = 127.0.0.1:{port}\n\
                 connect = {tls}\nCAfile = {ca}\nverifyChain = yes\ncheckIP = 127.0.0.1\n"
            ),
        )
        .unwrap();
        let child = Command::new("stunnel")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run stunnel");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..50 {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Stunnel { child, addr }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sipp_digest_registrations_over_tls_through_stunnel() {
    let test = "sipp_digest_registrations_over_tls_through_stunnel";
    if !sipp_available(test) {
        return;
    }
    if Command::new("stunnel").arg("-version").output().is_err() {
        skip_or_fail(
            test,
            "stunnel missing (apt-get install stunnel4)",
            "SIPSHARD_REQUIRE_SIPP",
        );
        return;
    }
    let dir = scratch("tls-reg");
    let (csv, txt) = users(&dir, 100);
    let pki = common::pki::pki("sipp-tls");
    let tls: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = format!("tls:{tls}");
    let (cert, key, ca) = (
        pki.path("cert.pem"),
        pki.path("key.pem"),
        pki.path("ca.pem"),
    );
    let s = ServerProcess::start_with(
        &[
            "--shards",
            "2",
            "--users",
            txt.to_str().unwrap(),
            "--listen",
            &listen,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        true,
    );
    let tunnel = Stunnel::start(&dir, tls, &ca);
    let auth = ["-au", "[field0]", "-ap", "[field1]"];
    // One TLS connection for every REGISTER (t1), then a connection and handshake per
    // registration (tn).
    for (calls, rate, transport) in [(1000u64, 500u32, "t1"), (300, 150, "tn")] {
        let mut args = vec!["-t", transport, "-max_socket", "1000"];
        args.extend_from_slice(&auth);
        let sf = "register-digest.xml";
        run_clean_to(&dir, tunnel.addr, sf, &csv, calls, rate, &args);
    }
    assert_eq!(
        s.metric("sipshard_stream_messages_total"),
        Some(2600.0),
        "every REGISTER and its retry came over TLS"
    );
    assert_eq!(
        s.metric("sipshard_connection_events_total{reason=\"tls_failed\"}"),
        Some(0.0)
    );
    let accepted = s.metric("sipshard_connections_accepted_total").unwrap();
    assert!(accepted >= 301.0, "{accepted} connections accepted");
}

// ---------------------------------------------------------------------------------------
// Several nodes as one service (issue 21): bindings shared through Redis.

/// `sipshard ctl registrations --json` of the server whose admin socket is `admin`.
fn ctl_registrations(admin: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(binary())
        .args(["ctl", "--admin"])
        .arg(admin)
        .args(["registrations", "--json"])
        .output()
        .expect("run sipshard ctl");
    assert!(
        out.status.success(),
        "ctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ctl --json prints JSON")
}

/// Waits up to `within` for `admin`'s server to list `n` bindings; returns how long it took.
fn lists_within(admin: &Path, n: usize, within: std::time::Duration) -> std::time::Duration {
    let start = std::time::Instant::now();
    loop {
        let got = ctl_registrations(admin).len();
        if got == n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{} lists {got} bindings, not {n}, after {:?}",
            admin.display(),
            start.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A node of the shared-store tests: `--store URL --node NAME`, its admin socket in `dir`,
/// on `port` (0: a free one).
fn node(dir: &Path, url: &str, name: &str, port: u16, extra: &[&str]) -> (ServerProcess, PathBuf) {
    let admin = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&admin);
    let mut args = vec![
        "--store",
        url,
        "--node",
        name,
        "--domain",
        "cluster.test",
        "--shards",
        "2",
        "--admin",
        admin.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let port = if port == 0 { free_port() } else { port };
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let s = ServerProcess::start_on(port, &args, true, std::process::Stdio::from(f));
    // The admin socket is bound after the shards answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !admin.exists() {
        assert!(std::time::Instant::now() < deadline, "no admin socket");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (s, admin)
}

/// An INVITE from `caller` for `user@cluster.test` (the shared-store tests' domain).
fn cluster_invite(caller: std::net::SocketAddr, user: &str, branch: &str, call_id: &str) -> String {
    format!(
        "INVITE sip:{user}@cluster.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP {caller};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@cluster.test>;tag=a1\r\n\
         To: <sip:{user}@cluster.test>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{caller}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The final response `client` gets for the call `call_id` (other messages skipped).
fn final_response_for(client: &Client, call_id: &str) -> Vec<u8> {
    loop {
        let r = client
            .recv_timeout(std::time::Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no final response for {call_id}"));
        if header_value(&r, "Call-ID").as_deref() == Some(call_id) && status(&r) >= 200 {
            return r;
        }
    }
}

/// The registrations and calls of the two-node test, against `url` (one Redis, or a
/// cluster): SIPp registers 1,000 AORs through node A and a callee from its UAS port; node
/// B lists all of them within 1 s, answers a query REGISTER for each with its Contact, and
/// routes a SIPp call to the callee. Returns the nodes, A's port, the callee's and the
/// scratch paths.
struct TwoNodes {
    a: ServerProcess,
    a_admin: PathBuf,
    b: ServerProcess,
    b_admin: PathBuf,
    csv: PathBuf,
    callee_csv: PathBuf,
    callee_port: u16,
}

fn two_nodes_share_registrations(dir: &Path, url: &str, a_args: &[&str]) -> TwoNodes {
    let (a, a_admin) = node(dir, url, "node-a", 0, a_args);
    let (b, b_admin) = node(dir, url, "node-b", 0, &[]);
    let (csv, _) = users(dir, 1_000);
    run_clean(dir, &a, "register.xml", &csv, 1_000, 1_000, &[]);
    let callee_port = free_udp_port();
    let callee_csv = dir.join("callee.csv");
    std::fs::write(&callee_csv, "SEQUENTIAL\ncallee\n").unwrap();
    let p = callee_port.to_string();
    run_clean(dir, &a, "register.xml", &callee_csv, 1, 1, &["-p", &p]);
    let took = lists_within(&b_admin, 1_001, std::time::Duration::from_secs(1));
    eprintln!("node B listed node A's 1,001 bindings {took:?} after the last 200");
    // B's listing names the node that holds them; A's own are its own.
    let rows = ctl_registrations(&b_admin);
    assert!(rows.iter().all(|r| r["node"] == "node-a"), "{:?}", rows[0]);
    assert!(ctl_registrations(&a_admin)
        .iter()
        .all(|r| r.get("node").is_none()));
    // A query REGISTER through B lists each binding.
    run_clean(dir, &b, "register-query.xml", &csv, 1_000, 1_000, &[]);
    // A call through B reaches the callee registered through A.
    let stat = dir.join("uas-callee.csv");
    let callee = uas(dir, callee_port, "uas.xml", 3, stat, "callee via B".into());
    run_clean(dir, &b, "uac.xml", &callee_csv, 3, 3, &["-d", "10"]);
    callee.finish(3);
    TwoNodes {
        a,
        a_admin,
        b,
        b_admin,
        csv,
        callee_csv,
        callee_port,
    }
}

/// Two nodes on one Redis (issue 21): registrations through A are served by B within 1 s;
/// after `kill -9` of A, B still serves every binding and routes calls to them; A started
/// again loads its bindings from the store and serves them too. A runs with `--durability
/// sync`: every 200 it sent names a binding the store holds, so Redis has all of them at
/// the moment of the kill.
#[test]
fn sipp_two_nodes_share_registrations_and_survive_kill_9_through_redis() {
    let test = "sipp_two_nodes_share_registrations_and_survive_kill_9_through_redis";
    if !sipp_available(test) || !common::redis::redis_available(test) {
        return;
    }
    let dir = scratch("shared-redis");
    let redis = common::redis::Redis::start(&dir);
    let mut t = two_nodes_share_registrations(&dir, &redis.url(), &["--durability", "sync"]);
    let a_port = t.a.addr.port();
    t.a.child.kill().unwrap();
    t.a.child.wait().unwrap();
    assert_eq!(redis.aor_keys(), 1_001);
    assert_eq!(ctl_registrations(&t.b_admin).len(), 1_001);
    run_clean(&dir, &t.b, "register-query.xml", &t.csv, 1_000, 1_000, &[]);
    let stat = dir.join("uas-after-kill.csv");
    let callee = uas(
        &dir,
        t.callee_port,
        "uas.xml",
        3,
        stat,
        "callee, A dead".into(),
    );
    run_clean(&dir, &t.b, "uac.xml", &t.callee_csv, 3, 3, &["-d", "10"]);
    callee.finish(3);

    // A comes back on its port with its name: its bindings are its own again.
    let (a, a_admin) = node(&dir, &redis.url(), "node-a", a_port, &[]);
    let rows = ctl_registrations(&a_admin);
    assert_eq!(rows.len(), 1_001);
    assert!(rows.iter().all(|r| r.get("node").is_none()));
    assert_eq!(a.metric("sipshard_bindings"), Some(1_001.0));
    run_clean(&dir, &a, "register-query.xml", &t.csv, 1_000, 1_000, &[]);
    let stat = dir.join("uas-restarted.csv");
    let callee = uas(
        &dir,
        t.callee_port,
        "uas.xml",
        3,
        stat,
        "callee via restarted A".into(),
    );
    run_clean(&dir, &a, "uac.xml", &t.callee_csv, 3, 3, &["-d", "10"]);
    callee.finish(3);
    // And B still sees them as A's.
    assert_eq!(ctl_registrations(&t.b_admin).len(), 1_001);
    drop(t.a_admin);
}

/// The same registrations and call on a three-master Redis Cluster.
#[test]
fn sipp_two_nodes_share_registrations_through_a_redis_cluster() {
    let test = "sipp_two_nodes_share_registrations_through_a_redis_cluster";
    if !sipp_available(test) || !common::redis::redis_available(test) {
        return;
    }
    let dir = scratch("shared-cluster");
    let cluster = common::redis::RedisCluster::start(&dir, 3);
    let t = two_nodes_share_registrations(&dir, &cluster.url(), &[]);
    assert_eq!(cluster.aor_keys(), 1_001);
    // The AORs are spread over the three masters.
    for n in &cluster.nodes {
        assert!(n.aor_keys() > 200, "{} keys on {}", n.aor_keys(), n.port);
    }
    drop(t);
}

/// Changes made while the store does not answer reach it when it answers again, removals
/// included: Redis is frozen (SIGSTOP, so it keeps its data), ten AORs are unregistered on
/// node A meanwhile, and once Redis goes on they are gone from it and from node B.
#[test]
fn sipp_removals_while_redis_is_frozen_reach_it_when_it_answers() {
    let test = "sipp_removals_while_redis_is_frozen_reach_it_when_it_answers";
    if !sipp_available(test) || !common::redis::redis_available(test) {
        return;
    }
    let dir = scratch("shared-removal");
    let redis = common::redis::Redis::start(&dir);
    let (a, a_admin) = node(&dir, &redis.url(), "node-a", 0, &[]);
    let (_b, b_admin) = node(&dir, &redis.url(), "node-b", 0, &[]);
    let (csv, _) = users(&dir, 100);
    run_clean(&dir, &a, "register.xml", &csv, 100, 100, &[]);
    lists_within(&b_admin, 100, std::time::Duration::from_secs(1));
    let wait_for = |what: &str, done: &mut dyn FnMut() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "waited 15 s for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for("100 AORs in Redis", &mut || redis.aor_keys() == 100);
    redis.signal("STOP");
    let gone: Vec<String> = ctl_registrations(&a_admin)
        .iter()
        .take(10)
        .map(|r| r["aor"].as_str().unwrap().to_string())
        .collect();
    for aor in &gone {
        let out = Command::new(binary())
            .args(["ctl", "--admin"])
            .arg(&a_admin)
            .args(["unregister", aor])
            .output()
            .unwrap();
        assert!(out.status.success(), "unregister {aor}");
    }
    assert_eq!(ctl_registrations(&a_admin).len(), 90);
    // The write of the removals times out: node A queues them.
    wait_for("node A to find the store gone", &mut || {
        a.metric("sipshard_store_connected") == Some(0.0)
    });
    redis.signal("CONT");
    wait_for("90 AORs in Redis", &mut || redis.aor_keys() == 90);
    lists_within(&b_admin, 90, std::time::Duration::from_secs(10));
    let listed: Vec<String> = ctl_registrations(&b_admin)
        .iter()
        .map(|r| r["aor"].as_str().unwrap().to_string())
        .collect();
    assert!(
        gone.iter().all(|g| !listed.contains(g)),
        "B still lists a removed AOR"
    );
    wait_for("node A's queue to empty", &mut || {
        a.metric("sipshard_store_queued") == Some(0.0)
    });
    assert_eq!(a.metric("sipshard_store_dropped_total"), Some(0.0));
}

/// A node alone sends Redis no change messages (nobody would receive them); a node that
/// joins later reads what was written before it subscribed from the store, and gets every
/// change written after it by pub/sub, the first write after it joined included (the writer
/// learns of the listener from that write's reply and publishes its message then).
#[test]
fn sipp_a_node_that_joins_later_gets_every_change_after_it_subscribed() {
    let test = "sipp_a_node_that_joins_later_gets_every_change_after_it_subscribed";
    if !sipp_available(test) || !common::redis::redis_available(test) {
        return;
    }
    let dir = scratch("shared-join");
    let redis = common::redis::Redis::start(&dir);
    let (a, _a_admin) = node(&dir, &redis.url(), "node-a", 0, &[]);
    let half = |from: usize, name: &str| {
        let mut csv = String::from("SEQUENTIAL\n");
        for i in from..from + 500 {
            csv.push_str(&format!("user{i:04};pw{i:04}x\n"));
        }
        let path = dir.join(name);
        std::fs::write(&path, csv).unwrap();
        path
    };
    let (first, second) = (half(0, "first.csv"), half(500, "second.csv"));
    run_clean(&dir, &a, "register.xml", &first, 500, 500, &[]);
    // Alone, node A published nothing but its hello.
    let publishes = || {
        let stats = redis.cli(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
            .map_or(0, |v| v.split(',').next().unwrap().parse::<u64>().unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(redis.aor_keys(), 500);
    assert_eq!(publishes(), 1, "node A alone published change messages");
    let (_b, b_admin) = node(&dir, &redis.url(), "node-b", 0, &[]);
    assert_eq!(ctl_registrations(&b_admin).len(), 500);
    run_clean(&dir, &a, "register.xml", &second, 500, 500, &[]);
    let took = lists_within(&b_admin, 1_000, std::time::Duration::from_secs(1));
    eprintln!(
        "node B, started after 500 registrations, listed all 1,000 {took:?} after the last 200"
    );
    drop(a);
}

/// Redis away for 10 s while SIPp registers through node A (and node B listens): no crash,
/// the changes queued meanwhile arrive when Redis is back (it comes back empty: every
/// binding is written again), and the counts match on Redis and on both nodes.
#[test]
fn sipp_registrations_while_redis_is_down_for_10_s_arrive_when_it_returns() {
    let test = "sipp_registrations_while_redis_is_down_for_10_s_arrive_when_it_returns";
    if !sipp_available(test) || !common::redis::redis_available(test) {
        return;
    }
    let dir = scratch("shared-outage");
    let mut redis = common::redis::Redis::start(&dir);
    let (a, a_admin) = node(&dir, &redis.url(), "node-a", 0, &[]);
    let (_b, b_admin) = node(&dir, &redis.url(), "node-b", 0, &[]);
    let (csv, _) = users(&dir, 3_000);
    // 3,000 REGISTERs at 200/s: 15 s, Redis gone from the 2nd to the 12th.
    let sipp = {
        let (dir, csv, addr) = (dir.clone(), csv.clone(), a.addr);
        std::thread::spawn(move || {
            let sf = scenario("register.xml");
            run_sipp_to(
                &dir,
                addr,
                &[
                    "-sf",
                    sf.to_str().unwrap(),
                    "-inf",
                    csv.to_str().unwrap(),
                    "-m",
                    "3000",
                    "-r",
                    "200",
                ],
            )
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    redis.stop();
    std::thread::sleep(std::time::Duration::from_secs(10));
    assert!(a.metric("sipshard_store_queued").unwrap() > 0.0);
    assert_eq!(a.metric("sipshard_store_connected"), Some(0.0));
    redis.restart();
    let r = sipp.join().unwrap();
    assert_clean(&r, 3_000);
    assert_eq!(ctl_registrations(&a_admin).len(), 3_000);
    let took = lists_within(&b_admin, 3_000, std::time::Duration::from_secs(10));
    eprintln!("node B had all 3,000 bindings {took:?} after the last REGISTER");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while redis.aor_keys() != 3_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} AORs in Redis",
            redis.aor_keys()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(a.metric("sipshard_store_queued"), Some(0.0));
    assert_eq!(a.metric("sipshard_store_dropped_total"), Some(0.0));
    assert_eq!(a.metric("sipshard_store_connected"), Some(1.0));
}

/// A phone on a TCP connection to node A, its Contact an address no one can reach (behind
/// NAT): a call that arrives on node B goes through A (B sends it along the Path A stored,
/// whose flow token names the connection), down the phone's connection, and the caller's BYE
/// follows the dialog's route the same way. A stranger naming that flow in a Route to A is
/// refused: only the cluster's nodes may route down a flow.
#[test]
fn a_call_on_node_b_reaches_a_phone_connected_to_node_a_through_a() {
    use std::io::Write;
    let test = "a_call_on_node_b_reaches_a_phone_connected_to_node_a_through_a";
    if !common::redis::redis_available(test) {
        return;
    }
    let dir = scratch("shared-flow");
    let redis = common::redis::Redis::start(&dir);
    let (a, _a_admin) = node(&dir, &redis.url(), "node-a", 0, &["--listen", "tcp:SAME"]);
    let (b, b_admin) = node(&dir, &redis.url(), "node-b", 0, &[]);
    let mut phone = std::net::TcpStream::connect(a.addr).unwrap();
    phone
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let me = phone.local_addr().unwrap();
    let register = "REGISTER sip:cluster.test SIP/2.0\r\n\
         Via: SIP/2.0/TCP 10.99.0.7:5060;branch=z9hG4bKreg1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:bob@cluster.test>;tag=r1\r\n\
         To: <sip:bob@cluster.test>\r\n\
         Call-ID: reg-bob@10.99.0.7\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:bob@10.99.0.7:5060;transport=tcp>\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\
         \r\n";
    phone.write_all(register.as_bytes()).unwrap();
    let ok = read_stream_messages(&mut phone, 1).remove(0);
    assert_status(&ok, 200);
    lists_within(&b_admin, 1, std::time::Duration::from_secs(1));

    let caller = Client::new();
    let invite = cluster_invite(caller.addr, "bob", "z9hG4bKinv1", "flow-call@test");
    caller.send(&invite, b.addr);
    // The phone gets it over its connection, through A then B.
    let got = read_stream_messages(&mut phone, 1).remove(0);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        text.starts_with("INVITE sip:bob@10.99.0.7:5060;transport=tcp SIP/2.0"),
        "{text}"
    );
    let vias = header_values(&got, "Via");
    assert_eq!(vias.len(), 3, "A, B and the caller: {vias:?}");
    assert!(vias[0].contains(&format!("TCP {}", a.addr)), "{vias:?}");
    assert!(vias[1].contains(&b.addr.to_string()), "{vias:?}");
    let rr = header_values(&got, "Record-Route");
    assert!(
        rr[0].contains(&a.addr.to_string()) && rr[0].contains(&format!("ft=tcp:{me}")),
        "A's Record-Route names the flow: {rr:?}"
    );
    assert!(header_values(&got, "Route").is_empty(), "A took its Route");
    // The phone answers; the 200 reaches the caller.
    let answer = |req: &[u8], code: &str| -> String {
        let mut r = format!("SIP/2.0 {code}\r\n");
        for h in ["Via", "Record-Route"] {
            for v in header_values(req, h) {
                r.push_str(&format!("{h}: {v}\r\n"));
            }
        }
        for h in ["From", "Call-ID", "CSeq"] {
            r.push_str(&format!("{h}: {}\r\n", header_value(req, h).unwrap()));
        }
        r.push_str(&format!(
            "To: {};tag=b1\r\nContact: <sip:bob@10.99.0.7:5060;transport=tcp>\r\nContent-Length: 0\r\n\r\n",
            header_value(req, "To").unwrap()
        ));
        r
    };
    phone.write_all(answer(&got, "200 OK").as_bytes()).unwrap();
    let resp = loop {
        let r = caller
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the 200 reaches the caller");
        if status(&r) == 200 {
            break r;
        }
    };
    // The caller's BYE along the route set (the Record-Route reversed): B, then A, then
    // down the phone's connection.
    // One value per element (A's double Record-Route shares a header line).
    let mut route: Vec<String> = header_values(&resp, "Record-Route")
        .iter()
        .flat_map(|l| l.split(", ").map(str::to_owned).collect::<Vec<_>>())
        .collect();
    route.reverse();
    let bye = format!(
        "BYE sip:bob@10.99.0.7:5060;transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/UDP {c};branch=z9hG4bKbye1\r\n\
         Max-Forwards: 70\r\n\
         Route: {r}\r\n\
         From: <sip:alice@cluster.test>;tag=a1\r\n\
         To: <sip:bob@cluster.test>;tag=b1\r\n\
         Call-ID: flow-call@test\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        c = caller.addr,
        r = route.join(", ")
    );
    caller.send(&bye, b.addr);
    let got = loop {
        let m = read_stream_messages(&mut phone, 1).remove(0);
        if m.starts_with(b"BYE ") {
            break m;
        }
    };
    phone.write_all(answer(&got, "200 OK").as_bytes()).unwrap();
    let st = loop {
        let r = caller
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the BYE's 200 reaches the caller");
        if header_value(&r, "CSeq").is_some_and(|c| c.contains("BYE")) {
            break status(&r);
        }
    };
    assert_eq!(st, 200);

    // A stranger naming the flow in a Route to A: refused, nothing reaches the phone.
    let stranger = Client::new();
    let forged = format!(
        "INVITE sip:bob@10.99.0.7:5060;transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/UDP {c};branch=z9hG4bKforged\r\n\
         Max-Forwards: 70\r\n\
         Route: <sip:{a};lr;ft=tcp:{me}>\r\n\
         From: <sip:mallory@evil.test>;tag=m1\r\n\
         To: <sip:bob@cluster.test>\r\n\
         Call-ID: forged@test\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n",
        c = stranger.addr,
        a = a.addr
    );
    stranger.send(&forged, a.addr);
    assert_eq!(
        stranger.final_status(std::time::Duration::from_secs(3)),
        Some(403)
    );
    phone
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    match std::io::Read::read(&mut phone, &mut buf) {
        Ok(n) => assert!(
            n == 0 || !buf[..n].starts_with(b"INVITE"),
            "the forged INVITE reached the phone"
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
}

/// A node asked for an AOR it never heard of asks the store (the AOR's key is renamed in
/// Redis behind the nodes' backs: no change message announces it): the call reaches the
/// binding the store holds. With Redis stopped, such a call gets 503 saying the location
/// store is unreachable (not a 480 that would tell the caller the user is away).
#[test]
fn a_node_asks_the_store_about_an_aor_it_never_heard_of() {
    let test = "a_node_asks_the_store_about_an_aor_it_never_heard_of";
    if !common::redis::redis_available(test) {
        return;
    }
    let dir = scratch("shared-lookup");
    let mut redis = common::redis::Redis::start(&dir);
    let (a, _a_admin) = node(&dir, &redis.url(), "node-a", 0, &[]);
    let (b, b_admin) = node(&dir, &redis.url(), "node-b", 0, &[]);
    let callee = Client::new();
    let reg = Register::new("sip:bob@cluster.test")
        .contact(&format!("<sip:bob@{}>", callee.addr))
        .send(&callee, a.addr);
    assert_status(&reg, 200);
    lists_within(&b_admin, 1, std::time::Duration::from_secs(1));
    let renamed = redis.cli(&[
        "RENAME",
        "sipshard:aor:sip:bob@cluster.test",
        "sipshard:aor:sip:zed@cluster.test",
    ]);
    assert_eq!(renamed.trim(), "OK");
    let caller = Client::new();
    let invite = |user: &str, branch: &str| {
        cluster_invite(caller.addr, user, branch, &format!("{branch}@test"))
    };
    caller.send(&invite("zed", "z9hG4bKzed1"), b.addr);
    let got = callee
        .recv_timeout(std::time::Duration::from_secs(3))
        .expect("the INVITE for zed reaches the binding the store holds");
    assert!(got.starts_with(format!("INVITE sip:bob@{}", callee.addr).as_bytes()));
    // A user the store does not have either: 480 as always.
    caller.send(&invite("nobody", "z9hG4bKnone"), b.addr);
    assert_eq!(
        status(&final_response_for(&caller, "z9hG4bKnone@test")),
        480
    );
    // The store is gone: 503, saying why.
    redis.stop();
    caller.send(&invite("yan", "z9hG4bKyan"), b.addr);
    let r = final_response_for(&caller, "z9hG4bKyan@test");
    assert_eq!(status(&r), 503);
    assert!(reason(&r).contains("location store"), "{}", reason(&r));
    drop(a);
}
