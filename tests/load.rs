//! `sipshard load` against real servers over UDP on 127.0.0.1: the responder, the registrar
//! with digest, the proxy in front of a responder, and Kamailio. The generator's counts must
//! match the server's own metrics exactly; a target that stalls must show up as latency and
//! timeouts, not as a lower offered rate (open loop).

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `sipshard load ARGS --json --quiet`; returns the exit code and the JSON summary.
fn load(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .arg("load")
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .expect("run sipshard load");
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        json.starts_with('{'),
        "no JSON summary: stdout {json} stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), json)
}

/// The `"name": {...}` latency object of the summary.
fn latency<'a>(json: &'a str, name: &str) -> &'a str {
    let at = json
        .find(&format!("\"{name}\": {{"))
        .unwrap_or_else(|| panic!("no latency {name} in {json}"));
    &json[at..at + json[at..].find('}').unwrap()]
}

fn target(s: &ServerProcess) -> String {
    s.addr.to_string()
}

#[test]
fn calls_against_the_responder_match_its_metrics() {
    let s = ServerProcess::start_with(&["--shards", "2", "--mode", "responder"], true);
    let options_before = s
        .metric("sipshard_requests_received_total{method=\"OPTIONS\"}")
        .unwrap_or(0.0);
    let (code, json) = load(&["call", &target(&s), "--rate", "1000", "--total", "3000"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(field(&json, "started"), 3000.0);
    assert_eq!(field(&json, "completed"), 3000.0);
    assert_eq!(field(&json, "failed"), 0.0);
    assert_eq!(field(&json, "retransmissions"), 0.0);
    assert_eq!(field(&json, "timeouts"), 0.0);
    for exchange in ["invite_180", "invite_200", "bye_200"] {
        assert_eq!(
            field(latency(&json, exchange), "count"),
            3000.0,
            "{exchange}"
        );
    }
    // No 100 Trying from a responder that answers at once.
    assert!(!json.contains("invite_100"), "{json}");
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
    assert_eq!(m("sipshard_responses_sent_total{status=\"180\"}"), 3000.0);
    let options = m("sipshard_requests_received_total{method=\"OPTIONS\"}");
    assert_eq!(options, options_before);
    assert_eq!(
        m("sipshard_responses_sent_total{status=\"200\"}"),
        6000.0 + options
    );
    // Eight source ports: both shards answered calls.
    let text = s.metrics_text();
    let per_shard: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sipshard_datagrams_received_total{shard="))
        .collect();
    assert_eq!(per_shard.len(), 2, "{text}");
    for l in per_shard {
        let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v > 1000.0, "a shard got little traffic: {l}");
    }
}

#[test]
fn the_response_mix_shows_as_failures_by_status() {
    let s = ServerProcess::start_with(
        &[
            "--shards",
            "1",
            "--mode",
            "responder",
            "--mix",
            "200:50,486:30,503:20",
        ],
        true,
    );
    let (code, json) = load(&["call", &target(&s), "--rate", "1000", "--total", "2000"]);
    assert_eq!(code, 1, "failed calls make the exit code 1");
    let busy = field(&json, "486");
    let unavailable = field(&json, "503");
    let completed = field(&json, "completed");
    assert_eq!(completed + busy + unavailable, 2000.0, "{json}");
    assert_eq!(field(&json, "failed"), busy + unavailable);
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"486\"}"),
        Some(busy)
    );
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"503\"}"),
        Some(unavailable)
    );
    // The non-2xx finals were acknowledged (no retransmission of them).
    assert_eq!(field(&json, "retransmissions"), 0.0);
    assert_eq!(
        s.metric("sipshard_requests_received_total{method=\"ACK\"}"),
        Some(2000.0)
    );
}

