//! Parser benchmarks (issue #3): sipshard against other Rust SIP parsers from crates.io, each
//! doing the same work on the same bytes: parse the whole message, then read the top Via
//! branch, Call-ID, CSeq (number and method), From tag, To tag and (requests) the Request-URI.
//! Plus the two writer paths a proxy/registrar uses per message.
//!
//! Run with `flock /tmp/bench.lock cargo bench --bench parse`; IDs are
//! `parse/<message>/<parser>`, `write/response` and `write/forward`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

#[path = "support/messages.rs"]
mod messages;
#[path = "support/parsers.rs"]
mod parsers;

use parsers::PARSERS;

use messages::{INVITE, REGISTER};

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (msg_name, raw) in messages::ALL {
        for (parser_name, f) in PARSERS {
            // Every parser must accept every message, or the comparison is meaningless.
            assert!(f(raw), "{parser_name} failed on {msg_name}");
            g.bench_function(format!("{msg_name}/{parser_name}"), |b| {
                b.iter(|| f(black_box(raw)))
            });
        }
    }
    g.finish();
}

fn write(c: &mut Criterion) {
    use sipshard::sip::write::{finish, header, response_head, write_forward, ForwardEdits};
    use sipshard::sip::Message;
    let mut g = c.benchmark_group("write");
    let register = Message::parse(REGISTER).unwrap();
    let mut out = Vec::with_capacity(2048);
    g.bench_function("response", |b| {
        b.iter(|| {
            out.clear();
            let req = black_box(&register);
            response_head(&mut out, req, 200, b"OK", Some(b"a6c85cf"), None);
            header(
                &mut out,
                "Contact",
                b"<sip:bob@192.0.2.4:5060;transport=udp>;expires=3600",
            );
            header(&mut out, "Expires", b"3600");
            finish(&mut out, b"");
            black_box(out.len())
        })
    });
    let invite = Message::parse(INVITE).unwrap();
    let edits = ForwardEdits {
        request_uri: Some(b"sip:bob@192.0.2.4:5060"),
        via: Some(b"SIP/2.0/UDP edge.biloxi.example.com:5060;branch=z9hG4bK87asdks7"),
        record_route: Some(b"<sip:edge.biloxi.example.com;lr>"),
        pop_route: 1,
        decrement_max_forwards: true,
        extra_headers: b"",
    };
    g.bench_function("forward", |b| {
        b.iter(|| {
            out.clear();
            write_forward(&mut out, black_box(&invite), black_box(&edits)).unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, parse, write);
criterion_main!(benches);
