//! The client side of digest authentication (RFC 7616 §3.4, RFC 3261 §22.2): given a
//! challenge, builds the `Authorization` / `Proxy-Authorization` value. The server never
//! needs it; tests and integration tests of the registrar and proxy use it to answer the
//! server's challenges.

use crate::sip::headers::DigestParams;
use crate::sip::{HeaderName, Message};

use super::digest::{ha1, response, Algorithm};
use super::unq;

/// Why a challenge cannot be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// The challenge has no realm.
    MissingRealm,
    /// The challenge has no nonce.
    MissingNonce,
    /// The challenge's algorithm is not MD5, SHA-256 or SHA-512-256.
    UnsupportedAlgorithm,
    /// The challenge does not offer `qop=auth`.
    NoQopAuth,
}

/// The first Digest challenge of `name` (WWW-Authenticate or Proxy-Authenticate) in a
/// response that this client can answer, in the server's order (its preference).
pub fn first_supported_challenge<'a>(
    msg: &Message<'a>,
    name: HeaderName,
) -> Option<DigestParams<'a>> {
    msg.auth_headers(name)
        .filter_map(Result::ok)
        .filter(|h| h.is_digest())
        .map(|h| h.digest())
        .find(|d| Algorithm::from_param(d.algorithm).is_some() && offers_auth(d.qop))
}

fn offers_auth(qop: Option<&[u8]>) -> bool {
    qop.is_some_and(|q| {
        q.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"auth"))
    })
}

/// A user's credentials, to answer digest challenges.
#[derive(Debug, Clone, Copy)]
pub struct DigestClient<'c> {
    pub username: &'c str,
    pub password: &'c str,
}

impl DigestClient<'_> {
    /// The credentials value (`Digest username="..", realm="..", ...`) answering `challenge`
    /// for a request with `method` and Request-URI `uri`, with nonce count `nc` and client
    /// nonce `cnonce` (no quotes or backslashes in it).
    pub fn authorization(
        &self,
        challenge: &DigestParams<'_>,
        method: &[u8],
        uri: &[u8],
        nc: u32,
        cnonce: &str,
    ) -> Result<String, ClientError> {
        let realm = challenge.realm.ok_or(ClientError::MissingRealm)?;
        let nonce = challenge.nonce.ok_or(ClientError::MissingNonce)?;
        let alg =
            Algorithm::from_param(challenge.algorithm).ok_or(ClientError::UnsupportedAlgorithm)?;
        if !offers_auth(challenge.qop) {
            return Err(ClientError::NoQopAuth);
        }
        let nc_text = format!("{nc:08x}");
        let h1 = ha1(
            alg,
            self.username.as_bytes(),
            &unq(realm),
            self.password.as_bytes(),
        );
        let resp = response(
            alg,
            &h1,
            &unq(nonce),
            nc_text.as_bytes(),
            cnonce.as_bytes(),
            method,
            uri,
        );
        let mut out = String::with_capacity(256);
        out.push_str("Digest username=");
        push_quoted(&mut out, self.username.as_bytes());
        // Realm and nonce are echoed as they were written (escapes kept).
        out.push_str(", realm=\"");
        out.push_str(&String::from_utf8_lossy(realm));
        out.push_str("\", nonce=\"");
        out.push_str(&String::from_utf8_lossy(nonce));
        out.push_str("\", uri=");
        push_quoted(&mut out, uri);
        out.push_str(", response=\"");
        out.push_str(resp.as_str());
        out.push_str("\", algorithm=");
        out.push_str(alg.name());
        out.push_str(", qop=auth, nc=");
        out.push_str(&nc_text);
        out.push_str(", cnonce=");
        push_quoted(&mut out, cnonce.as_bytes());
        if let Some(opaque) = challenge.opaque {
            out.push_str(", opaque=\"");
            out.push_str(&String::from_utf8_lossy(opaque));
            out.push('"');
        }
        Ok(out)
    }
}

