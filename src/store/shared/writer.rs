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

/// How long changes gather before a write in `batch` durability: the same window as the
/// local log's batch durability. Most of the store thread's cost is per round trip (the
/// write, the wait for the reply, the sleep): 10 ms instead of 5 took it from 1.25 to
/// 0.80 µs per REGISTER at 20,000/s.
const GATHER: Duration = Duration::from_millis(10);
/// AORs per pipeline (and per change message).
const CHUNK: usize = 1_000;
/// Connect, read and write timeouts of store connections.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// In `sync` durability, how long responses wait for a store that does not answer.
pub const SYNC_GIVE_UP: Duration = Duration::from_secs(1);

/// What a node writes in one round trip to a single server: for each AOR key its value
/// (`HSET` of the node's field, and the key's expiry) or, empty, its removal (`HDEL`); then
/// the change message, if another node listens: the subscribers of the channel are counted
/// against those of this node's own channel (which only its subscriber joins), atomically
/// with the writes, so a node that subscribes later reads them from the store instead. One
/// node alone publishes nothing, and is not even sent the message: the writer leaves it out
/// (empty) while nobody listened at its last write, and the script answers whether somebody
/// listens now (1) or not (0); a writer told 1 without having sent the message publishes it
/// at once (the new listener subscribed before these writes, so it receives it) and sends
/// it with its writes from then on. KEYS: the AOR keys; ARGV: node, expiry (ms), channel,
/// message, this node's channel, then one value per key.
const WRITE_SCRIPT: &str = "\
local node, ttl = ARGV[1], ARGV[2] \
for i, k in ipairs(KEYS) do \
  local v = ARGV[5 + i] \
  if v == '' then redis.call('HDEL', k, node) \
  else redis.call('HSET', k, node, v); redis.call('PEXPIRE', k, ttl) end \
end \
local all = redis.call('PUBSUB', 'NUMSUB', ARGV[3], ARGV[5]) \
if all[2] <= all[4] then return 0 end \
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end \
return 1";

/// RESP: an array header.
fn resp_array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// RESP: a bulk string.
fn resp_bulk(out: &mut Vec<u8>, b: &[u8]) {
    resp_bulk2(out, b, b"");
}

