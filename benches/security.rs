//! What edge security costs per datagram, without sockets (`perf/security-cost.py` measures
//! whole processes, with Kamailio's pike next to it):
//!
//! - `admit_banned`: a datagram from a banned address, through `Core::handle` (dropped before
//!   parsing; the bound is 1 µs);
//! - `admit_tracked`: the guard's look at a request from a tracked, allowed source (flood
//!   counting and a 4-entry ACL), alone;
//! - `admit_off`: the same with `[security] enabled = false`;
//! - `scanner_check`: the User-Agent match of a request that is not a scanner's.
//!
//! `flock /tmp/bench.lock cargo bench --bench security`

use criterion::{criterion_group, criterion_main, Criterion};
use sipshard::proxy::settings::Mode;
use sipshard::security::{Guard, SecuritySettings};
use sipshard::server::outbox::Outbox;
use sipshard::server::{Core, CoreConfig};
use sipshard::stats::ShardStats;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

const LISTEN: &str = "127.0.0.1:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn core(security: SecuritySettings) -> Core {
    let cfg = CoreConfig {
        security: Arc::new(security),
        ..CoreConfig::single("127.0.0.1", addr(LISTEN), Mode::Proxy)
    };
    Core::new(
        0,
        Arc::new(cfg),
        Arc::new(ShardStats::default()),
        None,
        &[addr(LISTEN)],
    )
}

fn options(src: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bKb1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n\
         Call-ID: b1\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn with_acl() -> SecuritySettings {
    SecuritySettings {
        allow: vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ],
        deny: vec![
            "192.0.2.0/24".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
        ],
        ..SecuritySettings::default()
    }
}

fn bench(c: &mut Criterion) {
    // A scanner's OPTIONS bans 127.0.0.3; then every datagram from it is dropped.
    let banned = addr("127.0.0.3:5070");
    let mut core = core(SecuritySettings::default());
    let msg = options("127.0.0.3:5070");
    let mut out = Outbox::new();
    core.handle(&msg, banned, 0, 1_000, false, &mut out);
    assert!(out.is_empty(), "the scanner got no answer");
    let mut now = 1_000;
    c.bench_function("admit_banned", |b| {
        b.iter(|| {
            now += 1;
            core.handle(black_box(&msg), banned, 0, now, false, &mut out);
        });
        assert!(out.is_empty());
    });

    let stats = Arc::new(ShardStats::default());
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    for (name, settings) in [
        ("admit_tracked", with_acl()),
        ("admit_off", SecuritySettings::off()),
    ] {
        let mut g = Guard::new(Arc::new(settings), Arc::default(), stats.clone());
        let mut now = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                // 100 requests a second: never over the flood limit.
                now += 10;
                black_box(g.admit(black_box(ip), 0, true, now))
            })
        });
    }

    let mut g = Guard::new(Arc::default(), Arc::default(), stats);
    c.bench_function("scanner_check", |b| {
        b.iter(|| black_box(g.is_scanner(black_box(b"Linphone/5.2.0 (belle-sip/5.2.0)"), ip, 0)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
