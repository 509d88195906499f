//! The records of the binding store (sans-I/O): what a shard's registrar appends when an AOR's
//! bindings change, and how a log or snapshot is read back.
//!
//! A record says what an AOR holds now, not what changed: `Put` carries its whole binding set
//! (AORs hold one to a few bindings), `Delete` says it holds none. Replaying a log is keeping
//! the last record of each AOR, so a record applied twice is harmless and a snapshot is the
//! last record of every AOR. Expiry is not logged: each binding carries its expiry on the
//! server's clock (Unix milliseconds), and what has expired is dropped when read.
//!
//! Framing: `u32 length | u32 CRC-32 of the payload | payload`, little endian. A length past
//! the end or a wrong CRC ends the readable part (a torn tail: a crash mid-write, a full
//! disk). A file starts with [`MAGIC`]; a snapshot ends with an `End` record counting its
//! records, so a snapshot cut short is told from a complete one.

use crate::registrar::{Binding, BindingFields};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The first bytes of every log segment and snapshot.
pub const MAGIC: &[u8; 8] = b"sipshrd1";

const PUT: u8 = 1;
const DELETE: u8 = 2;
const END: u8 = 3;
const FRAME: usize = 8;

/// One record as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// The AOR `key` holds exactly `bindings`; `flows[i]` is the local socket of the
    /// connection binding `i` registered over (None: not over a connection). Bindings are
    /// read as reached at their Contact (a connection does not outlive its process); the
    /// shared store tells other nodes to reach such bindings through this one.
    Put {
        key: &'a [u8],
        bindings: Vec<Binding>,
        flows: Vec<Option<u8>>,
    },
    /// The AOR `key` holds no binding.
    Delete { key: &'a [u8] },
    /// The end of a snapshot of `records` records.
    End { records: u64 },
}

fn frame(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; FRAME]);
    write(out);
    let payload = &out[at + FRAME..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Keys and binding fields are at most 64 KiB (`Binding` holds u16 lengths; keys come
    // from datagrams).
    let n = b.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&b[..n]);
}

/// Appends the record "AOR `key` holds `bindings`" (`Delete` when there are none).
pub fn write_aor(out: &mut Vec<u8>, key: &[u8], bindings: &[Binding]) {
    frame(out, |out| {
        if bindings.is_empty() {
            out.push(DELETE);
            put_bytes(out, key);
            return;
        }
        out.push(PUT);
        put_bytes(out, key);
        out.extend_from_slice(&(bindings.len().min(u16::MAX as usize) as u16).to_le_bytes());
        for b in bindings.iter().take(u16::MAX as usize) {
            out.extend_from_slice(&b.expires_at_ms().to_le_bytes());
            out.extend_from_slice(&b.cseq().to_le_bytes());
            out.extend_from_slice(&b.reg_id().unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&b.branch_hash().to_le_bytes());
            out.extend_from_slice(&b.q().to_le_bytes());
            let src = b.source();
            out.extend_from_slice(&src.port().to_le_bytes());
            let (ip, v4) = match src.ip() {
                IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), true),
                IpAddr::V6(v6) => (v6.octets(), false),
            };
            out.extend_from_slice(&ip);
            // A binding over a connection is not restored as a flow (the connection is gone
            // with the process): it is reached at its Contact, over the transport it names.
            let flow = b.behind_nat() && !b.over_stream();
            let stream = b.over_stream();
            out.push(u8::from(v4) | u8::from(flow) << 1 | u8::from(stream) << 2);
            if stream {
                out.push(b.socket().min(u16::from(u8::MAX)) as u8);
            }
            put_bytes(out, b.contact_uri());
            put_bytes(out, b.call_id());
            put_bytes(out, b.instance().unwrap_or_default());
            out.extend_from_slice(&(b.paths().count() as u16).to_le_bytes());
            for p in b.paths() {
                put_bytes(out, p);
            }
        }
    });
}

/// Appends the end record of a snapshot of `records` records.
pub fn write_end(out: &mut Vec<u8>, records: u64) {
    frame(out, |out| {
        out.push(END);
        out.extend_from_slice(&records.to_le_bytes());
    });
}

/// A cursor over a payload; every read fails (None) past its end.
struct Payload<'a> {
    b: &'a [u8],
}

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

