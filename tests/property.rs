//! Property tests of the parser on mutated messages: the RFC 4475/5118 corpus (when present,
//! found as in tests/conformance.rs) and the typical messages of benches/support/messages.rs,
//! mutated by bit flips, truncation, duplicated and deleted header lines, very long values,
//! 100 Vias, huge numbers, more header lines than the limit and NUL bytes.
//!
//! Checked for every input: no panic; a successful parse has every span inside the buffer
//! and a body as long as Content-Length says; accessors return errors or values that point
//! into the buffer, never garbage. For inputs that parse and validate, the canonical writer
//! round-trips: parse(write_message(parse(x))) has the same start line, header (name, value)
//! sequence apart from Content-Length, body, Vias, tags, CSeq and Call-ID.
//!
//! Cases: `SIPSHARD_PROPTEST_CASES` (default 10 000 with optimisations, 500 without).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sipshard::sip::message::MAX_HEADERS;
use sipshard::sip::write::write_message;
use sipshard::sip::{Framing, HeaderName, Limits, Message, StartLine};
use std::path::PathBuf;
use std::sync::OnceLock;

#[path = "../benches/support/messages.rs"]
mod messages;

fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SIPSHARD_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"));
    dir.join("manifest.tsv").is_file().then_some(dir)
}

/// The seeds: typical messages, then every corpus file as published (bare-LF RFC 5118 files
/// included: they are inputs like any other here).
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut v: Vec<Vec<u8>> = messages::ALL.iter().map(|(_, m)| m.to_vec()).collect();
        v.push(
            b"OPTIONS sip:bob@example.com SIP/2.0\r\nv: SIP/2.0/TCP h:5061;branch=z9hG4bK1,\
SIP/2.0/UDP [2001:db8::1]:5060;rport=5060;received=2001:db8::9\r\n\
f: \"A \\\"B\\\"\" <sip:a%20b@example.com;user=phone?subject=x>;tag=1\r\n\
t: sip:bob@example.com\r\ni: c1@h\r\nCSeq: 0009\r\n  OPTIONS\r\nMax-Forwards: 0\r\n\
Contact: *\r\nX-Empty:\r\nl: 0\r\n\r\n"
                .to_vec(),
        );
        if let Some(dir) = corpus_dir() {
            for sub in ["rfc4475", "rfc5118"] {
                let mut files: Vec<_> = std::fs::read_dir(dir.join(sub))
                    .map(|d| d.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                files.sort();
                v.extend(files.iter().filter_map(|p| std::fs::read(p).ok()));
            }
        }
        v
    })
}

/// True if `part` is empty or lies inside `buf`.
fn within(buf: &[u8], part: &[u8]) -> bool {
    let (b, p) = (buf.as_ptr() as usize, part.as_ptr() as usize);
    part.is_empty() || (p >= b && p + part.len() <= b + buf.len())
}

/// (method, Request-URI, status, reason) as written.
type StartParts<'a> = (
    Option<&'a [u8]>,
    Option<&'a [u8]>,
    Option<u16>,
    Option<&'a [u8]>,
);
/// (name, the name as written for unknown headers, value).
type HeaderLine<'a> = (HeaderName, Option<&'a [u8]>, &'a [u8]);

/// What a message says, compared across the canonical round trip.
#[derive(Debug, PartialEq)]
struct View<'a> {
    start: StartParts<'a>,
    headers: Vec<HeaderLine<'a>>,
    body: &'a [u8],
    vias: Vec<String>,
    from_tag: Option<&'a [u8]>,
    to_tag: Option<&'a [u8]>,
    cseq: (u32, &'a [u8]),
    call_id: &'a [u8],
}

fn view<'a>(msg: &Message<'a>) -> View<'a> {
    View {
        start: (
            msg.method_bytes(),
            msg.request_uri_bytes(),
            msg.status(),
            msg.reason(),
        ),
        headers: msg
            .slots()
            .iter()
            .filter(|s| s.name != HeaderName::ContentLength)
            .map(|s| {
                let written = (s.name == HeaderName::Other).then(|| msg.slice(s.name_span()));
                (s.name, written, msg.slice(s.value))
            })
            .collect(),
        body: msg.body(),
        vias: msg.vias().map(|v| format!("{:?}", v.unwrap())).collect(),
        from_tag: msg.from().unwrap().tag(),
        to_tag: msg.to().unwrap().tag(),
        cseq: msg.cseq().map(|c| (c.seq, c.method)).unwrap(),
        call_id: msg.call_id().unwrap(),
    }
}

