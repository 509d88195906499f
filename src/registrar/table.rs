//! The location service of one shard (RFC 3261 §10.3, §16.5 "location service"): a table from
//! AOR key to bindings, lookups for the proxy, and binding expiry driven by a timer wheel.
//!
//! Layout, chosen for memory: AOR records live in a slab (`Vec<AorEntry>` with a free list)
//! and the hash index stores only `u32` slab positions (`hashbrown::HashTable<u32>`, 5 bytes a
//! bucket). Each AOR has at most one expiry timer, due no later than its earliest binding;
//! when it fires the AOR drops what has expired and re-arms for the next expiry, so refreshes
//! never touch the wheel unless they make the earliest expiry earlier.

use core::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::aor::{AorEntry, BindingSet};
use super::binding::Binding;
use super::config::RegistrarConfig;
use crate::timer::{TimerKey, TimerWheel};

/// Granularity of the expiry wheel. Lookups filter by the exact expiry, so this only bounds
/// how late memory is reclaimed.
pub const EXPIRY_TICK_MS: u64 = 1_000;
/// Buckets of the expiry wheel (4096 s, longer than the default expiry: most timers fire in
/// their first round).
pub const EXPIRY_SLOTS: usize = 4_096;

/// The AORs that registered over one connection, and when the last of those REGISTERs came.
#[derive(Debug, Default)]
pub(super) struct FlowAors {
    /// A set: a connection may carry the REGISTERs of many AORs (a front end or a load
    /// tool), each refreshed many times.
    keys: hashbrown::HashSet<Box<[u8]>>,
    last_ms: u64,
}

/// The registrar and location service of one shard (its part of the AOR space).
pub struct Registrar {
    pub(super) config: RegistrarConfig,
    pub(super) aors: Vec<AorEntry>,
    free_aors: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    wheel: TimerWheel<u32>,
    pub(super) binding_count: usize,
    /// Scratch for the AOR key of the request being handled.
    pub(super) key_buf: Vec<u8>,
    /// Scratch for the AORs whose timers fired.
    fired: Vec<u32>,
    /// With a binding store: the records of the AORs changed since the shell last took them
    /// (`crate::store::record`).
    pub(super) journal: Option<Vec<u8>>,
    /// The AORs registered over each stream connection (local socket, peer): their bindings
    /// go when the connection does (RFC 5626 §5.3 flows; [`Registrar::flow_closed`]).
    pub(super) flows: hashbrown::HashMap<(u16, std::net::SocketAddr), FlowAors>,
    /// With a shared store: the other nodes' bindings of this shard's AORs
    /// (`super::remote`).
    pub(super) remote: super::remote::RemoteView,
}

impl Registrar {
    /// New settings (a reload): they apply to the REGISTERs that follow; bindings keep the
    /// expiry they were given.
    pub fn set_config(&mut self, config: RegistrarConfig) {
        self.config = config;
    }

    pub fn new(config: RegistrarConfig) -> Self {
        Registrar {
            config,
            aors: Vec::new(),
            free_aors: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            wheel: TimerWheel::new(EXPIRY_TICK_MS, EXPIRY_SLOTS),
            binding_count: 0,
            key_buf: Vec::new(),
            fired: Vec::new(),
            journal: None,
            flows: hashbrown::HashMap::new(),
            remote: Default::default(),
        }
    }

    /// Starts recording every change of an AOR's bindings for the binding store.
    pub fn enable_journal(&mut self) {
        self.journal
            .get_or_insert_with(|| Vec::with_capacity(16 << 10));
    }

    /// Moves the records written since the last call to the end of `into` (nothing without
    /// [`Registrar::enable_journal`]).
    pub fn take_journal(&mut self, into: &mut Vec<u8>) {
        let Some(j) = &mut self.journal else { return };
        if into.is_empty() {
            core::mem::swap(j, into);
        } else {
            into.extend_from_slice(j);
            j.clear();
        }
    }

    /// Puts back an AOR with its bindings as the binding store kept them (at start, before
    /// any request). Bindings that expired by `now_ms` are left out; an AOR already present
    /// gets them added.
    pub fn restore(&mut self, key: &[u8], bindings: Vec<crate::registrar::Binding>, now_ms: u64) {
        let live: Vec<_> = bindings
            .into_iter()
            .filter(|b| b.expires_at_ms() > now_ms)
            .collect();
        if live.is_empty() {
            return;
        }
        let i = self.find(key).unwrap_or_else(|| self.create_aor(key));
        for b in live {
            self.aors[i as usize].bindings.push(b);
            self.binding_count += 1;
        }
        self.settle(i);
    }

