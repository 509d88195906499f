//! The zero-copy message parser (RFC 3261 §7, §25): start line, header lines as offsets into
//! the datagram, and the body framed by Content-Length (§18.3, §20.14).
//!
//! [`Message::parse`] does one pass over the bytes with `memchr` to split lines; it validates
//! the start line, header-line syntax and framing, and records where every header is. Typed
//! header values are parsed only when asked for (see `headers/`); [`Message::validate`] parses
//! every header the server relies on, for callers that want to reject malformed requests with
//! `400` before acting on them. No heap allocation happens in either.

use super::error::{ErrorKind, ParseError};
use super::header_name::{HeaderName, KNOWN_HEADERS};
use super::method::Method;
use super::scan::is_token_char;
use core::mem::MaybeUninit;

/// The most header lines a message may have (the capacity of the inline header table).
pub const MAX_HEADERS: usize = 64;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted message in bytes.
    pub max_size: usize,
    /// Most header lines (at most [`MAX_HEADERS`]).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: 65_535,
            max_headers: MAX_HEADERS,
        }
    }
}

/// How the message is framed by its transport (RFC 3261 §18.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One message per datagram: a missing Content-Length means "to the end of the datagram",
    /// a short body is an error, and bytes after the body are ignored.
    Datagram,
    /// A byte stream: Content-Length is mandatory and an incomplete message is
    /// [`ErrorKind::Incomplete`] / [`ErrorKind::BodyTooShort`] ("read more bytes").
    Stream,
}

/// A byte range in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    pub fn range(self) -> core::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
    #[inline]
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }
    #[inline]
    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
    },
    Response {
        code: u16,
        reason: Span,
    },
}

/// The longest header name the parser accepts, in bytes (the name's length is kept in 16
/// bits: sixteen-byte slots make the table of [`MAX_HEADERS`] slots, which every parse clears
/// and returns, a quarter smaller). Only a `Limits::max_size` above 65,535 lets a longer name
/// in; it is rejected with `ErrorKind::TooLarge(MAX_NAME_LEN)`.
pub const MAX_NAME_LEN: usize = u16::MAX as usize;

/// Where one header line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSlot {
    pub name: HeaderName,
    name_len: u16,
    name_start: u32,
    /// The value without surrounding whitespace; may span folded lines.
    pub value: Span,
}

impl HeaderSlot {
    /// The name as written (e.g. `v` or `VIA`).
    #[inline]
    pub fn name_span(&self) -> Span {
        Span {
            start: self.name_start,
            end: self.name_start + self.name_len as u32,
        }
    }
}

const NO_HEADER: u8 = u8::MAX;

/// A parsed SIP message borrowing its buffer.
#[derive(Clone)]
pub struct Message<'a> {
    buf: &'a [u8],
    start: StartLine,
    /// Offset of the first byte of the start line (leading CRLFs are skipped).
    start_offset: u32,
    /// Offset where the first header line begins.
    headers_offset: u32,
    /// The first `n_headers` are initialised (each is written before `n_headers` counts it);
    /// the rest are not, so a parse does not clear the whole table.
    headers: [MaybeUninit<HeaderSlot>; MAX_HEADERS],
    n_headers: u8,
    /// Index into `headers` of the first line of each known header, or `NO_HEADER`. The entry
    /// after them, at `HeaderName::Other`, is scratch: the header loop updates the entry of
    /// every line's name without a branch, and `first_index` never reads it.
    first: [u8; KNOWN_HEADERS + 1],
    body: Span,
    /// A second Content-Length with another value was seen.
    conflicting_length: bool,
    /// From, To and the top Via once parsed: the hot paths ask for them several times.
    pub(crate) cache: super::headers::HeaderCache<'a>,
}

/// A header line without a colon after a token: incomplete if the line does not end,
/// malformed otherwise.
#[cold]
fn bad_header_line(buf: &[u8], pos: usize) -> ParseError {
    if line_end(buf, pos).is_none() {
        ParseError::new(ErrorKind::Incomplete, buf.len())
    } else {
        ParseError::new(ErrorKind::BadHeaderLine, pos)
    }
}

/// SP or HT. Most bytes tested are name or value characters, above SP: one compare rejects them.
#[inline]
fn is_sp_ht(c: u8) -> bool {
    c <= b' ' && (c == b' ' || c == b'\t')
}

#[inline]
fn line_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    // Returns (end of content excluding CR, start of next line).
    let nl = from + super::scan::find_newline(&buf[from..])?;
    let end = if nl > from && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((end, nl + 1))
}

