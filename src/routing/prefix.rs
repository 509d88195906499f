//! Longest-prefix match over dialed numbers: the dial plan's "which route does +4930123 take".
//!
//! A dialed number and a prefix are strings over `0-9 + * #`. Each is encoded as a `u64` of 16
//! left-aligned nibbles (`'0'..='9'` → 1..=10, `'+'` → 11, `'*'` → 12, `'#'` → 13, padding 0).
//! A prefix `P` of length `L` then covers the closed key interval
//! `[key(P) padded with 0, key(P) padded with 0xF]`: a number starts with `P` exactly when its
//! key lies in that interval, and a number shorter than `P` never does (its padding 0 is below
//! every real char). Two prefixes' intervals are either nested (one is a prefix of the other)
//! or disjoint, so [`PrefixMap::build`] flattens them into at most `2N + 1` disjoint sorted
//! intervals, each labelled with the value and length of the longest prefix covering it.
//! Numbers longer than 16 chars are looked up by their first 16, which is exact because no
//! prefix is longer than 16.
//!
//! Layout: the intervals are cut into blocks of [`BLOCK_LEN`], each holding its intervals'
//! starts (`u64`) and values (`u32`) side by side (192 bytes, 3 cache lines). A lookup finds
//! the block with a radix table on the key's bits after those every block start shares (the
//! leading `+` of E.164 numbers) and a binary search of the block first starts in that
//! bucket (16 bits are four digits, and a digit uses 10 of a nibble's 16 codes, so with a
//! million prefixes a bucket in use holds ~7 blocks: ~3 probes of about 1.5 MB of index that
//! stays in the last-level cache), then takes
//! the last interval of the block starting at or below the key, reading the whole block so
//! that its cache lines load together. A lookup so pays about one cache miss, and no TLB
//! miss on top where the blocks get 2 MB pages. A single binary search over all the starts
//! (16 MB for a million prefixes) paid one for each of its last ~7 probes: on the 2-core VM
//! this was written on, 0.6-1.4 µs per lookup. In the dial-plan benchmark (two lookups and
//! a row of costs per decision, all loading at once) blocks of 16 intervals were faster than
//! blocks of 32 and 64 (6 and 12 lines, which the two lookups had to wait for together).
//!
//! A caller that looks a number up in several maps (the dial plan: routes and rates) starts
//! every lookup first ([`PrefixMap::start`] finds the block in the cached index and prefetches
//! its lines) and finishes them after ([`Lookup::finish`]), so that it waits for memory once
//! instead of once per map.
//!
//! Memory: 12 bytes per interval plus at most 1 byte of index (a block start and two radix
//! buckets per 16 intervals) and one partly filled last block, so at most ~26 bytes per
//! prefix. Adjacent intervals with the same value are one
//! (prefixes sharing a value, such as rates with the same cost vector, cost less).

use std::fmt;

/// The longest prefix (and the longest number part looked at) in chars: 16 nibbles in a `u64`.
pub const MAX_PREFIX_LEN: usize = 16;

/// `values` entry of an interval that no prefix covers.
const NO_VALUE: u32 = u32::MAX;

/// Intervals per block: its starts and values are 3 cache lines, loaded together by a lookup.
pub const BLOCK_LEN: usize = 16;

/// An immutable map from prefixes to `u32` values answering "value of the longest prefix of
/// this number".
#[derive(Clone)]
pub struct PrefixMap {
    /// The first start of each block; `block_starts[0] == 0`.
    block_starts: Vec<u64>,
    /// Radix index into `block_starts` by `radix.bits` bits of the key (after the bits every
    /// block start shares): the blocks whose first start is in bucket `r` are
    /// `bucket_first_block[r]..bucket_first_block[r + 1]`.
    bucket_first_block: Vec<u32>,
    radix: Radix,
    blocks: Vec<Block>,
    /// Number of prefixes the map was built from.
    prefix_count: usize,
}

