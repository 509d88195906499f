//! One registered contact of an address-of-record (RFC 3261 §10.3 step 7): the contact URI,
//! its expiry, q-value, the Call-ID/CSeq that last set it, the Path it was registered through
//! (RFC 3327 §5.3), the outbound instance and reg-id (RFC 5626 §6) and the source address of
//! the REGISTER (for routing to UAs behind NAT).
//!
//! Memory matters (a shard holds millions): every string of a binding lives in one boxed byte
//! slice addressed by `u16` lengths, and the source address is packed into 19 bytes, so the
//! fixed part is 64 bytes and the binding costs one heap allocation.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The q-value of a contact registered without `q` (RFC 3261 §20.10 leaves it to the
/// registrar; 1.0 is the highest preference). Not echoed in responses.
pub const DEFAULT_Q: u16 = 1000;

/// A contact bound to an address-of-record.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    /// `contact URI | Call-ID | instance | (u16 length, Path value)*`.
    strings: Box<[u8]>,
    expires_at_ms: u64,
    source_ip: [u8; 16],
    cseq: u32,
    /// 0 when absent (RFC 5626 reg-id values start at 1).
    reg_id: u32,
    /// Hash of the Via branch of the REGISTER that last set this binding, to tell a
    /// retransmission (same branch) from a new request with a stale CSeq.
    branch_hash: u32,
    source_port: u16,
    q: u16,
    uri_len: u16,
    call_id_len: u16,
    instance_len: u16,
    /// [`V4`], [`NAT`] (the REGISTER came through a NAT: requests reach the UA at `source`,
    /// not its Contact), [`STREAM`] (it came over a connection: requests go back over it).
    flags: u8,
    /// The local socket the REGISTER came in on (the flow's).
    socket: u8,
}

const V4: u8 = 1;
const NAT: u8 = 2;
const STREAM: u8 = 4;

/// The values a binding is made from (borrowed from the REGISTER).
#[derive(Debug, Clone, Copy)]
pub struct BindingFields<'a> {
    /// The contact URI as written (without `<>`).
    pub contact_uri: &'a [u8],
    pub call_id: &'a [u8],
    pub cseq: u32,
    pub expires_at_ms: u64,
    /// Thousandths.
    pub q: u16,
    /// `+sip.instance` without quotes.
    pub instance: Option<&'a [u8]>,
    pub reg_id: Option<u32>,
    pub source: SocketAddr,
    /// The REGISTER came through a NAT (see [`crate::nat`]).
    pub nat: bool,
    /// The local socket it came in on, and whether that is a connection (TCP, TLS, WS).
    pub socket: u16,
    pub stream: bool,
    /// [`branch_hash`] of the REGISTER's top Via branch (0 without a branch).
    pub branch_hash: u32,
}

#[cfg(test)]
impl<'a> BindingFields<'a> {
    /// Fields for tests: reached at `contact`, registered from `source` without NAT, a flow,
    /// an instance or a reg-id; Call-ID `c`, CSeq 1, q 1.0.
    pub fn plain(contact: &'a [u8], source: SocketAddr, expires_at_ms: u64) -> Self {
        BindingFields {
            contact_uri: contact,
            call_id: b"c",
            cseq: 1,
            expires_at_ms,
            q: DEFAULT_Q,
            instance: None,
            reg_id: None,
            source,
            nat: false,
            socket: 0,
            stream: false,
            branch_hash: 0,
        }
    }
}

/// A binding field longer than the 64 KiB a `u16` length can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldTooLong;

fn len16(s: &[u8]) -> Result<u16, FieldTooLong> {
    u16::try_from(s.len()).map_err(|_| FieldTooLong)
}

