//! The checkpoint store: what a pipeline has processed and written, on any object store.
//!
//! A checkpoint moves through `staged -> checkpointed -> committed`:
//! - **staged**: a [`CheckpointWriter`] has stored keys and recorded in-flight data
//!   files. Nothing of it is visible to readers; a crashed writer leaves only this.
//! - **checkpointed**: the writer sealed it with one put-if-not-exists of its
//!   manifest. Its keys are skipped by every later read; its files wait for a commit.
//! - **committed**: the sink appended its files to the table and the store recorded
//!   a commit marker. Its keys stay skipped; [`CheckpointStore::compact`] folds it
//!   into the sorted key index so reads stay cheap as history grows.

mod acceptances;
mod compaction;
mod forgotten;
mod intents;
mod io;
pub(crate) mod keys;
mod layout;
mod lease;
mod location;
mod orphans;
mod records;
mod staging;
mod state;
mod status;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use compaction::{
    CompactionOptions, CompactionReport, AUTO_COMPACTION_CHECKPOINTS, AUTO_COMPACTION_KEPT_COMMITS,
};
pub use keys::{canonical_key_type, KeyColumn, KeySchema};
pub(crate) use lease::ensure_not_fenced;
pub use lease::{
    Fence, Lease, LeaseOptions, LeaseStatus, KEPT_LEASE_EPOCHS, MAX_LEASE_TTL, PIPELINE_SCOPE,
};
pub use location::{
    StoreLocation, OPTION_MAX_RETRIES, OPTION_RETRY_TIMEOUT_SECS, URL_CREDENTIALS_REFUSED,
};
pub use orphans::Orphans;
pub use records::{
    unit_digest, AcceptanceRecord, BeginMarker, CheckpointId, CollectedRecord, CommitIntent,
    CommitMarker, Descriptor, FileRecord, FingerprintBytes, ForgottenCommit, InFlightRecord,
    IndexGeneration, KeyFileRef, KeyRange, KeyRun, LeaseClaim, LeaseHeartbeat, LeaseRecord,
    Manifest, ShardLayout, TableFileMetadata, FORMAT_VERSION, MIN_FORMAT_VERSION,
};
pub use state::{CheckpointState, CheckpointSummary, StoreState};
pub use status::{LastCommit, StagedCheckpoint, StoreStatus};
pub use writer::{CheckpointWriter, KEY_FILE_ROWS};

use crate::error::{Error, ObjectKind, Result};
use keys::FetchedKeyFile;
use layout::Layout;

/// A checkpoint store rooted at one location. Cheap to clone; clones share the
/// connection to the object store.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    location: StoreLocation,
    layout: Layout,
    key_schema: KeySchema,
    /// The index generation this handle decoded last (see [`state::IndexCache`]).
    index_cache: state::IndexCache,
}

impl CheckpointStore {
    /// Opens the store at `url` for keys of `key_schema`, creating it if it is new.
    /// See [`StoreLocation::from_url`] for URLs and options.
    pub async fn open(
        url: &str,
        options: &HashMap<String, String>,
        key_schema: KeySchema,
    ) -> Result<Self> {
        Self::open_at(StoreLocation::from_url(url, options)?, key_schema).await
    }

    /// Opens the store at `location` for keys of `key_schema`, creating it if it is
    /// new. An existing store must have been created with the same key schema.
    pub async fn open_at(location: StoreLocation, key_schema: KeySchema) -> Result<Self> {
        let layout = Layout::new(location.prefix.clone());
        let path = layout.descriptor();
        let descriptor = Descriptor {
            format_version: FORMAT_VERSION,
            key_columns: key_schema.columns().to_vec(),
            created_at: location.environment.now(),
        };
        let store = location.object_store.as_ref();
        let encoded = records::encode(ObjectKind::Descriptor, path.as_ref(), &descriptor)?;
        if !io::put_if_absent(store, &path, encoded).await? {
            let existing = read_descriptor(store, &path).await?;
            KeySchema::new(existing.key_columns)?.ensure_same(&key_schema)?;
        }
        Ok(Self::from_parts(location, layout, key_schema))
    }

