//! The io_uring backend: one ring per shard, one multishot `recvmsg` per socket drawing from a
//! provided buffer ring, a multishot poll on the waker's eventfd, and sends batched as one SQE
//! per datagram (`Send` with a destination address on 6.1+ rings, else `SendMsg`) submitted
//! with a single `io_uring_enter` per 128 datagrams, whose completions are reaped before `send`
//! returns. The sockets are registered files where the kernel allows.
//!
//! Ring set-up: `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG` where the kernel has them (6.1+).
//! Such a ring belongs to the thread that enables it, while `UringTransport::new` runs on the
//! thread that starts the server; so the ring is created with `R_DISABLED` and enabled on first
//! use, on the shard thread. Older kernels get `COOP_TASKRUN | TASKRUN_FLAG`, then plain flags;
//! in those modes `new` arms the multishot receives at once, so a kernel without multishot
//! `recvmsg` is detected there and the shard falls back to recvmmsg/sendmmsg.
//!
//! Receive buffers: 256 per shard of `BUF_SIZE` (64 KiB + 64 B) bytes each, so that any UDP
//! datagram (up to 65,535 bytes, as the mmsg backend accepts) fits together with the 16-byte
//! `io_uring_recvmsg_out` header and the source address; nothing is truncated that mmsg would
//! take. The 16 MiB per shard is an anonymous `MAP_NORESERVE` mapping: only the pages the kernel
//! writes are ever backed, which for SIP (a few hundred bytes to a few KiB) is one or two pages
//! per buffer, ~1-2 MiB resident per shard. 256 buffers let 256 datagrams queue between two
//! turns of the shard loop; beyond that the multishot ends with `ENOBUFS`, the datagrams wait in
//! the socket buffer (not lost) and the receive is re-armed once buffers are back.

