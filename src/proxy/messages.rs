//! Messages a proxy writes from others by splicing (RFC 3261 §16): a response relayed upstream
//! without our Via (§16.7 step 3 and 9), a CANCEL for a forwarded INVITE (§9.1), a 401/407
//! carrying the challenges of every branch (§16.7 step 7), plus the branch values of the Vias
//! we add with their loop-detection part (§16.6 step 8, §16.3 item 4).

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
            (slot.name_span().start as usize, after)
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

/// A branch for a Via this proxy adds (§16.6 step 8): the RFC 3261 cookie, `-ss`, the shard,
/// then the loop-detection hash of the request as received (16 hex digits, see
/// [`loop_hash`]) and a per-shard counter, so every client transaction's branch is unique
/// (§8.1.1.7): `z9hG4bK-ss<shard>.<hash>.<counter>`.
pub fn write_branch(out: &mut Vec<u8>, shard: usize, loop_hash: u64, counter: u64) {
    write_branch_head(out, shard, loop_hash);
    out.extend_from_slice(itoa::Buffer::new().format(counter).as_bytes());
}

/// [`write_branch`] up to its last part, `z9hG4bK-ss<shard>.<hash>.` (a stateless forward
/// ends it with a hash of the incoming branch instead of a counter).
pub fn write_branch_head(out: &mut Vec<u8>, shard: usize, loop_hash: u64) {
    out.extend_from_slice(crate::sip::headers::MAGIC_COOKIE);
    out.extend_from_slice(b"-ss");
    out.extend_from_slice(itoa::Buffer::new().format(shard).as_bytes());
    out.push(b'.');
    out.extend_from_slice(&hex16(loop_hash));
    out.push(b'.');
}

