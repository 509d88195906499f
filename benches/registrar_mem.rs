//! Memory per binding and time per REGISTER of the registrar (RFC 3261 §10.3 location service).
//!
//! Registers N AORs (default 1,000,000; `SIPSHARD_BENCH_N` overrides) with one contact each
//! through `Registrar::handle_register`, with typical sizes: AOR `sip:user123456@example.com`,
//! contact `<sip:user123456@192.0.2.33:5060;transport=udp>`, a 40-byte Call-ID. Reports:
//! - live heap bytes per binding, from a counting global allocator (requested sizes, so
//!   without malloc's per-block overhead) and the number of live blocks per binding;
//! - the RSS growth from /proc/self/status per binding (includes malloc overhead);
//! - the median over batches of the time per call (parse + handle_register, and parse alone).
//!
//! Run: `flock /tmp/bench.lock cargo bench --bench registrar_mem`

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use sipshard::registrar::{Registrar, RegistrarConfig, ResponseCtx};
use sipshard::sip::Message;

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size, Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Writes the REGISTER of user `i` into `buf`.
fn write_register(buf: &mut Vec<u8>, i: u32) {
    use std::io::Write;
    buf.clear();
    let user = 100_000 + i;
    write!(
        buf,
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.33:5060;branch=z9hG4bK{i:08x}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:user{user}@example.com>;tag=f{i}\r\n\
         To: <sip:user{user}@example.com>\r\n\
         Call-ID: a84b4c76e66710{i:010}@pc33.example.com\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:user{user}@192.0.2.33:5060;transport=udp>\r\n\
         Expires: 3600\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .unwrap();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let n: u32 = std::env::var("SIPSHARD_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    const BATCH: usize = 10_000;
    let now_ms = 1_700_000_000_000u64;
    let ctx = ResponseCtx {
        to_tag: b"7f3a9c",
        via_fixup: None,
    };

    // Reused buffers, allocated before the baseline.
    let mut batch: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut out = Vec::with_capacity(1024);
    let mut handle_ns = Vec::new();
    let mut parse_ns = Vec::new();
    handle_ns.reserve(n as usize / BATCH + 1);
    parse_ns.reserve(n as usize / BATCH + 1);

    let rss_before = rss_bytes();
    let live_before = LIVE_BYTES.load(Relaxed);
    let blocks_before = LIVE_BLOCKS.load(Relaxed);

    let mut reg = Registrar::new(RegistrarConfig::default());
    let mut i = 0u32;
    while i < n {
        let k = (n - i).min(BATCH as u32);
        for (j, buf) in batch.iter_mut().take(k as usize).enumerate() {
            write_register(buf, i + j as u32);
        }
        let t = Instant::now();
        for (j, buf) in batch.iter().take(k as usize).enumerate() {
            let msg = Message::parse(buf).expect("parses");
            let ip = [192, 0, 2, (j % 250) as u8 + 1];
            let source = SocketAddr::from((ip, 5060));
            out.clear();
            let o = reg.handle_register(&msg, source, now_ms, &ctx, &mut out);
            debug_assert_eq!(o.status, 200);
            std::hint::black_box(&out);
        }
        handle_ns.push(t.elapsed().as_nanos() as f64 / k as f64);
        let t = Instant::now();
        for buf in batch.iter().take(k as usize) {
            std::hint::black_box(Message::parse(buf).expect("parses"));
        }
        parse_ns.push(t.elapsed().as_nanos() as f64 / k as f64);
        i += k;
    }

    let live = LIVE_BYTES.load(Relaxed) - live_before;
    let blocks = LIVE_BLOCKS.load(Relaxed) - blocks_before;
    let rss = rss_bytes().saturating_sub(rss_before);
    assert_eq!(reg.binding_count(), n as usize);
    assert_eq!(reg.aor_count(), n as usize);
    let per = |x: usize| x as f64 / n as f64;
    let total = median(&mut handle_ns);
    let parse = median(&mut parse_ns);
    println!("registrar_mem: {n} AORs x 1 binding");
    println!(
        "  live heap (counting allocator): {:.1} bytes/binding ({:.2} blocks/binding), registrar.heap_bytes() {:.1}",
        per(live),
        per(blocks),
        per(reg.heap_bytes())
    );
    println!(
        "  RSS delta (/proc/self/status):  {:.1} bytes/binding",
        per(rss)
    );
    println!(
        "  time per REGISTER (median of {} batches of {BATCH}): parse+handle_register {total:.0} ns, parse alone {parse:.0} ns, handle_register ~{:.0} ns",
        handle_ns.len(),
        total - parse
    );
    let t = Instant::now();
    let swept = reg.poll_expired(now_ms + 3_600_000);
    println!(
        "  expiry sweep of all bindings: {swept} removed in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(reg.aor_count(), 0);
}
