//! SIP over WebSocket, server side (RFC 7118 on RFC 6455), sans-I/O: the opening handshake
//! (an HTTP/1.1 upgrade that must offer the `sip` subprotocol), then frames: text and binary
//! messages (each one SIP message, RFC 7118 §5; fragmented ones reassembled), ping answered
//! with pong, and the close handshake. The connection code (`tcp.rs`) feeds the bytes a
//! connection received (after TLS for `wss:`) and writes what this returns.
//!
//! tungstenite parses and formats the frame headers and derives the accept key; the payload
//! stays where it was read: a client's frame is unmasked in place and handed to the core as a
//! slice of the read buffer, so an unfragmented message is not copied.

use memchr::memmem;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The largest opening handshake accepted (request line and headers).
const MAX_HANDSHAKE: usize = 8 * 1024;

/// Close codes (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// One connection's WebSocket state.
#[derive(Debug, Default)]
pub struct WsSession {
    /// The handshake completed: frames follow.
    open: bool,
    /// A close frame was received, or the connection failed: nothing more is read.
    closed: bool,
    /// Our close frame went out (or the upgrade was refused): nothing more is sent.
    close_sent: bool,
    /// The peer's close is answered once the responses to what came before it are sent
    /// (RFC 6455 §5.5.1): the code to echo (None: a close without one).
    echo: Option<Option<u16>>,
    /// The fragments of a message in progress, unmasked (text: true).
    message: Vec<u8>,
    in_message: Option<bool>,
}

/// What the next bytes of a connection gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsItem {
    /// The upgrade was accepted; the 101 response is in `reply`.
    Upgraded,
    /// A complete message at `start..start + len` of the buffer given (unmasked in place).
    Message { start: usize, len: usize },
    /// A complete message reassembled from fragments: [`WsSession::message`].
    Reassembled,
    /// A control frame or a fragment; anything to answer (pong) is in `reply`.
    Control,
    /// The peer closed: send what answers the messages before it, then
    /// [`WsSession::close_echo`], then close the connection.
    Closed,
    /// More bytes are needed.
    Incomplete,
}

