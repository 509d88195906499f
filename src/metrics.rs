//! The Prometheus text endpoint that sums every shard's counters ([`crate::stats`]).

use crate::stats::METHODS;
pub use crate::stats::{new_histogram, Counter, DropReason, ShardStats, DROP_REASONS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
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

/// One label of a series.
pub fn label(key: &'static str, value: &str) -> [(&'static str, String); 1] {
    [(key, value.to_owned())]
}

/// A counter without labels.
pub fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// A counter with one series per label set.
pub fn counters(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl Iterator<Item = ([(&'static str, String); 1], u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
pub fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(v as i64);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// The collector a scrape encodes: every counter read at that moment.
struct Scrape(Registry);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrape({} shards)", self.0.shards.len())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.0.encode(&mut enc)
    }
}

/// All shards' stats, for the metrics endpoint and tests.
#[derive(Clone, Default)]
pub struct Registry {
    pub shards: Vec<Arc<ShardStats>>,
    /// The bans and account locks every shard obeys (edge security), when shared.
    pub board: Option<Arc<crate::security::board::Board>>,
    /// The CDR writer's counters, with call detail records on.
    pub cdr: Option<Arc<crate::cdr::CdrStats>>,
    /// The shared store's counters (`--store`).
    pub shared: Option<Arc<crate::store::shared::SharedStats>>,
}

impl Registry {
    pub fn new(n: usize) -> Self {
        Registry {
            shards: (0..n).map(|_| Arc::new(ShardStats::default())).collect(),
            board: None,
            cdr: None,
            shared: None,
        }
    }

    fn sum(&self, f: impl Fn(&ShardStats) -> u64) -> u64 {
        self.shards.iter().map(|s| f(s)).sum()
    }

    /// The exposition of every counter (OpenMetrics text, by prometheus-client's encoder),
    /// summed over shards (plus a few per-shard series). The shards keep plain atomic
    /// counters (one relaxed add on their path); the sums are taken here, at scrape time.
    pub fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut o = String::with_capacity(16 << 10);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut o, &registry);
        o
    }

    fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let methods = METHODS.iter().enumerate();
        counters(
            enc,
            "sipshard_requests_received",
            "SIP requests received, by method.",
            methods.clone().map(|(i, m)| {
                (
                    label("method", m.as_str()),
                    self.sum(|s| s.received_requests[i].get()),
                )
            }),
        )?;
        counters(
            enc,
            "sipshard_requests_sent",
            "SIP requests sent (forwarded, or a responder's own BYEs), by method.",
            methods
                .map(|(i, m)| {
                    (
                        label("method", m.as_str()),
                        self.sum(|s| s.sent_requests[i].get()),
                    )
                })
                .filter(|(_, v)| *v > 0),
        )?;
        gauge(
            enc,
            "sipshard_overloaded_shards",
            "Shards past their capacity now.",
            self.sum(|s| s.overloaded.get()),
        )?;
        gauge(
            enc,
            "sipshard_kernel_steering",
            "UDP listen addresses whose datagrams the kernel steers to their owner shard (eBPF on the SO_REUSEPORT group).",
            self.sum(|s| s.steered.get()),
        )?;
        gauge(
            enc,
            "sipshard_consolidated_shards",
            "Shards running on another shard's thread now (consolidation at low load).",
            self.sum(|s| s.hosted.get()),
        )?;
        counter(
            enc,
            "sipshard_shard_moves",
            "Times a shard moved to another shard's thread or back.",
            self.sum(|s| s.moves.get()),
        )?;
        gauge(
            enc,
            "sipshard_transactions",
            "Transactions in progress.",
            self.sum(|s| s.transactions.get()),
        )?;
        counter(
            enc,
            "sipshard_responses_received",
            "SIP responses received.",
            self.sum(|s| s.received_responses.get()),
        )?;
        counters(
            enc,
            "sipshard_responses_sent",
            "SIP responses sent, by status code.",
            (100..700u16)
                .map(|code| {
                    let v = self.sum(|s| s.sent_responses[(code - 100) as usize].get());
                    (label("status", &code.to_string()), v)
                })
                .filter(|(_, v)| *v > 0),
        )?;
        counters(
            enc,
            "sipshard_dropped",
            "Datagrams dropped without a response.",
            DROP_REASONS.iter().map(|&(r, name)| {
                (
                    label("reason", name),
                    self.sum(|s| s.dropped[r as usize].get()),
                )
            }),
        )?;
        counter(
            enc,
            "sipshard_handoffs",
            "Messages moved to their owner shard (through its queue, or straight to its core between shards on one thread).",
            self.sum(|s| s.handoffs_out.get()),
        )?;
        counter(
            enc,
            "sipshard_wakeups",
            "Cross-shard wake-ups.",
            self.sum(|s| s.wakeups.get()),
        )?;
        gauge(
            enc,
            "sipshard_connections",
            "Stream (TCP) connections open.",
            self.sum(|s| s.streams.open.get()),
        )?;
        counter(
            enc,
            "sipshard_connections_accepted",
            "Stream connections accepted.",
            self.sum(|s| s.streams.accepted.get()),
        )?;
        counter(
            enc,
            "sipshard_connections_made",
            "Stream connections this server opened.",
            self.sum(|s| s.streams.connected.get()),
        )?;
        counter(
            enc,
            "sipshard_stream_messages",
            "Messages received over stream connections.",
            self.sum(|s| s.streams.messages_in.get()),
        )?;
        counter(
            enc,
            "sipshard_stream_writes",
            "Write calls on stream connections' sockets (what a receive round sends to one connection goes in one).",
            self.sum(|s| s.streams.writes.get()),
        )?;
        counter(
            enc,
            "sipshard_stream_pings",
            "Double-CRLF keepalives answered on stream connections.",
            self.sum(|s| s.streams.pings.get()),
        )?;
        counters(
            enc,
            "sipshard_connection_events",
            "Stream connections refused or closed, by reason.",
            crate::stats::STREAM_EVENTS.iter().map(|&(e, name)| {
                (
                    label("reason", name),
                    self.sum(|s| s.streams.events[e as usize].get()),
                )
            }),
        )?;
        counters(
            enc,
            "sipshard_datagrams_received",
            "Datagrams received, by shard.",
            self.shards
                .iter()
                .enumerate()
                .map(|(i, s)| (label("shard", &i.to_string()), s.datagrams_in.get())),
        )?;
        counter(
            enc,
            "sipshard_datagrams_sent",
            "Datagrams sent.",
            self.sum(|s| s.datagrams_out.get()),
        )?;
        if let Some(b) = &self.board {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            gauge(
                enc,
                "sipshard_banned_sources",
                "Addresses banned now.",
                b.bans(now_ms).len() as u64,
            )?;
            gauge(
                enc,
                "sipshard_locked_accounts",
                "Accounts locked out now.",
                b.locked_users(now_ms).len() as u64,
            )?;
        }
        if let Some(c) = &self.cdr {
            c.encode(enc)?;
        }
        if let Some(s) = &self.shared {
            s.encode(enc)?;
        }
        gauge(
            enc,
            "sipshard_bindings",
            "Current registrar bindings.",
            self.sum(|s| s.bindings.get()),
        )?;
        let mut h = new_histogram();
        for s in &self.shards {
            if let Ok(l) = s.latency.lock() {
                let _ = h.add(&*l);
            }
        }
        let mut buckets = Vec::new();
        let mut prev = 0u64;
        for le in [
            1u64, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 100_000, 1_000_000,
        ] {
            let mut n = h.count_between(prev + 1, le);
            if prev == 0 {
                n += h.count_at(0);
            }
            prev = le;
            buckets.push((le as f64, n));
        }
        let below: u64 = buckets.iter().map(|(_, n)| n).sum();
        buckets.push((f64::INFINITY, h.len().saturating_sub(below)));
        let mut m = enc.encode_descriptor(
            "sipshard_latency_us",
            "In-server latency, microseconds: from the kernel's receive timestamp of a UDP datagram (SO_TIMESTAMPNS; for a stream message or without a timestamp, the start of the shard's receive round) to the return of the send call that carries its answer or forwarded copy.",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(h.mean() * h.len() as f64, h.len(), &buckets, None)?;
        let mut m = enc.encode_descriptor(
            "sipshard_latency_us_quantile",
            "In-server latency quantiles.",
            None,
            MetricType::Gauge,
        )?;
        for q in ["0.5", "0.9", "0.99", "0.999"] {
            let v = h.value_at_quantile(q.parse().unwrap_or(0.5)) as i64;
            ConstGauge::new(v).encode(m.encode_family(&label("quantile", q))?)?;
        }
        self.encode_stages(enc)
    }
}

