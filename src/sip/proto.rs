//! The transport protocols SIP names (RFC 3261 §18, §20.42 Via sent-protocol, §19.1.1 the
//! `transport` URI parameter; RFC 7118 for WebSocket) and the local sockets the core sends
//! from: the core refers to a socket by its index and learns here what it speaks.

use std::net::SocketAddr;

/// A SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Proto {
    #[default]
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Proto {
    /// The token of a Via sent-protocol (`SIP/2.0/<token>`).
    pub fn via_token(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
            Proto::Tls => "TLS",
            Proto::Ws => "WS",
            Proto::Wss => "WSS",
        }
    }

    /// The value of a URI `transport` parameter naming it (lower case).
    pub fn uri_param(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Tls => "tls",
            Proto::Ws => "ws",
            Proto::Wss => "wss",
        }
    }

    /// The scheme of `--listen` (`udp:`, `tcp:`, ...): the same words.
    pub fn scheme(self) -> &'static str {
        self.uri_param()
    }

    /// Parses a Via token or a URI transport value, any case.
    pub fn parse(s: &[u8]) -> Option<Proto> {
        const ALL: [Proto; 5] = [Proto::Udp, Proto::Tcp, Proto::Tls, Proto::Ws, Proto::Wss];
        ALL.into_iter()
            .find(|p| p.uri_param().as_bytes().eq_ignore_ascii_case(s))
    }

    /// A connection-oriented transport (§18: Content-Length framing, no retransmissions
    /// of requests and responses by the transaction layer, responses over the connection
    /// the request came on).
    pub fn is_stream(self) -> bool {
        self != Proto::Udp
    }

    /// Encrypted (a `sips:` hop may take it).
    pub fn is_secure(self) -> bool {
        matches!(self, Proto::Tls | Proto::Wss)
    }
}

/// Set on a socket index in the outbox: the shell may open a connection to the destination
/// when it has none (a Contact or Route URI asked for TCP). Without it (a response, a flow)
/// a message for a connection that is gone is dropped: the peer's port is the far end of a
/// connection it made, nobody listens there.
pub const CONNECT: u16 = 0x8000;

/// The socket index without [`CONNECT`].
#[inline]
pub fn socket_index(socket: u16) -> u16 {
    socket & !CONNECT
}

/// One local socket the core sends from (a listen address and what it speaks). The core
/// names sockets by their index in the list the shell gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub addr: SocketAddr,
    pub proto: Proto,
}

impl From<SocketAddr> for Local {
    fn from(addr: SocketAddr) -> Local {
        Local {
            addr,
            proto: Proto::Udp,
        }
    }
}

/// Flow tokens (RFC 5626 §5.3, here in clear): `ip:port` for a UDP flow, `tcp:ip:port` (the
/// transport's name first) for a connection.
pub fn write_flow(out: &mut Vec<u8>, proto: Proto, addr: SocketAddr) {
    use std::io::Write as _;
    if proto != Proto::Udp {
        out.extend_from_slice(proto.uri_param().as_bytes());
        out.push(b':');
    }
    let _ = match addr {
        SocketAddr::V4(a) => write!(out, "{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => write!(out, "[{}]:{}", a.ip(), a.port()),
    };
}

/// Parses what [`write_flow`] wrote.
pub fn parse_flow(value: &[u8]) -> Option<(Proto, SocketAddr)> {
    let text = std::str::from_utf8(value).ok()?;
    if let Ok(addr) = text.parse() {
        return Some((Proto::Udp, addr));
    }
    let (proto, rest) = text.split_once(':')?;
    let proto = Proto::parse(proto.as_bytes()).filter(|p| *p != Proto::Udp)?;
    Some((proto, rest.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_in_any_case() {
        for p in [Proto::Udp, Proto::Tcp, Proto::Tls, Proto::Ws, Proto::Wss] {
            assert_eq!(Proto::parse(p.via_token().as_bytes()), Some(p));
            assert_eq!(Proto::parse(p.uri_param().as_bytes()), Some(p));
        }
        assert_eq!(Proto::parse(b"sctp"), None);
        assert!(Proto::Tcp.is_stream() && !Proto::Udp.is_stream());
        assert!(Proto::Wss.is_secure() && !Proto::Ws.is_secure());
    }

    #[test]
    fn flow_tokens_round_trip_with_their_transport() {
        for (proto, addr) in [
            (Proto::Udp, "192.0.2.1:5060"),
            (Proto::Tcp, "192.0.2.1:40123"),
            (Proto::Tls, "[2001:db8::1]:5061"),
        ] {
            let addr = addr.parse().unwrap();
            let mut v = Vec::new();
            write_flow(&mut v, proto, addr);
            assert_eq!(
                parse_flow(&v),
                Some((proto, addr)),
                "{}",
                String::from_utf8_lossy(&v)
            );
        }
        assert_eq!(
            parse_flow(b"192.0.2.1:5060"),
            Some((Proto::Udp, "192.0.2.1:5060".parse().unwrap()))
        );
        assert_eq!(parse_flow(b"udp:192.0.2.1:5060"), None);
        assert_eq!(parse_flow(b"tcp:nonsense"), None);
    }
}
