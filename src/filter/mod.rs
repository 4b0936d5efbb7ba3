//! The key filter: the anti-join that drops rows whose key is already checkpointed.
//!
//! Keys are compared exactly, in one of the encodings of [`codec`]: raw bits for
//! fixed-width keys, raw bytes for string and binary keys, Arrow's row format
//! for composite keys. There is no floating point and no probabilistic
//! structure: a row is dropped only if its exact key was checkpointed. Nulls
//! follow the store's rule: null equals null.
//!
//! [`KeyFilter`] holds all checkpointed keys in memory and reports how much it
//! uses. When they do not fit in a memory budget, [`crate::read`] partitions them
//! by hash into spill files and filters one partition at a time.

pub(crate) mod codec;
pub(crate) mod fingerprints;
pub(crate) mod hash_bitmap;
pub(crate) mod key_set;
pub(crate) mod range;
pub(crate) mod slots;
pub(crate) mod spill;

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, RecordBatch};
use arrow_buffer::BooleanBufferBuilder;
use arrow_schema::Schema;
use arrow_select::filter::filter_record_batch;
use futures::stream::{self, Stream, StreamExt};

use crate::error::{Error, Result};
use crate::store::keys::to_key_type;
use crate::store::keys::FetchedKeyFile;
use crate::store::{CheckpointStore, KeyFileRef, KeyRange, KeySchema, StoreState};
use codec::{EncodedKeys, KeyCodec};
use fingerprints::FingerprintSet;
use key_set::KeySet;

/// The set of checkpointed keys, held in memory, and the filter that drops rows
/// holding them.
#[derive(Debug)]
pub struct KeyFilter {
    key_schema: KeySchema,
    codec: KeyCodec,
    keys: KeySet,
}

impl KeyFilter {
    /// An empty filter for keys of `key_schema`: it drops nothing.
    pub fn new(key_schema: KeySchema) -> Result<Self> {
        Self::expecting(key_schema, 0)
    }

    /// An empty filter sized for about `keys` keys.
    pub(crate) fn expecting(key_schema: KeySchema, keys: u64) -> Result<Self> {
        let codec = KeyCodec::new(&key_schema)?;
        let keys = KeySet::expecting(
            usize::try_from(keys).unwrap_or(usize::MAX),
            codec.is_words(),
        );
        Ok(KeyFilter {
            codec,
            key_schema,
            keys,
        })
    }

    /// A filter holding every key checkpointed in `state` (staged keys of
    /// unsealed checkpoints do not count).
    pub async fn load(store: &CheckpointStore, state: &StoreState) -> Result<Self> {
        match Self::load_within(store, state, usize::MAX).await? {
            Some(filter) => Ok(filter),
            None => Err(Error::InvalidKeySchema(
                "the key filter outgrew the address space".into(),
            )),
        }
    }

    /// Like [`load`](Self::load), but gives up (returns `None`) as soon as the
    /// filter holds more than `budget_bytes` of memory.
    pub async fn load_within(
        store: &CheckpointStore,
        state: &StoreState,
        budget_bytes: usize,
    ) -> Result<Option<Self>> {
        let mut filter = Self::expecting(store.key_schema().clone(), state.key_count())?;
        // Keys are encoded in the decoding tasks, beside the inserts here.
        let codec = Arc::new(KeyCodec::new(store.key_schema())?);
        let encode: KeyFileMap<Vec<EncodedKeys>> = Arc::new(move |file| {
            file.keys()?
                .iter()
                .map(|batch| codec.encode(batch.columns()))
                .collect()
        });
        let mut files = key_files(store, state.key_files(), encode);
        while let Some(encoded) = files.next().await {
            for keys in encoded? {
                filter.insert_encoded(&keys)?;
                if filter.memory_bytes() > budget_bytes {
                    return Ok(None);
                }
            }
        }
        Ok(Some(filter))
    }