fn decode(payload: &[u8]) -> Option<Record<'_>> {
    let mut p = Payload { b: payload };
    let record = match p.u8()? {
        PUT => {
            let key = p.bytes()?;
            let n = p.u16()?;
            let mut bindings = Vec::with_capacity(n as usize);
            let mut flows = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let expires_at_ms = p.u64()?;
                let cseq = p.u32()?;
                let reg_id = p.u32()?;
                let branch_hash = p.u32()?;
                let q = p.u16()?;
                let port = p.u16()?;
                let ip: [u8; 16] = p.take(16)?.try_into().ok()?;
                let flags = p.u8()?;
                flows.push(if flags & 4 != 0 { Some(p.u8()?) } else { None });
                let ip6 = Ipv6Addr::from(ip);
                let ip = match (flags & 1 != 0, ip6.to_ipv4_mapped()) {
                    (true, Some(v4)) => IpAddr::V4(v4),
                    _ => IpAddr::V6(ip6),
                };
                let contact_uri = p.bytes()?;
                let call_id = p.bytes()?;
                let instance = p.bytes()?;
                let mut paths = Vec::new();
                for _ in 0..p.u16()? {
                    paths.push(p.bytes()?);
                }
                let fields = BindingFields {
                    contact_uri,
                    call_id,
                    cseq,
                    expires_at_ms,
                    q,
                    instance: (!instance.is_empty()).then_some(instance),
                    reg_id: (reg_id != 0).then_some(reg_id),
                    source: SocketAddr::new(ip, port),
                    nat: flags & 2 != 0,
                    socket: 0,
                    stream: false,
                    branch_hash,
                };
                bindings.push(Binding::new(&fields, paths.iter().copied()).ok()?);
            }
            Record::Put {
                key,
                bindings,
                flows,
            }
        }
        DELETE => Record::Delete { key: p.bytes()? },
        END => Record::End { records: p.u64()? },
        _ => return None,
    };
    // A record with bytes left over is not one we wrote.
    p.b.is_empty().then_some(record)
}

/// The records in `bytes` as a registrar journals them (whole frames, no [`MAGIC`]): each
/// AOR key with its frame (None for a `Delete`). Stops at the first frame that does not
/// parse (they come from this process's memory: none should).
pub fn frames(bytes: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    let mut rest = bytes;
    core::iter::from_fn(move || loop {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let frame = rest.get(..FRAME.checked_add(len)?)?;
        rest = &rest[frame.len()..];
        let payload = &frame[FRAME..];
        let kind = *payload.first()?;
        if kind != PUT && kind != DELETE {
            continue;
        }
        let n = u16::from_le_bytes(payload.get(1..3)?.try_into().ok()?) as usize;
        let key = payload.get(3..3 + n)?;
        return Some((key, (kind == PUT).then_some(frame)));
    })
}

/// Reads one frame written by [`write_aor`] (checksum included).
pub fn read_frame(frame: &[u8]) -> Option<Record<'_>> {
    Reader {
        file: frame,
        pos: 0,
        torn: false,
    }
    .next()
}

/// True when every byte of `b` is zero (a preallocated tail). OR-folds 4 KiB at a time,
/// which the compiler vectorizes (no early exit inside a chunk).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// Reads the records of a log segment or snapshot (`file`, [`MAGIC`] included).
pub struct Reader<'a> {
    file: &'a [u8],
    pos: usize,
    torn: bool,
}

