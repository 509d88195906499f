//! The batched-syscall backend: `recvmmsg` into a per-shard pool of receive buffers and
//! `sendmmsg` of the whole outbox per socket, `epoll_wait` on the sockets and the waker's
//! eventfd when idle. After a wait only the sockets epoll reported are read, so an idle shard
//! woken by one datagram makes one receive call, not one per socket. All `unsafe` here is FFI
//! on buffers and descriptors this struct owns.

use super::sockaddr::{from_storage, to_storage};
use super::{RecvHandler, ShardSockets, Transport, TransportDrops, Waker, BATCH, MAX_DATAGRAM};
use crate::server::outbox::Outbox;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// recvmmsg/sendmmsg transport for one shard.
pub struct MmsgTransport {
    /// Owns the descriptors in `fds`; they close when the transport drops.
    _sockets: ShardSockets,
    fds: Vec<RawFd>,
    waker: Arc<Waker>,
    /// BATCH receive buffers of MAX_DATAGRAM bytes, back to back.
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
    send_iovs: Vec<libc::iovec>,
    send_addrs: Vec<libc::sockaddr_storage>,
    send_hdrs: Vec<libc::mmsghdr>,
    /// The epoll instance watching every socket (data = socket index) and the waker
    /// (data = WAKER_TOKEN).
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
    /// Control buffers of the receive headers: the kernel's receive timestamps.
    ctrl: Vec<[u64; CTRL_WORDS]>,
    /// Sockets epoll reported readable in the last wait (bit i = socket i); `None` when the
    /// last round did not sleep, so every socket is read.
    ready: Option<u64>,
    /// The last receive left a socket that kept delivering full batches.
    saturated: bool,
    /// Other shards' epoll sets the last wait reported ready ([`Transport::watch_shard`]).
    shards_ready: Vec<u32>,
    /// Datagrams dropped because they were larger than MAX_DATAGRAM or failed to send.
    pub truncated: u64,
    pub send_errors: u64,
    /// recvmmsg calls that failed (other than EAGAIN/EINTR).
    pub recv_errors: u64,
}

// SAFETY: the raw pointers inside iovec/mmsghdr point into buffers owned by this struct;
// the struct moves to its shard thread once and is only used there.
unsafe impl Send for MmsgTransport {}

/// Control buffer per received datagram, in u64 words (aligned for cmsghdr): room for one
/// SCM_TIMESTAMPNS (a cmsghdr and a timespec, 32 bytes) and more.
const CTRL_WORDS: usize = 8;

/// Asks the kernel for each datagram's receive time (SO_TIMESTAMPNS); false where refused.
fn enable_rx_timestamps(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// The SCM_TIMESTAMPNS of a received header's control data (CLOCK_REALTIME ns), if any.
pub(crate) fn rx_timestamp(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG_* walk stays within msg_control..msg_control + msg_controllen, which
    // the kernel filled (and which points at our control buffer); a timespec is read
    // unaligned from a cmsg of the right level, type and length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_TIMESTAMPNS
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32) as usize
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// epoll data of the waker's eventfd (sockets use their index).
const WAKER_TOKEN: u64 = u64::MAX;
/// The epoll token of a watched descriptor ([`Transport::watch`]).
const WATCH_TOKEN: u64 = u64::MAX - 1;
/// Epoll tokens of other shards' epoll sets ([`Transport::watch_shard`]): this plus the id.
const SHARD_TOKEN_BASE: u64 = 1 << 32;

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    unsafe { std::mem::zeroed() }
}

fn zeroed_hdr() -> libc::mmsghdr {
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

impl MmsgTransport {
    pub fn new(sockets: ShardSockets, waker: Arc<Waker>) -> io::Result<MmsgTransport> {
        let fds: Vec<RawFd> = sockets.sockets.iter().map(|s| s.as_raw_fd()).collect();
        if fds.len() > 64 {
            return Err(io::Error::other("more than 64 sockets per shard"));
        }
        // SAFETY: epoll_create1 has no memory-safety preconditions; we check the result.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ep is a fresh descriptor we own from here on.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let watched = fds
            .iter()
            .enumerate()
            .map(|(i, &fd)| (fd, i as u64))
            .chain([(waker.raw_fd(), WAKER_TOKEN)]);
        for (fd, token) in watched {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: both descriptors are open; ev is a valid epoll_event.
            if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for &fd in &fds {
            // Without it the latency starts when the shard reads the datagram.
            enable_rx_timestamps(fd);
        }
        let n_events = fds.len() + 1;
        let mut t = MmsgTransport {
            _sockets: sockets,
            fds,
            waker,
            bufs: vec![0u8; BATCH * MAX_DATAGRAM],
            iovs: Vec::with_capacity(BATCH),
            addrs: vec![zeroed_storage(); BATCH],
            hdrs: vec![zeroed_hdr(); BATCH],
            send_iovs: Vec::with_capacity(BATCH),
            send_addrs: vec![zeroed_storage(); BATCH],
            send_hdrs: vec![zeroed_hdr(); BATCH],
            epoll,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; n_events],
            ctrl: vec![[0u64; CTRL_WORDS]; BATCH],
            ready: None,
            saturated: false,
            shards_ready: Vec::new(),
            truncated: 0,
            send_errors: 0,
            recv_errors: 0,
        };
        let base = t.bufs.as_mut_ptr();
        for i in 0..BATCH {
            t.iovs.push(libc::iovec {
                // SAFETY: i * MAX_DATAGRAM is within the BATCH * MAX_DATAGRAM buffer.
                iov_base: unsafe { base.add(i * MAX_DATAGRAM) } as *mut libc::c_void,
                iov_len: MAX_DATAGRAM,
            });
        }
        t.send_iovs.resize(
            BATCH,
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
        );
        Ok(t)
    }

    /// One recvmmsg on socket `idx`; returns how many datagrams were handled.
    fn recv_once(&mut self, idx: usize, handler: &mut dyn RecvHandler) -> io::Result<usize> {
        for i in 0..BATCH {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = CTRL_WORDS * 8;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: hdrs holds BATCH initialised headers pointing at our own iovecs, buffers and
        // address storage, all alive for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                self.fds[idx],
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => {
                    self.recv_errors += 1;
                    Err(e)
                }
            };
        }
        let n = n as usize;
        for i in 0..n {
            let len = self.hdrs[i].msg_len as usize;
            if self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.truncated += 1;
                continue;
            }
            let Some(src) = from_storage(&self.addrs[i]) else {
                continue;
            };
            if let Some(ns) = rx_timestamp(&self.hdrs[i].msg_hdr) {
                handler.received_at(ns);
            }
            let data = &self.bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len];
            handler.datagram(data, src, idx);
        }
        if n > 0 {
            handler.batch_end();
        }
        Ok(n)
    }
}

