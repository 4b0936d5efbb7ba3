//! Writing one checkpoint: stage keys, record in-flight data files, stage their
//! records, then seal everything with one conditional write.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use arrow_array::{ArrayRef, RecordBatch};
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::lease::{ensure_not_fenced, Fence};
use super::orphans::Orphans;
use super::records::{
    self, BeginMarker, CheckpointId, FileRecord, InFlightRecord, KeyFileRef, Manifest,
    FORMAT_VERSION,
};
use super::{io, CheckpointStore};
use crate::error::{Error, ObjectKind, Result};

/// Keys buffered by [`CheckpointWriter::buffer_keys`] are written as one key file
/// once this many rows have gathered (and at the seal).
pub const KEY_FILE_ROWS: usize = 1 << 20;

/// Key files [`CheckpointWriter::buffer_keys`] lets encode and write in the
/// background at once; the next waits for the oldest.
const KEY_FILES_IN_BACKGROUND: usize = 2;

/// Writes one checkpoint. Staged work is invisible to readers until [`seal`](Self::seal).
///
/// One writer belongs to one task; several writers may target the same
/// checkpoint id (retried shard attempts), and exactly one of their seals wins.
#[derive(Debug)]
pub struct CheckpointWriter {
    store: CheckpointStore,
    id: CheckpointId,
    writer_id: Uuid,
    begun_at: DateTime<Utc>,
    key_files: Vec<KeyFileRef>,
    in_flight: BTreeSet<String>,
    /// Recorded prefixes, and whether a file under each was staged.
    in_flight_prefixes: BTreeMap<String, bool>,
    files: Vec<FileRecord>,
    properties: BTreeMap<String, String>,
    sealed: Option<Manifest>,
    buffered: Vec<RecordBatch>,
    buffered_rows: usize,
    /// Key files of buffered keys being encoded and written, oldest first.
    flushing: VecDeque<(u64, JoinHandle<Result<KeyFileRef>>)>,
    fence: Option<Fence>,
    finished_units: BTreeSet<String>,
}

impl Drop for CheckpointWriter {
    /// Stops the key files still being written: a writer dropped unsealed
    /// leaves keys that never count, and no write should land after it.
    fn drop(&mut self) {
        for (_, task) in &self.flushing {
            task.abort();
        }
    }
}

impl CheckpointWriter {
    pub(super) async fn begin(
        store: CheckpointStore,
        id: CheckpointId,
        fence: Option<Fence>,
    ) -> Result<Self> {
        let writer = CheckpointWriter {
            writer_id: store.new_id(),
            begun_at: store.now(),
            store,
            id,
            key_files: Vec::new(),
            in_flight: BTreeSet::new(),
            in_flight_prefixes: BTreeMap::new(),
            files: Vec::new(),
            properties: BTreeMap::new(),
            sealed: None,
            buffered: Vec::new(),
            buffered_rows: 0,
            flushing: VecDeque::new(),
            fence,
            finished_units: BTreeSet::new(),
        };
        writer.ensure_unsealed().await?;
        let path = writer.store.layout().begin_marker(id, writer.writer_id);
        let marker = BeginMarker {
            format_version: FORMAT_VERSION,
            checkpoint_id: id,
            writer_id: writer.writer_id,
            begun_at: writer.begun_at,
            lease: writer.fence.as_ref().map(|f| f.claim().clone()),
        };
        let encoded = records::encode(ObjectKind::BeginMarker, path.as_ref(), &marker)?;
        io::put(writer.store.object_store(), &path, encoded).await?;
        // After the marker: a takeover that did not see the marker has already
        // written its epoch, so this check sees it.
        ensure_not_fenced(writer.fence.as_ref(), "beginning a checkpoint").await?;
        Ok(writer)
    }

    /// The checkpoint being written.
    pub fn id(&self) -> CheckpointId {
        self.id
    }

    /// This writer's id, recorded in the seal.
    pub fn writer_id(&self) -> Uuid {
        self.writer_id
    }

    /// The data files staged so far.
    pub fn staged_files(&self) -> &[FileRecord] {
        &self.files
    }

