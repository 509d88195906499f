//! Routing (sans-I/O): turns a request for our domain, its authenticated caller and the time
//! into a plan of targets that the proxy executes. The operator's dial plan (`spec.rs`, the
//! TOML sections) is compiled once, off the shards, into a [`DialPlan`] (`plan.rs`) that every
//! shard shares read-only: extensions, ring/hunt groups and paging numbers, normalisation
//! rules, routes by longest prefix (`prefix.rs`) with classes of service and weekly time
//! windows in IANA time zones (`window.rs`), least-cost ordering by per-trunk rates, and
//! emergency numbers that are always routed. Trunks are probed with OPTIONS (`health.rs`);
//! a trunk that misses its checks is skipped.
//!
//! Order of decision for a request to our domain (the proxy applies it): emergency numbers as
//! dialed, then users, extensions, groups and paging numbers, then normalisation and routes;
//! a number that matches nothing gets 404, a route the caller's classes do not allow 403.

pub mod health;
pub mod plan;
pub mod prefix;
pub mod spec;
pub mod window;

pub use health::TrunkChecker;
pub use plan::{Caller, DialPlan, Group, Local, PlanMemory, RouteDecision, Strategy, TrunkRoute};
pub use spec::DialPlanSpec;
