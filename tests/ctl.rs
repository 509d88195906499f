//! `sipshard ctl` against a running server (issue 18), every command: registrations (table
//! and `--json`, all or one AOR), unregister (the binding is gone, and stays gone after a
//! restart: the removal is journaled), stats, shards, bans (a scanner's ban), calls (an
//! answered call in progress), trunks, reload; and the exit codes of a bad command (2) and of
//! a server that is not there (1).

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `sipshard ctl --admin SOCK ARGS`; returns (exit code, stdout, stderr).
fn ctl(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .arg("ctl")
        .arg("--admin")
        .arg(sock)
        .args(args)
        .output()
        .expect("run sipshard ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ctl ... --json`, parsed; panics unless it exits 0.
fn ctl_json(sock: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = ctl(sock, &all);
    assert_eq!(code, 0, "ctl {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {out}"))
}

fn register(server: &ServerProcess, client: &Client, user: &str) {
    let r = Register::new(&format!("sip:{user}@localhost"))
        .contact(&format!("<sip:{user}@{}>", client.addr))
        .expires(600)
        .build(client);
    assert_eq!(status(&client.request(&r, server.addr)), 200);
}

/// The header line `name: value` of `msg`, value only.
fn header<'m>(msg: &'m str, name: &str) -> &'m str {
    msg.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or_default()
}

/// The callee's 200 to an INVITE it received (Vias, Record-Route, From, To with a tag,
/// Call-ID and CSeq copied; its own Contact).
fn ok_for(invite: &str, contact: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for l in invite.lines() {
        let name = l.split(':').next().unwrap_or_default().to_ascii_lowercase();
        if ["via", "record-route", "from", "call-id", "cseq"].contains(&name.as_str()) {
            out.push_str(l.trim_end());
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "To: {};tag=callee\r\nContact: <{contact}>\r\nContent-Length: 0\r\n\r\n",
        header(invite, "To")
    ));
    out
}