impl<'a> Message<'a> {
    /// Parses one datagram with the default limits.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        Self::parse_with(buf, Limits::default(), Framing::Datagram)
    }

    /// Parses with explicit limits and framing.
    #[inline]
    pub fn parse_with(
        buf: &'a [u8],
        limits: Limits,
        framing: Framing,
    ) -> Result<Message<'a>, ParseError> {
        let mut slot = MaybeUninit::uninit();
        Self::parse_lines::<true>(&mut slot, buf, limits, framing).map(|msg| msg.clone())
    }

    /// [`Message::parse_with`] into storage the caller provides, for the hot paths: the
    /// message is built where it stays, and what is returned borrows it there. A message is
    /// about 1.7 KB; returning it by value copies it once more than a parse needs.
    ///
    /// ```
    /// # use sipshard::sip::{Framing, Limits, Message};
    /// # use core::mem::MaybeUninit;
    /// let mut slot = MaybeUninit::uninit();
    /// let raw = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n";
    /// let msg = Message::parse_in(&mut slot, raw, Limits::default(), Framing::Datagram).unwrap();
    /// assert!(msg.is_request());
    /// ```
    #[inline]
    pub fn parse_in<'s>(
        slot: &'s mut MaybeUninit<Message<'a>>,
        buf: &'a [u8],
        limits: Limits,
        framing: Framing,
    ) -> Result<&'s mut Message<'a>, ParseError> {
        Self::parse_lines::<true>(slot, buf, limits, framing)
    }

    /// [`Message::parse_in`]; see `scan_headers` for `COMMON_LINES`.
    #[inline(always)]
    fn parse_lines<'s, const COMMON_LINES: bool>(
        slot: &'s mut MaybeUninit<Message<'a>>,
        buf: &'a [u8],
        limits: Limits,
        framing: Framing,
    ) -> Result<&'s mut Message<'a>, ParseError> {
        if buf.len() > limits.max_size || buf.len() > u32::MAX as usize {
            return Err(ParseError::new(
                ErrorKind::TooLarge(limits.max_size),
                limits.max_size.min(buf.len()),
            ));
        }
        let max_headers = limits.max_headers.min(MAX_HEADERS);
        // RFC 3261 §7.5: ignore CRLFs before the start line.
        let mut pos = 0;
        while pos < buf.len() && (buf[pos] == b'\r' || buf[pos] == b'\n') {
            pos += 1;
        }
        if pos >= buf.len() {
            return Err(ParseError::new(
                if framing == Framing::Stream {
                    ErrorKind::Incomplete
                } else {
                    ErrorKind::Empty
                },
                pos,
            ));
        }
        let start_offset = pos;
        let Some((sl_end, next)) = line_end(buf, pos) else {
            return Err(ParseError::new(ErrorKind::Incomplete, buf.len()));
        };
        let start = parse_start_line(buf, pos, sl_end)?;
        pos = next;
        let headers_offset = pos;

        // Written in place, field by field: a struct literal would build the 1 KB header table
        // (uninitialised) in a temporary and copy it over (measured: 1,056 bytes copied per
        // parse). The table needs no initialisation (see `headers`).
        let p = slot.as_mut_ptr();
        // SAFETY: `p` points to storage for a `Message` that `slot` borrows mutably. Every
        // field but `headers` is written here before `assume_init_mut`; `headers` is an array
        // of `MaybeUninit`, for which any bytes are a valid value.
        let msg = unsafe {
            core::ptr::addr_of_mut!((*p).buf).write(buf);
            core::ptr::addr_of_mut!((*p).start).write(start);
            core::ptr::addr_of_mut!((*p).start_offset).write(start_offset as u32);
            core::ptr::addr_of_mut!((*p).headers_offset).write(headers_offset as u32);
            core::ptr::addr_of_mut!((*p).n_headers).write(0);
            core::ptr::addr_of_mut!((*p).first).write([NO_HEADER; KNOWN_HEADERS + 1]);
            core::ptr::addr_of_mut!((*p).body).write(Span::default());
            core::ptr::addr_of_mut!((*p).conflicting_length).write(false);
            core::ptr::addr_of_mut!((*p).cache).write(Default::default());
            slot.assume_init_mut()
        };
        // Lists every field: adding one to `Message` fails to compile here until it is
        // written above too.
        let Message {
            buf: _,
            start: _,
            start_offset: _,
            headers_offset: _,
            headers: _,
            n_headers: _,
            first: _,
            body: _,
            conflicting_length: _,
            cache: _,
        } = msg;
        msg.scan_headers::<COMMON_LINES>(pos, max_headers, framing)?;
        Ok(msg)
    }

    /// The header lines from `pos` on, then the body framing. Fills the message in place (it
    /// is large: building it here and returning it would copy it). `COMMON_LINES` takes the
    /// lines of the common shape through [`Message::common_line`] (the tests compare with the
    /// general code alone).
    fn scan_headers<const COMMON_LINES: bool>(
        &mut self,
        mut pos: usize,
        max_headers: usize,
        framing: Framing,
    ) -> Result<(), ParseError> {
        let buf = self.buf;
        let msg = self;
        let mut content_length: Option<(u32, usize)> = None;
        let body_start;
        loop {
            if pos >= buf.len() {
                return Err(ParseError::new(ErrorKind::Incomplete, buf.len()));
            }
            if COMMON_LINES {
                if let Some(next) = msg.common_line(pos, max_headers) {
                    pos = next;
                    continue;
                }
            }
            let c = buf[pos];
            if c == b'\n' {
                body_start = pos + 1;
                break;
            }
            if c == b'\r' {
                if pos + 1 >= buf.len() {
                    return Err(ParseError::new(ErrorKind::Incomplete, buf.len()));
                }
                if buf[pos + 1] == b'\n' {
                    body_start = pos + 2;
                    break;
                }
                return Err(ParseError::new(ErrorKind::BadHeaderLine, pos));
            }
            if c == b' ' || c == b'\t' {
                let Some((end, next)) = line_end(buf, pos) else {
                    return Err(ParseError::new(ErrorKind::Incomplete, buf.len()));
                };
                // Folded continuation of the previous header's value (§7.3.1).
                let Some(slot) = msg.slots_mut().last_mut() else {
                    return Err(ParseError::new(ErrorKind::BadHeaderLine, pos));
                };
                let mut end = end;
                while end > pos && matches!(buf[end - 1], b' ' | b'\t') {
                    end -= 1;
                }
                // A continuation of only whitespace adds nothing. (It used to move the start of
                // an empty value past its end, and to end a value with a line break.)
                if end > pos {
                    if slot.value.is_empty() {
                        let mut s = pos;
                        while s < end && matches!(buf[s], b' ' | b'\t') {
                            s += 1;
                        }
                        slot.value.start = s as u32;
                    }
                    slot.value.end = end as u32;
                }
                pos = next;
                continue;
            }
            // name *(SP/HT) ":" value. The colon is found first. The name before it (without
            // the SP/HT) is then either a known header, whose spellings are all token
            // characters, or checked byte by byte; either way no CR or LF precedes the colon.
            // Most lines: the colon within sixteen bytes and the line end after it, in one
            // search. Otherwise each is looked for on its own (the LF after the name checks).
            let (colon, newline) = match super::simd::find_colon_then_newline(&buf[pos..]) {
                Some((colon, nl)) => (colon, Some(pos + nl)),
                None => match super::simd::find_colon(&buf[pos..]) {
                    Some(colon) => (colon, None),
                    None => return Err(bad_header_line(buf, pos)),
                },
            };
            let mut name_end = pos + colon;
            while name_end > pos && is_sp_ht(buf[name_end - 1]) {
                name_end -= 1;
            }
            let name_bytes = &buf[pos..name_end];
            let name = match name_bytes.len() {
                0 => return Err(bad_header_line(buf, pos)),
                _ => HeaderName::from_bytes(name_bytes),
            };
            if name == HeaderName::Other && !super::scan::is_token(name_bytes) {
                return Err(bad_header_line(buf, pos));
            }
            if name_bytes.len() > MAX_NAME_LEN {
                return Err(ParseError::new(ErrorKind::TooLarge(MAX_NAME_LEN), pos));
            }
            let mut i = pos + colon + 1;
            while i < buf.len() && is_sp_ht(buf[i]) {
                i += 1;
            }
            // The first LF after the colon is the first from `i` on: only SP and HT are
            // skipped.
            let nl = match newline {
                Some(nl) => nl,
                None => match super::scan::find_newline(&buf[i..]) {
                    Some(n) => i + n,
                    None => return Err(ParseError::new(ErrorKind::Incomplete, buf.len())),
                },
            };
            let (end, next) = if nl > i && buf[nl - 1] == b'\r' {
                (nl - 1, nl + 1)
            } else {
                (nl, nl + 1)
            };
            // `i <= end` unless the line ends right after the colon with a bare CR LF.
            let i = i.min(end);
            let mut vend = end;
            while vend > i && is_sp_ht(buf[vend - 1]) {
                vend -= 1;
            }
            if msg.n_headers as usize >= max_headers {
                return Err(ParseError::new(ErrorKind::TooManyHeaders(max_headers), pos));
            }
            let idx = msg.n_headers;
            msg.headers[idx as usize] = MaybeUninit::new(HeaderSlot {
                name,
                name_len: (name_end - pos) as u16,
                name_start: pos as u32,
                value: Span {
                    start: i as u32,
                    end: vend as u32,
                },
            });
            msg.n_headers += 1;
            if name != HeaderName::Other && msg.first[name as usize] == NO_HEADER {
                msg.first[name as usize] = idx;
            }
            pos = next;
        }
        // Content-Length: folded values are possible in theory, so parse after the loop.
        let mut conflicting = false;
        // From the first Content-Length line on (no line before it is one).
        let from = msg
            .first_index(HeaderName::ContentLength)
            .unwrap_or(msg.n_headers as usize);
        for slot in msg.slots()[from..]
            .iter()
            .filter(|s| s.name == HeaderName::ContentLength)
        {
            let v = super::scan::trim(&buf[slot.value.range()]);
            let n = super::scan::parse_u64(v, u32::MAX as u64).map_err(|_| {
                ParseError::in_header(
                    ErrorKind::BadContentLength,
                    "Content-Length",
                    slot.value.start as usize,
                )
            })? as u32;
            match content_length {
                None => content_length = Some((n, slot.value.start as usize)),
                Some((m, _)) if m != n => {
                    if framing == Framing::Stream {
                        return Err(ParseError::in_header(
                            ErrorKind::ConflictingContentLength,
                            "Content-Length",
                            slot.value.start as usize,
                        ));
                    }
                    conflicting = true;
                }
                Some(_) => {}
            }
        }
        msg.conflicting_length = conflicting;
        msg.body = match (content_length, framing) {
            (Some((n, at)), _) => {
                let end = body_start + n as usize;
                if end > buf.len() {
                    return Err(ParseError::in_header(
                        ErrorKind::BodyTooShort,
                        "Content-Length",
                        at,
                    ));
                }
                Span {
                    start: body_start as u32,
                    end: end as u32,
                }
            }
            (None, Framing::Datagram) => Span {
                start: body_start as u32,
                end: buf.len() as u32,
            },
            (None, Framing::Stream) => {
                return Err(ParseError::new(ErrorKind::MissingContentLength, body_start))
            }
        };
        Ok(())
    }

    /// A header line of the common shape `name: value CRLF` at `pos` (one SP after the colon,
    /// a value not starting with SP or HT, a name of at most 15 bytes that is a known header
    /// or a token, more than sixteen bytes before the end of the buffer): records it and
    /// returns where the next line starts. `None` for anything else, which the general code in
    /// `scan_headers` then handles (and reports) in its own way; for the lines taken here it
    /// would record the same slot (every check below implies the corresponding one there).
    #[inline(always)]
    fn common_line(&mut self, pos: usize, max_headers: usize) -> Option<usize> {
        let s = self.buf.get(pos..)?;
        // The first colon (within sixteen bytes) and the first LF after it.
        let (colon, nl) = super::simd::find_colon_then_newline(s)?;
        let head: &[u8; 16] = s.get(..16)?.try_into().ok()?;
        // A known name or a token: no SP, HT, CR or LF, so the line does not start with the
        // end of the header section or a continuation, and no SP/HT precedes the colon.
        let name = HeaderName::from_head(head, colon);
        if name == HeaderName::Other && !super::scan::is_token(&s[..colon]) {
            return None;
        }
        // One SP, then the value from `i` to the CR at `end`, maybe empty (`i == end`). With
        // the SP, the line is at least `name: CR LF`, and `colon + 3 <= nl` lets the bounds
        // checks below go.
        let i = colon + 2;
        let end = nl - 1;
        if colon + 3 > nl || nl >= s.len() {
            return None;
        }
        if s[colon + 1] != b' ' || is_sp_ht(s[i]) || s[end] != b'\r' {
            return None;
        }
        // Values rarely end in whitespace: one compare for the usual case (`end > i`, or
        // `s[end - 1]` is the SP after the colon).
        let mut vend = end;
        if s[end - 1] <= b' ' {
            while vend > i && is_sp_ht(s[vend - 1]) {
                vend -= 1;
            }
        }
        let idx = self.n_headers;
        if idx as usize >= max_headers.min(MAX_HEADERS) {
            return None;
        }
        self.headers[idx as usize] = MaybeUninit::new(HeaderSlot {
            name,
            name_len: colon as u16,
            name_start: pos as u32,
            value: Span {
                start: (pos + i) as u32,
                end: (pos + vend) as u32,
            },
        });
        self.n_headers = idx + 1;
        // Indices grow: the first line of a name has the smallest (`NO_HEADER` is the largest
        // u8). `name as usize <= KNOWN_HEADERS`, the length of `first` minus one.
        let first = &mut self.first[name as usize];
        *first = (*first).min(idx);
        Some(pos + nl + 1)
    }

    /// The buffer the message was parsed from.
    #[inline]
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// The bytes of a span of this message.
    #[inline]
    pub fn slice(&self, span: Span) -> &'a [u8] {
        &self.buf[span.range()]
    }

    /// Offset of `part` in the buffer; `part` must be a sub-slice of it.
    #[inline]
    pub(crate) fn offset_of(&self, part: &[u8]) -> usize {
        (part.as_ptr() as usize).saturating_sub(self.buf.as_ptr() as usize)
    }

    #[inline]
    pub fn start_line(&self) -> StartLine {
        self.start
    }

    #[inline]
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The method of a request.
    #[inline]
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            _ => None,
        }
    }

    /// The method of a request as written.
    #[inline]
    pub fn method_bytes(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { method_span, .. } => Some(self.slice(method_span)),
            _ => None,
        }
    }

    /// The Request-URI as written.
    #[inline]
    pub fn request_uri_bytes(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(self.slice(uri)),
            _ => None,
        }
    }

    /// The span of the Request-URI in the buffer.
    #[inline]
    pub fn request_uri_span(&self) -> Option<Span> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            _ => None,
        }
    }

    /// The status code of a response.
    #[inline]
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The reason phrase of a response.
    #[inline]
    pub fn reason(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Response { reason, .. } => Some(self.slice(reason)),
            _ => None,
        }
    }

    /// All header lines in order.
    #[inline]
    pub fn slots(&self) -> &[HeaderSlot] {
        let n = (self.n_headers as usize).min(MAX_HEADERS);
        // SAFETY: the first `n_headers` slots are initialised (see `headers`), and
        // `MaybeUninit<HeaderSlot>` has the layout of `HeaderSlot`.
        unsafe { core::slice::from_raw_parts(self.headers.as_ptr().cast::<HeaderSlot>(), n) }
    }

    /// The header lines recorded so far, to extend a value with a folded line.
    #[inline]
    fn slots_mut(&mut self) -> &mut [HeaderSlot] {
        let n = (self.n_headers as usize).min(MAX_HEADERS);
        // SAFETY: as in `slots`.
        unsafe {
            core::slice::from_raw_parts_mut(self.headers.as_mut_ptr().cast::<HeaderSlot>(), n)
        }
    }

    /// Offset where the header section starts (after the start line).
    #[inline]
    pub fn headers_offset(&self) -> usize {
        self.headers_offset as usize
    }

    /// Offset of the start line.
    #[inline]
    pub fn start_offset(&self) -> usize {
        self.start_offset as usize
    }

    /// Index in [`Message::slots`] of the first line of a known header.
    #[inline]
    fn first_index(&self, name: HeaderName) -> Option<usize> {
        if name == HeaderName::Other {
            return None;
        }
        match self.first.get(name as usize) {
            None | Some(&NO_HEADER) => None,
            Some(&i) => Some(i as usize),
        }
    }

    /// The first header line with this name, as its slot.
    #[inline]
    pub fn first_slot(&self, name: HeaderName) -> Option<&HeaderSlot> {
        self.first_index(name).map(|i| &self.slots()[i])
    }

    /// The value of the first line of a known header.
    #[inline]
    pub fn header(&self, name: HeaderName) -> Option<&'a [u8]> {
        self.first_slot(name).map(|s| &self.buf[s.value.range()])
    }

    /// The values of every line of a known header, in order.
    #[inline]
    pub fn header_all(&self, name: HeaderName) -> impl Iterator<Item = &'a [u8]> + '_ {
        let start = match self.first_index(name) {
            Some(i) => i,
            None => self.n_headers as usize,
        };
        self.slots()[start..]
            .iter()
            .filter(move |s| s.name == name)
            .map(|s| &self.buf[s.value.range()])
    }

    /// The value of the first header whose name equals `name` (case-insensitive, any header,
    /// compact forms not expanded).
    pub fn header_by_name(&self, name: &str) -> Option<&'a [u8]> {
        let known = HeaderName::from_bytes(name.as_bytes());
        if known != HeaderName::Other {
            return self.header(known);
        }
        self.slots()
            .iter()
            .find(|s| {
                self.slice(s.name_span())
                    .eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|s| self.slice(s.value))
    }

    /// How many lines of a known header there are.
    pub fn count(&self, name: HeaderName) -> usize {
        self.header_all(name).count()
    }

    /// The body (framed by Content-Length).
    #[inline]
    pub fn body(&self) -> &'a [u8] {
        self.slice(self.body)
    }

    #[inline]
    pub fn body_span(&self) -> Span {
        self.body
    }

    /// The length of the whole message including the body (for stream framing: how many
    /// bytes to consume).
    #[inline]
    pub fn len(&self) -> usize {
        self.body.end as usize
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True if two Content-Length headers disagreed (RFC 4475 §3.3.9).
    pub fn has_conflicting_content_length(&self) -> bool {
        self.conflicting_length
    }
}

