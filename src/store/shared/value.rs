//! What the shared store holds and what nodes tell each other (sans-I/O).
//!
//! - Key: [`KEY_PREFIX`] then the AOR key as the registrar writes it.
//! - Field: the node name. Value: `u8 format (1) | u64 version | record`, the record being
//!   the frame the local log would hold for the AOR (`crate::store::record`, CRC included).
//!   The version grows with every change a node writes (milliseconds since the epoch, shifted
//!   left, then counted), so sets of one node can be ordered across its restarts.
//! - A change message on [`CHANNEL`]: `u16 length | node`, then for each AOR
//!   `u32 length | key | u32 length | value` (length 0: the node holds no binding of it).

use crate::registrar::Binding;
use crate::store::record::{read_frame, Record};

/// The prefix of every key sipshard writes.
pub const KEY_PREFIX: &[u8] = b"sipshard:aor:";
/// The pattern that finds them.
pub const KEY_PATTERN: &str = "sipshard:aor:*";
/// The channel changes are published on.
pub const CHANNEL: &str = "sipshard:changes";

const FORMAT: u8 = 1;

/// The store key of an AOR.
pub fn key(aor: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(KEY_PREFIX.len() + aor.len());
    k.extend_from_slice(KEY_PREFIX);
    k.extend_from_slice(aor);
    k
}

/// The AOR of a store key (None: not one of ours).
pub fn aor_of(key: &[u8]) -> Option<&[u8]> {
    key.strip_prefix(KEY_PREFIX)
}

/// A node's value for an AOR: `version` and the record `frame`.
pub fn encode(out: &mut Vec<u8>, version: u64, frame: &[u8]) {
    out.push(FORMAT);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(frame);
}

/// The version and bindings of a value (None: not a value this format wrote, or damaged).
pub fn decode(value: &[u8]) -> Option<(u64, Vec<Binding>)> {
    if value.first() != Some(&FORMAT) {
        return None;
    }
    let version = u64::from_le_bytes(value.get(1..9)?.try_into().ok()?);
    match read_frame(value.get(9..)?)? {
        Record::Put { bindings, .. } => Some((version, bindings)),
        Record::Delete { .. } => Some((version, Vec::new())),
        Record::End { .. } => None,
    }
}

/// The version of a value without reading its bindings.
pub fn version_of(value: &[u8]) -> Option<u64> {
    (value.first() == Some(&FORMAT))
        .then(|| Some(u64::from_le_bytes(value.get(1..9)?.try_into().ok()?)))?
}

/// A change message: starts it with the sending node's name.
pub fn message_start(out: &mut Vec<u8>, node: &str) {
    out.clear();
    let n = node.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&node.as_bytes()[..n]);
}

/// Adds an AOR to a change message: its value, or none (the node holds no binding of it:
/// `version` alone, so that the removal is ordered with the node's other changes).
pub fn message_add(out: &mut Vec<u8>, aor: &[u8], value: &[u8]) {
    out.extend_from_slice(&(aor.len() as u32).to_le_bytes());
    out.extend_from_slice(aor);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// A removal's value: the format byte and the version, no record.
pub fn removal(out: &mut Vec<u8>, version: u64) {
    out.push(FORMAT);
    out.extend_from_slice(&version.to_le_bytes());
}

/// The next `u32 length | bytes` of `rest`.
fn take_u32_prefixed<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let b = rest.get(4..4usize.checked_add(len)?)?;
    *rest = &rest[4 + len..];
    Some(b)
}

/// One AOR of a change message.
#[derive(Debug, PartialEq, Eq)]
pub struct Change<'a> {
    pub aor: &'a [u8],
    pub version: u64,
    /// None: removed.
    pub value: Option<&'a [u8]>,
}

/// Reads a change message: the sending node and its changes (None: damaged).
pub fn read_message(msg: &[u8]) -> Option<(&str, Vec<Change<'_>>)> {
    let n = u16::from_le_bytes(msg.get(..2)?.try_into().ok()?) as usize;
    let node = std::str::from_utf8(msg.get(2..2 + n)?).ok()?;
    let mut rest = &msg[2 + n..];
    let mut changes = Vec::new();
    while !rest.is_empty() {
        let aor = take_u32_prefixed(&mut rest)?;
        let value = take_u32_prefixed(&mut rest)?;
        let version = version_of(value)?;
        changes.push(Change {
            aor,
            version,
            value: (value.len() > 9).then_some(value),
        });
    }
    Some((node, changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::BindingFields;

    fn frame(aor: &[u8], contact: &[u8]) -> Vec<u8> {
        let b = Binding::new(
            &BindingFields {
                contact_uri: contact,
                call_id: b"c1",
                cseq: 2,
                expires_at_ms: 9_000,
                q: 1000,
                instance: None,
                reg_id: None,
                source: "127.0.0.1:5070".parse().unwrap(),
                nat: false,
                socket: 0,
                stream: false,
                branch_hash: 0,
            },
            std::iter::empty(),
        )
        .unwrap();
        let mut out = Vec::new();
        crate::store::record::write_aor(&mut out, aor, &[b]);
        out
    }

    #[test]
    fn values_and_messages_read_back() {
        let f = frame(b"sip:alice@example.com", b"sip:alice@127.0.0.1:5070");
        let mut v = Vec::new();
        encode(&mut v, 42, &f);
        let (version, bindings) = decode(&v).unwrap();
        assert_eq!(version, 42);
        assert_eq!(bindings[0].contact_uri(), b"sip:alice@127.0.0.1:5070");
        assert_eq!(version_of(&v), Some(42));
        // Damaged or foreign values do not read.
        assert!(decode(&v[..v.len() - 1]).is_none());
        assert!(decode(b"hello").is_none());

        let mut gone = Vec::new();
        removal(&mut gone, 43);
        let mut m = Vec::new();
        message_start(&mut m, "node-a");
        message_add(&mut m, b"sip:alice@example.com", &v);
        message_add(&mut m, b"sip:bob@example.com", &gone);
        let (node, changes) = read_message(&m).unwrap();
        assert_eq!(node, "node-a");
        assert_eq!(
            changes,
            vec![
                Change {
                    aor: b"sip:alice@example.com",
                    version: 42,
                    value: Some(&v[..])
                },
                Change {
                    aor: b"sip:bob@example.com",
                    version: 43,
                    value: None
                }
            ]
        );
        // A message cut anywhere is refused, never read past its end.
        for cut in 0..m.len() {
            let r = read_message(&m[..cut]);
            assert!(r.is_none() || r.unwrap().1.len() < 2, "cut at {cut}");
        }
        assert_eq!(key(b"sip:a@b"), b"sipshard:aor:sip:a@b");
        assert_eq!(aor_of(b"sipshard:aor:sip:a@b"), Some(&b"sip:a@b"[..]));
        assert_eq!(aor_of(b"other"), None);
    }
}