impl Transport for MmsgTransport {
    fn poll_recv(&mut self, handler: &mut dyn RecvHandler) -> io::Result<usize> {
        let mut total = 0;
        let ready = self.ready.take().unwrap_or(u64::MAX);
        self.saturated = false;
        for idx in 0..self.fds.len() {
            if ready & (1 << idx) == 0 {
                continue;
            }
            // A few batches per socket per round keeps sockets fair and sends flowing.
            let mut emptied = false;
            for _ in 0..super::RECV_BATCHES {
                let n = self.recv_once(idx, handler)?;
                total += n;
                if n < BATCH {
                    emptied = true;
                    break;
                }
            }
            self.saturated |= !emptied;
        }
        Ok(total)
    }

    fn saturated(&self) -> bool {
        self.saturated
    }

    fn send(&mut self, out: &mut Outbox) -> io::Result<usize> {
        let mut sent = 0;
        let items = out.items();
        let mut i = 0;
        while i < items.len() {
            // A run of datagrams from the same socket, at most BATCH long.
            let sock = items[i].socket as usize;
            let mut n = 0;
            while i + n < items.len() && n < BATCH && items[i + n].socket as usize == sock {
                let d = &items[i + n];
                let bytes = out.bytes(d);
                self.send_iovs[n] = libc::iovec {
                    iov_base: bytes.as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len(),
                };
                let len = to_storage(&d.dst, &mut self.send_addrs[n]);
                let h = &mut self.send_hdrs[n];
                h.msg_hdr.msg_name = &mut self.send_addrs[n] as *mut _ as *mut libc::c_void;
                h.msg_hdr.msg_namelen = len;
                h.msg_hdr.msg_iov = &mut self.send_iovs[n];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
                n += 1;
            }
            let fd = self.fds.get(sock).copied().unwrap_or(self.fds[0]);
            let mut done = 0;
            while done < n {
                // SAFETY: send_hdrs[done..n] are initialised and point at the outbox's bytes
                // and our address storage, which outlive the call.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.send_hdrs.as_mut_ptr().add(done),
                        (n - done) as libc::c_uint,
                        0,
                    )
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // Skip the datagram that failed (e.g. unreachable destination).
                    self.send_errors += 1;
                    done += 1;
                } else {
                    done += r as usize;
                    sent += r as usize;
                }
            }
            i += n;
        }
        out.clear();
        Ok(sent)
    }

    fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        self.shards_ready.clear();
        // SAFETY: events is a valid, writable array of epoll_event of the given length.
        let r = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            self.ready = None;
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            return Ok(());
        }
        let mut ready = 0u64;
        for ev in &self.events[..r as usize] {
            let token = ev.u64;
            if token == WAKER_TOKEN {
                self.waker.drain();
            } else if token == WATCH_TOKEN {
                // The stream connections are polled every round anyway.
            } else if token >= SHARD_TOKEN_BASE {
                self.shards_ready.push((token - SHARD_TOKEN_BASE) as u32);
            } else {
                ready |= 1 << token;
            }
        }
        // A timeout or a wake-up alone reads no socket; the next round after a busy one
        // (ready = None) reads them all.
        self.ready = Some(ready);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "mmsg"
    }

    fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WATCH_TOKEN,
        };
        // SAFETY: both descriptors are open; ev is a valid epoll_event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        self.events.push(libc::epoll_event { events: 0, u64: 0 });
        Ok(())
    }

    fn drops(&self) -> TransportDrops {
        TransportDrops {
            truncated: self.truncated,
            send_errors: self.send_errors,
            recv_errors: self.recv_errors,
            no_buffers: 0,
        }
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn watch_shard(&mut self, fd: RawFd, id: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: SHARD_TOKEN_BASE + u64::from(id),
        };
        // SAFETY: both descriptors are open; ev is a valid epoll_event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        self.events.push(libc::epoll_event { events: 0, u64: 0 });
        Ok(())
    }

    fn watched_ready(&self) -> &[u32] {
        &self.shards_ready
    }

    fn nothing_ready(&mut self) {
        self.ready = Some(0);
    }

    fn unwatch_shard(&mut self, fd: RawFd) -> io::Result<()> {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL (Linux 2.6.9+).
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        if self.events.len() > self.fds.len() + 1 {
            self.events.pop();
        }
        self.shards_ready.clear();
        Ok(())
    }
}
