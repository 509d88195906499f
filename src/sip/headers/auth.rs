//! Authorization, Proxy-Authorization, WWW-Authenticate and Proxy-Authenticate values
//! (RFC 3261 §20.7, §20.28, §20.44, §20.27; digest parameters of RFC 7616 / RFC 8760):
//! `scheme LWS auth-param *(COMMA auth-param)` with `auth-param = token EQUAL (token /
//! quoted-string)`. Unknown schemes parse too (RFC 4475 §3.3.7).

use crate::sip::scan::{is_lws, trim, CommaSplit, Cursor};

/// An auth header split into scheme and parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthHeader<'a> {
    pub scheme: &'a [u8],
    /// The comma-separated parameters (validated).
    params: &'a [u8],
}

impl<'a> AuthHeader<'a> {
    /// Parses and validates. On error returns the offset within `v`.
    pub fn parse(v: &'a [u8]) -> Result<AuthHeader<'a>, usize> {
        Self::parse_with(v, |_, _| {})
    }

    /// Parses, validates and reads the digest parameters in one pass (what a server checking
    /// credentials needs). On error returns the offset within `v`.
    pub fn parse_digest(v: &'a [u8]) -> Result<(AuthHeader<'a>, DigestParams<'a>), usize> {
        let mut d = DigestParams::default();
        let h = Self::parse_with(v, |n, v| d.set(n, v))?;
        Ok((h, d))
    }

    /// Parses `scheme LWS param *(COMMA param)`, calling `f` with each (name, value) pair.
    fn parse_with(v: &'a [u8], f: impl FnMut(&'a [u8], &'a [u8])) -> Result<AuthHeader<'a>, usize> {
        let mut c = Cursor::new(v);
        c.skip_lws();
        let scheme = c.token().ok_or(c.pos)?;
        let params_start = c.pos;
        if !c.at_end() && !c.peek().is_some_and(is_lws) {
            return Err(c.pos);
        }
        let params = &v[params_start..];
        walk_params(params, f).map_err(|off| params_start + off)?;
        Ok(AuthHeader { scheme, params })
    }

    pub fn is_digest(&self) -> bool {
        self.scheme.eq_ignore_ascii_case(b"Digest")
    }

    /// Iterates (name, value) with quotes removed from quoted values.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        CommaSplit::new(self.params).filter_map(|(_, p)| split_param(p))
    }

    /// One parameter by name (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The digest fields as a struct (one pass over the parameters).
    pub fn digest(&self) -> DigestParams<'a> {
        let mut d = DigestParams::default();
        // The parameters were validated by `parse`.
        let _ = walk_params(self.params, |n, v| d.set(n, v));
        d
    }
}

/// Walks `auth-param *(COMMA auth-param)` (possibly empty) with `auth-param = token EQUAL
/// (token / quoted-string)`, LWS allowed around the separators, calling `f` for each pair
/// (quoted values without their quotes, escapes kept). On error returns the offset of the
/// first byte that does not fit.
fn walk_params<'a>(params: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) -> Result<(), usize> {
    let mut c = Cursor::new(params);
    c.skip_lws();
    if c.at_end() {
        return Ok(());
    }
    loop {
        let name = c.token().ok_or(c.pos)?;
        if !c.eat_sep(b'=') {
            return Err(c.pos);
        }
        let value = if c.peek() == Some(b'"') {
            c.quoted().ok_or(c.pos)?
        } else {
            c.token().ok_or(c.pos)?
        };
        f(name, value);
        c.skip_lws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return Err(c.pos);
        }
        c.skip_lws();
    }
}

/// The digest parameters a server reads (values unquoted, escapes kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DigestParams<'a> {
    pub username: Option<&'a [u8]>,
    pub realm: Option<&'a [u8]>,
    pub nonce: Option<&'a [u8]>,
    pub uri: Option<&'a [u8]>,
    pub response: Option<&'a [u8]>,
    pub algorithm: Option<&'a [u8]>,
    pub cnonce: Option<&'a [u8]>,
    pub opaque: Option<&'a [u8]>,
    pub qop: Option<&'a [u8]>,
    pub nc: Option<&'a [u8]>,
    pub stale: Option<&'a [u8]>,
    pub userhash: Option<&'a [u8]>,
}

