//! sipshard: a thread-per-core SIP server.
//!
//! The protocol core (`sip`, `txn`, `server`, `proxy`, `registrar`, `auth`, `nat`, `stats`) is
//! sans-I/O: it takes bytes, a source address and the current time, and returns what to send
//! and which timers to arm. Only `shard` and `transport` touch sockets, threads and clocks;
//! `config` maps the TOML file and the flags onto the core's settings types, and `metrics`
//! serves the core's counters over HTTP.

pub mod admin;
pub mod auth;
pub mod cdr;
pub mod config;
pub mod load;
pub mod metrics;
pub mod nat;
pub mod proxy;
pub mod registrar;
pub mod responder;
pub mod routing;
pub mod security;
pub mod server;
pub mod shard;
pub mod sip;
pub mod stats;
pub mod store;
pub mod timer;
pub mod transport;
pub mod txn;
