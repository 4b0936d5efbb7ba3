//! An exact set of encoded keys, compact in memory.
//!
//! Word keys (integers and other fixed-width values) start in a bitmap over
//! the span of the values seen, one bit per value: ids handed out in
//! sequence, dense or in a few clusters, cost a bit or a few each, and a probe
//! is one bounds check and one bit test, with no hashing. Once the span would
//! pass [`DENSE_BITS_PER_KEY`] bits per expected key, the set moves to a hash
//! table of `u64` (about 9 bytes a slot) and stays there.
//!
//! Byte keys are appended to one arena and a hash table holds their offset
//! and length, so a key costs its bytes plus one slot, with no allocation per
//! key.

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use super::codec::Key;
use crate::error::{Error, Result};

/// Longest byte key the set takes (16 MiB).
const MAX_KEY_BYTES: usize = (1 << 24) - 1;

/// Bits a bitmap may spend per expected key before word keys move to a hash
/// table. A hash slot costs about 72 bits, so a bitmap this sparse is still
/// the smaller of the two, and far faster to probe.
pub(crate) const DENSE_BITS_PER_KEY: u64 = 64;

/// The smallest span a bitmap may cover, whatever the expected count: 1 Mi
/// values (128 KiB).
const MIN_DENSE_SPAN: u64 = 1 << 20;

/// An exact set of keys.
#[derive(Debug)]
pub(crate) struct KeySet {
    words: Words,
    /// Keys the set expects, to size the hash table if words move to one.
    expected: usize,
    /// Arena positions of byte keys: offset in the high 40 bits, length in the low 24.
    slots: HashTable<u64>,
    arena: Vec<u8>,
    has_null: bool,
    len: usize,
}

/// Where word keys live.
#[derive(Debug)]
enum Words {
    Dense(DenseWords),
    Hashed(HashTable<u64>),
}

/// A bitmap of the values `base .. base + 64 * bits.len()`.
#[derive(Debug)]
struct DenseWords {
    base: u64,
    bits: Vec<u64>,
    /// The widest span (in values) the bitmap may grow to.
    max_span: u64,
}

impl Default for KeySet {
    fn default() -> Self {
        Self::expecting(0, true)
    }
}

impl KeySet {
    /// An empty set expecting few keys.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// An empty set expecting about `keys` keys: word keys if `words`, byte
    /// keys otherwise. Byte keys get a table of that size up front (growing a
    /// table of millions of keys rehashes it several times); word keys get a
    /// bitmap, and a table of that size only if they turn out to be sparse.
    pub(crate) fn expecting(keys: usize, words: bool) -> Self {
        let max_span = (keys as u64)
            .saturating_mul(DENSE_BITS_PER_KEY)
            .max(MIN_DENSE_SPAN);
        KeySet {
            words: Words::Dense(DenseWords {
                base: 0,
                bits: Vec::new(),
                max_span,
            }),
            expected: keys,
            slots: if words {
                HashTable::new()
            } else {
                HashTable::with_capacity(keys)
            },
            arena: Vec::new(),
            has_null: false,
            len: 0,
        }
    }

    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether word keys are held in a bitmap (not moved to a hash table).
    #[cfg(test)]
    pub(crate) fn is_dense(&self) -> bool {
        matches!(self.words, Words::Dense(_))
    }

    /// Heap memory held, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<u64>() + 1;
        let words = match &self.words {
            Words::Dense(dense) => dense.bits.capacity() * 8,
            Words::Hashed(table) => table.capacity() * slot,
        };
        words + self.slots.capacity() * slot + self.arena.capacity()
    }

    /// Whether `key` is in the set.
    pub(crate) fn contains(&self, key: Key<'_>) -> bool {
        match key {
            Key::Null => self.has_null,
            Key::Word(w) => self.contains_word(w),
            Key::Bytes(b) => self
                .slots
                .find(key.table_hash(), |&slot| arena_key(&self.arena, slot) == b)
                .is_some(),
        }
    }

    /// Whether the word key `w` is in the set.
    #[inline]
    pub(crate) fn contains_word(&self, w: u64) -> bool {
        match &self.words {
            Words::Dense(dense) => dense.contains(w),
            Words::Hashed(table) => table.find(word_hash(w), |&v| v == w).is_some(),
        }
    }

    /// Adds `key`; returns whether it was new.
    pub(crate) fn insert(&mut self, key: Key<'_>) -> Result<bool> {
        let new = match key {
            Key::Null => !std::mem::replace(&mut self.has_null, true),
            Key::Word(w) => return Ok(self.insert_word(w)),
            Key::Bytes(b) => {
                if b.len() > MAX_KEY_BYTES {
                    return Err(Error::InvalidKeySchema(format!(
                        "a key of {} bytes is longer than the {MAX_KEY_BYTES} bytes the filter takes",
                        b.len()
                    )));
                }
                // One probe: find the key or the slot to put it in.
                let arena = &self.arena;
                match self.slots.entry(
                    key.table_hash(),
                    |&slot| arena_key(arena, slot) == b,
                    |&slot| Key::Bytes(arena_key(arena, slot)).table_hash(),
                ) {
                    Entry::Occupied(_) => false,
                    Entry::Vacant(vacant) => {
                        vacant.insert(((arena.len() as u64) << 24) | b.len() as u64);
                        self.arena.extend_from_slice(b);
                        true
                    }
                }
            }
        };
        if new {
            self.len += 1;
        }
        Ok(new)
    }

    /// Adds the word key `w`; returns whether it was new.
    #[inline]
    pub(crate) fn insert_word(&mut self, w: u64) -> bool {
        let new = match &mut self.words {
            Words::Dense(dense) => match dense.insert(w) {
                Some(new) => new,
                None => {
                    self.words = Words::Hashed(self.hashed_words());
                    insert_hashed(&mut self.words, w)
                }
            },
            words @ Words::Hashed(_) => insert_hashed(words, w),
        };
        if new {
            self.len += 1;
        }
        new
    }

    /// The word keys of the bitmap, moved to a hash table sized for the
    /// keys expected.
    fn hashed_words(&self) -> HashTable<u64> {
        let Words::Dense(dense) = &self.words else {
            return HashTable::new();
        };
        let mut table = HashTable::with_capacity(self.expected.max(2 * self.len));
        for w in dense.values() {
            table.insert_unique(word_hash(w), w, |&v| word_hash(v));
        }
        table
    }
}

