//! SSE2 scans for the parser, 16 bytes per step: the header-line loop's colon and line-end
//! searches, a search for either of two bytes (quotes, angle brackets), and runs of a byte class
//! (host names, URI parts, parameter values, Call-IDs). SSE2 is part of the x86_64 baseline, so
//! no run-time detection is needed; other targets use byte-wise or eight-bytes-per-step code.
//! Every `unsafe` load here states its bounds beside it; the only other `unsafe` of the parser
//! is the header table of `message.rs` (slots past the count are never read).

/// Position of the first LF in `s`, sixteen bytes per step.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn find_newline(s: &[u8]) -> Option<usize> {
    // SAFETY: SSE2 is enabled on every x86_64 target (it is part of the baseline ABI), so
    // calling a function that requires it is sound.
    unsafe { find_sse2(b'\n', s) }
}

/// Position of the first `:` in `s`, sixteen bytes per step.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn find_colon(s: &[u8]) -> Option<usize> {
    // SAFETY: as in `find_newline`.
    unsafe { find_sse2(b':', s) }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn find_sse2(needle: u8, s: &[u8]) -> Option<usize> {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    let lf = _mm_set1_epi8(needle as i8);
    let mut i = 0;
    while i + 16 <= s.len() {
        // SAFETY: `i + 16 <= s.len()`, so the 16 bytes read are inside `s`; `loadu` has no
        // alignment requirement.
        let v = unsafe { _mm_loadu_si128(s.as_ptr().add(i).cast::<__m128i>()) };
        let m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, lf)) as u32;
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 16;
    }
    if s.len() >= 16 {
        // The last 16 bytes, overlapping what was already searched.
        let at = s.len() - 16;
        // SAFETY: `at + 16 == s.len()`: the 16 bytes read are inside `s`.
        let v = unsafe { _mm_loadu_si128(s.as_ptr().add(at).cast::<__m128i>()) };
        // Bits for the bytes before `i` were searched already and hold no match.
        let m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, lf)) as u32;
        return (m != 0).then(|| at + m.trailing_zeros() as usize);
    }
    s.iter().position(|&c| c == needle)
}

/// True if `s` holds a space or a tab, sixteen bytes per step (the Request-URI check of the
/// start line, RFC 3261 §25.1: a URI is 30 to 100 bytes).
/// Position of the first byte equal to `a` or `b` (`a == b` for one byte). For the short
/// values of header parsing, where `memchr`'s dispatch costs more than the search.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn find_either(a: u8, b: u8, s: &[u8]) -> Option<usize> {
    // SAFETY: as in `find_newline`.
    unsafe { find2_sse2(a, b, s) }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn find2_sse2(a: u8, b: u8, s: &[u8]) -> Option<usize> {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let (va, vb) = (_mm_set1_epi8(a as i8), _mm_set1_epi8(b as i8));
    let hits = |v: __m128i| {
        _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, va), _mm_cmpeq_epi8(v, vb))) as u32
    };
    let mut i = 0;
    while i + 16 <= s.len() {
        // SAFETY: `i + 16 <= s.len()`: the 16 bytes read are inside `s`.
        let m = hits(unsafe { _mm_loadu_si128(s.as_ptr().add(i).cast::<__m128i>()) });
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 16;
    }
    if s.len() >= 16 {
        let at = s.len() - 16;
        // SAFETY: `at + 16 == s.len()`: the 16 bytes read are inside `s`. The bytes before
        // `i` were searched already and hold no match.
        let m = hits(unsafe { _mm_loadu_si128(s.as_ptr().add(at).cast::<__m128i>()) });
        return (m != 0).then(|| at + m.trailing_zeros() as usize);
    }
    s.iter().position(|&c| c == a || c == b)
}

/// Position of the first byte equal to `a` or `b` (targets without SSE2 code here).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn find_either(a: u8, b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == a || c == b)
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_sp_or_ht(s: &[u8]) -> bool {
    // SAFETY: as in `find_newline`.
    unsafe { has_sp_or_ht_sse2(s) }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn has_sp_or_ht_sse2(s: &[u8]) -> bool {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let sp = _mm_set1_epi8(b' ' as i8);
    let ht = _mm_set1_epi8(b'\t' as i8);
    let hit = |at: usize| {
        // SAFETY: every caller below passes `at + 16 <= s.len()`, so the 16 bytes read are
        // inside `s`; `loadu` has no alignment requirement.
        let v = unsafe { _mm_loadu_si128(s.as_ptr().add(at).cast::<__m128i>()) };
        _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, sp), _mm_cmpeq_epi8(v, ht))) != 0
    };
    if s.len() < 16 {
        return s.iter().any(|&c| c == b' ' || c == b'\t');
    }
    let mut i = 0;
    while i + 16 <= s.len() {
        if hit(i) {
            return true;
        }
        i += 16;
    }
    // The last 16 bytes, overlapping what was already searched.
    hit(s.len() - 16)
}

