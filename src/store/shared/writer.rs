//! The store thread of a node: every shard's binding changes go to the shared store from
//! here, off the shards' path.
//!
//! Shards hand their journal records over through [`crate::store::Journal`] (one channel for
//! all of them). The thread keeps the newest record of each changed AOR (a record is the
//! AOR's whole set: later ones replace earlier ones), and once a short gathering window has
//! passed writes all of them in one pipeline, with one change message for the other nodes
//! at its end: one round trip for the changes of many REGISTERs. Then it marks each shard's
//! records as stored (in `sync` durability the shard holds its responses until then).
//!
//! While the store does not answer, changes stay here (up to the queue limit; past it they
//! are dropped and counted) and the thread reconnects with a growing back-off. When it is
//! back every shard writes all of its AORs again (the store may have restarted empty), so
//! nothing the node still holds is lost. In `sync` durability a store away for more than
//! [`SYNC_GIVE_UP`] no longer holds responses (a shard must not stall): that is logged.

use super::reader::{self, Loaded, Shards};
use super::value;
use super::{SharedSettings, SharedStats, Target};
use crate::registrar::RemoteChange;
use crate::store::writer::Batch;
use crate::store::{Durability, Journal};
use crate::transport::Waker;
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long changes gather before a write in `batch` durability.
const GATHER: Duration = Duration::from_millis(2);
/// AORs per pipeline (and per change message).
const CHUNK: usize = 1_000;
/// Connect, read and write timeouts of store connections.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// In `sync` durability, how long responses wait for a store that does not answer.
pub const SYNC_GIVE_UP: Duration = Duration::from_secs(1);

/// A node's link to the shared store: its threads and each shard's end.
pub struct SharedStore {
    settings: SharedSettings,
    tx: Sender<Batch>,
    shards: Arc<Shards>,
    journals: Vec<Option<(Journal, Receiver<RemoteChange>)>>,
    /// Where shards ask about AORs they never heard of: (shard, AOR key).
    ask: Sender<(usize, Box<[u8]>)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<SharedStats>,
}

