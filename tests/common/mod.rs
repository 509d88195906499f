//! Shared helpers for the integration tests: start the real `sipshard` binary on a free
//! loopback port, and a UDP client that sends requests and reads responses.
#![allow(dead_code)]

pub mod pki;
pub mod redis;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free UDP (and TCP, for --metrics) port on 127.0.0.1. Ports come from 20000-29999,
/// below the kernel's ephemeral range, walked by a per-process counter: an ephemeral client
/// socket of another test can never take a port between our check and the server's bind, and
/// two servers of one test run never get the same port (SO_REUSEPORT would let them share
/// it silently).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive free ports (UDP and TCP), for programs that bind a port and
/// its neighbours (baresip: SIP on p, TLS on p + 1; RTP and RTCP). The counter moves by `n`
/// in one step, so tests running in parallel threads never get overlapping blocks.
pub fn free_ports(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() * 7919;
    loop {
        let first = (base + NEXT.fetch_add(u32::from(n), Ordering::Relaxed)) % 10_000;
        if first + u32::from(n) > 10_000 {
            continue; // the block would wrap past 29999
        }
        let first = 20_000 + first as u16;
        let free = (first..first + n).all(|p| {
            UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        if free {
            return first;
        }
    }
}

/// A test that cannot run here (a program or kernel feature is missing): fails if the
/// environment variable `require` is `1` (CI sets it), otherwise prints one `SKIPPED` line
/// straight to stderr, past the test harness's output capture, so `cargo test` shows it.
pub fn skip_or_fail(test: &str, why: &str, require: &str) {
    if std::env::var(require).as_deref() == Ok("1") {
        panic!("{test}: {why}, and {require}=1");
    }
    skipped(test, &format!("{why} ({require}=1 makes this a failure)"));
}

/// Prints `SKIPPED test: why` where `cargo test` shows it (not captured, unlike `eprintln!`).
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
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
    /// True when the server loaded the kernel steering program; otherwise reports `test` as
    /// skipped (a failure with `SIPSHARD_REQUIRE_BPF=1`) and returns false.
    #[allow(dead_code)]
    pub fn steering_or_skip(&self, test: &str) -> bool {
        if self.metric("sipshard_kernel_steering") == Some(1.0) {
            return true;
        }
        skip_or_fail(
            test,
            "the kernel refused the steering program (needs root and Linux 6.9+)",
            "SIPSHARD_REQUIRE_BPF",
        );
        false
    }

    /// Starts `sipshard --listen 127.0.0.1:PORT <args>` and waits until it answers OPTIONS.
    pub fn start(args: &[&str]) -> ServerProcess {
        Self::start_with(args, false)
    }

    /// Same, with `--metrics` on another free port.
    pub fn start_with(args: &[&str], metrics: bool) -> ServerProcess {
        Self::start_full(args, metrics, Stdio::inherit())
    }

    /// [`ServerProcess::start`] with the server's stderr (its `--log warn` lines) appended to
    /// the file `log`.
    pub fn start_logging_to(args: &[&str], log: &std::path::Path) -> ServerProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the server log");
        Self::start_full(args, false, Stdio::from(file))
    }

    /// Same as [`ServerProcess::start_with`], with `--log info` written to `log` (a file)
    /// instead of the test's stderr.
    pub fn start_logged(args: &[&str], metrics: bool, log: &std::path::Path) -> ServerProcess {
        let f = std::fs::File::create(log).expect("create the server log");
        let mut args = args.to_vec();
        if !args.contains(&"--log") {
            args.extend(["--log", "info"]);
        }
        Self::start_full(&args, metrics, Stdio::from(f))
    }

    fn start_full(args: &[&str], metrics: bool, stderr: Stdio) -> ServerProcess {
        Self::start_on(free_port(), args, metrics, stderr)
    }

    /// [`ServerProcess::start_with`] on a given port (a server started again where it was),
    /// its stderr to `stderr`.
    pub fn start_on(port: u16, args: &[&str], metrics: bool, stderr: Stdio) -> ServerProcess {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("--listen").arg(format!("udp:{addr}"));
        let metrics_addr = metrics.then(|| {
            let m: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            cmd.arg("--metrics").arg(m.to_string());
            m
        });
        // `tcp:SAME` listens on TCP at the UDP address.
        cmd.args(args.iter().map(|a| {
            if *a == "tcp:SAME" {
                format!("tcp:{addr}")
            } else {
                a.to_string()
            }
        }));
        if !args.contains(&"--log") {
            cmd.arg("--log").arg("warn");
        }
        cmd.stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().expect("start sipshard");
        let server = ServerProcess {
            child,
            addr,
            metrics: metrics_addr,
        };
        let mut server = server;
        let client = Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("sipshard exited during start-up: {status}");
            }
            client.send(&options_to_server(&client, addr, "ready"), addr);
            if client.recv_timeout(Duration::from_millis(100)).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "sipshard did not answer OPTIONS");
        }
        // The metrics listener is bound after the shards start answering: wait for it too.
        if let Some(m) = server.metrics {
            while std::net::TcpStream::connect_timeout(&m, Duration::from_millis(100)).is_err() {
                assert!(Instant::now() < deadline, "sipshard did not serve metrics");
                std::thread::sleep(Duration::from_millis(10));
            }
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

    /// Waits up to 5 s for the series `name` to read `want` (a counter the server moves
    /// after the answer a test waited for, such as a connection counted once it is closed).
    pub fn wait_metric(&self, name: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.metric(name) != Some(want) {
            assert!(
                Instant::now() < deadline,
                "{name}: {:?}, expected {want}",
                self.metric(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
    /// Where the last datagram received came from.
    pub last_src: std::cell::Cell<Option<SocketAddr>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client::on("127.0.0.1")
    }

    /// A client on a port of `ip` (another loopback address, such as 127.0.0.2).
    pub fn on(ip: &str) -> Client {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        let addr = sock.local_addr().unwrap();
        Client {
            sock,
            addr,
            last_src: std::cell::Cell::new(None),
        }
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
            Ok((n, src)) => {
                self.last_src.set(Some(src));
                buf.truncate(n);
                Some(buf)
            }
            Err(_) => None,
        }
    }

    /// Sends and waits for a final response (skips 1xx); panics after 3 s. Responses with
    /// another Call-ID or CSeq than the request's (late answers meant for an earlier socket
    /// on the same port) are skipped.
    pub fn request(&self, msg: &str, to: SocketAddr) -> Vec<u8> {
        self.request_bytes(msg.as_bytes(), to)
    }

    pub fn request_bytes(&self, msg: &[u8], to: SocketAddr) -> Vec<u8> {
        self.send_bytes(msg, to);
        let key = sipshard::sip::Message::parse(msg).ok().and_then(|m| {
            Some((
                m.header(sipshard::sip::HeaderName::CallId)?.to_vec(),
                m.header(sipshard::sip::HeaderName::CSeq)?.to_vec(),
            ))
        });
        self.final_response(key)
    }

    fn final_response(&self, key: Option<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
        use sipshard::sip::HeaderName;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no response");
            let r = self.recv_timeout(left).expect("no response");
            let m = sipshard::sip::Message::parse(&r).expect("response parses");
            if let Some((call_id, cseq)) = &key {
                if m.header(HeaderName::CallId) != Some(call_id.as_slice())
                    || m.header(HeaderName::CSeq) != Some(cseq.as_slice())
                {
                    eprintln!("skipping a stray response: {}", String::from_utf8_lossy(&r));
                    continue;
                }
            }
            if m.status().is_some_and(|s| s >= 200) {
                return r;
            }
        }
    }

    /// The status of the first final response (>= 200) to arrive, each within `t` of the
    /// last datagram; None when none does.
    pub fn final_status(&self, t: Duration) -> Option<u16> {
        while let Some(r) = self.recv_timeout(t) {
            if status(&r) >= 200 {
                return Some(status(&r));
            }
        }
        None
    }

    /// Nothing arrives within `t`.
    pub fn expect_silence(&self, t: Duration) {
        if let Some(r) = self.recv_timeout(t) {
            panic!("unexpected datagram: {}", String::from_utf8_lossy(&r));
        }
    }
}

/// A UAS's answer to `req` with `status` (`"486 Busy Here"`): the request's Via, From,
/// Call-ID and CSeq, its To with `tag` added, no body.
pub fn uas_answer(req: &[u8], status: &str, tag: &str) -> String {
    let text = String::from_utf8_lossy(req);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut resp = format!("SIP/2.0 {status}\r\n");
    for l in head.lines().skip(1) {
        let n = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ["via", "v", "from", "f", "call-id", "i", "cseq"].contains(&n.as_str()) {
            resp.push_str(&format!("{l}\r\n"));
        } else if n == "to" || n == "t" {
            resp.push_str(&format!("{l};tag={tag}\r\n"));
        }
    }
    resp + "Content-Length: 0\r\n\r\n"
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

static UNIQUE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A string unique within this test process (for Call-IDs, branches, tags).
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

/// Writes a TOML config file in a fresh scratch directory and returns its path (as a string,
/// ready for `--config`).
pub fn config_file(text: &str) -> String {
    write_scratch("sipshard.toml", text)
}

/// Writes `name` with `text` in a fresh scratch directory and returns its path.
pub fn write_scratch(name: &str, text: &str) -> String {
    // Under target/tmp (Cargo's scratch space for integration tests): `cargo clean` removes it,
    // and nothing accumulates in /tmp.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("sipshard-it-"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A REGISTER builder. `Register::new("sip:alice@localhost")` registers nothing yet (a query);
/// add contacts with [`Register::contact`]. The Request-URI is `sip:<AOR host>`, the Call-ID is
/// unique per builder, CSeq starts at 1, and each [`Register::build`] gets a fresh branch
/// unless [`Register::branch`] fixed one.
#[derive(Debug, Clone)]
pub struct Register {
    pub ruri: String,
    pub to: String,
    pub from: String,
    pub call_id: String,
    pub cseq: u32,
    pub branch: Option<String>,
    pub contacts: Vec<String>,
    pub expires: Option<String>,
    pub extra: Vec<String>,
}

impl Register {
    pub fn new(aor: &str) -> Register {
        let host = aor
            .split_once('@')
            .map_or(aor.trim_start_matches("sip:"), |(_, h)| h);
        Register {
            ruri: format!("sip:{host}"),
            to: aor.to_string(),
            from: aor.to_string(),
            call_id: unique("reg-"),
            cseq: 1,
            branch: None,
            contacts: Vec::new(),
            expires: None,
            extra: Vec::new(),
        }
    }

    pub fn ruri(mut self, ruri: &str) -> Self {
        self.ruri = ruri.to_string();
        self
    }

    /// The To URI (the AOR), as written inside `<>`.
    pub fn to(mut self, to: &str) -> Self {
        self.to = to.to_string();
        self
    }

    pub fn call_id(mut self, id: &str) -> Self {
        self.call_id = id.to_string();
        self
    }

    pub fn cseq(mut self, n: u32) -> Self {
        self.cseq = n;
        self
    }

    pub fn branch(mut self, b: &str) -> Self {
        self.branch = Some(b.to_string());
        self
    }

    /// Adds a Contact header with this value, e.g. `<sip:a@1.2.3.4>;expires=60` or `*`.
    pub fn contact(mut self, value: &str) -> Self {
        self.contacts.push(value.to_string());
        self
    }

    /// Removes all contacts (to reuse a builder as a query).
    pub fn no_contacts(mut self) -> Self {
        self.contacts.clear();
        self
    }

    /// Sets the Expires header.
    pub fn expires(mut self, secs: u32) -> Self {
        self.expires = Some(secs.to_string());
        self
    }

    /// Adds a raw header line (without CRLF), e.g. `Path: <sip:p1.example.com;lr>`.
    pub fn header(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// Sets the Authorization header (replacing one set before).
    pub fn with_auth(mut self, credentials: &str) -> Self {
        self.extra
            .retain(|h| !h.to_ascii_lowercase().starts_with("authorization:"));
        self.extra.push(format!("Authorization: {credentials}"));
        self
    }

    /// The next request of the same registration (CSeq + 1), contacts and headers kept.
    pub fn next(&self) -> Self {
        let mut r = self.clone();
        r.cseq += 1;
        r.branch = None;
        r
    }

    /// The request text, with `client`'s address in the Via.
    pub fn build(&self, client: &Client) -> String {
        let branch = self.branch.clone().unwrap_or_else(|| unique("z9hG4bK-"));
        let mut m = format!(
            "REGISTER {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {a};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{from}>;tag=f{tag}\r\n\
             To: <{to}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} REGISTER\r\n",
            ruri = self.ruri,
            a = client.addr,
            from = self.from,
            tag = self.call_id.len(),
            to = self.to,
            cid = self.call_id,
            cseq = self.cseq,
        );
        for c in &self.contacts {
            m.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = &self.expires {
            m.push_str(&format!("Expires: {e}\r\n"));
        }
        for h in &self.extra {
            m.push_str(h);
            m.push_str("\r\n");
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }

    /// Builds, sends to `server` and returns the final response.
    pub fn send(&self, client: &Client, server: SocketAddr) -> Vec<u8> {
        client.request(&self.build(client), server)
    }
}

/// A Contact of a response: the URI and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactInfo {
    pub uri: String,
    /// `(name, value)` with the name in lower case and quotes removed.
    pub params: Vec<(String, Option<String>)>,
}

impl ContactInfo {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn has_param(&self, name: &str) -> bool {
        self.params
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The `expires` parameter (panics if missing: a 200 lists every binding with it).
    pub fn expires(&self) -> u32 {
        self.param("expires")
            .unwrap_or_else(|| panic!("contact without expires: {self:?}"))
            .parse()
            .unwrap()
    }
}

/// Every Contact of a response, in order.
pub fn contacts(resp: &[u8]) -> Vec<ContactInfo> {
    let m = sipshard::sip::Message::parse(resp).expect("response parses");
    m.contacts()
        .map(|c| {
            let c = c.expect("contact parses");
            ContactInfo {
                uri: String::from_utf8_lossy(c.uri_raw).into_owned(),
                params: c
                    .params
                    .iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(n).to_ascii_lowercase(),
                            v.map(|v| String::from_utf8_lossy(v).trim_matches('"').to_string()),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The URIs of a response's Contacts, sorted.
pub fn contact_uris(resp: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = contacts(resp).into_iter().map(|c| c.uri).collect();
    v.sort();
    v
}

/// Every value of a header (by name, case-insensitive, compact forms not included).
pub fn header_values(resp: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(resp);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The first value of a header.
pub fn header_value(resp: &[u8], name: &str) -> Option<String> {
    header_values(resp, name).into_iter().next()
}

/// Panics with the whole response unless its status is `want`.
#[track_caller]
pub fn assert_status(resp: &[u8], want: u16) {
    assert_eq!(
        status(resp),
        want,
        "response:\n{}",
        String::from_utf8_lossy(resp)
    );
}

/// The filter of tuning/fail2ban.
pub fn fail2ban_filter() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/fail2ban/filter.d/sipshard.conf")
}

/// The hosts the fail2ban filter bans for the lines of `log`: by `fail2ban-regex` when it is
/// installed, else by the filter's failregex applied with Python's `re` (fail2ban is Python;
/// `<HOST>` stands for an address). None when neither is available.
pub fn fail2ban_hosts(log: &std::path::Path) -> Option<Vec<String>> {
    use std::process::Command;
    let filter = fail2ban_filter();
    if let Ok(out) = Command::new("fail2ban-regex")
        .args(["--print-all-matched", "-v"])
        .arg(log)
        .arg(&filter)
        .output()
    {
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        // The matched hosts are listed as "|      HOST  <date>".
        let hosts = text
            .lines()
            .filter_map(|l| l.strip_prefix("|      "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        return Some(hosts);
    }
    let script = r#"
import re, sys
conf = open(sys.argv[1]).read()
# failregex and its continuation lines (indented), one regex each.
block = re.search(r'^failregex = (.*(?:\n[ \t]+\S.*)*)', conf, re.M).group(1)
host = r'(?P<host>[0-9A-Fa-f.:]+)'
rxs = [re.compile(r.strip().replace('<HOST>', host)) for r in block.split('\n')]
for line in open(sys.argv[2]):
    # fail2ban cuts the date off before matching.
    line = re.sub(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z', '', line.rstrip('\n'))
    for rx in rxs:
        m = rx.search(line)
        if m:
            print(m.group('host'))
            break
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&filter)
        .arg(log)
        .output()
        .ok()?;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().map(str::to_owned).collect())
}

/// A number from a `sipshard load --json` summary: the first `"key": N`.
pub fn field(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\": ");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let end = json[at..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(json.len(), |e| at + e);
    json[at..end].parse().unwrap()
}

/// Reads `n` complete SIP messages from a stream (TCP, TLS): Content-Length framing, several
/// messages per read and messages split across reads. Panics if the peer closes first or a
/// read times out.
pub fn read_stream_messages(r: &mut impl std::io::Read, n: usize) -> Vec<Vec<u8>> {
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 65536];
    while out.len() < n {
        let got = r
            .read(&mut chunk)
            .expect("a message within the read timeout");
        assert!(
            got > 0,
            "the server closed the connection after {} messages",
            out.len()
        );
        buf.extend_from_slice(&chunk[..got]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() < end + 4 + cl {
                break;
            }
            out.push(buf[..end + 4 + cl].to_vec());
            buf.drain(..end + 4 + cl);
        }
    }
    out
}
