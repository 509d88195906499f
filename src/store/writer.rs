//! A shard's writer thread and the shard's end of it. The shard never touches the disk: after
//! each receive round it hands the records its registrar wrote to [`Journal::flush`], which
//! passes them to the writer through a bounded channel without blocking (when the channel is
//! full the records wait in the shard and go with the next round's). The writer appends them
//! to the current log segment: in `batch` mode it gathers [`SYNC_EVERY_MS`] of them while it
//! sleeps, then writes and `fdatasync`s them at once, and stays on that cadence while records
//! keep coming; in `sync` mode it writes and syncs what is waiting as soon as it wakes (group
//! commit). A segment is filled with zeros a chunk ahead of its records, so that an append
//! allocates nothing and a sync writes no metadata (the reader takes the zeros for the end). It publishes the highest
//! batch number on disk, waking the shard, which holds back a round's responses in `sync` mode
//! until then. A segment past the size limit is closed and compacted into a snapshot.

use super::files::{compact, segment_path, ShardLog};
use super::record::MAGIC;
use super::{Durability, StoreSettings, SYNC_EVERY_MS};
use crate::transport::Waker;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Buffers in flight between a shard and its writer.
const CHANNEL: usize = 256;

/// Records with the number of the last flush they belong to, from one shard.
pub(crate) struct Batch {
    pub shard: usize,
    pub number: u64,
    pub bytes: Vec<u8>,
}

/// The shard's end: where its registrar's records go (its log's writer thread, or the
/// node's shared store thread).
pub struct Journal {
    shard: usize,
    tx: Sender<Batch>,
    /// Emptied buffers coming back from the writer (no allocation per round).
    spare: Receiver<Vec<u8>>,
    /// Records not yet handed over, and the flush number they will carry.
    pending: Vec<u8>,
    last_number: u64,
    durable: Arc<AtomicU64>,
    durability: Durability,
    writer_gone_logged: bool,
}

impl Journal {
    /// A shard's end of a writer that takes batches from `tx`, gives emptied buffers back
    /// on `spare` and publishes the highest batch number stored in `durable`.
    pub(crate) fn to(
        shard: usize,
        tx: Sender<Batch>,
        spare: Receiver<Vec<u8>>,
        durable: Arc<AtomicU64>,
        durability: Durability,
    ) -> Journal {
        Journal {
            shard,
            tx,
            spare,
            pending: Vec::with_capacity(16 << 10),
            last_number: 0,
            durable,
            durability,
            writer_gone_logged: false,
        }
    }

    /// The buffer the registrar's records are appended to.
    pub fn pending(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// Hands what is pending to the writer. Returns the flush number that covers every record
    /// written so far (0 when none ever was); it is on disk once [`Journal::durable`] reaches it.
    pub fn flush(&mut self) -> u64 {
        if self.pending.is_empty() {
            return self.last_number;
        }
        // A new number each time: records kept from a full channel join the new ones and
        // the batch is on disk only once all of it is.
        self.last_number += 1;
        let batch = Batch {
            shard: self.shard,
            number: self.last_number,
            bytes: core::mem::take(&mut self.pending),
        };
        match self.tx.try_send(batch) {
            Ok(()) => self.pending = self.spare.try_recv().unwrap_or_default(),
            // The writer is behind: keep the records (later ones join them).
            Err(TrySendError::Full(b)) => self.pending = b.bytes,
            Err(TrySendError::Disconnected(b)) => {
                if !self.writer_gone_logged {
                    tracing::error!("binding store writer stopped: bindings are no longer saved");
                    self.writer_gone_logged = true;
                }
                self.pending = b.bytes;
                self.pending.clear();
                // Nothing will ever be durable: do not hold responses for it.
                self.durable.store(u64::MAX, Ordering::SeqCst);
            }
        }
        self.last_number
    }

    /// The highest flush number on disk.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }
}

/// A running writer thread (joined at shutdown, after the shards stopped: it writes and syncs
/// what they left).
pub struct Writer {
    handle: JoinHandle<()>,
}

impl Writer {
    /// Starts shard `shard`'s writer on `log`. `waker` wakes the shard when records become
    /// durable (`sync` mode holds responses until then).
    pub fn spawn(
        shard: usize,
        log: ShardLog,
        settings: &StoreSettings,
        waker: Arc<Waker>,
    ) -> io::Result<(Journal, Writer)> {
        let (tx, rx) = bounded::<Batch>(CHANNEL);
        let (spare_tx, spare) = bounded::<Vec<u8>>(CHANNEL);
        let durable = Arc::new(AtomicU64::new(0));
        let segment = Segment::create(&log, log.next_seq)?;
        let mut state = WriterState {
            log,
            segment,
            segment_bytes: settings.segment_bytes,
            durability: settings.durability,
            durable: durable.clone(),
            waker,
            written: 0,
            errors: 0,
        };
        let handle = std::thread::Builder::new()
            .name(format!("store-{shard}"))
            .spawn(move || state.run(rx, spare_tx))?;
        Ok((
            Journal::to(shard, tx, spare, durable, settings.durability),
            Writer { handle },
        ))
    }

