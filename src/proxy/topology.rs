//! Topology hiding (an option, the SBC role; what Kamailio's `topoh` does): toward each side,
//! the proxy replaces what names the other side, and puts it back on the way through.
//!
//! - **Via** (RFC 3261 §16.6 step 8, §16.7 step 3): a request leaves with one Via, ours, the
//!   chain below it sealed into its `th` parameter; the response that comes back echoes our
//!   Via, so the chain is opened again when the response goes upstream.
//! - **Record-Route** (§16.6 step 4, §12.1): the entries beyond ours are sealed into our own,
//!   which becomes `<sip:us;lr;th=..>`; an in-dialog request that comes back with that Route
//!   gets the sealed route set back in its place (ours first, which the proxy then pops as
//!   usual). A 2xx going upstream carries ours with the callee side's entries sealed into it.
//! - **Contact**: every Contact URI of the other side becomes `sip:us;th=..`; a request whose
//!   Request-URI is such a URI gets the original back.
//! - **Call-ID**: masked (`th-` and the sealed Call-ID) toward one side and unmasked toward the
//!   other; the mask is deterministic, so every message of a dialog maps the same way.
//!
//! Nothing is kept per dialog: a dialog outlives its transactions, works across shards and
//! survives a restart if the key is configured. Sealing is deterministic authenticated
//! encryption in the SIV style: the tag is HMAC-SHA-256(key, data) cut to 8 bytes, the data
//! is XORed with a SHA-256(key, tag, counter) keystream, and the text is base64url of tag and
//! ciphertext. A forged or altered value does not open: it is left as it is (a response whose
//! Via does not open is not relayed). SDP (media addresses) is not touched: hiding media needs
//! a media relay.

use crate::sip::scan::CommaSplit;
use crate::sip::write::header;
use crate::sip::{HeaderName, Message, Uri};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What a masked Call-ID starts with.
const CALL_ID_PREFIX: &[u8] = b"th-";
const TAG_LEN: usize = 8;

/// The key and the sealing of topology hiding (one per configuration, shared by every shard).
#[derive(Clone)]
pub struct Hider {
    key: [u8; 32],
    /// HMAC keyed once (cloning it saves hashing the key pads per message).
    mac: Hmac<Sha256>,
    /// The key was drawn at random (no `topology_key`): a reload keeps the running one.
    random: bool,
}

impl std::fmt::Debug for Hider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hider { .. }")
    }
}

