//! Registrar settings: the expiry policy of RFC 3261 §10.3 step 7 and §10.2.8 (default,
//! minimum answered with 423, maximum the registrar shortens to) and the per-AOR contact limit.

/// Registrar settings. Times are in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Expiry used when neither the contact's `expires` parameter nor an Expires header is
    /// given (RFC 3261 §10.3 step 7: "a locally-configured default value").
    pub default_expires: u32,
    /// A non-zero expiry below this is answered `423 Interval Too Brief` with `Min-Expires`.
    pub min_expires: u32,
    /// A longer expiry is shortened to this (and the 200 reports the shortened value).
    pub max_expires: u32,
    /// Most bindings one AOR may have; a REGISTER that would exceed it is answered
    /// `503 Too Many Registered Contacts` (as Kamailio's registrar does) and changes nothing.
    pub max_contacts_per_aor: usize,
    /// When set, AOR keys use this host instead of the URI's: the caller only passes AORs of
    /// its own domains, and `sip:alice@127.0.0.1` and `sip:alice@localhost` are one user.
    pub canonical_domain: Option<String>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_contacts_per_aor: 10,
            canonical_domain: None,
        }
    }
}

/// Registrar settings (RFC 3261 §10.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarSettings {
    pub default_expires: u32,
    pub min_expires: u32,
    pub max_expires: u32,
    pub max_contacts: usize,
    /// With auth: the digest user must equal the user part of the AOR being registered.
    pub match_auth_user: bool,
}

impl Default for RegistrarSettings {
    fn default() -> Self {
        RegistrarSettings {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_contacts: 10,
            match_auth_user: true,
        }
    }
}
