//! Trunk health checks (in the spirit of Kamailio's dispatcher probing): shard 0 sends each
//! trunk an OPTIONS every `check_interval_ms`; a check still unanswered when the next is due
//! counts as failed, and after `down_after` failures in a row the trunk is marked down, which
//! every shard sees at its next routing decision. Any response, whatever its status, brings
//! it back (RFC 3261 §11: an OPTIONS answer shows the peer is alive). Sans-I/O: the checker
//! writes its requests into the [`Outbox`] and is driven by `now`.
//!
//! The checks are plain datagrams, one per interval and without retransmissions (the next
//! interval is the retry). Their branch, `z9hG4bK-ss<shard>.hc<trunk>.<n>`, routes the
//! answers back to this shard and tells them from forwarded requests' answers.

use super::plan::DialPlan;
use crate::server::outbox::Outbox;
use crate::sip::{Local, Proto};
use std::net::SocketAddr;

/// The state of one trunk's checks.
#[derive(Debug, Clone, Copy, Default)]
struct CheckState {
    /// When the next OPTIONS is due.
    next_ms: u64,
    /// The sequence number of the check awaiting its answer (0: none).
    outstanding: u64,
    /// Checks in a row without an answer.
    failures: u32,
}

/// The checker of every trunk of one plan.
#[derive(Debug)]
pub struct TrunkChecker {
    shard: usize,
    /// Our sockets (their addresses go into Via and From; a trunk's transport picks one).
    locals: Vec<Local>,
    states: Vec<CheckState>,
    seq: u64,
}

const BRANCH_PREFIX: &[u8] = b"z9hG4bK-ss";

impl TrunkChecker {
    /// A checker for `plan`'s trunks, sending from our sockets `locals` (a trunk's check
    /// leaves from the first of its transport); the first checks go out at `now_ms`.
    pub fn new(plan: &DialPlan, shard: usize, locals: &[Local], now_ms: u64) -> TrunkChecker {
        TrunkChecker {
            shard,
            locals: locals.to_vec(),
            states: plan
                .trunks
                .iter()
                .map(|_| CheckState {
                    next_ms: now_ms,
                    ..Default::default()
                })
                .collect(),
            seq: 0,
        }
    }

    /// When [`TrunkChecker::poll`] is next needed.
    pub fn next_timeout(&self, plan: &DialPlan) -> Option<u64> {
        self.states
            .iter()
            .zip(&plan.trunks)
            .filter(|(_, t)| t.check_interval_ms > 0)
            .map(|(s, _)| s.next_ms)
            .min()
    }

    /// Sends the checks that are due, counting the unanswered ones as failed.
    pub fn poll(&mut self, plan: &DialPlan, now_ms: u64, out: &mut Outbox) {
        for (i, trunk) in plan.trunks.iter().enumerate() {
            let Some(state) = self.states.get_mut(i) else {
                break;
            };
            if trunk.check_interval_ms == 0 || state.next_ms > now_ms {
                continue;
            }
            let Some(socket) = self.locals.iter().position(|l| l.proto == trunk.proto) else {
                // No socket of its transport (the configuration refuses that): never checked.
                continue;
            };
            if state.outstanding != 0 {
                state.failures += 1;
                if state.failures >= trunk.down_after && trunk.is_up() {
                    trunk.set_up(false);
                    tracing::warn!(
                        trunk = %trunk.name, addr = %trunk.addr, failures = state.failures,
                        "trunk down: OPTIONS checks unanswered"
                    );
                }
            }
            self.seq += 1;
            state.outstanding = self.seq;
            state.next_ms = now_ms + trunk.check_interval_ms;
            let local = self.locals[socket];
            let (buf, start) = out.begin();
            write_options(buf, local, self.shard, i, self.seq, trunk.addr);
            // Over a stream the check may open the connection.
            let socket = if local.proto == Proto::Udp {
                socket
            } else {
                socket | crate::sip::proto::CONNECT as usize
            };
            out.commit(start, trunk.addr, socket);
        }
    }

    /// True if `branch` is one of our checks' (its answer is for [`TrunkChecker::response`]).
    pub fn is_check_branch(branch: &[u8]) -> bool {
        branch
            .strip_prefix(BRANCH_PREFIX)
            .and_then(|rest| memchr::memchr(b'.', rest).map(|dot| &rest[dot + 1..]))
            .is_some_and(|rest| rest.starts_with(b"hc"))
    }

    /// The answer to a check (any status): the trunk is alive.
    pub fn response(&mut self, plan: &DialPlan, branch: &[u8]) {
        let Some((trunk, seq)) = parse_branch(branch) else {
            return;
        };
        let (Some(state), Some(t)) = (self.states.get_mut(trunk), plan.trunks.get(trunk)) else {
            return;
        };
        if state.outstanding != seq {
            // An answer to an older check: the trunk is alive all the same.
            if seq == 0 || seq > self.seq {
                return;
            }
        }
        state.outstanding = 0;
        state.failures = 0;
        if !t.is_up() {
            t.set_up(true);
            tracing::info!(trunk = %t.name, addr = %t.addr, "trunk up: OPTIONS answered");
        }
    }
}

