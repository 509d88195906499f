//! Target selection by the dial plan (RFC 3261 §16.5 with `src/routing`): who calls (an
//! inbound trunk by its source address, this server itself for a group's member legs, or a
//! user by digest), then, in order, emergency numbers as dialed, users of our domain,
//! extensions, groups and paging numbers (as dialed, then normalised), and routes to trunks.
//! The targets and the fork policy go to the proxy: trunks one after the other with failover
//! on 408, 5xx or silence; group members at once, in order or round-robin, each leg sent back
//! to this server as `sip:member@domain` (a spiral, §16.6 step 9 allows it) so that the shard
//! owning the member's bindings forwards it; paging like a parallel group with auto-answer
//! headers.

use super::reply::Reply;
use super::request::{deliver, knows_user, Element};
use super::stateful::{Fork, Target};
use crate::routing::{Caller, Local, RouteDecision, Strategy, TrunkRoute};
use crate::server::outbox::Outbox;
use crate::sip::{Message, Uri};
use std::sync::Arc;

/// What a paging leg carries so that phones answer it themselves: the `answer-after`
/// parameter of Call-Info (Yealink, Grandstream, Snom, Cisco SPA, baresip) and the
/// `alert-autoanswer` Alert-Info (Polycom and others).
pub const PAGING_HEADERS: &str = "Alert-Info: <http://localhost/>;info=alert-autoanswer\r\n";

/// The header an emergency call carries (RFC 3261 §20.26).
const EMERGENCY_HEADERS: &[u8] = b"Priority: emergency\r\n";

/// Who is calling.
enum From {
    /// A call from a trunk's `inbound_from` address: routed by the number, no challenge.
    Trunk,
    /// A member leg of a group or paging call this server sent to itself.
    Us,
    User(Option<Box<str>>),
}

impl Element {
    /// An initial request for our domain when a dial plan is configured.
    pub(super) fn routed(
        &mut self,
        msg: &Message<'_>,
        ruri: &Uri<'_>,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        let plan = Arc::clone(&self.cfg.routing);
        let src = reply.source();
        // A request from our own listen address is a member leg we sent ourselves. Nobody
        // else can send from it: Linux drops a datagram arriving from outside with one of the
        // host's own addresses as its source (a martian, unless accept_local is set).
        let from = if self.proxy.is_ours_addr(src) {
            From::Us
        } else if plan.inbound_trunk(src.ip()).is_some() {
            From::Trunk
        } else {
            match self.proxy_authorized(msg, now_ms, true, reply, out) {
                Some(user) => From::User(user),
                None => return,
            }
        };
        let number: Vec<u8> = match ruri.user {
            Some(u) => crate::sip::uri::Unescape::new(u).collect(),
            None => Vec::new(),
        };
        if let Some(route) = plan.emergency(&number) {
            self.note_route("emergency");
            return self.forward_to_trunks(msg, &route, now_ms, reply, out);
        }
        if let From::User(Some(user)) = &from {
            if !self.call_allowed(msg, user, now_ms, reply, out) {
                return;
            }
        }
        // A member leg is record-routed by the pass that sent it, not again.
        let fork = Fork {
            record_route: !matches!(from, From::Us),
            ..Fork::bindings(&self.cfg.proxy)
        };
        self.note_route("user");
        if self.forward_to_bindings(msg, ruri, &fork, now_ms, reply, out) {
            return;
        }
        if let Some(note) = self.proxy.calls.note() {
            note.route = None;
        }
        if self.auth.as_ref().is_some_and(|a| knows_user(a, ruri)) {
            // A user of ours with no binding here: with a shared store, another node may
            // hold one this node never heard of.
            if self.park_for_aor(msg, ruri, reply, now_ms) {
                return;
            }
            return reply.simple(out, 480, b"Temporarily Unavailable");
        }
        let normalized = plan.normalize(&number);
        let local = plan
            .local(&number)
            .or_else(|| normalized.as_deref().and_then(|n| plan.local(n)));
        if let Some(local) = local {
            return self.forward_to_local(msg, ruri, local, now_ms, reply, out);
        }
        let caller = match &from {
            // No transit: a trunk's calls reach local numbers only (toll fraud).
            From::Trunk => return reply.simple(out, 404, b"Not Found (no such local number)"),
            // Member legs name users; one without bindings has nothing more to reach.
            From::Us => return reply.simple(out, 480, b"Temporarily Unavailable"),
            From::User(Some(user)) => Caller::User(user),
            From::User(None) => Caller::Anonymous,
        };
        let number = normalized.unwrap_or(number);
        match plan.route(&number, caller, now_ms) {
            RouteDecision::NoRoute => reply.simple(out, 404, b"Not Found"),
            RouteDecision::Forbidden { class } => reply.simple(
                out,
                403,
                format!("Forbidden (the route needs class of service {class})").as_bytes(),
            ),
            RouteDecision::AllTrunksDown => reply.simple(
                out,
                503,
                b"Service Unavailable (every trunk of the route is down)",
            ),
            RouteDecision::Trunks(route) => {
                self.note_route("trunks");
                self.forward_to_trunks(msg, &route, now_ms, reply, out)
            }
        }
    }

