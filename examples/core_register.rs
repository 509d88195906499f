//! Drives the sans-I/O core with REGISTERs (no sockets) to profile the user-space cost of one
//! registration: `cargo build --release --example core_register` then
//! `valgrind --tool=callgrind target/release/examples/core_register 20000` (no auth), or with
//! a second argument `digest`: each registration is a REGISTER, its 401, and the REGISTER
//! with MD5 credentials built in advance from that challenge (what SIPp does), timed together.

use sipshard::auth::client::first_supported_challenge;
use sipshard::auth::{client_response, Algorithm, Authenticator, UserDb};
use sipshard::config::{Mode, RegistrarSettings};
use sipshard::metrics::ShardStats;
use sipshard::server::outbox::Outbox;
use sipshard::server::{Core, CoreConfig};
use sipshard::sip::{HeaderName, Message};
use std::sync::Arc;

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
    });
    let auth = digest.then(|| {
        let mut db = UserDb::new("localhost");
        for u in 0..20_000 {
            db.add_password(&format!("user{u:05}"), &format!("pw{u:05}"))
                .unwrap();
        }
        Authenticator::new("localhost", Arc::new(db), [7; 32], 300)
            .with_algorithms(&[Algorithm::Md5])
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
    // Digest: answer each first REGISTER's 401 now, outside the timed loop.
    let second: Vec<Vec<u8>> = if digest {
        msgs.iter()
            .enumerate()
            .map(|(i, m)| {
                core.handle(m, src, 0, 1_000_000, false, &mut out);
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
    let start = std::time::Instant::now();
    let mut sent = 0;
    for (i, m) in msgs.iter().enumerate() {
        let now = 1_000_000 + i as u64 / 10;
        core.handle(m, src, 0, now, false, &mut out);
        if let Some(m2) = second.get(i) {
            core.handle(m2, src, 0, now, false, &mut out);
        }
        sent += out.len();
        out.clear();
    }
    let el = start.elapsed();
    eprintln!(
        "{n} registrations{}, {sent} responses, {:.0} ns each",
        if digest { " with digest" } else { "" },
        el.as_nanos() as f64 / n as f64
    );
}
