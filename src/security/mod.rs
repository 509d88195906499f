//! Edge security (sans-I/O, one [`Guard`] per shard): access control lists, the flood ban
//! (as Kamailio's pike), the scanner drop, and the bans of the brute-force lockout
//! (`crate::auth::lockout` decides those; the guard enforces them). A datagram from a banned
//! or denied source is dropped at the first thing a shard does with it, before parsing.
//!
//! Per source address a shard keeps one small entry ([`Source`]): its request count in the
//! current window, its ACL verdict (computed once) and its ban. Counting is per shard (the
//! kernel spreads one address's ports over shards, and with kernel steering one port's
//! requests by AOR, so a source gets up to `shards` times the limit); a ban is published on the shared [`board::Board`] and every
//! shard obeys it. Sources in `exempt` (default 127.0.0.1 and ::1, as fail2ban's `ignoreip`)
//! are never banned or locked out, but ACLs apply to them.

pub mod board;
pub mod calls;
pub mod config;
pub mod scanner;
pub mod srtp;

use crate::stats::{DropReason, ShardStats};
use board::{BanReason, Board};
use hashbrown::HashMap;
use ipnet::IpNet;
use scanner::Scanners;
use std::net::IpAddr;
use std::sync::Arc;

/// What a denied source gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyAnswer {
    /// Nothing (counted as `denied`).
    Drop,
    /// 403 Forbidden to a request (responses are dropped).
    Forbidden,
}

/// The flood limit: more than `requests` requests from one address within `window_ms` on
/// one shard bans it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimit {
    pub requests: u32,
    pub window_ms: u64,
}

/// The brute-force lockout: failed digest authentications counted within `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutLimit {
    /// Failures from one address that ban it (silence) for `lock_ms`.
    pub source_failures: u32,
    /// Failures for one account (from any address) that lock it (403) for `lock_ms`.
    pub user_failures: u32,
    pub window_ms: u64,
    pub lock_ms: u64,
}

/// The `[security]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SecuritySettings {
    /// Never banned or locked out (ACLs still apply).
    pub exempt: Vec<IpNet>,
    /// When not empty, only these sources are served.
    pub allow: Vec<IpNet>,
    /// These sources are not served (checked before `allow`).
    pub deny: Vec<IpNet>,
    pub deny_answer: DenyAnswer,
    /// None: no flood ban.
    pub flood: Option<FloodLimit>,
    /// How long a flood or scanner ban lasts.
    pub ban_ms: u64,
    /// User-Agents of scanners, dropped without an answer.
    pub scanners: Scanners,
    /// A scanner's address is banned too (so it gets nothing whatever it sends next).
    pub ban_scanners: bool,
    /// None: no lockout.
    pub lockout: Option<LockoutLimit>,
    /// Source entries one shard keeps (bounds its memory: ~64 bytes each).
    pub max_sources: usize,
    /// Toll-fraud limits on the calls of each authenticated user (off by default).
    pub calls: calls::CallLimits,
    /// INVITE, re-INVITE and UPDATE offers without SRTP media get 488 (`srtp`).
    pub require_srtp: bool,
    /// ACLs of single listen addresses, on top of `allow` and `deny`.
    pub listen_acls: Vec<ListenAcl>,
}

/// The allow and deny lists of one listen address (by its index in the listen list, which
/// is the socket index of every shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAcl {
    pub socket: usize,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl ListenAcl {
    fn denies(&self, ip: IpAddr) -> bool {
        contains(&self.deny, ip) || (!self.allow.is_empty() && !contains(&self.allow, ip))
    }
}

impl Default for SecuritySettings {
    /// The documented defaults: flood ban, scanner drop and lockout on.
    fn default() -> Self {
        SecuritySettings {
            exempt: vec![
                "127.0.0.1/32".parse().expect("valid"),
                "::1/128".parse().expect("valid"),
            ],
            allow: Vec::new(),
            deny: Vec::new(),
            deny_answer: DenyAnswer::Drop,
            flood: Some(FloodLimit {
                requests: 400,
                window_ms: 2_000,
            }),
            ban_ms: 300_000,
            scanners: Scanners::new(scanner::DEFAULT_SCANNERS),
            ban_scanners: true,
            lockout: Some(LockoutLimit {
                source_failures: 10,
                user_failures: 100,
                window_ms: 600_000,
                lock_ms: 900_000,
            }),
            max_sources: 65_536,
            calls: calls::CallLimits::default(),
            require_srtp: false,
            listen_acls: Vec::new(),
        }
    }
}