    /// Waits for the writer to write and sync what it was given (its journal must be gone).
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

/// How far ahead of its records a segment is filled with zeros. Appending to blocks that
/// are already allocated and written changes no metadata, so `fdatasync` writes the data and
/// flushes the disk's cache, not the inode and the allocation bitmaps each time (on ext4 on
/// this project's VMs that was two more I/O round trips per sync, and most of the writer's
/// CPU); the file's size changes once per chunk.
const ZERO_AHEAD: u64 = 4 << 20;

/// Zeros written ahead of the records.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The segment being appended to.
struct Segment {
    seq: u64,
    file: File,
    /// Where its records end (the next record goes here).
    size: u64,
    /// Where its zeros end (the file's length).
    zeroed: u64,
}

impl Segment {
    fn create(log: &ShardLog, seq: u64) -> io::Result<Segment> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(segment_path(&log.dir, seq))?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        File::open(&log.dir)?.sync_all()?;
        Ok(Segment {
            seq,
            file,
            size: MAGIC.len() as u64,
            zeroed: MAGIC.len() as u64,
        })
    }

    /// Appends `records` after the last ones, first filling the file with zeros up to the
    /// next multiple of `chunk` past them when they would reach beyond its zeros.
    fn append(&mut self, records: &[u8], chunk: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = self.size + records.len() as u64;
        if end > self.zeroed {
            let target = end.div_ceil(chunk) * chunk;
            while self.zeroed < target {
                let n = (target - self.zeroed).min(ZEROS.len() as u64) as usize;
                self.file.write_all_at(&ZEROS[..n], self.zeroed)?;
                self.zeroed += n as u64;
            }
        }
        self.file.write_all_at(records, self.size)?;
        self.size = end;
        Ok(())
    }

    /// Cuts the zeros after the records (a clean stop leaves no tail to skip).
    fn trim(&mut self) -> io::Result<()> {
        if self.zeroed > self.size {
            self.file.set_len(self.size)?;
            self.file.sync_all()?;
            self.zeroed = self.size;
        }
        Ok(())
    }
}

struct WriterState {
    log: ShardLog,
    segment: Segment,
    segment_bytes: u64,
    durability: Durability,
    durable: Arc<AtomicU64>,
    waker: Arc<Waker>,
    /// The highest flush number written (not yet synced).
    written: u64,
    errors: u64,
}

impl WriterState {
    fn run(&mut self, rx: Receiver<Batch>, spare: Sender<Vec<u8>>) {
        let every = Duration::from_millis(SYNC_EVERY_MS);
        let mut gathered: Vec<u8> = Vec::with_capacity(1 << 20);
        loop {
            // The first records after a quiet spell wake the thread (an idle store costs
            // nothing)...
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(b) => self.take(b, &mut gathered, &spare),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return self.stop(&mut gathered),
            }
            loop {
                if self.durability == Durability::Batch {
                    // ... then, in batch mode, the next 10 ms of records gather while the
                    // thread sleeps: a shard's hand-over wakes nobody (no futex call per
                    // receive round), and they go out in one write and one fdatasync.
                    std::thread::sleep(every);
                }
                let mut more = false;
                loop {
                    match rx.try_recv() {
                        Ok(b) => {
                            self.take(b, &mut gathered, &spare);
                            more = true;
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return self.stop(&mut gathered),
                    }
                }
                self.flush(&mut gathered);
                // While records keep coming, batch mode stays on its 10 ms cadence (one
                // timer wake-up per window) rather than block on the channel, which would
                // make the next hand-over wake the thread (a futex call in the shard and a
                // second wake-up here per window).
                if !more || self.durability == Durability::Sync {
                    break;
                }
            }
        }
    }

    /// The shard is gone: writes and syncs what is left and cuts the segment's zeros.
    fn stop(&mut self, gathered: &mut Vec<u8>) {
        self.flush(gathered);
        if let Err(e) = self.segment.trim() {
            self.error("trim", &e);
        }
    }

