//! URIs: `sip:`, `sips:` (RFC 3261 §19.1, §25.1), `tel:` (RFC 3966) and other absolute URIs
//! kept opaque. Hosts may be names, IPv4 or bracketed IPv6 references (RFC 5118). Parsing
//! borrows the input; escapes (`%HH`) are validated but kept, and decoded on comparison.
//! [`Uri::equals`] implements the comparison rules of RFC 3261 §19.1.4.

use super::scan::{find_byte, is_lws};
use super::simd::{self, ByteClass, ByteSet};

/// The URI scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme<'a> {
    Sip,
    Sips,
    Tel,
    /// Any other scheme (`nobodyKnowsThisScheme`, `http`, ...); the rest of the URI is opaque.
    Other(&'a [u8]),
}

/// What kind of host a SIP URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    Name,
    Ipv4,
    /// An IPv6 reference; `Uri::host` holds the address without the brackets.
    Ipv6,
    /// No host (tel: and opaque URIs).
    None,
}

/// Why a URI did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriError {
    Empty,
    BadScheme,
    BadUser,
    BadHost,
    BadPort,
    BadParam,
    BadHeaders,
    BadEscape,
    /// Whitespace or a character that can never appear in a URI.
    IllegalChar,
    /// A telephone-subscriber with characters outside RFC 3966.
    BadTelNumber,
}

/// A parsed URI borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: Scheme<'a>,
    /// User part (escapes kept), or the number of a tel: URI.
    pub user: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
    /// Host without IPv6 brackets; empty for tel: and opaque URIs.
    pub host: &'a [u8],
    pub host_kind: HostKind,
    pub port: Option<u16>,
    /// The parameters after the first `;` (without it), e.g. `transport=tcp;lr`.
    pub params: &'a [u8],
    /// The headers after `?` (without it), e.g. `Subject=x&Priority=urgent`.
    pub headers: &'a [u8],
    /// The whole URI as given.
    pub raw: &'a [u8],
}

const fn user_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        // unreserved (alphanum + mark) + user-unreserved; '%' handled as escape.
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'_'
                    | b'.'
                    | b'!'
                    | b'~'
                    | b'*'
                    | b'\''
                    | b'('
                    | b')'
                    | b'&'
                    | b'='
                    | b'+'
                    | b'$'
                    | b','
                    | b';'
                    | b'?'
                    | b'/'
            );
        i += 1;
    }
    t
}

const fn param_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        // unreserved + param-unreserved "[]/:&+$"
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'_'
                    | b'.'
                    | b'!'
                    | b'~'
                    | b'*'
                    | b'\''
                    | b'('
                    | b')'
                    | b'['
                    | b']'
                    | b'/'
                    | b':'
                    | b'&'
                    | b'+'
                    | b'$'
            );
        i += 1;
    }
    t
}

const fn hvalue_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        // unreserved + hnv-unreserved "[]/?:+$"
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'_'
                    | b'.'
                    | b'!'
                    | b'~'
                    | b'*'
                    | b'\''
                    | b'('
                    | b')'
                    | b'['
                    | b']'
                    | b'/'
                    | b'?'
                    | b':'
                    | b'+'
                    | b'$'
            );
        i += 1;
    }
    t
}

/// Bytes that never appear in a URI: whitespace, controls, non-ASCII, `<`, `>`, `"`.
const fn uri_illegal_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = is_lws(c) || c < 0x21 || c >= 0x7f || c == b'<' || c == b'>' || c == b'"';
        i += 1;
    }
    t
}

static URI_ILLEGAL: [bool; 256] = uri_illegal_table();

/// Byte classes of the one-pass SIP URI scanner ([`Uri::parse`]): one bit per character set.
const C_USER: u8 = 1;
const C_PARAM: u8 = 2;
const C_HVALUE: u8 = 4;
/// Host name bytes: letters, digits, `-` and `.`.
const C_HOST: u8 = 8;
const C_DIGIT: u8 = 16;
/// IPv6 reference bytes: hex digits, `:` and `.`.
const C_V6: u8 = 32;
/// Letters and `-` (a host with one is a name, not an IPv4 address).
const C_ALPHA: u8 = 64;
const C_DOT: u8 = 128;

const fn sip_class_table() -> [u8; 256] {
    let user = user_table();
    let param = param_table();
    let hvalue = hvalue_table();
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut v = 0;
        if user[i] {
            v |= C_USER;
        }
        if param[i] {
            v |= C_PARAM;
        }
        if hvalue[i] {
            v |= C_HVALUE;
        }
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'.' {
            v |= C_HOST;
        }
        if c.is_ascii_digit() {
            v |= C_DIGIT;
        }
        if c.is_ascii_hexdigit() || c == b':' || c == b'.' {
            v |= C_V6;
        }
        if c.is_ascii_alphabetic() || c == b'-' {
            v |= C_ALPHA;
        }
        if c == b'.' {
            v |= C_DOT;
        }
        t[i] = v;
        i += 1;
    }
    t
}

static SIP_CLASS: [u8; 256] = sip_class_table();

