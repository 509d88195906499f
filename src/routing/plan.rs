//! The compiled dial plan: the operator's [`DialPlanSpec`] checked (every problem is one line
//! naming the key) and turned into the tables a routing decision reads: hash maps for
//! extensions, groups, paging and emergency numbers, compiled normalisation rules, a
//! longest-prefix map of the routes and one of every trunk's rates. Immutable once built and
//! shared by every shard (`Arc`); only the trunks' up/down flags change, written by the health
//! checker on shard 0 (`health.rs`).

use super::prefix::{prefetch_slice, Key, PrefixMap, BLOCK_LEN};
use super::spec::{self, DialPlanSpec};
use super::window::TimeWindow;
use hashbrown::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

/// A gateway to the outside.
#[derive(Debug)]
pub struct Trunk {
    pub name: Box<str>,
    pub addr: SocketAddr,
    /// How it is reached (UDP, TCP or TLS).
    pub proto: crate::sip::Proto,
    /// 0: no checks (always up).
    pub check_interval_ms: u64,
    pub down_after: u32,
    /// Sources whose requests are calls from this trunk: (network, prefix length).
    pub inbound_from: Vec<(IpAddr, u8)>,
    /// False while the trunk misses its checks (written by the checker on shard 0).
    up: AtomicBool,
}

/// A trunk's state as the admin API lists it (`sipshard ctl trunks`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrunkStatus {
    pub name: String,
    pub address: String,
    /// False while it misses its OPTIONS checks.
    pub up: bool,
    /// 0: not checked (always up).
    pub check_interval_ms: u64,
}

impl Trunk {
    /// What `sipshard ctl trunks` shows of it.
    pub fn status(&self) -> TrunkStatus {
        TrunkStatus {
            name: self.name.to_string(),
            address: match self.proto {
                crate::sip::Proto::Udp => self.addr.to_string(),
                p => format!("{}:{}", p.scheme(), self.addr),
            },
            up: self.is_up(),
            check_interval_ms: self.check_interval_ms,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }
}

/// How a group rings its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every member's devices at once; the rest are cancelled on answer.
    Parallel,
    /// Members in order, `ring_ms` each.
    Sequential,
    /// As sequential, starting with the member after the one who started last time.
    RoundRobin,
}

/// A ring or hunt group.
#[derive(Debug)]
pub struct Group {
    pub number: Box<str>,
    pub members: Vec<Box<str>>,
    pub strategy: Strategy,
    pub ring_ms: u64,
}

/// A paging number.
#[derive(Debug)]
pub struct Paging {
    pub number: Box<str>,
    pub members: Vec<Box<str>>,
}

/// A route: numbers with its prefix go out through its trunks. 12 bytes: a plan of a million
/// routes keeps its lists of trunks and its windows in shared pools, and routes without a
/// time window are shared by every prefix that has the same (most plans have few distinct).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Route {
    /// Its trunks: `trunk_pool[trunks_at..trunks_at + trunks_len]`.
    trunks_at: u32,
    trunks_len: u16,
    /// Index into the class names (NO_CLASS: no class needed).
    class: u8,
    lcr: bool,
    /// Index into `windows` (NO_WINDOW: always active).
    window: u32,
}

const NO_CLASS: u8 = u8::MAX;
/// No rate: sorts after every cost.
const NO_COST: u32 = u32::MAX;
const NO_WINDOW: u32 = u32::MAX;
/// No parent prefix.
const NO_SLOT: u32 = u32::MAX;
/// In a route prefix's value: the rest is a slot (a prefix with time windows or several
/// routes); without it the value is the index of the prefix's one route.
const SLOT: u32 = 1 << 31;
/// The most trunks for which cost vectors are kept per interval of the rate map
/// (`DialPlan::rate_slots`); with more, they are shared and found through the interval.
const SLOT_TRUNKS: usize = 4;

/// A normalisation rule.
#[derive(Debug)]
struct Rule {
    pattern: regex::bytes::Regex,
    replace: Vec<u8>,
}

/// What is local to the plan: a number that reaches users of this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local<'p> {
    /// An extension: every binding of this user.
    Extension(&'p str),
    /// A group (index into [`DialPlan::groups`]).
    Group(usize),
    /// A paging number (index into [`DialPlan::paging`]).
    Paging(usize),
}

/// Where a number goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkRoute {
    /// The number as it goes out (normalised; an emergency number as dialed).
    pub number: Vec<u8>,
    /// Trunks to try in this order (down ones left out, unless all are down for an
    /// emergency call).
    pub trunks: Vec<u16>,
    pub emergency: bool,
}

/// The routing decision for a number outside the local plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision<'p> {
    /// No route matches the number (404).
    NoRoute,
    /// The route needs a class the caller does not have (403).
    Forbidden {
        class: &'p str,
    },
    /// Every trunk of the route is down (503).
    AllTrunksDown,
    Trunks(TrunkRoute),
}

/// Who is calling, for classes of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// An authenticated user.
    User(&'a str),
    /// Nobody authenticated (no users configured): the default classes.
    Anonymous,
}

/// What a plan's tables cost, from [`DialPlan::memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanMemory {
    pub route_prefixes: usize,
    pub route_bytes: usize,
    pub rates: usize,
    pub rate_bytes: usize,
}

/// Bit set of classes of service (at most 64 classes).
type Classes = u64;

/// The compiled dial plan. Its Debug output is a summary (how many of each), not the tables.
pub struct DialPlan {
    extensions: HashMap<Box<[u8]>, Box<str>>,
    group_numbers: HashMap<Box<[u8]>, usize>,
    pub groups: Vec<Group>,
    paging_numbers: HashMap<Box<[u8]>, usize>,
    pub paging: Vec<Paging>,
    rules: Vec<Rule>,
    pub trunks: Vec<Trunk>,
    /// Route prefix → its route: `routes[v]`, the one route of a prefix without a time window
    /// (shared by every such prefix with the same route), or, with the [`SLOT`] bit, slot
    /// `s = v & !SLOT`: a prefix whose routes have windows, `routes[slot_first[s]..slot_first[s
    /// + 1]]` (in the order written); `slot_parent[s]` is the value of the next shorter prefix
    /// that has routes ([`NO_SLOT`]: none), used when none of the slot's windows is open.
    route_prefixes: PrefixMap,
    route_count: usize,
    slot_first: Vec<u32>,
    slot_parent: Vec<u32>,
    routes: Vec<Route>,
    trunk_pool: Vec<u16>,
    windows: Vec<TimeWindow>,
    /// Every trunk's rates: prefix → index of a vector of costs in millionths, one per trunk
    /// (`rate_costs[i * trunks..(i + 1) * trunks]`; [`NO_COST`] where a trunk has no rate).
    rates: PrefixMap,
    rate_costs: Vec<u32>,
    /// With at most [`SLOT_TRUNKS`] trunks, the cost vector of every interval of `rates`
    /// again, in the map's order (`rate_slots[slot * trunks..]` for a lookup's
    /// [`Lookup::slot`](super::prefix::Lookup::slot)), and `rate_costs` is empty: a lookup
    /// then finds its block's vectors where the block's index says, loading them with the
    /// block instead of after it (one cache miss less per decision, for 12 bytes per interval
    /// more with three trunks).
    rate_slots: Vec<u32>,
    rate_count: usize,
    pub trunk_timeout_ms: u64,
    class_names: Vec<Box<str>>,
    user_classes: HashMap<Box<str>, Classes>,
    default_classes: Classes,
    emergency_numbers: Vec<Box<[u8]>>,
    emergency_trunks: Vec<u16>,
}