    /// Bytes of the data files staged so far.
    pub fn staged_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.file_size_bytes).sum()
    }

    /// Number of keys staged so far.
    pub fn staged_key_count(&self) -> u64 {
        self.key_files.iter().map(|k| k.row_count).sum::<u64>()
            + self.flushing.iter().map(|(rows, _)| rows).sum::<u64>()
            + self.buffered_rows as u64
    }

    /// Stages keys like [`stage_keys`](Self::stage_keys), but gathers them in
    /// memory and writes one key file per [`KEY_FILE_ROWS`] rows, so that many
    /// small batches do not make many small files. Each full file is encoded
    /// and written in a task of its own while the caller goes on (a failure
    /// surfaces at a later call or at the seal). [`seal`](Self::seal) writes
    /// what is left and waits for them all; until then buffered keys are lost
    /// with the writer, which is safe: unsealed keys never count as processed.
    pub async fn buffer_keys(&mut self, columns: &[ArrayRef]) -> Result<()> {
        let batch = self.store.key_schema().batch(columns)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.buffered_rows += batch.num_rows();
        self.buffered.push(batch);
        if self.buffered_rows >= KEY_FILE_ROWS {
            self.flush_in_background().await?;
        }
        Ok(())
    }

    /// Writes the keys gathered by [`buffer_keys`](Self::buffer_keys) as one
    /// key file, and waits for the key files being written in the background.
    pub async fn flush_keys(&mut self) -> Result<()> {
        self.await_flushing(0).await?;
        if self.buffered.is_empty() {
            return Ok(());
        }
        let batch = self.take_buffered()?;
        self.stage_keys(batch.columns()).await?;
        Ok(())
    }

    /// The buffered keys as one batch, leaving the buffer empty.
    fn take_buffered(&mut self) -> Result<RecordBatch> {
        let schema = self.store.key_schema().arrow_schema().clone();
        let batch =
            arrow_select::concat::concat_batches(&schema, &self.buffered).map_err(|source| {
                Error::Arrow {
                    context: "gathering buffered keys",
                    source,
                }
            })?;
        self.buffered.clear();
        self.buffered_rows = 0;
        Ok(batch)
    }

    /// Starts writing the buffered keys as the next key file in a task, once
    /// fewer than [`KEY_FILES_IN_BACKGROUND`] are being written.
    async fn flush_in_background(&mut self) -> Result<()> {
        self.ensure_unsealed().await?;
        self.await_flushing(KEY_FILES_IN_BACKGROUND - 1).await?;
        let batch = self.take_buffered()?;
        let rows = batch.num_rows() as u64;
        let store = self.store.clone();
        let (id, writer_id) = (self.id, self.writer_id);
        let index = self.key_files.len() + self.flushing.len();
        let task =
            tokio::spawn(async move { write_key_file(&store, id, writer_id, index, &batch).await });
        self.flushing.push_back((rows, task));
        Ok(())
    }

    /// Waits for key files written in the background until at most `left` are.
    async fn await_flushing(&mut self, left: usize) -> Result<()> {
        while self.flushing.len() > left {
            let Some((_, task)) = self.flushing.pop_front() else {
                break;
            };
            let key_file = task.await.map_err(|source| Error::Task {
                task: "writing a key file",
                source,
            })??;
            self.key_files.push(key_file);
        }
        Ok(())
    }

    /// Records source units, by [`unit_digest`](super::records::unit_digest),
    /// as read to their end: the caller staged (in this writer or in one
    /// sealed before it) the key of every row they hold. Once this writer
    /// seals, later reads skip them. See
    /// [`CheckpointedRead::take_finished_units`](crate::read::CheckpointedRead::take_finished_units).
    pub fn record_finished_units(&mut self, digests: impl IntoIterator<Item = String>) {
        self.finished_units.extend(digests);
    }

    /// Attaches a property to the manifest (source shard, run id, ...).
    pub fn set_property(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.properties.insert(key.into(), value.into());
    }

    /// Stages the keys of rows about to be processed: one array per key column, in
    /// the store's key order and exact types. Writes one Parquet key file.
    pub async fn stage_keys(&mut self, columns: &[ArrayRef]) -> Result<u64> {
        let batch = self.store.key_schema().batch(columns)?;
        // Key files are numbered in order: the ones in the background first.
        self.await_flushing(0).await?;
        self.ensure_unsealed().await?;
        let rows = batch.num_rows() as u64;
        if rows == 0 {
            return Ok(0);
        }
        let index = self.key_files.len();
        let key_file = write_key_file(&self.store, self.id, self.writer_id, index, &batch).await?;
        self.key_files.push(key_file);
        Ok(rows)
    }

    /// The data files this writer recorded in flight (staged or not), and the
    /// directories it recorded: the orphans its checkpoint leaves if it can
    /// never be sealed with them. Empty once this writer sealed: its files
    /// are then the checkpoint's.
    pub fn recorded_writes(&self) -> Orphans {
        let mut orphans = Orphans {
            checkpoint: self.id,
            files: Vec::new(),
            prefixes: Vec::new(),
        };
        if self.sealed.is_none() {
            orphans.files = self
                .in_flight
                .iter()
                .cloned()
                .chain(self.files.iter().map(|f| f.path.clone()))
                .collect();
            orphans.prefixes = self.in_flight_prefixes.keys().cloned().collect();
        }
        orphans
    }

    /// Records that a data file is about to be written at `path`, before writing
    /// it, so that a crash leaves no file the store does not know about.
    pub async fn record_in_flight(&mut self, path: &str) -> Result<()> {
        self.put_in_flight(path, false).await?;
        self.in_flight.insert(path.to_string());
        Ok(())
    }

    /// Records that data files are about to be written below `prefix` (a
    /// directory, ending in `/`), for writers whose file names are chosen by a
    /// table library as it writes. Every file staged from then on may be
    /// anywhere below the prefix; a crash leaves files only there.
    pub async fn record_in_flight_prefix(&mut self, prefix: &str) -> Result<()> {
        if !prefix.ends_with('/') {
            return Err(Error::InvalidInFlightPrefix {
                prefix: prefix.to_string(),
            });
        }
        self.put_in_flight(prefix, true).await?;
        self.in_flight_prefixes.insert(prefix.to_string(), false);
        Ok(())
    }

    async fn put_in_flight(&mut self, path: &str, prefix: bool) -> Result<()> {
        self.ensure_unsealed().await?;
        ensure_not_fenced(self.fence.as_ref(), "writing a data file").await?;
        let record_path =
            self.store
                .layout()
                .in_flight(self.id, self.writer_id, self.store.new_id());
        let record = InFlightRecord {
            format_version: FORMAT_VERSION,
            checkpoint_id: self.id,
            writer_id: self.writer_id,
            path: path.to_string(),
            recorded_at: self.store.now(),
            prefix,
        };
        let encoded = records::encode(ObjectKind::InFlightRecord, record_path.as_ref(), &record)?;
        io::put(self.store.object_store(), &record_path, encoded).await
    }

    /// Stages the record of a data file that is now fully written. The file must
    /// have been recorded with [`record_in_flight`](Self::record_in_flight), or
    /// lie below a prefix recorded with
    /// [`record_in_flight_prefix`](Self::record_in_flight_prefix).
    pub async fn stage_file(&mut self, record: FileRecord) -> Result<()> {
        let exact = self.in_flight.contains(&record.path);
        let prefix = self
            .in_flight_prefixes
            .keys()
            .find(|p| record.path.starts_with(p.as_str()))
            .cloned();
        if !exact && prefix.is_none() {
            return Err(Error::NotInFlight {
                id: self.id.to_string(),
                path: record.path,
            });
        }
        self.ensure_unsealed().await?;
        if exact {
            self.in_flight.remove(&record.path);
        } else if let Some(staged) = prefix.and_then(|p| self.in_flight_prefixes.get_mut(&p)) {
            *staged = true;
        }
        self.files.push(record);
        Ok(())
    }

    /// Seals the checkpoint: one put-if-not-exists of its manifest. From then on
    /// its keys are skipped and its files are committable.
    ///
    /// Idempotent for this writer: if a previous seal call reached the store but
    /// its response was lost, calling again returns the stored manifest. If another
    /// writer sealed the id first, fails with [`Error::AlreadySealed`].
    pub async fn seal(&mut self) -> Result<Manifest> {
        if let Some(manifest) = &self.sealed {
            return Ok(manifest.clone());
        }
        self.flush_keys().await?;
        ensure_not_fenced(self.fence.as_ref(), "sealing").await?;
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            checkpoint_id: self.id,
            writer_id: self.writer_id,
            begun_at: self.begun_at,
            sealed_at: self.store.now(),
            key_files: self.key_files.clone(),
            files: self.files.clone(),
            // Exact paths never staged, and prefixes nothing was staged under.
            abandoned_writes: self
                .in_flight
                .iter()
                .chain(
                    self.in_flight_prefixes
                        .iter()
                        .filter(|(_, staged)| !**staged)
                        .map(|(p, _)| p),
                )
                .cloned()
                .collect(),
            properties: self.properties.clone(),
            fenced_by: None,
            finished_units: self.finished_units.iter().cloned().collect(),
        };
        let path = self.store.layout().sealed(self.id);
        let encoded = records::encode(ObjectKind::Manifest, path.as_ref(), &manifest)?;
        if io::put_if_absent(self.store.object_store(), &path, encoded).await? {
            self.sealed = Some(manifest.clone());
            return Ok(manifest);
        }
        let existing = self.store.read_manifest(self.id).await?.ok_or_else(|| {
            Error::corrupt(
                ObjectKind::Manifest,
                &path,
                "vanished right after a conflicting seal",
            )
        })?;
        if existing.writer_id == self.writer_id {
            self.sealed = Some(existing.clone());
            Ok(existing)
        } else {
            Err(self.sealed_by_other(&existing, "sealing"))
        }
    }

    /// Fails if this checkpoint is sealed, by this writer or another one.
    async fn ensure_unsealed(&self) -> Result<()> {
        if let Some(manifest) = &self.sealed {
            return Err(Error::AlreadySealed {
                id: self.id.to_string(),
                sealed_by: manifest.writer_id.to_string(),
            });
        }
        // A HEAD first: the common answer is "not sealed", and it is the cheapest.
        if !io::exists(
            self.store.object_store(),
            &self.store.layout().sealed(self.id),
        )
        .await?
        {
            return Ok(());
        }
        match self.store.read_manifest(self.id).await? {
            Some(manifest) => Err(self.sealed_by_other(&manifest, "writing")),
            None => Ok(()),
        }
    }

    /// The error for a checkpoint that `existing`, another writer's seal,
    /// closed: [`Error::Fenced`] if it is a newer lease holder's tombstone.
    fn sealed_by_other(&self, existing: &Manifest, operation: &'static str) -> Error {
        match &existing.fenced_by {
            Some(newer) => {
                let (scope, epoch) = self.fence.as_ref().map_or_else(
                    || (newer.scope.clone(), 0),
                    |f| (f.claim().scope.clone(), f.claim().epoch),
                );
                Error::Fenced {
                    scope,
                    epoch,
                    by: format!(
                        "epoch {} of lease `{}` (shard layout {})",
                        newer.epoch, newer.scope, newer.layout
                    ),
                    operation,
                }
            }
            None => Error::AlreadySealed {
                id: self.id.to_string(),
                sealed_by: existing.writer_id.to_string(),
            },
        }
    }
}

