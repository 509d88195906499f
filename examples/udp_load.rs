//! UDP load generator: N sender threads send a realistic ~500-byte SIP OPTIONS request
//! (unique branch and Call-ID each) to a server and count the responses, using
//! sendmmsg/recvmmsg so that the generator is cheap per datagram.
//!
//! Closed loop by default (each thread keeps `--window` requests outstanding, re-sending after
//! a 20 ms silence counts the outstanding ones as lost); `--rate R` sends R requests/s in total
//! instead. With `--pid PID` it reads the server's utime+stime from /proc/PID/stat before and
//! after the measured interval and prints the server CPU time per request/response pair.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/sipshard --listen 127.0.0.1:5960 --shards 1 --io uring &
//! target/release/examples/udp_load --target 127.0.0.1:5960 --threads 2 --duration 10 --pid $!
//! ```
//! Output: one `key=value` line (responses/s, cpu_us_per_pair, lost, non-200 responses).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REQ_SIZE: usize = 500;
const RESP_BUF: usize = 2048;
const SEQ_MARK: &str = "SEQSEQSEQS";

struct Args {
    target: SocketAddr,
    threads: usize,
    window: usize,
    duration: f64,
    warmup: f64,
    rate: f64,
    pid: Option<u32>,
}

fn usage() -> ! {
    eprintln!(
        "usage: udp_load [--target ADDR] [--threads N] [--window W] [--duration S] \
         [--warmup S] [--rate REQ_PER_S] [--pid SERVER_PID]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        target: "127.0.0.1:5960".parse().unwrap(),
        threads: 2,
        window: 64,
        duration: 10.0,
        warmup: 1.0,
        rate: 0.0,
        pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--target" => a.target = v.parse().unwrap_or_else(|_| usage()),
            "--threads" => a.threads = v.parse().unwrap_or_else(|_| usage()),
            "--window" => a.window = v.parse().unwrap_or_else(|_| usage()),
            "--duration" => a.duration = v.parse().unwrap_or_else(|_| usage()),
            "--warmup" => a.warmup = v.parse().unwrap_or_else(|_| usage()),
            "--rate" => a.rate = v.parse().unwrap_or_else(|_| usage()),
            "--pid" => a.pid = Some(v.parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if a.threads == 0 || a.window == 0 {
        usage();
    }
    a
}

/// The request template for one thread, padded to REQ_SIZE bytes, with the offsets of the two
/// 10-digit sequence fields (branch and Call-ID).
fn template(target: SocketAddr, local: SocketAddr, thread: usize) -> (Vec<u8>, [usize; 2]) {
    let head = format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-{thread:02}-{SEQ_MARK};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Load Generator\" <sip:load@{ip}>;tag=ld{thread:02}a7f3c2e1\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: {SEQ_MARK}-{thread:02}@loadgen.example.com\r\n\
         CSeq: 1 OPTIONS\r\n\
         Contact: <sip:load@{local}>\r\n\
         Accept: application/sdp\r\n\
         User-Agent: sipshard-udp-load/0.1\r\n\
         Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n",
        ip = local.ip()
    );
    let tail = "Content-Length: 0\r\n\r\n";
    let pad_line = "X-Padding: \r\n".len();
    let fill = REQ_SIZE
        .checked_sub(head.len() + tail.len() + pad_line)
        .unwrap_or_else(|| panic!("template of {} bytes > {REQ_SIZE}", head.len()));
    let msg = format!("{head}X-Padding: {}\r\n{tail}", "x".repeat(fill));
    assert_eq!(msg.len(), REQ_SIZE);
    let first = msg.find(SEQ_MARK).unwrap();
    let second = first + SEQ_MARK.len() + msg[first + SEQ_MARK.len()..].find(SEQ_MARK).unwrap();
    (msg.into_bytes(), [first, second])
}

fn write_seq(buf: &mut [u8], offsets: [usize; 2], mut seq: u64) {
    let mut digits = [b'0'; 10];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (seq % 10) as u8;
        seq /= 10;
    }
    for o in offsets {
        buf[o..o + 10].copy_from_slice(&digits);
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    responses: AtomicU64,
    non_200: AtomicU64,
    lost: AtomicU64,
}

/// CPU time (user + system) of a process, in microseconds.
fn cpu_us(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: field 3 (state) is f[0], so utime (14) is f[11], stime (15) f[12].
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000 / hz)
}

