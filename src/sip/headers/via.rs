//! The Via header (RFC 3261 §20.42, §18.2.1) with the `received` and `rport` parameters of
//! RFC 3581 and IPv6 sent-by/received values of RFC 5118.

use super::params::{only_lws, Params};
use crate::sip::scan::{is_lws, is_token_char, Cursor};
use crate::sip::uri::{split_hostport, HostKind};

/// One Via value (`SIP/2.0/UDP host:port;branch=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    pub protocol: &'a [u8],
    pub version: &'a [u8],
    pub transport: &'a [u8],
    /// sent-by host (IPv6 without brackets).
    pub host: &'a [u8],
    pub host_kind: HostKind,
    pub port: Option<u16>,
    pub params: Params<'a>,
    /// `params.get("branch").flatten()`, found while the parameters were checked.
    branch: Option<&'a [u8]>,
}

/// The RFC 3261 branch prefix that marks a globally unique branch (§8.1.1.7).
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

impl<'a> Via<'a> {
    /// Parses one Via value (one element of the comma-separated list).
    /// On error returns the offset within `s` where the problem was found.
    pub fn parse(s: &'a [u8]) -> Result<Via<'a>, usize> {
        let (via, end) = Self::parse_at(s, 0)?;
        if !only_lws(&s[end..]) {
            return Err(end);
        }
        Ok(via)
    }

    /// Parses the Via value that starts at `start` in `s` (a Via header line, which may hold
    /// several values) and stops after its parameters: returns it and where it stopped.
    /// Errors are offsets in `s`.
    pub(crate) fn parse_at(s: &'a [u8], start: usize) -> Result<(Via<'a>, usize), usize> {
        let mut c = Cursor { s, pos: start };
        c.skip_lws();
        let protocol = c.token().ok_or(c.pos)?;
        if !c.eat_sep(b'/') {
            return Err(c.pos);
        }
        let version = c.token().ok_or(c.pos)?;
        if !c.eat_sep(b'/') {
            return Err(c.pos);
        }
        let transport = c.token().ok_or(c.pos)?;
        // LWS between sent-protocol and sent-by is mandatory.
        if !c.peek().is_some_and(is_lws) {
            return Err(c.pos);
        }
        c.skip_lws();
        let host_start = c.pos;
        if c.peek() == Some(b'[') {
            c.take_while(|ch| ch != b']');
            if !c.eat(b']') {
                return Err(c.pos);
            }
        } else {
            c.take_while(|ch| is_token_char(ch) && ch != b':');
        }
        let host_end = c.pos;
        let save = c.pos;
        let mut port_span: Option<&'a [u8]> = None;
        if c.eat_sep(b':') {
            let p = c.take_while(|ch| ch.is_ascii_digit());
            if p.is_empty() {
                return Err(c.pos);
            }
            port_span = Some(p);
        } else {
            c.pos = save;
        }
        let (host, host_kind, _) =
            split_hostport(&s[host_start..host_end]).map_err(|_| host_start)?;
        let port = match port_span {
            Some(p) => {
                Some(crate::sip::scan::parse_u64(p, u16::MAX as u64).map_err(|_| host_end)? as u16)
            }
            None => None,
        };
        let (params, branch) = Params::scan_find(&mut c, b"branch")?;
        Ok((
            Via {
                protocol,
                version,
                transport,
                host,
                host_kind,
                port,
                params,
                branch: branch.flatten(),
            },
            c.pos,
        ))
    }

    /// The branch parameter.
    #[inline]
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.branch
    }

    /// True if the branch starts with the RFC 3261 magic cookie.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(MAGIC_COOKIE))
    }

    pub fn received(&self) -> Option<&'a [u8]> {
        self.params.get("received").flatten()
    }

    /// `None`: no rport; `Some(None)`: rport without value (a request asking for it);
    /// `Some(Some(p))`: filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params.get("rport").map(|v| {
            v.and_then(|p| crate::sip::scan::parse_u64(p, u16::MAX as u64).ok())
                .map(|p| p as u16)
        })
    }

    pub fn maddr(&self) -> Option<&'a [u8]> {
        self.params.get("maddr").flatten()
    }

    pub fn ttl(&self) -> Option<&'a [u8]> {
        self.params.get("ttl").flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_and_spaced() {
        let v = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"192.0.2.2");
        assert_eq!(v.branch(), Some(&b"390skdjuw"[..]));
        assert!(!v.has_rfc3261_branch());
    }

    #[test]
    fn ipv6_and_rport() {
        let v = Via::parse(b"SIP/2.0/UDP [2001:db8::9:1]:5070;rport;branch=z9hG4bKx").unwrap();
        assert_eq!(v.host, b"2001:db8::9:1");
        assert_eq!(v.host_kind, HostKind::Ipv6);
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.rport(), Some(None));
        assert!(v.has_rfc3261_branch());
        let v = Via::parse(b"SIP/2.0/UDP h ; received=2001:db8::9:255;rport=7").unwrap();
        assert_eq!(v.received(), Some(&b"2001:db8::9:255"[..]));
        assert_eq!(v.rport(), Some(Some(7)));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Via::parse(b"SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP host:99999").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP host junk").is_err());
    }
}
