//! The server as a whole, over real UDP on 127.0.0.1: OPTIONS, error responses for what is
//! not handled or malformed, the command-line contract (exit code 2 with one line), graceful
//! shutdown and the metrics endpoint.

mod common;

use common::*;
use sipshard::sip::{HeaderName, Message};
use std::process::Command;
use std::time::Duration;

fn request(method: &str, ruri: &str, c: &Client, extra: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {a};branch=z9hG4bK-{method}1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@localhost>;tag=a1\r\n\
         To: <sip:bob@localhost>\r\n\
         Call-ID: {method}-call@test\r\n\
         CSeq: 1 {method}\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n",
        a = c.addr
    )
}

#[test]
fn options_to_the_server_lists_capabilities() {
    let s = ServerProcess::start(&["--shards", "2"]);
    let c = Client::new();
    let r = c.request(&options_to_server(&c, s.addr, "opt1"), s.addr);
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.status(), Some(200));
    // Allow lists every method the server proxies, not only what it answers itself.
    let allow = String::from_utf8_lossy(m.header(HeaderName::Allow).unwrap()).into_owned();
    let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
    for method in [
        "INVITE",
        "ACK",
        "CANCEL",
        "BYE",
        "OPTIONS",
        "REGISTER",
        "MESSAGE",
        "INFO",
        "UPDATE",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "REFER",
        "PUBLISH",
    ] {
        assert!(
            listed.contains(&method),
            "{method} missing from Allow: {allow}"
        );
    }
    assert!(m.header(HeaderName::Accept).is_some());
    assert!(m.header(HeaderName::Supported).is_some());
    // RFC 3581: rport filled with our source port, received added.
    let via = m.top_via().unwrap();
    assert_eq!(via.rport(), Some(Some(c.addr.port())));
    assert_eq!(via.received(), Some(&b"127.0.0.1"[..]));
    assert!(m.to().unwrap().tag().is_some());
}

#[test]
fn malformed_requests_get_400_naming_the_problem() {
    let s = ServerProcess::start(&[]);
    let c = Client::new();
    // Body shorter than Content-Length.
    let bad = request("OPTIONS", &format!("sip:{}", s.addr), &c, "")
        .replace("Content-Length: 0", "Content-Length: 50");
    let r = c.request(&bad, s.addr);
    assert_eq!(status(&r), 400);
    assert!(reason(&r).contains("Content-Length"), "{}", reason(&r));
    // A bad Via parameter list.
    let bad = request(
        "OPTIONS",
        &format!("sip:{}", s.addr),
        &c,
        "Contact: <sip:x@y>;;\r\n",
    );
    let r = c.request(&bad, s.addr);
    assert_eq!(status(&r), 400);
    assert!(reason(&r).contains("Contact"), "{}", reason(&r));
    // CSeq out of range.
    let bad = request("OPTIONS", &format!("sip:{}", s.addr), &c, "")
        .replace("CSeq: 1 OPTIONS", "CSeq: 99999999999 OPTIONS");
    let r = c.request(&bad, s.addr);
    assert_eq!(status(&r), 400);
    assert!(reason(&r).contains("CSeq"), "{}", reason(&r));
    // Wrong SIP version.
    let bad =
        request("OPTIONS", &format!("sip:{}", s.addr), &c, "").replacen("SIP/2.0", "SIP/3.0", 1);
    assert_eq!(status(&c.request(&bad, s.addr)), 505);
    // Garbage without a Via is dropped; the server keeps serving.
    c.send_bytes(b"\x00\x01garbage\r\n\r\n", s.addr);
    c.send_bytes(b"\r\n", s.addr);
    c.expect_silence(Duration::from_millis(200));
    let r = c.request(&options_to_server(&c, s.addr, "after-garbage"), s.addr);
    assert_eq!(status(&r), 200);
}

