//! The file sinks of call detail records: JSON lines (one object per record) and CSV
//! (RFC 4180, a header line at the top of each file). The CDR writer is their only writer,
//! so rotation (the file renamed to `PATH.<UTC time>` and a new one started, when it reaches
//! its size or age) happens between two records and loses none.

use crate::proxy::cdr::{CallRecord, CSV_COLUMNS};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The CSV header line (the column names), CRLF-terminated as RFC 4180 has it.
pub fn csv_header() -> &'static str {
    static HEADER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HEADER.get_or_init(|| format!("{}\r\n", CSV_COLUMNS.join(",")))
}

/// One record as a CSV line: a field holding a comma, a quote or a line break is quoted,
/// its quotes doubled (RFC 4180 §2).
pub fn csv_line(r: &CallRecord) -> String {
    let mut line = String::with_capacity(256);
    for (i, f) in r.fields().iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        if f.contains([',', '"', '\r', '\n']) {
            line.push('"');
            line.push_str(&f.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(f);
        }
    }
    line.push_str("\r\n");
    line
}

/// Splits one CSV line (as [`csv_line`] writes it) into its fields.
pub fn parse_csv_line(line: &str) -> Vec<String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// The format of a file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

/// One file sink.
pub struct FileSink {
    path: PathBuf,
    format: Format,
    file: io::BufWriter<File>,
    /// Bytes in the current file.
    size: u64,
    /// When the current file was started (Unix ms).
    opened_ms: u64,
    rotate_bytes: u64,
    rotate_ms: u64,
    /// Written since the last sync.
    dirty: bool,
}

fn open(path: &Path) -> io::Result<(File, u64)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

