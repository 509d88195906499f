//! The whole protocol core under hostile input (issue 17): two shards of `Core` with digest
//! users, a dial plan (trunk, emergency number), edge security and a small transaction cap,
//! driven by a sequence of operations decoded from the input: datagrams from six sources
//! (raw bytes: mutations of real REGISTER/INVITE/CANCEL/ACK/BYE exchanges come from the seed
//! corpus, `fuzz/seed.sh core`), replays of what the core sent (forged requests, loops),
//! forged responses to the requests it sent, and time jumps with timers (up to 65 s each).
//! Inputs of odd length run with topology hiding on.
//! A datagram the receiving shard hands off goes to its owner, as the runtime does.
//!
//! Checked: no panic; no call to the core takes more than 100 ms of CPU (a stall); and after the
//! sequence, two quiet hours of timers leave no transaction, response context, binding or
//! tracked source behind (state that grows without bound would stay).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipshard::auth::{Authenticator, UserDb};
use sipshard::proxy::settings::{Mode, OverloadSettings};
use sipshard::server::outbox::Outbox;
use sipshard::server::{Core, CoreConfig, Disposition};
use sipshard::stats::ShardStats;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const LISTEN: &str = "127.0.0.1:5060";
const SOURCES: [&str; 6] = [
    "127.0.0.1:5070",
    "127.0.0.3:5060",
    "192.0.2.10:5060",
    "192.0.2.20:5062",
    "10.0.0.7:40000",
    "127.0.0.1:5071",
];
const PLAN: &str = r#"
[[trunk]]
name = "far"
address = "127.0.0.1:5071"
check_interval_ms = 0

[[route]]
prefix = "+49"
trunks = ["far"]

[emergency]
numbers = ["112"]
trunks = ["far"]
"#;
const T0: u64 = 1_800_000_000_000;
/// CPU time (of this thread: a fuzzer sharing the machine is not stalled by being descheduled)
/// one call to the core may take.
const STALL: Duration = Duration::from_millis(100);

