//! Transaction keys: matching requests to server transactions (RFC 3261 §17.2.3) and
//! responses to client transactions (§17.1.3).
//!
//! A key is the exact bytes of the matching fields, concatenated into one owned byte string
//! (`Box<[u8]>`, 16 bytes inline plus typically 40-90 bytes on the heap). Storing the bytes
//! rather than a 64/128-bit hash makes collisions impossible: two keys are equal exactly when
//! the RFC's fields are equal, so a crafted request can never hijack another transaction. The
//! hash map hashes these bytes with its (randomly seeded) default hasher. Fields are joined
//! with NUL, which none of them can contain (they are tokens, hosts, URIs or header values),
//! and every key starts with a byte naming its kind, so keys of different kinds never meet.
//!
//! - RFC 3261 server key (branch starts with `z9hG4bK`): branch, sent-by host (ASCII
//!   lowercased) and port (as written, 0 when absent), and the method with ACK mapped to
//!   INVITE; CANCEL keeps its own method, so it gets its own transaction, and
//!   [`invite_key_for_cancel`] gives the key of the INVITE it targets (§9.2).
//! - RFC 2543 server key (no magic cookie): Request-URI, To tag, From tag, Call-ID, CSeq
//!   number, the method (ACK mapped to INVITE) and the whole top Via value. The ACK of a
//!   non-2xx final response carries the To tag the server added; the table also tries the key
//!   without it ([`ServerKey::for_request_without_to_tag`]) and checks that tag itself.
//! - Client key: the branch of the top Via (the one this element added) and the CSeq method.
//!
//! Lookups write a key into a reused buffer and search the maps by `&[u8]` (both key types
//! borrow as bytes), so matching a request or response allocates nothing; only a new
//! transaction's key is boxed, once, at its exact size.

use crate::sip::header_name::HeaderName;
use crate::sip::scan::CommaSplit;
use crate::sip::{Message, Method};

/// Why a message yields no transaction key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// A request was expected.
    NotARequest,
    /// A response was expected.
    NotAResponse,
    /// No parsable top Via.
    Via,
    /// The top Via has no branch (client side: every request we send has one).
    Branch,
    /// No parsable CSeq.
    CSeq,
    /// No parsable Call-ID.
    CallId,
    /// No parsable From.
    From,
    /// No parsable To.
    To,
}

const KIND_RFC3261: u8 = 1;
const KIND_RFC2543: u8 = 2;
const KIND_CLIENT: u8 = 3;

/// The key of a server transaction; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey(Box<[u8]>);

/// The key of a client transaction: top Via branch and CSeq method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey(Box<[u8]>);

/// The method a request is matched under: ACK matches the INVITE transaction (§17.2.3).
fn match_method<'a>(msg: &Message<'a>) -> Result<&'a [u8], KeyError> {
    match msg.method() {
        None => Err(KeyError::NotARequest),
        Some(Method::Ack) => Ok(b"INVITE"),
        Some(_) => msg.method_bytes().ok_or(KeyError::NotARequest),
    }
}

/// The first value of the first Via line, as written.
fn top_via_raw<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    let line = msg.header(HeaderName::Via)?;
    CommaSplit::new(line).next().map(|(_, v)| v)
}

impl core::borrow::Borrow<[u8]> for ServerKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl core::borrow::Borrow<[u8]> for ClientKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl ServerKey {
    /// The key of the transaction a request belongs to (ACK: the INVITE's).
    pub fn for_request(msg: &Message<'_>) -> Result<ServerKey, KeyError> {
        let mut k = Vec::new();
        Self::write_for_request(msg, &mut k)?;
        Ok(ServerKey::from_bytes(&k))
    }

    /// Writes the bytes of [`ServerKey::for_request`] into `k` (cleared first).
    pub fn write_for_request(msg: &Message<'_>, k: &mut Vec<u8>) -> Result<(), KeyError> {
        let method = match_method(msg)?;
        Self::write(msg, method, true, k)
    }