impl FileSink {
    /// Opens (appending to) `path`.
    pub fn open(
        path: PathBuf,
        format: Format,
        rotate_bytes: u64,
        rotate_ms: u64,
        now_ms: u64,
    ) -> io::Result<FileSink> {
        let (file, size) = open(&path)?;
        let mut sink = FileSink {
            path,
            format,
            file: io::BufWriter::with_capacity(64 << 10, file),
            size,
            opened_ms: now_ms,
            rotate_bytes,
            rotate_ms,
            dirty: false,
        };
        if size == 0 {
            sink.start()?;
        }
        Ok(sink)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header of a new file.
    fn start(&mut self) -> io::Result<()> {
        if self.format == Format::Csv {
            let h = csv_header();
            self.file.write_all(h.as_bytes())?;
            self.size += h.len() as u64;
        }
        Ok(())
    }

    /// Appends one record; `json` is its JSON text (made once for every sink).
    pub fn write(&mut self, record: &CallRecord, json: &str, now_ms: u64) -> io::Result<()> {
        self.rotate_if_due(now_ms)?;
        match self.format {
            Format::Jsonl => {
                self.file.write_all(json.as_bytes())?;
                self.file.write_all(b"\n")?;
                self.size += json.len() as u64 + 1;
            }
            Format::Csv => {
                let line = csv_line(record);
                self.file.write_all(line.as_bytes())?;
                self.size += line.len() as u64;
            }
        }
        self.dirty = true;
        Ok(())
    }

    /// True when the file holds records and is past its size or age.
    fn due(&self, now_ms: u64) -> bool {
        let has_records = match self.format {
            Format::Jsonl => self.size > 0,
            Format::Csv => self.size > csv_header().len() as u64,
        };
        has_records
            && ((self.rotate_bytes > 0 && self.size >= self.rotate_bytes)
                || (self.rotate_ms > 0 && now_ms.saturating_sub(self.opened_ms) >= self.rotate_ms))
    }

    /// Rotates the file when it is due (also called when idle, for rotation by age).
    pub fn rotate_if_due(&mut self, now_ms: u64) -> io::Result<()> {
        if !self.due(now_ms) {
            return Ok(());
        }
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        let stamp = super::utc_stamp(now_ms);
        let mut n = 0;
        let rotated = loop {
            let mut name = self.path.clone().into_os_string();
            name.push(".");
            name.push(&stamp);
            if n > 0 {
                name.push(format!("-{n}"));
            }
            let p = PathBuf::from(name);
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        std::fs::rename(&self.path, &rotated)?;
        let (file, size) = open(&self.path)?;
        self.file = io::BufWriter::with_capacity(64 << 10, file);
        self.size = size;
        self.opened_ms = now_ms;
        self.dirty = false;
        tracing::info!(file = %rotated.display(), "call detail records rotated");
        self.start()
    }

    /// Hands what is buffered to the kernel.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Flushes and syncs what was written since the last sync.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.dirty {
            self.file.get_ref().sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::cdr::{Disposition, Hangup};

    pub(crate) fn record(i: u64) -> CallRecord {
        CallRecord {
            id: format!("{i}-0-{i}"),
            call_id: format!("call,\"{i}\""),
            start_ms: 1_000 + i,
            answer_ms: Some(2_000 + i),
            end_ms: 3_000 + i,
            setup_ms: 1_000,
            duration_ms: 1_000,
            caller_user: None,
            from: "sip:alice@example.com".into(),
            dialed: "bob".into(),
            to: "sip:bob@example.com".into(),
            target: "10.0.0.2:5060".parse().ok(),
            route: Some("user".into()),
            trunk: None,
            code: 200,
            disposition: Disposition::Answered,
            hangup: Some(Hangup::Caller),
            source: "10.0.0.1:5060".parse().unwrap(),
            shard: 0,
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sipshard-sink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rotation_by_size_keeps_every_record_in_order() {
        for format in [Format::Jsonl, Format::Csv] {
            let d = dir(&format!("{format:?}"));
            let path = d.join("cdr");
            let mut s = FileSink::open(path.clone(), format, 2_000, 0, 0).unwrap();
            for i in 0..100 {
                let r = record(i);
                let json = serde_json::to_string(&r).unwrap();
                // Each record at its own second, so every rotated name differs by time too.
                s.write(&r, &json, i * 1000).unwrap();
            }
            s.sync().unwrap();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            // `cdr` sorts first: the live file holds the newest records.
            let live = files.remove(0);
            files.push(live);
            assert!(files.len() > 5, "rotated: {files:?}");
            let mut ids = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f).unwrap();
                assert!(
                    text.len() <= 2_000 + 400,
                    "{} is {} bytes",
                    f.display(),
                    text.len()
                );
                match format {
                    Format::Jsonl => {
                        for l in text.lines() {
                            let r: CallRecord = serde_json::from_str(l).unwrap();
                            ids.push(r.start_ms - 1_000);
                        }
                    }
                    Format::Csv => {
                        let mut lines = text.lines();
                        assert_eq!(lines.next().unwrap().trim_end(), csv_header().trim_end());
                        for l in lines {
                            let f = parse_csv_line(l);
                            assert_eq!(f.len(), CSV_COLUMNS.len());
                            assert_eq!(
                                f[1],
                                format!("call,\"{}\"", f[0].split('-').next().unwrap())
                            );
                            ids.push(f[2].parse::<u64>().unwrap() - 1_000);
                        }
                    }
                }
            }
            assert_eq!(ids, (0..100).collect::<Vec<u64>>(), "{format:?}");
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn rotation_by_age_and_reopening_an_existing_file() {
        let d = dir("age");
        let path = d.join("cdr.csv");
        let mut s = FileSink::open(path.clone(), Format::Csv, 0, 60_000, 0).unwrap();
        s.write(&record(1), "", 10).unwrap();
        s.rotate_if_due(59_000).unwrap();
        s.sync().unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "not due yet");
        s.rotate_if_due(60_000).unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
        // An empty file is not rotated however old.
        s.rotate_if_due(600_000).unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
        drop(s);
        // Reopened: appended to, no second header.
        let mut s = FileSink::open(path.clone(), Format::Csv, 0, 0, 0).unwrap();
        s.write(&record(2), "", 10).unwrap();
        s.sync().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
