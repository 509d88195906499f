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
        // Among the names of one length, the first letter (and for Call-ID / Contact the
        // second) picks the only candidate; one case-insensitive compare then decides.
        // `| 0x20` lowers ASCII letters and maps no other byte onto a letter.
        let first = name.first().map_or(0, |&c| c | 0x20);
        let candidate = match (name.len(), first) {
            (2, b't') => To,
            (3, b'v') => Via,
            (4, b'f') => From,
            (4, b'c') => CSeq,
            (4, b'p') => Path,
            (4, b'd') => Date,
            (5, b'r') => Route,
            (5, b'a') => Allow,
            (5, b'e') => Event,
            (6, b'a') => Accept,
            (7, b'c') if name[1] | 0x20 == b'a' => CallId,
            (7, b'c') => Contact,
            (7, b'e') => Expires,
            (7, b'r') => Require,
            (7, b's') => Subject,
            (8, b'r') => ReferTo,
            (9, b's') => Supported,
            (10, b'u') => UserAgent,
            (11, b'm') => MinExpires,
            (11, b'r') => ReferredBy,
            (11, b'u') => Unsupported,
            (12, b'm') => MaxForwards,
            (12, b'r') => RecordRoute,
            (12, b'c') => ContentType,
            (13, b'a') => Authorization,
            (13, b'p') => ProxyRequire,
            (14, b'c') => ContentLength,
            (15, b's') => SessionExpires,
            (16, b'w') => WwwAuthenticate,
            (16, b'c') => ContentEncoding,
            (18, b'p') => ProxyAuthenticate,
            (19, b'p') => ProxyAuthorization,
            _ => return Other,
        };
        if eq_folded(name, &FOLDED[candidate as usize]) {
            candidate
        } else {
            Other
        }
    }
}

/// A canonical name in lower case and the bits to OR into input bytes before comparing:
/// 0x20 where the name has a letter (folding `A-Z` onto `a-z` and no other byte onto a
/// letter), 0 where it has `-`. Padded to 24 bytes so words can be loaded past the end.
struct Folded {
    lower: [u8; 24],
    mask: [u8; 24],
}

const fn folded(name: &str) -> Folded {
    let b = name.as_bytes();
    let mut lower = [0u8; 24];
    let mut mask = [0u8; 24];
    let mut i = 0;
    while i < b.len() {
        lower[i] = b[i].to_ascii_lowercase();
        mask[i] = if b[i].is_ascii_alphabetic() { 0x20 } else { 0 };
        i += 1;
    }
    Folded { lower, mask }
}

const fn folded_table() -> [Folded; KNOWN_HEADERS] {
    let mut t = [const {
        Folded {
            lower: [0; 24],
            mask: [0; 24],
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

/// Case-insensitive equality of `name` (2 to 24 bytes) with a folded canonical name of the
/// same length, a word at a time (the last word overlaps the previous one).
#[inline]
fn eq_folded(name: &[u8], f: &Folded) -> bool {
    let n = name.len();
    debug_assert!((2..=24).contains(&n));
    if n >= 8 {
        let word =
            |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or([0; 8]));
        let mut i = 0;
        loop {
            let at = if i + 8 > n { n - 8 } else { i };
            if word(name, at) | word(&f.mask, at) != word(&f.lower, at) {
                return false;
            }
            i += 8;
            if i >= n {
                return true;
            }
        }
    } else if n >= 4 {
        let word =
            |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap_or([0; 4]));
        word(name, 0) | word(&f.mask, 0) == word(&f.lower, 0)
            && word(name, n - 4) | word(&f.mask, n - 4) == word(&f.lower, n - 4)
    } else {
        // Two or three bytes (for two, the last byte is checked twice).
        let eq = |i: usize| name[i] | f.mask[i] == f.lower[i];
        eq(0) && eq(1) && eq(n - 1)
    }
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
}
