//! Longest-prefix match over dialed numbers: the dial plan's "which route does +4930123 take".
//!
//! A dialed number and a prefix are strings over `0-9 + * #`. Each is encoded as a `u64` of 16
//! left-aligned nibbles (`'0'..='9'` → 1..=10, `'+'` → 11, `'*'` → 12, `'#'` → 13, padding 0).
//! A prefix `P` of length `L` then covers the closed key interval
//! `[key(P) padded with 0, key(P) padded with 0xF]`: a number starts with `P` exactly when its
//! key lies in that interval, and a number shorter than `P` never does (its padding 0 is below
//! every real char). Two prefixes' intervals are either nested (one is a prefix of the other)
//! or disjoint, so [`PrefixMap::build`] flattens them into disjoint sorted intervals, each
//! labelled with the value and length of the longest prefix covering it, and a lookup is one
//! binary search over the interval starts.
//!
//! Memory: at most `2N + 1` intervals of 13 bytes (start `u64`, value `u32`, length `u8`), so at
//! most 26 bytes per prefix. Numbers longer than 16 chars are looked up by their first 16, which
//! is exact because no prefix is longer than 16.

use std::fmt;

/// The longest prefix (and the longest number part looked at) in chars: 16 nibbles in a `u64`.
pub const MAX_PREFIX_LEN: usize = 16;

/// `values` entry of an interval that no prefix covers.
const NO_VALUE: u32 = u32::MAX;

/// An immutable map from prefixes to `u32` values answering "value of the longest prefix of
/// this number".
#[derive(Debug, Clone)]
pub struct PrefixMap {
    /// Sorted, distinct first keys of the disjoint intervals; `starts[0] == 0`.
    starts: Vec<u64>,
    /// Value of the longest prefix covering each interval, or [`NO_VALUE`].
    values: Vec<u32>,
    /// Length of that prefix (0 where no prefix covers the interval).
    lens: Vec<u8>,
    /// Number of prefixes the map was built from.
    prefix_count: usize,
}

/// Why [`PrefixMap::build`] refused its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixError {
    /// The prefix has a char outside `0-9 + * #`.
    BadChar { prefix: String, ch: char },
    /// A prefix of length 0.
    Empty,
    /// A prefix longer than [`MAX_PREFIX_LEN`].
    TooLong { prefix: String },
    /// The same prefix given twice.
    Duplicate { prefix: String },
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixError::BadChar { prefix, ch } => {
                write!(f, "prefix '{prefix}': '{ch}' is not a digit, +, * or #")
            }
            PrefixError::Empty => write!(f, "empty prefix"),
            PrefixError::TooLong { prefix } => {
                write!(
                    f,
                    "prefix '{prefix}': longer than {MAX_PREFIX_LEN} characters"
                )
            }
            PrefixError::Duplicate { prefix } => write!(f, "prefix '{prefix}' is listed twice"),
        }
    }
}

impl std::error::Error for PrefixError {}

/// The nibble of a dialed char, or `None` outside `0-9 + * #`.
#[inline]
fn char_code(byte: u8) -> Option<u64> {
    match byte {
        b'0'..=b'9' => Some(u64::from(byte - b'0') + 1),
        b'+' => Some(11),
        b'*' => Some(12),
        b'#' => Some(13),
        _ => None,
    }
}

/// The key of the first [`MAX_PREFIX_LEN`] chars of `s`, padded with 0 nibbles; `Err(byte)` at
/// the first char of `s` outside the alphabet (all of `s` is checked).
#[inline]
fn encode(s: &[u8]) -> Result<u64, u8> {
    let mut key = 0u64;
    for (i, &byte) in s.iter().enumerate() {
        let code = char_code(byte).ok_or(byte)?;
        if i < MAX_PREFIX_LEN {
            key |= code << (60 - 4 * i);
        }
    }
    Ok(key)
}

/// The last key a prefix of `len` chars whose key is `key` covers: `key` padded with 0xF.
fn interval_end(key: u64, len: usize) -> u64 {
    if len >= MAX_PREFIX_LEN {
        key
    } else {
        key | (u64::MAX >> (4 * len))
    }
}

/// One prefix, checked and encoded, while building.
struct Entry {
    key: u64,
    len: u8,
    value: u32,
}