    /// A key from bytes written by one of the `write_` functions.
    pub fn from_bytes(k: &[u8]) -> ServerKey {
        ServerKey(k.into())
    }

    /// The RFC 2543 key of a request with its To tag left out: how the ACK of a non-2xx
    /// response (whose To tag the server chose) finds an INVITE that had no To tag.
    /// `None` for requests with an RFC 3261 branch, whose key has no To tag anyway.
    pub fn for_request_without_to_tag(msg: &Message<'_>) -> Result<Option<ServerKey>, KeyError> {
        let method = match_method(msg)?;
        let via = msg.top_via().map_err(|_| KeyError::Via)?;
        if via.has_rfc3261_branch() {
            return Ok(None);
        }
        Self::build(msg, method, false).map(Some)
    }

    /// True for RFC 3261 keys (branch with the magic cookie).
    pub fn is_rfc3261(&self) -> bool {
        self.0.first() == Some(&KIND_RFC3261)
    }

    /// Bytes held, inline and on the heap.
    pub fn bytes(&self) -> usize {
        core::mem::size_of::<Self>() + self.0.len()
    }

    fn build(msg: &Message<'_>, method: &[u8], with_to_tag: bool) -> Result<ServerKey, KeyError> {
        let mut k = Vec::new();
        Self::write(msg, method, with_to_tag, &mut k)?;
        Ok(ServerKey::from_bytes(&k))
    }

    fn write(
        msg: &Message<'_>,
        method: &[u8],
        with_to_tag: bool,
        k: &mut Vec<u8>,
    ) -> Result<(), KeyError> {
        let via = msg.top_via().map_err(|_| KeyError::Via)?;
        k.clear();
        if via.has_rfc3261_branch() {
            let branch = via.branch().unwrap_or_default();
            let port = via.port.unwrap_or(0);
            k.push(KIND_RFC3261);
            k.extend_from_slice(&port.to_be_bytes());
            k.extend_from_slice(method);
            k.push(0);
            k.extend_from_slice(branch);
            k.push(0);
            k.extend(via.host.iter().map(u8::to_ascii_lowercase));
        } else {
            let uri = msg.request_uri_bytes().ok_or(KeyError::NotARequest)?;
            let to = msg.to().map_err(|_| KeyError::To)?;
            let from = msg.from().map_err(|_| KeyError::From)?;
            let call_id = msg.call_id().map_err(|_| KeyError::CallId)?;
            let cseq = msg.cseq().map_err(|_| KeyError::CSeq)?;
            let top = top_via_raw(msg).ok_or(KeyError::Via)?;
            k.push(KIND_RFC2543);
            k.extend_from_slice(&cseq.seq.to_be_bytes());
            for part in [
                method,
                uri,
                if with_to_tag {
                    to.tag().unwrap_or_default()
                } else {
                    b""
                },
                from.tag().unwrap_or_default(),
                call_id,
                top,
            ] {
                k.extend_from_slice(part);
                k.push(0);
            }
        }
        Ok(())
    }
}

/// The key of the INVITE server transaction a CANCEL targets (§9.2: same matching as for
/// the INVITE, with the method INVITE).
pub fn invite_key_for_cancel(cancel: &Message<'_>) -> Result<ServerKey, KeyError> {
    let mut k = Vec::new();
    write_invite_key_for_cancel(cancel, &mut k)?;
    Ok(ServerKey::from_bytes(&k))
}

/// Writes the bytes of [`invite_key_for_cancel`] into `k`.
pub fn write_invite_key_for_cancel(cancel: &Message<'_>, k: &mut Vec<u8>) -> Result<(), KeyError> {
    if cancel.method().is_none() {
        return Err(KeyError::NotARequest);
    }
    ServerKey::write(cancel, b"INVITE", true, k)
}

impl ClientKey {
    /// A key from the branch of the Via this element added and the request method.
    pub fn new(branch: &[u8], method: &[u8]) -> ClientKey {
        let mut k = Vec::with_capacity(2 + branch.len() + method.len());
        Self::write(branch, method, &mut k);
        ClientKey(k.into_boxed_slice())
    }

