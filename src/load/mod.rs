//! The load generator (`sipshard load SCENARIO TARGET [options]`): open-loop SIP load at a
//! fixed rate or in ramp steps, from many source ports, with RFC 3261 retransmissions,
//! counted, and per-exchange latency in µs. `spec.rs` is what a run does, `engine.rs` one
//! thread's calls (sans-I/O), `report.rs` the results, `run.rs` the command line and threads.

pub mod engine;
pub mod report;
pub mod run;
pub mod spec;
pub mod stamped;