    /// The checkpointed keys of `state` that `wanted` also holds: for a read
    /// whose source is much smaller than the checkpoint, so that the filter
    /// is the size of the source, not of the history. Key files are streamed
    /// through `wanted` and none is held whole; those whose range does not
    /// meet `wanted_range` (the source keys' range) are not read at all, and
    /// those with fingerprints none of which is in `wanted_fingerprints` are
    /// not decoded.
    pub(crate) async fn load_matching(
        store: &CheckpointStore,
        state: &StoreState,
        wanted: &Arc<KeyFilter>,
        wanted_range: Option<&KeyRange>,
        wanted_fingerprints: Option<Arc<FingerprintSet>>,
    ) -> Result<Matched> {
        let mut filter = Self::expecting(store.key_schema().clone(), wanted.len() as u64)?;
        // A key file whose keys all lie outside the source's cannot hold one
        // of them.
        let (read, skipped): (Vec<KeyFileRef>, Vec<KeyFileRef>) = state
            .key_files()
            .into_iter()
            .partition(|file| match (wanted_range, &file.key_range) {
                (Some(wanted), Some(held)) => wanted.overlaps(held),
                _ => true,
            });
        // The probe runs in the decoding tasks, on both cores; only the keys
        // that match come back, `None` for a file its fingerprints rule out.
        let store_for_tasks = store.clone();
        let mut files = stream::iter(read)
            .map(move |file| {
                let store = store_for_tasks.clone();
                let wanted = wanted.clone();
                let wanted_fingerprints = wanted_fingerprints.clone();
                tokio::spawn(async move {
                    match_key_file(&store, &file, &wanted, wanted_fingerprints.as_deref()).await
                })
            })
            .buffered(KEY_FILES_AT_ONCE)
            .map(|joined| {
                joined.map_err(|source| Error::Task {
                    task: "matching a key file",
                    source,
                })?
            });
        let mut files_not_decoded = 0;
        while let Some(matching) = files.next().await {
            let Some(matching) = matching? else {
                files_not_decoded += 1;
                continue;
            };
            for batch in matching {
                filter.insert(&batch)?;
            }
        }
        Ok(Matched {
            filter,
            files_skipped: skipped.len() as u64,
            files_not_decoded,
        })
    }

    /// The rows of a batch of key columns whose key this filter holds.
    fn held_rows(&self, keys: &RecordBatch) -> Result<RecordBatch> {
        let encoded = self.codec.encode(keys.columns())?;
        let mut held = BooleanBufferBuilder::new(encoded.len());
        self.keys
            .contains_each(&encoded, |found| held.append(found));
        filter_record_batch(keys, &BooleanArray::new(held.finish(), None)).map_err(|source| {
            Error::Arrow {
                context: "selecting the checkpointed keys a source holds",
                source,
            }
        })
    }

    /// The key schema this filter holds keys of.
    pub fn key_schema(&self) -> &KeySchema {
        &self.key_schema
    }

    /// Adds the keys of a batch of key columns (in the key schema's order).
    pub fn insert(&mut self, keys: &RecordBatch) -> Result<()> {
        // The codec bundles them with `KeySchema::batch`, which converts other
        // spellings of string and binary keys to the kept one.
        let encoded = self.codec.encode(keys.columns())?;
        self.insert_encoded(&encoded)
    }

    /// Adds keys already encoded by a codec of this filter's key schema.
    pub(crate) fn insert_encoded(&mut self, encoded: &EncodedKeys) -> Result<()> {
        self.keys.insert_each(encoded, |_, _| Ok(()))
    }

    /// Readies a complete filter for many probes: a large hash table gets a
    /// presence bitmap in front (about a byte or two a key), if the filter
    /// stays within `budget_bytes` with it. Inserts after this drop it.
    pub(crate) fn add_presence_bitmap(&mut self, budget_bytes: usize) {
        let left = budget_bytes.saturating_sub(self.memory_bytes());
        self.keys.add_presence_bitmap(left);
    }

