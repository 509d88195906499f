//! The digest computation of RFC 7616 §3.4.1–§3.4.3 (HTTP Digest, used by SIP per RFC 3261
//! §22.4 and RFC 8760 §2) for the algorithms `MD5`, `SHA-256` and `SHA-512-256` with
//! `qop=auth`:
//!
//! ```text
//! HA1      = H(username ":" realm ":" password)
//! HA2      = H(method ":" digest-uri)
//! response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)
//! ```
//!
//! Every `H(..)` is written as lowercase hex. The `-sess` variants, `auth-int` and the
//! RFC 2069 form without `qop` are not supported: the server answers them with a challenge.
//! Responses are compared in constant time ([`responses_equal`]).

use md5::Md5;
use sha2::{Digest, Sha256, Sha512_256};
use subtle::ConstantTimeEq;

/// A digest algorithm this server supports (RFC 8760 §2.1 registry names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Algorithm {
    /// `MD5` (RFC 7616 §3.2), the default when `algorithm` is absent.
    Md5,
    /// `SHA-256` (RFC 7616 §3.2, RFC 8760 §2.1).
    Sha256,
    /// `SHA-512-256` (RFC 7616 §3.2, RFC 8760 §2.1): SHA-512/256 of FIPS 180-4.
    Sha512_256,
}

impl Algorithm {
    /// Every algorithm this server verifies.
    pub const ALL: [Algorithm; 3] = [Algorithm::Md5, Algorithm::Sha256, Algorithm::Sha512_256];

    /// The challenges offered by default: MD5 alone. sipsak 0.9.8 and SIPp 3.6 answer only
    /// the first challenge and give up on a SHA-256 one, and baresip 1.0 (libre's
    /// `auth_handler`) fails with ENOSYS on *any* non-MD5 challenge in the response, even
    /// after an MD5 one: offering SHA-256 too would lock out stock baresip. Deployments whose
    /// phones all do SHA-256 set `auth_algorithms`; credentials of every algorithm in
    /// [`Algorithm::ALL`] are accepted whatever is offered.
    pub const DEFAULT_OFFER: [Algorithm; 1] = [Algorithm::Md5];

    /// The algorithm named by a digest `algorithm` parameter; absent means MD5 (RFC 7616
    /// §3.3). Unsupported names (`MD5-sess`, `SHA-256-sess`, ...) give `None`.
    pub fn from_param(param: Option<&[u8]>) -> Option<Algorithm> {
        let Some(p) = param else {
            return Some(Algorithm::Md5);
        };
        Algorithm::ALL
            .into_iter()
            .find(|a| p.eq_ignore_ascii_case(a.name().as_bytes()))
    }

    /// The name as written in the `algorithm` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha512_256 => "SHA-512-256",
        }
    }

    /// The position in [`Algorithm::ALL`] (for tables with one slot per algorithm).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Length of a hash in hex digits (32 for MD5, 64 for the others).
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 | Algorithm::Sha512_256 => 64,
        }
    }
}

/// A hash written as lowercase hex, on the stack (up to 64 digits).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexHash {
    buf: [u8; 64],
    len: u8,
}

impl HexHash {
    /// The hex digits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// The hex digits as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        core::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// Parses a hash given in hex (either case) and stores it in lowercase. `None` unless
    /// it is exactly `len` hex digits.
    pub fn from_hex(hex_digits: &[u8], len: usize) -> Option<HexHash> {
        if hex_digits.len() != len || len > 64 || !hex_digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut h = HexHash {
            buf: [0; 64],
            len: len as u8,
        };
        for (d, s) in h.buf.iter_mut().zip(hex_digits) {
            *d = s.to_ascii_lowercase();
        }
        Some(h)
    }

    fn of(bytes: &[u8]) -> HexHash {
        let mut h = HexHash {
            buf: [0; 64],
            len: (bytes.len() * 2) as u8,
        };
        encode_hex(bytes, &mut h.buf[..bytes.len() * 2]);
        h
    }
}

/// Lowercase hex digits.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `src` as lowercase hex into `dst[..2 * src.len()]` (what `hex::encode_to_slice`
/// does, without its per-call length check and iterator chain: this runs for every hash and
/// every nonce).
///
/// # Panics
/// If `dst` is shorter than twice `src`.
#[inline]
pub(crate) fn encode_hex(src: &[u8], dst: &mut [u8]) {
    let dst = &mut dst[..src.len() * 2];
    for (pair, &b) in dst.chunks_exact_mut(2).zip(src) {
        pair[0] = HEX_DIGITS[usize::from(b >> 4)];
        pair[1] = HEX_DIGITS[usize::from(b & 0xf)];
    }
}