    /// The key bytes: kind, method, NUL, branch (`k` cleared first).
    fn write(branch: &[u8], method: &[u8], k: &mut Vec<u8>) {
        k.clear();
        k.push(KIND_CLIENT);
        k.extend_from_slice(method);
        k.push(0);
        k.extend_from_slice(branch);
    }

    /// The key of a request this element sends (top Via branch, CSeq method).
    pub fn for_request(msg: &Message<'_>) -> Result<ClientKey, KeyError> {
        if !msg.is_request() {
            return Err(KeyError::NotARequest);
        }
        Self::from_message(msg)
    }

    /// The key of the client transaction a response belongs to (§17.1.3).
    pub fn for_response(msg: &Message<'_>) -> Result<ClientKey, KeyError> {
        if msg.is_request() {
            return Err(KeyError::NotAResponse);
        }
        Self::from_message(msg)
    }

    /// Writes the bytes of [`ClientKey::for_response`] into `k` (cleared first).
    pub fn write_for_response(msg: &Message<'_>, k: &mut Vec<u8>) -> Result<(), KeyError> {
        if msg.is_request() {
            return Err(KeyError::NotAResponse);
        }
        let (branch, method) = Self::fields(msg)?;
        Self::write(branch, method, k);
        Ok(())
    }

    fn from_message(msg: &Message<'_>) -> Result<ClientKey, KeyError> {
        let (branch, method) = Self::fields(msg)?;
        Ok(Self::new(branch, method))
    }

