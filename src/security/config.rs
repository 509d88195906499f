//! The `[security]` section of the TOML file, checked and turned into
//! [`SecuritySettings`]. Errors name the key (`security.flood_requests '...'`).

use super::{scanner::Scanners, DenyAnswer, FloodLimit, LockoutLimit, SecuritySettings};
use ipnet::IpNet;
use serde::Deserialize;

/// The section as written (every key optional: the defaults of [`SecuritySettings`]).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileSecurity {
    enabled: Option<bool>,
    exempt: Option<Vec<String>>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    deny_answer: Option<String>,
    flood_requests: Option<u32>,
    flood_window_ms: Option<u64>,
    ban_s: Option<u64>,
    scanners: Option<Vec<String>>,
    ban_scanners: Option<bool>,
    lockout_source_failures: Option<u32>,
    lockout_user_failures: Option<u32>,
    lockout_window_s: Option<u64>,
    lockout_s: Option<u64>,
    max_sources: Option<usize>,
    max_concurrent_calls: Option<u32>,
    max_calls_per_minute: Option<u32>,
    max_call_s: Option<u64>,
    require_srtp: Option<bool>,
    topology_hiding: Option<bool>,
    topology_key: Option<String>,
    /// `[[security.listen]]`: ACLs of single listen addresses.
    #[serde(default)]
    listen: Vec<FileListenAcl>,
}

/// One `[[security.listen]]` table.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileListenAcl {
    address: String,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
fn parse_net(key: &str, s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{key} '{s}': expected an address or CIDR like 10.0.0.0/8"))
}

fn nets(key: &str, list: &Option<Vec<String>>) -> Result<Option<Vec<IpNet>>, String> {
    list.as_ref()
        .map(|l| l.iter().map(|s| parse_net(key, s)).collect())
        .transpose()
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    v: Option<T>,
    lo: T,
    hi: T,
) -> Result<Option<T>, String> {
    match v {
        Some(n) if n < lo || n > hi => Err(format!("{key} '{n}': expected {lo} to {hi}")),
        v => Ok(v),
    }
}

impl FileSecurity {
    /// True when the file sets the flood limit itself.
    pub fn sets_flood(&self) -> bool {
        self.flood_requests.is_some() || self.flood_window_ms.is_some()
    }

    /// Topology hiding (`security.topology_hiding`, off by default): the hider with the
    /// key derived from `security.topology_key` (at least 16 characters), or a random key
    /// when none is set; None when off.
    pub fn topology(&self) -> Result<Option<crate::proxy::topology::Hider>, String> {
        if self.topology_hiding != Some(true) {
            return Ok(None);
        }
        match &self.topology_key {
            Some(k) if k.len() < 16 => Err(format!(
                "security.topology_key: {} characters, expected at least 16",
                k.len()
            )),
            Some(k) => Ok(Some(crate::proxy::topology::Hider::new(k.as_bytes()))),
            None => crate::proxy::topology::Hider::random()
                .map(Some)
                .map_err(|e| format!("security.topology_hiding: no random key ({e})")),
        }
    }

    /// The settings, or one line naming the bad key. `listen` are the listen addresses in
    /// order (the socket index of each); a `[[security.listen]]` must name one of them.
    pub fn settings_for(
        &self,
        listen: &[std::net::SocketAddr],
    ) -> Result<SecuritySettings, String> {
        let mut s = self.settings()?;
        for l in &self.listen {
            let key = "security.listen.address";
            let addr = crate::config::parse_listen(key, &l.address)
                .map_err(|e| e.0)?
                .addr;
            let socket = listen
                .iter()
                .position(|a| *a == addr)
                .ok_or_else(|| format!("{key} '{}': not one of the listen addresses", l.address))?;
            s.listen_acls.push(super::ListenAcl {
                socket,
                allow: nets("security.listen.allow", &l.allow)?.unwrap_or_default(),
                deny: nets("security.listen.deny", &l.deny)?.unwrap_or_default(),
            });
        }
        Ok(s)
    }

