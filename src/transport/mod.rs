//! UDP transport for one shard: its share of the SO_REUSEPORT listen sockets (the server is
//! one address to the world: every datagram leaves from the socket its peer talks to),
//! batched receive and send, and sleeping until there is work.
//!
//! Two backends implement [`Transport`]: [`mmsg::MmsgTransport`] (recvmmsg/sendmmsg) and
//! [`uring::UringTransport`] (io_uring multishot receive with a provided buffer ring). This is
//! one of the two places in the crate (with `shard/`) that touch sockets.

pub mod alias;
pub mod framing;
pub mod mmsg;
pub mod sockaddr;
pub mod steering;
pub mod tcp;
pub mod tls;
pub mod uring;
pub mod websocket;

use crate::server::outbox::Outbox;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Datagrams received per batch.
pub const BATCH: usize = 32;
/// Batches a receive takes from a socket per round at most ([`Transport::poll_recv`]).
pub const RECV_BATCHES: usize = 4;
/// Largest datagram accepted (UDP's limit).
pub const MAX_DATAGRAM: usize = 65_535;
/// Socket buffer size asked for (several MiB: the 208 KiB default drops bursts).
pub const SOCKET_BUFFER: usize = 8 << 20;

/// A received datagram handed to the shard's core.
pub trait RecvHandler {
    fn datagram(&mut self, data: &[u8], src: SocketAddr, socket: usize);
    /// The kernel's receive timestamp of the datagram passed next to
    /// [`RecvHandler::datagram`] (CLOCK_REALTIME, ns), when the socket gives one
    /// (SO_TIMESTAMPNS): where the in-server latency starts.
    fn received_at(&mut self, _realtime_ns: u64) {}
    /// Called after each batch of datagrams (one receive call's worth): work deferred from
    /// [`RecvHandler::datagram`] (waking other shards) is done here, once per batch.
    fn batch_end(&mut self) {}
}

/// What a transport dropped or could not do, totals since it started (exported as
/// `sipshard_dropped_total{reason}` by the shard).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TransportDrops {
    /// Datagrams that did not fit the receive buffer (or whose source address did not).
    pub truncated: u64,
    /// Datagrams the kernel refused to send (unreachable or invalid destination, ...).
    pub send_errors: u64,
    /// Receive calls or completions that failed.
    pub recv_errors: u64,
    /// io_uring: times the multishot receive stopped because every provided buffer was in
    /// use (the datagrams wait in the socket buffer until it is re-armed).
    pub no_buffers: u64,
}

/// One shard's transport backend.
pub trait Transport: Send {
    /// Receives what is ready on every socket, up to a few batches, without blocking.
    /// Returns the number of datagrams handled.
    fn poll_recv(&mut self, handler: &mut dyn RecvHandler) -> io::Result<usize>;
    /// True when the last [`Transport::poll_recv`] stopped at its cap of a few batches on
    /// a socket that was still delivering full ones: that socket did not empty in the
    /// round (the overload signal). A round that read more than a batch and emptied its
    /// sockets is not saturated.
    fn saturated(&self) -> bool;
    /// Sends every datagram of the outbox (and clears it).
    fn send(&mut self, out: &mut Outbox) -> io::Result<usize>;
    /// Blocks until a socket is readable, the waker fires, or `timeout_ms` passes.
    fn wait(&mut self, timeout_ms: i32) -> io::Result<()>;
    /// Name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Also ends [`Transport::wait`] when `fd` becomes readable (the shard's stream
    /// connections' epoll set); nothing is read from it here.
    fn watch(&mut self, fd: RawFd) -> io::Result<()>;
    /// Drop counters so far.
    fn drops(&self) -> TransportDrops;
    /// A descriptor that becomes readable when this transport has something to do (its
    /// epoll set), so that another shard's thread can run this shard too
    /// (shard/consolidation.rs); None when the backend has no such descriptor (then the
    /// shard keeps its own thread).
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }
    /// Watches another shard's [`Transport::wait_fd`] (shard `id` runs on this thread now):
    /// [`Transport::watched_ready`] names it after a wait it ended.
    fn watch_shard(&mut self, _fd: RawFd, _id: u32) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Stops watching a shard's descriptor given to [`Transport::watch_shard`].
    fn unwatch_shard(&mut self, _fd: RawFd) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// The shards (ids given to [`Transport::watch_shard`]) whose descriptors the last
    /// wait reported ready.
    fn watched_ready(&self) -> &[u32] {
        &[]
    }
    /// This transport's shard runs on another's thread, which slept and saw nothing ready
    /// here: the next receive reads no socket (instead of trying each).
    fn nothing_ready(&mut self) {}
}

