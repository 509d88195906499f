//! SIP over WebSocket (`--listen ws:` and `wss:`, RFC 7118) on a running server, with
//! tungstenite's client (an independent implementation of RFC 6455) sending what a browser
//! phone (JsSIP) sends: a registration with an `.invalid` contact over its connection, a call
//! from a UDP phone that reaches it over that connection, a call it makes to a UDP phone and
//! hangs up through the Record-Route set (double Record-Route: WS on one side, UDP on the
//! other), the same over TLS (wss), refused upgrades answered in HTTP saying why, ping and
//! close, and the binding that goes with the connection.

mod common;

use common::pki::{pki, Pki};
use common::{free_port, status, Client, ServerProcess};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// What a browser's contact looks like (JsSIP: a random user at a random `.invalid` host).
const CONTACT: &str = "sip:k1js5p6d@2bi1lnbo8dmt.invalid;transport=ws";

fn ws_server(scheme: &str, extra: &[&str]) -> (ServerProcess, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = format!("{scheme}:{addr}");
    let mut args = vec!["--listen", &listen];
    args.extend_from_slice(extra);
    (ServerProcess::start_with(&args, true), addr)
}

/// Opens a WebSocket to `addr` offering the `sip` subprotocol over `stream`.
fn open<S: Read + Write>(url: &str, stream: S) -> WebSocket<S> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
    let (ws, resp) = tungstenite::client(req, stream).unwrap();
    assert_eq!(
        resp.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "sip",
        "the server picks sip"
    );
    ws
}

fn ws_connect(addr: SocketAddr) -> WebSocket<TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    open(&format!("ws://{addr}/"), tcp)
}

/// The next SIP message (a text message; pings and pongs skipped).
fn recv<S: Read + Write>(ws: &mut WebSocket<S>) -> String {
    loop {
        match ws.read().expect("a message within 5 s") {
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => panic!("SIP as a binary message: {b:?}"),
            Message::Ping(_) | Message::Pong(_) => continue,
            m => panic!("unexpected {m:?}"),
        }
    }
}

fn send<S: Read + Write>(ws: &mut WebSocket<S>, msg: &str) {
    ws.send(Message::text(msg.to_string())).unwrap();
}

/// The values of a header, one per line or comma-separated `<...>` entry.
fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .flat_map(|v| {
            let mut parts = Vec::new();
            let mut rest = v;
            while let Some(i) = rest.find(">, <") {
                parts.push(&rest[..i + 1]);
                rest = &rest[i + 3..];
            }
            parts.push(rest);
            parts
        })
        .collect()
}

/// The REGISTER JsSIP sends (RFC 5626 outbound: reg-id and instance, Supported: outbound).
fn register(transport: &str, expires: u32, cseq: u32) -> String {
    format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/{transport} 2bi1lnbo8dmt.invalid;branch=z9hG4bKreg{cseq}\r\n\
         Max-Forwards: 69\r\nTo: <sip:bob@localhost>\r\nFrom: <sip:bob@localhost>;tag=jsreg\r\n\
         Call-ID: ws-reg-{transport}\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <{CONTACT}>;+sip.ice;reg-id=1;+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\";expires={expires}\r\n\
         Expires: {expires}\r\nAllow: INVITE,ACK,CANCEL,BYE,OPTIONS\r\nSupported: path,gruu,outbound\r\n\
         User-Agent: JsSIP 3.10.0\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A UAS answer to `req` with `status` (the request's Via, From, To with `tag`, Call-ID, CSeq;
/// Record-Route copied as RFC 3261 §12.1.1 says).
fn answer(req: &str, code: u16, tag: &str, contact: &str) -> String {
    let mut out = format!("SIP/2.0 {code} OK\r\n");
    for v in header(req, "Via") {
        out += &format!("Via: {v}\r\n");
    }
    for rr in header(req, "Record-Route") {
        out += &format!("Record-Route: {rr}\r\n");
    }
    let to = header(req, "To")[0];
    let to = if to.contains(";tag=") {
        to.to_string()
    } else {
        format!("{to};tag={tag}")
    };
    out += &format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <{contact}>\r\nContent-Length: 0\r\n\r\n",
        header(req, "From")[0],
        header(req, "Call-ID")[0],
        header(req, "CSeq")[0]
    );
    out
}

