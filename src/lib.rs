//! sipshard: a thread-per-core SIP server.
//!
//! The protocol core (`sip`, `server`, `registrar`, `auth`) is sans-I/O: it takes bytes, a
//! source address and the current time, and returns what to send and which timers to arm.
//! Only `shard` and `transport` touch sockets, threads and clocks.

pub mod auth;
pub mod config;
pub mod metrics;
pub mod nat;
pub mod proxy;
pub mod registrar;
pub mod server;
pub mod shard;
pub mod sip;
pub mod timer;
pub mod transport;
pub mod txn;
