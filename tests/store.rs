//! The binding store under `kill -9` (issue 18): with `--durability sync`, a REGISTER whose
//! 200 left the server is never lost, wherever the kill lands. A client registers new AORs as
//! fast as the server answers; the server is killed at a random moment, started again on the
//! same data directory, and every AOR acknowledged so far (in this round and the ones before)
//! must still have its binding. The seed is printed, so a failure can be replayed
//! (SIPSHARD_STORE_SEED).

mod common;

use common::*;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Registers `r{round}u{i}` for i = 0, 1, ... against `server` until `stop`, 16 requests at a
/// time; every AOR whose 200 arrives goes into `acked`.
fn register_until(server: std::net::SocketAddr, round: u32, stop: Arc<AtomicBool>) -> Vec<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    let local = sock.local_addr().unwrap();
    let mut acked = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..16 {
            let user = format!("r{round}u{i}");
            i += 1;
            let msg = format!(
                "REGISTER sip:localhost SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch=z9hG4bK-{user}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@localhost>;tag=t\r\n\
                 To: <sip:{user}@localhost>\r\nCall-ID: k-{user}\r\nCSeq: 1 REGISTER\r\n\
                 Contact: <sip:{user}@{local}>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = sock.send_to(msg.as_bytes(), server);
        }
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if !text.starts_with("SIP/2.0 200") {
                continue;
            }
            if let Some(user) = text
                .lines()
                .find_map(|l| l.strip_prefix("Call-ID: k-"))
                .map(str::trim)
            {
                acked.push(user.to_owned());
            }
        }
    }
    acked
}

/// Every AOR in `acked` has a binding on `server` (a query REGISTER lists a Contact).
fn assert_bound(server: &ServerProcess, acked: &[String], round: u32, seed: u64) {
    let client = Client::new();
    for user in acked {
        let q = Register::new(&format!("sip:{user}@localhost")).build(&client);
        let resp = client.request(&q, server.addr);
        let text = String::from_utf8_lossy(&resp);
        assert!(
            text.starts_with("SIP/2.0 200") && text.contains("\r\nContact: <sip:"),
            "round {round} (seed {seed}): the acknowledged binding of {user} is lost:\n{text}"
        );
    }
}

#[test]
fn sync_durability_never_loses_an_acknowledged_binding() {
    let seed: u64 = std::env::var("SIPSHARD_STORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("sync_durability_never_loses_an_acknowledged_binding: seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let data = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sipshard-store-sync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let data_arg = data.to_str().unwrap().to_owned();
    let args = [
        "--data-dir",
        data_arg.as_str(),
        "--durability",
        "sync",
        "--shards",
        "2",
    ];
    let mut all: Vec<String> = Vec::new();
    for round in 0..4u32 {
        let mut s = ServerProcess::start(&args);
        assert_bound(&s, &all, round, seed);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (addr, flag, sink) = (s.addr, stop.clone(), acked.clone());
        let client = std::thread::spawn(move || {
            let got = register_until(addr, round, flag);
            sink.lock().unwrap().extend(got);
        });
        // The kill lands anywhere from the first requests to well into the load.
        let wait = Duration::from_millis(50 + next() % 700);
        let started = Instant::now();
        std::thread::sleep(wait);
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap();
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        eprintln!(
            "round {round}: killed after {} ms, {} registrations acknowledged",
            started.elapsed().as_millis(),
            acked.len()
        );
        assert!(!acked.is_empty(), "round {round}: nothing was acknowledged");
        all.extend(acked);
    }
    let s = ServerProcess::start(&args);
    assert_bound(&s, &all, 4, seed);
    drop(s);
    let _ = std::fs::remove_dir_all(&data);
}