    /// Opens an existing store, taking the key schema from its descriptor.
    pub async fn open_existing(location: StoreLocation) -> Result<Self> {
        let layout = Layout::new(location.prefix.clone());
        let path = layout.descriptor();
        if !io::exists(location.object_store.as_ref(), &path).await? {
            return Err(Error::NoStore {
                url: location.url.clone(),
            });
        }
        let descriptor = read_descriptor(location.object_store.as_ref(), &path).await?;
        let key_schema = KeySchema::new(descriptor.key_columns)?;
        Ok(Self::from_parts(location, layout, key_schema))
    }

    fn from_parts(location: StoreLocation, layout: Layout, key_schema: KeySchema) -> Self {
        CheckpointStore {
            inner: Arc::new(Inner {
                location,
                layout,
                key_schema,
                index_cache: state::IndexCache::default(),
            }),
        }
    }

    /// The columns that identify a row in this store.
    pub fn key_schema(&self) -> &KeySchema {
        &self.inner.key_schema
    }

    /// Where the store is.
    pub fn location(&self) -> &StoreLocation {
        &self.inner.location
    }

    /// Begins a new checkpoint with a fresh, time-ordered id.
    pub async fn begin(&self) -> Result<CheckpointWriter> {
        CheckpointWriter::begin(self.clone(), self.new_checkpoint_id(), None).await
    }

    /// Begins a new checkpoint whose writer is fenced by a [`Lease`]: it fails
    /// with [`Error::Fenced`] instead of writing or sealing once a newer run
    /// took the lease over.
    pub async fn begin_fenced(&self, fence: Fence) -> Result<CheckpointWriter> {
        CheckpointWriter::begin(self.clone(), self.new_checkpoint_id(), Some(fence)).await
    }

    /// Begins writing the checkpoint `id` chosen by the caller, for example one id
    /// per shard so that two attempts at the same shard race to seal it and
    /// exactly one wins. Fails with [`Error::AlreadySealed`] if it is sealed.
    pub async fn begin_with_id(&self, id: CheckpointId) -> Result<CheckpointWriter> {
        CheckpointWriter::begin(self.clone(), id, None).await
    }

    /// The manifest of a sealed checkpoint that has not been compacted away.
    pub async fn manifest(&self, id: CheckpointId) -> Result<Manifest> {
        match self.read_manifest(id).await? {
            Some(manifest) => Ok(manifest),
            None => match self.checkpoint_state(id).await? {
                CheckpointState::Staged => Err(Error::NotSealed { id: id.to_string() }),
                _ => Err(Error::UnknownCheckpoint { id: id.to_string() }),
            },
        }
    }

    /// Where a checkpoint is in its lifecycle. Fails with
    /// [`Error::UnknownCheckpoint`] if the store has never heard of it.
    pub async fn checkpoint_state(&self, id: CheckpointId) -> Result<CheckpointState> {
        let store = self.object_store();
        let layout = &self.inner.layout;
        if io::exists(store, &layout.sealed(id)).await? {
            return Ok(if io::exists(store, &layout.committed(id)).await? {
                CheckpointState::Committed
            } else {
                CheckpointState::Checkpointed
            });
        }
        if let Some(index) = self.current_index().await? {
            if index.checkpoints.contains(&id) {
                return Ok(CheckpointState::Committed);
            }
        }
        if !io::list(store, &layout.staging_of(id)).await?.is_empty() {
            return Ok(CheckpointState::Staged);
        }
        Err(Error::UnknownCheckpoint { id: id.to_string() })
    }

