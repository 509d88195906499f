//! The SIP message layer (RFC 3261 §7, §19, §20, §25): a zero-copy parser whose messages are
//! offsets into the received bytes, URIs, typed header accessors parsed on demand, and a writer
//! that builds responses and forwards requests by splicing edits into the original bytes.
//!
//! ```
//! use sipshard::sip::Message;
//! let raw = b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
//! From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\n\
//! CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
//! let msg = Message::parse(raw).unwrap();
//! assert_eq!(msg.top_via().unwrap().branch(), Some(&b"z9hG4bK1"[..]));
//! assert_eq!(msg.cseq().unwrap().seq, 1);
//! ```

pub mod error;
pub mod header_name;
pub mod headers;
pub mod message;
pub mod method;
#[cfg(test)]
pub(crate) mod mutate;
pub mod proto;
pub mod scan;
mod simd;
pub mod uri;
pub mod write;

pub use error::{ErrorKind, ParseError};
pub use header_name::HeaderName;
pub use headers::{AuthHeader, CSeq, ContactValue, DigestParams, NameAddr, Via};
pub use message::{Framing, Limits, Message, Span, StartLine};
pub use method::Method;
pub use proto::{Local, Proto};
pub use uri::{HostKind, Scheme, Uri};