/// Most prefixes a route or rate may have, in characters (the prefix map's key width).
const MAX_PREFIX: usize = 16;

fn err<T>(msg: String) -> Result<T, String> {
    Err(msg)
}

/// Parses `IP`, or `IP/LEN` as a CIDR block.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|&l| l <= max)?,
        None => max,
    };
    Some((ip, len))
}

/// True if `ip` is in the block `(net, len)`.
fn in_block(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|a| in_block(IpAddr::V4(a), net, len)),
        _ => false,
    }
}

/// A number or prefix the prefix map can hold: digits, `+`, `*`, `#`.
pub fn is_dialable(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&c| c.is_ascii_digit() || matches!(c, b'+' | b'*' | b'#'))
}

impl std::fmt::Debug for DialPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialPlan")
            .field("extensions", &self.extensions.len())
            .field("rules", &self.rules.len())
            .field("trunks", &self.trunks.len())
            .field("routes", &self.route_count)
            .field("rates", &self.rate_count)
            .field("groups", &self.groups.len())
            .field("paging", &self.paging.len())
            .field("emergency_numbers", &self.emergency_numbers.len())
            .finish()
    }
}

impl DialPlan {
    /// An empty plan: every request goes to users of our domain, as without routing.
    pub fn empty() -> DialPlan {
        DialPlan::build(&DialPlanSpec::default()).expect("the empty plan is valid")
    }

    /// True if the plan routes nothing (no extension, route, group, paging or emergency
    /// number): the proxy then skips routing altogether.
    pub fn is_empty(&self) -> bool {
        self.extensions.is_empty()
            && self.groups.is_empty()
            && self.paging.is_empty()
            && self.route_count == 0
            && self.emergency_numbers.is_empty()
            && self.rules.is_empty()
    }