/// A prefix enclosing the key being swept: where its interval ends and its label.
struct Enclosing {
    end: u64,
    value: u32,
    len: u8,
}

/// The flattened intervals under construction.
#[derive(Default)]
struct Intervals {
    starts: Vec<u64>,
    values: Vec<u32>,
    lens: Vec<u8>,
}

impl Intervals {
    /// Starts an interval at `start` labelled `(value, len)`. One starting at the same key
    /// replaces the last (it was empty); one with the last's label extends it.
    fn push(&mut self, start: u64, value: u32, len: u8) {
        if self.starts.last() == Some(&start) {
            self.starts.pop();
            self.values.pop();
            self.lens.pop();
        }
        if self.values.last() == Some(&value) && self.lens.last() == Some(&len) {
            return;
        }
        self.starts.push(start);
        self.values.push(value);
        self.lens.push(len);
    }

    /// Pops the prefixes of `enclosing` (innermost last) that end before `key` (all of them for
    /// `None`), starting after each the interval of the prefix that then encloses.
    fn close_enclosing(&mut self, enclosing: &mut Vec<Enclosing>, key: Option<u64>) {
        while let Some(innermost) = enclosing.last() {
            if key.is_some_and(|key| key <= innermost.end) {
                break;
            }
            // end < u64::MAX: the highest code is 13, so no key is all 0xF.
            let after = innermost.end + 1;
            enclosing.pop();
            match enclosing.last() {
                Some(outer) => self.push(after, outer.value, outer.len),
                None => self.push(after, NO_VALUE, 0),
            }
        }
    }
}

impl PrefixMap {
    /// Builds the map from `(prefix, value)` pairs in any order, in O(N log N): sort by key,
    /// then one sweep with a stack of the prefixes enclosing the current key.
    ///
    /// Every prefix must be 1..=16 chars of `0-9 + * #`, and no prefix may be given twice.
    /// `u32::MAX` is usable as a value only in the sense that it reads back as "no match".
    pub fn build<'a>(
        entries: impl IntoIterator<Item = (&'a [u8], u32)>,
    ) -> Result<PrefixMap, PrefixError> {
        let mut sorted = Vec::new();
        for (prefix, value) in entries {
            if prefix.is_empty() {
                return Err(PrefixError::Empty);
            }
            let shown = || String::from_utf8_lossy(prefix).into_owned();
            if prefix.len() > MAX_PREFIX_LEN {
                return Err(PrefixError::TooLong { prefix: shown() });
            }
            let key = encode(prefix).map_err(|byte| PrefixError::BadChar {
                prefix: shown(),
                ch: char::from(byte),
            })?;
            let len = prefix.len() as u8;
            sorted.push(Entry { key, len, value });
        }
        // Codes are non-zero, so the key alone identifies a prefix and a parent's key is below
        // every child's: sorting by key puts each prefix after the prefixes that enclose it.
        sorted.sort_unstable_by_key(|entry| entry.key);
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0].key == pair[1].key) {
            return Err(PrefixError::Duplicate {
                prefix: decode(pair[0].key, pair[0].len),
            });
        }

        let mut intervals = Intervals::default();
        intervals.push(0, NO_VALUE, 0);
        let mut enclosing = Vec::with_capacity(MAX_PREFIX_LEN);
        for entry in &sorted {
            intervals.close_enclosing(&mut enclosing, Some(entry.key));
            let end = interval_end(entry.key, usize::from(entry.len));
            enclosing.push(Enclosing {
                end,
                value: entry.value,
                len: entry.len,
            });
            intervals.push(entry.key, entry.value, entry.len);
        }
        intervals.close_enclosing(&mut enclosing, None);

        let Intervals {
            mut starts,
            mut values,
            mut lens,
        } = intervals;
        starts.shrink_to_fit();
        values.shrink_to_fit();
        lens.shrink_to_fit();
        Ok(PrefixMap {
            starts,
            values,
            lens,
            prefix_count: sorted.len(),
        })
    }

    /// (value, length of the matching prefix) of the longest prefix of `number`; `None` if no
    /// prefix matches or `number` has a char outside the alphabet.
    #[inline]
    pub fn longest(&self, number: &[u8]) -> Option<(u32, u8)> {
        let key = encode(number).ok()?;
        // starts[0] == 0 <= key, so the partition point is at least 1.
        let index = self.starts.partition_point(|&start| start <= key) - 1;
        let value = self.values[index];
        (value != NO_VALUE).then(|| (value, self.lens[index]))
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.prefix_count
    }

    /// True if the map has no prefix (every lookup answers `None`).
    pub fn is_empty(&self) -> bool {
        self.prefix_count == 0
    }

    /// Heap bytes held: the capacity of the three vectors.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<u64>()
            + self.values.capacity() * std::mem::size_of::<u32>()
            + self.lens.capacity() * std::mem::size_of::<u8>()
    }
}