    /// Records that the files of the sealed checkpoints `ids` are in the table.
    /// `commit` is what the sink reports (table, sequence, snapshot). Idempotent:
    /// marking an already committed checkpoint again changes nothing.
    pub async fn mark_committed(
        &self,
        ids: &[CheckpointId],
        commit: &serde_json::Value,
    ) -> Result<()> {
        let store = self.object_store();
        for &id in ids {
            let path = self.inner.layout.committed(id);
            if !io::exists(store, &self.inner.layout.sealed(id)).await? {
                // Not sealed, or sealed, committed and compacted already.
                match self.checkpoint_state(id).await? {
                    CheckpointState::Committed => continue,
                    _ => return Err(Error::NotSealed { id: id.to_string() }),
                }
            }
            let marker = CommitMarker {
                format_version: FORMAT_VERSION,
                checkpoint_id: id,
                committed_at: self.now(),
                commit: commit.clone(),
            };
            let encoded = records::encode(ObjectKind::CommitMarker, path.as_ref(), &marker)?;
            io::put_if_absent(store, &path, encoded).await?;
        }
        Ok(())
    }

    /// Reads one key file named by [`StoreState::key_files`], checked against the
    /// size, checksum and row count recorded for it and the key schema.
    pub async fn read_keys(&self, file: &KeyFileRef) -> Result<Vec<RecordBatch>> {
        self.fetch_key_file(file).await?.keys()
    }

    /// The fingerprints of a key file, fetched alone (the fingerprint column
    /// and the footer, checked against the checksum recorded for them) when
    /// its record says where they lie; `None` when it does not.
    pub(crate) async fn fetch_fingerprints(&self, file: &KeyFileRef) -> Result<Option<Vec<u64>>> {
        let Some(at) = &file.fingerprints else {
            return Ok(None);
        };
        let path = self.inner.layout.absolute(&file.path);
        if !(at.column_start < at.column_end
            && at.column_end <= at.footer_start
            && at.footer_start < file.size_bytes)
        {
            return Err(Error::corrupt(
                ObjectKind::KeyFile,
                &path,
                format!(
                    "the manifest's fingerprint ranges ({at:?}) do not fit a file of {} bytes",
                    file.size_bytes
                ),
            ));
        }
        let ranges = [
            at.column_start..at.column_end,
            at.footer_start..file.size_bytes,
        ];
        let Some(pieces) = io::get_ranges_optional(self.object_store(), &path, &ranges).await?
        else {
            return Err(key_file_gone());
        };
        let [column, footer]: [bytes::Bytes; 2] = pieces.try_into().map_err(|_| {
            Error::corrupt(
                ObjectKind::KeyFile,
                &path,
                "a ranged read returned too few pieces",
            )
        })?;
        keys::fingerprints_from_pieces(
            at,
            file.size_bytes,
            column,
            footer,
            path.as_ref(),
            file.row_count,
        )
        .map(Some)
    }

    /// Encodes `batch` as a key file at `path` (with its fingerprints, when
    /// the key schema has them), writes it, and returns its record: size,
    /// checksum, key range and where its fingerprints lie.
    pub(crate) async fn put_key_file(
        &self,
        path: &object_store::path::Path,
        batch: &RecordBatch,
    ) -> Result<KeyFileRef> {
        let encoded = keys::encode_key_file(self.key_schema(), batch, path.as_ref())?;
        let size_bytes = encoded.bytes.len() as u64;
        let crc32 = Some(crc32fast::hash(&encoded.bytes));
        let key_range = crate::filter::range::key_range(self.key_schema(), batch)?;
        io::put(self.object_store(), path, encoded.bytes).await?;
        Ok(KeyFileRef {
            path: self.layout().relative(path),
            row_count: batch.num_rows() as u64,
            size_bytes,
            crc32,
            key_range,
            fingerprints: encoded.fingerprints,
        })
    }

