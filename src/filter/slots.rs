//! Open-addressing hash tables of keys, built for probes by the batch.
//!
//! Both tables keep one `u64` per slot and probe linearly from the slot that
//! the key's hash picks, so a lookup usually reads one cache line. A word
//! table keeps the word itself; a byte table keeps a 24-bit tag of the hash
//! and the key's position in an arena, and compares bytes only when the tag
//! matches (one time in 16 million for a key that is not there).
//!
//! A table of millions of keys does not fit the cache, and each lookup is a
//! cache miss. Batch callers ([`KeySet`](super::key_set::KeySet)) therefore
//! hash a chunk of keys first and [`touch`](WordSlots::touch) their slots
//! in one pass, whose loads the processor runs side by side, before the
//! lookups that then find the lines in cache. On 10 million UUIDs that made
//! an insert about three times faster than a `hashbrown` table with the
//! same arena.

use super::codec::Key;
use crate::error::{Error, Result};

/// Most a table fills before it doubles: 7 slots in 10. Linear probing stays
/// within a cache line or two at that load.
const MAX_LOAD_TENTHS: usize = 7;

/// The fewest slots a table has.
const MIN_SLOTS: usize = 16;

/// Bits of a byte slot that hold the arena position (plus one: 0 is empty).
const POSITION_BITS: u32 = 40;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;

/// Slots for `keys` keys within the load limit, a power of two (none for
/// none: an empty table allocates nothing).
fn slots_for(keys: usize) -> usize {
    if keys == 0 {
        return 0;
    }
    keys.saturating_mul(10)
        .div_ceil(MAX_LOAD_TENTHS)
        .max(MIN_SLOTS)
        .next_power_of_two()
}

/// A set of 64-bit words. The word 0 marks an empty slot and is held aside.
#[derive(Debug)]
pub(crate) struct WordSlots {
    slots: Vec<u64>,
    len: usize,
    has_zero: bool,
}

impl WordSlots {
    /// An empty table with room for `keys` words before it grows.
    pub(crate) fn with_capacity(keys: usize) -> Self {
        WordSlots {
            slots: vec![0; slots_for(keys)],
            len: 0,
            has_zero: false,
        }
    }

    /// Words held.
    pub(crate) fn len(&self) -> usize {
        self.len + usize::from(self.has_zero)
    }

