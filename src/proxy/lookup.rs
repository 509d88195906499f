//! Requests for an AOR this node has never heard of, with a shared store (issue 21;
//! sans-I/O). A node holds every binding the store had when it read it and every change
//! since, but an AOR can still be missing here (the store did not answer at start, a change
//! message was lost while the subscription was down). So a request for a user of ours with no
//! binding here is not answered 480 at once: the element parks it and asks the store (the
//! shell takes the question, [`Element::take_lookups`]), and resumes it when the answer comes
//! back as input ([`Element::store_answered`], after the answer's bindings were applied): it
//! is then forwarded, or gets 480/404 as before. A store that is down, or that does not answer
//! within [`LOOKUP_WAIT_MS`], gets the request a 503 saying so. What the store said it does not
//! have is remembered for [`MISSING_FOR_MS`] (a scanner calling random numbers asks the store
//! once per number, not once per call).

use super::reply::Reply;
use super::request::Element;
use crate::server::outbox::Outbox;
use crate::sip::{Message, Method};
use std::net::SocketAddr;

/// How long a parked request waits for the store.
pub const LOOKUP_WAIT_MS: u64 = 1_000;
/// How long an AOR the store does not have is not asked about again.
pub const MISSING_FOR_MS: u64 = 30_000;
/// Requests parked at most (more are answered at once, as without a store).
const PARKED_MAX: usize = 4_096;
/// AORs remembered as missing at most (the memory is cleared when full).
const MISSING_MAX: usize = 65_536;

/// A request waiting for the store.
struct Parked {
    key: Box<[u8]>,
    raw: Box<[u8]>,
    src: SocketAddr,
    socket: usize,
    deadline_ms: u64,
    /// The user its digest authenticated before it was parked (None: not authenticated).
    user: Option<Box<str>>,
}

/// The element's store lookups.
#[derive(Default)]
pub struct StoreLookups {
    /// AOR keys to ask the store about.
    asked: Vec<Box<[u8]>>,
    parked: Vec<Parked>,
    missing: hashbrown::HashMap<Box<[u8]>, u64>,
    /// Set while a parked request is handled again (it is not parked twice).
    resuming: bool,
    /// The user the request being handled authenticated as (set by the digest check).
    pub(super) authenticated: Option<Box<str>>,
    /// While resuming: the user the request had authenticated as before it was parked. Its
    /// credentials are not checked again: their nonce count was used (a second check would
    /// take it for a replay and answer 407).
    pub(super) resumed_user: Option<Box<str>>,
}

impl StoreLookups {
    /// `msg` is (a retransmission of) a request waiting for the store.
    pub(super) fn is_parked(&self, msg: &Message<'_>) -> bool {
        if self.parked.is_empty() || self.resuming {
            return false;
        }
        let raw = &msg.buf()[msg.start_offset()..msg.len()];
        self.parked.iter().any(|p| &*p.raw == raw)
    }
}

impl Element {
    /// Turns store lookups on (`--store`).
    pub fn enable_store_lookups(&mut self) {
        self.lookups.get_or_insert_with(Default::default);
    }

    /// Moves the AOR keys to ask the store about to `into`.
    pub fn take_lookups(&mut self, into: &mut Vec<Box<[u8]>>) {
        if let Some(l) = &mut self.lookups {
            into.append(&mut l.asked);
        }
    }

    /// [`Element::park_for_lookup`] for the AOR of `aor` (a URI of our domain).
    pub(super) fn park_for_aor(
        &mut self,
        msg: &Message<'_>,
        aor: &crate::sip::uri::Uri<'_>,
        reply: &Reply<'_, '_>,
        now_ms: u64,
    ) -> bool {
        if self.lookups.is_none() {
            return false;
        }
        self.key.clear();
        self.registrar.write_aor_key(aor, &mut self.key);
        let key = core::mem::take(&mut self.key);
        let parked = self.park_for_lookup(msg, &key, reply, now_ms);
        self.key = key;
        parked
    }