impl SecuritySettings {
    /// Everything off (tests of other layers; `[security] enabled = false`).
    pub fn off() -> SecuritySettings {
        SecuritySettings {
            exempt: Vec::new(),
            flood: None,
            scanners: Scanners::default(),
            ban_scanners: false,
            lockout: None,
            ..SecuritySettings::default()
        }
    }

    /// True if `ip` is never banned.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        contains(&self.exempt, ip)
    }

    fn acl(&self, ip: IpAddr) -> Acl {
        if contains(&self.deny, ip) || (!self.allow.is_empty() && !contains(&self.allow, ip)) {
            Acl::Denied
        } else {
            Acl::Allowed
        }
    }

    fn has_acl(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }
}

/// True if one of `nets` contains `ip` (an IPv4-mapped IPv6 address as its IPv4 address).
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acl {
    Allowed,
    Denied,
}

/// What a shard keeps per source address.
#[derive(Debug, Clone, Copy)]
struct Source {
    window_start_ms: u64,
    requests: u32,
    acl: Acl,
    banned_until_ms: u64,
}

/// What to do with a datagram, before parsing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Pass,
    /// Drop it (already counted under this reason).
    Drop,
    /// Answer 403 if it is a request, else drop it.
    Forbid,
}

/// The address as a map key: IPv4 (also IPv4-mapped IPv6) as its IPv4-mapped IPv6 form.
#[inline]
fn key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => 0xffff_0000_0000u128 | u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// One shard's guard. See the module documentation.
pub struct Guard {
    settings: Arc<SecuritySettings>,
    board: Arc<Board>,
    /// The board generation this shard's copy reflects.
    seen_generation: u64,
    /// The sequence number of the next ban to copy from the board.
    seen: u64,
    sources: HashMap<u128, Source>,
    /// While the table is full of live entries, new sources go untracked until then.
    full_until_ms: u64,
    stats: Arc<ShardStats>,
}

impl Guard {
    pub fn new(
        settings: Arc<SecuritySettings>,
        board: Arc<Board>,
        stats: Arc<ShardStats>,
    ) -> Guard {
        Guard {
            settings,
            board,
            seen_generation: u64::MAX,
            seen: 0,
            sources: HashMap::new(),
            full_until_ms: 0,
            stats,
        }
    }

