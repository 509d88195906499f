//! Parse errors that say what is wrong and where (RFC 3261 §21.4.1 "400 Bad Request":
//! "the reason phrase SHOULD identify the syntax problem in more detail").
//!
//! An error carries an [`ErrorKind`], the header it was found in (if any) and the byte offset
//! in the datagram. [`ParseError::status`] gives the response code a server should answer with
//! and [`ParseError::reason`] a reason phrase such as `Bad Request (malformed Via at byte 212)`.

use core::fmt;

/// Which header a problem was found in, by canonical name.
pub type HeaderLabel = &'static str;

/// What is wrong with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The datagram is empty or holds only whitespace.
    Empty,
    /// The message is larger than the configured limit (the limit is given).
    TooLarge(usize),
    /// The message has more header lines than the configured limit (the limit is given).
    TooManyHeaders(usize),
    /// The header section does not end with an empty line. For stream transports this means
    /// "need more bytes".
    Incomplete,
    /// The start line is neither a Request-Line nor a Status-Line.
    BadStartLine,
    /// The method of the Request-Line is not a token.
    BadMethod,
    /// The Request-URI is malformed (contains whitespace, brackets, or bad syntax).
    BadRequestUri,
    /// SIP-Version is not `SIP/2.0` (answer 505).
    VersionNotSupported,
    /// The Status-Code is not three digits in 100..=699.
    BadStatusCode,
    /// A header line has no colon or its name is not a token.
    BadHeaderLine,
    /// A header value does not follow its grammar (the header is named in the error).
    BadHeaderValue,
    /// Content-Length is not a non-negative decimal number.
    BadContentLength,
    /// The body is shorter than Content-Length (for streams: need more bytes).
    BodyTooShort,
    /// Two Content-Length headers with different values.
    ConflictingContentLength,
    /// A header that may appear once appears more than once.
    DuplicateHeader,
    /// A mandatory header (Via, From, To, Call-ID, CSeq) is missing.
    MissingHeader,
    /// A number is out of its range (CSeq or Expires > 2^32-1, Max-Forwards > 255, ...).
    OutOfRange,
    /// The CSeq method differs from the Request-Line method.
    CSeqMethodMismatch,
    /// A stream message has no Content-Length.
    MissingContentLength,
}

/// A parse or validation error with its location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    pub kind: ErrorKind,
    /// Canonical name of the header the problem is in, if it is in a header.
    pub header: Option<HeaderLabel>,
    /// Byte offset in the message where the problem was detected.
    pub offset: usize,
}

impl ParseError {
    pub(crate) fn new(kind: ErrorKind, offset: usize) -> Self {
        ParseError {
            kind,
            header: None,
            offset,
        }
    }

    pub(crate) fn in_header(kind: ErrorKind, header: HeaderLabel, offset: usize) -> Self {
        ParseError {
            kind,
            header: Some(header),
            offset,
        }
    }

    /// The status code a server should answer a request with this error with.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::VersionNotSupported => 505,
            ErrorKind::TooLarge(_) => 513,
            _ => 400,
        }
    }

    /// A short description of the problem, without location.
    pub fn what(&self) -> &'static str {
        match self.kind {
            ErrorKind::Empty => "empty message",
            ErrorKind::TooLarge(_) => "message too large",
            ErrorKind::TooManyHeaders(_) => "too many headers",
            ErrorKind::Incomplete => "header section not terminated",
            ErrorKind::BadStartLine => "malformed start line",
            ErrorKind::BadMethod => "malformed method",
            ErrorKind::BadRequestUri => "malformed Request-URI",
            ErrorKind::VersionNotSupported => "SIP version not supported",
            ErrorKind::BadStatusCode => "malformed status code",
            ErrorKind::BadHeaderLine => "malformed header line",
            ErrorKind::BadHeaderValue => "malformed",
            ErrorKind::BadContentLength => "malformed Content-Length",
            ErrorKind::BodyTooShort => "body shorter than Content-Length",
            ErrorKind::ConflictingContentLength => "conflicting Content-Length headers",
            ErrorKind::DuplicateHeader => "duplicate",
            ErrorKind::MissingHeader => "missing",
            ErrorKind::OutOfRange => "value out of range in",
            ErrorKind::CSeqMethodMismatch => "CSeq method does not match the Request-Line",
            ErrorKind::MissingContentLength => "missing Content-Length on a stream",
        }
    }

    /// A reason phrase for the error response, e.g. `Bad Request (malformed Via at byte 212)`.
    pub fn reason(&self) -> String {
        let base = match self.status() {
            505 => "Version Not Supported",
            513 => "Message Too Large",
            _ => "Bad Request",
        };
        format!("{base} ({self})")
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, self.header) {
            (ErrorKind::TooLarge(limit), _) => {
                write!(f, "message larger than the limit of {limit} bytes")
            }
            (ErrorKind::TooManyHeaders(limit), _) => {
                write!(f, "more than the limit of {limit} header lines")
            }
            (ErrorKind::BadHeaderValue, Some(h))
            | (ErrorKind::DuplicateHeader, Some(h))
            | (ErrorKind::MissingHeader, Some(h))
            | (ErrorKind::OutOfRange, Some(h)) => {
                write!(f, "{} {h} at byte {}", self.what(), self.offset)
            }
            (_, Some(h)) => write!(f, "{} in {h} at byte {}", self.what(), self.offset),
            (_, None) => write!(f, "{} at byte {}", self.what(), self.offset),
        }
    }
}

impl std::error::Error for ParseError {}