impl Binding {
    /// Builds a binding; `paths` are the Path values in order (one per element).
    pub fn new<'p>(
        f: &BindingFields<'_>,
        paths: impl Iterator<Item = &'p [u8]> + Clone,
    ) -> Result<Binding, FieldTooLong> {
        let instance = f.instance.unwrap_or_default();
        let mut size = f.contact_uri.len() + f.call_id.len() + instance.len();
        for p in paths.clone() {
            size += 2 + len16(p)? as usize;
        }
        let mut strings = Vec::with_capacity(size);
        strings.extend_from_slice(f.contact_uri);
        strings.extend_from_slice(f.call_id);
        strings.extend_from_slice(instance);
        for p in paths {
            strings.extend_from_slice(&(p.len() as u16).to_le_bytes());
            strings.extend_from_slice(p);
        }
        let (source_ip, source_v4) = match f.source.ip() {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), true),
            IpAddr::V6(v6) => (v6.octets(), false),
        };
        Ok(Binding {
            strings: strings.into_boxed_slice(),
            expires_at_ms: f.expires_at_ms,
            source_ip,
            cseq: f.cseq,
            reg_id: f.reg_id.unwrap_or(0),
            branch_hash: f.branch_hash,
            source_port: f.source.port(),
            q: f.q,
            uri_len: len16(f.contact_uri)?,
            call_id_len: len16(f.call_id)?,
            instance_len: len16(instance)?,
            flags: if source_v4 { V4 } else { 0 }
                | if f.nat { NAT } else { 0 }
                | if f.stream { STREAM } else { 0 },
            socket: u8::try_from(f.socket).unwrap_or(0),
        })
    }

    /// The contact URI as the UA wrote it.
    #[inline]
    pub fn contact_uri(&self) -> &[u8] {
        &self.strings[..self.uri_len as usize]
    }

    /// The Call-ID of the REGISTER that last set this binding.
    #[inline]
    pub fn call_id(&self) -> &[u8] {
        let start = self.uri_len as usize;
        &self.strings[start..start + self.call_id_len as usize]
    }

    /// The branch hash of the REGISTER that last set this binding.
    #[inline]
    pub fn branch_hash(&self) -> u32 {
        self.branch_hash
    }

    /// The CSeq number of the REGISTER that last set this binding.
    #[inline]
    pub fn cseq(&self) -> u32 {
        self.cseq
    }

    /// When the binding expires (milliseconds, the clock of `now_ms`).
    #[inline]
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// Seconds left, rounded up (what a 200 reports in `expires`); 0 once expired.
    #[inline]
    pub fn remaining_secs(&self, now_ms: u64) -> u32 {
        let ms = self.expires_at_ms.saturating_sub(now_ms);
        ms.div_ceil(1000).min(u32::MAX as u64) as u32
    }

    /// The q-value in thousandths ([`DEFAULT_Q`] when the contact had none).
    #[inline]
    pub fn q(&self) -> u16 {
        self.q
    }

    /// `+sip.instance` (RFC 5626 §4.1), without quotes.
    pub fn instance(&self) -> Option<&[u8]> {
        let start = self.uri_len as usize + self.call_id_len as usize;
        let s = &self.strings[start..start + self.instance_len as usize];
        (!s.is_empty()).then_some(s)
    }

    /// `reg-id` (RFC 5626 §4.2); only kept together with an instance.
    #[inline]
    pub fn reg_id(&self) -> Option<u32> {
        (self.reg_id != 0).then_some(self.reg_id)
    }

    /// The Path values (RFC 3327) in the order received, each one name-addr as written.
    pub fn paths(&self) -> PathIter<'_> {
        let start = self.uri_len as usize + self.call_id_len as usize + self.instance_len as usize;
        PathIter {
            rest: &self.strings[start..],
        }
    }

    /// True if the REGISTER came through a NAT (its Contact is not reachable from here).
    #[inline]
    pub fn behind_nat(&self) -> bool {
        self.flags & NAT != 0
    }

    /// True if requests for this binding go to the flow it registered on (the REGISTER's
    /// source) rather than its Contact address: behind NAT, or an RFC 5626 outbound flow
    /// (`+sip.instance` with `reg-id`, §5.3).
    #[inline]
    pub fn reached_by_flow(&self) -> bool {
        self.flags & (NAT | STREAM) != 0 || self.reg_id != 0
    }

    /// The local socket the REGISTER came in on.
    #[inline]
    pub fn socket(&self) -> u16 {
        self.socket.into()
    }

    /// The REGISTER came over a connection (requests for it go back over that connection).
    #[inline]
    pub fn over_stream(&self) -> bool {
        self.flags & STREAM != 0
    }

    /// The address the REGISTER came from (IPv6 flow info and scope id are not kept).
    pub fn source(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.source_ip);
        let ip = match (self.flags & V4 != 0, v6.to_ipv4_mapped()) {
            (true, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, self.source_port)
    }

    /// Heap bytes owned by this binding (its string block).
    #[inline]
    pub fn heap_bytes(&self) -> usize {
        self.strings.len()
    }
}