    /// The matching fields of §17.1.3: top Via branch and CSeq method.
    fn fields<'a>(msg: &Message<'a>) -> Result<(&'a [u8], &'a [u8]), KeyError> {
        let via = msg.top_via().map_err(|_| KeyError::Via)?;
        let branch = via.branch().ok_or(KeyError::Branch)?;
        let cseq = msg.cseq().map_err(|_| KeyError::CSeq)?;
        Ok((branch, cseq.method))
    }

    /// True if the transaction is an INVITE client transaction.
    pub fn is_invite(&self) -> bool {
        self.0.get(1..8) == Some(&b"INVITE\0"[..])
    }

    /// Bytes held, inline and on the heap.
    pub fn bytes(&self) -> usize {
        core::mem::size_of::<Self>() + self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, via: &str, extra: &str) -> Vec<u8> {
        format!(
            "{method} sip:bob@example.com SIP/2.0\r\nVia: {via}\r\n\
             From: <sip:alice@example.com>;tag=f1\r\nTo: <sip:bob@example.com>{extra}\r\n\
             Call-ID: c1@h\r\nCSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn skey(raw: &[u8]) -> ServerKey {
        ServerKey::for_request(&Message::parse(raw).unwrap()).unwrap()
    }

    const VIA: &str = "SIP/2.0/UDP pc.example.com:5060;branch=z9hG4bK776";

    #[test]
    fn rfc3261_branch_sent_by_and_method() {
        let invite = skey(&req("INVITE", VIA, ""));
        assert!(invite.is_rfc3261());
        // A retransmission matches, whatever else changed outside the key.
        assert_eq!(invite, skey(&req("INVITE", VIA, ";tag=x")));
        // Sent-by host is compared case-insensitively, port and branch exactly.
        let upper = "SIP/2.0/UDP PC.Example.COM:5060;branch=z9hG4bK776";
        assert_eq!(invite, skey(&req("INVITE", upper, "")));
        let other_port = "SIP/2.0/UDP pc.example.com:5070;branch=z9hG4bK776";
        assert_ne!(invite, skey(&req("INVITE", other_port, "")));
        let no_port = "SIP/2.0/UDP pc.example.com;branch=z9hG4bK776";
        assert_ne!(invite, skey(&req("INVITE", no_port, "")));
        let other_host = "SIP/2.0/UDP pc2.example.com:5060;branch=z9hG4bK776";
        assert_ne!(invite, skey(&req("INVITE", other_host, "")));
        let other_branch = "SIP/2.0/UDP pc.example.com:5060;branch=z9hG4bK777";
        assert_ne!(invite, skey(&req("INVITE", other_branch, "")));
        // Same branch, other method: another transaction.
        assert_ne!(invite, skey(&req("OPTIONS", VIA, "")));
    }

    #[test]
    fn ack_matches_invite_cancel_does_not() {
        let invite = skey(&req("INVITE", VIA, ""));
        assert_eq!(invite, skey(&req("ACK", VIA, ";tag=totag")));
        let cancel_raw = req("CANCEL", VIA, "");
        let cancel = skey(&cancel_raw);
        assert_ne!(invite, cancel);
        let target = invite_key_for_cancel(&Message::parse(&cancel_raw).unwrap()).unwrap();
        assert_eq!(target, invite);
    }

    #[test]
    fn rfc2543_fallback() {
        let via = "SIP/2.0/UDP old.example.com:5060";
        let invite = skey(&req("INVITE", via, ""));
        assert!(!invite.is_rfc3261());
        assert_eq!(invite, skey(&req("INVITE", via, "")));
        // A branch without the cookie is not used for matching alone.
        let via_b = "SIP/2.0/UDP old.example.com:5060;branch=1234";
        assert_ne!(invite, skey(&req("INVITE", via_b, "")));
        // Each field counts.
        let raw = req("INVITE", via, "");
        let s = String::from_utf8(raw).unwrap();
        for (from, to) in [
            ("sip:bob@example.com SIP", "sip:carol@example.com SIP"),
            ("tag=f1", "tag=f2"),
            ("c1@h", "c2@h"),
            ("CSeq: 7", "CSeq: 8"),
            ("old.example.com", "old2.example.com"),
        ] {
            let changed = s.replacen(from, to, 1);
            assert_ne!(invite, skey(changed.as_bytes()), "{from}");
        }
        // Only the top Via value counts, whether further values share its line or not.
        let two_on_a_line = format!("{via}, SIP/2.0/UDP second.example.com");
        let split = format!("{via}\r\nVia: SIP/2.0/UDP third.example.com");
        assert_eq!(invite, skey(&req("INVITE", &two_on_a_line, "")));
        assert_eq!(invite, skey(&req("INVITE", &split, "")));
        // The ACK carries the To tag of the response: it matches only without it.
        let ack_raw = req("ACK", via, ";tag=ours");
        let ack = Message::parse(&ack_raw).unwrap();
        assert_ne!(invite, ServerKey::for_request(&ack).unwrap());
        assert_eq!(
            Some(invite.clone()),
            ServerKey::for_request_without_to_tag(&ack).unwrap()
        );
        // CANCEL: its own transaction, targeting the INVITE.
        let cancel_raw = req("CANCEL", via, "");
        let cancel = Message::parse(&cancel_raw).unwrap();
        assert_ne!(invite, ServerKey::for_request(&cancel).unwrap());
        assert_eq!(invite, invite_key_for_cancel(&cancel).unwrap());
    }

    #[test]
    fn client_keys() {
        let raw = req("INVITE", "SIP/2.0/UDP proxy:5060;branch=z9hG4bKp1", "");
        let k = ClientKey::for_request(&Message::parse(&raw).unwrap()).unwrap();
        assert!(k.is_invite());
        assert_eq!(k, ClientKey::new(b"z9hG4bKp1", b"INVITE"));
        assert_ne!(k, ClientKey::new(b"z9hG4bKp1", b"CANCEL"));
        assert!(!ClientKey::new(b"z9hG4bKp1", b"CANCEL").is_invite());
        let resp = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP proxy:5060;branch=z9hG4bKp1\r\n\
Via: SIP/2.0/UDP pc:5060;branch=z9hG4bKu\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\n\
Call-ID: c\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(resp).unwrap();
        assert_eq!(ClientKey::for_response(&m).unwrap(), k);
        assert_eq!(ClientKey::for_request(&m), Err(KeyError::NotARequest));
        assert_eq!(
            ServerKey::for_request(&m).unwrap_err(),
            KeyError::NotARequest
        );
    }
}