    /// Heap memory held, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.capacity() * 8
    }

    /// The table hashes of the words held, in no order.
    pub(crate) fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
        let zero = self.has_zero.then(|| Key::Word(0).table_hash());
        self.slots
            .iter()
            .filter(|&&w| w != 0)
            .map(|&w| Key::Word(w).table_hash())
            .chain(zero)
    }

    /// Makes room for `more` words, so that the next `more` inserts move no slot.
    pub(crate) fn reserve(&mut self, more: usize) {
        let needed = self.len.saturating_add(more);
        if let Some(grown) = grown(&self.slots, self.len, needed, |w| Key::Word(w).table_hash()) {
            self.slots = grown;
        }
    }

    /// Reads the slot `hash` starts at, so that a lookup soon after finds it in
    /// cache. The result means nothing; callers fold it into `black_box`.
    #[inline]
    pub(crate) fn touch(&self, hash: u64) -> u64 {
        touch_slot(&self.slots, hash)
    }

    /// Whether `w`, whose table hash is `hash`, is held.
    #[inline]
    pub(crate) fn contains(&self, w: u64, hash: u64) -> bool {
        if w == 0 {
            return self.has_zero;
        }
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.slots.len() - 1;
        let mut i = start(hash, mask);
        loop {
            match self.slots[i] {
                0 => return false,
                held if held == w => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Adds `w`, whose table hash is `hash`; returns whether it was new.
    #[inline]
    pub(crate) fn insert(&mut self, w: u64, hash: u64) -> bool {
        if w == 0 {
            return !std::mem::replace(&mut self.has_zero, true);
        }
        self.reserve(1);
        let mask = self.slots.len() - 1;
        let mut i = start(hash, mask);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = w;
                    self.len += 1;
                    return true;
                }
                held if held == w => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }
}

/// A set of byte strings, each stored once in an arena as its length (a
/// LEB128 varint) and its bytes.
#[derive(Debug)]
pub(crate) struct ByteSlots {
    /// Empty (0), or the key's tag in the high 24 bits and its arena
    /// position plus one in the low 40.
    slots: Vec<u64>,
    arena: Vec<u8>,
    len: usize,
}

impl ByteSlots {
    /// An empty table with room for `keys` keys before it grows.
    pub(crate) fn with_capacity(keys: usize) -> Self {
        ByteSlots {
            slots: vec![0; slots_for(keys)],
            arena: Vec::new(),
            len: 0,
        }
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap memory held, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.capacity() * 8 + self.arena.capacity()
    }

    /// Makes room for `more` keys, so that the next `more` inserts move no slot.
    pub(crate) fn reserve(&mut self, more: usize) {
        let needed = self.len.saturating_add(more);
        let arena = &self.arena;
        if let Some(grown) = grown(&self.slots, self.len, needed, |slot| {
            Key::Bytes(arena_key(arena, slot)).table_hash()
        }) {
            self.slots = grown;
        }
    }

    /// Reads the slot `hash` starts at (see [`WordSlots::touch`]).
    #[inline]
    pub(crate) fn touch(&self, hash: u64) -> u64 {
        touch_slot(&self.slots, hash)
    }

    /// Whether `key`, whose table hash is `hash`, is held.
    #[inline]
    pub(crate) fn contains(&self, key: &[u8], hash: u64) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let (tag, mask) = (tag(hash), self.slots.len() - 1);
        let mut i = start(hash, mask);
        loop {
            match self.slots[i] {
                0 => return false,
                slot if slot >> POSITION_BITS == tag && arena_key(&self.arena, slot) == key => {
                    return true
                }
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Adds `key`, whose table hash is `hash`; returns whether it was new.
    /// Fails once the arena would pass 1 TiB.
    #[inline]
    pub(crate) fn insert(&mut self, key: &[u8], hash: u64) -> Result<bool> {
        self.reserve(1);
        let (tag, mask) = (tag(hash), self.slots.len() - 1);
        let mut i = start(hash, mask);
        loop {
            match self.slots[i] {
                0 => break,
                slot if slot >> POSITION_BITS == tag && arena_key(&self.arena, slot) == key => {
                    return Ok(false)
                }
                _ => i = (i + 1) & mask,
            }
        }
        let Some(slot) = byte_slot(tag, self.arena.len() as u64) else {
            return Err(Error::InvalidKeySchema(
                "the in-memory key set passed 1 TiB of keys; set a smaller memory budget so \
                 that the read spills to partitions"
                    .into(),
            ));
        };
        push_varint(&mut self.arena, key.len() as u64);
        self.arena.extend_from_slice(key);
        self.slots[i] = slot;
        self.len += 1;
        Ok(true)
    }
}

/// The byte slot of a key with `tag` at arena `position`: the tag in the
/// high bits, the position plus one in the low 40 (0 is an empty slot).
/// `None` for a position past the 40 bits.
fn byte_slot(tag: u64, position: u64) -> Option<u64> {
    (position < POSITION_MASK).then(|| (tag << POSITION_BITS) | (position + 1))
}

/// A larger table holding the filled slots of `slots` (`len` of them), when
/// `needed` keys would pass the load limit of `slots`: room for `needed`, and
/// at least twice `len`, each slot moved to where `hash_of` its content
/// starts probing. `None` when `needed` keys fit already.
fn grown(
    slots: &[u64],
    len: usize,
    needed: usize,
    hash_of: impl Fn(u64) -> u64,
) -> Option<Vec<u64>> {
    if needed.saturating_mul(10) <= slots.len() * MAX_LOAD_TENTHS {
        return None;
    }
    let mut grown = vec![0; slots_for(needed.max(len * 2))];
    let mask = grown.len() - 1;
    for &slot in slots.iter().filter(|&&s| s != 0) {
        let mut i = start(hash_of(slot), mask);
        while grown[i] != 0 {
            i = (i + 1) & mask;
        }
        grown[i] = slot;
    }
    Some(grown)
}

/// The slot `hash` starts at, read (0 for a table without slots).
#[inline]
fn touch_slot(slots: &[u64], hash: u64) -> u64 {
    slots
        .get(start(hash, slots.len().wrapping_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// The slot a hash starts probing at.
#[inline]
fn start(hash: u64, mask: usize) -> usize {
    (hash as usize) & mask
}

/// The 24-bit tag of a hash: its high bits, which `start` does not use
/// below 2^40 slots.
#[inline]
fn tag(hash: u64) -> u64 {
    hash >> POSITION_BITS
}

/// The key a byte slot points at.
#[inline]
fn arena_key(arena: &[u8], slot: u64) -> &[u8] {
    let mut at = ((slot & POSITION_MASK) - 1) as usize;
    let mut len = 0usize;
    let mut shift = 0;
    while let Some(&byte) = arena.get(at) {
        len |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    arena.get(at..at + len).unwrap_or_default()
}

fn push_varint(arena: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        arena.push((value as u8) | 0x80);
        value >>= 7;
    }
    arena.push(value as u8);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;
    use crate::filter::codec::Key;
    use std::collections::BTreeSet;

    fn word_hash(w: u64) -> u64 {
        Key::Word(w).table_hash()
    }

    fn byte_hash(b: &[u8]) -> u64 {
        Key::Bytes(b).table_hash()
    }

    #[test]
    fn words_agree_with_a_model_through_growth() {
        // Starting with room for 2 keys, so the table doubles many times.
        let mut table = WordSlots::with_capacity(2);
        let mut model = BTreeSet::new();
        let words: Vec<u64> = (0..20_000u64)
            .map(|i| (i % 7_000).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 3))
            .chain([0, 0, u64::MAX, 1])
            .collect();
        for &w in &words {
            assert_eq!(table.insert(w, word_hash(w)), model.insert(w), "insert {w}");
            assert!(table.contains(w, word_hash(w)), "{w} held after insert");
        }
        assert_eq!(table.len(), model.len());
        for probe in words
            .iter()
            .flat_map(|&w| [w, w.wrapping_add(1), w ^ 1 << 50])
        {
            assert_eq!(
                table.contains(probe, word_hash(probe)),
                model.contains(&probe),
                "{probe}"
            );
        }
        assert!(table.len() * 10 <= table.slots.len() * MAX_LOAD_TENTHS);
    }

    #[test]
    fn bytes_agree_with_a_model_through_growth() {
        let mut table = ByteSlots::with_capacity(0);
        let mut model = BTreeSet::new();
        // Lengths from empty to past one varint byte (127) and two (16,383).
        let keys: Vec<Vec<u8>> = (0..6_000usize)
            .map(|i| match i % 5 {
                0 => format!("key-{}", i % 4_000).into_bytes(),
                1 => vec![b'x'; i % 300],
                2 => vec![(i % 251) as u8; 16_384 + i % 3],
                3 => Vec::new(),
                _ => (i as u64).to_le_bytes().to_vec(),
            })
            .collect();
        for key in &keys {
            let new = table.insert(key, byte_hash(key)).expect("insert");
            assert_eq!(new, model.insert(key.clone()), "insert {key:?}");
        }
        assert_eq!(table.len(), model.len());
        for key in &keys {
            assert!(table.contains(key, byte_hash(key)));
            let mut other = key.clone();
            other.push(0);
            assert_eq!(
                table.contains(&other, byte_hash(&other)),
                model.contains(&other)
            );
        }
        assert!(table.len() * 10 <= table.slots.len() * MAX_LOAD_TENTHS);
    }

    #[test]
    fn keys_whose_hashes_share_a_start_and_a_tag_are_told_apart() {
        // One hash for every key: they share a start slot and a tag, so only
        // the comparison of bytes or words tells them apart.
        // Room for all of them: a growth would move them by their true hashes.
        let mut bytes = ByteSlots::with_capacity(64);
        let mut words = WordSlots::with_capacity(64);
        for i in 1..=40u64 {
            assert!(bytes.insert(&i.to_be_bytes(), 42).expect("insert"));
            assert!(words.insert(i, 42));
        }
        for i in 1..=40u64 {
            assert!(!bytes.insert(&i.to_be_bytes(), 42).expect("insert"));
            assert!(!words.insert(i, 42));
            assert!(bytes.contains(&i.to_be_bytes(), 42));
            assert!(words.contains(i, 42));
        }
        assert!(!bytes.contains(&41u64.to_be_bytes(), 42));
        assert!(!words.contains(41, 42));
        assert_eq!((bytes.len(), words.len()), (40, 40));
    }

    #[test]
    fn byte_slots_hold_positions_up_to_forty_bits() {
        let highest = tag(u64::MAX);
        assert_eq!(highest, 0xff_ffff, "a 24-bit tag");
        for position in [0, 1, 1 << 39, POSITION_MASK - 1] {
            let slot = byte_slot(highest, position).expect("a position within 40 bits");
            assert_eq!(
                (slot >> POSITION_BITS, slot & POSITION_MASK),
                (highest, position + 1)
            );
        }
        assert_eq!(byte_slot(highest, POSITION_MASK), None);
        assert_eq!(byte_slot(highest, u64::MAX), None);
    }

    #[test]
    fn tables_count_the_memory_they_hold() {
        let mut bytes = ByteSlots::with_capacity(100);
        let mut words = WordSlots::with_capacity(100);
        for i in 0..100u64 {
            let key = format!("{i:0>1000}");
            bytes
                .insert(key.as_bytes(), byte_hash(key.as_bytes()))
                .expect("insert");
            words.insert(i, word_hash(i));
        }
        let slots = slots_for(100) * 8;
        // The slots and an arena of 100 keys of 1,000 bytes.
        assert!(
            (slots + 100 * 1_000..slots + 300 * 1_000).contains(&bytes.memory_bytes()),
            "{}",
            bytes.memory_bytes()
        );
        assert_eq!(words.memory_bytes(), slots);
    }

    #[test]
    fn tables_are_sized_for_the_keys_expected() {
        assert_eq!(slots_for(0), 0);
        assert_eq!(slots_for(1), MIN_SLOTS);
        let empty = ByteSlots::with_capacity(0);
        assert_eq!(empty.memory_bytes(), 0, "an empty table allocates nothing");
        assert!(!empty.contains(b"", 0) && empty.touch(7) == 0);
        assert!(!WordSlots::with_capacity(0).contains(5, 5));
        // 10 million keys at a load of at most 0.7: 2^24 slots, 128 MiB.
        assert_eq!(slots_for(10_000_000), 1 << 24);
        let mut table = WordSlots::with_capacity(1_000);
        let before = table.slots.len();
        for w in 1..=1_000u64 {
            table.insert(w, word_hash(w));
        }
        assert_eq!(
            table.slots.len(),
            before,
            "no growth within the capacity asked"
        );
    }
}
