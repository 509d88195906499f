//! Byte-level scanning for the grammar of RFC 3261 §25.1: character classes, linear white
//! space (LWS, including folded lines), tokens, quoted strings and a small cursor type that the
//! typed header parsers share. All functions work on borrowed bytes and never allocate.

use super::simd::{ByteClass, ByteSet};

/// `token` characters (RFC 3261 §25.1): alphanum and `-.!%*_+`~'`.
const fn token_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
}

/// `word` characters (Call-ID): token plus `()<>:\"/[]?{}`.
const fn word_table() -> [bool; 256] {
    let mut t = token_table();
    let extra = b"()<>:\\\"/[]?{}";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// The bytes [`CommaSplit`] has to look at: quotes, escapes, angle brackets and commas.
const fn comma_special_table() -> [bool; 256] {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b',' as usize] = true;
    t
}

static TOKEN: [bool; 256] = token_table();
static COMMA_SPECIAL: [bool; 256] = comma_special_table();
static WORD: [bool; 256] = word_table();

#[inline]
pub fn is_token_char(c: u8) -> bool {
    TOKEN[c as usize]
}

#[inline]
pub fn is_word_char(c: u8) -> bool {
    WORD[c as usize]
}

/// Whitespace inside a header value: SP, HTAB, and the CR/LF of a folded line. The header
/// splitter only lets CR/LF into a value span when a continuation line follows, so inside a
/// value they always mean LWS.
#[inline]
pub const fn is_lws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// True if every byte is a token character and there is at least one.
#[inline]
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| is_token_char(c))
}

/// Trims LWS from both ends.
#[inline]
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_lws(*first) {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_lws(*last) {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Parses an unsigned decimal number with at most `max` as value. Leading zeros are allowed
/// (RFC 4475 §3.1.1.1). Returns `Err(true)` when out of range, `Err(false)` when not a number.
pub fn parse_u64(s: &[u8], max: u64) -> Result<u64, bool> {
    if s.is_empty() {
        return Err(false);
    }
    let mut v: u64 = 0;
    let mut overflow = false;
    for &c in s {
        if !c.is_ascii_digit() {
            return Err(false);
        }
        if !overflow {
            v = v * 10 + (c - b'0') as u64;
            if v > max {
                overflow = true;
            }
        }
    }
    if overflow {
        Err(true)
    } else {
        Ok(v)
    }
}

/// Position of the first `needle` in `s`. URIs and header values are short, where the call
/// and set-up cost of `memchr` dominates; this scans eight bytes per step in a `u64` (the
/// classic "has zero byte" test) and hands long inputs to `memchr`.
#[inline]
pub fn find_byte(needle: u8, s: &[u8]) -> Option<usize> {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    if s.len() >= 64 {
        return memchr::memchr(needle, s);
    }
    let pattern = LO * needle as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])) ^ pattern;
        // Bytes equal to `needle` are now zero. The lowest set bit of the mask is exact (a
        // borrow can only spread upwards from a real zero byte).
        let zero = w.wrapping_sub(LO) & !w & HI;
        if zero != 0 {
            return Some(base + (zero.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == needle)
        .map(|i| base + i)
}

/// Position of the first LF in `s`, for the header-line loop: header lines are mostly 20 to 100
/// bytes, too short for `memchr`'s set-up to pay (see `simd`).
#[inline]
pub fn find_newline(s: &[u8]) -> Option<usize> {
    super::simd::find_newline(s)
}

/// Position of the first `needle` in `s`, eight bytes per step, for a byte that is expected
/// near the start of a long `s` (the colon of a header line).
#[inline]
pub fn find_byte_near(needle: u8, s: &[u8]) -> Option<usize> {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    let pattern = LO * needle as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])) ^ pattern;
        // As in `find_byte`: the lowest set bit marks the first match exactly.
        let zero = w.wrapping_sub(LO) & !w & HI;
        if zero != 0 {
            return Some(base + (zero.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == needle)
        .map(|i| base + i)
}

/// True if `s` holds a space or a tab (sixteen bytes per step on x86_64, see `simd`).
#[inline]
pub fn has_sp_or_ht(s: &[u8]) -> bool {
    super::simd::has_sp_or_ht(s)
}

/// True if `s` holds a space or a tab, eight bytes per step.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
pub fn has_sp_or_ht_swar(s: &[u8]) -> bool {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero = |w: u64| w.wrapping_sub(LO) & !w & HI;
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // A false positive above a real match does not matter: any match answers true.
        if zero(w ^ (LO * b' ' as u64)) | zero(w ^ (LO * b'\t' as u64)) != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&c| c == b' ' || c == b'\t')
}