/// [`BLOCK_LEN`] consecutive intervals. The last block is padded with intervals starting at
/// `u64::MAX`, above every key (no char code is 0xF). Aligned to a cache line, so that it
/// spans exactly 3.
#[derive(Clone)]
#[repr(C, align(64))]
pub struct Block {
    /// Sorted, distinct first keys of the intervals.
    starts: [u64; BLOCK_LEN],
    /// Value of the longest prefix covering each interval, or [`NO_VALUE`].
    values: [u32; BLOCK_LEN],
}

/// A dialed number as every map of a plan looks it up: encoded once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u64);

impl Key {
    /// The key of `number`'s first 16 chars; `None` if it has a char outside `0-9 + * #`.
    #[inline]
    pub fn of(number: &[u8]) -> Option<Key> {
        encode(number).ok().map(Key)
    }
}

/// A lookup started by [`PrefixMap::start`]: its block is on its way into the cache.
pub struct Lookup<'m> {
    block: &'m Block,
    index: usize,
    key: u64,
}

impl Lookup<'_> {
    /// The value of the longest prefix of the number, or `None`.
    #[inline]
    pub fn finish(self) -> Option<u32> {
        let value = self.block.values[self.position()];
        (value != NO_VALUE).then_some(value)
    }

    /// The index of the key's block: a caller keeping a table beside the blocks, `BLOCK_LEN`
    /// entries per block (see [`PrefixMap::block_values`]), can prefetch its part at once.
    #[inline]
    pub fn block(&self) -> usize {
        self.index
    }

    /// The key's interval as an index over every block's intervals (`block * BLOCK_LEN + i`):
    /// the entry of such a table that belongs to the key.
    #[inline]
    pub fn slot(&self) -> usize {
        self.index * BLOCK_LEN + self.position()
    }

    /// The position in the block of the last interval starting at or below the key. Looping
    /// over the whole block (no early exit, no dependent index) lets its cache lines load
    /// together.
    #[inline]
    fn position(&self) -> usize {
        let mut found = 0;
        for i in 0..BLOCK_LEN {
            if self.block.starts[i] <= self.key {
                found = i;
            }
        }
        found
    }
}

/// Asks the CPU to load every cache line of `value` (a hint: nothing happens where the
/// architecture has no prefetch instruction here).
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    prefetch_slice(std::slice::from_ref(value));
}

/// [`prefetch`] for every cache line a slice touches (from the line of its first byte to the
/// line of its last, whatever its alignment).
#[inline(always)]
pub fn prefetch_slice<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(values);
        if bytes == 0 {
            return;
        }
        let first = values.as_ptr() as *const i8;
        let misalign = first as usize % 64;
        for offset in (0..misalign + bytes).step_by(64) {
            // SAFETY: a prefetch is a hint that never faults, whatever the address; the
            // addresses are formed with wrapping arithmetic (the first line may begin before
            // the slice), so no out-of-bounds pointer is made with `add`. Measured: the dial
            // plan's two lookups (routes and rates) wait for memory once instead of twice
            // (benches/dial_plan.rs).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(first.wrapping_sub(misalign).wrapping_add(offset))
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

impl fmt::Debug for PrefixMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixMap")
            .field("prefixes", &self.prefix_count)
            .field("blocks", &self.blocks.len())
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
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

/// The nibble of every byte (`'0'..='9'` → 1..=10, `'+'` → 11, `'*'` → 12, `'#'` → 13), 0 for
/// a byte outside the alphabet: a number is encoded by table lookups, without a branch per
/// char.
const CODES: [u8; 256] = {
    let mut codes = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        codes[byte] = match byte as u8 {
            b'0'..=b'9' => byte as u8 - b'0' + 1,
            b'+' => 11,
            b'*' => 12,
            b'#' => 13,
            _ => 0,
        };
        byte += 1;
    }
    codes
};