impl<'a> DigestParams<'a> {
    /// Records parameter `name` (case-insensitive) if it is a digest field not seen yet.
    #[inline]
    fn set(&mut self, name: &'a [u8], value: &'a [u8]) {
        // Sorted by length first: one or two case-insensitive compares per parameter.
        let is = |field: &[u8]| name.eq_ignore_ascii_case(field);
        let slot = match name.len() {
            2 if is(b"nc") => &mut self.nc,
            3 if is(b"uri") => &mut self.uri,
            3 if is(b"qop") => &mut self.qop,
            5 if is(b"realm") => &mut self.realm,
            5 if is(b"nonce") => &mut self.nonce,
            5 if is(b"stale") => &mut self.stale,
            6 if is(b"cnonce") => &mut self.cnonce,
            6 if is(b"opaque") => &mut self.opaque,
            8 if is(b"username") => &mut self.username,
            8 if is(b"response") => &mut self.response,
            8 if is(b"userhash") => &mut self.userhash,
            9 if is(b"algorithm") => &mut self.algorithm,
            _ => return,
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }
}

fn split_param(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut c = Cursor::new(p);
    let name = c.token()?;
    if !c.eat_sep(b'=') {
        return None;
    }
    let value = if c.peek() == Some(b'"') {
        c.quoted()?
    } else {
        c.token()?
    };
    if !trim(c.rest()).is_empty() {
        return None;
    }
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_credentials() {
        let a = AuthHeader::parse(
            br#"Digest username="alice", realm="atlanta.com",
 nonce="84a4cc6f3082121f32b42a2187831a9e", uri="sip:atlanta.com", algorithm=SHA-256,
 response="7587245234b3434cc3412213e5f113a5432", qop=auth, nc=00000001, cnonce="0a4f113b""#,
        )
        .unwrap();
        assert!(a.is_digest());
        let d = a.digest();
        assert_eq!(d.username, Some(&b"alice"[..]));
        assert_eq!(d.algorithm, Some(&b"SHA-256"[..]));
        assert_eq!(d.nc, Some(&b"00000001"[..]));
        assert_eq!(d.cnonce, Some(&b"0a4f113b"[..]));
    }

    #[test]
    fn unknown_scheme_and_errors() {
        let a = AuthHeader::parse(b"NoOneKnowsThisScheme opaque-data=here").unwrap();
        assert!(!a.is_digest());
        assert_eq!(a.get("opaque-data"), Some(&b"here"[..]));
        assert!(AuthHeader::parse(b"Digest username=\"open").is_err());
        assert!(AuthHeader::parse(b"Digest a=b,,c=d").is_err());
        assert!(AuthHeader::parse(b"Digest a=b,").is_err());
        assert!(AuthHeader::parse(b"Digest ,a=b").is_err());
        assert!(AuthHeader::parse(b"Digest a=b c=d").is_err());
        assert!(AuthHeader::parse(b"Digest a=<b>").is_err());
        assert!(AuthHeader::parse(b"Digest a").is_err());
        assert_eq!(
            AuthHeader::parse(b"Digest a=b, c=\"d,e\"").map(|h| h.get("c")),
            Ok(Some(&b"d,e"[..]))
        );
        assert!(AuthHeader::parse(b"Digest").is_ok());
        assert!(AuthHeader::parse(b"Digest  ").is_ok());
    }

    #[test]
    fn one_pass_digest_matches_parse_then_digest() {
        let v = br#"Digest username="bob", realm="biloxi.com", nonce="dcd98b", uri="sip:bob@biloxi.com", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae4", opaque="5ccc""#;
        let (h, d) = AuthHeader::parse_digest(v).unwrap();
        assert_eq!(d, AuthHeader::parse(v).unwrap().digest());
        assert_eq!(h, AuthHeader::parse(v).unwrap());
        assert_eq!(d.opaque, Some(&b"5ccc"[..]));
        assert_eq!(AuthHeader::parse_digest(b"Digest a=\"open"), Err(9));
    }

    // The field match before it went by length.
    impl<'a> DigestParams<'a> {
        /// Records parameter `name` (case-insensitive) if it is a digest field not seen yet.
        fn set_before(&mut self, name: &'a [u8], value: &'a [u8]) {
            // Lower-case the name into a stack buffer (no allocation per parameter).
            let mut lower = [0u8; 16];
            if name.len() > lower.len() {
                return;
            }
            for (d, s) in lower.iter_mut().zip(name) {
                *d = s.to_ascii_lowercase();
            }
            let slot = match &lower[..name.len()] {
                b"username" => &mut self.username,
                b"realm" => &mut self.realm,
                b"nonce" => &mut self.nonce,
                b"uri" => &mut self.uri,
                b"response" => &mut self.response,
                b"algorithm" => &mut self.algorithm,
                b"cnonce" => &mut self.cnonce,
                b"opaque" => &mut self.opaque,
                b"qop" => &mut self.qop,
                b"nc" => &mut self.nc,
                b"stale" => &mut self.stale,
                b"userhash" => &mut self.userhash,
                _ => return,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
    }

    #[test]
    fn field_names_match_in_any_case_and_only_whole() {
        let names = [
            "username",
            "realm",
            "nonce",
            "uri",
            "response",
            "algorithm",
            "cnonce",
            "opaque",
            "qop",
            "nc",
            "stale",
            "userhash",
        ];
        let mut m = crate::sip::mutate::Mutator::new(99);
        for name in names {
            for _ in 0..200 {
                let mut n: Vec<u8> = name
                    .bytes()
                    .map(|b| {
                        if m.next(2) == 0 {
                            b.to_ascii_uppercase()
                        } else {
                            b
                        }
                    })
                    .collect();
                if m.next(3) == 0 {
                    m.mutate(&mut n, b"aeiouxNCS-_");
                }
                let (mut a, mut b) = (DigestParams::default(), DigestParams::default());
                a.set(&n, b"v");
                b.set_before(&n, b"v");
                assert_eq!(a, b, "{:?}", String::from_utf8_lossy(&n));
            }
        }
        let long = [b'a'; 40];
        let mut a = DigestParams::default();
        a.set(&long, b"v");
        assert_eq!(a, DigestParams::default());
    }
}
