//! Connection reuse (RFC 5923): a peer proxy that opened a TLS connection to us and puts the
//! `alias` parameter in its Via asks us to send our requests for it down that connection too,
//! instead of opening one of our own.
//!
//! RFC 5923 §5 predicates the reuse on both ends being authenticated by certificate: the
//! alias is honoured only on a TLS connection whose client presented a certificate the server
//! verified (`--tls-client-ca`), and only for a sent-by host that certificate names (a DNS
//! name or an IP address in its subjectAltName, RFC 5922 §7.1). Plain TCP and WebSocket
//! connections get no alias (§4: TLS only). The alias is the sent-by's address: its IP address
//! when it is one, else the address the connection comes from (the name resolves there; we do
//! not resolve names), with the sent-by port (5061 by default).

use crate::sip::message::Message;
use crate::sip::uri::HostKind;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::{IpAddr, SocketAddr};

/// The default port of SIP over TLS (RFC 3261 §19.1.2).
const TLS_PORT: u16 = 5061;

/// The address `msg` (received over a TLS connection from `peer` whose client presented
/// `certs`, none when it presented none) asks us to reach over this connection, if it asks
/// for an alias and may have one.
pub fn requested_alias(
    msg: &[u8],
    certs: Option<&[CertificateDer<'_>]>,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    // Cheap first: no client certificate, or no `alias` anywhere (parameter names are
    // case-insensitive).
    let certs = certs?;
    if !msg.windows(5).any(|w| w.eq_ignore_ascii_case(b"alias")) {
        return None;
    }
    let m = Message::parse(msg).ok()?;
    if !m.is_request() {
        return None;
    }
    let via = m.top_via().ok()?;
    via.params.get("alias")?;
    if !via.transport.eq_ignore_ascii_case(b"TLS") {
        return None;
    }
    let host = std::str::from_utf8(via.host).ok()?;
    let ip = match via.host_kind {
        HostKind::Ipv4 | HostKind::Ipv6 => host.parse::<IpAddr>().ok()?,
        HostKind::Name => peer.ip(),
        HostKind::None => return None,
    };
    let name = ServerName::try_from(host).ok()?;
    let cert = rustls::server::ParsedCertificate::try_from(certs.first()?).ok()?;
    rustls::client::verify_server_name(&cert, &name).ok()?;
    Some(SocketAddr::new(ip, via.port.unwrap_or(TLS_PORT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn request(via: &str) -> Vec<u8> {
        format!(
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:peer@example>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: a1\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    const PEER: &str = "192.0.2.7:40123";

    #[test]
    fn a_name_the_certificate_holds_aliases_the_connection_address_and_the_via_port() {
        let c = [cert(&["proxy.example"])];
        let msg = request("SIP/2.0/TLS proxy.example:5071;branch=z9hG4bKa;alias");
        assert_eq!(
            requested_alias(&msg, Some(&c), PEER.parse().unwrap()),
            Some("192.0.2.7:5071".parse().unwrap())
        );
        // No port: the TLS default.
        let msg = request("SIP/2.0/TLS proxy.example;ALIAS;branch=z9hG4bKa");
        assert_eq!(
            requested_alias(&msg, Some(&c), PEER.parse().unwrap()),
            Some("192.0.2.7:5061".parse().unwrap())
        );
    }

    #[test]
    fn an_ip_address_the_certificate_holds_is_the_alias() {
        let c = [cert(&["198.51.100.9"])];
        let msg = request("SIP/2.0/TLS 198.51.100.9:5062;branch=z9hG4bKa;alias");
        assert_eq!(
            requested_alias(&msg, Some(&c), PEER.parse().unwrap()),
            Some("198.51.100.9:5062".parse().unwrap())
        );
    }

    #[test]
    fn no_alias_without_the_parameter_a_matching_certificate_or_tls() {
        let peer: SocketAddr = PEER.parse().unwrap();
        let c = [cert(&["proxy.example"])];
        // Not asked.
        let msg = request("SIP/2.0/TLS proxy.example:5071;branch=z9hG4bKa");
        assert_eq!(requested_alias(&msg, Some(&c), peer), None);
        // A sent-by the certificate does not name.
        let msg = request("SIP/2.0/TLS other.example:5071;branch=z9hG4bKa;alias");
        assert_eq!(requested_alias(&msg, Some(&c), peer), None);
        let msg = request("SIP/2.0/TLS 192.0.2.7:5071;branch=z9hG4bKa;alias");
        assert_eq!(requested_alias(&msg, Some(&c), peer), None);
        // No client certificate.
        let msg = request("SIP/2.0/TLS proxy.example:5071;branch=z9hG4bKa;alias");
        assert_eq!(requested_alias(&msg, None, peer), None);
        // Not TLS in the Via.
        let msg = request("SIP/2.0/TCP proxy.example:5071;branch=z9hG4bKa;alias");
        assert_eq!(requested_alias(&msg, Some(&c), peer), None);
        // A response.
        let resp =
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS proxy.example:5071;branch=z9hG4bKa;alias\r\n\
            From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\
            Content-Length: 0\r\n\r\n";
        assert_eq!(requested_alias(resp, Some(&c), peer), None);
        // `alias` elsewhere than the top Via's parameters.
        let msg = request("SIP/2.0/TLS proxy.example:5071;branch=z9hG4bKalias");
        assert_eq!(requested_alias(&msg, Some(&c), peer), None);
    }
}
