//! `name-addr` / `addr-spec` values with header parameters: From, To (RFC 3261 §20.20, §20.39),
//! Contact (§20.10, with `*`, expires, q, and RFC 5626 +sip.instance / reg-id), Route,
//! Record-Route (§20.34, §20.30) and Path (RFC 3327).

use super::params::{only_lws, Params};
use crate::sip::scan::{is_lws, is_token_char, CommaSplit, Cursor};
use crate::sip::simd::find_either;
use crate::sip::uri::{Uri, UriError};

/// A display name, URI and parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (quotes removed for quoted-string, escapes kept).
    pub display: Option<&'a [u8]>,
    /// The URI bytes (between `<` `>` if bracketed).
    pub uri_raw: &'a [u8],
    /// True if the URI was enclosed in `<>`.
    pub bracketed: bool,
    pub params: Params<'a>,
    /// `params.get("tag").flatten()`, found while the parameters were checked.
    tag: Option<&'a [u8]>,
}

impl<'a> NameAddr<'a> {
    /// Parses one `(name-addr / addr-spec) *(SEMI param)` value, URI included. On error
    /// returns the offset within `s`.
    pub fn parse(s: &'a [u8]) -> Result<NameAddr<'a>, usize> {
        Self::parse_structure(s, true)
    }

    /// Parses the display name, the URI's extent and the parameters, but not the URI itself
    /// (`uri()` checks it when asked). From and To are read for their tags on every request a
    /// proxy relays, and a proxy must not reject a request for a field it does not use (RFC
    /// 3261 §16.3 step 1); [`crate::sip::Message::validate`] still checks both URIs.
    pub fn parse_lazy(s: &'a [u8]) -> Result<NameAddr<'a>, usize> {
        Self::parse_structure(s, false)
    }

    fn parse_structure(s: &'a [u8], check_uri: bool) -> Result<NameAddr<'a>, usize> {
        let mut c = Cursor::new(s);
        c.skip_lws();
        let mut display = None;
        let bracketed;
        let uri_raw;
        if c.peek() == Some(b'"') {
            display = Some(c.quoted().ok_or(c.pos)?);
            c.skip_lws();
            if c.peek() != Some(b'<') {
                return Err(c.pos);
            }
        }
        // Is there a '<' before any ';' at this level? Then it is a name-addr.
        // (With a quoted display name, `<` is the next byte.)
        let rest = c.rest();
        let angle = match display {
            Some(_) => Some(0),
            None => find_either(b'<', b';', rest).filter(|&i| rest[i] == b'<'),
        };
        if let Some(lt) = angle {
            if lt > 0 {
                // *(token LWS): tokens separated by whitespace; LWS before '<' optional
                // (RFC 4475 §3.1.1.6). The first byte is not LWS (skipped above), so this is
                // "every byte is a token character or LWS"; the error is at the first other.
                let words = &rest[..lt];
                if let Some(bad) = words
                    .iter()
                    .position(|&ch| !is_token_char(ch) && !is_lws(ch))
                {
                    return Err(c.pos + bad);
                }
                display = Some(crate::sip::scan::trim(words));
                c.pos += lt;
            }
            c.eat(b'<');
            let start = c.pos;
            let Some(len) = find_either(b'>', b'>', c.rest()) else {
                return Err(s.len());
            };
            c.pos = start + len + 1;
            uri_raw = &s[start..start + len];
            bracketed = true;
        } else {
            // addr-spec: no parameters, headers or commas in the URI (they are header params).
            let start = c.pos;
            c.take_while(|ch| ch != b';' && !is_lws(ch) && ch != b',');
            uri_raw = &s[start..c.pos];
            if uri_raw.contains(&b'?') {
                return Err(start + uri_raw.iter().position(|&ch| ch == b'?').unwrap_or(0));
            }
            bracketed = false;
        }
        if uri_raw.is_empty() {
            return Err(c.pos - bracketed as usize);
        }
        if check_uri {
            // A name-addr that parses has a URI that parses; `uri()` parses it again when
            // asked (the hot paths read the tag, rarely the URI).
            let uri_at = c.pos - uri_raw.len() - bracketed as usize;
            Uri::parse(uri_raw).map_err(|_| uri_at)?;
        }
        let (params, tag) = Params::scan_find(&mut c, b"tag")?;
        if !only_lws(c.rest()) {
            return Err(c.pos);
        }
        Ok(NameAddr {
            display,
            uri_raw,
            bracketed,
            params,
            tag: tag.flatten(),
        })
    }

    /// The URI: never an error after `parse`; after `parse_lazy` (From, To) this is where a
    /// malformed URI is found.
    pub fn uri(&self) -> Result<Uri<'a>, UriError> {
        Uri::parse(self.uri_raw)
    }

    #[inline]
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.tag
    }

    /// The `expires` contact parameter, if present and numeric (saturating at 2^32-1).
    pub fn expires(&self) -> Option<u32> {
        self.params
            .get("expires")
            .flatten()
            .and_then(|v| crate::sip::scan::parse_u64(v, u64::MAX).ok())
            .map(|v| v.min(u32::MAX as u64) as u32)
    }

    /// The `q` contact parameter in thousandths (q=0.5 gives 500), if valid.
    pub fn q(&self) -> Option<u16> {
        parse_qvalue(self.params.get("q").flatten()?)
    }

    /// `+sip.instance` (RFC 5626 §4.1), quotes removed.
    pub fn instance(&self) -> Option<&'a [u8]> {
        self.params.get("+sip.instance").flatten()
    }