    /// Out through trunks, one after the other: `sip:<number>@<trunk address>`, the next trunk
    /// on 408, 5xx or no response within `trunk_timeout_ms`; a 4xx or 6xx ends the call.
    fn forward_to_trunks(
        &mut self,
        msg: &Message<'_>,
        route: &TrunkRoute,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        let plan = Arc::clone(&self.cfg.routing);
        // Each trunk over its transport: the URI says so, and a stream trunk may get a
        // connection opened (the configuration made sure we listen on that transport).
        let legs: Vec<(std::net::SocketAddr, Vec<u8>, u16)> = route
            .trunks
            .iter()
            .filter_map(|&t| {
                let trunk = &plan.trunks[t as usize];
                let mut u = b"sip:".to_vec();
                u.extend_from_slice(&route.number);
                u.push(b'@');
                crate::nat::push_hostport(&mut u, trunk.addr);
                let socket = if trunk.proto == crate::sip::Proto::Udp {
                    self.proxy.default_socket()
                } else {
                    u.extend_from_slice(b";transport=");
                    u.extend_from_slice(trunk.proto.uri_param().as_bytes());
                    self.proxy.socket_for(trunk.proto)? | crate::sip::proto::CONNECT
                };
                Some((trunk.addr, u, socket))
            })
            .collect();
        let targets: Vec<Target<'_>> = legs
            .iter()
            .enumerate()
            .map(|(i, (dst, uri, socket))| Target {
                uri,
                dst: *dst,
                q: crate::registrar::DEFAULT_Q,
                group: i as u16,
                flow: false,
                socket: *socket,
                paths: crate::registrar::PathIter::empty(),
            })
            .collect();
        let fork = Fork {
            rewrite_uri: true,
            record_route: true,
            group_timeout_ms: Some(plan.trunk_timeout_ms),
            timeout_last: true,
            timeout_until_response: true,
            final_4xx: true,
            extra_headers: if route.emergency {
                EMERGENCY_HEADERS
            } else {
                b""
            },
        };
        if route.emergency {
            tracing::warn!(
                number = ?String::from_utf8_lossy(&route.number),
                from = ?msg.from().ok().map(|f| String::from_utf8_lossy(f.uri_raw).into_owned()),
                src = %reply.source(), "emergency call"
            );
        }
        deliver(
            &mut self.proxy,
            self.cfg.mode,
            msg,
            &targets,
            &fork,
            now_ms,
            reply,
            out,
        );
    }

