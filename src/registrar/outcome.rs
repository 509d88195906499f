//! What a REGISTER did, for the caller's metrics and logs: the status answered, why a request
//! was refused ([`RegisterError`], each mapped to its RFC 3261 §10.3 status), and how many
//! bindings were added, refreshed and removed.

/// Why a REGISTER was refused. Nothing is changed when a request is refused (RFC 3261 §10.3
/// step 7: binding updates are committed only if all of them succeed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The To header is missing or malformed (400).
    BadTo,
    /// The To URI is not a SIP or SIPS URI (400; §10.3 step 5, RFC 4475 §3.3.4).
    NotSipAor,
    /// A Contact value does not parse, or has a malformed `expires` or `q` (400).
    BadContact,
    /// The Expires header is malformed (400).
    BadExpires,
    /// `Contact: *` with other contacts, or without `Expires: 0` (400; §10.3 step 6).
    BadWildcard,
    /// A contact, Call-ID, instance or Path is longer than a binding can store (400).
    FieldTooLong,
    /// A non-zero expiry below the minimum (423 with Min-Expires; §10.3 step 7, §10.2.8).
    IntervalTooBrief,
    /// Same Call-ID as a stored binding with a CSeq not higher than the stored one: "the
    /// update MUST be aborted and the request fails" (500; §10.3 step 7).
    OutOfOrder,
    /// The AOR would have more than `max_contacts_per_aor` bindings (503, as Kamailio).
    TooManyContacts,
}

impl RegisterError {
    /// The status code answered.
    pub fn status(self) -> u16 {
        match self {
            RegisterError::BadTo
            | RegisterError::NotSipAor
            | RegisterError::BadContact
            | RegisterError::BadExpires
            | RegisterError::BadWildcard
            | RegisterError::FieldTooLong => 400,
            RegisterError::IntervalTooBrief => 423,
            RegisterError::OutOfOrder => 500,
            RegisterError::TooManyContacts => 503,
        }
    }

    /// The reason phrase answered.
    pub fn reason(self) -> &'static [u8] {
        match self {
            RegisterError::BadTo => b"Bad Request (To)",
            RegisterError::NotSipAor => b"Bad Request (AOR must be a SIP or SIPS URI)",
            RegisterError::BadContact => b"Bad Request (Contact)",
            RegisterError::BadExpires => b"Bad Request (Expires)",
            RegisterError::BadWildcard => b"Bad Request (Contact: * needs Expires: 0 alone)",
            RegisterError::FieldTooLong => b"Bad Request (field too long)",
            RegisterError::IntervalTooBrief => b"Interval Too Brief",
            RegisterError::OutOfOrder => b"Server Internal Error",
            RegisterError::TooManyContacts => b"Too Many Registered Contacts",
        }
    }
}

/// The result of one REGISTER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterOutcome {
    /// The status code written.
    pub status: u16,
    /// Why the request was refused, if it was.
    pub error: Option<RegisterError>,
    /// Bindings created.
    pub added: u16,
    /// Existing bindings updated (new expiry, Call-ID, CSeq ...).
    pub refreshed: u16,
    /// Bindings removed on request (expires 0 or `Contact: *`).
    pub removed: u16,
    /// Bindings of the AOR found expired and dropped while handling the request.
    pub expired: u16,
    /// Bindings the AOR has after the request (listed in the 200).
    pub bindings: u16,
}
