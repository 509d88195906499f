//! The CDR writer thread and the shards' outlets to it. A shard puts the records its core
//! finished into its [`CdrOutlet`] and sends them once per loop round through a bounded
//! channel (no lock, no wait); when the channel is full the outlet appends them to a spill
//! file of its own in the spool directory instead (counted), which the writer reads back
//! once it has caught up. The writer gives every record to each file sink and the
//! PostgreSQL spool, flushes each round, syncs every second, rotates files and closes
//! PostgreSQL segments on time.

use super::postgres::PgSpool;
use super::sink::{FileSink, Format};
use super::{CdrConfig, CdrStats, SinkSpec};
use crate::proxy::cdr::CallRecord;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A shard sends its records once it has this many (or they are this old, or it is about to
/// sleep): waking the writer once per record would cost more than the record itself.
const SEND_AT_RECORDS: usize = 64;
const SEND_AFTER_MS: u64 = 100;
/// How often a busy writer takes what the shards sent.
const WRITE_EVERY_MS: u64 = 100;
/// How often the writer looks for spill files.
const SYNC_EVERY_MS: u64 = 1_000;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The running CDR writer (and PostgreSQL delivery thread).
pub struct CdrService {
    tx: Sender<Vec<CallRecord>>,
    spool: PathBuf,
    stats: Arc<CdrStats>,
    writer: JoinHandle<()>,
    deliverer: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// One shard's way to the writer.
pub struct CdrOutlet {
    tx: Sender<Vec<CallRecord>>,
    spool: PathBuf,
    shard: usize,
    stats: Arc<CdrStats>,
    /// Where the core puts its finished records.
    batch: Vec<CallRecord>,
    /// The spill file being written while the channel is full.
    spill: Option<(io::BufWriter<File>, PathBuf)>,
    spill_seq: u64,
    /// When the oldest record of `batch` came (core time).
    oldest_ms: Option<u64>,
}

impl CdrOutlet {
    /// After a loop round that may have added records: sends them when there are enough of
    /// them or the oldest has waited long enough.
    pub fn round(&mut self, now_ms: u64) {
        if self.batch.is_empty() {
            if self.spill.is_some() {
                self.flush();
            }
            return;
        }
        let oldest = *self.oldest_ms.get_or_insert(now_ms);
        if self.batch.len() >= SEND_AT_RECORDS || now_ms.saturating_sub(oldest) >= SEND_AFTER_MS {
            self.flush();
        }
    }

    /// When [`CdrOutlet::round`] sends the records held (None: none held).
    pub fn next_send_ms(&self) -> Option<u64> {
        self.oldest_ms.map(|t| t + SEND_AFTER_MS)
    }

    /// Where the core puts its finished records (`Core::take_records`).
    pub fn records(&mut self) -> &mut Vec<CallRecord> {
        &mut self.batch
    }

    /// Sends the records held now: to the writer's queue, or to the spill file while the
    /// queue is full (and until it has room again, so a burst keeps its order on disk).
    pub fn flush(&mut self) {
        self.oldest_ms = None;
        if self.batch.is_empty() {
            if self.spill.is_some() && !self.queue_busy() {
                self.close_spill();
            }
            return;
        }
        let n = self.batch.len() as u64;
        self.stats.records.fetch_add(n, Ordering::Relaxed);
        if self.spill.is_some() {
            if self.queue_busy() {
                let batch = std::mem::take(&mut self.batch);
                return self.spill_out(batch);
            }
            self.close_spill();
        }
        match self.tx.try_send(std::mem::take(&mut self.batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => self.spill_out(b),
        }
    }

    /// The queue is still at least half full (after a spill, records keep going to disk
    /// until it is not, so the writer catches up and a burst stays in order on disk).
    fn queue_busy(&self) -> bool {
        let half = self.tx.capacity().map_or(1, |c| (c / 2).max(1));
        self.tx.len() >= half
    }

    fn spill_out(&mut self, batch: Vec<CallRecord>) {
        if self.spill.is_none() {
            self.spill_seq += 1;
            let path = self.spool.join(format!(
                "spill-{}-{}-{}.jsonl.open",
                self.shard,
                wall_ms(),
                self.spill_seq
            ));
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    tracing::warn!(
                        shard = self.shard,
                        "the CDR writer is behind: call detail records spill to {}",
                        path.display()
                    );
                    self.spill = Some((io::BufWriter::new(f), path));
                }
                Err(e) => {
                    tracing::error!(
                        shard = self.shard,
                        "call detail records lost: {}: {e}",
                        path.display()
                    );
                    self.stats
                        .write_errors
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return;
                }
            }
        }
        let Some((f, _)) = &mut self.spill else {
            return;
        };
        let mut ok = true;
        let mut line = String::with_capacity(512);
        for r in &batch {
            line.clear();
            r.write_json(&mut line);
            line.push('\n');
            ok &= f.write_all(line.as_bytes()).is_ok();
        }
        ok &= f.flush().is_ok();
        if ok {
            self.stats
                .spilled
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        } else {
            self.stats
                .write_errors
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    }

    /// Ends the spill file: renamed so that the writer takes it.
    fn close_spill(&mut self) {
        if let Some((mut f, path)) = self.spill.take() {
            let _ = f.flush();
            drop(f);
            let _ = fs::rename(&path, path.with_extension(""));
        }
    }
}

impl Drop for CdrOutlet {
    fn drop(&mut self) {
        self.flush();
        self.close_spill();
    }
}

/// Renames spill files a crash left open, so they are taken.
fn close_left_open(spool: &Path) {
    for e in fs::read_dir(spool).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("spill-") && name.ends_with(".jsonl.open") {
            let _ = fs::rename(e.path(), e.path().with_extension(""));
        }
    }
}

/// The closed spill files, oldest first.
fn spill_files(spool: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(spool)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("spill-") && n.ends_with(".jsonl"))
        })
        .collect();
    v.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    v
}

