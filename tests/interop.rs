//! Real SIP clients against the real `sipshard` binary on its default settings (plus users):
//! baresip, linphonec, sipsak and SIPp, and a baresip phone behind a real NAT (network
//! namespaces and nftables masquerade, see tests/interop/nat.sh).
//!
//! A missing program skips its test with a message, unless SIPSHARD_REQUIRE_INTEROP=1 (CI sets
//! it), which turns the skip into a failure. The NAT test also needs root. Every process a test
//! starts is killed by PID when the test ends, pass or fail; the namespaces disappear with their
//! last process. On failure the message carries the clients' logs.
//!
//! The server runs on its defaults. SIPSHARD_INTEROP_SERVER_ARGS adds flags to every server of
//! this file, e.g. `--auth-algorithms md5 --no-private-ports` to check the clients against the
//! workarounds of known issues; CI leaves it unset.
//!
//! Client quirks the tests work around (not server issues): baresip 1.0's ausine source only
//! runs at 48 kHz stereo (ausrc_srate/ausrc_channels); baresip answers `localhost` through an
//! outbound proxy; linphonec gets its account from its config file, because `register` does
//! not make the proxy its outbound route; sipsak's default Expires (15) is below Min-Expires
//! (60) and it does not retry on 423, so -x; sipsak -U needs -u or answers as user "name@";
//! sipsak 0.9.8.1's -M crashes before sending (sprintf into a NULL buffer in create_msg), so the
//! MESSAGE goes out with -f; SIPp 3.6 needs `-p` (it binds 5060 otherwise).

mod common;

use common::*;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any one step may take (start-up, registration, a call leg). Generous: the CI
/// machine is shared; nothing here measures time.
const STEP: Duration = Duration::from_secs(20);

/// True when every program is on PATH; otherwise skips (or fails when required).
fn have(test: &str, programs: &[(&str, &str)]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (prog, package) in programs {
        let found = std::env::split_paths(&path).any(|d| d.join(prog).is_file());
        if !found {
            skip_or_fail(
                test,
                &format!("`{prog}` is not installed (apt-get install {package})"),
                "SIPSHARD_REQUIRE_INTEROP",
            );
            return false;
        }
    }
    true
}

/// True when running as root (the NAT test needs it); otherwise skips (or fails when required).
fn root(test: &str) -> bool {
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        skip_or_fail(
            test,
            "needs root (network namespaces, nftables)",
            "SIPSHARD_REQUIRE_INTEROP",
        );
        return false;
    }
    true
}