    /// The settings without `[[security.listen]]`, or one line naming the bad key.
    pub fn settings(&self) -> Result<SecuritySettings, String> {
        let mut s = match self.enabled {
            Some(false) => SecuritySettings::off(),
            _ => SecuritySettings::default(),
        };
        if let Some(e) = nets("security.exempt", &self.exempt)? {
            s.exempt = e;
        }
        if let Some(a) = nets("security.allow", &self.allow)? {
            s.allow = a;
        }
        if let Some(d) = nets("security.deny", &self.deny)? {
            s.deny = d;
        }
        if let Some(a) = &self.deny_answer {
            s.deny_answer = match a.as_str() {
                "drop" => DenyAnswer::Drop,
                "403" => DenyAnswer::Forbidden,
                _ => return Err(format!("security.deny_answer '{a}': expected drop or 403")),
            };
        }
        let requests = range(
            "security.flood_requests",
            self.flood_requests,
            0,
            10_000_000,
        )?;
        let window = range(
            "security.flood_window_ms",
            self.flood_window_ms,
            100,
            3_600_000,
        )?;
        let default_flood = SecuritySettings::default().flood.expect("on by default");
        if requests.is_some() || window.is_some() {
            let requests = requests.unwrap_or(default_flood.requests);
            s.flood = (requests > 0).then_some(FloodLimit {
                requests,
                window_ms: window.unwrap_or(default_flood.window_ms),
            });
        }
        if let Some(b) = range("security.ban_s", self.ban_s, 1, 30 * 86_400)? {
            s.ban_ms = b * 1000;
        }
        if let Some(list) = &self.scanners {
            s.scanners = Scanners::new(list);
        }
        if let Some(b) = self.ban_scanners {
            s.ban_scanners = b;
        }
        let default_lock = SecuritySettings::default().lockout.expect("on by default");
        let src = range(
            "security.lockout_source_failures",
            self.lockout_source_failures,
            0,
            1_000_000,
        )?;
        let user = range(
            "security.lockout_user_failures",
            self.lockout_user_failures,
            0,
            1_000_000,
        )?;
        let window_s = range(
            "security.lockout_window_s",
            self.lockout_window_s,
            1,
            86_400,
        )?;
        let lock_s = range("security.lockout_s", self.lockout_s, 1, 30 * 86_400)?;
        if s.lockout.is_some() || src.is_some() || user.is_some() {
            let l = LockoutLimit {
                source_failures: src.unwrap_or(default_lock.source_failures),
                user_failures: user.unwrap_or(default_lock.user_failures),
                window_ms: window_s.map_or(default_lock.window_ms, |w| w * 1000),
                lock_ms: lock_s.map_or(default_lock.lock_ms, |l| l * 1000),
            };
            s.lockout = (l.source_failures > 0 || l.user_failures > 0).then_some(l);
        }
        if let Some(m) = range("security.max_sources", self.max_sources, 16, 100_000_000)? {
            s.max_sources = m;
        }
        if let Some(n) = range(
            "security.max_concurrent_calls",
            self.max_concurrent_calls,
            0,
            1_000_000,
        )? {
            s.calls.max_concurrent = n;
        }
        if let Some(n) = range(
            "security.max_calls_per_minute",
            self.max_calls_per_minute,
            0,
            1_000_000,
        )? {
            s.calls.max_per_minute = n;
        }
        if let Some(n) = range("security.max_call_s", self.max_call_s, 60, 7 * 86_400)? {
            s.calls.max_call_ms = n * 1000;
        }
        if let Some(b) = self.require_srtp {
            s.require_srtp = b;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SecuritySettings, String> {
        toml::from_str::<FileSecurity>(text)
            .map_err(|e| e.to_string())?
            .settings()
    }

    #[test]
    fn empty_section_is_the_default() {
        assert_eq!(parse("").unwrap(), SecuritySettings::default());
        assert_eq!(parse("enabled = false").unwrap(), SecuritySettings::off());
    }

    #[test]
    fn topology_hiding_is_off_by_default_and_its_key_is_checked() {
        let file = |text: &str| toml::from_str::<FileSecurity>(text).unwrap();
        assert!(file("").topology().unwrap().is_none());
        assert!(file("topology_key = \"0123456789abcdef\"")
            .topology()
            .unwrap()
            .is_none());
        let random = file("topology_hiding = true").topology().unwrap().unwrap();
        assert!(random.is_random());
        let keyed = |k: &str| {
            file(&format!("topology_hiding = true\ntopology_key = \"{k}\""))
                .topology()
                .unwrap()
                .unwrap()
        };
        // The same secret, the same key (a restart keeps dialogs working).
        assert_eq!(keyed("0123456789abcdef"), keyed("0123456789abcdef"));
        assert_ne!(keyed("0123456789abcdef"), keyed("0123456789abcdeg"));
        assert!(!keyed("0123456789abcdef").is_random());
        let e = file("topology_hiding = true\ntopology_key = \"short\"")
            .topology()
            .unwrap_err();
        assert!(e.starts_with("security.topology_key: 5 characters"), "{e}");
    }

    #[test]
    fn keys_map_to_settings() {
        let s = parse(
            "exempt = [\"10.0.0.0/8\", \"192.0.2.1\"]\ndeny = [\"203.0.113.0/24\"]\n\
             deny_answer = \"403\"\nflood_requests = 50\nflood_window_ms = 1000\nban_s = 60\n\
             scanners = [\"evil\"]\nlockout_source_failures = 5\nlockout_s = 30\n",
        )
        .unwrap();
        assert_eq!(s.exempt.len(), 2);
        assert!(s.is_exempt("192.0.2.1".parse().unwrap()));
        assert!(!s.is_exempt("127.0.0.1".parse().unwrap()));
        assert_eq!(s.deny_answer, DenyAnswer::Forbidden);
        assert_eq!(
            s.flood,
            Some(FloodLimit {
                requests: 50,
                window_ms: 1000
            })
        );
        assert_eq!(s.ban_ms, 60_000);
        assert!(s.scanners.matches(b"EVIL/1"));
        assert!(!s.scanners.matches(b"friendly-scanner"));
        let l = s.lockout.unwrap();
        assert_eq!(
            (l.source_failures, l.user_failures, l.lock_ms),
            (5, 100, 30_000)
        );
        assert_eq!(parse("flood_requests = 0").unwrap().flood, None);
        let c = parse("max_concurrent_calls = 2\nmax_calls_per_minute = 10\nmax_call_s = 3600")
            .unwrap()
            .calls;
        assert_eq!(
            (c.max_concurrent, c.max_per_minute, c.max_call_ms),
            (2, 10, 3_600_000)
        );
        let both_off = "lockout_source_failures = 0\nlockout_user_failures = 0";
        assert_eq!(parse(both_off).unwrap().lockout, None);
    }

    #[test]
    fn listen_acls_name_a_listen_address() {
        let f: FileSecurity = toml::from_str(
            "[[listen]]\naddress = \"udp:10.0.0.1:5060\"\nallow = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let listen: Vec<std::net::SocketAddr> = vec![
            "192.0.2.1:5060".parse().unwrap(),
            "10.0.0.1:5060".parse().unwrap(),
        ];
        let s = f.settings_for(&listen).unwrap();
        assert_eq!(s.listen_acls.len(), 1);
        assert_eq!(s.listen_acls[0].socket, 1);
        assert_eq!(
            f.settings_for(&listen[..1]).unwrap_err(),
            "security.listen.address 'udp:10.0.0.1:5060': not one of the listen addresses"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            parse("allow = [\"10.0.0.0/33\"]").unwrap_err(),
            "security.allow '10.0.0.0/33': expected an address or CIDR like 10.0.0.0/8"
        );
        assert_eq!(
            parse("deny_answer = \"reject\"").unwrap_err(),
            "security.deny_answer 'reject': expected drop or 403"
        );
        assert_eq!(
            parse("ban_s = 0").unwrap_err(),
            "security.ban_s '0': expected 1 to 2592000"
        );
        assert!(parse("flood = 3").unwrap_err().contains("unknown field"));
    }
}