    /// Checks and compiles a plan. The error is one line naming the key and the problem.
    pub fn build(spec: &DialPlanSpec) -> Result<DialPlan, String> {
        // Trunks first: routes, rates and emergency name them.
        let mut trunks: Vec<Trunk> = Vec::new();
        for (i, t) in spec.trunk.iter().enumerate() {
            let at = format!("[[trunk]] {} (name \"{}\")", i + 1, t.name);
            if t.name.trim().is_empty() {
                return err(format!("[[trunk]] {}: name: must not be empty", i + 1));
            }
            if trunks.iter().any(|o| *o.name == *t.name) {
                return err(format!("{at}: name: another trunk has this name"));
            }
            let Ok(addr) = t.address.parse::<SocketAddr>() else {
                return err(format!("{at}: address \"{}\": expected IP:PORT", t.address));
            };
            use crate::sip::Proto;
            let proto = match t.transport.as_deref().map(|p| Proto::parse(p.as_bytes())) {
                None => Proto::Udp,
                Some(Some(p @ (Proto::Udp | Proto::Tcp | Proto::Tls))) => p,
                Some(_) => {
                    return err(format!(
                        "{at}: transport \"{}\": expected udp, tcp or tls",
                        t.transport.as_deref().unwrap_or_default()
                    ))
                }
            };
            let check_interval_ms = t
                .check_interval_ms
                .unwrap_or(spec::DEFAULT_CHECK_INTERVAL_MS);
            if check_interval_ms != 0 && check_interval_ms < 100 {
                return err(format!(
                    "{at}: check_interval_ms {check_interval_ms}: expected 0 (no checks) or at least 100"
                ));
            }
            let down_after = t.down_after.unwrap_or(spec::DEFAULT_DOWN_AFTER);
            if down_after == 0 {
                return err(format!("{at}: down_after: must be at least 1"));
            }
            let mut inbound_from = Vec::new();
            for s in &t.inbound_from {
                match parse_cidr(s) {
                    Some(block) => inbound_from.push(block),
                    None => {
                        return err(format!(
                            "{at}: inbound_from \"{s}\": expected an IP address or IP/LEN"
                        ))
                    }
                }
            }
            trunks.push(Trunk {
                name: t.name.as_str().into(),
                addr,
                proto,
                check_interval_ms,
                down_after,
                inbound_from,
                up: AtomicBool::new(true),
            });
        }
        let trunk_index = |name: &str, at: &str| -> Result<u16, String> {
            trunks
                .iter()
                .position(|t| *t.name == *name)
                .map(|i| i as u16)
                .ok_or_else(|| format!("{at}: unknown trunk \"{name}\""))
        };

        // Classes of service: every name a user has, then check routes against them.
        let mut class_names: Vec<Box<str>> = Vec::new();
        let mut class_bits = |names: &[String], at: &str| -> Result<Classes, String> {
            let mut bits = 0;
            for n in names {
                if n.trim().is_empty() {
                    return err(format!("{at}: a class name must not be empty"));
                }
                let i = match class_names.iter().position(|c| **c == **n) {
                    Some(i) => i,
                    None => {
                        if class_names.len() == 64 {
                            return err(format!("{at}: more than 64 classes of service"));
                        }
                        class_names.push(n.as_str().into());
                        class_names.len() - 1
                    }
                };
                bits |= 1u64 << i;
            }
            Ok(bits)
        };
        let default_names = spec
            .routing
            .default_classes
            .clone()
            .unwrap_or_else(|| vec!["internal".into(), "national".into()]);
        let default_classes = class_bits(&default_names, "routing.default_classes")?;
        let mut user_classes = HashMap::new();
        for (user, names) in &spec.classes {
            let bits = class_bits(names, &format!("classes.{user}"))?;
            user_classes.insert(user.as_str().into(), bits);
        }

        let trunk_timeout_ms = spec
            .routing
            .trunk_timeout_ms
            .unwrap_or(spec::DEFAULT_TRUNK_TIMEOUT_MS);
        if !(100..=crate::proxy::stateful::TIMER_C_MS).contains(&trunk_timeout_ms) {
            return err(format!(
                "routing.trunk_timeout_ms {trunk_timeout_ms}: expected 100 to {}",
                crate::proxy::stateful::TIMER_C_MS
            ));
        }

        // Local numbers: extensions, groups, paging, emergency; one meaning each.
        let mut taken: HashMap<String, String> = HashMap::new();
        let mut take = |number: &str, what: String| -> Result<(), String> {
            if number.trim().is_empty() || number.contains(|c: char| c.is_whitespace()) {
                return err(format!(
                    "{what}: number \"{number}\": must be non-empty without spaces"
                ));
            }
            if let Some(other) = taken.get(number) {
                return err(format!("{what}: number \"{number}\" is already {other}"));
            }
            taken.insert(number.to_string(), what);
            Ok(())
        };
        let mut emergency_numbers = Vec::new();
        for n in &spec.emergency.numbers {
            take(n, "emergency.numbers".into())?;
            emergency_numbers.push(n.as_bytes().into());
        }
        let mut emergency_trunks = Vec::new();
        for t in &spec.emergency.trunks {
            emergency_trunks.push(trunk_index(t, "emergency.trunks")?);
        }
        if !emergency_numbers.is_empty() && emergency_trunks.is_empty() {
            return err("emergency.trunks: emergency numbers need at least one trunk".into());
        }
        let mut extensions = HashMap::new();
        for (i, e) in spec.extension.iter().enumerate() {
            let at = format!("[[extension]] {}", i + 1);
            take(&e.number, at.clone())?;
            if e.user.trim().is_empty() {
                return err(format!("{at}: user: must not be empty"));
            }
            extensions.insert(e.number.as_bytes().into(), e.user.as_str().into());
        }
        let mut groups = Vec::new();
        let mut group_numbers = HashMap::new();
        for (i, g) in spec.group.iter().enumerate() {
            let at = format!("[[group]] {}", i + 1);
            take(&g.number, at.clone())?;
            if g.members.is_empty() || g.members.iter().any(|m| m.trim().is_empty()) {
                return err(format!("{at}: members: expected a list of user names"));
            }
            let strategy = match g.strategy.as_deref().unwrap_or("parallel") {
                "parallel" => Strategy::Parallel,
                "sequential" => Strategy::Sequential,
                "round-robin" => Strategy::RoundRobin,
                other => {
                    return err(format!(
                        "{at}: strategy \"{other}\": expected parallel, sequential or round-robin"
                    ))
                }
            };
            let ring_ms = g.ring_ms.unwrap_or(spec::DEFAULT_RING_MS);
            if !(1_000..=crate::proxy::stateful::TIMER_C_MS).contains(&ring_ms) {
                return err(format!(
                    "{at}: ring_ms {ring_ms}: expected 1000 to {}",
                    crate::proxy::stateful::TIMER_C_MS
                ));
            }
            group_numbers.insert(g.number.as_bytes().into(), groups.len());
            groups.push(Group {
                number: g.number.as_str().into(),
                members: g.members.iter().map(|m| m.as_str().into()).collect(),
                strategy,
                ring_ms,
            });
        }
        let mut paging = Vec::new();
        let mut paging_numbers = HashMap::new();
        for (i, p) in spec.paging.iter().enumerate() {
            let at = format!("[[paging]] {}", i + 1);
            take(&p.number, at.clone())?;
            if p.members.is_empty() || p.members.iter().any(|m| m.trim().is_empty()) {
                return err(format!("{at}: members: expected a list of user names"));
            }
            paging_numbers.insert(p.number.as_bytes().into(), paging.len());
            paging.push(Paging {
                number: p.number.as_str().into(),
                members: p.members.iter().map(|m| m.as_str().into()).collect(),
            });
        }

        let mut rules = Vec::new();
        for (i, r) in spec.normalize.rules.iter().enumerate() {
            let pattern = regex::bytes::Regex::new(&r.pattern).map_err(|e| {
                let first = e.to_string();
                let first = first.lines().last().unwrap_or("").trim().to_string();
                format!(
                    "normalize.rules {} match \"{}\": bad regular expression: {first}",
                    i + 1,
                    r.pattern
                )
            })?;
            rules.push(Rule {
                pattern,
                replace: r.replace.as_bytes().to_vec(),
            });
        }

        // Routes: grouped by prefix (a slot per prefix), checked for windows that can never
        // decide. Linear in the number of routes: a plan may hold millions.
        let rated: hashbrown::HashSet<&str> = spec.rate.iter().map(|r| r.trunk.as_str()).collect();
        let mut raw: Vec<Route> = Vec::with_capacity(spec.route.len());
        let mut route_slot: Vec<u32> = Vec::with_capacity(spec.route.len());
        let mut slot_of: HashMap<&str, u32> = HashMap::new();
        let mut slot_prefixes: Vec<&str> = Vec::new();
        // Slots with several routes: their routes so far (for the overlap check).
        let mut shared: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut first_of_slot: Vec<u32> = Vec::new();
        let mut windows: Vec<TimeWindow> = Vec::new();
        let mut trunk_pool: Vec<u16> = Vec::new();
        let mut pooled: HashMap<Vec<u16>, u32> = HashMap::new();
        for (i, r) in spec.route.iter().enumerate() {
            let at = || format!("[[route]] {} (prefix \"{}\")", i + 1, r.prefix);
            if !is_dialable(r.prefix.as_bytes()) || r.prefix.len() > MAX_PREFIX {
                return err(format!(
                    "{}: prefix: expected 1 to {MAX_PREFIX} of 0-9 + * #",
                    at()
                ));
            }
            if r.trunks.is_empty() || r.trunks.len() > u16::MAX as usize {
                return err(format!("{}: trunks: expected at least one trunk", at()));
            }
            let mut ts = Vec::with_capacity(r.trunks.len());
            for t in &r.trunks {
                ts.push(trunk_index(t, &format!("{}: trunks", at()))?);
            }
            let class = match &r.class {
                None => NO_CLASS,
                Some(c) => match class_names.iter().position(|n| **n == **c) {
                    Some(i) => i as u8,
                    None => {
                        return err(format!(
                            "{}: class \"{c}\": no user has this class (see [classes] and routing.default_classes)",
                            at()
                        ))
                    }
                },
            };
            let timezone = r.timezone.as_deref().unwrap_or("UTC");
            let window = match &r.time {
                Some(t) => {
                    windows.push(
                        TimeWindow::parse(t, timezone).map_err(|e| format!("{}: {e}", at()))?,
                    );
                    (windows.len() - 1) as u32
                }
                None => {
                    if r.timezone.is_some() {
                        // Checked even unused: a typo must not wait for the day it matters.
                        TimeWindow::parse("00:00-24:00", timezone)
                            .map_err(|e| format!("{}: {e}", at()))?;
                    }
                    NO_WINDOW
                }
            };
            if r.lcr && !r.trunks.iter().any(|t| rated.contains(t.as_str())) {
                return err(format!(
                    "{}: lcr = true but no [[rate]] names any of its trunks",
                    at()
                ));
            }
            let trunks_at = match pooled.get(&ts) {
                Some(&at) => at,
                None => {
                    let at = trunk_pool.len() as u32;
                    trunk_pool.extend_from_slice(&ts);
                    pooled.insert(ts.clone(), at);
                    at
                }
            };
            let idx = raw.len() as u32;
            let slot = match slot_of.get(r.prefix.as_str()) {
                Some(&slot) => {
                    let list = shared
                        .entry(slot)
                        .or_insert_with(|| vec![first_of_slot[slot as usize]]);
                    for &other in list.iter() {
                        let o = raw[other as usize].window;
                        let overlap = o == NO_WINDOW
                            || window == NO_WINDOW
                            || windows[o as usize].overlaps(&windows[window as usize]);
                        if overlap {
                            return err(format!(
                                "{}: another route has the same prefix and a time window that overlaps this one (the second would never be used)",
                                at()
                            ));
                        }
                    }
                    list.push(idx);
                    slot
                }
                None => {
                    let slot = slot_prefixes.len() as u32;
                    slot_of.insert(r.prefix.as_str(), slot);
                    slot_prefixes.push(r.prefix.as_str());
                    first_of_slot.push(idx);
                    slot
                }
            };
            route_slot.push(slot);
            raw.push(Route {
                trunks_at,
                trunks_len: ts.len() as u16,
                class,
                lcr: r.lcr,
                window,
            });
        }
        drop(pooled);
        drop(shared);
        let route_count = raw.len();
        // Each prefix's value: its one route without a window (interned: a million prefixes
        // of a plan share a handful of routes), else a slot of its routes in written order.
        let mut per_slot = vec![0u32; slot_prefixes.len()];
        for &slot in &route_slot {
            per_slot[slot as usize] += 1;
        }
        let mut slot_routes: Vec<Vec<u32>> = Vec::new();
        let mut value_of = vec![0u32; slot_prefixes.len()];
        let mut routes: Vec<Route> = Vec::new();
        let mut interned: HashMap<Route, u32> = HashMap::new();
        for (slot, &first) in first_of_slot.iter().enumerate() {
            let route = raw[first as usize];
            if route.window == NO_WINDOW && per_slot[slot] == 1 {
                value_of[slot] = *interned.entry(route).or_insert_with(|| {
                    routes.push(route);
                    (routes.len() - 1) as u32
                });
            } else {
                value_of[slot] = SLOT | slot_routes.len() as u32;
                slot_routes.push(Vec::new());
            }
        }
        drop(interned);
        debug_assert!(
            routes.len() < SLOT as usize,
            "interned routes fit below the SLOT bit"
        );
        for (r, &slot) in route_slot.iter().enumerate() {
            let v = value_of[slot as usize];
            if v & SLOT != 0 {
                slot_routes[(v & !SLOT) as usize].push(r as u32);
            }
        }
        if slot_routes.len() >= (SLOT - 1) as usize {
            return err("[[route]]: too many prefixes with time windows".to_string());
        }
        let route_prefixes = PrefixMap::build(
            slot_prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| (p.as_bytes(), value_of[i])),
        )
        .map_err(|e| format!("[[route]]: {e}"))?;
        let mut slot_first = Vec::with_capacity(slot_routes.len() + 1);
        let mut slot_parent = Vec::with_capacity(slot_routes.len());
        slot_first.push(routes.len() as u32);
        for (slot, p) in slot_prefixes.iter().enumerate() {
            let v = value_of[slot];
            if v & SLOT == 0 {
                continue;
            }
            for &r in &slot_routes[(v & !SLOT) as usize] {
                routes.push(raw[r as usize]);
            }
            slot_first.push(routes.len() as u32);
            slot_parent.push(
                route_prefixes
                    .longest(&p.as_bytes()[..p.len() - 1])
                    .unwrap_or(NO_SLOT),
            );
        }
        routes.shrink_to_fit();
        drop(raw);
        drop(route_slot);

