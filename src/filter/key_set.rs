//! An exact set of encoded keys, compact in memory.
//!
//! Word keys (integers and other fixed-width values) start in a bitmap over
//! the span of the values seen, one bit per value: ids handed out in
//! sequence, dense or in a few clusters, cost a bit or a few each, and a probe
//! is one bounds check and one bit test, with no hashing. Once the span would
//! pass [`DENSE_BITS_PER_KEY`] bits per expected key, the set moves to a hash
//! table of words ([`WordSlots`], 8 bytes a slot) and stays there.
//!
//! Byte keys are appended to one arena and a hash table ([`ByteSlots`])
//! holds their positions, so a key costs its bytes plus a slot, with no
//! allocation per key.
//!
//! Whole batches go through [`KeySet::contains_each`] and
//! [`KeySet::insert_each`], which hash a chunk of keys and touch their slots
//! before looking them up, so that the cache misses of a large table overlap.

use super::codec::{EncodedKeys, Key};
use super::hash_bitmap::HashBitmap;
use super::slots::{ByteSlots, WordSlots};
use crate::error::{Error, Result};

/// Longest byte key the set takes (16 MiB).
const MAX_KEY_BYTES: usize = (1 << 24) - 1;

/// Bits a bitmap may spend per expected key before word keys move to a hash
/// table. A hash slot costs about 90 bits at the table's load, so a bitmap
/// this sparse is still the smaller of the two, and far faster to probe.
pub(crate) const DENSE_BITS_PER_KEY: u64 = 64;

/// The smallest span a bitmap may cover, whatever the expected count: 1 Mi
/// values (128 KiB).
const MIN_DENSE_SPAN: u64 = 1 << 20;

/// Keys hashed and touched together by the batch methods: their slots'
/// cache lines (64 KiB of them) stay in cache until the lookups.
const CHUNK: usize = 1024;

/// Sets with fewer hashed keys get no presence bitmap: their tables are
/// small enough to stay mostly in cache (256 Ki keys: about 3 MiB of slots).
const PRESENCE_MIN_KEYS: usize = 1 << 18;

/// Bits of a presence bitmap ([`HashBitmap`]) per hashed word held, at
/// least (up to twice this, as the bitmap is a power of two): a probe of an
/// absent key finds its bit set about one time in eight to sixteen.
const PRESENCE_BITS_PER_KEY: usize = 8;

/// An exact set of keys.
#[derive(Debug)]
pub(crate) struct KeySet {
    words: Words,
    /// Keys the set expects, to size the hash table if words move to one.
    expected: usize,
    bytes: ByteSlots,
    has_null: bool,
    /// A bitmap in front of the hash table of words for probes, once the set
    /// is complete ([`KeySet::add_presence_bitmap`]); any insert drops it.
    presence: Option<HashBitmap>,
}

/// Where word keys live.
#[derive(Debug)]
enum Words {
    Dense(DenseWords),
    Hashed(WordSlots),
}

/// A bitmap of the values `base .. base + 64 * bits.len()`.
#[derive(Debug)]
struct DenseWords {
    base: u64,
    bits: Vec<u64>,
    /// The widest span (in values) the bitmap may grow to.
    max_span: u64,
    /// Values held.
    len: usize,
}

impl Default for KeySet {
    fn default() -> Self {
        Self::expecting(0, true)
    }
}