struct Writer {
    files: Vec<FileSink>,
    pg: Option<PgSpool>,
    spool: PathBuf,
    stats: Arc<CdrStats>,
    last_error_log: u64,
}

impl Writer {
    fn error(&mut self, what: &str, e: io::Error, now_ms: u64) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        if now_ms.saturating_sub(self.last_error_log) >= 10_000 {
            tracing::error!("call detail records: {what}: {e}");
            self.last_error_log = now_ms;
        }
    }

    fn write(&mut self, batch: &[CallRecord], now_ms: u64) {
        let mut json = String::with_capacity(512);
        for r in batch {
            json.clear();
            r.write_json(&mut json);
            for i in 0..self.files.len() {
                let res = self.files[i].write(r, &json, now_ms);
                match res {
                    Ok(()) => {
                        self.stats.file_written.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let what = self.files[i].path().display().to_string();
                        self.error(&what, e, now_ms);
                    }
                }
            }
            if let Some(pg) = &mut self.pg {
                if let Err(e) = pg.append(&json, now_ms) {
                    self.error("the PostgreSQL spool", e, now_ms);
                }
            }
        }
    }

    /// Takes the spill files back (after the queue emptied).
    fn take_spills(&mut self, now_ms: u64) {
        for path in spill_files(&self.spool) {
            let Ok(f) = File::open(&path) else { continue };
            let mut batch = Vec::new();
            for line in io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<CallRecord>(&line) {
                    Ok(r) => batch.push(r),
                    Err(_) if line.is_empty() => {}
                    Err(_) => {
                        tracing::warn!(file = %path.display(), "skipping a torn spilled call detail record");
                    }
                }
            }
            self.write(&batch, now_ms);
            let _ = fs::remove_file(&path);
        }
    }

    fn tick(&mut self, now_ms: u64, sync: bool, force_close: bool) {
        for i in 0..self.files.len() {
            let res = if sync {
                self.files[i].sync()
            } else {
                self.files[i].flush()
            }
            .and_then(|_| self.files[i].rotate_if_due(now_ms));
            if let Err(e) = res {
                let what = self.files[i].path().display().to_string();
                self.error(&what, e, now_ms);
            }
        }
        if let Some(pg) = &mut self.pg {
            if let Err(e) = pg.close_if_due(now_ms, force_close) {
                self.error("the PostgreSQL spool", e, now_ms);
            }
        }
    }

    fn run(mut self, rx: Receiver<Vec<CallRecord>>) {
        let mut last_sync = wall_ms();
        let mut done = false;
        self.take_spills(last_sync);
        // While batches keep coming the writer takes them on a timer (one wake-up per
        // interval, and a shard's send wakes nobody); after an interval without any it
        // blocks on the channel again, so an idle writer costs nothing.
        let mut busy = false;
        while !done {
            let slept = busy;
            if busy {
                std::thread::sleep(Duration::from_millis(WRITE_EVERY_MS));
            } else {
                match rx.recv_timeout(Duration::from_millis(WRITE_EVERY_MS)) {
                    Ok(b) => {
                        self.write(&b, wall_ms());
                        // More are likely to follow: the next ones are taken on the timer.
                        busy = true;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => done = true,
                }
            }
            let mut took = false;
            for _ in 0..rx.capacity().unwrap_or(1) {
                match rx.try_recv() {
                    Ok(b) => {
                        self.write(&b, wall_ms());
                        took = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        done = true;
                        break;
                    }
                }
            }
            if slept {
                busy = took;
            }
            let now = wall_ms();
            let sync = done || now.saturating_sub(last_sync) >= SYNC_EVERY_MS;
            if sync {
                last_sync = now;
                if rx.is_empty() {
                    self.take_spills(now);
                }
            }
            // Files are synced at shutdown (and rotation) only: between, a record is in the
            // kernel 100 ms after its batch arrived, which a crash of the process does not
            // lose, and a periodic fdatasync would cost more than writing the records.
            self.tick(now, done, done);
        }
    }
}

