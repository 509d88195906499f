//! Bindings that other nodes of a cluster hold (issue 21; sans-I/O). With a shared store
//! (`--store redis://…`) every node writes the bindings registered through it to the store
//! and hears the other nodes' changes; a shard keeps the other nodes' bindings of the AORs it
//! owns here, apart from its own, so that REGISTER processing (RFC 3261 §10.3) only ever
//! changes this node's bindings while lookups (§16.5) and query REGISTERs see all of them.
//!
//! Each node's part of an AOR is one set, replaced whole by the node's next change and
//! ordered by the node's version number (a change older than the set held is ignored: the
//! store's snapshot and its change messages may arrive in either order). A resynchronisation
//! after the store came back tags what it reads with a new epoch and then sweeps the sets
//! older than it (their node removed them meanwhile).

use super::binding::Binding;
use super::table::Registrar;
use std::sync::Arc;

/// One node's bindings of one AOR.
#[derive(Debug, Clone)]
pub struct RemoteSet {
    /// The node that registered them (`--node`).
    pub node: Arc<str>,
    /// The node's version of the set (newer sets have higher numbers).
    pub version: u64,
    /// The resynchronisation that last saw it.
    pub epoch: u64,
    pub bindings: Vec<Binding>,
}

/// What the store tells a shard about the AORs it owns.
#[derive(Debug)]
pub enum RemoteChange {
    /// `node`'s bindings of `key` are now `bindings` (none: it holds none).
    Set {
        key: Box<[u8]>,
        node: Arc<str>,
        version: u64,
        epoch: u64,
        bindings: Vec<Binding>,
    },
    /// This node's own bindings of `key` as the store kept them (a node that starts again
    /// after its store was unreachable at start): added unless the AOR is registered here
    /// already.
    Restore {
        key: Box<[u8]>,
        bindings: Vec<Binding>,
    },
    /// The resynchronisation `epoch` is complete: sets it did not see are gone.
    Sweep { epoch: u64 },
    /// The store answered a lookup of `key` (its sets came before, as `Set`), or could not
    /// (`failed`): requests waiting for it go on (`crate::proxy::lookup`).
    LookedUp { key: Box<[u8]>, failed: bool },
    /// The store lost this node's bindings (it restarted empty, or writes were dropped while
    /// it was away): write every AOR again.
    Rejournal,
    /// A node of the cluster sends from `0`: requests it routes through this node to a flow
    /// this node holds are taken ([`Registrar::is_peer`]).
    Peer(std::net::SocketAddr),
}

/// The other nodes' sets, by AOR key.
#[derive(Debug, Default)]
pub(super) struct RemoteView {
    by_aor: hashbrown::HashMap<Box<[u8]>, Vec<RemoteSet>>,
    bindings: usize,
    /// The other nodes' addresses.
    peers: hashbrown::HashSet<std::net::SocketAddr>,
}

impl RemoteView {
    pub(super) fn sets(&self, key: &[u8]) -> &[RemoteSet] {
        if self.by_aor.is_empty() {
            return &[];
        }
        self.by_aor.get(key).map_or(&[], Vec::as_slice)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.by_aor.keys().map(|k| &**k)
    }

    fn set(
        &mut self,
        key: Box<[u8]>,
        node: Arc<str>,
        version: u64,
        epoch: u64,
        bindings: Vec<Binding>,
    ) {
        let Some(sets) = self.by_aor.get_mut(&key) else {
            if !bindings.is_empty() {
                self.bindings += bindings.len();
                let set = RemoteSet {
                    node,
                    version,
                    epoch,
                    bindings,
                };
                self.by_aor.insert(key, vec![set]);
            }
            return;
        };
        match sets.iter().position(|s| s.node == node) {
            // Older than what is held: ignored, but the set is still there (a resync that
            // reads a lagging replica must not sweep it).
            Some(i) if sets[i].version > version => sets[i].epoch = sets[i].epoch.max(epoch),
            Some(i) => {
                self.bindings -= sets[i].bindings.len();
                if bindings.is_empty() {
                    sets.swap_remove(i);
                    if sets.is_empty() {
                        self.by_aor.remove(&key);
                    }
                } else {
                    self.bindings += bindings.len();
                    sets[i] = RemoteSet {
                        node,
                        version,
                        epoch,
                        bindings,
                    };
                }
            }
            None if bindings.is_empty() => {}
            None => {
                self.bindings += bindings.len();
                sets.push(RemoteSet {
                    node,
                    version,
                    epoch,
                    bindings,
                });
            }
        }
    }