    /// The shared board (bans of every shard).
    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }

    /// Uses `board` (shared with the other shards) instead of this guard's own.
    pub fn share_board(&mut self, board: Arc<Board>) {
        self.board = board;
        self.seen_generation = u64::MAX;
        self.seen = 0;
    }

    pub fn settings(&self) -> &Arc<SecuritySettings> {
        &self.settings
    }

    /// New settings (a reload): ACL verdicts are computed again; bans stay.
    pub fn reload(&mut self, settings: Arc<SecuritySettings>) {
        if *settings != *self.settings {
            for (k, s) in self.sources.iter_mut() {
                s.acl = settings.acl(std::net::Ipv6Addr::from(*k).to_canonical());
            }
        }
        self.settings = settings;
    }

    /// Source entries held (bounded by `max_sources`).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Takes the bans published since the last look into this shard's table.
    #[inline]
    fn sync(&mut self) {
        let g = self.board.generation();
        if g != self.seen_generation {
            self.seen_generation = g;
            let (bans, upto) = self.board.bans_since(self.seen);
            self.seen = upto;
            for b in bans {
                let acl = self.settings.acl(b.ip);
                let e = self.sources.entry(key(b.ip)).or_insert(Source {
                    window_start_ms: 0,
                    requests: 0,
                    acl,
                    banned_until_ms: 0,
                });
                e.banned_until_ms = e.banned_until_ms.max(b.until_ms);
            }
        }
    }

    /// The first look at a datagram from `ip` on listen socket `socket` (`request`: it does not
    /// start with `SIP/`).
    #[inline]
    pub fn admit(&mut self, ip: IpAddr, socket: usize, request: bool, now_ms: u64) -> Admit {
        self.sync();
        if !self.settings.listen_acls.is_empty()
            && self
                .settings
                .listen_acls
                .iter()
                .any(|a| a.socket == socket && a.denies(ip))
        {
            return self.denied();
        }
        let k = key(ip);
        let settings = &*self.settings;
        let flood = settings.flood;
        let entry = match self.sources.get_mut(&k) {
            Some(e) => e,
            None => {
                // Responses do not start tracking (peers answering our requests are not
                // flooding us), nor does anything when neither flood counting nor ACLs are on.
                if !(settings.has_acl() || request && flood.is_some()) {
                    return Admit::Pass;
                }
                match insert(
                    &mut self.sources,
                    settings,
                    &mut self.full_until_ms,
                    k,
                    ip,
                    now_ms,
                ) {
                    Some(e) => e,
                    None => {
                        return match self.settings.acl(ip) {
                            Acl::Allowed => Admit::Pass,
                            Acl::Denied => self.denied(),
                        }
                    }
                }
            }
        };
        if entry.banned_until_ms > now_ms {
            self.stats.dropped(DropReason::Banned);
            return Admit::Drop;
        }
        if entry.acl == Acl::Denied {
            return self.denied();
        }
        if let (true, Some(f)) = (request, flood) {
            if now_ms.saturating_sub(entry.window_start_ms) >= f.window_ms {
                entry.window_start_ms = now_ms;
                entry.requests = 0;
            }
            entry.requests += 1;
            if entry.requests > f.requests && !settings.is_exempt(ip) {
                let until = now_ms + settings.ban_ms;
                entry.banned_until_ms = until;
                self.publish_ban(ip, until, BanReason::Flood, now_ms);
                self.stats.dropped(DropReason::Banned);
                return Admit::Drop;
            }
        }
        Admit::Pass
    }

    fn denied(&self) -> Admit {
        match self.settings.deny_answer {
            DenyAnswer::Drop => {
                self.stats.dropped(DropReason::Denied);
                Admit::Drop
            }
            DenyAnswer::Forbidden => Admit::Forbid,
        }
    }

    /// A new entry, after a sweep when the table is full; None when it is full of live ones.
    fn insert(&mut self, k: u128, ip: IpAddr, now_ms: u64) -> Option<&mut Source> {
        insert(
            &mut self.sources,
            &self.settings,
            &mut self.full_until_ms,
            k,
            ip,
            now_ms,
        )
    }

    /// A request whose User-Agent is `user_agent` arrived from `ip`: true when it is a
    /// scanner's (drop it; its address is banned when `ban_scanners`).
    pub fn is_scanner(&mut self, user_agent: &[u8], ip: IpAddr, now_ms: u64) -> bool {
        if !self.settings.scanners.matches(user_agent) {
            return false;
        }
        self.stats.dropped(DropReason::Scanner);
        if self.settings.ban_scanners && !self.settings.is_exempt(ip) {
            let until = now_ms + self.settings.ban_ms;
            if let Some(e) = self.insert(key(ip), ip, now_ms) {
                e.banned_until_ms = until;
            }
            self.publish_ban(ip, until, BanReason::Scanner, now_ms);
        }
        true
    }

    fn publish_ban(&self, ip: IpAddr, until_ms: u64, reason: BanReason, now_ms: u64) {
        if self.board.ban(ip, until_ms, reason, now_ms) {
            log_ban(ip, reason, until_ms - now_ms);
            // Once per process: a benchmark from another host is the usual first flood ban.
            static HINTED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if reason == BanReason::Flood
                && !HINTED.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    "a load generator, trunk or peer proxy sending this much belongs in \
                     security.exempt (or set security.flood_requests = 0)"
                );
            }
        }
    }
}

/// See [`Guard::insert`] (a function of the fields, so that `admit` can hold the entry and
/// read the settings).
fn insert<'t>(
    sources: &'t mut HashMap<u128, Source>,
    settings: &SecuritySettings,
    full_until_ms: &mut u64,
    k: u128,
    ip: IpAddr,
    now_ms: u64,
) -> Option<&'t mut Source> {
    if sources.len() >= settings.max_sources {
        if now_ms < *full_until_ms {
            return None;
        }
        let window = settings.flood.map_or(0, |f| f.window_ms);
        let acl_kept = settings.has_acl();
        sources.retain(|_, s| {
            s.banned_until_ms > now_ms
                || now_ms.saturating_sub(s.window_start_ms) < window
                || (acl_kept && s.acl == Acl::Denied)
        });
        if sources.len() >= settings.max_sources * 9 / 10 {
            *full_until_ms = now_ms + window.max(1_000);
            if sources.len() >= settings.max_sources {
                return None;
            }
        }
    }
    let acl = settings.acl(ip);
    Some(sources.entry(k).or_insert(Source {
        window_start_ms: now_ms,
        requests: 0,
        acl,
        banned_until_ms: 0,
    }))
}

/// The ban's log line (at warn), in the form `tuning/fail2ban` matches:
/// `ban src=203.0.113.5 reason=flood seconds=300`.
pub fn log_ban(ip: IpAddr, reason: BanReason, for_ms: u64) {
    tracing::warn!(
        "ban src={} reason={} seconds={}",
        ip,
        reason.as_str(),
        for_ms.div_ceil(1000)
    );
}

#[cfg(test)]
mod tests;
