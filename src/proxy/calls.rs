//! Call logs for operators, at `info`: the outcome of each call setup (the final response
//! to an INVITE sent upstream: Call-ID, from, to, code, setup time) and the end of each
//! answered call (its BYE, with the call's duration). Nothing is kept or formatted when the
//! `info` level is off. The BYE of a call reaches the shard that record-routed its INVITE
//! (the `ss=` of the Record-Route), so one shard sees both ends.

use crate::sip::{HeaderName, Message};
use hashbrown::HashMap;

/// Answered calls are forgotten after this long without a BYE (a lost BYE must not keep
/// memory forever).
const FORGET_AFTER_MS: u64 = 24 * 3600 * 1000;
/// How often forgotten calls are swept.
const SWEEP_EVERY_MS: u64 = 60 * 1000;

/// One shard's call log state: when each answered call (by Call-ID) was answered.
#[derive(Default)]
pub struct CallLog {
    answered: HashMap<Box<[u8]>, u64>,
    next_sweep_ms: u64,
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

impl CallLog {
    /// The final response `resp` (status `status`) to an INVITE went upstream, `setup_ms`
    /// after the INVITE arrived.
    pub fn setup_ended(&mut self, resp: &[u8], status: u16, setup_ms: u64, now_ms: u64) {
        if !enabled() {
            return;
        }
        let Ok(m) = Message::parse(resp) else {
            return;
        };
        let call_id = m.header(HeaderName::CallId);
        let (from, to) = from_to(&m);
        if (200..300).contains(&status) {
            if let Some(id) = call_id {
                // A re-INVITE's 2xx (same Call-ID) keeps the first answer time.
                self.answered.entry(id.into()).or_insert(now_ms);
            }
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
        self.sweep(now_ms);
    }

    /// An INVITE answered by this server itself with a final `status` (no binding, not
    /// found, forbidden, loop, ...); a challenge (401/407) is part of a setup, not logged.
    pub fn rejected(&self, invite: &Message<'_>, status: u16) {
        if matches!(status, 401 | 407) || !enabled() {
            return;
        }
        let call_id = invite.header(HeaderName::CallId);
        let (from, to) = from_to(invite);
        tracing::info!(
            call_id = ?text(call_id), from = ?text(from), to = ?text(to),
            code = status, setup_ms = 0u64, "call not answered"
        );
    }

    /// A BYE is forwarded: the call ends (its duration counts from the answer).
    pub fn bye(&mut self, msg: &Message<'_>, now_ms: u64) {
        if !enabled() {
            return;
        }
        let call_id = msg.header(HeaderName::CallId);
        let answered = call_id.and_then(|id| self.answered.remove(id));
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
    }
}
