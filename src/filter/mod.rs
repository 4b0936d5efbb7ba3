//! The key filter: the anti-join that drops rows whose key is already checkpointed.
//!
//! Keys are compared in Arrow's row format, which encodes every supported key
//! type (and composite keys) into bytes that are equal exactly when the keys are
//! equal. There is no hashing to floating point and no probabilistic structure:
//! a row is dropped only if its exact key was checkpointed. Nulls follow the
//! store's rule: null equals null.
//!
//! This first version holds the checkpointed keys in memory and reports how much
//! it uses ([`KeyFilter::memory_bytes`]).

use std::collections::HashSet;

use arrow_array::{BooleanArray, RecordBatch};
use arrow_row::{RowConverter, SortField};
use arrow_schema::Schema;
use arrow_select::filter::filter_record_batch;

use crate::error::{Error, Result};
use crate::store::{CheckpointStore, KeySchema, StoreState};

/// The set of checkpointed keys, and the filter that drops rows holding them.
#[derive(Debug)]
pub struct KeyFilter {
    key_schema: KeySchema,
    converter: RowConverter,
    keys: HashSet<Box<[u8]>>,
    key_bytes: usize,
}

impl KeyFilter {
    /// An empty filter for keys of `key_schema`: it drops nothing.
    pub fn new(key_schema: KeySchema) -> Result<Self> {
        let fields = key_schema
            .columns()
            .iter()
            .map(|c| SortField::new(c.data_type.clone()))
            .collect();
        let converter =
            RowConverter::new(fields).map_err(|e| Error::InvalidKeySchema(e.to_string()))?;
        Ok(KeyFilter {
            key_schema,
            converter,
            keys: HashSet::new(),
            key_bytes: 0,
        })
    }

    /// A filter holding every key checkpointed in `state` (staged keys of
    /// unsealed checkpoints do not count).
    pub async fn load(store: &CheckpointStore, state: &StoreState) -> Result<Self> {
        let mut filter = Self::new(store.key_schema().clone())?;
        for file in state.key_files() {
            for batch in store.read_keys(&file).await? {
                filter.insert(&batch)?;
            }
        }
        Ok(filter)
    }

    /// Adds the keys of a batch of key columns (in the key schema's order).
    pub fn insert(&mut self, keys: &RecordBatch) -> Result<()> {
        self.key_schema.batch(keys.columns())?;
        let rows = self.rows(keys.columns())?;
        for row in rows.iter() {
            if self.keys.insert(row.as_ref().into()) {
                self.key_bytes += row.as_ref().len();
            }
        }
        Ok(())
    }

    /// Number of distinct keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the filter holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Approximate heap memory held: the encoded keys plus the hash table.
    pub fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<Box<[u8]>>() + 1;
        self.key_bytes + self.keys.capacity() * slot
    }

    /// Checks that `schema` has the key columns with the checkpointed types,
    /// before any row is read.
    pub fn check_source(&self, schema: &Schema) -> Result<()> {
        let names: Vec<&str> = self
            .key_schema
            .columns()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        KeySchema::from_source(schema, &names)?.ensure_same(&self.key_schema)
    }

    /// The rows of `batch` whose key is not checkpointed. `batch` must hold the
    /// key columns under their names, with the checkpointed types.
    pub fn retain_unprocessed(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        self.check_source(batch.schema_ref())?;
        let columns = self
            .key_schema
            .columns()
            .iter()
            .map(|c| batch.column_by_name(&c.name).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::InvalidKeySchema("key column missing from batch".into()))?;
        let rows = self.rows(&columns)?;
        let keep: BooleanArray = rows
            .iter()
            .map(|row| Some(!self.keys.contains(row.as_ref())))
            .collect();
        filter_record_batch(batch, &keep).map_err(|source| Error::Arrow {
            context: "dropping checkpointed rows",
            source,
        })
    }

    /// Encodes key columns already checked against the key schema.
    fn rows(&self, columns: &[arrow_array::ArrayRef]) -> Result<arrow_row::Rows> {
        self.converter
            .convert_columns(columns)
            .map_err(|e| Error::KeySchemaMismatch {
                expected: self.key_schema.to_string(),
                found: e.to_string(),
            })
    }
}
