//! The proxy core (RFC 3261 §16). So far: the messages a proxy writes by splicing others'
//! bytes (responses relayed upstream, CANCELs for forwarded INVITEs, branch values). The
//! stateful proxy built on the transaction layer (`txn`) comes next.

pub mod messages;