    /// `reg-id` (RFC 5626 §4.2).
    pub fn reg_id(&self) -> Option<u32> {
        self.params
            .get("reg-id")
            .flatten()
            .and_then(|v| crate::sip::scan::parse_u64(v, u32::MAX as u64).ok())
            .map(|v| v as u32)
    }
}

/// Parses `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` into thousandths.
pub fn parse_qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match memchr::memchr(b'.', v) {
        Some(d) => (&v[..d], &v[d + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut f: u16 = 0;
    for i in 0..3 {
        f = f * 10 + frac.get(i).map_or(0, |&d| (d - b'0') as u16);
    }
    match int {
        b"0" => Some(f),
        b"1" if f == 0 => Some(1000),
        _ => None,
    }
}

/// A Contact header value: `*` or a list of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactValue<'a> {
    Star,
    List(&'a [u8]),
}

/// Iterates the elements of a comma-separated name-addr list (Contact, Route, Record-Route,
/// Path), yielding parsed values or the offset of an error within the value.
pub struct NameAddrList<'a> {
    split: CommaSplit<'a>,
    check_uri: bool,
}

impl<'a> NameAddrList<'a> {
    pub fn new(value: &'a [u8]) -> Self {
        NameAddrList {
            split: CommaSplit::new(value),
            check_uri: true,
        }
    }

    /// The elements parsed as by [`NameAddr::parse_lazy`]: for a caller that reads every
    /// element's URI anyway (with `uri()`), which would otherwise be parsed twice.
    pub fn new_lazy(value: &'a [u8]) -> Self {
        NameAddrList {
            split: CommaSplit::new(value),
            check_uri: false,
        }
    }
}

impl<'a> Iterator for NameAddrList<'a> {
    type Item = Result<NameAddr<'a>, usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let (off, elem) = self.split.next()?;
        if elem.is_empty() {
            return Some(Err(off));
        }
        Some(NameAddr::parse_structure(elem, self.check_uri).map_err(|e| off + e))
    }
}

/// Classifies a Contact value as `*` or a list.
pub fn contact_value(v: &[u8]) -> ContactValue<'_> {
    if crate::sip::scan::trim(v) == b"*" {
        ContactValue::Star
    } else {
        ContactValue::List(v)
    }
}