/// The key of the first [`MAX_PREFIX_LEN`] chars of `s`, padded with 0 nibbles; `Err(byte)` at
/// the first char of `s` outside the alphabet (all of `s` is checked).
#[inline]
fn encode(s: &[u8]) -> Result<u64, u8> {
    let mut key = 0u64;
    let mut all_valid = true;
    for (i, &byte) in s.iter().take(MAX_PREFIX_LEN).enumerate() {
        let code = CODES[byte as usize];
        all_valid &= code != 0;
        key |= u64::from(code) << (60 - 4 * i);
    }
    for &byte in s.iter().skip(MAX_PREFIX_LEN) {
        all_valid &= CODES[byte as usize] != 0;
    }
    if all_valid {
        Ok(key)
    } else {
        Err(*s.iter().find(|&&b| CODES[b as usize] == 0).unwrap_or(&0))
    }
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
}

/// The flattened intervals under construction, sorted by start.
#[derive(Default)]
struct Intervals {
    starts: Vec<u64>,
    values: Vec<u32>,
}

impl Intervals {
    /// Starts an interval at `start` labelled `value`. One starting at the same key replaces
    /// the last (it was empty); one with the last's value extends it.
    fn push(&mut self, start: u64, value: u32) {
        if self.starts.last() == Some(&start) {
            self.starts.pop();
            self.values.pop();
        }
        if self.values.last() == Some(&value) {
            return;
        }
        self.starts.push(start);
        self.values.push(value);
    }

    /// Cuts the intervals into blocks; returns the blocks' first starts and the blocks.
    fn into_blocks(self) -> (Vec<u64>, Vec<Block>) {
        let block_count = self.starts.len().div_ceil(BLOCK_LEN);
        let mut block_starts = Vec::with_capacity(block_count);
        let mut blocks: Vec<Block> = Vec::with_capacity(block_count);
        advise_huge_pages(&blocks);
        for first in (0..self.starts.len()).step_by(BLOCK_LEN) {
            let last = (first + BLOCK_LEN).min(self.starts.len());
            let mut block = Block {
                starts: [u64::MAX; BLOCK_LEN],
                values: [NO_VALUE; BLOCK_LEN],
            };
            let filled = last - first;
            block.starts[..filled].copy_from_slice(&self.starts[first..last]);
            block.values[..filled].copy_from_slice(&self.values[first..last]);
            block_starts.push(self.starts[first]);
            blocks.push(block);
        }
        (block_starts, blocks)
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
                Some(outer) => self.push(after, outer.value),
                None => self.push(after, NO_VALUE),
            }
        }
    }
}

