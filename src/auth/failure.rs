//! Failed authentications, as an operator's log reports them (and fail2ban counts them):
//! credentials were sent and are wrong (RFC 3261 §22.4 leaves the policy to the server).
//!
//! A [`Failure`] borrows its fields from the request and formats nothing until it is shown;
//! [`Failure::log_line`] writes the stable `key=value` line that
//! `tuning/fail2ban/filter.d/sipshard.conf` matches:
//!
//! ```text
//! auth failed src=203.0.113.5:5060 user=alice realm=example.com method=REGISTER reason=bad-response
//! ```
//!
//! `src` comes first and is the address the datagram came from; `user`, `realm` and `method`
//! are the client's bytes with everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( ) & + $ , ; ? / : @`
//! percent-encoded (RFC 3986 §2.1), so no client-chosen text can hold a space, an `=` or a
//! line break and forge another `src=`.
//!
//! Not failures: a request without credentials (the first challenge), a right response with
//! an expired nonce (`stale=true`), a nonce this server did not issue (a client after a
//! restart), or credentials in a form the server does not accept (a new challenge tells the
//! client what to send).

use core::fmt;
use std::net::SocketAddr;

use super::unq;

/// Why credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The response is wrong for a known user: a wrong password (or no HA1 for the
    /// algorithm used).
    BadResponse,
    /// No such user (the same work and answer as a wrong password; only the log tells).
    UnknownUser,
    /// A right response with a nonce count already used (RFC 7616 §3.4.5): a replay.
    ReplayedNc,
    /// Digest credentials, none of them for our realm.
    WrongRealm,
}

impl FailReason {
    /// The `reason=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::BadResponse => "bad-response",
            FailReason::UnknownUser => "unknown-user",
            FailReason::ReplayedNc => "replayed-nc",
            FailReason::WrongRealm => "wrong-realm",
        }
    }
}

/// A failed authentication: what was refused and why, borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure<'m> {
    pub reason: FailReason,
    /// The `username` parameter as sent (quoted-string escapes still in; empty if absent).
    pub user: &'m [u8],
    /// The `realm` parameter as sent (escapes still in).
    pub realm: &'m [u8],
    /// The request's method.
    pub method: &'m [u8],
}

impl<'m> Failure<'m> {
    /// The log line of this failure for a request from `src` (formatted when shown).
    pub fn log_line(&self, src: SocketAddr) -> LogLine<'_, 'm> {
        LogLine { failure: self, src }
    }
}

/// See [`Failure::log_line`].
pub struct LogLine<'f, 'm> {
    failure: &'f Failure<'m>,
    src: SocketAddr,
}

impl fmt::Display for LogLine<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.failure;
        write!(
            f,
            "auth failed src={} user={} realm={} method={} reason={}",
            self.src,
            Escaped(&unq(x.user)),
            Escaped(&unq(x.realm)),
            Escaped(x.method),
            x.reason.as_str()
        )
    }
}

/// Bytes with everything outside a SIP user part's safe characters (and `=`, `%`) written as
/// `%XX`.
pub(crate) struct Escaped<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            let safe = b.is_ascii_alphanumeric() || b"-_.!~*'()&+$,;?/:@".contains(&b);
            if safe {
                f.write_str(core::str::from_utf8(&[b]).unwrap_or("?"))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        let f = Failure {
            reason: FailReason::BadResponse,
            user: b"alice",
            realm: b"example.com",
            method: b"REGISTER",
        };
        assert_eq!(
            f.log_line("203.0.113.5:5060".parse().unwrap()).to_string(),
            "auth failed src=203.0.113.5:5060 user=alice realm=example.com method=REGISTER \
             reason=bad-response"
        );
        let f = Failure {
            reason: FailReason::WrongRealm,
            user: b"",
            realm: b"",
            method: b"INVITE",
        };
        assert_eq!(
            f.log_line("[2001:db8::1]:5070".parse().unwrap())
                .to_string(),
            "auth failed src=[2001:db8::1]:5070 user= realm= method=INVITE reason=wrong-realm"
        );
    }

    #[test]
    fn client_text_cannot_forge_fields_or_lines() {
        let f = Failure {
            reason: FailReason::UnknownUser,
            user: br#"x src=198.51.100.7:1 user=y\"%"#,
            realm: b"a\r\nauth failed src=198.51.100.8:1 r\xc3\xa9alm",
            method: b"REGISTER",
        };
        let line = f.log_line("192.0.2.1:5060".parse().unwrap()).to_string();
        assert_eq!(
            line,
            "auth failed src=192.0.2.1:5060 user=x%20src%3D198.51.100.7:1%20user%3Dy%22%25 \
             realm=a%0D%0Aauth%20failed%20src%3D198.51.100.8:1%20r%C3%A9alm method=REGISTER \
             reason=unknown-user"
        );
        assert_eq!(line.matches("src=").count(), 1);
        assert_eq!(line.split(' ').count(), 7);
    }

    #[test]
    fn reasons() {
        let all = [
            FailReason::BadResponse,
            FailReason::UnknownUser,
            FailReason::ReplayedNc,
            FailReason::WrongRealm,
        ];
        let names: Vec<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            ["bad-response", "unknown-user", "replayed-nc", "wrong-realm"]
        );
    }
}
