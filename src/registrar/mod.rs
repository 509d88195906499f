//! The registrar (RFC 3261 §10.3) and location service of one shard. The engine routes each
//! REGISTER to the shard that owns its AOR; [`Registrar::handle_register`] applies it and
//! writes the response, [`Registrar::lookup`] gives the proxy the current contacts, and
//! [`Registrar::poll_expired`] / [`Registrar::next_timeout`] drive binding expiry from the
//! caller's clock.
//!
//! - `binding`: one contact and what is stored with it (compact: one allocation each);
//! - `aor`: the record of an address-of-record;
//! - `table`: the shard's table, lookups and expiry;
//! - `register`: REGISTER processing, §10.3 steps 5-8, RFC 3327 Path, RFC 5626 reg-id;
//! - `response`: the responses;
//! - `config`, `outcome`: settings and results.

mod aor;
mod binding;
mod config;
mod outcome;
mod register;
pub mod remote;
mod response;
mod table;
#[cfg(test)]
mod tests;

pub use binding::{Binding, BindingFields, FieldTooLong, PathIter, DEFAULT_Q};

/// One binding as the admin API lists it (`sipshard ctl registrations`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    pub aor: String,
    pub contact: String,
    /// Seconds left.
    pub expires: u32,
    /// q-value in thousandths.
    pub q: u16,
    /// Where the REGISTER came from.
    pub source: String,
    /// Reached at `source` (the UA is behind a NAT or registered an outbound flow).
    pub nat: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reg_id: Option<u32>,
    pub call_id: String,
    pub shard: usize,
    /// The node of a cluster that registered it (absent: this one; `--store`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<String>,
}
pub use config::{RegistrarConfig, RegistrarSettings};
pub use outcome::{RegisterError, RegisterOutcome};
pub use register::{Flow, ResponseCtx};
pub use remote::{RemoteChange, RemoteSet};
pub use response::write_qvalue;
pub use table::{Registrar, EXPIRY_SLOTS, EXPIRY_TICK_MS};
