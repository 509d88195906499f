//! REGISTER processing, RFC 3261 §10.3 steps 5 to 8, with Path (RFC 3327 §5.3) and outbound
//! instance/reg-id matching (RFC 5626 §6).
//!
//! The caller has already done steps 1 to 4 (domain, Require, authentication, authorization)
//! and `Message::validate`. Processing is two-phase so that a refused request changes nothing
//! (step 7: "binding updates MUST be committed ... if and only if all binding updates and
//! additions succeed"): every contact is checked and its new binding built first, then the
//! changes are applied.
//!
//! Choices where the RFCs leave room:
//! - a contact named twice in one request: the later one wins;
//! - with `+sip.instance` and `reg-id`, a contact matches the binding with the same instance
//!   and reg-id whatever its URI; otherwise by URI (§19.1.4). `reg-id` without an instance is
//!   ignored (RFC 5626 §6). The Call-ID/CSeq rule applies to both kinds of match;
//! - a malformed `expires` or `q` contact parameter is answered 400;
//! - exceeding `max_contacts_per_aor` is answered `503 Too Many Registered Contacts`, as
//!   Kamailio's registrar does; a request that does not add bindings is never refused for it.

use std::net::SocketAddr;

use super::binding::{branch_hash, Binding, BindingFields, DEFAULT_Q};
use super::outcome::{RegisterError, RegisterOutcome};
use super::response;
use super::table::Registrar;
use crate::sip::scan::CommaSplit;
use crate::sip::write::ViaFixup;
use crate::sip::{HeaderName, Message, Uri};

/// Where a REGISTER came from: its source address and whether it came through a NAT (the
/// bindings it sets are then reached at that address, not at their Contact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub addr: SocketAddr,
    pub nat: bool,
    /// The local socket it came in on, and whether that is a connection (the bindings are
    /// then reached over it, RFC 5626 §5.3 / RFC 3261 §18).
    pub socket: u16,
    pub stream: bool,
}

impl From<SocketAddr> for Flow {
    fn from(addr: SocketAddr) -> Flow {
        Flow {
            addr,
            nat: false,
            socket: 0,
            stream: false,
        }
    }
}

/// What the engine supplies for writing the response.
#[derive(Debug, Clone, Copy)]
pub struct ResponseCtx<'x> {
    /// The To tag added to responses (RFC 3261 §8.2.6.2).
    pub to_tag: &'x [u8],
    /// The top-Via fix-up of the request's transport (§18.2.1, RFC 3581).
    pub via_fixup: Option<ViaFixup<'x>>,
}

/// Which binding a contact of the request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    New,
    /// Position in the AOR's binding list.
    Existing(usize),
}

/// One contact of the request, checked.
struct Pending<'a> {
    uri: Uri<'a>,
    instance: Option<&'a [u8]>,
    reg_id: Option<u32>,
    target: Target,
    /// The new binding (`None` for expires 0: remove).
    binding: Option<Binding>,
    /// A later contact of the same request names the same binding.
    superseded: bool,
}

/// RFC 5626 §6: the UA supports outbound (`Supported: outbound`) and registers a flow (a
/// Contact with `+sip.instance` and `reg-id`), with no Path (we are its edge proxy).
fn asks_for_outbound(req: &Message<'_>) -> bool {
    let supported = req
        .header_all(HeaderName::Supported)
        .any(|v| CommaSplit::new(v).any(|(_, t)| t.trim_ascii().eq_ignore_ascii_case(b"outbound")));
    supported
        && req.header(HeaderName::Path).is_none()
        && req.contacts_lazy().filter_map(|c| c.ok()).any(|c| {
            c.instance().is_some_and(|i| !i.is_empty()) && c.reg_id().is_some_and(|r| r != 0)
        })
}

/// The keepalive interval a flow is given (`Flow-Timer`, RFC 5626 §4.4.1: the UA sends its
/// keepalives at 80-100% of it): §4.4.1's 120 s for a connection, under the 30 s a NAT keeps
/// an idle UDP mapping for UDP.
pub fn flow_timer_s(stream: bool) -> u32 {
    if stream {
        120
    } else {
        29
    }
}

/// Does a contact (URI, instance, reg-id) name this stored binding?
fn names_binding(b: &Binding, uri: &Uri<'_>, instance: Option<&[u8]>, reg_id: Option<u32>) -> bool {
    match (instance, reg_id) {
        (Some(inst), Some(id)) => {
            b.reg_id() == Some(id) && b.instance().is_some_and(|i| i.eq_ignore_ascii_case(inst))
        }
        // The same bytes name the same URI (a refresh, the common case): no second parse.
        _ => b.contact_uri() == uri.raw || Uri::parse(b.contact_uri()).is_ok_and(|u| u.equals(uri)),
    }
}

/// Do two contacts of the same request name the same binding?
fn same_contact(
    p: &Pending<'_>,
    uri: &Uri<'_>,
    instance: Option<&[u8]>,
    reg_id: Option<u32>,
) -> bool {
    match (instance, reg_id, p.instance, p.reg_id) {
        (Some(a), Some(x), Some(b), Some(y)) => x == y && a.eq_ignore_ascii_case(b),
        _ => p.uri.equals(uri),
    }
}

