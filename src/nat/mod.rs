//! UAs behind NAT (sans-I/O): telling that a request came through a NAT, rewriting the
//! Contact of such a request to the address it came from, and the flow token that sends
//! in-dialog requests to a NATed callee over the flow it registered on.
//!
//! - Detection ([`behind_nat`]) follows Kamailio's `nat_uac_test`: the source address differs
//!   from the top Via's sent-by (RFC 3261 §18.2.1 would add `received`), or only its port
//!   does while the Contact names that sent-by, or the Contact names a private address
//!   (RFC 1918, RFC 6598 shared space, link-local, IPv6 ULA) while the source is public. A
//!   third-party registration whose Via matches its source, or whose Contact is another
//!   address than its Via, is not NAT: it reaches its Contact.
//! - A REGISTER through a NAT stores the flag with its bindings ([`crate::registrar::Flow`]):
//!   requests for them go to the REGISTER's source, over the mapping the phone keeps open.
//! - A request from a UA behind a NAT has its Contact host and port rewritten to its source
//!   ([`write_fixed_contact`], as Kamailio's `fix_nated_contact`), so that the other side's
//!   in-dialog requests (ACK, re-INVITE, BYE) come back to an address that reaches it.
//! - Toward a NATed callee, our Record-Route carries the flow (`ft=ip:port`, RFC 5626 §5.3's
//!   flow token, here in clear): an in-dialog request that names it in its Route and does not
//!   come from that flow goes to it, whatever its Request-URI says ([`flow_token`]).
//! - Keepalives: STUN binding requests on the SIP port (RFC 5626 §4.4.2) are answered by
//!   [`stun`]; a double CRLF gets a CRLF (§4.4.1's pong).

pub mod stun;

use crate::sip::uri::HostKind;
use crate::sip::{HeaderName, Message, Proto, Uri};
use std::net::{IpAddr, SocketAddr};

/// The name of the Record-Route parameter that carries a flow token.
pub const FLOW_PARAM: &str = "ft";
/// The name of the Record-Route parameter that carries the caller's flow.
pub const CALLER_FLOW_PARAM: &str = "fc";

/// True for addresses a NAT hides: RFC 1918, RFC 6598 (carrier-grade NAT), link-local,
/// IPv6 unique-local and link-local.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

/// The top Via's sent-by as an address (port 5060 when absent); None for a host name.
fn via_sent_by(msg: &Message<'_>) -> Option<SocketAddr> {
    let via = msg.top_via().ok()?;
    let ip = crate::proxy::stateful::via_host_ip(via.host)?;
    Some(SocketAddr::new(ip, via.port.unwrap_or(5060)))
}

/// The address of the first Contact's URI when its host is an IP literal (port 5060 when
/// absent).
fn first_contact_addr(msg: &Message<'_>) -> Option<SocketAddr> {
    let contact = msg.contacts_lazy().next()?.ok()?;
    let uri = contact.uri().ok()?;
    if uri.host_kind == HostKind::Name {
        return None;
    }
    let ip = crate::proxy::stateful::parse_ip(uri.host)?;
    Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
}

/// Kamailio's `nat_uac_test` on a request:
/// - the source address differs from the top Via's sent-by (or that is a host name): NAT;
/// - only the port differs: NAT when the Contact is the Via's sent-by (the UA asks to be
///   reached where it says it sends from, and its datagrams come from elsewhere: a NAT that
///   kept the address, or a public address learned by STUN); a Contact elsewhere is a
///   third-party registration or a client that listens apart from where it sends (sipsak),
///   and is reached at its Contact;
/// - Via and source agree: NAT only when the Contact is a private address and the source is
///   not (an ALG rewrote the Via); a phone on the server's own private network is reached at
///   its Contact.
pub fn behind_nat(msg: &Message<'_>, src: SocketAddr) -> bool {
    let Some(sent_by) = via_sent_by(msg) else {
        return msg.top_via().is_ok();
    };
    if sent_by.ip() != src.ip() {
        return true;
    }
    // The Contact is parsed only when the answer depends on it.
    if sent_by.port() != src.port() {
        return first_contact_addr(msg) == Some(sent_by);
    }
    !is_private(src.ip()) && first_contact_addr(msg).is_some_and(|c| is_private(c.ip()))
}

/// The byte range of the first Contact's host and port in `msg` (brackets of an IPv6
/// literal included), if the request has a SIP Contact.
fn contact_hostport(msg: &Message<'_>) -> Option<(usize, usize)> {
    let contact = msg.contacts_lazy().next()?.ok()?;
    let uri: Uri<'_> = contact.uri().ok()?;
    if !uri.is_sip() || uri.host.is_empty() {
        return None;
    }
    let buf = msg.buf();
    let mut start = msg.offset_of(uri.host);
    let mut end = start + uri.host.len();
    if uri.host_kind == HostKind::Ipv6 {
        start -= 1;
        end += 1;
    }
    if uri.port.is_some() && buf.get(end) == Some(&b':') {
        end += 1;
        while buf.get(end).is_some_and(|c| c.is_ascii_digit()) {
            end += 1;
        }
    }
    Some((start, end))
}

/// Writes `addr` as a URI host and port (`[v6]:port` for IPv6).
pub fn push_hostport(out: &mut Vec<u8>, addr: SocketAddr) {
    use std::io::Write as _;
    let _ = match addr {
        SocketAddr::V4(a) => write!(out, "{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => write!(out, "[{}]:{}", a.ip(), a.port()),
    };
}

/// Copies `msg` (already a complete message in its buffer) with the first Contact's host and
/// port replaced by `src` (Kamailio's `fix_nated_contact`). Returns false, writing nothing,
/// when there is no SIP Contact or it already names `src`.
pub fn write_fixed_contact(out: &mut Vec<u8>, msg: &Message<'_>, src: SocketAddr) -> bool {
    let Some((start, end)) = contact_hostport(msg) else {
        return false;
    };
    let buf = msg.buf();
    let mut hostport = Vec::with_capacity(48);
    push_hostport(&mut hostport, src);
    if buf[start..end] == hostport[..] {
        return false;
    }
    out.reserve(msg.len() + hostport.len());
    out.extend_from_slice(&buf[msg.start_offset()..start]);
    out.extend_from_slice(&hostport);
    out.extend_from_slice(&buf[end..msg.len()]);
    true
}

/// True for requests whose Contact sets the remote target of a dialog (RFC 3261 §12.1,
/// §12.2: dialog-creating and target-refresh requests); their Contact is fixed for NAT.
pub fn contact_matters(msg: &Message<'_>) -> bool {
    use crate::sip::Method;
    matches!(
        msg.method(),
        Some(Method::Invite | Method::Subscribe | Method::Refer | Method::Update | Method::Notify)
    ) && msg.header(HeaderName::Contact).is_some()
}

/// The flow named by the `ft` parameter of a Route URI this server wrote: the callee's
/// (`ip:port`, or `tcp:ip:port` for a connection, [`crate::sip::proto::write_flow`]).
pub fn flow_token(route_uri: &Uri<'_>) -> Option<(Proto, SocketAddr)> {
    crate::sip::proto::parse_flow(route_uri.param(FLOW_PARAM).flatten()?)
}

/// The flow named by the `fc` parameter: the caller's connection (a caller that reached us
/// over a stream is reached over it for in-dialog requests from the callee).
pub fn caller_flow_token(route_uri: &Uri<'_>) -> Option<(Proto, SocketAddr)> {
    crate::sip::proto::parse_flow(route_uri.param(CALLER_FLOW_PARAM).flatten()?)
}

#[cfg(test)]
mod tests;