/// Asks the kernel to back a large table (a map's blocks, the plan's cost vectors) with 2 MB
/// pages (transparent huge pages, where enabled as `madvise`) before it is written: a
/// lookup's random access then rarely misses the TLB too.
pub fn advise_huge_pages<T>(table: &Vec<T>) {
    const HUGE: usize = 2 << 20;
    let bytes = table.capacity() * std::mem::size_of::<T>();
    if bytes < 2 * HUGE {
        return;
    }
    let start = (table.as_ptr() as usize).next_multiple_of(HUGE);
    let end = (table.as_ptr() as usize + bytes) & !(HUGE - 1);
    if end > start {
        // SAFETY: the range lies inside the vector's own allocation, aligned to 2 MB;
        // MADV_HUGEPAGE changes how the kernel backs it, never its contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

impl PrefixMap {
    /// Builds the map from `(prefix, value)` pairs in any order, in O(N log N): sort by key,
    /// then one sweep with a stack of the prefixes enclosing the current key, which yields the
    /// intervals in order.
    ///
    /// Every prefix must be 1..=16 chars of `0-9 + * #`, and no prefix may be given twice.
    /// Values must be below `u32::MAX`, which marks "no prefix" inside the map: a prefix given
    /// `u32::MAX` reads back as no match.
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
        intervals.push(0, NO_VALUE);
        let mut enclosing = Vec::with_capacity(MAX_PREFIX_LEN);
        for entry in &sorted {
            intervals.close_enclosing(&mut enclosing, Some(entry.key));
            let end = interval_end(entry.key, usize::from(entry.len));
            enclosing.push(Enclosing {
                end,
                value: entry.value,
            });
            intervals.push(entry.key, entry.value);
        }
        intervals.close_enclosing(&mut enclosing, None);

        let (block_starts, blocks) = intervals.into_blocks();
        let (radix, bucket_first_block) = radix_index(&block_starts);
        Ok(PrefixMap {
            block_starts,
            bucket_first_block,
            radix,
            blocks,
            prefix_count: sorted.len(),
        })
    }

    /// The value of the longest prefix of `number`; `None` if no prefix matches or `number`
    /// has a char outside the alphabet.
    pub fn longest(&self, number: &[u8]) -> Option<u32> {
        self.start(Key::of(number)?).finish()
    }

    /// Starts looking `key` up: finds its block in the index (small enough to stay cached)
    /// and prefetches the block's lines; [`Lookup::finish`] then reads them.
    #[inline]
    pub fn start(&self, key: Key) -> Lookup<'_> {
        let key = key.0;
        let index = match self.radix.place(key) {
            Place::First => 0,
            Place::Last => self.blocks.len() - 1,
            Place::Bucket(bucket) => {
                let first = self.bucket_first_block[bucket] as usize;
                let end = self.bucket_first_block[bucket + 1] as usize;
                // The key's block is the last one starting at or below it: in its bucket, or
                // the last one before (block 0 is in bucket 0, so `first > 0` in any later
                // bucket).
                first + self.block_starts[first..end].partition_point(|&start| start <= key) - 1
            }
        };
        let block = &self.blocks[index];
        prefetch(block);
        Lookup { block, index, key }
    }

    /// Every block's values in order, `BLOCK_LEN` each (`None` where no prefix covers the
    /// interval, and for the padding of the last block): what a table indexed by
    /// [`Lookup::slot`] is built from.
    pub fn block_values(&self) -> impl Iterator<Item = Option<u32>> + '_ {
        self.blocks
            .iter()
            .flat_map(|b| b.values.iter().map(|&v| (v != NO_VALUE).then_some(v)))
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.prefix_count
    }

    /// True if the map has no prefix (every lookup answers `None`).
    pub fn is_empty(&self) -> bool {
        self.prefix_count == 0
    }

    /// Heap bytes held: the capacity of the block and radix indexes and of the blocks.
    pub fn heap_bytes(&self) -> usize {
        self.block_starts.capacity() * std::mem::size_of::<u64>()
            + self.bucket_first_block.capacity() * std::mem::size_of::<u32>()
            + self.blocks.capacity() * std::mem::size_of::<Block>()
    }
}

/// The radix bucket of `key`: its top `radix_bits` bits (bucket 0 for 0 bits).
#[inline]
fn bucket_of(key: u64, radix_bits: u32) -> usize {
    key.checked_shr(64 - radix_bits).unwrap_or(0) as usize
}

/// Which bits of a key the radix index reads: `bits` bits after the `skip` leading bits that
/// every block start but the first (which is 0) has in common (`common`; with dialed numbers
/// at least the `+`). Skipping them puts the buckets on the digits that differ (10 of every
/// 16 codes of a nibble are digits, so about 10,000 of 65,536 buckets are in use for E.164
/// numbers), and the search in a bucket is short.
#[derive(Clone, Copy, Debug)]
struct Radix {
    skip: u32,
    common: u64,
    bits: u32,
}

/// Where a key's block is.
enum Place {
    /// Below every block start but the first: block 0.
    First,
    /// Above every block start: the last block.
    Last,
    /// In this bucket, or the last block before it.
    Bucket(usize),
}

