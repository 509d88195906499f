//! Test support for the parser's differential and random tests: a seeded xorshift generator
//! and the one-byte edit (replace, remove or insert a byte from an alphabet) they apply to their seed
//! values, so every test mutates its inputs the same way.

/// A seeded xorshift64 generator with the one-byte mutation the differential tests use.
pub struct Mutator {
    rng: u64,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator { rng: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// A number below `n`.
    pub fn next(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `seed` with `edits` edits of [`Mutator::mutate`].
    pub fn mutated(&mut self, seed: &[u8], edits: usize, alphabet: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..edits {
            self.mutate(&mut v, alphabet);
        }
        v
    }

    /// One edit at a random position: replace, remove or insert a byte of `alphabet` (an
    /// edit past the end inserts).
    pub fn mutate(&mut self, v: &mut Vec<u8>, alphabet: &[u8]) {
        let at = self.next(v.len() + 1);
        let c = alphabet[self.next(alphabet.len())];
        match self.next(3) {
            0 if at < v.len() => v[at] = c,
            1 if at < v.len() => {
                v.remove(at);
            }
            _ => v.insert(at, c),
        }
    }
}
