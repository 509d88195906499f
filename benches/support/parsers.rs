//! The parsers compared by the benchmarks, each doing the same work on the same bytes: parse
//! the whole message, then read the top Via branch, Call-ID, CSeq (number and method), From
//! tag, To tag and (requests) the Request-URI, passing every value to `black_box`. Each
//! returns false if it failed, so a harness can check that all accept the input.

use std::hint::black_box;

/// sipshard: zero-copy parse, then the typed accessors (each parses its header on demand).
fn sipshard_parse(raw: &[u8]) -> bool {
    use sipshard::sip::{Framing, Limits, Message};
    // Parsed where it stays, as the server does: a message returned by value (~1.7 KB) is
    // copied.
    let mut slot = core::mem::MaybeUninit::uninit();
    let Ok(msg) = Message::parse_in(&mut slot, raw, Limits::default(), Framing::Datagram) else {
        return false;
    };
    let (Ok(via), Ok(call_id), Ok(cseq), Ok(from), Ok(to)) = (
        msg.top_via(),
        msg.call_id(),
        msg.cseq(),
        msg.from(),
        msg.to(),
    ) else {
        return false;
    };
    black_box(via.branch());
    black_box(call_id);
    black_box((cseq.seq, cseq.method));
    black_box(from.tag());
    black_box(to.tag());
    if msg.is_request() {
        let Ok(uri) = msg.request_uri() else {
            return false;
        };
        black_box(uri);
    }
    true
}

/// rsip 0.4: parses the start line (URI included) and splits headers into untyped values on
/// `try_from`; typed values are parsed by `typed()` / `tag()`.
fn rsip_parse(raw: &[u8]) -> bool {
    use rsip::prelude::*;
    let Ok(msg) = rsip::SipMessage::try_from(raw) else {
        return false;
    };
    let (Ok(via), Ok(call_id), Ok(cseq), Ok(from), Ok(to)) = (
        msg.via_header(),
        msg.call_id_header(),
        msg.cseq_header(),
        msg.from_header(),
        msg.to_header(),
    ) else {
        return false;
    };
    let (Ok(via), Ok(cseq), Ok(from_tag), Ok(to_tag)) =
        (via.typed(), cseq.typed(), from.tag(), to.tag())
    else {
        return false;
    };
    black_box(via.branch());
    black_box(call_id.value());
    black_box((cseq.seq, cseq.method));
    black_box(from_tag);
    black_box(to_tag);
    if let rsip::SipMessage::Request(req) = &msg {
        black_box(&req.uri);
    }
    black_box(&msg);
    true
}

/// ezk-sip-types 0.6: the crate has no whole-message entry point; this is what its stack
/// (ezk-sip-core) does per datagram: `PullParser` splits the head into lines, `MessageLine`
/// parses the start line (URI included), `Line` splits each header into name and value
/// collected into `Headers`, and the body is the rest. Typed headers are decoded on `get`.
fn ezk_parse(raw: &'static [u8]) -> bool {
    use ezk_sip_types::header::typed::{CSeq, CallID, FromTo, Via};
    use ezk_sip_types::msg::{Line, MessageLine, PullParser};
    use ezk_sip_types::parse::Parse;
    use ezk_sip_types::{Headers, Name};
    let src = bytes::Bytes::from_static(raw);
    let mut lines = PullParser::new(&src, 0);
    let Some(Ok(first)) = lines.next() else {
        return false;
    };
    let Ok(first) = std::str::from_utf8(first) else {
        return false;
    };
    let Ok((_, line)) = MessageLine::parse(&src)(first) else {
        return false;
    };
    let mut headers = Headers::with_capacity(16);
    for l in &mut lines {
        let Ok(l) = l else { return false };
        let Ok(l) = std::str::from_utf8(l) else {
            return false;
        };
        let Ok((_, Line { name, value })) = Line::parse(&src, l) else {
            return false;
        };
        headers.insert(name, value);
    }
    let body = src.slice(lines.head_end()..);
    let (Ok(via), Ok(call_id), Ok(cseq), Ok(from), Ok(to)) = (
        headers.get_named::<Via>(),
        headers.get_named::<CallID>(),
        headers.get_named::<CSeq>(),
        headers.get::<FromTo>(Name::FROM),
        headers.get::<FromTo>(Name::TO),
    ) else {
        return false;
    };
    black_box(via.params.get_val("branch"));
    black_box(call_id);
    black_box((cseq.cseq, cseq.method));
    black_box(from.tag);
    black_box(to.tag);
    black_box(&line);
    black_box(body);
    true
}

/// sipx-sip 1.0: `parse_datagram` frames the message and parses the start line (URI
/// included) and header rows; typed headers are decoded on `typed()`.
fn sipx_parse(raw: &'static [u8]) -> bool {
    use sipx_sip::headers::{CSeq, CallId, From, To, Via};
    use sipx_sip::{parse_datagram, Limits, Message};
    let Ok(msg) = parse_datagram(bytes::Bytes::from_static(raw), &Limits::datagram()) else {
        return false;
    };
    let headers = match &msg {
        Message::Request(r) => &r.headers,
        Message::Response(r) => &r.headers,
    };
    let (Some(Ok(via)), Some(Ok(call_id)), Some(Ok(cseq)), Some(Ok(from)), Some(Ok(to))) = (
        headers.typed::<Via>(),
        headers.typed::<CallId>(),
        headers.typed::<CSeq>(),
        headers.typed::<From>(),
        headers.typed::<To>(),
    ) else {
        return false;
    };
    black_box(via.branch());
    black_box(call_id);
    black_box((cseq.sequence, cseq.method));
    black_box(from.tag());
    black_box(to.tag());
    if let Message::Request(r) = &msg {
        black_box(&r.uri);
    }
    black_box(&msg);
    true
}

pub type Parser = fn(&'static [u8]) -> bool;

pub const PARSERS: [(&str, Parser); 4] = [
    ("sipshard", sipshard_parse),
    ("rsip", rsip_parse),
    ("ezk-sip-types", ezk_parse),
    ("sipx-sip", sipx_parse),
];
