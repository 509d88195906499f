//! Header names: the well-known ones as an enum, compact forms (RFC 3261 §7.3.3, §20) and
//! case-insensitive matching (§7.3.1).

/// Headers the server's hot paths look at. Anything else is `Other` and is kept as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderName {
    Via = 0,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    Expires,
    MinExpires,
    Route,
    RecordRoute,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    ContentType,
    ContentLength,
    Require,
    ProxyRequire,
    Supported,
    Path,
    Date,
    Allow,
    Accept,
    Unsupported,
    Subject,
    ContentEncoding,
    Event,
    ReferTo,
    ReferredBy,
    SessionExpires,
    UserAgent,
    Other,
}

/// Number of named (non-`Other`) variants.
pub const KNOWN_HEADERS: usize = HeaderName::Other as usize;

impl HeaderName {
    /// The canonical spelling, as the server writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            HeaderName::Via => "Via",
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::Contact => "Contact",
            HeaderName::Expires => "Expires",
            HeaderName::MinExpires => "Min-Expires",
            HeaderName::Route => "Route",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::Authorization => "Authorization",
            HeaderName::ProxyAuthorization => "Proxy-Authorization",
            HeaderName::WwwAuthenticate => "WWW-Authenticate",
            HeaderName::ProxyAuthenticate => "Proxy-Authenticate",
            HeaderName::ContentType => "Content-Type",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::Require => "Require",
            HeaderName::ProxyRequire => "Proxy-Require",
            HeaderName::Supported => "Supported",
            HeaderName::Path => "Path",
            HeaderName::Date => "Date",
            HeaderName::Allow => "Allow",
            HeaderName::Accept => "Accept",
            HeaderName::Unsupported => "Unsupported",
            HeaderName::Subject => "Subject",
            HeaderName::ContentEncoding => "Content-Encoding",
            HeaderName::Event => "Event",
            HeaderName::ReferTo => "Refer-To",
            HeaderName::ReferredBy => "Referred-By",
            HeaderName::SessionExpires => "Session-Expires",
            HeaderName::UserAgent => "User-Agent",
            HeaderName::Other => "(other)",
        }
    }

    /// Classifies a header name, accepting any letter case and the compact forms.
    #[inline]
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        if name.len() == 1 {
            return match name[0] | 0x20 {
                b'v' => Via,
                b'f' => From,
                b't' => To,
                b'i' => CallId,
                b'm' => Contact,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'k' => Supported,
                b's' => Subject,
                b'e' => ContentEncoding,
                b'o' => Event,
                b'r' => ReferTo,
                b'b' => ReferredBy,
                b'x' => SessionExpires,
                _ => Other,
            };
        }
        // Among the names of one length, the first two bytes pick the only candidate (see
        // `candidate_table`); one case-insensitive compare then decides.
        let n = name.len();
        if !(2..MAX_LEN).contains(&n) {
            return Other;
        }
        let candidate = CANDIDATE[n * 32 + (name[0].wrapping_add(name[1]) & 31) as usize];
        if candidate != Other && eq_folded(name, &FOLDED[candidate as usize]) {
            candidate
        } else {
            Other
        }
    }
}

impl HeaderName {
    /// [`HeaderName::from_bytes`] of `head[..len]`, for a name that is the start of sixteen
    /// bytes loaded anyway (the header-line loop): one masked compare of the sixteen bytes
    /// instead of loads by length.
    #[inline]
    pub(crate) fn from_head(head: &[u8; 16], len: usize) -> HeaderName {
        if !(2..16).contains(&len) {
            return HeaderName::from_bytes(&head[..len.min(16)]);
        }
        let candidate = CANDIDATE[(len & 15) * 32 + (head[0].wrapping_add(head[1]) & 31) as usize];
        if candidate == HeaderName::Other {
            return HeaderName::Other;
        }
        let f = &FOLDED16[candidate as usize];
        if (u128::from_le_bytes(*head) | f.mask) ^ f.lower == 0 {
            candidate
        } else {
            HeaderName::Other
        }
    }
}

/// Each canonical name of at most 15 bytes as one little-endian word of sixteen bytes, as in
/// [`Folded`] (the lowered name, and 0x20 at its letters), with 0xff in both words after the
/// name: whatever follows the name then compares equal, so no mask by length is needed (a
/// candidate has the length of the name). Zero for longer names, which `from_head` never
/// compares.
struct Folded16 {
    lower: u128,
    mask: u128,
}

static FOLDED16: [Folded16; KNOWN_HEADERS] = {
    let mut t = [const { Folded16 { lower: 0, mask: 0 } }; KNOWN_HEADERS];
    let mut i = 0;
    while i < KNOWN_HEADERS {
        let b = ALL_KNOWN[i].as_str().as_bytes();
        if b.len() < 16 {
            let mut j = 0;
            while j < b.len() {
                t[i].lower |= (b[j].to_ascii_lowercase() as u128) << (8 * j);
                if b[j].is_ascii_alphabetic() {
                    t[i].mask |= 0x20 << (8 * j);
                }
                j += 1;
            }
            while j < 16 {
                t[i].lower |= 0xff << (8 * j);
                t[i].mask |= 0xff << (8 * j);
                j += 1;
            }
        }
        i += 1;
    }
    t
};

