//! The dial plan as written by an operator: the `[[extension]]`, `[normalize]`, `[[trunk]]`,
//! `[[route]]`, `[[rate]]`, `[routing]`, `[classes]`, `[emergency]`, `[[group]]` and
//! `[[paging]]` sections of the TOML file, field for field. `config.rs` reads them from the
//! file; [`super::DialPlan::build`] checks and compiles them. Every field here is documented
//! with its default in `sipshard.toml`.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Default interval of a trunk's OPTIONS checks.
pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 5_000;
/// Default number of failed checks in a row before a trunk is skipped.
pub const DEFAULT_DOWN_AFTER: u32 = 2;
/// Default wait for any response from a trunk before the next one is tried.
pub const DEFAULT_TRUNK_TIMEOUT_MS: u64 = 2_000;
/// Default ring time of a group (per member, or for the whole group when parallel).
pub const DEFAULT_RING_MS: u64 = 15_000;

/// Every dial-plan section of the configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct DialPlanSpec {
    #[serde(default)]
    pub extension: Vec<ExtensionSpec>,
    #[serde(default)]
    pub normalize: NormalizeSpec,
    #[serde(default)]
    pub trunk: Vec<TrunkSpec>,
    #[serde(default)]
    pub route: Vec<RouteSpec>,
    #[serde(default)]
    pub rate: Vec<RateSpec>,
    #[serde(default)]
    pub routing: RoutingSpec,
    /// User name → the classes of service it has.
    #[serde(default)]
    pub classes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub emergency: EmergencySpec,
    #[serde(default)]
    pub group: Vec<GroupSpec>,
    #[serde(default)]
    pub paging: Vec<PagingSpec>,
}

/// A number that reaches a local user (all its bindings).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtensionSpec {
    pub number: String,
    pub user: String,
}

/// Rewrite rules on the dialed user part, first match wins.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NormalizeSpec {
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// One normalisation rule: a regular expression and its replacement (`$1` and `${name}`
/// refer to groups).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(rename = "match")]
    pub pattern: String,
    pub replace: String,
}

/// A gateway to the outside.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrunkSpec {
    pub name: String,
    /// `IP:PORT`.
    pub address: String,
    /// `udp` (default), `tcp` or `tls`: how calls and checks reach it (a connection is opened
    /// when none is open; the server needs a listen address of that transport).
    #[serde(default)]
    pub transport: Option<String>,
    /// OPTIONS every interval; 0 turns the checks off (the trunk is then always up).
    pub check_interval_ms: Option<u64>,
    /// Failed checks in a row before the trunk is skipped.
    pub down_after: Option<u32>,
    /// Requests from these sources (IP addresses or CIDR blocks) are calls from this trunk:
    /// routed by the dialed number without a digest challenge.
    #[serde(default)]
    pub inbound_from: Vec<String>,
}

/// A route: numbers with a prefix go out through trunks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub prefix: String,
    pub trunks: Vec<String>,
    /// The class of service a caller needs (none: everyone may use the route).
    pub class: Option<String>,
    /// A weekly window (`mon-fri 08:00-18:00`); outside it the route does not exist.
    pub time: Option<String>,
    /// IANA time zone of `time` (default UTC).
    pub timezone: Option<String>,
    /// Order the trunks by their `[[rate]]` cost for the number instead of as listed.
    #[serde(default)]
    pub lcr: bool,
}

/// The cost of numbers with a prefix through one trunk (least-cost routing).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub trunk: String,
    pub prefix: String,
    pub cost: f64,
}

/// Routing settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingSpec {
    /// No response at all from a trunk within this: the next trunk.
    pub trunk_timeout_ms: Option<u64>,
    /// Classes of users not listed in `[classes]` (default: `internal` and `national`).
    pub default_classes: Option<Vec<String>>,
}

/// Numbers that are always routed: classes, call limits and overload never refuse them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmergencySpec {
    #[serde(default)]
    pub numbers: Vec<String>,
    #[serde(default)]
    pub trunks: Vec<String>,
}

/// A ring or hunt group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub number: String,
    pub members: Vec<String>,
    /// `parallel`, `sequential` or `round-robin` (default parallel).
    pub strategy: Option<String>,
    /// Per member (sequential, round-robin) or for the whole group (parallel).
    pub ring_ms: Option<u64>,
}

/// A paging number: every member's devices get an auto-answer INVITE at once.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PagingSpec {
    pub number: String,
    pub members: Vec<String>,
}
