//! The subscriber thread of a node: the other nodes' binding changes, and the whole store
//! when it is (re)connected.
//!
//! It subscribes first and reads the store second, so no change falls between the two (a
//! change read twice is harmless: a node's set only ever moves to a higher version). Each
//! read of the store is an epoch: what it finds is tagged with it, and at its end each shard
//! drops the other nodes' sets no read or change of this epoch confirmed (their node removed
//! them while this node was not listening). The first read, at start, also returns this
//! node's own bindings, to be restored before the shards serve.

use super::value;
use super::writer::{connect_any, connect_one};
use super::{unix_ms, SharedSettings, SharedStats, Target};
use crate::registrar::{Binding, RemoteChange};
use crate::transport::Waker;
use crossbeam_channel::Sender;
use redis::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The shards, as the store threads reach them.
pub(super) struct Shards {
    pub remote: Vec<Sender<RemoteChange>>,
    /// Set once the shards exist ([`super::SharedStore::attach`]).
    pub wakers: OnceLock<Vec<Arc<Waker>>>,
    pub owner: super::Owner,
    /// The other nodes' addresses told to the shards so far.
    pub peers: std::sync::Mutex<hashbrown::HashSet<std::net::SocketAddr>>,
}

impl Shards {
    pub fn wake(&self, id: usize) {
        if let Some(w) = self.wakers.get().and_then(|w| w.get(id)) {
            w.wake_if_sleeping();
        }
    }

    pub fn tell_all(&self, change: impl Fn() -> RemoteChange) {
        for (id, tx) in self.remote.iter().enumerate() {
            let _ = tx.send(change());
            self.wake(id);
        }
    }

    /// Tells every shard about a node's address the first time it is seen.
    pub fn note_peer(&self, via: &str) {
        let Ok(addr) = via.parse::<std::net::SocketAddr>() else {
            return;
        };
        let new = self.peers.lock().is_ok_and(|mut p| p.insert(addr));
        if new {
            self.tell_all(|| RemoteChange::Peer(addr));
        }
    }

    /// Gives shard `id` a change.
    pub fn send(&self, id: usize, change: RemoteChange) {
        if let Some(tx) = self.remote.get(id) {
            let _ = tx.send(change);
        }
    }

    fn tell(&self, aor: &[u8], change: RemoteChange) -> usize {
        let id = (self.owner)(aor).min(self.remote.len().saturating_sub(1));
        let _ = self.remote[id].send(change);
        id
    }
}

/// This node's bindings as the store held them at start, per shard.
pub struct Loaded {
    pub shards: Vec<Vec<(Vec<u8>, Vec<Binding>)>>,
    /// AORs and bindings of this node, and the other nodes' AOR sets read.
    pub own_aors: usize,
    pub own_bindings: usize,
    pub remote_sets: usize,
    /// False when the store did not answer in time.
    pub read: bool,
}

impl Loaded {
    pub(super) fn empty(shards: usize) -> Loaded {
        Loaded {
            shards: (0..shards).map(|_| Vec::new()).collect(),
            own_aors: 0,
            own_bindings: 0,
            remote_sets: 0,
            read: false,
        }
    }
}

