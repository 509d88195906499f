//! The PostgreSQL sink of call detail records. The CDR writer appends each record to the
//! open segment of the spool (`pg-<seq>.jsonl.open` in the spool directory) and closes it
//! (fdatasync, renamed to `pg-<seq>.jsonl`) within 200 ms; the delivery thread sends each
//! closed segment, oldest first, in batches of up to 1,000 rows, one statement each
//! (`json_populate_recordset`), and deletes the segment only once PostgreSQL committed it.
//! Records carry a unique `id` and the insert skips ids already there, so a segment sent
//! again (a crash between the commit and the delete) adds nothing twice. While PostgreSQL
//! is unreachable, segments wait on disk (also across restarts) and delivery is retried
//! every second.

use super::CdrStats;
use crate::proxy::cdr::CallRecord;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An open segment is closed (and so deliverable) after this long.
pub const CLOSE_AFTER_MS: u64 = 200;
/// Rows per INSERT statement.
const BATCH_ROWS: usize = 1_000;
/// The table records go to.
pub const TABLE: &str = "sipshard_cdr";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS sipshard_cdr (
    id text PRIMARY KEY,
    call_id text NOT NULL,
    start_ms bigint NOT NULL,
    answer_ms bigint,
    end_ms bigint NOT NULL,
    setup_ms bigint NOT NULL,
    duration_ms bigint NOT NULL,
    caller_user text,
    \"from\" text NOT NULL,
    dialed text NOT NULL,
    \"to\" text NOT NULL,
    target text,
    route text,
    trunk text,
    code integer NOT NULL,
    disposition text NOT NULL,
    hangup text,
    source text NOT NULL,
    shard integer NOT NULL
)";

const INSERT: &str = "INSERT INTO sipshard_cdr \
    SELECT * FROM json_populate_recordset(NULL::sipshard_cdr, $1::text::json) \
    ON CONFLICT (id) DO NOTHING";

fn segment_seq(name: &str) -> Option<u64> {
    name.strip_prefix("pg-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The closed segments in `dir`, oldest first.
fn closed_segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((segment_seq(&name)?, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// The writer's side: the open segment.
pub struct PgSpool {
    dir: PathBuf,
    next_seq: u64,
    open: Option<OpenSegment>,
    notify: crossbeam_channel::Sender<()>,
    stats: Arc<CdrStats>,
}

struct OpenSegment {
    file: io::BufWriter<File>,
    path: PathBuf,
    opened_ms: u64,
    records: u64,
}

impl PgSpool {
    /// The spool in `dir`: a segment left open by a crash is closed (its torn last line, if
    /// any, is skipped at delivery). Returns the spool and how many records wait in it.
    pub fn open(
        dir: &Path,
        notify: crossbeam_channel::Sender<()>,
        stats: Arc<CdrStats>,
    ) -> io::Result<PgSpool> {
        fs::create_dir_all(dir)?;
        for e in fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(closed) = name.strip_suffix(".open") {
                if segment_seq(closed).is_some() {
                    fs::rename(e.path(), dir.join(closed))?;
                }
            }
        }
        let segments = closed_segments(dir);
        let waiting: u64 = segments
            .iter()
            .map(|(_, p)| {
                File::open(p)
                    .map(|f| io::BufReader::new(f).lines().count() as u64)
                    .unwrap_or(0)
            })
            .sum();
        stats.postgres_waiting.store(waiting, Ordering::Relaxed);
        if waiting > 0 {
            tracing::info!(records = waiting, dir = %dir.display(), "call detail records waiting for PostgreSQL");
        }
        Ok(PgSpool {
            dir: dir.to_owned(),
            next_seq: segments.last().map_or(1, |(s, _)| s + 1),
            open: None,
            notify,
            stats,
        })
    }

    /// Appends one record (its JSON text).
    pub fn append(&mut self, json: &str, now_ms: u64) -> io::Result<()> {
        if self.open.is_none() {
            let path = self
                .dir
                .join(format!("pg-{:020}.jsonl.open", self.next_seq));
            self.next_seq += 1;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.open = Some(OpenSegment {
                file: io::BufWriter::with_capacity(64 << 10, file),
                path,
                opened_ms: now_ms,
                records: 0,
            });
        }
        let Some(seg) = &mut self.open else {
            return Ok(());
        };
        seg.file.write_all(json.as_bytes())?;
        seg.file.write_all(b"\n")?;
        seg.records += 1;
        self.stats.postgres_waiting.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the open segment when it has been open long enough (or `now` with `force`).
    pub fn close_if_due(&mut self, now_ms: u64, force: bool) -> io::Result<()> {
        let due = self
            .open
            .as_ref()
            .is_some_and(|s| force || now_ms.saturating_sub(s.opened_ms) >= CLOSE_AFTER_MS);
        if !due {
            return Ok(());
        }
        let Some(mut seg) = self.open.take() else {
            return Ok(());
        };
        seg.file.flush()?;
        seg.file.get_ref().sync_data()?;
        let closed = seg.path.with_extension("");
        fs::rename(&seg.path, &closed)?;
        let _ = self.notify.try_send(());
        Ok(())
    }
}

/// The delivery thread: sends closed segments until `stop` (then makes one last attempt).
pub fn deliver_loop(
    url: String,
    dir: PathBuf,
    wake: crossbeam_channel::Receiver<()>,
    stop: Arc<AtomicBool>,
    stats: Arc<CdrStats>,
) {
    let mut client: Option<postgres::Client> = None;
    let mut failing = false;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let segments = closed_segments(&dir);
        let mut failed = false;
        for (_, path) in &segments {
            match deliver_segment(&url, &mut client, path, &stats) {
                Ok((n, lines)) => {
                    if failing {
                        tracing::info!("PostgreSQL is back: call detail records delivered again");
                        failing = false;
                    }
                    stats.postgres_delivered.fetch_add(n, Ordering::Relaxed);
                    let _ = stats.postgres_waiting.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |w| Some(w.saturating_sub(lines)),
                    );
                }
                Err(Failure::Rejected(e, lines)) => {
                    // Data PostgreSQL refuses (a data exception, SQLSTATE class 22) would
                    // block every later record: the segment is set aside, the rest goes on.
                    stats.postgres_errors.fetch_add(1, Ordering::Relaxed);
                    let aside = path.with_extension("rejected");
                    tracing::error!(
                        "PostgreSQL refused call detail records ({e}): kept in {}",
                        aside.display()
                    );
                    let _ = fs::rename(path, &aside);
                    let _ = stats.postgres_waiting.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |w| Some(w.saturating_sub(lines)),
                    );
                }
                Err(Failure::Down(e)) => {
                    stats.postgres_errors.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(
                            "PostgreSQL CDR delivery failed ({e}): records wait in {} and are retried every second",
                            dir.display()
                        );
                        failing = true;
                    }
                    client = None;
                    failed = true;
                    break;
                }
            }
        }
        if stopping {
            if failed {
                tracing::warn!(
                    records = stats.postgres_waiting.load(Ordering::Relaxed),
                    "call detail records left for PostgreSQL in {}; they are sent at the next start",
                    dir.display()
                );
            }
            return;
        }
        // A failure waits a second; otherwise the next segment (or stop) wakes us.
        let wait = if failed {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(500)
        };
        match wake.recv_timeout(wait) {
            Ok(()) if failed => std::thread::sleep(Duration::from_millis(200)),
            _ => {}
        }
    }
}