    /// An extension (every binding of its user), a group or a paging number.
    fn forward_to_local(
        &mut self,
        msg: &Message<'_>,
        ruri: &Uri<'_>,
        local: Local<'_>,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        let plan = Arc::clone(&self.cfg.routing);
        let domain = self.cfg.domains.first().map_or_else(
            || String::from_utf8_lossy(ruri.host).into_owned(),
            |d| d.clone(),
        );
        match local {
            Local::Extension(user) => {
                self.note_route("extension");
                let text = format!("sip:{user}@{domain}");
                let Ok(aor) = Uri::parse(text.as_bytes()) else {
                    return reply.simple(out, 500, b"Server Internal Error (bad extension user)");
                };
                let fork = Fork::bindings(&self.cfg.proxy);
                if !self.forward_to_bindings(msg, &aor, &fork, now_ms, reply, out)
                    && !self.park_for_aor(msg, &aor, reply, now_ms)
                {
                    reply.simple(out, 480, b"Temporarily Unavailable");
                }
            }
            Local::Group(g) => {
                let group = &plan.groups[g];
                self.note_route(&format!("group {}", group.number));
                let n = group.members.len();
                let first = match group.strategy {
                    Strategy::RoundRobin => {
                        let next = self.round_robin.get(g).copied().unwrap_or(0) % n;
                        if let Some(slot) = self.round_robin.get_mut(g) {
                            *slot = (next + 1) % n;
                        }
                        next
                    }
                    _ => 0,
                };
                let members: Vec<&str> = (0..n).map(|i| &*group.members[(first + i) % n]).collect();
                let parallel = group.strategy == Strategy::Parallel;
                let fork = Fork {
                    rewrite_uri: true,
                    record_route: true,
                    group_timeout_ms: Some(group.ring_ms),
                    timeout_last: true,
                    timeout_until_response: false,
                    final_4xx: false,
                    extra_headers: b"",
                };
                self.forward_to_members(
                    msg, &members, &domain, parallel, &fork, now_ms, reply, out,
                );
            }
            Local::Paging(p) => {
                let page = &plan.paging[p];
                self.note_route(&format!("paging {}", page.number));
                let members: Vec<&str> = page.members.iter().map(|m| &**m).collect();
                let headers =
                    format!("Call-Info: <sip:{domain}>;answer-after=0\r\n{PAGING_HEADERS}");
                let fork = Fork {
                    rewrite_uri: true,
                    record_route: true,
                    group_timeout_ms: None,
                    timeout_last: false,
                    timeout_until_response: false,
                    final_4xx: false,
                    extra_headers: headers.as_bytes(),
                };
                self.forward_to_members(msg, &members, &domain, true, &fork, now_ms, reply, out);
            }
        }
    }

    /// One leg per member, `sip:member@domain`, sent to this server itself: the shard that
    /// owns the member forwards it to the member's bindings.
    #[allow(clippy::too_many_arguments)]
    fn forward_to_members(
        &mut self,
        msg: &Message<'_>,
        members: &[&str],
        domain: &str,
        parallel: bool,
        fork: &Fork<'_>,
        now_ms: u64,
        reply: &mut Reply<'_, '_>,
        out: &mut Outbox,
    ) {
        let uris: Vec<String> = members
            .iter()
            .map(|m| format!("sip:{m}@{domain}"))
            .collect();
        let udp = self.proxy.default_socket();
        let targets: Vec<Target<'_>> = uris
            .iter()
            .enumerate()
            .map(|(i, uri)| Target {
                uri: uri.as_bytes(),
                dst: self.local,
                q: crate::registrar::DEFAULT_Q,
                group: if parallel { 0 } else { i as u16 },
                flow: false,
                socket: udp,
                paths: crate::registrar::PathIter::empty(),
            })
            .collect();
        deliver(
            &mut self.proxy,
            self.cfg.mode,
            msg,
            &targets,
            fork,
            now_ms,
            reply,
            out,
        );
    }
}
