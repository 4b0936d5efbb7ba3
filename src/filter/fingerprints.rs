//! The fingerprints of a small source's keys, against which key files'
//! fingerprints are probed to find the files that cannot hold one of its keys.
//!
//! A key file's fingerprints are millions of random 64-bit words, nearly all
//! of them absent, and the question is only whether any one is present. So a
//! bitmap of about 16 bits per source key, indexed by a fingerprint's high
//! bits and small enough to stay in cache, answers "absent" for all but about
//! one word in sixteen; only those are looked up in the exact set.

use arrow_buffer::BooleanBuffer;

use super::codec::EncodedKeys;
use super::hash_bitmap::HashBitmap;
use super::key_set::KeySet;
use crate::error::Result;

/// Bits of the bitmap per fingerprint held.
const BITS_PER_FINGERPRINT: usize = 16;

/// An exact set of fingerprints with a bitmap in front of it.
#[derive(Debug)]
pub(crate) struct FingerprintSet {
    bits: HashBitmap,
    exact: KeySet,
}

impl FingerprintSet {
    /// An empty set sized for about `expected` fingerprints.
    pub(crate) fn expecting(expected: usize) -> Self {
        FingerprintSet {
            bits: HashBitmap::for_keys(expected, BITS_PER_FINGERPRINT),
            exact: KeySet::expecting(expected, true),
        }
    }

    /// Adds fingerprints.
    pub(crate) fn insert(&mut self, fingerprints: Vec<u64>) -> Result<()> {
        for &f in &fingerprints {
            self.bits.insert(f);
        }
        // A batch at a time, so that the table's cache misses overlap.
        let words = EncodedKeys::Words {
            words: fingerprints,
            nulls: None,
        };
        self.exact.insert_each(&words, |_, _| Ok(()))
    }

    /// Whether any of `fingerprints` is in the set.
    pub(crate) fn any_of(&self, fingerprints: &[u64]) -> bool {
        fingerprints
            .iter()
            .any(|&f| self.bits.may_hold(f) && self.exact.contains_word(f))
    }

    /// Whether each of `fingerprints` is in the set. The bitmap is read for
    /// all of them first, in a pass whose loads do not wait on each other.
    pub(crate) fn each_held(&self, fingerprints: &[u64]) -> BooleanBuffer {
        let maybe: Vec<bool> = fingerprints
            .iter()
            .map(|&f| self.bits.may_hold(f))
            .collect();
        fingerprints
            .iter()
            .zip(maybe)
            .map(|(&f, maybe)| maybe && self.exact.contains_word(f))
            .collect()
    }

    /// Heap memory held, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.bits.memory_bytes() + self.exact.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exactly_the_fingerprints_held() -> Result<()> {
        let mut set = FingerprintSet::expecting(1000);
        let held: Vec<u64> = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        set.insert(held.clone())?;
        for &f in &held {
            assert!(set.any_of(&[f]), "{f:x} was inserted");
        }
        // Absent words whose top bits equal a held one's: the bitmap lets them
        // through, the exact set does not.
        let near: Vec<u64> = held.iter().map(|f| f ^ 1).collect();
        assert!(!set.any_of(&near));
        assert!(set.any_of(&[near[0], near[1], held[500]]));
        let held_each: Vec<bool> = set
            .each_held(&[near[0], held[1], near[2], held[999]])
            .iter()
            .collect();
        assert_eq!(held_each, [false, true, false, true]);
        assert!(!set.any_of(&[]));
        // The bitmap (16 bits a fingerprint, 2 KiB here) and the exact set
        // count toward the read's memory.
        assert_eq!(set.memory_bytes(), 2048 + set.exact.memory_bytes());
        assert!(set.exact.memory_bytes() >= 1000 * 8);
        Ok(())
    }

    #[test]
    fn an_empty_set_holds_nothing() {
        let set = FingerprintSet::expecting(0);
        assert!(!set.any_of(&[0, 1, u64::MAX]));
    }
}