fn check(buf: &[u8]) {
    let _ = Message::parse_with(buf, Limits::default(), Framing::Stream);
    let Ok(msg) = Message::parse(buf) else {
        return;
    };
    for s in msg.slots() {
        assert!(
            s.name_span().start <= s.name_span().end && s.name_span().end as usize <= buf.len()
        );
        assert!(s.value.start <= s.value.end && s.value.end as usize <= buf.len());
        assert!(s.name_span().end <= s.value.start);
    }
    let body = msg.body_span();
    assert!(body.start <= body.end && body.end as usize <= buf.len());
    if let (Some(cl), false) = (msg.content_length(), msg.has_conflicting_content_length()) {
        assert_eq!(
            msg.body().len(),
            cl as usize,
            "body length != Content-Length"
        );
    }
    if let StartLine::Request { uri, .. } = msg.start_line() {
        assert!(uri.end as usize <= buf.len());
        if let Ok(u) = msg.request_uri() {
            assert_eq!(u.raw, msg.request_uri_bytes().unwrap());
            assert!(within(buf, u.host) && within(buf, u.params) && within(buf, u.headers));
        }
    }
    for v in msg.vias().flatten() {
        assert!(within(buf, v.host) && within(buf, v.transport) && within(buf, v.params.raw()));
        assert!(!v.transport.is_empty());
        for (n, val) in v.params.iter() {
            assert!(within(buf, n) && val.is_none_or(|x| within(buf, x)));
        }
    }
    // From and To are parsed for their tags and the URI's extent; their URIs are checked by
    // `uri()` and by `validate()` (below).
    for a in msg.from().iter().chain(msg.to().iter()) {
        assert!(within(buf, a.uri_raw) && a.tag().is_none_or(|t| within(buf, t)));
        if let Ok(u) = a.uri() {
            assert!(within(buf, u.host));
        }
    }
    let mut addrs = Vec::new();
    addrs.extend(msg.contacts().flatten());
    addrs.extend(msg.routes().flatten());
    addrs.extend(msg.record_routes().flatten());
    addrs.extend(msg.paths().flatten());
    for a in &addrs {
        assert!(within(buf, a.uri_raw) && a.tag().is_none_or(|t| within(buf, t)));
        assert!(a.uri().is_ok(), "a parsed name-addr has a parseable URI");
    }
    if let Ok(c) = msg.call_id() {
        assert!(!c.is_empty() && within(buf, c));
    }
    if let Ok(c) = msg.cseq() {
        assert!(!c.method.is_empty() && within(buf, c.method));
    }
    let _ = (
        msg.max_forwards(),
        msg.expires(),
        msg.min_expires(),
        msg.content_type(),
    );
    let _ = msg.contact_star();
    if msg.validate().is_err() {
        return;
    }
    assert!(msg.from().unwrap().uri().is_ok() && msg.to().unwrap().uri().is_ok());
    // Round trip through the canonical writer. Two inputs cannot: a message with the most
    // header lines and no Content-Length gains a line, and one near the size limit may grow
    // past it (compact names are expanded); the latter is parsed without the size limit.
    let has_cl = msg.content_length().is_some();
    if msg.slots().len() == MAX_HEADERS && !has_cl {
        return;
    }
    let mut out = Vec::new();
    write_message(&mut out, &msg);
    let limits = Limits {
        max_size: u32::MAX as usize,
        ..Limits::default()
    };
    let again = Message::parse_with(&out, limits, Framing::Datagram).unwrap_or_else(|e| {
        panic!(
            "canonical form does not parse: {e:?}\n{}",
            String::from_utf8_lossy(&out)
        )
    });
    assert!(again.validate().is_ok(), "canonical form does not validate");
    assert_eq!(view(&again), view(&msg));
    assert_eq!(again.content_length(), Some(msg.body().len() as u32));
}