/// Why a connection fails; what to write before closing it is in `reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// The upgrade request was refused with an HTTP error response (the reason says why).
    Refused(&'static str),
    /// The peer broke RFC 6455: a close frame with this code was written.
    Failed(u16, &'static str),
}

impl WsSession {
    /// True once the handshake completed and until our close frame is sent (messages may be
    /// sent).
    pub fn is_open(&self) -> bool {
        self.open && !self.close_sent
    }

    /// True while bytes are awaited to complete something: the handshake, or a fragmented
    /// message (its timeout runs).
    pub fn mid_message(&self) -> bool {
        !self.open || self.in_message.is_some()
    }

    /// The message a [`WsItem::Reassembled`] reported (until the next call of `next`).
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// Appends the answer to the peer's close frame (once), after which nothing is sent.
    pub fn close_echo(&mut self, out: &mut Vec<u8>) {
        if let Some(code) = self.echo.take() {
            let echo = code.map(u16::to_be_bytes);
            frame_into(
                out,
                OpCode::Control(Control::Close),
                echo.as_ref().map_or(&[][..], |e| &e[..]),
            );
            self.close_sent = true;
        }
    }

    /// Appends a close frame of our own (the server ends the connection: `code` 1001 going
    /// away), unless one was sent already.
    pub fn close(&mut self, out: &mut Vec<u8>, code: u16) {
        if self.open && !self.close_sent {
            frame_into(out, OpCode::Control(Control::Close), &code.to_be_bytes());
            self.close_sent = true;
        }
    }

    /// Decodes the next item at the start of `buf`: how many bytes it used and what it was.
    /// Frames are unmasked in place. Messages larger than `max` fail the connection (1009).
    pub fn next(
        &mut self,
        buf: &mut [u8],
        max: usize,
        reply: &mut Vec<u8>,
    ) -> Result<(usize, WsItem), WsError> {
        if self.closed {
            // After a close frame nothing more is read (RFC 6455 §5.5.1).
            return Ok((buf.len(), WsItem::Incomplete));
        }
        if !self.open {
            return self.handshake(buf, reply);
        }
        if self.in_message.is_none() && !self.message.is_empty() {
            // The last reassembled message was handed over.
            self.message.clear();
            if self.message.capacity() > 16 * 1024 {
                self.message = Vec::new();
            }
        }
        let mut cursor = std::io::Cursor::new(&buf[..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok((0, WsItem::Incomplete)),
            Err(_) => return Err(self.fail(reply, CLOSE_PROTOCOL, "reserved opcode")),
        };
        let head = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(self.fail(reply, CLOSE_PROTOCOL, "reserved bit set"));
        }
        let Some(mask) = header.mask else {
            return Err(self.fail(reply, CLOSE_PROTOCOL, "unmasked client frame"));
        };
        let control = matches!(header.opcode, OpCode::Control(_));
        if control && (len > 125 || !header.is_final) {
            return Err(self.fail(
                reply,
                CLOSE_PROTOCOL,
                "control frame too long or fragmented",
            ));
        }
        let so_far = if self.in_message.is_some() {
            self.message.len() as u64
        } else {
            0
        };
        if len > max as u64 || (!control && so_far + len > max as u64) {
            return Err(self.fail(reply, CLOSE_TOO_BIG, "message too large"));
        }
        let len = len as usize;
        if buf.len() - head < len {
            return Ok((0, WsItem::Incomplete));
        }
        let used = head + len;
        let payload = &mut buf[head..used];
        unmask(payload, mask);
        let item = match header.opcode {
            OpCode::Data(Data::Text | Data::Binary) if self.in_message.is_some() => {
                return Err(self.fail(reply, CLOSE_PROTOCOL, "new message inside a fragmented one"))
            }
            OpCode::Data(d @ (Data::Text | Data::Binary)) => {
                let text = d == Data::Text;
                if header.is_final {
                    if text && std::str::from_utf8(payload).is_err() {
                        return Err(self.fail(reply, CLOSE_INVALID_DATA, "text not UTF-8"));
                    }
                    WsItem::Message { start: head, len }
                } else {
                    self.message.clear();
                    self.message.extend_from_slice(payload);
                    self.in_message = Some(text);
                    WsItem::Control
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some(text) = self.in_message else {
                    return Err(self.fail(reply, CLOSE_PROTOCOL, "continuation without a message"));
                };
                self.message.extend_from_slice(payload);
                if !header.is_final {
                    WsItem::Control
                } else {
                    self.in_message = None;
                    if text && std::str::from_utf8(&self.message).is_err() {
                        return Err(self.fail(reply, CLOSE_INVALID_DATA, "text not UTF-8"));
                    }
                    WsItem::Reassembled
                }
            }
            OpCode::Control(Control::Ping) => {
                frame_into(reply, OpCode::Control(Control::Pong), payload);
                WsItem::Control
            }
            OpCode::Control(Control::Pong) => WsItem::Control,
            OpCode::Control(Control::Close) => {
                // Echo the status code (RFC 6455 §5.5.1); none given: none sent back. Codes
                // an endpoint may not send, and a reason that is not UTF-8, fail (§7.4, §8.1).
                let code = match &payload[..] {
                    [] => None,
                    [a, b, reason @ ..] => {
                        let code = u16::from_be_bytes([*a, *b]);
                        if !matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999) {
                            return Err(self.fail(reply, CLOSE_PROTOCOL, "close code not allowed"));
                        }
                        if std::str::from_utf8(reason).is_err() {
                            return Err(self.fail(
                                reply,
                                CLOSE_INVALID_DATA,
                                "close reason not UTF-8",
                            ));
                        }
                        Some(code)
                    }
                    [_] => return Err(self.fail(reply, CLOSE_PROTOCOL, "one-byte close payload")),
                };
                self.echo = Some(code);
                self.closed = true;
                WsItem::Closed
            }
            // Reserved opcodes are refused by the header parser.
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err(self.fail(reply, CLOSE_PROTOCOL, "reserved opcode"))
            }
        };
        Ok((used, item))
    }

    /// Writes a close frame with `code` and fails the connection.
    fn fail(&mut self, reply: &mut Vec<u8>, code: u16, why: &'static str) -> WsError {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(why.as_bytes());
        frame_into(reply, OpCode::Control(Control::Close), &payload);
        self.closed = true;
        self.close_sent = true;
        WsError::Failed(code, why)
    }

    /// Refuses the upgrade with an HTTP error saying why; the connection then closes.
    fn refuse(
        &mut self,
        reply: &mut Vec<u8>,
        status: u16,
        phrase: &str,
        why: &'static str,
    ) -> WsError {
        self.closed = true;
        self.close_sent = true;
        refuse(reply, status, phrase, why)
    }

    /// The opening handshake (RFC 6455 §4.2, RFC 7118 §4.1).
    fn handshake(&mut self, buf: &[u8], reply: &mut Vec<u8>) -> Result<(usize, WsItem), WsError> {
        let Some(end) = memmem::find(&buf[..buf.len().min(MAX_HANDSHAKE)], b"\r\n\r\n") else {
            if buf.len() >= MAX_HANDSHAKE {
                return Err(self.refuse(
                    reply,
                    431,
                    "Request Header Fields Too Large",
                    "handshake too large",
                ));
            }
            return Ok((0, WsItem::Incomplete));
        };
        let used = end + 4;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..used]) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(self.refuse(reply, 400, "Bad Request", "malformed HTTP request")),
        }
        if req.version != Some(1) {
            return Err(self.refuse(reply, 400, "Bad Request", "HTTP/1.1 required"));
        }
        if req.method != Some("GET") {
            return Err(self.refuse(reply, 405, "Method Not Allowed", "only GET upgrades"));
        }
        let headers: &[httparse::Header<'_>] = req.headers;
        let header = |name: &'static str| header_values(headers, name);
        let has_token = |name: &'static str, token: &str| {
            header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        if header("Host").next().is_none() {
            return Err(self.refuse(reply, 400, "Bad Request", "Host missing"));
        }
        if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
            return Err(self.refuse(
                reply,
                426,
                "Upgrade Required",
                "this is a SIP WebSocket server (RFC 7118): Upgrade: websocket required",
            ));
        }
        if !header("Sec-WebSocket-Version").any(|v| v.trim() == "13") {
            return Err(self.refuse(
                reply,
                426,
                "Upgrade Required",
                "Sec-WebSocket-Version 13 required",
            ));
        }
        let Some(key) = header("Sec-WebSocket-Key").next().map(str::trim) else {
            return Err(self.refuse(reply, 400, "Bad Request", "Sec-WebSocket-Key missing"));
        };
        // The key is 16 bytes in base64 (RFC 6455 §4.1): 22 characters and "==".
        let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
        let k = key.as_bytes();
        if k.len() != 24 || !k[..22].iter().all(|&c| b64(c)) || &k[22..] != b"==" {
            return Err(self.refuse(
                reply,
                400,
                "Bad Request",
                "Sec-WebSocket-Key is not 16 bytes in base64",
            ));
        }
        // The subprotocol is case sensitive (RFC 6455 §4.1, RFC 7118 §4.1: "sip").
        if !header("Sec-WebSocket-Protocol").any(|v| v.split(',').any(|t| t.trim() == "sip")) {
            return Err(self.refuse(
                reply,
                400,
                "Bad Request",
                "Sec-WebSocket-Protocol sip required",
            ));
        }
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        reply.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Protocol: sip\r\nSec-WebSocket-Accept: ",
        );
        reply.extend_from_slice(accept.as_bytes());
        reply.extend_from_slice(b"\r\n\r\n");
        self.open = true;
        Ok((used, WsItem::Upgraded))
    }
}

