//! Message framing on a byte stream (RFC 3261 §18.3): where one message ends on a TCP, TLS or
//! WebSocket-less stream. Content-Length is mandatory; a message may arrive split across
//! reads and several may arrive in one read; CRLF keepalives between messages (RFC 5626
//! §3.5.1: a double-CRLF ping is answered with a single-CRLF pong) are consumed, never parsed
//! as messages. Sans-I/O: the connection owns the bytes and asks [`next_frame`] what they hold.

use crate::sip::{ErrorKind, Framing, Limits, Message};

/// What the start of a stream's unread bytes holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A complete message of this many bytes (leading CRLFs are not part of it).
    Message { skip: usize, len: usize },
    /// A double-CRLF keepalive ping (4 bytes): answer with a CRLF.
    Ping,
    /// A single CRLF (a pong, or a keepalive some phones send): 2 bytes, no answer.
    Pong,
    /// Not enough bytes yet.
    Incomplete,
}

/// Why a stream cannot go on: the connection is answered (when the bytes are a request) and
/// closed, since where the next message starts is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The message (header block, or header block and body) is larger than allowed.
    TooLarge,
    /// Not a message this server can frame (missing or malformed Content-Length, or a
    /// header section that does not parse): the parser's reason.
    Malformed(ErrorKind),
}

impl FrameError {
    /// The status and reason phrase of the response a request gets before the close.
    pub fn response(self) -> (u16, &'static str) {
        match self {
            FrameError::TooLarge => (513, "Message Too Large"),
            FrameError::Malformed(ErrorKind::MissingContentLength) => {
                (400, "Bad Request (missing Content-Length on a stream)")
            }
            FrameError::Malformed(_) => (400, "Bad Request (cannot frame the message)"),
        }
    }
}

/// What a connection remembers about the message it is receiving, so that a peer sending a
/// large message in many small pieces costs a scan of each new byte, not a parse of the whole
/// message per read (reset with [`FrameState::default`] when a message is consumed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameState {
    /// Bytes from the start known not to hold the end of the header section.
    searched: usize,
    /// The message's full length, once its header section was parsed.
    total: Option<usize>,
}

/// Looks at `buf` (the unread bytes of a stream) and says what its start holds. `max` bounds
/// a message's size: a header section still unterminated past it, or a Content-Length that
/// would take it past, is [`FrameError::TooLarge`] at once (without waiting for the bytes).
/// Only the message's own bytes are parsed: what follows it in `buf` (the next messages of a
/// burst) is not looked at.
pub fn next_frame(buf: &[u8], max: usize, st: &mut FrameState) -> Result<Frame, FrameError> {
    if buf.starts_with(b"\r\n") {
        *st = FrameState::default();
        return Ok(match buf.get(2..4) {
            Some(b"\r\n") => Frame::Ping,
            // "\r\n\r" may be the start of a ping: wait for its last byte.
            None | Some([b'\r']) => Frame::Incomplete,
            Some(_) if buf.len() == 3 && buf[2] == b'\r' => Frame::Incomplete,
            Some(_) => Frame::Pong,
        });
    }
    if buf.is_empty() {
        return Ok(Frame::Incomplete);
    }
    if let Some(total) = st.total {
        if buf.len() < total {
            return Ok(Frame::Incomplete);
        }
    } else {
        // The header section must be complete before a parse is worth it.
        let from = st.searched.saturating_sub(3);
        let window = &buf[..buf.len().min(max)];
        if memchr::memmem::find(&window[from.min(window.len())..], b"\r\n\r\n").is_none() {
            if buf.len() > max {
                return Err(FrameError::TooLarge);
            }
            st.searched = buf.len();
            return Ok(Frame::Incomplete);
        }
    }
    let window = &buf[..buf.len().min(max)];
    let limits = Limits {
        max_size: max,
        ..Limits::default()
    };
    let mut slot = core::mem::MaybeUninit::uninit();
    match Message::parse_in(&mut slot, window, limits, Framing::Stream) {
        Ok(m) => {
            let (skip, len) = (m.start_offset(), m.len() - m.start_offset());
            *st = FrameState::default();
            Ok(Frame::Message { skip, len })
        }
        Err(e) if e.kind == ErrorKind::Incomplete => {
            if buf.len() > max {
                Err(FrameError::TooLarge)
            } else {
                Ok(Frame::Incomplete)
            }
        }
        Err(e) if e.kind == ErrorKind::BodyTooShort => {
            // The header section is complete: its Content-Length says how long it will be.
            match declared_len(window) {
                Some(total) if total > max => Err(FrameError::TooLarge),
                Some(total) => {
                    st.total = Some(total);
                    Ok(Frame::Incomplete)
                }
                None if buf.len() >= max => Err(FrameError::TooLarge),
                None => Ok(Frame::Incomplete),
            }
        }
        Err(e) if matches!(e.kind, ErrorKind::TooLarge(_)) => Err(FrameError::TooLarge),
        Err(e) => Err(FrameError::Malformed(e.kind)),
    }
}

/// True if `rest` (bytes left after the complete messages) holds nothing but line breaks: a
/// keepalive's, not the start of a message (the message timeout does not run for it).
pub fn only_line_breaks(rest: &[u8]) -> bool {
    rest.iter().all(|&c| c == b'\r' || c == b'\n')
}

