//! Digest authentication for the registrar and the proxy (RFC 3261 §22.2–§22.4 with the
//! digest of RFC 7616 and the SHA-256 and SHA-512-256 algorithms of RFC 8760).
//!
//! An [`Authenticator`] per shard checks the `Authorization` or `Proxy-Authorization`
//! credentials of a request ([`Authenticator::check`]) and writes challenges
//! ([`Authenticator::write_challenge`]). The parts shared by all shards (realm, users,
//! nonce secret) sit behind an `Arc`; each shard keeps its own nonce-count table.
//!
//! Policy:
//! - only `qop=auth` is accepted (no RFC 2069 digest without qop, no `auth-int`), with
//!   `algorithm` `MD5`, `SHA-256` or `SHA-512-256` (absent means MD5), whichever challenges
//!   are offered; anything else gets a challenge;
//! - challenges offered by default: MD5 only ([`Algorithm::DEFAULT_OFFER`]: sipsak and SIPp
//!   answer only the first challenge, baresip 1.0 gives up on any SHA-256 one);
//!   [`Authenticator::with_algorithms`] sets others, in order of preference;
//! - the response is verified over the `uri` parameter the client sent, as Kamailio does,
//!   whether or not it equals the Request-URI (SIPp's `[authentication]` sends
//!   `uri="sip:HOST:PORT"` for a Request-URI `sip:bob@HOST`); the method is the request's,
//!   and nonce, nonce count and realm bind the credentials as always.
//!   [`Authenticator::with_strict_uri`] requires `uri` to equal the Request-URI byte for
//!   byte (`strict_digest_uri`); the realm must be ours;
//! - the answer does not depend on whether the user exists: an unknown user costs the same
//!   hashing as a wrong password (against a dummy HA1) and gets the same challenge;
//! - `stale=true` only when the response is right but the nonce expired;
//! - [`Authenticator::check_from`] logs every failed authentication (wrong password, unknown
//!   user, replayed nonce count, wrong realm) at `warn` as one `key=value` line with the
//!   source address ([`failure`]), for operators and fail2ban.
//!
//! ```
//! use std::sync::Arc;
//! use sipshard::auth::{AuthOutcome, Authenticator, UserDb, client};
//! use sipshard::sip::{AuthHeader, HeaderName, Message};
//!
//! let mut users = UserDb::new("example.com");
//! users.add_password("alice", "secret").unwrap();
//! let mut auth = Authenticator::new("example.com", Arc::new(users), [9; 32], 300);
//! let now_ms = 1_700_000_000_000;
//!
//! let mut challenge = Vec::new();
//! auth.write_challenge(&mut challenge, "WWW-Authenticate", false, now_ms);
//! let line = std::str::from_utf8(&challenge).unwrap().lines().next().unwrap();
//! let params = AuthHeader::parse(line["WWW-Authenticate: ".len()..].as_bytes()).unwrap().digest();
//! let creds = client::client_response(&params, "alice", "secret", b"REGISTER",
//!     b"sip:example.com", 1, "abc123").unwrap();
//! let req = format!("REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
//!     From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: c\r\n\
//!     CSeq: 1 REGISTER\r\nAuthorization: {creds}\r\nContent-Length: 0\r\n\r\n");
//! let msg = Message::parse(req.as_bytes()).unwrap();
//! assert_eq!(
//!     auth.check(&msg, HeaderName::Authorization, now_ms),
//!     AuthOutcome::Authenticated { user: "alice".into() }
//! );
//! ```

pub mod client;
pub mod digest;
pub mod failure;
pub mod lockout;
pub mod nonce;
pub mod replay;
pub mod users;

use std::borrow::Cow;
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::sip::headers::{AuthHeader, DigestParams};
use crate::sip::{HeaderName, Message};

pub use client::{client_response, DigestClient};
pub use digest::Algorithm;
pub use failure::{FailReason, Failure};
pub use nonce::{random_secret, Secret, DEFAULT_NONCE_TTL_S};
pub use users::{UserChanges, UserDb, UserDbError};

use digest::{responses_equal, HexHash};
use nonce::{NonceKey, NonceStatus};
use replay::{NcTable, NcVerdict, DEFAULT_MAX_TRACKED};

/// The result of checking a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The credentials are right; `user` is the authenticated user name.
    Authenticated { user: String },
    /// Answer 401/407 with [`Authenticator::write_challenge`] (`stale` as given).
    Challenge { stale: bool },
    /// Answer 400: the credentials are malformed (the text says how).
    BadRequest(&'static str),
    /// Answer 403: the account is locked after too many failed attempts
    /// ([`lockout`]), whatever the password.
    Locked,
}

