//! Call detail records out of the process (the shell side of `crate::proxy::cdr`, which
//! builds them): each shard hands its finished records to one CDR writer thread through a
//! bounded queue ([`CdrOutlet`]); a full queue spills to a file in the spool directory that
//! the writer picks up later, so a record is never dropped and a shard never waits. The
//! writer appends to the file sinks (JSON lines, CSV; rotated by size or age between two
//! records, so rotation loses nothing) and to the PostgreSQL spool, whose own thread
//! delivers closed spool segments in batches and deletes a segment only once PostgreSQL has
//! committed it: while PostgreSQL is down, records wait on disk, across restarts too.

pub mod postgres;
pub mod sink;
pub mod writer;

pub use writer::{CdrOutlet, CdrService};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where records go (`--cdr`, repeatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// One JSON object per line (`jsonl:PATH`, or a bare PATH).
    Jsonl(PathBuf),
    /// RFC 4180 CSV with a header line (`csv:PATH`).
    Csv(PathBuf),
    /// A PostgreSQL table, `sipshard_cdr` (`postgres:URL`, URL as libpq takes it).
    Postgres(String),
}

impl SinkSpec {
    /// Parses `jsonl:PATH`, `csv:PATH`, `postgres:URL` (or a bare path: JSON lines).
    pub fn parse(s: &str) -> Result<SinkSpec, String> {
        let spec = if let Some(p) = s.strip_prefix("jsonl:") {
            SinkSpec::Jsonl(PathBuf::from(p))
        } else if let Some(p) = s.strip_prefix("csv:") {
            SinkSpec::Csv(PathBuf::from(p))
        } else if let Some(url) = s.strip_prefix("postgres:") {
            // `postgres:postgres://...` and `postgres://...` both name a server.
            let url = if url.starts_with("//") {
                s.to_owned()
            } else {
                url.to_owned()
            };
            url.parse::<::postgres::Config>()
                .map_err(|e| format!("'{s}': not a PostgreSQL URL ({e})"))?;
            SinkSpec::Postgres(url)
        } else if s.contains(':') && !s.starts_with('/') && !s.starts_with('.') {
            return Err(format!(
                "'{s}': expected jsonl:PATH, csv:PATH or postgres:URL"
            ));
        } else {
            SinkSpec::Jsonl(PathBuf::from(s))
        };
        match &spec {
            SinkSpec::Jsonl(p) | SinkSpec::Csv(p) if p.as_os_str().is_empty() => {
                Err(format!("'{s}': the file path is missing"))
            }
            _ => Ok(spec),
        }
    }

    fn file(&self) -> Option<&PathBuf> {
        match self {
            SinkSpec::Jsonl(p) | SinkSpec::Csv(p) => Some(p),
            SinkSpec::Postgres(_) => None,
        }
    }
}

/// The CDR settings of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrConfig {
    pub sinks: Vec<SinkSpec>,
    /// Spill files and the PostgreSQL spool: `DATA_DIR/cdr`, or `<first file sink>.spool`.
    pub spool: PathBuf,
    /// A file sink is rotated when it reaches this size (0: never).
    pub rotate_bytes: u64,
    /// ... or this age (0: never).
    pub rotate_ms: u64,
    /// Batches (a shard's records of one loop round) the writer's queue holds before the
    /// shards spill to disk.
    pub queue_batches: usize,
}

impl CdrConfig {
    /// Settings for `sinks`, the spool in `data_dir/cdr` or next to the first file sink.
    pub fn new(sinks: Vec<SinkSpec>, data_dir: Option<&std::path::Path>) -> Result<Self, String> {
        let spool = match (data_dir, sinks.iter().find_map(|s| s.file())) {
            (Some(d), _) => d.join("cdr"),
            (None, Some(f)) => {
                let mut p = f.clone().into_os_string();
                p.push(".spool");
                PathBuf::from(p)
            }
            (None, None) => {
                return Err(
                    "--cdr postgres: records wait on disk while PostgreSQL is away: \
                            needs --data-dir (or a file sink next to it)"
                        .into(),
                )
            }
        };
        Ok(CdrConfig {
            sinks,
            spool,
            rotate_bytes: 64 << 20,
            rotate_ms: 0,
            queue_batches: 4_096,
        })
    }
}

