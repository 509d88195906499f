//! Call detail records: one [`CallRecord`] per call attempt (an initial INVITE that is not a
//! digest challenge round), built from the proxy's own view of the call: the INVITE's server
//! transaction (when it arrived, the final response that went upstream and the branch it
//! came from), the BYE that our Record-Route (RFC 3261 §16.6 step 4) brings through the
//! shard that forwarded the INVITE, and the in-dialog INVITE or UPDATE that refreshes a
//! session timer (RFC 4028 §10). A dialog whose BYE never comes is closed at the configured
//! maximum duration, or when its session timer runs out, and marked so.
//!
//! Sans-I/O: records collect here until the shell takes them (`Core::take_records`) and
//! hands them to the CDR writer (`crate::cdr`); times are the core's clock (Unix ms).

use crate::sip::{HeaderName, Message};
use hashbrown::HashMap;
use std::net::SocketAddr;

/// How often answered calls are checked against their maximum duration and session timer.
const CHECK_EVERY_MS: u64 = 1_000;
/// A call attempt whose final response never came (it cannot, with Timer C; this bounds
/// memory if it ever does) is closed as failed after this long.
const PENDING_MAX_MS: u64 = 2 * 3600 * 1000;
/// A refused INVITE's retransmissions get the same refusal (statelessly) for as long as the
/// caller may retransmit (64*T1, RFC 3261 §17.1.1.2): remembered that long, they make no
/// second record.
const REFUSED_MEMORY_MS: u64 = 32_000;

/// CDR settings: records are kept when these are set (`--cdr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrSettings {
    /// An answered call whose BYE never came is closed this long after its answer.
    pub max_duration_ms: u64,
}

impl Default for CdrSettings {
    fn default() -> Self {
        CdrSettings {
            max_duration_ms: 4 * 3600 * 1000,
        }
    }
}

/// How a call attempt ended, from its final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// 2xx.
    Answered,
    /// 486 Busy Here, 600 Busy Everywhere, 603 Decline.
    Busy,
    /// 408 (nobody answered in time: Timer C, a ring group's ring time) or 480.
    NoAnswer,
    /// 487: the caller cancelled.
    Cancelled,
    /// 3xx: the caller was sent elsewhere (redirect mode).
    Redirected,
    /// Anything else (404, 403, 5xx, ...).
    Failed,
}

impl Disposition {
    /// The disposition of a call attempt whose final response is `code`.
    pub fn of(code: u16) -> Disposition {
        match code {
            200..=299 => Disposition::Answered,
            486 | 600 | 603 => Disposition::Busy,
            408 | 480 => Disposition::NoAnswer,
            487 => Disposition::Cancelled,
            300..=399 => Disposition::Redirected,
            _ => Disposition::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::Busy => "busy",
            Disposition::NoAnswer => "no_answer",
            Disposition::Cancelled => "cancelled",
            Disposition::Redirected => "redirected",
            Disposition::Failed => "failed",
        }
    }
}

/// Who or what ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hangup {
    /// The caller's BYE (or CANCEL, for a cancelled attempt).
    Caller,
    /// The callee's BYE.
    Callee,
    /// No BYE within the maximum duration.
    MaxDuration,
    /// The session timer (RFC 4028) ran out without a refresh.
    SessionTimer,
    /// The server stopped while the call was in progress.
    Shutdown,
}

impl Hangup {
    pub fn as_str(self) -> &'static str {
        match self {
            Hangup::Caller => "caller",
            Hangup::Callee => "callee",
            Hangup::MaxDuration => "max_duration",
            Hangup::SessionTimer => "session_timer",
            Hangup::Shutdown => "shutdown",
        }
    }
}

/// One call attempt. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallRecord {
    /// Unique per record (`<start_ms>-<shard>-<sequence>`): a sink that gets a record twice
    /// (a retry after a crash) keeps one.
    pub id: String,
    pub call_id: String,
    /// When the INVITE arrived.
    pub start_ms: u64,
    /// When the 2xx went upstream (None: not answered).
    pub answer_ms: Option<u64>,
    /// When the final non-2xx went upstream, or the call ended.
    pub end_ms: u64,
    /// From the INVITE to the answer (or to the final response).
    pub setup_ms: u64,
    /// From the answer to the end (0 when not answered).
    pub duration_ms: u64,
    /// The digest user who placed the call (None without authentication, or from a trunk).
    pub caller_user: Option<String>,
    /// The From URI of the INVITE.
    pub from: String,
    /// The user part of the Request-URI as received (the whole URI without one).
    pub dialed: String,
    /// The To URI of the INVITE.
    pub to: String,
    /// Where the final response came from (`ip:port` of the branch), None when this
    /// server answered itself.
    pub target: Option<SocketAddr>,
    /// What routing chose: `user`, `extension`, `group <number>`, `paging <number>`,
    /// `trunks`, `emergency`, `redirect` (None: the call was refused before).
    pub route: Option<String>,
    /// The trunk the call left through (or came in from).
    pub trunk: Option<String>,
    /// The final response's status.
    pub code: u16,
    pub disposition: Disposition,
    /// Who ended an answered call (or `caller` for a cancelled one).
    pub hangup: Option<Hangup>,
    /// The address the INVITE came from.
    pub source: SocketAddr,
    pub shard: usize,
}

