//! `sipshard load`: the command line, and the generator's shell — one thread per `--threads`
//! running an [`Engine`] over its own UDP sockets with the engine's batched transport
//! (recvmmsg/sendmmsg, epoll), on the clock. Calls start on schedule whatever the target does
//! (open loop: a slow target shows up as latency and timeouts, never as a lower offered rate).
//! Prints a progress line per second on a terminal and a summary (or `--json`) at the end.

use super::engine::Engine;
use super::report::LoadReport;
use super::spec::{LoadSpec, Scenario, Step};
use super::stamped::StampedReceiver;
use crate::server::outbox::Outbox;
use crate::stats::Counter;
use crate::transport::mmsg::MmsgTransport;
use crate::transport::{udp_socket, ShardSockets, Transport, Waker};
use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `sipshard load SCENARIO TARGET [options]`.
#[derive(Parser, Debug)]
#[command(
    name = "sipshard load",
    about = "Generate SIP load: options, register, register-digest, call or call-cancel at a fixed \
             rate (open loop) against TARGET (IP[:PORT], default port 5060)"
)]
pub struct LoadCli {
    /// options | register | register-digest | call | call-cancel
    pub scenario: String,
    /// The server: IP[:PORT] or NAME[:PORT].
    pub target: String,
    /// New calls (transactions for options/register) per second.
    #[arg(long, default_value = "100")]
    pub rate: f64,
    /// Stop after this many calls.
    #[arg(long)]
    pub total: Option<u64>,
    /// Stop starting calls after this many seconds (default 10 without --total or --ramp).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Ramp instead of a fixed rate: rates separated by commas, each held --step-s seconds.
    #[arg(long, value_name = "R1,R2,...")]
    pub ramp: Option<String>,
    /// Seconds per ramp step.
    #[arg(long, default_value = "10")]
    pub step_s: f64,
    /// Generator threads (each with its own sockets).
    #[arg(long, default_value = "1")]
    pub threads: usize,
    /// UDP sockets (source ports) per thread.
    #[arg(long, default_value = "8")]
    pub sockets: usize,
    /// Call: ms between the ACK and the BYE.
    #[arg(long, default_value = "0")]
    pub pause_ms: u64,
    /// A transaction without a final response after this many ms has timed out (RFC 3261:
    /// 32000).
    #[arg(long, default_value = "32000")]
    pub timeout_ms: u64,
    /// Distinct AORs (register) or callers (call), numbered 0..N.
    #[arg(long, default_value = "1000")]
    pub aors: u64,
    /// AOR user pattern: `{n:04}` is replaced by the AOR number zero-padded to 4 digits
    /// (`{n:0W}`: W digits; without `:0W`, no padding).
    #[arg(long, default_value = "user{n:04}")]
    pub user: String,
    /// Password pattern (same placeholders); challenges (401/407) are answered with it.
    #[arg(long)]
    pub password: Option<String>,
    /// The host of Request-URI, From and To (default: the target's IP, with its port unless
    /// 5060).
    #[arg(long)]
    pub domain: Option<String>,
    /// The user called by INVITE and OPTIONS.
    #[arg(long, default_value = "service")]
    pub callee: String,
    /// REGISTER Expires.
    #[arg(long, default_value = "3600")]
    pub expires: u32,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// µs between a generator thread's wake-ups: calls due within a tick start together and
    /// what arrived is read in batches (latency comes from the kernel's receive timestamps).
    #[arg(long, default_value = "1000")]
    pub tick_us: u64,
}