    /// Fetches a key file and checks its size and checksum against `file`,
    /// without decoding it.
    pub(crate) async fn fetch_key_file(&self, file: &KeyFileRef) -> Result<FetchedKeyFile> {
        let path = self.inner.layout.absolute(&file.path);
        let Some(bytes) = io::get_optional(self.object_store(), &path).await? else {
            return Err(key_file_gone());
        };
        if bytes.len() as u64 != file.size_bytes {
            return Err(Error::corrupt(
                ObjectKind::KeyFile,
                &path,
                format!(
                    "{} bytes where the manifest recorded {}: truncated or replaced",
                    bytes.len(),
                    file.size_bytes
                ),
            ));
        }
        if let Some(expected) = file.crc32 {
            let found = crc32fast::hash(&bytes);
            if found != expected {
                return Err(Error::corrupt(
                    ObjectKind::KeyFile,
                    &path,
                    format!(
                        "CRC-32 {found:08x} where the manifest recorded {expected:08x}: altered"
                    ),
                ));
            }
        }
        Ok(FetchedKeyFile {
            schema: self.inner.key_schema.clone(),
            bytes,
            path: path.to_string(),
            expected_rows: file.row_count,
        })
    }

    /// The current time, from the location's [`Environment`](crate::environment::Environment).
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.location.environment.now()
    }

    /// A fresh time-ordered id, from the location's environment.
    pub(crate) fn new_id(&self) -> Uuid {
        self.inner.location.environment.new_id()
    }

    /// A fresh checkpoint id, time-ordered.
    pub fn new_checkpoint_id(&self) -> CheckpointId {
        CheckpointId::from(self.new_id())
    }

    fn object_store(&self) -> &dyn object_store::ObjectStore {
        self.inner.location.object_store.as_ref()
    }

    fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    async fn read_manifest(&self, id: CheckpointId) -> Result<Option<Manifest>> {
        let path = self.inner.layout.sealed(id);
        match io::get_optional(self.object_store(), &path).await? {
            Some(bytes) => records::decode(ObjectKind::Manifest, path.as_ref(), &bytes).map(Some),
            None => Ok(None),
        }
    }
}

async fn read_descriptor(
    store: &dyn object_store::ObjectStore,
    path: &object_store::path::Path,
) -> Result<Descriptor> {
    let bytes = io::get(store, path).await?;
    records::decode(ObjectKind::Descriptor, path.as_ref(), &bytes)
}

/// The error of a read that finds a key file of its state gone: a compaction
/// folded it into the index since the state was loaded.
fn key_file_gone() -> Error {
    Error::ConcurrentChange {
        operation: "reading keys (the key file was compacted away; load the state again)",
        attempts: 1,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU64, Ordering};

    use arrow_schema::DataType;
    use object_store::memory::InMemory;

    use super::*;

    /// A clock stopped at one instant, and ids counted up from 1.
    #[derive(Debug, Default)]
    struct CountingEnvironment {
        issued: AtomicU64,
    }

    impl crate::environment::Environment for CountingEnvironment {
        fn now(&self) -> DateTime<Utc> {
            DateTime::from_timestamp(1_700_000_000, 0).unwrap()
        }

        fn new_id(&self) -> Uuid {
            Uuid::from_u128(u128::from(self.issued.fetch_add(1, Ordering::SeqCst)) + 1)
        }
    }

    #[tokio::test]
    async fn checkpoint_ids_and_times_come_from_the_location_s_environment() {
        let location = StoreLocation::from_object_store(Arc::new(InMemory::new()), "store".into())
            .with_environment(Arc::new(CountingEnvironment::default()));
        let keys = KeySchema::single("id", DataType::Int64).unwrap();
        let store = CheckpointStore::open_at(location, keys).await.unwrap();
        assert_eq!(
            store.new_checkpoint_id(),
            CheckpointId::from(Uuid::from_u128(1))
        );
        let writer = store.begin().await.unwrap();
        assert_eq!(writer.id(), CheckpointId::from(Uuid::from_u128(2)));
        assert_eq!(
            store.now(),
            DateTime::from_timestamp(1_700_000_000, 0).unwrap()
        );
    }
}