/// True if `s` holds a space or a tab (targets without SSE2 code here).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn has_sp_or_ht(s: &[u8]) -> bool {
    super::scan::has_sp_or_ht_swar(s)
}

/// Position of the first LF in `s` (targets without SSE2 code here).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn find_newline(s: &[u8]) -> Option<usize> {
    super::scan::find_byte_near(b'\n', s)
}

/// Position of the first `:` in `s` (targets without SSE2 code here).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn find_colon(s: &[u8]) -> Option<usize> {
    super::scan::find_byte_near(b':', s)
}

/// A set of bytes given as letters (`A-Z`, `a-z`), ranges and single bytes, less `except`.
///
/// Every class scanned here holds letters, digits, `-` and `.`, and the values are mostly made
/// of those: the sixteen-byte scans test only for them (a handful of SSE2 compares; a test of
/// the whole class costs a compare per range or byte, as SSE2 has no byte shuffle for a table
/// lookup), and look up the byte where such a run stops in the class's table.
/// Scanners take the class as the associated constant of a [`ByteSet`] type, so that the table
/// is a constant of their code.
pub struct ByteClass {
    table: [bool; 256],
}

/// A type naming a [`ByteClass`].
pub trait ByteSet {
    const CLASS: ByteClass;
}

impl ByteClass {
    pub const fn new(
        letters: bool,
        ranges: &'static [(u8, u8)],
        bytes: &'static [u8],
        except: &'static [u8],
    ) -> ByteClass {
        let mut table = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            let mut yes = letters && b.is_ascii_alphabetic();
            let mut k = 0;
            while k < ranges.len() {
                yes |= ranges[k].0 <= b && b <= ranges[k].1;
                k += 1;
            }
            k = 0;
            while k < bytes.len() {
                yes |= bytes[k] == b;
                k += 1;
            }
            k = 0;
            while k < except.len() {
                yes &= except[k] != b;
                k += 1;
            }
            table[c] = yes;
            c += 1;
        }
        // The sixteen-byte scans take these bytes as members without a look at the table.
        let mut c = 0;
        while c < 128 {
            let b = c as u8;
            assert!(!(b.is_ascii_alphanumeric() || b == b'-' || b == b'.') || table[c]);
            c += 1;
        }
        ByteClass { table }
    }

    /// True if `c` is in the class.
    #[inline]
    pub fn contains(&self, c: u8) -> bool {
        self.table[c as usize]
    }
}

/// The sixteen bytes that start at `i`, or the last sixteen of `s` when fewer remain, and the
/// shift that moves the movemask bit of byte `i` to bit 0. Requires `i < s.len()` and
/// `s.len() >= 16`. After the shift the bits of bytes past the end are zero.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn window(s: &[u8], i: usize) -> (core::arch::x86_64::__m128i, u32) {
    use core::arch::x86_64::{__m128i, _mm_loadu_si128};
    debug_assert!(i < s.len() && s.len() >= 16);
    let (at, shift) = if i + 16 <= s.len() {
        (i, 0)
    } else {
        (s.len() - 16, i + 16 - s.len())
    };
    // SAFETY: `at + 16 <= s.len()` in both cases (the second since `s.len() >= 16`), so the
    // 16 bytes read are inside `s`; `loadu` has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(s.as_ptr().add(at).cast::<__m128i>()) };
    (v, shift as u32)
}

/// Skips the bytes of `class` from `i`: returns where they stop (`s.len()` at the latest;
/// `i` itself if `i >= s.len()`). Sixteen bytes per step; values shorter than sixteen bytes
/// go byte by byte.
#[inline]
pub fn skip<B: ByteSet>(s: &[u8], i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if s.len() >= 16 {
        // SAFETY: SSE2 is part of the x86_64 baseline (see `find_newline`).
        return unsafe { skip_counting_sse2::<B>(s, i).0 };
    }
    let rest = s.get(i..).unwrap_or_default();
    i + rest
        .iter()
        .position(|&c| !B::CLASS.contains(c))
        .unwrap_or(rest.len())
}

/// [`skip`], also counting the `@` bytes skipped (for Call-IDs; where the count is not used,
/// the compiler drops it).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn skip_counting_sse2<B: ByteSet>(s: &[u8], mut i: usize) -> (usize, u32) {
    use core::arch::x86_64::_mm_movemask_epi8;
    let mut ats = 0;
    while i < s.len() {
        let (v, shift) = window(s, i);
        let (_, _, host) = host_lanes(v);
        let yes = (_mm_movemask_epi8(host) as u32) >> shift;
        // Bits 16 and up of `!yes` are set (and so are those of bytes past the end): `n` is
        // at most the number of bytes left in the window.
        let n = (!yes).trailing_zeros() as usize;
        i += n;
        if n < 16 {
            // The run of letters, digits, `-` and `.` stops here: at the end, at a byte
            // outside the class, or at one of its other bytes (an `@` among them is counted
            // here: the run has none), after which the scan goes on.
            match s.get(i) {
                Some(&c) if B::CLASS.contains(c) => {
                    ats += (c == b'@') as u32;
                    i += 1;
                }
                _ => return (i, ats),
            }
        }
    }
    (i, ats)
}