/// The CDR counters (metrics).
#[derive(Debug, Default)]
pub struct CdrStats {
    /// Records taken from the shards.
    pub records: AtomicU64,
    /// Records a shard spilled to disk because the writer's queue was full.
    pub spilled: AtomicU64,
    /// Records written to each file sink, summed.
    pub file_written: AtomicU64,
    /// Records PostgreSQL committed.
    pub postgres_delivered: AtomicU64,
    /// Records waiting in the PostgreSQL spool.
    pub postgres_waiting: AtomicU64,
    /// Failed PostgreSQL deliveries (connection or statement).
    pub postgres_errors: AtomicU64,
    /// Records a file sink or spill file failed to take (disk full, ...): lost for that sink.
    pub write_errors: AtomicU64,
}

impl CdrStats {
    /// The counters, for the metrics endpoint.
    pub fn encode(
        &self,
        enc: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use crate::metrics::{counter, gauge};
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            enc,
            "sipshard_cdr_records",
            "Call detail records produced.",
            v(&self.records),
        )?;
        counter(
            enc,
            "sipshard_cdr_spilled",
            "Records a shard spilled to disk because the CDR writer's queue was full.",
            v(&self.spilled),
        )?;
        counter(
            enc,
            "sipshard_cdr_file_written",
            "Records written to file sinks.",
            v(&self.file_written),
        )?;
        counter(
            enc,
            "sipshard_cdr_postgres_delivered",
            "Records PostgreSQL committed.",
            v(&self.postgres_delivered),
        )?;
        gauge(
            enc,
            "sipshard_cdr_postgres_waiting",
            "Records waiting on disk for PostgreSQL.",
            v(&self.postgres_waiting),
        )?;
        counter(
            enc,
            "sipshard_cdr_postgres_errors",
            "Failed PostgreSQL deliveries (they are retried).",
            v(&self.postgres_errors),
        )?;
        counter(
            enc,
            "sipshard_cdr_write_errors",
            "Failed CDR file writes.",
            v(&self.write_errors),
        )
    }
}

/// `YYYYmmddTHHMMSS` (UTC) of Unix time `ms`: the suffix of a rotated file.
pub fn utc_stamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_parse_and_bad_ones_say_why() {
        assert_eq!(
            SinkSpec::parse("jsonl:/var/log/cdr.jsonl").unwrap(),
            SinkSpec::Jsonl("/var/log/cdr.jsonl".into())
        );
        assert_eq!(
            SinkSpec::parse("/tmp/c.jsonl").unwrap(),
            SinkSpec::Jsonl("/tmp/c.jsonl".into())
        );
        assert_eq!(
            SinkSpec::parse("csv:cdr.csv").unwrap(),
            SinkSpec::Csv("cdr.csv".into())
        );
        assert_eq!(
            SinkSpec::parse("postgres:postgres://u@127.0.0.1:5432/db").unwrap(),
            SinkSpec::Postgres("postgres://u@127.0.0.1:5432/db".into())
        );
        assert_eq!(
            SinkSpec::parse("postgres://u@h/db").unwrap(),
            SinkSpec::Postgres("postgres://u@h/db".into())
        );
        assert!(SinkSpec::parse("kafka:x")
            .unwrap_err()
            .contains("expected jsonl:PATH"));
        assert!(SinkSpec::parse("csv:")
            .unwrap_err()
            .contains("path is missing"));
        assert!(SinkSpec::parse("postgres:postgres://h:notaport/db")
            .unwrap_err()
            .contains("not a PostgreSQL URL"));
    }

    #[test]
    fn the_spool_is_in_the_data_dir_or_next_to_a_file_sink() {
        let pg = SinkSpec::Postgres("postgres://h/db".into());
        let file = SinkSpec::Csv("/x/cdr.csv".into());
        let c = CdrConfig::new(vec![pg.clone()], Some("/data".as_ref())).unwrap();
        assert_eq!(c.spool, PathBuf::from("/data/cdr"));
        let c = CdrConfig::new(vec![pg.clone(), file], None).unwrap();
        assert_eq!(c.spool, PathBuf::from("/x/cdr.csv.spool"));
        assert!(CdrConfig::new(vec![pg], None)
            .unwrap_err()
            .contains("needs --data-dir"));
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000");
        assert_eq!(utc_stamp(951_782_400_000), "20000229T000000");
        assert_eq!(utc_stamp(1_796_570_096_789), "20261206T151456");
    }
}