/// The most shards an authenticator serves (the issuer's id takes the top ten bits of the low
/// half of a nonce's salt; the configuration allows 1,024 shards).
pub const MAX_SHARDS: usize = 1 << (32 - COUNTER_BITS);
/// Bits of a nonce salt's low half that count the issuer's nonces.
const COUNTER_BITS: u32 = 22;

/// What all shards share.
#[derive(Clone)]
struct Shared {
    realm: String,
    users: Arc<UserDb>,
    nonces: NonceKey,
    ttl_s: u32,
    /// The challenges offered, in order of preference.
    algorithms: Vec<Algorithm>,
    /// The digest `uri` must equal the Request-URI (else any `uri` is hashed as sent).
    strict_uri: bool,
    /// Shard `i`'s nonces carry `salt_base + i` in the high half of their salt (random per
    /// run): a shard tells its own nonces by it, and any shard can issue a nonce for another.
    salt_base: u32,
    /// `Digest realm="<realm, escaped>", nonce="`: what every challenge value starts with.
    challenge_head: Box<[u8]>,
    /// HA1 values no password produces (one per algorithm, in the order of
    /// [`Algorithm::ALL`]), hashed for unknown users so that they cost the same.
    dummy_ha1: [HexHash; Algorithm::ALL.len()],
}

/// A shard's digest authenticator. See the module documentation.
pub struct Authenticator {
    shared: Arc<Shared>,
    /// The shard this authenticator serves (0 for the one `new` makes).
    shard: u32,
    /// Counts the nonces this authenticator issued (the low bits of their salt).
    counter: Cell<u32>,
    nc: NcTable,
    ha2: digest::Ha2Cache,
    /// Failed attempts and locks (None: no lockout).
    lockout: Option<lockout::Lockout>,
}

impl Authenticator {
    /// An authenticator for `realm` with the users (whose HA1 values must be for the same
    /// realm), the per-run nonce secret and the nonce lifetime in seconds.
    ///
    /// # Panics
    /// If `users` was built for another realm (its HA1 values could never match).
    pub fn new(realm: &str, users: Arc<UserDb>, secret: Secret, nonce_ttl_s: u32) -> Self {
        assert_eq!(
            users.realm(),
            realm,
            "the user database was built for another realm"
        );
        let dummy_pw = hex::encode(secret);
        let mut quoted_realm = String::new();
        client::push_quoted(&mut quoted_realm, realm.as_bytes());
        let challenge_head = format!("Digest realm={quoted_realm}, nonce=\"")
            .into_bytes()
            .into_boxed_slice();
        let shared = Shared {
            challenge_head,
            realm: realm.to_owned(),
            nonces: NonceKey::new(&secret, realm.as_bytes()),
            salt_base: nonce::random_u32(),
            ttl_s: nonce_ttl_s,
            algorithms: Algorithm::DEFAULT_OFFER.to_vec(),
            strict_uri: false,
            dummy_ha1: Algorithm::ALL
                .map(|alg| digest::ha1(alg, b"", realm.as_bytes(), dummy_pw.as_bytes())),
            users,
        };
        Authenticator {
            shared: Arc::new(shared),
            shard: 0,
            counter: Cell::new(0),
            nc: NcTable::new(DEFAULT_MAX_TRACKED),
            ha2: digest::Ha2Cache::default(),
            lockout: None,
        }
    }

