//! SIP transactions (RFC 3261 §17 with the INVITE fixes of RFC 6026), sans-I/O.
//!
//! The four state machines ([`ServerInviteTxn`], [`ServerNonInviteTxn`], [`ClientInviteTxn`],
//! [`ClientNonInviteTxn`]) take inputs with the current time in milliseconds and push
//! [`Action`]s: bytes to send, timers to arm or disarm, events for the transaction user.
//! They never read a clock or touch a socket. [`TransactionTable`] owns a shard's
//! transactions, matches messages to them by [`ServerKey`] / [`ClientKey`], runs all their
//! timers on one timer wheel and turns actions into [`TxnOut`]s with a destination.
//!
//! Unreliable transports (UDP) retransmit; with `reliable = true` (TCP, TLS) the
//! retransmission timers A, E, G are not armed and the wait timers D, I, J, K are zero
//! (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).

pub mod client;
pub mod key;
pub mod server;
mod slab;
pub mod table;
pub mod timers;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use client::{build_ack, ClientEvent, ClientInviteTxn, ClientNonInviteTxn, ClientState};
pub use key::{invite_key_for_cancel, ClientKey, KeyError, ServerKey};
pub use server::{AckOutcome, RespondError, ServerInviteTxn, ServerNonInviteTxn, ServerState};
pub use table::{ClientTxnId, Match, ServerTxnId, TransactionTable, TxnError, TxnEvent, TxnOut};
pub use timers::{Timer, TimerSlots, TxnConfig};

/// Bytes a transaction sends and keeps for retransmission. `Arc` rather than `Rc` so a shard's
/// table can be built before its thread starts; the count is touched once per send.
pub type Bytes = Arc<[u8]>;

thread_local! {
    static EMPTY: Bytes = Arc::from(&[][..]);
}

/// An empty [`Bytes`], shared (no allocation): what a transaction keeps in place of bytes it
/// will never send again, so that the call's memory goes back while the transaction lingers
/// for its timers (a call's transactions outlive it by up to 64*T1).
pub fn empty_bytes() -> Bytes {
    EMPTY.with(Bytes::clone)
}

/// What a state machine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes to the transaction's destination.
    Send(Bytes),
    /// Arm the timer to fire at `at_ms` (replacing an earlier arming of it).
    Arm(Timer, u64),
    /// The timer is no longer needed (firings after this are ignored anyway).
    Disarm(Timer),
    /// Tell the TU: the transaction timed out (Timer B, F or H).
    Timeout,
    /// Tell the TU: the transport failed to send (§17.1.4, §17.2.4).
    TransportError,
    /// The transaction is over: drop it.
    Terminated,
}
