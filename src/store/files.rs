//! The binding store's files: reading a shard's snapshot and log segments back (a torn tail is
//! cut off with a log line, a snapshot that does not read falls back to the previous one),
//! compacting closed segments into a snapshot, and [`open`]: loading everything at start and
//! re-dividing it when the shard count changed.

use super::record::{write_aor, write_end, Reader, Record, MAGIC};
use super::StoreSettings;
use crate::registrar::Binding;
use hashbrown::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Segments after the newest snapshot that a start leaves as they are; past this many it
/// compacts them first.
const MAX_SEGMENTS_AT_START: usize = 8;

/// AOR key to its bindings.
pub type State = HashMap<Vec<u8>, Vec<Binding>>;

/// What the store held at start, divided among the shards of this run.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Per shard: its AORs and their unexpired bindings.
    pub shards: Vec<Vec<(Vec<u8>, Vec<Binding>)>>,
    pub aors: usize,
    pub bindings: usize,
    /// Bindings that expired while the server was down (dropped).
    pub expired: usize,
}

/// Where a shard's writer appends: its directory and the sequence number of its next segment.
#[derive(Debug, Clone)]
pub struct ShardLog {
    pub dir: PathBuf,
    pub next_seq: u64,
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:010}.log"))
}

fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("snap-{seq:010}.bin"))
}

fn shard_dir(root: &Path, shard: usize) -> PathBuf {
    root.join(format!("shard-{shard}"))
}

/// The sequence numbers of a shard directory's snapshots (newest first) and segments (oldest
/// first).
fn list(dir: &Path) -> io::Result<(Vec<u64>, Vec<u64>)> {
    let (mut snaps, mut segs) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let seq = |prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse::<u64>()
                .ok()
        };
        if let Some(s) = seq("snap-", ".bin") {
            snaps.push(s);
        } else if let Some(s) = seq("wal-", ".log") {
            segs.push(s);
        }
    }
    snaps.sort_unstable_by(|a, b| b.cmp(a));
    segs.sort_unstable();
    Ok((snaps, segs))
}

/// A snapshot's state; None when it does not read whole (cut short, altered, or its end
/// record missing or wrong).
fn read_snapshot(path: &Path) -> Option<State> {
    let data = fs::read(path).ok()?;
    let mut state = State::new();
    let mut records = 0u64;
    let mut reader = Reader::new(&data)?;
    let mut ended = false;
    for r in reader.by_ref() {
        match r {
            Record::Put { key, bindings, .. } => {
                state.insert(key.to_vec(), bindings);
                records += 1;
            }
            Record::Delete { .. } => records += 1,
            Record::End { records: n } => {
                ended = n == records;
                break;
            }
        }
    }
    (ended && !reader.torn()).then_some(state)
}

/// Applies a log segment to `state`. A torn tail is cut off the file (so that what follows
/// it is never read as records) with a warning; the records before it count.
fn apply_segment(path: &Path, state: &mut State) -> io::Result<()> {
    let data = fs::read(path)?;
    let Some(mut reader) = Reader::new(&data) else {
        tracing::warn!(file = %path.display(), "not a binding log: ignored");
        return Ok(());
    };
    for r in reader.by_ref() {
        match r {
            Record::Put { key, bindings, .. } => {
                state.insert(key.to_vec(), bindings);
            }
            Record::Delete { key } => {
                state.remove(key);
            }
            Record::End { .. } => {}
        }
    }
    if reader.torn() {
        let keep = reader.valid_len();
        tracing::warn!(
            file = %path.display(),
            offset = keep,
            dropped_bytes = data.len() - keep,
            "binding log ends in a torn or corrupt record: cut off there"
        );
        let f = fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(keep as u64)?;
        f.sync_all()?;
    }
    Ok(())
}

