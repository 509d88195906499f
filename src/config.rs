//! Configuration: the command line and the TOML file (every key is in `sipshard.toml` at the
//! top of the repository), merged into one validated [`Config`]. Command-line values override
//! the file. Every problem is reported as one line naming the flag or key (the binary prints it
//! and exits with code 2).

use clap::Parser;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub use crate::proxy::settings::{Forking, Mode, ProxySettings};
pub use crate::registrar::RegistrarSettings;

/// Which transport backend the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    /// recvmmsg/sendmmsg batches.
    Mmsg,
    /// io_uring with multishot receive and a provided buffer ring.
    Uring,
}

/// A listening address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub proto: crate::sip::Proto,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<Listen>,
    pub domains: Vec<String>,
    /// `name:password` pairs from `--user` / the file's `users` list.
    pub users: Vec<(String, String)>,
    pub users_file: Option<PathBuf>,
    pub shards: usize,
    pub mode: Mode,
    pub metrics: Option<SocketAddr>,
    pub io: IoBackend,
    /// Steer each datagram to its owner shard in the kernel (an eBPF program on the
    /// SO_REUSEPORT group, transport/steering.rs) when it can be loaded.
    pub steering: bool,
    /// Run the shards on one thread at low load and spread them out when it is busy
    /// (shard/consolidation.rs); None: every shard keeps its own thread.
    pub consolidation: Option<crate::shard::consolidation::Thresholds>,
    pub allow_unauthenticated: bool,
    pub registrar: RegistrarSettings,
    pub proxy: ProxySettings,
    /// Capacity of each shard's hand-off queue.
    pub queue_capacity: usize,
    /// Limits of the stream (TCP, TLS) connections.
    pub streams: crate::transport::tcp::StreamSettings,
    /// The TLS files and the server configuration made of them (with a `tls:` listen
    /// address).
    pub tls_files: Option<crate::transport::tls::TlsFiles>,
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The configuration of the TLS connections the server opens (to TLS trunks and
    /// contacts), with a `tls:` listen address.
    pub tls_client: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Nonce lifetime in seconds.
    pub nonce_ttl: u32,
    /// Digest algorithms offered in challenges, most preferred first.
    pub auth_algorithms: Vec<crate::auth::Algorithm>,
    /// The digest `uri` must equal the Request-URI (else the response is verified over the
    /// `uri` the client sent).
    pub strict_digest_uri: bool,
    pub log: String,
    /// The compiled dial plan (the file's sections are not kept: a plan may hold millions of
    /// routes).
    pub routing: std::sync::Arc<crate::routing::DialPlan>,
    /// Responder mode: how it answers.
    pub responder: std::sync::Arc<crate::responder::ResponderSettings>,
    /// ACLs, flood and scanner bans, brute-force lockout.
    pub security: std::sync::Arc<crate::security::SecuritySettings>,
    /// What a shard past its capacity refuses.
    pub overload: crate::proxy::settings::OverloadSettings,
    /// The binding store (`--data-dir`): None keeps bindings in memory only.
    pub store: Option<crate::store::StoreSettings>,
    /// The admin socket (`--admin`; by default `DATA_DIR/admin.sock` with a data directory,
    /// none without).
    pub admin: Option<PathBuf>,
    /// Call detail records (`--cdr`): None keeps none.
    pub cdr: Option<crate::cdr::CdrConfig>,
    /// The shared binding store (`--store`, `--node`): None keeps bindings on this node.
    pub shared: Option<crate::store::shared::SharedSettings>,
}

impl Config {
    /// True if digest authentication is configured.
    pub fn auth_enabled(&self) -> bool {
        !self.users.is_empty() || self.users_file.is_some()
    }

    /// The realm: the first domain.
    pub fn realm(&self) -> &str {
        self.domains.first().map_or("localhost", |d| d.as_str())
    }
}

/// The end of `--help`: where the keys without a flag are described.
const AFTER_HELP: &str = "\
Flags override the keys of the TOML file given with --config.
Keys only in the file: nonce_ttl, queue_capacity, consolidate_below,
spread_above, registrar.default_expires,
registrar.min_expires, registrar.max_expires, registrar.max_contacts,
registrar.match_auth_user, responder.trying (--ring-ms, --hold-ms, --mix and
--drop set the other responder.* keys), [security] (ACLs, flood and scanner
bans, brute-force lockout; on by default: security.enabled, security.exempt,
security.allow, security.deny, security.deny_answer, security.flood_requests,
security.flood_window_ms, security.ban_s, security.scanners,
security.ban_scanners, security.lockout_source_failures,
security.lockout_user_failures, security.lockout_window_s, security.lockout_s,
security.max_sources, security.max_concurrent_calls,
security.max_calls_per_minute, security.max_call_s, security.require_srtp,
security.topology_hiding, security.topology_key, [[security.listen]] with security.listen.address, security.listen.allow and
security.listen.deny),
overload.retry_after_s, overload.saturated_ms,
overload.max_transactions,
and the dial plan: [[extension]], [normalize],
[[trunk]], [[route]], [[rate]], [routing], [classes], [emergency], [[group]],
[[paging]].
sipshard.toml at the top of the source tree lists every key with its default
and what it does; install it as /etc/sipshard/sipshard.toml (read by
tuning/sipshard.service).";