/// Shorthand for [`DigestClient::authorization`].
pub fn client_response(
    challenge: &DigestParams<'_>,
    username: &str,
    password: &str,
    method: &[u8],
    uri: &[u8],
    nc: u32,
    cnonce: &str,
) -> Result<String, ClientError> {
    DigestClient { username, password }.authorization(challenge, method, uri, nc, cnonce)
}

/// Appends `v` as a quoted-string, escaping `"` and `\` (RFC 3261 §25.1).
pub(crate) fn push_quoted(out: &mut String, v: &[u8]) {
    out.push('"');
    for &b in String::from_utf8_lossy(v).as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push('\\');
        }
        out.push(b as char);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::AuthHeader;

    #[test]
    fn rfc7616_sha256_credentials() {
        let challenge = AuthHeader::parse(
            br#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .unwrap()
        .digest();
        let v = client_response(
            &challenge,
            "Mufasa",
            "Circle of Life",
            b"GET",
            b"/dir/index.html",
            1,
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
        .unwrap();
        let d = AuthHeader::parse(v.as_bytes()).unwrap().digest();
        assert_eq!(d.username, Some(&b"Mufasa"[..]));
        assert_eq!(d.uri, Some(&b"/dir/index.html"[..]));
        assert_eq!(d.nc, Some(&b"00000001"[..]));
        assert_eq!(d.qop, Some(&b"auth"[..]));
        assert_eq!(d.algorithm, Some(&b"SHA-256"[..]));
        assert_eq!(
            d.opaque,
            Some(&b"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"[..])
        );
        assert_eq!(
            d.response,
            Some(&b"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"[..])
        );
    }

    #[test]
    fn sha512_256_credentials() {
        let challenge = AuthHeader::parse(
            b"Digest realm=\"http-auth@example.org\", qop=\"auth\", algorithm=SHA-512-256, \
              nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\"",
        )
        .unwrap()
        .digest();
        let v = client_response(
            &challenge,
            "Mufasa",
            "Circle of Life",
            b"GET",
            b"/dir/index.html",
            1,
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
        .unwrap();
        let d = AuthHeader::parse(v.as_bytes()).unwrap().digest();
        assert_eq!(d.algorithm, Some(&b"SHA-512-256"[..]));
        // The RFC 7616 §3.9.1 exchange hashed with SHA-512/256 (see digest.rs).
        assert_eq!(
            d.response,
            Some(&b"430d05014cecc49cab6fbe03176d41a1da86cbfe24a16580e22aaad928d960d0"[..])
        );
    }

    #[test]
    fn unanswerable_challenges() {
        let c = |v: &'static [u8]| AuthHeader::parse(v).unwrap().digest();
        let ask =
            |d: &DigestParams<'_>| client_response(d, "u", "p", b"REGISTER", b"sip:x", 1, "c");
        assert_eq!(
            ask(&c(b"Digest nonce=\"n\", qop=\"auth\"")),
            Err(ClientError::MissingRealm)
        );
        assert_eq!(
            ask(&c(b"Digest realm=\"r\", qop=\"auth\"")),
            Err(ClientError::MissingNonce)
        );
        assert_eq!(
            ask(&c(
                b"Digest realm=\"r\", nonce=\"n\", qop=\"auth\", algorithm=MD5-sess"
            )),
            Err(ClientError::UnsupportedAlgorithm)
        );
        assert_eq!(
            ask(&c(b"Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"")),
            Err(ClientError::NoQopAuth)
        );
        assert_eq!(
            ask(&c(b"Digest realm=\"r\", nonce=\"n\"")),
            Err(ClientError::NoQopAuth)
        );
    }

    #[test]
    fn quoting() {
        let mut s = String::new();
        push_quoted(&mut s, br#"a"b\c"#);
        assert_eq!(s, r#""a\"b\\c""#);
    }
}
