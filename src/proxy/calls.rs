//! Call logs for operators, at `info`: the outcome of each call setup (the final response
//! to an INVITE sent upstream: Call-ID, from, to, code, setup time) and the end of each
//! answered call (its BYE, with the call's duration). The answered calls are kept until their
//! BYE whatever the log level (`sipshard ctl calls` lists them); nothing is formatted when the
//! `info` level is off. The BYE of a call reaches the shard that record-routed its INVITE
//! (the `ss=` of the Record-Route), so one shard sees both ends. With call detail records
//! on, the same hooks feed the shard's [`CdrTracker`] (`super::cdr`).

use super::cdr::{AttemptNote, CallRecord, CdrSettings, CdrTracker};
use crate::security::calls::{CallCounts, CallLimits, CallRefusal};
use crate::sip::{HeaderName, Message};
use hashbrown::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Answered calls are forgotten after this long without a BYE (a lost BYE must not keep
/// memory forever).
const FORGET_AFTER_MS: u64 = 24 * 3600 * 1000;
/// How often forgotten calls are swept.
const SWEEP_EVERY_MS: u64 = 60 * 1000;

/// One shard's call log state: when each answered call (by Call-ID) was answered, and the
/// calls counted against their user's toll-fraud limits (`crate::security::calls`).
#[derive(Default)]
pub struct CallLog {
    answered: HashMap<Box<[u8]>, u64>,
    next_sweep_ms: u64,
    /// Calls counted against a user's limits, by Call-ID: the user and when it started.
    counted: HashMap<Box<[u8]>, (Box<str>, u64)>,
    /// The shared counts those calls are in (set with the first one).
    counts: Option<Arc<CallCounts>>,
    /// Calls whose end was never seen stop counting after this long.
    max_call_ms: u64,
    /// Call detail records, when they are on.
    cdr: Option<CdrTracker>,
    /// The initial INVITE being handled: where it came from (None: none, or a leg this
    /// server sent itself, which is part of the call that sent it) and what the request
    /// path learned about it for its record.
    attempt_src: Option<SocketAddr>,
    note: AttemptNote,
}

/// True when call logs are written.
#[inline]
pub fn enabled() -> bool {
    tracing::enabled!(tracing::Level::INFO)
}

/// Wire text for a log field; logged with Debug (quoted, control characters escaped), so a
/// folded header cannot start a new log line.
fn text(b: Option<&[u8]>) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b.unwrap_or(b"-"))
}

fn from_to<'m>(m: &Message<'m>) -> (Option<&'m [u8]>, Option<&'m [u8]>) {
    (
        m.from().ok().map(|f| f.uri_raw),
        m.to().ok().map(|t| t.uri_raw),
    )
}

/// A call not yet ended, as the admin API lists it (`sipshard ctl calls`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallInProgress {
    pub call_id: String,
    /// `answered`, or `ringing` (known with call detail records on).
    pub state: String,
    /// Seconds since the answer (since the INVITE while ringing).
    pub seconds: u64,
    /// From and To URIs (known with call detail records on).
    pub from: Option<String>,
    pub to: Option<String>,
    pub shard: usize,
}

impl CallLog {
    /// Turns call detail records on (Some) or off for the calls that start from now.
    pub fn set_cdr(&mut self, shard: usize, settings: Option<CdrSettings>) {
        match (settings, &mut self.cdr) {
            (Some(s), Some(t)) => t.set_settings(s),
            (Some(s), None) => self.cdr = Some(CdrTracker::new(shard, s)),
            // Off: calls in progress still get their records.
            (None, _) => {}
        }
    }

    /// True when call detail records are kept.
    pub fn cdr_on(&self) -> bool {
        self.cdr.is_some()
    }

    /// An initial INVITE from `src` is being handled (with records on): what the request
    /// path learns goes into [`CallLog::note`]; a leg from this server itself (`ours`) is
    /// part of the call that sent it and gets no record of its own.
    pub fn attempt_starts(&mut self, src: SocketAddr, ours: bool) {
        self.note = AttemptNote::default();
        self.attempt_src = (!ours).then_some(src);
    }

