//! Dial-plan routing benchmarks: longest-prefix match over 1,000,000 prefixes.
//!
//! Two maps, as a carrier's routing and rating tables would be: 1M route prefixes
//! (`+` and 3..=12 digits → route index) and 1M rates (`+` and 3..=12 digits → cost in
//! micro-units per minute). Lookups are random numbers of `+` and 12..=15 digits, pre-generated
//! and cycled through so that successive lookups land far apart in the map, missing the cache
//! as a busy server's would. Prints once the heap bytes per prefix and the build time.
//!
//! Run with `flock /tmp/bench.lock cargo bench --bench routing`; IDs are
//! `routing/longest/<map>` (latency: each lookup waits for the one before),
//! `routing/longest_overlapped/<map>` (independent lookups, overlapped by the CPU) and
//! `routing/window/contains`.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use sipshard::routing::prefix::PrefixMap;
use sipshard::routing::window::TimeWindow;

const PREFIXES: usize = 1_000_000;
/// Pre-generated numbers (a power of two, cycled through with a mask): 1M × 17 bytes.
const NUMBERS: usize = 1 << 20;

/// xorshift64: deterministic pseudo-random numbers without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `+` and `digits` random digits.
    fn e164(&mut self, digits: usize) -> Vec<u8> {
        let mut number = vec![b'+'];
        number.extend((0..digits).map(|_| b'0' + self.below(10) as u8));
        number
    }
}

/// `count` distinct prefixes of `+` and 3..=12 digits with values from `value`.
fn prefixes(
    seed: u64,
    count: usize,
    mut value: impl FnMut(&mut XorShift) -> u32,
) -> Vec<(Vec<u8>, u32)> {
    let mut rng = XorShift(seed);
    let mut seen = HashSet::with_capacity(count);
    let mut entries = Vec::with_capacity(count);
    while entries.len() < count {
        let digits = 3 + rng.below(10) as usize;
        let prefix = rng.e164(digits);
        if seen.insert(prefix.clone()) {
            let v = value(&mut rng);
            entries.push((prefix, v));
        }
    }
    entries
}

/// Builds the map, printing its build time, bytes per prefix and hit rate on `numbers`.
fn build(name: &str, entries: &[(Vec<u8>, u32)], numbers: &[([u8; 16], u8)]) -> PrefixMap {
    let started = Instant::now();
    let map = PrefixMap::build(entries.iter().map(|(p, v)| (p.as_slice(), *v))).unwrap();
    let build_time = started.elapsed();
    let hits = numbers
        .iter()
        .filter(|(n, len)| map.longest(&n[..usize::from(*len)]).is_some())
        .count();
    eprintln!(
        "{name}: {} prefixes, build {:.0} ms, {} heap bytes = {:.1} bytes/prefix, {:.1}% of numbers match",
        map.len(),
        build_time.as_secs_f64() * 1e3,
        map.heap_bytes(),
        map.heap_bytes() as f64 / map.len() as f64,
        hits as f64 * 100.0 / numbers.len() as f64,
    );
    map
}

fn longest(c: &mut Criterion) {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let numbers: Vec<([u8; 16], u8)> = (0..NUMBERS)
        .map(|_| {
            let digits = 12 + rng.below(4) as usize;
            let number = rng.e164(digits);
            let mut fixed = [0u8; 16];
            fixed[..number.len()].copy_from_slice(&number);
            (fixed, number.len() as u8)
        })
        .collect();

    let routes = prefixes(0x9E37_79B9_7F4A_7C15, PREFIXES, |_| 0);
    let routes: Vec<_> = routes
        .into_iter()
        .enumerate()
        .map(|(i, (p, _))| (p, i as u32))
        .collect();
    let routes = build("routes", &routes, &numbers);
    // Cost per minute in micro-units: 0.001 to 2.000 currency units.
    let rates = prefixes(0xD1B5_4A32_D192_ED03, PREFIXES, |rng| {
        1_000 + rng.below(2_000_000) as u32
    });
    let rates = build("rates", &rates, &numbers);

    // One lookup after another, as a server does them between other work: the next number's
    // index depends on this answer (times an opaque zero), so lookups cannot overlap.
    let mut g = c.benchmark_group("routing/longest");
    let zero = black_box(0usize);
    for (name, map) in [("routes_1m", &routes), ("rates_1m", &rates)] {
        let mut next = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let (number, len) = &numbers[next];
                let found = map.longest(&number[..usize::from(*len)]);
                let value = found.map_or(1, |value| value as usize);
                next = (next + 1 + value * zero) & (NUMBERS - 1);
                found
            })
        });
    }
    g.finish();

    // Independent lookups, which the CPU overlaps: throughput rather than latency.
    let mut g = c.benchmark_group("routing/longest_overlapped");
    for (name, map) in [("routes_1m", &routes), ("rates_1m", &rates)] {
        let mut next = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                next = (next + 1) & (NUMBERS - 1);
                let (number, len) = &numbers[next];
                map.longest(black_box(&number[..usize::from(*len)]))
            })
        });
    }
    g.finish();
}

fn window(c: &mut Criterion) {
    let window =
        TimeWindow::parse("mon-fri 08:00-18:00; sat 10:00-14:00", "Europe/Berlin").unwrap();
    // One minute apart, starting 2026-01-05T00:00:00Z.
    let mut unix_ms = 1_767_571_200_000u64;
    c.bench_function("routing/window/contains", |b| {
        b.iter(|| {
            unix_ms += 60_000;
            window.contains(black_box(unix_ms))
        })
    });
}

criterion_group!(benches, longest, window);
criterion_main!(benches);
