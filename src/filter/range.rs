//! The least and greatest key of a set of keys, in the encoded order the
//! filter compares them in. Each key file records its range, so that a read
//! whose source keys all fall outside a file's range never opens that file:
//! with keys that grow over time (sequence numbers, timestamps, time-ordered
//! ids), a run over new rows reads none of the history's key files.

use arrow_array::RecordBatch;

use super::codec::{EncodedKeys, Key, KeyCodec};
use crate::error::Result;
use crate::store::{KeyRange, KeySchema};

/// The range of a batch of key columns of `key_schema` (as a key file holds
/// them): see [`RangeBuilder::finish`].
pub(crate) fn key_range(key_schema: &KeySchema, keys: &RecordBatch) -> Result<Option<KeyRange>> {
    let mut range = RangeBuilder::default();
    range.add(&KeyCodec::new(key_schema)?.encode(keys.columns())?);
    Ok(range.finish())
}

/// Accumulates the least and greatest of the keys added.
#[derive(Debug, Default)]
pub(crate) struct RangeBuilder {
    least: Option<Vec<u8>>,
    greatest: Option<Vec<u8>>,
    null: bool,
}

impl RangeBuilder {
    /// Adds a batch of encoded keys.
    pub(crate) fn add(&mut self, keys: &EncodedKeys) {
        if let Some(words) = keys.words_without_nulls() {
            if let (Some(least), Some(greatest)) = (words.iter().min(), words.iter().max()) {
                self.offer(&least.to_be_bytes(), &greatest.to_be_bytes());
            }
            return;
        }
        let mut least: Option<Key<'_>> = None;
        let mut greatest: Option<Key<'_>> = None;
        for i in 0..keys.len() {
            let key = keys.key(i);
            if key == Key::Null {
                self.null = true;
                continue;
            }
            if least.is_none_or(|l| order(key, l).is_lt()) {
                least = Some(key);
            }
            if greatest.is_none_or(|g| order(key, g).is_gt()) {
                greatest = Some(key);
            }
        }
        if let (Some(least), Some(greatest)) = (least, greatest) {
            self.offer(&bytes(least), &bytes(greatest));
        }
    }

    fn offer(&mut self, least: &[u8], greatest: &[u8]) {
        if self.least.as_deref().is_none_or(|l| least < l) {
            self.least = Some(least.to_vec());
        }
        if self.greatest.as_deref().is_none_or(|g| greatest > g) {
            self.greatest = Some(greatest.to_vec());
        }
    }

    /// The range of the keys added. None when none was added, or when one was
    /// null: a null key has no place in the order, so its file is never
    /// skipped.
    pub(crate) fn finish(self) -> Option<KeyRange> {
        if self.null {
            return None;
        }
        Some(KeyRange {
            least: hex(&self.least?),
            greatest: hex(&self.greatest?),
        })
    }
}

/// The order of two non-null keys of one encoding: words as unsigned
/// numbers, which is the order of their big-endian bytes.
fn order(a: Key<'_>, b: Key<'_>) -> std::cmp::Ordering {
    match (a, b) {
        (Key::Word(a), Key::Word(b)) => a.cmp(&b),
        _ => bytes(a).cmp(&bytes(b)),
    }
}

fn bytes(key: Key<'_>) -> std::borrow::Cow<'_, [u8]> {
    match key {
        Key::Null => std::borrow::Cow::Borrowed(&[]),
        Key::Word(w) => std::borrow::Cow::Owned(w.to_be_bytes().to_vec()),
        Key::Bytes(b) => std::borrow::Cow::Borrowed(b),
    }
}

/// Lowercase hex: two digits a byte keeps the bytes' order, prefixes
/// included, so ranges compare as strings.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};
    use arrow_schema::DataType;

    use super::*;
    use crate::filter::codec::KeyCodec;
    use crate::store::KeySchema;

    fn range_of(key_type: DataType, batches: Vec<ArrayRef>) -> Option<KeyRange> {
        let codec = KeyCodec::new(&KeySchema::single("k", key_type).unwrap()).unwrap();
        let mut builder = RangeBuilder::default();
        for batch in batches {
            builder.add(&codec.encode(&[batch]).unwrap());
        }
        builder.finish()
    }

    #[test]
    fn word_ranges_span_every_batch() {
        let range = range_of(
            DataType::Int64,
            vec![
                Arc::new(Int64Array::from(vec![7, 4, 9])),
                Arc::new(Int64Array::from(vec![12, 5])),
                Arc::new(Int64Array::from(vec![8, 3])),
            ],
        )
        .unwrap();
        assert_eq!(range.least, "0000000000000003");
        assert_eq!(range.greatest, "000000000000000c");
        let later = range_of(DataType::Int64, vec![Arc::new(Int64Array::from(vec![13]))]);
        assert!(!range.overlaps(&later.unwrap()));
        let inside = range_of(DataType::Int64, vec![Arc::new(Int64Array::from(vec![4]))]);
        assert!(range.overlaps(&inside.unwrap()));
        let edge = range_of(DataType::Int64, vec![Arc::new(Int64Array::from(vec![12]))]);
        assert!(range.overlaps(&edge.unwrap()));
    }

    #[test]
    fn byte_ranges_follow_byte_order_prefixes_included() {
        let keys = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        let range = range_of(
            DataType::Utf8,
            vec![keys(vec!["abc", "ab0"]), keys(vec!["b", "ab", "abc"])],
        )
        .unwrap();
        assert_eq!(range.least, hex(b"ab"));
        assert_eq!(range.greatest, hex(b"b"));
        let probe =
            |k: &str| range.overlaps(&range_of(DataType::Utf8, vec![keys(vec![k])]).unwrap());
        assert!(probe("abb"));
        assert!(probe("ab"));
        assert!(probe("b"));
        assert!(!probe("a"));
        assert!(!probe("ba"));
        assert!(!probe("c"));
    }

    #[test]
    fn a_null_key_or_no_key_gives_no_range() {
        let with_null: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        assert_eq!(range_of(DataType::Int64, vec![with_null]), None);
        let no_key: ArrayRef = Arc::new(Int64Array::from(Vec::<i64>::new()));
        assert_eq!(range_of(DataType::Int64, vec![no_key]), None);
        let null_string: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None]));
        assert_eq!(range_of(DataType::Utf8, vec![null_string]), None);
    }
}