    /// The note of the initial INVITE being handled (None when it gets no record).
    pub fn note(&mut self) -> Option<&mut AttemptNote> {
        self.attempt_src?;
        Some(&mut self.note)
    }

    /// The initial INVITE being handled is done with.
    pub fn attempt_handled(&mut self) {
        self.attempt_src = None;
    }

    /// The proxy took the initial INVITE being handled (a server transaction forwards it):
    /// its record starts. True when the transaction carries a call attempt (its final
    /// response ends it): not for a leg this server sent itself.
    pub fn attempt_forwarded(&mut self, invite: &Message<'_>, now_ms: u64) -> bool {
        match (&mut self.cdr, self.attempt_src) {
            (Some(t), Some(src)) => t.begin(invite, src, &self.note, now_ms),
            _ => false,
        }
    }

    /// The server stops: calls in progress get their records now.
    pub fn close_all(&mut self, now_ms: u64) {
        if let Some(t) = &mut self.cdr {
            t.close_all(now_ms);
        }
    }

    /// An in-dialog INVITE or UPDATE passed: a session timer is refreshed.
    pub fn refresh(&mut self, msg: &Message<'_>, call_id: &[u8], now_ms: u64) {
        if let Some(t) = &mut self.cdr {
            t.refresh(msg, call_id, now_ms);
        }
    }

    /// When [`CallLog::poll`] is next needed.
    pub fn next_timeout(&self) -> Option<u64> {
        self.cdr.as_ref().and_then(|t| t.next_timeout())
    }

    /// Closes calls past their maximum duration or session timer.
    pub fn poll(&mut self, now_ms: u64) {
        if let Some(t) = &mut self.cdr {
            t.poll(now_ms);
        }
    }

    /// Moves the finished call detail records into `into`.
    pub fn take_records(&mut self, into: &mut Vec<CallRecord>) {
        if let Some(t) = &mut self.cdr {
            t.take(into);
        }
    }

    /// The calls not ended yet: with call detail records, every call from its INVITE on;
    /// without, the answered ones (kept whatever the log level).
    pub fn in_progress(&self, shard: usize, now_ms: u64) -> Vec<CallInProgress> {
        if let Some(t) = &self.cdr {
            return t
                .open_calls()
                .into_iter()
                .map(|c| CallInProgress {
                    call_id: c.call_id,
                    state: if c.answered { "answered" } else { "ringing" }.into(),
                    seconds: now_ms.saturating_sub(c.since_ms) / 1000,
                    from: Some(c.from),
                    to: Some(c.to),
                    shard,
                })
                .collect();
        }
        self.answered
            .iter()
            .map(|(id, &at)| CallInProgress {
                call_id: String::from_utf8_lossy(id).into_owned(),
                state: "answered".into(),
                seconds: now_ms.saturating_sub(at) / 1000,
                from: None,
                to: None,
                shard,
            })
            .collect()
    }

    /// Counts a new call `call_id` of `user` against `limits` in the shared `counts`; a call
    /// counted already (its INVITE retransmitted) is let through.
    pub fn admit(
        &mut self,
        call_id: &[u8],
        user: &str,
        limits: &CallLimits,
        counts: &Arc<CallCounts>,
        now_ms: u64,
    ) -> Result<(), CallRefusal> {
        if self.counted.contains_key(call_id) {
            return Ok(());
        }
        counts.try_start(user, limits, now_ms)?;
        self.counts.get_or_insert_with(|| counts.clone());
        self.max_call_ms = limits.max_call_ms;
        self.counted.insert(call_id.into(), (user.into(), now_ms));
        self.sweep(now_ms);
        Ok(())
    }

    /// Calls counted against their user's limits and not ended yet.
    pub fn counted(&self) -> usize {
        self.counted.len()
    }

    /// The call `call_id` ended: it no longer counts for its user.
    fn end(&mut self, call_id: Option<&[u8]>, now_ms: u64) {
        let Some(id) = call_id else { return };
        if let (Some((user, _)), Some(c)) = (self.counted.remove(id), &self.counts) {
            c.end(&user, now_ms);
        }
    }

