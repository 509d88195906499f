//! What the shared store holds and what nodes tell each other (sans-I/O).
//!
//! - Key: [`KEY_PREFIX`] then the AOR key as the registrar writes it.
//! - Field: the node name. Value: `u8 format (1) | u64 version | u16 length | via |
//!   u16 length | protos | record`: `via` is the node's address (`host:port`, UDP), `protos`
//!   the transport of each of its local sockets (`udp,tcp,tls`), and the record the frame
//!   the local log would hold for the AOR (`crate::store::record`, CRC included). Other
//!   nodes reach a binding behind NAT or over a connection through `via` (RFC 3327 Path with
//!   the RFC 5626 flow token, [`flow_path`]).
//!   The version grows with every change a node writes (milliseconds since the epoch, shifted
//!   left, then counted), so sets of one node can be ordered across its restarts.
//! - A change message on [`CHANNEL`]: `u16 length | node | u16 length | via`, then for
//!   each AOR `u32 length | key | u32 length | value` (length 0: the node holds no binding
//!   of it). A node announces itself with a message of no AOR when it connects, and keeps
//!   its address under [`NODE_PREFIX`]`<node>`: the other nodes take requests from that
//!   address down the flows they hold.

use crate::registrar::Binding;
use crate::store::record::{read_frame, Record};

/// The prefix of every key sipshard writes.
pub const KEY_PREFIX: &[u8] = b"sipshard:aor:";
/// The pattern that finds them.
pub const KEY_PATTERN: &str = "sipshard:aor:*";
/// The channel changes are published on (`:DB` added for a database other than 0: Redis
/// channels are not per database).
pub const CHANNEL: &str = "sipshard:changes";
/// The prefix of the keys that hold each node's address.
pub const NODE_PREFIX: &str = "sipshard:node:";
/// The pattern that finds them.
pub const NODE_PATTERN: &str = "sipshard:node:*";

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

/// A node's value for an AOR: `version`, the node's address and socket transports, and
/// the record `frame`.
pub fn encode(out: &mut Vec<u8>, version: u64, via: &str, protos: &str, frame: &[u8]) {
    out.push(FORMAT);
    out.extend_from_slice(&version.to_le_bytes());
    for s in [via, protos] {
        let n = s.len().min(u16::MAX as usize);
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&s.as_bytes()[..n]);
    }
    out.extend_from_slice(frame);
}

/// What a value says.
#[derive(Debug)]
pub struct Value<'a> {
    pub version: u64,
    pub via: &'a str,
    pub protos: &'a str,
    pub bindings: Vec<Binding>,
    /// Per binding: the node's socket of the connection it registered over.
    pub flows: Vec<Option<u8>>,
}

/// Reads a value (None: not a value this format wrote, or damaged).
pub fn decode(value: &[u8]) -> Option<Value<'_>> {
    if value.first() != Some(&FORMAT) {
        return None;
    }
    let version = u64::from_le_bytes(value.get(1..9)?.try_into().ok()?);
    let mut rest = value.get(9..)?;
    let mut text = || -> Option<&str> {
        let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(rest.get(2..2 + n)?).ok()?;
        rest = &rest[2 + n..];
        Some(s)
    };
    let (via, protos) = (text()?, text()?);
    match read_frame(rest)? {
        Record::Put {
            bindings, flows, ..
        } => Some(Value {
            version,
            via,
            protos,
            bindings,
            flows,
        }),
        Record::Delete { .. } => Some(Value {
            version,
            via,
            protos,
            bindings: Vec::new(),
            flows: Vec::new(),
        }),
        Record::End { .. } => None,
    }
}

/// The bindings of another node's value as this node holds them: those the other node
/// reaches over a flow (behind NAT, over a connection, an RFC 5626 outbound flow) are
/// reached through it, by a Path (RFC 3327) to its address whose flow token (RFC 5626 §5.3,
/// [`crate::nat::flow_token`]) names the flow; the others at their Contact. Bindings that
/// expired by `now_ms` are left out.
pub fn remote_bindings(v: Value<'_>, now_ms: u64) -> Vec<Binding> {
    use crate::registrar::BindingFields;
    use crate::sip::Proto;
    let protos: Vec<Proto> = v
        .protos
        .split(',')
        .map(|p| Proto::parse(p.as_bytes()).unwrap_or(Proto::Udp))
        .collect();
    let mut out = Vec::with_capacity(v.bindings.len());
    for (i, b) in v.bindings.into_iter().enumerate() {
        if b.expires_at_ms() <= now_ms {
            continue;
        }
        let stream = v.flows.get(i).copied().flatten();
        if !(b.behind_nat() || stream.is_some() || b.reg_id().is_some()) {
            out.push(b);
            continue;
        }
        let proto = stream.map_or(Proto::Udp, |s| {
            protos.get(s as usize).copied().unwrap_or(Proto::Tcp)
        });
        let path = flow_path(v.via, proto, b.source());
        let fields = BindingFields {
            contact_uri: b.contact_uri(),
            call_id: b.call_id(),
            cseq: b.cseq(),
            expires_at_ms: b.expires_at_ms(),
            q: b.q(),
            instance: b.instance(),
            reg_id: None,
            source: b.source(),
            nat: false,
            socket: 0,
            stream: false,
            branch_hash: b.branch_hash(),
        };
        let paths = core::iter::once(&path[..]).chain(b.paths());
        if let Ok(r) = Binding::new(&fields, paths) {
            out.push(r);
        }
    }
    out
}