/// Why a segment was not delivered.
enum Failure {
    /// PostgreSQL is unreachable or failed: retry later.
    Down(String),
    /// PostgreSQL refused the data itself (and the segment's line count).
    Rejected(String, u64),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Down(e)
    }
}

fn connect(url: &str) -> Result<postgres::Client, String> {
    let mut cfg: postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(3));
    }
    let mut client = cfg
        .connect(postgres::NoTls)
        .map_err(|e| format!("connecting: {e}"))?;
    client
        .batch_execute(CREATE_TABLE)
        .map_err(|e| format!("creating {TABLE}: {e}"))?;
    Ok(client)
}

/// Sends one closed segment and deletes it. Returns how many records it held and how many
/// lines (torn ones included).
fn deliver_segment(
    url: &str,
    client: &mut Option<postgres::Client>,
    path: &Path,
    stats: &CdrStats,
) -> Result<(u64, u64), Failure> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows: Vec<String> = Vec::new();
    let mut lines = 0;
    for line in io::BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        lines += 1;
        // A line a crash tore (the end of a segment left open) is not a record.
        if serde_json::from_str::<CallRecord>(&line).is_ok() {
            rows.push(line);
        } else if !line.is_empty() {
            tracing::warn!(file = %path.display(), "skipping a torn call detail record");
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    if client.is_none() {
        *client = Some(connect(url)?);
    }
    let Some(c) = client.as_mut() else {
        return Err(Failure::Down("no connection".into()));
    };
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut array = String::with_capacity(chunk.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
        array.push('[');
        for (i, r) in chunk.iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            array.push_str(r);
        }
        array.push(']');
        if let Err(e) = c.execute(INSERT, &[&array]) {
            let data = e.code().is_some_and(|c| c.code().starts_with("22"));
            return Err(if data {
                Failure::Rejected(format!("inserting: {e}"), lines)
            } else {
                Failure::Down(format!("inserting: {e}"))
            });
        }
    }
    fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((rows.len() as u64, lines))
}