/// A forward-only cursor over a header value. Positions are indices into `s`.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    pub s: &'a [u8],
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    pub fn new(s: &'a [u8]) -> Self {
        Cursor { s, pos: 0 }
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    #[inline]
    pub fn skip_lws(&mut self) {
        while let Some(c) = self.peek() {
            if is_lws(c) {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// Consumes `c` (after optional LWS on both sides, as SWS/SEMI/COLON etc. allow).
    #[inline]
    pub fn eat_sep(&mut self, c: u8) -> bool {
        let save = self.pos;
        self.skip_lws();
        if self.peek() == Some(c) {
            self.pos += 1;
            self.skip_lws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    #[inline]
    pub fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes a token; returns it, or None if there is none here.
    #[inline]
    pub fn token(&mut self) -> Option<&'a [u8]> {
        let t = self.take_while(is_token_char);
        if t.is_empty() {
            None
        } else {
            Some(t)
        }
    }

    /// Consumes bytes while `f` holds; returns them (possibly empty).
    #[inline]
    pub fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos.min(self.s.len());
        let rest = &self.s[start..];
        let n = rest.iter().position(|&c| !f(c)).unwrap_or(rest.len());
        self.pos = start + n;
        &rest[..n]
    }

    /// Consumes a quoted string starting at `"`; returns the inner bytes (escapes kept).
    /// None if unterminated or not at a quote.
    pub fn quoted(&mut self) -> Option<&'a [u8]> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.pos + 1;
        let mut i = start;
        // Jump from one quote or backslash to the next (16 bytes per step).
        while i < self.s.len() {
            let at = i + super::simd::find_either(b'"', b'\\', &self.s[i..])?;
            if self.s[at] == b'"' {
                self.pos = at + 1;
                return Some(&self.s[start..at]);
            }
            i = at + 2;
        }
        None
    }

    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        &self.s[self.pos.min(self.s.len())..]
    }
}

/// Splits a header value at top-level commas (outside quotes and angle brackets), as the
/// `#element` list rule of RFC 3261 §7.3.1 allows. Yields trimmed elements with their offset
/// relative to the value; an empty element is yielded as empty so callers can reject it.
pub struct CommaSplit<'a> {
    s: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> CommaSplit<'a> {
    pub fn new(s: &'a [u8]) -> Self {
        CommaSplit {
            s,
            pos: 0,
            done: false,
        }
    }
}

impl CommaSplit<'_> {
    /// Where the next element starts (after the comma that ended the last one), or None if
    /// the last element has been yielded.
    pub(crate) fn next_start(&self) -> Option<usize> {
        (!self.done).then_some(self.pos)
    }
}

impl<'a> Iterator for CommaSplit<'a> {
    /// (offset of the element in the value, element bytes without surrounding LWS)
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let s = self.s;
        let start = self.pos;
        let mut i = start;
        let mut in_quote = false;
        let mut in_angle = false;
        while i < s.len() {
            let c = s[i];
            if !COMMA_SPECIAL[c as usize] {
                // Changes no state inside or outside quotes.
                i += 1;
                continue;
            }
            if in_quote {
                match c {
                    b'\\' => i += 1,
                    b'"' => in_quote = false,
                    _ => {}
                }
            } else {
                match c {
                    b'"' => in_quote = true,
                    b'<' => in_angle = true,
                    b'>' => in_angle = false,
                    b',' if !in_angle => break,
                    _ => {}
                }
            }
            i += 1;
        }
        let end = i.min(s.len());
        if i >= s.len() {
            self.done = true;
        } else {
            self.pos = i + 1;
        }
        let raw = &s[start..end];
        let lead = raw.iter().take_while(|&&c| is_lws(c)).count();
        Some((start + lead, trim(raw)))
    }
}

