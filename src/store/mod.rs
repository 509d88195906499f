//! The binding store (issue 18): registrations that outlive the process. The shell around the
//! sans-I/O registrar: each shard's registrar appends a record whenever an AOR's bindings
//! change (`record`), the shard hands those bytes to its own writer thread (`writer`) through
//! a bounded channel after every receive round, and the writer appends them to the shard's
//! log and makes them durable (`fdatasync` at most every 10 ms in `batch` mode; before the
//! round's responses leave in `sync` mode). On start, [`open`] loads every shard's newest
//! snapshot and the log segments after it, drops what expired while the server was down and
//! gives each shard of the new layout its part (`files`); the shards serve only after that.
//!
//! Layout of `DATA_DIR/bindings/`: `layout` (the shard count the files were written with)
//! and one `shard-K/` directory per shard with log segments `wal-SEQ.log` and snapshots
//! `snap-SEQ.bin` (the state after every segment up to SEQ). The writer starts a new segment
//! past a size and compacts the closed ones into a snapshot, keeping the previous snapshot and
//! the segments after it: a snapshot that does not read falls back to the one before.

mod files;
pub mod record;
pub mod shared;
pub mod writer;

pub use files::{open, Loaded, ShardLog};
pub use writer::{Journal, Writer};

use std::path::PathBuf;

/// Takes the data directory for this process (created if missing): an exclusive lock on its
/// `lock` file, held while the returned file is open. Two servers writing one directory would
/// each overwrite the other's logs.
pub fn lock(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    // SAFETY: flock on a descriptor we own; no memory effects.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
            std::io::Error::new(e.kind(), "another sipshard uses this data directory")
        } else {
            e
        });
    }
    Ok(f)
}

/// When a REGISTER's binding is on disk (`--durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written and `fdatasync`ed at most every [`SYNC_EVERY_MS`]: a crash loses at most that
    /// window of changes, which phones repair by registering again.
    Batch,
    /// Group commit: the responses of a receive round leave only once the round's records are
    /// on disk (every 200 to a REGISTER names a binding that survives a crash).
    Sync,
}

/// How long `batch` durability lets written records wait for `fdatasync`.
pub const SYNC_EVERY_MS: u64 = 10;

/// Where and how bindings are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The data directory (`--data-dir`); bindings go to its `bindings/` directory.
    pub dir: PathBuf,
    pub durability: Durability,
    /// A log segment past this size is closed and compacted into a snapshot.
    pub segment_bytes: u64,
}

impl StoreSettings {
    pub fn new(dir: PathBuf, durability: Durability) -> StoreSettings {
        StoreSettings {
            dir,
            durability,
            segment_bytes: 64 << 20,
        }
    }

    /// The directory the binding files live in.
    pub fn bindings_dir(&self) -> PathBuf {
        self.dir.join("bindings")
    }
}