    /// Number of distinct keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the filter holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.len() == 0
    }

    /// Heap memory held by the keys and their hash table, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.keys.memory_bytes()
    }

    /// Checks that `schema` has the key columns with the checkpointed types,
    /// before any row is read.
    pub fn check_source(&self, schema: &Schema) -> Result<()> {
        check_source(&self.key_schema, schema)
    }

    /// The rows of `batch` whose key is not checkpointed. `batch` must hold the
    /// key columns under their names, with the checkpointed types.
    pub fn retain_unprocessed(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        filter_rows(batch, &self.unprocessed(batch)?)
    }

    /// Which rows of `batch` hold a key that is not checkpointed.
    pub(crate) fn unprocessed(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let keys = self.encode_batch(batch)?;
        let mut keep = BooleanBufferBuilder::new(keys.len());
        self.keys.contains_each(&keys, |held| keep.append(!held));
        Ok(BooleanArray::new(keep.finish(), None))
    }

    /// Encodes the key columns of a source batch.
    pub(crate) fn encode_batch(&self, batch: &RecordBatch) -> Result<EncodedKeys> {
        self.codec.encode(&key_columns(&self.key_schema, batch)?)
    }
}

/// Each of `files` fetched and passed through `map`, in order. Each file is
/// fetched, decoded and mapped in a task of its own, two at once, so that
/// work goes on beside the caller's work on the previous file.
fn key_files<T: Send + 'static>(
    store: &CheckpointStore,
    files: Vec<KeyFileRef>,
    map: KeyFileMap<T>,
) -> impl Stream<Item = Result<T>> + Unpin {
    let store = store.clone();
    stream::iter(files)
        .map(move |file| {
            let store = store.clone();
            let map = map.clone();
            tokio::spawn(async move { map(store.fetch_key_file(&file).await?) })
        })
        .buffered(KEY_FILES_AT_ONCE)
        .map(|joined| {
            joined.map_err(|source| Error::Task {
                task: "decoding a key file",
                source,
            })?
        })
}