use super::sockaddr::{from_storage, to_storage};
use super::{RecvHandler, ShardSockets, Transport, TransportDrops, Waker, BATCH, MAX_DATAGRAM};
use crate::server::outbox::Outbox;
use io_uring::types::{Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// Submission queue entries (the completion queue is `CQ_ENTRIES`).
const SQ_ENTRIES: u32 = 256;
const CQ_ENTRIES: u32 = 1024;
/// Provided receive buffers per shard (a power of two, as the buffer ring requires).
const NBUFS: u16 = 256;
/// Buffer group id of the receive buffers.
const BGID: u16 = 0;
/// Room for the source address in each buffer (IPv4 and IPv6 both fit).
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// `io_uring_recvmsg_out` that precedes the name and payload in each buffer.
const OUT_HDR_LEN: usize = 16;
/// One receive buffer: header, name, the largest UDP payload, rounded up to 64 bytes.
const BUF_SIZE: usize = (OUT_HDR_LEN + NAME_LEN + MAX_DATAGRAM + 63) & !63;
/// Datagrams sent per `io_uring_enter` (leaves SQ room for re-arming the receives).
const SEND_CHUNK: usize = 128;

const TAG_MASK: u64 = 0xffff_ffff << 32;
const TAG_RECV: u64 = 1 << 32;
const TAG_WAKE: u64 = 2 << 32;
/// The multishot poll on a watched descriptor ([`Transport::watch`]).
const TAG_WATCH: u64 = 4 << 32;
const TAG_SEND: u64 = 3 << 32;

/// An anonymous private mapping (page-aligned, zeroed, backed only where written).
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

impl Region {
    fn new(len: usize) -> io::Result<Region> {
        // SAFETY: a fresh anonymous mapping touches no existing memory; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region {
            ptr: NonNull::new(p as *mut u8).expect("mmap returned null"),
            len,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no reference into it survives
        // (UringTransport drops the ring, and so cancels every request, before its regions).
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// `struct io_uring_buf`: one entry of the provided buffer ring. The ring's tail is the `resv`
/// field of entry 0.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}
const _: () = assert!(std::mem::size_of::<BufEntry>() == 16);

/// io_uring transport for one shard.
pub struct UringTransport {
    // Field order matters: the ring is dropped (closing it) before the memory it refers to.
    ring: IoUring,
    /// NBUFS receive buffers of BUF_SIZE bytes.
    bufs: Region,
    /// The provided buffer ring (NBUFS entries, one page).
    buf_ring: Region,
    /// Our copy of the buffer ring tail (published with a release store).
    buf_tail: u16,
    /// Template for the multishot receives: only msg_namelen/msg_controllen matter.
    recv_hdr: Box<libc::msghdr>,
    sockets: ShardSockets,
    fds: Vec<RawFd>,
    waker: Arc<Waker>,
    /// Per socket: its multishot receive has ended and must be submitted again.
    recv_unarmed: Vec<bool>,
    wake_unarmed: bool,
    /// A descriptor whose readiness also ends `wait` ([`Transport::watch`]).
    watched: Option<std::os::fd::RawFd>,
    watch_unarmed: bool,
    /// Ring created with R_DISABLED: enabled (and armed) on first use by the shard thread.
    disabled: bool,
    /// The sockets are registered files (no fd lookup per operation); index = socket index.
    fixed_files: bool,
    /// Sends use IORING_OP_SEND with a destination address (kernel 6.1+, so only with the
    /// DEFER_TASKRUN set-up, itself 6.1+); otherwise IORING_OP_SENDMSG.
    send_with_addr: bool,
    /// Which ring set-up the kernel accepted (for logs).
    setup: &'static str,
    started: bool,
    /// The ring failed in a way that leaves it unusable: every call reports an error.
    broken: bool,
    /// Completions reaped but not yet handled (user_data, result, flags).
    cqes: Vec<(u64, i32, u32)>,
    send_iovs: Vec<libc::iovec>,
    send_addrs: Vec<libc::sockaddr_storage>,
    send_lens: Vec<libc::socklen_t>,
    send_hdrs: Vec<libc::msghdr>,
    /// The last receive kept getting full batches up to its cap.
    saturated: bool,
    /// Datagrams dropped because they did not fit a buffer, failed to send, or receive errors.
    pub truncated: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    /// Times a multishot receive ended because every buffer was in use.
    pub no_buffers: u64,
}

// SAFETY: the raw pointers (msghdr, iovec, mappings) point into memory owned by this struct;
// the struct moves to its shard thread once and is only used there.
unsafe impl Send for UringTransport {}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    unsafe { std::mem::zeroed() }
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// The ring set-ups to try, best first: (name, builder, created disabled).
fn builders() -> Vec<(&'static str, io_uring::Builder, bool)> {
    let mut defer = IoUring::builder();
    defer
        .setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_r_disabled();
    let mut coop = IoUring::builder();
    coop.setup_cqsize(CQ_ENTRIES)
        .setup_coop_taskrun()
        .setup_taskrun_flag();
    let mut plain = IoUring::builder();
    plain.setup_cqsize(CQ_ENTRIES);
    vec![
        ("defer_taskrun", defer, true),
        ("coop_taskrun", coop, false),
        ("plain", plain, false),
    ]
}

fn create_ring(basic: bool) -> io::Result<(IoUring, bool, &'static str)> {
    let mut last = io::Error::new(io::ErrorKind::Unsupported, "no io_uring set-up tried");
    let skip = if basic { 1 } else { 0 };
    for (name, b, disabled) in builders().into_iter().skip(skip) {
        match b.build(SQ_ENTRIES) {
            Ok(ring) => return Ok((ring, disabled, name)),
            // ENOSYS/EPERM (no io_uring, seccomp, io_uring_disabled) will not change with flags.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                return Err(e)
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ETIME)
    )
}

impl UringTransport {
    /// Returns the sockets back with the reason when io_uring cannot be used.
    #[allow(clippy::result_large_err)]
    pub fn new(
        sockets: ShardSockets,
        waker: Arc<Waker>,
    ) -> Result<UringTransport, (ShardSockets, io::Error)> {
        Self::with_setup(sockets, waker, false)
    }

    /// As `new`, but with the pre-6.1 set-ups only (COOP_TASKRUN or plain flags, SendMsg):
    /// lets the tests cover the fallback path on a recent kernel.
    #[doc(hidden)]
    #[allow(clippy::result_large_err)]
    pub fn new_basic(
        sockets: ShardSockets,
        waker: Arc<Waker>,
    ) -> Result<UringTransport, (ShardSockets, io::Error)> {
        Self::with_setup(sockets, waker, true)
    }

    #[allow(clippy::result_large_err)]
    fn with_setup(
        sockets: ShardSockets,
        waker: Arc<Waker>,
        basic: bool,
    ) -> Result<UringTransport, (ShardSockets, io::Error)> {
        let (ring, disabled, setup) = match create_ring(basic) {
            Ok(r) => r,
            Err(e) => return Err((sockets, e)),
        };
        if !ring.params().is_feature_ext_arg() {
            let e = io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_EXT_ARG (kernel < 5.11)",
            );
            return Err((sockets, e));
        }
        let (bufs, buf_ring) = match (
            Region::new(BUF_SIZE * NBUFS as usize),
            Region::new(NBUFS as usize * std::mem::size_of::<BufEntry>()),
        ) {
            (Ok(b), Ok(r)) => (b, r),
            (Err(e), _) | (_, Err(e)) => return Err((sockets, e)),
        };
        // SAFETY: buf_ring is a page-aligned mapping of NBUFS entries that lives as long as
        // the ring (the ring field is dropped first, see the struct).
        let reg = unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buf_ring.ptr.as_ptr() as u64,
                NBUFS,
                BGID,
                0,
            )
        };
        if let Err(e) = reg {
            return Err((sockets, e));
        }
        let mut recv_hdr = Box::new(zeroed_msghdr());
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let fds: Vec<RawFd> = sockets.sockets.iter().map(|s| s.as_raw_fd()).collect();
        let n = fds.len();
        // Optional: without it every operation looks the socket up by fd.
        let fixed_files = ring.submitter().register_files(&fds).is_ok();
        let mut t = UringTransport {
            ring,
            bufs,
            buf_ring,
            buf_tail: 0,
            recv_hdr,
            sockets,
            fds,
            waker,
            recv_unarmed: vec![true; n],
            wake_unarmed: true,
            watched: None,
            watch_unarmed: false,
            disabled,
            fixed_files,
            send_with_addr: setup == "defer_taskrun",
            setup,
            started: false,
            broken: false,
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
            send_iovs: Vec::with_capacity(SEND_CHUNK),
            send_addrs: Vec::with_capacity(SEND_CHUNK),
            send_lens: Vec::with_capacity(SEND_CHUNK),
            send_hdrs: Vec::with_capacity(SEND_CHUNK),
            saturated: false,
            truncated: 0,
            send_errors: 0,
            recv_errors: 0,
            no_buffers: 0,
        };
        for bid in 0..NBUFS {
            t.recycle(bid);
        }
        t.publish_buffers();
        if !disabled {
            // Not bound to a thread: arm now, so a kernel without multishot recvmsg (< 6.0)
            // shows up here as an immediate EINVAL completion.
            if let Err(e) = t.start() {
                return Err((t.into_sockets(), e));
            }
            t.reap();
            if let Some(&(_, res, _)) = t
                .cqes
                .iter()
                .find(|c| c.0 & TAG_MASK == TAG_RECV && c.1 == -libc::EINVAL)
            {
                let e = io::Error::from_raw_os_error(-res);
                return Err((t.into_sockets(), e));
            }
        }
        tracing::debug!(
            setup,
            fixed_files = t.fixed_files,
            send_with_addr = t.send_with_addr,
            "io_uring transport ready"
        );
        Ok(t)
    }

    /// The ring set-up in use: "defer_taskrun", "coop_taskrun" or "plain".
    pub fn setup(&self) -> &'static str {
        self.setup
    }

    /// Gives the sockets back (the ring is closed, then the buffers unmapped, on drop).
    fn into_sockets(mut self) -> ShardSockets {
        let empty = ShardSockets {
            sockets: Vec::new(),
            local: Vec::new(),
        };
        std::mem::replace(&mut self.sockets, empty)
    }

    /// Local addresses of the sockets, in the core's order.
    pub fn local_addrs(&self) -> &[std::net::SocketAddr] {
        &self.sockets.local
    }

    /// Enables the ring on the calling (shard) thread and arms the receives and the waker.
    fn start(&mut self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "io_uring ring unusable after an earlier error",
            ));
        }
        if self.started {
            return Ok(());
        }
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
        }
        self.started = true;
        self.arm()?;
        self.submit()
    }

    /// Queues the multishot operations that have ended.
    fn arm(&mut self) -> io::Result<()> {
        for idx in 0..self.fds.len() {
            if self.recv_unarmed[idx] {
                let hdr: *const libc::msghdr = &*self.recv_hdr;
                let sqe = if self.fixed_files {
                    opcode::RecvMsgMulti::new(types::Fixed(idx as u32), hdr, BGID).build()
                } else {
                    opcode::RecvMsgMulti::new(Fd(self.fds[idx]), hdr, BGID).build()
                }
                .user_data(TAG_RECV | idx as u64);
                self.push(&sqe)?;
                self.recv_unarmed[idx] = false;
            }
        }
        if self.wake_unarmed {
            let sqe = opcode::PollAdd::new(Fd(self.waker.raw_fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(TAG_WAKE);
            self.push(&sqe)?;
            self.wake_unarmed = false;
        }
        if let (Some(fd), true) = (self.watched, self.watch_unarmed) {
            let sqe = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(TAG_WATCH);
            self.push(&sqe)?;
            self.watch_unarmed = false;
        }
        Ok(())
    }

    /// Queues one SQE, submitting first if the submission queue is full.
    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every SQE built here points only at memory owned by self that outlives
            // the operation: recv_hdr and the buffer mappings for the ring's lifetime, the send
            // sockaddr (and msghdr/iovec) vectors and the outbox bytes until `send` has reaped
            // the completions.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Submits what is queued (retrying transient errors).
    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submitter().submit() {
                Ok(_) => return Ok(()),
                Err(e) if transient(&e) => {
                    // EBUSY: completions are backed up; make room.
                    self.reap();
                }
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
    }

    /// Moves every completion out of the CQ into `self.cqes`.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
    }

    /// Enters the kernel only when it has something for us: SQEs to submit, or deferred task
    /// work (IORING_SQ_TASKRUN) that will post completions.
    fn flush(&mut self) -> io::Result<()> {
        let sq = self.ring.submission();
        let needed = !sq.is_empty() || sq.taskrun() || sq.cq_overflow();
        drop(sq);
        if needed {
            self.submit()?;
        }
        Ok(())
    }

    /// Puts buffer `bid` back at the tail of the buffer ring (visible after publish_buffers).
    fn recycle(&mut self, bid: u16) {
        let slot = (self.buf_tail & (NBUFS - 1)) as usize;
        let addr = self.bufs.ptr.as_ptr() as u64 + bid as u64 * BUF_SIZE as u64;
        let e = self.buf_ring.ptr.as_ptr() as *mut BufEntry;
        // SAFETY: slot < NBUFS, so the entry is inside the buf_ring mapping. We hold buffer
        // bid, so fewer than NBUFS buffers are in the ring and the slot at our tail is not one
        // the kernel may read (it reads only between its head and the published tail). The
        // tail (entry 0's resv) is not written here.
        unsafe {
            let e = e.add(slot);
            std::ptr::addr_of_mut!((*e).addr).write(addr);
            std::ptr::addr_of_mut!((*e).len).write(BUF_SIZE as u32);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.buf_tail = self.buf_tail.wrapping_add(1);
    }

    /// Makes the recycled buffers available to the kernel.
    fn publish_buffers(&self) {
        let p = self.buf_ring.ptr.as_ptr() as *const BufEntry;
        // SAFETY: the ring tail is the u16 `resv` field of entry 0, 2-byte aligned, inside the
        // mapping, and shared with the kernel, so it is only accessed atomically.
        let tail = unsafe { &*(std::ptr::addr_of!((*p).resv) as *const AtomicU16) };
        tail.store(self.buf_tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let bid = bid.min(NBUFS - 1) as usize;
        // SAFETY: the range lies inside the bufs mapping (bid < NBUFS, len <= BUF_SIZE); the
        // kernel handed this buffer to us in a completion and writes it no more until it is
        // recycled, which needs &mut self and so cannot happen while this borrow lives.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.ptr.as_ptr().add(bid * BUF_SIZE),
                len.min(BUF_SIZE),
            )
        }
    }

    /// Handles the reaped completions; returns the datagrams received.
    fn handle_cqes(&mut self, handler: &mut dyn RecvHandler, err: &mut Option<io::Error>) -> usize {
        let mut n = 0;
        let mut cqes = std::mem::take(&mut self.cqes);
        for &(ud, res, flags) in &cqes {
            let more = cqueue::more(flags);
            match ud & TAG_MASK {
                TAG_RECV => {
                    let idx = (ud & 0xffff_ffff) as usize;
                    if !more && idx < self.recv_unarmed.len() {
                        self.recv_unarmed[idx] = true;
                    }
                    let bid = cqueue::buffer_select(flags);
                    if res >= 0 {
                        if let Some(bid) = bid {
                            n += 1;
                            self.deliver(bid, res as usize, idx, handler);
                        }
                    } else if res == -libc::ENOBUFS {
                        self.no_buffers += 1;
                    } else if res != -libc::ECANCELED {
                        self.recv_errors += 1;
                        *err = Some(io::Error::from_raw_os_error(-res));
                    }
                    if let Some(bid) = bid {
                        self.recycle(bid);
                    }
                }
                TAG_WAKE => {
                    self.waker.drain();
                    if !more {
                        self.wake_unarmed = true;
                    }
                }
                // The stream connections are polled every round anyway: only re-arm.
                TAG_WATCH if !more => self.watch_unarmed = true,
                // Late send completions cannot occur (send reaps its own); ignore anything else.
                _ => {}
            }
        }
        self.publish_buffers();
        cqes.clear();
        self.cqes = cqes;
        n
    }

    /// Parses one multishot recvmsg result and hands the datagram to the handler.
    fn deliver(&mut self, bid: u16, len: usize, idx: usize, handler: &mut dyn RecvHandler) {
        let buf = self.buffer(bid, len);
        let Ok(msg) = RecvMsgOut::parse(buf, &self.recv_hdr) else {
            self.recv_errors += 1;
            return;
        };
        if msg.is_payload_truncated() || msg.is_name_data_truncated() {
            self.truncated += 1;
            return;
        }
        let name = msg.name_data();
        let mut ss = zeroed_storage();
        let n = name
            .len()
            .min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: copies n <= size_of(sockaddr_storage) bytes into the local storage.
        unsafe {
            std::ptr::copy_nonoverlapping(name.as_ptr(), &mut ss as *mut _ as *mut u8, n);
        }
        if let Some(src) = from_storage(&ss) {
            handler.datagram(msg.payload_data(), src, idx);
        }
    }
}