/// The column order of CSV output (the fields of [`CallRecord`]).
pub const CSV_COLUMNS: &[&str] = &[
    "id",
    "call_id",
    "start_ms",
    "answer_ms",
    "end_ms",
    "setup_ms",
    "duration_ms",
    "caller_user",
    "from",
    "dialed",
    "to",
    "target",
    "route",
    "trunk",
    "code",
    "disposition",
    "hangup",
    "source",
    "shard",
];

/// Appends `v` as a JSON string (RFC 8259 §7, escaping as serde_json does).
fn json_str(out: &mut String, v: &str) {
    out.push('"');
    // Almost every value needs no escape: one pass to find out, then one copy.
    if !v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(v);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in v.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&v[start..i]);
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&v[start..]);
    out.push('"');
}

/// Appends `a` as `Display` writes it (`ip:port`, `[ipv6]:port`), without the formatting
/// machinery for the common IPv4 case.
fn push_addr(out: &mut String, a: SocketAddr) {
    let mut n = itoa::Buffer::new();
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(n.format(*o));
            }
            out.push(':');
            out.push_str(n.format(v4.port()));
        }
        SocketAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{a}");
        }
    }
}

impl CallRecord {
    /// Appends the record as one JSON object, the same text serde_json writes (checked by a
    /// test) in about a fifth of its time: the CDR writer's main cost.
    pub fn write_json(&self, out: &mut String) {
        let mut n = itoa::Buffer::new();
        let mut num = |out: &mut String, key: &str, v: u64| {
            out.push_str(key);
            out.push_str(n.format(v));
        };
        let opt_str = |out: &mut String, key: &str, v: Option<&str>| {
            out.push_str(key);
            match v {
                Some(v) => json_str(out, v),
                None => out.push_str("null"),
            }
        };
        out.push_str("{\"id\":");
        json_str(out, &self.id);
        out.push_str(",\"call_id\":");
        json_str(out, &self.call_id);
        num(out, ",\"start_ms\":", self.start_ms);
        match self.answer_ms {
            Some(v) => num(out, ",\"answer_ms\":", v),
            None => out.push_str(",\"answer_ms\":null"),
        }
        num(out, ",\"end_ms\":", self.end_ms);
        num(out, ",\"setup_ms\":", self.setup_ms);
        num(out, ",\"duration_ms\":", self.duration_ms);
        opt_str(out, ",\"caller_user\":", self.caller_user.as_deref());
        out.push_str(",\"from\":");
        json_str(out, &self.from);
        out.push_str(",\"dialed\":");
        json_str(out, &self.dialed);
        out.push_str(",\"to\":");
        json_str(out, &self.to);
        out.push_str(",\"target\":");
        match self.target {
            Some(t) => {
                out.push('"');
                push_addr(out, t);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        opt_str(out, ",\"route\":", self.route.as_deref());
        opt_str(out, ",\"trunk\":", self.trunk.as_deref());
        num(out, ",\"code\":", u64::from(self.code));
        opt_str(out, ",\"disposition\":", Some(self.disposition.as_str()));
        opt_str(out, ",\"hangup\":", self.hangup.map(Hangup::as_str));
        out.push_str(",\"source\":\"");
        push_addr(out, self.source);
        out.push('"');
        num(out, ",\"shard\":", self.shard as u64);
        out.push('}');
    }

    /// The record's fields as text, in [`CSV_COLUMNS`] order (empty for None).
    pub fn fields(&self) -> [String; 19] {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        [
            self.id.clone(),
            self.call_id.clone(),
            self.start_ms.to_string(),
            self.answer_ms.map(|v| v.to_string()).unwrap_or_default(),
            self.end_ms.to_string(),
            self.setup_ms.to_string(),
            self.duration_ms.to_string(),
            opt(&self.caller_user),
            self.from.clone(),
            self.dialed.clone(),
            self.to.clone(),
            self.target.map(|t| t.to_string()).unwrap_or_default(),
            opt(&self.route),
            opt(&self.trunk),
            self.code.to_string(),
            self.disposition.as_str().to_owned(),
            self.hangup
                .map(|h| h.as_str().to_owned())
                .unwrap_or_default(),
            self.source.to_string(),
            self.shard.to_string(),
        ]
    }
}

/// What the request path learned about a call attempt before the proxy took it: who the
/// caller is and what routing chose.
#[derive(Debug, Default, Clone)]
pub struct AttemptNote {
    pub user: Option<Box<str>>,
    pub route: Option<String>,
}

/// A call attempt not answered yet (or answered: its record waits for the end).
struct Open {
    record: CallRecord,
    /// The From tag of the INVITE: a BYE with it comes from the caller.
    caller_tag: Box<[u8]>,
    /// The To tag of the 2xx that answered: the dialog the record follows (a forked INVITE
    /// answered twice makes two dialogs with one Call-ID; the BYE of the other is not this
    /// call's end).
    callee_tag: Box<[u8]>,
    /// RFC 4028: the session interval of the answer, and when it was last refreshed.
    session_ms: Option<u64>,
    refreshed_ms: u64,
}

impl Open {
    /// True when `m` (a request or response) belongs to the dialog this record follows:
    /// its tags are the caller's and the answering callee's, either way round.
    fn is_dialog(&self, m: &Message<'_>) -> bool {
        let from = m.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let to = m.to().ok().and_then(|t| t.tag()).unwrap_or_default();
        let (caller, callee) = (&*self.caller_tag, &*self.callee_tag);
        (from == caller && (callee.is_empty() || to == callee))
            || (to == caller && (callee.is_empty() || from == callee))
    }
}

/// A call in progress as the admin API lists it.
#[derive(Debug, Clone)]
pub struct OpenCall {
    pub call_id: String,
    pub from: String,
    pub to: String,
    pub answered: bool,
    /// Since the answer, or since the INVITE while ringing.
    pub since_ms: u64,
}

/// One shard's call detail records: the attempts in progress and the records ready.
pub struct CdrTracker {
    settings: CdrSettings,
    shard: usize,
    seq: u64,
    /// Attempts waiting for their final response, by Call-ID.
    ringing: HashMap<Box<[u8]>, Open>,
    /// Answered calls waiting for their BYE, by Call-ID.
    answered: HashMap<Box<[u8]>, Open>,
    /// Finished records the shell has not taken yet.
    done: Vec<CallRecord>,
    /// INVITEs refused lately (Call-ID and top Via branch), and when.
    refused: HashMap<Box<[u8]>, u64>,
    next_check_ms: u64,
}

/// Wire bytes as record text: invalid UTF-8 and NUL (which PostgreSQL's text refuses, and
/// an escaped `%00` in a dialed number can produce) become U+FFFD.
fn text(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    if t.contains('\0') {
        t.replace('\0', "\u{fffd}")
    } else {
        t.into_owned()
    }
}

impl CdrTracker {
    pub fn new(shard: usize, settings: CdrSettings) -> CdrTracker {
        CdrTracker {
            settings,
            shard,
            seq: 0,
            ringing: HashMap::new(),
            answered: HashMap::new(),
            done: Vec::new(),
            refused: HashMap::new(),
            next_check_ms: 0,
        }
    }

    pub fn set_settings(&mut self, settings: CdrSettings) {
        self.settings = settings;
    }

    fn record(
        &mut self,
        invite: &Message<'_>,
        src: SocketAddr,
        note: &AttemptNote,
        now_ms: u64,
    ) -> Option<(Box<[u8]>, Open)> {
        let call_id = invite.header(HeaderName::CallId)?;
        let from = invite.from().ok()?;
        let to = invite.to().ok()?;
        let ruri = invite.request_uri().ok()?;
        let dialed = match ruri.user {
            Some(u) => crate::sip::uri::Unescape::new(u).collect::<Vec<u8>>(),
            None => invite.request_uri_bytes().unwrap_or_default().to_vec(),
        };
        self.seq += 1;
        let record = CallRecord {
            id: {
                let mut n = itoa::Buffer::new();
                let mut id = String::with_capacity(32);
                id.push_str(n.format(now_ms));
                id.push('-');
                id.push_str(n.format(self.shard));
                id.push('-');
                id.push_str(n.format(self.seq));
                id
            },
            call_id: text(call_id),
            start_ms: now_ms,
            answer_ms: None,
            end_ms: now_ms,
            setup_ms: 0,
            duration_ms: 0,
            caller_user: note.user.as_deref().map(str::to_owned),
            from: text(from.uri_raw),
            dialed: text(&dialed),
            to: text(to.uri_raw),
            target: None,
            route: note.route.clone(),
            trunk: None,
            code: 0,
            disposition: Disposition::Failed,
            hangup: None,
            source: src,
            shard: self.shard,
        };
        let open = Open {
            record,
            caller_tag: from.tag().unwrap_or_default().into(),
            callee_tag: Box::default(),
            session_ms: None,
            refreshed_ms: now_ms,
        };
        Some((call_id.into(), open))
    }

    /// An initial INVITE the proxy took (a server transaction forwarding it): its attempt
    /// starts. A second INVITE with the Call-ID of an attempt in progress is the same call.
    /// Returns true when the attempt is this request's (false: a duplicate, no record).
    pub fn begin(
        &mut self,
        invite: &Message<'_>,
        src: SocketAddr,
        note: &AttemptNote,
        now_ms: u64,
    ) -> bool {
        let Some(id) = invite.header(HeaderName::CallId) else {
            return false;
        };
        if self.ringing.contains_key(id) || self.answered.contains_key(id) {
            return false;
        }
        match self.record(invite, src, note, now_ms) {
            Some((id, open)) => {
                self.ringing.insert(id, open);
                true
            }
            None => false,
        }
    }

    /// An initial INVITE this server refused itself with `status` (404, 403, 480, 486 of a
    /// call limit, 302 of redirect mode, ...): its record is complete at once.
    pub fn refused(
        &mut self,
        invite: &Message<'_>,
        src: SocketAddr,
        note: &AttemptNote,
        status: u16,
        now_ms: u64,
    ) {
        let mut key = invite
            .header(HeaderName::CallId)
            .unwrap_or_default()
            .to_vec();
        if let Some(b) = invite.top_via().ok().and_then(|v| v.branch()) {
            key.push(b' ');
            key.extend_from_slice(b);
        }
        if self.refused.insert(key.into(), now_ms).is_some() {
            return;
        }
        if let Some((_, open)) = self.record(invite, src, note, now_ms) {
            let mut r = open.record;
            r.code = status;
            r.disposition = Disposition::of(status);
            self.done.push(r);
        }
    }

    /// The final response `resp` (`status`) to an INVITE went upstream; `target` is the
    /// branch it came from (None: our own). A re-INVITE's has no attempt and is ignored.
    pub fn final_response(
        &mut self,
        resp: &Message<'_>,
        status: u16,
        target: Option<SocketAddr>,
        cancelled: bool,
        now_ms: u64,
    ) {
        let Some(id) = resp.header(HeaderName::CallId) else {
            return;
        };
        let Some(mut open) = self.ringing.remove(id) else {
            return;
        };
        if matches!(status, 401 | 407) {
            // A challenge from downstream: the caller's retry with credentials is the attempt.
            return;
        }
        let r = &mut open.record;
        r.code = status;
        r.disposition = match Disposition::of(status) {
            // A 487 the caller did not ask for (its CANCEL) is a plain failure.
            Disposition::Cancelled if !cancelled => Disposition::Failed,
            d => d,
        };
        r.target = target;
        r.setup_ms = now_ms.saturating_sub(r.start_ms);
        r.end_ms = now_ms;
        if r.disposition == Disposition::Answered {
            r.answer_ms = Some(now_ms);
            open.callee_tag = resp
                .to()
                .ok()
                .and_then(|t| t.tag())
                .unwrap_or_default()
                .into();
            open.session_ms = session_expires_ms(resp);
            open.refreshed_ms = now_ms;
            self.answered.insert(id.into(), open);
        } else {
            if r.disposition == Disposition::Cancelled {
                r.hangup = Some(Hangup::Caller);
            }
            self.done.push(open.record);
        }
    }

    /// The 2xx of an INVITE that is no attempt (a re-INVITE) went upstream: it refreshes the
    /// session of its call (RFC 4028 §9: with the interval it names, or none: the timer is
    /// off).
    pub fn reinvite_answered(&mut self, resp: &Message<'_>, status: u16, now_ms: u64) {
        if !(200..300).contains(&status) {
            return;
        }
        let Some(id) = resp.header(HeaderName::CallId) else {
            return;
        };
        if let Some(open) = self.answered.get_mut(id) {
            if !open.is_dialog(resp) {
                return;
            }
            open.refreshed_ms = now_ms;
            open.session_ms = session_expires_ms(resp);
        }
    }

    /// Calls in progress when the server stops: each gets its record now, `hangup`
    /// `shutdown` (a ringing one with code 0).
    pub fn close_all(&mut self, now_ms: u64) {
        let answered: Vec<Box<[u8]>> = self.answered.keys().cloned().collect();
        for id in answered {
            if let Some(open) = self.answered.remove(&id) {
                self.close(open, Hangup::Shutdown, now_ms);
            }
        }
        for (_, open) in self.ringing.drain() {
            let mut r = open.record;
            r.end_ms = now_ms;
            r.setup_ms = now_ms.saturating_sub(r.start_ms);
            r.hangup = Some(Hangup::Shutdown);
            self.done.push(r);
        }
    }

    /// An in-dialog UPDATE of call `call_id` passed: its session is refreshed (RFC 4028
    /// §10; a re-INVITE refreshes it with its 2xx, [`CdrTracker::reinvite_answered`]).
    pub fn refresh(&mut self, msg: &Message<'_>, call_id: &[u8], now_ms: u64) {
        if let Some(open) = self.answered.get_mut(call_id) {
            if !open.is_dialog(msg) {
                return;
            }
            open.refreshed_ms = now_ms;
            if let Some(ms) = session_expires_ms(msg) {
                open.session_ms = Some(ms);
            }
        }
    }

    /// A BYE of call `call_id` (unmasked) passed: the call ended, by the caller when the
    /// BYE's From tag is the INVITE's.
    pub fn bye(&mut self, bye: &Message<'_>, call_id: &[u8], now_ms: u64) {
        let Some(open) = self.answered.get(call_id) else {
            return;
        };
        if !open.is_dialog(bye) {
            // Another dialog of the same Call-ID (a second 2xx of a forked INVITE).
            return;
        }
        let from_tag = bye.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let who = if from_tag == &*open.caller_tag {
            Hangup::Caller
        } else {
            Hangup::Callee
        };
        if let Some(open) = self.answered.remove(call_id) {
            self.close(open, who, now_ms);
        }
    }

    fn close(&mut self, open: Open, who: Hangup, end_ms: u64) {
        let mut r = open.record;
        r.end_ms = end_ms;
        r.duration_ms = end_ms.saturating_sub(r.answer_ms.unwrap_or(end_ms));
        r.hangup = Some(who);
        self.done.push(r);
    }

    /// When [`CdrTracker::poll`] is next needed (while calls are open).
    pub fn next_timeout(&self) -> Option<u64> {
        (!self.answered.is_empty() || !self.ringing.is_empty() || !self.refused.is_empty())
            .then_some(self.next_check_ms)
    }

    /// Closes the answered calls past their maximum duration or their session timer.
    pub fn poll(&mut self, now_ms: u64) {
        if now_ms < self.next_check_ms {
            return;
        }
        self.next_check_ms = now_ms + CHECK_EVERY_MS;
        self.refused
            .retain(|_, at| now_ms.saturating_sub(*at) < REFUSED_MEMORY_MS);
        let max = self.settings.max_duration_ms;
        let over: Vec<(Box<[u8]>, Hangup, u64)> = self
            .answered
            .iter()
            .filter_map(|(id, o)| {
                let answer = o.record.answer_ms.unwrap_or(o.record.start_ms);
                let session_end = o.session_ms.map(|s| o.refreshed_ms + s);
                let max_end = answer + max;
                match session_end {
                    Some(end) if end <= now_ms && end < max_end => {
                        Some((id.clone(), Hangup::SessionTimer, end))
                    }
                    _ if max_end <= now_ms => Some((id.clone(), Hangup::MaxDuration, max_end)),
                    _ => None,
                }
            })
            .collect();
        for (id, who, end) in over {
            if let Some(open) = self.answered.remove(&id) {
                self.close(open, who, end);
            }
        }
        let stale: Vec<Box<[u8]>> = self
            .ringing
            .iter()
            .filter(|(_, o)| now_ms.saturating_sub(o.record.start_ms) >= PENDING_MAX_MS)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(open) = self.ringing.remove(&id) {
                let mut r = open.record;
                r.code = 500;
                r.end_ms = now_ms;
                r.setup_ms = now_ms.saturating_sub(r.start_ms);
                self.done.push(r);
            }
        }
    }

    /// Moves the finished records into `into`.
    pub fn take(&mut self, into: &mut Vec<CallRecord>) {
        into.append(&mut self.done);
    }

    /// Records ready to be taken.
    pub fn ready(&self) -> usize {
        self.done.len()
    }

    /// The calls in progress: ringing and answered.
    pub fn open_calls(&self) -> Vec<OpenCall> {
        let list = |m: &HashMap<Box<[u8]>, Open>, answered: bool| -> Vec<OpenCall> {
            m.values()
                .map(|o| OpenCall {
                    call_id: o.record.call_id.clone(),
                    from: o.record.from.clone(),
                    to: o.record.to.clone(),
                    answered,
                    since_ms: o.record.answer_ms.unwrap_or(o.record.start_ms),
                })
                .collect()
        };
        let mut v = list(&self.ringing, false);
        v.extend(list(&self.answered, true));
        v
    }
}

/// RFC 4028 §4: the Session-Expires interval (delta-seconds, before any parameter) in ms.
fn session_expires_ms(m: &Message<'_>) -> Option<u64> {
    let v = m.header(HeaderName::SessionExpires)?;
    let digits = v.split(|&b| b == b';').next()?.trim_ascii();
    let s: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (s > 0).then_some(s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(call_id: &str) -> Vec<u8> {
        format!(
            "INVITE sip:%2B4930@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:+4930@example.com>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn response(call_id: &str, status: u16, extra: &str) -> Vec<u8> {
        format!(
            "SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:+4930@example.com>;tag=b1\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// A BYE from the side whose tag is `from_tag` (`a1` the caller's, `b1` the callee's).
    fn bye(call_id: &str, from_tag: &str) -> Vec<u8> {
        let to_tag = if from_tag == "a1" { "b1" } else { "a1" };
        format!(
            "BYE sip:x@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK2\r\n\
             From: <sip:a@example.com>;tag={from_tag}\r\nTo: <sip:b@example.com>;tag={to_tag}\r\n\
             Call-ID: {call_id}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    const SRC: &str = "10.0.0.1:5060";
    const PEER: &str = "10.0.0.2:5060";

    fn tracker() -> CdrTracker {
        CdrTracker::new(
            1,
            CdrSettings {
                max_duration_ms: 60_000,
            },
        )
    }

    fn begin(t: &mut CdrTracker, id: &str, at: u64) {
        let note = AttemptNote {
            user: Some("alice".into()),
            route: Some("trunks".into()),
        };
        let inv = invite(id);
        t.begin(
            &Message::parse(&inv).unwrap(),
            SRC.parse().unwrap(),
            &note,
            at,
        );
    }

    fn finish(t: &mut CdrTracker, id: &str, status: u16, extra: &str, at: u64) {
        let r = response(id, status, extra);
        t.final_response(
            &Message::parse(&r).unwrap(),
            status,
            PEER.parse().ok(),
            true,
            at,
        );
    }

    fn taken(t: &mut CdrTracker) -> Vec<CallRecord> {
        let mut v = Vec::new();
        t.take(&mut v);
        v
    }

    #[test]
    fn answered_call_ended_by_the_callee() {
        let mut t = tracker();
        begin(&mut t, "c1", 1_000);
        finish(&mut t, "c1", 200, "", 1_300);
        assert!(
            taken(&mut t).is_empty(),
            "an answered call waits for its BYE"
        );
        assert_eq!(t.open_calls().len(), 1);
        let b = bye("c1", "b1");
        t.bye(&Message::parse(&b).unwrap(), b"c1", 6_300);
        let r = taken(&mut t);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(
            (r.start_ms, r.answer_ms, r.end_ms, r.setup_ms, r.duration_ms),
            (1_000, Some(1_300), 6_300, 300, 5_000)
        );
        assert_eq!(r.disposition, Disposition::Answered);
        assert_eq!(r.hangup, Some(Hangup::Callee));
        assert_eq!(r.dialed, "+4930", "the dialed number unescaped");
        assert_eq!(r.caller_user.as_deref(), Some("alice"));
        assert_eq!(r.target, PEER.parse().ok());
        assert_eq!(r.source, SRC.parse().unwrap());
        assert_eq!(r.route.as_deref(), Some("trunks"));
        assert!(t.open_calls().is_empty());
    }

    #[test]
    fn the_bye_of_another_dialog_of_a_forked_call_does_not_end_it() {
        let mut t = tracker();
        begin(&mut t, "f1", 0);
        finish(&mut t, "f1", 200, "", 10);
        // A second 2xx (another phone, To tag b2) makes a second dialog; the caller ends it.
        let other = String::from_utf8(bye("f1", "a1"))
            .unwrap()
            .replace("tag=b1", "tag=b2");
        t.bye(&Message::parse(other.as_bytes()).unwrap(), b"f1", 20);
        assert!(taken(&mut t).is_empty(), "the answered dialog goes on");
        let b = bye("f1", "b1");
        t.bye(&Message::parse(&b).unwrap(), b"f1", 30);
        let r = taken(&mut t);
        assert_eq!(
            (r.len(), r[0].end_ms, r[0].hangup),
            (1, 30, Some(Hangup::Callee))
        );
    }

    #[test]
    fn the_callers_bye_is_the_callers_hangup() {
        let mut t = tracker();
        begin(&mut t, "c2", 0);
        finish(&mut t, "c2", 200, "", 10);
        let b = bye("c2", "a1");
        t.bye(&Message::parse(&b).unwrap(), b"c2", 20);
        assert_eq!(taken(&mut t)[0].hangup, Some(Hangup::Caller));
    }

    #[test]
    fn each_final_status_has_its_disposition() {
        for (status, want) in [
            (486, Disposition::Busy),
            (603, Disposition::Busy),
            (408, Disposition::NoAnswer),
            (480, Disposition::NoAnswer),
            (487, Disposition::Cancelled),
            (302, Disposition::Redirected),
            (404, Disposition::Failed),
            (500, Disposition::Failed),
        ] {
            let mut t = tracker();
            begin(&mut t, "c", 100);
            finish(&mut t, "c", status, "", 400);
            let r = taken(&mut t);
            assert_eq!(r.len(), 1, "{status}");
            assert_eq!(r[0].disposition, want, "{status}");
            assert_eq!(
                (r[0].answer_ms, r[0].duration_ms, r[0].setup_ms),
                (None, 0, 300)
            );
            let hangup = (want == Disposition::Cancelled).then_some(Hangup::Caller);
            assert_eq!(r[0].hangup, hangup);
            assert!(t.open_calls().is_empty());
        }
    }

    #[test]
    fn a_retransmitted_invite_or_a_reinvite_makes_no_second_record() {
        let mut t = tracker();
        begin(&mut t, "c3", 0);
        begin(&mut t, "c3", 5);
        finish(&mut t, "c3", 200, "", 10);
        begin(&mut t, "c3", 15);
        // A re-INVITE's 2xx: no attempt of its own.
        finish(&mut t, "c3", 200, "", 20);
        let b = bye("c3", "a1");
        t.bye(&Message::parse(&b).unwrap(), b"c3", 30);
        t.bye(&Message::parse(&b).unwrap(), b"c3", 31);
        let r = taken(&mut t);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].start_ms, r[0].answer_ms, r[0].end_ms),
            (0, Some(10), 30)
        );
    }

    #[test]
    fn a_call_without_bye_closes_at_its_maximum_duration() {
        let mut t = tracker();
        begin(&mut t, "c4", 0);
        finish(&mut t, "c4", 200, "", 1_000);
        t.poll(30_000);
        assert!(taken(&mut t).is_empty());
        assert!(t.next_timeout().is_some(), "an open call needs the clock");
        t.poll(61_500);
        let r = taken(&mut t);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].hangup, Some(Hangup::MaxDuration));
        assert_eq!((r[0].end_ms, r[0].duration_ms), (61_000, 60_000));
        assert_eq!(t.next_timeout(), None, "nothing open, no timer");
    }

    #[test]
    fn a_refresh_whose_2xx_names_no_interval_turns_the_timer_off() {
        let mut t = tracker();
        begin(&mut t, "c7", 0);
        finish(&mut t, "c7", 200, "Session-Expires: 10\r\n", 0);
        t.reinvite_answered(
            &Message::parse(&response("c7", 200, "")).unwrap(),
            200,
            5_000,
        );
        t.poll(30_000);
        assert!(
            taken(&mut t).is_empty(),
            "RFC 4028 §9: no Session-Expires, no timer"
        );
    }

    #[test]
    fn a_487_the_caller_did_not_ask_for_is_a_failure_and_a_challenge_no_record() {
        let mut t = tracker();
        begin(&mut t, "c8", 0);
        let r = response("c8", 487, "");
        t.final_response(&Message::parse(&r).unwrap(), 487, None, false, 5);
        assert_eq!(taken(&mut t)[0].disposition, Disposition::Failed);
        begin(&mut t, "c9", 0);
        finish(&mut t, "c9", 407, "", 5);
        assert!(
            taken(&mut t).is_empty(),
            "a challenge from downstream is no attempt"
        );
        assert!(t.open_calls().is_empty());
        // The retry with credentials is the attempt.
        begin(&mut t, "c9", 10);
        finish(&mut t, "c9", 486, "", 15);
        assert_eq!(taken(&mut t)[0].start_ms, 10);
    }

    #[test]
    fn nul_never_reaches_a_record() {
        let mut t = tracker();
        let inv = String::from_utf8(invite("n1"))
            .unwrap()
            .replace("%2B4930", "a%00b");
        t.refused(
            &Message::parse(inv.as_bytes()).unwrap(),
            SRC.parse().unwrap(),
            &AttemptNote::default(),
            404,
            1,
        );
        let r = taken(&mut t);
        assert_eq!(r[0].dialed, "a\u{fffd}b");
    }

    #[test]
    fn a_session_timer_without_refresh_closes_the_call() {
        let mut t = tracker();
        begin(&mut t, "c5", 0);
        finish(
            &mut t,
            "c5",
            200,
            "Session-Expires: 10;refresher=uac\r\n",
            1_000,
        );
        // A refresh at 8 s (the 2xx of a re-INVITE) keeps it for 10 s more; one of another
        // dialog (To tag b2) does not.
        let ok = response("c5", 200, "Session-Expires: 10\r\n");
        let other = String::from_utf8(ok.clone())
            .unwrap()
            .replace("tag=b1", "tag=b2");
        t.reinvite_answered(&Message::parse(other.as_bytes()).unwrap(), 200, 9_000);
        t.reinvite_answered(&Message::parse(&ok).unwrap(), 200, 8_000);
        t.poll(12_000);
        assert!(taken(&mut t).is_empty(), "refreshed");
        t.poll(18_500);
        let r = taken(&mut t);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].hangup, Some(Hangup::SessionTimer));
        assert_eq!((r[0].end_ms, r[0].duration_ms), (18_000, 17_000));
    }

