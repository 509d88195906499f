//! Writing messages: responses built from a request (RFC 3261 §8.2.6.2, with the Via
//! `received`/`rport` of §18.2.1 and RFC 3581 §4), and requests forwarded by splicing edits
//! into the original bytes (§16.6: new top Via, Max-Forwards decremented, top Route removed,
//! Record-Route added, Request-URI rewritten) without re-parsing.
//!
//! Everything writes into a caller-provided `Vec<u8>` so the caller can reuse one buffer.

use super::header_name::HeaderName;
use super::message::{Message, Span, StartLine};
use super::scan::CommaSplit;

/// What to write into the top Via of a response (filled in by the server transport when the
/// request arrived, RFC 3261 §18.2.1 and RFC 3581 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaFixup<'x> {
    /// Source IP of the request, as text; written as `;received=` when `add_received`.
    pub received: &'x [u8],
    /// Whether `received` must be added (the sent-by host differs, or rport was asked for).
    pub add_received: bool,
    /// Source port, written into a valueless `rport`.
    pub rport: u16,
}

#[inline]
fn push_u32(out: &mut Vec<u8>, n: u32) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(n).as_bytes());
}

/// Writes one header line `Name: value\r\n`.
#[inline]
pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes a header line with a decimal value.
#[inline]
pub fn header_u32(out: &mut Vec<u8>, name: &str, value: u32) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    push_u32(out, value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the status line and the headers copied from the request (§8.2.6.2): every Via in
/// order (the top one fixed up), From, To (with `to_tag` added if it has no tag and the status
/// is above 100), Call-ID and CSeq. Continue with [`header`] and end with [`finish`].
pub fn response_head(
    out: &mut Vec<u8>,
    req: &Message<'_>,
    status: u16,
    reason: &[u8],
    to_tag: Option<&[u8]>,
    via_fixup: Option<ViaFixup<'_>>,
) {
    out.extend_from_slice(b"SIP/2.0 ");
    push_u32(out, status as u32);
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    let mut first_via = true;
    for slot in req.slots() {
        match slot.name {
            HeaderName::Via => {
                let v = req.slice(slot.value);
                if first_via {
                    first_via = false;
                    if let Some(fix) = via_fixup {
                        out.extend_from_slice(b"Via: ");
                        write_fixed_via(out, req, v, fix);
                        out.extend_from_slice(b"\r\n");
                        continue;
                    }
                }
                header(out, "Via", v);
            }
            HeaderName::From => header(out, "From", req.slice(slot.value)),
            HeaderName::To => {
                let v = req.slice(slot.value);
                out.extend_from_slice(b"To: ");
                out.extend_from_slice(v);
                if let Some(tag) = to_tag {
                    // The parsed To is cached in the message (validate() parsed it).
                    let has_tag = req.to().map(|n| n.tag().is_some()).unwrap_or(true);
                    if status > 100 && !has_tag {
                        out.extend_from_slice(b";tag=");
                        out.extend_from_slice(tag);
                    }
                }
                out.extend_from_slice(b"\r\n");
            }
            HeaderName::CallId => header(out, "Call-ID", req.slice(slot.value)),
            HeaderName::CSeq => header(out, "CSeq", req.slice(slot.value)),
            _ => {}
        }
    }
}

/// Writes the first Via value of `line` (the first Via line of `req`) with `rport` filled and
/// `received` added, then the rest of the line unchanged.
fn write_fixed_via(out: &mut Vec<u8>, req: &Message<'_>, line: &[u8], fix: ViaFixup<'_>) {
    let mut copied = 0;
    // The top Via is cached (validation parsed it). Its value ends where its parameters end
    // (an empty parameter list is an empty slice right after the sent-by).
    if let Ok(via) = req.top_via() {
        let params = via.params.raw();
        let first_end = req.offset_of(params) + params.len() - req.offset_of(line);
        // A valueless rport gets the source port (RFC 3581 §4).
        if let Some((name, None)) = via
            .params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"rport"))
        {
            let name_end = req.offset_of(name) + name.len() - req.offset_of(line);
            out.extend_from_slice(&line[..name_end]);
            out.push(b'=');
            push_u32(out, fix.rport as u32);
            copied = name_end;
        }
        out.extend_from_slice(&line[copied..first_end]);
        if fix.add_received && via.received().is_none() {
            out.extend_from_slice(b";received=");
            out.extend_from_slice(fix.received);
        }
        out.extend_from_slice(&line[first_end..]);
    } else {
        out.extend_from_slice(line);
    }
}