/// Command-line flags.
#[derive(Parser, Debug, Default)]
#[command(
    name = "sipshard",
    version,
    about = "A thread-per-core SIP registrar and proxy",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, repeatable: udp:127.0.0.1:5060 (scheme optional), tcp:, tls:, ws:
    /// (SIP over WebSocket, RFC 7118), wss: (needs the TLS files); one udp: is required.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// TLS: the server's certificate chain (PEM), needed by `--listen tls:` and `wss:`.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// TLS: require client certificates signed by these CAs (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// TLS: trust these CAs (PEM) for the peers the server connects to (TLS trunks and
    /// contacts; default: the system's CA bundle).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// TCP: connections one shard holds at most (default 100000).
    #[arg(long, value_name = "N")]
    pub tcp_max_connections: Option<u32>,
    /// TCP: connections one source address may hold per shard (default 256).
    #[arg(long, value_name = "N")]
    pub tcp_max_per_source: Option<u32>,
    /// TCP: a message started (or a new connection's first) must complete within this many
    /// milliseconds, else the connection is closed (default 10000).
    #[arg(long, value_name = "MS")]
    pub tcp_message_timeout_ms: Option<u64>,
    /// TCP: a connection without a byte for this many seconds is closed (default 3600).
    #[arg(long, value_name = "S")]
    pub tcp_idle_timeout_s: Option<u64>,
    /// A domain this server is responsible for, repeatable (the first is the realm).
    #[arg(long, value_name = "NAME")]
    pub domain: Vec<String>,
    /// NAME:PASSWORD, repeatable; enables digest authentication.
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub user: Vec<String>,
    /// File with one `name:password` or `name:ha1=HEX` per line.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Number of shards (threads); default: number of CPUs.
    #[arg(long, value_name = "N")]
    pub shards: Option<String>,
    /// proxy | stateless | redirect | responder (answers every call itself: the far end of a
    /// load test)
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// Responder: final responses to INVITE and their weights, chosen by Call-ID hash
    /// (default 200:100), e.g. 200:90,486:5,503:5.
    #[arg(long, value_name = "LIST")]
    pub mix: Option<String>,
    /// Responder: ms between 180 Ringing and the final response (default 0).
    #[arg(long, value_name = "MS")]
    pub ring_ms: Option<String>,
    /// Responder: ms after the ACK at which the responder sends BYE itself (default 0:
    /// never, the caller hangs up).
    #[arg(long, value_name = "MS")]
    pub hold_ms: Option<String>,
    /// Responder: probability from 0 to 1 of losing an incoming datagram (default 0).
    #[arg(long, value_name = "P")]
    pub drop: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Keep bindings in DIR (created if missing): they survive restarts and crashes.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// With --data-dir: batch (default; fdatasync at most every 10 ms, a crash loses at most
    /// that window) | sync (a REGISTER's 200 leaves only once its binding is on disk).
    #[arg(long, value_name = "MODE")]
    pub durability: Option<String>,
    /// The admin socket `sipshard ctl` talks to (mode 0600; default DATA_DIR/admin.sock with
    /// --data-dir, none without).
    #[arg(long, value_name = "PATH")]
    pub admin: Option<PathBuf>,
    /// Write a call detail record per call attempt to SINK (repeatable): jsonl:PATH (or a
    /// bare PATH), csv:PATH, postgres:URL (table sipshard_cdr; records wait on disk while
    /// PostgreSQL is away).
    #[arg(long, value_name = "SINK")]
    pub cdr: Vec<String>,
    /// Share bindings with other nodes through Redis or Valkey: redis://HOST:PORT[/DB] or
    /// redis+cluster://HOST:PORT,HOST:PORT,... (replaces --data-dir's binding log; with
    /// --durability sync a REGISTER's 200 waits for the store).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// This node's name in the shared store, unique per node (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Rotate a CDR file when it reaches N MiB (default 64; 0: never).
    #[arg(long, value_name = "N")]
    pub cdr_rotate_mb: Option<u64>,
    /// Rotate a CDR file when it is N minutes old (default 0: never).
    #[arg(long, value_name = "N")]
    pub cdr_rotate_minutes: Option<u64>,
    /// Close the record of an answered call whose BYE never came after N minutes (default
    /// 240).
    #[arg(long, value_name = "N")]
    pub cdr_max_call_minutes: Option<u64>,
    /// Forking to several bindings: parallel (default) | sequential (by descending q).
    #[arg(long, value_name = "MODE")]
    pub forking: Option<String>,
    /// Sequential forking: ms a group of branches may try before the next group (100 to
    /// 180000; default 5000).
    #[arg(long, value_name = "MS")]
    pub branch_timeout_ms: Option<String>,
    /// Transport backend: mmsg | uring.
    #[arg(long, value_name = "BACKEND")]
    pub io: Option<String>,
    /// Datagram steering with several shards: kernel (default: an eBPF program picks the
    /// owner shard's socket; without the privilege the kernel's address hash is used) | off.
    #[arg(long, value_name = "MODE")]
    pub steering: Option<String>,
    /// With several shards: auto (default: while the shard threads together use less than
    /// consolidate_below % of a core, the shards run on shard 0's thread, and spread out
    /// again above spread_above %) | off (one thread per shard always).
    #[arg(long, value_name = "MODE")]
    pub consolidate: Option<String>,
    /// Allow running without authentication on a non-loopback address.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Digest challenges to offer, in order, from md5, sha-256, sha-512-256 (default md5
    /// alone: baresip 1.0 gives up on any SHA-256 challenge); e.g. sha-256,md5 when every
    /// phone does SHA-256. Credentials of all three are accepted whatever is offered.
    #[arg(long, value_name = "LIST")]
    pub auth_algorithms: Option<String>,
    /// Refuse digest credentials whose uri differs from the Request-URI (default: verify the
    /// response over the uri the client sent, as Kamailio does).
    #[arg(long)]
    pub strict_digest_uri: bool,
    /// Log filter (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL")]
    pub log: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<String>>,
    domain: Option<Vec<String>>,
    user: Option<Vec<String>>,
    users: Option<PathBuf>,
    shards: Option<usize>,
    mode: Option<String>,
    metrics: Option<String>,
    data_dir: Option<PathBuf>,
    durability: Option<String>,
    admin: Option<PathBuf>,
    cdr: Option<Vec<String>>,
    store: Option<String>,
    node: Option<String>,
    cdr_rotate_mb: Option<u64>,
    cdr_rotate_minutes: Option<u64>,
    cdr_max_call_minutes: Option<u64>,
    io: Option<String>,
    steering: Option<String>,
    consolidate: Option<String>,
    consolidate_below: Option<u32>,
    spread_above: Option<u32>,
    allow_unauthenticated: Option<bool>,
    queue_capacity: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tcp_max_connections: Option<u32>,
    tcp_max_per_source: Option<u32>,
    tcp_message_timeout_ms: Option<u64>,
    tcp_idle_timeout_s: Option<u64>,
    nonce_ttl: Option<u32>,
    auth_algorithms: Option<Vec<String>>,
    strict_digest_uri: Option<bool>,
    log: Option<String>,
    registrar: Option<FileRegistrar>,
    proxy: Option<FileProxy>,
    responder: Option<FileResponder>,
    #[serde(default)]
    security: crate::security::config::FileSecurity,
    overload: Option<FileOverload>,
    // The dial plan (`crate::routing::spec`), section by section.
    #[serde(default)]
    extension: Vec<crate::routing::spec::ExtensionSpec>,
    #[serde(default)]
    normalize: crate::routing::spec::NormalizeSpec,
    #[serde(default)]
    trunk: Vec<crate::routing::spec::TrunkSpec>,
    #[serde(default)]
    route: Vec<crate::routing::spec::RouteSpec>,
    #[serde(default)]
    rate: Vec<crate::routing::spec::RateSpec>,
    #[serde(default)]
    routing: crate::routing::spec::RoutingSpec,
    #[serde(default)]
    classes: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    emergency: crate::routing::spec::EmergencySpec,
    #[serde(default)]
    group: Vec<crate::routing::spec::GroupSpec>,
    #[serde(default)]
    paging: Vec<crate::routing::spec::PagingSpec>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileProxy {
    forking: Option<String>,
    branch_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileResponder {
    trying: Option<bool>,
    ring_ms: Option<u64>,
    hold_ms: Option<u64>,
    mix: Option<String>,
    drop: Option<f64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileOverload {
    retry_after_s: Option<u32>,
    saturated_ms: Option<u32>,
    max_transactions: Option<usize>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileRegistrar {
    default_expires: Option<u32>,
    min_expires: Option<u32>,
    max_expires: Option<u32>,
    max_contacts: Option<usize>,
    match_auth_user: Option<bool>,
}

/// A configuration problem, already phrased as one line naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: String) -> Result<T, ConfigError> {
    Err(ConfigError(msg))
}

/// Parses `udp:IP:PORT`, `tcp:`, `tls:`, `ws:`, `wss:`, `IP:PORT` (UDP) or `[v6]:PORT`.
pub fn parse_listen(key: &str, s: &str) -> Result<Listen, ConfigError> {
    use crate::sip::Proto;
    let (proto, rest) = match s.split_once(':') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("udp") => (Proto::Udp, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("tcp") => (Proto::Tcp, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("tls") => (Proto::Tls, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ws") => (Proto::Ws, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("wss") => (Proto::Wss, rest),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("sctp") => {
            return err(format!(
                "{key} '{s}': transport {scheme} is not supported (udp, tcp, tls, ws and wss are)"
            ))
        }
        _ => (Proto::Udp, s),
    };
    match rest.parse::<SocketAddr>() {
        Ok(addr) => Ok(Listen { addr, proto }),
        Err(_) => err(format!(
            "{key} '{s}': expected [udp:|tcp:|tls:|ws:|wss:]IP:PORT, e.g. udp:127.0.0.1:5060"
        )),
    }
}

fn parse_user(key: &str, s: &str) -> Result<(String, String), ConfigError> {
    match s.split_once(':') {
        Some((name, pw))
            if !name.is_empty() && !pw.is_empty() && !name.contains(char::is_whitespace) =>
        {
            Ok((name.to_string(), pw.to_string()))
        }
        _ => err(format!("{key} '{s}': expected NAME:PASSWORD")),
    }
}

fn parse_mode(key: &str, s: &str) -> Result<Mode, ConfigError> {
    match s {
        "proxy" => Ok(Mode::Proxy),
        "stateless" => Ok(Mode::Stateless),
        "redirect" => Ok(Mode::Redirect),
        "responder" => Ok(Mode::Responder),
        _ => err(format!(
            "{key} '{s}': expected proxy, stateless, redirect or responder"
        )),
    }
}

fn parse_forking(key: &str, s: &str) -> Result<Forking, ConfigError> {
    match s {
        "parallel" => Ok(Forking::Parallel),
        "sequential" => Ok(Forking::Sequential),
        _ => err(format!("{key} '{s}': expected parallel or sequential")),
    }
}

fn parse_steering(key: &str, s: &str) -> Result<bool, ConfigError> {
    match s {
        "kernel" => Ok(true),
        "off" => Ok(false),
        _ => err(format!("{key} '{s}': expected kernel or off")),
    }
}

fn parse_consolidate(key: &str, s: &str) -> Result<bool, ConfigError> {
    match s {
        "auto" => Ok(true),
        "off" => Ok(false),
        _ => err(format!("{key} '{s}': expected auto or off")),
    }
}

fn parse_io(key: &str, s: &str) -> Result<IoBackend, ConfigError> {
    match s {
        "mmsg" => Ok(IoBackend::Mmsg),
        "uring" => Ok(IoBackend::Uring),
        _ => err(format!("{key} '{s}': expected mmsg or uring")),
    }
}

fn parse_algorithms<'s>(
    key: &str,
    list: impl Iterator<Item = &'s str>,
) -> Result<Vec<crate::auth::Algorithm>, ConfigError> {
    let mut out = Vec::new();
    for name in list {
        let alg = match name.trim().to_ascii_uppercase().as_str() {
            "MD5" => crate::auth::Algorithm::Md5,
            "SHA-256" | "SHA256" => crate::auth::Algorithm::Sha256,
            "SHA-512-256" | "SHA512-256" => crate::auth::Algorithm::Sha512_256,
            _ => {
                return err(format!(
                    "{key} '{name}': expected md5, sha-256 or sha-512-256"
                ))
            }
        };
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    if out.is_empty() {
        return err(format!("{key}: at least one algorithm is required"));
    }
    Ok(out)
}

fn check_domain(key: &str, d: &str) -> Result<String, ConfigError> {
    let ok = !d.is_empty()
        && d.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b':' | b'[' | b']'));
    if ok {
        Ok(d.to_ascii_lowercase())
    } else {
        err(format!("{key} '{d}': not a valid domain name"))
    }
}

/// The key set on line `line` (1-based) of a TOML text, qualified by its `[table]`:
/// `registrar.min_expires`; None if that line sets no `key = value`.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = None;
    for l in text.lines().take(line - 1) {
        let l = l.trim();
        if l.starts_with('[') && l.ends_with(']') {
            table = Some(l.trim_matches(|c| c == '[' || c == ']').trim());
        }
    }
    let (key, _) = text.lines().nth(line - 1)?.split_once('=')?;
    let key = key.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if key.is_empty() || !key.chars().all(bare) {
        return None;
    }
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

/// Turns a TOML error into one line with the line number (and the key, for a bad value).
fn toml_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e.message().lines().next().unwrap_or("invalid TOML").trim();
    match line {
        // A bad value (`strict_digest_uri = "yes"`): name its key, as flags are named.
        Some(l) if key_at_line(text, l).is_some_and(|k| !msg.contains(k.as_str())) => {
            let key = key_at_line(text, l).unwrap_or_default();
            ConfigError(format!("config {}: line {l}: {key}: {msg}", path.display()))
        }
        Some(l) => ConfigError(format!("config {}: line {l}: {msg}", path.display())),
        None => ConfigError(format!("config {}: {msg}", path.display())),
    }
}