impl Radix {
    #[inline]
    fn place(&self, key: u64) -> Place {
        if self.skip > 0 {
            let top = key >> (64 - self.skip);
            if top < self.common {
                return Place::First;
            }
            if top > self.common {
                return Place::Last;
            }
        }
        Place::Bucket(bucket_of(key << self.skip, self.bits))
    }

    /// The bucket of block `i` (block 0 counts as starting at 0, below every key).
    fn bucket_of_block(&self, block_starts: &[u64], i: usize) -> usize {
        if i == 0 {
            0
        } else {
            bucket_of(block_starts[i] << self.skip, self.bits)
        }
    }
}

/// The radix for `block_starts` and, per bucket, the first block starting in it or later.
/// About two buckets per block, at most 16 bits: at most 8 bytes per block and 256 KB.
fn radix_index(block_starts: &[u64]) -> (Radix, Vec<u32>) {
    let skip = match block_starts {
        [_, second, .., last] => (second ^ last).leading_zeros().min(60),
        // One block after the first: all of its bits are common (at most 60 skipped).
        [_, _] => 60,
        _ => 0,
    };
    let common = match block_starts {
        [_, second, ..] if skip > 0 => second >> (64 - skip),
        _ => 0,
    };
    let radix = Radix {
        skip,
        common,
        bits: (block_starts.len().ilog2() + 1).min(16),
    };
    let buckets = 1usize << radix.bits;
    let mut bucket_first_block = Vec::with_capacity(buckets + 1);
    let mut block = 0;
    for bucket in 0..=buckets {
        while block < block_starts.len() && radix.bucket_of_block(block_starts, block) < bucket {
            block += 1;
        }
        bucket_first_block.push(block as u32);
    }
    (radix, bucket_first_block)
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
        assert_eq!(m.longest(b"+4930123456"), Some(3));
        assert_eq!(m.longest(b"+4931"), Some(2));
        assert_eq!(m.longest(b"+493"), Some(2));
        assert_eq!(m.longest(b"+49401234"), Some(2));
        assert_eq!(m.longest(b"+44207"), Some(1));
        assert_eq!(m.longest(b"+4"), Some(1));
        // Between the children of +4: below +49, above +49's interval, and past +4930's.
        assert_eq!(m.longest(b"+48"), Some(1));
        assert_eq!(m.longest(b"+4#"), Some(1));
        assert_eq!(m.longest(b"+4939"), Some(2));
        assert_eq!(m.longest(b"+5"), None);
        assert_eq!(m.longest(b"+3999"), None);
        assert_eq!(m.longest(b"4930"), None);
        assert_eq!(m.longest(b""), None);
    }

    #[test]
    fn number_equal_to_a_prefix_matches_it() {
        let m = map(&[("+49", 2), ("+4930", 3)]);
        assert_eq!(m.longest(b"+49"), Some(2));
        assert_eq!(m.longest(b"+4930"), Some(3));
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
        assert_eq!(m.longest(b"*21#"), Some(2));
        assert_eq!(m.longest(b"*21*"), Some(4));
        assert_eq!(m.longest(b"*9"), Some(1));
        assert_eq!(m.longest(b"#31#0301234"), Some(3));
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
        assert_eq!(m.longest(b"+4930123456789012345"), Some(7));
        assert_eq!(m.longest(b"+4930123456789022345"), Some(2));
    }

    #[test]
    fn sixteen_char_prefix_is_accepted() {
        let m = map(&[("+493012345678901", 7)]);
        assert_eq!(m.longest(b"+493012345678901"), Some(7));
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

    /// The most heap `build` may take for `prefixes`: 12 bytes per interval (at most 2N + 1),
    /// 8 + 16 bytes of index per block, and the padding of the last block.
    fn max_heap_bytes(prefixes: usize) -> usize {
        let intervals = 2 * prefixes + 1;
        intervals * 12 + intervals.div_ceil(BLOCK_LEN) * 24 + 4 + std::mem::size_of::<Block>()
    }

    #[test]
    fn memory_is_12_bytes_per_interval_plus_index_and_last_block() {
        assert_eq!(std::mem::size_of::<Block>(), 12 * BLOCK_LEN);
        let m = map(&[("+4", 1), ("+49", 2), ("+4930", 3), ("+1", 4), ("*", 5)]);
        assert!(
            m.heap_bytes() <= max_heap_bytes(m.len()),
            "{}",
            m.heap_bytes()
        );
    }

    #[test]
    fn every_fill_of_the_last_block_is_searched() {
        // n adjacent prefixes +1000, +1001, ... make about n + 2 intervals: this walks the last
        // block through every fill level and past several block boundaries.
        let prefixes: Vec<String> = (0..200).map(|i| format!("+1{:03}", i * 3)).collect();
        for n in 0..prefixes.len() {
            let m = PrefixMap::build(
                prefixes[..n]
                    .iter()
                    .zip(0..)
                    .map(|(p, v)| (p.as_bytes(), v)),
            )
            .unwrap();
            for i in 0..600 {
                let number = format!("+1{i:03}55");
                let expected = (i % 3 == 0 && i / 3 < n).then_some((i / 3) as u32);
                assert_eq!(
                    m.longest(number.as_bytes()),
                    expected,
                    "{n} prefixes, {number}"
                );
            }
            assert_eq!(m.longest(b"+0"), None);
            assert_eq!(m.longest(b"+2"), None);
        }
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

    /// Checks the map's answer for `number` against a scan of every prefix; true if some
    /// prefix matched.
    fn matches_naive_scan(m: &PrefixMap, prefixes: &[(Vec<u8>, u32)], number: &[u8]) -> bool {
        let naive = prefixes
            .iter()
            .filter(|(p, _)| number.starts_with(p))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, v)| *v);
        assert_eq!(
            m.longest(number),
            naive,
            "number {}",
            String::from_utf8_lossy(number)
        );
        naive.is_some()
    }

    #[test]
    fn prefixes_sharing_their_head_match_a_naive_scan_inside_and_outside_it() {
        // Every prefix starts with +49: the radix skips those bits, and numbers below and
        // above them (+48..., +5..., 0...) must still find the first and the last block.
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut prefixes: Vec<(Vec<u8>, u32)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while prefixes.len() < 3_000 {
            let len = 1 + rng.below(8) as usize;
            let mut prefix = b"+49".to_vec();
            prefix.extend(rng.dialed(len));
            if seen.insert(prefix.clone()) {
                let value = prefixes.len() as u32;
                prefixes.push((prefix, value));
            }
        }
        let m = PrefixMap::build(prefixes.iter().map(|(p, v)| (p.as_slice(), *v))).unwrap();
        assert!(m.radix.skip >= 12, "{:?}", m.radix);
        let heads: [&[u8]; 7] = [b"+49", b"+49", b"+4", b"+48", b"+5", b"0", b"#"];
        let mut matched = 0;
        for i in 0..20_000 {
            let mut number = heads[i % heads.len()].to_vec();
            let len = rng.below(12) as usize;
            number.extend(rng.dialed(len));
            matched += usize::from(matches_naive_scan(&m, &prefixes, &number));
        }
        assert!(matched > 1_000 && matched < 19_000, "{matched} matched");
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
        assert!(m.heap_bytes() <= max_heap_bytes(m.len()));
        assert!(m.blocks.len() > 10, "{} blocks", m.blocks.len());
        assert!(m.radix.bits >= 3, "{:?}", m.radix);

        let mut matched = 0;
        for _ in 0..20_000 {
            let len = rng.below(20) as usize;
            let number = rng.dialed(len);
            matched += usize::from(matches_naive_scan(&m, &prefixes, &number));
        }
        // The comparison means something only if both hits and misses occur.
        assert!(matched > 1_000 && matched < 19_000, "{matched} matched");
    }
}
