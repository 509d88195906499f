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
        if name.eq_ignore_ascii_case(candidate.as_str().as_bytes()) {
            candidate
        } else {
            Other
        }
    }
}

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
}

#[cfg(test)]
const ALL: [HeaderName; KNOWN_HEADERS] = {
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