        // Rates: every trunk's in one prefix map, so that least-cost ordering is one lookup.
        // Each distinct prefix Q (of any trunk) gets the vector of every trunk's cost for the
        // numbers whose longest rate prefix is Q: the trunk's own rate for Q, or else what
        // the next shorter prefix's vector says. (A trunk's longest prefix of a number is a
        // prefix of the longest prefix of any trunk, so one lookup finds them all.)
        let t_count = trunks.len();
        let mut union_of: HashMap<&str, u32> = HashMap::with_capacity(spec.rate.len());
        let mut union: Vec<&str> = Vec::with_capacity(spec.rate.len());
        let mut own: Vec<(u32, u16, u32)> = Vec::with_capacity(spec.rate.len());
        for (i, r) in spec.rate.iter().enumerate() {
            let at = || {
                format!(
                    "[[rate]] {} (trunk \"{}\", prefix \"{}\")",
                    i + 1,
                    r.trunk,
                    r.prefix
                )
            };
            let t = trunk_index(&r.trunk, &format!("{}: trunk", at()))?;
            if !is_dialable(r.prefix.as_bytes()) || r.prefix.len() > MAX_PREFIX {
                return err(format!(
                    "{}: prefix: expected 1 to {MAX_PREFIX} of 0-9 + * #",
                    at()
                ));
            }
            if !r.cost.is_finite() || r.cost < 0.0 || r.cost > 4_000.0 {
                return err(format!("{}: cost {}: expected 0 to 4000", at(), r.cost));
            }
            let q = *union_of.entry(r.prefix.as_str()).or_insert_with(|| {
                union.push(r.prefix.as_str());
                (union.len() - 1) as u32
            });
            own.push((q, t, (r.cost * 1e6).round() as u32));
        }
        // A trunk with two rates for one prefix.
        own.sort_unstable_by_key(|&(q, t, _)| (q, t));
        if let Some(w) = own
            .windows(2)
            .find(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1)
        {
            return err(format!(
                "[[rate]]: trunk \"{}\" has two rates for prefix \"{}\"",
                trunks[w[0].1 as usize].name, union[w[0].0 as usize]
            ));
        }
        drop(union_of);
        let by_prefix = PrefixMap::build(
            union
                .iter()
                .enumerate()
                .map(|(q, p)| (p.as_bytes(), q as u32)),
        )
        .map_err(|e| format!("[[rate]]: {e}"))?;
        // Vectors in order of prefix length: a parent's is ready before its children's.
        let mut by_len: Vec<u32> = (0..union.len() as u32).collect();
        by_len.sort_unstable_by_key(|&q| union[q as usize].len());
        let mut vector_of = vec![u32::MAX; union.len()];
        let mut rate_costs: Vec<u32> = Vec::new();
        let mut distinct: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut own_at = vec![0u32; union.len() + 1];
        for &(q, _, _) in &own {
            own_at[q as usize + 1] += 1;
        }
        for q in 1..own_at.len() {
            own_at[q] += own_at[q - 1];
        }
        let mut v = vec![NO_COST; t_count];
        for &q in &by_len {
            let p = union[q as usize];
            match by_prefix.longest(&p.as_bytes()[..p.len() - 1]) {
                Some(parent) => {
                    let at = vector_of[parent as usize] as usize * t_count;
                    v.copy_from_slice(&rate_costs[at..at + t_count]);
                }
                None => v.fill(NO_COST),
            }
            for &(_, t, cost) in &own[own_at[q as usize] as usize..own_at[q as usize + 1] as usize]
            {
                v[t as usize] = cost;
            }
            let next = (rate_costs.len() / t_count.max(1)) as u32;
            let id = *distinct.entry(v.clone()).or_insert_with(|| {
                rate_costs.extend_from_slice(&v);
                next
            });
            vector_of[q as usize] = id;
        }
        drop(distinct);
        let rate_count = own.len();
        let rates = PrefixMap::build(
            union
                .iter()
                .enumerate()
                .map(|(q, p)| (p.as_bytes(), vector_of[q])),
        )
        .map_err(|e| format!("[[rate]]: {e}"))?;
        drop(by_prefix);
        // The table a decision reads (per interval, or the shared vectors), written into an
        // allocation of its final size on huge pages: its random accesses are a routing
        // decision's last cache miss, with no TLB miss on top.
        let mut rate_slots = Vec::new();
        let rate_costs = if t_count <= SLOT_TRUNKS && !rate_costs.is_empty() {
            rate_slots.reserve_exact(rates.block_values().count() * t_count);
            super::prefix::advise_huge_pages(&rate_slots);
            for v in rates.block_values() {
                match v {
                    Some(v) => rate_slots.extend_from_slice(
                        &rate_costs[v as usize * t_count..(v as usize + 1) * t_count],
                    ),
                    None => rate_slots.extend(std::iter::repeat_n(NO_COST, t_count)),
                }
            }
            Vec::new()
        } else {
            let mut shared = Vec::with_capacity(rate_costs.len());
            super::prefix::advise_huge_pages(&shared);
            shared.extend_from_slice(&rate_costs);
            shared
        };