impl Cli {
    /// Merges the file (if any) and the flags into a validated configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("--config {}: cannot read: {e}", path.display()))
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| toml_error(path, &text, &e))?
            }
        };
        let listen_src: Vec<(String, &str)> = if !self.listen.is_empty() {
            self.listen
                .iter()
                .map(|s| (s.clone(), "--listen"))
                .collect()
        } else if let Some(l) = &file.listen {
            l.iter().map(|s| (s.clone(), "listen")).collect()
        } else {
            vec![("udp:127.0.0.1:5060".to_string(), "--listen")]
        };
        let mut listen = Vec::new();
        for (s, key) in &listen_src {
            let l = parse_listen(key, s)?;
            if listen.contains(&l) {
                return err(format!("{key} '{s}': listed twice"));
            }
            listen.push(l);
        }
        if listen.is_empty() {
            return err("listen: at least one address is required".into());
        }
        if !listen.iter().any(|l| l.proto == crate::sip::Proto::Udp) {
            return err(
                "listen: at least one udp address is required (with tcp, tls, ws and wss ones)"
                    .into(),
            );
        }
        let tls_cert = self.tls_cert.clone().or(file.tls_cert.clone());
        let tls_key = self.tls_key.clone().or(file.tls_key.clone());
        let tls_client_ca = self.tls_client_ca.clone().or(file.tls_client_ca.clone());
        let tls_listen = listen.iter().find(|l| l.proto.is_secure());
        let tls_files = match (tls_listen, tls_cert, tls_key) {
            (None, _, _) => None,
            (Some(l), None, _) => {
                return err(format!(
                    "--tls-cert: required by --listen {}:{}",
                    l.proto.scheme(),
                    l.addr
                ))
            }
            (Some(l), _, None) => {
                return err(format!(
                    "--tls-key: required by --listen {}:{}",
                    l.proto.scheme(),
                    l.addr
                ))
            }
            (Some(_), Some(cert), Some(key)) => Some(crate::transport::tls::TlsFiles {
                cert,
                key,
                client_ca: tls_client_ca,
                ca: self.tls_ca.clone().or(file.tls_ca.clone()),
            }),
        };
        let tls = match &tls_files {
            Some(f) => Some(crate::transport::tls::server_config(f).map_err(ConfigError)?),
            None => None,
        };
        // Outgoing TLS leaves from a tls: address (a wss: one serves browsers only).
        let tls_client = match &tls_files {
            Some(f) if listen.iter().any(|l| l.proto == crate::sip::Proto::Tls) => {
                Some(crate::transport::tls::client_config(f).map_err(ConfigError)?)
            }
            _ => None,
        };
        let mut streams = crate::transport::tcp::StreamSettings::default();
        for (flag, key, cli, file_v, lo, hi, set) in [
            (
                "--tcp-max-connections",
                "tcp_max_connections",
                self.tcp_max_connections.map(u64::from),
                file.tcp_max_connections.map(u64::from),
                1,
                10_000_000,
                0,
            ),
            (
                "--tcp-max-per-source",
                "tcp_max_per_source",
                self.tcp_max_per_source.map(u64::from),
                file.tcp_max_per_source.map(u64::from),
                1,
                10_000_000,
                1,
            ),
            (
                "--tcp-message-timeout-ms",
                "tcp_message_timeout_ms",
                self.tcp_message_timeout_ms,
                file.tcp_message_timeout_ms,
                100,
                3_600_000,
                2,
            ),
            (
                "--tcp-idle-timeout-s",
                "tcp_idle_timeout_s",
                self.tcp_idle_timeout_s,
                file.tcp_idle_timeout_s,
                1,
                86_400 * 7,
                3,
            ),
        ] {
            let (name, v) = match (cli, file_v) {
                (Some(v), _) => (flag, v),
                (None, Some(v)) => (key, v),
                _ => continue,
            };
            if !(lo..=hi).contains(&v) {
                return err(format!("{name} '{v}': expected {lo} to {hi}"));
            }
            match set {
                0 => streams.max_per_shard = v as u32,
                1 => streams.max_per_source = v as u32,
                2 => streams.message_timeout_ms = v,
                _ => streams.idle_timeout_ms = v * 1000,
            }
        }
        let domain_src: Vec<(String, &str)> = if !self.domain.is_empty() {
            self.domain
                .iter()
                .map(|s| (s.clone(), "--domain"))
                .collect()
        } else if let Some(d) = &file.domain {
            d.iter().map(|s| (s.clone(), "domain")).collect()
        } else {
            vec![("localhost".to_string(), "--domain")]
        };
        let domains = domain_src
            .iter()
            .map(|(d, key)| check_domain(key, d))
            .collect::<Result<Vec<_>, _>>()?;
        if domains.is_empty() {
            return err("domain: at least one domain is required".into());
        }
        let mut users = Vec::new();
        for u in &self.user {
            users.push(parse_user("--user", u)?);
        }
        for u in file.user.iter().flatten() {
            users.push(parse_user("user", u)?);
        }
        let users_file = self.users.clone().or(file.users.clone());
        if let Some(p) = &users_file {
            if !p.is_file() {
                return err(format!("--users {}: no such file", p.display()));
            }
        }
        let shards = match (&self.shards, file.shards) {
            (Some(s), _) => match s.parse::<usize>() {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => return err(format!("--shards '{s}': expected a number from 1 to 1024")),
            },
            (None, Some(n)) if (1..=1024).contains(&n) => n,
            (None, Some(n)) => return err(format!("shards {n}: expected a number from 1 to 1024")),
            (None, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let mode = match (&self.mode, &file.mode) {
            (Some(m), _) => parse_mode("--mode", m)?,
            (None, Some(m)) => parse_mode("mode", m)?,
            _ => Mode::Proxy,
        };
        let metrics = match (&self.metrics, &file.metrics) {
            (Some(m), _) => Some(("--metrics", m)),
            (None, Some(m)) => Some(("metrics", m)),
            _ => None,
        }
        .map(|(key, m)| {
            m.parse::<SocketAddr>()
                .map_err(|_| ConfigError(format!("{key} '{m}': expected IP:PORT")))
        })
        .transpose()?;
        let durability = match (&self.durability, &file.durability) {
            (Some(d), _) => Some(("--durability", d)),
            (None, Some(d)) => Some(("durability", d)),
            _ => None,
        }
        .map(|(key, d)| match d.as_str() {
            "batch" => Ok(crate::store::Durability::Batch),
            "sync" => Ok(crate::store::Durability::Sync),
            _ => Err(ConfigError(format!("{key} '{d}': expected batch or sync"))),
        })
        .transpose()?;
        let shared = match (&self.store, &file.store) {
            (Some(u), _) => Some(("--store", u)),
            (None, Some(u)) => Some(("store", u)),
            _ => None,
        }
        .map(|(key, u)| {
            crate::store::shared::Target::parse(u)
                .map_err(|e| ConfigError(format!("{key} '{u}': {e}")))
        })
        .transpose()?;
        let node = match (&self.node, &file.node) {
            (Some(n), _) => Some(("--node", n)),
            (None, Some(n)) => Some(("node", n)),
            _ => None,
        };
        if let Some((key, n)) = node {
            if n.is_empty()
                || n.len() > 255
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                return err(format!(
                    "{key} '{n}': expected 1 to 255 letters, digits, '-', '_', '.' or ':'"
                ));
            }
            if shared.is_none() {
                return err(format!("{key}: needs --store (or store in the file)"));
            }
        }
        let data_dir = self.data_dir.as_ref().or(file.data_dir.as_ref());
        let store =
            match (data_dir, durability, &shared) {
                // The shared store takes the bindings: no local binding log.
                (_, _, Some(_)) => None,
                (Some(dir), d, None) => Some(crate::store::StoreSettings::new(
                    dir.clone(),
                    d.unwrap_or(crate::store::Durability::Batch),
                )),
                (None, Some(_), None) => return err(
                    "--durability: needs --data-dir or --store (or data_dir, store in the file)"
                        .into(),
                ),
                (None, None, None) => None,
            };
        let shared = shared.map(|target| {
            crate::store::shared::SharedSettings::new(
                target,
                node.map_or_else(crate::store::shared::default_node, |(_, n)| n.clone()),
                durability.unwrap_or(crate::store::Durability::Batch),
            )
        });
        let admin = self
            .admin
            .clone()
            .or(file.admin.clone())
            .or_else(|| data_dir.map(|d| d.join("admin.sock")));
        let io = match (&self.io, &file.io) {
            (Some(m), _) => parse_io("--io", m)?,
            (None, Some(m)) => parse_io("io", m)?,
            // recvmmsg/sendmmsg is the default: it costs 3-5 % less server CPU per OPTIONS
            // request/response than io_uring (7.93 vs 8.18 µs, perf/results/io-backends.md).
            _ => IoBackend::Mmsg,
        };
        let steering = match (&self.steering, &file.steering) {
            (Some(m), _) => parse_steering("--steering", m)?,
            (None, Some(m)) => parse_steering("steering", m)?,
            _ => true,
        };
        let mut registrar = RegistrarSettings::default();
        if let Some(r) = &file.registrar {
            registrar.default_expires = r.default_expires.unwrap_or(registrar.default_expires);
            registrar.min_expires = r.min_expires.unwrap_or(registrar.min_expires);
            registrar.max_expires = r.max_expires.unwrap_or(registrar.max_expires);
            registrar.max_contacts = r.max_contacts.unwrap_or(registrar.max_contacts);
            registrar.match_auth_user = r.match_auth_user.unwrap_or(registrar.match_auth_user);
        }
        if registrar.min_expires > registrar.max_expires {
            return err(format!(
                "registrar.min_expires {} is above registrar.max_expires {}",
                registrar.min_expires, registrar.max_expires
            ));
        }
        if registrar.default_expires < registrar.min_expires
            || registrar.default_expires > registrar.max_expires
        {
            return err(format!(
                "registrar.default_expires {} is outside min_expires..max_expires ({}..{})",
                registrar.default_expires, registrar.min_expires, registrar.max_expires
            ));
        }
        if registrar.max_contacts == 0 {
            return err("registrar.max_contacts: must be at least 1".into());
        }
        let cdr_specs: Vec<(&str, &String)> = if self.cdr.is_empty() {
            file.cdr.iter().flatten().map(|s| ("cdr", s)).collect()
        } else {
            self.cdr.iter().map(|s| ("--cdr", s)).collect()
        };
        let cdr = if cdr_specs.is_empty() {
            None
        } else {
            let mut sinks = Vec::new();
            for (key, spec) in cdr_specs {
                sinks.push(
                    crate::cdr::SinkSpec::parse(spec)
                        .map_err(|e| ConfigError(format!("{key} {e}")))?,
                );
            }
            let mut c = crate::cdr::CdrConfig::new(sinks, store.as_ref().map(|s| s.dir.as_path()))
                .map_err(ConfigError)?;
            let mb = match (self.cdr_rotate_mb, file.cdr_rotate_mb) {
                (Some(v), _) => Some(("--cdr-rotate-mb", v)),
                (None, Some(v)) => Some(("cdr_rotate_mb", v)),
                _ => None,
            };
            if let Some((key, v)) = mb {
                if v > 1 << 20 {
                    return err(format!("{key} '{v}': expected 0 (never) to 1048576 MiB"));
                }
                c.rotate_bytes = v << 20;
            }
            let minutes = self.cdr_rotate_minutes.or(file.cdr_rotate_minutes);
            c.rotate_ms = minutes.unwrap_or(0) * 60_000;
            Some(c)
        };
        let max_call = match (self.cdr_max_call_minutes, file.cdr_max_call_minutes) {
            (Some(v), _) => Some(("--cdr-max-call-minutes", v)),
            (None, Some(v)) => Some(("cdr_max_call_minutes", v)),
            _ => None,
        };
        if let Some((key, v)) = max_call {
            if !(1..=10_080).contains(&v) {
                return err(format!("{key} '{v}': expected 1 to 10080 minutes"));
            }
        }
        let mut proxy = ProxySettings::default();
        proxy.cdr = cdr.as_ref().map(|_| crate::proxy::cdr::CdrSettings {
            max_duration_ms: max_call.map_or(240, |(_, v)| v) * 60_000,
        });
        let file_proxy = file.proxy.as_ref();
        proxy.forking = match (&self.forking, file_proxy.and_then(|p| p.forking.as_ref())) {
            (Some(f), _) => parse_forking("--forking", f)?,
            (None, Some(f)) => parse_forking("proxy.forking", f)?,
            (None, None) => proxy.forking,
        };
        let timeout = match (
            &self.branch_timeout_ms,
            file_proxy.and_then(|p| p.branch_timeout_ms),
        ) {
            (Some(flag), _) => Some((
                "--branch-timeout-ms",
                flag.parse::<u64>().ok(),
                flag.clone(),
            )),
            (None, Some(ms)) => Some(("proxy.branch_timeout_ms", Some(ms), ms.to_string())),
            (None, None) => None,
        };
        if let Some((key, ms, text)) = timeout {
            match ms.filter(|ms| (100..=crate::proxy::stateful::TIMER_C_MS).contains(ms)) {
                Some(ms) => proxy.branch_timeout_ms = ms,
                None => {
                    return err(format!(
                        "{key} {text}: expected 100 to {} (Timer C)",
                        crate::proxy::stateful::TIMER_C_MS
                    ))
                }
            }
        }
        let consolidate = match (&self.consolidate, &file.consolidate) {
            (Some(m), _) => parse_consolidate("--consolidate", m)?,
            (None, Some(m)) => parse_consolidate("consolidate", m)?,
            _ => true,
        };
        let below = file.consolidate_below.unwrap_or(50);
        let above = file.spread_above.unwrap_or(75);
        if !(1..=100).contains(&below) {
            return err(format!(
                "consolidate_below {below}: expected 1 to 100 (% of one core)"
            ));
        }
        if !(below..=100).contains(&above) {
            return err(format!(
                "spread_above {above}: expected consolidate_below ({below}) to 100 (% of one core)"
            ));
        }
        let consolidation = consolidate
            .then(|| crate::shard::consolidation::Thresholds::from_percent(below, above));
        let queue_capacity = file.queue_capacity.unwrap_or(8192);
        if !(16..=1 << 20).contains(&queue_capacity) {
            return err(format!(
                "queue_capacity {queue_capacity}: expected 16 to 1048576"
            ));
        }
        let nonce_ttl = file.nonce_ttl.unwrap_or(300);
        if !(10..=86_400).contains(&nonce_ttl) {
            return err(format!(
                "nonce_ttl {nonce_ttl}: expected 10 to 86400 seconds"
            ));
        }
        let auth_algorithms = match (&self.auth_algorithms, &file.auth_algorithms) {
            (Some(list), _) => parse_algorithms("--auth-algorithms", list.split(','))?,
            (None, Some(list)) => {
                parse_algorithms("auth_algorithms", list.iter().map(|s| s.as_str()))?
            }
            (None, None) => crate::auth::Algorithm::DEFAULT_OFFER.to_vec(),
        };
        let dial_plan = crate::routing::DialPlanSpec {
            extension: file.extension,
            normalize: file.normalize,
            trunk: file.trunk,
            route: file.route,
            rate: file.rate,
            routing: file.routing,
            classes: file.classes,
            emergency: file.emergency,
            group: file.group,
            paging: file.paging,
        };
        let routing =
            std::sync::Arc::new(crate::routing::DialPlan::build(&dial_plan).map_err(ConfigError)?);
        drop(dial_plan);
        // A trunk over a stream needs a listen address of its transport to send from.
        for t in &routing.trunks {
            if !listen.iter().any(|l| l.proto == t.proto) {
                return err(format!(
                    "[[trunk]] \"{}\": transport {} needs a --listen {}: address",
                    t.name,
                    t.proto.uri_param(),
                    t.proto.scheme()
                ));
            }
        }
        let responder = std::sync::Arc::new(responder_settings(
            &self.mix,
            &self.ring_ms,
            &self.hold_ms,
            &self.drop,
            file.responder.as_ref(),
        )?);
        proxy.topology = file
            .security
            .topology()
            .map_err(ConfigError)?
            .map(std::sync::Arc::new);
        let listen_addrs: Vec<SocketAddr> = listen.iter().map(|l| l.addr).collect();
        let mut security = file
            .security
            .settings_for(&listen_addrs)
            .map_err(ConfigError)?;
        if mode == Mode::Responder && !file.security.sets_flood() {
            // A load-test target takes floods by design: no flood ban unless asked for.
            security.flood = None;
        }
        let security = std::sync::Arc::new(security);
        let mut overload = crate::proxy::settings::OverloadSettings::default();
        if let Some(o) = &file.overload {
            if let Some(r) = o.retry_after_s {
                if !(1..=3600).contains(&r) {
                    return err(format!(
                        "overload.retry_after_s '{r}': expected 1 to 3600 seconds"
                    ));
                }
                overload.retry_after_s = r;
            }
            if let Some(m) = o.saturated_ms {
                if m > 60_000 {
                    return err(format!(
                        "overload.saturated_ms '{m}': expected 0 (off) to 60000"
                    ));
                }
                overload.saturated_ms = m;
            }
            if let Some(m) = o.max_transactions {
                if !(100..=100_000_000).contains(&m) {
                    return err(format!(
                        "overload.max_transactions '{m}': expected 100 to 100000000"
                    ));
                }
                overload.max_transactions = m;
            }
        }
        let shared = shared.map(|mut s| {
            // A key outlives the longest registration its node may hold.
            s.key_ttl_ms = (u64::from(registrar.max_expires) + 60) * 1_000;
            // Socket order as the shards number them: UDP first, then the streams.
            let udp = listen.iter().filter(|l| l.proto == crate::sip::Proto::Udp);
            let streams = listen.iter().filter(|l| l.proto.is_stream());
            let protos: Vec<&str> = udp
                .clone()
                .chain(streams)
                .map(|l| l.proto.uri_param())
                .collect();
            s.protos = protos.join(",");
            s.via = udp.map(|l| l.addr.to_string()).next().unwrap_or_default();
            s
        });
        let config = Config {
            routing,
            responder,
            security,
            overload,
            listen,
            domains,
            users,
            users_file,
            shards,
            mode,
            metrics,
            store,
            shared,
            admin,
            cdr,
            io,
            steering,
            consolidation,
            allow_unauthenticated: self.allow_unauthenticated
                || file.allow_unauthenticated.unwrap_or(false),
            registrar,
            proxy,
            queue_capacity,
            streams,
            tls_files,
            tls,
            tls_client,
            nonce_ttl,
            auth_algorithms,
            strict_digest_uri: self.strict_digest_uri || file.strict_digest_uri.unwrap_or(false),
            log: self.log.or(file.log).unwrap_or_else(|| "info".into()),
        };
        if !config.auth_enabled() && !config.allow_unauthenticated {
            if let Some(l) = config.listen.iter().find(|l| !is_loopback(l.addr.ip())) {
                return err(format!(
                    "--listen {}: refusing to serve without authentication on a non-loopback \
                     address; add --user/--users or pass --allow-unauthenticated",
                    l.addr
                ));
            }
        }
        Ok(config)
    }
}