    #[test]
    fn a_refusal_is_recorded_at_once() {
        let mut t = tracker();
        let inv = invite("c6");
        t.refused(
            &Message::parse(&inv).unwrap(),
            SRC.parse().unwrap(),
            &AttemptNote::default(),
            404,
            50,
        );
        let r = taken(&mut t);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].code, r[0].disposition), (404, Disposition::Failed));
        assert_eq!((r[0].start_ms, r[0].end_ms, r[0].target), (50, 50, None));
    }

    #[test]
    fn the_json_writer_writes_what_serde_json_writes() {
        let mut r = CallRecord {
            id: "1-0-1".into(),
            call_id: "c\"q\\u\u{1}\u{1f}\u{8}\u{c}\té\r\n/".into(),
            start_ms: 1,
            answer_ms: Some(2),
            end_ms: 3,
            setup_ms: 1,
            duration_ms: 1,
            caller_user: Some("ali\"ce".into()),
            from: "sip:a@x".into(),
            dialed: "+49 30".into(),
            to: "sip:b@x".into(),
            target: "[2001:db8::1]:5060".parse().ok(),
            route: None,
            trunk: Some("t".into()),
            code: 200,
            disposition: Disposition::Answered,
            hangup: Some(Hangup::SessionTimer),
            source: "10.0.0.1:5060".parse().unwrap(),
            shard: 3,
        };
        for _ in 0..2 {
            let mut ours = String::new();
            r.write_json(&mut ours);
            assert_eq!(ours, serde_json::to_string(&r).unwrap());
            let back: CallRecord = serde_json::from_str(&ours).unwrap();
            assert_eq!(back, r);
            (r.answer_ms, r.caller_user, r.target, r.hangup) = (None, None, None, None);
        }
    }

    #[test]
    fn records_have_distinct_ids_and_csv_fields_in_column_order() {
        let mut t = tracker();
        for i in 0..3 {
            begin(&mut t, &format!("d{i}"), 7);
            finish(&mut t, &format!("d{i}"), 486, "", 9);
        }
        let r = taken(&mut t);
        let ids: std::collections::HashSet<&str> = r.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), 3);
        let f = r[0].fields();
        assert_eq!(f.len(), CSV_COLUMNS.len());
        assert_eq!(f[1], "d0");
        assert_eq!(f[15], "busy");
        let json = serde_json::to_value(&r[0]).unwrap();
        for c in CSV_COLUMNS {
            assert!(json.get(c).is_some(), "JSON has {c}");
        }
    }
}