/// Builds the run's spec from the command line; errors name the option.
pub fn spec_from(cli: &LoadCli) -> Result<LoadSpec, String> {
    let scenario = Scenario::parse(&cli.scenario).ok_or_else(|| {
        format!(
            "scenario '{}': expected options, register, register-digest, call or call-cancel",
            cli.scenario
        )
    })?;
    let target = resolve(&cli.target)?;
    if !(cli.rate > 0.0 && cli.rate.is_finite()) {
        return Err(format!("--rate {}: expected a positive number", cli.rate));
    }
    let mut spec = LoadSpec::new(scenario, target, cli.rate);
    if let Some(r) = &cli.ramp {
        if cli.step_s.is_nan() || cli.step_s <= 0.0 {
            return Err(format!(
                "--step-s {}: expected a positive number",
                cli.step_s
            ));
        }
        spec.steps = r
            .split(',')
            .map(|x| match x.trim().parse::<f64>() {
                Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(Step {
                    rate,
                    duration_ms: (cli.step_s * 1000.0) as u64,
                }),
                _ => Err(format!("--ramp '{r}': '{x}' is not a positive rate")),
            })
            .collect::<Result<_, _>>()?;
    } else if let Some(d) = cli.duration.or(cli.total.is_none().then_some(10.0)) {
        if !(d > 0.0 && d.is_finite()) {
            return Err(format!(
                "--duration {d}: expected a positive number of seconds"
            ));
        }
        spec.steps[0].duration_ms = (d * 1000.0) as u64;
    }
    spec.total = cli.total;
    if cli.total == Some(0) {
        return Err("--total 0: expected at least 1".into());
    }
    if cli.threads == 0 || cli.threads > 256 {
        return Err(format!("--threads {}: expected 1 to 256", cli.threads));
    }
    if cli.sockets == 0 || cli.sockets > 64 {
        return Err(format!("--sockets {}: expected 1 to 64", cli.sockets));
    }
    if cli.aors == 0 {
        return Err("--aors 0: expected at least 1".into());
    }
    if cli.timeout_ms < 100 {
        return Err(format!(
            "--timeout-ms {}: expected at least 100",
            cli.timeout_ms
        ));
    }
    if scenario == Scenario::RegisterDigest && cli.password.is_none() {
        return Err("register-digest needs --password (a pattern such as 'pw{n:04}x')".into());
    }
    if cli.tick_us == 0 || cli.tick_us > 100_000 {
        return Err(format!("--tick-us {}: expected 1 to 100000", cli.tick_us));
    }
    spec.tick_us = cli.tick_us;
    spec.threads = cli.threads;
    spec.sockets = cli.sockets;
    spec.pause_ms = cli.pause_ms;
    spec.timeout_ms = cli.timeout_ms;
    spec.aors = cli.aors;
    spec.user_pattern = cli.user.clone();
    spec.password_pattern = cli.password.clone();
    spec.callee = cli.callee.clone();
    spec.expires = cli.expires;
    if let Some(d) = &cli.domain {
        spec.domain = d.clone();
    }
    Ok(spec)
}

fn resolve(target: &str) -> Result<SocketAddr, String> {
    let with_port = if target.parse::<SocketAddr>().is_ok()
        || target
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
    {
        target.to_string()
    } else {
        format!("{target}:5060")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("target '{target}': expected IP[:PORT] or NAME[:PORT]"))
}

/// Live counters of one thread for the progress line (single writer).
#[derive(Default)]
struct Live {
    started: Counter,
    completed: Counter,
    failed: Counter,
    retransmissions: Counter,
    timeouts: Counter,
}

