//! A load-robust companion to `benches/parse.rs` for shared machines: runs the same parsers on
//! the same messages round-robin in short batches and reports, per (message, parser), the
//! fastest batch (ns per message), i.e. the time when the benchmark was not preempted.
//! On a busy machine criterion's medians move with the load; these minima move much less.
//!
//! `flock /tmp/bench.lock cargo bench --bench parse_min` (env `PARSE_MIN_ROUNDS`, default 2000;
//! `PARSE_MIN_ONLY=sipshard` measures one parser, for quick before/after checks).

use std::hint::black_box;
use std::time::Instant;

#[path = "support/messages.rs"]
mod messages;
#[path = "support/parsers.rs"]
mod parsers;

use parsers::PARSERS;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` and IDE listing: nothing to run.
        return;
    }
    let rounds: usize = std::env::var("PARSE_MIN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let only = std::env::var("PARSE_MIN_ONLY").ok();
    let mut best = vec![[f64::INFINITY; PARSERS.len()]; messages::ALL.len()];
    // Batch sizes giving roughly 50-100 µs per batch.
    let batch = |p: usize| if p == 0 { 64 } else { 16 };
    for (name, raw) in messages::ALL {
        for (pname, f) in PARSERS {
            assert!(f(raw), "{pname} failed on {name}");
        }
    }
    for _ in 0..rounds {
        for (m, (_, raw)) in messages::ALL.iter().enumerate() {
            for (p, (pname, f)) in PARSERS.iter().enumerate() {
                if only.as_deref().is_some_and(|o| o != *pname) {
                    continue;
                }
                let n = batch(p);
                let t = Instant::now();
                for _ in 0..n {
                    black_box(f(black_box(raw)));
                }
                let ns = t.elapsed().as_nanos() as f64 / n as f64;
                if ns < best[m][p] {
                    best[m][p] = ns;
                }
            }
        }
    }
    print!("| message |");
    for (p, _) in PARSERS {
        print!(" {p} |");
    }
    println!(" fastest other / sipshard |");
    println!("|---|{}", "---|".repeat(PARSERS.len() + 1));
    for (m, (name, _)) in messages::ALL.iter().enumerate() {
        let ours = best[m][0];
        print!("| {name} |");
        for t in best[m] {
            print!(" {t:.0} ({:.1}x) |", t / ours);
        }
        let fastest = best[m][1..].iter().copied().fold(f64::INFINITY, f64::min);
        println!(" {:.1}x |", fastest / ours);
    }
}
