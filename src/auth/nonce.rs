//! Stateless server nonces (RFC 7616 §3.3 and §5.4–§5.5; RFC 3261 §22.4): the nonce carries
//! its own issue time and is signed, so any shard can check a nonce issued by another
//! without shared state.
//!
//! A nonce is 64 lowercase hex digits encoding 32 bytes:
//!
//! ```text
//! issued (u64 seconds, big endian) | salt (u64) | HMAC-SHA256(secret, issued | salt | realm)[..16]
//! ```
//!
//! The secret is 32 random bytes per server run ([`random_secret`]), shared by all shards.
//! A nonce whose MAC does not verify (tampered, other realm, previous run) is
//! [`NonceStatus::Invalid`]; one older than the TTL is [`NonceStatus::Stale`]; one issued more
//! than [`MAX_FUTURE_SKEW_S`] seconds in the future is invalid. The salt makes nonces issued in
//! the same second distinct; the caller supplies it (a per-shard random prefix and counter).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::digest::{decode_hex, encode_hex};

/// The per-run secret that signs nonces.
pub type Secret = [u8; 32];

/// Length of a nonce in hex digits.
pub const NONCE_HEX_LEN: usize = 64;

/// How far in the future (seconds) a nonce's issue time may be before it is invalid: shards
/// read the clock at slightly different moments.
pub const MAX_FUTURE_SKEW_S: u64 = 5;

/// Default nonce lifetime in seconds.
pub const DEFAULT_NONCE_TTL_S: u32 = 300;

const RAW_LEN: usize = 32;
const MAC_LEN: usize = 16;

/// 32 bytes from the operating system's random source, for [`Secret`].
pub fn random_secret() -> Result<Secret, getrandom::Error> {
    let mut s = [0u8; 32];
    getrandom::getrandom(&mut s)?;
    Ok(s)
}

/// A random u32 (for per-shard salt prefixes); 0 if the OS source fails, which only makes
/// nonces of different shards issued in the same second more likely to coincide.
pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    u32::from_ne_bytes(b)
}

/// What identifies a verified nonce: its issue time and salt (the MAC follows from them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NonceId {
    pub issued_s: u64,
    pub salt: u64,
}

/// The result of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    /// Ours and within its lifetime.
    Fresh(NonceId),
    /// Ours but older than the TTL (answer with `stale=true` if the response is right).
    Stale(NonceId),
    /// Not ours: malformed, tampered, another secret or realm, or from the future.
    Invalid,
}

/// A nonce as text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_HEX_LEN]);

impl Nonce {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl core::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Issues and checks nonces for one realm with one secret. Cheap to clone.
#[derive(Clone)]
pub struct NonceKey {
    mac: Hmac<Sha256>,
    realm: Box<[u8]>,
}

impl NonceKey {
    pub fn new(secret: &Secret, realm: &[u8]) -> NonceKey {
        NonceKey {
            // HMAC accepts keys of any length.
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length"),
            realm: realm.into(),
        }
    }

    fn tag(&self, head: &[u8]) -> Hmac<Sha256> {
        let mut m = self.mac.clone();
        m.update(head);
        m.update(&self.realm);
        m
    }

    /// A nonce issued at `now_ms` with `salt`.
    pub fn issue(&self, now_ms: u64, salt: u64) -> Nonce {
        let mut raw = [0u8; RAW_LEN];
        raw[..8].copy_from_slice(&(now_ms / 1000).to_be_bytes());
        raw[8..16].copy_from_slice(&salt.to_be_bytes());
        let tag = self.tag(&raw[..16]).finalize().into_bytes();
        raw[16..].copy_from_slice(&tag[..MAC_LEN]);
        let mut out = [0u8; NONCE_HEX_LEN];
        encode_hex(&raw, &mut out);
        Nonce(out)
    }

