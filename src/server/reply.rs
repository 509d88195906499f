//! Writing responses to the request being handled: where they go (RFC 3261 §18.2.2 with the
//! RFC 3581 `rport` rule), the Via fix-up (`received`, `rport`), the To tag, and counting.

use super::outbox::Outbox;
use crate::sip::write::{finish, response_head, ViaFixup};
use crate::sip::Message;
use std::io::Write as _;
use std::net::SocketAddr;

/// Where responses to `msg` go (§18.2.2 for unreliable transports): the source IP, and the
/// source port when the top Via asks for rport, else the sent-by port (default 5060).
pub fn response_destination(msg: &Message<'_>, src: SocketAddr) -> SocketAddr {
    let mut dst = src;
    if let Ok(via) = msg.top_via() {
        if via.rport().is_none() {
            dst.set_port(via.port.unwrap_or(5060));
        }
    }
    dst
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
        let ip_len = {
            let mut w = &mut ip_text[..];
            let _ = write!(w, "{}", src.ip());
            46 - w.len()
        };
        let (add_received, rport) = match msg.top_via() {
            Ok(v) => (
                v.rport().is_some() || v.host != &ip_text[..ip_len],
                src.port(),
            ),
            Err(_) => (false, src.port()),
        };
        *tag_seq += 1;
        let mut to_tag = [0u8; 24];
        let to_tag_len = {
            let mut w = &mut to_tag[..];
            let _ = write!(w, "s{shard:x}.{:x}", *tag_seq);
            24 - w.len()
        };
        Reply {
            msg,
            src,
            dst: response_destination(msg, src),
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
        let (buf, start) = out.begin();
        response_head(
            buf,
            self.msg,
            status,
            reason,
            Some(&self.to_tag[..self.to_tag_len as usize]),
            Some(ViaFixup {
                received: &self.ip_text[..self.ip_len as usize],
                add_received: self.add_received,
                rport: self.rport,
            }),
        );
        extra(buf);
        finish(buf, b"");
        out.commit(start, self.dst, self.socket);
        self.sent_status = Some(status);
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