/// Adds `w` to a hash table of words; returns whether it was new.
fn insert_hashed(words: &mut Words, w: u64) -> bool {
    let Words::Hashed(table) = words else {
        return false;
    };
    match table.entry(word_hash(w), |&v| v == w, |&v| word_hash(v)) {
        Entry::Occupied(_) => false,
        Entry::Vacant(slot) => {
            slot.insert(w);
            true
        }
    }
}

fn word_hash(w: u64) -> u64 {
    Key::Word(w).table_hash()
}

impl DenseWords {
    /// The span covered, in values.
    fn span(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    #[inline]
    fn contains(&self, w: u64) -> bool {
        let offset = w.wrapping_sub(self.base);
        offset < self.span() && self.bits[(offset / 64) as usize] & (1 << (offset % 64)) != 0
    }

    /// Sets the bit of `w`; whether it was clear, or `None` if covering `w`
    /// would take the bitmap past its widest span.
    #[inline]
    fn insert(&mut self, w: u64) -> Option<bool> {
        let mut offset = w.wrapping_sub(self.base);
        if offset >= self.span() {
            self.cover(w)?;
            offset = w - self.base;
        }
        let (word, bit) = ((offset / 64) as usize, 1u64 << (offset % 64));
        let new = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        Some(new)
    }

    /// Grows the bitmap to cover `w`, doubling its span where it can so that
    /// keys arriving in order grow it a logarithmic number of times. `None`
    /// if even the exact span needed is too wide.
    fn cover(&mut self, w: u64) -> Option<()> {
        let aligned = w & !63;
        if self.bits.is_empty() {
            self.base = aligned;
            self.bits = vec![0; 1];
            return Some(());
        }
        // Spans in u128: the top of the u64 range is a valid end.
        let (low, high) = (self.base as u128, self.base as u128 + self.span() as u128);
        let (need_low, need_high) = (low.min(aligned as u128), high.max(aligned as u128 + 64));
        let max_span = self.max_span as u128;
        if need_high - need_low > max_span {
            return None;
        }
        // Slack on the side that grew, as much as the old span, within the limit.
        let slack = (high - low).min(max_span - (need_high - need_low)) & !63;
        let (new_low, new_high) = if need_low < low {
            (need_low.saturating_sub(slack), need_high)
        } else {
            (need_low, (need_high + slack).min(1 << 64))
        };
        let mut bits = vec![0u64; ((new_high - new_low) / 64) as usize];
        let shift = ((low - new_low) / 64) as usize;
        bits[shift..shift + self.bits.len()].copy_from_slice(&self.bits);
        self.base = new_low as u64;
        self.bits = bits;
        Some(())
    }

    /// Every value held, in ascending order.
    fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(move |(i, &word)| {
            let base = self.base + i as u64 * 64;
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = u64::from(rest.trailing_zeros());
                    rest &= rest - 1;
                    base + bit
                })
            })
        })
    }
}

fn arena_key(arena: &[u8], slot: u64) -> &[u8] {
    let start = (slot >> 24) as usize;
    let len = (slot & MAX_KEY_BYTES as u64) as usize;
    &arena[start..start + len]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set against a `BTreeSet` on one sequence of words.
    fn agrees(expected: usize, words: &[u64]) -> KeySet {
        let mut set = KeySet::expecting(expected, true);
        let mut model = std::collections::BTreeSet::new();
        for &w in words {
            assert_eq!(set.insert_word(w), model.insert(w), "insert {w}");
        }
        assert_eq!(set.len(), model.len());
        for &w in words {
            assert!(set.contains_word(w), "{w} held");
            for probe in [w.wrapping_add(1), w.wrapping_sub(1), w ^ (1 << 40)] {
                assert_eq!(set.contains_word(probe), model.contains(&probe), "{probe}");
            }
        }
        set
    }

    #[test]
    fn dense_words_grow_both_ways_and_stay_a_bitmap() {
        let mut words: Vec<u64> = (1_000_000..1_200_000).rev().collect();
        words.extend(1_200_000..1_400_000);
        words.extend([1_000_000, 1_399_999, 999_999]);
        let set = agrees(400_000, &words);
        assert!(set.is_dense());
        // About a bit a key, far below a hash slot's 9 bytes.
        assert!(set.memory_bytes() < 400_000, "{}", set.memory_bytes());
    }

    #[test]
    fn sparse_words_move_to_a_hash_table_and_keep_every_key() {
        let words: Vec<u64> = (0..50_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let set = agrees(50_000, &words);
        assert!(!set.is_dense());
    }

    #[test]
    fn the_ends_of_the_word_range_are_held() {
        let set = agrees(4, &[u64::MAX, u64::MAX - 63, u64::MAX - 64, 0]);
        assert!(!set.is_dense(), "0 and u64::MAX are 2^64 apart");
        let set = agrees(4, &[u64::MAX, u64::MAX - 1000, u64::MAX - 1]);
        assert!(set.is_dense());
    }
}
