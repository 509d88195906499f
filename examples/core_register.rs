//! Drives the sans-I/O core with REGISTERs (no sockets) to profile the user-space cost of one
//! registration: `cargo build --release --example core_register` then
//! `valgrind --tool=callgrind target/release/examples/core_register 20000`.

use sipshard::config::{Mode, RegistrarSettings};
use sipshard::metrics::ShardStats;
use sipshard::server::outbox::Outbox;
use sipshard::server::{Core, CoreConfig};
use std::sync::Arc;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let cfg = Arc::new(CoreConfig {
        domains: vec!["localhost".into()],
        local_addrs: vec!["127.0.0.1:5060".parse().unwrap()],
        shards: 1,
        mode: Mode::Proxy,
        registrar: RegistrarSettings::default(),
        proxy: Default::default(),
    });
    let mut core = Core::new(0, cfg, Arc::new(ShardStats::default()), None, &[]);
    let src = "127.0.0.1:5072".parse().unwrap();
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let u = i % 20_000;
            format!(
                "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bK-1234-{i}-0\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:user{u:05}@127.0.0.1>;tag=1234r{i}\r\n\
                 To: <sip:user{u:05}@127.0.0.1>\r\n\
                 Call-ID: {i}-1234@127.0.0.1\r\n\
                 CSeq: 1 REGISTER\r\n\
                 Contact: <sip:user{u:05}@127.0.0.1:5072>\r\n\
                 Expires: 3600\r\n\
                 User-Agent: sipp-sipshard\r\n\
                 Content-Length: 0\r\n\r\n"
            )
            .into_bytes()
        })
        .collect();
    let mut out = Outbox::new();
    let start = std::time::Instant::now();
    let mut sent = 0;
    for (i, m) in msgs.iter().enumerate() {
        core.handle(m, src, 0, 1_000_000 + i as u64 / 10, false, &mut out);
        sent += out.len();
        out.clear();
    }
    let el = start.elapsed();
    eprintln!(
        "{n} REGISTERs, {sent} responses, {:.0} ns each",
        el.as_nanos() as f64 / n as f64
    );
}