pub(super) fn run(
    settings: &SharedSettings,
    shards: &Shards,
    stop: &AtomicBool,
    stats: &SharedStats,
    loaded_tx: Sender<Loaded>,
) {
    let mut first = Some(loaded_tx);
    let mut epoch = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut logged_down = false;
    // Every failure waits, growing, before the next attempt (a store loading its data, a
    // cluster moving slots: never a busy loop).
    let pause = |backoff: &mut Duration| {
        std::thread::sleep(*backoff);
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    };
    while !stop.load(Ordering::SeqCst) {
        let seeds = match &settings.target {
            Target::Single(u) => std::slice::from_ref(u),
            Target::Cluster(s) => s.as_slice(),
        };
        let mut conn = match connect_any(seeds) {
            Ok(c) => c,
            Err(e) => {
                if !logged_down {
                    tracing::warn!(store = %settings.target, "shared store subscription: {e}");
                    logged_down = true;
                }
                pause(&mut backoff);
                continue;
            }
        };
        let mut pubsub = conn.as_pubsub();
        if let Err(e) = pubsub.subscribe(&[settings.channel.clone(), settings.own_channel()]) {
            tracing::warn!(store = %settings.target, "shared store subscription: {e}");
            logged_down = true;
            pause(&mut backoff);
            continue;
        }
        let _ = pubsub.set_read_timeout(Some(Duration::from_millis(500)));
        epoch += 1;
        let mut loaded = Loaded::empty(shards.remote.len());
        match read_all(settings, shards, epoch, first.is_some(), &mut loaded) {
            Ok(()) => {
                loaded.read = true;
                shards.tell_all(|| RemoteChange::Sweep { epoch });
                if logged_down || epoch > 1 {
                    tracing::info!(store = %settings.target, remote_sets = loaded.remote_sets, "shared store read again");
                }
                logged_down = false;
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(store = %settings.target, "reading the shared store: {e}");
                logged_down = true;
                pause(&mut backoff);
                continue;
            }
        }
        if let Some(tx) = first.take() {
            // A start that gave up waiting has gone on without them: restore them now.
            if let Err(crossbeam_channel::SendError(late)) = tx.send(loaded) {
                for part in late.shards {
                    for (key, bindings) in part {
                        let change = RemoteChange::Restore {
                            key: key.as_slice().into(),
                            bindings,
                        };
                        shards.tell(&key, change);
                    }
                }
                for id in 0..shards.remote.len() {
                    shards.wake(id);
                }
            }
        }
        // The other nodes' changes, until the connection fails.
        while !stop.load(Ordering::SeqCst) {
            match pubsub.get_message() {
                Ok(msg) => apply(settings, shards, stats, epoch, msg.get_payload_bytes()),
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    tracing::warn!(store = %settings.target, "shared store subscription lost: {e}");
                    logged_down = true;
                    break;
                }
            }
        }
    }
}

/// Gives each shard the changes of one message.
fn apply(settings: &SharedSettings, shards: &Shards, stats: &SharedStats, epoch: u64, msg: &[u8]) {
    let Some(value::Message { node, via, changes }) = value::read_message(msg) else {
        tracing::warn!("shared store: a change message that does not read");
        return;
    };
    if node == settings.node {
        return;
    }
    shards.note_peer(via);
    let node: Arc<str> = node.into();
    let now_ms = unix_ms();
    let mut woken = vec![false; shards.remote.len()];
    for c in changes {
        let bindings = match c.value {
            Some(v) => match value::decode(v) {
                Some(d) => value::remote_bindings(d, now_ms),
                None => continue,
            },
            None => Vec::new(),
        };
        let id = shards.tell(
            c.aor,
            RemoteChange::Set {
                key: c.aor.into(),
                node: node.clone(),
                version: c.version,
                epoch,
                bindings,
            },
        );
        woken[id] = true;
        stats.remote_changes.fetch_add(1, Ordering::Relaxed);
    }
    for (id, w) in woken.into_iter().enumerate() {
        if w {
            shards.wake(id);
        }
    }
}

/// The masters of a cluster (the nodes to scan), as `redis://HOST:PORT` URLs.
fn cluster_masters(seeds: &[String]) -> redis::RedisResult<Vec<String>> {
    let mut c = connect_any(seeds)?;
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c)?;
    let mut masters = Vec::new();
    if let Value::Array(ranges) = slots {
        for r in ranges {
            let Value::Array(parts) = r else { continue };
            let Some(Value::Array(master)) = parts.get(2) else {
                continue;
            };
            let host = match master.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                continue;
            };
            let url = format!("redis://{host}:{port}");
            if !masters.contains(&url) {
                masters.push(url);
            }
        }
    }
    Ok(masters)
}

