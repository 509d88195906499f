//! The per-shard transaction table (RFC 3261 §17.1.3 and §17.2.3 matching, §17 lifetimes):
//! server and client transactions in slabs indexed by hashbrown maps from their keys, and one
//! [`TimerWheel`] for all their timers.
//!
//! Timers are cancelled lazily: the wheel holds (side, slot index, slot generation, timer);
//! a firing for a removed transaction misses on the generation and one for a disarmed or
//! re-armed timer is ignored by the machine's [`super::TimerSlots`]. A transaction is
//! removed as soon as its machine reports `Terminated`.
//!
//! Memory per transaction (64-bit): the slab entry plus the map entry plus the key's heap
//! bytes plus the stored messages. Measured by the `memory_per_transaction` test: a server
//! slab slot is 116 bytes and a client slot 124 (the entry with its key box, machine, 32-byte
//! `SocketAddr` and socket index, plus the slot generation); a map entry 24 bytes (the key's
//! 16-byte box and the u32 index) plus one control byte; a key 20-90 heap bytes (RFC 3261
//! server keys: 5 + method + branch + host; client keys: 2 + method + branch, 17 + branch);
//! the last response (server) or the request and, after a non-2xx, the ACK (client) are
//! `Arc<[u8]>` with a 16-byte header. A UDP INVITE server transaction holding a 400-byte
//! final response thus takes about 116 + 25 + 60 + 416 ≈ 620 bytes, a client INVITE
//! transaction with a 1000-byte request and its 350-byte ACK about 124 + 25 + 33 + 1016 +
//! 366 ≈ 1560 bytes; plus a 32-byte wheel entry per armed timer until it fires.

use std::net::SocketAddr;

use hashbrown::HashMap;

use super::client::{ClientEvent, ClientInviteTxn, ClientNonInviteTxn, ClientState};
use super::key::{write_invite_key_for_cancel, ClientKey, KeyError, ServerKey};
use super::server::{AckOutcome, RespondError, ServerInviteTxn, ServerNonInviteTxn, ServerState};
use super::slab::Slab;
use super::timers::{Timer, TxnConfig};
use super::{Action, Bytes};
use crate::sip::{Message, Method};
use crate::timer::TimerWheel;

/// Granularity of the transaction wheel: deadlines are exact, this only sets bucket sharing.
const TICK_MS: u64 = 10;
/// Buckets: 4096 × 10 ms spans 41 s, longer than 64*T1 with the default T1.
const SLOTS: usize = 4096;

/// A server transaction in the table; stale after the transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerTxnId {
    index: u32,
    generation: u32,
}

/// A client transaction in the table; stale after the transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientTxnId {
    index: u32,
    generation: u32,
}

/// Events for the transaction user that are not answers to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEvent {
    /// Timer B or F (client: the TU answers 408) or H (server: no ACK came).
    Timeout,
    /// The transport reported a failure (§17.1.4, §17.2.4).
    TransportError,
    /// The transaction ended and was removed; its id is stale from now on.
    Terminated,
}

/// Output of the table: datagrams and TU events, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOut {
    /// Send `bytes` to `dst` from shard socket `socket`.
    Send {
        bytes: Bytes,
        dst: SocketAddr,
        socket: u16,
    },
    Server {
        id: ServerTxnId,
        event: TxnEvent,
    },
    Client {
        id: ClientTxnId,
        event: TxnEvent,
    },
}

/// How an incoming request relates to the server transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// A retransmission, absorbed (the last response was resent if the state says so).
    Retransmission(ServerTxnId),
    /// An ACK that matched an INVITE transaction; [`AckOutcome::PassToTu`] in Accepted.
    Ack(ServerTxnId, AckOutcome),
    /// An ACK that matches no transaction (the ACK of a 2xx): for the TU, statelessly.
    UnmatchedAck,
    /// A new request: create its transaction with [`TransactionTable::insert_server`].
    New(ServerKey),
}

/// Errors of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnError {
    /// The message yields no key.
    Key(KeyError),
    /// A transaction with this key exists.
    Exists,
    /// The id is stale.
    Unknown,
    /// ACK never creates a server transaction.
    Ack,
    /// The machine refused the response.
    Respond(RespondError),
}

impl From<KeyError> for TxnError {
    fn from(e: KeyError) -> Self {
        TxnError::Key(e)
    }
}

#[derive(Debug)]
enum ServerMachine {
    Invite(ServerInviteTxn),
    NonInvite(ServerNonInviteTxn),
}

#[derive(Debug)]
enum ClientMachine {
    Invite(ClientInviteTxn),
    NonInvite(ClientNonInviteTxn),
}