#[test]
fn cancel_digest_and_responder_hangup_scenarios() {
    // call-cancel against a ringing responder.
    let s = ServerProcess::start_with(&["--mode", "responder", "--ring-ms", "5000"], true);
    let (code, json) = load(&[
        "call-cancel",
        &target(&s),
        "--rate",
        "500",
        "--total",
        "500",
    ]);
    assert_eq!((code, field(&json, "completed")), (0, 500.0), "{json}");
    assert_eq!(field(latency(&json, "cancel_200"), "count"), 500.0);
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"487\"}"),
        Some(500.0)
    );
    drop(s);
    // Digest calls: every INVITE challenged once (401), answered with the password.
    let s = ServerProcess::start_with(
        &[
            "--mode",
            "responder",
            "--user",
            "user0000:pw0000x",
            "--user",
            "user0001:pw0001x",
        ],
        true,
    );
    let (code, json) = load(&[
        "call",
        &target(&s),
        "--rate",
        "500",
        "--total",
        "500",
        "--aors",
        "2",
        "--password",
        "pw{n:04}x",
    ]);
    assert_eq!((code, field(&json, "completed")), (0, 500.0), "{json}");
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"401\"}"),
        Some(500.0)
    );
    drop(s);
    // The responder hangs up after 200 ms; the generator answers its BYE.
    let s = ServerProcess::start_with(&["--mode", "responder", "--hold-ms", "200"], true);
    let (code, json) = load(&[
        "call",
        &target(&s),
        "--rate",
        "500",
        "--total",
        "500",
        "--pause-ms",
        "10000",
    ]);
    assert_eq!((code, field(&json, "completed")), (0, 500.0), "{json}");
    assert_eq!(
        s.metric("sipshard_requests_sent_total{method=\"BYE\"}"),
        Some(500.0)
    );
    assert_eq!(s.metric("sipshard_responses_received_total"), Some(500.0));
}