impl Registrar {
    /// Writes the key this registrar stores `uri`'s AOR under: [`Uri::write_aor`], with the
    /// host replaced by [`RegistrarConfig::canonical_domain`] when that is set. False for
    /// URIs that are not SIP or SIPS.
    ///
    /// [`RegistrarConfig::canonical_domain`]: super::RegistrarConfig::canonical_domain
    pub fn write_aor_key(&self, uri: &Uri<'_>, out: &mut Vec<u8>) -> bool {
        let Some(domain) = &self.config().canonical_domain else {
            return uri.write_aor(out);
        };
        let canonical = Uri {
            host: domain.as_bytes(),
            host_kind: crate::sip::HostKind::Name,
            ..*uri
        };
        canonical.write_aor(out)
    }

    /// Handles a REGISTER for an AOR this shard owns: applies it at `now_ms` and writes the
    /// complete response into `out` (appended). `source` is where the request came from (a
    /// [`Flow`], or a plain address for a request that did not come through a NAT); it is
    /// stored with the bindings it creates or refreshes.
    pub fn handle_register(
        &mut self,
        req: &Message<'_>,
        source: impl Into<Flow>,
        now_ms: u64,
        ctx: &ResponseCtx<'_>,
        out: &mut Vec<u8>,
    ) -> RegisterOutcome {
        let source = source.into();
        let mut outcome = RegisterOutcome::default();
        let mut key = core::mem::take(&mut self.key_buf);
        key.clear();
        let result = match req.to_uri() {
            Ok(uri) if self.write_aor_key(&uri, &mut key) => {
                self.register_aor(&key, req, source, now_ms, &mut outcome)
            }
            Ok(_) => Err(RegisterError::NotSipAor),
            _ => Err(RegisterError::BadTo),
        };
        if result.is_ok() && source.stream && req.header(HeaderName::Contact).is_some() {
            self.note_flow(source.socket, source.addr, &key, now_ms);
        }
        match result {
            Ok(aor) => {
                let bindings = match aor {
                    Some(i) => self.aors[i as usize].bindings.as_slice(),
                    None => &[],
                };
                outcome.status = 200;
                outcome.bindings = bindings.len().min(u16::MAX as usize) as u16;
                let flow_timer = asks_for_outbound(req).then(|| flow_timer_s(source.stream));
                // With a shared store, the other nodes' bindings of the AOR are listed too.
                let others = self.remote_bindings(&key, bindings, now_ms).map(|(_, b)| b);
                response::write_ok(out, req, ctx, bindings, others, now_ms, flow_timer);
            }
            Err(e) => {
                outcome.status = e.status();
                outcome.error = Some(e);
                response::write_error(out, req, ctx, e, self.config.min_expires);
            }
        }
        self.key_buf = key;
        outcome
    }

    /// Processes the request for one AOR; returns the AOR's slab position if it still exists.
    fn register_aor(
        &mut self,
        key: &[u8],
        req: &Message<'_>,
        source: Flow,
        now_ms: u64,
        outcome: &mut RegisterOutcome,
    ) -> Result<Option<u32>, RegisterError> {
        let existing = self.find(key);
        if let Some(i) = existing {
            outcome.expired = self.purge_expired(i, now_ms) as u16;
        }
        let result = self.apply(key, existing, req, source, now_ms, outcome);
        // Even a refused request may have swept expired bindings.
        let touched = match result {
            Ok(Some(i)) => Some(i),
            _ => existing,
        };
        if let Some(i) = touched {
            self.settle(i);
        }
        if self.journal.is_some()
            && touched.is_some()
            && (outcome.added | outcome.refreshed | outcome.removed | outcome.expired) != 0
        {
            self.journal_aor(key, touched);
        }
        // `settle` frees the record (empty key) of an AOR left without bindings.
        result.map(|aor| aor.filter(|&i| !self.aors[i as usize].key.is_empty()))
    }