impl<'a> Reader<'a> {
    /// None if `file` does not start with [`MAGIC`] (empty: a segment created but never
    /// written reads as no records).
    pub fn new(file: &'a [u8]) -> Option<Reader<'a>> {
        if file.is_empty() {
            return Some(Reader {
                file,
                pos: 0,
                torn: false,
            });
        }
        file.starts_with(MAGIC).then_some(Reader {
            file,
            pos: MAGIC.len(),
            torn: false,
        })
    }

    /// Where the readable part ends so far (after the last record read whole).
    pub fn valid_len(&self) -> usize {
        self.pos.max(MAGIC.len().min(self.file.len()))
    }

    /// True when reading stopped at a record that was cut or altered (bytes remain after
    /// [`Reader::valid_len`]).
    pub fn torn(&self) -> bool {
        self.torn
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.torn || self.pos >= self.file.len() {
            return None;
        }
        let rest = &self.file[self.pos..];
        // The writer fills a segment with zeros ahead of its records (so that appending
        // allocates nothing and `fdatasync` writes no metadata): an empty frame with a zero
        // CRC followed by nothing but zeros is where the records end, not a torn record.
        if rest.len() >= FRAME && rest[..FRAME] == [0; FRAME] && is_zero(rest) {
            self.file = &self.file[..self.pos];
            return None;
        }
        let ok = (|| {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let crc = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
            let payload = rest.get(FRAME..FRAME.checked_add(len)?)?;
            (crc32fast::hash(payload) == crc).then_some(())?;
            Some((decode(payload)?, FRAME + len))
        })();
        match ok {
            Some((record, n)) => {
                self.pos += n;
                Some(record)
            }
            None => {
                self.torn = true;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(uri: &str, expires: u64, paths: &[&[u8]]) -> Binding {
        Binding::new(
            &BindingFields {
                contact_uri: uri.as_bytes(),
                call_id: b"reg-1@host",
                cseq: 7,
                expires_at_ms: expires,
                q: 500,
                instance: Some(b"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"),
                reg_id: Some(1),
                source: "[2001:db8::1]:5062".parse().unwrap(),
                nat: true,
                socket: 0,
                stream: false,
                branch_hash: 0xdead_beef,
            },
            paths.iter().copied(),
        )
        .unwrap()
    }

    fn log() -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let a = binding("sip:alice@192.0.2.1:5060", 1_000, &[b"<sip:edge;lr>"]);
        let b = Binding::new(
            &BindingFields {
                contact_uri: b"sip:bob@10.0.0.2",
                call_id: b"c",
                cseq: 1,
                expires_at_ms: 2_000,
                q: 1000,
                instance: None,
                reg_id: None,
                source: "10.0.0.2:5060".parse().unwrap(),
                nat: false,
                socket: 0,
                stream: false,
                branch_hash: 0,
            },
            std::iter::empty(),
        )
        .unwrap();
        write_aor(&mut out, b"sip:alice@example.com", &[a.clone(), b.clone()]);
        write_aor(&mut out, b"sip:bob@example.com", &[b]);
        write_aor(&mut out, b"sip:alice@example.com", &[]);
        write_end(&mut out, 3);
        out
    }

    #[test]
    fn records_read_back_as_written() {
        let file = log();
        let records: Vec<_> = Reader::new(&file).unwrap().collect();
        assert_eq!(records.len(), 4);
        let Record::Put { key, bindings, .. } = &records[0] else {
            panic!("{:?}", records[0])
        };
        assert_eq!(*key, b"sip:alice@example.com");
        assert_eq!(bindings.len(), 2);
        let a = &bindings[0];
        assert_eq!(
            a,
            &binding("sip:alice@192.0.2.1:5060", 1_000, &[b"<sip:edge;lr>"])
        );
        assert_eq!(a.source(), "[2001:db8::1]:5062".parse().unwrap());
        assert!(a.behind_nat());
        assert_eq!(bindings[1].source(), "10.0.0.2:5060".parse().unwrap());
        assert_eq!(bindings[1].instance(), None);
        assert_eq!(
            records[2],
            Record::Delete {
                key: b"sip:alice@example.com"
            }
        );
        assert_eq!(records[3], Record::End { records: 3 });
        let mut r = Reader::new(&file).unwrap();
        r.by_ref().for_each(drop);
        assert!(!r.torn());
        assert_eq!(r.valid_len(), file.len());
    }

    #[test]
    fn journal_frames_give_each_aor_key_and_its_record() {
        let file = log();
        let body = &file[MAGIC.len()..];
        let got: Vec<_> = frames(body).collect();
        assert_eq!(got.len(), 3, "the snapshot's end record is not an AOR");
        assert_eq!(got[0].0, b"sip:alice@example.com");
        assert_eq!(got[1].0, b"sip:bob@example.com");
        assert_eq!((got[2].0, got[2].1), (&b"sip:alice@example.com"[..], None));
        let Some(Record::Put { key, bindings, .. }) = read_frame(got[1].1.unwrap()) else {
            panic!()
        };
        assert_eq!((key, bindings.len()), (&b"sip:bob@example.com"[..], 1));
        // A frame with a flipped byte does not read.
        let mut bad = got[0].1.unwrap().to_vec();
        bad[20] ^= 1;
        assert!(read_frame(&bad).is_none());
    }

    /// Cut at every byte offset: the records before the cut read, the cut one does not, and
    /// nothing panics.
    #[test]
    fn a_log_cut_at_any_byte_reads_up_to_the_cut() {
        let file = log();
        let whole: Vec<usize> = {
            let mut ends = Vec::new();
            let mut r = Reader::new(&file).unwrap();
            while r.next().is_some() {
                ends.push(r.valid_len());
            }
            ends
        };
        for cut in MAGIC.len()..file.len() {
            let mut r = Reader::new(&file[..cut]).unwrap();
            let n = r.by_ref().count();
            let complete = whole.iter().filter(|&&e| e <= cut).count();
            assert_eq!(n, complete, "cut at {cut}");
            assert_eq!(
                r.valid_len(),
                if n == 0 { MAGIC.len() } else { whole[n - 1] }
            );
            let at_boundary = cut == MAGIC.len() || whole.contains(&cut);
            assert_eq!(r.torn(), !at_boundary, "cut at {cut}");
        }
        // Any flipped byte stops reading at its record.
        for at in MAGIC.len()..file.len() {
            let mut bad = file.clone();
            bad[at] ^= 0x40;
            let mut r = Reader::new(&bad).unwrap();
            let n = r.by_ref().count();
            assert!(r.torn() && n < 4, "flip at {at}");
        }
        assert!(Reader::new(b"not a log").is_none());
        assert_eq!(Reader::new(b"").unwrap().count(), 0);
    }
}