#[derive(Debug)]
struct ServerEntry {
    key: ServerKey,
    machine: ServerMachine,
    dst: SocketAddr,
    socket: u16,
}

#[derive(Debug)]
struct ClientEntry {
    key: ClientKey,
    machine: ClientMachine,
    dst: SocketAddr,
    socket: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// A wheel entry: which transaction and timer.
#[derive(Debug, Clone, Copy)]
struct TimerRef {
    side: Side,
    timer: Timer,
    index: u32,
    generation: u32,
}

/// A shard's transactions; see the module documentation.
pub struct TransactionTable {
    cfg: TxnConfig,
    servers: Slab<ServerEntry>,
    clients: Slab<ClientEntry>,
    server_keys: HashMap<ServerKey, u32>,
    client_keys: HashMap<ClientKey, u32>,
    wheel: TimerWheel<TimerRef>,
    actions: Vec<Action>,
    fired: Vec<TimerRef>,
    /// Scratch for the key of a lookup (taken and put back: lookups take `&self`).
    key_buf: core::cell::Cell<Vec<u8>>,
}

impl TransactionTable {
    pub fn new(cfg: TxnConfig) -> Self {
        TransactionTable {
            cfg,
            servers: Slab::default(),
            clients: Slab::default(),
            server_keys: HashMap::new(),
            client_keys: HashMap::new(),
            wheel: TimerWheel::new(TICK_MS, SLOTS),
            actions: Vec::new(),
            fired: Vec::new(),
            key_buf: core::cell::Cell::new(Vec::with_capacity(128)),
        }
    }

    /// Runs `f` with the scratch key buffer.
    fn with_key_buf<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let mut buf = self.key_buf.take();
        let r = f(&mut buf);
        self.key_buf.set(buf);
        r
    }

    pub fn config(&self) -> &TxnConfig {
        &self.cfg
    }

    /// Live transactions, server and client.
    pub fn len(&self) -> usize {
        self.servers.len() + self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Timers in the wheel, including lazily cancelled ones not yet reached.
    pub fn pending_timers(&self) -> usize {
        self.wheel.len()
    }

    /// Bytes held by the table's own structures (slabs, maps, wheel), without keys' and
    /// messages' heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.servers.heap_bytes()
            + self.clients.heap_bytes()
            + self.server_keys.allocation_size()
            + self.client_keys.allocation_size()
            + self.wheel.heap_bytes()
    }

    // ----- server side -----

    /// The server transaction a request belongs to (ACK: the INVITE's, §17.2.3).
    pub fn server_lookup(&self, msg: &Message<'_>) -> Option<ServerTxnId> {
        self.with_key_buf(|k| {
            ServerKey::write_for_request(msg, k).ok()?;
            self.server_id(k)
        })
        .or_else(|| self.ack_without_to_tag(msg))
    }

    /// The INVITE server transaction a CANCEL targets (§9.2).
    pub fn cancel_target(&self, cancel: &Message<'_>) -> Option<ServerTxnId> {
        self.with_key_buf(|k| {
            write_invite_key_for_cancel(cancel, k).ok()?;
            self.server_id(k)
        })
    }

    fn server_id(&self, key: &[u8]) -> Option<ServerTxnId> {
        let &index = self.server_keys.get(key)?;
        let generation = self.servers.generation(index)?;
        Some(ServerTxnId { index, generation })
    }

    /// RFC 2543 ACK of a non-2xx response: the INVITE had no To tag, the ACK carries ours.
    fn ack_without_to_tag(&self, msg: &Message<'_>) -> Option<ServerTxnId> {
        if msg.method() != Some(Method::Ack) {
            return None;
        }
        let key = ServerKey::for_request_without_to_tag(msg).ok()??;
        let id = self.server_id(core::borrow::Borrow::borrow(&key))?;
        let entry = self.servers.get(id.index, id.generation)?;
        let ServerMachine::Invite(m) = &entry.machine else {
            return None;
        };
        let last = m.last_response()?;
        let ours = Message::parse(last).ok()?.to().ok()?.tag();
        let theirs = msg.to().ok()?.tag();
        (ours.is_some() && ours == theirs).then_some(id)
    }