/// This thread's CPU time.
fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The configuration; with `hiding`, topology hiding on (half the inputs: those of odd
/// length, so every corpus entry keeps its meaning and mutations reach both).
fn config(hiding: bool) -> Arc<CoreConfig> {
    static CFG: [OnceLock<Arc<CoreConfig>>; 2] = [OnceLock::new(), OnceLock::new()];
    CFG[hiding as usize].get_or_init(|| {
        let spec: sipshard::routing::DialPlanSpec = toml::from_str(PLAN).unwrap();
        let security = sipshard::security::SecuritySettings {
            calls: sipshard::security::calls::CallLimits {
                max_concurrent: 3,
                max_per_minute: 20,
                ..Default::default()
            },
            require_srtp: false,
            ..Default::default()
        };
        Arc::new(CoreConfig {
            domains: vec!["localhost".into()],
            local_addrs: vec![LISTEN.parse().unwrap()],
            shards: 2,
            mode: Mode::Proxy,
            registrar: Default::default(),
            proxy: sipshard::proxy::settings::ProxySettings {
                topology: hiding.then(|| {
                    Arc::new(sipshard::proxy::topology::Hider::new(b"the fuzzer's key"))
                }),
                ..Default::default()
            },
            routing: Arc::new(sipshard::routing::DialPlan::build(&spec).unwrap()),
            responder: Default::default(),
            security: Arc::new(security),
            overload: OverloadSettings {
                max_transactions: 64,
                ..Default::default()
            },
        })
    })
    .clone()
}

fn cores(hiding: bool) -> Vec<Core> {
    let mut db = UserDb::new("localhost");
    db.add_password("alice", "secret").unwrap();
    db.add_password("bob", "pw").unwrap();
    let auth = Authenticator::new("localhost", Arc::new(db), [7; 32], 300);
    let board = Arc::new(sipshard::security::board::Board::default());
    let security = config(hiding).security.clone();
    (0..2)
        .map(|i| {
            let a = auth.for_shard(i).with_lockout(&security, board.clone());
            let mut c = Core::new(
                i,
                config(hiding),
                Arc::new(ShardStats::default()),
                Some(a),
                &[LISTEN.parse().unwrap()],
            );
            c.share_board(board.clone());
            c
        })
        .collect()
}

struct Driver {
    cores: Vec<Core>,
    now: u64,
    /// The last datagrams the core sent, with their destinations.
    sent: Vec<(SocketAddr, Vec<u8>)>,
}

impl Driver {
    fn deliver(&mut self, data: &[u8], src: SocketAddr) {
        let first = (src.port() as usize) % 2;
        let mut out = Outbox::new();
        let t = cpu_now();
        let d = self.cores[first].handle(data, src, 0, self.now, false, &mut out);
        if let Disposition::HandOff(owner) = d {
            assert!(owner < 2 && owner != first, "hand-off to {owner} from {first}");
            let d2 = self.cores[owner].handle(data, src, 0, self.now, true, &mut out);
            assert_eq!(d2, Disposition::Done, "a handed-off datagram is handed off again");
        }
        let took = cpu_now() - t;
        assert!(took < STALL, "handle took {took:?} of CPU");
        self.keep(&out);
    }

    fn timers(&mut self) {
        let mut out = Outbox::new();
        for c in &mut self.cores {
            let t = cpu_now();
            if c.next_timeout().is_some_and(|n| n <= self.now) {
                c.handle_timeout(self.now, &mut out);
            }
            let took = cpu_now() - t;
            assert!(took < STALL, "timers took {took:?} of CPU");
        }
        self.keep(&out);
    }

    fn keep(&mut self, out: &Outbox) {
        for d in out.items() {
            if self.sent.len() == 16 {
                self.sent.remove(0);
            }
            self.sent.push((d.dst, out.bytes(d).to_vec()));
        }
    }
}

/// A response to `req` (a request the core sent) with `status`, as its destination would
/// answer: the request's Via, From, To (with a tag), Call-ID and CSeq lines.
fn forge_response(req: &[u8], status: u16, tag: u8) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(req).ok()?;
    if text.starts_with("SIP/") {
        return None;
    }
    let mut out = format!("SIP/2.0 {status} Forged\r\n");
    for line in text.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("via:")
            || lower.starts_with("from:")
            || lower.starts_with("call-id:")
            || lower.starts_with("cseq:")
            || lower.starts_with("record-route:")
        {
            out.push_str(line);
            out.push_str("\r\n");
        } else if lower.starts_with("to:") {
            out.push_str(line);
            if !lower.contains(";tag=") && status > 100 {
                out.push_str(&format!(";tag=f{tag}"));
            }
            out.push_str("\r\n");
        }
    }
    if status >= 200 && status < 300 {
        out.push_str("Contact: <sip:callee@192.0.2.20:5062>\r\n");
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

const STATUSES: [u16; 10] = [100, 180, 183, 200, 202, 401, 407, 486, 503, 603];

fuzz_target!(|data: &[u8]| {
    let mut d = Driver {
        cores: cores(data.len() % 2 == 1),
        now: T0,
        sent: Vec::new(),
    };
    let mut i = 0;
    while i + 4 <= data.len() {
        let (op, who, dt) = (
            data[i],
            data[i + 1],
            u16::from_le_bytes([data[i + 2], data[i + 3]]),
        );
        i += 4;
        let src: SocketAddr = SOURCES[who as usize % SOURCES.len()].parse().unwrap();
        match op % 8 {
            0..=3 => {
                // A datagram: the next `dt % 1500` bytes.
                let n = (dt as usize % 1500).min(data.len() - i);
                let bytes = data[i..i + n].to_vec();
                i += n;
                d.deliver(&bytes, src);
            }
            4 => {
                // Replay something the core sent, from anywhere, with one byte changed.
                if let Some((_, b)) = d.sent.get(dt as usize % d.sent.len().max(1)).cloned() {
                    let mut b = b;
                    if !b.is_empty() && who & 1 == 1 {
                        let at = dt as usize % b.len();
                        b[at] = b[at].wrapping_add(op);
                    }
                    d.deliver(&b, src);
                }
            }
            5 => {
                // Answer a request the core sent, from where it went.
                if let Some((dst, req)) = d.sent.get(who as usize % d.sent.len().max(1)).cloned() {
                    let status = STATUSES[dt as usize % STATUSES.len()];
                    if let Some(resp) = forge_response(&req, status, op) {
                        d.deliver(&resp, dst);
                    }
                }
            }
            6 => {
                d.now += u64::from(dt);
                d.timers();
            }
            _ => {
                d.now += u64::from(dt) * 1000 / 64;
                d.timers();
            }
        }
    }
    // Two quiet hours, in steps of the longest timers: everything transient has ended.
    for _ in 0..250 {
        d.now += 30_000;
        d.timers();
    }
    for (n, c) in d.cores.iter().enumerate() {
        assert_eq!(c.proxy().state_len(), (0, 0, 0), "shard {n}: proxy state left");
        assert_eq!(c.registrar().binding_count(), 0, "shard {n}: bindings left");
    }
});
