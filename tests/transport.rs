//! Both transport backends against a plain std UDP peer: datagrams in through `poll_recv`
//! (source and bytes intact, bursts larger than the uring buffer ring), replies out through
//! `send`, and `wait` returning on a wake-up, a datagram, or the timeout. Where io_uring is
//! unavailable the uring cases print a SKIPPED line, or fail with SIPSHARD_REQUIRE_URING=1.

mod common;

use sipshard::server::outbox::Outbox;
use sipshard::transport::mmsg::MmsgTransport;
use sipshard::transport::uring::UringTransport;
use sipshard::transport::{RecvHandler, ShardSockets, Transport, Waker};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Setup {
    t: Box<dyn Transport>,
    waker: Arc<Waker>,
    addr: SocketAddr,
}

fn setup(backend: &str) -> Option<Setup> {
    let socks = ShardSockets::bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    let addr = socks.local[0];
    let waker = Arc::new(Waker::new().unwrap());
    let t: Box<dyn Transport> = match backend {
        "mmsg" => Box::new(MmsgTransport::new(socks, waker.clone()).unwrap()),
        _ => match if backend == "uring-basic" {
            UringTransport::new_basic(socks, waker.clone())
        } else {
            UringTransport::new(socks, waker.clone())
        } {
            Ok(t) => {
                eprintln!("uring transport with the {} ring set-up", t.setup());
                Box::new(t)
            }
            Err((_, e)) => {
                common::skip_or_fail(
                    &format!("{backend} transport test"),
                    &format!("io_uring unavailable here ({e})"),
                    "SIPSHARD_REQUIRE_URING",
                );
                return None;
            }
        },
    };
    assert!(backend.starts_with(t.name()), "{backend}: {}", t.name());
    Some(Setup { t, waker, addr })
}

/// A std socket with the large buffers of the server's sockets (the default receive buffer
/// would drop a burst of replies).
fn peer_socket() -> UdpSocket {
    sipshard::transport::udp_socket("127.0.0.1:0".parse().unwrap(), false)
        .unwrap()
        .into()
}

/// "uring-basic" is the uring backend limited to its pre-6.1 ring set-ups (SendMsg sends).
const BACKENDS: [&str; 3] = ["mmsg", "uring", "uring-basic"];

#[derive(Default)]
struct Collect(Vec<(Vec<u8>, SocketAddr, usize)>);

impl RecvHandler for Collect {
    fn datagram(&mut self, data: &[u8], src: SocketAddr, socket: usize) {
        self.0.push((data.to_vec(), src, socket));
    }
}

/// Polls (waiting when idle) until `n` datagrams arrived or 5 s passed.
fn receive(t: &mut dyn Transport, n: usize) -> Vec<(Vec<u8>, SocketAddr, usize)> {
    let mut c = Collect::default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.0.len() < n && Instant::now() < deadline {
        if t.poll_recv(&mut c).unwrap() == 0 {
            t.wait(50).unwrap();
        }
    }
    c.0
}

fn payload(i: usize) -> Vec<u8> {
    // Sizes from 1 byte to ~9 KB, plus one near UDP's limit.
    let len = if i == 7 { 60_000 } else { 1 + (i * 997) % 9000 };
    (0..len).map(|k| (k * 31 + i) as u8).collect()
}

#[test]
fn datagrams_in_and_replies_out() {
    for backend in BACKENDS {
        let Some(mut s) = setup(backend) else {
            continue;
        };
        let peer = peer_socket();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = 40;
        for i in 0..n {
            peer.send_to(&payload(i), s.addr).unwrap();
        }
        let got = receive(&mut *s.t, n);
        assert_eq!(got.len(), n, "{backend}: datagrams received");
        let mut out = Outbox::new();
        for (i, (data, src, socket)) in got.iter().enumerate() {
            assert_eq!(data, &payload(i), "{backend}: datagram {i} bytes");
            assert_eq!(*src, peer.local_addr().unwrap(), "{backend}: source");
            assert_eq!(*socket, 0);
            let mut reply = data.clone();
            reply.reverse();
            out.push(&reply, *src, *socket);
        }
        assert_eq!(s.t.send(&mut out).unwrap(), n, "{backend}: sent");
        assert!(out.is_empty());
        let mut buf = vec![0u8; 65_536];
        for i in 0..n {
            let (len, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(from, s.addr, "{backend}: reply source");
            let mut want = payload(i);
            want.reverse();
            assert_eq!(&buf[..len], &want[..], "{backend}: reply {i}");
        }
    }
}

#[test]
fn burst_larger_than_buffer_ring() {
    for backend in BACKENDS {
        let Some(mut s) = setup(backend) else {
            continue;
        };
        // Arm first (uring), then queue more datagrams than there are receive buffers.
        assert_eq!(s.t.poll_recv(&mut Collect::default()).unwrap(), 0);
        let peer = peer_socket();
        let n = 1000;
        for i in 0..n as u32 {
            peer.send_to(&i.to_be_bytes(), s.addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let got = receive(&mut *s.t, n);
        assert_eq!(got.len(), n, "{backend}: all of the burst");
        for (i, (data, _, _)) in got.iter().enumerate() {
            assert_eq!(data[..], (i as u32).to_be_bytes(), "{backend}: order");
        }
    }
}

#[test]
fn poll_recv_sees_datagrams_without_wait() {
    for backend in BACKENDS {
        let Some(mut s) = setup(backend) else {
            continue;
        };
        let peer = peer_socket();
        let mut c = Collect::default();
        s.t.poll_recv(&mut c).unwrap();
        for round in 0..3 {
            peer.send_to(b"ping", s.addr).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            let n = s.t.poll_recv(&mut c).unwrap();
            assert_eq!(n, 1, "{backend}: round {round}");
        }
    }
}

#[test]
fn wait_returns_on_wake_datagram_and_timeout() {
    for backend in BACKENDS {
        let Some(mut s) = setup(backend) else {
            continue;
        };
        s.t.poll_recv(&mut Collect::default()).unwrap();

        // Another thread wakes the sleeping shard.
        s.waker.sleeping.store(true, Ordering::SeqCst);
        let w = s.waker.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            assert!(w.wake_if_sleeping());
        });
        let t0 = Instant::now();
        s.t.wait(5000).unwrap();
        let dt = t0.elapsed();
        s.waker.sleeping.store(false, Ordering::SeqCst);
        h.join().unwrap();
        assert!(
            dt >= Duration::from_millis(80),
            "{backend}: woke early {dt:?}"
        );
        assert!(dt < Duration::from_secs(2), "{backend}: wake took {dt:?}");
        assert_eq!(s.t.poll_recv(&mut Collect::default()).unwrap(), 0);

        // Nothing pending: the timeout.
        let t0 = Instant::now();
        s.t.wait(150).unwrap();
        let dt = t0.elapsed();
        assert!(
            dt >= Duration::from_millis(140),
            "{backend}: timeout early {dt:?}"
        );
        assert!(
            dt < Duration::from_secs(1),
            "{backend}: timeout late {dt:?}"
        );

        // A datagram.
        let addr = s.addr;
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let peer = peer_socket();
            peer.send_to(b"hello", addr).unwrap();
        });
        let t0 = Instant::now();
        s.t.wait(5000).unwrap();
        let dt = t0.elapsed();
        h.join().unwrap();
        assert!(
            dt < Duration::from_secs(2),
            "{backend}: datagram wake took {dt:?}"
        );
        assert_eq!(receive(&mut *s.t, 1).len(), 1);
    }
}

