//! The server side of digest authentication, one operation at a time, load-robust: each
//! operation runs in short batches round-robin and the fastest batch is reported (ns per
//! operation), i.e. the time when the benchmark was not preempted (as `benches/parse_min.rs`).
//!
//! - `parse`: `AuthHeader::parse` of a SIPp-style Authorization value (what validation does);
//! - `parse_digest`: `AuthHeader::parse_digest` of it (what the authenticator does);
//! - `challenge`: `Authenticator::write_challenge` of one MD5 challenge (nonce included);
//! - `check`: `Authenticator::check` of a parsed REGISTER with valid MD5 credentials. Each
//!   request is legitimately fresh: the batch's requests answer one challenge with nc
//!   1, 2, 3, ... (built before the batch is timed), so none is a replay;
//! - `check_unknown`: the same for a user who does not exist (a challenge, same hashing).
//!
//! `flock /tmp/bench.lock cargo bench --bench digest_min` (env `DIGEST_MIN_ROUNDS`, default
//! 3000).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use sipshard::auth::client::first_supported_challenge;
use sipshard::auth::{client_response, Algorithm, AuthOutcome, Authenticator, UserDb};
use sipshard::sip::{AuthHeader, HeaderName, Message};

const BATCH: usize = 32;
const NOW: u64 = 1_700_000_000_000;

fn request(user: &str, authz: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bK-1234-1-2\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@127.0.0.1>;tag=1234r1\r\n\
         To: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: 1-1234@127.0.0.1\r\n\
         CSeq: 2 REGISTER\r\n\
         Contact: <sip:{user}@127.0.0.1:5072>\r\n\
         Expires: 3600\r\n\
         Authorization: {authz}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// `BATCH` requests answering one fresh challenge of `auth` with nc = 1, 2, ...
fn fresh_batch(auth: &Authenticator, user: &str, pw: &str) -> Vec<Vec<u8>> {
    let mut head = b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
        From: <sip:a@h>;tag=1\r\nTo: <sip:a@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
        .to_vec();
    auth.write_challenge(&mut head, "WWW-Authenticate", false, NOW);
    head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    let resp = Message::parse(&head).unwrap();
    let ch = first_supported_challenge(&resp, HeaderName::WwwAuthenticate).unwrap();
    (1..=BATCH as u32)
        .map(|nc| {
            let v = client_response(
                &ch,
                user,
                pw,
                b"REGISTER",
                b"sip:127.0.0.1:5060",
                nc,
                "0a4f113b",
            )
            .unwrap();
            request(user, &v)
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rounds: usize = std::env::var("DIGEST_MIN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut db = UserDb::new("localhost");
    for u in 0..1000 {
        db.add_password(&format!("user{u:05}"), &format!("pw{u:05}"))
            .unwrap();
    }
    let mut auth = Authenticator::new("localhost", Arc::new(db), [7; 32], 300)
        .with_algorithms(&[Algorithm::Md5])
        .with_max_tracked(1 << 24);
    let sample = fresh_batch(&auth, "user00001", "pw00001").swap_remove(0);
    let text = std::str::from_utf8(&sample).unwrap();
    let authz = text
        .lines()
        .find_map(|l| l.strip_prefix("Authorization: "))
        .unwrap()
        .as_bytes()
        .to_vec();

    let names = [
        "parse",
        "parse_digest",
        "challenge",
        "check",
        "check_unknown",
    ];
    let mut best = [f64::INFINITY; 5];
    let mut keep = |i: usize, t: Instant, n: usize| {
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        if ns < best[i] {
            best[i] = ns;
        }
    };
    let mut out = Vec::with_capacity(4096);
    for round in 0..rounds {
        let t = Instant::now();
        for _ in 0..BATCH {
            black_box(AuthHeader::parse(black_box(&authz)).unwrap());
        }
        keep(0, t, BATCH);

        let t = Instant::now();
        for _ in 0..BATCH {
            black_box(AuthHeader::parse_digest(black_box(&authz)).unwrap());
        }
        keep(1, t, BATCH);

        let t = Instant::now();
        for _ in 0..BATCH {
            out.clear();
            auth.write_challenge(black_box(&mut out), "WWW-Authenticate", false, NOW);
        }
        keep(2, t, BATCH);

        // Requests prepared (and parsed) outside the timed part; one user per round.
        let u = round % 1000;
        for (i, user) in [format!("user{u:05}"), format!("nobody{u:05}")]
            .iter()
            .enumerate()
        {
            let raw = fresh_batch(&auth, user, &format!("pw{u:05}"));
            let msgs: Vec<Message<'_>> = raw.iter().map(|r| Message::parse(r).unwrap()).collect();
            let t = Instant::now();
            for m in &msgs {
                let o = auth.check(black_box(m), HeaderName::Authorization, NOW);
                debug_assert!(matches!(o, AuthOutcome::Authenticated { .. }) == (i == 0));
                black_box(o);
            }
            keep(3 + i, t, BATCH);
        }
    }
    // The outcomes, once, outside the timing.
    let raw = fresh_batch(&auth, "user00002", "pw00002");
    let m = Message::parse(&raw[0]).unwrap();
    assert!(matches!(
        auth.check(&m, HeaderName::Authorization, NOW),
        AuthOutcome::Authenticated { .. }
    ));
    let raw = fresh_batch(&auth, "nobody", "pw");
    let m = Message::parse(&raw[0]).unwrap();
    assert_eq!(
        auth.check(&m, HeaderName::Authorization, NOW),
        AuthOutcome::Challenge { stale: false }
    );
    println!("| operation | fastest batch, ns per operation |");
    println!("|---|---|");
    for (n, b) in names.iter().zip(best) {
        println!("| {n} | {b:.0} |");
    }
}
