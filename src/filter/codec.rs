//! How key columns become hashable, comparable values.
//!
//! Three encodings, chosen once per key schema:
//! - **words**: a single fixed-width column of at most 8 bytes (integers, dates,
//!   times, timestamps, durations, small decimals) is read as its raw bits, so a
//!   key costs 8 bytes and no conversion.
//! - **raw bytes**: a single string or binary column is compared on its bytes.
//! - **rows**: anything else (composite keys, booleans, wide decimals) goes
//!   through Arrow's row format, whose bytes are equal exactly when the keys are.
//!
//! In every encoding a null key is its own value ([`Key::Null`]) and equals only
//! null, which is the store's null rule. All keys of one store have one type, so
//! equal bits always mean equal keys.

use std::hash::BuildHasher;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_buffer::ScalarBuffer;
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::DataType;
use foldhash::quality::FixedState;

use crate::error::{Error, Result};
use crate::store::KeySchema;

/// One key, borrowed from a batch of encoded keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    /// A null key (every column null for a single-column key).
    Null,
    /// A fixed-width key's bits.
    Word(u64),
    /// A variable-width or composite key's bytes.
    Bytes(&'a [u8]),
}

/// Seeds for the two hashes in play: one places a key in a hash table, the other
/// in a spill partition. They must differ, or every key of one partition would
/// share its table bucket bits.
const TABLE_SEED: u64 = 0x7469_6465_6d61_726b;
const PARTITION_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

impl Key<'_> {
    /// Hash used by hash tables.
    pub(crate) fn table_hash(&self) -> u64 {
        self.hash_with(FixedState::with_seed(TABLE_SEED))
    }

    /// Hash used to choose a spill partition.
    pub(crate) fn partition_hash(&self) -> u64 {
        self.hash_with(FixedState::with_seed(PARTITION_SEED))
    }

    fn hash_with(&self, state: FixedState) -> u64 {
        match self {
            Key::Null => state.hash_one(0u8),
            Key::Word(w) => state.hash_one(w),
            Key::Bytes(b) => state.hash_one(b),
        }
    }
}

/// Which encoding a key schema uses.
#[derive(Debug)]
enum Kind {
    Words,
    RawBytes,
    Rows(RowConverter),
}

/// Encodes key columns of one key schema.
#[derive(Debug)]
pub(crate) struct KeyCodec {
    kind: Kind,
    key_schema: KeySchema,
}

impl KeyCodec {
    /// The codec for `key_schema`.
    pub(crate) fn new(key_schema: &KeySchema) -> Result<Self> {
        let columns = key_schema.columns();
        let kind = match columns {
            [only] if word_width(&only.data_type).is_some() => Kind::Words,
            [only] if is_raw_bytes(&only.data_type) => Kind::RawBytes,
            _ => {
                let fields = columns
                    .iter()
                    .map(|c| SortField::new(c.data_type.clone()))
                    .collect();
                Kind::Rows(
                    RowConverter::new(fields)
                        .map_err(|e| Error::InvalidKeySchema(e.to_string()))?,
                )
            }
        };
        Ok(KeyCodec {
            kind,
            key_schema: key_schema.clone(),
        })
    }

    /// Whether keys are fixed-width words (8 bytes each in memory).
    pub(crate) fn is_words(&self) -> bool {
        matches!(self.kind, Kind::Words)
    }

    /// Encodes key columns, given in the key schema's order with its types.
    pub(crate) fn encode(&self, columns: &[ArrayRef]) -> Result<EncodedKeys> {
        let batch = self.key_schema.batch(columns)?;
        let column = batch.column(0);
        Ok(match &self.kind {
            Kind::Words => EncodedKeys::Words {
                words: words_of(column)?,
                nulls: column.logical_nulls(),
            },
            Kind::RawBytes => EncodedKeys::RawBytes(column.clone()),
            Kind::Rows(converter) => {
                EncodedKeys::Rows(converter.convert_columns(batch.columns()).map_err(|e| {
                    Error::KeySchemaMismatch {
                        expected: self.key_schema.to_string(),
                        found: e.to_string(),
                    }
                })?)
            }
        })
    }
}