/// Encodes `batch` as key file `index` of a writer of checkpoint `id` and
/// writes it to the store.
async fn write_key_file(
    store: &CheckpointStore,
    id: CheckpointId,
    writer_id: Uuid,
    index: usize,
    batch: &RecordBatch,
) -> Result<KeyFileRef> {
    let path = store.layout().staged_key_file(id, writer_id, index);
    store.put_key_file(&path, batch).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use arrow_schema::DataType;

    use crate::store::{CheckpointStore, FileRecord, KeySchema, TableFileMetadata};
    use crate::Error;

    fn record(path: &str) -> FileRecord {
        FileRecord {
            path: path.to_string(),
            file_size_bytes: 1,
            record_count: 1,
            table_metadata: TableFileMetadata {
                format: "test".into(),
                version: 1,
                body: serde_json::json!({}),
            },
        }
    }

    /// Full key files are written in the background, numbered in order with
    /// the ones staged directly, and all of them are in the seal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_files_written_in_the_background_are_all_sealed() {
        use arrow_array::{ArrayRef, Int64Array};
        use std::sync::Arc;

        let keys = KeySchema::single("id", DataType::Int64).unwrap();
        let store = CheckpointStore::open("memory://", &HashMap::new(), keys)
            .await
            .unwrap();
        let mut writer = store.begin().await.unwrap();
        let batch = |range: std::ops::Range<i64>| -> Vec<ArrayRef> {
            vec![Arc::new(Int64Array::from_iter_values(range))]
        };
        let total = 3 * super::KEY_FILE_ROWS as i64 + 1000;
        let step = 100_000;
        let (mut at, mut direct) = (0, 0);
        while at < total {
            let end = (at + step).min(total);
            writer.buffer_keys(&batch(at..end)).await.unwrap();
            assert_eq!(writer.staged_key_count(), (end + direct) as u64);
            at = end;
            if at == 2_000_000 {
                // A direct stage waits for the files in the background.
                writer.stage_keys(&batch(-10..0)).await.unwrap();
                direct = 10;
            }
        }
        let manifest = writer.seal().await.unwrap();
        // Files of at least KEY_FILE_ROWS rows (whole batches), the direct
        // one in its place, and the rest at the seal.
        let counts: Vec<u64> = manifest.key_files.iter().map(|k| k.row_count).collect();
        let full = super::KEY_FILE_ROWS as u64;
        assert_eq!(counts.iter().sum::<u64>(), total as u64 + 10);
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert_eq!(counts[1], 10, "{counts:?}");
        assert!(counts[0] >= full && counts[2] >= full, "{counts:?}");
        let paths: std::collections::BTreeSet<_> =
            manifest.key_files.iter().map(|k| &k.path).collect();
        assert_eq!(paths.len(), 4, "every key file has a path of its own");
        let state = store.load().await.unwrap();
        let filter = crate::filter::KeyFilter::load(&store, &state)
            .await
            .unwrap();
        assert_eq!(filter.len() as i64, total + 10);
    }

    /// Two key files at most are written in the background at once: the
    /// third full buffer waits for the oldest. Each has an index of its own.
    #[tokio::test]
    async fn at_most_two_key_files_are_written_in_the_background() {
        use arrow_array::{ArrayRef, Int64Array};
        use std::sync::Arc;

        let keys = KeySchema::single("id", DataType::Int64).unwrap();
        let store = CheckpointStore::open("memory://", &HashMap::new(), keys)
            .await
            .unwrap();
        let mut writer = store.begin().await.unwrap();
        let full = super::KEY_FILE_ROWS as i64;
        for file in 0..4 {
            let keys: ArrayRef =
                Arc::new(Int64Array::from_iter_values(file * full..(file + 1) * full));
            writer.buffer_keys(&[keys]).await.unwrap();
            let expected = (file as usize + 1).min(super::KEY_FILES_IN_BACKGROUND);
            assert_eq!(writer.flushing.len(), expected, "after full buffer {file}");
        }
        let manifest = writer.seal().await.unwrap();
        let paths: std::collections::BTreeSet<_> =
            manifest.key_files.iter().map(|k| &k.path).collect();
        assert_eq!(paths.len(), 4, "every key file has a path of its own");
        assert!(manifest
            .key_files
            .iter()
            .all(|k| k.row_count == full as u64));
    }

    /// A writer dropped unsealed stops the key files it was still writing:
    /// nothing of it lands afterwards. (On this one-thread runtime a task
    /// spawned by `buffer_keys` has not run when the writer is dropped.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_writer_writes_no_key_file_after_it() {
        use arrow_array::{ArrayRef, Int64Array};
        use std::sync::Arc;

        let keys = KeySchema::single("id", DataType::Int64).unwrap();
        let store = CheckpointStore::open("memory://", &HashMap::new(), keys)
            .await
            .unwrap();
        let mut writer = store.begin().await.unwrap();
        let keys: ArrayRef = Arc::new(Int64Array::from_iter_values(0..super::KEY_FILE_ROWS as i64));
        writer.buffer_keys(&[keys]).await.unwrap();
        assert_eq!(writer.flushing.len(), 1, "a key file is being written");
        drop(writer);
        for _ in 0..10 {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let staged = super::io::list(store.object_store(), &store.layout().staging_dir())
            .await
            .unwrap();
        let key_files: Vec<_> = staged
            .iter()
            .filter(|m| m.location.as_ref().contains("/keys/"))
            .collect();
        assert!(key_files.is_empty(), "{key_files:?}");
    }

    #[tokio::test]
    async fn files_below_a_recorded_prefix_can_be_staged() {
        let keys = KeySchema::single("id", DataType::Int64).unwrap();
        let store = CheckpointStore::open("memory://", &HashMap::new(), keys)
            .await
            .unwrap();
        let mut writer = store.begin().await.unwrap();
        assert!(matches!(
            writer.record_in_flight_prefix("s3://b/t/data/tm-1").await,
            Err(Error::InvalidInFlightPrefix { .. })
        ));
        writer
            .record_in_flight_prefix("s3://b/t/data/tm-1/")
            .await
            .unwrap();
        writer
            .record_in_flight_prefix("s3://b/t/data/tm-2/")
            .await
            .unwrap();
        writer
            .stage_file(record("s3://b/t/data/tm-1/region=eu/part-0.parquet"))
            .await
            .unwrap();
        let outside = writer
            .stage_file(record("s3://b/t/data/tm-10/part-0.parquet"))
            .await;
        assert!(matches!(outside, Err(Error::NotInFlight { .. })));
        let staged = record("s3://b/t/data/tm-1/region=eu/part-0.parquet");
        assert_eq!(writer.staged_files(), std::slice::from_ref(&staged));
        let other = FileRecord {
            file_size_bytes: 41,
            ..record("s3://b/t/data/tm-1/region=us/part-0.parquet")
        };
        writer.stage_file(other).await.unwrap();
        assert_eq!(writer.staged_bytes(), 42, "the sizes of both files");
        let manifest = writer.seal().await.unwrap();
        assert_eq!(manifest.files.len(), 2);
        // The prefix nothing was staged under is left for garbage collection.
        assert_eq!(
            manifest.abandoned_writes,
            vec!["s3://b/t/data/tm-2/".to_string()]
        );
    }
}