/// Issue 20: the in-server latency starts at the kernel's receive timestamp. The mmsg
/// transport turns on SO_TIMESTAMPNS and hands each datagram's stamp to the shard before the
/// datagram: one read 60 ms after it arrived carries its arrival time, not the read's.
#[test]
fn mmsg_hands_the_kernel_receive_timestamp_before_each_datagram() {
    use std::time::{SystemTime, UNIX_EPOCH};
    struct Stamps(Vec<(Option<u64>, Vec<u8>)>, Option<u64>);
    impl RecvHandler for Stamps {
        fn datagram(&mut self, data: &[u8], _: SocketAddr, _: usize) {
            let stamp = self.1.take();
            self.0.push((stamp, data.to_vec()));
        }
        fn received_at(&mut self, realtime_ns: u64) {
            self.1 = Some(realtime_ns);
        }
    }
    let now_ns = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    };
    let Some(mut s) = setup("mmsg") else { return };
    let peer = peer_socket();
    // Linux turns arrival stamping on through a deferred static key (net_enable_timestamp):
    // until that has run, a datagram is stamped when read. Warm it up first.
    std::thread::sleep(Duration::from_millis(50));
    peer.send_to(b"warm", s.addr).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    let mut h = Stamps(Vec::new(), None);
    s.t.poll_recv(&mut h).unwrap();
    let sent = now_ns();
    peer.send_to(b"hello", s.addr).unwrap();
    std::thread::sleep(Duration::from_millis(60));
    let mut h = Stamps(Vec::new(), None);
    assert_eq!(s.t.poll_recv(&mut h).unwrap(), 1);
    let read = now_ns();
    let (stamp, data) = &h.0[0];
    assert_eq!(data.as_slice(), b"hello");
    let stamp = stamp.expect("a kernel receive timestamp");
    assert!(
        stamp + 1_000_000 >= sent && stamp < sent + 20_000_000,
        "{stamp} vs {sent}"
    );
    assert!(read - stamp >= 50_000_000);
}

/// The overload signal: a receive that read more than a batch and emptied the socket is not
/// saturated; one that stopped at its cap with the socket still delivering full batches is
/// (mmsg: four batches of 32 per socket and round).
#[test]
fn saturated_means_the_receive_stopped_at_its_cap_not_that_it_read_a_full_batch() {
    for backend in BACKENDS {
        let Some(mut s) = setup(backend) else {
            continue;
        };
        assert_eq!(s.t.poll_recv(&mut Collect::default()).unwrap(), 0);
        assert!(!s.t.saturated(), "{backend}: idle");
        let peer = peer_socket();
        for i in 0..40u32 {
            peer.send_to(&i.to_be_bytes(), s.addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut c = Collect::default();
        let n = s.t.poll_recv(&mut c).unwrap();
        if backend == "mmsg" {
            assert_eq!(n, 40, "{backend}: one round read more than a batch");
        }
        assert!(
            !s.t.saturated(),
            "{backend}: {n} of 40 read, not at the cap"
        );
        assert_eq!(receive(&mut *s.t, 40 - n).len(), 40 - n);
        if backend != "mmsg" {
            continue;
        }
        let cap = sipshard::transport::BATCH * sipshard::transport::RECV_BATCHES;
        for i in 0..(cap + 100) as u32 {
            peer.send_to(&i.to_be_bytes(), s.addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let n = s.t.poll_recv(&mut Collect::default()).unwrap();
        assert_eq!(n, cap, "{backend}");
        assert!(
            s.t.saturated(),
            "{backend}: stopped at the cap with 100 left"
        );
        let n = s.t.poll_recv(&mut Collect::default()).unwrap();
        assert_eq!(n, 100);
        assert!(
            !s.t.saturated(),
            "{backend}: the rest read, the socket empty"
        );
    }
}
