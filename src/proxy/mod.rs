//! The proxy core (RFC 3261 §16): `stateful` forwards on the transaction layer (`txn`) with
//! forking, CANCEL and record-routing; `messages` writes what a proxy splices from others'
//! bytes (responses relayed upstream, CANCELs for forwarded INVITEs, branch values).

pub mod calls;
pub mod cdr;
pub mod lookup;
pub mod messages;
pub mod reply;
pub mod request;
pub mod route;
pub mod settings;
pub mod stateful;
pub mod topology;