/// Advances `i` over bytes of class `class` and valid `%HH` escapes; returns where it stopped
/// (at `s.len()` or at the first other byte). A `%` without two hex digits is `BadEscape`.
/// The delimiters that end a URI part are never hex digits, so checking the two bytes after
/// `%` in the whole URI is the same as checking them inside the part.
/// The runs between escapes are scanned sixteen bytes per step (`simd::skip`).
#[inline]
fn scan_class<B: ByteSet>(s: &[u8], mut i: usize) -> Result<usize, UriError> {
    loop {
        i = simd::skip::<B>(s, i);
        if s.get(i) != Some(&b'%') {
            return Ok(i);
        }
        match (s.get(i + 1), s.get(i + 2)) {
            (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
            _ => return Err(UriError::BadEscape),
        }
    }
}

/// [`scan_class`] byte by byte with the tables (the reference of the tests).
#[cfg(test)]
fn scan_class_bytewise(s: &[u8], mut i: usize, class: u8) -> Result<usize, UriError> {
    while let Some(&c) = s.get(i) {
        if SIP_CLASS[c as usize] & class != 0 {
            i += 1;
        } else if c == b'%' {
            match (s.get(i + 1), s.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return Err(UriError::BadEscape),
            }
        } else {
            break;
        }
    }
    Ok(i)
}

/// `user` bytes without `%` (escapes are handled by [`scan_class`]): unreserved and
/// user-unreserved, as `user_table`.
struct UserBytes;
impl ByteSet for UserBytes {
    const CLASS: ByteClass = ByteClass::new(true, &[(b'&', b'9')], b"!$;=?_~", b"");
}
/// `param` bytes without `%`: unreserved and param-unreserved, as `param_table`.
struct ParamBytes;
impl ByteSet for ParamBytes {
    const CLASS: ByteClass = ByteClass::new(true, &[(b'&', b'+'), (b'-', b':')], b"!$[]_~", b"");
}
/// Header name and value bytes without `%`: unreserved and hnv-unreserved, as `hvalue_table`.
struct HvalueBytes;
impl ByteSet for HvalueBytes {
    const CLASS: ByteClass = ByteClass::new(true, &[(b'\'', b'+'), (b'-', b':')], b"!$?[]_~", b"");
}

#[cfg(test)]
static USER: [bool; 256] = user_table();
#[cfg(test)]
static PARAM: [bool; 256] = param_table();
#[cfg(test)]
static HVALUE: [bool; 256] = hvalue_table();

/// Checks that `s` consists of `allowed` bytes and valid `%HH` escapes.
fn check_escaped(s: &[u8], allowed: &[bool; 256], err: UriError) -> Result<(), UriError> {
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == b'%' {
            if i + 2 >= s.len() {
                return Err(UriError::BadEscape);
            }
            if !(s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit()) {
                return Err(UriError::BadEscape);
            }
            i += 3;
        } else if allowed[c as usize] {
            i += 1;
        } else {
            return Err(err);
        }
    }
    Ok(())
}

fn parse_port(s: &[u8]) -> Result<u16, UriError> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return Err(UriError::BadPort);
    }
    let v: u32 = s.iter().fold(0, |a, &c| a * 10 + (c - b'0') as u32);
    u16::try_from(v).map_err(|_| UriError::BadPort)
}

fn is_ipv4(s: &[u8]) -> bool {
    let mut parts = 0;
    for p in s.split(|&c| c == b'.') {
        parts += 1;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let v: u32 = p.iter().fold(0, |a, &c| a * 10 + (c - b'0') as u32);
        if v > 255 {
            return false;
        }
    }
    parts == 4
}

/// Checks an IPv6 reference's inner text (RFC 5118 also asks us to tolerate the three-colon
/// form that the RFC 3261 ABNF admits).
pub(crate) fn is_ipv6(s: &[u8]) -> bool {
    s.len() >= 2
        && s.iter().filter(|&&c| c == b':').count() >= 2
        && s.iter()
            .all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
}

/// Byte classes of a host name: 0 = not allowed, 1 = digit, 2 = letter or `-`, 3 = `.`.
#[cfg(test)]
const fn host_class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_digit() {
            1
        } else if c.is_ascii_alphabetic() || c == b'-' {
            2
        } else if c == b'.' {
            3
        } else {
            0
        };
        i += 1;
    }
    t
}

#[cfg(test)]
static HOST_CLASS: [u8; 256] = host_class_table();

/// A host name (alphanumerics, `-`, `.`; not starting with `.` or `-`; no empty label) or
/// an IPv4 address, in one pass.
fn name_or_ipv4(s: &[u8]) -> Option<HostKind> {
    if s.is_empty() || s.len() > 255 || s[0] == b'.' || s[0] == b'-' {
        return None;
    }
    let (end, letters, double_dot) = scan_host_name(s, 0);
    if end != s.len() || double_dot {
        return None;
    }
    // Digits and dots only: an IPv4 address if it has four parts in range, else still a
    // (numeric) host name.
    if !letters && is_ipv4(s) {
        Some(HostKind::Ipv4)
    } else {
        Some(HostKind::Name)
    }
}

/// Scans host-name bytes (letters, digits, `-`, `.`) from `i`: returns where they stop,
/// whether a letter or `-` was seen (then it is no IPv4 address) and whether two dots touch.
/// Eight bytes per step: each byte's class is computed with carry-free byte arithmetic on the
/// low seven bits (bytes of 0x80 and up are marked separately).
/// Sixteen bytes per step with SSE2 where there are sixteen bytes (`simd::scan_host_name`).
#[inline]
pub(crate) fn scan_host_name(s: &[u8], i: usize) -> (usize, bool, bool) {
    match simd::scan_host_name(s, i) {
        Some(r) => r,
        None => scan_host_name_swar(s, i),
    }
}