/// A fresh scratch directory for one test's configs and logs.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique(&format!("interop-{name}-")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child process whose stdout and stderr go to `<dir>/<name>.log`; killed (by its PID)
/// and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit status (None if still running after `t`).
    fn wait_exit(&mut self, t: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + t;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of every `*.log` in `dir` (the failure report).
fn logs(dir: &Path, n: usize) -> String {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "log"));
    names.sort();
    let mut out = String::new();
    for p in names {
        let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        out.push_str(&format!(
            "\n===== {} (last {} of {} lines) =====\n",
            p.display(),
            lines.len() - from,
            lines.len()
        ));
        for l in &lines[from..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Polls `cond` until it holds; panics with `what` and the logs of `dir` after `t`.
#[track_caller]
fn wait_for(dir: &Path, what: &str, t: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + t;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {t:?}: {what}\n{}", logs(dir, 250));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The server's `--log info` goes to `<dir>/sipshard.log`; default settings plus `args`.
fn server(dir: &Path, args: &[&str], metrics: bool) -> (ServerProcess, PathBuf) {
    // ServerProcess logs to our stderr; a wrapper keeps its output in the scratch directory
    // for the failure report instead.
    let log = dir.join("sipshard.log");
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(workarounds());
    let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    (ServerProcess::start_logged(&refs, metrics, &log), log)
}

/// Extra server flags from SIPSHARD_INTEROP_SERVER_ARGS (space-separated): lets a developer
/// run the suite with the known-issue workarounds (`--auth-algorithms md5 --no-private-ports`)
/// without editing it. CI does not set it: the tests run on the defaults.
fn workarounds() -> Vec<String> {
    std::env::var("SIPSHARD_INTEROP_SERVER_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// baresip, driven through its ctrl_tcp module (JSON in netstrings: commands in, events out).

struct Baresip {
    proc: Proc,
    /// None when baresip runs in another network namespace (the NAT phone).
    ctrl: Option<TcpStream>,
    events: Arc<Mutex<Vec<String>>>,
    aor: String,
}

/// Where a baresip instance runs and what it registers.
struct BaresipSpec<'a> {
    name: &'a str,
    user: &'a str,
    password: &'a str,
    /// The SIP address baresip binds (its Contact); 127.0.0.1 outside the NAT test.
    ip: &'a str,
    /// The outbound proxy, i.e. sipshard.
    proxy: SocketAddr,
    /// `auto` makes baresip answer by itself (the NAT phone cannot be reached by ctrl_tcp).
    answermode: &'a str,
    /// Runs the process through this prefix (e.g. nsenter into the phone's namespace).
    prefix: &'a [String],
    /// Parameters of the outbound proxy URI (`;transport=tcp` registers and calls over TCP).
    outbound_params: &'a str,
    /// Lines added to the config (e.g. `sip_cafile` for TLS).
    config_extra: &'a str,
}

impl Baresip {
    /// Writes a minimal headless config (no sound card: a sine as microphone, a wav file as
    /// speaker) and account, starts baresip with SIP tracing on and connects to ctrl_tcp.
    /// Without a ctrl_tcp connection when `prefix` puts it in another network namespace.
    fn start(dir: &Path, spec: &BaresipSpec) -> Baresip {
        let home = dir.join(spec.name);
        std::fs::create_dir_all(&home).unwrap();
        // baresip binds sip_port (UDP, TCP) and sip_port + 1 (TLS): both must be free.
        let sip_port = free_ports(2);
        let ctrl_port = free_port();
        let config = format!(
            "poll_method\t\tepoll\n\
             sip_listen\t\t{ip}:{sip_port}\n\
             audio_player\t\taufile,{home}/speaker.wav\n\
             audio_source\t\tausine,440\n\
             ausrc_srate\t\t48000\n\
             ausrc_channels\t\t2\n\
             audio_alert\t\taufile,{home}/alert.wav\n\
             module_path\t\t/usr/lib/baresip/modules\n\
             module\t\t\tg711.so\n\
             module\t\t\tausine.so\n\
             module\t\t\taufile.so\n\
             module_tmp\t\taccount.so\n\
             module_app\t\tmenu.so\n\
             module_app\t\tctrl_tcp.so\n\
             ctrl_tcp_listen\t\t{ctrl_ip}:{ctrl_port}\n{extra}",
            extra = spec.config_extra,
            ip = spec.ip,
            home = home.display(),
            ctrl_ip = spec.ip,
        );
        std::fs::write(home.join("config"), config).unwrap();
        let aor = format!("sip:{}@localhost", spec.user);
        std::fs::write(
            home.join("accounts"),
            format!(
                "<{aor}>;auth_pass={pw};outbound=\"sip:{proxy}{op}\";answermode={am};regint=3600\n",
                pw = spec.password,
                proxy = spec.proxy,
                op = spec.outbound_params,
                am = spec.answermode,
            ),
        )
        .unwrap();
        let mut cmd = if spec.prefix.is_empty() {
            Command::new("baresip")
        } else {
            let mut c = Command::new(&spec.prefix[0]);
            c.args(&spec.prefix[1..]).arg("baresip");
            c
        };
        cmd.arg("-f").arg(&home).arg("-s").stdin(Stdio::null());
        let proc = Proc::spawn(dir, spec.name, &mut cmd);
        let events = Arc::new(Mutex::new(Vec::new()));
        let ctrl_addr: SocketAddr = format!("{}:{ctrl_port}", spec.ip).parse().unwrap();
        let ctrl = spec.prefix.is_empty().then(|| {
            let deadline = Instant::now() + STEP;
            loop {
                match TcpStream::connect_timeout(&ctrl_addr, Duration::from_millis(200)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        panic!(
                            "{}: ctrl_tcp {ctrl_addr}: {e}\n{}",
                            spec.name,
                            logs(dir, 100)
                        )
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        if let Some(c) = &ctrl {
            let reader = c.try_clone().unwrap();
            let sink = events.clone();
            std::thread::spawn(move || read_netstrings(reader, sink));
        }
        Baresip {
            proc,
            ctrl,
            events,
            aor,
        }
    }

    /// Sends a menu command (e.g. `dial sip:bob@localhost`, `accept`, `hangup`).
    fn command(&mut self, line: &str) {
        let (cmd, params) = line.split_once(' ').unwrap_or((line, ""));
        let json = format!(
            "{{\"command\":\"{cmd}\",\"params\":\"{params}\",\"token\":\"{}\"}}",
            unique("t")
        );
        let ctrl = self
            .ctrl
            .as_mut()
            .expect("no ctrl_tcp connection to this baresip");
        let _ = ctrl.write_all(format!("{}:{json},", json.len()).as_bytes());
    }

    /// The events (JSON text) of this type received so far.
    fn events(&self, kind: &str) -> Vec<String> {
        let pat = format!("\"type\":\"{kind}\"");
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.contains(&pat))
            .cloned()
            .collect()
    }

    /// Waits for the registration's 200 (baresip logs `user@domain: {0/UDP/v4} 200 OK () [1
    /// binding]`; the REGISTER_OK event may go out before ctrl_tcp is connected).
    #[track_caller]
    fn wait_registered(&self, dir: &Path) {
        let user = self.aor.trim_start_matches("sip:").to_string();
        let mut failure = None;
        wait_for(
            dir,
            &format!(
                "{}: registration of {} answered 200",
                self.proc.name, self.aor
            ),
            STEP,
            || {
                let out = self.proc.output();
                // baresip gives up on a challenge it cannot answer: "reg: sip:..: Register: ..."
                failure = out
                    .lines()
                    .find(|l| l.contains(": Register: "))
                    .map(|l| (l.to_string(), out.clone()));
                failure.is_some()
                    || out
                        .lines()
                        .any(|l| l.contains(&user) && l.contains("} 200 OK"))
            },
        );
        if let Some((line, out)) = failure {
            let challenges: Vec<&str> = out
                .lines()
                .filter(|l| l.starts_with("WWW-Authenticate:"))
                .collect();
            panic!(
                "{}: REGISTER of {} failed: {}\nthe challenge it got:\n{}\n{}",
                self.proc.name,
                self.aor,
                line.replace("\u{1b}[31m", "")
                    .replace("\u{1b}[;m", "")
                    .trim(),
                challenges.join("\n"),
                logs(dir, 250)
            );
        }
    }

    #[track_caller]
    fn wait_event(&self, dir: &Path, kind: &str) -> String {
        wait_for(
            dir,
            &format!("{} ({}): event {kind}", self.proc.name, self.aor),
            STEP,
            || !self.events(kind).is_empty(),
        );
        self.events(kind).remove(0)
    }
}

/// Reads `len:payload,` netstrings into `sink` until the connection closes.
fn read_netstrings(s: TcpStream, sink: Arc<Mutex<Vec<String>>>) {
    let mut r = std::io::BufReader::new(s);
    loop {
        let mut len = Vec::new();
        if r.read_until(b':', &mut len).unwrap_or(0) == 0 {
            return;
        }
        let Ok(n) = String::from_utf8_lossy(&len[..len.len() - 1])
            .trim()
            .parse::<usize>()
        else {
            return;
        };
        let mut payload = vec![0u8; n + 1];
        if r.read_exact(&mut payload).is_err() {
            return;
        }
        payload.pop();
        sink.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&payload).into_owned());
    }
}

/// The SIP messages of a `-s` trace (or any log): for each line starting a message, the
/// message's first line and its CSeq, in order; baresip's `UDP a -> b` line before a message,
/// when there is one, is prefixed to the first line.
fn trace_messages(log: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim_start_matches(|c: char| c.is_control() || c == '[' || c == ';' || c == 'm');
        let starts =
            l.starts_with("SIP/2.0 ") || (l.ends_with(" SIP/2.0") && l.split(' ').count() == 3);
        if !starts {
            continue;
        }
        let cseq = lines[i + 1..]
            .iter()
            .take(30)
            .find_map(|h| h.strip_prefix("CSeq:").map(|v| v.trim().to_string()))
            .unwrap_or_default();
        let flow = i
            .checked_sub(1)
            .map(|j| lines[j].trim())
            .filter(|p| p.starts_with("UDP ") && p.contains(" -> "));
        match flow {
            Some(f) => out.push((format!("{f}: {l}"), cseq)),
            None => out.push((l.to_string(), cseq)),
        }
    }
    out
}

/// True when the trace holds a message whose first line starts with `first` and whose CSeq
/// method is `method`.
fn traced(log: &str, first: &str, method: &str) -> bool {
    trace_messages(log).iter().any(|(f, c)| {
        let f = f.split_once(": ").map_or(f.as_str(), |(_, m)| m);
        f.starts_with(first) && c.ends_with(method)
    })
}

#[test]
fn baresip_calls_baresip_and_the_callee_hangs_up() {
    let t = "baresip_calls_baresip_and_the_callee_hangs_up";
    if !have(t, &[("baresip", "baresip")]) {
        return;
    }
    let dir = scratch("baresip");
    let (s, _) = server(
        &dir,
        &[
            "--user",
            "alice:secret",
            "--user",
            "bob:secret",
            "--shards",
            "2",
        ],
        false,
    );
    baresip_call(&dir, &s, "127.0.0.1", "127.0.0.1");
}

/// baresip on TCP (alice, its outbound proxy `;transport=tcp`) calls baresip on UDP (bob)
/// through sipshard, and bob hangs up: the dialog crosses transports (double Record-Route),
/// bob's BYE reaches alice over her connection, and both registrations came over their own
/// transport.
#[test]
fn baresip_on_tcp_calls_baresip_on_udp_and_the_callee_hangs_up() {
    let t = "baresip_on_tcp_calls_baresip_on_udp_and_the_callee_hangs_up";
    if !have(t, &[("baresip", "baresip")]) {
        return;
    }
    let dir = scratch("baresip-tcp");
    let (s, _) = server(
        &dir,
        &[
            "--user",
            "alice:secret",
            "--user",
            "bob:secret",
            "--shards",
            "2",
            "--listen",
            "tcp:SAME",
        ],
        true,
    );
    let (alice, bob) =
        baresip_call_over(&dir, &s, ("127.0.0.1", ";transport=tcp"), ("127.0.0.1", ""));
    let alice_log = alice.proc.output();
    assert!(
        alice_log.contains("SIP/2.0/TCP"),
        "alice did not speak TCP\n{}",
        logs(&dir, 100)
    );
    // Bob got the double Record-Route: our UDP side for him, our TCP side for alice.
    let bob_log = bob.proc.output();
    let rr: Vec<&str> = bob_log
        .lines()
        .filter(|l| l.starts_with("Record-Route:"))
        .collect();
    assert!(
        rr.iter()
            .any(|l| l.contains(";transport=tcp") && l.contains(";lr")),
        "no TCP Record-Route value at bob: {rr:?}\n{}",
        logs(&dir, 100)
    );
    // Everything alice sent came over TCP: her REGISTERs, INVITE, ACK, and her 200 to the BYE.
    assert!(s.metric("sipshard_stream_messages_total").unwrap() >= 4.0);
    assert_eq!(s.metric("sipshard_connections_made_total"), Some(0.0));
}

/// The other way round: baresip on UDP calls baresip registered over TCP; the INVITE reaches
/// bob over the connection he registered on (the server opens none) and bob hangs up.
#[test]
fn baresip_on_udp_calls_baresip_on_tcp_over_its_registration_connection() {
    let t = "baresip_on_udp_calls_baresip_on_tcp_over_its_registration_connection";
    if !have(t, &[("baresip", "baresip")]) {
        return;
    }
    let dir = scratch("baresip-tcp-callee");
    let (s, _) = server(
        &dir,
        &[
            "--user",
            "alice:secret",
            "--user",
            "bob:secret",
            "--listen",
            "tcp:SAME",
        ],
        true,
    );
    let (_alice, bob) =
        baresip_call_over(&dir, &s, ("127.0.0.1", ""), ("127.0.0.1", ";transport=tcp"));
    assert!(bob.proc.output().contains("SIP/2.0/TCP"));
    assert_eq!(s.metric("sipshard_connections_made_total"), Some(0.0));
    assert_eq!(s.metric("sipshard_connections_accepted_total"), Some(1.0));
}

/// baresip registers over TLS (a certificate made in the test, its CA given to baresip as
/// `sip_cafile`) and calls baresip on UDP through sipshard; the callee hangs up and the BYE
/// reaches the caller over its TLS connection.
#[test]
fn baresip_on_tls_calls_baresip_on_udp_and_the_callee_hangs_up() {
    let t = "baresip_on_tls_calls_baresip_on_udp_and_the_callee_hangs_up";
    if !have(t, &[("baresip", "baresip")]) {
        return;
    }
    let dir = scratch("baresip-tls");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = format!("tls:{tls_addr}");
    let (s, _) = server(
        &dir,
        &[
            "--user",
            "alice:secret",
            "--user",
            "bob:secret",
            "--listen",
            &listen,
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
        ],
        true,
    );
    let extra = format!("sip_cafile\t\t{}\n", ca_pem.display());
    let (alice, _bob) = baresip_call_sides(
        &dir,
        Side {
            ip: "127.0.0.1",
            params: ";transport=tls",
            proxy: tls_addr,
            config_extra: &extra,
        },
        Side {
            ip: "127.0.0.1",
            params: "",
            proxy: s.addr,
            config_extra: "",
        },
    );
    assert!(
        alice.proc.output().contains("SIP/2.0/TLS"),
        "{}",
        logs(&dir, 100)
    );
    assert!(s.metric("sipshard_stream_messages_total").unwrap() >= 4.0);
    assert_eq!(
        s.metric("sipshard_connection_events_total{reason=\"tls_failed\"}"),
        Some(0.0)
    );
}

/// Topology hiding with stock baresip on its defaults: alice (127.0.0.3) calls bob
/// (127.0.0.4) through a proxy with `security.topology_hiding`; the call connects and bob's
/// BYE reaches alice through the sealed Route and Contact. No SIP header line either one
/// traced names the other's address (SDP and media lines do: media is not hidden).
#[test]
fn baresip_calls_baresip_through_topology_hiding() {
    let t = "baresip_calls_baresip_through_topology_hiding";
    if !have(t, &[("baresip", "baresip")]) {
        return;
    }
    let dir = scratch("baresip-hidden");
    let cfg = dir.join("sipshard.toml");
    std::fs::write(&cfg, "[security]\ntopology_hiding = true\n").unwrap();
    let (s, _) = server(
        &dir,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--user",
            "alice:secret",
            "--user",
            "bob:secret",
            "--shards",
            "2",
        ],
        false,
    );
    let (alice, bob) = baresip_call(&dir, &s, "127.0.0.3", "127.0.0.4");
    let (alice_log, bob_log) = (alice.proc.output(), bob.proc.output());
    // The check finds each one's own address (it is in what each sends).
    assert!(!header_lines_naming(&alice_log, "127.0.0.3").is_empty());
    let leaked = header_lines_naming(&bob_log, "127.0.0.3");
    assert!(leaked.is_empty(), "bob saw alice: {leaked:?}");
    let leaked = header_lines_naming(&alice_log, "127.0.0.4");
    assert!(leaked.is_empty(), "alice saw bob: {leaked:?}");
}

/// The lines of a SIP trace that are an addressing header (Via, Record-Route, Route,
/// Contact, Call-ID, From, To, in full or compact form) containing `ip`.
fn header_lines_naming(log: &str, ip: &str) -> Vec<String> {
    const NAMES: [&str; 12] = [
        "via",
        "v",
        "record-route",
        "route",
        "contact",
        "m",
        "call-id",
        "i",
        "from",
        "f",
        "to",
        "t",
    ];
    log.lines()
        .map(str::trim)
        .filter(|l| {
            let name = l.split(':').next().unwrap_or_default().to_ascii_lowercase();
            NAMES.contains(&name.trim()) && l.contains(ip)
        })
        .map(String::from)
        .collect()
}

/// alice (at `alice_ip`) calls bob (at `bob_ip`), both registered through `s` with the
/// password `secret`; bob answers and hangs up; both see the call end by bob's BYE.
fn baresip_call(dir: &Path, s: &ServerProcess, alice_ip: &str, bob_ip: &str) -> (Baresip, Baresip) {
    baresip_call_over(dir, s, (alice_ip, ""), (bob_ip, ""))
}

/// [`baresip_call`] with each side's outbound proxy parameters (`;transport=tcp`).
fn baresip_call_over(
    dir: &Path,
    s: &ServerProcess,
    alice: (&str, &str),
    bob: (&str, &str),
) -> (Baresip, Baresip) {
    let side = |(ip, params)| Side {
        ip,
        params,
        proxy: s.addr,
        config_extra: "",
    };
    baresip_call_sides(dir, side(alice), side(bob))
}

/// How one side of [`baresip_call_sides`] reaches the server.
struct Side<'a> {
    ip: &'a str,
    /// Outbound proxy URI parameters (`;transport=tcp`, `;transport=tls`).
    params: &'a str,
    /// The server address it uses (the TLS one for TLS).
    proxy: SocketAddr,
    config_extra: &'a str,
}

/// [`baresip_call`] with each side's way to the server.
fn baresip_call_sides(dir: &Path, a: Side<'_>, b: Side<'_>) -> (Baresip, Baresip) {
    fn spec<'s>(name: &'s str, side: &'s Side<'s>) -> BaresipSpec<'s> {
        BaresipSpec {
            name,
            user: name,
            password: "secret",
            ip: side.ip,
            proxy: side.proxy,
            answermode: "manual",
            prefix: &[],
            outbound_params: side.params,
            config_extra: side.config_extra,
        }
    }
    let mut alice = Baresip::start(dir, &spec("alice", &a));
    let mut bob = Baresip::start(dir, &spec("bob", &b));
    alice.wait_registered(dir);
    bob.wait_registered(dir);

    alice.command("dial sip:bob@localhost");
    bob.wait_event(dir, "CALL_INCOMING");
    bob.command("accept");
    alice.wait_event(dir, "CALL_ESTABLISHED");
    bob.wait_event(dir, "CALL_ESTABLISHED");
    std::thread::sleep(Duration::from_millis(500)); // a little media
    bob.command("hangup");
    let closed_bob = bob.wait_event(dir, "CALL_CLOSED");
    let closed_alice = alice.wait_event(dir, "CALL_CLOSED");
    // The caller learnt of the end from the callee's BYE (not a timeout or an error), and the
    // callee's BYE was answered with a 200 that came back through the proxy.
    wait_for(dir, "bob: 200 OK to his BYE", STEP, || {
        traced(&bob.proc.output(), "SIP/2.0 200", "BYE")
    });
    let alice_log = alice.proc.output();
    assert!(
        traced(&alice_log, "BYE ", "BYE"),
        "alice did not receive bob's BYE; alice closed with {closed_alice}, bob with \
         {closed_bob}\n{}",
        logs(dir, 250)
    );
    assert!(
        closed_alice.contains("Connection reset by peer")
            || closed_alice.to_lowercase().contains("bye"),
        "alice's call ended otherwise than by the peer's BYE: {closed_alice}\n{}",
        logs(dir, 250)
    );
    assert!(
        !closed_bob.contains("\"param\":\"4") && !closed_bob.contains("\"param\":\"5"),
        "bob's call ended with an error: {closed_bob}\n{}",
        logs(dir, 250)
    );
    (alice, bob)
}