#[test]
fn digest_registrations_against_the_registrar_match_its_metrics() {
    let dir = std::env::temp_dir().join(format!("sipshard-load-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users.txt");
    let text: String = (0..500)
        .map(|i| format!("user{i:04}:pw{i:04}x\n"))
        .collect();
    std::fs::write(&users, text).unwrap();
    // The registrar offers SHA-256 first: the generator answers it.
    let s = ServerProcess::start_with(
        &[
            "--shards",
            "2",
            "--users",
            users.to_str().unwrap(),
            "--auth-algorithms",
            "sha-256,md5",
        ],
        true,
    );
    let (code, json) = load(&[
        "register-digest",
        &target(&s),
        "--domain",
        "localhost",
        "--rate",
        "1000",
        "--total",
        "2000",
        "--aors",
        "500",
        "--password",
        "pw{n:04}x",
    ]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(field(&json, "completed"), 2000.0);
    assert_eq!(field(latency(&json, "register_200"), "count"), 2000.0);
    assert_eq!(
        s.metric("sipshard_requests_received_total{method=\"REGISTER\"}"),
        Some(4000.0)
    );
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"401\"}"),
        Some(2000.0)
    );
    assert_eq!(s.metric("sipshard_bindings"), Some(500.0));
    // A wrong password: every registration fails with 401, none binds anything new.
    let (code, json) = load(&[
        "register-digest",
        &target(&s),
        "--domain",
        "localhost",
        "--rate",
        "500",
        "--total",
        "100",
        "--password",
        "wrong",
    ]);
    assert_eq!((code, field(&json, "401")), (1, 100.0), "{json}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn calls_through_the_proxy_to_a_responder_trunk() {
    let responder = ServerProcess::start_with(&["--shards", "1", "--mode", "responder"], true);
    let dir = std::env::temp_dir().join(format!("sipshard-load-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "consolidate_below = 1\nspread_above = 1\n\n\
             [[trunk]]\nname = \"far\"\naddress = \"{}\"\ncheck_interval_ms = 0\n\n\
             [[route]]\nprefix = \"+49\"\ntrunks = [\"far\"]\n",
            responder.addr
        ),
    )
    .unwrap();
    // Consolidation at 1 % of a core: the calls start with both shards on one thread, and
    // shard 1 moves back to its own thread while they are in progress.
    let proxy =
        ServerProcess::start_with(&["--shards", "2", "--config", plan.to_str().unwrap()], true);
    proxy.wait_metric("sipshard_consolidated_shards", 1.0);
    let (code, json) = load(&[
        "call",
        &target(&proxy),
        "--domain",
        "localhost",
        "--callee",
        "+4930123456",
        "--rate",
        "500",
        "--total",
        "1000",
    ]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(field(&json, "completed"), 1000.0);
    let p = |series: &str| proxy.metric(series).unwrap_or(0.0);
    let r = |series: &str| responder.metric(series).unwrap_or(0.0);
    // Every request passed through the proxy (ACK and BYE by its Record-Route) to the
    // responder, once.
    for method in ["INVITE", "ACK", "BYE"] {
        let series = format!("sipshard_requests_received_total{{method=\"{method}\"}}");
        assert_eq!(p(&series), 1000.0, "proxy {method}");
        assert_eq!(r(&series), 1000.0, "responder {method}");
    }
    assert_eq!(r("sipshard_responses_sent_total{status=\"180\"}"), 1000.0);
    assert!(
        p("sipshard_shard_moves_total") >= 2.0,
        "no move during the calls"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Consolidation (src/shard/consolidation.rs): an idle two-shard server runs both shards on
/// shard 0's thread; load above `spread_above` gives shard 1 its own thread back, and quiet
/// brings it back to shard 0's. Nothing is lost across the moves.
#[test]
fn quiet_shards_share_a_thread_and_spread_out_under_load() {
    // 1 % of a core: any load spreads the shards, only an idle server consolidates.
    let cfg = config_file("consolidate_below = 1\nspread_above = 1\n");
    let s = ServerProcess::start_with(&["--shards", "2", "--config", &cfg], true);
    s.wait_metric("sipshard_consolidated_shards", 1.0);
    assert_eq!(s.metric("sipshard_shard_moves_total"), Some(1.0));
    // The start-up probe's OPTIONS got a 200 too.
    let ok_before = s
        .metric("sipshard_responses_sent_total{status=\"200\"}")
        .unwrap_or(0.0);
    let (code, json) = load(&[
        "register",
        &target(&s),
        "--rate",
        "3000",
        "--total",
        "9000",
        "--aors",
        "1000",
    ]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(field(&json, "completed"), 9000.0);
    assert_eq!(field(&json, "retransmissions"), 0.0, "{json}");
    let moves = s.metric("sipshard_shard_moves_total").unwrap_or(0.0);
    assert!(
        moves >= 2.0,
        "shard 1 never got its thread back: {moves} moves"
    );
    assert_eq!(
        s.metric("sipshard_requests_received_total{method=\"REGISTER\"}"),
        Some(9000.0)
    );
    assert_eq!(
        s.metric("sipshard_responses_sent_total{status=\"200\"}"),
        Some(ok_before + 9000.0)
    );
    assert_eq!(s.metric("sipshard_bindings"), Some(1000.0));
    // Quiet again: both shards on one thread, and the bindings are all still there.
    s.wait_metric("sipshard_consolidated_shards", 1.0);
    assert!(s.metric("sipshard_shard_moves_total").unwrap_or(0.0) >= moves + 1.0);
    assert_eq!(s.metric("sipshard_bindings"), Some(1000.0));
    // With `--consolidate off` nothing moves.
    let s = ServerProcess::start_with(&["--shards", "2", "--consolidate", "off"], true);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(s.metric("sipshard_consolidated_shards"), Some(0.0));
    assert_eq!(s.metric("sipshard_shard_moves_total"), Some(0.0));
}

/// While both shards run on one thread, a REGISTER shard 0 reads for an AOR shard 1 owns is
/// dispatched to shard 1's core at once, as parsed: it is counted as handed over, but nothing
/// waits in a hand-off queue (`handoff_queue` stage samples stay 0). With one thread per
/// shard the hand-offs go through the queue.
#[test]
fn consolidated_shards_take_what_they_own_without_a_queue() {
    let queued = |s: &ServerProcess| {
        s.metric("sipshard_stage_us_samples_total{stage=\"handoff_queue\"}")
            .unwrap_or(0.0)
    };
    let run = |s: &ServerProcess| {
        let (code, json) = load(&[
            "register",
            &target(s),
            "--rate",
            "300",
            "--total",
            "600",
            "--aors",
            "200",
        ]);
        assert_eq!(code, 0, "{json}");
        assert_eq!(field(&json, "completed"), 600.0, "{json}");
        assert_eq!(field(&json, "retransmissions"), 0.0, "{json}");
        assert_eq!(s.metric("sipshard_bindings"), Some(200.0));
    };
    // Thresholds no test load reaches: the shards stay together.
    let cfg = config_file("consolidate_below = 90\nspread_above = 99\n");
    let s = ServerProcess::start_with(&["--shards", "2", "--config", &cfg], true);
    s.wait_metric("sipshard_consolidated_shards", 1.0);
    // Without the steering program shard 1's socket keeps getting datagrams, and what it
    // reads for shard 0 (whose round comes first) goes through shard 0's queue.
    if !s.steering_or_skip("consolidated_shards_take_what_they_own_without_a_queue") {
        return;
    }
    run(&s);
    assert_eq!(s.metric("sipshard_consolidated_shards"), Some(1.0));
    let handed = s.metric("sipshard_handoffs_total").unwrap_or(0.0);
    assert!(
        (150.0..=450.0).contains(&handed),
        "about half of 600 REGISTERs belong to shard 1: {handed} handed over"
    );
    assert_eq!(queued(&s), 0.0, "consolidated hand-offs waited in a queue");
    // One thread per shard (and no steering, which would send most of them to their owner's
    // socket): the hand-offs wait in shard 1's queue.
    let s = ServerProcess::start_with(
        &["--shards", "2", "--consolidate", "off", "--steering", "off"],
        true,
    );
    run(&s);
    assert!(s.metric("sipshard_handoffs_total").unwrap_or(0.0) >= 150.0);
    assert!(queued(&s) >= 150.0, "{} queue samples", queued(&s));
}

/// Open loop: the target stops for a second (SIGSTOP) in the middle of the run; calls keep
/// starting on schedule, and the stall shows up as latency, retransmissions and timeouts.
#[test]
fn a_stalled_target_shows_up_as_latency_and_timeouts_not_as_a_lower_rate() {
    let s = ServerProcess::start(&["--shards", "1", "--mode", "responder"]);
    let pid = s.child.id().to_string();
    let gen = Command::new(binary())
        .arg("load")
        .args(["options", &target(&s), "--rate", "200", "--duration", "3"])
        .args(["--timeout-ms", "600", "--json", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let stopped = Instant::now();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let stall = stopped.elapsed();
    let out = gen.wait_with_output().unwrap();
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    // The offered load did not slow down: 600 requests in 3 s.
    assert_eq!(field(&json, "started"), 600.0, "{json}");
    assert!(field(&json, "elapsed_s") < 4.5, "{json}");
    // About a second of requests waited: those older than 600 ms timed out, the others were
    // answered late after retransmissions.
    let timeouts = field(&json, "timeouts");
    assert!(
        timeouts >= 50.0 && timeouts <= 200.0 * stall.as_secs_f64(),
        "{json}"
    );
    assert!(field(&json, "retransmissions") >= timeouts, "{json}");
    assert!(
        field(latency(&json, "options_200"), "max") >= 300_000.0,
        "{json}"
    );
    assert_eq!(field(&json, "completed") + timeouts, 600.0, "{json}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_options_exit_2_naming_the_option() {
    for (args, want) in [
        (&["dance", "127.0.0.1"][..], "scenario 'dance'"),
        (&["call", "127.0.0.1", "--rate", "0"][..], "--rate 0"),
        (
            &["call", "127.0.0.1", "--ramp", "10,x"][..],
            "--ramp '10,x'",
        ),
        (
            &["register-digest", "127.0.0.1"][..],
            "register-digest needs --password",
        ),
        (&["call", "not an address"][..], "target 'not an address'"),
        (&["call", "127.0.0.1", "--threads", "0"][..], "--threads 0"),
    ] {
        let out = Command::new(binary())
            .arg("load")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

/// The generator against Kamailio (perf/kamailio/registrar.cfg): REGISTER at a fixed rate.
#[test]
fn registrations_against_kamailio() {
    if Command::new("kamailio").arg("-v").output().is_err() {
        skip_or_fail(
            "registrations_against_kamailio",
            "kamailio not installed (apt-get install kamailio)",
            "SIPSHARD_REQUIRE_KAMAILIO",
        );
        return;
    }
    let port = free_port();
    let run = std::env::temp_dir().join(format!("sipshard-load-kam-{}", std::process::id()));
    std::fs::create_dir_all(&run).unwrap();
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/perf/kamailio/registrar.cfg");
    let mut kam = Command::new("kamailio")
        .args([
            "-f", cfg, "-DD", "-E", "-m", "64", "-M", "8", "-n", "1", "-Y",
        ])
        .arg(&run)
        .args(["-A", &format!("LISTEN=udp:127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start kamailio");
    // Ready when it answers OPTIONS.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        client.send(&options_to_server(&client, addr, "kam-ready"), addr);
        if client.recv_timeout(Duration::from_millis(200)).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "kamailio did not answer OPTIONS");
    }
    let (code, json) = load(&[
        "register",
        &addr.to_string(),
        "--rate",
        "500",
        "--total",
        "1000",
    ]);
    // SIGTERM: kamailio stops its worker processes too (SIGKILL would orphan them).
    let _ = Command::new("kill")
        .args(["-TERM", &kam.id().to_string()])
        .status();
    let _ = kam.wait();
    let _ = std::fs::remove_dir_all(&run);
    assert_eq!(code, 0, "{json}");
    assert_eq!(field(&json, "completed"), 1000.0);
    assert_eq!(field(latency(&json, "register_200"), "count"), 1000.0);
}
