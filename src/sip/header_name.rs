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
        // Candidates share a length; compare case-insensitively against each.
        let candidates: &[HeaderName] = match name.len() {
            2 => &[To],
            3 => &[Via],
            4 => &[From, CSeq, Path, Date],
            5 => &[Route, Allow, Event],
            6 => &[Accept],
            7 => &[CallId, Contact, Expires, Require, Subject],
            8 => &[ReferTo],
            9 => &[Supported],
            10 => &[UserAgent],
            11 => &[MinExpires, ReferredBy, Unsupported],
            12 => &[MaxForwards, RecordRoute, ContentType],
            13 => &[Authorization, ProxyRequire],
            14 => &[ContentLength],
            15 => &[SessionExpires],
            16 => &[WwwAuthenticate, ContentEncoding],
            18 => &[ProxyAuthenticate],
            19 => &[ProxyAuthorization],
            _ => &[],
        };
        for &c in candidates {
            if name.eq_ignore_ascii_case(c.as_str().as_bytes()) {
                return c;
            }
        }
        Other
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
