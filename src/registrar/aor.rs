//! The record of one address-of-record in the location service (RFC 3261 §10.3): its key
//! (see [`crate::sip::Uri::write_aor`]), its bindings and its expiry timer.
//!
//! Most AORs have one contact, so [`BindingSet`] keeps a single binding inline and only moves
//! to a `Vec` for the second one: an AOR with one contact costs no allocation besides its key
//! and the binding's string block.

use super::binding::Binding;
use crate::timer::TimerKey;

/// The bindings of one AOR, in registration order.
#[derive(Debug, Clone)]
pub enum BindingSet {
    One(Binding),
    /// Zero or more than one binding (an empty `Vec` does not allocate).
    Many(Vec<Binding>),
}

impl Default for BindingSet {
    fn default() -> Self {
        BindingSet::Many(Vec::new())
    }
}

impl BindingSet {
    #[inline]
    pub fn as_slice(&self) -> &[Binding] {
        match self {
            BindingSet::One(b) => core::slice::from_ref(b),
            BindingSet::Many(v) => v,
        }
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Binding] {
        match self {
            BindingSet::One(b) => core::slice::from_mut(b),
            BindingSet::Many(v) => v,
        }
    }

    pub fn push(&mut self, b: Binding) {
        match self {
            BindingSet::Many(v) if v.is_empty() => *self = BindingSet::One(b),
            BindingSet::Many(v) => v.push(b),
            BindingSet::One(_) => {
                let BindingSet::One(first) = core::mem::take(self) else {
                    unreachable!()
                };
                *self = BindingSet::Many(vec![first, b]);
            }
        }
    }

    /// Keeps the bindings for which `keep` is true (order preserved); returns how many were
    /// removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&Binding) -> bool) -> usize {
        match self {
            BindingSet::One(b) => {
                if keep(b) {
                    0
                } else {
                    *self = BindingSet::default();
                    1
                }
            }
            BindingSet::Many(v) => {
                let before = v.len();
                v.retain(|b| keep(b));
                let removed = before - v.len();
                if v.len() == 1 {
                    let last = v.pop().expect("one binding");
                    *self = BindingSet::One(last);
                } else if v.is_empty() {
                    *self = BindingSet::default();
                }
                removed
            }
        }
    }

    /// The earliest expiry.
    pub fn min_expiry(&self) -> Option<u64> {
        self.as_slice().iter().map(Binding::expires_at_ms).min()
    }

    /// Heap bytes owned (the `Vec` buffer and the bindings' string blocks).
    pub fn heap_bytes(&self) -> usize {
        let vec = match self {
            BindingSet::One(_) => 0,
            BindingSet::Many(v) => v.capacity() * core::mem::size_of::<Binding>(),
        };
        vec + self
            .as_slice()
            .iter()
            .map(Binding::heap_bytes)
            .sum::<usize>()
    }
}

/// One address-of-record.
#[derive(Debug)]
pub struct AorEntry {
    /// The AOR key; empty while the entry is on the free list.
    pub key: Box<[u8]>,
    pub bindings: BindingSet,
    /// The expiry timer, due no later than the earliest binding expiry (stale when none).
    pub timer: TimerKey,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::binding::{BindingFields, UNSPECIFIED_SOURCE};

    fn binding(n: u8) -> Binding {
        let uri = [b's', b'i', b'p', b':', b'a' + n];
        Binding::new(
            &BindingFields {
                contact_uri: &uri,
                call_id: b"c",
                cseq: 1,
                expires_at_ms: 1_000 * n as u64,
                q: 1000,
                instance: None,
                reg_id: None,
                source: UNSPECIFIED_SOURCE,
                nat: false,
                socket: 0,
                stream: false,
                branch_hash: 0,
            },
            core::iter::empty(),
        )
        .unwrap()
    }

    #[test]
    fn one_inline_then_many_then_back() {
        let mut s = BindingSet::default();
        assert!(s.as_slice().is_empty());
        s.push(binding(3));
        assert!(matches!(s, BindingSet::One(_)));
        s.push(binding(1));
        s.push(binding(2));
        assert_eq!(s.as_slice().len(), 3);
        assert_eq!(s.min_expiry(), Some(1_000));
        assert_eq!(s.retain(|b| b.expires_at_ms() != 1_000), 1);
        assert_eq!(s.as_slice()[0].contact_uri(), b"sip:d");
        assert_eq!(s.retain(|b| b.expires_at_ms() == 2_000), 1);
        assert!(matches!(s, BindingSet::One(_)));
        assert_eq!(s.retain(|_| false), 1);
        assert!(s.as_slice().is_empty());
        assert_eq!(s.min_expiry(), None);
    }

    #[test]
    fn inline_set_is_no_bigger_than_a_binding_plus_tag() {
        assert!(core::mem::size_of::<BindingSet>() <= core::mem::size_of::<Binding>() + 8);
    }
}