/// Copies the request `msg` with its top Via fixed up as the server transport must (RFC 3261
/// §18.2.1: `received` when the sent-by is not the source address; RFC 3581 §4: a valueless
/// `rport` gets the source port), so that what a proxy forwards carries it and responses
/// relayed by the Via alone reach a client behind NAT. Returns false (nothing written) when
/// the message has no Via.
pub fn write_with_fixed_via(out: &mut Vec<u8>, msg: &Message<'_>, fix: ViaFixup<'_>) -> bool {
    let Some(slot) = msg.first_slot(HeaderName::Via) else {
        return false;
    };
    let buf = msg.buf();
    out.reserve(msg.len() + 48);
    out.extend_from_slice(&buf[msg.start_offset()..slot.value.start as usize]);
    write_fixed_via(out, msg, msg.slice(slot.value), fix);
    out.extend_from_slice(&buf[slot.value.end as usize..msg.len()]);
    true
}

/// Ends the header section with Content-Length and appends the body.
#[inline]
pub fn finish(out: &mut Vec<u8>, body: &[u8]) {
    header_u32(out, "Content-Length", body.len() as u32);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Writes `msg` in canonical form: the start line (`SIP/2.0` as the version), every header
/// line in order as `Name: value` (the canonical name of a known header, compact forms
/// expanded; the name as written for any other), a single Content-Length equal to the body
/// length in place of the message's own, an empty line and the body. Values are copied as
/// they are (a folded value keeps its line breaks). Parsing the output gives the same start
/// line, the same (name, value) sequence apart from Content-Length, and the same body.
pub fn write_message(out: &mut Vec<u8>, msg: &Message<'_>) {
    let body = msg.body();
    out.reserve(msg.len() + 64);
    match msg.start_line() {
        StartLine::Request {
            method_span, uri, ..
        } => {
            out.extend_from_slice(msg.slice(method_span));
            out.push(b' ');
            out.extend_from_slice(msg.slice(uri));
            out.extend_from_slice(b" SIP/2.0\r\n");
        }
        StartLine::Response { code, reason } => {
            out.extend_from_slice(b"SIP/2.0 ");
            push_u32(out, code as u32);
            out.push(b' ');
            out.extend_from_slice(msg.slice(reason));
            out.extend_from_slice(b"\r\n");
        }
    }
    for slot in msg.slots() {
        let name = match slot.name {
            HeaderName::ContentLength => continue,
            HeaderName::Other => msg.slice(slot.name_span()),
            known => known.as_str().as_bytes(),
        };
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(msg.slice(slot.value));
        out.extend_from_slice(b"\r\n");
    }
    header_u32(out, "Content-Length", body.len() as u32);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The edits a proxy makes when it forwards a request (RFC 3261 §16.6).
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardEdits<'e> {
    /// New Request-URI (step 1/6).
    pub request_uri: Option<&'e [u8]>,
    /// Value of the Via to add on top (step 8), e.g. `SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK..`.
    pub via: Option<&'e [u8]>,
    /// Value of the Record-Route to add on top (step 4), e.g. `<sip:192.0.2.1:5060;lr>`.
    pub record_route: Option<&'e [u8]>,
    /// How many Route values to remove from the top (step 6, loose routing with our URI on
    /// top: 1, or 2 for the two values of a double Record-Route, RFC 5658).
    pub pop_route: u8,
    /// Decrement Max-Forwards, or add `Max-Forwards: 70` if absent (step 3).
    pub decrement_max_forwards: bool,
    /// Header lines to add at the top (each ending in CRLF), e.g. `Priority: emergency`.
    pub extra_headers: &'e [u8],
}

/// Why a request cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// Max-Forwards is 0 (answer 483) or not a number.
    MaxForwards,
    /// The message is a response.
    NotARequest,
}