impl Drop for UringTransport {
    fn drop(&mut self) {
        if self.started && !self.broken {
            // Cancel the multishot operations synchronously so the kernel is done with the
            // buffers before they are unmapped (closing the ring alone cancels asynchronously).
            let _ = self.ring.submitter().register_sync_cancel(
                Some(Timespec::new().sec(1)),
                types::CancelBuilder::any().all(),
            );
        }
    }
}

impl Transport for UringTransport {
    fn poll_recv(&mut self, handler: &mut dyn RecvHandler) -> io::Result<usize> {
        self.start()?;
        let mut total = 0;
        let mut err = None;
        // A few rounds, like mmsg's few batches per socket, while datagrams keep coming.
        self.saturated = true;
        for _ in 0..crate::transport::RECV_BATCHES {
            self.arm()?;
            self.flush()?;
            self.reap();
            if self.cqes.is_empty() {
                self.saturated = false;
                break;
            }
            let n = self.handle_cqes(handler, &mut err);
            if n > 0 {
                handler.batch_end();
            }
            total += n;
            if n < BATCH {
                self.saturated = false;
                break;
            }
        }
        match err {
            Some(e) if total == 0 => Err(e),
            _ => Ok(total),
        }
    }

    fn saturated(&self) -> bool {
        self.saturated
    }

