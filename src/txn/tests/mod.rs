//! Tests of the four machines and the table with real messages and explicit times.

mod client;
mod server;
mod table;

use super::{Action, Bytes, Timer};

pub(super) const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnashds8\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Length: 0\r\n\r\n";

/// A request with this method, top Via and To tag (CSeq 314159).
pub(super) fn request(method: &str, via: &str, to_tag: Option<&str>) -> Vec<u8> {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "{method} sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: {via}\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
To: Bob <sip:bob@biloxi.example.com>{to_tag}\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 {method}\r\n\
Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// A response to a request with the given top Via, CSeq method and To tag.
pub(super) fn response(status: u16, via: &str, method: &str, to_tag: Option<&str>) -> Vec<u8> {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "SIP/2.0 {status} Whatever\r\n\
Via: {via}\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
To: Bob <sip:bob@biloxi.example.com>{to_tag}\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 {method}\r\n\
Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

pub(super) fn bytes(b: &[u8]) -> Bytes {
    Bytes::from(b)
}

/// The times and timers of the `Arm` actions.
pub(super) fn arms(actions: &[Action]) -> Vec<(Timer, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Arm(t, at) => Some((*t, *at)),
            _ => None,
        })
        .collect()
}

/// How many `Send` actions.
pub(super) fn sends(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Send(_)))
        .count()
}