/// `token` bytes (as [`is_token_char`]) for the sixteen-byte scans of `simd`.
pub(crate) struct TokenBytes;
impl ByteSet for TokenBytes {
    const CLASS: ByteClass = ByteClass::new(
        true,
        &[(b'*', b'+'), (b'-', b'.'), (b'0', b'9')],
        b"!%'_`~",
        b"",
    );
}

/// A parameter value without quotes: token plus the `[`, `]` and `:` of an IPv6 host.
pub(crate) struct ValueBytes;
impl ByteSet for ValueBytes {
    const CLASS: ByteClass = ByteClass::new(
        true,
        &[(b'*', b'+'), (b'-', b'.'), (b'0', b':')],
        b"!%'_`~[]",
        b"",
    );
}

/// A Call-ID's bytes: `word` characters (printable ASCII but `#$&,;=^|@`) and `@`.
pub(crate) struct CallIdBytes;
impl ByteSet for CallIdBytes {
    const CLASS: ByteClass = ByteClass::new(false, &[(0x21, 0x7e)], b"", b"#$&,;=^|");
}

/// Skips token bytes from `i`; returns where they stop.
#[inline]
pub fn skip_token(s: &[u8], i: usize) -> usize {
    super::simd::skip::<TokenBytes>(s, i)
}

/// Skips Call-ID bytes (`word` characters and `@`) from `i`: returns where they stop and how
/// many `@` were crossed.
#[inline]
pub fn skip_call_id(s: &[u8], i: usize) -> (usize, u32) {
    if let Some(r) = super::simd::skip_call_id::<CallIdBytes>(s, i) {
        return r;
    }
    let (mut i, mut ats) = (i, 0);
    while let Some(&c) = s.get(i) {
        if !CallIdBytes::CLASS.contains(c) {
            break;
        }
        ats += (c == b'@') as u32;
        i += 1;
    }
    (i, ats)
}

/// Skips unquoted parameter-value bytes (token, `[`, `]`, `:`) from `i`.
#[inline]
pub fn skip_value(s: &[u8], i: usize) -> usize {
    super::simd::skip::<ValueBytes>(s, i)
}

/// Byte classes for [`skip_class`], one bit each: a byte may be in several.
pub mod class {
    /// `token` (RFC 3261 §25.1).
    pub const TOKEN: u8 = 1;
    /// A parameter value without quotes: token plus the `[`, `]` and `:` of an IPv6 host.
    pub const VALUE: u8 = 2;
    /// Host-name bytes: alphanumerics, `-` and `.`.
    pub const HOST: u8 = 4;
    /// Digits and `.`: a host of only these may be an IPv4 address.
    pub const NUMERIC: u8 = 8;
}

const fn class_table() -> [u8; 256] {
    let token = token_table();
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut v = 0;
        if token[i] {
            v |= class::TOKEN | class::VALUE;
        }
        if matches!(c, b'[' | b']' | b':') {
            v |= class::VALUE;
        }
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'.' {
            v |= class::HOST;
        }
        if c.is_ascii_digit() || c == b'.' {
            v |= class::NUMERIC;
        }
        t[i] = v;
        i += 1;
    }
    t
}

static CLASS: [u8; 256] = class_table();

/// The [`class`] bits of a byte.
#[inline]
pub fn class_of(c: u8) -> u8 {
    CLASS[c as usize]
}