#[inline]
fn scan_host_name_swar(s: &[u8], mut i: usize) -> (usize, bool, bool) {
    const LO7: u64 = u64::from_ne_bytes([0x7f; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    const fn rep(b: u8) -> u64 {
        u64::from_ne_bytes([b; 8])
    }
    // High bit of each byte set if that byte of `x` (all < 0x80) is >= `b`.
    let ge = |x: u64, b: u8| x.wrapping_add(rep(0x80 - b)) & HI;
    // High bit set if the byte equals `b`.
    let eq = |x: u64, b: u8| !(x ^ rep(b)).wrapping_add(LO7) & HI;
    let (mut alpha, mut double_dot) = (false, false);
    let mut prev_dot = false;
    while let Some(chunk) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let x = w & LO7;
        let lower = x | rep(0x20);
        let letter = ge(lower, b'a') & !ge(lower, b'z' + 1);
        let digit = ge(x, b'0') & !ge(x, b'9' + 1);
        let dash = eq(x, b'-');
        let dot = eq(x, b'.');
        let ok = (letter | digit | dash | dot) & !(w & HI);
        let bad = !ok & HI;
        // Only the bytes before the first bad one count.
        let keep = if bad == 0 {
            u64::MAX
        } else {
            (1u64 << bad.trailing_zeros()).wrapping_sub(1)
        };
        let dot = dot & keep;
        alpha |= (letter | dash) & keep != 0;
        double_dot |= dot & (dot >> 8) != 0 || (prev_dot && dot & 0x80 != 0);
        if bad != 0 {
            return (i + (bad.trailing_zeros() / 8) as usize, alpha, double_dot);
        }
        prev_dot = dot >> 56 != 0;
        i += 8;
    }
    while let Some(&c) = s.get(i) {
        let class = SIP_CLASS[c as usize];
        if class & C_HOST == 0 {
            break;
        }
        alpha |= class & C_ALPHA != 0;
        let is_dot = c == b'.';
        double_dot |= is_dot && prev_dot;
        prev_dot = is_dot;
        i += 1;
    }
    (i, alpha, double_dot)
}

/// Parses a host (`name`, `a.b.c.d` or `[v6]`) and returns (host, kind).
pub(crate) fn parse_host(s: &[u8]) -> Result<(&[u8], HostKind), UriError> {
    if let Some(inner) = s.strip_prefix(b"[") {
        let inner = inner.strip_suffix(b"]").ok_or(UriError::BadHost)?;
        if is_ipv6(inner) {
            return Ok((inner, HostKind::Ipv6));
        }
        return Err(UriError::BadHost);
    }
    match name_or_ipv4(s) {
        Some(kind) => Ok((s, kind)),
        None => Err(UriError::BadHost),
    }
}

/// Splits `host[:port]` where host may be a bracketed IPv6 reference.
pub(crate) fn split_hostport(s: &[u8]) -> Result<(&[u8], HostKind, Option<u16>), UriError> {
    let (host_part, port_part) = if s.first() == Some(&b'[') {
        let close = find_byte(b']', s).ok_or(UriError::BadHost)?;
        let rest = &s[close + 1..];
        match rest {
            [] => (s, None),
            [b':', port @ ..] => (&s[..close + 1], Some(port)),
            _ => return Err(UriError::BadHost),
        }
    } else {
        match find_byte(b':', s) {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        }
    };
    let (host, kind) = parse_host(host_part)?;
    let port = port_part.map(parse_port).transpose()?;
    Ok((host, kind, port))
}

impl<'a> Uri<'a> {
    /// Parses a URI. Leading/trailing whitespace is an error: callers trim header values.
    pub fn parse(raw: &'a [u8]) -> Result<Uri<'a>, UriError> {
        if raw.is_empty() {
            return Err(UriError::Empty);
        }
        // The common schemes first: `sip:` and `sips:` in any letter case.
        let sip = |b: &[u8]| b[0] | 0x20 == b's' && b[1] | 0x20 == b'i' && b[2] | 0x20 == b'p';
        if raw.len() >= 4 && raw[3] == b':' && sip(raw) {
            return Self::parse_sip(Scheme::Sip, &raw[4..], raw);
        }
        if raw.len() >= 5 && raw[4] == b':' && sip(raw) && raw[3] | 0x20 == b's' {
            return Self::parse_sip(Scheme::Sips, &raw[5..], raw);
        }
        if raw.iter().any(|&c| URI_ILLEGAL[c as usize]) {
            return Err(UriError::IllegalChar);
        }
        let colon = find_byte(b':', raw).ok_or(UriError::BadScheme)?;
        let scheme_bytes = &raw[..colon];
        if scheme_bytes.is_empty()
            || !scheme_bytes[0].is_ascii_alphabetic()
            || !scheme_bytes
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            return Err(UriError::BadScheme);
        }
        let rest = &raw[colon + 1..];
        let scheme = if scheme_bytes.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_bytes.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_bytes.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other(scheme_bytes)
        };
        match scheme {
            Scheme::Sip | Scheme::Sips => Self::parse_sip(scheme, rest, raw),
            Scheme::Tel => Self::parse_tel(rest, raw),
            Scheme::Other(_) => Ok(Uri {
                scheme,
                user: None,
                password: None,
                host: b"",
                host_kind: HostKind::None,
                port: None,
                params: b"",
                headers: b"",
                raw,
            }),
        }
    }

    /// `[userinfo "@"] hostport [";" params] ["?" headers]` in one pass over the bytes, each
    /// part checked against its character class as it is crossed. Every byte of a SIP URI
    /// belongs to a part whose class excludes whitespace, controls, non-ASCII, `<`, `>` and
    /// `"`, so no separate check for illegal bytes is needed.
    ///
    /// The parts are delimited exactly as a split would: userinfo ends at the first `@`, the
    /// headers start at the first `?` after it and the parameters at the first `;` before
    /// that; `tests::one_pass_sip_matches_split_reference` checks this against the split.
    fn parse_sip(scheme: Scheme<'a>, s: &'a [u8], raw: &'a [u8]) -> Result<Uri<'a>, UriError> {
        if let Some(uri) = Self::parse_sip_common(scheme, s, raw) {
            return Ok(uri);
        }
        Self::parse_sip_general(scheme, s, raw)
    }

    /// The common shape `[user@]host[:port][;name[=value]...]` with plain bytes (no
    /// password, escapes, IPv6 reference or headers) in one straight pass with the class table;
    /// `None` for anything else, which the general code then parses (and reports errors for).
    /// When it returns a URI, the general code returns the same one:
    /// `tests::common_shape_matches_general` checks this on mutated inputs.
    #[inline]
    fn parse_sip_common(scheme: Scheme<'a>, s: &'a [u8], raw: &'a [u8]) -> Option<Uri<'a>> {
        let n = s.len();
        // Past the end reads as NUL, which is in no class and no delimiter.
        let byte = |i: usize| if i < n { s[i] } else { 0 };
        let class = |i: usize| SIP_CLASS[byte(i) as usize];
        let mut i = 0;
        while class(i) & C_USER != 0 {
            i += 1;
        }
        // If the first byte outside the user class is `@`, it is the first `@`. Otherwise
        // there is no user part if the whole URI is accepted below: no host, port or
        // parameter byte is an `@`.
        let (user, host_start) = if byte(i) == b'@' {
            if i == 0 {
                return None;
            }
            (Some(&s[..i]), i + 1)
        } else {
            (None, 0)
        };
        let (end, letters, double_dot) = scan_host_name(s, host_start);
        if double_dot
            || end == host_start
            || end - host_start > 255
            || matches!(s[host_start], b'.' | b'-')
        {
            return None;
        }
        let host = &s[host_start..end];
        i = end;
        let mut port = None;
        if byte(i) == b':' {
            i += 1;
            let start = i;
            let mut v: u32 = 0;
            while i - start < 5 && byte(i).is_ascii_digit() {
                v = v * 10 + (byte(i) - b'0') as u32;
                i += 1;
            }
            if i == start || v > u16::MAX as u32 {
                return None;
            }
            port = Some(v as u16);
        }
        let mut params: &'a [u8] = b"";
        if byte(i) == b';' {
            let start = i + 1;
            loop {
                i += 1;
                let name_start = i;
                while class(i) & C_PARAM != 0 {
                    i += 1;
                }
                if i == name_start {
                    return None;
                }
                if byte(i) == b'=' {
                    i += 1;
                    let value_start = i;
                    while class(i) & C_PARAM != 0 {
                        i += 1;
                    }
                    if i == value_start {
                        return None;
                    }
                }
                if byte(i) != b';' {
                    break;
                }
            }
            params = &s[start..i];
        }
        // Anything left (headers, a bad byte, a sixth port digit) goes to the general code.
        if i != n {
            return None;
        }
        let host_kind = if !letters && is_ipv4(host) {
            HostKind::Ipv4
        } else {
            HostKind::Name
        };
        Some(Uri {
            scheme,
            user,
            password: None,
            host,
            host_kind,
            port,
            params,
            headers: b"",
            raw,
        })
    }

    /// [`Uri::parse_sip`] for every shape.
    fn parse_sip_general(
        scheme: Scheme<'a>,
        s: &'a [u8],
        raw: &'a [u8],
    ) -> Result<Uri<'a>, UriError> {
        // '@' cannot appear unescaped in params or headers, so it delimits userinfo.
        let (user, password, mut i) = match find_byte(b'@', s) {
            Some(at) => {
                let userinfo = &s[..at];
                // Scanned in `s`, which is longer than the user part (and so more often
                // long enough for sixteen-byte steps): `@` is no user byte and not a hex
                // digit, so the scan stops at `at` at the latest, and `%` escapes are
                // judged the same way.
                let end = scan_class::<UserBytes>(s, 0)?;
                if end == 0 {
                    return Err(UriError::BadUser);
                }
                let password = match userinfo.get(end) {
                    None => None,
                    Some(b':') => {
                        if scan_class::<UserBytes>(s, end + 1)? != at {
                            return Err(UriError::BadUser);
                        }
                        Some(&userinfo[end + 1..])
                    }
                    Some(_) => return Err(UriError::BadUser),
                };
                (Some(&userinfo[..end]), password, at + 1)
            }
            None => (None, None, 0),
        };
        // hostport
        let host_start = i;
        let (host, host_kind) = if s.get(i) == Some(&b'[') {
            let mut colons = 0;
            i += 1;
            while let Some(&c) = s.get(i) {
                if SIP_CLASS[c as usize] & C_V6 == 0 {
                    break;
                }
                colons += (c == b':') as u32;
                i += 1;
            }
            let inner = &s[host_start + 1..i];
            if s.get(i) != Some(&b']') || inner.len() < 2 || colons < 2 {
                return Err(UriError::BadHost);
            }
            i += 1;
            if !matches!(s.get(i), None | Some(b':' | b';' | b'?')) {
                return Err(UriError::BadHost);
            }
            (inner, HostKind::Ipv6)
        } else {
            let (end, letters, double_dot) = scan_host_name(s, i);
            i = end;
            let host = &s[host_start..i];
            if double_dot
                || host.is_empty()
                || host.len() > 255
                || host[0] == b'.'
                || host[0] == b'-'
                || !matches!(s.get(i), None | Some(b':' | b';' | b'?'))
            {
                return Err(UriError::BadHost);
            }
            let kind = if !letters && is_ipv4(host) {
                HostKind::Ipv4
            } else {
                HostKind::Name
            };
            (host, kind)
        };
        let mut port = None;
        if s.get(i) == Some(&b':') {
            i += 1;
            let start = i;
            let mut v: u32 = 0;
            while let Some(&c) = s.get(i) {
                if !c.is_ascii_digit() {
                    break;
                }
                v = v.wrapping_mul(10).wrapping_add((c - b'0') as u32);
                i += 1;
            }
            if i == start
                || i - start > 5
                || v > u16::MAX as u32
                || !matches!(s.get(i), None | Some(b';' | b'?'))
            {
                return Err(UriError::BadPort);
            }
            port = Some(v as u16);
        }
        // parameters: `name[=value]` separated by `;`, up to the first `?`.
        let mut params: &'a [u8] = b"";
        if s.get(i) == Some(&b';') {
            let start = i + 1;
            loop {
                let name_start = i + 1;
                i = scan_class::<ParamBytes>(s, name_start)?;
                if i == name_start {
                    return Err(UriError::BadParam);
                }
                if s.get(i) == Some(&b'=') {
                    let value_start = i + 1;
                    i = scan_class::<ParamBytes>(s, value_start)?;
                    if i == value_start {
                        return Err(UriError::BadParam);
                    }
                }
                match s.get(i) {
                    Some(b';') => {}
                    None | Some(b'?') => break,
                    Some(_) => return Err(UriError::BadParam),
                }
            }
            params = &s[start..i];
        }
        // headers: `name=value` separated by `&`, to the end.
        let mut headers: &'a [u8] = b"";
        if s.get(i) == Some(&b'?') {
            let start = i + 1;
            if start == s.len() {
                return Err(UriError::BadHeaders);
            }
            loop {
                let name_start = i + 1;
                i = scan_class::<HvalueBytes>(s, name_start)?;
                if i == name_start || s.get(i) != Some(&b'=') {
                    return Err(UriError::BadHeaders);
                }
                i = scan_class::<HvalueBytes>(s, i + 1)?;
                match s.get(i) {
                    Some(b'&') => {}
                    None => break,
                    Some(_) => return Err(UriError::BadHeaders),
                }
            }
            headers = &s[start..];
        }
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            host_kind,
            port,
            params,
            headers,
            raw,
        })
    }

    #[cfg(test)]
    fn parse_sip_split(
        scheme: Scheme<'a>,
        rest: &'a [u8],
        raw: &'a [u8],
    ) -> Result<Uri<'a>, UriError> {
        // '@' cannot appear unescaped in params or headers, so it delimits userinfo.
        let (user, password, after_user) = match find_byte(b'@', rest) {
            Some(at) => {
                let userinfo = &rest[..at];
                let (user, password) = match find_byte(b':', userinfo) {
                    Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                    None => (userinfo, None),
                };
                if user.is_empty() {
                    return Err(UriError::BadUser);
                }
                check_escaped(user, &USER, UriError::BadUser)?;
                if let Some(p) = password {
                    check_escaped(p, &USER, UriError::BadUser)?;
                }
                (Some(user), password, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let question = find_byte(b'?', after_user);
        let (before_headers, headers) = match question {
            Some(q) => (&after_user[..q], &after_user[q + 1..]),
            None => (after_user, &b""[..]),
        };
        let semicolon = find_byte(b';', before_headers);
        let (hostport, params) = match semicolon {
            Some(s) => (&before_headers[..s], &before_headers[s + 1..]),
            None => (before_headers, &b""[..]),
        };
        let (host, host_kind, port) = split_hostport(hostport)?;
        if semicolon.is_some() {
            for p in params.split(|&c| c == b';') {
                let (name, value) = match find_byte(b'=', p) {
                    Some(e) => (&p[..e], Some(&p[e + 1..])),
                    None => (p, None),
                };
                if name.is_empty() {
                    return Err(UriError::BadParam);
                }
                check_escaped(name, &PARAM, UriError::BadParam)?;
                if let Some(v) = value {
                    if v.is_empty() {
                        return Err(UriError::BadParam);
                    }
                    check_escaped(v, &PARAM, UriError::BadParam)?;
                }
            }
        }
        if question.is_some() {
            if headers.is_empty() {
                return Err(UriError::BadHeaders);
            }
            for h in headers.split(|&c| c == b'&') {
                let e = find_byte(b'=', h).ok_or(UriError::BadHeaders)?;
                if e == 0 {
                    return Err(UriError::BadHeaders);
                }
                check_escaped(&h[..e], &HVALUE, UriError::BadHeaders)?;
                check_escaped(&h[e + 1..], &HVALUE, UriError::BadHeaders)?;
            }
        }
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            host_kind,
            port,
            params,
            headers,
            raw,
        })
    }

    fn parse_tel(rest: &'a [u8], raw: &'a [u8]) -> Result<Uri<'a>, UriError> {
        let (number, params) = match find_byte(b';', rest) {
            Some(s) => (&rest[..s], &rest[s + 1..]),
            None => (rest, &b""[..]),
        };
        let digits = number.strip_prefix(b"+").unwrap_or(number);
        if digits.is_empty()
            || !digits.iter().all(|&c| {
                c.is_ascii_hexdigit() || matches!(c, b'*' | b'#' | b'-' | b'.' | b'(' | b')')
            })
        {
            return Err(UriError::BadTelNumber);
        }
        for p in params.split(|&c| c == b';').filter(|_| !params.is_empty()) {
            if p.is_empty() || p[0] == b'=' {
                return Err(UriError::BadParam);
            }
            check_escaped(p, &PARAM_OR_EQ, UriError::BadParam)?;
        }
        Ok(Uri {
            scheme: Scheme::Tel,
            user: Some(number),
            password: None,
            host: b"",
            host_kind: HostKind::None,
            port: None,
            params,
            headers: b"",
            raw,
        })
    }

    /// True for sip: and sips: URIs.
    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }

    /// Iterates the URI parameters as (name, value) with escapes kept.
    pub fn param_iter(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
        let params = self.params;
        params
            .split(|&c| c == b';')
            .filter(move |p| !p.is_empty())
            .map(|p| match find_byte(b'=', p) {
                Some(e) => (&p[..e], Some(&p[e + 1..])),
                None => (p, None),
            })
    }

    /// The value of a URI parameter (name compared case-insensitively after unescaping, so
    /// `%6C%72` is `lr`: RFC 4475 §3.1.1.3). `Some(None)` means
    /// present without a value (e.g. `lr`).
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.param_iter()
            .find(|(n, _)| eq_unescaped(n, name.as_bytes(), true))
            .map(|(_, v)| v)
    }

    /// `;lr` is present (RFC 3261 §19.1.1 loose routing).
    pub fn lr(&self) -> bool {
        self.param("lr").is_some()
    }

    pub fn transport(&self) -> Option<&'a [u8]> {
        self.param("transport").flatten()
    }

    pub fn maddr(&self) -> Option<&'a [u8]> {
        self.param("maddr").flatten()
    }

    /// Iterates the URI headers as (name, value), escapes kept.
    pub fn header_iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let headers = self.headers;
        headers
            .split(|&c| c == b'&')
            .filter(move |h| !h.is_empty())
            .map(|h| match find_byte(b'=', h) {
                Some(e) => (&h[..e], &h[e + 1..]),
                None => (h, &b""[..]),
            })
    }

    /// URI equality per RFC 3261 §19.1.4 (for sip/sips; tel and others compare their
    /// unescaped text case-insensitively).
    pub fn equals(&self, other: &Uri<'_>) -> bool {
        match (self.scheme, other.scheme) {
            (Scheme::Sip, Scheme::Sip) | (Scheme::Sips, Scheme::Sips) => {}
            (Scheme::Tel, Scheme::Tel) => {
                return eq_unescaped(self.user.unwrap_or(b""), other.user.unwrap_or(b""), true)
                    && params_equal(self, other, true);
            }
            (Scheme::Other(a), Scheme::Other(b)) => {
                return a.eq_ignore_ascii_case(b) && eq_unescaped(self.raw, other.raw, true);
            }
            _ => return false,
        }
        // userinfo: case-sensitive after unescaping.
        match (self.user, other.user) {
            (None, None) => {}
            (Some(a), Some(b)) if eq_unescaped(a, b, false) => {}
            _ => return false,
        }
        match (self.password, other.password) {
            (None, None) => {}
            (Some(a), Some(b)) if eq_unescaped(a, b, false) => {}
            _ => return false,
        }
        if !self.host.eq_ignore_ascii_case(other.host) || self.port != other.port {
            return false;
        }
        params_equal(self, other, false) && headers_equal(self, other)
    }

    /// Writes the address-of-record key of this URI (RFC 3261 §10.3 step 5): scheme, user
    /// unescaped, host in lower case; no port, parameters or headers. Returns false if the URI
    /// is not a SIP URI.
    pub fn write_aor(&self, out: &mut Vec<u8>) -> bool {
        match self.scheme {
            Scheme::Sip => out.extend_from_slice(b"sip:"),
            Scheme::Sips => out.extend_from_slice(b"sips:"),
            _ => return false,
        }
        if let Some(u) = self.user {
            out.extend(Unescape::new(u));
            out.push(b'@');
        }
        if self.host_kind == HostKind::Ipv6 {
            out.push(b'[');
        }
        out.extend(self.host.iter().map(u8::to_ascii_lowercase));
        if self.host_kind == HostKind::Ipv6 {
            out.push(b']');
        }
        true
    }

    /// The address-of-record key as a String (see [`Uri::write_aor`]).
    pub fn aor(&self) -> Option<String> {
        let mut v = Vec::with_capacity(self.raw.len());
        if !self.write_aor(&mut v) {
            return None;
        }
        // Unescaped user parts may hold any byte; keep them lossless but valid UTF-8.
        Some(match String::from_utf8(v) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

/// Parameters that must match when present in either URI (RFC 3261 §19.1.4).
const MUST_MATCH: [&[u8]; 5] = [b"user", b"ttl", b"method", b"maddr", b"transport"];

fn params_equal(a: &Uri<'_>, b: &Uri<'_>, all: bool) -> bool {
    for (i, (name, va)) in a.param_iter().enumerate() {
        // A repeated parameter: only its first occurrence counts, as for `Uri::param` (the
        // lookup in `b` below finds b's first one too). Comparing later ones against b's first
        // made a URI with `;maddr=x;maddr=y` unequal to itself.
        if a.param_iter()
            .take(i)
            .any(|(n, _)| eq_unescaped(n, name, true))
        {
            continue;
        }
        let vb = b
            .param_iter()
            .find(|(n, _)| eq_unescaped(n, name, true))
            .map(|(_, v)| v);
        match vb {
            Some(vb) => {
                if !eq_unescaped(va.unwrap_or(b""), vb.unwrap_or(b""), true) {
                    return false;
                }
            }
            None => {
                if all || MUST_MATCH.iter().any(|m| eq_unescaped(name, m, true)) {
                    return false;
                }
            }
        }
    }
    for (name, _) in b.param_iter() {
        let in_a = a.param_iter().any(|(n, _)| eq_unescaped(n, name, true));
        if !in_a && (all || MUST_MATCH.iter().any(|m| eq_unescaped(name, m, true))) {
            return false;
        }
    }
    true
}

fn headers_equal(a: &Uri<'_>, b: &Uri<'_>) -> bool {
    if a.header_iter().count() != b.header_iter().count() {
        return false;
    }
    // Both directions, so that repeated headers keep the comparison symmetric.
    let contained = |x: &Uri<'_>, y: &Uri<'_>| {
        x.header_iter().all(|(n, v)| {
            y.header_iter()
                .any(|(n2, v2)| eq_unescaped(n, n2, true) && eq_unescaped(v, v2, false))
        })
    };
    contained(a, b) && contained(b, a)
}

/// Iterator over the bytes of `s` with `%HH` escapes decoded.
pub struct Unescape<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Unescape<'a> {
    pub fn new(s: &'a [u8]) -> Self {
        Unescape { s, i: 0 }
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Iterator for Unescape<'_> {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        let c = *self.s.get(self.i)?;
        if c == b'%' && self.i + 2 < self.s.len() {
            if let (Some(h), Some(l)) = (hex(self.s[self.i + 1]), hex(self.s[self.i + 2])) {
                self.i += 3;
                return Some(h << 4 | l);
            }
        }
        self.i += 1;
        Some(c)
    }
}

/// Compares two escaped byte strings after decoding, optionally ignoring ASCII case.
pub fn eq_unescaped(a: &[u8], b: &[u8], ignore_case: bool) -> bool {
    if a == b {
        return true;
    }
    let mut x = Unescape::new(a);
    let mut y = Unescape::new(b);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) => {
                let same = if ignore_case {
                    p.eq_ignore_ascii_case(&q)
                } else {
                    p == q
                };
                if !same {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

const fn param_or_eq_table() -> [bool; 256] {
    let mut t = param_table();
    t[b'=' as usize] = true;
    t
}
static PARAM_OR_EQ: [bool; 256] = param_or_eq_table();

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing: a URI with a repeated parameter was not equal to itself.
    #[test]
    fn equality_is_reflexive_and_symmetric_with_repeated_params_and_headers() {
        let a = Uri::parse(b"sip:UserB@example.com;maddr=ss1example.com;maddr=ss1.example.com")
            .unwrap();
        assert!(a.equals(&a));
        let b = Uri::parse(b"sip:UserB@example.com;maddr=ss1example.com").unwrap();
        assert_eq!(a.equals(&b), b.equals(&a));
        let h1 = Uri::parse(b"sip:a@h?x=1&x=1").unwrap();
        let h2 = Uri::parse(b"sip:a@h?x=1&x=2").unwrap();
        assert!(h1.equals(&h1) && h2.equals(&h2));
        assert!(!h1.equals(&h2) && !h2.equals(&h1));
    }

    /// The URI parser before the one-pass scanner: illegal bytes, scheme, then a split of
    /// the SIP URI into parts.
    fn split_reference(raw: &[u8]) -> Result<Uri<'_>, UriError> {
        if raw.is_empty() {
            return Err(UriError::Empty);
        }
        if raw.iter().any(|&c| URI_ILLEGAL[c as usize]) {
            return Err(UriError::IllegalChar);
        }
        let colon = find_byte(b':', raw).ok_or(UriError::BadScheme)?;
        let scheme = &raw[..colon];
        if scheme.eq_ignore_ascii_case(b"sip") {
            Uri::parse_sip_split(Scheme::Sip, &raw[colon + 1..], raw)
        } else if scheme.eq_ignore_ascii_case(b"sips") {
            Uri::parse_sip_split(Scheme::Sips, &raw[colon + 1..], raw)
        } else {
            Uri::parse(raw)
        }
    }

    #[test]
    fn one_pass_sip_matches_split_reference() {
        let seeds: [&[u8]; 14] = [
            b"sip:bob@client.biloxi.example.com:5060;transport=udp",
            b"sips:alice:pw@atlanta.example.com;maddr=1.2.3.4;lr?Subject=x%20y&Priority=urgent",
            b"sip:[2001:db8::9:1]:5070;transport=tcp",
            b"SIP:%61lice@192.0.2.1",
            b"sip:user;par=u%40example.net@example.com",
            b"sip:a@b?h=&x=y",
            b"sip:1.2.3.256:65535",
            b"sip:a.b-c.d",
            b"sip:a@[::ffff:192.0.2.1]",
            b"sip:host;lr;x=[a]/:&+$",
            b"tel:+1-201-555-0123;x=y",
            b"sip:a:@h",
            b"sip:a@h;p=%zz",
            b"Sips:h:0",
        ];
        let alphabet = b"@:;?=&%[].-aZ09fF \"<>/,+$~*'()!_#\x80\x00";
        let mut m = crate::sip::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
        let (mut checked, mut accepted) = (0, 0);
        for seed in seeds {
            for round in 0..4000 {
                let v = m.mutated(seed, 1 + round % 3, alphabet);
                let new = Uri::parse(&v);
                let old = split_reference(&v);
                accepted += new.is_ok() as usize;
                assert_eq!(new.ok(), old.ok(), "{:?}", String::from_utf8_lossy(&v));
                checked += 1;
            }
            assert_eq!(Uri::parse(seed).ok(), split_reference(seed).ok());
        }
        assert!(checked > 50_000);
        // Both verdicts are well represented.
        assert!(
            accepted > checked / 5 && accepted < checked * 4 / 5,
            "{accepted}"
        );
    }

    /// The straight-line path for the common shape returns only what the general code returns.
    #[test]
    fn common_shape_matches_general() {
        let seeds: [&[u8]; 11] = [
            b"bob@client.biloxi.example.com:5060;transport=udp",
            b"alice@atlanta.example.com",
            b"a@b;lr;x=[a]/:&+$;maddr=1.2.3.4",
            b"u-1.x@h:65535;a=b;c",
            b"u@h.example.com:5060",
            b"x@y;p=%41",
            b"x@1.2.3.4;p",
            b"x@ab..c?h=v",
            b"registrar.biloxi.example.com",
            b"192.0.2.4:5060;transport=udp",
            b"1.2.3.256:5;lr",
        ];
        let alphabet = b"@:;?=&%[].-aZ09fF \"<>/,+$~*'()!_#\x80\x00";
        let mut m = crate::sip::mutate::Mutator::new(0x2545_f491_4f6c_dd1d);
        let raw = b"sip:";
        let (mut checked, mut fast) = (0, 0);
        for seed in seeds {
            for round in 0..8000 {
                let v = m.mutated(seed, round % 4, alphabet);
                let general = Uri::parse_sip_general(Scheme::Sip, &v, raw);
                if let Some(uri) = Uri::parse_sip_common(Scheme::Sip, &v, raw) {
                    assert_eq!(Ok(uri), general, "{:?}", String::from_utf8_lossy(&v));
                    fast += 1;
                }
                assert_eq!(
                    Uri::parse_sip(Scheme::Sip, &v, raw),
                    general,
                    "{:?}",
                    String::from_utf8_lossy(&v)
                );
                checked += 1;
            }
        }
        assert!(
            fast > checked / 5 && fast < checked * 4 / 5,
            "{fast} of {checked}"
        );
        assert!(Uri::parse_sip_common(Scheme::Sip, seeds[0], raw).is_some());
    }

    #[test]
    fn host_name_scan_matches_bytewise() {
        let alphabet = b"aZz09-.:;\x80\xff@/`{[";
        let mut rng: u64 = 0x1234_5678_9abc_def1;
        let (mut long, mut doubled) = (0, 0);
        for _ in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 30) as usize;
            let s: Vec<u8> = (0..len)
                .map(|k| {
                    let r = (rng >> (k % 16 * 4)) as usize + k;
                    // Mostly host bytes, so that long runs occur.
                    if r.is_multiple_of(7) {
                        alphabet[r / 7 % alphabet.len()]
                    } else {
                        alphabet[r % 7]
                    }
                })
                .collect();
            let start = (rng >> 40) as usize % (len + 1);
            let mut end = start;
            while end < len && HOST_CLASS[s[end] as usize] != 0 {
                end += 1;
            }
            let part = &s[start..end];
            let alpha = part.iter().any(|&c| HOST_CLASS[c as usize] == 2);
            let dd = part.windows(2).any(|w| w == b"..");
            long += (end - start >= 16) as usize;
            doubled += dd as usize;
            assert_eq!(
                scan_host_name(&s, start),
                (end, alpha, dd),
                "{s:?} from {start}"
            );
        }
        assert!(long > 1000 && doubled > 1000, "{long} {doubled}");
    }

    /// The sixteen-byte scans of URI parts against the byte-wise tables, at every length
    /// 0..80, start and alignment.
    #[test]
    fn sixteen_byte_uri_scans_match_bytewise() {
        for c in 0..=255u8 {
            assert_eq!(UserBytes::CLASS.contains(c), USER[c as usize], "{c}");
            assert_eq!(ParamBytes::CLASS.contains(c), PARAM[c as usize], "{c}");
            assert_eq!(HvalueBytes::CLASS.contains(c), HVALUE[c as usize], "{c}");
        }
        type Scan = fn(&[u8], usize) -> Result<usize, UriError>;
        let classes: [(Scan, u8); 3] = [
            (scan_class::<UserBytes>, C_USER),
            (scan_class::<ParamBytes>, C_PARAM),
            (scan_class::<HvalueBytes>, C_HVALUE),
        ];
        let (mut long, mut doubled) = (0, 0);
        crate::sip::scan::tests::for_random_inputs(
            b"ab.9Z-.%fA",
            b"@:;?=&[]/$+,!~*'()_ \"<>\x80\xff#",
            |s| {
                for i in 0..=s.len() + 1 {
                    for (scan, class) in classes {
                        assert_eq!(
                            scan(s, i),
                            scan_class_bytewise(s, i, class),
                            "{s:?} {i} {class}"
                        );
                    }
                    if i <= s.len() {
                        let mut end = i;
                        while end < s.len() && HOST_CLASS[s[end] as usize] != 0 {
                            end += 1;
                        }
                        let part = &s[i..end];
                        let alpha = part.iter().any(|&c| HOST_CLASS[c as usize] == 2);
                        let dd = part.windows(2).any(|w| w == b"..");
                        long += (end - i >= 16) as usize;
                        doubled += dd as usize;
                        assert_eq!(scan_host_name(s, i), (end, alpha, dd), "{s:?} {i}");
                        assert_eq!(scan_host_name_swar(s, i), (end, alpha, dd), "{s:?} {i}");
                    }
                }
            },
        );
        assert!(long > 5_000 && doubled > 10_000, "{long} {doubled}");
    }

    #[test]
    fn hosts() {
        for (host, kind) in [
            (&b"example.com"[..], Some(HostKind::Name)),
            (b"192.0.2.1", Some(HostKind::Ipv4)),
            (b"1.2.3.256", Some(HostKind::Name)),
            (b"1.2.3", Some(HostKind::Name)),
            (b"a-b.c9", Some(HostKind::Name)),
            (b".example.com", None),
            (b"-example.com", None),
            (b"example..com", None),
            (b"exa_mple.com", None),
            (b"", None),
        ] {
            assert_eq!(parse_host(host).ok().map(|(_, k)| k), kind, "{host:?}");
        }
    }
}