fn udp_register(phone: &Client, server: SocketAddr, user: &str) {
    let reg = common::Register::new(&format!("sip:{user}@localhost"))
        .contact(&format!("<sip:{user}@{}>", phone.addr))
        .build(phone);
    assert_eq!(status(&phone.request(&reg, server)), 200);
}

#[test]
fn a_browser_phone_registers_over_ws_and_calls_both_ways_with_udp_phones() {
    let (s, ws_addr) = ws_server("ws", &["--shards", "2"]);
    let mut browser = ws_connect(ws_addr);
    send(&mut browser, &register("WS", 600, 1));
    let ok = recv(&mut browser);
    assert_eq!(status(ok.as_bytes()), 200, "{ok}");
    assert!(
        header(&ok, "Contact")[0].contains("2bi1lnbo8dmt.invalid"),
        "{ok}"
    );
    assert_eq!(header(&ok, "Require"), ["outbound"], "{ok}");
    assert_eq!(s.metric("sipshard_bindings"), Some(1.0));

    // A UDP phone calls bob: the INVITE reaches the browser over its WebSocket, though the
    // contact's host does not resolve.
    let alice = Client::new();
    udp_register(&alice, s.addr, "alice");
    let invite = format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKwsin;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: ws-in\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{a}>\r\nContent-Length: 0\r\n\r\n",
        a = alice.addr
    );
    alice.send(&invite, s.addr);
    let inv = recv(&mut browser);
    assert!(
        inv.starts_with(&format!("INVITE {CONTACT} SIP/2.0\r\n")),
        "{inv}"
    );
    assert!(
        header(&inv, "Via")[0].starts_with(&format!("SIP/2.0/WS {ws_addr};branch=")),
        "{inv}"
    );
    let rr = header(&inv, "Record-Route");
    assert_eq!(rr.len(), 2, "double Record-Route (RFC 5658): {inv}");
    assert!(
        rr[0].contains(&format!("{ws_addr};transport=ws;lr")),
        "{inv}"
    );
    send(&mut browser, &answer(&inv, 200, "b1", CONTACT));
    let mut got_200 = false;
    while let Some(r) = alice.recv_timeout(Duration::from_secs(5)) {
        if status(&r) == 200 {
            got_200 = true;
            break;
        }
    }
    assert!(got_200, "the browser's 200 reaches the UDP caller");

    // The browser calls alice (UDP) and hangs up through the Record-Route set.
    let out_invite = "INVITE sip:alice@localhost SIP/2.0\r\n\
         Via: SIP/2.0/WS 2bi1lnbo8dmt.invalid;branch=z9hG4bKwsout\r\nMax-Forwards: 69\r\n\
         To: <sip:alice@localhost>\r\nFrom: <sip:bob@localhost>;tag=jsout\r\nCall-ID: ws-out\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:k1js5p6d@2bi1lnbo8dmt.invalid;transport=ws;ob>\r\n\
         Content-Length: 0\r\n\r\n";
    send(&mut browser, out_invite);
    let at_alice = loop {
        let m = alice
            .recv_timeout(Duration::from_secs(5))
            .expect("INVITE at alice");
        let text = String::from_utf8_lossy(&m).into_owned();
        if text.starts_with("INVITE ") {
            break text;
        }
    };
    assert!(at_alice.contains("Call-ID: ws-out"), "{at_alice}");
    alice.send(
        &answer(&at_alice, 200, "al", &format!("sip:alice@{}", alice.addr)),
        s.addr,
    );
    let ok = loop {
        let m = recv(&mut browser);
        if m.starts_with("SIP/2.0 200") {
            break m;
        }
    };
    // The UAC's route set is the Record-Route in reverse (RFC 3261 §12.1.2).
    let routes: Vec<&str> = header(&ok, "Record-Route").into_iter().rev().collect();
    assert_eq!(routes.len(), 2, "{ok}");
    assert!(
        routes[0].contains("transport=ws"),
        "the WS side first: {routes:?}"
    );
    let to = header(&ok, "To")[0];
    let route_lines: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
    let bye = format!(
        "BYE sip:alice@{a} SIP/2.0\r\nVia: SIP/2.0/WS 2bi1lnbo8dmt.invalid;branch=z9hG4bKwsbye\r\n\
         {route_lines}Max-Forwards: 69\r\nTo: {to}\r\nFrom: <sip:bob@localhost>;tag=jsout\r\n\
         Call-ID: ws-out\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        a = alice.addr
    );
    send(&mut browser, &bye);
    let bye_at_alice = loop {
        let m = alice
            .recv_timeout(Duration::from_secs(5))
            .expect("BYE at alice");
        let text = String::from_utf8_lossy(&m).into_owned();
        if text.starts_with("BYE ") {
            break text;
        }
    };
    alice.send(
        &answer(
            &bye_at_alice,
            200,
            "al",
            &format!("sip:alice@{}", alice.addr),
        ),
        s.addr,
    );
    let ok = recv(&mut browser);
    assert!(
        ok.starts_with("SIP/2.0 200") && ok.contains("CSeq: 2 BYE"),
        "{ok}"
    );

    // The browser closes its WebSocket: the binding made over it goes (RFC 5626 flow).
    browser.close(None).unwrap();
    // Alice's UDP binding stays.
    s.wait_metric("sipshard_bindings", 1.0);
}