/// The keys of one batch, encoded.
#[derive(Debug)]
pub(crate) enum EncodedKeys {
    Words {
        words: Vec<u64>,
        nulls: Option<arrow_buffer::NullBuffer>,
    },
    RawBytes(ArrayRef),
    Rows(Rows),
}

impl EncodedKeys {
    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        match self {
            EncodedKeys::Words { words, .. } => words.len(),
            EncodedKeys::RawBytes(array) => array.len(),
            EncodedKeys::Rows(rows) => rows.num_rows(),
        }
    }

    /// The words of fixed-width keys, when none is null: the fast path of
    /// probes and inserts.
    pub(crate) fn words_without_nulls(&self) -> Option<&[u64]> {
        match self {
            EncodedKeys::Words { words, nulls }
                if nulls.as_ref().is_none_or(|n| n.null_count() == 0) =>
            {
                Some(words)
            }
            _ => None,
        }
    }

    /// The key of row `i`.
    pub(crate) fn key(&self, i: usize) -> Key<'_> {
        match self {
            EncodedKeys::Words { words, nulls } => {
                if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                    Key::Null
                } else {
                    Key::Word(words[i])
                }
            }
            EncodedKeys::RawBytes(array) => {
                if array.is_null(i) {
                    Key::Null
                } else {
                    Key::Bytes(raw_bytes(array, i))
                }
            }
            EncodedKeys::Rows(rows) => Key::Bytes(rows.row(i).data()),
        }
    }
}

/// The width of a type that the words encoding takes, if any: a primitive
/// type of at most 8 bytes (Arrow gives no primitive width to booleans,
/// which are bit-packed, nor to any non-primitive type).
fn word_width(data_type: &DataType) -> Option<usize> {
    data_type.primitive_width().filter(|w| *w <= 8)
}

/// Whether a key type is encoded as its raw bytes. Key schemas keep strings
/// as `Utf8` and binary as `Binary` (see
/// [`canonical_key_type`](crate::store::canonical_key_type)), so their other
/// spellings never reach the codec.
fn is_raw_bytes(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::Binary | DataType::FixedSizeBinary(_)
    )
}

/// The raw bits of a fixed-width column, zero-extended to 64 bits.
fn words_of(array: &ArrayRef) -> Result<Vec<u64>> {
    let data = array.to_data();
    let width = word_width(array.data_type()).ok_or_else(|| {
        Error::InvalidKeySchema(format!("{} is not a fixed-width key", array.data_type()))
    })?;
    let buffer = data
        .buffers()
        .first()
        .ok_or_else(|| Error::InvalidKeySchema("fixed-width key array has no values".into()))?
        .clone();
    let (offset, len) = (data.offset(), data.len());
    Ok(match width {
        1 => ScalarBuffer::<u8>::new(buffer, offset, len)
            .iter()
            .map(|&v| u64::from(v))
            .collect(),
        2 => ScalarBuffer::<u16>::new(buffer, offset, len)
            .iter()
            .map(|&v| u64::from(v))
            .collect(),
        4 => ScalarBuffer::<u32>::new(buffer, offset, len)
            .iter()
            .map(|&v| u64::from(v))
            .collect(),
        8 => ScalarBuffer::<u64>::new(buffer, offset, len).to_vec(),
        other => {
            return Err(Error::InvalidKeySchema(format!(
                "unexpected key width {other}"
            )))
        }
    })
}

/// The bytes of a non-null value of a string or binary column.
fn raw_bytes(array: &ArrayRef, i: usize) -> &[u8] {
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(i).as_bytes(),
        DataType::Binary => array.as_binary::<i32>().value(i),
        DataType::FixedSizeBinary(_) => array.as_fixed_size_binary().value(i),
        // The codec only builds RawBytes for the types above.
        _ => &[],
    }
}
