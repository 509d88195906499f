//! Drives the sans-I/O core with whole calls (no sockets), the way the SIPp `uac.xml` /
//! `uas.xml` pair of perf/ does: INVITE, 100, 180, 200, ACK, BYE, 200 through the
//! record-routing stateful proxy. It prints the user-space time per call and the heap bytes
//! the proxy holds per call at each stage (a counting allocator wraps the system one):
//!
//! - established: after the ACK (INVITE transactions in Accepted, RFC 6026);
//! - ended: after the BYE's 200 (transactions lingering for their Timers L/M/J/K);
//! - after the timers: everything gone (must be ~0).
//!
//! `cargo build --release --example core_call && target/release/examples/core_call 20000`;
//! for instruction counts run it under `valgrind --tool=callgrind`. With a second argument
//! `cdr`, call detail records are on (each call's record taken as the shard does), and the
//! CDR writer's part is timed too: each record serialised and appended to a JSON-lines file.

use sipshard::proxy::settings::Mode;
use sipshard::registrar::RegistrarSettings;
use sipshard::server::outbox::Outbox;
use sipshard::server::{Core, CoreConfig};
use sipshard::sip::write::{finish, header, response_head};
use sipshard::sip::{HeaderName, Message};
use sipshard::stats::ShardStats;
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: p was allocated by System.alloc with layout l.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const LISTEN: &str = "127.0.0.1:5060";
const CALLER: &str = "127.0.0.1:5071";
const CALLEE: &str = "127.0.0.1:5072";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn invite(i: usize) -> Vec<u8> {
    let sdp = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
               c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    format!(
        "INVITE sip:u0000000@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-4242-{i}-0\r\n\
         From: <sip:caller{i}@{CALLER}>;tag=4242c{i}\r\n\
         To: <sip:u0000000@127.0.0.1:5060>\r\n\
         Call-ID: {i}-4242@127.0.0.1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@{CALLER}>\r\n\
         Max-Forwards: 70\r\n\
         Subject: anchor\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// The callee's response to a request the proxy forwarded to it.
fn answer(req: &[u8], code: u16, reason: &str) -> Vec<u8> {
    let m = Message::parse(req).unwrap();
    let mut out = Vec::with_capacity(1024);
    response_head(&mut out, &m, code, reason.as_bytes(), Some(b"77u"), None);
    if m.method_bytes() == Some(b"INVITE") && code > 100 {
        for rr in m.header_all(HeaderName::RecordRoute) {
            header(&mut out, "Record-Route", rr);
        }
        header(
            &mut out,
            "Contact",
            format!("<sip:u0000000@{CALLEE}>").as_bytes(),
        );
    }
    finish(&mut out, b"");
    out
}

/// An in-dialog request from the caller along the route set.
fn in_dialog(i: usize, method: &str, cseq: u32) -> Vec<u8> {
    format!(
        "{method} sip:u0000000@{CALLEE} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-4242-{i}-{cseq}\r\n\
         Route: <sip:{LISTEN};lr;ss=0>\r\n\
         From: <sip:caller{i}@{CALLER}>;tag=4242c{i}\r\n\
         To: <sip:u0000000@127.0.0.1:5060>;tag=77u\r\n\
         Call-ID: {i}-4242@127.0.0.1\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:caller@{CALLER}>\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Sends one datagram into the core; returns what it sent (destination, bytes).
fn send(c: &mut Core, out: &mut Outbox, data: &[u8], src: &str, sock: usize, now: u64) {
    out.clear();
    c.handle(data, addr(src), sock, now, false, out);
}

fn take(out: &Outbox, to: &str) -> Vec<u8> {
    let d = out
        .items()
        .iter()
        .find(|d| d.dst == addr(to))
        .unwrap_or_else(|| panic!("nothing sent to {to}"));
    out.bytes(d).to_vec()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let cdr = std::env::args().nth(2).as_deref() == Some("cdr");
    let mut records = Vec::new();
    let mut taken = Vec::new();
    // One shard on LISTEN; the measured core and its twin alike.
    let new_core = || {
        let cfg = CoreConfig {
            domains: vec!["127.0.0.1".into()],
            local_addrs: vec![addr(LISTEN)],
            shards: 1,
            mode: Mode::Proxy,
            registrar: RegistrarSettings::default(),
            proxy: sipshard::proxy::settings::ProxySettings {
                cdr: cdr.then(Default::default),
                ..Default::default()
            },
            routing: Arc::new(sipshard::routing::DialPlan::empty()),
            responder: Default::default(),
            security: Default::default(),
            overload: Default::default(),
        };
        Core::new(
            0,
            Arc::new(cfg),
            Arc::new(ShardStats::default()),
            None,
            &[addr(LISTEN).into()],
        )
    };
    let mut core = new_core();
    let mut out = Outbox::new();
    let reg = format!(
        "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLEE};branch=z9hG4bKreg\r\n\
         Max-Forwards: 70\r\nFrom: <sip:u0000000@127.0.0.1>;tag=r\r\n\
         To: <sip:u0000000@127.0.0.1>\r\nCall-ID: reg\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:u0000000@{CALLEE}>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    );
    let mut now = 1_000_000;
    send(&mut core, &mut out, reg.as_bytes(), CALLEE, 0, now);
    // Build every message first: only the core's work is timed.
    let invites: Vec<Vec<u8>> = (0..n).map(invite).collect();
    let acks: Vec<Vec<u8>> = (0..n).map(|i| in_dialog(i, "ACK", 1)).collect();
    let byes: Vec<Vec<u8>> = (0..n).map(|i| in_dialog(i, "BYE", 2)).collect();
    // The callee's answers depend on what the proxy forwards: build them from a first pass
    // on a twin core (same branch sequence, so the same bytes).
    let mut twin = new_core();
    send(&mut twin, &mut out, reg.as_bytes(), CALLEE, 0, now);
    // Same order as the measured rounds below (all INVITEs of a round, then all BYEs), so
    // that the twin's branches are the ones the measured core will write.
    let per = n / 2;
    let mut answers = vec![(Vec::new(), Vec::new(), Vec::new()); 2 * per];
    for round in 0..2 {
        for i in round * per..(round + 1) * per {
            send(&mut twin, &mut out, &invites[i], CALLER, 0, now);
            let fwd = take(&out, CALLEE);
            let (r180, r200) = (answer(&fwd, 180, "Ringing"), answer(&fwd, 200, "OK"));
            send(&mut twin, &mut out, &r180, CALLEE, 1, now);
            send(&mut twin, &mut out, &r200, CALLEE, 1, now);
            send(&mut twin, &mut out, &acks[i], CALLER, 1, now);
            answers[i].0 = r180;
            answers[i].1 = r200;
        }
        for i in round * per..(round + 1) * per {
            send(&mut twin, &mut out, &byes[i], CALLER, 1, now);
            answers[i].2 = answer(&take(&out, CALLEE), 200, "OK");
        }
    }
    drop(twin);

    // Two rounds of n/2 calls: the second shows that what stays after the timers is capacity
    // the tables keep for reuse, not state that piles up.
    for round in 0..2 {
        let calls = round * per..(round + 1) * per;
        let base = LIVE.load(Ordering::Relaxed);
        let start = std::time::Instant::now();
        let mut sent = 0;
        for i in calls.clone() {
            send(&mut core, &mut out, &invites[i], CALLER, 0, now);
            sent += out.len();
            send(&mut core, &mut out, &answers[i].0, CALLEE, 1, now);
            sent += out.len();
            send(&mut core, &mut out, &answers[i].1, CALLEE, 1, now);
            sent += out.len();
            send(&mut core, &mut out, &acks[i], CALLER, 1, now);
            sent += out.len();
        }
        let established = LIVE.load(Ordering::Relaxed) - base;
        // Server and client INVITE transactions of every call, in Accepted: the responses
        // matched them (they were not relayed statelessly as strays).
        assert_eq!(
            core.proxy().state_len(),
            (2 * per, per, per),
            "INVITE transactions"
        );
        for i in calls.clone() {
            send(&mut core, &mut out, &byes[i], CALLER, 1, now);
            sent += out.len();
            send(&mut core, &mut out, &answers[i].2, CALLEE, 1, now);
            sent += out.len();
            core.take_records(&mut records);
            taken.append(&mut records);
        }
        let el = start.elapsed();
        let ended = LIVE.load(Ordering::Relaxed) - base;
        assert_eq!(
            sent,
            per * 7,
            "every call sends 100, INVITE, 180, 200, ACK, BYE, 200"
        );
        let t0 = now;
        now += 200_000;
        let mut t = t0;
        while t < now {
            t += 500;
            out.clear();
            core.handle_timeout(t, &mut out);
        }
        assert_eq!(core.proxy().state_len(), (0, 0, 0), "state left behind");
        let after = LIVE.load(Ordering::Relaxed) - base;
        println!(
            "round {round}: {per} calls, {:.0} ns each (user space, 7 messages in, 7 out); \
             heap per call: {} B established, {} B ended (transactions lingering for \
             Timers L/M/J/K), {} B after the timers",
            el.as_nanos() as f64 / per as f64,
            established / per as isize,
            ended / per as isize,
            after / per as isize,
        );
        if cdr {
            assert_eq!(taken.len(), per, "one record per call");
            let path = std::env::temp_dir().join(format!("core_call-{}.jsonl", std::process::id()));
            let mut sink = sipshard::cdr::sink::FileSink::open(
                path.clone(),
                sipshard::cdr::sink::Format::Jsonl,
                0,
                0,
                0,
            )
            .unwrap();
            let start = std::time::Instant::now();
            let mut json = String::new();
            for r in &taken {
                json.clear();
                r.write_json(&mut json);
                sink.write(r, &json, now).unwrap();
            }
            sink.flush().unwrap();
            let el = start.elapsed();
            let _ = std::fs::remove_file(path);
            println!(
                "  CDR writer: {:.0} ns per record (JSON, appended, flushed; no sync)",
                el.as_nanos() as f64 / per as f64
            );
            taken.clear();
        }
    }
}