        Ok(DialPlan {
            extensions,
            group_numbers,
            groups,
            paging_numbers,
            paging,
            rules,
            trunks,
            route_prefixes,
            route_count,
            slot_first,
            slot_parent,
            routes,
            trunk_pool,
            windows,
            rates,
            rate_costs,
            rate_slots,
            rate_count,
            trunk_timeout_ms,
            class_names,
            user_classes,
            default_classes,
            emergency_numbers,
            emergency_trunks,
        })
    }

    /// Takes over the up/down state of the trunks of `old` with the same name and address
    /// (a reload keeps what the checks found).
    pub fn inherit_health(&self, old: &DialPlan) {
        for t in &self.trunks {
            if let Some(o) = old
                .trunks
                .iter()
                .find(|o| o.name == t.name && o.addr == t.addr)
            {
                t.set_up(o.is_up());
            }
        }
    }

    /// The trunk whose `inbound_from` lists `ip`, if any.
    pub fn inbound_trunk(&self, ip: IpAddr) -> Option<u16> {
        self.trunks
            .iter()
            .position(|t| {
                t.inbound_from
                    .iter()
                    .any(|&(net, len)| in_block(ip, net, len))
            })
            .map(|i| i as u16)
    }

    /// The user an extension number reaches.
    pub fn extension_user(&self, number: &[u8]) -> Option<&str> {
        self.extensions.get(number).map(|u| &**u)
    }

    /// True if `number` (as dialed) is an emergency number.
    pub fn is_emergency(&self, number: &[u8]) -> bool {
        self.emergency_numbers.iter().any(|n| **n == *number)
    }

    /// True if a Request-URI's user part (escapes still in) dials an emergency number.
    pub fn is_emergency_user(&self, user: Option<&[u8]>) -> bool {
        user.is_some_and(|u| {
            !self.emergency_numbers.is_empty() && {
                let number: Vec<u8> = crate::sip::uri::Unescape::new(u).collect();
                self.is_emergency(&number)
            }
        })
    }

    /// An emergency number (as dialed) and the trunks it goes out through: every up trunk of
    /// `[emergency]` in order, or all of them when none is up (an emergency call is tried
    /// whatever the checks say).
    pub fn emergency(&self, number: &[u8]) -> Option<TrunkRoute> {
        if !self.emergency_numbers.iter().any(|n| **n == *number) {
            return None;
        }
        let mut trunks: Vec<u16> = self
            .emergency_trunks
            .iter()
            .copied()
            .filter(|&t| self.trunks[t as usize].is_up())
            .collect();
        if trunks.is_empty() {
            trunks = self.emergency_trunks.clone();
        }
        Some(TrunkRoute {
            number: number.to_vec(),
            trunks,
            emergency: true,
        })
    }

    /// An extension, group or paging number.
    pub fn local(&self, number: &[u8]) -> Option<Local<'_>> {
        if let Some(u) = self.extensions.get(number) {
            return Some(Local::Extension(u));
        }
        if let Some(&g) = self.group_numbers.get(number) {
            return Some(Local::Group(g));
        }
        self.paging_numbers.get(number).map(|&p| Local::Paging(p))
    }

    /// The number after the first normalisation rule that matches (None: no rule matches).
    pub fn normalize(&self, number: &[u8]) -> Option<Vec<u8>> {
        self.rules.iter().find_map(|r| {
            r.pattern
                .is_match(number)
                .then(|| r.pattern.replace(number, &r.replace[..]).into_owned())
        })
    }

    /// The classes of a caller.
    fn classes_of(&self, caller: Caller<'_>) -> Classes {
        match caller {
            Caller::User(u) => self
                .user_classes
                .get(u)
                .copied()
                .unwrap_or(self.default_classes),
            Caller::Anonymous => self.default_classes,
        }
    }

    /// The route for a (normalised) number at `now_ms` (Unix ms): the route of the longest
    /// prefix that has a route active now, its class checked against the caller's, its
    /// trunks in order (by cost with `lcr`) without the down ones.
    pub fn route(&self, number: &[u8], caller: Caller<'_>, now_ms: u64) -> RouteDecision<'_> {
        let Some(key) = Key::of(number) else {
            return RouteDecision::NoRoute;
        };
        // Both lookups start before either is read: with a million prefixes each block is
        // a cache miss, and the two misses overlap.
        let route_lookup = self.route_prefixes.start(key);
        let rate_lookup = (!self.rates.is_empty()).then(|| {
            let lookup = self.rates.start(key);
            if !self.rate_slots.is_empty() {
                let n = self.trunks.len() * BLOCK_LEN;
                let at = lookup.block() * n;
                prefetch_slice(&self.rate_slots[at..at + n]);
            }
            lookup
        });
        let Some(mut value) = route_lookup.finish() else {
            return RouteDecision::NoRoute;
        };
        let route = loop {
            if value & SLOT == 0 {
                break &self.routes[value as usize];
            }
            let slot = (value & !SLOT) as usize;
            let (from, to) = (
                self.slot_first[slot] as usize,
                self.slot_first[slot + 1] as usize,
            );
            let active = self.routes[from..to].iter().find(|r| {
                r.window == NO_WINDOW || self.windows[r.window as usize].contains(now_ms)
            });
            if let Some(r) = active {
                break r;
            }
            value = self.slot_parent[slot];
            if value == NO_SLOT {
                return RouteDecision::NoRoute;
            }
        };
        // The costs: from the rows prefetched with the rate block (at most SLOT_TRUNKS
        // trunks), or the next miss. (Their lines were loaded for every decision, also one
        // whose route turns out not to use least cost: a few wasted line loads, against
        // waiting for them after the route is known.)
        let costs = if route.lcr {
            rate_lookup.and_then(|l| self.costs_of(l))
        } else {
            None
        };
        if route.class != NO_CLASS && self.classes_of(caller) & (1u64 << route.class) == 0 {
            return RouteDecision::Forbidden {
                class: &self.class_names[route.class as usize],
            };
        }
        let at = route.trunks_at as usize;
        let mut trunks: Vec<u16> = self.trunk_pool[at..at + route.trunks_len as usize].to_vec();
        // One lookup for every trunk's rate; unrated trunks go last, in the order listed (a
        // stable sort).
        if let Some(costs) = costs {
            trunks.sort_by_key(|&t| costs[t as usize]);
        }
        trunks.retain(|&t| self.trunks[t as usize].is_up());
        if trunks.is_empty() {
            return RouteDecision::AllTrunksDown;
        }
        RouteDecision::Trunks(TrunkRoute {
            number: number.to_vec(),
            trunks,
            emergency: false,
        })
    }

    /// Heap bytes of the route tables (prefix map, slots, routes, trunk lists, windows) and
    /// of the rate tables, with the number of route prefixes and of rates: what a plan costs
    /// (the benchmark reports it per prefix).
    pub fn memory(&self) -> PlanMemory {
        let vec_bytes = |cap: usize, size: usize| cap * size;
        PlanMemory {
            route_prefixes: self.route_prefixes.len(),
            route_bytes: self.route_prefixes.heap_bytes()
                + vec_bytes(self.slot_first.capacity(), 4)
                + vec_bytes(self.slot_parent.capacity(), 4)
                + vec_bytes(self.routes.capacity(), std::mem::size_of::<Route>())
                + vec_bytes(self.trunk_pool.capacity(), 2)
                + vec_bytes(self.windows.capacity(), std::mem::size_of::<TimeWindow>()),
            rates: self.rate_count,
            rate_bytes: self.rates.heap_bytes()
                + self.rate_costs.capacity() * 4
                + self.rate_slots.capacity() * 4,
        }
    }

    /// The cost of `number` through trunk `t`, in millionths (None: no rate).
    pub fn cost(&self, t: u16, number: &[u8]) -> Option<u32> {
        self.costs(number)?
            .get(t as usize)
            .copied()
            .filter(|&c| c != NO_COST)
    }

    /// Every trunk's cost for `number` (NO_COST: no rate), from its longest rate prefix.
    fn costs(&self, number: &[u8]) -> Option<&[u32]> {
        let key = Key::of(number)?;
        if self.rates.is_empty() {
            return None;
        }
        self.costs_of(self.rates.start(key))
    }

    /// Every trunk's cost for a started rate lookup: from the per-interval table, or through
    /// the interval's value (a dependent miss, prefetched so that it overlaps the class check
    /// and the copy of the trunk list).
    fn costs_of(&self, lookup: super::prefix::Lookup<'_>) -> Option<&[u32]> {
        let n = self.trunks.len();
        if !self.rate_slots.is_empty() {
            let at = lookup.slot() * n;
            return Some(&self.rate_slots[at..at + n]);
        }
        let v = lookup.finish()? as usize;
        let costs = self.rate_costs.get(v * n..(v + 1) * n)?;
        prefetch_slice(costs);
        Some(costs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<DialPlan, String> {
        let spec: DialPlanSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        DialPlan::build(&spec)
    }

    const BASE: &str = r#"
[[trunk]]
name = "a"
address = "127.0.0.1:5071"
[[trunk]]
name = "b"
address = "127.0.0.1:5072"
"#;

    fn err_of(extra: &str) -> String {
        build(&format!("{BASE}{extra}")).expect_err("a bad plan")
    }

    #[test]
    fn bad_plans_name_the_key_and_the_problem() {
        let e = err_of("[[route]]\nprefix = \"+49\"\ntrunks = [\"c\"]\n");
        assert!(
            e.contains("[[route]] 1") && e.contains("unknown trunk \"c\""),
            "{e}"
        );
        let e = err_of("[[route]]\nprefix = \"+49\"\ntrunks = [\"a\"]\n[[route]]\nprefix = \"+49\"\ntrunks = [\"b\"]\n");
        assert!(
            e.contains("[[route]] 2") && e.contains("same prefix"),
            "{e}"
        );
        let e = err_of("[[route]]\nprefix = \"+49\"\ntrunks = [\"a\"]\ntime = \"mon-fri 08:00-18:00\"\n[[route]]\nprefix = \"+49\"\ntrunks = [\"b\"]\ntime = \"fri 17:00-20:00\"\n");
        assert!(e.contains("[[route]] 2") && e.contains("overlaps"), "{e}");
        let e = err_of("[normalize]\nrules = [{ match = \"^(0\", replace = \"+\" }]\n");
        assert!(e.contains("normalize.rules 1") && e.contains("^(0"), "{e}");
        let e = err_of("[[route]]\nprefix = \"+49\"\ntrunks = [\"a\"]\ntime = \"mon-fri 8-18\"\n");
        assert!(
            e.contains("[[route]] 1") && e.contains("mon-fri 8-18"),
            "{e}"
        );
        let e =
            err_of("[[route]]\nprefix = \"+49\"\ntrunks = [\"a\"]\ntimezone = \"Europe/Berln\"\n");
        assert!(
            e.contains("[[route]] 1") && e.contains("Europe/Berln"),
            "{e}"
        );
        let e = err_of("[[route]]\nprefix = \"+49x\"\ntrunks = [\"a\"]\n");
        assert!(e.contains("prefix"), "{e}");
        let e = err_of("[[route]]\nprefix = \"+49\"\ntrunks = [\"a\"]\nclass = \"nationl\"\n");
        assert!(e.contains("class \"nationl\""), "{e}");
        let e = err_of("[[rate]]\ntrunk = \"z\"\nprefix = \"+49\"\ncost = 0.1\n");
        assert!(
            e.contains("[[rate]] 1") && e.contains("unknown trunk \"z\""),
            "{e}"
        );
        let e = err_of("[emergency]\nnumbers = [\"112\"]\n");
        assert!(e.contains("emergency.trunks"), "{e}");
        let e = err_of("[[extension]]\nnumber = \"600\"\nuser = \"a\"\n[[group]]\nnumber = \"600\"\nmembers = [\"a\"]\n");
        assert!(
            e.contains("[[group]] 1") && e.contains("already [[extension]] 1"),
            "{e}"
        );
        let e = err_of("[[group]]\nnumber = \"600\"\nmembers = [\"a\"]\nstrategy = \"random\"\n");
        assert!(e.contains("strategy \"random\""), "{e}");
        let e = build("[[trunk]]\nname = \"a\"\naddress = \"example.com\"\n").unwrap_err();
        assert!(e.contains("[[trunk]] 1") && e.contains("IP:PORT"), "{e}");
        let e = build("[[trunk]]\nname = \"a\"\naddress = \"127.0.0.1:5\"\ninbound_from = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(e.contains("inbound_from \"10.0.0.0/33\""), "{e}");
    }

    #[test]
    fn the_longest_prefix_with_an_active_route_wins_and_lcr_orders_by_cost() {
        let p = build(&format!(
            "{BASE}
[[route]]
prefix = \"+4\"
trunks = [\"b\"]
[[route]]
prefix = \"+49\"
trunks = [\"a\", \"b\"]
lcr = true
time = \"sat,sun 00:00-24:00\"
[[rate]]
trunk = \"a\"
prefix = \"+49\"
cost = 0.02
[[rate]]
trunk = \"b\"
prefix = \"+4930\"
cost = 0.01
"
        ))
        .unwrap();
        // Saturday 2026-12-05 12:00 UTC: the +49 route, cheapest first.
        let sat = 1_796_472_000_000;
        let trunks = |n: &str, t: u64| match p.route(n.as_bytes(), Caller::Anonymous, t) {
            RouteDecision::Trunks(r) => r.trunks,
            other => panic!("{other:?}"),
        };
        assert_eq!(trunks("+4930123", sat), vec![1, 0]);
        assert_eq!(
            trunks("+4989123", sat),
            vec![0, 1],
            "b has no rate for +4989: last"
        );
        // Monday: the +49 route does not exist; +4 takes it.
        assert_eq!(trunks("+4930123", sat + 2 * 86_400_000), vec![1]);
        assert_eq!(
            p.route(b"+3312", Caller::Anonymous, sat),
            RouteDecision::NoRoute
        );
        assert_eq!(p.cost(1, b"+4930123"), Some(10_000));
    }

    /// Random rate decks for `trunk_count` trunks against a naive longest-prefix scan per
    /// trunk, and the LCR order of a route over every trunk against the naive costs.
    fn random_decks_match_a_naive_scan(trunk_count: usize) -> DialPlan {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let digits = |n: &mut dyn FnMut() -> u64, len: usize| -> String {
            (0..len).map(|_| (b'0' + (n() % 4) as u8) as char).collect()
        };
        let names: Vec<String> = (0..trunk_count).map(|t| format!("t{t}")).collect();
        let mut text = String::new();
        for (t, name) in names.iter().enumerate() {
            text += &format!(
                "[[trunk]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\n",
                5071 + t
            );
        }
        text += &format!(
            "[[route]]\nprefix = \"+\"\nlcr = true\ntrunks = [{}]\n",
            names
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut decks: Vec<Vec<(String, u32)>> = vec![Vec::new(); trunk_count];
        for (t, deck) in decks.iter_mut().enumerate() {
            let mut seen = std::collections::HashSet::new();
            while deck.len() < 60 {
                let len = 1 + (next() % 5) as usize;
                let p = format!("+{}", digits(&mut next, len));
                if seen.insert(p.clone()) {
                    let cost = (next() % 1000) as u32;
                    text += &format!(
                        "[[rate]]\ntrunk = \"{}\"\nprefix = \"{p}\"\ncost = {}\n",
                        names[t],
                        cost as f64 / 1e6
                    );
                    deck.push((p, cost));
                }
            }
        }
        let p = build(&text).unwrap();
        for _ in 0..3000 {
            let len = 1 + (next() % 7) as usize;
            let n = format!("+{}", digits(&mut next, len));
            let mut naive_costs = Vec::new();
            for (t, deck) in decks.iter().enumerate() {
                let naive = deck
                    .iter()
                    .filter(|(q, _)| n.starts_with(q.as_str()))
                    .max_by_key(|(q, _)| q.len())
                    .map(|&(_, c)| c);
                assert_eq!(p.cost(t as u16, n.as_bytes()), naive, "{n} trunk {t}");
                naive_costs.push(naive.unwrap_or(NO_COST));
            }
            // Cheapest first; unrated and equal costs in the order listed.
            let mut order: Vec<u16> = (0..trunk_count as u16).collect();
            order.sort_by_key(|&t| naive_costs[t as usize]);
            match p.route(n.as_bytes(), Caller::Anonymous, 0) {
                RouteDecision::Trunks(r) => assert_eq!(r.trunks, order, "{n}"),
                other => panic!("{n}: {other:?}"),
            }
        }
        p
    }

    #[test]
    fn each_trunks_cost_is_its_own_longest_rate_prefix() {
        // Up to SLOT_TRUNKS trunks the cost vectors are kept per interval; past it they are
        // shared and found through the interval's value: both ways give the same costs.
        let p = random_decks_match_a_naive_scan(3);
        assert!(!p.rate_slots.is_empty() && p.rate_costs.is_empty());
        let p = random_decks_match_a_naive_scan(SLOT_TRUNKS + 2);
        assert!(p.rate_slots.is_empty() && !p.rate_costs.is_empty());
        let e = err_of("[[rate]]\ntrunk = \"a\"\nprefix = \"+49\"\ncost = 0.1\n[[rate]]\ntrunk = \"a\"\nprefix = \"+49\"\ncost = 0.2\n");
        assert!(e.contains("two rates for prefix \"+49\""), "{e}");
    }

    #[test]
    fn prefixes_with_the_same_route_share_it() {
        // A thousand prefixes, two distinct routes without windows: two routes kept; a prefix
        // with a window keeps its own and falls back to its parent's shared one.
        let mut text = BASE.to_string();
        for i in 0..1000 {
            let trunk = if i % 2 == 0 { "a" } else { "b" };
            text += &format!("[[route]]\nprefix = \"+1{i:03}\"\ntrunks = [\"{trunk}\"]\n");
        }
        text +=
            "[[route]]\nprefix = \"+10005\"\ntrunks = [\"b\"]\ntime = \"sat,sun 00:00-24:00\"\n";
        let p = build(&text).unwrap();
        assert_eq!(p.routes.len(), 3, "two shared, one of the windowed prefix");
        assert_eq!(p.route_count, 1001);
        let sat = 1_796_472_000_000;
        let first = |n: &str, t: u64| match p.route(n.as_bytes(), Caller::Anonymous, t) {
            RouteDecision::Trunks(r) => r.trunks[0],
            other => panic!("{other:?}"),
        };
        assert_eq!(first("+1000123", sat), 0);
        assert_eq!(first("+1001123", sat), 1);
        assert_eq!(first("+1000512", sat), 1, "the weekend route");
        assert_eq!(
            first("+1000512", sat + 2 * 86_400_000),
            0,
            "+1000's on Monday"
        );
        assert_eq!(
            p.route(b"+2000", Caller::Anonymous, sat),
            RouteDecision::NoRoute
        );
    }

    #[test]
    fn classes_come_from_the_user_or_the_defaults() {
        let p = build(&format!(
            "{BASE}
[[route]]
prefix = \"+1\"
trunks = [\"a\"]
class = \"international\"
[classes]
alice = [\"international\"]
"
        ))
        .unwrap();
        assert!(matches!(
            p.route(b"+1555", Caller::User("alice"), 0),
            RouteDecision::Trunks(_)
        ));
        assert_eq!(
            p.route(b"+1555", Caller::User("bob"), 0),
            RouteDecision::Forbidden {
                class: "international"
            }
        );
        assert_eq!(
            p.route(b"+1555", Caller::Anonymous, 0),
            RouteDecision::Forbidden {
                class: "international"
            }
        );
    }

    #[test]
    fn normalisation_applies_the_first_matching_rule_and_locals_are_found() {
        let p = build(
            "[normalize]
rules = [{ match = \"^00\", replace = \"+\" }, { match = \"^0\", replace = \"+49\" }]
[[extension]]
number = \"1001\"
user = \"alice\"
[[group]]
number = \"600\"
members = [\"alice\"]
[[paging]]
number = \"700\"
members = [\"alice\"]
",
        )
        .unwrap();
        assert_eq!(p.normalize(b"0033123").as_deref(), Some(&b"+33123"[..]));
        assert_eq!(p.normalize(b"030123").as_deref(), Some(&b"+4930123"[..]));
        assert_eq!(p.normalize(b"1001"), None);
        assert_eq!(p.local(b"1001"), Some(Local::Extension("alice")));
        assert_eq!(p.local(b"600"), Some(Local::Group(0)));
        assert_eq!(p.local(b"700"), Some(Local::Paging(0)));
        assert_eq!(p.local(b"701"), None);
        assert!(!p.is_empty());
        assert!(DialPlan::empty().is_empty());
    }

    #[test]
    fn emergency_uses_every_trunk_when_all_are_down_and_inbound_sources_match_cidrs() {
        let p = build(&format!(
            "{BASE}
[emergency]
numbers = [\"112\"]
trunks = [\"a\", \"b\"]
"
        ))
        .unwrap();
        p.trunks[0].set_up(false);
        assert_eq!(p.emergency(b"112").unwrap().trunks, vec![1]);
        p.trunks[1].set_up(false);
        assert_eq!(p.emergency(b"112").unwrap().trunks, vec![0, 1]);
        assert!(p.emergency(b"110").is_none());
        let q = build("[[trunk]]\nname = \"a\"\naddress = \"127.0.0.1:5\"\ninbound_from = [\"10.1.0.0/16\", \"127.0.0.5\"]\n").unwrap();
        assert_eq!(q.inbound_trunk("10.1.200.3".parse().unwrap()), Some(0));
        assert_eq!(q.inbound_trunk("127.0.0.5".parse().unwrap()), Some(0));
        assert_eq!(q.inbound_trunk("10.2.0.1".parse().unwrap()), None);
        // A reload keeps what the checks found, by trunk name and address.
        let r = build("[[trunk]]\nname = \"a\"\naddress = \"127.0.0.1:5071\"\n").unwrap();
        r.inherit_health(&p);
        assert!(!r.trunks[0].is_up());
    }
}