/// `h` as 16 lower-case hex digits.
pub fn hex16(h: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, c) in out.iter_mut().enumerate() {
        *c = HEX[((h >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The loop-detection part of a branch written by [`write_branch`] (None for other branches).
pub fn loop_part(branch: &[u8]) -> Option<&[u8]> {
    let rest = branch.strip_prefix(b"z9hG4bK-ss")?;
    let rest = &rest[memchr::memchr(b'.', rest)? + 1..];
    let end = memchr::memchr(b'.', rest)?;
    (end == 16).then(|| &rest[..end])
}

/// The hash of the fields of a request that decide how a proxy processes it (§16.6 step 8):
/// the Request-URI as received, the From and To tags, the Call-ID, the CSeq number and every
/// Route, Proxy-Require and Proxy-Authorization value. The method is left out (a CANCEL or
/// the ACK of a non-2xx has its INVITE's branch), and so is the top Via: it names whoever sent
/// the request last, which differs on every pass of a loop and would make every loop look
/// like a spiral. FNV-1a with a fixed basis, so every shard (and every run) computes the same.
pub fn loop_hash(msg: &Message<'_>) -> u64 {
    loop_hash_keyed(msg, msg.call_id().unwrap_or_default(), true)
}

/// [`loop_hash`] without the To tag: what a stateless forward puts in its branch. The ACK of a
/// non-2xx has the To tag of the response and must still get its INVITE's branch (§16.11),
/// which a hash over the To tag would change.
pub fn stateless_loop_hash(msg: &Message<'_>) -> u64 {
    loop_hash_keyed(msg, msg.call_id().unwrap_or_default(), false)
}

/// [`loop_hash`] (`to_tag`) or [`stateless_loop_hash`] with `call_id` in place of the
/// request's: a proxy that masks Call-IDs (topology hiding) hashes the unmasked one, so a
/// request looping through it is the same request on every pass.
pub fn loop_hash_keyed(msg: &Message<'_>, call_id: &[u8], to_tag: bool) -> u64 {
    #[inline]
    fn mix(h: u64, bytes: &[u8]) -> u64 {
        let h = bytes
            .iter()
            .fold(h, |h, &c| (h ^ c as u64).wrapping_mul(0x0100_0000_01b3));
        // A separator so that moving bytes from one field to the next changes the hash.
        (h ^ 0xff).wrapping_mul(0x0100_0000_01b3)
    }
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    h = mix(h, msg.request_uri_bytes().unwrap_or_default());
    h = mix(h, msg.from().ok().and_then(|f| f.tag()).unwrap_or_default());
    let tag = if to_tag {
        msg.to().ok().and_then(|t| t.tag())
    } else {
        None
    };
    h = mix(h, tag.unwrap_or_default());
    h = mix(h, call_id);
    let seq = msg.cseq().map_or(0, |c| c.seq);
    h = mix(h, itoa::Buffer::new().format(seq).as_bytes());
    for name in [
        HeaderName::Route,
        HeaderName::ProxyRequire,
        HeaderName::ProxyAuthorization,
    ] {
        for v in msg.header_all(name) {
            h = mix(h, v);
        }
        h = mix(h, b"");
    }
    h
}

/// Appends every WWW-Authenticate and Proxy-Authenticate line of `resp` to `out` (for
/// §16.7 step 7). Returns how many lines were added.
pub fn collect_challenges(out: &mut Vec<u8>, resp: &Message<'_>) -> usize {
    let mut n = 0;
    for (name, text) in [
        (HeaderName::WwwAuthenticate, "WWW-Authenticate"),
        (HeaderName::ProxyAuthenticate, "Proxy-Authenticate"),
    ] {
        for v in resp.header_all(name) {
            header(out, text, v);
            n += 1;
        }
    }
    n
}

/// Writes `resp` with its own WWW-Authenticate and Proxy-Authenticate lines replaced by
/// `challenges` (header lines as written by [`collect_challenges`]), placed at the end of
/// the header section (§16.7 step 7).
pub fn write_with_challenges(out: &mut Vec<u8>, resp: &Message<'_>, challenges: &[u8]) {
    let buf = resp.buf();
    let line_end = |value_end: usize| {
        memchr::memchr(b'\n', &buf[value_end..]).map_or(buf.len(), |i| value_end + i + 1)
    };
    let mut pos = resp.start_offset();
    let mut headers_end = resp.headers_offset();
    for slot in resp.slots() {
        let end = line_end(slot.value.end as usize);
        if matches!(
            slot.name,
            HeaderName::WwwAuthenticate | HeaderName::ProxyAuthenticate
        ) {
            out.extend_from_slice(&buf[pos..slot.name_span().start as usize]);
            pos = end;
        }
        headers_end = end;
    }
    out.extend_from_slice(&buf[pos..headers_end.max(pos)]);
    out.extend_from_slice(challenges);
    out.extend_from_slice(&buf[headers_end.max(pos)..resp.len()]);
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
        write_branch(&mut a, 1, 0xfeed, 5);
        write_branch(&mut b, 1, 0xfeed, 6);
        assert!(a.starts_with(b"z9hG4bK"));
        assert_ne!(a, b);
        assert_eq!(a, b"z9hG4bK-ss1.000000000000feed.5");
        assert_eq!(loop_part(&a), Some(&b"000000000000feed"[..]));
        assert_eq!(loop_part(b"z9hG4bK-ss1.7"), None);
        assert_eq!(loop_part(b"z9hG4bKother"), None);
    }

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c\r\n\
CSeq: 4711 INVITE\r\nContent-Length: 0\r\n\r\n";

    fn hash_of(text: &str) -> u64 {
        loop_hash(&Message::parse(text.as_bytes()).unwrap())
    }

    #[test]
    fn loop_hash_covers_the_fields_of_16_6_step_8() {
        let h = hash_of(INVITE);
        // Not the method, the top Via or Max-Forwards: a looped copy hashes the same.
        let looped = INVITE
            .replace("Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa", "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-ss0.1.2\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa")
            .replace("Max-Forwards: 70", "Max-Forwards: 69");
        assert_eq!(hash_of(&looped), h);
        assert_eq!(
            hash_of(
                &INVITE
                    .replacen("INVITE sip", "CANCEL sip", 1)
                    .replace("4711 INVITE", "4711 CANCEL")
            ),
            h
        );
        // Each of these makes it another request (a spiral, not a loop).
        for (from, to) in [
            ("sip:bob@example.com SIP", "sip:bob@10.0.0.2 SIP"),
            ("tag=1", "tag=2"),
            (
                "<sip:bob@example.com>\r\n",
                "<sip:bob@example.com>;tag=9\r\n",
            ),
            ("Call-ID: c", "Call-ID: d"),
            ("CSeq: 4711", "CSeq: 4712"),
            (
                "Max-Forwards: 70",
                "Max-Forwards: 70\r\nRoute: <sip:10.0.0.9;lr>",
            ),
            ("Max-Forwards: 70", "Max-Forwards: 70\r\nProxy-Require: foo"),
            (
                "Max-Forwards: 70",
                "Max-Forwards: 70\r\nProxy-Authorization: Digest username=\"a\"",
            ),
        ] {
            assert_ne!(hash_of(&INVITE.replacen(from, to, 1)), h, "{to}");
        }
    }

    #[test]
    fn challenges_are_collected_and_replace_the_best_responses_own() {
        let a = "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
WWW-Authenticate: Digest realm=\"a\", nonce=\"1\"\r\nContent-Length: 2\r\n\r\nhi";
        let b = "SIP/2.0 407 Proxy Authentication Required\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=3\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
Proxy-Authenticate: Digest realm=\"b\", nonce=\"2\"\r\nWWW-Authenticate: Digest realm=\"c\"\r\n\
Content-Length: 0\r\n\r\n";
        let (ma, mb) = (
            Message::parse(a.as_bytes()).unwrap(),
            Message::parse(b.as_bytes()).unwrap(),
        );
        let mut all = Vec::new();
        assert_eq!(collect_challenges(&mut all, &ma), 1);
        assert_eq!(collect_challenges(&mut all, &mb), 2);
        let mut out = Vec::new();
        write_with_challenges(&mut out, &ma, &all);
        let m = Message::parse(&out).unwrap();
        m.validate().unwrap();
        assert_eq!(m.status(), Some(401));
        let www: Vec<_> = m.header_all(HeaderName::WwwAuthenticate).collect();
        assert_eq!(
            www,
            vec![
                &b"Digest realm=\"a\", nonce=\"1\""[..],
                &b"Digest realm=\"c\""[..]
            ]
        );
        assert_eq!(
            m.header(HeaderName::ProxyAuthenticate),
            Some(&b"Digest realm=\"b\", nonce=\"2\""[..])
        );
        assert_eq!(m.body(), b"hi");
        assert_eq!(m.header(HeaderName::CallId), Some(&b"c"[..]));
    }
}