#[test]
fn unhandled_requests_get_proper_errors() {
    let s = ServerProcess::start(&[]);
    let c = Client::new();
    let r = c.request(&request("FOO", "sip:bob@localhost", &c, ""), s.addr);
    assert_eq!(status(&r), 501);
    assert!(Message::parse(&r)
        .unwrap()
        .header(HeaderName::Allow)
        .is_some());
    let r = c.request(&request("INVITE", "mailto:bob@localhost", &c, ""), s.addr);
    assert_eq!(status(&r), 416);
    let r = c.request(&request("CANCEL", "sip:bob@localhost", &c, ""), s.addr);
    assert_eq!(status(&r), 481);
    let r = c.request(
        &request(
            "OPTIONS",
            &format!("sip:{}", s.addr),
            &c,
            "Require: foo, path\r\n",
        ),
        s.addr,
    );
    assert_eq!(status(&r), 420);
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.header(HeaderName::Unsupported), Some(&b"foo"[..]));
    // Another domain: no open relay.
    let r = c.request(&request("MESSAGE", "sip:bob@example.org", &c, ""), s.addr);
    assert_eq!(status(&r), 403);
    // A user of ours with no binding.
    let r = c.request(&request("INVITE", "sip:nobody@localhost", &c, ""), s.addr);
    assert_eq!(status(&r), 480);
    // ACK is never answered.
    c.send(&request("ACK", "sip:bob@localhost", &c, ""), s.addr);
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn responses_go_to_the_via_port_without_rport() {
    let s = ServerProcess::start(&[]);
    let sender = Client::new();
    let listener = Client::new();
    // Sent from one port, Via names another and has no rport: §18.2.2 says reply there.
    let msg = format!(
        "OPTIONS sip:{srv} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bKviaport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@localhost>;tag=1\r\nTo: <sip:{srv}>\r\n\
         Call-ID: viaport\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        srv = s.addr,
        p = listener.addr.port()
    );
    sender.send(&msg, s.addr);
    let r = listener
        .recv_timeout(Duration::from_secs(3))
        .expect("response at the Via port");
    assert_eq!(status(&r), 200);
    sender.expect_silence(Duration::from_millis(100));
}

#[test]
fn sigterm_stops_gracefully() {
    let mut s = ServerProcess::start(&["--shards", "2"]);
    let st = s.terminate();
    assert!(st.success(), "exit status {st:?}");
}

#[test]
fn keepalives_are_answered_stun_and_double_crlf() {
    let s = ServerProcess::start(&["--shards", "2"]);
    let c = Client::new();
    // RFC 5626 §4.4.1: a double CRLF ping gets a CRLF pong (and a lone CRLF nothing).
    c.send_bytes(b"\r\n\r\n", s.addr);
    assert_eq!(
        c.recv_timeout(Duration::from_secs(3)).as_deref(),
        Some(&b"\r\n"[..])
    );
    c.send_bytes(b"\r\n", s.addr);
    c.expect_silence(Duration::from_millis(200));
    // RFC 5626 §4.4.2: a STUN Binding request gets our view of its address.
    let mut req = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(b"txn-id-12345");
    c.send_bytes(&req, s.addr);
    let r = c.recv_timeout(Duration::from_secs(3)).expect("STUN answer");
    assert_eq!(&r[0..2], &[1, 1], "Binding success");
    assert_eq!(&r[8..20], b"txn-id-12345");
    let port = u16::from_be_bytes([r[26], r[27]]) ^ 0x2112;
    let ip: Vec<u8> = r[28..32]
        .iter()
        .zip([0x21, 0x12, 0xa4, 0x42])
        .map(|(a, k)| a ^ k)
        .collect();
    assert_eq!((ip, port), (vec![127, 0, 0, 1], c.addr.port()));
    // And SIP goes on as before.
    let r = c.request(&options_to_server(&c, s.addr, "after-keepalive"), s.addr);
    assert_eq!(status(&r), 200);
}

#[test]
fn a_second_server_on_a_served_address_refuses_to_start() {
    let s = ServerProcess::start(&["--shards", "2"]);
    let listen = format!("udp:{}", s.addr);
    let (code, err) = run_bad(&["--listen", &listen, "--shards", "1"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&listen) && err.contains("already in use"),
        "{err}"
    );
    // The first server still has all the traffic.
    let c = Client::new();
    for i in 0..20 {
        let r = c.request(
            &request(
                "OPTIONS",
                &format!("sip:{}", s.addr),
                &c,
                &format!("X-N: {i}\r\n"),
            ),
            s.addr,
        );
        assert_eq!(status(&r), 200);
    }
}