impl core::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Message")
            .field("start", &self.start)
            .field("headers", &self.n_headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Parses `SIP/2.0` (case-insensitive "SIP"); returns Err(kind) for other versions.
fn check_version(v: &[u8], at: usize) -> Result<(), ParseError> {
    if v.len() >= 7 && v[..4].eq_ignore_ascii_case(b"SIP/") {
        let rest = &v[4..];
        if rest == b"2.0" {
            return Ok(());
        }
        let dot = memchr::memchr(b'.', rest);
        if let Some(d) = dot {
            let (maj, min) = (&rest[..d], &rest[d + 1..]);
            if !maj.is_empty()
                && !min.is_empty()
                && maj.iter().all(u8::is_ascii_digit)
                && min.iter().all(u8::is_ascii_digit)
            {
                return Err(ParseError::new(ErrorKind::VersionNotSupported, at));
            }
        }
    }
    Err(ParseError::new(ErrorKind::BadStartLine, at))
}

/// `SIP/2.0` with its letters lowered, and the bits that lower them, as little-endian words of
/// eight bytes (`SIP/2.0 ` for the Status-Line, ` SIP/2.0` for the end of a Request-Line).
const SIP20_SP: (u64, u64) = folded_word(b"sip/2.0 ");
const SP_SIP20: (u64, u64) = folded_word(b" sip/2.0");

const fn folded_word(w: &[u8; 8]) -> (u64, u64) {
    let mut lower = 0u64;
    let mut mask = 0u64;
    let mut i = 0;
    while i < 8 {
        lower |= (w[i] as u64) << (8 * i);
        if w[i].is_ascii_alphabetic() {
            mask |= 0x20 << (8 * i);
        }
        i += 1;
    }
    (lower, mask)
}

/// Case-insensitive (for letters only) equality of eight bytes with a folded word.
#[inline]
fn eq_word(b: &[u8], (lower, mask): (u64, u64)) -> bool {
    b.len() == 8 && u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) | mask == lower
}

