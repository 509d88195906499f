//! The Prometheus text endpoint that sums every shard's counters ([`crate::stats`]).

use crate::stats::METHODS;
pub use crate::stats::{new_histogram, Counter, DropReason, ShardStats, DROP_REASONS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The transport's drop totals, published by the shard (the shell) into its stats.
pub fn publish_transport_drops(stats: &ShardStats, d: crate::transport::TransportDrops) {
    stats.dropped[DropReason::Truncated as usize].set(d.truncated);
    stats.dropped[DropReason::SendError as usize].set(d.send_errors);
    stats.dropped[DropReason::RecvError as usize].set(d.recv_errors);
    stats.dropped[DropReason::NoBuffers as usize].set(d.no_buffers);
}

/// All shards' stats, for the metrics endpoint and tests.
#[derive(Clone, Default)]
pub struct Registry {
    pub shards: Vec<Arc<ShardStats>>,
    /// The bans and account locks every shard obeys (edge security), when shared.
    pub board: Option<Arc<crate::security::board::Board>>,
    /// The CDR writer's counters, with call detail records on.
    pub cdr: Option<Arc<crate::cdr::CdrStats>>,
}

impl Registry {
    pub fn new(n: usize) -> Self {
        Registry {
            shards: (0..n).map(|_| Arc::new(ShardStats::default())).collect(),
            board: None,
            cdr: None,
        }
    }

    fn sum(&self, f: impl Fn(&ShardStats) -> u64) -> u64 {
        self.shards.iter().map(|s| f(s)).sum()
    }

    /// The Prometheus text exposition of every counter, summed over shards (plus a few
    /// per-shard series).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::with_capacity(8192);
        o.push_str("# HELP sipshard_requests_received_total SIP requests received, by method.\n");
        o.push_str("# TYPE sipshard_requests_received_total counter\n");
        for (i, m) in METHODS.iter().enumerate() {
            let v = self.sum(|s| s.received_requests[i].get());
            let _ = writeln!(
                o,
                "sipshard_requests_received_total{{method=\"{}\"}} {v}",
                m.as_str()
            );
        }
        o.push_str("# HELP sipshard_requests_sent_total SIP requests sent (forwarded, or a responder's own BYEs), by method.\n");
        o.push_str("# TYPE sipshard_requests_sent_total counter\n");
        for (i, m) in METHODS.iter().enumerate() {
            let v = self.sum(|s| s.sent_requests[i].get());
            if v > 0 {
                let _ = writeln!(
                    o,
                    "sipshard_requests_sent_total{{method=\"{}\"}} {v}",
                    m.as_str()
                );
            }
        }
        o.push_str("# HELP sipshard_overloaded_shards Shards past their capacity now.\n");
        o.push_str("# TYPE sipshard_overloaded_shards gauge\n");
        let _ = writeln!(
            o,
            "sipshard_overloaded_shards {}",
            self.sum(|s| s.overloaded.get())
        );
        o.push_str("# HELP sipshard_transactions Transactions in progress.\n");
        o.push_str("# TYPE sipshard_transactions gauge\n");
        let _ = writeln!(
            o,
            "sipshard_transactions {}",
            self.sum(|s| s.transactions.get())
        );
        o.push_str("# HELP sipshard_responses_received_total SIP responses received.\n");
        o.push_str("# TYPE sipshard_responses_received_total counter\n");
        let _ = writeln!(
            o,
            "sipshard_responses_received_total {}",
            self.sum(|s| s.received_responses.get())
        );
        o.push_str("# HELP sipshard_responses_sent_total SIP responses sent, by status code.\n");
        o.push_str("# TYPE sipshard_responses_sent_total counter\n");
        for code in 100..700u16 {
            let v = self.sum(|s| s.sent_responses[(code - 100) as usize].get());
            if v > 0 {
                let _ = writeln!(o, "sipshard_responses_sent_total{{status=\"{code}\"}} {v}");
            }
        }
        o.push_str("# HELP sipshard_dropped_total Datagrams dropped without a response.\n");
        o.push_str("# TYPE sipshard_dropped_total counter\n");
        for (r, name) in DROP_REASONS {
            let v = self.sum(|s| s.dropped[r as usize].get());
            let _ = writeln!(o, "sipshard_dropped_total{{reason=\"{name}\"}} {v}");
        }
        o.push_str("# HELP sipshard_handoffs_total Datagrams moved to their owner shard.\n");
        o.push_str("# TYPE sipshard_handoffs_total counter\n");
        let _ = writeln!(
            o,
            "sipshard_handoffs_total {}",
            self.sum(|s| s.handoffs_out.get())
        );
        o.push_str("# TYPE sipshard_wakeups_total counter\n");
        let _ = writeln!(
            o,
            "sipshard_wakeups_total {}",
            self.sum(|s| s.wakeups.get())
        );
        o.push_str("# TYPE sipshard_datagrams_received_total counter\n");
        for (i, s) in self.shards.iter().enumerate() {
            let _ = writeln!(
                o,
                "sipshard_datagrams_received_total{{shard=\"{i}\"}} {}",
                s.datagrams_in.get()
            );
        }
        o.push_str("# TYPE sipshard_datagrams_sent_total counter\n");
        let _ = writeln!(
            o,
            "sipshard_datagrams_sent_total {}",
            self.sum(|s| s.datagrams_out.get())
        );
        if let Some(b) = &self.board {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            o.push_str("# HELP sipshard_banned_sources Addresses banned now.\n");
            o.push_str("# TYPE sipshard_banned_sources gauge\n");
            let _ = writeln!(o, "sipshard_banned_sources {}", b.bans(now_ms).len());
            o.push_str("# HELP sipshard_locked_accounts Accounts locked out now.\n");
            o.push_str("# TYPE sipshard_locked_accounts gauge\n");
            let _ = writeln!(
                o,
                "sipshard_locked_accounts {}",
                b.locked_users(now_ms).len()
            );
        }
        if let Some(c) = &self.cdr {
            c.render(&mut o);
        }
        o.push_str("# HELP sipshard_bindings Current registrar bindings.\n");
        o.push_str("# TYPE sipshard_bindings gauge\n");
        let _ = writeln!(o, "sipshard_bindings {}", self.sum(|s| s.bindings.get()));
        let mut h = new_histogram();
        for s in &self.shards {
            if let Ok(l) = s.latency.lock() {
                let _ = h.add(&*l);
            }
        }
        o.push_str(
            "# HELP sipshard_latency_us In-server latency from receive to send, microseconds.\n",
        );
        o.push_str("# TYPE sipshard_latency_us histogram\n");
        let mut cumulative = 0u64;
        let mut prev = 0u64;
        for le in [
            1u64, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 100_000, 1_000_000,
        ] {
            cumulative += h.count_between(prev + 1, le);
            if prev == 0 {
                cumulative += h.count_at(0);
            }
            prev = le;
            let _ = writeln!(o, "sipshard_latency_us_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(o, "sipshard_latency_us_bucket{{le=\"+Inf\"}} {}", h.len());
        let sum = (h.mean() * h.len() as f64) as u64;
        let _ = writeln!(o, "sipshard_latency_us_sum {sum}");
        let _ = writeln!(o, "sipshard_latency_us_count {}", h.len());
        o.push_str("# HELP sipshard_latency_us_quantile In-server latency quantiles.\n");
        o.push_str("# TYPE sipshard_latency_us_quantile gauge\n");
        for q in [0.5, 0.9, 0.99, 0.999] {
            let _ = writeln!(
                o,
                "sipshard_latency_us_quantile{{quantile=\"{q}\"}} {}",
                h.value_at_quantile(q)
            );
        }
        o
    }
}

/// Longest the metrics thread waits for a request between looks at its stop flag.
const IDLE_POLL_MS: u64 = 500;

/// Ends the metrics thread's wait soon after its stop flag was set (else it notices within
/// half a second): a connection it accepts and drops.
pub fn wake(addr: SocketAddr) {
    let _ = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(100));
}

/// Serves `GET /metrics` on `addr` until `stop` is set, on its own thread (never a shard's).
/// tiny_http reads each connection on its own worker, so a client that connects and sends
/// nothing delays nobody else's scrape (the hand-written loop it replaces waited 2 s for it).
pub fn serve(
    addr: SocketAddr,
    registry: Registry,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let wait = std::time::Duration::from_millis(IDLE_POLL_MS);
                let req = match server.recv_timeout(wait) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!("metrics endpoint: {e}");
                        std::thread::sleep(wait);
                        continue;
                    }
                };
                let found = *req.method() == tiny_http::Method::Get && req.url() == "/metrics";
                let result = if found {
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4"[..],
                    )
                    .expect("a valid header");
                    req.respond(
                        tiny_http::Response::from_string(registry.render()).with_header(header),
                    )
                } else {
                    req.respond(tiny_http::Response::empty(404))
                };
                if let Err(e) = result {
                    tracing::debug!("metrics response: {e}");
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Method;
    use std::io::{Read, Write};

    #[test]
    fn an_idle_connection_does_not_hold_up_a_scrape() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let stop = Arc::new(AtomicBool::new(false));
        let t = serve(addr, Registry::new(1), stop.clone()).unwrap();
        // Connected, sending nothing (the old loop read it for 2 s before anything else).
        let _idle = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body)
            .expect("the scrape is answered while another connection idles");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("sipshard_bindings"), "{body}");
        stop.store(true, Ordering::SeqCst);
        wake(addr);
        t.join().unwrap();
    }

    #[test]
    fn serve_answers_and_stops_when_woken() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let stop = Arc::new(AtomicBool::new(false));
        let t = serve(addr, Registry::new(1), stop.clone()).unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
        // Idle now, sleeping in poll: the stop flag plus a poke end it (without the poke it
        // would notice the flag within IDLE_POLL_MS).
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop.store(true, Ordering::SeqCst);
        wake(addr);
        t.join().unwrap();
    }

    #[test]
    fn render_sums_shards() {
        let r = Registry::new(2);
        r.shards[0].request(Method::Register);
        r.shards[1].request(Method::Register);
        r.shards[1].response_sent(200);
        r.shards[0].dropped(DropReason::Malformed);
        r.shards[0].latency.lock().unwrap().record(7).unwrap();
        let text = r.render();
        assert!(text.contains("sipshard_requests_received_total{method=\"REGISTER\"} 2"));
        assert!(text.contains("sipshard_responses_sent_total{status=\"200\"} 1"));
        assert!(text.contains("sipshard_dropped_total{reason=\"malformed\"} 1"));
        assert!(text.contains("sipshard_latency_us_bucket{le=\"10\"} 1"));
        assert!(text.contains("sipshard_latency_us_bucket{le=\"5\"} 0"));
    }
}