impl CdrService {
    /// Opens the sinks and the spool and starts the writer (and, with a PostgreSQL sink,
    /// its delivery thread).
    pub fn start(cfg: &CdrConfig) -> io::Result<CdrService> {
        let now = wall_ms();
        fs::create_dir_all(&cfg.spool)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cfg.spool.display())))?;
        close_left_open(&cfg.spool);
        let stats = Arc::new(CdrStats::default());
        let mut files = Vec::new();
        let mut pg_url = None;
        for s in &cfg.sinks {
            match s {
                SinkSpec::Jsonl(p) | SinkSpec::Csv(p) => {
                    let format = if matches!(s, SinkSpec::Csv(_)) {
                        Format::Csv
                    } else {
                        Format::Jsonl
                    };
                    let sink =
                        FileSink::open(p.clone(), format, cfg.rotate_bytes, cfg.rotate_ms, now)
                            .map_err(|e| {
                                io::Error::new(e.kind(), format!("{}: {e}", p.display()))
                            })?;
                    files.push(sink);
                }
                SinkSpec::Postgres(url) => pg_url = Some(url.clone()),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let (pg, deliverer) = match pg_url {
            Some(url) => {
                let spool = PgSpool::open(&cfg.spool, wake_tx, stats.clone())?;
                let (dir, stop, stats) = (cfg.spool.clone(), stop.clone(), stats.clone());
                let t = std::thread::Builder::new()
                    .name("cdr-postgres".into())
                    .spawn(move || super::postgres::deliver_loop(url, dir, wake_rx, stop, stats))?;
                (Some(spool), Some(t))
            }
            None => (None, None),
        };
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue_batches.max(1));
        let writer = Writer {
            files,
            pg,
            spool: cfg.spool.clone(),
            stats: stats.clone(),
            last_error_log: 0,
        };
        let writer = std::thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(CdrService {
            tx,
            spool: cfg.spool.clone(),
            stats,
            writer,
            deliverer,
            stop,
        })
    }

    /// Shard `shard`'s outlet.
    pub fn outlet(&self, shard: usize) -> CdrOutlet {
        CdrOutlet {
            tx: self.tx.clone(),
            spool: self.spool.clone(),
            shard,
            stats: self.stats.clone(),
            batch: Vec::new(),
            spill: None,
            spill_seq: 0,
            oldest_ms: None,
        }
    }

    pub fn stats(&self) -> Arc<CdrStats> {
        self.stats.clone()
    }

    /// Writes what is queued and stops (after the shards, whose outlets must be gone):
    /// the files are synced, the PostgreSQL spool closed and one last delivery tried.
    pub fn shutdown(self) {
        drop(self.tx);
        let _ = self.writer.join();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.deliverer {
            let _ = d.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::cdr::{Disposition, Hangup};

    fn record(i: u64) -> CallRecord {
        CallRecord {
            id: format!("id-{i}"),
            call_id: format!("c{i}"),
            start_ms: i,
            answer_ms: None,
            end_ms: i,
            setup_ms: 0,
            duration_ms: 0,
            caller_user: None,
            from: "sip:a@x".into(),
            dialed: "b".into(),
            to: "sip:b@x".into(),
            target: None,
            route: None,
            trunk: None,
            code: 486,
            disposition: Disposition::Busy,
            hangup: None::<Hangup>,
            source: "10.0.0.1:5060".parse().unwrap(),
            shard: 1,
        }
    }

    #[test]
    fn a_full_queue_spills_to_disk_and_the_writer_takes_the_spill_back_in_order() {
        let dir = std::env::temp_dir().join(format!("sipshard-spill-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let stats = Arc::new(CdrStats::default());
        // A queue of one batch nobody reads: the second and third batches spill.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut outlet = CdrOutlet {
            tx,
            spool: dir.clone(),
            shard: 1,
            stats: stats.clone(),
            batch: Vec::new(),
            spill: None,
            spill_seq: 0,
            oldest_ms: None,
        };
        for i in 0..3 {
            outlet.records().extend([record(2 * i), record(2 * i + 1)]);
            outlet.flush();
        }
        assert_eq!(stats.records.load(Ordering::Relaxed), 6);
        assert_eq!(
            stats.spilled.load(Ordering::Relaxed),
            4,
            "counted, not dropped"
        );
        assert!(
            spill_files(&dir).is_empty(),
            "an open spill file is not taken yet"
        );
        // The writer catches up: the queued batch, then the spill, once closed.
        let queued = rx.try_recv().unwrap();
        drop(outlet);
        assert_eq!(spill_files(&dir).len(), 1);
        let sink_path = dir.join("cdr.jsonl");
        let mut w = Writer {
            files: vec![FileSink::open(sink_path.clone(), Format::Jsonl, 0, 0, 0).unwrap()],
            pg: None,
            spool: dir.clone(),
            stats: stats.clone(),
            last_error_log: 0,
        };
        w.write(&queued, 0);
        w.take_spills(0);
        w.tick(0, true, true);
        let ids: Vec<String> = fs::read_to_string(&sink_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<CallRecord>(l).unwrap().id)
            .collect();
        let want: Vec<String> = (0..6).map(|i| format!("id-{i}")).collect();
        assert_eq!(ids, want);
        assert!(
            spill_files(&dir).is_empty(),
            "a spill file taken is removed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_spill_file_left_open_by_a_crash_is_taken_at_the_next_start() {
        let dir = std::env::temp_dir().join(format!("sipshard-spill-crash-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut text = serde_json::to_string(&record(7)).unwrap();
        text.push_str("\n{\"id\":\"torn");
        fs::write(dir.join("spill-0-1-1.jsonl.open"), text).unwrap();
        let sink = dir.join("out.jsonl");
        let cfg = CdrConfig {
            sinks: vec![SinkSpec::Jsonl(sink.clone())],
            spool: dir.clone(),
            rotate_bytes: 0,
            rotate_ms: 0,
            queue_batches: 16,
        };
        let service = CdrService::start(&cfg).unwrap();
        service.shutdown();
        let out = fs::read_to_string(&sink).unwrap();
        assert_eq!(
            out.lines().count(),
            1,
            "the whole record, not the torn one: {out}"
        );
        assert!(spill_files(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