impl KeySet {
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
                len: 0,
            }),
            expected: keys,
            bytes: ByteSlots::with_capacity(if words { 0 } else { keys }),
            has_null: false,
            presence: None,
        }
    }

    /// Puts a presence bitmap in front of the hash table of word keys, for a
    /// set that is complete and about to be probed many times: worth it for
    /// a large table, where most probes are of absent keys. A bitmap of word
    /// keys needs none, and byte keys get none: their slots' tags already
    /// turn most absent keys away, and on 10 million UUIDs probed by 100
    /// million a bitmap in front made the probe slower (12.5 s against 9 s).
    /// Left out when it would take more than `budget_bytes`.
    /// Counted in [`memory_bytes`](Self::memory_bytes).
    pub(crate) fn add_presence_bitmap(&mut self, budget_bytes: usize) {
        let Words::Hashed(table) = &self.words else {
            return;
        };
        let held = table.len();
        if held < PRESENCE_MIN_KEYS
            || HashBitmap::bytes_for(held, PRESENCE_BITS_PER_KEY) > budget_bytes
        {
            return;
        }
        let mut presence = HashBitmap::for_keys(held, PRESENCE_BITS_PER_KEY);
        for hash in table.hashes() {
            presence.insert(hash);
        }
        self.presence = Some(presence);
    }

    /// Whether a word key of table hash `hash` may be in the hash table:
    /// false only if the presence bitmap rules it out.
    #[inline]
    fn may_hold(&self, hash: u64) -> bool {
        self.presence.as_ref().is_none_or(|p| p.may_hold(hash))
    }

    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        let words = match &self.words {
            Words::Dense(dense) => dense.len,
            Words::Hashed(table) => table.len(),
        };
        words + self.bytes.len() + usize::from(self.has_null)
    }

    /// Whether word keys are held in a bitmap (not moved to a hash table).
    #[cfg(test)]
    pub(crate) fn is_dense(&self) -> bool {
        matches!(self.words, Words::Dense(_))
    }

    /// Heap memory held, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        let words = match &self.words {
            Words::Dense(dense) => dense.bits.capacity() * 8,
            Words::Hashed(table) => table.memory_bytes(),
        };
        let presence = self.presence.as_ref().map_or(0, HashBitmap::memory_bytes);
        words + self.bytes.memory_bytes() + presence
    }

    /// Whether `key` is in the set.
    pub(crate) fn contains(&self, key: Key<'_>) -> bool {
        match key {
            Key::Null => self.has_null,
            Key::Word(w) => self.contains_word(w),
            Key::Bytes(b) => self.bytes.contains(b, key.table_hash()),
        }
    }

    /// Whether the word key `w` is in the set.
    #[inline]
    pub(crate) fn contains_word(&self, w: u64) -> bool {
        match &self.words {
            Words::Dense(dense) => dense.contains(w),
            Words::Hashed(table) => {
                let hash = word_hash(w);
                self.may_hold(hash) && table.contains(w, hash)
            }
        }
    }

    /// Adds `key`; returns whether it was new.
    pub(crate) fn insert(&mut self, key: Key<'_>) -> Result<bool> {
        self.presence = None;
        match key {
            Key::Null => Ok(!std::mem::replace(&mut self.has_null, true)),
            Key::Word(w) => Ok(self.insert_word(w)),
            Key::Bytes(b) => {
                check_length(b)?;
                self.bytes.insert(b, key.table_hash())
            }
        }
    }

    /// Adds the word key `w`; returns whether it was new.
    #[inline]
    pub(crate) fn insert_word(&mut self, w: u64) -> bool {
        self.presence = None;
        match &mut self.words {
            Words::Dense(dense) => match dense.insert(w) {
                Some(new) => new,
                None => {
                    let mut table = self.hashed_words();
                    let new = table.insert(w, word_hash(w));
                    self.words = Words::Hashed(table);
                    new
                }
            },
            Words::Hashed(table) => table.insert(w, word_hash(w)),
        }
    }

    /// Calls `found` with whether each key of `keys` is in the set, in order.
    pub(crate) fn contains_each(&self, keys: &EncodedKeys, mut found: impl FnMut(bool)) {
        if let Some(words) = keys.words_without_nulls() {
            match &self.words {
                Words::Dense(dense) => words.iter().for_each(|&w| found(dense.contains(w))),
                Words::Hashed(table) => {
                    let mut hashes = Vec::with_capacity(CHUNK);
                    let mut maybe = Vec::with_capacity(CHUNK);
                    for chunk in words.chunks(CHUNK) {
                        hashes.clear();
                        hashes.extend(chunk.iter().map(|&w| word_hash(w)));
                        // The presence bits first, in a pass without branches
                        // whose loads the processor runs side by side.
                        maybe.clear();
                        maybe.extend(hashes.iter().map(|&h| self.may_hold(h)));
                        touch(
                            hashes
                                .iter()
                                .zip(&maybe)
                                .filter(|(_, &m)| m)
                                .map(|(&h, _)| table.touch(h)),
                        );
                        for ((&w, &h), &m) in chunk.iter().zip(&hashes).zip(&maybe) {
                            found(m && table.contains(w, h));
                        }
                    }
                }
            }
            return;
        }
        let mut chunk = Vec::with_capacity(CHUNK);
        for first in (0..keys.len()).step_by(CHUNK) {
            self.hash_chunk(keys, first, &mut chunk);
            for &(key, hash, maybe) in &chunk {
                found(match key {
                    Key::Null => self.has_null,
                    Key::Word(w) => match &self.words {
                        Words::Dense(dense) => dense.contains(w),
                        Words::Hashed(table) => maybe && table.contains(w, hash),
                    },
                    Key::Bytes(b) => self.bytes.contains(b, hash),
                });
            }
        }
    }

    /// Adds each key of `keys`, in order, calling `inserted` with its row and
    /// whether it was new (a key repeated within `keys` is new the first
    /// time only). Stops at the first error of `inserted`.
    pub(crate) fn insert_each(
        &mut self,
        keys: &EncodedKeys,
        mut inserted: impl FnMut(usize, bool) -> Result<()>,
    ) -> Result<()> {
        self.presence = None;
        if let Some(words) = keys.words_without_nulls() {
            let mut hashes = Vec::with_capacity(CHUNK);
            for (c, chunk) in words.chunks(CHUNK).enumerate() {
                let first = c * CHUNK;
                if let Words::Hashed(table) = &mut self.words {
                    // Room first, so that the slots touched stay where they are.
                    table.reserve(chunk.len());
                    hashes.clear();
                    hashes.extend(chunk.iter().map(|&w| word_hash(w)));
                    touch(hashes.iter().map(|&h| table.touch(h)));
                    for (i, (&w, &h)) in chunk.iter().zip(&hashes).enumerate() {
                        inserted(first + i, table.insert(w, h))?;
                    }
                } else {
                    for (i, &w) in chunk.iter().enumerate() {
                        let new = self.insert_word(w);
                        inserted(first + i, new)?;
                    }
                }
            }
            return Ok(());
        }
        let mut chunk = Vec::with_capacity(CHUNK);
        for first in (0..keys.len()).step_by(CHUNK) {
            self.bytes.reserve(CHUNK.min(keys.len() - first));
            self.hash_chunk(keys, first, &mut chunk);
            for (i, &(key, hash, _)) in chunk.iter().enumerate() {
                let new = match key {
                    Key::Bytes(b) => {
                        check_length(b)?;
                        self.bytes.insert(b, hash)?
                    }
                    other => self.insert(other)?,
                };
                inserted(first + i, new)?;
            }
        }
        Ok(())
    }

    /// The keys of `keys` from row `first` on (at most [`CHUNK`]) with their
    /// table hashes and whether the presence bitmap lets them through (word
    /// keys; others pass), in `chunk`, after touching the slots of those it
    /// lets through.
    fn hash_chunk<'k>(
        &self,
        keys: &'k EncodedKeys,
        first: usize,
        chunk: &mut Vec<(Key<'k>, u64, bool)>,
    ) {
        chunk.clear();
        chunk.extend((first..keys.len().min(first + CHUNK)).map(|i| {
            let key = keys.key(i);
            let hash = key.table_hash();
            let maybe = !matches!(key, Key::Word(_)) || self.may_hold(hash);
            (key, hash, maybe)
        }));
        touch(
            chunk
                .iter()
                .map(|&(key, hash, maybe)| match (key, &self.words) {
                    _ if !maybe => 0,
                    (Key::Bytes(_), _) => self.bytes.touch(hash),
                    (Key::Word(_), Words::Hashed(table)) => table.touch(hash),
                    _ => 0,
                }),
        );
    }

    /// The word keys of the bitmap, moved to a hash table sized for the
    /// keys expected.
    fn hashed_words(&self) -> WordSlots {
        let Words::Dense(dense) = &self.words else {
            return WordSlots::with_capacity(0);
        };
        let mut table = WordSlots::with_capacity(self.expected.max(2 * dense.len));
        for w in dense.values() {
            table.insert(w, word_hash(w));
        }
        table
    }
}