/// For the bytes of `v`: (letters or `-`, `.`, letters, digits, `-` or `.`), 0xff per lane.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn host_lanes(
    v: core::arch::x86_64::__m128i,
) -> (
    core::arch::x86_64::__m128i,
    core::arch::x86_64::__m128i,
    core::arch::x86_64::__m128i,
) {
    use core::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_or_si128, _mm_set1_epi8, _mm_sub_epi8,
    };
    // `lo <= c <= hi` as `(c - lo) <= hi - lo` in unsigned bytes: the minimum with `hi - lo`
    // leaves exactly those bytes unchanged.
    let range = |x, lo: u8, hi: u8| {
        let t = _mm_sub_epi8(x, _mm_set1_epi8(lo as i8));
        _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8((hi - lo) as i8)), t)
    };
    let letter = range(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', b'z');
    let alpha_dash = _mm_or_si128(letter, _mm_cmpeq_epi8(v, _mm_set1_epi8(b'-' as i8)));
    let dot = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'.' as i8));
    let host = _mm_or_si128(_mm_or_si128(alpha_dash, dot), range(v, b'0', b'9'));
    (alpha_dash, dot, host)
}

/// Host-name bytes (letters, digits, `-`, `.`) from `i`, as `uri::scan_host_name`: where they
/// stop, whether a letter or `-` was seen and whether two dots touch. `None` when `s` is
/// shorter than sixteen bytes (or on targets without SSE2 code here).
#[inline]
pub fn scan_host_name(s: &[u8], i: usize) -> Option<(usize, bool, bool)> {
    #[cfg(target_arch = "x86_64")]
    if s.len() >= 16 {
        // SAFETY: SSE2 is part of the x86_64 baseline (see `find_newline`).
        return Some(unsafe { scan_host_name_sse2(s, i) });
    }
    let _ = (s, i);
    None
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn scan_host_name_sse2(s: &[u8], mut i: usize) -> (usize, bool, bool) {
    use core::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_sub_epi8,
    };
    let (mut alpha, mut double_dot, mut prev_dot) = (false, false, 0u32);
    while i < s.len() {
        let (v, shift) = window(s, i);
        let range = |x, lo: u8, hi: u8| {
            let t = _mm_sub_epi8(x, _mm_set1_epi8(lo as i8));
            _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8((hi - lo) as i8)), t)
        };
        let letter = range(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', b'z');
        let alnum_dash = _mm_or_si128(letter, _mm_cmpeq_epi8(v, _mm_set1_epi8(b'-' as i8)));
        let dot = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'.' as i8));
        let ok = _mm_or_si128(_mm_or_si128(alnum_dash, dot), range(v, b'0', b'9'));
        let ok = (_mm_movemask_epi8(ok) as u32) >> shift;
        let n = (!ok).trailing_zeros();
        // Only the bytes before the first other byte count.
        let keep = (1u32 << n) - 1;
        alpha |= (_mm_movemask_epi8(alnum_dash) as u32 >> shift) & keep != 0;
        let dots = (_mm_movemask_epi8(dot) as u32 >> shift) & keep;
        double_dot |= dots & (dots >> 1 | prev_dot) != 0;
        if n < 16 {
            return (i + n as usize, alpha, double_dot);
        }
        prev_dot = dots >> 15;
        i += 16;
    }
    (i, alpha, double_dot)
}

/// Skips Call-ID bytes (`word` characters and `@`) from `i` and counts the `@`s among them:
/// returns (where they stop, number of `@`). `None` when `s` is shorter than sixteen bytes
/// (or on targets without SSE2 code here).
#[inline]
pub fn skip_call_id<B: ByteSet>(s: &[u8], i: usize) -> Option<(usize, u32)> {
    #[cfg(target_arch = "x86_64")]
    if s.len() >= 16 {
        // SAFETY: SSE2 is part of the x86_64 baseline (see `find_newline`).
        return Some(unsafe { skip_counting_sse2::<B>(s, i) });
    }
    let _ = (s, i);
    None
}

