//! Timers for the sans-I/O core. Nothing here reads a clock: callers pass `now_ms`, ask for the
//! next deadline and sleep until it themselves.
//!
//! - [`wheel`]: a hashed timer wheel with O(1) insert and cancel, used per shard for
//!   registration expiry (RFC 3261 §10.2.1 / §10.3 step 7) and later transaction timers
//!   (RFC 3261 §17).

pub mod wheel;

pub use wheel::{TimerKey, TimerWheel};
