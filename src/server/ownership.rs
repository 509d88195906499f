//! AOR ownership (DESIGN.md §1): the owner of an address-of-record is `hash(AOR) % shards`.
//! The hash covers the scheme and the unescaped user part (the host only when there is no
//! user), so every spelling of one AOR lands on the same shard, including the aliases of our
//! own domain (`sip:alice@127.0.0.1` and `sip:alice@localhost` are one user). Pure functions: the
//! receiving shard calls them to decide whether to hand a datagram over.

use crate::sip::uri::{HostKind, Scheme, Unescape, Uri};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline]
fn fnv(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

/// The hash [`aor_hash`] gives a URI of this scheme whose (unescaped) user part is `user`:
/// where the bindings of a user named by an extension live.
pub fn user_aor_hash(scheme: Scheme, user: &[u8]) -> Option<u64> {
    let mut h = scheme_hash(scheme)?;
    for &b in user {
        h = fnv(h, b);
    }
    Some(avalanche(h))
}

fn scheme_hash(scheme: Scheme) -> Option<u64> {
    match scheme {
        Scheme::Sip => Some(fnv(FNV_OFFSET, b's')),
        Scheme::Sips => Some(fnv(FNV_OFFSET, b'S')),
        _ => None,
    }
}

/// Final avalanche so that `% shards` uses well-mixed bits.
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Hash of the AOR of a SIP or SIPS URI: equal for URIs with equal AOR keys (see
/// [`Uri::write_aor`]) and for one user under several host names. None for other schemes.
pub fn aor_hash(uri: &Uri<'_>) -> Option<u64> {
    let mut h = scheme_hash(uri.scheme)?;
    if let Some(user) = uri.user {
        for b in Unescape::new(user) {
            h = fnv(h, b);
        }
    } else {
        h = fnv(h, b'@');
        if uri.host_kind == HostKind::Ipv6 {
            h = fnv(h, b'[');
        }
        for &b in uri.host {
            h = fnv(h, b.to_ascii_lowercase());
        }
    }
    Some(avalanche(h))
}

/// [`aor_hash`] of the AOR whose registrar key is `key` (as [`Uri::write_aor`] writes it:
/// `sip:` or `sips:`, the unescaped user and `@`, the host): where the binding store puts an
/// AOR it loads back. None for a key that is not one.
pub fn key_hash(key: &[u8]) -> Option<u64> {
    let (scheme, rest) = if let Some(r) = key.strip_prefix(b"sip:") {
        (Scheme::Sip, r)
    } else {
        (Scheme::Sips, key.strip_prefix(b"sips:")?)
    };
    let mut h = scheme_hash(scheme)?;
    match rest.iter().rposition(|&b| b == b'@') {
        // The host never holds '@': the last one ends the (unescaped) user.
        Some(at) => {
            for &b in &rest[..at] {
                h = fnv(h, b);
            }
        }
        None => {
            h = fnv(h, b'@');
            let host = match rest.strip_prefix(b"[").and_then(|r| r.strip_suffix(b"]")) {
                Some(v6) => {
                    h = fnv(h, b'[');
                    v6
                }
                None => rest,
            };
            for &b in host {
                h = fnv(h, b.to_ascii_lowercase());
            }
        }
    }
    Some(avalanche(h))
}

/// The shard that owns an AOR hash.
#[inline]
pub fn owner_shard(hash: u64, shards: usize) -> usize {
    (hash % shards.max(1) as u64) as usize
}

/// The shard of `shards` that owns the AOR key `key` (as the registrar writes it; shard 0
/// when it has no owner by hash).
pub fn key_owner(key: &[u8], shards: usize) -> usize {
    key_hash(key).map_or(0, |h| owner_shard(h, shards))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> u64 {
        aor_hash(&Uri::parse(s.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn equal_aors_hash_equal() {
        assert_eq!(
            h("sip:alice@Example.COM"),
            h("sip:%61lice@example.com;transport=udp")
        );
        assert_eq!(h("sip:alice@example.com:5070"), h("sip:alice@example.com"));
        assert_ne!(h("sip:alice@example.com"), h("sips:alice@example.com"));
        assert_ne!(h("sip:alice@example.com"), h("sip:bob@example.com"));
        assert_eq!(h("sip:alice@127.0.0.1"), h("sip:alice@localhost"));
        assert_ne!(h("sip:example.com"), h("sip:example.org"));
        assert!(aor_hash(&Uri::parse(b"tel:+123").unwrap()).is_none());
        assert_eq!(
            user_aor_hash(Scheme::Sip, b"alice"),
            Some(h("sip:%61lice@example.com"))
        );
    }

    #[test]
    fn a_registrar_key_hashes_as_its_uri() {
        for s in [
            "sip:alice@Example.COM",
            "sip:%61lice%40home@example.com;transport=udp",
            "sips:bob@example.com:5061",
            "sip:example.com",
            "sip:[2001:db8::1]:5060",
            "sip:+4930123@127.0.0.1",
        ] {
            let uri = Uri::parse(s.as_bytes()).unwrap();
            let mut key = Vec::new();
            assert!(uri.write_aor(&mut key));
            assert_eq!(key_hash(&key), aor_hash(&uri), "{s}");
        }
        assert_eq!(key_hash(b"tel:+123"), None);
    }

    #[test]
    fn spreads_over_shards() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_shard(h(&format!("sip:user{i}@example.com")), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