    /// Drops what an epoch did not see, and sets whose bindings all expired by `now_ms`.
    fn sweep(&mut self, epoch: Option<u64>, now_ms: u64) {
        let mut bindings = 0;
        self.by_aor.retain(|_, sets| {
            sets.retain(|s| {
                epoch.is_none_or(|e| s.epoch >= e)
                    && s.bindings.iter().any(|b| b.expires_at_ms() > now_ms)
            });
            bindings += sets.iter().map(|s| s.bindings.len()).sum::<usize>();
            !sets.is_empty()
        });
        self.bindings = bindings;
    }
}

impl Registrar {
    /// Applies what the store says about another node's bindings (or asks of this one).
    pub fn apply_remote(&mut self, change: RemoteChange, now_ms: u64) {
        match change {
            RemoteChange::Set {
                key,
                node,
                version,
                epoch,
                bindings,
            } => self.remote.set(key, node, version, epoch, bindings),
            RemoteChange::Restore { key, bindings } => {
                if self.find(&key).is_none() {
                    self.restore(&key, bindings, now_ms);
                }
            }
            RemoteChange::Sweep { epoch } => self.remote.sweep(Some(epoch), now_ms),
            RemoteChange::Rejournal => self.journal_all(),
            RemoteChange::Peer(addr) => {
                self.remote.peers.insert(addr);
            }
            // For the element (`crate::server::Core::apply_remote`).
            RemoteChange::LookedUp { .. } => {}
        }
    }

    /// Drops the other nodes' sets that expired (memory only: lookups skip them already).
    pub fn sweep_remote(&mut self, now_ms: u64) {
        if !self.remote.by_aor.is_empty() {
            self.remote.sweep(None, now_ms);
        }
    }

    /// Writes a record of every AOR to the journal (the store needs all of them again).
    pub fn journal_all(&mut self) {
        if self.journal.is_none() {
            return;
        }
        let live: Vec<(Box<[u8]>, u32)> = self
            .aors
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.key.is_empty())
            .map(|(i, a)| (a.key.clone(), i as u32))
            .collect();
        for (key, i) in live {
            self.journal_aor(&key, Some(i));
        }
    }

    /// The other nodes' bindings of `key` (unexpired, and not one this node holds with the
    /// same contact: a phone that moved to this node).
    pub fn remote_bindings<'a>(
        &'a self,
        key: &[u8],
        local: &'a [Binding],
        now_ms: u64,
    ) -> impl Iterator<Item = (&'a str, &'a Binding)> + 'a {
        self.remote.sets(key).iter().flat_map(move |s| {
            s.bindings
                .iter()
                .filter(move |b| {
                    b.expires_at_ms() > now_ms
                        && !local.iter().any(|l| {
                            l.expires_at_ms() > now_ms && l.contact_uri() == b.contact_uri()
                        })
                })
                .map(move |b| (&*s.node, b))
        })
    }

    /// True if this node holds (or held, until swept) bindings of `key`, its own or another
    /// node's.
    pub fn knows(&self, key: &[u8]) -> bool {
        self.find(key).is_some() || !self.remote.sets(key).is_empty()
    }

    /// True for the address of another node of the cluster.
    pub fn is_peer(&self, addr: std::net::SocketAddr) -> bool {
        !self.remote.peers.is_empty() && self.remote.peers.contains(&addr)
    }

    /// How many of the other nodes' bindings are held (expired ones until swept).
    pub fn remote_binding_count(&self) -> usize {
        self.remote.bindings
    }
}
