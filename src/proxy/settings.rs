//! The proxy's settings (RFC 3261 §16): how requests that are not for the registrar are
//! handled and how a request is forked. The core owns these types; `config.rs` maps the TOML
//! file and the flags onto them.

use std::net::SocketAddr;

/// How requests that are not for the registrar are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Proxy,
    Stateless,
    Redirect,
    /// The far end of a load test: answers every request itself (`crate::responder`).
    Responder,
}

/// How a request is forked to several bindings of one AOR (RFC 3261 §16.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forking {
    /// Every binding at once.
    Parallel,
    /// Groups of equal q-value one after the other, highest q first; bindings with the same
    /// q are tried in parallel.
    Sequential,
}

/// Proxy settings (RFC 3261 §16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    pub forking: Forking,
    /// Sequential forking: how long a group of branches may try before it is cancelled and
    /// the next group starts (not applied to the last group, which Timer C bounds).
    pub branch_timeout_ms: u64,
    /// Topology hiding (`super::topology`): None, the default, forwards everything as it is.
    pub topology: Option<std::sync::Arc<super::topology::Hider>>,
    /// Call detail records (`super::cdr`): None, the default, keeps none.
    pub cdr: Option<super::cdr::CdrSettings>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            forking: Forking::Parallel,
            branch_timeout_ms: 5_000,
            topology: None,
            cdr: None,
        }
    }
}

/// Overload control (RFC 3261 §21.5.4, RFC 7339 leaves the policy to the server): what a
/// shard past its capacity refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadSettings {
    /// The Retry-After (seconds) of the 503 a refused request gets.
    pub retry_after_s: u32,
    /// A shard that has had datagrams waiting (full receive batches) without a pause for
    /// this long is past its capacity; 0: never (only `max_transactions` refuses).
    pub saturated_ms: u32,
    /// Proxy transactions one shard may hold; past it, new requests that would add one get
    /// 503 (bounds memory whatever the offered load).
    pub max_transactions: usize,
}

impl Default for OverloadSettings {
    fn default() -> Self {
        OverloadSettings {
            retry_after_s: 5,
            saturated_ms: 50,
            max_transactions: 500_000,
        }
    }
}

/// Settings shared by every shard's core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Domains we are responsible for, lower case.
    pub domains: Vec<String>,
    /// Our listen addresses (their IPs count as our domain too).
    pub local_addrs: Vec<SocketAddr>,
    pub shards: usize,
    pub mode: Mode,
    pub registrar: crate::registrar::RegistrarSettings,
    pub proxy: ProxySettings,
    /// The dial plan (empty: every request goes to users of our domain).
    pub routing: std::sync::Arc<crate::routing::DialPlan>,
    /// What the responder does (responder mode).
    pub responder: std::sync::Arc<crate::responder::ResponderSettings>,
    /// ACLs, flood and scanner bans, lockout (`crate::security`).
    pub security: std::sync::Arc<crate::security::SecuritySettings>,
    pub overload: OverloadSettings,
}

impl CoreConfig {
    /// One shard serving `domain` on `listen` in `mode`, every other setting at its default:
    /// what tests, benchmarks and examples start from (`..CoreConfig::single(..)`).
    pub fn single(domain: &str, listen: SocketAddr, mode: Mode) -> CoreConfig {
        CoreConfig {
            domains: vec![domain.to_owned()],
            local_addrs: vec![listen],
            shards: 1,
            mode,
            registrar: Default::default(),
            proxy: Default::default(),
            routing: std::sync::Arc::new(crate::routing::DialPlan::empty()),
            responder: Default::default(),
            security: Default::default(),
            overload: Default::default(),
        }
    }

    /// True if `host` (from a URI) names this server: a configured domain or a listen IP.
    pub fn is_our_host(&self, host: &[u8]) -> bool {
        if self
            .domains
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(host))
        {
            return true;
        }
        let Ok(text) = std::str::from_utf8(host) else {
            return false;
        };
        let Ok(ip) = text.parse::<std::net::IpAddr>() else {
            return false;
        };
        self.local_addrs
            .iter()
            .any(|a| a.ip() == ip || (a.ip().is_unspecified() && ip.is_loopback()))
    }
}