/// Wakes a sleeping shard from another thread (an eventfd plus a "sleeping" flag so that a
/// busy shard is never woken).
pub struct Waker {
    fd: OwnedFd,
    pub sleeping: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd has no memory-safety preconditions; we check the result.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, owned descriptor.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wakes the shard if it sleeps. Returns true if a wake-up was sent. The flag is taken
    /// (swapped to false), so a sleeping shard gets one wake-up however many datagrams other
    /// shards move to it before it runs; the shard sets the flag again before its next sleep
    /// and checks its queue after that, so nothing pushed before a later sleep is missed.
    pub fn wake_if_sleeping(&self) -> bool {
        // A plain load first: a busy shard's flag is false and the swap would take the cache
        // line exclusively for nothing.
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake();
            true
        } else {
            false
        }
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(self.raw_fd(), &one as *const u64 as *const libc::c_void, 8);
        }
    }

    /// Clears a pending wake-up.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe {
            libc::read(self.raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8);
        }
    }
}

/// The sockets of one shard, in the order the core refers to them: one per listen address.
pub struct ShardSockets {
    pub sockets: Vec<Socket>,
    pub local: Vec<SocketAddr>,
}

fn set_buffers(s: &Socket) {
    // As root, SO_RCVBUFFORCE/SO_SNDBUFFORCE bypass net.core.rmem_max/wmem_max; otherwise the
    // kernel clamps the plain request to the max (tuning/ says how to raise it).
    let fd = s.as_raw_fd();
    let size = SOCKET_BUFFER as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: setsockopt with a valid int option value and its size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                force,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    plain,
                    &size as *const _ as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

/// Creates a UDP socket bound to `addr`; with `reuse_port` several shards share it.
pub fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    set_buffers(&s);
    s.bind(&addr.into())?;
    Ok(s)
}

impl ShardSockets {
    /// Binds the shard's share of every listen address (`listen` holds the addresses as
    /// bound: no port 0, see [`claim_listen_addrs`]).
    pub fn bind(listen: &[SocketAddr]) -> io::Result<ShardSockets> {
        let mut sockets = Vec::new();
        let mut local = Vec::new();
        for &addr in listen {
            let s = udp_socket(addr, true)
                .map_err(|e| io::Error::new(e.kind(), format!("bind udp:{addr}: {e}")))?;
            local.push(s.local_addr()?.as_socket().unwrap_or(addr));
            sockets.push(s);
        }
        Ok(ShardSockets { sockets, local })
    }
}

/// Why the server cannot take a listen address.
#[derive(Debug)]
pub struct AddressTaken {
    pub addr: SocketAddr,
    pub proto: crate::sip::Proto,
    pub error: io::Error,
}

impl std::fmt::Display for AddressTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.proto.scheme();
        if self.error.kind() == io::ErrorKind::AddrInUse {
            write!(
                f,
                "{scheme}:{}: address already in use (another process serves it)",
                self.addr
            )
        } else {
            write!(f, "{scheme}:{}: {}", self.addr, self.error)
        }
    }
}