/// A shard directory's state: its newest snapshot that reads (falling back to older ones)
/// and the segments after it. Returns the state, the snapshot's sequence number (0: none)
/// and the highest segment sequence number seen.
fn load_dir(dir: &Path) -> io::Result<(State, u64, u64)> {
    let (snaps, segs) = list(dir)?;
    let mut base = (State::new(), 0);
    for &s in &snaps {
        match read_snapshot(&snapshot_path(dir, s)) {
            Some(state) => {
                base = (state, s);
                break;
            }
            None => tracing::warn!(
                file = %snapshot_path(dir, s).display(),
                "binding snapshot does not read whole: falling back to the previous one"
            ),
        }
    }
    let (mut state, snap_seq) = base;
    if !snaps.is_empty() && snap_seq == 0 {
        tracing::error!(dir = %dir.display(), "no binding snapshot reads: loading the logs alone");
    }
    for &seq in segs.iter().filter(|&&s| s > snap_seq) {
        apply_segment(&segment_path(dir, seq), &mut state)?;
    }
    let last = segs.last().copied().unwrap_or(0).max(snap_seq);
    Ok((state, snap_seq, last))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes `state` as the snapshot `seq` of `dir`: to a temporary file, synced, then renamed.
fn write_snapshot(dir: &Path, seq: u64, state: &State, now_ms: u64) -> io::Result<()> {
    let tmp = dir.join(format!("snap-{seq:010}.tmp"));
    let mut f = io::BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
    f.write_all(MAGIC)?;
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    for (key, bindings) in state {
        let live: Vec<Binding> = bindings
            .iter()
            .filter(|b| b.expires_at_ms() > now_ms)
            .cloned()
            .collect();
        if live.is_empty() {
            continue;
        }
        buf.clear();
        write_aor(&mut buf, key, &live);
        f.write_all(&buf)?;
        n += 1;
    }
    buf.clear();
    write_end(&mut buf, n);
    f.write_all(&buf)?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    fs::rename(&tmp, snapshot_path(dir, seq))?;
    sync_dir(dir)
}

/// Compacts a shard's closed segments up to `up_to` into the snapshot `up_to`, then deletes
/// what the previous snapshot makes unnecessary: older snapshots and the segments it covers
/// (the previous snapshot and the segments after it stay, for a fall-back).
pub(super) fn compact(dir: &Path, up_to: u64, now_ms: u64) -> io::Result<()> {
    let (snaps, segs) = list(dir)?;
    let mut state = State::new();
    let mut base = 0;
    for &s in snaps.iter().filter(|&&s| s <= up_to) {
        if let Some(st) = read_snapshot(&snapshot_path(dir, s)) {
            state = st;
            base = s;
            break;
        }
    }
    for &seq in segs.iter().filter(|&&s| s > base && s <= up_to) {
        apply_segment(&segment_path(dir, seq), &mut state)?;
    }
    write_snapshot(dir, up_to, &state, now_ms)?;
    for &s in snaps.iter().filter(|&&s| s < base) {
        let _ = fs::remove_file(snapshot_path(dir, s));
    }
    for &seq in segs.iter().filter(|&&s| s <= base) {
        let _ = fs::remove_file(segment_path(dir, seq));
    }
    Ok(())
}

/// The shard count the files under `root` were written with.
fn read_layout(root: &Path) -> Option<usize> {
    let text = fs::read_to_string(root.join("layout")).ok()?;
    text.trim().strip_prefix("shards = ")?.parse().ok()
}

/// Loads the bindings under `settings.dir` for a run with `shards` shards at `now_ms` (the
/// server's clock: Unix milliseconds). `owner` says which shard owns an AOR key. When the
/// files were written with another shard count, the bindings are re-divided and written
/// again as one snapshot per shard before anything is removed. Returns the bindings per
/// shard and where each shard's writer appends.
pub fn open(
    settings: &StoreSettings,
    shards: usize,
    now_ms: u64,
    owner: &dyn Fn(&[u8]) -> usize,
) -> io::Result<(Loaded, Vec<ShardLog>)> {
    let root = settings.bindings_dir();
    let old = root.with_extension("old");
    let new = root.with_extension("new");
    // A re-division that stopped half-way: `bindings.new` was not finished (ignore it);
    // `bindings` gone but `bindings.old` there means the swap stopped after its first step.
    if new.exists() {
        fs::remove_dir_all(&new)?;
    }
    if !root.exists() && old.exists() {
        fs::rename(&old, &root)?;
    }
    fs::create_dir_all(&root)?;
    let layout = read_layout(&root);
    let old_shards = match layout {
        Some(n) => n,
        // No layout yet: a new store, or one whose first start stopped early.
        None => (0..).take_while(|&k| shard_dir(&root, k).exists()).count(),
    };
    let mut all: Vec<(State, u64)> = Vec::with_capacity(old_shards);
    for k in 0..old_shards {
        let dir = shard_dir(&root, k);
        fs::create_dir_all(&dir)?;
        let (state, _, last) = load_dir(&dir)?;
        all.push((state, last));
    }
    let mut loaded = Loaded {
        shards: (0..shards).map(|_| Vec::new()).collect(),
        ..Default::default()
    };
    for (state, _) in &mut all {
        for (key, mut bindings) in state.drain() {
            let before = bindings.len();
            bindings.retain(|b| b.expires_at_ms() > now_ms);
            loaded.expired += before - bindings.len();
            if bindings.is_empty() {
                continue;
            }
            loaded.aors += 1;
            loaded.bindings += bindings.len();
            loaded.shards[owner(&key).min(shards - 1)].push((key, bindings));
        }
    }
    if layout == Some(shards) {
        let mut logs = Vec::with_capacity(shards);
        for (k, (_, last)) in all.iter().enumerate() {
            let dir = shard_dir(&root, k);
            // Every start begins a segment: after many short runs, fold them into a snapshot
            // so that a start never reads a long tail of small files.
            let (snaps, segs) = list(&dir)?;
            let base = snaps.first().copied().unwrap_or(0);
            if segs.iter().filter(|&&s| s > base).count() > MAX_SEGMENTS_AT_START {
                compact(&dir, *last, now_ms)?;
            }
            logs.push(ShardLog {
                dir,
                next_seq: last + 1,
            });
        }
        return Ok((loaded, logs));
    }
    // A new layout: one snapshot per new shard in `bindings.new`, then the swap.
    fs::create_dir_all(&new)?;
    for (k, part) in loaded.shards.iter().enumerate() {
        let dir = shard_dir(&new, k);
        fs::create_dir_all(&dir)?;
        let state: State = part.iter().cloned().collect();
        write_snapshot(&dir, 1, &state, now_ms)?;
    }
    let mut f = fs::File::create(new.join("layout"))?;
    writeln!(f, "shards = {shards}")?;
    f.sync_all()?;
    sync_dir(&new)?;
    if layout.is_some() || old_shards > 0 {
        tracing::info!(
            from = old_shards,
            to = shards,
            aors = loaded.aors,
            "bindings re-divided for a new shard count"
        );
    }
    fs::rename(&root, &old)?;
    fs::rename(&new, &root)?;
    sync_dir(&settings.dir)?;
    fs::remove_dir_all(&old)?;
    let logs = (0..shards)
        .map(|k| ShardLog {
            dir: shard_dir(&root, k),
            next_seq: 2,
        })
        .collect();
    Ok((loaded, logs))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::registrar::BindingFields;

    /// One binding of `user` at `sip:USER@192.0.2.1:5060` expiring at `expires` (also the
    /// writer's tests').
    pub(in crate::store) fn binding(user: &str, expires: u64) -> Binding {
        Binding::new(
            &BindingFields {
                contact_uri: format!("sip:{user}@192.0.2.1:5060").as_bytes(),
                call_id: b"c",
                cseq: 1,
                expires_at_ms: expires,
                q: 1000,
                instance: None,
                reg_id: None,
                source: "192.0.2.1:5060".parse().unwrap(),
                nat: false,
                socket: 0,
                stream: false,
                branch_hash: 0,
            },
            std::iter::empty(),
        )
        .unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sipshard-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn owner_by_last_digit(shards: usize) -> impl Fn(&[u8]) -> usize {
        move |k: &[u8]| (k.last().copied().unwrap_or(0) as usize) % shards
    }

    /// Writes a segment of `records` (AOR keys `sip:uN`, one binding each expiring at
    /// `expires`) into `dir`.
    fn segment(dir: &Path, seq: u64, users: std::ops::Range<usize>, expires: u64) {
        let mut data = MAGIC.to_vec();
        for u in users {
            write_aor(
                &mut data,
                format!("sip:u{u}").as_bytes(),
                &[binding(&format!("u{u}"), expires)],
            );
        }
        fs::write(segment_path(dir, seq), data).unwrap();
    }

    #[test]
    fn bindings_come_back_redivided_and_expired_ones_dropped() {
        let d = scratch("redivide");
        let s = StoreSettings::new(d.clone(), super::super::Durability::Batch);
        let (loaded, logs) = open(&s, 2, 1_000, &owner_by_last_digit(2)).unwrap();
        assert_eq!((loaded.aors, logs.len()), (0, 2));
        segment(&logs[0].dir, logs[0].next_seq, 0..10, 10_000);
        segment(&logs[1].dir, logs[1].next_seq, 10..20, 500);
        // Same layout: shard 0's ten are back (owner by last digit over 2), shard 1's expired.
        let (loaded, logs) = open(&s, 2, 1_000, &owner_by_last_digit(2)).unwrap();
        assert_eq!((loaded.aors, loaded.bindings, loaded.expired), (10, 10, 10));
        assert_eq!(loaded.shards[0].len() + loaded.shards[1].len(), 10);
        assert!(loaded.shards[0]
            .iter()
            .all(|(k, _)| k.last().unwrap() % 2 == 0));
        assert_eq!(logs[0].next_seq, 3);
        // Three shards: every binding is back, each on its owner.
        let (loaded, logs) = open(&s, 3, 1_000, &owner_by_last_digit(3)).unwrap();
        assert_eq!((loaded.aors, logs.len()), (10, 3));
        for (k, part) in loaded.shards.iter().enumerate() {
            assert!(part
                .iter()
                .all(|(key, _)| *key.last().unwrap() as usize % 3 == k));
        }
        assert_eq!(read_layout(&s.bindings_dir()), Some(3));
        assert!(!shard_dir(&s.bindings_dir(), 3).exists());
        // And again: the re-divided snapshots read.
        let (loaded, _) = open(&s, 3, 1_000, &owner_by_last_digit(3)).unwrap();
        assert_eq!(loaded.aors, 10);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn zeros_after_the_records_end_a_segment_and_garbage_after_them_is_cut() {
        let d = scratch("zeros");
        let s = StoreSettings::new(d.clone(), super::super::Durability::Batch);
        let (_, logs) = open(&s, 1, 0, &|_| 0).unwrap();
        let dir = &logs[0].dir;
        segment(dir, 2, 0..5, 10_000);
        // What the writer leaves when the process is killed: its zeros after the records.
        let path = segment_path(dir, 2);
        let mut data = fs::read(&path).unwrap();
        let whole = data.len();
        data.resize(whole + 100_000, 0);
        fs::write(&path, &data).unwrap();
        assert_eq!(open(&s, 1, 0, &|_| 0).unwrap().0.aors, 5);
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            whole + 100_000,
            "a zero tail is not a torn record: nothing is cut"
        );
        // A byte that is not zero after them: not ours, cut off there.
        data[whole + 50_000] = 1;
        fs::write(&path, &data).unwrap();
        assert_eq!(open(&s, 1, 0, &|_| 0).unwrap().0.aors, 5);
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, whole);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_compaction_keeps_a_fallback() {
        let d = scratch("torn");
        let s = StoreSettings::new(d.clone(), super::super::Durability::Batch);
        let (_, logs) = open(&s, 1, 0, &|_| 0).unwrap();
        let dir = &logs[0].dir;
        segment(dir, 2, 0..5, 10_000);
        segment(dir, 3, 5..10, 10_000);
        // A torn record at the end of segment 3.
        let path = segment_path(dir, 3);
        let mut data = fs::read(&path).unwrap();
        let whole = data.len();
        data.extend_from_slice(&[0x55, 0, 0, 0, 1, 2]);
        fs::write(&path, &data).unwrap();
        let (loaded, logs) = open(&s, 1, 0, &|_| 0).unwrap();
        assert_eq!(loaded.aors, 10);
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            whole,
            "tail cut off"
        );
        assert_eq!(logs[0].next_seq, 4);
        // Compaction into snapshot 3, then a newer one: the first stays as the fall-back.
        compact(dir, 3, 0).unwrap();
        segment(dir, 4, 10..12, 10_000);
        compact(dir, 4, 0).unwrap();
        let (snaps, segs) = list(dir).unwrap();
        assert_eq!(snaps, vec![4, 3]);
        assert_eq!(
            segs,
            vec![4],
            "segments up to the fall-back snapshot are gone"
        );
        assert_eq!(open(&s, 1, 0, &|_| 0).unwrap().0.aors, 12);
        // The newest snapshot altered: the previous one and the segment after it still give
        // everything.
        let snap = snapshot_path(dir, 4);
        let mut data = fs::read(&snap).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        fs::write(&snap, data).unwrap();
        assert_eq!(open(&s, 1, 0, &|_| 0).unwrap().0.aors, 12);
        // Many starts, each opening a segment: past eight they are compacted at start.
        for _ in 0..10 {
            open(&s, 1, 0, &|_| 0).unwrap();
            let (_, logs) = open(&s, 1, 0, &|_| 0).unwrap();
            segment(dir, logs[0].next_seq, 0..0, 0);
        }
        let (snaps, segs) = list(dir).unwrap();
        assert!(
            segs.iter().filter(|&&s| s > snaps[0]).count() <= MAX_SEGMENTS_AT_START,
            "{snaps:?} {segs:?}"
        );
        assert_eq!(open(&s, 1, 0, &|_| 0).unwrap().0.aors, 12);
        fs::remove_dir_all(&d).unwrap();
    }
}
