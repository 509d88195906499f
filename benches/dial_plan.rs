//! A whole routing decision (`DialPlan::route`: longest prefix among the routes, class check,
//! least-cost ordering of the route's trunks by their rates, down trunks left out) with
//! 1,000,000 route prefixes and 1,000,000 rates loaded, for random 12- to 15-digit numbers
//! (cycled through a pre-generated array larger than the caches, as a server's stream of
//! calls would). Prints once the build time and the bytes per route prefix and per rate
//! (`DialPlan::memory`). Issue 15's bound: at most 250 ns median, at most 32 bytes per prefix.
//!
//! `flock /tmp/bench.lock cargo bench --bench dial_plan`

use criterion::{criterion_group, criterion_main, Criterion};
use sipshard::routing::spec::{DialPlanSpec, RateSpec, RouteSpec, TrunkSpec};
use sipshard::routing::{Caller, DialPlan, RouteDecision};
use std::hint::black_box;
use std::time::Instant;

/// The server's allocator (src/main.rs): the decision's two small allocations (the number and
/// the trunk list it returns) cost here what they cost in the server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// xorshift64*: deterministic numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `+` and `len` digits.
    fn number(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len + 1);
        s.push('+');
        for _ in 0..len {
            s.push((b'0' + (self.next() % 10) as u8) as char);
        }
        s
    }
}

const PREFIXES: usize = 1_000_000;
const RATES: usize = 1_000_000;
const NUMBERS: usize = 1 << 20;

/// Distinct prefixes of 3 to 12 digits after `+`.
fn prefixes(rng: &mut Rng, n: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = 3 + (rng.next() % 10) as usize;
        let p = rng.number(len);
        if seen.insert(p.clone()) {
            out.push(p);
        }
    }
    out
}

fn plan() -> DialPlan {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let trunk = |name: &str, port: u16| TrunkSpec {
        name: name.into(),
        address: format!("127.0.0.1:{port}"),
        transport: None,
        check_interval_ms: Some(0),
        down_after: None,
        inbound_from: vec![],
    };
    let trunks = ["a", "b", "c"];
    let route = |prefix: String, i: usize| RouteSpec {
        prefix,
        trunks: trunks.iter().map(|t| t.to_string()).collect(),
        class: i.is_multiple_of(2).then(|| "national".to_string()),
        time: None,
        timezone: None,
        lcr: i % 4 != 3,
    };
    let routes: Vec<RouteSpec> = prefixes(&mut rng, PREFIXES)
        .into_iter()
        .enumerate()
        .map(|(i, p)| route(p, i))
        .collect();
    let rates: Vec<RateSpec> = prefixes(&mut rng, RATES)
        .into_iter()
        .enumerate()
        .map(|(i, p)| RateSpec {
            trunk: trunks[i % 3].into(),
            prefix: p,
            cost: (rng.next() % 100_000) as f64 / 1e6,
        })
        .collect();
    let spec = DialPlanSpec {
        trunk: vec![trunk("a", 5071), trunk("b", 5072), trunk("c", 5073)],
        route: routes,
        rate: rates,
        ..Default::default()
    };
    let start = Instant::now();
    let plan = DialPlan::build(&spec).expect("the benchmark plan is valid");
    let built = start.elapsed();
    let m = plan.memory();
    eprintln!(
        "dial plan: {} route prefixes in {} bytes ({:.1} per prefix), {} rates in {} bytes \
         ({:.1} per rate), built in {:.2} s",
        m.route_prefixes,
        m.route_bytes,
        m.route_bytes as f64 / m.route_prefixes as f64,
        m.rates,
        m.rate_bytes,
        m.rate_bytes as f64 / m.rates as f64,
        built.as_secs_f64()
    );
    plan
}

fn route(c: &mut Criterion) {
    let plan = plan();
    let mut rng = Rng(42);
    let numbers: Vec<Vec<u8>> = (0..NUMBERS)
        .map(|_| {
            let len = 12 + (rng.next() % 4) as usize;
            rng.number(len).into_bytes()
        })
        .collect();
    let routed = numbers
        .iter()
        .filter(|n| {
            matches!(
                plan.route(n, Caller::Anonymous, 0),
                RouteDecision::Trunks(_)
            )
        })
        .count();
    eprintln!("dial plan: {routed} of {NUMBERS} numbers routed to trunks");
    let mut g = c.benchmark_group("dial_plan");
    let mut i = 0usize;
    g.bench_function("route_1M_prefixes_1M_rates", |b| {
        b.iter(|| {
            i = (i + 1) & (NUMBERS - 1);
            black_box(plan.route(black_box(&numbers[i]), Caller::Anonymous, 0))
        })
    });
    g.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
