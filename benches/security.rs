//! What edge security costs per datagram, without sockets (`perf/security-cost.py` measures
//! whole processes, with Kamailio's pike next to it):
//!
//! - `admit_banned`: a datagram from a banned address, through `Core::handle` (dropped before
//!   parsing; the bound is 1 µs);
//! - `admit_tracked`: the guard's look at a request from a tracked, allowed source (flood
//!   counting and a 4-entry ACL), alone;
//! - `admit_off`: the same with `[security] enabled = false`;
//! - `scanner_check`: the User-Agent match of a request that is not a scanner's;
//! - `topology_hide_invite`, `topology_unhide_200`, `topology_restore_bye`: topology hiding's
//!   rewrite of a forwarded INVITE (two Vias, a Record-Route, a Contact and the Call-ID
//!   sealed), of the 200 going back, and the opening of the callee's BYE (Request-URI and
//!   Route): what hiding adds to a call's messages (`perf/security-cost.py --topology` the
//!   whole call).
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
        &[addr(LISTEN).into()],
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
    topology(c);
}

/// Topology hiding's rewrites of one call's messages.
fn topology(c: &mut Criterion) {
    use sipshard::proxy::topology::Hider;
    use sipshard::sip::{HeaderName, Message, Uri};
    let h = Hider::new(b"a benchmark topology key");
    let ours = |u: &Uri<'_>| u.host == b"127.0.0.1" && u.port == Some(5060);
    let invite = b"INVITE sip:bob@192.0.2.20:5062 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ss0.0123456789abcdef.1\r\n\
Record-Route: <sip:127.0.0.1:5060;lr;ss=0>\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.1\r\n\
Max-Forwards: 69\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
To: <sip:bob@example.com>\r\nCall-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.1:5060>\r\nUser-Agent: baresip v1.0.0\r\n\
Content-Type: application/sdp\r\nContent-Length: 0\r\n\r\n";
    let fwd = Message::parse(invite).unwrap();
    let mut hidden = Vec::new();
    h.hide_request(&fwd, "127.0.0.1:5060", &ours, &mut hidden);
    let mut out = Vec::with_capacity(2048);
    c.bench_function("topology_hide_invite", |b| {
        b.iter(|| {
            out.clear();
            h.hide_request(black_box(&fwd), "127.0.0.1:5060", &ours, &mut out);
        })
    });
    let inv = Message::parse(&hidden).unwrap();
    let text = |n| String::from_utf8_lossy(inv.header(n).unwrap()).into_owned();
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nRecord-Route: {}\r\nFrom: {}\r\n\
         To: <sip:bob@example.com>;tag=b1\r\nCall-ID: {}\r\nCSeq: 314159 INVITE\r\n\
         Contact: <sip:bob@192.0.2.20:5062>\r\nContent-Length: 0\r\n\r\n",
        text(HeaderName::Via),
        text(HeaderName::RecordRoute),
        text(HeaderName::From),
        text(HeaderName::CallId)
    );
    let ok = Message::parse(ok.as_bytes()).unwrap();
    c.bench_function("topology_unhide_200", |b| {
        b.iter(|| {
            out.clear();
            assert!(h.hide_response(black_box(&ok), "127.0.0.1:5060", &ours, &mut out));
        })
    });
    let bye = format!(
        "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKbye\r\n\
         Route: {}\r\nMax-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b1\r\n\
         To: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(inv.contacts().next().unwrap().unwrap().uri_raw),
        text(HeaderName::RecordRoute),
        text(HeaderName::From),
        text(HeaderName::CallId)
    );
    let bye = Message::parse(bye.as_bytes()).unwrap();
    c.bench_function("topology_restore_bye", |b| {
        b.iter(|| {
            out.clear();
            assert!(h.restore_request(black_box(&bye), &ours, &mut out));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