#[test]
fn ctl_answers_every_command_of_a_running_server() {
    let dir = std::path::PathBuf::from(write_scratch("sipshard.toml", ""))
        .parent()
        .unwrap()
        .to_owned();
    let data = dir.join("data");
    let sock = data.join("admin.sock");
    let cfg = dir.join("sipshard.toml");
    std::fs::write(
        &cfg,
        "[[trunk]]\nname = \"carrier\"\naddress = \"127.0.0.1:9\"\ncheck_interval_ms = 0\n\n\
         [[route]]\nprefix = \"+49\"\ntrunks = [\"carrier\"]\n",
    )
    .unwrap();
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--shards",
        "2",
    ];
    let mut s = ServerProcess::start(&args);
    let phone = Client::new();
    for user in ["alice", "bob", "carol"] {
        register(&s, &phone, user);
    }

    // registrations: all, as JSON objects with aor, contact and expires; one AOR as a table.
    let all = ctl_json(&sock, &["registrations"]);
    let rows = all.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{all}");
    for r in rows {
        assert!(r["aor"].as_str().unwrap().starts_with("sip:"));
        assert!(r["contact"]
            .as_str()
            .unwrap()
            .contains(&phone.addr.to_string()));
        let left = r["expires"].as_u64().unwrap();
        assert!((590..=600).contains(&left), "{r}");
    }
    let (code, table, _) = ctl(&sock, &["registrations", "sip:bob@localhost"]);
    assert_eq!(code, 0);
    assert!(
        table.contains(&format!("sip:bob@{}", phone.addr)),
        "{table}"
    );
    assert!(table.contains("1 binding(s)"), "{table}");

    // unregister: the binding is gone from the registrar (a query lists no Contact).
    let removed = ctl_json(&sock, &["unregister", "sip:alice@localhost"]);
    assert_eq!(removed["removed"], 1, "{removed}");
    let q = Register::new("sip:alice@localhost").build(&phone);
    let resp = String::from_utf8(phone.request(&q, s.addr)).unwrap();
    assert!(
        resp.starts_with("SIP/2.0 200") && !resp.contains("\r\nContact:"),
        "{resp}"
    );

    // stats and shards.
    let stats = ctl_json(&sock, &["stats"]);
    assert_eq!(
        (stats["bindings"].as_u64(), stats["shards"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(stats["requests_received"].as_u64().unwrap() >= 4, "{stats}");
    let shards = ctl_json(&sock, &["shards"]);
    assert_eq!(shards.as_array().unwrap().len(), 2, "{shards}");
    let (code, table, _) = ctl(&sock, &["shards"]);
    assert!(code == 0 && table.starts_with("SHARD"), "{table}");

    // bans: a scanner from 127.0.0.3 is banned.
    let scanner = Client::on("127.0.0.3");
    scanner.send(
        &format!(
            "OPTIONS sip:100@{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKscan\r\n\
             Max-Forwards: 70\r\nFrom: <sip:100@x>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: scan\r\n\
             CSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n",
            s.addr, scanner.addr
        ),
        s.addr,
    );
    std::thread::sleep(Duration::from_millis(200));
    let bans = ctl_json(&sock, &["bans"]);
    let listed = bans["bans"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|b| b["address"] == "127.0.0.3" && b["reason"] == "scanner"),
        "{bans}"
    );

    // calls: bob's phone answers a call from a caller; the call is listed while it lasts.
    let caller = Client::new();
    let invite = format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bKctl1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carol@localhost>;tag=c1\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: ctl-call-1\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@{c}>\r\n\
         Content-Length: 0\r\n\r\n",
        c = caller.addr
    );
    caller.send(&invite, s.addr);
    let forwarded = loop {
        let m = String::from_utf8(phone.recv_timeout(Duration::from_secs(3)).unwrap()).unwrap();
        if m.starts_with("INVITE ") {
            break m;
        }
    };
    phone.send(
        &ok_for(&forwarded, &format!("sip:bob@{}", phone.addr)),
        phone.last_src.get().unwrap(),
    );
    let answered = loop {
        let m = String::from_utf8(caller.recv_timeout(Duration::from_secs(3)).unwrap()).unwrap();
        if m.starts_with("SIP/2.0 200") {
            break m;
        }
    };
    assert_eq!(header(&answered, "Call-ID"), "ctl-call-1");
    let calls = ctl_json(&sock, &["calls"]);
    assert!(
        calls
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["call_id"] == "ctl-call-1"),
        "{calls}"
    );

    // trunks.
    let trunks = ctl_json(&sock, &["trunks"]);
    assert_eq!(trunks[0]["name"], "carrier", "{trunks}");
    assert_eq!(trunks[0]["up"], true, "{trunks}");

    // reload: the server takes it and goes on serving.
    let (code, out, err) = ctl(&sock, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ctl_json(&sock, &["stats"])["bindings"], 2);

    // Usage errors exit 2 with one line naming the problem; no server exits 1.
    let (code, _, err) = ctl(&sock, &["frobnicate"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("sipshard ctl: 'frobnicate': unknown command"),
        "{err}"
    );
    let (code, _, err) = ctl(&sock, &["registrations", "a", "b"]);
    assert_eq!(code, 1);
    assert!(err.contains("registrations: wrong arguments"), "{err}");
    let (code, _, err) = ctl(&dir.join("nothing.sock"), &["stats"]);
    assert_eq!(code, 1);
    assert!(err.contains("nothing.sock"), "{err}");

    // The removal was journaled: after a restart alice stays unregistered.
    s.terminate();
    let s = ServerProcess::start(&args);
    let rows = ctl_json(&sock, &["registrations"]);
    let aors: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["aor"].as_str().unwrap())
        .collect();
    assert_eq!(aors, vec!["sip:bob@localhost", "sip:carol@localhost"]);
    drop(s);
}