impl PartialEq for Hider {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Hider {}

/// Is a URI ours (routes to this server)?
pub trait Ours: Fn(&Uri<'_>) -> bool {}
impl<F: Fn(&Uri<'_>) -> bool> Ours for F {}

impl Hider {
    /// A hider whose key is derived from `secret` (any length; servers sharing dialogs, or a
    /// server that restarts during calls, need the same secret).
    pub fn new(secret: &[u8]) -> Hider {
        let mut h = Sha256::new();
        h.update(b"sipshard topology hiding\0");
        h.update(secret);
        let key: [u8; 32] = h.finalize().into();
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
        Hider {
            key,
            mac,
            random: false,
        }
    }

    /// True when the key was drawn at random ([`Hider::random`]).
    pub fn is_random(&self) -> bool {
        self.random
    }

    /// A hider with a random key (dialogs do not survive a restart).
    pub fn random() -> Result<Hider, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)?;
        Ok(Hider {
            random: true,
            ..Hider::new(&secret)
        })
    }

    fn keystream_xor(&self, tag: &[u8], data: &mut [u8]) {
        for (i, chunk) in data.chunks_mut(32).enumerate() {
            let mut h = Sha256::new();
            h.update(self.key);
            h.update(tag);
            h.update((i as u32).to_le_bytes());
            let block = h.finalize();
            for (b, k) in chunk.iter_mut().zip(block.iter()) {
                *b ^= k;
            }
        }
    }

    fn tag(&self, plain: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(plain);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Appends the sealed text of `plain` (base64url characters: a token, a URI parameter
    /// value and a Call-ID word all take them).
    pub fn seal(&self, plain: &[u8], out: &mut Vec<u8>) {
        let tag = self.tag(plain);
        let mut raw = Vec::with_capacity(TAG_LEN + plain.len());
        raw.extend_from_slice(&tag);
        raw.extend_from_slice(plain);
        self.keystream_xor(&tag, &mut raw[TAG_LEN..]);
        let at = out.len();
        out.resize(at + base64::encoded_len(raw.len(), false).unwrap_or(0), 0);
        let n = URL_SAFE_NO_PAD
            .encode_slice(&raw, &mut out[at..])
            .unwrap_or(0);
        out.truncate(at + n);
    }

    /// What `sealed` was sealed from; None if it was not sealed with this key or was altered.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let mut raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < TAG_LEN {
            return None;
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&raw[..TAG_LEN]);
        self.keystream_xor(&tag, &mut raw[TAG_LEN..]);
        let plain = raw.split_off(TAG_LEN);
        // Compared in constant time: the tag is what keeps forgeries out.
        let mut mac = self.mac.clone();
        mac.update(&plain);
        mac.verify_truncated_left(&tag).ok()?;
        Some(plain)
    }

    /// The Call-ID the other side sees: masked if `call_id` is not, the original if it is.
    pub fn flip_call_id(&self, call_id: &[u8], out: &mut Vec<u8>) {
        match self.unmask_call_id(call_id) {
            Some(plain) => out.extend_from_slice(&plain),
            None => {
                out.extend_from_slice(CALL_ID_PREFIX);
                self.seal(call_id, out);
            }
        }
    }

    /// The original of a masked Call-ID; None if `call_id` is not one of ours.
    pub fn unmask_call_id(&self, call_id: &[u8]) -> Option<Vec<u8>> {
        self.open(call_id.strip_prefix(CALL_ID_PREFIX)?)
    }

    /// An arriving request with its hidden parts put back: a Request-URI that is one of our
    /// Contact URIs becomes the URI sealed in it, and a first Route that is one of our
    /// Record-Routes becomes the route set sealed in it. Writes the request into `out` and
    /// returns true when anything changed (false: `out` untouched, use `msg` as it is).
    pub fn restore_request(&self, msg: &Message<'_>, ours: &impl Ours, out: &mut Vec<u8>) -> bool {
        let ruri = msg
            .request_uri()
            .ok()
            .filter(|u| ours(u))
            .and_then(|u| self.open(u.param("th").flatten()?));
        let routes = msg.first_slot(HeaderName::Route).and_then(|slot| {
            let (_, first) = CommaSplit::new(msg.slice(slot.value)).next()?;
            Some((first, self.own_sealed_route(first, ours)?))
        });
        if ruri.is_none() && routes.is_none() {
            return false;
        }
        let buf = msg.buf();
        let mut pos = msg.start_offset();
        if let (Some(uri), Some(span)) = (&ruri, msg.request_uri_span()) {
            out.extend_from_slice(&buf[pos..span.start as usize]);
            out.extend_from_slice(uri);
            pos = span.end as usize;
        }
        if let Some((first, opened)) = &routes {
            // `first` is a slice of `buf`: its offset says where to cut.
            let at = first.as_ptr() as usize - buf.as_ptr() as usize;
            out.extend_from_slice(&buf[pos..at]);
            out.extend_from_slice(opened);
            pos = at + first.len();
        }
        out.extend_from_slice(&buf[pos..msg.len()]);
        true
    }

    /// Writes `fwd` (a request as this proxy forwards it, its own Via on top) as the other
    /// side may see it: one Via, the rest sealed into it; our Record-Route (when it is the
    /// first) with the entries below it sealed into it; Contact URIs replaced; the Call-ID
    /// flipped. `host` is the address our Via and Record-Route name.
    pub fn hide_request(&self, fwd: &Message<'_>, host: &str, ours: &impl Ours, out: &mut Vec<u8>) {
        let vias = values(fwd, HeaderName::Via);
        let rrs = values(fwd, HeaderName::RecordRoute);
        let ours_rr = rrs
            .first()
            .and_then(|v| self.own_route(v, ours))
            .map(|expanded| {
                let mut list = expanded;
                for v in &rrs[1..] {
                    list.extend_from_slice(b", ");
                    list.extend_from_slice(v);
                }
                list
            });
        self.rewrite(fwd, out, host, ours, |name, out| match name {
            HeaderName::Via => {
                let Some((top, rest)) = vias.split_first() else {
                    return;
                };
                out.extend_from_slice(b"Via: ");
                out.extend_from_slice(top);
                if !rest.is_empty() {
                    out.extend_from_slice(b";th=");
                    self.seal(&join(rest), out);
                }
                out.extend_from_slice(b"\r\n");
            }
            _ => {
                let Some(list) = &ours_rr else {
                    // Not ours on top: every entry as it was.
                    for v in &rrs {
                        header(out, "Record-Route", v);
                    }
                    return;
                };
                self.write_route(host, list, out);
            }
        });
    }

    /// Writes `resp` (a response from the side we hid things from) as it goes upstream: our
    /// Via replaced by the chain sealed in it, the Record-Route set turned around the same
    /// way as [`Hider::hide_request`] does for requests (ours with the callee side's entries
    /// sealed, then the caller side's as they were), Contact URIs replaced, the Call-ID
    /// flipped. Returns false (writing nothing) if our Via carries no chain that opens: the
    /// request did not leave hidden (relay it plainly) or the Via was forged.
    pub fn hide_response(
        &self,
        resp: &Message<'_>,
        host: &str,
        ours: &impl Ours,
        out: &mut Vec<u8>,
    ) -> bool {
        let vias = values(resp, HeaderName::Via);
        let Some(chain) = vias.first().and_then(|v| self.open(via_param(v)?)) else {
            return false;
        };
        let rrs = values(resp, HeaderName::RecordRoute);
        // Ours: the first entry of ours that opens. Before it, the callee side's entries;
        // after it (sealed in it), ours as written and the caller side's.
        let found = rrs
            .iter()
            .enumerate()
            .find_map(|(i, v)| Some((i, self.own_sealed_route(v, ours)?)));
        let route_sets = found.map(|(i, opened)| {
            let mut sealed = Vec::new();
            let mut split = CommaSplit::new(&opened);
            let first = split.next().map(|(_, v)| v).unwrap_or_default();
            sealed.extend_from_slice(first);
            // In the order a request from upstream follows them: the reverse of their order
            // in the response (§12.1.2).
            for v in rrs[..i].iter().rev() {
                sealed.extend_from_slice(b", ");
                sealed.extend_from_slice(v);
            }
            let after: Vec<Vec<u8>> = split.map(|(_, v)| v.to_vec()).collect();
            (sealed, after)
        });
        let start = out.len();
        self.rewrite(resp, out, host, ours, |name, out| match name {
            HeaderName::Via => {
                out.extend_from_slice(b"Via: ");
                out.extend_from_slice(&chain);
                for v in &vias[1..] {
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(v);
                }
                out.extend_from_slice(b"\r\n");
            }
            _ => match &route_sets {
                Some((sealed, after)) => {
                    self.write_route(host, sealed, out);
                    for v in after {
                        header(out, "Record-Route", v);
                    }
                }
                None => {
                    for v in &rrs {
                        header(out, "Record-Route", v);
                    }
                }
            },
        });
        out.len() > start
    }

    /// The Call-ID this proxy keys a request by (the toll-fraud call counts, the loop hash):
    /// the original of a masked one, so both sides of a dialog agree.
    pub fn canonical_call_id<'m>(&self, call_id: &'m [u8]) -> std::borrow::Cow<'m, [u8]> {
        match self.unmask_call_id(call_id) {
            Some(plain) => std::borrow::Cow::Owned(plain),
            None => std::borrow::Cow::Borrowed(call_id),
        }
    }

    /// `<sip:host;lr;th=sealed(list)>` as a Record-Route line.
    fn write_route(&self, host: &str, list: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"Record-Route: <sip:");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b";lr;th=");
        self.seal(list, out);
        out.extend_from_slice(b">\r\n");
    }

    /// A Record-Route entry of ours, as the list its `th` seals (the entry itself when it
    /// has none); None when the entry is not ours.
    fn own_route(&self, value: &[u8], ours: &impl Ours) -> Option<Vec<u8>> {
        match own_th(value, ours)? {
            Some(sealed) => self.open(sealed),
            None => Some(value.to_vec()),
        }
    }

    /// What a Record-Route entry of ours seals; None when the entry is not ours or seals
    /// nothing that opens.
    fn own_sealed_route(&self, value: &[u8], ours: &impl Ours) -> Option<Vec<u8>> {
        self.open(own_th(value, ours)??)
    }

    /// Copies `msg` into `out` header by header: Via and Record-Route are written once, where
    /// their first line was, by `write_list`; Contact URIs are hidden; the Call-ID flipped;
    /// every other line and the body as they were.
    fn rewrite(
        &self,
        msg: &Message<'_>,
        out: &mut Vec<u8>,
        host: &str,
        ours: &impl Ours,
        mut write_list: impl FnMut(HeaderName, &mut Vec<u8>),
    ) {
        let buf = msg.buf();
        out.extend_from_slice(&buf[msg.start_offset()..msg.headers_offset()]);
        let (mut via_done, mut rr_done) = (false, false);
        for slot in msg.slots() {
            let value = msg.slice(slot.value);
            match slot.name {
                HeaderName::Via => {
                    if !std::mem::replace(&mut via_done, true) {
                        write_list(HeaderName::Via, out);
                    }
                }
                HeaderName::RecordRoute => {
                    if !std::mem::replace(&mut rr_done, true) {
                        write_list(HeaderName::RecordRoute, out);
                    }
                }
                HeaderName::Contact => {
                    out.extend_from_slice(b"Contact: ");
                    let mut first = true;
                    for (_, v) in CommaSplit::new(value) {
                        if !std::mem::replace(&mut first, false) {
                            out.extend_from_slice(b", ");
                        }
                        self.hide_contact(v, host, ours, out);
                    }
                    out.extend_from_slice(b"\r\n");
                }
                HeaderName::CallId => {
                    out.extend_from_slice(b"Call-ID: ");
                    self.flip_call_id(value, out);
                    out.extend_from_slice(b"\r\n");
                }
                _ => {
                    let end = slot.value.end as usize;
                    let line_end =
                        memchr::memchr(b'\n', &buf[end..]).map_or(buf.len(), |i| end + i + 1);
                    out.extend_from_slice(&buf[slot.name_span().start as usize..line_end]);
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(msg.body());
    }

    /// One Contact value with its URI replaced by `sip:host;th=sealed(URI)` (display name and
    /// parameters kept); `*`, a URI of ours or a value that does not parse stay as they are.
    fn hide_contact(&self, value: &[u8], host: &str, ours: &impl Ours, out: &mut Vec<u8>) {
        let parsed = crate::sip::headers::NameAddr::parse(value)
            .ok()
            .filter(|na| na.uri().is_ok_and(|u| !ours(&u)));
        let Some(na) = parsed else {
            out.extend_from_slice(value);
            return;
        };
        // `uri_raw` is a slice of `value`: the bytes around it are the display name (with
        // `<`) and the parameters (after `>`).
        let at = na.uri_raw.as_ptr() as usize - value.as_ptr() as usize;
        let before = &value[..at - na.bracketed as usize];
        let after = &value[at + na.uri_raw.len() + na.bracketed as usize..];
        out.extend_from_slice(before);
        out.extend_from_slice(b"<sip:");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b";th=");
        self.seal(na.uri_raw, out);
        out.push(b'>');
        out.extend_from_slice(after);
    }
}

/// For a Route or Record-Route value naming this proxy, its `th` parameter (None inside when
/// it has none); None when the value does not parse or names another host.
fn own_th<'v>(value: &'v [u8], ours: &impl Ours) -> Option<Option<&'v [u8]>> {
    let uri = crate::sip::headers::NameAddr::parse(value)
        .ok()?
        .uri()
        .ok()?;
    ours(&uri).then(|| uri.param("th").flatten())
}

