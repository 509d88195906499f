//! Drives the sans-I/O core with REGISTERs (no sockets) to measure the user-space cost of one
//! registration: `cargo build --release --example core_register` then
//! `target/release/examples/core_register 100000` (no auth), or with a second argument
//! `digest`: each registration is a REGISTER, its 401, and the REGISTER with MD5 credentials
//! built in advance from that challenge (what SIPp does), timed together.
//!
//! Only the loop in [`timed`] is timed; the setup (building requests, answering the
//! challenges with `client_response`) happens before it. Every credentialed REGISTER is
//! legitimately fresh: its nonce was issued by this core at the time the loop sends it and
//! its nc (1) was never used, and the nonce-count table is sized to hold all of them, so each
//! one gets a 200 (checked: the run fails otherwise).
//!
//! Profiling only the timed part:
//! - callgrind: `valgrind --tool=callgrind --toggle-collect='*core_register::timed*' \
//!   target/release/examples/core_register 20000 digest`;
//! - perf: `perf record -k CLOCK_MONOTONIC -e cpu-clock -F 20000 -g ...core_register 200000
//!   digest`, then `perf report --time START,END` with the two CLOCK_MONOTONIC times printed.

use sipshard::auth::client::first_supported_challenge;
use sipshard::auth::replay::DEFAULT_MAX_TRACKED;
use sipshard::auth::{client_response, Algorithm, Authenticator, UserDb};
use sipshard::proxy::settings::Mode;
use sipshard::registrar::RegistrarSettings;
use sipshard::server::outbox::Outbox;
use sipshard::server::{Core, CoreConfig};
use sipshard::sip::{HeaderName, Message};
use sipshard::stats::ShardStats;
use std::net::SocketAddr;
use std::sync::Arc;

/// The clock of the loop: 10 registrations per millisecond.
fn now_of(i: usize) -> u64 {
    1_000_000 + i as u64 / 10
}

/// CLOCK_MONOTONIC in seconds (what `perf record -k CLOCK_MONOTONIC` stamps samples with).
fn monotonic_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The timed loop: each first REGISTER, then (digest) its credentialed retry. Returns the
/// number of responses per status code (100 to 699).
#[inline(never)]
fn timed(
    core: &mut Core,
    msgs: &[Vec<u8>],
    second: &[Vec<u8>],
    src: SocketAddr,
    out: &mut Outbox,
) -> Vec<u64> {
    let mut by_status = vec![0u64; 700];
    for (i, m) in msgs.iter().enumerate() {
        let now = now_of(i);
        core.handle(m, src, 0, now, false, out);
        if let Some(m2) = second.get(i) {
            core.handle(m2, src, 0, now, false, out);
        }
        for item in out.items() {
            let b = out.bytes(item);
            let code = b
                .get(8..12)
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(0);
            by_status[code.min(699)] += 1;
        }
        out.clear();
    }
    by_status
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let digest = std::env::args().nth(2).as_deref() == Some("digest");
    let cfg = Arc::new(CoreConfig {
        domains: vec!["localhost".into()],
        local_addrs: vec!["127.0.0.1:5060".parse().unwrap()],
        shards: 1,
        mode: Mode::Proxy,
        registrar: RegistrarSettings::default(),
        proxy: Default::default(),
        routing: Arc::new(sipshard::routing::DialPlan::empty()),
        responder: Default::default(),
        security: Default::default(),
        overload: Default::default(),
    });
    let auth = digest.then(|| {
        let mut db = UserDb::new("localhost");
        for u in 0..20_000 {
            db.add_password(&format!("user{u:05}"), &format!("pw{u:05}"))
                .unwrap();
        }
        Authenticator::new("localhost", Arc::new(db), [7; 32], 300)
            .with_algorithms(&[Algorithm::Md5])
            // Every nonce of the run stays tracked (no replay-table eviction in the loop).
            .with_max_tracked(n.max(DEFAULT_MAX_TRACKED))
    });
    let mut core = Core::new(0, cfg, Arc::new(ShardStats::default()), auth, &[]);
    let src = "127.0.0.1:5072".parse().unwrap();
    let register = |i: usize, cseq: u32, auth: &str| {
        let u = i % 20_000;
        format!(
            "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bK-1234-{i}-{cseq}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:user{u:05}@127.0.0.1>;tag=1234r{i}\r\n\
             To: <sip:user{u:05}@127.0.0.1>\r\n\
             Call-ID: {i}-1234@127.0.0.1\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:user{u:05}@127.0.0.1:5072>\r\n\
             Expires: 3600\r\n\
             {auth}\
             User-Agent: sipp-sipshard\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    let mut out = Outbox::new();
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| register(i, 1, "")).collect();
    // Digest: answer each first REGISTER's 401 now, outside the timed loop. The nonce is
    // issued at the time the loop sends the answer, as a client answering at once would see.
    let second: Vec<Vec<u8>> = if digest {
        msgs.iter()
            .enumerate()
            .map(|(i, m)| {
                core.handle(m, src, 0, now_of(i), false, &mut out);
                let item = out.items()[0];
                let resp = Message::parse(out.bytes(&item)).unwrap();
                let ch = first_supported_challenge(&resp, HeaderName::WwwAuthenticate).unwrap();
                let u = i % 20_000;
                let value = client_response(
                    &ch,
                    &format!("user{u:05}"),
                    &format!("pw{u:05}"),
                    b"REGISTER",
                    b"sip:127.0.0.1:5060",
                    1,
                    "0a4f113b",
                )
                .unwrap();
                out.clear();
                register(i, 2, &format!("Authorization: {value}\r\n"))
            })
            .collect()
    } else {
        Vec::new()
    };
    let t0 = monotonic_s();
    let start = std::time::Instant::now();
    let by_status = timed(&mut core, &msgs, &second, src, &mut out);
    let el = start.elapsed();
    let t1 = monotonic_s();
    let sent: u64 = by_status.iter().sum();
    let statuses: Vec<String> = by_status
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(s, c)| format!("{c} x {s}"))
        .collect();
    eprintln!(
        "{n} registrations{}, {sent} responses ({}), {:.0} ns each",
        if digest { " with digest" } else { "" },
        statuses.join(", "),
        el.as_nanos() as f64 / n as f64
    );
    eprintln!("timed loop (CLOCK_MONOTONIC, for perf report --time): {t0:.6},{t1:.6}");
    let ok = by_status[200] == n as u64 && (!digest || by_status[401] == n as u64);
    assert!(
        ok,
        "expected {n} x 200{}: the loop did not measure what it claims",
        if digest {
            format!(" and {n} x 401")
        } else {
            String::new()
        }
    );
}
