//! The Via header (RFC 3261 §20.42, §18.2.1) with the `received` and `rport` parameters of
//! RFC 3581 and IPv6 sent-by/received values of RFC 5118.

use super::params::{only_lws, Params};
use crate::sip::scan::{is_lws, is_token_char, skip_token, Cursor};
use crate::sip::uri::{parse_host, scan_host_name, split_hostport, HostKind};

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
        match Self::parse_common(s, start) {
            Some(r) => r,
            None => Self::parse_general(s, start),
        }
    }

    /// [`Via::parse_at`] for the usual shape, `SIP/2.0/<transport> <host>[:<port>]`
    /// followed by the parameters, with the host a host name or IPv4 address, scanned once.
    /// `None` for anything else (LWS inside sent-protocol or around the colon, IPv6, a bad
    /// host or port), which [`Via::parse_general`] then parses: where this returns `Some`, it
    /// is what that would return.
    #[inline]
    fn parse_common(s: &'a [u8], start: usize) -> Option<Result<(Via<'a>, usize), usize>> {
        let mut i = start;
        while s.get(i).copied().is_some_and(is_lws) {
            i += 1;
        }
        if s.get(i..i + 8)? != b"SIP/2.0/" {
            return None;
        }
        let (protocol, version) = (&s[i..i + 3], &s[i + 4..i + 7]);
        let t = i + 8;
        let mut i = skip_token(s, t);
        if i == t {
            return None;
        }
        let transport = &s[t..i];
        // LWS between sent-protocol and sent-by is mandatory.
        if !s.get(i).copied().is_some_and(is_lws) {
            return None;
        }
        while s.get(i).copied().is_some_and(is_lws) {
            i += 1;
        }
        let host_start = i;
        let (host_end, alpha, double_dot) = scan_host_name(s, host_start);
        let host = &s[host_start..host_end];
        // The general parser takes a host as token bytes up to a colon: if one follows that is
        // no host-name byte, it rejects the host. A bracket starts an IPv6 reference.
        let next = s.get(host_end).copied();
        if host.is_empty()
            || next.is_some_and(|c| c != b':' && is_token_char(c))
            || host.len() > 255
            || matches!(host[0], b'.' | b'-')
            || double_dot
        {
            return None;
        }
        // Only digits and dots (no letter or `-`) can make an IPv4 address.
        let host_kind = if !alpha {
            // Digits and dots: an IPv4 address or a numeric host name.
            parse_host(host).ok()?.1
        } else {
            HostKind::Name
        };
        let mut i = host_end;
        let mut port = None;
        if next == Some(b':') {
            let mut p = 0u32;
            let mut end = i + 1;
            // Five digits or fewer fit a u32; more (leading zeros, out of range) and an empty
            // port go the general way.
            while let Some(&d) = s.get(end) {
                if !d.is_ascii_digit() {
                    break;
                }
                if end - i > 5 {
                    return None;
                }
                p = p * 10 + (d - b'0') as u32;
                end += 1;
            }
            if end == i + 1 {
                return None;
            }
            port = Some(u16::try_from(p).ok()?);
            i = end;
        } else if next.is_some_and(is_lws) {
            // `host : port`: rare, left to the general parser.
            return None;
        }
        let mut c = Cursor { s, pos: i };
        Some(
            Params::scan_find(&mut c, b"branch").map(|(params, branch)| {
                (
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
                )
            }),
        )
    }

    /// [`Via::parse_at`] for any input: a cursor step per grammar element.
    fn parse_general(s: &'a [u8], start: usize) -> Result<(Via<'a>, usize), usize> {
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

    /// The fast path gives what the general parser gives, wherever it answers: over mutations
    /// of typical values (hosts, ports, transports, LWS, brackets and parameters).
    #[test]
    fn common_path_matches_general_parser() {
        let seeds: [&[u8]; 9] = [
            b"SIP/2.0/UDP ss2.biloxi.example.com:5060;branch=z9hG4bK721e418c4.1",
            b"SIP/2.0/TCP 192.0.2.101:65535;branch=z9hG4bK2d4790.1;received=192.0.2.101",
            b"SIP/2.0/UDP client.atlanta.example.com;branch=z9hG4bK74bf9;rport=5060, SIP/2.0/UDP x",
            b"SIP/2.0/TLS 10.0.0.1;rport;branch=z9hG4bKx",
            b"SIP/2.0/UDP 1.2.3.4.5:0;branch=1",
            b"  SIP/2.0/SCTP a-b.c:00099 ;branch = x ;lr",
            b"SIP/2.0/UDP [2001:db8::9:1]:5070;rport;branch=z9hG4bKx",
            b"SIP/2.0/UDP h.x..y:1;branch=2",
            b"SIP/2.0/UDP h:123456;x=\"a,b\"",
        ];
        let alphabet = b"SIP/2.0UDP :;=,.-[]\"\r\n\t09aZ_@";
        let mut m = crate::sip::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
        let mut fast = 0;
        for seed in seeds {
            for round in 0..20_000 {
                let v = m.mutated(seed, round % 4, alphabet);
                let start = m.next(3).min(v.len());
                if let Some(r) = Via::parse_common(&v, start) {
                    fast += 1;
                    assert_eq!(
                        r,
                        Via::parse_general(&v, start),
                        "{:?} at {start}",
                        String::from_utf8_lossy(&v)
                    );
                }
            }
        }
        // The fast path answered for most inputs (the comparison is not vacuous).
        assert!(fast > 20_000, "{fast}");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Via::parse(b"SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP host:99999").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP host junk").is_err());
    }
}