    /// Adds a batch's records to what the next write takes.
    fn take(&mut self, b: Batch, gathered: &mut Vec<u8>, spare: &Sender<Vec<u8>>) {
        gathered.extend_from_slice(&b.bytes);
        self.written = self.written.max(b.number);
        let mut bytes = b.bytes;
        bytes.clear();
        let _ = spare.try_send(bytes);
    }

    /// Writes what was gathered, makes it durable, and starts a new segment when this one is
    /// full.
    fn flush(&mut self, gathered: &mut Vec<u8>) {
        if gathered.is_empty() {
            return;
        }
        let chunk = ZERO_AHEAD.min(self.segment_bytes).max(4096);
        if let Err(e) = self.segment.append(gathered, chunk) {
            self.error("write", &e);
        }
        gathered.clear();
        self.sync();
        if self.segment.size >= self.segment_bytes {
            self.rotate();
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.segment.file.sync_data() {
            self.error("fdatasync", &e);
        }
        // Published even after an error (logged): holding responses for ever would stop the
        // shard, and a disk that fails is for the operator to see in the log.
        self.durable.store(self.written, Ordering::SeqCst);
        if self.durability == Durability::Sync {
            self.waker.wake_if_sleeping();
        }
    }

    /// Closes the full segment, starts the next and compacts the closed ones into a
    /// snapshot (records arriving meanwhile wait in the channel and the shard).
    fn rotate(&mut self) {
        let closed = self.segment.seq;
        if let Err(e) = self.segment.trim() {
            self.error("trim", &e);
        }
        match Segment::create(&self.log, closed + 1) {
            Ok(s) => self.segment = s,
            Err(e) => {
                self.error("new segment", &e);
                return;
            }
        }
        let started = Instant::now();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        match compact(&self.log.dir, closed, now_ms) {
            Ok(()) => tracing::debug!(
                dir = %self.log.dir.display(),
                up_to = closed,
                ms = started.elapsed().as_millis() as u64,
                "binding log compacted"
            ),
            Err(e) => self.error("compaction", &e),
        }
    }

    fn error(&mut self, what: &str, e: &io::Error) {
        self.errors += 1;
        // Every error of the first ten, then one in a thousand: a full disk fails every write.
        if self.errors <= 10 || self.errors.is_multiple_of(1000) {
            tracing::error!(
                dir = %self.log.dir.display(),
                errors = self.errors,
                "binding store {what} failed: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::files::open;
    use super::super::record::write_aor;
    use super::*;

    fn binding(n: usize) -> crate::registrar::Binding {
        super::super::files::tests::binding(&format!("u{n}"), u64::MAX / 2)
    }

    /// The writer appends into zeros it wrote ahead (a chunk at a time, so most syncs change
    /// no metadata); what it wrote reads back with the zeros still there (a kill), and a
    /// clean stop cuts them.
    #[test]
    fn records_go_into_zeros_written_ahead_and_a_clean_stop_cuts_them() {
        let d = std::env::temp_dir().join(format!("sipshard-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut settings = StoreSettings::new(d.clone(), Durability::Sync);
        settings.segment_bytes = 1 << 20;
        let (_, mut logs) = open(&settings, 1, 0, &|_| 0).unwrap();
        let log = logs.remove(0);
        let path = segment_path(&log.dir, log.next_seq);
        let waker = Arc::new(Waker::new().unwrap());
        let (mut journal, writer) = Writer::spawn(0, log, &settings, waker).unwrap();
        let mut records = 0;
        for round in 0..20 {
            for i in 0..10 {
                let n = round * 10 + i;
                write_aor(
                    journal.pending(),
                    format!("sip:u{n}").as_bytes(),
                    &[binding(n)],
                );
                records += 1;
            }
            let number = journal.flush();
            let deadline = Instant::now() + Duration::from_secs(10);
            while journal.durable() < number && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(journal.durable() >= number, "round {round} never synced");
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            len,
            1 << 20,
            "the segment is filled with zeros a chunk ahead"
        );
        let data = std::fs::read(&path).unwrap();
        let mut reader = super::super::record::Reader::new(&data).unwrap();
        assert_eq!(reader.by_ref().count(), records);
        assert!(!reader.torn());
        let end = reader.valid_len();
        assert!(data[end..].iter().all(|&b| b == 0));
        // A kill now leaves the zeros: the store still opens with every AOR.
        assert_eq!(open(&settings, 1, 0, &|_| 0).unwrap().0.aors, records);
        drop(journal);
        writer.join();
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, end);
        let _ = std::fs::remove_dir_all(&d);
    }
}
