//! The admin socket's listener thread: reads one command line per connection, asks the shards
//! (through their query channels, waking them) or reads the shared counters and the ban
//! board, and writes one JSON reply.

use super::{ShardQuery, COMMANDS};
use crate::metrics::Registry;
use crate::shard::{Clock, Peer};
use crossbeam_channel::{bounded, Sender};
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the admin thread waits for a shard's answer.
const SHARD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin thread reaches the running server through.
pub struct AdminHandle {
    /// Each shard's query channel.
    pub queries: Vec<Sender<ShardQuery>>,
    /// The shards (their wakers and hand-off queues).
    pub peers: Arc<Vec<Peer>>,
    pub registry: Registry,
    pub clock: Clock,
}

/// Binds `path` (a stale socket file is replaced; one a live server answers on is not) with
/// mode 0600 and serves it on a thread until `stop`.
pub fn serve(
    path: &Path,
    handle: AdminHandle,
    stop: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another server answers on it",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let path: PathBuf = path.to_owned();
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &handle) {
                            tracing::debug!("admin connection: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!("admin socket: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        })
}

fn answer(stream: UnixStream, handle: &AdminHandle) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&stream).take_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match run(&words, handle) {
        Ok(data) => json!({ "ok": true, "data": data }),
        Err(e) => json!({ "ok": false, "error": e }),
    };
    let mut w = io::BufWriter::new(&stream);
    serde_json::to_writer(&mut w, &reply)?;
    w.write_all(b"\n")?;
    w.flush()
}

/// Reads one line of at most 64 KiB.
trait TakeLine {
    fn take_line(self, line: &mut String) -> io::Result<usize>;
}

impl<R: BufRead> TakeLine for R {
    fn take_line(self, line: &mut String) -> io::Result<usize> {
        io::Read::take(self, 64 << 10).read_line(line)
    }
}

/// Runs one command.
pub fn run(words: &[&str], h: &AdminHandle) -> Result<Value, String> {
    let usage = |cmd: &str| Err(format!("{cmd}: wrong arguments; commands: {COMMANDS}"));
    match words {
        ["registrations"] => registrations(h, None),
        ["registrations", aor] => registrations(h, Some(aor)),
        ["registrations", ..] => usage("registrations"),
        ["unregister", aor] => unregister(h, aor, None),
        ["unregister", aor, contact] => unregister(h, aor, Some(contact)),
        ["unregister", ..] => usage("unregister"),
        ["stats"] => Ok(stats(h)),
        ["shards"] => Ok(shards(h)),
        ["bans"] => bans(h),
        ["reload"] => {
            // The same as SIGHUP, handled where SIGHUP is (its outcome is logged there).
            // SAFETY: kill on our own pid with a valid signal number.
            if unsafe { libc::kill(libc::getpid(), libc::SIGHUP) } != 0 {
                return Err(format!("reload: {}", io::Error::last_os_error()));
            }
            Ok(json!({ "reload": "requested: the server log says whether it applied" }))
        }
        ["calls"] => {
            let mut calls: Vec<_> = ask_all(h, |reply| ShardQuery::Calls { reply })?
                .into_iter()
                .flatten()
                .collect();
            calls.sort_by_key(|c| std::cmp::Reverse(c.seconds));
            serde_json::to_value(calls).map_err(|e| e.to_string())
        }
        ["trunks"] => {
            // Every shard sees the same plan: shard 0 (the one that checks them) answers.
            let first = AdminHandle {
                queries: h.queries[..1].to_vec(),
                peers: h.peers.clone(),
                registry: h.registry.clone(),
                clock: h.clock,
            };
            let trunks = ask_all(&first, |reply| ShardQuery::Trunks { reply })?;
            serde_json::to_value(trunks.into_iter().flatten().collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        }
        [] => Err(format!("no command; commands: {COMMANDS}")),
        [other, ..] => Err(format!("'{other}': unknown command; commands: {COMMANDS}")),
    }
}

/// Asks every shard, waking each, and gathers the answers in shard order.
fn ask_all<T>(
    h: &AdminHandle,
    make: impl Fn(Sender<Result<T, String>>) -> ShardQuery,
) -> Result<Vec<T>, String> {
    let mut waiting = Vec::with_capacity(h.queries.len());
    for (i, q) in h.queries.iter().enumerate() {
        let (tx, rx) = bounded(1);
        q.send_timeout(make(tx), SHARD_TIMEOUT)
            .map_err(|_| format!("shard {i} does not take questions"))?;
        h.peers[i].waker.wake();
        waiting.push(rx);
    }
    waiting
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            rx.recv_timeout(SHARD_TIMEOUT)
                .map_err(|_| format!("shard {i} did not answer within 5 s"))?
        })
        .collect()
}

