//! User-space cost of one call at both ends of a load test, without sockets (the kernel's UDP
//! cost per datagram comes on top; `perf/responder-vs-sipp.py` and
//! `perf/generator-vs-sipp.py` measure whole processes):
//!
//! - `responder_call`: the responder's core handling INVITE (100, 180, 200 with SDP), ACK and
//!   BYE (200) of one call, SIPp-style messages, a fresh Call-ID per call;
//! - `load_call`: the generator's engine starting a call and taking the responder's 100, 180,
//!   200 and the BYE's 200 (it writes INVITE, ACK and BYE).
//!
//! `flock /tmp/bench.lock cargo bench --bench responder`

use criterion::{criterion_group, criterion_main, Criterion};
use sipshard::load::engine::Engine;
use sipshard::load::spec::{LoadSpec, Scenario};
use sipshard::proxy::settings::Mode;
use sipshard::server::outbox::Outbox;
use sipshard::server::{Core, CoreConfig};
use sipshard::stats::ShardStats;
use std::net::SocketAddr;
use std::sync::Arc;

const LISTEN: &str = "127.0.0.1:5060";
const CALLER: &str = "127.0.0.1:5072";
const CALLS: usize = 4096;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn responder() -> Core {
    let cfg = CoreConfig {
        domains: vec!["127.0.0.1".into()],
        local_addrs: vec![addr(LISTEN)],
        shards: 1,
        mode: Mode::Responder,
        registrar: Default::default(),
        proxy: Default::default(),
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
}

/// The INVITE, ACK and BYE of SIPp's `-sn uac` for call `i` (the To tag is the responder's).
fn call(i: usize, to_tag: &str) -> [Vec<u8>; 3] {
    let sdp =
        "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
               t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let head = |method: &str, cseq: u32, tag: &str, branch: u32| {
        format!(
            "{method} sip:service@{LISTEN} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-1-{i}-{branch}\r\n\
             From: sipp <sip:sipp@{CALLER}>;tag=1SIPpTag00{i}\r\nTo: <sip:service@{LISTEN}>{tag}\r\n\
             Call-ID: {i}-1@127.0.0.1\r\nCSeq: {cseq} {method}\r\nContact: sip:sipp@{CALLER}\r\n\
             Max-Forwards: 70\r\nSubject: Performance Test\r\n"
        )
    };
    let tag = format!(";tag={to_tag}");
    [
        format!(
            "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            head("INVITE", 1, "", 0),
            sdp.len()
        )
        .into_bytes(),
        format!("{}Content-Length: 0\r\n\r\n", head("ACK", 1, &tag, 5)).into_bytes(),
        format!("{}Content-Length: 0\r\n\r\n", head("BYE", 2, &tag, 6)).into_bytes(),
    ]
}

fn to_tag_of(out: &Outbox) -> String {
    let last = out.items().last().unwrap();
    let m = sipshard::sip::Message::parse(out.bytes(last)).unwrap();
    String::from_utf8(m.to().unwrap().tag().unwrap().to_vec()).unwrap()
}

fn bench(c: &mut Criterion) {
    // The responder's tags depend on the Call-ID: learn them once.
    let mut core = responder();
    let mut out = Outbox::new();
    let src = addr(CALLER);
    let calls: Vec<[Vec<u8>; 3]> = (0..CALLS)
        .map(|i| {
            let invite = call(i, "")[0].clone();
            core.handle(&invite, src, 0, 1, false, &mut out);
            let tag = to_tag_of(&out);
            out.clear();
            call(i, &tag)
        })
        .collect();
    let mut core = responder();
    let mut now = 1_000_000u64;
    let mut i = 0;
    c.bench_function("responder_call", |b| {
        b.iter(|| {
            let [invite, ack, bye] = &calls[i % CALLS];
            i += 1;
            now += 1;
            core.handle(invite, src, 0, now, false, &mut out);
            core.handle(ack, src, 0, now, false, &mut out);
            core.handle(bye, src, 0, now, false, &mut out);
            out.clear();
        })
    });
    assert_eq!(core.responder().unwrap().calls(), 0, "no state left");

    // The generator: its engine against a responder core, both in memory; only the engine's
    // part is timed by subtracting a run of the responder alone is not possible, so the
    // measured time is the engine's work plus the responder's (compare with the above).
    let spec = Arc::new(LoadSpec::new(Scenario::Call, addr(LISTEN), 1000.0));
    let mut engine = Engine::new(spec, 0, 1, vec![src]);
    let mut core = responder();
    let mut to_core = Outbox::new();
    let mut to_engine = Outbox::new();
    let mut n = 0u64;
    let mut now_us = 0u64;
    c.bench_function("load_call_with_responder", |b| {
        b.iter(|| {
            now_us += 10;
            engine.start(n, now_us, 0, &mut to_core);
            n += 1;
            // Until the call is over: the engine's requests to the core, its answers back.
            while !to_core.is_empty() {
                for d in to_core.items() {
                    core.handle(
                        to_core.bytes(d),
                        src,
                        0,
                        now_us / 1000,
                        false,
                        &mut to_engine,
                    );
                }
                to_core.clear();
                for d in to_engine.items() {
                    engine.datagram(to_engine.bytes(d), addr(LISTEN), 0, now_us, &mut to_core);
                }
                to_engine.clear();
            }
        })
    });
    assert_eq!(engine.active(), 0);
    assert_eq!(engine.report.failed, 0);
}

criterion_group!(benches, bench);
criterion_main!(benches);