/// `(trunk index, sequence)` from `z9hG4bK-ss<shard>.hc<trunk>.<seq>`.
fn parse_branch(branch: &[u8]) -> Option<(usize, u64)> {
    let rest = branch.strip_prefix(BRANCH_PREFIX)?;
    let rest = &rest[memchr::memchr(b'.', rest)? + 1..];
    let rest = rest.strip_prefix(b"hc")?;
    let text = std::str::from_utf8(rest).ok()?;
    let (trunk, seq) = text.split_once('.')?;
    Some((trunk.parse().ok()?, seq.parse().ok()?))
}

/// An OPTIONS to a trunk (RFC 3261 §11.1), answered by any SIP element that is up.
fn write_options(
    out: &mut Vec<u8>,
    local: Local,
    shard: usize,
    trunk: usize,
    seq: u64,
    dst: SocketAddr,
) {
    use std::io::Write;
    let (host, via) = (local.addr, local.proto.via_token());
    let param = match local.proto {
        Proto::Udp => String::new(),
        p => format!(";transport={}", p.uri_param()),
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "OPTIONS sip:{dst}{param} SIP/2.0\r\n\
         Via: SIP/2.0/{via} {host};branch=z9hG4bK-ss{shard}.hc{trunk}.{seq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:sipshard@{host}>;tag=hc{seq}\r\n\
         To: <sip:{dst}>\r\n\
         Call-ID: hc{shard}.{trunk}.{seq}@{host}\r\n\
         CSeq: {seq} OPTIONS\r\n\
         User-Agent: sipshard\r\n\
         Content-Length: 0\r\n\r\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::spec::{DialPlanSpec, TrunkSpec};
    use crate::sip::Message;

    fn plan(interval: u64, down_after: u32) -> DialPlan {
        DialPlan::build(&DialPlanSpec {
            trunk: vec![TrunkSpec {
                name: "a".into(),
                address: "127.0.0.1:5071".into(),
                transport: None,
                check_interval_ms: Some(interval),
                down_after: Some(down_after),
                inbound_from: vec![],
            }],
            ..Default::default()
        })
        .unwrap()
    }

    fn branch_of(out: &Outbox) -> Vec<u8> {
        let d = out.items().last().expect("a check was sent");
        assert_eq!(d.dst, "127.0.0.1:5071".parse().unwrap());
        let m = Message::parse(out.bytes(d)).expect("the check parses");
        assert_eq!(m.method_bytes(), Some(&b"OPTIONS"[..]));
        m.top_via().unwrap().branch().unwrap().to_vec()
    }

    #[test]
    fn unanswered_checks_take_a_trunk_down_and_any_answer_brings_it_back() {
        let p = plan(1000, 2);
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let mut c = TrunkChecker::new(&p, 0, &[Local::from(local)], 0);
        let mut out = Outbox::default();
        assert_eq!(c.next_timeout(&p), Some(0));
        c.poll(&p, 0, &mut out);
        let b1 = branch_of(&out);
        assert!(TrunkChecker::is_check_branch(&b1));
        assert_eq!(crate::proxy::stateful::shard_of_branch(&b1), Some(0));
        assert_eq!(c.next_timeout(&p), Some(1000));
        c.poll(&p, 1000, &mut out);
        assert!(p.trunks[0].is_up(), "one miss is not enough");
        c.poll(&p, 2000, &mut out);
        assert!(!p.trunks[0].is_up(), "two misses in a row");
        let b3 = branch_of(&out);
        c.response(&p, &b3);
        assert!(p.trunks[0].is_up());
        // Answered in time from now on: stays up.
        c.poll(&p, 3000, &mut out);
        c.response(&p, &branch_of(&out));
        c.poll(&p, 4000, &mut out);
        assert!(p.trunks[0].is_up());
    }

    #[test]
    fn interval_zero_sends_nothing() {
        let p = plan(0, 2);
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let mut c = TrunkChecker::new(&p, 0, &[Local::from(local)], 0);
        assert_eq!(c.next_timeout(&p), None);
        let mut out = Outbox::default();
        c.poll(&p, 10_000, &mut out);
        assert!(out.is_empty());
        assert!(p.trunks[0].is_up());
    }

    #[test]
    fn forwarded_branches_are_not_checks() {
        assert!(!TrunkChecker::is_check_branch(
            b"z9hG4bK-ss0.0123456789abcdef.7"
        ));
        assert!(!TrunkChecker::is_check_branch(b"z9hG4bKabc"));
        assert_eq!(parse_branch(b"z9hG4bK-ss1.hc3.42"), Some((3, 42)));
    }
}