/// Reads every AOR of the store: the other nodes' sets go to their shards, this node's to
/// `loaded` at start (later: restored where the shard has none).
fn read_all(
    settings: &SharedSettings,
    shards: &Shards,
    epoch: u64,
    at_start: bool,
    loaded: &mut Loaded,
) -> redis::RedisResult<()> {
    let servers = match &settings.target {
        Target::Single(u) => vec![u.clone()],
        Target::Cluster(seeds) => cluster_masters(seeds)?,
    };
    let now_ms = unix_ms();
    let mut nodes: hashbrown::HashMap<String, Arc<str>> = hashbrown::HashMap::new();
    for url in servers {
        let mut c = connect_one(&url)?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(value::KEY_PATTERN)
                .arg("COUNT")
                .arg(1000)
                .query(&mut c)?;
            let mut expired: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = Vec::new();
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGETALL").arg(k);
                }
                let hashes: Vec<Vec<(Vec<u8>, Vec<u8>)>> = pipe.query(&mut c)?;
                for (k, fields) in keys.iter().zip(hashes) {
                    let Some(aor) = value::aor_of(k) else {
                        continue;
                    };
                    for (field, v) in fields {
                        let Some(decoded) = value::decode(&v) else {
                            continue;
                        };
                        let version = decoded.version;
                        if field != settings.node.as_bytes() {
                            shards.note_peer(decoded.via);
                        }
                        let field = String::from_utf8_lossy(&field).into_owned();
                        let own = field == settings.node;
                        let bindings: Vec<Binding> = if own {
                            // As the local log restores them: reached at their Contact.
                            decoded
                                .bindings
                                .into_iter()
                                .filter(|b| b.expires_at_ms() > now_ms)
                                .collect()
                        } else {
                            value::remote_bindings(decoded, now_ms)
                        };
                        if bindings.is_empty() {
                            if !own {
                                // Another node's set that expired whole: a node that died
                                // (or was renamed) leaves nothing behind.
                                expired.push((k.clone(), field.clone().into_bytes(), v.clone()));
                            }
                            continue;
                        }
                        if own && !at_start {
                            // Running, this node is the authority on its own bindings (a
                            // removal may still be on its way to the store).
                            continue;
                        }
                        if own {
                            let id = (shards.owner)(aor).min(loaded.shards.len() - 1);
                            loaded.own_aors += 1;
                            loaded.own_bindings += bindings.len();
                            loaded.shards[id].push((aor.to_vec(), bindings));
                            continue;
                        }
                        let node = nodes
                            .entry(field.clone())
                            .or_insert_with(|| field.as_str().into())
                            .clone();
                        loaded.remote_sets += 1;
                        shards.tell(
                            aor,
                            RemoteChange::Set {
                                key: aor.into(),
                                node,
                                version,
                                epoch,
                                bindings,
                            },
                        );
                    }
                }
            }
            if !expired.is_empty() {
                // Removed only if unchanged since read (its node may have come back).
                let mut pipe = redis::pipe();
                for (k, field, v) in &expired {
                    pipe.cmd("EVAL")
                        .arg(DELETE_IF_UNCHANGED)
                        .arg(1)
                        .arg(k)
                        .arg(field)
                        .arg(v)
                        .ignore();
                }
                pipe.exec(&mut c)?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // The nodes' addresses (the nodes that may route down this node's flows).
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(value::NODE_PATTERN)
                .arg("COUNT")
                .arg(1000)
                .query(&mut c)?;
            for k in keys {
                if k.strip_prefix(value::NODE_PREFIX) == Some(settings.node.as_str()) {
                    continue;
                }
                let via: Option<String> = redis::cmd("GET").arg(&k).query(&mut c)?;
                if let Some(via) = via {
                    shards.note_peer(&via);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(())
}

/// `HDEL KEYS[1] ARGV[1]` if that field still holds `ARGV[2]`.
const DELETE_IF_UNCHANGED: &str =
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";