// ---------------------------------------------------------------------------------------------
// linphonec, driven through its stdin.

struct Linphonec {
    proc: Proc,
    stdin: std::process::ChildStdin,
}

impl Linphonec {
    /// A private config (its own SIP port, no TCP/TLS, no sound card, an account that
    /// registers `user` with `password` through `proxy`, which is also its outbound route) and
    /// HOME.
    fn start(dir: &Path, name: &str, user: &str, password: &str, proxy: SocketAddr) -> Linphonec {
        let home = dir.join(name);
        std::fs::create_dir_all(home.join(".local/share/linphone")).unwrap();
        let sip_port = free_port();
        let rtp_port = free_ports(2); // RTP and RTCP on rtp_port + 1
        let rc = home.join("linphonerc");
        std::fs::write(
            &rc,
            format!(
                "[sip]\nsip_port={sip_port}\nsip_tcp_port=0\nsip_tls_port=0\ndefault_proxy=0\n\
                 [proxy_0]\nreg_proxy=<sip:{proxy}>\nreg_route=<sip:{proxy};lr>\n\
                 reg_identity=sip:{user}@localhost\nreg_expires=3600\nreg_sendregister=1\n\
                 publish=0\n\
                 [auth_info_0]\nusername={user}\npasswd={password}\ndomain=localhost\n\
                 [rtp]\naudio_rtp_port={rtp_port}\n\
                 [sound]\nplayback_dev_id=\ncapture_dev_id=\nringer_dev_id=\n\
                 [video]\nenabled=0\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new("linphonec");
        cmd.arg("-c")
            .arg(&rc)
            .arg("-d")
            .arg("6")
            .arg("-l")
            .arg(dir.join(format!("{name}-debug.log")))
            .env("HOME", &home)
            .stdin(Stdio::piped());
        let mut proc = Proc::spawn(dir, name, &mut cmd);
        let stdin = proc.child.stdin.take().unwrap();
        Linphonec { proc, stdin }
    }

    fn command(&mut self, line: &str) {
        let _ = writeln!(self.stdin, "{line}");
        let _ = self.stdin.flush();
    }

    /// Polls with `status register` until linphonec reports the registration.
    #[track_caller]
    fn wait_registered(&mut self, dir: &Path) {
        let deadline = Instant::now() + STEP;
        loop {
            self.command("status register");
            std::thread::sleep(Duration::from_millis(300));
            if self.proc.output().contains("registered, identity=") {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: never reported `registered, identity=` to `status register`\n{}",
                    self.proc.name,
                    logs(dir, 250)
                );
            }
        }
    }
}

#[test]
fn linphonec_calls_baresip_and_the_callee_hangs_up() {
    let t = "linphonec_calls_baresip_and_the_callee_hangs_up";
    if !have(t, &[("linphonec", "linphone-cli"), ("baresip", "baresip")]) {
        return;
    }
    let dir = scratch("linphonec");
    let (s, _) = server(
        &dir,
        &["--user", "carol:secret", "--user", "dave:secret"],
        false,
    );
    let mut dave = Baresip::start(
        &dir,
        &BaresipSpec {
            name: "dave-baresip",
            user: "dave",
            password: "secret",
            ip: "127.0.0.1",
            proxy: s.addr,
            answermode: "manual",
            prefix: &[],
            outbound_params: "",
            config_extra: "",
        },
    );
    let mut carol = Linphonec::start(&dir, "carol-linphonec", "carol", "secret", s.addr);
    dave.wait_registered(&dir);
    carol.wait_registered(&dir);

    carol.command("call sip:dave@localhost");
    dave.wait_event(&dir, "CALL_INCOMING");
    dave.command("accept");
    dave.wait_event(&dir, "CALL_ESTABLISHED");
    wait_for(
        &dir,
        "carol-linphonec: `Call 1 ... connected.`",
        STEP,
        || {
            carol
                .proc
                .output()
                .lines()
                .any(|l| l.starts_with("Call ") && l.trim_end().ends_with("connected."))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    dave.command("hangup");
    let closed = dave.wait_event(&dir, "CALL_CLOSED");
    wait_for(&dir, "dave-baresip: 200 OK to his BYE", STEP, || {
        traced(&dave.proc.output(), "SIP/2.0 200", "BYE")
    });
    wait_for(&dir, "carol-linphonec: `Call 1 ... ended`", STEP, || {
        carol
            .proc
            .output()
            .lines()
            .any(|l| l.starts_with("Call ") && l.contains(" ended"))
    });
    let carol_out = carol.proc.output();
    let ended = carol_out
        .lines()
        .find(|l| l.starts_with("Call ") && l.contains(" ended"))
        .unwrap();
    // linphonec's debug log holds the SIP messages; carol sent no BYE, so one there came in.
    let carol_sip =
        std::fs::read_to_string(dir.join("carol-linphonec-debug.log")).unwrap_or_default();
    assert!(
        ended.contains("(No error)") && carol_sip.lines().any(|l| l.starts_with("BYE sip:")),
        "the call did not end cleanly by dave's BYE: linphonec `{ended}`, baresip {closed}\n{}",
        logs(&dir, 250)
    );
    carol.command("quit");
}

// ---------------------------------------------------------------------------------------------
// sipsak.

/// Runs sipsak to completion (60 s at most); returns (exit code, output).
fn sipsak(dir: &Path, name: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new("timeout");
    cmd.arg("60").arg("sipsak").args(args).arg("-vv");
    let mut p = Proc::spawn(dir, name, &mut cmd);
    let st = p.wait_exit(Duration::from_secs(70));
    (st.and_then(|s| s.code()), p.output())
}

#[test]
fn sipsak_digest_registration_and_message() {
    let t = "sipsak_digest_registration_and_message";
    if !have(t, &[("sipsak", "sipsak")]) {
        return;
    }
    let dir = scratch("sipsak");
    let (s, _) = server(
        &dir,
        &["--user", "erin:secret", "--user", "frank:secret"],
        false,
    );
    let proxy = s.addr.to_string();

    // -U: REGISTER, 401, REGISTER with credentials, 200. sipsak's default Expires (15 s) is below
    // the registrar's Min-Expires (60 s) and sipsak does not retry on 423, hence -x.
    // -u: without it sipsak 0.9.8 answers the challenge as user "erin@".
    let register_erin = |log: &str, extra: &[&str]| {
        let mut args = vec![
            "-U",
            "-s",
            "sip:erin@localhost",
            "-p",
            &proxy,
            "-u",
            "erin",
            "-a",
            "secret",
            "-x",
            "600",
            "-H",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        sipsak(&dir, log, &args)
    };
    let l1 = free_port().to_string();
    let (code, out) = register_erin("sipsak-register", &["-l", &l1]);
    assert!(
        code == Some(0) && out.contains("completed successful"),
        "sipsak -U (digest registration) exited with {code:?}\n{}",
        logs(&dir, 250)
    );

    // MESSAGE from frank to erin's phone (a socket here), frank authenticating to the proxy.
    // sipsak 0.9.8.1's own -M mode crashes (sprintf into a NULL buffer in create_msg) before
    // sending anything, so the MESSAGE is sent with -f, sipsak answering the 407 itself (-a).
    // The phone's binding is registered by sipsak for it (-C). sipsak sends from another port
    // than its Via names, but the Contact is not that Via's sent-by: a third-party
    // registration, reached at its Contact (not NAT, see sipshard::nat::behind_nat).
    let phone = Client::new();
    let contact = format!("sip:erin@{}", phone.addr);
    let (code, out) = register_erin("sipsak-register-phone", &["-C", &contact]);
    assert!(
        code == Some(0) && out.contains("completed successful"),
        "sipsak -U -C (erin's phone) exited with {code:?}\n{}",
        logs(&dir, 250)
    );
    let l2 = free_port();
    let msg = format!(
        "MESSAGE sip:erin@localhost SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{l2};branch=z9hG4bK-{b};rport\r\n\
         From: <sip:frank@localhost>;tag=f1\r\n\
         To: <sip:erin@localhost>\r\n\
         Call-ID: {b}@127.0.0.1\r\n\
         CSeq: 1 MESSAGE\r\n\
         Max-Forwards: 70\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: 11\r\n\r\nhello erin!",
        b = unique("sipsak")
    );
    let file = dir.join("message.txt");
    std::fs::write(&file, msg).unwrap();
    // The phone answers 200 to what it receives, from a thread, until the MESSAGE came.
    let got = Arc::new(Mutex::new(Vec::<String>::new()));
    let phone_sock = phone.sock.try_clone().unwrap();
    let seen = got.clone();
    std::thread::spawn(move || {
        let c = Client {
            sock: phone_sock,
            addr: phone.addr,
            last_src: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Some(m) = c.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let text = String::from_utf8_lossy(&m).into_owned();
            seen.lock().unwrap().push(text.clone());
            if !text.starts_with("MESSAGE ") {
                continue;
            }
            let resp = uas_answer(&m, "200 OK", "phone");
            let via = header_value(&m, "Via").unwrap_or_default();
            // Reply to the top Via's sent-by (the proxy), as a UAS does.
            let hostport = via
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .split(';')
                .next();
            if let Some(to) = hostport.and_then(|h| h.parse::<SocketAddr>().ok()) {
                c.send(&resp, to);
            }
        }
    });
    let (code, _) = sipsak(
        &dir,
        "sipsak-message",
        &[
            "-f",
            file.to_str().unwrap(),
            "-s",
            "sip:erin@localhost",
            "-p",
            &proxy,
            "-u",
            "frank",
            "-a",
            "secret",
            "-l",
            &l2.to_string(),
            "-i",
        ],
    );
    let received = got.lock().unwrap().clone();
    assert!(
        received
            .iter()
            .any(|m| m.starts_with("MESSAGE ") && m.ends_with("hello erin!")),
        "erin's phone ({}) did not receive frank's MESSAGE; it received: {received:#?}\n{}",
        phone.addr,
        logs(&dir, 250)
    );
    assert_eq!(
        code,
        Some(0),
        "sipsak -f MESSAGE did not end with the 200\n{}",
        logs(&dir, 250)
    );
}

// ---------------------------------------------------------------------------------------------
// SIPp with its stock [authentication].

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp-scenarios")
        .join(name)
}

/// Runs a SIPp client scenario to completion; returns (exit code, successful, failed) from its
/// final statistics (`-trace_stat`) and leaves its screen and errors in `<name>*.log`.
fn sipp_run(dir: &Path, name: &str, server: SocketAddr, args: &[&str]) -> (Option<i32>, u64, u64) {
    let stat = dir.join(format!("{name}-stat.csv"));
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg("sipp")
        .arg(server.to_string())
        .args(args)
        .args(["-nostdin", "-trace_stat", "-stf"])
        .arg(&stat)
        .args(["-trace_err", "-error_file"])
        .arg(dir.join(format!("{name}-errors.log")))
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join(format!("{name}-messages.log")))
        .args(["-timeout", "30s", "-timeout_error"])
        .current_dir(dir);
    if !args.contains(&"-p") {
        // Not SIPp's default 5060, which anything else on the machine may use.
        cmd.arg("-p").arg(free_port().to_string());
    }
    let mut p = Proc::spawn(dir, name, &mut cmd);
    let code = p.wait_exit(Duration::from_secs(70)).and_then(|s| s.code());
    let (ok, failed) = sipp_stats(&stat);
    (code, ok, failed)
}

/// (SuccessfulCall(C), FailedCall(C)) of the last line of a SIPp statistics file.
fn sipp_stats(stat: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let (Some(h), Some(last)) = (lines.next(), lines.next_back()) else {
        return (0, u64::MAX);
    };
    let header: Vec<&str> = h.split(';').collect();
    let last: Vec<&str> = last.split(';').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    (col("SuccessfulCall(C)"), col("FailedCall(C)"))
}

#[test]
fn sipp_digest_registration_and_digest_call_to_a_record_route_uas() {
    let t = "sipp_digest_registration_and_digest_call_to_a_record_route_uas";
    if !have(t, &[("sipp", "sip-tester")]) {
        return;
    }
    let dir = scratch("sipp");
    let (s, _) = server(
        &dir,
        &["--user", "grace:secret", "--user", "heidi:secret"],
        true,
    );
    // The callee registers with digest from the port its UAS will listen on.
    let uas_port = free_port().to_string();
    let csv = dir.join("callee.csv");
    std::fs::write(&csv, "SEQUENTIAL\nheidi;secret\n").unwrap();
    let reg = scenario("register-digest.xml");
    let (code, ok, failed) = sipp_run(
        &dir,
        "sipp-register",
        s.addr,
        &[
            "-sf",
            reg.to_str().unwrap(),
            "-inf",
            csv.to_str().unwrap(),
            "-au",
            "heidi",
            "-ap",
            "secret",
            "-p",
            &uas_port,
            "-m",
            "1",
        ],
    );
    assert!(
        code == Some(0) && (ok, failed) == (1, 0),
        "SIPp digest REGISTER: exit {code:?}, successful {ok}, failed {failed}\n{}",
        logs(&dir, 250)
    );

    // The UAS (one call), then the caller.
    let uas_sf = scenario("uas-record-route.xml");
    let uas_stat = dir.join("sipp-uas-stat.csv");
    let mut uas_cmd = Command::new("sipp");
    uas_cmd
        .args(["-sf", uas_sf.to_str().unwrap(), "-p", &uas_port, "-m", "1"])
        .args(["-nostdin", "-trace_stat", "-stf"])
        .arg(&uas_stat)
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("sipp-uas-errors.log"))
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join("sipp-uas-messages.log"))
        .args(["-timeout", "30s", "-timeout_error"])
        .current_dir(&dir);
    let mut uas = Proc::spawn(&dir, "sipp-uas", &mut uas_cmd);
    std::thread::sleep(Duration::from_millis(500));
    let uac_sf = scenario("uac-digest.xml");
    let (code, ok, failed) = sipp_run(
        &dir,
        "sipp-uac",
        s.addr,
        &[
            "-sf",
            uac_sf.to_str().unwrap(),
            "-s",
            "heidi",
            "-key",
            "caller",
            "grace",
            "-au",
            "grace",
            "-ap",
            "secret",
            "-m",
            "1",
        ],
    );
    let uas_code = uas.wait_exit(STEP).and_then(|s| s.code());
    let (uas_ok, uas_failed) = sipp_stats(&uas_stat);
    assert!(
        code == Some(0) && (ok, failed) == (1, 0),
        "SIPp digest call (UAC): exit {code:?}, successful {ok}, failed {failed}\n{}",
        logs(&dir, 250)
    );
    assert!(
        uas_code == Some(0) && (uas_ok, uas_failed) == (1, 0),
        "SIPp UAS (Record-Route required, ACK/BYE must come through the proxy): exit \
         {uas_code:?}, successful {uas_ok}, failed {uas_failed}\n{}",
        logs(&dir, 250)
    );
    // Both INVITEs (the challenged one and the retry), the ACKs and the BYE reached the proxy;
    // one INVITE, the 2xx ACK and the BYE were forwarded.
    for (series, want) in [
        ("sipshard_requests_received_total{method=\"INVITE\"}", 2.0),
        ("sipshard_requests_received_total{method=\"BYE\"}", 1.0),
        ("sipshard_requests_sent_total{method=\"INVITE\"}", 1.0),
        ("sipshard_requests_sent_total{method=\"ACK\"}", 1.0),
        ("sipshard_requests_sent_total{method=\"BYE\"}", 1.0),
    ] {
        assert_eq!(
            s.metric(series),
            Some(want),
            "{series}\n{}",
            logs(&dir, 250)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A phone behind a real NAT.

/// Runs `f` on a thread of its own inside a fresh network namespace (loopback only, until
/// nat.sh adds the veth). Every process the thread starts inherits the namespace; it disappears
/// with the last of them, so the host's network is never touched and nothing needs deleting.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let h = std::thread::spawn(move || {
        // Namespaces are per thread: this leaves the rest of the test process where it was.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        f()
    });
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn nat_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/nat.sh")
}