/// The responder's settings from the flags (first) and the `[responder]` section.
fn responder_settings(
    mix: &Option<String>,
    ring_ms: &Option<String>,
    hold_ms: &Option<String>,
    drop: &Option<String>,
    file: Option<&FileResponder>,
) -> Result<crate::responder::ResponderSettings, ConfigError> {
    use crate::responder::settings::parse_mix;
    let mut s = crate::responder::ResponderSettings::default();
    let ms = |key: &str, v: &str| -> Result<u64, ConfigError> {
        match v.parse::<u64>() {
            Ok(n) if n <= 3_600_000 => Ok(n),
            _ => err(format!("{key} '{v}': expected ms from 0 to 3600000")),
        }
    };
    let check_ms = |key: &str, n: u64| ms(key, &n.to_string());
    let f = file;
    if let Some(t) = f.and_then(|f| f.trying) {
        s.trying = Some(t);
    }
    s.ring_ms = match (ring_ms, f.and_then(|f| f.ring_ms)) {
        (Some(v), _) => ms("--ring-ms", v)?,
        (None, Some(n)) => check_ms("responder.ring_ms", n)?,
        _ => s.ring_ms,
    };
    s.hold_ms = match (hold_ms, f.and_then(|f| f.hold_ms)) {
        (Some(v), _) => ms("--hold-ms", v)?,
        (None, Some(n)) => check_ms("responder.hold_ms", n)?,
        _ => s.hold_ms,
    };
    let file_mix = f.and_then(|f| f.mix.as_ref());
    if let Some((key, m)) = mix
        .as_ref()
        .map(|m| ("--mix", m))
        .or(file_mix.map(|m| ("responder.mix", m)))
    {
        s.mix = parse_mix(m).map_err(|e| ConfigError(format!("{key} '{m}': {e}")))?;
    }
    let p = match (drop, f.and_then(|f| f.drop)) {
        (Some(v), _) => Some(("--drop", v.parse::<f64>().unwrap_or(f64::NAN), v.clone())),
        (None, Some(p)) => Some(("responder.drop", p, p.to_string())),
        _ => None,
    };
    if let Some((key, p, text)) = p {
        if !(0.0..=1.0).contains(&p) {
            return err(format!(
                "{key} '{text}': expected a probability from 0 to 1"
            ));
        }
        s.drop = p;
    }
    Ok(s)
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// Builds the digest authenticator the configuration asks for (None without users). Errors
/// name the flag or file line.
pub fn authenticator(config: &Config) -> Result<Option<crate::auth::Authenticator>, ConfigError> {
    use crate::auth::{random_secret, Authenticator};
    if !config.auth_enabled() {
        return Ok(None);
    }
    let db = user_db(config)?;
    let secret =
        random_secret().map_err(|e| ConfigError(format!("cannot get random bytes: {e}")))?;
    Ok(Some(
        Authenticator::new(
            config.realm(),
            std::sync::Arc::new(db),
            secret,
            config.nonce_ttl,
        )
        .with_algorithms(&config.auth_algorithms)
        .with_strict_uri(config.strict_digest_uri),
    ))
}

/// The users of the configuration (`--user` and the `--users` file), for the realm.
pub fn user_db(config: &Config) -> Result<crate::auth::UserDb, ConfigError> {
    let mut db = crate::auth::UserDb::new(config.realm());
    for (name, pw) in &config.users {
        db.add_password(name, pw)
            .map_err(|e| ConfigError(format!("--user {name}: {e}")))?;
    }
    if let Some(path) = &config.users_file {
        db.load_file(path)
            .map_err(|e| ConfigError(format!("--users {e}")))?;
    }
    Ok(db)
}

#[cfg(test)]
#[path = "config_example_tests.rs"]
mod example_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["sipshard"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().into_config()
    }

    #[test]
    fn embedded_default() {
        let c = cli(&[]).unwrap();
        assert_eq!(c.listen[0].addr, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(c.domains, vec!["localhost"]);
        assert!(!c.auth_enabled());
        assert_eq!(c.mode, Mode::Proxy);
    }

    #[test]
    fn consolidation_is_on_unless_turned_off_and_its_thresholds_are_checked() {
        use crate::shard::consolidation::Thresholds;
        assert_eq!(
            cli(&[]).unwrap().consolidation,
            Some(Thresholds::from_percent(50, 75))
        );
        assert_eq!(cli(&["--consolidate", "off"]).unwrap().consolidation, None);
        assert_eq!(
            cli(&["--consolidate", "sometimes"]).unwrap_err().0,
            "--consolidate 'sometimes': expected auto or off"
        );
    }

    #[test]
    fn steering_is_on_unless_turned_off() {
        assert!(cli(&[]).unwrap().steering);
        assert!(!cli(&["--steering", "off"]).unwrap().steering);
        assert!(cli(&["--steering", "kernel"]).unwrap().steering);
        assert_eq!(
            cli(&["--steering", "ebpf"]).unwrap_err().0,
            "--steering 'ebpf': expected kernel or off"
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        let e = cli(&["--listen", "sctp:1.2.3.4:5060"]).unwrap_err();
        assert!(e.0.starts_with("--listen"), "{e}");
        // WebSocket beside UDP; a wss address needs the TLS files, named.
        let c = cli(&[
            "--listen",
            "udp:127.0.0.1:5060",
            "--listen",
            "ws:127.0.0.1:8080",
        ]);
        assert_eq!(c.unwrap().listen[1].proto, crate::sip::Proto::Ws);
        let e = cli(&[
            "--listen",
            "udp:127.0.0.1:5060",
            "--listen",
            "wss:127.0.0.1:8443",
        ]);
        assert_eq!(
            e.unwrap_err().0,
            "--tls-cert: required by --listen wss:127.0.0.1:8443"
        );
        // TCP alone: a UDP address is needed beside it.
        let e = cli(&["--listen", "tcp:127.0.0.1:5060"]).unwrap_err();
        assert!(e.0.contains("udp"), "{e}");
        let c = cli(&[
            "--listen",
            "udp:127.0.0.1:5060",
            "--listen",
            "tcp:127.0.0.1:5060",
        ])
        .unwrap();
        assert_eq!(c.listen[1].proto, crate::sip::Proto::Tcp);
        let e = cli(&["--tcp-max-per-source", "0"]).unwrap_err();
        assert!(e.0.starts_with("--tcp-max-per-source"), "{e}");
        let c = cli(&[
            "--tcp-message-timeout-ms",
            "2000",
            "--tcp-idle-timeout-s",
            "5",
        ])
        .unwrap();
        assert_eq!(c.streams.message_timeout_ms, 2000);
        assert_eq!(c.streams.idle_timeout_ms, 5000);
        let e = cli(&["--shards", "0"]).unwrap_err();
        assert!(e.0.starts_with("--shards"), "{e}");
        let e = cli(&["--mode", "fast"]).unwrap_err();
        assert!(e.0.starts_with("--mode"), "{e}");
        let e = cli(&["--user", "nopassword"]).unwrap_err();
        assert!(e.0.starts_with("--user"), "{e}");
        let e = cli(&["--auth-algorithms", "md5,sha1"]).unwrap_err();
        assert!(e.0.starts_with("--auth-algorithms"), "{e}");
        let c = cli(&["--auth-algorithms", "MD5"]).unwrap();
        assert_eq!(c.auth_algorithms, vec![crate::auth::Algorithm::Md5]);
        let c = cli(&["--auth-algorithms", "sha-512-256,SHA-256"]).unwrap();
        use crate::auth::Algorithm;
        assert_eq!(
            c.auth_algorithms,
            vec![Algorithm::Sha512_256, Algorithm::Sha256]
        );
        assert_eq!(cli(&[]).unwrap().auth_algorithms, vec![Algorithm::Md5]);
        let e = cli(&["--io", "epoll"]).unwrap_err();
        assert!(e.0.starts_with("--io"), "{e}");
        let e = cli(&["--metrics", "nope"]).unwrap_err();
        assert!(e.0.starts_with("--metrics"), "{e}");
        let e = cli(&["--forking", "random"]).unwrap_err();
        assert!(e.0.starts_with("--forking 'random'"), "{e}");
    }

    #[test]
    fn refuses_open_registration_off_loopback() {
        let e = cli(&["--listen", "0.0.0.0:5060"]).unwrap_err();
        assert!(e.0.contains("without authentication"), "{e}");
        assert!(cli(&["--listen", "0.0.0.0:5060", "--allow-unauthenticated"]).is_ok());
        assert!(cli(&["--listen", "0.0.0.0:5060", "--user", "a:b"]).is_ok());
    }

    #[test]
    fn toml_file_and_errors() {
        let dir = std::env::temp_dir().join(format!("sipshard-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "listen = [\"udp:127.0.0.1:5099\"]\ndomain = [\"example.com\"]\nshards = 2\n\
             [registrar]\nmin_expires = 30\n",
        )
        .unwrap();
        let c = cli(&["--config", good.to_str().unwrap()]).unwrap();
        assert_eq!(c.listen[0].addr.port(), 5099);
        assert_eq!(c.shards, 2);
        assert_eq!(c.registrar.min_expires, 30);
        // Flags override the file.
        let c = cli(&["--config", good.to_str().unwrap(), "--shards", "1"]).unwrap();
        assert_eq!(c.shards, 1);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "domain = [\"a\"]\nbogus_key = 1\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(e.0.contains("line 2") && e.0.contains("bogus_key"), "{e}");
        std::fs::write(&bad, "[registrar]\nmin_expires = 100\nmax_expires = 50\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(e.0.contains("registrar.min_expires"), "{e}");
        std::fs::write(&bad, "domain = [\"a\"]\nstrict_digest_uri = \"yes\"\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(
            e.0.contains("line 2: strict_digest_uri: invalid type"),
            "{e}"
        );
        std::fs::write(&bad, "[registrar]\nmax_contacts = \"x\"\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(e.0.contains("line 2: registrar.max_contacts: "), "{e}");
        std::fs::write(&bad, "auth_algorithms = [\"md5\", \"sha1\"]\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(
            e.0.starts_with("auth_algorithms 'sha1': expected md5"),
            "{e}"
        );
        std::fs::write(&bad, "consolidate_below = 10\nspread_above = 20\n").unwrap();
        assert_eq!(
            cli(&["--config", bad.to_str().unwrap()])
                .unwrap()
                .consolidation,
            Some(crate::shard::consolidation::Thresholds::from_percent(
                10, 20
            ))
        );
        std::fs::write(&bad, "consolidate_below = 60\nspread_above = 40\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert_eq!(
            e.0,
            "spread_above 40: expected consolidate_below (60) to 100 (% of one core)"
        );
        std::fs::write(&bad, "consolidate_below = 0\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(
            e.0.starts_with("consolidate_below 0: expected 1 to 100"),
            "{e}"
        );
        std::fs::write(&bad, "consolidate = \"never\"\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert_eq!(e.0, "consolidate 'never': expected auto or off");
        std::fs::write(&bad, "[proxy]\nforking = \"serial\"\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(e.0.starts_with("proxy.forking 'serial'"), "{e}");
        std::fs::write(&bad, "[proxy]\nbranch_timeout_ms = 5\n").unwrap();
        let e = cli(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(e.0.starts_with("proxy.branch_timeout_ms 5"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn strict_digest_uri_from_file_and_flag() {
        assert!(!cli(&[]).unwrap().strict_digest_uri);
        assert!(cli(&["--strict-digest-uri"]).unwrap().strict_digest_uri);
        let path = std::env::temp_dir().join(format!("sipshard-sdu-{}.toml", std::process::id()));
        for (text, want) in [
            ("strict_digest_uri = true\n", true),
            ("strict_digest_uri = false\n", false),
            ("auth_algorithms = [\"sha-256\"]\n", false),
        ] {
            std::fs::write(&path, text).unwrap();
            let c = cli(&["--config", path.to_str().unwrap()]).unwrap();
            assert_eq!(c.strict_digest_uri, want, "{text}");
        }
        let c = cli(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.auth_algorithms, vec![crate::auth::Algorithm::Sha256]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn forking_from_file_and_flag() {
        assert_eq!(cli(&[]).unwrap().proxy, ProxySettings::default());
        let path = std::env::temp_dir().join(format!("sipshard-fork-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[proxy]\nforking = \"sequential\"\nbranch_timeout_ms = 2500\n",
        )
        .unwrap();
        let c = cli(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.proxy.forking, Forking::Sequential);
        assert_eq!(c.proxy.branch_timeout_ms, 2500);
        // The flag wins over the file.
        let c = cli(&["--config", path.to_str().unwrap(), "--forking", "parallel"]).unwrap();
        assert_eq!(c.proxy.forking, Forking::Parallel);
        assert_eq!(c.proxy.branch_timeout_ms, 2500);
        let c = cli(&["--forking", "sequential"]).unwrap();
        assert_eq!(c.proxy.forking, Forking::Sequential);
        // The branch timeout: the flag wins over the file, and is checked like it.
        let c = cli(&[
            "--config",
            path.to_str().unwrap(),
            "--branch-timeout-ms",
            "800",
        ])
        .unwrap();
        assert_eq!(c.proxy.branch_timeout_ms, 800);
        assert_eq!(cli(&[]).unwrap().proxy.branch_timeout_ms, 5_000);
        for bad in ["99", "180001", "x", "1e3"] {
            let e = cli(&["--branch-timeout-ms", bad]).unwrap_err();
            assert!(
                e.0.starts_with(&format!("--branch-timeout-ms {bad}: expected 100 to")),
                "{e}"
            );
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn responder_settings_from_flags_and_file() {
        let c = cli(&["--mode", "responder"]).unwrap();
        // A load-test target: no flood ban unless the file asks for one; the rest stays.
        assert_eq!(c.security.flood, None);
        assert!(!c.security.scanners.is_empty());
        assert!(cli(&[]).unwrap().security.flood.is_some());
        assert_eq!(c.mode, Mode::Responder);
        assert_eq!(*c.responder, crate::responder::ResponderSettings::default());
        // No users on a public address: refused for a responder too, unless told so.
        assert!(cli(&["--mode", "responder", "--listen", "192.0.2.1:5060"]).is_err());
        let open = [
            "--mode",
            "responder",
            "--listen",
            "192.0.2.1:5060",
            "--allow-unauthenticated",
        ];
        assert!(cli(&open).is_ok());
        let path = std::env::temp_dir().join(format!("sipshard-resp-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "mode = \"responder\"\n[responder]\ntrying = false\nring_ms = 1000\nhold_ms = 30000\n\
             mix = \"200:90,486:10\"\ndrop = 0.01\n",
        )
        .unwrap();
        let c = cli(&["--config", path.to_str().unwrap(), "--ring-ms", "500"]).unwrap();
        assert_eq!(c.mode, Mode::Responder);
        let r = &*c.responder;
        assert_eq!(r.trying, Some(false));
        assert_eq!((r.ring_ms, r.hold_ms, r.drop), (500, 30_000, 0.01));
        assert_eq!(r.mix, vec![(200, 90), (486, 10)]);
        let _ = std::fs::remove_file(&path);
        for (args, starts) in [
            (
                &["--mix", "200:90,180:10"][..],
                "--mix '200:90,180:10': '180:10'",
            ),
            (&["--ring-ms=-1"][..], "--ring-ms '-1': expected ms"),
            (&["--hold-ms", "x"][..], "--hold-ms 'x': expected ms"),
            (
                &["--drop", "1.5"][..],
                "--drop '1.5': expected a probability",
            ),
            (
                &["--drop", "nan"][..],
                "--drop 'nan': expected a probability",
            ),
            (
                &["--mode", "answer"][..],
                "--mode 'answer': expected proxy, stateless, redirect or responder",
            ),
        ] {
            let e = cli(args).unwrap_err();
            assert!(e.0.starts_with(starts), "{args:?}: {e}");
        }
    }
}