/// Loads every slot of `slots` at once: the loads do not depend on each
/// other, so the processor keeps many cache misses in flight, and the
/// lookups that follow find their lines in cache.
#[inline]
fn touch(slots: impl Iterator<Item = u64>) {
    std::hint::black_box(slots.fold(0u64, u64::wrapping_add));
}

/// Refuses a byte key longer than the set takes.
fn check_length(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidKeySchema(format!(
            "a key of {} bytes is longer than the {MAX_KEY_BYTES} bytes the filter takes",
            key.len()
        )));
    }
    Ok(())
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
        self.len += usize::from(new);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};
    use arrow_schema::DataType;

    use super::*;
    use crate::filter::codec::KeyCodec;
    use crate::store::KeySchema;

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

    /// The batch methods against the per-key ones, over `columns` encoded
    /// by `schema`: inserting reports each key new exactly the first time,
    /// and probing agrees with `contains` for held and unheld keys.
    fn batches_agree(schema: KeySchema, expected: usize, inserted: ArrayRef, probed: ArrayRef) {
        let codec = KeyCodec::new(&schema).expect("codec");
        let (inserted, probed) = (
            codec.encode(&[inserted]).expect("encode"),
            codec.encode(&[probed]).expect("encode"),
        );
        let mut set = KeySet::expecting(expected, codec.is_words());
        let mut model = KeySet::expecting(0, codec.is_words());
        let mut rows = Vec::new();
        set.insert_each(&inserted, |row, new| {
            rows.push(row);
            let key = inserted.key(row);
            assert_eq!(
                new,
                model.insert(key).expect("insert"),
                "row {row}: {key:?}"
            );
            Ok(())
        })
        .expect("insert_each");
        assert_eq!(
            rows,
            (0..inserted.len()).collect::<Vec<_>>(),
            "every row, in order"
        );
        assert_eq!(set.len(), model.len());
        let mut found = Vec::new();
        set.contains_each(&probed, |held| found.push(held));
        let expected: Vec<bool> = (0..probed.len())
            .map(|i| model.contains(probed.key(i)))
            .collect();
        assert_eq!(found, expected);
        assert!(
            found.contains(&true) && found.contains(&false),
            "probes of both kinds"
        );
    }

    #[test]
    fn batches_of_keys_agree_with_one_key_at_a_time() {
        // Past a chunk, with repeats within the batch and across chunks.
        let n = 3 * CHUNK as i64 + 17;
        let scattered = |i: i64| (i % 2_000).wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as i64);
        for (expected, values) in [
            (0, (0..n).map(|i| i % 2_000).collect::<Vec<_>>()),
            (4, (0..n).map(scattered).collect()),
        ] {
            let probes: Vec<i64> = values.iter().flat_map(|&v| [v, v ^ (1 << 41)]).collect();
            batches_agree(
                KeySchema::single("id", DataType::Int64).expect("schema"),
                expected,
                Arc::new(Int64Array::from(values)),
                Arc::new(Int64Array::from(probes)),
            );
        }
        // Nulls take the per-key path of words and bytes.
        let with_nulls = |i: i64| (i % 7 != 0).then_some(scattered(i));
        batches_agree(
            KeySchema::single("id", DataType::Int64).expect("schema"),
            0,
            Arc::new(Int64Array::from_iter((0..n).map(with_nulls))),
            Arc::new(Int64Array::from_iter((0..n).map(|i| with_nulls(i + 1000)))),
        );
        let strings = |shift: i64| {
            StringArray::from_iter(
                (0..n).map(|i| (i % 11 != 0).then(|| format!("key-{:x}", scattered(i + shift)))),
            )
        };
        batches_agree(
            KeySchema::single("name", DataType::Utf8).expect("schema"),
            16,
            Arc::new(strings(0)),
            Arc::new(strings(1000)),
        );
    }

    #[test]
    fn dense_words_grow_both_ways_and_stay_a_bitmap() {
        let mut words: Vec<u64> = (1_000_000..1_200_000).rev().collect();
        words.extend(1_200_000..1_400_000);
        words.extend([1_000_000, 1_399_999, 999_999]);
        let set = agrees(400_000, &words);
        assert!(set.is_dense());
        // About a bit a key, far below a hash slot's 9 bytes, and counted:
        // the bitmap covers at least the 400,001 values.
        assert!(
            (400_001 / 8..400_000).contains(&set.memory_bytes()),
            "{}",
            set.memory_bytes()
        );
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
    fn a_bitmap_covers_its_widest_span_and_no_more() {
        // Expecting no keys, the widest span is the least one: 2^20 values.
        let set = agrees(0, &[0, (1 << 20) - 1]);
        assert!(set.is_dense(), "2^20 values fit");
        let set = agrees(0, &[0, 1 << 20]);
        assert!(!set.is_dense(), "2^20 + 1 values do not");
    }

    #[test]
    fn a_bitmap_grows_by_doubling_within_its_widest_span() {
        // 2^20 keys in order, up from 0 and from 2^40 and down from the top:
        // expecting none, the widest span is the least one, 2^20 values,
        // which they fill exactly.
        let count = 1u64 << 20;
        for (first, step) in [(0, 1), (1 << 40, 1), (u64::MAX, u64::MAX)] {
            let mut set = KeySet::expecting(0, true);
            // (values held, span) at each growth.
            let mut growths: Vec<(u64, u64)> = Vec::new();
            let mut w = first;
            for held in 1..=count {
                assert!(set.insert_word(w), "{w} is new");
                let span = match &set.words {
                    Words::Dense(dense) => dense.span(),
                    Words::Hashed(_) => 0,
                };
                assert!(span >= held, "{w} kept in the bitmap");
                if growths.last().is_none_or(|&(_, last)| last != span) {
                    growths.push((held, span));
                }
                w = w.wrapping_add(step);
            }
            // Doubling: about log2(2^20 / 64) growths, not one per 64 values;
            // each at most twice what it holds (plus a word of slack each
            // side), and the last within the widest span.
            assert!(growths.len() <= 16, "{first}: {growths:?}");
            for &(held, span) in &growths {
                assert!(span <= 2 * held + 128, "{first}: {growths:?}");
            }
            assert!(
                growths.last().is_some_and(|&(_, span)| span <= 1 << 20),
                "{first}: {growths:?}"
            );
        }
    }

    #[test]
    fn a_null_key_is_new_once() {
        let mut set = KeySet::default();
        assert!(!set.contains(Key::Null));
        assert!(
            set.insert(Key::Null).expect("insert"),
            "the first null is new"
        );
        assert!(!set.insert(Key::Null).expect("insert"), "the second is not");
        assert!(set.contains(Key::Null));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn byte_keys_up_to_sixteen_mebibytes_are_taken() {
        let mut set = KeySet::default();
        let longest = vec![7u8; (1 << 24) - 1];
        assert!(set.insert(Key::Bytes(&longest)).expect("the longest key"));
        let too_long = vec![7u8; 1 << 24];
        let error = set
            .insert(Key::Bytes(&too_long))
            .expect_err("a key too long");
        assert!(error.to_string().contains("16777216 bytes"), "{error}");
        assert_eq!(set.len(), 1);
        assert!(set.contains(Key::Bytes(&longest)));
    }

    #[test]
    fn the_ends_of_the_word_range_are_held() {
        let set = agrees(4, &[u64::MAX, u64::MAX - 63, u64::MAX - 64, 0]);
        assert!(!set.is_dense(), "0 and u64::MAX are 2^64 apart");
        let set = agrees(4, &[u64::MAX, u64::MAX - 1000, u64::MAX - 1]);
        assert!(set.is_dense());
    }

    /// A set of `PRESENCE_MIN_KEYS` scattered words, with 0 among them:
    /// with the presence bitmap, every probe answers as without it, one key
    /// and a batch at a time; an insert drops it.
    #[test]
    fn a_presence_bitmap_changes_no_answer_and_drops_on_insert() {
        let n = PRESENCE_MIN_KEYS as i64;
        let scattered = |i: i64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as i64);
        let schema = KeySchema::single("id", DataType::Int64).expect("schema");
        let codec = KeyCodec::new(&schema).expect("codec");
        let encode = |values: Vec<i64>| {
            let column: ArrayRef = Arc::new(Int64Array::from(values));
            codec.encode(&[column]).expect("encode")
        };
        let held = encode((0..n).map(scattered).chain([0]).collect());
        // Half held, half not, and 0.
        let probed = encode((n / 2..n * 3 / 2).map(scattered).chain([0]).collect());
        let mut set = KeySet::expecting(0, true);
        set.insert_each(&held, |_, _| Ok(())).expect("insert");
        let answers = |set: &KeySet| {
            let mut batch = Vec::new();
            set.contains_each(&probed, |found| batch.push(found));
            let one_by_one: Vec<bool> = (0..probed.len())
                .map(|i| set.contains(probed.key(i)))
                .collect();
            assert_eq!(batch, one_by_one);
            batch
        };
        let without = answers(&set);
        assert_eq!(without.iter().filter(|&&f| f).count(), n as usize / 2 + 1);
        let before = set.memory_bytes();
        set.add_presence_bitmap(0);
        assert_eq!(set.memory_bytes(), before, "no room, no bitmap");
        set.add_presence_bitmap(usize::MAX);
        let bitmap = set.memory_bytes() - before;
        assert!(
            (n as usize..=2 * n as usize).contains(&bitmap),
            "8 to 16 bits a key: {bitmap} bytes"
        );
        assert_eq!(answers(&set), without);
        let absent = scattered(n * 2) as u64;
        assert!(!set.contains_word(absent));
        assert!(set.insert_word(absent), "new");
        assert_eq!(set.memory_bytes(), before, "an insert drops the bitmap");
        assert!(set.contains_word(absent));

        // Neither a bitmap of words nor byte keys get one.
        let mut dense = agrees(1 << 20, &(0..1 << 20).collect::<Vec<u64>>());
        let before = dense.memory_bytes();
        dense.add_presence_bitmap(usize::MAX);
        assert_eq!(dense.memory_bytes(), before);
        let mut bytes = KeySet::expecting(0, false);
        for i in 0..n {
            bytes
                .insert(Key::Bytes(format!("key-{i}").as_bytes()))
                .expect("insert");
        }
        let before = bytes.memory_bytes();
        bytes.add_presence_bitmap(usize::MAX);
        assert_eq!(bytes.memory_bytes(), before);
    }
}