/// `nat.sh show`: the phone side's nft counters, addresses and routes, for failure messages.
fn nat_state(phone_ns: u32) -> String {
    Command::new("sh")
        .arg(nat_script())
        .args(["show", &phone_ns.to_string()])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_else(|e| format!("nat.sh show: {e}"))
}

#[test]
fn nat_phone_registers_and_answers_a_call() {
    let t = "nat_phone_registers_and_answers_a_call";
    if !have(
        t,
        &[
            ("baresip", "baresip"),
            ("nft", "nftables"),
            ("ip", "iproute2"),
            ("nsenter", "util-linux"),
            ("unshare", "util-linux"),
        ],
    ) || !root(t)
    {
        return;
    }
    let dir = scratch("nat");
    in_new_netns(move || nat_scenario(&dir));
}

fn nat_scenario(dir: &Path) {
    // The phone's namespace: a process that unshares and then waits to be killed.
    let ready = dir.join("phone-ns.ready");
    let mut holder = Command::new("unshare");
    holder
        .args(["-n", "sh", "-c"])
        .arg(format!("touch '{}' && exec sleep 600", ready.display()));
    let holder = Proc::spawn(dir, "phone-ns", &mut holder);
    wait_for(dir, "the phone's namespace (unshare -n)", STEP, || {
        ready.exists()
    });
    let ns = holder.pid();
    let setup = Command::new("sh")
        .arg(nat_script())
        .args(["setup", &ns.to_string()])
        .output()
        .expect("run nat.sh");
    assert!(
        setup.status.success(),
        "nat.sh setup failed: {}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );

    let (s, _) = server(
        dir,
        &["--user", "nathan:secret", "--user", "oscar:secret"],
        false,
    );
    let prefix = vec!["nsenter".to_string(), format!("--net=/proc/{ns}/ns/net")];
    let phone = Baresip::start(
        dir,
        &BaresipSpec {
            name: "phone-behind-nat",
            user: "nathan",
            password: "secret",
            ip: "192.168.77.2",
            proxy: s.addr,
            answermode: "auto",
            prefix: &prefix,
            outbound_params: "",
            config_extra: "",
        },
    );
    let mut caller = Baresip::start(
        dir,
        &BaresipSpec {
            name: "caller-outside",
            user: "oscar",
            password: "secret",
            ip: "127.0.0.1",
            proxy: s.addr,
            answermode: "manual",
            prefix: &[],
            outbound_params: "",
            config_extra: "",
        },
    );
    // Registered through the NAT: the server saw 10.201.0.2 and a random port, the Contact
    // says 192.168.77.2.
    phone.wait_registered(dir);
    caller.wait_registered(dir);
    let phone_log = phone.proc.output();
    let seen_from = phone_log
        .lines()
        .rfind(|l| l.starts_with("Via:") && l.contains("received="))
        .unwrap_or("(no Via with received= in the phone's trace)")
        .to_string();

    caller.command("dial sip:nathan@localhost");
    let failure = |what: &str| -> String {
        let state = nat_state(ns);
        // What the NAT dropped, by the rule that counted it.
        let dropped: Vec<String> = state
            .lines()
            .filter(|l| l.contains(" drop comment "))
            .filter_map(|l| {
                let packets = l.split("packets ").nth(1)?.split(' ').next()?;
                let why = l.split("comment ").nth(1)?.trim_matches('"');
                (packets != "0").then(|| format!("{packets} packet(s): {why}"))
            })
            .collect();
        format!(
            "{what}\nThe phone registered through the NAT (its REGISTER's 200 had {seen_from}; \
             its Contact names 192.168.77.2, a private address nothing outside can reach).\n\
             The NAT dropped: {dropped:?}\n\
             SIP messages in the phone's trace (sent and received): {:#?}\n{state}\n{}",
            trace_messages(&phone.proc.output()),
            logs(dir, 250)
        )
    };
    let deadline = Instant::now() + STEP;
    while !traced(&phone.proc.output(), "INVITE ", "INVITE") {
        if Instant::now() > deadline {
            panic!(
                "{}",
                failure(
                    "the INVITE for sip:nathan@localhost never reached the phone behind the NAT \
                     (it must go to the address and port the REGISTER came from, from the port \
                     it was sent to)"
                )
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let established = Instant::now() + STEP;
    while caller.events("CALL_ESTABLISHED").is_empty() {
        if Instant::now() > established {
            panic!(
                "{}",
                failure(
                    "the phone received the INVITE and answered (auto), but the caller's call \
                     was never established (the phone's 200 did not reach the caller)"
                )
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ack = Instant::now() + STEP;
    while !traced(&phone.proc.output(), "ACK ", "ACK") {
        if Instant::now() > ack {
            panic!(
                "{}",
                failure(
                    "the call was established but the ACK never reached the phone behind the NAT"
                )
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    caller.command("hangup");
    let bye = Instant::now() + STEP;
    while !traced(&phone.proc.output(), "BYE ", "BYE") {
        if Instant::now() > bye {
            panic!(
                "{}",
                failure("the caller hung up but its BYE never reached the phone behind the NAT")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed = caller.wait_event(dir, "CALL_CLOSED");
    wait_for(dir, "caller: the phone's 200 OK to the BYE", STEP, || {
        traced(&caller.proc.output(), "SIP/2.0 200", "BYE")
    });
    assert!(
        closed.contains("Connection reset by user") || !closed.contains("\"param\":\""),
        "the caller's call ended otherwise than by its hangup: {closed}\n{}",
        logs(dir, 250)
    );
}