    /// Parks `msg`, a request for the AOR `key` that has no binding here, until the store
    /// says what it holds. False when it is not parked (no store, an AOR this node knows, one
    /// the store recently did not have, a request being resumed, or too many waiting).
    pub(super) fn park_for_lookup(
        &mut self,
        msg: &Message<'_>,
        key: &[u8],
        reply: &Reply<'_, '_>,
        now_ms: u64,
    ) -> bool {
        let Some(l) = &mut self.lookups else {
            return false;
        };
        if l.resuming || self.registrar.knows(key) || l.parked.len() >= PARKED_MAX {
            return false;
        }
        if l.missing.get(key).is_some_and(|&until| until > now_ms) {
            return false;
        }
        let raw = &msg.buf()[msg.start_offset()..msg.len()];
        if l.parked.iter().any(|p| &*p.raw == raw) {
            // A retransmission of a parked request: it is answered with the first.
            return true;
        }
        if !l.parked.iter().any(|p| &*p.key == key) {
            l.asked.push(key.into());
        }
        l.parked.push(Parked {
            key: key.into(),
            raw: raw.into(),
            src: reply.source(),
            socket: reply.socket(),
            deadline_ms: now_ms + LOOKUP_WAIT_MS,
            user: l.authenticated.take(),
        });
        true
    }

    /// The store answered about `key` (its bindings, if any, were applied just before), or
    /// could not (`failed`): the requests parked for it go on, or get a 503.
    pub fn store_answered(&mut self, key: &[u8], failed: bool, now_ms: u64, out: &mut Outbox) {
        let Some(l) = &mut self.lookups else { return };
        let waiting: Vec<Parked> = l.parked.extract_if(.., |p| &*p.key == key).collect();
        if !failed && !self.registrar.knows(key) {
            if l.missing.len() >= MISSING_MAX {
                l.missing.clear();
            }
            l.missing.insert(key.into(), now_ms + MISSING_FOR_MS);
        }
        for p in waiting {
            if failed {
                self.refuse_parked(&p, b"Service Unavailable (location store unreachable)", out);
            } else {
                self.resume(&p, now_ms, out);
            }
        }
    }

    /// The earliest deadline of a parked request.
    pub(super) fn next_lookup_deadline(&self) -> Option<u64> {
        self.lookups
            .as_ref()?
            .parked
            .iter()
            .map(|p| p.deadline_ms)
            .min()
    }

    /// Parked requests past their deadline get a 503.
    pub(super) fn lookups_timed_out(&mut self, now_ms: u64, out: &mut Outbox) {
        let Some(l) = &mut self.lookups else { return };
        if !l.parked.iter().any(|p| p.deadline_ms <= now_ms) {
            return;
        }
        let (late, kept): (Vec<Parked>, Vec<Parked>) =
            l.parked.drain(..).partition(|p| p.deadline_ms <= now_ms);
        l.parked = kept;
        for p in late {
            self.refuse_parked(
                &p,
                b"Service Unavailable (location store did not answer)",
                out,
            );
        }
    }

    fn resume(&mut self, p: &Parked, now_ms: u64, out: &mut Outbox) {
        let Ok(msg) = Message::parse(&p.raw) else {
            return;
        };
        let method = msg.method().unwrap_or(Method::Other);
        if let Some(l) = &mut self.lookups {
            l.resuming = true;
            l.resumed_user = p.user.clone();
        }
        self.request(&msg, method, p.src, p.socket, now_ms, self.shard, out);
        if let Some(l) = &mut self.lookups {
            l.resuming = false;
            l.resumed_user = None;
        }
    }

    fn refuse_parked(&mut self, p: &Parked, reason: &[u8], out: &mut Outbox) {
        let Ok(msg) = Message::parse(&p.raw) else {
            return;
        };
        let mut reply = Reply::new(&msg, p.src, p.socket, &mut self.tag_seq, self.shard);
        reply.simple(out, 503, reason);
        self.stats.response_sent(503);
    }
}
