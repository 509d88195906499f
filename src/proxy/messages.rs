//! Messages a proxy writes from others by splicing (RFC 3261 §16): a response relayed upstream
//! without our Via (§16.7 step 3 and 9), and a CANCEL for a forwarded INVITE (§9.1), plus the
//! branch values of the Vias we add (§16.6 step 8).

use crate::sip::scan::CommaSplit;
use crate::sip::write::header;
use crate::sip::{HeaderName, Message};

/// Writes `resp` without its first Via value (the one this proxy added when forwarding the
/// request). Returns false (writing nothing) if the response has no Via.
pub fn write_response_upstream(out: &mut Vec<u8>, resp: &Message<'_>) -> bool {
    let Some(slot) = resp.first_slot(HeaderName::Via) else {
        return false;
    };
    let buf = resp.buf();
    let line = resp.slice(slot.value);
    let mut split = CommaSplit::new(line);
    split.next();
    let (cut_start, cut_end) = match split.next() {
        // Several values on the line: drop the first and its comma.
        Some((second, _)) => (
            slot.value.start as usize,
            slot.value.start as usize + second,
        ),
        // One value: drop the line with its line break.
        None => {
            let end = slot.value.end as usize;
            let after = memchr::memchr(b'\n', &buf[end..]).map_or(buf.len(), |i| end + i + 1);
            (slot.name_span.start as usize, after)
        }
    };
    out.extend_from_slice(&buf[resp.start_offset()..cut_start]);
    out.extend_from_slice(&buf[cut_end..resp.len()]);
    true
}

/// Writes the CANCEL for a request this proxy forwarded (§9.1): the same Request-URI, Call-ID,
/// From, To and CSeq number, method CANCEL, a single Via equal to the request's top Via, the
/// request's Route headers, and no body.
pub fn write_cancel(out: &mut Vec<u8>, forwarded: &Message<'_>) -> bool {
    let (Some(ruri), Ok(cseq)) = (forwarded.request_uri_bytes(), forwarded.cseq()) else {
        return false;
    };
    let Some(via) = forwarded.header(HeaderName::Via) else {
        return false;
    };
    let top_via = CommaSplit::new(via).next().map_or(via, |(_, v)| v);
    out.extend_from_slice(b"CANCEL ");
    out.extend_from_slice(ruri);
    out.extend_from_slice(b" SIP/2.0\r\n");
    header(out, "Via", top_via);
    for name in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
        if let Some(v) = forwarded.header(name) {
            header(out, name.as_str(), v);
        }
    }
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"CSeq: ");
    out.extend_from_slice(n.format(cseq.seq).as_bytes());
    out.extend_from_slice(b" CANCEL\r\n");
    for r in forwarded.header_all(HeaderName::Route) {
        header(out, "Route", r);
    }
    out.extend_from_slice(b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    true
}

/// A branch for a Via this proxy adds: the RFC 3261 cookie, then shard and a per-shard
/// counter, so every client transaction's branch is unique (§8.1.1.7).
pub fn write_branch(out: &mut Vec<u8>, shard: usize, counter: u64) {
    out.extend_from_slice(crate::sip::headers::MAGIC_COOKIE);
    out.extend_from_slice(b"-ss");
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(n.format(shard).as_bytes());
    out.push(b'.');
    out.extend_from_slice(n.format(counter).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESP: &[u8] = b"SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-ss0.1, SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn upstream_response_loses_exactly_our_via() {
        let r = Message::parse(RESP).unwrap();
        let mut out = Vec::new();
        assert!(write_response_upstream(&mut out, &r));
        let u = Message::parse(&out).unwrap();
        u.validate().unwrap();
        let branches: Vec<_> = u
            .vias()
            .map(|v| v.unwrap().branch().unwrap().to_vec())
            .collect();
        assert_eq!(branches, vec![b"z9hG4bKa".to_vec(), b"z9hG4bKb".to_vec()]);
        // A Via line with one value disappears entirely.
        let single = String::from_utf8(RESP.to_vec())
            .unwrap()
            .replace(", SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa", "");
        let r = Message::parse(single.as_bytes()).unwrap();
        let mut out = Vec::new();
        assert!(write_response_upstream(&mut out, &r));
        let u = Message::parse(&out).unwrap();
        assert_eq!(u.vias().count(), 1);
        assert_eq!(u.top_via().unwrap().branch(), Some(&b"z9hG4bKb"[..]));
        assert_eq!(u.status(), Some(180));
    }

    #[test]
    fn cancel_mirrors_the_forwarded_invite() {
        let inv = b"INVITE sip:bob@192.0.2.4:5062 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-ss0.7\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
Route: <sip:next.example.com;lr>\r\nRecord-Route: <sip:10.0.0.1:5060;lr>\r\n\
Max-Forwards: 69\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:bob@x>\r\nCall-ID: c\r\n\
CSeq: 4711 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0";
        let m = Message::parse(inv).unwrap();
        let mut out = Vec::new();
        assert!(write_cancel(&mut out, &m));
        let c = Message::parse(&out).unwrap();
        c.validate().unwrap();
        assert_eq!(c.method_bytes(), Some(&b"CANCEL"[..]));
        assert_eq!(c.request_uri_bytes(), m.request_uri_bytes());
        assert_eq!(c.vias().count(), 1);
        assert_eq!(c.top_via().unwrap().branch(), Some(&b"z9hG4bK-ss0.7"[..]));
        assert_eq!(c.cseq().unwrap().seq, 4711);
        assert_eq!(c.cseq().unwrap().method, b"CANCEL");
        assert_eq!(
            c.header(HeaderName::Route),
            Some(&b"<sip:next.example.com;lr>"[..])
        );
        assert!(c.header(HeaderName::RecordRoute).is_none());
        assert_eq!(c.body(), b"");
        assert_eq!(c.to().unwrap().tag(), None);
    }

    #[test]
    fn branches_are_rfc3261_and_unique() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_branch(&mut a, 1, 5);
        write_branch(&mut b, 1, 6);
        assert!(a.starts_with(b"z9hG4bK"));
        assert_ne!(a, b);
    }
}