fn registrations(h: &AdminHandle, aor: Option<&str>) -> Result<Value, String> {
    let parts = ask_all(h, |reply| ShardQuery::Registrations {
        aor: aor.map(str::to_owned),
        reply,
    })?;
    let mut rows: Vec<_> = parts.into_iter().flatten().collect();
    rows.sort_by(|a, b| (&a.aor, &a.contact).cmp(&(&b.aor, &b.contact)));
    serde_json::to_value(rows).map_err(|e| e.to_string())
}

fn unregister(h: &AdminHandle, aor: &str, contact: Option<&str>) -> Result<Value, String> {
    let removed: usize = ask_all(h, |reply| ShardQuery::Unregister {
        aor: aor.to_owned(),
        contact: contact.map(str::to_owned),
        reply,
    })?
    .into_iter()
    .sum();
    Ok(json!({ "aor": aor, "removed": removed }))
}

fn shard_row(h: &AdminHandle, i: usize) -> Value {
    let s = &h.registry.shards[i];
    json!({
        "shard": i,
        "datagrams_in": s.datagrams_in.get(),
        "datagrams_out": s.datagrams_out.get(),
        "handoffs_in": s.handoffs_in.get(),
        "handoffs_out": s.handoffs_out.get(),
        "queue": h.peers[i].queue.len(),
        "bindings": s.bindings.get(),
        "transactions": s.transactions.get(),
        "overloaded": s.overloaded.get() != 0,
    })
}

fn shards(h: &AdminHandle) -> Value {
    Value::Array(
        (0..h.registry.shards.len())
            .map(|i| shard_row(h, i))
            .collect(),
    )
}

fn stats(h: &AdminHandle) -> Value {
    let sum = |f: &dyn Fn(&crate::stats::ShardStats) -> u64| -> u64 {
        h.registry.shards.iter().map(|s| f(s)).sum()
    };
    let banned = h
        .registry
        .board
        .as_ref()
        .map_or(0, |b| b.bans(h.clock.now_ms()).len());
    json!({
        "shards": h.registry.shards.len(),
        "bindings": sum(&|s| s.bindings.get()),
        "transactions": sum(&|s| s.transactions.get()),
        "requests_received": sum(&|s| s.received_requests.iter().map(|c| c.get()).sum()),
        "responses_received": sum(&|s| s.received_responses.get()),
        "requests_sent": sum(&|s| s.sent_requests.iter().map(|c| c.get()).sum()),
        "responses_sent": sum(&|s| s.sent_responses.iter().map(|c| c.get()).sum()),
        "datagrams_in": sum(&|s| s.datagrams_in.get()),
        "datagrams_out": sum(&|s| s.datagrams_out.get()),
        "dropped": sum(&|s| s.dropped.iter().map(|c| c.get()).sum()),
        "handoffs": sum(&|s| s.handoffs_out.get()),
        "overloaded_shards": sum(&|s| u64::from(s.overloaded.get() != 0)),
        "banned_sources": banned,
    })
}

fn bans(h: &AdminHandle) -> Result<Value, String> {
    let Some(board) = &h.registry.board else {
        return Ok(json!({ "bans": [], "locked_accounts": [] }));
    };
    let now = h.clock.now_ms();
    let secs = |until: u64| until.saturating_sub(now).div_ceil(1000);
    let bans: Vec<Value> = board
        .bans(now)
        .into_iter()
        .map(|b| {
            json!({
                "address": b.ip.to_string(),
                "reason": b.reason.as_str(),
                "seconds": secs(b.until_ms),
            })
        })
        .collect();
    let locked: Vec<Value> = board
        .locked_users(now)
        .into_iter()
        .map(|(user, until)| json!({ "user": &*user, "seconds": secs(until) }))
        .collect();
    Ok(json!({ "bans": bans, "locked_accounts": locked }))
}