/// Checks that no other process serves the listen addresses and resolves port 0 to the port
/// the kernel picks, before the shards bind with SO_REUSEPORT. Without the check a second
/// server on the same port would join the first one's reuseport group and silently take part
/// of its traffic: a socket bound *without* SO_REUSEPORT fails with EADDRINUSE when any
/// socket holds the address. The probe socket is closed again before the shards bind (a
/// process starting in between could still join; the window is a few system calls).
pub fn claim_listen_addrs(
    listen: &[(SocketAddr, crate::sip::Proto)],
) -> Result<Vec<SocketAddr>, AddressTaken> {
    let mut bound = Vec::with_capacity(listen.len());
    let mut probes = Vec::with_capacity(listen.len());
    for &(addr, proto) in listen {
        let taken = |error| AddressTaken { addr, proto, error };
        let probe = if proto == crate::sip::Proto::Udp {
            udp_socket(addr, false).map_err(taken)?
        } else {
            // Bound without SO_REUSEPORT (and not listening): EADDRINUSE if another process
            // listens there. SO_REUSEADDR, as the listeners have it: the connections of a
            // server that just stopped (TIME_WAIT) do not hold the address, so a restart works.
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
                .map_err(taken)?;
            s.set_reuse_address(true).map_err(taken)?;
            if addr.is_ipv6() {
                s.set_only_v6(true).map_err(taken)?;
            }
            s.bind(&addr.into()).map_err(taken)?;
            s
        };
        let local = probe
            .local_addr()
            .map_err(taken)?
            .as_socket()
            .unwrap_or(addr);
        bound.push(local);
        probes.push(probe);
    }
    drop(probes);
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::Waker;
    use std::sync::atomic::Ordering;

    /// Reads the eventfd's counter (0 if nothing was written since the last read).
    fn pending(w: &Waker) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from the non-blocking eventfd.
        unsafe {
            libc::read(w.raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8);
        }
        v
    }

    #[test]
    fn a_served_address_is_refused_and_port_zero_is_resolved() {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let udp = crate::sip::Proto::Udp;
        let bound = super::claim_listen_addrs(&[(any, udp)]).unwrap();
        assert_ne!(bound[0].port(), 0);
        // A server holds it (as the shards do, with SO_REUSEPORT): a second claim fails, naming
        // the address, though a plain SO_REUSEPORT bind would have joined it.
        let held = super::ShardSockets::bind(&bound).unwrap();
        let err = super::claim_listen_addrs(&[(bound[0], udp)]).unwrap_err();
        assert_eq!(err.addr, bound[0]);
        assert!(err.to_string().contains("already in use"), "{err}");
        assert!(super::udp_socket(bound[0], true).is_ok());
        drop(held);
        assert_eq!(
            super::claim_listen_addrs(&[(bound[0], udp)]).unwrap(),
            bound
        );
        // TCP the same way: a listener of another server on the port is found.
        let tcp = crate::sip::Proto::Tcp;
        let bound = super::claim_listen_addrs(&[(any, tcp)]).unwrap();
        let held = super::tcp::tcp_listener(bound[0], true).unwrap();
        let err = super::claim_listen_addrs(&[(bound[0], tcp)]).unwrap_err();
        assert!(err.to_string().starts_with("tcp:"), "{err}");
        // A connection the server closed first leaves the port in TIME_WAIT: a restart may
        // claim it (a server restarted right after its phones' connections failed to start).
        {
            use std::io::Read;
            let mut client = std::net::TcpStream::connect(bound[0]).unwrap();
            let (server_side, _) = held.accept().unwrap();
            drop(server_side);
            let _ = client.read(&mut [0u8; 1]);
        }
        drop(held);
        assert_eq!(
            super::claim_listen_addrs(&[(bound[0], tcp)]).unwrap(),
            bound
        );
    }

    #[test]
    fn a_sleeping_shard_is_woken_once_and_a_busy_one_not_at_all() {
        let w = Waker::new().unwrap();
        assert!(!w.wake_if_sleeping());
        assert_eq!(pending(&w), 0);
        w.sleeping.store(true, Ordering::SeqCst);
        assert!(w.wake_if_sleeping());
        // Further hand-offs before the shard runs send no more wake-ups.
        assert!(!w.wake_if_sleeping());
        assert!(!w.wake_if_sleeping());
        assert_eq!(pending(&w), 1);
        // The next sleep can be woken again.
        w.sleeping.store(true, Ordering::SeqCst);
        assert!(w.wake_if_sleeping());
        assert_eq!(pending(&w), 1);
    }
}
