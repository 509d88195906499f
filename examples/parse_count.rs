//! Runs one parser of `benches/support/parsers.rs` on one benchmark message N times, for
//! instruction counts that do not depend on the machine's load:
//! `cargo build --release --example parse_count`, then
//! `valgrind --tool=callgrind target/release/examples/parse_count invite 3000` minus the same
//! with 1000 gives the instructions of 2000 iterations. A third argument picks the parser
//! (`sipshard` by default; `parse` runs `Message::parse` alone, `validate` runs
//! `Message::parse` plus `Message::validate`).

use std::hint::black_box;

#[path = "../benches/support/messages.rs"]
mod messages;
#[path = "../benches/support/parsers.rs"]
mod parsers;

fn main() {
    let mut args = std::env::args().skip(1);
    let msg = args.next().unwrap_or_else(|| "invite".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let parser = args.next().unwrap_or_else(|| "sipshard".into());
    let raw = messages::ALL
        .iter()
        .find(|(name, _)| *name == msg)
        .unwrap_or_else(|| panic!("no message {msg}"))
        .1;
    if parser == "parse" {
        for _ in 0..n {
            let m = sipshard::sip::Message::parse(black_box(raw)).unwrap();
            black_box(&m);
        }
        return;
    }
    if parser == "validate" {
        for _ in 0..n {
            let m = sipshard::sip::Message::parse(black_box(raw)).unwrap();
            assert!(black_box(&m).validate().is_ok());
        }
        return;
    }
    let f = parsers::PARSERS
        .iter()
        .find(|(name, _)| *name == parser)
        .unwrap_or_else(|| panic!("no parser {parser}"))
        .1;
    for _ in 0..n {
        assert!(f(black_box(raw)));
    }
}