    fn apply(
        &mut self,
        key: &[u8],
        existing: Option<u32>,
        req: &Message<'_>,
        source: Flow,
        now_ms: u64,
        outcome: &mut RegisterOutcome,
    ) -> Result<Option<u32>, RegisterError> {
        let header_expires = req.expires().map_err(|_| RegisterError::BadExpires)?;
        let call_id = req.call_id().map_err(|_| RegisterError::BadTo)?;
        let cseq = req.cseq().map_err(|_| RegisterError::BadTo)?.seq;
        let branch = branch_hash(req.top_via().ok().and_then(|v| v.branch()));
        // The same Call-ID and CSeq with the same branch is a retransmission of the request
        // that set the binding: the transaction layer would resend its response, so answer
        // with the current bindings and change nothing. Any other CSeq that is not higher is
        // out of order (§10.3 step 7).
        let stale = |b: &Binding| -> Option<Result<Option<u32>, RegisterError>> {
            if b.call_id() != call_id || cseq > b.cseq() {
                None
            } else if cseq == b.cseq() && branch != 0 && b.branch_hash() == branch {
                Some(Ok(existing))
            } else {
                Some(Err(RegisterError::OutOfOrder))
            }
        };

        if req.contact_star() {
            // §10.3 step 6: "*" only alone and with Expires: 0.
            if req.header_all(HeaderName::Contact).count() != 1 || header_expires != Some(0) {
                return Err(RegisterError::BadWildcard);
            }
            let Some(i) = existing else {
                return Ok(None);
            };
            let set = &mut self.aors[i as usize].bindings;
            if let Some(verdict) = set.as_slice().iter().find_map(stale) {
                return verdict;
            }
            let removed = set.retain(|_| false);
            self.binding_count -= removed;
            outcome.removed = removed as u16;
            return Ok(Some(i));
        }

        // Path values in order (RFC 3327 §5.3), stored with each binding this request sets.
        let paths: Vec<&[u8]> = req
            .header_all(HeaderName::Path)
            .flat_map(|v| CommaSplit::new(v).map(|(_, e)| e))
            .collect();

        // Phase 1: check every contact and build its binding; nothing changes yet.
        let stored: &[Binding] = match existing {
            Some(i) => self.aors[i as usize].bindings.as_slice(),
            None => &[],
        };
        let mut pending: Vec<Pending<'_>> = Vec::new();
        for contact in req.contacts_lazy() {
            let contact = contact.map_err(|_| RegisterError::BadContact)?;
            let uri = contact.uri().map_err(|_| RegisterError::BadContact)?;
            // Step 7: the expires parameter wins over the Expires header, then the default.
            let requested = match contact.params.get("expires") {
                Some(_) => contact.expires().ok_or(RegisterError::BadContact)?,
                None => header_expires.unwrap_or(self.config.default_expires),
            };
            if requested != 0 && requested < self.config.min_expires {
                return Err(RegisterError::IntervalTooBrief);
            }
            let expires = requested.min(self.config.max_expires);
            let q = match contact.params.get("q") {
                Some(_) => contact.q().ok_or(RegisterError::BadContact)?,
                None => DEFAULT_Q,
            };
            let instance = contact.instance().filter(|i| !i.is_empty());
            let reg_id = instance.and(contact.reg_id()).filter(|&r| r != 0);

            let mut target = Target::New;
            if let Some(earlier) = pending
                .iter_mut()
                .find(|p| !p.superseded && same_contact(p, &uri, instance, reg_id))
            {
                earlier.superseded = true;
                target = earlier.target;
            } else if let Some(k) = stored
                .iter()
                .position(|b| names_binding(b, &uri, instance, reg_id))
            {
                if let Some(verdict) = stale(&stored[k]) {
                    return verdict;
                }
                target = Target::Existing(k);
            }
            let binding = if expires == 0 {
                None
            } else {
                let fields = BindingFields {
                    contact_uri: contact.uri_raw,
                    call_id,
                    cseq,
                    expires_at_ms: now_ms + expires as u64 * 1000,
                    q,
                    instance,
                    reg_id,
                    source: source.addr,
                    nat: source.nat,
                    socket: source.socket,
                    stream: source.stream,
                    branch_hash: branch,
                };
                Some(
                    Binding::new(&fields, paths.iter().copied())
                        .map_err(|_| RegisterError::FieldTooLong)?,
                )
            };
            pending.push(Pending {
                uri,
                instance,
                reg_id,
                target,
                binding,
                superseded: false,
            });
        }

        let (mut adds, mut removes) = (0usize, 0usize);
        for p in pending.iter().filter(|p| !p.superseded) {
            match (p.target, &p.binding) {
                (Target::New, Some(_)) => adds += 1,
                (Target::Existing(_), None) => removes += 1,
                _ => {}
            }
        }
        if adds > 0 && stored.len() - removes + adds > self.config.max_contacts_per_aor {
            return Err(RegisterError::TooManyContacts);
        }

        // Phase 2: commit.
        let i = match existing {
            Some(i) => i,
            None if adds > 0 => self.create_aor(key),
            None => return Ok(None),
        };
        let set = &mut self.aors[i as usize].bindings;
        let mut remove_at: Vec<usize> = Vec::new();
        for p in pending.into_iter().filter(|p| !p.superseded) {
            match (p.target, p.binding) {
                (Target::Existing(k), Some(b)) => {
                    set.as_mut_slice()[k] = b;
                    outcome.refreshed += 1;
                }
                (Target::Existing(k), None) => remove_at.push(k),
                (Target::New, Some(b)) => {
                    set.push(b);
                    outcome.added += 1;
                }
                (Target::New, None) => {}
            }
        }
        if !remove_at.is_empty() {
            let mut pos = 0;
            let removed = set.retain(|_| {
                pos += 1;
                !remove_at.contains(&(pos - 1))
            });
            outcome.removed = removed as u16;
        }
        self.binding_count = self.binding_count + outcome.added as usize - outcome.removed as usize;
        Ok(Some(i))
    }
}