enum Splice<'e> {
    Bytes(&'e [u8]),
    Number(u8),
    /// New header lines at the top of the header section.
    TopHeaders,
}

/// Writes `msg` with `edits` applied into `out`. The body and every untouched byte are copied
/// as they are; bytes after the body (ignored per RFC 3261 §18.3) are not copied.
pub fn write_forward(
    out: &mut Vec<u8>,
    msg: &Message<'_>,
    edits: &ForwardEdits<'_>,
) -> Result<(), ForwardError> {
    let uri_span = msg.request_uri_span().ok_or(ForwardError::NotARequest)?;
    // At most 5 cuts: Request-URI, top headers, Max-Forwards, two Route lines.
    let mut cuts: [(Span, Splice<'_>); 5] = [
        (Span::default(), Splice::Bytes(b"")),
        (Span::default(), Splice::Bytes(b"")),
        (Span::default(), Splice::Bytes(b"")),
        (Span::default(), Splice::Bytes(b"")),
        (Span::default(), Splice::Bytes(b"")),
    ];
    let mut n = 0;
    if let Some(uri) = edits.request_uri {
        cuts[n] = (uri_span, Splice::Bytes(uri));
        n += 1;
    }
    let top = msg.headers_offset() as u32;
    let mut add_max_forwards = false;
    if edits.decrement_max_forwards {
        match msg.first_slot(HeaderName::MaxForwards) {
            Some(slot) => {
                let mf = msg.max_forwards().map_err(|_| ForwardError::MaxForwards)?;
                match mf {
                    Some(0) | None => return Err(ForwardError::MaxForwards),
                    Some(v) => {
                        cuts[n] = (slot.value, Splice::Number(v - 1));
                        n += 1;
                    }
                }
            }
            None => add_max_forwards = true,
        }
    }
    if edits.via.is_some()
        || edits.record_route.is_some()
        || add_max_forwards
        || !edits.extra_headers.is_empty()
    {
        cuts[n] = (
            Span {
                start: top,
                end: top,
            },
            Splice::TopHeaders,
        );
        n += 1;
    }
    // The Route values to remove are the first ones: whole lines while every value of a line
    // goes, then the front of the line where the first kept value starts.
    let mut to_pop = edits.pop_route as usize;
    if to_pop > 0 {
        for slot in msg.slots().iter().filter(|s| s.name == HeaderName::Route) {
            if to_pop == 0 || n == cuts.len() {
                break;
            }
            let line = msg.slice(slot.value);
            let kept = CommaSplit::new(line).nth(to_pop).map(|(at, _)| at);
            let span = match kept {
                Some(at) => {
                    to_pop = 0;
                    Span {
                        start: slot.value.start,
                        end: slot.value.start + at as u32,
                    }
                }
                None => {
                    to_pop -= CommaSplit::new(line).count().min(to_pop);
                    let buf = msg.buf();
                    let after = memchr::memchr(b'\n', &buf[slot.value.end as usize..])
                        .map_or(buf.len(), |i| slot.value.end as usize + i + 1);
                    Span {
                        start: slot.name_span().start,
                        end: after as u32,
                    }
                }
            };
            cuts[n] = (span, Splice::Bytes(b""));
            n += 1;
        }
    }
    let cuts = &mut cuts[..n];
    cuts.sort_unstable_by_key(|(s, _)| (s.start, s.end));
    let buf = msg.buf();
    let mut pos = msg.start_offset();
    out.reserve(msg.len() + 256);
    for (span, splice) in cuts.iter() {
        out.extend_from_slice(&buf[pos..span.start as usize]);
        match splice {
            Splice::Bytes(b) => out.extend_from_slice(b),
            Splice::Number(v) => push_u32(out, *v as u32),
            Splice::TopHeaders => {
                if let Some(v) = edits.via {
                    header(out, "Via", v);
                }
                if let Some(rr) = edits.record_route {
                    header(out, "Record-Route", rr);
                }
                if add_max_forwards {
                    header(out, "Max-Forwards", b"70");
                }
                out.extend_from_slice(edits.extra_headers);
            }
        }
        pos = span.end as usize;
    }
    out.extend_from_slice(&buf[pos..msg.len()]);
    Ok(())
}

/// Builds an error response to a request that did not parse (RFC 3261 §21.4.1: answer 400
/// when a response can be routed). Copies the Via, From, To, Call-ID and CSeq lines it can
/// find verbatim. Returns false (and writes nothing) if the bytes are not a request or have no
/// Via line, in which case the datagram is to be dropped.
pub fn salvage_response(out: &mut Vec<u8>, raw: &[u8], status: u16, reason: &[u8]) -> bool {
    let start = out.len();
    let first = raw
        .iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(raw.len());
    let raw = &raw[first..];
    if raw.len() < 4 || raw[..4].eq_ignore_ascii_case(b"SIP/") {
        return false;
    }
    out.extend_from_slice(b"SIP/2.0 ");
    push_u32(out, status as u32);
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    let mut seen_via = false;
    let mut seen = [false; 4];
    for line in raw.split(|&c| c == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = super::scan::trim(&line[..colon]);
        let value = super::scan::trim(&line[colon + 1..]);
        // A response must not carry control characters we would echo back.
        if value.iter().any(|&c| c < 0x20 && c != b'\t') {
            continue;
        }
        let (canon, slot) = match HeaderName::from_bytes(name) {
            HeaderName::Via => {
                seen_via = true;
                ("Via", None)
            }
            HeaderName::From => ("From", Some(0)),
            HeaderName::To => ("To", Some(1)),
            HeaderName::CallId => ("Call-ID", Some(2)),
            HeaderName::CSeq => ("CSeq", Some(3)),
            _ => continue,
        };
        if let Some(i) = slot {
            if seen[i] {
                continue;
            }
            seen[i] = true;
        }
        header(out, canon, value);
    }
    if !seen_via {
        out.truncate(start);
        return false;
    }
    finish(out, b"");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Message;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKaaa;rport\r\n\
Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKbbb\r\n\
Route: <sip:proxy.example.com;lr>, <sip:other.example.com;lr>\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@example.com>;tag=1928\r\n\
To: Bob <sip:bob@example.com>\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Content-Length: 4\r\n\r\nbodyTRAILING";

    #[test]
    fn response_copies_headers_and_fixes_via() {
        let req = Message::parse(INVITE).unwrap();
        let mut out = Vec::new();
        response_head(
            &mut out,
            &req,
            180,
            b"Ringing",
            Some(b"xyz"),
            Some(ViaFixup {
                received: b"198.51.100.7",
                add_received: true,
                rport: 40000,
            }),
        );
        header(&mut out, "Contact", b"<sip:bob@192.0.2.4>");
        finish(&mut out, b"");
        let r = Message::parse(&out).unwrap();
        r.validate().unwrap();
        assert_eq!(r.status(), Some(180));
        let vias: Vec<_> = r.vias().map(|v| v.unwrap()).collect();
        assert_eq!(vias.len(), 2);
        assert_eq!(vias[0].rport(), Some(Some(40000)));
        assert_eq!(vias[0].received(), Some(&b"198.51.100.7"[..]));
        assert_eq!(vias[0].branch(), Some(&b"z9hG4bKaaa"[..]));
        assert_eq!(vias[1].branch(), Some(&b"z9hG4bKbbb"[..]));
        assert_eq!(r.to().unwrap().tag(), Some(&b"xyz"[..]));
        assert_eq!(r.from().unwrap().tag(), Some(&b"1928"[..]));
        assert_eq!(r.call_id().unwrap(), b"a84b4c76e66710");
        assert_eq!(r.cseq().unwrap().seq, 314159);
        assert!(r.header(HeaderName::Route).is_none());
        assert_eq!(r.body(), b"");
        // 100 Trying gets no To tag.
        let mut out = Vec::new();
        response_head(&mut out, &req, 100, b"Trying", Some(b"xyz"), None);
        finish(&mut out, b"");
        assert_eq!(Message::parse(&out).unwrap().to().unwrap().tag(), None);
    }

    #[test]
    fn forward_splices_edits() {
        let req = Message::parse(INVITE).unwrap();
        let mut out = Vec::new();
        write_forward(
            &mut out,
            &req,
            &ForwardEdits {
                request_uri: Some(b"sip:bob@192.0.2.4:5062"),
                via: Some(b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnew"),
                record_route: Some(b"<sip:10.0.0.1:5060;lr>"),
                pop_route: 1,
                decrement_max_forwards: true,
                extra_headers: b"",
            },
        )
        .unwrap();
        let f = Message::parse(&out).unwrap();
        f.validate().unwrap();
        assert_eq!(f.request_uri_bytes(), Some(&b"sip:bob@192.0.2.4:5062"[..]));
        let vias: Vec<_> = f.vias().map(|v| v.unwrap()).collect();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[0].branch(), Some(&b"z9hG4bKnew"[..]));
        assert_eq!(vias[1].branch(), Some(&b"z9hG4bKaaa"[..]));
        assert_eq!(f.max_forwards().unwrap(), Some(69));
        let routes: Vec<_> = f.routes().map(|r| r.unwrap().uri_raw.to_vec()).collect();
        assert_eq!(routes, vec![b"sip:other.example.com;lr".to_vec()]);
        let rr: Vec<_> = f
            .record_routes()
            .map(|r| r.unwrap().uri_raw.to_vec())
            .collect();
        assert_eq!(rr, vec![b"sip:10.0.0.1:5060;lr".to_vec()]);
        assert_eq!(f.body(), b"body");
        assert!(!out.ends_with(b"TRAILING"));
    }

    #[test]
    fn forward_pops_single_route_line_and_adds_max_forwards() {
        let raw = b"BYE sip:bob@192.0.2.4 SIP/2.0\r\nRoute: <sip:p1;lr>\r\n\
Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n\
Call-ID: x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
        let req = Message::parse(raw).unwrap();
        let mut out = Vec::new();
        let edits = ForwardEdits {
            via: Some(b"SIP/2.0/UDP p1;branch=z9hG4bK2"),
            pop_route: 1,
            decrement_max_forwards: true,
            ..Default::default()
        };
        write_forward(&mut out, &req, &edits).unwrap();
        let f = Message::parse(&out).unwrap();
        f.validate().unwrap();
        assert!(f.header(HeaderName::Route).is_none());
        assert_eq!(f.max_forwards().unwrap(), Some(70));
        assert_eq!(f.vias().count(), 2);
    }

    #[test]
    fn forward_pops_the_two_values_of_a_double_record_route_however_they_are_split() {
        for routes in [
            "Route: <sip:p1;lr>, <sip:p2;lr>, <sip:next;lr>\r\n",
            "Route: <sip:p1;lr>\r\nRoute: <sip:p2;lr>, <sip:next;lr>\r\n",
            "Route: <sip:p1;lr>, <sip:p2;lr>\r\nRoute: <sip:next;lr>\r\n",
            "Route: <sip:p1;lr>\r\nRoute: <sip:p2;lr>\r\nRoute: <sip:next;lr>\r\n",
        ] {
            let raw = format!(
                "BYE sip:bob@192.0.2.4 SIP/2.0\r\n{routes}Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 2 BYE\r\n\
Content-Length: 0\r\n\r\n"
            );
            let req = Message::parse(raw.as_bytes()).unwrap();
            let mut out = Vec::new();
            let edits = ForwardEdits {
                via: Some(b"SIP/2.0/TCP p1;branch=z9hG4bK2"),
                pop_route: 2,
                decrement_max_forwards: true,
                ..Default::default()
            };
            write_forward(&mut out, &req, &edits).unwrap();
            let f = Message::parse(&out).unwrap();
            f.validate().unwrap();
            let left: Vec<_> = f.routes().map(|r| r.unwrap().uri_raw.to_vec()).collect();
            assert_eq!(left, vec![b"sip:next;lr".to_vec()], "{routes}");
            // Both gone and nothing else: a single Route left as the only one.
            let raw2 = raw
                .replace(", <sip:next;lr>", "")
                .replace("Route: <sip:next;lr>\r\n", "");
            let req = Message::parse(raw2.as_bytes()).unwrap();
            out.clear();
            write_forward(&mut out, &req, &edits).unwrap();
            let f = Message::parse(&out).unwrap();
            assert!(f.header(HeaderName::Route).is_none(), "{raw2}");
        }
    }

    #[test]
    fn forward_refuses_zero_max_forwards() {
        let raw =
            b"OPTIONS sip:a@b SIP/2.0\r\nMax-Forwards: 0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 2 OPTIONS\r\n\r\n";
        let req = Message::parse(raw).unwrap();
        let edits = ForwardEdits {
            decrement_max_forwards: true,
            ..Default::default()
        };
        assert_eq!(
            write_forward(&mut Vec::new(), &req, &edits),
            Err(ForwardError::MaxForwards)
        );
    }

    #[test]
    fn salvage_answers_unparseable_requests() {
        let raw = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 999\r\n\r\nshort";
        let e = Message::parse(raw).unwrap_err();
        let mut out = Vec::new();
        assert!(salvage_response(
            &mut out,
            raw,
            e.status(),
            e.reason().as_bytes()
        ));
        let r = Message::parse(&out).unwrap();
        assert_eq!(r.status(), Some(400));
        assert!(std::str::from_utf8(r.reason().unwrap())
            .unwrap()
            .contains("Content-Length"));
        assert_eq!(r.top_via().unwrap().branch(), Some(&b"z9hG4bK1"[..]));
        let mut out = Vec::new();
        assert!(!salvage_response(
            &mut out,
            b"SIP/2.0 200 OK\r\n\r\n",
            400,
            b"x"
        ));
        assert!(!salvage_response(
            &mut out,
            b"INVITE x\r\nFrom: a\r\n\r\n",
            400,
            b"x"
        ));
        assert!(out.is_empty());
    }
}

#[cfg(test)]
mod canonical_tests {
    use super::*;

    fn canonical(raw: &[u8]) -> Vec<u8> {
        let msg = Message::parse(raw).unwrap();
        let mut out = Vec::new();
        write_message(&mut out, &msg);
        out
    }

    #[test]
    fn write_message_canonicalises_names_and_length() {
        let raw = b"\r\nINVITE sip:bob@example.com sip/2.0\r\n\
v: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
f: <sip:a@example.com>;tag=1\r\n\
t  :   <sip:bob@example.com>\r\n\
i: c1\r\n\
CSEQ: 1 INVITE\r\n\
X-Custom-Thing: kept as is\r\n\
l: 4\r\n\
\r\nbody-ignored-after";
        let out = canonical(raw);
        assert_eq!(
            out,
            b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@example.com>;tag=1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
X-Custom-Thing: kept as is\r\n\
Content-Length: 4\r\n\
\r\nbody"
        );
        let again = Message::parse(&out).unwrap();
        assert!(again.validate().is_ok());
        assert_eq!(again.body(), b"body");
    }

    #[test]
    fn write_message_adds_content_length_and_keeps_folding() {
        // No Content-Length in a datagram: the body runs to the end; the writer states it.
        let raw = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
Subject: first\r\n second\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        let out = canonical(raw);
        assert_eq!(
            out,
            b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
Subject: first\r\n second\r\nContent-Length: 3\r\n\r\nabc"
        );
        let again = Message::parse(&out).unwrap();
        assert_eq!(again.status(), Some(180));
        assert_eq!(
            again.header(HeaderName::Subject),
            Some(&b"first\r\n second"[..])
        );
        let raw = b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\nxyz";
        let out = canonical(raw);
        assert!(out.ends_with(b"Content-Length: 3\r\n\r\nxyz"));
    }

    #[test]
    fn write_message_is_a_fixed_point() {
        for raw in [
            &b"REGISTER sip:r.example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK2\r\n\
To: <sip:a@r.example.com>\r\nFrom: <sip:a@r.example.com>;tag=x\r\nCall-ID: r1\r\n\
CSeq: 2 REGISTER\r\nContact: <sip:a@192.0.2.1>;expires=60, <sip:a@192.0.2.2>\r\n\
Content-Length: 0\r\n\r\n"[..],
            b"SIP/2.0 200 OK\r\nvia: SIP/2.0/UDP h;branch=z9hG4bK2\r\nContent-Length: 2\r\n\r\nok",
        ] {
            let first = canonical(raw);
            // Canonical output is a fixed point.
            assert_eq!(canonical(&first), first);
        }
    }
}
