//! TLS (`--listen tls:`, RFC 3261 §26.2.1) on a running server, with certificates made in the
//! test (rcgen) and a rustls client: OPTIONS and a registration over TLS, a call from a UDP
//! phone that reaches the TLS phone over its connection (Via and Record-Route name TLS), a
//! client that does not speak TLS (closed, counted), a required client certificate, and the
//! flags a TLS address needs (exit 2 naming the missing one).

mod common;

use common::pki::{pki, Pki};
use common::{binary, free_port, status, Client, ServerProcess};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn request(method: &str, ruri: &str, extra: &str, call_id: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=t\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

fn tls_server(p: &Pki, extra: &[&str]) -> (ServerProcess, SocketAddr) {
    let port = free_port();
    let tls_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = format!("tls:{tls_addr}");
    let (cert, key) = (p.path("cert.pem"), p.path("key.pem"));
    let mut args = vec!["--listen", &listen, "--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    (ServerProcess::start_with(&args, true), tls_addr)
}

#[test]
fn a_phone_registers_over_tls_and_a_udp_caller_reaches_it_over_that_connection() {
    let p = pki("reg");
    let (s, tls_addr) = tls_server(&p, &["--shards", "2"]);
    let mut phone = p.connect(tls_addr, false);
    phone
        .write_all(request("OPTIONS", "sip:127.0.0.1", "", "tls-opt").as_bytes())
        .unwrap();
    assert_eq!(status(&common::read_stream_messages(&mut phone, 1)[0]), 200);
    let reg = request(
        "REGISTER",
        "sip:localhost",
        "Contact: <sip:bob@127.0.0.1:5061;transport=tls>\r\n",
        "tls-reg",
    );
    phone.write_all(reg.as_bytes()).unwrap();
    assert_eq!(status(&common::read_stream_messages(&mut phone, 1)[0]), 200);
    assert_eq!(s.metric("sipshard_bindings"), Some(1.0));
    // A UDP caller: the INVITE comes to the phone over its TLS connection.
    let caller = Client::new();
    let invite = format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKtlsinv;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: tls-call\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{}>\r\nContent-Length: 0\r\n\r\n",
        caller.addr, caller.addr
    );
    caller.send(&invite, s.addr);
    let inv = &common::read_stream_messages(&mut phone, 1)[0];
    let text = String::from_utf8_lossy(inv);
    assert!(
        text.starts_with("INVITE sip:bob@127.0.0.1:5061;transport=tls SIP/2.0"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Via: SIP/2.0/TLS {tls_addr};branch=")),
        "{text}"
    );
    assert!(
        text.contains(";transport=tls;lr"),
        "double Record-Route, TLS side: {text}"
    );
    assert_eq!(s.metric("sipshard_connections_made_total"), Some(0.0));
}

#[test]
fn a_client_that_does_not_speak_tls_is_closed() {
    let p = pki("plain");
    let (s, tls_addr) = tls_server(&p, &[]);
    let mut c = TcpStream::connect(tls_addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(request("OPTIONS", "sip:127.0.0.1", "", "plain").as_bytes())
        .unwrap();
    let mut b = [0u8; 4096];
    let mut closed = false;
    for _ in 0..10 {
        match c.read(&mut b) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            // A TLS alert, not a SIP response.
            Ok(n) => assert!(!b[..n].starts_with(b"SIP/2.0")),
        }
    }
    assert!(closed);
    assert_eq!(
        s.metric("sipshard_connection_events_total{reason=\"tls_failed\"}"),
        Some(1.0)
    );
}

#[test]
fn a_required_client_certificate_is_checked() {
    let p = pki("mtls");
    let ca = p.path("ca.pem");
    let (_s, tls_addr) = tls_server(&p, &["--tls-client-ca", &ca]);
    // With the certificate: served.
    let mut ok = p.connect(tls_addr, true);
    ok.write_all(request("OPTIONS", "sip:127.0.0.1", "", "mtls-ok").as_bytes())
        .unwrap();
    assert_eq!(status(&common::read_stream_messages(&mut ok, 1)[0]), 200);
    // Without: the handshake fails, nothing is answered.
    let mut refused = p.connect(tls_addr, false);
    let _ = refused.write_all(request("OPTIONS", "sip:127.0.0.1", "", "mtls-no").as_bytes());
    let mut b = [0u8; 4096];
    assert!(!matches!(refused.read(&mut b), Ok(n) if n > 0));
}

#[test]
fn a_tls_address_without_its_files_exits_2_naming_the_flag() {
    let p = pki("flags");
    for (args, flag) in [
        (vec!["--listen", "tls:127.0.0.1:5061"], "--tls-cert"),
        (
            vec![
                "--listen",
                "tls:127.0.0.1:5061",
                "--tls-cert",
                &p.path("cert.pem"),
            ],
            "--tls-key",
        ),
        (
            vec![
                "--listen",
                "tls:127.0.0.1:5061",
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                &p.path("key.pem"),
            ],
            "--tls-cert /nonexistent.pem",
        ),
    ] {
        let out = std::process::Command::new(binary())
            .args(["--listen", "udp:127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

/// A call routed to a trunk over `transport` (tcp or tls): the far end is a sipshard responder
/// listening on that transport; the caller is a UDP phone. The server opens the connection
/// (over TLS verifying the trunk's certificate against `--tls-ca`), and the trunk's OPTIONS
/// checks go the same way.
fn call_through_a_stream_trunk(transport: &str) {
    let p = pki(&format!("trunk-{transport}"));
    let (cert, key, ca) = (p.path("cert.pem"), p.path("key.pem"), p.path("ca.pem"));
    let far_port = free_port();
    let far_listen = format!("{transport}:127.0.0.1:{far_port}");
    let _far = ServerProcess::start(&[
        "--mode",
        "responder",
        "--shards",
        "1",
        "--listen",
        &far_listen,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let plan = common::write_scratch(
        "plan.toml",
        &format!(
            "[[trunk]]\nname = \"far\"\naddress = \"127.0.0.1:{far_port}\"\n\
             transport = \"{transport}\"\ncheck_interval_ms = 500\n\n\
             [[route]]\nprefix = \"+49\"\ntrunks = [\"far\"]\n"
        ),
    );
    let own = format!("{transport}:127.0.0.1:{}", free_port());
    let s = ServerProcess::start_with(
        &[
            "--config",
            &plan,
            "--listen",
            &own,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
            "--shards",
            "2",
        ],
        true,
    );
    let caller = Client::new();
    for i in 0..3 {
        let invite = format!(
            "INVITE sip:+4930123456@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKtr{i};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:+4930123456@localhost>\r\n\
             Call-ID: trunk-{transport}-{i}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{a}>\r\n\
             Content-Length: 0\r\n\r\n",
            a = caller.addr
        );
        caller.send(&invite, s.addr);
        let final_status = caller.final_status(Duration::from_secs(5));
        assert_eq!(
            final_status,
            Some(200),
            "call {i} over the {transport} trunk"
        );
    }
    // Connections were opened by us (one per shard that sent, at most), not one per call.
    let made = s.metric("sipshard_connections_made_total").unwrap();
    assert!((1.0..=2.0).contains(&made), "connections made: {made}");
}

#[test]
fn a_call_reaches_a_trunk_over_tcp() {
    call_through_a_stream_trunk("tcp");
}

#[test]
fn a_call_reaches_a_trunk_over_tls_verified_against_tls_ca() {
    call_through_a_stream_trunk("tls");
}

#[test]
fn a_tls_trunk_whose_certificate_is_not_trusted_fails_the_call_at_once() {
    // The far end's certificate chains to a CA the server was not told to trust.
    let far_pki = pki("untrusted-far");
    let ours = pki("untrusted-ours");
    let far_port = free_port();
    let far_listen = format!("tls:127.0.0.1:{far_port}");
    let (fc, fk) = (far_pki.path("cert.pem"), far_pki.path("key.pem"));
    let _far = ServerProcess::start(&[
        "--mode",
        "responder",
        "--shards",
        "1",
        "--listen",
        &far_listen,
        "--tls-cert",
        &fc,
        "--tls-key",
        &fk,
    ]);
    let plan = common::write_scratch(
        "plan.toml",
        &format!(
            "[[trunk]]\nname = \"far\"\naddress = \"127.0.0.1:{far_port}\"\n\
             transport = \"tls\"\ncheck_interval_ms = 0\n\n\
             [[route]]\nprefix = \"+49\"\ntrunks = [\"far\"]\n"
        ),
    );
    let own = format!("tls:127.0.0.1:{}", free_port());
    let (c, k, ca) = (
        ours.path("cert.pem"),
        ours.path("key.pem"),
        ours.path("ca.pem"),
    );
    let s = ServerProcess::start_with(
        &[
            "--config",
            &plan,
            "--listen",
            &own,
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
            "--tls-ca",
            &ca,
        ],
        true,
    );
    let caller = Client::new();
    let invite = format!(
        "INVITE sip:+4930123456@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKuntr;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:+4930123456@localhost>\r\n\
         Call-ID: untrusted\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{a}>\r\nContent-Length: 0\r\n\r\n",
        a = caller.addr
    );
    caller.send(&invite, s.addr);
    let final_status = caller.final_status(Duration::from_secs(5));
    assert!(
        matches!(final_status, Some(s) if s >= 500),
        "refused, not connected: {final_status:?}"
    );
    assert!(
        s.metric("sipshard_connection_events_total{reason=\"tls_failed\"}")
            .unwrap()
            >= 1.0
    );
}

#[test]
fn close_notify_followed_by_more_bytes_does_not_stall_the_shard() {
    let p = pki("closenotify");
    let (s, tls_addr) = tls_server(&p, &["--shards", "1"]);
    let mut c = p.connect(tls_addr, false);
    c.write_all(request("OPTIONS", "sip:127.0.0.1", "", "cn-1").as_bytes())
        .unwrap();
    assert_eq!(status(&common::read_stream_messages(&mut c, 1)[0]), 200);
    // close_notify and then 6 KB more in the same write (rustls takes nothing after the
    // alert: a read loop waiting for it to take the rest spun the shard forever).
    c.conn.send_close_notify();
    let mut bytes = Vec::new();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut bytes).unwrap();
    }
    bytes.extend_from_slice(&[0x17; 6000]);
    c.sock.write_all(&bytes).unwrap();
    // The one shard still serves a new connection and UDP.
    std::thread::sleep(Duration::from_millis(200));
    let mut fresh = p.connect(tls_addr, false);
    fresh
        .write_all(request("OPTIONS", "sip:127.0.0.1", "", "cn-2").as_bytes())
        .unwrap();
    assert_eq!(status(&common::read_stream_messages(&mut fresh, 1)[0]), 200);
    let udp = Client::new();
    assert_eq!(
        status(&udp.request(&common::options_to_server(&udp, s.addr, "cn-3"), s.addr)),
        200
    );
}

/// Connection reuse (RFC 5923): a peer proxy connects over TLS with a client certificate for
/// `phone.example` and puts `alias` in its Via (sent-by `phone.example:PORT`, PORT where it
/// does not listen). The server's calls to a TLS trunk at 127.0.0.1:PORT then go down that
/// connection instead of a new one (which would be refused); once it closes, they fail again.
/// Without the alias every call here gets a 5xx (tests/tls.rs shows that in the last step).
#[test]
fn a_peer_proxy_that_asks_for_an_alias_gets_our_requests_down_its_connection() {
    let p = pki("alias");
    let (cert, key, ca) = (p.path("cert.pem"), p.path("key.pem"), p.path("ca.pem"));
    let peer_port = free_port();
    let plan = common::write_scratch(
        "alias-plan.toml",
        &format!(
            "[[trunk]]\nname = \"peer\"\naddress = \"127.0.0.1:{peer_port}\"\n\
             transport = \"tls\"\ncheck_interval_ms = 0\n\n\
             [[route]]\nprefix = \"+49\"\ntrunks = [\"peer\"]\n"
        ),
    );
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let own = format!("tls:{tls_addr}");
    let s = ServerProcess::start_with(
        &[
            "--config",
            &plan,
            "--listen",
            &own,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
            "--tls-client-ca",
            &ca,
            "--shards",
            "2",
        ],
        true,
    );
    let mut peer = p.connect(tls_addr, true);
    let options = format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TLS phone.example:{peer_port};branch=z9hG4bKalias1;alias\r\n\
         Max-Forwards: 70\r\nFrom: <sip:proxy@phone.example>;tag=p\r\nTo: <sip:127.0.0.1>\r\n\
         Call-ID: alias-options\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    peer.write_all(options.as_bytes()).unwrap();
    assert_eq!(status(&common::read_stream_messages(&mut peer, 1)[0]), 200);
    assert_eq!(
        s.metric("sipshard_connection_events_total{reason=\"aliased\"}"),
        Some(1.0)
    );
    // A second connection asking for the same address does not take it from the first.
    let mut second = p.connect(tls_addr, true);
    second
        .write_all(options.replace("alias1", "alias2").as_bytes())
        .unwrap();
    assert_eq!(
        status(&common::read_stream_messages(&mut second, 1)[0]),
        200
    );
    assert_eq!(
        s.metric("sipshard_connection_events_total{reason=\"aliased\"}"),
        Some(1.0)
    );
    let caller = Client::new();
    let invite = |i: &str| {
        format!(
            "INVITE sip:+4930123456@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKal{i};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:+4930123456@localhost>\r\n\
             Call-ID: alias-call-{i}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{a}>\r\n\
             Content-Length: 0\r\n\r\n",
            a = caller.addr
        )
    };
    // Calls reach the peer down its connection; it answers 486. (Whether the shard that
    // handles a call holds the connection or hands the INVITE to the one that does depends
    // on where the kernel put the connection; one read may bring the ACK of a 486 and the
    // next INVITE.)
    let mut pending = std::collections::VecDeque::new();
    for i in 0..4 {
        caller.send(&invite(&i.to_string()), s.addr);
        let req = loop {
            if pending.is_empty() {
                pending.extend(common::read_stream_messages(&mut peer, 1));
            }
            let m = pending.pop_front().unwrap();
            if m.starts_with(b"INVITE ") {
                break m;
            }
        };
        assert!(
            String::from_utf8_lossy(&req).contains(&format!("Call-ID: alias-call-{i}")),
            "{}",
            String::from_utf8_lossy(&req)
        );
        peer.write_all(common::uas_answer(&req, "486 Busy Here", "peer").as_bytes())
            .unwrap();
        assert_eq!(
            caller.final_status(Duration::from_secs(5)),
            Some(486),
            "call {i}"
        );
    }
    // The server opened no connection of its own to the peer.
    assert_eq!(
        s.metric("sipshard_connections_made_total").unwrap_or(0.0),
        0.0
    );
    // Closed: the alias goes with it, and the trunk (where nobody listens) fails the call.
    drop(peer);
    std::thread::sleep(Duration::from_millis(300));
    caller.send(&invite("after-close"), s.addr);
    let last = caller.final_status(Duration::from_secs(5));
    assert!(matches!(last, Some(500..=599)), "after the close: {last:?}");
}