/// Every value of `name` across its lines, in order.
fn values<'m>(msg: &Message<'m>, name: HeaderName) -> Vec<&'m [u8]> {
    msg.header_all(name)
        .flat_map(|line| CommaSplit::new(line).map(|(_, v)| v))
        .filter(|v| !v.is_empty())
        .collect()
}

fn join(values: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.iter().map(|v| v.len() + 2).sum());
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v);
    }
    out
}

/// The `th` parameter of a Via value.
fn via_param(via: &[u8]) -> Option<&[u8]> {
    crate::sip::headers::Via::parse(via)
        .ok()?
        .params
        .get("th")
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "127.0.0.1:5060";

    fn ours(u: &Uri<'_>) -> bool {
        u.host == b"127.0.0.1" && u.port == Some(5060)
    }

    fn hider() -> Hider {
        Hider::new(b"a test key of some length")
    }

    /// [`FORWARDED`] as `h` hides it.
    fn hidden_invite(h: &Hider) -> Vec<u8> {
        let mut hidden = Vec::new();
        let fwd = Message::parse(FORWARDED.as_bytes()).unwrap();
        h.hide_request(&fwd, HOST, &ours, &mut hidden);
        hidden
    }

    /// The header section of `m` (what a peer reads for addresses; the body is SDP).
    fn head(m: &[u8]) -> String {
        let s = String::from_utf8_lossy(m).into_owned();
        s[..s.find("\r\n\r\n").unwrap()].to_owned()
    }

    #[test]
    fn sealed_values_open_only_with_the_key_and_unaltered() {
        let h = hider();
        let mut sealed = Vec::new();
        h.seal(b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa", &mut sealed);
        assert!(sealed
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(!String::from_utf8_lossy(&sealed).contains("10.0.0.1"));
        assert_eq!(
            h.open(&sealed).unwrap(),
            b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa"
        );
        // Deterministic: the same value seals the same (a retransmission, a dialog's
        // Call-ID on every message).
        let mut again = Vec::new();
        h.seal(b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa", &mut again);
        assert_eq!(sealed, again);
        assert!(Hider::new(b"another key entirely").open(&sealed).is_none());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert!(h.open(&bad).is_none(), "altered at {i}");
        }
        assert!(h.open(b"").is_none());
        assert!(h.open(b"not base64!").is_none());
        let mut empty = Vec::new();
        h.seal(b"", &mut empty);
        assert_eq!(h.open(&empty).unwrap(), b"");
    }

    #[test]
    fn call_ids_flip_between_the_two_sides() {
        let h = hider();
        let mut masked = Vec::new();
        h.flip_call_id(b"1-2345@192.0.2.1", &mut masked);
        assert!(masked.starts_with(b"th-"));
        assert!(!String::from_utf8_lossy(&masked).contains("192.0.2.1"));
        let mut back = Vec::new();
        h.flip_call_id(&masked, &mut back);
        assert_eq!(back, b"1-2345@192.0.2.1");
        assert_eq!(&h.canonical_call_id(&masked)[..], b"1-2345@192.0.2.1");
        assert_eq!(&h.canonical_call_id(b"plain")[..], b"plain");
        // A Call-ID that only looks masked is masked like any other.
        let mut out = Vec::new();
        h.flip_call_id(b"th-AAAAAAAAAAAAAAAA", &mut out);
        assert_ne!(out, b"th-AAAAAAAAAAAAAAAA");
        assert!(h.unmask_call_id(&out).is_some());
    }

    /// An INVITE from the caller side as the proxy forwards it: our Via and Record-Route on
    /// top, the caller's proxy (10.0.0.9) and the caller (192.0.2.1) below.
    const FORWARDED: &str = "INVITE sip:bob@192.0.2.20:5062 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ss0.1.1\r\n\
Record-Route: <sip:127.0.0.1:5060;lr;ss=0>\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKp1;received=10.0.0.9, SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa\r\n\
Record-Route: <sip:10.0.0.9;lr>\r\n\
Max-Forwards: 68\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: 77@192.0.2.1\r\nCSeq: 1 INVITE\r\n\
Contact: \"Alice\" <sip:alice@192.0.2.1:5060;transport=udp>;+sip.instance=\"<urn:uuid:1>\"\r\n\
Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0";

    #[test]
    fn a_forwarded_request_names_nothing_of_the_caller_side() {
        let h = hider();
        let fwd = Message::parse(FORWARDED.as_bytes()).unwrap();
        let mut out = Vec::new();
        h.hide_request(&fwd, HOST, &ours, &mut out);
        let m = Message::parse(&out).unwrap();
        m.validate().unwrap();
        let text = head(&out);
        for leak in ["192.0.2.1", "10.0.0.9", "77@"] {
            assert!(!text.contains(leak), "{leak} in\n{text}");
        }
        // One Via, ours, with its branch (the client transaction is matched by it).
        assert_eq!(m.vias().count(), 1);
        assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bK-ss0.1.1"[..]));
        // One Record-Route, ours; the Contact is ours with the display name and parameters.
        assert_eq!(m.name_addrs(HeaderName::RecordRoute).count(), 1);
        let rr = m
            .name_addrs(HeaderName::RecordRoute)
            .next()
            .unwrap()
            .unwrap();
        assert!(ours(&rr.uri().unwrap()) && rr.uri().unwrap().lr());
        let contact = m.contacts().next().unwrap().unwrap();
        assert!(ours(&contact.uri().unwrap()));
        assert_eq!(contact.display, Some(&b"Alice"[..]));
        assert_eq!(
            contact.params.get("+sip.instance").flatten(),
            Some(&b"<urn:uuid:1>"[..])
        );
        // What is not an address is as it was.
        assert_eq!(m.body(), b"v=0");
        assert_eq!(m.request_uri_bytes(), fwd.request_uri_bytes());
        assert_eq!(m.header(HeaderName::From), fwd.header(HeaderName::From));
        assert_eq!(m.max_forwards().unwrap(), Some(68));
    }

    /// The callee's 200 to [`FORWARDED`] after hiding, through a callee-side proxy
    /// (10.1.0.7) that record-routed too.
    fn callee_ok(hidden_invite: &[u8]) -> Vec<u8> {
        let m = Message::parse(hidden_invite).unwrap();
        let via = m.header(HeaderName::Via).unwrap();
        let rr = m.header(HeaderName::RecordRoute).unwrap();
        let cid = m.header(HeaderName::CallId).unwrap();
        format!(
            "SIP/2.0 200 OK\r\nVia: {}\r\nRecord-Route: <sip:10.1.0.7;lr>, {}\r\n\
             From: \"Alice\" <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b1\r\n\
             Call-ID: {}\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@192.0.2.20:5062>\r\n\
             Content-Length: 0\r\n\r\n",
            String::from_utf8_lossy(via),
            String::from_utf8_lossy(rr),
            String::from_utf8_lossy(cid)
        )
        .into_bytes()
    }

    #[test]
    fn the_response_upstream_gets_the_caller_side_back_and_hides_the_callee_side() {
        let h = hider();
        let hidden = hidden_invite(&h);
        let ok = callee_ok(&hidden);
        let mut up = Vec::new();
        assert!(h.hide_response(&Message::parse(&ok).unwrap(), HOST, &ours, &mut up));
        let m = Message::parse(&up).unwrap();
        m.validate().unwrap();
        let text = head(&up);
        for leak in ["192.0.2.20", "10.1.0.7", "127.0.0.1:5060;branch"] {
            assert!(!text.contains(leak), "{leak} in\n{text}");
        }
        // The caller side's Vias exactly as they came (ours gone, §16.7 step 3).
        let vias: Vec<_> = m
            .vias()
            .map(|v| v.unwrap().branch().unwrap().to_vec())
            .collect();
        assert_eq!(vias, vec![b"z9hG4bKp1".to_vec(), b"z9hG4bKa".to_vec()]);
        assert_eq!(m.top_via().unwrap().received(), Some(&b"10.0.0.9"[..]));
        assert_eq!(m.header(HeaderName::CallId), Some(&b"77@192.0.2.1"[..]));
        // Record-Route: ours (the callee side sealed in it), then the caller's proxy.
        let rrs: Vec<_> = m
            .name_addrs(HeaderName::RecordRoute)
            .map(|r| r.unwrap().uri_raw.to_vec())
            .collect();
        assert_eq!(rrs.len(), 2);
        assert!(rrs[0].starts_with(b"sip:127.0.0.1:5060;lr;th="));
        assert_eq!(rrs[1], b"sip:10.0.0.9;lr");
        assert!(ours(&m.contacts().next().unwrap().unwrap().uri().unwrap()));
        // Without a sealed chain in our Via the response is not ours to un-hide.
        let plain = callee_ok(FORWARDED.as_bytes());
        let mut out = Vec::new();
        assert!(!h.hide_response(&Message::parse(&plain).unwrap(), HOST, &ours, &mut out));
        assert!(out.is_empty());
    }

    /// The in-dialog requests of that call come back to the proxy with our sealed values;
    /// restored, they name the other side as a proxy without hiding would.
    #[test]
    fn in_dialog_requests_get_their_route_set_and_target_back_both_ways() {
        let h = hider();
        let hidden = hidden_invite(&h);
        let inv = Message::parse(&hidden).unwrap();
        // The callee's BYE: its route set is the INVITE's Record-Route, its target the
        // INVITE's Contact (both ours, sealed).
        let caller_contact = inv.contacts().next().unwrap().unwrap().uri_raw;
        let bye = format!(
            "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKbye\r\n\
             Route: {}\r\nMax-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b1\r\n\
             To: <sip:alice@example.com>;tag=a1\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\n\
             Content-Length: 0\r\n\r\n",
            String::from_utf8_lossy(caller_contact),
            String::from_utf8_lossy(inv.header(HeaderName::RecordRoute).unwrap()),
            String::from_utf8_lossy(inv.header(HeaderName::CallId).unwrap())
        );
        let mut restored = Vec::new();
        assert!(h.restore_request(
            &Message::parse(bye.as_bytes()).unwrap(),
            &ours,
            &mut restored
        ));
        let m = Message::parse(&restored).unwrap();
        m.validate().unwrap();
        assert_eq!(
            m.request_uri_bytes(),
            Some(&b"sip:alice@192.0.2.1:5060;transport=udp"[..])
        );
        let routes: Vec<_> = m.routes().map(|r| r.unwrap().uri_raw.to_vec()).collect();
        assert_eq!(
            routes,
            vec![
                b"sip:127.0.0.1:5060;lr;ss=0".to_vec(),
                b"sip:10.0.0.9;lr".to_vec()
            ]
        );

        // The caller's BYE: its route set is the 200's Record-Route reversed, its target the
        // 200's Contact.
        let mut up = Vec::new();
        h.hide_response(
            &Message::parse(&callee_ok(&hidden)).unwrap(),
            HOST,
            &ours,
            &mut up,
        );
        let ok = Message::parse(&up).unwrap();
        let mut route_set: Vec<_> = ok
            .name_addrs(HeaderName::RecordRoute)
            .map(|r| format!("<{}>", String::from_utf8_lossy(r.unwrap().uri_raw)))
            .collect();
        route_set.reverse();
        // The caller's proxy pops its own entry before it reaches us.
        assert_eq!(route_set[0], "<sip:10.0.0.9;lr>");
        let bye = format!(
            "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKp2\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbye2\r\n\
             Route: {}\r\nMax-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=a1\r\n\
             To: <sip:bob@example.com>;tag=b1\r\nCall-ID: 77@192.0.2.1\r\nCSeq: 2 BYE\r\n\
             Content-Length: 0\r\n\r\n",
            String::from_utf8_lossy(ok.contacts().next().unwrap().unwrap().uri_raw),
            route_set[1..].join(", ")
        );
        let mut restored = Vec::new();
        assert!(h.restore_request(
            &Message::parse(bye.as_bytes()).unwrap(),
            &ours,
            &mut restored
        ));
        let m = Message::parse(&restored).unwrap();
        assert_eq!(m.request_uri_bytes(), Some(&b"sip:bob@192.0.2.20:5062"[..]));
        let routes: Vec<_> = m.routes().map(|r| r.unwrap().uri_raw.to_vec()).collect();
        assert_eq!(
            routes,
            vec![
                b"sip:127.0.0.1:5060;lr;ss=0".to_vec(),
                b"sip:10.1.0.7;lr".to_vec()
            ]
        );
        // A request with nothing of ours sealed is left alone.
        let mut none = Vec::new();
        assert!(!h.restore_request(
            &Message::parse(FORWARDED.as_bytes()).unwrap(),
            &ours,
            &mut none
        ));
        assert!(none.is_empty());
    }

    /// Mangled messages (one to eight byte edits of a hidden INVITE, its 200 and a BYE) go
    /// through every rewrite without a panic, and what comes out parses whenever the input
    /// did (the proxy re-parses it).
    #[test]
    fn mangled_messages_never_panic_and_rewrites_stay_parseable() {
        let h = hider();
        let hidden = hidden_invite(&h);
        let ok = callee_ok(&hidden);
        let seeds = [FORWARDED.as_bytes().to_vec(), hidden.clone(), ok];
        let mut m = crate::sip::mutate::Mutator::new(0x7090_1061);
        let alphabet = b"<>;,=:@\"\\ \r\n\tabthTH-_0123456789.";
        let mut parsed = 0;
        for i in 0..30_000 {
            let seed = &seeds[i % seeds.len()];
            let input = m.mutated(seed, 1 + i % 8, alphabet);
            let Ok(msg) = Message::parse(&input) else {
                continue;
            };
            parsed += 1;
            let mut out = Vec::new();
            if msg.is_request() {
                if h.restore_request(&msg, &ours, &mut out) {
                    let _ = Message::parse(&out);
                }
                out.clear();
                h.hide_request(&msg, HOST, &ours, &mut out);
            } else if !h.hide_response(&msg, HOST, &ours, &mut out) {
                continue;
            }
            assert!(
                Message::parse(&out).is_ok(),
                "unparseable rewrite of\n{}\n->\n{}",
                String::from_utf8_lossy(&input),
                String::from_utf8_lossy(&out)
            );
        }
        assert!(parsed > 5_000, "{parsed} parsed");
    }
}
