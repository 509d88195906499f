//! Shared helpers for the integration tests: start the real `sipshard` binary on a free
//! loopback port, and a UDP client that sends requests and reads responses.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free UDP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        drop(s);
        // Also check TCP is free (for --metrics) and leave room for neighbours.
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// The sipshard binary built for this test run.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sipshard")
}

/// A running server process, stopped (SIGTERM) when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts `sipshard --listen 127.0.0.1:PORT <args>` and waits until it answers OPTIONS.
    pub fn start(args: &[&str]) -> ServerProcess {
        Self::start_with(args, false)
    }

    /// Same, with `--metrics` on another free port.
    pub fn start_with(args: &[&str], metrics: bool) -> ServerProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("--listen").arg(format!("udp:{addr}"));
        let metrics_addr = metrics.then(|| {
            let m: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            cmd.arg("--metrics").arg(m.to_string());
            m
        });
        cmd.args(args)
            .arg("--log")
            .arg("warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("start sipshard");
        let server = ServerProcess {
            child,
            addr,
            metrics: metrics_addr,
        };
        let client = Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            client.send(&options_to_server(&client, addr, "ready"), addr);
            if client.recv_timeout(Duration::from_millis(100)).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "sipshard did not answer OPTIONS");
        }
        server
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "sipshard did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fetches the Prometheus text.
    pub fn metrics_text(&self) -> String {
        use std::io::{Read, Write};
        let addr = self.metrics.expect("started with metrics");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    /// The value of one metric line (exact series text before the value).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A UDP client on its own port.
pub struct Client {
    pub sock: UdpSocket,
    pub addr: SocketAddr,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        Client { sock, addr }
    }

    pub fn send(&self, msg: &str, to: SocketAddr) {
        self.sock.send_to(msg.as_bytes(), to).unwrap();
    }

    pub fn send_bytes(&self, msg: &[u8], to: SocketAddr) {
        self.sock.send_to(msg, to).unwrap();
    }

    pub fn recv_timeout(&self, t: Duration) -> Option<Vec<u8>> {
        self.sock.set_read_timeout(Some(t)).unwrap();
        let mut buf = vec![0u8; 65535];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(_) => None,
        }
    }

    /// Sends and waits for a final response (skips 1xx); panics after 3 s.
    pub fn request(&self, msg: &str, to: SocketAddr) -> Vec<u8> {
        self.send(msg, to);
        self.final_response()
    }

    pub fn request_bytes(&self, msg: &[u8], to: SocketAddr) -> Vec<u8> {
        self.send_bytes(msg, to);
        self.final_response()
    }

    fn final_response(&self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no response");
            let r = self.recv_timeout(left).expect("no response");
            let m = sipshard::sip::Message::parse(&r).expect("response parses");
            if m.status().is_some_and(|s| s >= 200) {
                return r;
            }
        }
    }

    /// Nothing arrives within `t`.
    pub fn expect_silence(&self, t: Duration) {
        if let Some(r) = self.recv_timeout(t) {
            panic!("unexpected datagram: {}", String::from_utf8_lossy(&r));
        }
    }
}

/// Status code of a response.
pub fn status(resp: &[u8]) -> u16 {
    sipshard::sip::Message::parse(resp)
        .expect("response parses")
        .status()
        .expect("is a response")
}

/// Reason phrase of a response.
pub fn reason(resp: &[u8]) -> String {
    let m = sipshard::sip::Message::parse(resp).unwrap();
    String::from_utf8_lossy(m.reason().unwrap()).into_owned()
}

/// An OPTIONS to the server itself.
pub fn options_to_server(client: &Client, server: SocketAddr, call_id: &str) -> String {
    format!(
        "OPTIONS sip:{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {c};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:tester@localhost>;tag=t1\r\n\
         To: <sip:{server}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        c = client.addr
    )
}