    /// Calls `f` with the key, every unexpired binding of each AOR (of `only`, when given)
    /// and the node that holds it (None: this one): what the admin API lists.
    pub fn for_each_binding(
        &self,
        only: Option<&[u8]>,
        now_ms: u64,
        mut f: impl FnMut(&[u8], &Binding, Option<&str>),
    ) {
        let mut visit = |key: &[u8]| {
            let local = self.local_bindings(key);
            for b in local {
                if b.expires_at_ms() > now_ms {
                    f(key, b, None);
                }
            }
            for (node, b) in self.remote_bindings(key, local, now_ms) {
                f(key, b, Some(node));
            }
        };
        match only {
            Some(key) => visit(key),
            None => {
                self.index
                    .iter()
                    .for_each(|&i| visit(&self.aors[i as usize].key));
                // AORs only other nodes hold.
                for key in self.remote.keys() {
                    if self.find(key).is_none() {
                        visit(key);
                    }
                }
            }
        }
    }

    /// Removes the bindings of the AOR `key` (only the one whose contact URI is `contact`,
    /// when given), as an operator's `sipshard ctl unregister` asks. Returns how many were
    /// removed; the change is journaled like a REGISTER's.
    pub fn unregister(&mut self, key: &[u8], contact: Option<&[u8]>) -> usize {
        let Some(i) = self.find(key) else { return 0 };
        let removed = self.aors[i as usize]
            .bindings
            .retain(|b| contact.is_some_and(|c| b.contact_uri() != c));
        self.binding_count -= removed;
        self.settle(i);
        if removed > 0 {
            self.journal_aor(key, Some(i));
        }
        removed
    }

    /// Notes that the AOR `key` registered bindings over the connection (`socket`, `peer`)
    /// at `now_ms`.
    pub(super) fn note_flow(
        &mut self,
        socket: u16,
        peer: std::net::SocketAddr,
        key: &[u8],
        now_ms: u64,
    ) {
        let flow = self.flows.entry((socket, peer)).or_default();
        flow.last_ms = now_ms;
        if !flow.keys.contains(key) {
            flow.keys.insert(key.into());
        }
    }

    /// The connection (`socket`, `peer`) closed: the bindings registered over it go (a
    /// phone that re-registers over a new connection has bindings of that one). Returns how
    /// many were removed; the changes are journaled like a REGISTER's.
    /// A REGISTER over a connection to the same peer after `closed_ms` (a new one from
    /// the same address and port, handled before the news of the close) keeps its bindings.
    pub fn flow_closed(
        &mut self,
        socket: u16,
        peer: std::net::SocketAddr,
        closed_ms: u64,
    ) -> usize {
        if self
            .flows
            .get(&(socket, peer))
            .is_some_and(|f| f.last_ms > closed_ms)
        {
            return 0;
        }
        let Some(flow) = self.flows.remove(&(socket, peer)) else {
            return 0;
        };
        let mut total = 0;
        for key in flow.keys {
            let Some(i) = self.find(&key) else { continue };
            let removed = self.aors[i as usize]
                .bindings
                .retain(|b| !(b.over_stream() && b.socket() == socket && b.source() == peer));
            if removed > 0 {
                self.binding_count -= removed;
                self.settle(i);
                self.journal_aor(&key, Some(i));
                total += removed;
            }
        }
        total
    }

    /// Records what the AOR `key` (slab position `aor`, None if it is gone) holds now.
    pub(super) fn journal_aor(&mut self, key: &[u8], aor: Option<u32>) {
        let Some(j) = &mut self.journal else { return };
        let bindings = match aor {
            Some(i) if !self.aors[i as usize].key.is_empty() => {
                self.aors[i as usize].bindings.as_slice()
            }
            _ => &[],
        };
        crate::store::record::write_aor(j, key, bindings);
    }

    pub fn config(&self) -> &RegistrarConfig {
        &self.config
    }

    /// Number of AORs with at least one binding (expired ones count until swept).
    pub fn aor_count(&self) -> usize {
        self.index.len()
    }

    /// Number of bindings (expired ones count until swept).
    pub fn binding_count(&self) -> usize {
        self.binding_count
    }

