//! Parses arbitrary bytes as a SIP datagram and, when that succeeds, exercises every typed
//! accessor, the URI parser and comparison, the response writer and the forwarder, then
//! re-parses what the forwarder wrote. Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard::sip::write::{
    finish, header, response_head, write_forward, write_message, ForwardEdits, ViaFixup,
};
use sipshard::sip::{Framing, HeaderName, Limits, Message, Uri};
use std::hint::black_box;

fn uri(u: &Uri<'_>) {
    black_box((
        u.is_sip(),
        u.lr(),
        u.transport(),
        u.maddr(),
        u.param("user"),
    ));
    for p in u.param_iter() {
        black_box(p);
    }
    for h in u.header_iter() {
        black_box(h);
    }
    let mut out = Vec::new();
    black_box(u.write_aor(&mut out));
    black_box(u.aor());
}

fuzz_target!(|data: &[u8]| {
    // Stream framing too: a different set of framing errors.
    black_box(Message::parse_with(data, Limits::default(), Framing::Stream).ok());
    // The server's entry point, into storage that held another (longer) message first: the
    // same verdict and the same header lines as a parse by value.
    let mut slot = core::mem::MaybeUninit::uninit();
    let earlier: &[u8] = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
To: <sip:a@b>\r\nFrom: <sip:c@d>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:c@h>\r\nSubject: s\r\nl: 3\r\n\r\nabc";
    assert!(Message::parse_in(&mut slot, earlier, Limits::default(), Framing::Datagram).is_ok());
    let in_place = Message::parse_in(&mut slot, data, Limits::default(), Framing::Datagram)
        .map(|m| (m.slots().to_vec(), m.body().len()));
    let Ok(msg) = Message::parse(data) else {
        assert!(in_place.is_err());
        return;
    };
    assert_eq!(in_place.ok(), Some((msg.slots().to_vec(), msg.body().len())));
    // Structural invariants of a successful parse.
    let len = data.len();
    for slot in msg.slots() {
        assert!(slot.value.start <= slot.value.end && slot.value.end as usize <= len);
        assert!(slot.name_span().end as usize <= len);
        black_box(msg.slice(slot.name_span()));
        // Raw access by name: first value, every value, the slot.
        black_box((msg.header(slot.name), msg.first_slot(slot.name)));
        black_box(msg.header_all(slot.name).count());
        if let Ok(name) = std::str::from_utf8(msg.slice(slot.name_span())) {
            black_box(msg.header_by_name(name));
        }
    }
    black_box((
        msg.buf(),
        msg.len(),
        msg.headers_offset(),
        msg.start_offset(),
    ));
    black_box((
        msg.request_uri_bytes(),
        msg.request_uri_span(),
        msg.is_request(),
    ));
    assert!(msg.body_span().end as usize <= len);
    if let (Some(cl), false) = (msg.content_length(), msg.has_conflicting_content_length()) {
        assert_eq!(msg.body().len(), cl as usize);
    }

    let valid = msg.validate().is_ok();
    black_box((
        msg.start_line(),
        msg.method(),
        msg.method_bytes(),
        msg.status(),
        msg.reason(),
    ));
    black_box((msg.call_id().ok(), msg.cseq().ok(), msg.max_forwards().ok()));
    black_box((
        msg.expires().ok(),
        msg.min_expires().ok(),
        msg.content_length(),
    ));
    black_box((
        msg.content_type().ok(),
        msg.contact_star(),
        msg.header_by_name("x-foo"),
    ));
    if let Ok(Some(ct)) = msg.content_type() {
        black_box(ct.is_sdp());
    }
    for v in msg.vias().flatten() {
        black_box((v.branch(), v.has_rfc3261_branch(), v.received(), v.rport()));
        black_box((v.maddr(), v.ttl()));
    }
    black_box(msg.top_via().ok());
    let mut uris: Vec<Uri<'_>> = Vec::new();
    if let Ok(u) = msg.request_uri() {
        uris.push(u);
    }
    let mut addrs = Vec::new();
    addrs.extend(msg.from().ok());
    addrs.extend(msg.to().ok());
    for name in [
        HeaderName::Contact,
        HeaderName::Route,
        HeaderName::RecordRoute,
        HeaderName::Path,
    ] {
        addrs.extend(msg.name_addrs(name).flatten());
        black_box(msg.count(name));
    }
    addrs.extend(msg.contacts().flatten());
    addrs.extend(msg.routes().flatten());
    addrs.extend(msg.record_routes().flatten());
    addrs.extend(msg.paths().flatten());
    for n in &addrs {
        black_box((
            n.tag(),
            n.expires(),
            n.q(),
            n.instance(),
            n.reg_id(),
            n.display,
        ));
        for p in n.params.iter() {
            black_box(p);
        }
        if let Ok(u) = n.uri() {
            uris.push(u);
        }
    }
    for name in [
        HeaderName::Require,
        HeaderName::ProxyRequire,
        HeaderName::Supported,
        HeaderName::Unsupported,
    ] {
        for t in msg.option_tags(name) {
            black_box(t.ok());
        }
    }
    for name in [
        HeaderName::Authorization,
        HeaderName::ProxyAuthorization,
        HeaderName::WwwAuthenticate,
        HeaderName::ProxyAuthenticate,
    ] {
        for a in msg.auth_headers(name).flatten() {
            black_box((a.is_digest(), a.get("realm"), a.digest()));
            for p in a.iter() {
                black_box(p);
            }
        }
    }
    for u in &uris {
        uri(u);
    }
    for a in &uris {
        for b in &uris {
            // Equality must be symmetric and reflexive.
            assert_eq!(a.equals(b), b.equals(a));
        }
        assert!(a.equals(a));
    }

    let mut out = Vec::new();
    if msg.is_request() {
        response_head(&mut out, &msg, 200, b"OK", Some(b"tag1"), None);
        header(&mut out, "Contact", b"<sip:a@192.0.2.1>");
        finish(&mut out, b"");
        out.clear();
        let fix = ViaFixup {
            received: b"192.0.2.9",
            add_received: true,
            rport: 5062,
        };
        response_head(&mut out, &msg, 486, b"Busy Here", Some(b"tag2"), Some(fix));
        finish(&mut out, b"");
        let resp = Message::parse(&out);
        if valid {
            let resp = resp.expect("a response to a valid request parses");
            assert_eq!(resp.status(), Some(486));
        }

        let edits = ForwardEdits {
            request_uri: Some(b"sip:bob@192.0.2.4:5060"),
            via: Some(b"SIP/2.0/UDP proxy.example.com;branch=z9hG4bKfuzz"),
            record_route: Some(b"<sip:proxy.example.com;lr>"),
            pop_route: true,
            decrement_max_forwards: true,
        };
        out.clear();
        if write_forward(&mut out, &msg, &edits).is_ok() {
            let fwd = Message::parse(&out);
            if valid {
                let fwd = fwd.expect("a forwarded valid request parses");
                assert_eq!(fwd.body(), msg.body());
                assert_eq!(
                    fwd.top_via().ok().and_then(|v| v.branch()),
                    Some(&b"z9hG4bKfuzz"[..])
                );
            }
        }
        out.clear();
        let _ = write_forward(&mut out, &msg, &ForwardEdits::default());
    }

    // The canonical writer: a valid message must survive write + parse.
    out.clear();
    write_message(&mut out, &msg);
    let again = Message::parse(&out);
    if valid {
        let again = again.expect("write_message output of a valid message parses");
        assert_eq!(again.body(), msg.body());
        assert_eq!(again.call_id().ok(), msg.call_id().ok());
    }
});