/// The values of the headers called `name` (any case) that are text.
fn header_values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

/// An HTTP error response to an upgrade request, naming what is wrong.
fn refuse(reply: &mut Vec<u8>, status: u16, phrase: &str, why: &'static str) -> WsError {
    let body = format!("{why}\n");
    let version = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    reply.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {phrase}\r\n{version}Content-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    WsError::Refused(why)
}

/// XORs a client frame's payload with its mask (RFC 6455 §5.3), eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends an unmasked (server) frame with `payload` to `out`.
fn frame_into(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Appends a SIP message as one server frame: text when it is UTF-8 (every SIP message
/// without a binary body), else binary (RFC 7118 §5).
pub fn message_frame(out: &mut Vec<u8>, message: &[u8]) {
    let data = if std::str::from_utf8(message).is_ok() {
        Data::Text
    } else {
        Data::Binary
    };
    frame_into(out, OpCode::Data(data), message);
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Protocol: sip\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn open() -> WsSession {
        let mut s = WsSession::default();
        let mut buf = UPGRADE.as_bytes().to_vec();
        let mut reply = Vec::new();
        assert_eq!(
            s.next(&mut buf, 65_535, &mut reply).unwrap(),
            (UPGRADE.len(), WsItem::Upgraded)
        );
        s
    }

    /// A client (masked) frame.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65_536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn the_handshake_answers_101_with_the_rfc_6455_accept_key_and_sip() {
        let mut s = WsSession::default();
        let mut reply = Vec::new();
        let mut buf = UPGRADE.as_bytes().to_vec();
        // Every split of the request is incomplete until the blank line arrives.
        for cut in 0..buf.len() {
            let mut part = buf[..cut].to_vec();
            assert_eq!(
                s.next(&mut part, 65_535, &mut reply),
                Ok((0, WsItem::Incomplete))
            );
        }
        assert!(reply.is_empty());
        s.next(&mut buf, 65_535, &mut reply).unwrap();
        let text = String::from_utf8(reply).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        // The example of RFC 6455 §1.3.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: sip\r\n"));
        assert!(s.is_open());
    }

    #[test]
    fn a_handshake_without_the_sip_subprotocol_or_upgrade_is_refused_saying_why() {
        for (request, status, why) in [
            (
                UPGRADE.replace("Sec-WebSocket-Protocol: sip\r\n", ""),
                400,
                "Sec-WebSocket-Protocol sip required",
            ),
            (
                UPGRADE.replace("sip\r\n", "SIP\r\n"),
                400,
                "Sec-WebSocket-Protocol sip required",
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                426,
                "this is a SIP WebSocket server",
            ),
            (
                UPGRADE.replace("Version: 13", "Version: 8"),
                426,
                "Sec-WebSocket-Version 13",
            ),
            (UPGRADE.replace("GET", "POST"), 405, "only GET"),
            (
                UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
                400,
                "16 bytes",
            ),
            (
                UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j!Q=="),
                400,
                "16 bytes",
            ),
            (
                UPGRADE.replace("HTTP/1.1", "HTTP/1.0"),
                400,
                "HTTP/1.1 required",
            ),
            (
                UPGRADE.replace("Host: example.com\r\n", ""),
                400,
                "Host missing",
            ),
        ] {
            let mut s = WsSession::default();
            let mut reply = Vec::new();
            let mut buf = request.into_bytes();
            let Err(WsError::Refused(reason)) = s.next(&mut buf, 65_535, &mut reply) else {
                panic!("accepted");
            };
            let text = String::from_utf8(reply).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
            assert!(text.contains(why) && reason.contains(why), "{text}");
        }
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HANDSHAKE + 10, b'a');
        let mut reply = Vec::new();
        let r = WsSession::default().next(&mut huge, 65_535, &mut reply);
        assert_eq!(r, Err(WsError::Refused("handshake too large")));
        assert!(reply.starts_with(b"HTTP/1.1 431 "));
    }

    #[test]
    fn masked_messages_come_out_unmasked_in_place_text_binary_and_every_length_format() {
        let mut s = open();
        for (opcode, len) in [
            (0x1, 0),
            (0x1, 125),
            (0x2, 126),
            (0x1, 65_535),
            (0x2, 65_536),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut buf = client_frame(opcode, true, &payload);
            let mut reply = Vec::new();
            // Incomplete at every shorter length (checked at a few cuts for the large ones).
            for cut in [1, 2, 5, buf.len() - 1] {
                let mut part = buf[..cut.min(buf.len() - 1)].to_vec();
                assert_eq!(
                    s.next(&mut part, 100_000, &mut reply),
                    Ok((0, WsItem::Incomplete))
                );
            }
            let total = buf.len();
            let (used, item) = s.next(&mut buf, 100_000, &mut reply).unwrap();
            let WsItem::Message { start, len: n } = item else {
                panic!("{item:?}");
            };
            assert_eq!(used, total);
            assert_eq!(&buf[start..start + n], &payload[..]);
        }
    }

    #[test]
    fn fragments_are_reassembled_and_pings_between_them_answered() {
        let mut s = open();
        let mut buf = client_frame(0x1, false, b"OPTIONS sip:a SIP/2.0\r\n");
        buf.extend(client_frame(0x9, true, b"hi"));
        buf.extend(client_frame(0x0, false, b"Via: x\r\n"));
        buf.extend(client_frame(0x0, true, b"\r\n"));
        let mut reply = Vec::new();
        let mut at = 0;
        let mut items = Vec::new();
        let mut message = Vec::new();
        loop {
            let (used, item) = s.next(&mut buf[at..], 65_535, &mut reply).unwrap();
            if item == WsItem::Incomplete {
                break;
            }
            if item == WsItem::Reassembled {
                // Valid until the next call.
                message = s.message().to_vec();
            }
            at += used;
            items.push(item);
        }
        assert_eq!(
            items,
            [
                WsItem::Control,
                WsItem::Control,
                WsItem::Control,
                WsItem::Reassembled
            ]
        );
        assert_eq!(message, b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n");
        // The pong carries the ping's payload, unmasked (a server frame).
        assert_eq!(reply, [0x8a, 2, b'h', b'i']);
    }

    #[test]
    fn close_is_echoed_and_ends_reading() {
        let mut s = open();
        let mut buf = client_frame(0x8, true, &1001u16.to_be_bytes());
        buf.extend(client_frame(0x1, true, b"ignored"));
        let mut reply = Vec::new();
        let (used, item) = s.next(&mut buf, 65_535, &mut reply).unwrap();
        assert_eq!(item, WsItem::Closed);
        // The echo waits until the responses to earlier messages are sent (§5.5.1).
        assert!(reply.is_empty());
        assert!(s.is_open(), "responses may still go out");
        s.close_echo(&mut reply);
        assert_eq!(reply, [0x88, 2, 0x03, 0xe9]);
        assert!(!s.is_open());
        s.close_echo(&mut reply);
        assert_eq!(reply.len(), 4, "echoed once");
        let rest_len = buf.len() - used;
        assert_eq!(
            s.next(&mut buf[used..], 65_535, &mut reply),
            Ok((rest_len, WsItem::Incomplete))
        );
    }

    #[test]
    fn protocol_errors_fail_the_connection_with_the_rfc_6455_code() {
        let unmasked = {
            let mut f = client_frame(0x1, true, b"abc");
            f[1] &= 0x7f;
            f.drain(2..6);
            // Unmasking was skipped, so the payload is still masked: only the header matters.
            f
        };
        let mut rsv = client_frame(0x1, true, b"abc");
        rsv[0] |= 0x40;
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, CLOSE_PROTOCOL),
            (rsv, CLOSE_PROTOCOL),
            (client_frame(0x3, true, b"x"), CLOSE_PROTOCOL),
            (client_frame(0x0, true, b"x"), CLOSE_PROTOCOL),
            (client_frame(0x9, false, b"x"), CLOSE_PROTOCOL),
            (client_frame(0x9, true, &[0; 126]), CLOSE_PROTOCOL),
            (client_frame(0x1, true, &[0xff, 0xfe]), CLOSE_INVALID_DATA),
            (
                client_frame(0x8, true, &1005u16.to_be_bytes()),
                CLOSE_PROTOCOL,
            ),
            (
                client_frame(0x8, true, &999u16.to_be_bytes()),
                CLOSE_PROTOCOL,
            ),
            (
                client_frame(0x8, true, &[0x03, 0xe8, 0xff]),
                CLOSE_INVALID_DATA,
            ),
            (client_frame(0x2, true, &[0; 2000]), CLOSE_TOO_BIG),
            (
                [
                    client_frame(0x1, false, b"a"),
                    client_frame(0x1, true, b"b"),
                ]
                .concat(),
                CLOSE_PROTOCOL,
            ),
            (
                [
                    client_frame(0x2, false, &[0; 1000]),
                    client_frame(0x0, true, &[0; 1000]),
                ]
                .concat(),
                CLOSE_TOO_BIG,
            ),
        ];
        for (mut buf, code) in cases {
            let mut s = open();
            let mut reply = Vec::new();
            let mut at = 0;
            let err = loop {
                match s.next(&mut buf[at..], 1500, &mut reply) {
                    Ok((used, _)) => at += used,
                    Err(e) => break e,
                }
            };
            let WsError::Failed(c, _) = err else {
                panic!("{err:?}")
            };
            assert_eq!(c, code, "{err:?}");
            // A close frame with the code went into the reply.
            let close_at = reply.iter().position(|&b| b == 0x88).unwrap();
            assert_eq!(&reply[close_at + 2..close_at + 4], &code.to_be_bytes());
            assert!(!s.is_open());
        }
    }

    #[test]
    fn a_reassembled_message_does_not_count_toward_the_next_ones_size() {
        let mut s = open();
        let mut buf = client_frame(0x2, false, &[b'a'; 1000]);
        buf.extend(client_frame(0x0, true, &[b'b'; 10]));
        buf.extend(client_frame(0x2, true, &[b'c'; 600]));
        let mut reply = Vec::new();
        let mut at = 0;
        let mut items = Vec::new();
        while at < buf.len() {
            let (used, item) = s.next(&mut buf[at..], 1500, &mut reply).unwrap();
            assert!(
                s.mid_message() == (items.is_empty()),
                "mid-message only between fragments"
            );
            at += used;
            items.push(item);
        }
        assert_eq!(items[1], WsItem::Reassembled);
        assert!(matches!(items[2], WsItem::Message { len: 600, .. }));
        assert!(
            s.message().is_empty(),
            "the reassembled message is not kept"
        );
    }

    #[test]
    fn server_frames_are_unmasked_text_or_binary() {
        let mut out = Vec::new();
        message_frame(&mut out, b"SIP/2.0 200 OK\r\n\r\n");
        assert_eq!(&out[..2], &[0x81, 18]);
        out.clear();
        message_frame(&mut out, &[0xff; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
        assert_eq!(out.len(), 304);
    }
}