/// The start line in one forward pass for the common shapes, `METHOD SP URI SP SIP/2.0` and
/// `SIP/2.0 SP code SP reason`; `None` for anything else (including every malformed line),
/// which [`parse_start_line`] then parses and reports in its own way. Whatever this returns,
/// `parse_start_line_general` returns too (the conditions below imply each of its checks).
#[inline]
fn parse_start_line_fast(line: &[u8], start: usize) -> Option<StartLine> {
    if line.len() >= 12 && eq_word(&line[..8], SIP20_SP) {
        // Status-Line: three digits in 100..=699, then SP or the end of the line.
        let d = &line[8..11];
        if !d.iter().all(u8::is_ascii_digit) || !(b'1'..=b'6').contains(&d[0]) {
            return None;
        }
        let reason_start = match line.get(11) {
            None => 11,
            Some(b' ') => 12,
            Some(_) => return None,
        };
        if line[reason_start..].iter().any(|&c| c < 0x20 && c != b'\t') {
            return None;
        }
        let code = d.iter().fold(0u16, |a, &c| a * 10 + (c - b'0') as u16);
        return Some(StartLine::Response {
            code,
            reason: Span {
                start: (start + reason_start) as u32,
                end: (start + line.len()) as u32,
            },
        });
    }
    // Request-Line. The method is a token ending at the first SP; no token character is SP, so
    // this SP is the first one, and a line starting with `SIP/` stops at `/` (not a token
    // character) and is left to the general parser.
    let sp1 = line.iter().position(|&c| !is_token_char(c))?;
    if sp1 == 0 || line[sp1] != b' ' || line.len() < sp1 + 10 {
        return None;
    }
    // ` SIP/2.0` ends the line: its SP is the last one, and the version is supported.
    let sp2 = line.len() - 8;
    if !eq_word(&line[sp2..], SP_SIP20) {
        return None;
    }
    // The Request-URI: non-empty (sp2 > sp1 + 1 above), a scheme of letters, digits and
    // `+-.` that starts with a letter and ends at the first `:`, and no SP or HT.
    let uri = &line[sp1 + 1..sp2];
    if !uri[0].is_ascii_alphabetic() {
        return None;
    }
    let colon = uri
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')))?;
    if uri[colon] != b':' || super::scan::has_sp_or_ht(&uri[colon..]) {
        return None;
    }
    Some(StartLine::Request {
        method: Method::from_bytes(&line[..sp1]),
        method_span: Span {
            start: start as u32,
            end: (start + sp1) as u32,
        },
        uri: Span {
            start: (start + sp1 + 1) as u32,
            end: (start + sp2) as u32,
        },
    })
}

