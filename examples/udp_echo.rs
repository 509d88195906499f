//! UDP echo: the kernel's cost floor for one datagram in and one out (perf/compare's
//! reference target). One thread, blocking std sockets: every datagram received is sent back
//! to its sender unchanged. No parsing, no allocation per datagram.
//!
//!   cargo run --release --example udp_echo -- 127.0.0.1:5070
//!
//! Prints the number of datagrams echoed when it gets a datagram that is exactly `STOP`
//! (perf/compare does not rely on that; it reads /proc).

use std::net::UdpSocket;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5070".into());
    let sock = UdpSocket::bind(&addr)?;
    let mut buf = [0u8; 65536];
    let mut n: u64 = 0;
    loop {
        let (len, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if &buf[..len] == b"STOP" {
            println!("echoed {n}");
            return Ok(());
        }
        // A full send buffer would block; loss here shows up as a SIPp retransmission.
        let _ = sock.send_to(&buf[..len], peer);
        n += 1;
    }
}
