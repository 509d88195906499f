//! Real SIP clients against the real `sipshard` binary on its default settings (plus users):
//! baresip, linphonec, sipsak and SIPp, and a baresip phone behind a real NAT (network
//! namespaces and nftables masquerade, see tests/interop/nat.sh).
//!
//! A missing program skips its test with a message, unless SIPSHARD_REQUIRE_INTEROP=1 (CI sets
//! it), which turns the skip into a failure. The NAT test also needs root. Every process a test
//! starts is killed by PID when the test ends, pass or fail; the namespaces disappear with their
//! last process. On failure the message carries the clients' logs.

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

fn required() -> bool {
    std::env::var("SIPSHARD_REQUIRE_INTEROP").as_deref() == Ok("1")
}

/// True when every program is on PATH; otherwise skips (or fails when required).
fn have(test: &str, programs: &[(&str, &str)]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (prog, package) in programs {
        let found = std::env::split_paths(&path).any(|d| d.join(prog).is_file());
        if !found {
            if required() {
                panic!(
                    "{test}: `{prog}` is not installed and SIPSHARD_REQUIRE_INTEROP=1 \
                     (apt-get install {package})"
                );
            }
            eprintln!("skipping {test}: `{prog}` not installed (apt-get install {package})");
            return false;
        }
    }
    true
}

/// True when running as root (the NAT test needs it); otherwise skips (or fails when required).
fn root(test: &str) -> bool {
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        if required() {
            panic!("{test}: needs root (network namespaces) and SIPSHARD_REQUIRE_INTEROP=1");
        }
        eprintln!("skipping {test}: needs root (network namespaces, nftables)");
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
    ctrl: TcpStream,
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
}

impl Baresip {
    /// Writes a minimal headless config (no sound card: a sine as microphone, a wav file as
    /// speaker) and account, starts baresip with SIP tracing on and connects to ctrl_tcp.
    /// Returns without a ctrl connection when `prefix` puts it in another namespace.
    fn start(dir: &Path, spec: &BaresipSpec) -> Baresip {
        let home = dir.join(spec.name);
        std::fs::create_dir_all(&home).unwrap();
        let sip_port = free_port();
        let _tls = free_port(); // baresip also binds sip_port + 1 (TLS)
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
             ctrl_tcp_listen\t\t{ctrl_ip}:{ctrl_port}\n",
            ip = spec.ip,
            home = home.display(),
            ctrl_ip = spec.ip,
        );
        std::fs::write(home.join("config"), config).unwrap();
        let aor = format!("sip:{}@localhost", spec.user);
        std::fs::write(
            home.join("accounts"),
            format!(
                "<{aor}>;auth_pass={pw};outbound=\"sip:{proxy}\";answermode={am};regint=3600\n",
                pw = spec.password,
                proxy = spec.proxy,
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
        let ctrl = if spec.prefix.is_empty() {
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
        } else {
            // Not reachable from here: a dummy connection to nothing is never used.
            TcpStream::connect(common_listener()).unwrap()
        };
        let reader = ctrl.try_clone().unwrap();
        let sink = events.clone();
        std::thread::spawn(move || read_netstrings(reader, sink));
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
        let _ = self
            .ctrl
            .write_all(format!("{}:{json},", json.len()).as_bytes());
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
                line.trim(),
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

/// A listener whose only purpose is to give Baresip a TcpStream when ctrl_tcp is out of reach.
fn common_listener() -> SocketAddr {
    use std::sync::OnceLock;
    static L: OnceLock<std::net::TcpListener> = OnceLock::new();
    L.get_or_init(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .local_addr()
        .unwrap()
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
/// message's first line and its CSeq, in order.
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
        out.push((l.to_string(), cseq));
    }
    out
}

/// True when the trace holds a message whose first line starts with `first` and whose CSeq
/// method is `method`.
fn traced(log: &str, first: &str, method: &str) -> bool {
    trace_messages(log)
        .iter()
        .any(|(f, c)| f.starts_with(first) && c.ends_with(method))
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
    let spec = |name, user| BaresipSpec {
        name,
        user,
        password: "secret",
        ip: "127.0.0.1",
        proxy: s.addr,
        answermode: "manual",
        prefix: &[],
    };
    let mut alice = Baresip::start(&dir, &spec("alice", "alice"));
    let mut bob = Baresip::start(&dir, &spec("bob", "bob"));
    alice.wait_registered(&dir);
    bob.wait_registered(&dir);

    alice.command("dial sip:bob@localhost");
    bob.wait_event(&dir, "CALL_INCOMING");
    bob.command("accept");
    alice.wait_event(&dir, "CALL_ESTABLISHED");
    bob.wait_event(&dir, "CALL_ESTABLISHED");
    std::thread::sleep(Duration::from_millis(500)); // a little media
    bob.command("hangup");
    let closed_bob = bob.wait_event(&dir, "CALL_CLOSED");
    let closed_alice = alice.wait_event(&dir, "CALL_CLOSED");
    // The caller learnt of the end from the callee's BYE (not a timeout or an error), and the
    // callee's BYE was answered with a 200 that came back through the proxy.
    wait_for(&dir, "bob: 200 OK to his BYE", STEP, || {
        traced(&bob.proc.output(), "SIP/2.0 200", "BYE")
    });
    let alice_log = alice.proc.output();
    assert!(
        traced(&alice_log, "BYE ", "BYE"),
        "alice did not receive bob's BYE; alice closed with {closed_alice}, bob with \
         {closed_bob}\n{}",
        logs(&dir, 250)
    );
    assert!(
        closed_alice.contains("Connection reset by peer")
            || closed_alice.to_lowercase().contains("bye"),
        "alice's call ended otherwise than by the peer's BYE: {closed_alice}\n{}",
        logs(&dir, 250)
    );
    assert!(
        !closed_bob.contains("\"param\":\"4") && !closed_bob.contains("\"param\":\"5"),
        "bob's call ended with an error: {closed_bob}\n{}",
        logs(&dir, 250)
    );
}