fn sender(
    id: usize,
    args: &Args,
    total_rate: f64,
    stop: &AtomicBool,
    c: &Counters,
) -> std::io::Result<()> {
    let bind: SocketAddr = if args.target.is_ipv6() {
        "[::1]:0".parse().unwrap()
    } else {
        "127.0.0.1:0".parse().unwrap()
    };
    let sock: UdpSocket = sipshard::transport::udp_socket(bind, false)?.into();
    sock.connect(args.target)?;
    let timeout = if total_rate > 0.0 { 1 } else { 20 };
    sock.set_read_timeout(Some(Duration::from_millis(timeout)))?;
    let fd = sock.as_raw_fd();
    let (tpl, offsets) = template(args.target, sock.local_addr()?, id);
    let w = args.window;
    let mut reqs: Vec<Vec<u8>> = vec![tpl; w];
    let mut send_iov: Vec<libc::iovec> = Vec::with_capacity(w);
    for r in reqs.iter_mut() {
        send_iov.push(libc::iovec {
            iov_base: r.as_mut_ptr() as *mut libc::c_void,
            iov_len: r.len(),
        });
    }
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    let mut send_hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; w];
    let mut resp = vec![0u8; w * RESP_BUF];
    let mut recv_iov: Vec<libc::iovec> = (0..w)
        .map(|i| libc::iovec {
            iov_base: resp[i * RESP_BUF..].as_mut_ptr() as *mut libc::c_void,
            iov_len: RESP_BUF,
        })
        .collect();
    // SAFETY: as above.
    let mut recv_hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; w];
    for i in 0..w {
        send_hdrs[i].msg_hdr.msg_iov = &mut send_iov[i];
        send_hdrs[i].msg_hdr.msg_iovlen = 1;
        recv_hdrs[i].msg_hdr.msg_iov = &mut recv_iov[i];
        recv_hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    let rate = total_rate / args.threads as f64;
    let start = Instant::now();
    let mut seq: u64 = 0;
    let mut outstanding: usize = 0;
    while !stop.load(Ordering::Relaxed) {
        let want = if rate > 0.0 {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            (due.saturating_sub(seq) as usize).min(w)
        } else {
            w - outstanding.min(w)
        };
        if want > 0 {
            for r in reqs.iter_mut().take(want) {
                write_seq(r, offsets, seq);
                seq += 1;
            }
            let mut done = 0;
            while done < want {
                // SAFETY: send_hdrs[done..want] point at our own request buffers and iovecs,
                // alive for the call; the socket is connected so no address is needed.
                let n = unsafe {
                    libc::sendmmsg(
                        fd,
                        send_hdrs.as_mut_ptr().add(done),
                        (want - done) as u32,
                        0,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    // ECONNREFUSED after an ICMP error (server not up yet): count as lost.
                    c.lost.fetch_add(1, Ordering::Relaxed);
                    done += 1;
                    continue;
                }
                done += n as usize;
            }
            c.sent.fetch_add(want as u64, Ordering::Relaxed);
            outstanding += want;
        }
        // SAFETY: recv_hdrs point at our own iovecs and response buffers; MSG_WAITFORONE
        // blocks (up to SO_RCVTIMEO) for the first datagram only.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                recv_hdrs.as_mut_ptr(),
                w as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            if rate <= 0.0 {
                // A 20 ms silence: what is outstanding is lost; start a new window.
                c.lost.fetch_add(outstanding as u64, Ordering::Relaxed);
                outstanding = 0;
            }
            continue;
        }
        let n = n as usize;
        let mut bad = 0;
        for (i, h) in recv_hdrs.iter().enumerate().take(n) {
            let len = h.msg_len as usize;
            if !resp[i * RESP_BUF..i * RESP_BUF + len].starts_with(b"SIP/2.0 200 ") {
                bad += 1;
            }
        }
        c.responses.fetch_add(n as u64, Ordering::Relaxed);
        c.non_200.fetch_add(bad, Ordering::Relaxed);
        outstanding = outstanding.saturating_sub(n);
    }
    Ok(())
}

fn main() {
    let args = Arc::new(parse_args());
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let mut threads = Vec::new();
    for id in 0..args.threads {
        let (args, stop, c) = (args.clone(), stop.clone(), counters.clone());
        threads.push(std::thread::spawn(move || {
            if let Err(e) = sender(id, &args, args.rate, &stop, &c) {
                eprintln!("sender {id}: {e}");
            }
        }));
    }
    let pid = args.pid.map(|p| p.to_string());
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    let snap = |c: &Counters| {
        (
            c.sent.load(Ordering::Relaxed),
            c.responses.load(Ordering::Relaxed),
            c.non_200.load(Ordering::Relaxed),
            c.lost.load(Ordering::Relaxed),
        )
    };
    let t0 = Instant::now();
    let s0 = snap(&counters);
    let cpu0 = pid.as_deref().and_then(cpu_us);
    let me0 = cpu_us("self");
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    let s1 = snap(&counters);
    let cpu1 = pid.as_deref().and_then(cpu_us);
    let me1 = cpu_us("self");
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let responses = s1.1 - s0.1;
    let per_s = responses as f64 / secs;
    let per_pair = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if responses > 0 => format!("{:.2}", (b - a) as f64 / responses as f64),
        _ => "na".to_string(),
    };
    let server_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => format!("{:.1}", (b - a) as f64 / 1e4 / secs),
        _ => "na".to_string(),
    };
    println!(
        "sent={} responses={} responses_per_s={:.0} cpu_us_per_pair={} server_cpu_pct={} \
         client_cpu_us_per_pair={} lost={} non_200={} seconds={:.2}",
        s1.0 - s0.0,
        responses,
        per_s,
        per_pair(cpu0, cpu1),
        server_cpu,
        per_pair(me0, me1),
        s1.3 - s0.3,
        s1.2 - s0.2,
        secs
    );
}