#[test]
fn wss_carries_the_same_registration_over_tls() {
    let p: Pki = pki("wss");
    let (cert, key) = (p.path("cert.pem"), p.path("key.pem"));
    let (s, addr) = ws_server("wss", &["--tls-cert", &cert, "--tls-key", &key]);
    let tls = p.connect(addr, false);
    let mut browser = open(&format!("wss://{addr}/"), tls);
    send(&mut browser, &register("WSS", 600, 1));
    let ok = recv(&mut browser);
    assert_eq!(status(ok.as_bytes()), 200, "{ok}");
    assert_eq!(s.metric("sipshard_bindings"), Some(1.0));
    // A caller from UDP reaches it over the TLS WebSocket; our Via says WSS.
    let alice = Client::new();
    let invite = format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKwssin;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: wss-in\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{a}>\r\nContent-Length: 0\r\n\r\n",
        a = alice.addr
    );
    alice.send(&invite, s.addr);
    let inv = recv(&mut browser);
    assert!(
        header(&inv, "Via")[0].starts_with(&format!("SIP/2.0/WSS {addr};branch=")),
        "{inv}"
    );
    assert!(
        header(&inv, "Record-Route")[0].contains(";transport=wss;lr"),
        "{inv}"
    );
}

/// Sends raw bytes and reads what comes back until the server closes.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn refused_upgrades_get_an_http_error_saying_why_and_are_counted() {
    let (s, addr) = ws_server("ws", &[]);
    let no_sip = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let r = raw_exchange(addr, no_sip.as_bytes());
    assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
    assert!(r.contains("Sec-WebSocket-Protocol sip required"), "{r}");
    // A browser opening the address as a page.
    let r = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{r}");
    // SIP without the upgrade: not framed as SIP on a WebSocket address.
    let r = raw_exchange(addr, b"OPTIONS sip:x SIP/2.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 "), "{r}");
    assert_eq!(
        s.metric("sipshard_connection_events_total{reason=\"ws_refused\"}"),
        Some(3.0)
    );
    // The server goes on: a proper client is served.
    let mut ws = ws_connect(addr);
    send(&mut ws, &register("WS", 60, 1));
    assert_eq!(status(recv(&mut ws).as_bytes()), 200);
}

#[test]
fn pings_are_answered_and_protocol_errors_close_with_their_code() {
    let (s, addr) = ws_server("ws", &[]);
    let mut ws = ws_connect(addr);
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        m => panic!("{m:?}"),
    }
    // A CRLF keepalive inside a message (RFC 5626 over WebSocket) gets its CRLF pong.
    send(&mut ws, "\r\n\r\n");
    assert_eq!(recv(&mut ws), "\r\n");
    // An unmasked client frame breaks RFC 6455 §5.1: the server closes with 1002.
    let tcp = ws.get_mut();
    tcp.write_all(&[0x81, 0x03, b'a', b'b', b'c']).unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    assert_eq!(
        &got[..4],
        &[0x88, got[1], 0x03, 0xea],
        "close 1002: {got:?}"
    );
    assert_eq!(
        s.metric("sipshard_connection_events_total{reason=\"ws_failed\"}"),
        Some(1.0)
    );
    assert_eq!(s.metric("sipshard_stream_pings_total"), Some(1.0));
}