    /// Feeds a received request to its server transaction (§17.2.3): a retransmission is
    /// absorbed (the last response resent into `out`), an ACK goes to its INVITE
    /// transaction, anything else is [`Match::New`].
    pub fn on_server_request(
        &mut self,
        msg: &Message<'_>,
        now_ms: u64,
        out: &mut Vec<TxnOut>,
    ) -> Result<Match, KeyError> {
        let is_ack = msg.method() == Some(Method::Ack);
        let mut k = self.key_buf.take();
        let found = ServerKey::write_for_request(msg, &mut k).map(|()| self.server_id(&k));
        // Only a request that starts a transaction needs its key boxed.
        let new_key = (matches!(found, Ok(None)) && !is_ack).then(|| ServerKey::from_bytes(&k));
        self.key_buf.set(k);
        let Some(id) = found?.or_else(|| self.ack_without_to_tag(msg)) else {
            return Ok(match new_key {
                Some(key) => Match::New(key),
                None => Match::UnmatchedAck,
            });
        };
        let cfg = self.cfg;
        let mut actions = core::mem::take(&mut self.actions);
        let mut result = Match::Retransmission(id);
        if let Some(entry) = self.servers.get_mut(id.index, id.generation) {
            match &mut entry.machine {
                ServerMachine::Invite(m) if is_ack => {
                    result = Match::Ack(id, m.on_ack(&cfg, now_ms, &mut actions));
                }
                ServerMachine::Invite(m) => m.on_request(now_ms, &mut actions),
                ServerMachine::NonInvite(m) => m.on_request(now_ms, &mut actions),
            }
        }
        self.apply(Side::Server, id.index, id.generation, &mut actions, out);
        self.actions = actions;
        Ok(result)
    }

    /// Creates the server transaction of a new request (key from [`Match::New`]); INVITE
    /// starts in Proceeding, others in Trying. `dst` and `socket` say where responses go.
    pub fn insert_server(
        &mut self,
        key: ServerKey,
        method: Method,
        dst: SocketAddr,
        socket: u16,
        reliable: bool,
    ) -> Result<ServerTxnId, TxnError> {
        let machine = match method {
            Method::Ack => return Err(TxnError::Ack),
            Method::Invite => ServerMachine::Invite(ServerInviteTxn::new(reliable)),
            _ => ServerMachine::NonInvite(ServerNonInviteTxn::new(reliable)),
        };
        if self.server_keys.contains_key(&key) {
            return Err(TxnError::Exists);
        }
        let (index, generation) = self.servers.insert(ServerEntry {
            key: key.clone(),
            machine,
            dst,
            socket,
        });
        self.server_keys.insert(key, index);
        Ok(ServerTxnId { index, generation })
    }

    /// Creates the server transaction of a request (computes the key).
    pub fn new_server(
        &mut self,
        msg: &Message<'_>,
        dst: SocketAddr,
        socket: u16,
        reliable: bool,
    ) -> Result<ServerTxnId, TxnError> {
        let key = ServerKey::for_request(msg)?;
        let method = msg.method().ok_or(KeyError::NotARequest)?;
        self.insert_server(key, method, dst, socket, reliable)
    }

    /// A response from the TU, sent through the transaction.
    pub fn server_respond(
        &mut self,
        id: ServerTxnId,
        status: u16,
        bytes: Bytes,
        now_ms: u64,
        out: &mut Vec<TxnOut>,
    ) -> Result<(), TxnError> {
        let cfg = self.cfg;
        let entry = self
            .servers
            .get_mut(id.index, id.generation)
            .ok_or(TxnError::Unknown)?;
        let mut actions = core::mem::take(&mut self.actions);
        let r = match &mut entry.machine {
            ServerMachine::Invite(m) => m.send_response(&cfg, status, bytes, now_ms, &mut actions),
            ServerMachine::NonInvite(m) => {
                m.send_response(&cfg, status, bytes, now_ms, &mut actions)
            }
        };
        self.apply(Side::Server, id.index, id.generation, &mut actions, out);
        self.actions = actions;
        r.map_err(TxnError::Respond)
    }

    /// The transport failed to send for this server transaction.
    pub fn server_transport_error(&mut self, id: ServerTxnId, out: &mut Vec<TxnOut>) {
        let mut actions = core::mem::take(&mut self.actions);
        if let Some(entry) = self.servers.get_mut(id.index, id.generation) {
            match &mut entry.machine {
                ServerMachine::Invite(m) => m.on_transport_error(&mut actions),
                ServerMachine::NonInvite(m) => m.on_transport_error(&mut actions),
            }
        }
        self.apply(Side::Server, id.index, id.generation, &mut actions, out);
        self.actions = actions;
    }

    /// Where a live server transaction sends its responses, and from which socket.
    pub fn server_destination(&self, id: ServerTxnId) -> Option<(SocketAddr, u16)> {
        let e = self.servers.get(id.index, id.generation)?;
        Some((e.dst, e.socket))
    }

