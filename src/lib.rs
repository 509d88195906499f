//! sipshard: a thread-per-core SIP server.
//!
//! The protocol core (`sip`, and later `txn`, `proxy`, `registrar`, `auth`) is sans-I/O: it
//! takes bytes, a source address and the current time, and returns what to send and which
//! timers to arm. Only `shard` and `transport` touch sockets, threads and clocks.

pub mod registrar;
pub mod sip;
pub mod timer;