#[test]
fn a_message_too_large_for_the_limit_closes_with_1009() {
    let (s, addr) = ws_server("ws", &[]);
    let mut ws = ws_connect(addr);
    let big = format!("OPTIONS sip:x SIP/2.0\r\nX: {}\r\n\r\n", "a".repeat(70_000));
    let _ = ws.send(Message::text(big));
    let closed = loop {
        match ws.read() {
            Ok(Message::Close(f)) => break f,
            Ok(_) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(u16::from(closed.unwrap().code), 1009);
    // Counted when the connection closes, the round after the close frame went out.
    s.wait_metric(
        "sipshard_connection_events_total{reason=\"too_large\"}",
        1.0,
    );
}

/// A JsSIP user agent (tests/jssip/client.js) run by Node: the SIP stack of browser phones on
/// its default settings, over Node's standard WebSocket.
struct JsSip {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stdin: std::process::ChildStdin,
}

impl JsSip {
    /// None (after a SKIPPED line, or a failure under SIPSHARD_REQUIRE_INTEROP=1) when Node
    /// or the JsSIP package (`npm ci` in tests/jssip) is missing.
    fn available(test: &str) -> bool {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/jssip/node_modules/jssip"
        );
        let node = std::process::Command::new("node").arg("--version").output();
        if node.is_err() || !std::path::Path::new(dir).exists() {
            common::skip_or_fail(
                test,
                "node or JsSIP missing (cd tests/jssip && npm ci)",
                "SIPSHARD_REQUIRE_INTEROP",
            );
            return false;
        }
        true
    }

    fn start(url: &str, user: &str, ca: Option<&str>) -> JsSip {
        use std::io::BufRead;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jssip");
        let mut cmd = std::process::Command::new("node");
        cmd.current_dir(dir)
            .args([
                "--experimental-websocket",
                "client.js",
                url,
                user,
                "secret",
                "localhost",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(ca) = ca {
            cmd.env("NODE_EXTRA_CA_CERTS", ca);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        JsSip {
            child,
            lines,
            stdin,
        }
    }

    /// Waits for an event line starting with `prefix` (other lines are kept in the error).
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("JsSIP: no '{prefix}' within 10 s; saw {seen:?}");
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }
}

impl Drop for JsSip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn jssip_phones_over_ws_and_wss_register_with_digest_and_message_each_other() {
    let test = "jssip_phones_over_ws_and_wss_register_with_digest_and_message_each_other";
    if !JsSip::available(test) {
        return;
    }
    let p = pki("jssip");
    let (cert, key, ca) = (p.path("cert.pem"), p.path("key.pem"), p.path("ca.pem"));
    let (ws_port, wss_port) = (free_port(), free_port());
    let (ws, wss) = (
        format!("ws:127.0.0.1:{ws_port}"),
        format!("wss:127.0.0.1:{wss_port}"),
    );
    let s = ServerProcess::start_with(
        &[
            "--listen",
            &ws,
            "--listen",
            &wss,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--user",
            "bob:secret",
            "--user",
            "alice:secret",
            "--shards",
            "2",
        ],
        true,
    );
    let mut bob = JsSip::start(&format!("ws://127.0.0.1:{ws_port}"), "bob", None);
    let mut alice = JsSip::start(&format!("wss://127.0.0.1:{wss_port}"), "alice", Some(&ca));
    bob.expect("registered");
    alice.expect("registered");
    assert_eq!(s.metric("sipshard_bindings"), Some(2.0));
    // Digest-authenticated MESSAGE from the wss phone to the ws phone, and back.
    alice.command("send sip:bob@localhost hello from wss");
    assert_eq!(bob.expect("message"), "message alice hello from wss");
    alice.expect("sent");
    bob.command("send sip:alice@localhost hello from ws");
    assert_eq!(alice.expect("message"), "message bob hello from ws");
    bob.expect("sent");
    // Unregistering (the phone's default on stop) removes both bindings.
    bob.command("stop");
    alice.command("stop");
    bob.expect("unregistered");
    alice.expect("unregistered");
    assert_eq!(s.metric("sipshard_bindings"), Some(0.0));
}