/// One more than the length of the longest canonical name.
const MAX_LEN: usize = 20;

/// The known header of each length `n` (2 to 19) and key `(b0 + b1) & 31` of its first two
/// bytes, at `n * 32 + key`; `Other` where there is none. Bit 0x20 of a byte does not reach the
/// low five bits of the sum, so the key is the same in any letter case. No two names of one
/// length share a key (checked when the table is built: a new name that collides fails to
/// compile).
static CANDIDATE: [HeaderName; MAX_LEN * 32] = candidate_table();

const fn candidate_table() -> [HeaderName; MAX_LEN * 32] {
    let mut t = [HeaderName::Other; MAX_LEN * 32];
    let mut i = 0;
    while i < KNOWN_HEADERS {
        let b = ALL_KNOWN[i].as_str().as_bytes();
        assert!(b.len() >= 2 && b.len() < MAX_LEN);
        let at = b.len() * 32 + (b[0].wrapping_add(b[1]) & 31) as usize;
        assert!(matches!(t[at], HeaderName::Other), "two names share a key");
        t[at] = ALL_KNOWN[i];
        i += 1;
    }
    t
}

/// A canonical name in lower case and the bits to OR into input bytes before comparing:
/// 0x20 where the name has a letter (folding `A-Z` onto `a-z` and no other byte onto a
/// letter), 0 where it has `-`. Kept as the three words `eq_folded` loads: for a name of `n`
/// bytes, words of `w` bytes (8 for `n >= 8`, else 4, else 2) at 0, at `n - w` and at 8 (only
/// for `n > 16`, else at 0 again), which together cover every byte.
struct Folded {
    lower: [u64; 3],
    mask: [u64; 3],
}

const fn folded(name: &str) -> Folded {
    let b = name.as_bytes();
    let n = b.len();
    let w = if n >= 8 {
        8
    } else if n >= 4 {
        4
    } else {
        2
    };
    let at = [0, if n > 16 { 8 } else { 0 }, n - w];
    let mut lower = [0u64; 3];
    let mut mask = [0u64; 3];
    let mut k = 0;
    while k < 3 {
        let mut j = 0;
        while j < w {
            let c = b[at[k] + j];
            lower[k] |= (c.to_ascii_lowercase() as u64) << (8 * j);
            if c.is_ascii_alphabetic() {
                mask[k] |= 0x20 << (8 * j);
            }
            j += 1;
        }
        k += 1;
    }
    Folded { lower, mask }
}

const fn folded_table() -> [Folded; KNOWN_HEADERS] {
    let mut t = [const {
        Folded {
            lower: [0; 3],
            mask: [0; 3],
        }
    }; KNOWN_HEADERS];
    let mut i = 0;
    while i < KNOWN_HEADERS {
        t[i] = folded(ALL_KNOWN[i].as_str());
        i += 1;
    }
    t
}

static FOLDED: [Folded; KNOWN_HEADERS] = folded_table();

/// Case-insensitive equality of `name` (2 to 19 bytes) with a folded canonical name of the
/// same length: three word compares, without branches on the bytes.
#[inline]
fn eq_folded(name: &[u8], f: &Folded) -> bool {
    let n = name.len();
    let (a, b, c) = if n >= 8 {
        let word = |i: usize| u64::from_le_bytes(name[i..i + 8].try_into().unwrap_or([0; 8]));
        (word(0), word(if n > 16 { 8 } else { 0 }), word(n - 8))
    } else if n >= 4 {
        let word =
            |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap_or([0; 4])) as u64;
        (word(0), word(0), word(n - 4))
    } else {
        let word =
            |i: usize| u16::from_le_bytes(name[i..i + 2].try_into().unwrap_or([0; 2])) as u64;
        (word(0), word(0), word(n - 2))
    };
    ((a | f.mask[0]) ^ f.lower[0]) | ((b | f.mask[1]) ^ f.lower[1]) | ((c | f.mask[2]) ^ f.lower[2])
        == 0
}

#[cfg(test)]
const ALL: [HeaderName; KNOWN_HEADERS] = ALL_KNOWN;

