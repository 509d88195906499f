//! `sipshard ctl [--admin PATH] COMMAND [ARGS] [--json]`: the admin API's client. Prints a
//! readable table, or with `--json` the reply's data as JSON. Exit codes as for the server's
//! flags: 2 for a usage error (one line naming it), 1 when the server cannot be reached or
//! refuses the command, 0 otherwise.

use super::COMMANDS;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Where `ctl` looks without `--admin`: the systemd unit's data directory.
pub const DEFAULT_ADMIN: &str = "/var/lib/sipshard/admin.sock";

const USAGE: &str = "usage: sipshard ctl [--admin PATH] COMMAND [ARGS] [--json]";

/// Runs `sipshard ctl` with `args` (after `ctl`); returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let mut admin = None;
    let mut json = false;
    let mut words = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--admin" => match it.next() {
                Some(p) => admin = Some(p),
                None => return usage("--admin: expected a path"),
            },
            "-h" | "--help" => {
                println!("{USAGE}\ncommands: {COMMANDS}\n--admin defaults to {DEFAULT_ADMIN}");
                return 0;
            }
            s if s.starts_with("--") => return usage(&format!("{s}: unknown flag")),
            _ => words.push(a),
        }
    }
    let Some(command) = words.first() else {
        return usage("no command");
    };
    let known = [
        "registrations",
        "unregister",
        "stats",
        "shards",
        "bans",
        "reload",
        "calls",
        "trunks",
    ];
    if !known.contains(&command.as_str()) {
        return usage(&format!("'{command}': unknown command"));
    }
    let path = admin.unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
    let reply = match ask(&path, &words.join(" ")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "sipshard ctl: --admin {path}: {e} (is the server running with --data-dir or \
                 --admin?)"
            );
            return 1;
        }
    };
    if reply["ok"] != Value::Bool(true) {
        let e = reply["error"]
            .as_str()
            .unwrap_or("the server refused the command");
        eprintln!("sipshard ctl: {e}");
        return 1;
    }
    let data = &reply["data"];
    if json {
        println!("{}", serde_json::to_string_pretty(data).unwrap_or_default());
    } else {
        print!("{}", table(command, data));
    }
    0
}

fn usage(what: &str) -> i32 {
    eprintln!("sipshard ctl: {what}\n{USAGE}\ncommands: {COMMANDS}");
    2
}

/// Sends one command line and reads the JSON reply.
pub fn ask(path: &str, line: &str) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Text of a JSON value for a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Rows of objects as aligned columns.
fn columns(rows: &[Value], keys: &[&str]) -> String {
    let mut grid: Vec<Vec<String>> = vec![keys.iter().map(|k| k.to_uppercase()).collect()];
    for r in rows {
        grid.push(keys.iter().map(|k| cell(&r[*k])).collect());
    }
    let widths: Vec<usize> = (0..keys.len())
        .map(|c| grid.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in grid {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The readable form of a command's reply.
pub fn table(command: &str, data: &Value) -> String {
    let empty = Vec::new();
    let rows = data.as_array().unwrap_or(&empty);
    match command {
        "registrations" => {
            let mut out = columns(rows, &["aor", "contact", "expires", "source", "shard"]);
            out.push_str(&format!("{} binding(s)\n", rows.len()));
            out
        }
        "calls" => {
            let mut out = columns(
                rows,
                &["call_id", "state", "seconds", "from", "to", "shard"],
            );
            out.push_str(&format!("{} call(s) in progress\n", rows.len()));
            out
        }
        "trunks" => columns(rows, &["name", "address", "up", "check_interval_ms"]),
        "unregister" => format!(
            "removed {} binding(s) of {}\n",
            cell(&data["removed"]),
            cell(&data["aor"])
        ),
        "shards" => columns(
            rows,
            &[
                "shard",
                "datagrams_in",
                "datagrams_out",
                "handoffs_in",
                "handoffs_out",
                "queue",
                "bindings",
                "transactions",
                "overloaded",
            ],
        ),
        "bans" => {
            let bans = data["bans"].as_array().unwrap_or(&empty);
            let locked = data["locked_accounts"].as_array().unwrap_or(&empty);
            let mut out = columns(bans, &["address", "reason", "seconds"]);
            out.push_str(&format!("{} banned address(es)\n", bans.len()));
            if !locked.is_empty() {
                out.push_str(&columns(locked, &["user", "seconds"]));
            }
            out.push_str(&format!("{} locked account(s)\n", locked.len()));
            out
        }
        _ => match data.as_object() {
            Some(map) => map
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", cell(v)))
                .collect(),
            None => format!("{}\n", cell(data)),
        },
    }
}