    /// The unexpired bindings of an AOR (key as written by [`crate::sip::Uri::write_aor`]),
    /// in registration order, then those other nodes registered (with a shared store).
    pub fn lookup(&self, aor_key: &[u8], now_ms: u64) -> impl Iterator<Item = &Binding> + '_ {
        let bindings = self.local_bindings(aor_key);
        bindings
            .iter()
            .filter(move |b| b.expires_at_ms() > now_ms)
            .chain(
                self.remote_bindings(aor_key, bindings, now_ms)
                    .map(|(_, b)| b),
            )
    }

    /// This node's bindings of an AOR, expired ones included.
    pub(super) fn local_bindings(&self, aor_key: &[u8]) -> &[Binding] {
        match self.find(aor_key) {
            Some(i) => self.aors[i as usize].bindings.as_slice(),
            None => &[],
        }
    }

    /// When [`Registrar::poll_expired`] should next be called (a lower bound of the next
    /// expiry); `None` when nothing is registered.
    pub fn next_timeout(&self) -> Option<u64> {
        self.wheel.next_deadline()
    }

    /// Removes every binding whose expiry is `<= now_ms` among the AORs whose timers are due,
    /// and AORs left empty. Returns the number of bindings removed.
    pub fn poll_expired(&mut self, now_ms: u64) -> usize {
        let mut fired = core::mem::take(&mut self.fired);
        self.wheel.poll(now_ms, &mut |aor| fired.push(aor));
        let mut removed = 0;
        for &aor in &fired {
            self.aors[aor as usize].timer = TimerKey::DANGLING;
            removed += self.purge_expired(aor, now_ms);
            self.settle(aor);
        }
        fired.clear();
        self.fired = fired;
        removed
    }

    /// Heap bytes held by the registrar's own tables and records (not counting allocator
    /// overhead): for memory reports.
    pub fn heap_bytes(&self) -> usize {
        let records = self.aors.capacity() * core::mem::size_of::<AorEntry>()
            + self
                .aors
                .iter()
                .map(|a| a.key.len() + a.bindings.heap_bytes())
                .sum::<usize>();
        let index = (self.index.capacity() + 1).next_power_of_two() * (4 + 1);
        records + index + self.free_aors.capacity() * 4 + self.wheel.heap_bytes()
    }

    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slab position of an AOR.
    pub(super) fn find(&self, key: &[u8]) -> Option<u32> {
        let aors = &self.aors;
        self.index
            .find(self.hash(key), |&i| &*aors[i as usize].key == key)
            .copied()
    }

    /// Creates an empty AOR record (the caller adds bindings, then calls `settle`).
    pub(super) fn create_aor(&mut self, key: &[u8]) -> u32 {
        let entry = AorEntry {
            key: key.into(),
            bindings: BindingSet::default(),
            timer: TimerKey::DANGLING,
        };
        let i = match self.free_aors.pop() {
            Some(i) => {
                self.aors[i as usize] = entry;
                i
            }
            None => {
                assert!(self.aors.len() < u32::MAX as usize, "too many AORs");
                self.aors.push(entry);
                (self.aors.len() - 1) as u32
            }
        };
        let hash = self.hash(key);
        let (aors, hasher) = (&self.aors, &self.hasher);
        self.index
            .insert_unique(hash, i, |&j| hasher.hash_one(&*aors[j as usize].key));
        i
    }

    fn remove_aor(&mut self, i: u32) {
        let entry = &mut self.aors[i as usize];
        self.wheel.cancel(entry.timer);
        let key = core::mem::take(&mut entry.key);
        entry.bindings = BindingSet::default();
        entry.timer = TimerKey::DANGLING;
        if let Ok(found) = self
            .index
            .find_entry(self.hasher.hash_one(&*key), |&j| j == i)
        {
            found.remove();
        }
        self.free_aors.push(i);
    }

    /// Drops the bindings of an AOR that expired at `now_ms`; returns how many.
    pub(super) fn purge_expired(&mut self, i: u32, now_ms: u64) -> usize {
        let removed = self.aors[i as usize]
            .bindings
            .retain(|b| b.expires_at_ms() > now_ms);
        self.binding_count -= removed;
        removed
    }

    /// After an AOR's bindings changed: removes it if it has none, otherwise makes sure its
    /// timer is due no later than its earliest expiry.
    pub(super) fn settle(&mut self, i: u32) {
        let entry = &mut self.aors[i as usize];
        match entry.bindings.min_expiry() {
            None => self.remove_aor(i),
            Some(min) => match self.wheel.deadline(entry.timer) {
                Some(due) if due <= min => {}
                _ => {
                    self.wheel.cancel(entry.timer);
                    entry.timer = self.wheel.insert(min, i);
                }
            },
        }
    }
}

impl core::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registrar")
            .field("config", &self.config)
            .field("aors", &self.aor_count())
            .field("bindings", &self.binding_count)
            .field("timers", &self.wheel.len())
            .finish()
    }
}