/// The full length (header section and body) a message whose header section is complete
/// declares: the end of the header section plus its Content-Length.
fn declared_len(buf: &[u8]) -> Option<usize> {
    let end = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    // The parser accepted this header section up to the body, so its Content-Length is a
    // well-formed number: find the line (long or compact name) and read it.
    buf[..end].split(|&c| c == b'\n').skip(1).find_map(|line| {
        let (name, value) = line.split_at(memchr::memchr(b':', line)?);
        let name = name.trim_ascii();
        (name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l"))
            .then(|| {
                std::str::from_utf8(value[1..].trim_ascii())
                    .ok()?
                    .parse::<usize>()
                    .ok()
            })
            .flatten()
            .map(|cl| end + cl)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\nFrom: <sip:a@example.com>;tag=1\r\n\
To: <sip:a@example.com>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 4\r\n\r\nbody";

    /// Feeds `chunks` one after the other into a stream buffer the way a connection does and
    /// returns what came out.
    fn run(chunks: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, usize, Option<FrameError>) {
        let (mut buf, mut out, mut pings) = (Vec::new(), Vec::new(), 0);
        let mut st = FrameState::default();
        for c in chunks {
            buf.extend_from_slice(c);
            loop {
                match next_frame(&buf, max, &mut st) {
                    Ok(Frame::Message { skip, len }) => {
                        out.push(buf[skip..skip + len].to_vec());
                        buf.drain(..skip + len);
                    }
                    Ok(Frame::Ping) => {
                        pings += 1;
                        buf.drain(..4);
                    }
                    Ok(Frame::Pong) => {
                        buf.drain(..2);
                    }
                    Ok(Frame::Incomplete) => break,
                    Err(e) => return (out, pings, Some(e)),
                }
            }
        }
        (out, pings, None)
    }

    #[test]
    fn a_message_split_at_every_byte_boundary_comes_out_whole_once() {
        for at in 0..=REQ.len() {
            let (msgs, pings, err) = run(&[&REQ[..at], &REQ[at..]], 65_535);
            assert_eq!(
                (msgs, pings, err),
                (vec![REQ.to_vec()], 0, None),
                "split at {at}"
            );
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = REQ.chunks(1).collect();
        assert_eq!(run(&bytes, 65_535).0, vec![REQ.to_vec()]);
    }

    #[test]
    fn coalesced_messages_and_keepalives_come_apart() {
        let mut all = b"\r\n\r\n".to_vec();
        all.extend_from_slice(REQ);
        all.extend_from_slice(b"\r\n\r\n");
        all.extend_from_slice(REQ);
        all.extend_from_slice(b"\r\n");
        all.extend_from_slice(REQ);
        for at in 0..=all.len() {
            let (msgs, pings, err) = run(&[&all[..at], &all[at..]], 65_535);
            assert_eq!(msgs.len(), 3, "split at {at}");
            assert!(msgs.iter().all(|m| m == REQ));
            assert_eq!((pings, err), (2, None), "split at {at}");
        }
    }

    #[test]
    fn a_burst_larger_than_the_message_limit_is_many_messages_not_one_too_large() {
        // 2,000 requests back to back (over 1 MB) arrive in one read.
        let burst: Vec<u8> = REQ.repeat(2_000);
        let (msgs, _, err) = run(&[&burst], 65_535);
        assert_eq!((msgs.len(), err), (2_000, None));
        // A message larger than a small limit is still refused.
        assert_eq!(run(&[REQ], 100).2, Some(FrameError::TooLarge));
    }

    #[test]
    fn trailing_line_breaks_are_not_the_start_of_a_message() {
        assert!(only_line_breaks(b"\r\n"));
        assert!(only_line_breaks(b""));
        assert!(!only_line_breaks(b"\r\nO"));
    }

    #[test]
    fn a_missing_content_length_is_refused_with_400() {
        let raw = b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let err = next_frame(raw, 65_535, &mut FrameState::default()).unwrap_err();
        assert_eq!(err, FrameError::Malformed(ErrorKind::MissingContentLength));
        assert_eq!(err.response().0, 400);
        assert!(err.response().1.contains("Content-Length"));
    }

    #[test]
    fn oversized_messages_are_refused_before_their_bytes_arrive() {
        // A header section that never ends.
        let mut endless = b"OPTIONS sip:a@example.com SIP/2.0\r\n".to_vec();
        while endless.len() <= 1 << 20 {
            endless.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        assert_eq!(
            next_frame(&endless, 65_535, &mut FrameState::default()),
            Err(FrameError::TooLarge)
        );
        assert_eq!(
            next_frame(&endless[..1000], 65_535, &mut FrameState::default()),
            Ok(Frame::Incomplete)
        );
        // A body declared too large is refused with the header section alone.
        let big =
            String::from_utf8_lossy(REQ).replace("Content-Length: 4", "Content-Length: 900000");
        let head = &big.as_bytes()[..big.find("\r\n\r\n").unwrap() + 4];
        assert_eq!(
            next_frame(head, 65_535, &mut FrameState::default()),
            Err(FrameError::TooLarge)
        );
        assert_eq!(
            next_frame(head, 1 << 20, &mut FrameState::default()),
            Ok(Frame::Incomplete)
        );
        assert_eq!(FrameError::TooLarge.response().0, 513);
    }
}