impl SharedStore {
    /// Starts the store threads for `shards` shards (`owner` tells which shard owns an AOR
    /// key) and waits, at most the load timeout, for the bindings the store holds: this
    /// node's, to be restored before the shards serve (the other nodes' are queued for the
    /// shards already).
    pub fn start(
        settings: &SharedSettings,
        shard_count: usize,
        owner: super::Owner,
    ) -> std::io::Result<(SharedStore, Loaded)> {
        let (tx, rx) = bounded::<Batch>(256);
        let stats = Arc::new(SharedStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut journals = Vec::with_capacity(shard_count);
        let mut remote_tx = Vec::with_capacity(shard_count);
        let mut spare_tx = Vec::with_capacity(shard_count);
        let mut durable = Vec::with_capacity(shard_count);
        for id in 0..shard_count {
            let (s_tx, s_rx) = bounded::<Vec<u8>>(256);
            let d = Arc::new(AtomicU64::new(0));
            let (r_tx, r_rx) = crossbeam_channel::unbounded();
            journals.push(Some((
                Journal::to(id, tx.clone(), s_rx, d.clone(), settings.durability),
                r_rx,
            )));
            remote_tx.push(r_tx);
            spare_tx.push(s_tx);
            durable.push(d);
        }
        let shards = Arc::new(Shards {
            remote: remote_tx,
            wakers: OnceLock::new(),
            owner,
            peers: Default::default(),
        });
        let (loaded_tx, loaded_rx) = bounded(1);
        let mut threads = Vec::new();
        {
            let (settings, shards, stop, stats) = (
                settings.clone(),
                shards.clone(),
                stop.clone(),
                stats.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("store-sub".into())
                    .spawn(move || reader::run(&settings, &shards, &stop, &stats, loaded_tx))?,
            );
        }
        let (tried_tx, tried_rx) = bounded(1);
        let (ask, ask_rx) = crossbeam_channel::unbounded();
        {
            let mut w = WriterState {
                settings: settings.clone(),
                shards: shards.clone(),
                spare: spare_tx,
                durable,
                numbers: vec![0; shard_count],
                dirty: hashbrown::HashMap::new(),
                stats: stats.clone(),
                version: 0,
                conn: None,
                down_since: None,
                retry_at: Instant::now(),
                backoff: Duration::from_millis(100),
                connected_once: false,
                lost_changes: false,
                gave_up_logged: false,
            };
            threads.push(
                std::thread::Builder::new()
                    .name("store".into())
                    .spawn(move || w.run(rx, ask_rx, tried_tx))?,
            );
        }
        let wait = Duration::from_millis(settings.load_timeout_ms);
        let _ = tried_rx.recv_timeout(wait);
        let loaded = loaded_rx.recv_timeout(wait).unwrap_or_else(|_| {
            tracing::warn!(
                store = %settings.target,
                "the shared store did not answer within {} ms: serving without its bindings \
                 (they are read when it answers)",
                settings.load_timeout_ms
            );
            Loaded::empty(shard_count)
        });
        Ok((
            SharedStore {
                settings: settings.clone(),
                tx,
                shards,
                journals,
                ask,
                stop,
                threads,
                stats,
            },
            loaded,
        ))
    }

    /// Gives each shard its end (its journal and the other nodes' changes) once the shards'
    /// wakers exist.
    /// Also returns where the shards ask about AORs they never heard of.
    #[allow(clippy::type_complexity)]
    pub fn attach(
        &mut self,
        wakers: Vec<Arc<Waker>>,
    ) -> (
        Vec<(Journal, Receiver<RemoteChange>)>,
        Sender<(usize, Box<[u8]>)>,
    ) {
        let _ = self.shards.wakers.set(wakers);
        let ends = self.journals.iter_mut().filter_map(Option::take).collect();
        (ends, self.ask.clone())
    }

    pub fn settings(&self) -> &SharedSettings {
        &self.settings
    }

    /// Stops the threads once the shards stopped: the writer first writes what they left
    /// (one attempt).
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.tx);
        drop(self.journals);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A connection that writes.
enum Conn {
    Single(redis::Connection),
    /// The cluster's connection for the writes, and one node's for the change messages
    /// (a PUBLISH reaches every node of a cluster).
    Cluster(Box<redis::cluster::ClusterConnection>, redis::Connection),
}

pub(super) fn connect_one(url: &str) -> redis::RedisResult<redis::Connection> {
    let c = redis::Client::open(url)?.get_connection_with_timeout(IO_TIMEOUT)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(c)
}

/// The first seed that answers.
pub(super) fn connect_any(seeds: &[String]) -> redis::RedisResult<redis::Connection> {
    let mut last = None;
    for s in seeds {
        match connect_one(s) {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| redis::RedisError::from(std::io::Error::other("no seed"))))
}

impl Conn {
    fn open(target: &Target) -> redis::RedisResult<Conn> {
        match target {
            Target::Single(url) => Ok(Conn::Single(connect_one(url)?)),
            Target::Cluster(seeds) => {
                let client =
                    redis::cluster::ClusterClient::builder(seeds.iter().map(String::as_str))
                        .connection_timeout(IO_TIMEOUT)
                        .response_timeout(IO_TIMEOUT)
                        .retries(2)
                        .build()?;
                let c = client.get_connection()?;
                Ok(Conn::Cluster(Box::new(c), connect_any(seeds)?))
            }
        }
    }
}

struct WriterState {
    settings: SharedSettings,
    shards: Arc<Shards>,
    spare: Vec<Sender<Vec<u8>>>,
    /// Per shard: the highest batch number stored.
    durable: Vec<Arc<AtomicU64>>,
    /// Per shard: the highest batch number gathered.
    numbers: Vec<u64>,
    /// The newest record of each AOR changed and not yet stored (None: removed).
    dirty: hashbrown::HashMap<Box<[u8]>, Option<Box<[u8]>>>,
    stats: Arc<SharedStats>,
    /// The last version number written.
    version: u64,
    conn: Option<Conn>,
    down_since: Option<Instant>,
    retry_at: Instant,
    backoff: Duration,
    connected_once: bool,
    /// Changes were dropped (queue full) since the store was last reached.
    lost_changes: bool,
    gave_up_logged: bool,
}

impl WriterState {
    fn run(
        &mut self,
        rx: Receiver<Batch>,
        ask: Receiver<(usize, Box<[u8]>)>,
        first_try: Sender<()>,
    ) {
        // Connect (and announce this node) before anything is written: the other nodes
        // take requests from this node down their flows only once they know it.
        self.write();
        let _ = first_try.send(());
        let mut questions: Vec<(usize, Box<[u8]>)> = Vec::new();
        loop {
            let wait = if self.dirty.is_empty() {
                Duration::from_secs(1)
            } else {
                self.retry_at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
            };
            let mut closing = false;
            crossbeam_channel::select! {
                recv(rx) -> b => match b {
                    Ok(b) => self.take(b),
                    Err(_) => closing = true,
                },
                recv(ask) -> q => if let Ok(q) = q {
                    questions.push(q);
                },
                default(wait) => {
                    // Idle: a store that restarted (empty) must be noticed now, not at the
                    // next change, so that every binding is written to it again.
                    if self.dirty.is_empty() {
                        self.ping();
                    }
                }
            }
            if !closing
                && questions.is_empty()
                && self.settings.durability == Durability::Batch
                && self.conn.is_some()
            {
                // The changes of the next rounds join this write (a question does not wait).
                std::thread::sleep(GATHER);
            }
            loop {
                match rx.try_recv() {
                    Ok(b) => self.take(b),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closing = true;
                        break;
                    }
                }
            }
            questions.extend(ask.try_iter());
            self.write();
            self.answer(&mut questions);
            if closing {
                if !self.dirty.is_empty() {
                    tracing::warn!(
                        changes = self.dirty.len(),
                        "stopping with binding changes the shared store did not take"
                    );
                }
                return;
            }
        }
    }