/// A header line's colon and line end in one search: for `s` starting at a header line, the
/// position of the first `:` if it is among the first sixteen bytes, and of the first LF after
/// it. `None` if `s` is shorter than sixteen bytes, the colon is further on (names of 16 bytes
/// or more) or no LF follows it: the caller then searches separately. The first sixteen bytes
/// are loaded once for both searches (most names and many values end within them).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn find_colon_then_newline(s: &[u8]) -> Option<(usize, usize)> {
    // SAFETY: as in `find_newline`.
    unsafe { colon_then_newline_sse2(s) }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn colon_then_newline_sse2(s: &[u8]) -> Option<(usize, usize)> {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let lf = _mm_set1_epi8(b'\n' as i8);
    let load = |at: usize| {
        debug_assert!(at + 16 <= s.len());
        // SAFETY: every caller below passes `at + 16 <= s.len()`, so the 16 bytes read are
        // inside `s`; `loadu` has no alignment requirement.
        unsafe { _mm_loadu_si128(s.as_ptr().add(at).cast::<__m128i>()) }
    };
    if s.len() < 16 {
        return None;
    }
    let v = load(0);
    let colons = _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b':' as i8))) as u32;
    if colons == 0 {
        return None;
    }
    let colon = colons.trailing_zeros() as usize;
    // Only LFs after the colon count (`colon <= 15`, so the shift stays below 32).
    let after = !0u32 << (colon + 1);
    let m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, lf)) as u32 & after;
    if m != 0 {
        return Some((colon, m.trailing_zeros() as usize));
    }
    // Values are mostly 20 to 100 bytes: 32 bytes per step, one mask test for both halves.
    let mut i = 16;
    while i + 32 <= s.len() {
        let a = _mm_cmpeq_epi8(load(i), lf);
        let b = _mm_cmpeq_epi8(load(i + 16), lf);
        if _mm_movemask_epi8(_mm_or_si128(a, b)) != 0 {
            let m = _mm_movemask_epi8(a) as u32 | (_mm_movemask_epi8(b) as u32) << 16;
            return Some((colon, i + m.trailing_zeros() as usize));
        }
        i += 32;
    }
    if i + 16 <= s.len() {
        let m = _mm_movemask_epi8(_mm_cmpeq_epi8(load(i), lf)) as u32;
        if m != 0 {
            return Some((colon, i + m.trailing_zeros() as usize));
        }
        i += 16;
    }
    if i < s.len() {
        // The last 16 bytes, overlapping what was already searched: bytes from the colon on up
        // to `i` hold no LF, bytes up to the colon (the name) are skipped.
        let at = s.len() - 16;
        let skip = (colon + 1).saturating_sub(at);
        let m = _mm_movemask_epi8(_mm_cmpeq_epi8(load(at), lf)) as u32 & (!0u32 << skip);
        return (m != 0).then(|| (colon, at + m.trailing_zeros() as usize));
    }
    None
}

/// A header line's colon and line end in one search (targets without SSE2 code here: never,
/// the caller searches separately).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn find_colon_then_newline(_s: &[u8]) -> Option<(usize, usize)> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn find_either_matches_position() {
        for len in 0..80 {
            for at in 0..=len {
                for other in [at + 1, at + 5, at + 17] {
                    let mut s = vec![b'x'; len];
                    if at < len {
                        s[at] = b'<';
                    }
                    if other < len {
                        s[other] = b';';
                    }
                    let want = s.iter().position(|&c| c == b'<' || c == b';');
                    assert_eq!(super::find_either(b'<', b';', &s), want);
                    assert_eq!(super::find_either(b';', b'<', &s), want);
                    let want = s.iter().position(|&c| c == b';');
                    assert_eq!(super::find_either(b';', b';', &s), want);
                }
            }
        }
    }

    #[test]
    fn find_newline_matches_position() {
        for len in 0..80 {
            for at in 0..=len {
                let mut s = vec![b'a'; len];
                if at < len {
                    s[at] = b'\n';
                }
                if at + 3 < len {
                    s[at + 3] = b'\n';
                }
                assert_eq!(super::find_newline(&s), s.iter().position(|&c| c == b'\n'));
                let colons: Vec<u8> = s
                    .iter()
                    .map(|&c| if c == b'\n' { b':' } else { c })
                    .collect();
                assert_eq!(
                    super::find_colon(&colons),
                    colons.iter().position(|&c| c == b':')
                );
            }
        }
    }

    #[test]
    fn has_sp_or_ht_matches_any() {
        for len in 0..80 {
            for at in 0..=len {
                for c in [b' ', b'\t', b'\n', 0x29, 0xa0] {
                    let mut s = vec![b'a'; len];
                    if at < len {
                        s[at] = c;
                    }
                    assert_eq!(
                        super::has_sp_or_ht(&s),
                        s.iter().any(|&c| c == b' ' || c == b'\t'),
                        "len {len} at {at} byte {c}"
                    );
                }
            }
        }
    }
}
