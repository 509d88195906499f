//! The admin API (issue 18): a Unix socket the running server answers on (`--admin PATH`,
//! by default `DATA_DIR/admin.sock`; mode 0600, never on the network) and `sipshard ctl`,
//! its client. One request per connection: a line of words (`registrations sip:a@b`), then
//! one JSON document back, `{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`.
//!
//! What lives in the shards (bindings) is asked of each shard through its own channel: the
//! shard answers between two receive rounds ([`ShardQuery::answer`]), so the admin thread
//! never touches a shard's tables. Counters and bans are read where the metrics read them.
//!
//! - `server`: the listener thread;
//! - `ctl`: `sipshard ctl`, tables or `--json`.

pub mod ctl;
pub mod server;

use crate::registrar::Registration;
use crate::server::Core;
use crossbeam_channel::Sender;

/// The commands, as `sipshard ctl` names them.
pub const COMMANDS: &str = "registrations [AOR] | unregister AOR [CONTACT] | stats | shards | \
                            bans | reload | calls | trunks";

/// A question for one shard, with where its answer goes.
pub enum ShardQuery {
    Registrations {
        aor: Option<String>,
        reply: Sender<Result<Vec<Registration>, String>>,
    },
    Unregister {
        aor: String,
        contact: Option<String>,
        reply: Sender<Result<usize, String>>,
    },
    Calls {
        reply: Sender<Result<Vec<crate::proxy::calls::CallInProgress>, String>>,
    },
    Trunks {
        reply: Sender<Result<Vec<crate::routing::plan::TrunkStatus>, String>>,
    },
}

impl ShardQuery {
    /// Answers from the shard's own core (called by the shard thread between rounds).
    pub fn answer(self, core: &mut Core, now_ms: u64) {
        match self {
            ShardQuery::Registrations { aor, reply } => {
                let _ = reply.send(core.registrations(aor.as_deref(), now_ms));
            }
            ShardQuery::Unregister {
                aor,
                contact,
                reply,
            } => {
                let _ = reply.send(core.unregister(&aor, contact.as_deref()));
            }
            ShardQuery::Calls { reply } => {
                let _ = reply.send(Ok(core.calls(now_ms)));
            }
            ShardQuery::Trunks { reply } => {
                let _ = reply.send(Ok(core.trunks()));
            }
        }
    }
}
