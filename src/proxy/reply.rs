//! Writing responses to the request being handled: where they go (RFC 3261 §18.2.2 with the
//! RFC 3581 `rport` rule), the Via fix-up (`received`, `rport`), the To tag, and counting.

use crate::server::outbox::Outbox;
use crate::sip::write::{finish, response_head, ViaFixup};
use crate::sip::Message;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Where responses to `msg` go (§18.2.2): the source IP, and the source port when the top Via
/// asks for rport or names a connection-oriented transport, else the sent-by port (default
/// 5060).
pub fn response_destination(msg: &Message<'_>, src: SocketAddr) -> SocketAddr {
    let mut dst = src;
    if let Ok(via) = msg.top_via() {
        if via.rport().is_none() && via.transport.eq_ignore_ascii_case(b"UDP") {
            dst.set_port(via.port.unwrap_or(5060));
        }
    }
    dst
}

/// Writes an IP address as text into `buf` (46 bytes hold any IPv6 text); returns the length.
/// IPv4, the common case, avoids the formatting machinery.
fn write_ip(buf: &mut [u8; 46], ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            let mut n = itoa::Buffer::new();
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let d = n.format(*o).as_bytes();
                buf[len..len + d.len()].copy_from_slice(d);
                len += d.len();
            }
            len
        }
        IpAddr::V6(v6) => {
            let mut w = &mut buf[..];
            let _ = write!(w, "{v6}");
            46 - w.len()
        }
    }
}

/// Responds to one request.
pub struct Reply<'m, 'a> {
    msg: &'m Message<'a>,
    src: SocketAddr,
    dst: SocketAddr,
    socket: usize,
    /// Status of the response sent, for the shard's counters.
    pub sent_status: Option<u16>,
    /// The source IP as text (for `received`).
    ip_text: [u8; 46],
    ip_len: u8,
    add_received: bool,
    rport: u16,
    to_tag: [u8; 24],
    to_tag_len: u8,
}

impl<'m, 'a> Reply<'m, 'a> {
    pub fn new(
        msg: &'m Message<'a>,
        src: SocketAddr,
        socket: usize,
        tag_seq: &mut u64,
        shard: usize,
    ) -> Self {
        let mut ip_text = [0u8; 46];
        let ip_len = write_ip(&mut ip_text, src.ip());
        // One parse of the top Via serves the fix-up and the destination (§18.2.2).
        let mut dst = src;
        let add_received = match msg.top_via() {
            Ok(v) => {
                let rport = v.rport();
                // §18.2.2: over a connection the response goes back on it (to the source);
                // over UDP without rport, to the sent-by port.
                if rport.is_none() && v.transport.eq_ignore_ascii_case(b"UDP") {
                    dst.set_port(v.port.unwrap_or(5060));
                }
                rport.is_some() || v.host != &ip_text[..ip_len]
            }
            Err(_) => false,
        };
        let rport = src.port();
        *tag_seq += 1;
        let mut to_tag = [0u8; 24];
        let to_tag_len = {
            let mut n = itoa::Buffer::new();
            let mut len = 0;
            for part in [&b"s"[..], n.format(shard).as_bytes()] {
                to_tag[len..len + part.len()].copy_from_slice(part);
                len += part.len();
            }
            to_tag[len] = b'.';
            len += 1;
            let seq = n.format(*tag_seq).as_bytes();
            to_tag[len..len + seq.len()].copy_from_slice(seq);
            len + seq.len()
        };
        Reply {
            msg,
            src,
            dst,
            socket,
            sent_status: None,
            ip_text,
            ip_len: ip_len as u8,
            add_received,
            rport,
            to_tag,
            to_tag_len: to_tag_len as u8,
        }
    }

    /// The To tag this reply adds.
    pub fn to_tag(&self) -> &[u8] {
        &self.to_tag[..self.to_tag_len as usize]
    }

    /// The Via fix-up for the response's top Via.
    pub fn via_fixup(&self) -> ViaFixup<'_> {
        ViaFixup {
            received: &self.ip_text[..self.ip_len as usize],
            add_received: self.add_received,
            rport: self.rport,
        }
    }

    /// Where the request came from.
    pub fn source(&self) -> SocketAddr {
        self.src
    }

    pub fn destination(&self) -> SocketAddr {
        self.dst
    }

    /// The request came over a connection: responses go back on it, to its source (§18.2.2),
    /// whatever its Via says.
    pub fn over_stream(&mut self) {
        self.dst = self.src;
    }

    pub fn socket(&self) -> usize {
        self.socket
    }

    /// A response with extra headers written by `extra`, no body.
    pub fn with(
        &mut self,
        out: &mut Outbox,
        status: u16,
        reason: &[u8],
        extra: impl FnOnce(&mut Vec<u8>),
    ) {
        self.with_body(out, status, reason, extra, b"")
    }

    /// Replaces the To tag this reply adds (at most 24 bytes; longer is cut): a UAS that must
    /// give a retransmitted request the same tag derives it from the request.
    pub fn set_to_tag(&mut self, tag: &[u8]) {
        let n = tag.len().min(self.to_tag.len());
        self.to_tag[..n].copy_from_slice(&tag[..n]);
        self.to_tag_len = n as u8;
    }

    /// A response with extra headers written by `extra` and a body (Content-Type is one of
    /// the extra headers).
    pub fn with_body(
        &mut self,
        out: &mut Outbox,
        status: u16,
        reason: &[u8],
        extra: impl FnOnce(&mut Vec<u8>),
        body: &[u8],
    ) {
        let (buf, start) = out.begin();
        response_head(
            buf,
            self.msg,
            status,
            reason,
            Some(&self.to_tag[..self.to_tag_len as usize]),
            Some(self.via_fixup()),
        );
        extra(buf);
        finish(buf, body);
        out.commit(start, self.dst, self.socket);
        self.sent_status = Some(status);
    }

    /// 503 with `Retry-After: retry_after_s`: refused because the server is past its
    /// capacity (RFC 3261 §21.5.4).
    pub fn overloaded(&mut self, out: &mut Outbox, retry_after_s: u32) {
        let mut n = itoa::Buffer::new();
        let retry = n.format(retry_after_s).as_bytes();
        self.with(out, 503, b"Service Unavailable (overloaded)", |o| {
            crate::sip::write::header(o, "Retry-After", retry)
        });
    }

    /// A response with no extra headers.
    pub fn simple(&mut self, out: &mut Outbox, status: u16, reason: &[u8]) {
        self.with(out, status, reason, |_| {})
    }

    /// Sends bytes someone else wrote as a complete response (e.g. the registrar's).
    pub fn sent(&mut self, status: u16) {
        self.sent_status = Some(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text() {
        let mut b = [0u8; 46];
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            let n = write_ip(&mut b, ip.parse().unwrap());
            assert_eq!(std::str::from_utf8(&b[..n]).unwrap(), ip);
        }
    }
}