    /// The state of a live server transaction.
    pub fn server_state(&self, id: ServerTxnId) -> Option<ServerState> {
        let e = self.servers.get(id.index, id.generation)?;
        Some(match &e.machine {
            ServerMachine::Invite(m) => m.state(),
            ServerMachine::NonInvite(m) => m.state(),
        })
    }

    // ----- client side -----

    /// Starts a client transaction for `request` (whose top Via branch and method make
    /// `key`; INVITE if the key's method is INVITE) and sends it to `dst` from `socket`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_client(
        &mut self,
        key: ClientKey,
        request: Bytes,
        dst: SocketAddr,
        socket: u16,
        reliable: bool,
        now_ms: u64,
        out: &mut Vec<TxnOut>,
    ) -> Result<ClientTxnId, TxnError> {
        if self.client_keys.contains_key(&key) {
            return Err(TxnError::Exists);
        }
        let mut actions = core::mem::take(&mut self.actions);
        let machine = if key.is_invite() {
            ClientMachine::Invite(ClientInviteTxn::new(
                &self.cfg,
                request,
                reliable,
                now_ms,
                &mut actions,
            ))
        } else {
            ClientMachine::NonInvite(ClientNonInviteTxn::new(
                &self.cfg,
                request,
                reliable,
                now_ms,
                &mut actions,
            ))
        };
        let (index, generation) = self.clients.insert(ClientEntry {
            key: key.clone(),
            machine,
            dst,
            socket,
        });
        self.client_keys.insert(key, index);
        self.apply(Side::Client, index, generation, &mut actions, out);
        self.actions = actions;
        Ok(ClientTxnId { index, generation })
    }

    /// Feeds a received response to its client transaction (§17.1.3). `None` if none
    /// matches (a stray response: a proxy forwards it statelessly, §16.7).
    pub fn on_response(
        &mut self,
        msg: &Message<'_>,
        now_ms: u64,
        out: &mut Vec<TxnOut>,
    ) -> Option<(ClientTxnId, ClientEvent)> {
        let status = msg.status()?;
        let index = self.with_key_buf(|k| {
            ClientKey::write_for_response(msg, k).ok()?;
            self.client_keys.get(&k[..]).copied()
        })?;
        let generation = self.clients.generation(index)?;
        let cfg = self.cfg;
        let entry = self.clients.get_mut(index, generation)?;
        let mut actions = core::mem::take(&mut self.actions);
        let event = match &mut entry.machine {
            ClientMachine::Invite(m) => m.on_response(&cfg, msg, now_ms, &mut actions),
            ClientMachine::NonInvite(m) => m.on_response(&cfg, status, now_ms, &mut actions),
        };
        self.apply(Side::Client, index, generation, &mut actions, out);
        self.actions = actions;
        Some((ClientTxnId { index, generation }, event))
    }

    /// The transport failed to send for this client transaction.
    pub fn client_transport_error(&mut self, id: ClientTxnId, out: &mut Vec<TxnOut>) {
        let mut actions = core::mem::take(&mut self.actions);
        if let Some(entry) = self.clients.get_mut(id.index, id.generation) {
            match &mut entry.machine {
                ClientMachine::Invite(m) => m.on_transport_error(&mut actions),
                ClientMachine::NonInvite(m) => m.on_transport_error(&mut actions),
            }
        }
        self.apply(Side::Client, id.index, id.generation, &mut actions, out);
        self.actions = actions;
    }

    /// The transport could not deliver to `dst` over `socket` (a connection that could not be
    /// made, or is gone and may not be reopened): every client transaction still waiting for
    /// a final response from there ends with a transport error (RFC 3261 §17.1.1.2,
    /// §17.1.2.2, §17.1.4). Returns how many. A scan of the client transactions: transport
    /// errors are rare next to messages.
    pub fn client_transport_errors_to(
        &mut self,
        socket: u16,
        dst: SocketAddr,
        out: &mut Vec<TxnOut>,
    ) -> usize {
        let socket = crate::sip::proto::socket_index(socket);
        let failed: Vec<ClientTxnId> = self
            .clients
            .iter()
            .filter(|(_, _, e)| {
                e.dst == dst
                    && crate::sip::proto::socket_index(e.socket) == socket
                    && matches!(
                        match &e.machine {
                            ClientMachine::Invite(m) => m.state(),
                            ClientMachine::NonInvite(m) => m.state(),
                        },
                        // A response came in Proceeding: the request was delivered.
                        ClientState::Calling | ClientState::Trying
                    )
            })
            .map(|(index, generation, _)| ClientTxnId { index, generation })
            .collect();
        for &id in &failed {
            self.client_transport_error(id, out);
        }
        failed.len()
    }

    /// The state of a live client transaction.
    pub fn client_state(&self, id: ClientTxnId) -> Option<ClientState> {
        let e = self.clients.get(id.index, id.generation)?;
        Some(match &e.machine {
            ClientMachine::Invite(m) => m.state(),
            ClientMachine::NonInvite(m) => m.state(),
        })
    }

    // ----- timers -----

    /// The earliest time [`TransactionTable::poll_timers`] may have work (a lower bound).
    pub fn next_timeout(&self) -> Option<u64> {
        self.wheel.next_deadline()
    }

    /// Runs every timer due at `now_ms`.
    pub fn poll_timers(&mut self, now_ms: u64, out: &mut Vec<TxnOut>) {
        let mut fired = core::mem::take(&mut self.fired);
        self.wheel.poll(now_ms, &mut |t| fired.push(t));
        let cfg = self.cfg;
        let mut actions = core::mem::take(&mut self.actions);
        for t in fired.drain(..) {
            match t.side {
                Side::Server => {
                    let Some(e) = self.servers.get_mut(t.index, t.generation) else {
                        continue;
                    };
                    match &mut e.machine {
                        ServerMachine::Invite(m) => m.on_timer(&cfg, t.timer, now_ms, &mut actions),
                        ServerMachine::NonInvite(m) => m.on_timer(t.timer, now_ms, &mut actions),
                    }
                }
                Side::Client => {
                    let Some(e) = self.clients.get_mut(t.index, t.generation) else {
                        continue;
                    };
                    match &mut e.machine {
                        ClientMachine::Invite(m) => m.on_timer(t.timer, now_ms, &mut actions),
                        ClientMachine::NonInvite(m) => {
                            m.on_timer(&cfg, t.timer, now_ms, &mut actions)
                        }
                    }
                }
            }
            self.apply(t.side, t.index, t.generation, &mut actions, out);
        }
        self.fired = fired;
        self.actions = actions;
    }

    /// Turns a machine's actions into outputs and wheel entries; removes the transaction on
    /// `Terminated`.
    fn apply(
        &mut self,
        side: Side,
        index: u32,
        generation: u32,
        actions: &mut Vec<Action>,
        out: &mut Vec<TxnOut>,
    ) {
        let (dst, socket) = match side {
            Side::Server => match self.servers.get(index, generation) {
                Some(e) => (e.dst, e.socket),
                None => return actions.clear(),
            },
            Side::Client => match self.clients.get(index, generation) {
                Some(e) => (e.dst, e.socket),
                None => return actions.clear(),
            },
        };
        let event = |event| match side {
            Side::Server => TxnOut::Server {
                id: ServerTxnId { index, generation },
                event,
            },
            Side::Client => TxnOut::Client {
                id: ClientTxnId { index, generation },
                event,
            },
        };
        for a in actions.drain(..) {
            match a {
                Action::Send(bytes) => out.push(TxnOut::Send { bytes, dst, socket }),
                Action::Arm(timer, at) => {
                    self.wheel.insert(
                        at,
                        TimerRef {
                            side,
                            timer,
                            index,
                            generation,
                        },
                    );
                }
                Action::Disarm(_) => {}
                Action::Timeout => out.push(event(TxnEvent::Timeout)),
                Action::TransportError => out.push(event(TxnEvent::TransportError)),
                Action::Terminated => {
                    match side {
                        Side::Server => {
                            if let Some(e) = self.servers.remove(index, generation) {
                                self.server_keys.remove(&e.key);
                            }
                        }
                        Side::Client => {
                            if let Some(e) = self.clients.remove(index, generation) {
                                self.client_keys.remove(&e.key);
                            }
                        }
                    }
                    out.push(event(TxnEvent::Terminated));
                }
            }
        }
    }
}

impl core::fmt::Debug for TransactionTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TransactionTable")
            .field("servers", &self.servers.len())
            .field("clients", &self.clients.len())
            .field("timers", &self.wheel.len())
            .finish()
    }
}

/// The sizes of a server and a client slab slot and of a wheel entry (for the memory
/// figures above; the wheel's entry adds deadline, links and generation to the payload).
#[cfg(test)]
pub(crate) fn entry_sizes() -> (usize, usize, usize) {
    (
        core::mem::size_of::<Option<ServerEntry>>() + 4,
        core::mem::size_of::<Option<ClientEntry>>() + 4,
        core::mem::size_of::<(u64, u32, u32, u32, Option<TimerRef>)>(),
    )
}