impl Registry {
    /// The stage histograms ([`crate::stats::Stage`]) summed over the shards: quantiles and
    /// counts per stage.
    fn encode_stages(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        use crate::stats::Stage;
        let merged: Vec<_> = Stage::ALL
            .iter()
            .map(|&stage| {
                let mut h = crate::stats::new_stage_histogram();
                for s in &self.shards {
                    if let Ok(l) = s.stages[stage as usize].lock() {
                        let _ = h.add(&*l);
                    }
                }
                (stage, h)
            })
            .collect();
        let mut m = enc.encode_descriptor(
            "sipshard_stage_us_quantile",
            "Where the in-server latency goes, microseconds, by stage: socket_wait (from the kernel's receive timestamp of a UDP datagram to the start of the receive round that reads it), core (the protocol core's handling of one message: parsing, security checks, digest, registrar or transaction and proxy work), handoff_queue (a message handed over to its owner shard, waiting in its queue), send (the round's send call, counted once per datagram it carries).",
            None,
            MetricType::Gauge,
        )?;
        for (stage, h) in &merged {
            for q in ["0.5", "0.9", "0.99", "0.999"] {
                let v = h.value_at_quantile(q.parse().unwrap_or(0.5)) as i64;
                let labels = [
                    ("stage", stage.name().to_owned()),
                    ("quantile", q.to_owned()),
                ];
                ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        counters(
            enc,
            "sipshard_stage_us_samples",
            "Samples in each stage histogram (messages, or datagrams sent for `send`).",
            merged
                .iter()
                .map(|(stage, h)| (label("stage", stage.name()), h.len())),
        )
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
                        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
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
        r.shards[0].stages[crate::stats::Stage::Core as usize]
            .lock()
            .unwrap()
            .record(3)
            .unwrap();
        r.shards[1].stages[crate::stats::Stage::Core as usize]
            .lock()
            .unwrap()
            .record(3)
            .unwrap();
        let text = r.render();
        assert!(
            text.contains("sipshard_stage_us_quantile{stage=\"core\",quantile=\"0.5\"} 3"),
            "{text}"
        );
        assert!(text.contains("sipshard_stage_us_samples_total{stage=\"core\"} 2"));
        assert!(text.contains("sipshard_stage_us_samples_total{stage=\"send\"} 0"));
        assert!(text.contains("sipshard_requests_received_total{method=\"REGISTER\"} 2"));
        assert!(text.contains("sipshard_responses_sent_total{status=\"200\"} 1"));
        assert!(text.contains("sipshard_dropped_total{reason=\"malformed\"} 1"));
        assert!(
            text.contains("sipshard_latency_us_bucket{le=\"10.0\"} 1"),
            "{text}"
        );
        assert!(text.contains("sipshard_latency_us_bucket{le=\"5.0\"} 0"));
        assert!(
            text.contains("sipshard_latency_us_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(text.contains("sipshard_latency_us_count 1"));
        assert!(text.contains("sipshard_latency_us_quantile{quantile=\"0.5\"} 7"));
        assert!(text.contains("# TYPE sipshard_requests_received counter"));
        assert!(
            text.ends_with("# EOF\n"),
            "a complete OpenMetrics exposition"
        );
    }
}