/// Skips the bytes from `i` whose [`class`] has the bit `mask`: returns where they stop.
///
/// Header values are short, and a byte-at-a-time loop costs a compare and a branch per byte.
/// Here the classes of eight bytes are AND-ed and tested once; the chunk where the run ends
/// (and the last bytes) go one byte at a time.
#[inline]
pub fn skip_class(s: &[u8], mut i: usize, mask: u8) -> usize {
    while let Some(chunk) = s.get(i..i + 8) {
        let b: &[u8; 8] = chunk.try_into().unwrap_or(&[0; 8]);
        let all = CLASS[b[0] as usize]
            & CLASS[b[1] as usize]
            & CLASS[b[2] as usize]
            & CLASS[b[3] as usize]
            & CLASS[b[4] as usize]
            & CLASS[b[5] as usize]
            & CLASS[b[6] as usize]
            & CLASS[b[7] as usize];
        if all & mask == 0 {
            break;
        }
        i += 8;
    }
    while let Some(&c) = s.get(i) {
        if CLASS[c as usize] & mask == 0 {
            break;
        }
        i += 1;
    }
    i
}

/// True if `s` holds two adjacent dots (an empty host-name label). Every pair of adjacent
/// bytes lies inside one of the eight-byte windows that start seven bytes apart.
#[inline]
pub fn has_double_dot(s: &[u8]) -> bool {
    const LO7: u64 = u64::from_ne_bytes([0x7f; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    const DOTS: u64 = u64::from_ne_bytes([b'.'; 8]);
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // High bit set exactly for the bytes equal to '.': the low seven bits of a byte that
        // differs from '.' are nonzero after the XOR (or its high bit is), and adding 0x7f to
        // seven bits carries into the byte's own high bit only.
        let x = w ^ DOTS;
        let dot = !((x & LO7).wrapping_add(LO7) | x) & HI;
        if dot & (dot >> 8) != 0 {
            return true;
        }
        i += 7;
    }
    s[i.min(s.len())..].windows(2).any(|p| p == b"..")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn comma_split_respects_quotes_and_brackets() {
        let v = br#""a,b" <sip:x@y;p=1,2>;q=1 , <sip:z>"#;
        let parts: Vec<_> = CommaSplit::new(v).map(|(_, p)| p).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], br#""a,b" <sip:x@y;p=1,2>;q=1"#);
        assert_eq!(parts[1], b"<sip:z>");
    }

    #[test]
    fn find_byte_matches_position() {
        let hay: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        for len in 0..hay.len() {
            for needle in [0u8, 1, 7, 0x80, 0xff, b'@', hay[len / 2]] {
                let s = &hay[..len];
                assert_eq!(
                    find_byte(needle, s),
                    s.iter().position(|&c| c == needle),
                    "len {len} needle {needle}"
                );
            }
        }
        assert_eq!(find_byte(b':', b"\x80\x80\x80:"), Some(3));
        assert_eq!(find_byte(0, b"\x01\x00\x01\x00aaaaaaaa"), Some(1));
        for len in 0..hay.len() {
            for at in 0..len {
                let mut s = hay[..len].to_vec();
                s.iter_mut().for_each(|c| *c |= 0x80);
                s[at] = b'\n';
                assert_eq!(find_newline(&s), Some(at), "len {len} at {at}");
            }
            assert_eq!(find_newline(&vec![b'\r'; len]), None);
            let mut s: Vec<u8> = hay[..len].iter().map(|&c| c | 0x80).collect();
            assert!(!has_sp_or_ht(&s));
            assert!(!has_sp_or_ht_swar(&s));
            if len > 0 {
                s[len / 3] = if len % 2 == 0 { b' ' } else { b'\t' };
                assert!(has_sp_or_ht(&s));
                assert!(has_sp_or_ht_swar(&s));
            }
        }
    }

    /// Random inputs for the differential tests of the sixteen-byte scans: mostly bytes of
    /// `common`, sometimes any byte of `rare` or any byte at all. Calls `check` with each
    /// input at every length 0..80, at every buffer offset 0..16 (so every load alignment).
    pub(crate) fn for_random_inputs(common: &[u8], rare: &[u8], mut check: impl FnMut(&[u8])) {
        let mut rng = crate::sip::mutate::Mutator::new(0x2545_f491_4f6c_dd1d);
        let mut next = || rng.next_u64();
        for round in 0..40 {
            let buf: Vec<u8> = (0..96)
                .map(|_| {
                    let r = next();
                    match r % 23 {
                        0 => (r >> 8) as u8,
                        1..=3 => rare[(r >> 8) as usize % rare.len()],
                        _ if round % 4 == 0 => common[(r >> 8) as usize % common.len()],
                        // Long runs of class bytes, as in real values.
                        _ => common[(r >> 8) as usize % common.len().min(8)],
                    }
                })
                .collect();
            for len in 0..80 {
                for off in 0..16 {
                    check(&buf[off..off + len]);
                }
            }
        }
    }

    #[test]
    fn sixteen_byte_class_scans_match_bytewise() {
        let value = |c: u8| is_token_char(c) || matches!(c, b'[' | b']' | b':');
        for c in 0..=255u8 {
            assert_eq!(TokenBytes::CLASS.contains(c), is_token_char(c), "{c}");
            assert_eq!(ValueBytes::CLASS.contains(c), value(c), "{c}");
            assert_eq!(
                CallIdBytes::CLASS.contains(c),
                is_word_char(c) || c == b'@',
                "{c}"
            );
        }
        let reference = |s: &[u8], i: usize, f: &dyn Fn(u8) -> bool| {
            i + s[i.min(s.len())..].iter().take_while(|&&c| f(c)).count()
        };
        let mut checked = 0;
        for_random_inputs(
            b"ab9Z-.!~_%:[]@",
            b";= \t\r\n\"#$&,^|<>{}()/\\?\x7f\x80\xff\x00",
            |s| {
                for i in 0..=s.len() + 1 {
                    assert_eq!(
                        skip_token(s, i),
                        reference(s, i, &is_token_char),
                        "{s:?} {i}"
                    );
                    assert_eq!(skip_value(s, i), reference(s, i, &value), "{s:?} {i}");
                    let end = reference(s, i, &|c| is_word_char(c) || c == b'@');
                    let ats = s[i.min(s.len())..end.min(s.len())]
                        .iter()
                        .filter(|&&c| c == b'@')
                        .count();
                    assert_eq!(skip_call_id(s, i), (end, ats as u32), "{s:?} {i}");
                    checked += 1;
                }
            },
        );
        assert!(checked > 1_000_000, "{checked}");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0068", 255), Ok(68));
        assert_eq!(parse_u64(b"256", 255), Err(true));
        assert_eq!(parse_u64(b"-1", 255), Err(false));
        assert_eq!(parse_u64(b"99999999999999999999999999", 10), Err(true));
    }

    #[test]
    fn quoted_matches_the_bytewise_scan() {
        fn reference(s: &[u8]) -> Option<(&[u8], usize)> {
            let mut i = 1;
            while i < s.len() {
                match s[i] {
                    b'\\' => i += 2,
                    b'"' => return Some((&s[1..i], i + 1)),
                    _ => i += 1,
                }
            }
            None
        }
        let mut rng: u64 = 0x0bad_cafe_1234_5678;
        for _ in 0..100_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = 1 + (rng % 40) as usize;
            let mut s = vec![b'"'];
            s.extend(
                (1..len).map(|k| b"ab\\\"xyz0123456789"[((rng >> (k % 21 * 3)) % 15) as usize]),
            );
            let mut c = Cursor::new(&s);
            let got = c.quoted().map(|q| (q, c.pos));
            assert_eq!(got, reference(&s), "{:?}", String::from_utf8_lossy(&s));
        }
    }

    #[test]
    fn quoted_with_escapes() {
        let mut c = Cursor::new(br#""J \"x\"" <sip:a>"#);
        assert_eq!(c.quoted(), Some(&br#"J \"x\""#[..]));
        assert_eq!(c.rest(), b" <sip:a>");
        let mut c = Cursor::new(br#""open"#);
        assert_eq!(c.quoted(), None);
    }
}