    /// Offers these algorithms, in this order, instead of MD5 then SHA-256 (for deployments
    /// whose phones all answer SHA-256: `[Sha256]` or `[Sha512_256, Sha256]`).
    ///
    /// # Panics
    /// If `algorithms` is empty or after [`Authenticator::for_shard`] shared the settings.
    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        assert!(!algorithms.is_empty(), "at least one digest algorithm");
        Arc::get_mut(&mut self.shared)
            .expect("set algorithms before creating shard authenticators")
            .algorithms = algorithms.to_vec();
        self
    }

    /// With `strict`, credentials whose `uri` differs from the Request-URI (byte for byte) get
    /// a new challenge, as RFC 2617 §3.2.2.5 lets a server do; without it (the default) the
    /// response is verified over the `uri` the client sent.
    ///
    /// # Panics
    /// After [`Authenticator::for_shard`] shared the settings.
    pub fn with_strict_uri(mut self, strict: bool) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("set strict_uri before creating shard authenticators")
            .strict_uri = strict;
        self
    }

    /// The authenticator of shard `shard` (below [`MAX_SHARDS`]): same realm, users and
    /// secret (shared), the shard's own nonce salt and an empty nonce-count table.
    pub fn for_shard(&self, shard: usize) -> Authenticator {
        assert!(shard < MAX_SHARDS, "shard {shard} of at most {MAX_SHARDS}");
        Authenticator {
            shared: Arc::clone(&self.shared),
            shard: shard as u32,
            counter: Cell::new(0),
            nc: NcTable::new(DEFAULT_MAX_TRACKED),
            ha2: digest::Ha2Cache::default(),
            lockout: None,
        }
    }

    /// The users this authenticator knows.
    pub fn users(&self) -> &Arc<UserDb> {
        &self.shared.users
    }

    /// Replaces the users (a reload of the users file): realm, secret, salts and the
    /// nonce-count table stay, so nonces issued before go on working.
    ///
    /// # Panics
    /// If `users` was built for another realm.
    pub fn replace_users(&mut self, users: Arc<UserDb>) {
        assert_eq!(users.realm(), self.shared.realm, "users for another realm");
        let mut shared = (*self.shared).clone();
        shared.users = users;
        self.shared = Arc::new(shared);
    }

    /// The high half of the salt of shard `shard`'s nonces.
    fn salt_prefix(&self, shard: u32) -> u32 {
        self.shared.salt_base.wrapping_add(shard)
    }

    /// Sets the bound on nonces tracked for replay protection (default 65 536).
    pub fn with_max_tracked(mut self, max: usize) -> Self {
        self.nc = NcTable::new(max);
        self
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.shared.realm
    }

    /// The nonce lifetime in seconds.
    pub fn nonce_ttl_s(&self) -> u32 {
        self.shared.ttl_s
    }

    /// Number of nonces in the replay table.
    pub fn tracked_nonces(&self) -> usize {
        self.nc.len()
    }

    /// Drops replay entries of expired nonces; call now and then (also done when full).
    pub fn prune(&mut self, now_ms: u64) {
        self.nc.prune(now_ms, self.shared.ttl_s);
    }

    /// Checks the credentials in the `header` lines (Authorization for a registrar or UAS,
    /// Proxy-Authorization for a proxy) of request `req` at `now_ms`.
    pub fn check(&mut self, req: &Message<'_>, header: HeaderName, now_ms: u64) -> AuthOutcome {
        self.check_detailed(req, header, now_ms).0
    }

    /// [`Authenticator::check`] for a request from `src`, logging a failed authentication at
    /// `warn` ([`failure`] describes the line). Costs nothing more than tracing's level check
    /// when `warn` is off.
    pub fn check_from(
        &mut self,
        req: &Message<'_>,
        header: HeaderName,
        now_ms: u64,
        src: SocketAddr,
    ) -> AuthOutcome {
        let (outcome, failure) = self.check_detailed(req, header, now_ms);
        if let Some(f) = &failure {
            tracing::warn!("{}", f.log_line(src));
        }
        let Some(lock) = &mut self.lockout else {
            return outcome;
        };
        let user: Option<std::borrow::Cow<'_, [u8]>> = match (&outcome, &failure) {
            (AuthOutcome::Authenticated { user }, _) => Some(user.as_bytes().into()),
            (_, Some(f)) => {
                let name = unq(f.user);
                // Guesses count: a wrong password (for the address and the account) and an
                // unknown user (for the address). A replayed nonce count is a retransmission
                // whose 200 was lost as often as a replay of captured credentials, and reveals
                // nothing about the password; a foreign realm is a misconfigured phone.
                match f.reason {
                    FailReason::BadResponse => lock.failed(src.ip(), Some(&name), now_ms),
                    FailReason::UnknownUser => lock.failed(src.ip(), None, now_ms),
                    FailReason::ReplayedNc | FailReason::WrongRealm => {}
                }
                Some(name)
            }
            _ => None,
        };
        if user.is_some_and(|u| lock.is_locked(&u, now_ms)) {
            return AuthOutcome::Locked;
        }
        outcome
    }

    /// Counts failed attempts of this shard and locks out addresses and accounts as
    /// `settings` say, publishing bans and locks on `board` (shared by every shard).
    pub fn with_lockout(
        mut self,
        settings: &crate::security::SecuritySettings,
        board: Arc<crate::security::board::Board>,
    ) -> Self {
        self.lockout = lockout::Lockout::new(settings, board);
        self
    }

    /// New lockout limits (a reload; counts and locks stay). Turning the lockout on or off
    /// needs a restart.
    pub fn reload_security(&mut self, settings: &crate::security::SecuritySettings) {
        if let Some(l) = &mut self.lockout {
            if !l.reload(settings) {
                self.lockout = None;
            }
        }
    }

    /// [`Authenticator::check`], with the failed authentication when the credentials were
    /// refused as wrong (None for a request without credentials, a stale nonce and every
    /// other challenge or 400).
    pub fn check_detailed<'m>(
        &mut self,
        req: &Message<'m>,
        header: HeaderName,
        now_ms: u64,
    ) -> (AuthOutcome, Option<Failure<'m>>) {
        let (Some(method), Some(ruri)) = (req.method_bytes(), req.request_uri_bytes()) else {
            return (AuthOutcome::BadRequest("not a request"), None);
        };
        let mut foreign = None;
        for raw in req.header_all(header) {
            let d = match AuthHeader::parse_digest(raw) {
                Ok((h, d)) if h.is_digest() => d,
                // Other schemes (Basic's token68 does not parse as auth-params) are not ours.
                Ok(_) => continue,
                Err(_) if !is_digest_scheme(raw) => continue,
                Err(_) => return (AuthOutcome::BadRequest("malformed credentials"), None),
            };
            let Some(realm) = d.realm else {
                return (AuthOutcome::BadRequest("credentials without realm"), None);
            };
            // RFC 3261 §22.4: credentials for other realms are for other servers.
            if *unq(realm) == *self.shared.realm.as_bytes() {
                let (outcome, reason) = self.verify(&d, method, ruri, now_ms);
                let failure = reason.map(|reason| Failure {
                    reason,
                    user: d.username.unwrap_or_default(),
                    realm,
                    method,
                });
                return (outcome, failure);
            }
            foreign.get_or_insert(Failure {
                reason: FailReason::WrongRealm,
                user: d.username.unwrap_or_default(),
                realm,
                method,
            });
        }
        (AuthOutcome::Challenge { stale: false }, foreign)
    }

    fn verify(
        &mut self,
        d: &DigestParams<'_>,
        method: &[u8],
        ruri: &[u8],
        now_ms: u64,
    ) -> (AuthOutcome, Option<FailReason>) {
        const CHALLENGE: (AuthOutcome, Option<FailReason>) =
            (AuthOutcome::Challenge { stale: false }, None);
        const STALE: (AuthOutcome, Option<FailReason>) =
            (AuthOutcome::Challenge { stale: true }, None);
        let bad = |why| (AuthOutcome::BadRequest(why), None);
        let (Some(username), Some(nonce), Some(uri), Some(given)) =
            (d.username, d.nonce, d.uri, d.response)
        else {
            return bad("credentials without username, nonce, uri or response");
        };
        // No qop is the RFC 2069 digest, which has no nonce count: not accepted.
        let Some(qop) = d.qop else { return CHALLENGE };
        if !qop.eq_ignore_ascii_case(b"auth") {
            return CHALLENGE;
        }
        let (Some(nc_text), Some(cnonce)) = (d.nc, d.cnonce) else {
            return bad("qop=auth without nc or cnonce");
        };
        let Some(nc) = parse_nc(nc_text) else {
            return bad("nc is not 8 hex digits");
        };
        let Some(alg) = Algorithm::from_param(d.algorithm) else {
            return CHALLENGE;
        };
        // We never offer userhash (RFC 7616 §3.4.4).
        if d.userhash.is_some_and(|u| u.eq_ignore_ascii_case(b"true")) {
            return CHALLENGE;
        }
        let uri = unq(uri);
        let sh = &*self.shared;
        if sh.strict_uri && uri.as_ref() != ruri {
            return CHALLENGE;
        }
        let nonce = unq(nonce);
        let id = match sh.nonces.check(&nonce, now_ms, sh.ttl_s) {
            NonceStatus::Invalid => return CHALLENGE,
            NonceStatus::Fresh(id) => Ok(id),
            NonceStatus::Stale(id) => Err(id),
        };
        let username = unq(username);
        let entry = sh.users.get(&username);
        let user_ha1 = entry.and_then(|u| u.ha1(alg));
        // Unknown users (or users without an HA1 for this algorithm) hash as much as others.
        let ha1 = user_ha1.unwrap_or(&sh.dummy_ha1[alg.index()]);
        // HA2 over the `uri` the client hashed (the cache is keyed by what it hashes).
        let ha2 = self.ha2.get(alg, method, &uri);
        let expected = digest::response_with_ha2(alg, ha1, &nonce, nc_text, &unq(cnonce), &ha2);
        if !(responses_equal(&expected, given) & user_ha1.is_some()) {
            let reason = match entry {
                Some(_) => FailReason::BadResponse,
                None => FailReason::UnknownUser,
            };
            return (CHALLENGE.0, Some(reason));
        }
        let Ok(id) = id else {
            return STALE;
        };
        // Nonce counts are tracked per shard, so a shard only accepts its own nonces: a nonce
        // issued by another shard could be a replay there. The retry of a challenged request
        // reaches the shard that challenged it (same AOR), so this costs honest clients
        // nothing; others get a fresh nonce with stale=true.
        if (id.salt >> 32) as u32 != self.salt_prefix(self.shard) {
            return STALE;
        }
        match self.nc.record(id, nc, now_ms, sh.ttl_s) {
            NcVerdict::Accepted => (
                AuthOutcome::Authenticated {
                    user: String::from_utf8_lossy(&username).into_owned(),
                },
                None,
            ),
            NcVerdict::Replay => (CHALLENGE.0, Some(FailReason::ReplayedNc)),
            NcVerdict::Forgotten => STALE,
        }
    }

    /// Writes the challenge header lines `header_name: Digest ...` (`WWW-Authenticate` for
    /// 401, `Proxy-Authenticate` for 407) with a fresh nonce, one per offered algorithm in the
    /// configured order (MD5 then SHA-256 by default), each with realm, nonce, algorithm,
    /// `qop="auth"` and `stale=true` when `stale`.
    pub fn write_challenge(&self, out: &mut Vec<u8>, header_name: &str, stale: bool, now_ms: u64) {
        self.write_challenge_for(self.shard as usize, out, header_name, stale, now_ms);
    }

    /// [`Authenticator::write_challenge`] with a nonce that shard `owner` accepts (and no other):
    /// a shard answers the first, credential-less REGISTER of an AOR another shard owns itself,
    /// and the retry, which goes to the owner, carries a nonce the owner tracks.
    pub fn write_challenge_for(
        &self,
        owner: usize,
        out: &mut Vec<u8>,
        header_name: &str,
        stale: bool,
        now_ms: u64,
    ) {
        let counter = self.counter.get().wrapping_add(1);
        self.counter.set(counter);
        // Low half: this issuer's id and count, so that the nonces several shards issue for
        // one owner in one second differ (the count wraps after 4M nonces, more than a shard
        // issues in a second).
        let low = (self.shard << COUNTER_BITS) | (counter & ((1 << COUNTER_BITS) - 1));
        let salt = (u64::from(self.salt_prefix(owner as u32)) << 32) | u64::from(low);
        let sh = &*self.shared;
        let nonce = sh.nonces.issue(now_ms, salt);
        // Each line is `header_name: Digest realm="..", nonce="..", algorithm=.., qop="auth"`
        // with `, stale=true` when stale; written in place, the constant head prepared once.
        const STALE: &[u8] = b", stale=true";
        let line_len = header_name.len()
            + 2
            + sh.challenge_head.len()
            + nonce.as_bytes().len()
            + b"\", algorithm=SHA-512-256, qop=\"auth\"".len()
            + STALE.len()
            + 2;
        out.reserve(line_len * sh.algorithms.len());
        for &alg in &sh.algorithms {
            out.extend_from_slice(header_name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&sh.challenge_head);
            out.extend_from_slice(nonce.as_bytes());
            out.extend_from_slice(b"\", algorithm=");
            out.extend_from_slice(alg.name().as_bytes());
            out.extend_from_slice(b", qop=\"auth\"");
            if stale {
                out.extend_from_slice(STALE);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// True if a credentials value starts with the scheme `Digest`.
fn is_digest_scheme(raw: &[u8]) -> bool {
    let v = raw.trim_ascii_start();
    v.len() >= 6
        && v[..6].eq_ignore_ascii_case(b"Digest")
        && v.get(6).is_none_or(|b| b.is_ascii_whitespace())
}

/// `nc-value = 8LHEX` (RFC 7616 §3.4); either case accepted.
fn parse_nc(v: &[u8]) -> Option<u32> {
    if v.len() != 8 || !v.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(core::str::from_utf8(v).ok()?, 16).ok()
}

/// The value of a quoted-string without its backslash escapes (RFC 3261 §25.1 quoted-pair;
/// the parser removed the quotes).
pub(crate) fn unq(v: &[u8]) -> Cow<'_, [u8]> {
    if !v.contains(&b'\\') {
        return Cow::Borrowed(v);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut escaped = false;
    for &b in v {
        if escaped || b != b'\\' {
            out.push(b);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests;