/// Header lines of a message: (start, end including the line break) for every line after
/// the start line up to the empty line.
fn header_lines(m: &[u8]) -> Vec<(usize, usize)> {
    let mut lines = Vec::new();
    let mut pos = match m.iter().position(|&c| c == b'\n') {
        Some(i) => i + 1,
        None => return lines,
    };
    while pos < m.len() {
        let end = m[pos..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(m.len(), |i| pos + i + 1);
        if m[pos..end].iter().all(|&c| c == b'\r' || c == b'\n') {
            break;
        }
        lines.push((pos, end));
        pos = end;
    }
    lines
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    Truncate {
        at: usize,
    },
    /// Truncate right before or after the n-th occurrence of a structural byte.
    TruncateAt {
        byte: u8,
        nth: usize,
        after: bool,
    },
    SetByte {
        at: usize,
        byte: u8,
    },
    InsertBytes {
        at: usize,
        bytes: Vec<u8>,
    },
    DeleteRange {
        at: usize,
        len: usize,
    },
    DuplicateLine {
        line: usize,
        times: usize,
    },
    DeleteLine {
        line: usize,
    },
    LongValue {
        line: usize,
        len: usize,
    },
    ManyVias {
        n: usize,
    },
    HugeNumber {
        header: usize,
        digits: usize,
        nines: bool,
    },
    ManyHeaders {
        n: usize,
    },
    Nul {
        at: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let structural = prop::sample::select(&b"\r\n:;,<>@\" =/"[..]);
    let interesting = prop::sample::select(&b"\0\r\n \t:;,<>@\"\\%\x7f\xff"[..]);
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (structural, 0usize..40, any::<bool>())
            .prop_map(|(byte, nth, after)| Mutation::TruncateAt { byte, nth, after }),
        (any::<usize>(), interesting).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::InsertBytes { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::DeleteRange { at, len }),
        (any::<usize>(), 1usize..4)
            .prop_map(|(line, times)| Mutation::DuplicateLine { line, times }),
        any::<usize>().prop_map(|line| Mutation::DeleteLine { line }),
        (
            any::<usize>(),
            prop_oneof![1000usize..5000, 60_000usize..70_000]
        )
            .prop_map(|(line, len)| Mutation::LongValue { line, len }),
        (1usize..=100).prop_map(|n| Mutation::ManyVias { n }),
        (0usize..6, 1usize..40, any::<bool>()).prop_map(|(header, digits, nines)| {
            Mutation::HugeNumber {
                header,
                digits,
                nines,
            }
        }),
        (50usize..200).prop_map(|n| Mutation::ManyHeaders { n }),
        any::<usize>().prop_map(|at| Mutation::Nul { at }),
    ]
}

fn apply(m: &mut Vec<u8>, mutation: &Mutation) {
    let len = m.len();
    let pick = |at: usize, n: usize| if n == 0 { 0 } else { at % n };
    let lines = header_lines(m);
    let line = |i: usize| lines.get(pick(i, lines.len())).copied();
    // Where new header lines go: after the start line.
    let top = lines.first().map_or(len, |l| l.0);
    match mutation {
        Mutation::FlipBit { at, bit } => {
            if len > 0 {
                m[pick(*at, len)] ^= 1 << bit;
            }
        }
        Mutation::Truncate { at } => m.truncate(pick(*at, len + 1)),
        Mutation::TruncateAt { byte, nth, after } => {
            let hits: Vec<usize> = (0..len).filter(|&i| m[i] == *byte).collect();
            if !hits.is_empty() {
                let i = hits[nth % hits.len()];
                m.truncate(i + *after as usize);
            }
        }
        Mutation::SetByte { at, byte } => {
            if len > 0 {
                m[pick(*at, len)] = *byte;
            }
        }
        Mutation::InsertBytes { at, bytes } => {
            let at = pick(*at, len + 1);
            m.splice(at..at, bytes.iter().copied());
        }
        Mutation::DeleteRange { at, len: n } => {
            let at = pick(*at, len + 1);
            m.drain(at..(at + n).min(len));
        }
        Mutation::DuplicateLine { line: l, times } => {
            if let Some((s, e)) = line(*l) {
                let copy = m[s..e].repeat(*times);
                m.splice(e..e, copy);
            }
        }
        Mutation::DeleteLine { line: l } => {
            if let Some((s, e)) = line(*l) {
                m.drain(s..e);
            }
        }
        Mutation::LongValue { line: l, len: n } => {
            if let Some((_, e)) = line(*l) {
                let cut = if m[..e].ends_with(b"\r\n") {
                    e - 2
                } else {
                    e - 1
                };
                let filler: Vec<u8> = (0..*n).map(|i| b"abcxyz0189.-"[i % 12]).collect();
                m.splice(cut..cut, filler);
            }
        }
        Mutation::ManyVias { n } => {
            let mut vias = Vec::new();
            for i in 0..*n {
                vias.extend_from_slice(
                    format!("Via: SIP/2.0/UDP p{i}.example.com:5060;branch=z9hG4bK{i}\r\n")
                        .as_bytes(),
                );
            }
            m.splice(top..top, vias);
        }
        Mutation::HugeNumber {
            header,
            digits,
            nines,
        } => {
            let name = [
                "CSeq",
                "Content-Length",
                "Max-Forwards",
                "Expires",
                "Min-Expires",
                "l",
            ][*header];
            let number: String = if *nines {
                "9".repeat(*digits)
            } else {
                format!("1{}", "0".repeat(*digits))
            };
            let value = if name == "CSeq" {
                let method = m.split(|&c| c == b' ').next().unwrap_or(b"INVITE").to_vec();
                format!("{number} {}", String::from_utf8_lossy(&method))
            } else {
                number
            };
            // Replace the header if present, else add it.
            let existing = lines.iter().find(|(s, e)| {
                let l = &m[*s..*e];
                l.len() > name.len()
                    && l[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                    && matches!(l[name.len()], b':' | b' ')
            });
            let new = format!("{name}: {value}\r\n").into_bytes();
            match existing {
                Some(&(s, e)) => {
                    m.splice(s..e, new);
                }
                None => {
                    m.splice(top..top, new);
                }
            }
        }
        Mutation::ManyHeaders { n } => {
            let mut extra = Vec::new();
            for i in 0..*n {
                extra.extend_from_slice(format!("X-Extra-{i}: value {i}\r\n").as_bytes());
            }
            m.splice(top..top, extra);
        }
        Mutation::Nul { at } => {
            let at = pick(*at, len + 1);
            m.insert(at, 0);
        }
    }
}

fn cases() -> u32 {
    std::env::var("SIPSHARD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 500 } else { 10_000 })
}

#[test]
fn mutated_messages_never_panic_and_round_trip() {
    let seeds = seeds();
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..4));
    let mut runner = TestRunner::new(config);
    runner
        .run(&strategy, |(seed, muts)| {
            let mut m = seeds[seed].clone();
            for mu in &muts {
                apply(&mut m, mu);
            }
            check(&m);
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_seed_round_trips_and_survives_truncation_anywhere() {
    let mut valid = 0;
    for seed in seeds() {
        check(seed);
        let msg = Message::parse(seed);
        valid += msg.is_ok_and(|m| m.validate().is_ok()) as usize;
        for cut in 0..seed.len() {
            check(&seed[..cut]);
        }
    }
    // The typical messages at least must be valid, or the round-trip property is vacuous.
    assert!(valid > messages::ALL.len(), "only {valid} seeds are valid");
}

#[test]
fn typical_messages_parse_and_validate() {
    for (name, raw) in messages::ALL {
        let msg = Message::parse(raw).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        msg.validate().unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(
            Some(msg.body().len() as u32),
            msg.content_length(),
            "{name}"
        );
    }
}

#[test]
fn extremes() {
    let base = messages::INVITE;
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for m in [
        Mutation::ManyVias { n: 100 },
        Mutation::ManyHeaders { n: 70 },
        Mutation::ManyHeaders { n: MAX_HEADERS },
        Mutation::LongValue {
            line: 6,
            len: 65_000,
        },
        Mutation::HugeNumber {
            header: 0,
            digits: 30,
            nines: true,
        },
        Mutation::HugeNumber {
            header: 1,
            digits: 11,
            nines: false,
        },
        Mutation::HugeNumber {
            header: 2,
            digits: 3,
            nines: false,
        },
        Mutation::Nul { at: 3 },
        Mutation::Nul { at: 200 },
    ] {
        let mut v = base.to_vec();
        apply(&mut v, &m);
        cases.push(v);
    }
    for c in &cases {
        check(c);
    }
    // 100 Vias exceed the header table: an error, not a truncated message.
    assert!(Message::parse(&cases[0]).is_err());
    assert!(Message::parse(&cases[1]).is_err());
    // A CSeq beyond 2^32-1 is out of range, not wrapped.
    let m = Message::parse(&cases[4]).unwrap();
    assert!(m.cseq().is_err());
    // A Content-Length beyond the datagram is an error.
    assert!(Message::parse(&cases[5]).is_err());
    // Max-Forwards above 255 is out of range.
    assert!(Message::parse(&cases[6]).unwrap().max_forwards().is_err());
}