fn run_bad(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_config_exit_2_with_one_line() {
    for (args, needle) in [
        (vec!["--shards", "zero"], "--shards"),
        (vec!["--listen", "sctp:127.0.0.1:5060"], "--listen"),
        // A wss address without its certificate, named.
        (
            vec![
                "--listen",
                "udp:127.0.0.1:5060",
                "--listen",
                "wss:127.0.0.1:5061",
            ],
            "--tls-cert",
        ),
        (vec!["--bogus"], "--bogus"),
        (vec!["--listen", "0.0.0.0:5999"], "without authentication"),
        (vec!["--users", "/nonexistent/users.txt"], "--users"),
        (vec!["--mode", "teleport"], "--mode"),
        (vec!["--forking", "random"], "--forking 'random'"),
        (vec!["--cdr", "kafka:topic"], "--cdr 'kafka:topic'"),
        (vec!["--cdr", "csv:"], "the file path is missing"),
        (
            vec!["--cdr", "postgres:postgres://db/x"],
            "needs --data-dir",
        ),
        (
            vec!["--cdr", "x.jsonl", "--cdr-max-call-minutes", "0"],
            "--cdr-max-call-minutes '0'",
        ),
        // The shared store (issue 21): its URL and the node name, each named.
        (
            vec!["--store", "memcached://127.0.0.1:11211"],
            "--store 'memcached://127.0.0.1:11211': expected redis://",
        ),
        (
            vec!["--store", "redis://127.0.0.1"],
            "--store 'redis://127.0.0.1': '127.0.0.1': expected HOST:PORT",
        ),
        (vec!["--node", "a"], "--node: needs --store"),
        (
            vec!["--store", "redis://127.0.0.1:6379", "--node", "two words"],
            "--node 'two words'",
        ),
    ] {
        let (code, err) = run_bad(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sipshard-t-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "shards = 1\nlisten = [\"udp:127.0.0.1:5998\"]\nnot_a_key = true\n",
    )
    .unwrap();
    let (code, err) = run_bad(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 3") && err.contains("not_a_key"), "{err}");
    std::fs::write(&cfg, "[proxy]\nforking = \"serial\"\n").unwrap();
    let (code, err) = run_bad(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("proxy.forking 'serial'"), "{err}");
    let users = dir.join("users.txt");
    std::fs::write(&users, "alice:secret\nbroken-line\n").unwrap();
    let (code, err) = run_bad(&[
        "--users",
        users.to_str().unwrap(),
        "--listen",
        "127.0.0.1:5997",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":2") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn metrics_endpoint_counts_traffic() {
    let s = ServerProcess::start_with(&["--shards", "2"], true);
    let c = Client::new();
    for i in 0..5 {
        let r = c.request(&options_to_server(&c, s.addr, &format!("m{i}")), s.addr);
        assert_eq!(status(&r), 200);
    }
    c.send_bytes(b"garbage", s.addr);
    std::thread::sleep(Duration::from_millis(150));
    let text = s.metrics_text();
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    // The readiness probe also sent OPTIONS, so at least 5.
    let opts = s
        .metric("sipshard_requests_received_total{method=\"OPTIONS\"}")
        .unwrap();
    assert!(opts >= 5.0, "{opts}");
    assert!(
        s.metric("sipshard_responses_sent_total{status=\"200\"}")
            .unwrap()
            >= 5.0
    );
    assert_eq!(
        s.metric("sipshard_dropped_total{reason=\"malformed\"}"),
        Some(1.0)
    );
    assert!(s.metric("sipshard_latency_us_count").unwrap() >= 5.0);
    assert!(text.contains("sipshard_latency_us_bucket{le=\"+Inf\"}"));
}

/// Starts the binary with `args` plus `--log info`, stderr read line by line, and waits for
/// the "sipshard ready" line. Returns the server (answering OPTIONS) and every log line up to
/// and including the ready line.
fn start_logged(args: &[&str]) -> (ServerProcess, Vec<String>) {
    use std::io::BufRead;
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(binary())
        .args(["--listen", &format!("udp:{addr}")])
        .args(["--metrics", &metrics.to_string()])
        .args(args)
        .args(["--log", "info"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let s = ServerProcess {
        child,
        addr,
        metrics: Some(metrics),
    };
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no 'sipshard ready' line; log so far: {lines:#?}"));
        let ready = line.contains("sipshard ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    while std::net::TcpStream::connect_timeout(&metrics, Duration::from_millis(100)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    (s, lines)
}

/// `--io uring` really runs on io_uring: the ready line says `io="uring"` and no shard logged
/// the fallback to recvmmsg/sendmmsg; registration and OPTIONS work through it. Where
/// io_uring is unavailable the server falls back, and this test says SKIPPED (or fails with
/// SIPSHARD_REQUIRE_URING=1, as in CI).
#[test]
fn io_uring_backend_serves_register_and_options() {
    let (s, log) = start_logged(&["--io", "uring", "--shards", "2"]);
    let ready = log.last().unwrap();
    let fell_back = log.iter().find(|l| l.contains("falling back"));
    if let Some(why) = fell_back {
        assert!(ready.contains("io=\"mmsg\""), "{ready}");
        skip_or_fail(
            "io_uring_backend_serves_register_and_options",
            &format!("the server fell back from io_uring: {why}"),
            "SIPSHARD_REQUIRE_URING",
        );
        return;
    }
    assert!(ready.contains("io=\"uring\""), "ready line: {ready}");
    let c = Client::new();
    let r = c.request(&options_to_server(&c, s.addr, "uring-opt"), s.addr);
    assert_eq!(status(&r), 200);
    for user in ["u1", "u2", "u3", "u4"] {
        let reg = Register::new(&format!("sip:{user}@localhost"))
            .contact(&format!("<sip:{user}@{}>", c.addr))
            .expires(600);
        assert_eq!(status(&reg.send(&c, s.addr)), 200, "{user}");
    }
    assert_eq!(s.metric("sipshard_bindings"), Some(4.0));
    // Listing a binding goes through the owner shard (a hand-off for half the AORs).
    let query = Register::new("sip:u3@localhost");
    let r = query.send(&c, s.addr);
    assert_eq!(status(&r), 200);
    assert!(String::from_utf8_lossy(&r).contains("sip:u3@"));
}

/// Datagrams the kernel refuses to send are counted in
/// `sipshard_dropped_total{reason="send_error"}`, with either backend: a binding at the
/// broadcast address (sending there needs SO_BROADCAST, which the server does not set) gets
/// the forwarded MESSAGE, and every attempt fails.
#[test]
fn send_errors_are_counted_in_the_metrics() {
    for io in ["mmsg", "uring"] {
        let s = ServerProcess::start_with(&["--io", io, "--shards", "1"], true);
        let c = Client::new();
        for reason in ["truncated", "send_error", "recv_error", "no_buffers"] {
            assert_eq!(
                s.metric(&format!("sipshard_dropped_total{{reason=\"{reason}\"}}")),
                Some(0.0),
                "{io} {reason}"
            );
        }
        let reg = Register::new("sip:bcast@localhost")
            .contact("<sip:bcast@255.255.255.255:5060>")
            .expires(600);
        assert_eq!(status(&reg.send(&c, s.addr)), 200);
        let msg = request("MESSAGE", "sip:bcast@localhost", &c, "");
        c.send(&msg, s.addr);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let n = s
                .metric("sipshard_dropped_total{reason=\"send_error\"}")
                .unwrap();
            if n >= 1.0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{io}: no send error counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The example configuration as shipped starts the real server (listen and metrics moved to
/// test ports by flags), which answers OPTIONS; `--help` names every flag and points to it.
#[test]
fn example_config_starts_the_server() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/sipshard.toml");
    let s = ServerProcess::start_with(&["--config", example], true);
    let c = Client::new();
    let r = c.request(&options_to_server(&c, s.addr, "example-opt"), s.addr);
    assert_eq!(status(&r), 200);
    assert!(
        s.metric("sipshard_requests_received_total{method=\"OPTIONS\"}")
            .unwrap()
            >= 1.0
    );
    let out = Command::new(binary()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("sipshard.toml"), "{help}");
    assert!(help.contains("/etc/sipshard/sipshard.toml"), "{help}");
    for flag in [
        "--config",
        "--listen",
        "--io",
        "--strict-digest-uri",
        "--branch-timeout-ms",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
}