/// Every named variant, in discriminant order.
const ALL_KNOWN: [HeaderName; KNOWN_HEADERS] = {
    use HeaderName::*;
    [
        Via,
        From,
        To,
        CallId,
        CSeq,
        MaxForwards,
        Contact,
        Expires,
        MinExpires,
        Route,
        RecordRoute,
        Authorization,
        ProxyAuthorization,
        WwwAuthenticate,
        ProxyAuthenticate,
        ContentType,
        ContentLength,
        Require,
        ProxyRequire,
        Supported,
        Path,
        Date,
        Allow,
        Accept,
        Unsupported,
        Subject,
        ContentEncoding,
        Event,
        ReferTo,
        ReferredBy,
        SessionExpires,
        UserAgent,
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_canonical_name_round_trips() {
        for i in 0..KNOWN_HEADERS as u8 {
            // SAFETY-free: build the enum through the table of names instead of transmute.
            let n = ALL[i as usize];
            assert_eq!(HeaderName::from_bytes(n.as_str().as_bytes()), n);
            assert_eq!(
                HeaderName::from_bytes(n.as_str().to_ascii_uppercase().as_bytes()),
                n
            );
        }
    }

    #[test]
    fn compact_forms() {
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"I"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"m"), HeaderName::Contact);
        assert_eq!(HeaderName::from_bytes(b"C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"X-Foo"), HeaderName::Other);
    }

    #[test]
    fn folding_is_exact() {
        // Bytes that differ from a name only in bit 0x20 must not match, except letter case.
        assert_eq!(HeaderName::from_bytes(b"Call\rID"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"call-id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"CALL-ID"), HeaderName::CallId);
        assert_eq!(
            HeaderName::from_bytes(b"Content\rLength"),
            HeaderName::Other
        );
        assert_eq!(HeaderName::from_bytes(b"ViA"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"V\x09a"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"T\x0f"), HeaderName::Other);
        // Every single-byte change of every name is recognised exactly like the slow path.
        for n in ALL {
            let name = n.as_str().as_bytes();
            for i in 0..name.len() {
                for b in 0..=255u8 {
                    let mut v = name.to_vec();
                    v[i] = b;
                    let expect = if v.eq_ignore_ascii_case(name) {
                        n
                    } else {
                        HeaderName::Other
                    };
                    let got = HeaderName::from_bytes(&v);
                    if got != n {
                        assert_eq!(got, expect, "{:?}", String::from_utf8_lossy(&v));
                    }
                }
            }
        }
    }

    /// `from_head` agrees with `from_bytes` on the name at the start of sixteen bytes, over
    /// every name in random case, with random changes, followed by random bytes.
    #[test]
    fn from_head_matches_from_bytes() {
        let mut rng = crate::sip::mutate::Mutator::new(0x2545_f491_4f6c_dd1d);
        let mut rnd = || rng.next_u64();
        let compact = b"vftimlcksnoerbxyzaVFTIML";
        for _ in 0..300_000 {
            let mut head = [0u8; 16];
            for b in &mut head {
                *b = b": -aZ\r\n\t\x00\xff"[(rnd() % 10) as usize] ^ (rnd() as u8 & 0x21);
            }
            let len = if rnd() % 4 == 0 {
                head[0] = compact[(rnd() % compact.len() as u64) as usize];
                1
            } else {
                let base = ALL[(rnd() % ALL.len() as u64) as usize].as_str().as_bytes();
                let n = base.len().min(16);
                head[..n].copy_from_slice(&base[..n]);
                for b in &mut head[..n] {
                    if rnd() % 2 == 0 {
                        *b = b.to_ascii_uppercase();
                    }
                }
                match rnd() % 4 {
                    0 => head[(rnd() % 16) as usize] = rnd() as u8,
                    1 => head[(rnd() % 16) as usize] ^= 0x20,
                    _ => {}
                }
                match rnd() % 4 {
                    0 => (rnd() % 17) as usize,
                    1 => (n + 1).min(16),
                    _ => n,
                }
            };
            assert_eq!(
                HeaderName::from_head(&head, len),
                HeaderName::from_bytes(&head[..len]),
                "{:?}",
                String::from_utf8_lossy(&head[..len])
            );
        }
    }

    /// The table lookup against a plain search of the canonical names, over random names of
    /// every length made of name bytes in random case, with random bytes spliced in.
    #[test]
    fn matches_plain_search() {
        let reference = |name: &[u8]| {
            ALL.iter()
                .copied()
                .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
                .unwrap_or(HeaderName::Other)
        };
        let mut rng = crate::sip::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
        let mut rnd = || rng.next_u64();
        for _ in 0..200_000 {
            let base = ALL[(rnd() % ALL.len() as u64) as usize].as_str().as_bytes();
            let mut v: Vec<u8> = base
                .iter()
                .map(|&c| {
                    if rnd() % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            match rnd() % 4 {
                0 => {
                    let i = (rnd() % v.len() as u64) as usize;
                    v[i] = rnd() as u8;
                }
                1 => v.truncate((rnd() % (v.len() as u64 + 1)) as usize),
                2 => v.push(b"-a:Z\0"[(rnd() % 5) as usize]),
                _ => {}
            }
            if v.len() < 2 {
                continue;
            }
            assert_eq!(
                HeaderName::from_bytes(&v),
                reference(&v),
                "{:?}",
                String::from_utf8_lossy(&v)
            );
        }
    }
}