    /// Asks the store about the AORs shards never heard of (one pipeline) and gives each
    /// shard the other nodes' sets found, then the answer; without a store, the answer is
    /// that it could not be asked.
    fn answer(&mut self, questions: &mut Vec<(usize, Box<[u8]>)>) {
        if questions.is_empty() {
            return;
        }
        let keys: Vec<Vec<u8>> = questions.iter().map(|(_, k)| value::key(k)).collect();
        let found: redis::RedisResult<Vec<Vec<(Vec<u8>, Vec<u8>)>>> = match self.conn.as_mut() {
            Some(Conn::Single(c)) => {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGETALL").arg(k);
                }
                pipe.query(c)
            }
            Some(Conn::Cluster(c, _)) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for k in &keys {
                    pipe.cmd("HGETALL").arg(k);
                }
                pipe.query(&mut **c)
            }
            None => Err(redis::RedisError::from(std::io::Error::other(
                "not connected",
            ))),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let failed = found.is_err();
        if let Err(e) = &found {
            if self.conn.is_some() {
                self.failed(e);
            }
        }
        let mut found = found.unwrap_or_default().into_iter();
        for (shard, key) in questions.drain(..) {
            let fields = found.next().unwrap_or_default();
            for (field, v) in fields {
                if field == self.settings.node.as_bytes() {
                    continue;
                }
                let Some(d) = value::decode(&v) else { continue };
                self.shards.note_peer(d.via);
                let version = d.version;
                let bindings = value::remote_bindings(d, now_ms);
                if bindings.is_empty() {
                    continue;
                }
                self.shards.send(
                    shard,
                    RemoteChange::Set {
                        key: key.clone(),
                        node: String::from_utf8_lossy(&field).into(),
                        version,
                        epoch: 0,
                        bindings,
                    },
                );
            }
            self.shards
                .send(shard, RemoteChange::LookedUp { key, failed });
            self.shards.wake(shard);
        }
    }

    fn take(&mut self, b: Batch) {
        // The limit holds while the store is away (while it answers, what gathers is written
        // at once, however much: a node writing all of its AORs again).
        let away = self.conn.is_none();
        for (aor, frame) in crate::store::record::frames(&b.bytes) {
            if away
                && self.dirty.len() >= self.settings.queue_limit
                && !self.dirty.contains_key(aor)
            {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.lost_changes = true;
                continue;
            }
            self.dirty.insert(aor.into(), frame.map(Into::into));
        }
        self.stats
            .queued
            .store(self.dirty.len() as u64, Ordering::Relaxed);
        if let Some(n) = self.numbers.get_mut(b.shard) {
            *n = (*n).max(b.number);
        }
        let mut bytes = b.bytes;
        bytes.clear();
        // A buffer grown by a rewrite of every AOR is not kept.
        if bytes.capacity() <= 1 << 20 {
            if let Some(s) = self.spare.get(b.shard) {
                let _ = s.try_send(bytes);
            }
        }
    }

    fn next_version(&mut self) -> u64 {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.version = (self.version + 1).max(now_ms << 16);
        self.version
    }

    /// Checks an idle connection (reconnecting, and so writing every binding again, when it
    /// failed).
    fn ping(&mut self) {
        let r = match self.conn.as_mut() {
            Some(Conn::Single(c)) => redis::cmd("PING").exec(c),
            Some(Conn::Cluster(_, c)) => redis::cmd("PING").exec(c),
            None => return self.write(),
        };
        if let Err(e) = r {
            self.failed(&e);
        }
    }

    /// Says where this node is: its address key, and a change message of no AOR.
    fn announce(&mut self) -> redis::RedisResult<()> {
        let key = format!("{}{}", value::NODE_PREFIX, self.settings.node);
        let mut message = Vec::new();
        value::message_start(&mut message, &self.settings.node, &self.settings.via);
        let set = redis::cmd("SET").arg(&key).arg(&self.settings.via).clone();
        let publish = redis::cmd("PUBLISH")
            .arg(&self.settings.channel)
            .arg(&message)
            .clone();
        match self.conn.as_mut() {
            Some(Conn::Single(c)) => {
                set.exec(c)?;
                publish.exec(c)
            }
            Some(Conn::Cluster(cluster, c)) => {
                set.exec(&mut **cluster)?;
                publish.exec(c)
            }
            None => Ok(()),
        }
    }

    /// Writes what is dirty, connecting first if needed.
    fn write(&mut self) {
        if self.conn.is_none() {
            if Instant::now() < self.retry_at {
                self.release_if_given_up();
                return;
            }
            match Conn::open(&self.settings.target) {
                Ok(c) => {
                    self.conn = Some(c);
                    if let Err(e) = self.announce() {
                        self.failed(&e);
                        return;
                    }
                    self.stats.connected.store(1, Ordering::Relaxed);
                    self.backoff = Duration::from_millis(100);
                    if self.connected_once {
                        // The store may have restarted empty: every shard writes all of its
                        // AORs again.
                        tracing::info!(store = %self.settings.target, "shared store reachable again: writing every binding to it");
                        self.shards.tell_all(|| RemoteChange::Rejournal);
                        self.lost_changes = false;
                    } else {
                        tracing::info!(store = %self.settings.target, node = %self.settings.node, "shared store connected");
                    }
                    self.connected_once = true;
                    self.down_since = None;
                    self.gave_up_logged = false;
                }
                Err(e) => {
                    self.failed(&e);
                    return;
                }
            }
        }
        if self.dirty.is_empty() {
            return;
        }
        let node = self.settings.node.clone();
        let ttl = self.settings.key_ttl_ms;
        let keys: Vec<Box<[u8]>> = self.dirty.keys().cloned().collect();
        let mut value = Vec::new();
        let mut message = Vec::new();
        let cluster = matches!(self.conn, Some(Conn::Cluster(..)));
        for chunk in keys.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            let mut cpipe = redis::cluster::cluster_pipe();
            value::message_start(&mut message, &node, &self.settings.via);
            for aor in chunk {
                let version = self.next_version();
                let k = value::key(aor);
                value.clear();
                match self.dirty.get(aor) {
                    Some(Some(frame)) => {
                        value::encode(
                            &mut value,
                            version,
                            &self.settings.via,
                            &self.settings.protos,
                            frame,
                        );
                        if cluster {
                            cpipe.cmd("HSET").arg(&k).arg(&node).arg(&value).ignore();
                            cpipe.cmd("PEXPIRE").arg(&k).arg(ttl).ignore();
                        } else {
                            pipe.cmd("HSET").arg(&k).arg(&node).arg(&value).ignore();
                            pipe.cmd("PEXPIRE").arg(&k).arg(ttl).ignore();
                        }
                    }
                    _ => {
                        value::removal(&mut value, version);
                        if cluster {
                            cpipe.cmd("HDEL").arg(&k).arg(&node).ignore();
                        } else {
                            pipe.cmd("HDEL").arg(&k).arg(&node).ignore();
                        }
                    }
                }
                value::message_add(&mut message, aor, &value);
            }
            let result = match self.conn.as_mut() {
                Some(Conn::Single(c)) => {
                    pipe.cmd("PUBLISH")
                        .arg(value::CHANNEL)
                        .arg(&message)
                        .ignore();
                    pipe.exec(c).map(|()| 1)
                }
                Some(Conn::Cluster(c, publish)) => cpipe.exec(c).and_then(|()| {
                    redis::cmd("PUBLISH")
                        .arg(&self.settings.channel)
                        .arg(&message)
                        .exec(publish)
                        .map(|()| 2)
                }),
                None => return,
            };
            match result {
                Ok(trips) => {
                    self.stats.round_trips.fetch_add(trips, Ordering::Relaxed);
                    self.stats
                        .writes
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    for aor in chunk {
                        self.dirty.remove(aor);
                    }
                }
                Err(e) => {
                    self.failed(&e);
                    self.stats
                        .queued
                        .store(self.dirty.len() as u64, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.stats.queued.store(0, Ordering::Relaxed);
        if self.dirty.capacity() > 65_536 {
            self.dirty.shrink_to(1_024);
        }
        self.publish_durable();
        if self.lost_changes {
            // Changes were dropped while the store was away and it answers again: every AOR
            // is written again (what was dropped is among them).
            self.lost_changes = false;
            self.shards.tell_all(|| RemoteChange::Rejournal);
        }
    }

    /// Every record gathered so far is stored: shards holding responses for them go on.
    fn publish_durable(&mut self) {
        let sync = self.settings.durability == Durability::Sync;
        for (id, &n) in self.numbers.iter().enumerate() {
            if self.durable[id].swap(n, Ordering::SeqCst) != n && sync {
                self.shards.wake(id);
            }
        }
    }

    /// In `sync` durability, a store away for longer than [`SYNC_GIVE_UP`] no longer holds
    /// responses.
    fn release_if_given_up(&mut self) {
        if self.settings.durability != Durability::Sync {
            return;
        }
        if self.down_since.is_some_and(|t| t.elapsed() >= SYNC_GIVE_UP) {
            if !self.gave_up_logged {
                tracing::error!(
                    store = %self.settings.target,
                    "shared store unreachable: REGISTERs are answered without waiting for it \
                     (their changes are queued)"
                );
                self.gave_up_logged = true;
            }
            self.publish_durable();
        }
    }

    fn failed(&mut self, e: &redis::RedisError) {
        if self.conn.take().is_some() || self.down_since.is_none() {
            tracing::error!(store = %self.settings.target, "shared store: {e}; changes are queued until it answers");
        }
        self.stats.connected.store(0, Ordering::Relaxed);
        self.down_since.get_or_insert_with(Instant::now);
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
        self.release_if_given_up();
    }
}