/// The Path value through node `via` to the flow (`proto`, `source`) it holds:
/// `<sip:VIA;lr;ft=FLOW>`.
pub fn flow_path(via: &str, proto: crate::sip::Proto, source: std::net::SocketAddr) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(b"<sip:");
    p.extend_from_slice(via.as_bytes());
    p.extend_from_slice(b";lr;");
    p.extend_from_slice(crate::nat::FLOW_PARAM.as_bytes());
    p.push(b'=');
    crate::sip::proto::write_flow(&mut p, proto, source);
    p.push(b'>');
    p
}

/// The version of a value without reading its bindings.
pub fn version_of(value: &[u8]) -> Option<u64> {
    (value.first() == Some(&FORMAT))
        .then(|| Some(u64::from_le_bytes(value.get(1..9)?.try_into().ok()?)))?
}

/// A change message: starts it with the sending node's name and address.
pub fn message_start(out: &mut Vec<u8>, node: &str, via: &str) {
    out.clear();
    for s in [node, via] {
        let n = s.len().min(u16::MAX as usize);
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&s.as_bytes()[..n]);
    }
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

/// A change message as read.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub node: &'a str,
    pub via: &'a str,
    pub changes: Vec<Change<'a>>,
}

/// Reads a change message (None: damaged).
pub fn read_message(msg: &[u8]) -> Option<Message<'_>> {
    let mut rest = msg;
    let mut text = || -> Option<&str> {
        let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(rest.get(2..2 + n)?).ok()?;
        rest = &rest[2 + n..];
        Some(s)
    };
    let (node, via) = (text()?, text()?);
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
    Some(Message { node, via, changes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::BindingFields;

    fn frame(aor: &[u8], contact: &[u8]) -> Vec<u8> {
        let source = "127.0.0.1:5070".parse().unwrap();
        let b = Binding::new(
            &BindingFields::plain(contact, source, 9_000),
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
        encode(&mut v, 42, "192.0.2.1:5060", "udp,tcp", &f);
        let d = decode(&v).unwrap();
        assert_eq!(
            (d.version, d.via, d.protos),
            (42, "192.0.2.1:5060", "udp,tcp")
        );
        assert_eq!(d.bindings[0].contact_uri(), b"sip:alice@127.0.0.1:5070");
        assert_eq!(d.flows, [None]);
        assert_eq!(version_of(&v), Some(42));
        // Damaged or foreign values do not read.
        assert!(decode(&v[..v.len() - 1]).is_none());
        assert!(decode(b"hello").is_none());

        let mut gone = Vec::new();
        removal(&mut gone, 43);
        let mut m = Vec::new();
        message_start(&mut m, "node-a", "192.0.2.1:5060");
        message_add(&mut m, b"sip:alice@example.com", &v);
        message_add(&mut m, b"sip:bob@example.com", &gone);
        let read = read_message(&m).unwrap();
        assert_eq!((read.node, read.via), ("node-a", "192.0.2.1:5060"));
        assert_eq!(
            read.changes,
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
            assert!(r.is_none() || r.unwrap().changes.len() < 2, "cut at {cut}");
        }
        assert_eq!(key(b"sip:a@b"), b"sipshard:aor:sip:a@b");
        assert_eq!(aor_of(b"sipshard:aor:sip:a@b"), Some(&b"sip:a@b"[..]));
        assert_eq!(aor_of(b"other"), None);
    }

    /// Another node's bindings reached over its flows (NAT, a connection) go through it:
    /// a Path to its address naming the flow; the others stay reached at their Contact.
    #[test]
    fn flows_of_another_node_are_reached_through_it() {
        let mk = |contact: &[u8], nat: bool, stream: bool, socket: u16| {
            let source = "198.51.100.2:40000".parse().unwrap();
            let fields = BindingFields {
                nat,
                socket,
                stream,
                ..BindingFields::plain(contact, source, 9_000)
            };
            Binding::new(&fields, std::iter::empty()).unwrap()
        };
        let set = [
            mk(b"sip:a@10.0.0.1", true, false, 0),
            mk(b"sip:b@10.0.0.2;transport=tls", true, true, 2),
            mk(b"sip:c@203.0.113.5", false, false, 0),
        ];
        let mut frame = Vec::new();
        crate::store::record::write_aor(&mut frame, b"sip:x@d", &set);
        let mut v = Vec::new();
        encode(&mut v, 7, "192.0.2.1:5060", "udp,tcp,tls", &frame);
        let got = remote_bindings(decode(&v).unwrap(), 1_000);
        let paths: Vec<Vec<&[u8]>> = got.iter().map(|b| b.paths().collect()).collect();
        assert_eq!(
            paths[0],
            [&b"<sip:192.0.2.1:5060;lr;ft=198.51.100.2:40000>"[..]]
        );
        assert_eq!(
            paths[1],
            [&b"<sip:192.0.2.1:5060;lr;ft=tls:198.51.100.2:40000>"[..]]
        );
        assert!(paths[2].is_empty());
        assert!(got.iter().all(|b| !b.reached_by_flow()));
        // Expired ones are left out.
        assert!(remote_bindings(decode(&v).unwrap(), 9_000).is_empty());
    }
}