/// True if `s` is a token (used for display-name words).
pub fn is_token_word(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| is_token_char(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let n = NameAddr::parse(
            br#""J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(n.tag(), Some(&b"98asjd8"[..]));
        assert_eq!(n.uri_raw, b"sip:jdrosen@example.com");
        let n = NameAddr::parse(b"sip:user@example.com;tag=1;unknownparam").unwrap();
        assert!(!n.bracketed);
        assert_eq!(n.uri_raw, b"sip:user@example.com");
        assert_eq!(n.params.get("unknownparam"), Some(None));
        let n = NameAddr::parse(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display, Some(&b"caller"[..]));
        let n = NameAddr::parse(b"<sip:a@b;lr;x=1>;expires=60;q=0.7").unwrap();
        assert_eq!(n.expires(), Some(60));
        assert_eq!(n.q(), Some(700));
        assert_eq!(n.uri().unwrap().param("x"), Some(Some(&b"1"[..])));
    }

    #[test]
    fn rejects() {
        assert!(NameAddr::parse(b"\"unterminated <sip:a@b>").is_err());
        assert!(NameAddr::parse(b"< sip:a@b>").is_err());
        assert!(NameAddr::parse(b"Bell, Alexander <sip:a@b>").is_err());
        assert!(NameAddr::parse(b"sip:user@example.com?Route=%3Csip:x%3E").is_err());
        assert!(NameAddr::parse(b"\"Joe\" <sip:joe@example.org>;;;;").is_err());
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue(b"1"), Some(1000));
        assert_eq!(parse_qvalue(b"0.33"), Some(330));
        assert_eq!(parse_qvalue(b"1.5"), None);
        assert_eq!(parse_qvalue(b"0.1234"), None);
    }

    #[test]
    fn lists() {
        let v: Vec<_> = NameAddrList::new(b"<sip:a@b>, \"x,y\" <sip:c@d>;q=0.1")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(v.len(), 2);
        assert!(NameAddrList::new(b"<sip:a@b>,,").any(|r| r.is_err()));
    }

    /// The structure parser before the memchr rewrite: the display name word by word, `>`
    /// byte by byte. Returns (display, uri, bracketed, params, tag) or the error offset.
    #[allow(clippy::type_complexity)]
    fn reference(
        s: &[u8],
    ) -> Result<(Option<&[u8]>, &[u8], bool, &[u8], Option<Option<&[u8]>>), usize> {
        let mut c = Cursor::new(s);
        c.skip_lws();
        let mut display = None;
        let bracketed;
        let uri_raw;
        if c.peek() == Some(b'"') {
            display = Some(c.quoted().ok_or(c.pos)?);
            c.skip_lws();
            if c.peek() != Some(b'<') {
                return Err(c.pos);
            }
        }
        let rest = c.rest();
        let has_angle = rest
            .iter()
            .position(|&ch| ch == b'<')
            .is_some_and(|lt| !rest[..lt].contains(&b';') || display.is_some());
        if has_angle {
            if display.is_none() && c.peek() != Some(b'<') {
                let start = c.pos;
                loop {
                    if c.token().is_none() {
                        return Err(c.pos);
                    }
                    c.skip_lws();
                    if c.peek() == Some(b'<') {
                        break;
                    }
                }
                display = Some(crate::sip::scan::trim(&s[start..c.pos]));
            }
            c.eat(b'<');
            let start = c.pos;
            c.take_while(|ch| ch != b'>');
            if !c.eat(b'>') {
                return Err(c.pos);
            }
            uri_raw = &s[start..c.pos - 1];
            bracketed = true;
        } else {
            let start = c.pos;
            c.take_while(|ch| ch != b';' && !is_lws(ch) && ch != b',');
            uri_raw = &s[start..c.pos];
            if uri_raw.contains(&b'?') {
                return Err(start + uri_raw.iter().position(|&ch| ch == b'?').unwrap_or(0));
            }
            bracketed = false;
        }
        if uri_raw.is_empty() {
            return Err(c.pos - bracketed as usize);
        }
        let (params, tag) = Params::scan_find(&mut c, b"tag")?;
        if !only_lws(c.rest()) {
            return Err(c.pos);
        }
        Ok((display, uri_raw, bracketed, params.raw(), tag))
    }

    #[test]
    fn structure_matches_the_reference_on_mutations() {
        let seeds: [&[u8]; 8] = [
            b"\"Alice Liddell\" <sip:alice@atlanta.example.com>;tag=9fxced76sl",
            b"Bob <sip:bob@biloxi.example.com>",
            b"<sip:a@b;lr>;expires=60;q=0.7",
            b"sip:user@example.com;tag=1;unknownparam",
            b"  caller<sip:caller@example.com> ; tag = 323 ",
            b"A  B\r\n C <sips:x@[::1]:5061>;tag=\"q;v\"",
            b"tel:+1-201-555-0123;tag=x",
            b"Joe <sip:joe@h?Subject=a>;x",
        ];
        let alphabet = b"<>;\"= \t,?:@aZ\r\n\\";
        let mut m = crate::sip::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
        for seed in seeds {
            for round in 0..4000 {
                let v = m.mutated(seed, round % 4, alphabet);
                let got = NameAddr::parse_lazy(&v)
                    .map(|n| (n.display, n.uri_raw, n.bracketed, n.params.raw(), n.tag));
                let want = reference(&v).map(|r| (r.0, r.1, r.2, r.3, r.4.flatten()));
                assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&v));
            }
        }
    }
}
