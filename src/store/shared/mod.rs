//! The shared binding store (issue 21): several sipshard nodes as one service, their
//! registrations shared through Redis or Valkey (one instance, or a Redis Cluster). It is the
//! second backend of the binding store: a shard's registrar writes the same records as for
//! the local log (`super::record`), and the shard hands them over through the same
//! [`super::Journal`]; here one store thread per node receives them from every shard.
//!
//! - `writer`: the store thread. It keeps the latest record of each changed AOR, and writes
//!   what gathered in one pipeline (one round trip for the changes of many REGISTERs), then
//!   tells the other nodes in one message. While the store is away it keeps them (bounded,
//!   counted) and, once it is back, has every shard write all of its AORs again.
//! - `reader`: subscribes to the other nodes' changes, then reads the whole store (at start:
//!   before the shards serve) and gives each shard the AORs it owns.
//! - `value`: what is stored and published (sans-I/O).
//!
//! Data model: one hash per AOR, `sipshard:aor:<AOR key>`, with one field per node holding
//! that node's bindings of the AOR (a version number, then the record the local log would
//! hold). A node only ever writes its own field, so nodes never overwrite each other; a key
//! expires a while after the longest registration allowed. Changes are published on
//! `sipshard:changes`.
//!
//! What a crash can lose: in `batch` durability (default) a REGISTER's 200 leaves after the
//! node's local write; its change reaches the store within a few milliseconds (one pipeline
//! round), so a node that dies loses at most the changes of that window, which the phones
//! repair when they register again. In `sync` durability the 200 waits for the store's reply.

mod reader;
pub mod value;
mod writer;

pub use reader::Loaded;
pub use writer::SharedStore;

use std::fmt;

/// Which shard owns an AOR key (the engine's ownership hash).
pub type Owner = std::sync::Arc<dyn Fn(&[u8]) -> usize + Send + Sync>;

/// Where the shared store is (`--store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `redis://HOST:PORT[/DB]`: one Redis or Valkey server.
    Single(String),
    /// `redis+cluster://HOST:PORT,HOST:PORT,...`: the seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Single(u) => f.write_str(u),
            Target::Cluster(seeds) => {
                let hosts: Vec<&str> = seeds
                    .iter()
                    .map(|s| s.trim_start_matches("redis://"))
                    .collect();
                write!(f, "redis+cluster://{}", hosts.join(","))
            }
        }
    }
}

impl Target {
    /// The channel changes go on: [`value::CHANNEL`], with `:DB` for a database other than 0
    /// (deployments on two databases of one server must not hear each other: Redis channels
    /// are server-wide).
    pub fn channel(&self) -> String {
        let db = match self {
            Target::Single(url) => url
                .trim_start_matches("redis://")
                .split_once('/')
                .and_then(|(_, db)| db.parse::<u32>().ok())
                .unwrap_or(0),
            Target::Cluster(_) => 0,
        };
        if db == 0 {
            value::CHANNEL.to_owned()
        } else {
            format!("{}:{db}", value::CHANNEL)
        }
    }

    /// Parses `--store`; the error names what is wrong.
    pub fn parse(s: &str) -> Result<Target, String> {
        let hostport = |h: &str| -> Result<(), String> {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| format!("'{h}': expected HOST:PORT"))?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("'{h}': expected HOST:PORT"));
            }
            Ok(())
        };
        if let Some(rest) = s.strip_prefix("redis+cluster://") {
            let seeds: Vec<&str> = rest.split(',').map(str::trim).collect();
            if seeds.iter().any(|h| h.is_empty()) {
                return Err("expected redis+cluster://HOST:PORT,HOST:PORT,...".into());
            }
            for h in &seeds {
                hostport(h)?;
            }
            return Ok(Target::Cluster(
                seeds.iter().map(|h| format!("redis://{h}")).collect(),
            ));
        }
        if let Some(rest) = s.strip_prefix("redis://") {
            let (host, db) = match rest.split_once('/') {
                Some((h, db)) => (h, Some(db)),
                None => (rest, None),
            };
            hostport(host)?;
            if let Some(db) = db {
                if !db.is_empty() && db.parse::<u32>().is_err() {
                    return Err(format!("database '{db}': expected a number"));
                }
            }
            return Ok(Target::Single(s.to_owned()));
        }
        Err("expected redis://HOST:PORT[/DB] or redis+cluster://HOST:PORT,...".into())
    }
}