/// RESP: a bulk string of two parts.
fn resp_bulk2(out: &mut Vec<u8>, a: &[u8], b: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(a.len() + b.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

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
                fresh: Vec::new(),
                message: Vec::new(),
                listened: true,
                values: Vec::new(),
                command: Vec::new(),
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
    /// The newest record of each AOR changed and not yet stored (None: removed), kept while
    /// the store is away.
    dirty: hashbrown::HashMap<Box<[u8]>, Option<Box<[u8]>>>,
    /// This round's batches (by shard), written as they are while the store answers.
    fresh: Vec<(usize, Vec<u8>)>,
    /// Scratch: the change message, the values and the command being written.
    message: Vec<u8>,
    /// Another node listened to the change messages at the last write (single server: the
    /// message is sent only then, see [`WRITE_SCRIPT`]).
    listened: bool,
    values: Vec<u8>,
    command: Vec<u8>,
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
        type Fields = Vec<(Vec<u8>, Vec<u8>)>;
        let found: redis::RedisResult<Vec<Fields>> = match self.conn.as_mut() {
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
                pipe.query(c)
            }
            None => Err(redis::RedisError::from(std::io::Error::other(
                "not connected",
            ))),
        };
        let now_ms = super::unix_ms();
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
        if let Some(n) = self.numbers.get_mut(b.shard) {
            *n = (*n).max(b.number);
        }
        if self.conn.is_some() {
            // Written as they are with the round's others (no copy, no map).
            self.fresh.push((b.shard, b.bytes));
        } else {
            let mut bytes = b.bytes;
            self.queue(&bytes);
            self.recycle(b.shard, &mut bytes);
        }
    }

    /// The version of the next change written: above the last one, and at least `floor`
    /// (the clock's milliseconds shifted left, read once per write: a clock read per AOR
    /// was 4% of the store thread).
    fn next_version(&mut self, floor: u64) -> u64 {
        self.version = (self.version + 1).max(floor);
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
        if self.conn.is_none() {
            self.queue_fresh();
            return;
        }
        if self.dirty.is_empty() && self.fresh.is_empty() {
            return;
        }
        // What waited (after an outage) first, then this round's records in the order the
        // shards wrote them (an AOR twice in a round: the later write wins).
        let dirty = core::mem::take(&mut self.dirty);
        let fresh = core::mem::take(&mut self.fresh);
        let items: Vec<(&[u8], Option<&[u8]>)> = dirty
            .iter()
            .map(|(k, v)| (&k[..], v.as_deref()))
            .chain(
                fresh
                    .iter()
                    .flat_map(|(_, b)| crate::store::record::frames(b)),
            )
            .collect();
        let mut result = Ok(());
        for chunk in items.chunks(CHUNK) {
            match self.send(chunk) {
                Ok(trips) => {
                    self.stats.round_trips.fetch_add(trips, Ordering::Relaxed);
                    self.stats
                        .writes
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(items);
        match result {
            Ok(()) => {
                for (shard, mut bytes) in fresh {
                    self.recycle(shard, &mut bytes);
                }
                self.dirty = dirty;
                self.dirty.clear();
            }
            Err(e) => {
                // Written again whole once the store answers (a write is idempotent).
                self.dirty = dirty;
                self.fresh = fresh;
                self.queue_fresh();
                self.failed(&e);
                self.stats
                    .queued
                    .store(self.dirty.len() as u64, Ordering::Relaxed);
                return;
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

    /// Writes one chunk of AOR records (None: removed) and the change message for them: on
    /// one server, one `EVAL` of [`WRITE_SCRIPT`] (one command and one reply per round trip,
    /// however many AORs); on a cluster, a pipeline split by node, then the `PUBLISH`.
    /// Returns the round trips taken.
    fn send(&mut self, chunk: &[(&[u8], Option<&[u8]>)]) -> redis::RedisResult<u64> {
        let mut message = core::mem::take(&mut self.message);
        let mut values = core::mem::take(&mut self.values);
        values.clear();
        message.clear();
        let mut ends = Vec::with_capacity(chunk.len());
        let floor = super::unix_ms() << 16;
        for &(_, frame) in chunk {
            let version = self.next_version(floor);
            let at = values.len();
            match frame {
                Some(f) => value::encode(
                    &mut values,
                    version,
                    &self.settings.via,
                    &self.settings.protos,
                    f,
                ),
                None => value::removal(&mut values, version),
            }
            ends.push((at, values.len(), frame.is_some()));
        }
        let build_message = |message: &mut Vec<u8>| {
            value::message_start(message, &self.settings.node, &self.settings.via);
            for (&(aor, _), &(at, end, _)) in chunk.iter().zip(&ends) {
                value::message_add(message, aor, &values[at..end]);
            }
        };
        let node = self.settings.node.as_bytes();
        let result = match self.conn.as_mut() {
            Some(Conn::Single(c)) => {
                if self.listened {
                    build_message(&mut message);
                }
                let mut cmd = core::mem::take(&mut self.command);
                cmd.clear();
                resp_array(&mut cmd, 3 + chunk.len() + 5 + chunk.len());
                resp_bulk(&mut cmd, b"EVAL");
                resp_bulk(&mut cmd, WRITE_SCRIPT.as_bytes());
                resp_bulk(&mut cmd, itoa::Buffer::new().format(chunk.len()).as_bytes());
                for &(aor, _) in chunk {
                    resp_bulk2(&mut cmd, value::KEY_PREFIX, aor);
                }
                resp_bulk(&mut cmd, node);
                resp_bulk(
                    &mut cmd,
                    itoa::Buffer::new()
                        .format(self.settings.key_ttl_ms)
                        .as_bytes(),
                );
                resp_bulk(&mut cmd, self.settings.channel.as_bytes());
                resp_bulk(&mut cmd, &message);
                resp_bulk(&mut cmd, self.settings.own_channel().as_bytes());
                for &(at, end, put) in &ends {
                    resp_bulk(&mut cmd, if put { &values[at..end] } else { b"" });
                }
                let r = redis::ConnectionLike::req_packed_command(c, &cmd).and_then(|v| match v {
                    redis::Value::ServerError(e) => Err(e.into()),
                    v => Ok(v == redis::Value::Int(1)),
                });
                self.command = cmd;
                match r {
                    Ok(listened) if listened && message.is_empty() => {
                        // Somebody listens since the last write: it subscribed before these
                        // writes, so the message published now reaches it.
                        build_message(&mut message);
                        self.listened = true;
                        redis::cmd("PUBLISH")
                            .arg(&self.settings.channel)
                            .arg(&message)
                            .exec(c)
                            .map(|()| 2)
                    }
                    Ok(listened) => {
                        self.listened = listened;
                        Ok(1)
                    }
                    Err(e) => Err(e),
                }
            }
            Some(Conn::Cluster(c, publish)) => {
                build_message(&mut message);
                let ttl = self.settings.key_ttl_ms;
                let mut pipe = redis::cluster::cluster_pipe();
                for (&(aor, _), &(at, end, put)) in chunk.iter().zip(&ends) {
                    let k = value::key(aor);
                    if put {
                        pipe.cmd("HSET")
                            .arg(&k)
                            .arg(node)
                            .arg(&values[at..end])
                            .ignore();
                        pipe.cmd("PEXPIRE").arg(&k).arg(ttl).ignore();
                    } else {
                        pipe.cmd("HDEL").arg(&k).arg(node).ignore();
                    }
                }
                pipe.exec(c).and_then(|()| {
                    redis::cmd("PUBLISH")
                        .arg(&self.settings.channel)
                        .arg(&message)
                        .exec(publish)
                        .map(|()| 2)
                })
            }
            None => Err(redis::RedisError::from(std::io::Error::other(
                "not connected",
            ))),
        };
        self.message = message;
        self.values = values;
        result
    }

    /// This round's records go to the queue (coalesced per AOR, bounded): the store is away.
    fn queue_fresh(&mut self) {
        for (shard, mut bytes) in core::mem::take(&mut self.fresh) {
            self.queue(&bytes);
            self.recycle(shard, &mut bytes);
        }
    }

    /// Adds records to the queue of changes the store has not taken (the newest per AOR);
    /// past the limit they are dropped (every AOR is written again later).
    fn queue(&mut self, bytes: &[u8]) {
        for (aor, frame) in crate::store::record::frames(bytes) {
            if self.dirty.len() >= self.settings.queue_limit && !self.dirty.contains_key(aor) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.lost_changes = true;
                continue;
            }
            self.dirty.insert(aor.into(), frame.map(Into::into));
        }
        self.stats
            .queued
            .store(self.dirty.len() as u64, Ordering::Relaxed);
    }

    /// Gives an emptied buffer back to its shard (not one grown by a rewrite of every AOR).
    fn recycle(&mut self, shard: usize, bytes: &mut Vec<u8>) {
        let mut bytes = core::mem::take(bytes);
        bytes.clear();
        if bytes.capacity() <= 1 << 20 {
            if let Some(s) = self.spare.get(shard) {
                let _ = s.try_send(bytes);
            }
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
