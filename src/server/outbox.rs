//! The core's output: datagrams to send, written back to back into one reusable byte arena.
//! The core appends; the transport drains it in one batched send.

use std::net::SocketAddr;

/// One datagram in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutDatagram {
    pub start: u32,
    pub end: u32,
    pub dst: SocketAddr,
    /// Index of the shard socket to send from.
    pub socket: u16,
}

/// Datagrams waiting to be sent.
#[derive(Default)]
pub struct Outbox {
    arena: Vec<u8>,
    items: Vec<OutDatagram>,
}

impl Outbox {
    pub fn new() -> Self {
        Outbox {
            arena: Vec::with_capacity(64 * 1024),
            items: Vec::with_capacity(64),
        }
    }

    /// Starts a datagram: returns the arena to append its bytes to. Finish with
    /// [`Outbox::commit`] (or [`Outbox::abort`]).
    #[inline]
    pub fn begin(&mut self) -> (&mut Vec<u8>, usize) {
        let start = self.arena.len();
        (&mut self.arena, start)
    }

    /// Commits the bytes appended since `start` as one datagram.
    #[inline]
    pub fn commit(&mut self, start: usize, dst: SocketAddr, socket: usize) {
        let end = self.arena.len();
        if end > start {
            self.items.push(OutDatagram {
                start: start as u32,
                end: end as u32,
                dst,
                socket: socket as u16,
            });
        }
    }

    /// Discards the bytes appended since `start`.
    #[inline]
    pub fn abort(&mut self, start: usize) {
        self.arena.truncate(start);
    }

    /// Queues a complete datagram.
    pub fn push(&mut self, bytes: &[u8], dst: SocketAddr, socket: usize) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.commit(start, dst, socket);
    }

    #[inline]
    pub fn items(&self) -> &[OutDatagram] {
        &self.items
    }

    #[inline]
    pub fn bytes(&self, d: &OutDatagram) -> &[u8] {
        &self.arena[d.start as usize..d.end as usize]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Keeps the datagrams for which `keep` is true (the bytes of the others stay in the
    /// arena until [`Outbox::clear`]).
    pub fn retain_items(&mut self, keep: impl FnMut(&OutDatagram) -> bool) {
        self.items.retain(keep);
    }

    #[inline]
    pub fn clear(&mut self) {
        self.arena.clear();
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_commit_abort() {
        let dst: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let mut o = Outbox::new();
        let (buf, s) = o.begin();
        buf.extend_from_slice(b"hello");
        o.commit(s, dst, 1);
        let (buf, s) = o.begin();
        buf.extend_from_slice(b"discard");
        o.abort(s);
        o.push(b"x", dst, 0);
        assert_eq!(o.len(), 2);
        assert_eq!(o.bytes(&o.items()[0]), b"hello");
        assert_eq!(o.bytes(&o.items()[1]), b"x");
        assert_eq!(o.items()[0].socket, 1);
    }
}