/// The shared store's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSettings {
    pub target: Target,
    /// This node's name (`--node`; default the host name): its field in every AOR's hash.
    pub node: String,
    /// Whether a REGISTER's 200 waits for the store (`sync`) or not (`batch`).
    pub durability: super::Durability,
    /// Changed AORs kept while the store is away; past it changes are dropped (counted) and
    /// every AOR is written again once it is back.
    pub queue_limit: usize,
    /// How long a key outlives its last write: the longest registration allowed, plus a
    /// margin (a dead node's bindings leave the store by themselves).
    pub key_ttl_ms: u64,
    /// How long a start waits for the store's bindings before serving without them.
    pub load_timeout_ms: u64,
    /// This node's address as other nodes reach it (`host:port` of its first UDP listen
    /// address): requests for phones whose flows this node holds come through it.
    pub via: String,
    /// The transport of each local socket, in socket order (`udp,tcp,tls`).
    pub protos: String,
    /// The channel changes go on ([`Target::channel`]).
    pub channel: String,
}

impl SharedSettings {
    /// The channel only this node's subscriber joins (the writes count the listeners of the
    /// changes channel without it).
    pub fn own_channel(&self) -> String {
        format!("{}:node:{}", self.channel, self.node)
    }

    pub fn new(target: Target, node: String, durability: super::Durability) -> SharedSettings {
        SharedSettings {
            node,
            durability,
            queue_limit: 4_000_000,
            key_ttl_ms: (7_200 + 60) * 1_000,
            load_timeout_ms: 5_000,
            via: String::new(),
            protos: "udp".into(),
            channel: target.channel(),
            target,
        }
    }
}

/// Milliseconds since the Unix epoch: the clock binding expiries and versions are on.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The default node name: the host name.
pub fn default_node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sipshard".to_owned())
}

/// What the store threads count (exported in the metrics).
#[derive(Debug, Default)]
pub struct SharedStats {
    /// AOR changes written to the store.
    pub writes: std::sync::atomic::AtomicU64,
    /// Pipelines sent (round trips; a pipeline carries many writes).
    pub round_trips: std::sync::atomic::AtomicU64,
    /// Changes waiting for the store (while it is away).
    pub queued: std::sync::atomic::AtomicU64,
    /// Changes dropped because the queue was full (every AOR is written again later).
    pub dropped: std::sync::atomic::AtomicU64,
    /// Changes of other nodes applied.
    pub remote_changes: std::sync::atomic::AtomicU64,
    /// 1 while the store answers.
    pub connected: std::sync::atomic::AtomicU64,
}

impl SharedStats {
    /// The counters in the metrics text.
    pub fn encode(
        &self,
        enc: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use crate::metrics::{counter, gauge};
        use std::sync::atomic::Ordering::Relaxed;
        counter(
            enc,
            "sipshard_store_writes",
            "AOR changes written to the shared store.",
            self.writes.load(Relaxed),
        )?;
        counter(
            enc,
            "sipshard_store_round_trips",
            "Round trips to the shared store for writes (each carries many changes).",
            self.round_trips.load(Relaxed),
        )?;
        gauge(
            enc,
            "sipshard_store_queued",
            "AOR changes waiting for the shared store.",
            self.queued.load(Relaxed),
        )?;
        counter(
            enc,
            "sipshard_store_dropped",
            "AOR changes dropped because the queue for the shared store was full.",
            self.dropped.load(Relaxed),
        )?;
        counter(
            enc,
            "sipshard_store_remote_changes",
            "Binding changes of other nodes applied.",
            self.remote_changes.load(Relaxed),
        )?;
        gauge(
            enc,
            "sipshard_store_connected",
            "1 while the shared store answers writes.",
            self.connected.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_targets_parse_and_bad_ones_say_why() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379").unwrap(),
            Target::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            Target::parse("redis://db.example:6380/2").unwrap(),
            Target::Single("redis://db.example:6380/2".into())
        );
        assert_eq!(
            Target::parse("redis+cluster://10.0.0.1:7000, 10.0.0.2:7000").unwrap(),
            Target::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7000".into()
            ])
        );
        assert_eq!(
            Target::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")
                .unwrap()
                .to_string(),
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
        );
        assert_eq!(
            Target::parse("redis://h:1/3").unwrap().channel(),
            "sipshard:changes:3"
        );
        assert_eq!(
            Target::parse("redis://h:1/0").unwrap().channel(),
            "sipshard:changes"
        );
        for (bad, why) in [
            ("redis://127.0.0.1", "HOST:PORT"),
            ("redis://127.0.0.1:0", "HOST:PORT"),
            ("redis://:6379", "HOST:PORT"),
            ("redis://127.0.0.1:6379/x", "database 'x'"),
            ("memcached://127.0.0.1:11211", "expected redis://"),
            ("redis+cluster://", "expected redis+cluster://"),
            ("redis+cluster://a:1,,b:2", "expected redis+cluster://"),
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