/// The keys of `file` that `wanted` holds, or `None` when the file's
/// fingerprints show it holds none of them. The fingerprints are fetched alone
/// when the file's record says where they lie, else with the whole file.
async fn match_key_file(
    store: &CheckpointStore,
    file: &KeyFileRef,
    wanted: &KeyFilter,
    wanted_fingerprints: Option<&FingerprintSet>,
) -> Result<Option<Vec<RecordBatch>>> {
    let rules_out = |fingerprints: &[u64]| {
        wanted_fingerprints.is_some_and(|wanted| !wanted.any_of(fingerprints))
    };
    let mut file_fingerprints = None;
    if wanted_fingerprints.is_some() {
        if let Some(fingerprints) = store.fetch_fingerprints(file).await? {
            if rules_out(&fingerprints) {
                return Ok(None);
            }
            file_fingerprints = Some(fingerprints);
        }
    }
    let fetched = store.fetch_key_file(file).await?;
    if wanted_fingerprints.is_some() && file_fingerprints.is_none() {
        if let Some(fingerprints) = fetched.fingerprints()? {
            if rules_out(&fingerprints) {
                return Ok(None);
            }
            file_fingerprints = Some(fingerprints);
        }
    }
    let batches = fetched.keys()?;
    // A key whose fingerprint is none of the source keys' is none of them:
    // only the others are compared exactly (a word probe each, where the
    // exact probe hashes the key's bytes).
    let candidates = match (wanted_fingerprints, file_fingerprints) {
        (Some(wanted), Some(fingerprints))
            if fingerprints.len() == batches.iter().map(RecordBatch::num_rows).sum::<usize>() =>
        {
            let held = BooleanArray::new(wanted.each_held(&fingerprints), None);
            let mut at = 0;
            let mut candidates = Vec::with_capacity(batches.len());
            for batch in &batches {
                let mask = held.slice(at, batch.num_rows());
                at += batch.num_rows();
                candidates.push(filter_record_batch(batch, &mask).map_err(|source| {
                    Error::Arrow {
                        context: "selecting the keys whose fingerprint a source key has",
                        source,
                    }
                })?);
            }
            candidates
        }
        _ => batches,
    };
    candidates
        .iter()
        .map(|batch| wanted.held_rows(batch))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// What [`KeyFilter::load_matching`] found.
pub(crate) struct Matched {
    /// The checkpointed keys the source holds.
    pub(crate) filter: KeyFilter,
    /// Key files not read: their key range holds no source key.
    pub(crate) files_skipped: u64,
    /// Key files read but not decoded: their fingerprints hold no source key's.
    pub(crate) files_not_decoded: u64,
}

/// Work done on a fetched key file in the task that fetched it.
type KeyFileMap<T> = Arc<dyn Fn(FetchedKeyFile) -> Result<T> + Send + Sync>;

/// Key files fetched and decoded at once while loading.
const KEY_FILES_AT_ONCE: usize = 2;

/// Checks that `schema` has the columns of `key_schema` with the same types.
pub(crate) fn check_source(key_schema: &KeySchema, schema: &Schema) -> Result<()> {
    let names: Vec<&str> = key_schema
        .columns()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    KeySchema::from_source(schema, &names)?.ensure_same(key_schema)
}

/// The key columns of a source batch, in the key schema's order.
pub(crate) fn key_columns(key_schema: &KeySchema, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    check_source(key_schema, batch.schema_ref())?;
    key_schema
        .columns()
        .iter()
        .map(|c| {
            let array = batch.column_by_name(&c.name).ok_or_else(|| {
                Error::InvalidKeySchema(format!("key column `{}` missing from batch", c.name))
            })?;
            to_key_type(array, &c.data_type)
        })
        .collect()
}

/// Keeps the rows of `batch` where `keep` is true.
pub(crate) fn filter_rows(batch: &RecordBatch, keep: &BooleanArray) -> Result<RecordBatch> {
    filter_record_batch(batch, keep).map_err(|source| Error::Arrow {
        context: "dropping checkpointed rows",
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use arrow_schema::DataType;

    use super::*;

    #[tokio::test]
    async fn loading_within_a_budget_gives_up_only_past_it() {
        let location = crate::store::StoreLocation::from_object_store(
            Arc::new(object_store::memory::InMemory::new()),
            "store".into(),
        );
        let schema = KeySchema::single("id", DataType::Utf8).expect("schema");
        let store = CheckpointStore::open_at(location, schema)
            .await
            .expect("store");
        let mut writer = store.begin().await.expect("begin");
        let keys = arrow_array::StringArray::from_iter_values((0..1_000).map(|i| format!("k{i}")));
        writer
            .stage_keys(&[Arc::new(keys) as ArrayRef])
            .await
            .expect("stage");
        writer.seal().await.expect("seal");
        let state = store.load().await.expect("state");
        let held = KeyFilter::load(&store, &state)
            .await
            .expect("load")
            .memory_bytes();
        for (budget, fits) in [(held, true), (held - 1, false)] {
            let loaded = KeyFilter::load_within(&store, &state, budget)
                .await
                .expect("load");
            assert_eq!(
                loaded.is_some(),
                fits,
                "{held} bytes in a budget of {budget}"
            );
        }
    }

    #[test]
    fn a_filter_is_empty_until_it_holds_a_key() {
        let schema = KeySchema::single("id", DataType::Int64).expect("schema");
        let mut filter = KeyFilter::new(schema.clone()).expect("filter");
        assert!(filter.is_empty());
        assert_eq!(filter.len(), 0);
        let keys = schema
            .batch(&[Arc::new(arrow_array::Int64Array::from(vec![7, 7, 9])) as ArrayRef])
            .expect("keys");
        filter.insert(&keys).expect("insert");
        assert!(!filter.is_empty());
        assert_eq!(filter.len(), 2);
    }

    #[test]
    fn a_filter_sizes_its_table_for_the_kind_of_key_expected() {
        // Word keys start in a bitmap that grows with them, and take a hash
        // table only if they turn out sparse; byte keys get their table up
        // front, as growing a table of millions of keys rehashes it often.
        let expected = 1_000_000;
        for data_type in [DataType::Int64, DataType::Date32] {
            let words = KeyFilter::expecting(
                KeySchema::single("id", data_type.clone()).expect("schema"),
                expected,
            )
            .expect("filter");
            assert_eq!(words.memory_bytes(), 0, "{data_type}");
        }
        for data_type in [DataType::Utf8, DataType::LargeBinary] {
            let bytes = KeyFilter::expecting(
                KeySchema::single("id", data_type.clone()).expect("schema"),
                expected,
            )
            .expect("filter");
            assert!(
                bytes.memory_bytes() >= expected as usize * 8,
                "{data_type}: {}",
                bytes.memory_bytes()
            );
        }
    }
}