    /// Checks a nonce a client sent back at `now_ms`; the MAC is compared in constant time.
    pub fn check(&self, nonce: &[u8], now_ms: u64, ttl_s: u32) -> NonceStatus {
        let Some(raw) = decode_hex::<RAW_LEN>(nonce) else {
            return NonceStatus::Invalid;
        };
        if self
            .tag(&raw[..16])
            .verify_truncated_left(&raw[16..])
            .is_err()
        {
            return NonceStatus::Invalid;
        }
        let issued_s = u64::from_be_bytes(raw[..8].try_into().unwrap_or_default());
        let salt = u64::from_be_bytes(raw[8..16].try_into().unwrap_or_default());
        let id = NonceId { issued_s, salt };
        let now_s = now_ms / 1000;
        if issued_s > now_s.saturating_add(MAX_FUTURE_SKEW_S) {
            NonceStatus::Invalid
        } else if now_s.saturating_sub(issued_s) > u64::from(ttl_s) {
            NonceStatus::Stale(id)
        } else {
            NonceStatus::Fresh(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn key() -> NonceKey {
        NonceKey::new(&[7; 32], b"example.com")
    }

    #[test]
    fn fresh_round_trip() {
        let k = key();
        let n = k.issue(T0, 42);
        assert_eq!(n.as_bytes().len(), NONCE_HEX_LEN);
        assert!(n.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
        let id = NonceId {
            issued_s: T0 / 1000,
            salt: 42,
        };
        assert_eq!(k.check(n.as_bytes(), T0, 300), NonceStatus::Fresh(id));
        assert_eq!(
            k.check(n.as_bytes(), T0 + 300_999, 300),
            NonceStatus::Fresh(id)
        );
        // Another shard with a clone of the key validates it too.
        assert_eq!(
            k.clone().check(n.as_bytes(), T0, 300),
            NonceStatus::Fresh(id)
        );
    }

    #[test]
    fn upper_case_nonce_is_the_same_nonce() {
        let k = key();
        let n = k.issue(T0, 42);
        let id = NonceId {
            issued_s: T0 / 1000,
            salt: 42,
        };
        let upper = n.as_str().to_ascii_uppercase();
        assert_eq!(k.check(upper.as_bytes(), T0, 300), NonceStatus::Fresh(id));
        let mut mixed = n.as_bytes().to_vec();
        mixed[63] = mixed[63].to_ascii_uppercase();
        mixed[0] = mixed[0].to_ascii_uppercase();
        assert_eq!(k.check(&mixed, T0, 300), NonceStatus::Fresh(id));
    }

    #[test]
    fn distinct_salts_give_distinct_nonces() {
        let k = key();
        assert_ne!(k.issue(T0, 1), k.issue(T0, 2));
        assert_ne!(k.issue(T0, 1), k.issue(T0 + 1000, 1));
    }

    #[test]
    fn expired_is_stale() {
        let k = key();
        let n = k.issue(T0, 1);
        assert!(matches!(
            k.check(n.as_bytes(), T0 + 301_000, 300),
            NonceStatus::Stale(_)
        ));
    }

    #[test]
    fn future_beyond_skew_is_invalid() {
        let k = key();
        let n = k.issue(T0 + (MAX_FUTURE_SKEW_S + 1) * 1000, 1);
        assert_eq!(k.check(n.as_bytes(), T0, 300), NonceStatus::Invalid);
        let n = k.issue(T0 + MAX_FUTURE_SKEW_S * 1000, 1);
        assert!(matches!(
            k.check(n.as_bytes(), T0, 300),
            NonceStatus::Fresh(_)
        ));
    }

    #[test]
    fn tampered_or_foreign_is_invalid() {
        let k = key();
        let n = k.issue(T0, 1);
        // Flip one digit in each part: timestamp, salt, MAC.
        for pos in [15, 31, 63] {
            let mut t = *n.as_bytes().first_chunk::<NONCE_HEX_LEN>().unwrap();
            t[pos] = if t[pos] == b'0' { b'1' } else { b'0' };
            assert_eq!(k.check(&t, T0, 300), NonceStatus::Invalid, "pos {pos}");
        }
        let other_secret = NonceKey::new(&[8; 32], b"example.com");
        assert_eq!(
            other_secret.check(n.as_bytes(), T0, 300),
            NonceStatus::Invalid
        );
        let other_realm = NonceKey::new(&[7; 32], b"example.org");
        assert_eq!(
            other_realm.check(n.as_bytes(), T0, 300),
            NonceStatus::Invalid
        );
        assert_eq!(k.check(b"", T0, 300), NonceStatus::Invalid);
        assert_eq!(k.check(&n.as_bytes()[1..], T0, 300), NonceStatus::Invalid);
        assert_eq!(k.check(&[b'z'; 64], T0, 300), NonceStatus::Invalid);
    }

    #[test]
    fn secrets_are_random() {
        assert_ne!(random_secret().unwrap(), random_secret().unwrap());
    }
}