    fn send(&mut self, out: &mut Outbox) -> io::Result<usize> {
        self.start()?;
        let mut sent = 0;
        let items = out.items();
        for chunk in items.chunks(SEND_CHUNK) {
            let n = chunk.len();
            // Size the vectors first: the pointers taken below must not move.
            self.send_addrs.clear();
            self.send_addrs.resize(n, zeroed_storage());
            self.send_lens.clear();
            for (i, d) in chunk.iter().enumerate() {
                let len = to_storage(&d.dst, &mut self.send_addrs[i]);
                self.send_lens.push(len);
            }
            if !self.send_with_addr {
                self.send_iovs.clear();
                self.send_iovs.resize(
                    n,
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    },
                );
                self.send_hdrs.clear();
                self.send_hdrs.resize(n, zeroed_msghdr());
                for (i, d) in chunk.iter().enumerate() {
                    let bytes = out.bytes(d);
                    self.send_iovs[i] = libc::iovec {
                        iov_base: bytes.as_ptr() as *mut libc::c_void,
                        iov_len: bytes.len(),
                    };
                    let h = &mut self.send_hdrs[i];
                    h.msg_name = &mut self.send_addrs[i] as *mut _ as *mut libc::c_void;
                    h.msg_namelen = self.send_lens[i];
                    h.msg_iov = &mut self.send_iovs[i];
                    h.msg_iovlen = 1;
                }
            }
            for (i, d) in chunk.iter().enumerate() {
                let idx = if (d.socket as usize) < self.fds.len() {
                    d.socket as usize
                } else {
                    0
                };
                let sqe = if self.send_with_addr {
                    // IORING_OP_SEND with a destination (6.1+): no msghdr/iovec to import.
                    let bytes = out.bytes(d);
                    let addr = &self.send_addrs[i] as *const _ as *const libc::sockaddr;
                    let len = self.send_lens[i];
                    let (buf, blen) = (bytes.as_ptr(), bytes.len() as u32);
                    if self.fixed_files {
                        opcode::Send::new(types::Fixed(idx as u32), buf, blen)
                            .dest_addr(addr)
                            .dest_addr_len(len)
                            .build()
                    } else {
                        opcode::Send::new(Fd(self.fds[idx]), buf, blen)
                            .dest_addr(addr)
                            .dest_addr_len(len)
                            .build()
                    }
                } else if self.fixed_files {
                    opcode::SendMsg::new(types::Fixed(idx as u32), &self.send_hdrs[i]).build()
                } else {
                    opcode::SendMsg::new(Fd(self.fds[idx]), &self.send_hdrs[i]).build()
                };
                self.push(&sqe.user_data(TAG_SEND | i as u64))?;
            }
            // Wait for every send of the chunk: the outbox bytes and the msghdrs must stay
            // put until the kernel is done with them. UDP sends complete inline, so this is
            // normally the same io_uring_enter that submits them.
            let mut inflight = n;
            while inflight > 0 {
                match self.ring.submitter().submit_and_wait(inflight) {
                    Ok(_) => {}
                    Err(e) if transient(&e) => {}
                    Err(e) => {
                        // The ring no longer takes calls, so nothing queued is submitted
                        // later with stale pointers.
                        self.broken = true;
                        out.clear();
                        return Err(e);
                    }
                }
                for cqe in self.ring.completion() {
                    let ud = cqe.user_data();
                    if ud & TAG_MASK == TAG_SEND {
                        inflight -= 1;
                        if cqe.result() < 0 {
                            self.send_errors += 1;
                        } else {
                            sent += 1;
                        }
                    } else {
                        self.cqes.push((ud, cqe.result(), cqe.flags()));
                    }
                }
            }
        }
        out.clear();
        Ok(sent)
    }

    fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        self.start()?;
        if !self.cqes.is_empty() || !self.ring.completion().is_empty() {
            return Ok(());
        }
        self.arm()?;
        let r = if timeout_ms < 0 {
            self.ring.submitter().submit_and_wait(1)
        } else {
            let ms = timeout_ms as u64;
            let ts = Timespec::new()
                .sec(ms / 1000)
                .nsec((ms % 1000) as u32 * 1_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn name(&self) -> &'static str {
        "uring"
    }

    fn watch(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
        self.watched = Some(fd);
        self.watch_unarmed = true;
        Ok(())
    }

    fn drops(&self) -> TransportDrops {
        TransportDrops {
            truncated: self.truncated,
            send_errors: self.send_errors,
            recv_errors: self.recv_errors,
            no_buffers: self.no_buffers,
        }
    }
}