/// The prefix of `len` chars whose key is `key` (for error messages).
fn decode(key: u64, len: u8) -> String {
    (0..usize::from(len))
        .map(|i| match (key >> (60 - 4 * i)) & 0xF {
            code @ 1..=10 => char::from(b'0' + code as u8 - 1),
            11 => '+',
            12 => '*',
            _ => '#',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, u32)]) -> PrefixMap {
        PrefixMap::build(entries.iter().map(|&(p, v)| (p.as_bytes(), v))).unwrap()
    }

    fn build_err(entries: &[(&str, u32)]) -> PrefixError {
        PrefixMap::build(entries.iter().map(|&(p, v)| (p.as_bytes(), v))).unwrap_err()
    }

    #[test]
    fn nested_prefixes_match_the_longest() {
        let m = map(&[("+4930", 3), ("+4", 1), ("+49", 2)]);
        assert_eq!(m.len(), 3);
        assert_eq!(m.longest(b"+4930123456"), Some((3, 5)));
        assert_eq!(m.longest(b"+4931"), Some((2, 3)));
        assert_eq!(m.longest(b"+493"), Some((2, 3)));
        assert_eq!(m.longest(b"+49401234"), Some((2, 3)));
        assert_eq!(m.longest(b"+44207"), Some((1, 2)));
        assert_eq!(m.longest(b"+4"), Some((1, 2)));
        // Between the children of +4: below +49, above +49's interval, and past +4930's.
        assert_eq!(m.longest(b"+48"), Some((1, 2)));
        assert_eq!(m.longest(b"+4#"), Some((1, 2)));
        assert_eq!(m.longest(b"+4939"), Some((2, 3)));
        assert_eq!(m.longest(b"+5"), None);
        assert_eq!(m.longest(b"+3999"), None);
        assert_eq!(m.longest(b"4930"), None);
        assert_eq!(m.longest(b""), None);
    }

    #[test]
    fn number_equal_to_a_prefix_matches_it() {
        let m = map(&[("+49", 2), ("+4930", 3)]);
        assert_eq!(m.longest(b"+49"), Some((2, 3)));
        assert_eq!(m.longest(b"+4930"), Some((3, 5)));
    }

    #[test]
    fn number_shorter_than_a_prefix_does_not_match_it() {
        let m = map(&[("+4930", 3)]);
        assert_eq!(m.longest(b"+493"), None);
        assert_eq!(m.longest(b"+"), None);
    }

    #[test]
    fn empty_map_matches_nothing() {
        let m = PrefixMap::build(std::iter::empty()).unwrap();
        assert!(m.is_empty());
        assert_eq!(m.len(), 0);
        assert_eq!(m.longest(b"+4930123"), None);
        assert_eq!(m.longest(b""), None);
    }

    #[test]
    fn star_and_hash_are_chars_like_digits() {
        let m = map(&[("*", 1), ("*21#", 2), ("#", 3), ("*2", 4)]);
        assert_eq!(m.longest(b"*21#"), Some((2, 4)));
        assert_eq!(m.longest(b"*21*"), Some((4, 2)));
        assert_eq!(m.longest(b"*9"), Some((1, 1)));
        assert_eq!(m.longest(b"#31#0301234"), Some((3, 1)));
        assert_eq!(m.longest(b"+49"), None);
    }

    #[test]
    fn number_with_a_char_outside_the_alphabet_matches_nothing() {
        let m = map(&[("+49", 2)]);
        assert_eq!(m.longest(b"+49 30"), None);
        assert_eq!(m.longest(b"+4930123456789012x"), None);
    }

    #[test]
    fn numbers_longer_than_16_chars_match_by_their_first_16() {
        let m = map(&[("+493012345678901", 7), ("+49", 2)]);
        assert_eq!(m.longest(b"+4930123456789012345"), Some((7, 16)));
        assert_eq!(m.longest(b"+4930123456789022345"), Some((2, 3)));
    }

    #[test]
    fn sixteen_char_prefix_is_accepted() {
        let m = map(&[("+493012345678901", 7)]);
        assert_eq!(m.longest(b"+493012345678901"), Some((7, 16)));
        assert_eq!(m.longest(b"+493012345678902"), None);
    }

    #[test]
    fn duplicate_prefix_is_rejected() {
        let err = build_err(&[("+49", 1), ("+4", 2), ("+49", 3)]);
        assert_eq!(
            err,
            PrefixError::Duplicate {
                prefix: "+49".into()
            }
        );
        assert_eq!(err.to_string(), "prefix '+49' is listed twice");
    }

    #[test]
    fn bad_char_is_rejected() {
        let err = build_err(&[("+49x", 1)]);
        assert_eq!(
            err,
            PrefixError::BadChar {
                prefix: "+49x".into(),
                ch: 'x'
            }
        );
        assert_eq!(
            err.to_string(),
            "prefix '+49x': 'x' is not a digit, +, * or #"
        );
    }

    #[test]
    fn too_long_is_rejected() {
        let err = build_err(&[("+4930123456789012", 1)]);
        assert_eq!(
            err,
            PrefixError::TooLong {
                prefix: "+4930123456789012".into()
            }
        );
        assert!(err.to_string().contains("+4930123456789012"));
    }

    #[test]
    fn empty_prefix_is_rejected() {
        assert_eq!(build_err(&[("+49", 1), ("", 2)]), PrefixError::Empty);
    }

    #[test]
    fn memory_is_at_most_26_bytes_per_prefix() {
        let m = map(&[("+4", 1), ("+49", 2), ("+4930", 3), ("+1", 4), ("*", 5)]);
        assert!(m.heap_bytes() <= 26 * m.len() + 13, "{}", m.heap_bytes());
    }

    /// xorshift64: deterministic pseudo-random numbers without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A string of `len` chars, mostly digits, sometimes `+`, `*` or `#`.
        fn dialed(&mut self, len: usize) -> Vec<u8> {
            const ALPHABET: &[u8] = b"0123456789+*#";
            (0..len)
                .map(|_| {
                    if self.below(8) == 0 {
                        ALPHABET[self.below(13) as usize]
                    } else {
                        b'0' + self.below(4) as u8
                    }
                })
                .collect()
        }
    }

    #[test]
    fn random_prefixes_match_a_naive_longest_prefix_scan() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut prefixes: Vec<(Vec<u8>, u32)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while prefixes.len() < 2_000 {
            let len = 1 + rng.below(MAX_PREFIX_LEN as u64) as usize;
            // Short prefixes are few, so nesting is frequent.
            let len = if rng.below(2) == 0 { len.min(6) } else { len };
            let prefix = rng.dialed(len);
            if seen.insert(prefix.clone()) {
                let value = prefixes.len() as u32;
                prefixes.push((prefix, value));
            }
        }
        let m = PrefixMap::build(prefixes.iter().map(|(p, v)| (p.as_slice(), *v))).unwrap();
        assert_eq!(m.len(), prefixes.len());
        assert!(m.heap_bytes() <= 26 * m.len() + 13);

        let mut matched = 0;
        for _ in 0..20_000 {
            let len = rng.below(20) as usize;
            let number = rng.dialed(len);
            let naive = prefixes
                .iter()
                .filter(|(p, _)| number.starts_with(p))
                .max_by_key(|(p, _)| p.len())
                .map(|(p, v)| (*v, p.len() as u8));
            assert_eq!(
                m.longest(&number),
                naive,
                "number {}",
                String::from_utf8_lossy(&number)
            );
            matched += usize::from(naive.is_some());
        }
        // The comparison means something only if both hits and misses occur.
        assert!(matched > 1_000 && matched < 19_000, "{matched} matched");
    }
}
