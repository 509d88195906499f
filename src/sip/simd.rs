//! The parser's only `unsafe` code: SSE2 searches for the header-line loop, where a colon and
//! a line end are looked for in every header line. SSE2 is part of the x86_64 baseline, so no run-time
//! detection is needed; other targets use the eight-bytes-per-step search of `scan`.

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
