//! An exact set of encoded keys, compact in memory.
//!
//! Word keys live in a hash table of `u64` (about 9 bytes a slot). Byte keys are
//! appended to one arena and the table holds their offset and length, so a key
//! costs its bytes plus one slot, with no allocation per key.

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use super::codec::Key;
use crate::error::{Error, Result};

/// Longest byte key the set takes (16 MiB).
const MAX_KEY_BYTES: usize = (1 << 24) - 1;

/// An exact set of keys.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    words: HashTable<u64>,
    /// Arena positions of byte keys: offset in the high 40 bits, length in the low 24.
    slots: HashTable<u64>,
    arena: Vec<u8>,
    has_null: bool,
    len: usize,
}

impl KeySet {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// An empty set with room for `keys` keys without growing: word keys if
    /// `words`, byte keys otherwise.
    pub(crate) fn with_capacity(keys: usize, words: bool) -> Self {
        let mut set = Self::new();
        if words {
            set.words = HashTable::with_capacity(keys);
        } else {
            set.slots = HashTable::with_capacity(keys);
        }
        set
    }

    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap memory held, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<u64>() + 1;
        self.words.capacity() * slot + self.slots.capacity() * slot + self.arena.capacity()
    }

    /// Whether `key` (whose [`Key::table_hash`] is `hash`) is in the set.
    pub(crate) fn contains(&self, key: Key<'_>, hash: u64) -> bool {
        match key {
            Key::Null => self.has_null,
            Key::Word(w) => self.words.find(hash, |&v| v == w).is_some(),
            Key::Bytes(b) => self
                .slots
                .find(hash, |&slot| arena_key(&self.arena, slot) == b)
                .is_some(),
        }
    }

    /// Adds `key`; returns whether it was new.
    pub(crate) fn insert(&mut self, key: Key<'_>, hash: u64) -> Result<bool> {
        let new = match key {
            Key::Null => !std::mem::replace(&mut self.has_null, true),
            // One probe: find the key or the slot to put it in.
            Key::Word(w) => {
                match self
                    .words
                    .entry(hash, |&v| v == w, |&v| Key::Word(v).table_hash())
                {
                    Entry::Occupied(_) => false,
                    Entry::Vacant(slot) => {
                        slot.insert(w);
                        true
                    }
                }
            }
            Key::Bytes(b) => {
                if self.contains(key, hash) {
                    false
                } else {
                    if b.len() > MAX_KEY_BYTES {
                        return Err(Error::InvalidKeySchema(format!(
                            "a key of {} bytes is longer than the {MAX_KEY_BYTES} bytes the filter takes",
                            b.len()
                        )));
                    }
                    let slot = ((self.arena.len() as u64) << 24) | b.len() as u64;
                    self.arena.extend_from_slice(b);
                    let arena = &self.arena;
                    self.slots.insert_unique(hash, slot, |&s| {
                        Key::Bytes(arena_key(arena, s)).table_hash()
                    });
                    true
                }
            }
        };
        if new {
            self.len += 1;
        }
        Ok(new)
    }
}

fn arena_key(arena: &[u8], slot: u64) -> &[u8] {
    let start = (slot >> 24) as usize;
    let len = (slot & MAX_KEY_BYTES as u64) as usize;
    &arena[start..start + len]
}