#[inline]
fn parse_start_line(buf: &[u8], start: usize, end: usize) -> Result<StartLine, ParseError> {
    match parse_start_line_fast(&buf[start..end], start) {
        Some(s) => Ok(s),
        None => parse_start_line_general(buf, start, end),
    }
}

/// The start line (RFC 3261 §7.1, §7.2), with the error kind and offset of the first problem.
#[cold]
fn parse_start_line_general(buf: &[u8], start: usize, end: usize) -> Result<StartLine, ParseError> {
    let line = &buf[start..end];
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = memchr::memchr(b' ', line)
            .ok_or_else(|| ParseError::new(ErrorKind::BadStartLine, start))?;
        check_version(&line[..sp], start)?;
        let code_start = sp + 1;
        let mut i = code_start;
        while i < line.len() && line[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &line[code_start..i];
        if digits.len() != 3 || (i < line.len() && line[i] != b' ') {
            return Err(ParseError::new(
                ErrorKind::BadStatusCode,
                start + code_start,
            ));
        }
        let code = digits.iter().fold(0u16, |a, &c| a * 10 + (c - b'0') as u16);
        if !(100..=699).contains(&code) {
            return Err(ParseError::new(
                ErrorKind::BadStatusCode,
                start + code_start,
            ));
        }
        // The reason phrase is optional but the SP before it is not (RFC 4475 §3.1.1.13
        // shows it present); tolerate its absence.
        let reason_start = (i + 1).min(line.len());
        if line[reason_start..].iter().any(|&c| c < 0x20 && c != b'\t') {
            return Err(ParseError::new(
                ErrorKind::BadStartLine,
                start + reason_start,
            ));
        }
        return Ok(StartLine::Response {
            code,
            reason: Span {
                start: (start + reason_start) as u32,
                end: end as u32,
            },
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let sp1 = memchr::memchr(b' ', line)
        .ok_or_else(|| ParseError::new(ErrorKind::BadStartLine, start))?;
    let method_bytes = &line[..sp1];
    if method_bytes.is_empty() || !method_bytes.iter().all(|&c| is_token_char(c)) {
        return Err(ParseError::new(ErrorKind::BadMethod, start));
    }
    let uri_start = sp1 + 1;
    let sp2 = memchr::memrchr(b' ', line)
        .filter(|&p| p > sp1)
        .ok_or_else(|| ParseError::new(ErrorKind::BadStartLine, start + uri_start))?;
    let version = &line[sp2 + 1..];
    if version.is_empty() {
        // Trailing whitespace after the version (RFC 4475 §3.1.2.10).
        return Err(ParseError::new(ErrorKind::BadStartLine, start + sp2));
    }
    check_version(version, start + sp2 + 1)?;
    let uri = &line[uri_start..sp2];
    // The Request-URI has no whitespace and starts with a scheme (RFC 4475 §3.1.2.7-9).
    if uri.is_empty() || super::scan::has_sp_or_ht(uri) || !uri[0].is_ascii_alphabetic() {
        return Err(ParseError::new(ErrorKind::BadRequestUri, start + uri_start));
    }
    let colon = memchr::memchr(b':', uri)
        .ok_or_else(|| ParseError::new(ErrorKind::BadRequestUri, start + uri_start))?;
    if !uri[..colon]
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
    {
        return Err(ParseError::new(ErrorKind::BadRequestUri, start + uri_start));
    }
    Ok(StartLine::Request {
        method: Method::from_bytes(method_bytes),
        method_span: Span {
            start: start as u32,
            end: (start + sp1) as u32,
        },
        uri: Span {
            start: (start + uri_start) as u32,
            end: (start + sp2) as u32,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] =
        b"OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n";

    fn with(extra: &[u8]) -> Vec<u8> {
        let mut v = HEAD.to_vec();
        v.extend_from_slice(extra);
        v.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        v
    }

    /// A name of up to `MAX_NAME_LEN` bytes is kept whole; a longer one (possible only with a
    /// larger `max_size`) is rejected, naming the limit.
    #[test]
    fn longest_header_name() {
        let limits = Limits {
            max_size: 1 << 20,
            ..Limits::default()
        };
        for (len, ok) in [(MAX_NAME_LEN, true), (MAX_NAME_LEN + 1, false)] {
            let mut extra = vec![b'X'; len];
            extra.extend_from_slice(b" : v\r\n");
            let raw = with(&extra);
            let got = Message::parse_with(&raw, limits, Framing::Datagram);
            if ok {
                let msg = got.unwrap();
                let slot = msg.slots()[1];
                assert_eq!(slot.name_span().start as usize, HEAD.len());
                assert_eq!(slot.name_span().len(), len);
                assert_eq!(msg.slice(slot.value), b"v");
            } else {
                let e = got.unwrap_err();
                assert_eq!(e.kind, ErrorKind::TooLarge(MAX_NAME_LEN));
                assert_eq!(e.offset, HEAD.len());
            }
        }
    }

    /// Found by fuzzing: an empty value followed by a whitespace-only continuation line got a
    /// span with start > end, and slicing it panicked.
    #[test]
    fn whitespace_only_continuation_of_empty_value() {
        let raw = with(b"TO :\r\n \r\n");
        let msg = Message::parse(&raw).unwrap();
        let to = msg.first_slot(HeaderName::To).unwrap();
        assert!(to.value.start <= to.value.end);
        assert_eq!(msg.header(HeaderName::To), Some(&b""[..]));
        assert!(msg.to().is_err());
    }

    #[test]
    fn whitespace_only_continuation_adds_nothing() {
        let raw = with(b"Subject: a\r\n \t\r\n");
        let msg = Message::parse(&raw).unwrap();
        assert_eq!(msg.header(HeaderName::Subject), Some(&b"a"[..]));
        let raw = with(b"Subject:\r\n \r\n  b c \r\n");
        let msg = Message::parse(&raw).unwrap();
        assert_eq!(msg.header(HeaderName::Subject), Some(&b"b c"[..]));
        let raw = with(b"Subject: a\r\n b\r\n");
        let msg = Message::parse(&raw).unwrap();
        assert_eq!(msg.header(HeaderName::Subject), Some(&b"a\r\n b"[..]));
    }

    /// `Message::parse_with` with the general header-line code only.
    fn parse_general(
        buf: &[u8],
        limits: Limits,
        framing: Framing,
    ) -> Result<Message<'_>, ParseError> {
        let mut slot = MaybeUninit::uninit();
        Message::parse_lines::<false>(&mut slot, buf, limits, framing).map(|msg| msg.clone())
    }

    fn same(a: &Message<'_>, b: &Message<'_>) -> bool {
        a.start == b.start
            && a.start_offset == b.start_offset
            && a.headers_offset == b.headers_offset
            && a.slots() == b.slots()
            && a.first[..KNOWN_HEADERS] == b.first[..KNOWN_HEADERS]
            && a.body == b.body
            && a.conflicting_length == b.conflicting_length
    }

    /// The fused search against the two separate ones, over lengths around the step sizes and
    /// every colon position, with LFs before and after the colon.
    /// `parse_in` builds in storage that may hold an earlier message: nothing of that one may
    /// show through (header count, first-line index, cache, body), and it gives what
    /// `parse_with` gives, errors included.
    #[test]
    fn parse_in_reuses_storage() {
        let long: &[u8] =
            b"INVITE sip:bob@b.example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
To: <sip:bob@b.example.com>\r\nFrom: <sip:a@a.example.com>;tag=1\r\nCall-ID: x\r\n\
CSeq: 1 INVITE\r\nContact: <sip:a@h>\r\nSubject: s\r\nContent-Length: 3\r\n\r\nabc";
        let short: &[u8] =
            b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP g;branch=z9hG4bK2\r\nl: 0\r\n\r\n";
        let bad: &[u8] = b"OPTIONS sip:x SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n";
        let mut slot = MaybeUninit::uninit();
        let msg = Message::parse_in(&mut slot, long, Limits::default(), Framing::Datagram).unwrap();
        assert_eq!(msg.top_via().unwrap().host, b"h");
        assert_eq!(msg.slots().len(), 8);
        let msg =
            Message::parse_in(&mut slot, short, Limits::default(), Framing::Datagram).unwrap();
        let by_value = Message::parse(short).unwrap();
        assert!(same(msg, &by_value));
        assert_eq!(msg.slots().len(), 2);
        assert_eq!(msg.top_via().unwrap().host, b"g");
        assert!(msg.header(HeaderName::Contact).is_none());
        assert_eq!(msg.body(), b"");
        let err = Message::parse_in(&mut slot, bad, Limits::default(), Framing::Datagram);
        assert_eq!(err.err(), Message::parse(bad).err());
    }

    #[test]
    fn colon_then_newline_matches_separate_searches() {
        use super::super::simd::find_colon_then_newline;
        for len in 0..150usize {
            for colon in 0..20.min(len + 1) {
                for lf in [
                    None,
                    Some(0),
                    Some(colon + 1),
                    Some(len / 2),
                    Some(len.saturating_sub(1)),
                ] {
                    let mut s = vec![b'a'; len];
                    if colon < len {
                        s[colon] = b':';
                    }
                    for extra in [lf, lf.map(|i| i + 17), lf.map(|i| i + 40)] {
                        if let Some(i) = extra.filter(|&i| i < len && i != colon) {
                            s[i] = b'\n';
                        }
                    }
                    let c = s.iter().position(|&b| b == b':');
                    let expect = c.filter(|&c| c < 16 && len >= 16).and_then(|c| {
                        let n = s[c + 1..].iter().position(|&b| b == b'\n')?;
                        Some((c, c + 1 + n))
                    });
                    #[cfg(target_arch = "x86_64")]
                    assert_eq!(find_colon_then_newline(&s), expect, "{len} {colon} {lf:?}");
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (expect, find_colon_then_newline(&s));
                }
            }
        }
    }

    /// The common-line fast path against the general code alone: the same messages and slots,
    /// the same errors, over mutations of typical messages (bytes changed, inserted, deleted,
    /// case flipped, truncated) with both framings and small header limits.
    #[test]
    fn common_lines_agree_with_general() {
        let msgs: [&[u8]; 4] = [
            b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\nTo: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\nCSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\nX-Custom-Header1: x\r\n\
Proxy-Authorization: Digest a=b\r\nContent-Type: application/sdp\r\n\
Content-Length: 10\r\n\r\nv=0\r\no=a b\r\n",
            b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:a@b>;tag=1\r\n\
t: <sip:b@c>\r\ni: abc\r\nCSeq: 1 INVITE\r\nSubject: \r\nl: 0\r\n\r\n",
            b"REGISTER sip:r.example.com SIP/2.0\r\nVia: SIP/2.0/TCP h:5060;branch=z9hG4bKx\r\n\
To: <sip:b@r.example.com>\r\nFrom: <sip:b@r.example.com>;tag=2\r\nCall-ID: 1@h\r\n\
CSeq: 2 REGISTER\r\nContact: <sip:b@h>;expires=60\r\nExpires: 60\r\n\
Content-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK2\r\nSubject: a\r\n  b\r\n\
Accept: application/sdp\r\nAllow: INVITE, ACK\r\nContent-Length: 4\r\n\r\nabcd",
        ];
        for m in msgs {
            let a = Message::parse(m).unwrap();
            let b = parse_general(m, Limits::default(), Framing::Datagram).unwrap();
            assert!(same(&a, &b));
        }
        let mut rng = crate::sip::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
        let mut rnd = || rng.next_u64();
        let bytes = b": \t\r\n\r\n:: aZ-!\x00\x7f\xc3;,<";
        let (mut ok, mut err) = (0, 0);
        for _ in 0..150_000 {
            let mut v = msgs[(rnd() % msgs.len() as u64) as usize].to_vec();
            for _ in 0..1 + rnd() % 4 {
                let i = (rnd() % (v.len() as u64 + 1)) as usize;
                let c = bytes[(rnd() % bytes.len() as u64) as usize];
                match rnd() % 6 {
                    0 if i < v.len() => v[i] = c,
                    1 | 2 => v.insert(i, c),
                    3 if i < v.len() => {
                        v.remove(i);
                    }
                    4 if i < v.len() => v[i] ^= 0x20,
                    _ => v.truncate(i),
                }
            }
            let limits = Limits {
                max_size: 65_535,
                max_headers: [MAX_HEADERS, 3, 8, 12][(rnd() % 4) as usize],
            };
            let framing = if rnd() % 2 == 0 {
                Framing::Datagram
            } else {
                Framing::Stream
            };
            match (
                Message::parse_with(&v, limits, framing),
                parse_general(&v, limits, framing),
            ) {
                (Ok(a), Ok(b)) => {
                    ok += 1;
                    assert!(same(&a, &b), "{:?}", String::from_utf8_lossy(&v));
                }
                (Err(a), Err(b)) => {
                    err += 1;
                    assert_eq!(a, b, "{:?}", String::from_utf8_lossy(&v));
                }
                (a, b) => panic!("{a:?} {b:?} {:?}", String::from_utf8_lossy(&v)),
            }
        }
        assert!(ok > 20_000 && err > 20_000, "{ok} {err}");
    }

    /// Whatever the one-pass start-line parser accepts, the general one accepts with the same
    /// result; and it does take the common lines. Over mutations (byte changes, insertions,
    /// deletions, case changes) of typical request and status lines.
    #[test]
    fn fast_start_line_agrees_with_general() {
        let lines: [&[u8]; 6] = [
            b"INVITE sip:bob@client.biloxi.example.com:5060;transport=udp SIP/2.0",
            b"REGISTER sips:registrar.example.com SIP/2.0",
            b"OPTIONS tel:+1-201-555-0123 SIP/2.0",
            b"SIP/2.0 200 OK",
            b"SIP/2.0 180 Ringing",
            b"sip/2.0 699 a\tb",
        ];
        for l in lines {
            assert!(parse_start_line_fast(l, 0).is_some());
        }
        let mut rng = crate::sip::mutate::Mutator::new(0x2545_f491_4f6c_dd1d);
        let mut rnd = || rng.next_u64();
        let bytes = b" \t:/.+-0123456789aAsSiIpP\r\n\x00\x7f\xc3;@<";
        let mut fast = 0;
        for _ in 0..300_000 {
            let mut v = lines[(rnd() % lines.len() as u64) as usize].to_vec();
            for _ in 0..1 + rnd() % 3 {
                let i = (rnd() % (v.len() as u64 + 1)) as usize;
                let c = bytes[(rnd() % bytes.len() as u64) as usize];
                match rnd() % 4 {
                    0 if i < v.len() => v[i] = c,
                    1 => v.insert(i, c),
                    2 if i < v.len() => {
                        v.remove(i);
                    }
                    _ if i < v.len() => v[i] ^= 0x20,
                    _ => {}
                }
            }
            let mut buf = b"\r\n".to_vec();
            buf.extend_from_slice(&v);
            if let Some(got) = parse_start_line_fast(&v, 2) {
                fast += 1;
                assert_eq!(
                    parse_start_line_general(&buf, 2, buf.len()),
                    Ok(got),
                    "{:?}",
                    String::from_utf8_lossy(&v)
                );
            }
        }
        assert!(fast > 10_000, "{fast}");
    }
}
