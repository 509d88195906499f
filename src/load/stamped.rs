//! Batched receive with kernel timestamps for the generator (`recvmmsg` with `SO_TIMESTAMPNS`):
//! a generator thread wakes once per tick and reads everything that arrived since, and the
//! latency it records is still the datagram's arrival time (the kernel's receive timestamp),
//! not the time the thread got to it. Sending stays with the engine's transport; this reads
//! duplicates of the same descriptors. All `unsafe` here is FFI on buffers and descriptors
//! this struct owns.

use crate::transport::sockaddr::from_storage;
use crate::transport::{BATCH, MAX_DATAGRAM};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Control buffer per datagram, in u64 words (aligned for the `cmsghdr` the CMSG macros read):
/// room for one `SCM_TIMESTAMPNS` (a `timespec`) with headroom.
const CONTROL: usize = 8;

pub struct StampedReceiver {
    fds: Vec<OwnedFd>,
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; CONTROL]>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams that did not fit.
    pub truncated: u64,
}

// SAFETY: the raw pointers inside iovec/mmsghdr point into buffers owned by this struct; it
// moves to its generator thread once and is only used there.
unsafe impl Send for StampedReceiver {}

impl StampedReceiver {
    /// Reads from duplicates of `fds` and turns on their receive timestamps.
    pub fn new(fds: &[RawFd]) -> io::Result<StampedReceiver> {
        let mut owned = Vec::new();
        for &fd in fds {
            // SAFETY: dup of a descriptor the caller keeps open; the copy is owned here.
            let d = unsafe { libc::dup(fd) };
            if d < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `d` was just returned by dup and is owned by nobody else.
            owned.push(unsafe { OwnedFd::from_raw_fd(d) });
            let on: libc::c_int = 1;
            // SAFETY: setsockopt with a valid int option value and its size.
            let r = unsafe {
                libc::setsockopt(
                    d,
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    &on as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut bufs = vec![0u8; BATCH * MAX_DATAGRAM];
        let iovs = (0..BATCH)
            .map(|i| libc::iovec {
                iov_base: bufs[i * MAX_DATAGRAM..].as_mut_ptr() as *mut libc::c_void,
                iov_len: MAX_DATAGRAM,
            })
            .collect();
        Ok(StampedReceiver {
            fds: owned,
            bufs,
            iovs,
            // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            controls: vec![[0u64; CONTROL]; BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            truncated: 0,
        })
    }

    /// Reads everything waiting on every socket; calls `f(data, source, socket, received)`
    /// with the kernel's receive time (CLOCK_REALTIME, ns; None without a timestamp).
    pub fn recv_all(
        &mut self,
        f: &mut impl FnMut(&[u8], SocketAddr, usize, Option<i128>),
    ) -> usize {
        let mut total = 0;
        for idx in 0..self.fds.len() {
            loop {
                let n = self.recv_once(idx, f);
                total += n;
                if n < BATCH {
                    break;
                }
            }
        }
        total
    }

    fn recv_once(
        &mut self,
        idx: usize,
        f: &mut impl FnMut(&[u8], SocketAddr, usize, Option<i128>),
    ) -> usize {
        for i in 0..BATCH {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = (CONTROL * 8) as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: hdrs holds BATCH initialised headers pointing at our own iovecs, buffers,
        // address storage and control buffers, all alive for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                self.fds[idx].as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return 0;
        }
        let n = n as usize;
        for i in 0..n {
            let hdr = &self.hdrs[i].msg_hdr;
            if hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.truncated += 1;
                continue;
            }
            let stamp = timestamp(hdr);
            let Some(src) = from_storage(&self.addrs[i]) else {
                continue;
            };
            let len = self.hdrs[i].msg_len as usize;
            f(
                &self.bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len],
                src,
                idx,
                stamp,
            );
        }
        n
    }
}

/// The `SCM_TIMESTAMPNS` of a received message, in ns since the epoch.
fn timestamp(hdr: &libc::msghdr) -> Option<i128> {
    crate::transport::mmsg::rx_timestamp(hdr).map(i128::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn a_datagram_read_late_carries_its_arrival_time() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut r = StampedReceiver::new(&[rx.as_raw_fd()]).unwrap();
        // Linux turns arrival stamping on through a deferred static key
        // (net_enable_timestamp): until that work has run, an unstamped
        // datagram gets the time it is read. Warm it up first.
        std::thread::sleep(Duration::from_millis(50));
        tx.send_to(b"warm", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        r.recv_all(&mut |_, _, _, _| {});
        let sent = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let mut got = Vec::new();
        let n = r.recv_all(&mut |data, src, socket, stamp| {
            got.push((data.to_vec(), src, socket, stamp));
        });
        let read = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert_eq!(n, 1);
        let (data, src, socket, stamp) = &got[0];
        assert_eq!(
            (data.as_slice(), *src, *socket),
            (&b"hello"[..], tx.local_addr().unwrap(), 0)
        );
        let stamp = stamp.expect("a kernel timestamp");
        // Stamped on arrival (right after the send), not when read 60 ms later.
        assert!(
            stamp >= sent - 1_000_000 && stamp < sent + 20_000_000,
            "{stamp} vs {sent}"
        );
        assert!(read - stamp >= 50_000_000);
    }
}