/// The value of each hex digit (either case); 0xff for every other byte.
const HEX_VALUES: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decodes exactly `2 * N` hex digits (either case) into `N` bytes; `None` if `src` has
/// another length or any byte is not a hex digit (what `hex::decode_to_slice` accepts,
/// checked once at the end instead of per digit).
#[inline]
pub(crate) fn decode_hex<const N: usize>(src: &[u8]) -> Option<[u8; N]> {
    if src.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        let hi = HEX_VALUES[usize::from(pair[0])];
        let lo = HEX_VALUES[usize::from(pair[1])];
        bad |= hi | lo;
        *o = (hi << 4) | lo;
    }
    // Valid digits are below 16; 0xff marks the others.
    (bad < 16).then_some(out)
}

impl core::fmt::Debug for HexHash {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
thread_local! {
    /// Number of hashes computed on this thread, for tests that the work done does not
    /// depend on whether a user exists.
    pub(crate) static HASHES: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// `H(p0 ":" p1 ":" ...)` in lowercase hex.
pub fn hash_joined(alg: Algorithm, parts: &[&[u8]]) -> HexHash {
    #[cfg(test)]
    HASHES.with(|n| n.set(n.get() + 1));
    fn run<D: Digest>(parts: &[&[u8]]) -> HexHash {
        let mut d = D::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(p);
        }
        HexHash::of(&d.finalize())
    }
    match alg {
        Algorithm::Md5 => run::<Md5>(parts),
        Algorithm::Sha256 => run::<Sha256>(parts),
        Algorithm::Sha512_256 => run::<Sha512_256>(parts),
    }
}

/// HA1 = H(username ":" realm ":" password) (RFC 7616 §3.4.2).
pub fn ha1(alg: Algorithm, username: &[u8], realm: &[u8], password: &[u8]) -> HexHash {
    hash_joined(alg, &[username, realm, password])
}

/// HA2 = H(method ":" digest-uri) for qop=auth (RFC 7616 §3.4.3).
pub fn ha2(alg: Algorithm, method: &[u8], uri: &[u8]) -> HexHash {
    hash_joined(alg, &[method, uri])
}

/// The request-digest for qop=auth (RFC 7616 §3.4.1):
/// `H(HA1 ":" nonce ":" nc ":" cnonce ":" "auth" ":" HA2)`.
pub fn response(
    alg: Algorithm,
    ha1: &HexHash,
    nonce: &[u8],
    nc: &[u8],
    cnonce: &[u8],
    method: &[u8],
    uri: &[u8],
) -> HexHash {
    response_with_ha2(alg, ha1, nonce, nc, cnonce, &ha2(alg, method, uri))
}

/// [`response`] with HA2 already computed (HA2 depends only on the method and the URI).
pub fn response_with_ha2(
    alg: Algorithm,
    ha1: &HexHash,
    nonce: &[u8],
    nc: &[u8],
    cnonce: &[u8],
    ha2: &HexHash,
) -> HexHash {
    hash_joined(
        alg,
        &[ha1.as_bytes(), nonce, nc, cnonce, b"auth", ha2.as_bytes()],
    )
}

/// The HA2 of the last (algorithm, method, URI) asked for: a registrar's REGISTERs nearly all
/// carry the same Request-URI (the domain), so this saves one of the four hash blocks of an
/// MD5 check. HA2 is a function of public request fields only; a hit or miss says nothing about
/// users or passwords.
#[derive(Debug, Clone, Default)]
pub struct Ha2Cache {
    /// `method` then `uri`, and where one ends.
    key: Vec<u8>,
    method_len: usize,
    last: Option<(Algorithm, HexHash)>,
}

impl Ha2Cache {
    /// HA2 = H(method ":" uri), from the cache when the last call had the same arguments.
    pub fn get(&mut self, alg: Algorithm, method: &[u8], uri: &[u8]) -> HexHash {
        if let Some((a, h)) = self.last {
            if a == alg
                && self.method_len == method.len()
                && self.key.len() == method.len() + uri.len()
                && self.key[..method.len()] == *method
                && self.key[method.len()..] == *uri
            {
                return h;
            }
        }
        let h = ha2(alg, method, uri);
        self.key.clear();
        self.key.extend_from_slice(method);
        self.key.extend_from_slice(uri);
        self.method_len = method.len();
        self.last = Some((alg, h));
        h
    }
}

/// Compares the expected response with the one a client sent, in constant time for equal
/// lengths; the client's hex digits may be in either case.
pub fn responses_equal(expected: &HexHash, given: &[u8]) -> bool {
    let want = expected.as_bytes();
    if given.len() != want.len() {
        return false;
    }
    // Both sides padded with zeros to 64 bytes and compared as eight words: subtle's slice
    // comparison hides every byte's result from the optimizer (one black box per byte); per
    // word it is the same guarantee at an eighth of the cost. Still no early exit.
    let mut lower = [0u8; 64];
    for (d, s) in lower.iter_mut().zip(given) {
        *d = s.to_ascii_lowercase();
    }
    let mut padded = [0u8; 64];
    padded[..want.len()].copy_from_slice(want);
    let mut equal = subtle::Choice::from(1);
    for (a, b) in lower.chunks_exact(8).zip(padded.chunks_exact(8)) {
        let a = u64::from_ne_bytes(a.try_into().unwrap_or_default());
        let b = u64::from_ne_bytes(b.try_into().unwrap_or_default());
        equal &= a.ct_eq(&b);
    }
    bool::from(equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7616 §3.9.1: user "Mufasa", password "Circle of Life", GET /dir/index.html.
    const REALM_7616: &[u8] = b"http-auth@example.org";
    const NONCE_7616: &[u8] = b"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const CNONCE_7616: &[u8] = b"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn rfc7616(alg: Algorithm) -> HexHash {
        let ha1 = ha1(alg, b"Mufasa", REALM_7616, b"Circle of Life");
        response(
            alg,
            &ha1,
            NONCE_7616,
            b"00000001",
            CNONCE_7616,
            b"GET",
            b"/dir/index.html",
        )
    }

    #[test]
    fn rfc7616_md5_example() {
        assert_eq!(
            rfc7616(Algorithm::Md5).as_str(),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    #[test]
    fn rfc7616_sha256_example() {
        assert_eq!(
            rfc7616(Algorithm::Sha256).as_str(),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn sha512_256_examples() {
        // FIPS 180-4 example "abc" (the SHA-512/256 of NIST's examples), then the RFC 7616
        // §3.9.1 exchange with SHA-512-256 (the value is Python's hashlib, OpenSSL's
        // SHA-512/256, over the same strings).
        assert_eq!(
            hash_joined(Algorithm::Sha512_256, &[b"abc"]).as_str(),
            "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
        );
        assert_eq!(
            rfc7616(Algorithm::Sha512_256).as_str(),
            "430d05014cecc49cab6fbe03176d41a1da86cbfe24a16580e22aaad928d960d0"
        );
    }

    #[test]
    fn rfc2617_md5_example() {
        // RFC 2617 §3.5.
        let ha1 = ha1(
            Algorithm::Md5,
            b"Mufasa",
            b"testrealm@host.com",
            b"Circle Of Life",
        );
        let r = response(
            Algorithm::Md5,
            &ha1,
            b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
            b"00000001",
            b"0a4f113b",
            b"GET",
            b"/dir/index.html",
        );
        assert_eq!(r.as_str(), "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(Algorithm::from_param(None), Some(Algorithm::Md5));
        assert_eq!(Algorithm::from_param(Some(b"md5")), Some(Algorithm::Md5));
        assert_eq!(
            Algorithm::from_param(Some(b"SHA-256")),
            Some(Algorithm::Sha256)
        );
        assert_eq!(Algorithm::from_param(Some(b"MD5-sess")), None);
        assert_eq!(
            Algorithm::from_param(Some(b"sha-512-256")),
            Some(Algorithm::Sha512_256)
        );
        assert_eq!(Algorithm::from_param(Some(b"SHA-512")), None);
        assert_eq!(Algorithm::from_param(Some(b"SHA-512-256-sess")), None);
        assert_eq!(Algorithm::from_param(Some(b"SHA-256-sess")), None);
        for (i, alg) in Algorithm::ALL.into_iter().enumerate() {
            assert_eq!(alg.index(), i);
            assert_eq!(
                Algorithm::from_param(Some(alg.name().as_bytes())),
                Some(alg)
            );
        }
    }

    #[test]
    fn response_comparison() {
        let r = rfc7616(Algorithm::Md5);
        assert!(responses_equal(&r, b"8ca523f5e9506fed4657c9700eebdbec"));
        assert!(responses_equal(&r, b"8CA523F5E9506FED4657C9700EEBDBEC"));
        assert!(!responses_equal(&r, b"8ca523f5e9506fed4657c9700eebdbed"));
        assert!(!responses_equal(&r, b"8ca523f5e9506fed4657c9700eebdbe"));
        assert!(!responses_equal(&r, b""));
    }

    /// The comparison before it went word-wise: lowercase, then subtle's slice comparison.
    fn responses_equal_before(expected: &HexHash, given: &[u8]) -> bool {
        let want = expected.as_bytes();
        if given.len() != want.len() {
            return false;
        }
        let mut lower = [0u8; 64];
        for (d, s) in lower.iter_mut().zip(given) {
            *d = s.to_ascii_lowercase();
        }
        bool::from(lower[..want.len()].ct_eq(want))
    }

    #[test]
    fn response_comparison_matches_the_bytewise_one() {
        let mut m = crate::sip::mutate::Mutator::new(0x5eed_d16e);
        let alphabet: Vec<u8> = (0..=255).collect();
        for alg in Algorithm::ALL {
            for i in 0..4000u32 {
                let want = hash_joined(alg, &[&i.to_be_bytes()]);
                // Itself, upper-cased in places, then with up to three random edits.
                let mut given = want.as_bytes().to_vec();
                for b in given.iter_mut() {
                    if m.next(3) == 0 {
                        *b = b.to_ascii_uppercase();
                    }
                }
                for _ in 0..m.next(4) {
                    m.mutate(&mut given, &alphabet);
                }
                assert_eq!(
                    responses_equal(&want, &given),
                    responses_equal_before(&want, &given),
                    "{want:?} vs {given:?}"
                );
            }
        }
        // A given value equal but for its last byte, or for its first: both refused.
        let want = HexHash::from_hex(&[b'a'; 64], 64).unwrap();
        for pos in [0, 31, 32, 63] {
            let mut g = [b'a'; 64];
            g[pos] = b'b';
            assert!(!responses_equal(&want, &g), "{pos}");
        }
        assert!(responses_equal(&want, &[b'A'; 64]));
    }

    #[test]
    fn hex_encoding_matches_the_hex_crate() {
        let all: Vec<u8> = (0..=255).collect();
        let mut ours = vec![0u8; 512];
        encode_hex(&all, &mut ours);
        assert_eq!(ours, hex::encode(&all).into_bytes());
        let mut m = crate::sip::mutate::Mutator::new(77);
        for _ in 0..2000 {
            let src: Vec<u8> = (0..m.next(40)).map(|_| m.next(256) as u8).collect();
            // Longer output buffers keep their tail.
            let mut dst = vec![b'#'; src.len() * 2 + 3];
            encode_hex(&src, &mut dst);
            assert_eq!(dst[..src.len() * 2], *hex::encode(&src).as_bytes());
            assert_eq!(dst[src.len() * 2..], *b"###");
        }
    }

    #[test]
    fn hex_decoding_matches_the_hex_crate() {
        // Every two-byte input.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let mut want = [0u8; 1];
                let want = hex::decode_to_slice([a, b], &mut want).ok().map(|()| want);
                assert_eq!(decode_hex::<1>(&[a, b]), want, "{a:#x} {b:#x}");
            }
        }
        // 64-digit inputs (nonces) with edits: other lengths, other bytes, either case.
        let mut m = crate::sip::mutate::Mutator::new(4242);
        let alphabet: Vec<u8> = (0..=255).collect();
        for i in 0..20_000u32 {
            let mut v = hash_joined(Algorithm::Sha256, &[&i.to_be_bytes()])
                .as_bytes()
                .to_vec();
            if i % 2 == 0 {
                v.make_ascii_uppercase();
            }
            for _ in 0..m.next(3) {
                m.mutate(&mut v, &alphabet);
            }
            let mut want = [0u8; 32];
            let want =
                (v.len() == 64 && hex::decode_to_slice(&v, &mut want).is_ok()).then_some(want);
            assert_eq!(decode_hex::<32>(&v), want, "{v:?}");
        }
    }

    #[test]
    fn ha2_cache_gives_the_ha2_of_its_arguments() {
        let mut c = Ha2Cache::default();
        let calls: [(Algorithm, &[u8], &[u8]); 9] = [
            (Algorithm::Md5, b"REGISTER", b"sip:example.com"),
            (Algorithm::Md5, b"REGISTER", b"sip:example.com"),
            (Algorithm::Sha256, b"REGISTER", b"sip:example.com"),
            (Algorithm::Md5, b"REGISTER", b"sip:example.com"),
            (Algorithm::Md5, b"INVITE", b"sip:example.com"),
            // The same bytes split differently between method and URI.
            (Algorithm::Md5, b"REGISTERs", b"ip:example.com"),
            (Algorithm::Md5, b"REGISTER", b"sip:example.com"),
            (Algorithm::Md5, b"REGISTER", b"sip:example.co"),
            (Algorithm::Md5, b"REGISTER", b""),
        ];
        let before = HASHES.with(|n| n.get());
        for (alg, method, uri) in calls {
            assert_eq!(c.get(alg, method, uri), ha2(alg, method, uri));
        }
        // Two hashes per call (cache and reference), but for the repeat right after a miss.
        assert_eq!(HASHES.with(|n| n.get()) - before, 2 * 9 - 1);
    }

    #[test]
    fn hex_hash_parsing() {
        let h = HexHash::from_hex(b"ABCDEF0123456789abcdef0123456789", 32).unwrap();
        assert_eq!(h.as_str(), "abcdef0123456789abcdef0123456789");
        assert!(HexHash::from_hex(b"abcd", 32).is_none());
        assert!(HexHash::from_hex(b"zbcdef0123456789abcdef0123456789", 32).is_none());
    }
}