/// One generator thread: calls `thread`, `thread + threads`, ... of the schedule. It wakes
/// once per tick: starts the calls that are due, reads everything that arrived (latency from
/// the kernel's receive timestamps), runs timers, and sends it all in batches.
fn thread_main(
    spec: Arc<LoadSpec>,
    thread: usize,
    run: u32,
    t0: Instant,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<LoadReport> {
    let local_ip = UdpSocket::bind(if spec.target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .and_then(|s| {
        s.connect(spec.target)?;
        s.local_addr()
    })?
    .ip();
    let mut sockets = Vec::new();
    let mut local = Vec::new();
    for _ in 0..spec.sockets {
        let s = udp_socket(SocketAddr::new(local_ip, 0), false)?;
        local.push(s.local_addr()?.as_socket().expect("an inet socket"));
        sockets.push(s);
    }
    let fds: Vec<_> = sockets
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    let mut receiver = StampedReceiver::new(&fds)?;
    let mut transport = MmsgTransport::new(
        ShardSockets {
            sockets,
            local: local.clone(),
        },
        Arc::new(Waker::new()?),
    )?;
    let mut engine = Engine::new(spec.clone(), thread, run, local);
    let mut out = Outbox::new();
    // The kernel stamps with CLOCK_REALTIME: where t0 is on that clock, in ns.
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let t0_epoch_ns = epoch - t0.elapsed().as_nanos() as i128;
    let tick_us = spec.tick_us.max(1);
    let threads = spec.threads as u64;
    let mut k = thread as u64; // the next call of this thread
    let mut next_due = spec.due_us(k);
    loop {
        let now_us = t0.elapsed().as_micros() as u64;
        if stop.load(Ordering::Relaxed) {
            next_due = None;
        }
        while let Some(due) = next_due.filter(|&d| d <= now_us) {
            engine.start(k, now_us, now_us - due, &mut out);
            k += threads;
            next_due = spec.due_us(k);
            if out.len() >= 256 {
                transport.send(&mut out)?;
            }
        }
        receiver.recv_all(&mut |data, src, socket, stamp| {
            let received_us = stamp
                .map(|ns| ((ns - t0_epoch_ns).max(0) / 1000) as u64)
                .map_or(now_us, |r| r.min(now_us));
            engine.datagram_at(data, src, socket, received_us, now_us, &mut out);
        });
        let now_us = t0.elapsed().as_micros() as u64;
        if engine.next_timeout_ms().is_some_and(|t| t * 1000 <= now_us) {
            engine.handle_timeout(now_us, &mut out);
        }
        if !out.is_empty() {
            transport.send(&mut out)?;
        }
        let r = &engine.report;
        live.started.set(r.started);
        live.completed.set(r.completed);
        live.failed.set(r.failed);
        live.retransmissions.set(r.retransmissions);
        live.timeouts.set(r.timeouts);
        if next_due.is_none() && engine.active() == 0 {
            break;
        }
        // Sleep to the next tick: what arrives meanwhile waits in the socket buffer with its
        // timestamp.
        let now_us = t0.elapsed().as_micros() as u64;
        let next_tick = (now_us / tick_us + 1) * tick_us;
        std::thread::sleep(Duration::from_micros(next_tick - now_us));
    }
    Ok(engine.report)
}

/// Runs `sipshard load` with `args` (after `load`); returns the exit code: 0 when every call
/// completed, 1 when some failed or timed out, 2 for a bad option.
pub fn main(args: Vec<String>) -> i32 {
    let cli =
        match LoadCli::try_parse_from(std::iter::once("sipshard load".to_string()).chain(args)) {
            Ok(c) => c,
            Err(e) => {
                let code = if e.use_stderr() { 2 } else { 0 };
                let _ = e.print();
                return code;
            }
        };
    let spec = match spec_from(&cli) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("sipshard load: {e}");
            return 2;
        }
    };
    let run = std::process::id();
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
    let lives: Vec<Arc<Live>> = (0..spec.threads)
        .map(|_| Arc::new(Live::default()))
        .collect();
    let handles: Vec<_> = (0..spec.threads)
        .map(|t| {
            let (spec, live, stop) = (spec.clone(), lives[t].clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || thread_main(spec, t, run, t0, live, stop))
                .expect("spawn a generator thread")
        })
        .collect();
    // SAFETY: isatty only reads the descriptor's state.
    let tty = unsafe { libc::isatty(2) } == 1;
    let progress = tty && !cli.quiet;
    let mut last = (0u64, Instant::now());
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if progress && last.1.elapsed() >= Duration::from_secs(1) {
            let sum = |f: fn(&Live) -> u64| lives.iter().map(|l| f(l)).sum::<u64>();
            let completed = sum(|l| l.completed.get());
            let rate = (completed - last.0) as f64 / last.1.elapsed().as_secs_f64();
            eprint!(
                "\r{:6.1} s  started {}  completed {} ({:.0}/s)  failed {}  retrans {}  timeouts {}   ",
                t0.elapsed().as_secs_f64(),
                sum(|l| l.started.get()),
                completed,
                rate,
                sum(|l| l.failed.get()),
                sum(|l| l.retransmissions.get()),
                sum(|l| l.timeouts.get()),
            );
            last = (completed, Instant::now());
        }
    }
    if progress {
        eprintln!();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut report = LoadReport::default();
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => report.merge(&r),
            Ok(Err(e)) => {
                eprintln!("sipshard load: {e}");
                return 1;
            }
            Err(_) => {
                eprintln!("sipshard load: a generator thread panicked");
                return 1;
            }
        }
    }
    if cli.json {
        print!(
            "{}",
            report.json(spec.scenario.name(), &spec.target.to_string(), elapsed)
        );
    } else {
        print!("{}", report.text(elapsed));
    }
    if report.failed == 0 && report.timeouts == 0 {
        0
    } else {
        1
    }
}