    /// The final response `resp` (status `status`) to an INVITE went upstream, `setup_ms`
    /// after the INVITE arrived; `target` is the branch it came from (None: our own).
    /// `attempt`: the transaction carries a call attempt (else a re-INVITE or a leg this
    /// server sent itself); `cancelled`: the caller's CANCEL came.
    #[allow(clippy::too_many_arguments)]
    pub fn setup_ended(
        &mut self,
        resp: &[u8],
        status: u16,
        setup_ms: u64,
        target: Option<SocketAddr>,
        attempt: bool,
        cancelled: bool,
        now_ms: u64,
    ) {
        let counting = !self.counted.is_empty();
        let answered = (200..300).contains(&status);
        if !enabled() && !counting && !answered && self.cdr.is_none() {
            return;
        }
        let Ok(m) = Message::parse(resp) else {
            return;
        };
        if let Some(t) = &mut self.cdr {
            if attempt {
                t.final_response(&m, status, target, cancelled, now_ms);
            } else {
                t.reinvite_answered(&m, status, now_ms);
            }
        }
        let call_id = m.header(HeaderName::CallId);
        if counting && status >= 300 {
            self.end(call_id, now_ms);
        }
        // With records on, the tracker keeps the answered calls (`in_progress` lists them).
        if answered && self.cdr.is_none() {
            if let Some(id) = call_id {
                // A re-INVITE's 2xx (same Call-ID) keeps the first answer time.
                self.answered.entry(id.into()).or_insert(now_ms);
            }
            self.sweep(now_ms);
        }
        if !enabled() {
            return;
        }
        let (from, to) = from_to(&m);
        if answered {
            tracing::info!(
                call_id = ?text(call_id), from = ?text(from), to = ?text(to),
                code = status, setup_ms, "call answered"
            );
        } else {
            tracing::info!(
                call_id = ?text(call_id), from = ?text(from), to = ?text(to),
                code = status, setup_ms, "call not answered"
            );
        }
    }

    /// An INVITE answered by this server itself with a final `status` (no binding, not
    /// found, forbidden, loop, ...); a challenge (401/407) is part of a setup, not logged.
    pub fn rejected(&mut self, invite: &Message<'_>, status: u16, now_ms: u64) {
        if matches!(status, 401 | 407) {
            return;
        }
        let call_id = invite.header(HeaderName::CallId);
        if !self.counted.is_empty() {
            self.end(call_id, now_ms);
        }
        if let (Some(t), Some(src)) = (&mut self.cdr, self.attempt_src) {
            t.refused(invite, src, &self.note, status, now_ms);
        }
        if !enabled() {
            return;
        }
        let (from, to) = from_to(invite);
        tracing::info!(
            call_id = ?text(call_id), from = ?text(from), to = ?text(to),
            code = status, setup_ms = 0u64, "call not answered"
        );
    }

    /// A BYE is forwarded: the call ends (its duration counts from the answer). `call_id`
    /// is the BYE's, unmasked when topology hiding masked it.
    pub fn bye(&mut self, msg: &Message<'_>, call_id: &[u8], now_ms: u64) {
        let call_id = Some(call_id);
        if !self.counted.is_empty() {
            self.end(call_id, now_ms);
        }
        let answered = call_id.and_then(|id| self.answered.remove(id));
        if let (Some(t), Some(id)) = (&mut self.cdr, call_id) {
            t.bye(msg, id, now_ms);
        }
        if !enabled() {
            return;
        }
        let (from, to) = from_to(msg);
        match answered {
            Some(at) => tracing::info!(
                call_id = ?text(call_id), from = ?text(from), to = ?text(to),
                duration_s = now_ms.saturating_sub(at) / 1000, "call ended"
            ),
            None => tracing::info!(
                call_id = ?text(call_id), from = ?text(from), to = ?text(to),
                "call ended (answer not seen by this server)"
            ),
        }
    }

    /// Calls whose BYE never came are forgotten after a day.
    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = now_ms + SWEEP_EVERY_MS;
        self.answered
            .retain(|_, at| now_ms.saturating_sub(*at) < FORGET_AFTER_MS);
        let max = self.max_call_ms;
        let stale: Vec<Box<[u8]>> = self
            .counted
            .iter()
            .filter(|(_, (_, since))| now_ms.saturating_sub(*since) >= max)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.end(Some(&id), now_ms);
        }
    }
}