impl core::fmt::Debug for Binding {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Binding")
            .field("contact", &String::from_utf8_lossy(self.contact_uri()))
            .field("expires_at_ms", &self.expires_at_ms)
            .field("q", &self.q)
            .field("call_id", &String::from_utf8_lossy(self.call_id()))
            .field("cseq", &self.cseq)
            .field("source", &self.source())
            .finish()
    }
}

/// Iterator over the Path values stored in a binding (Copy: a target keeps one).
#[derive(Debug, Clone, Copy)]
pub struct PathIter<'a> {
    rest: &'a [u8],
}

impl<'a> PathIter<'a> {
    /// No Path.
    pub fn empty() -> PathIter<'static> {
        PathIter { rest: &[] }
    }

    /// The values not yet read, encoded (to keep them: [`PathIter::from_raw`]).
    pub fn raw(&self) -> &'a [u8] {
        self.rest
    }

    /// The values [`PathIter::raw`] gave (other bytes read as fewer values, never past
    /// their end).
    pub fn from_raw(rest: &'a [u8]) -> PathIter<'a> {
        PathIter { rest }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

impl<'a> Iterator for PathIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<2>()?;
        let len = u16::from_le_bytes(*len) as usize;
        let Some((value, rest)) = rest.split_at_checked(len) else {
            self.rest = &[];
            return None;
        };
        self.rest = rest;
        Some(value)
    }
}

/// A 32-bit FNV-1a hash of a Via branch; 0 is kept for "no branch".
pub fn branch_hash(branch: Option<&[u8]>) -> u32 {
    let Some(b) = branch else { return 0 };
    let h = b.iter().fold(0x811c_9dc5u32, |h, &c| {
        (h ^ c as u32).wrapping_mul(0x0100_0193)
    });
    h.max(1)
}

/// An unspecified IPv4 source, for tests.
#[cfg(test)]
pub const UNSPECIFIED_SOURCE: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(source: SocketAddr) -> BindingFields<'static> {
        BindingFields {
            contact_uri: b"sip:user@192.0.2.33:5060;transport=udp",
            call_id: b"a84b4c76e66710@pc33.atlanta.com",
            cseq: 7,
            expires_at_ms: 3_600_000,
            q: 500,
            instance: Some(b"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"),
            reg_id: Some(2),
            source,
            nat: false,
            socket: 0,
            stream: false,
            branch_hash: 9,
        }
    }

    #[test]
    fn stores_every_field() {
        let src: SocketAddr = "198.51.100.7:40123".parse().unwrap();
        let paths: [&[u8]; 2] = [b"<sip:p1.example.com;lr>", b"<sip:p2.example.com;lr>"];
        let b = Binding::new(&fields(src), paths.iter().copied()).unwrap();
        assert_eq!(b.contact_uri(), b"sip:user@192.0.2.33:5060;transport=udp");
        assert_eq!(b.call_id(), b"a84b4c76e66710@pc33.atlanta.com");
        assert_eq!(b.cseq(), 7);
        assert_eq!(b.q(), 500);
        assert_eq!(
            b.instance(),
            Some(&b"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"[..])
        );
        assert_eq!(b.reg_id(), Some(2));
        assert_eq!(b.paths().collect::<Vec<_>>(), paths.to_vec());
        assert_eq!(b.source(), src);
        assert_eq!(b.remaining_secs(1), 3600);
        assert_eq!(b.remaining_secs(3_600_000), 0);
    }

    #[test]
    fn ipv6_source_and_absent_fields() {
        let src: SocketAddr = "[2001:db8::1]:5062".parse().unwrap();
        let mut f = fields(src);
        f.instance = None;
        f.reg_id = None;
        let b = Binding::new(&f, core::iter::empty()).unwrap();
        assert_eq!(b.source(), src);
        assert_eq!(b.instance(), None);
        assert_eq!(b.reg_id(), None);
        assert_eq!(b.paths().count(), 0);
        // A v4-mapped IPv6 source stays IPv6.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5060".parse().unwrap();
        let b = Binding::new(&fields(mapped), core::iter::empty()).unwrap();
        assert_eq!(b.source(), mapped);
    }

    #[test]
    fn fixed_part_is_small() {
        assert!(core::mem::size_of::<Binding>() <= 64);
    }

    #[test]
    fn rejects_fields_over_64k() {
        let long = vec![b'a'; 70_000];
        let mut f = fields(UNSPECIFIED_SOURCE);
        f.call_id = &long;
        assert_eq!(
            Binding::new(&f, core::iter::empty()).unwrap_err(),
            FieldTooLong
        );
    }
}
