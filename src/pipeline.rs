//! Running one checkpointed pipeline pass: take the lease, repair what an
//! earlier run left, read through the checkpoint, map, write, seal, commit.
//!
//! ```text
//! Lease::acquire (fences older runs) -> commit_pending + gc (repair)
//!     -> CheckpointedRead -> Transform (map workers) -> DataWriter
//!     -> seal -> commit_pending -> release
//! ```
//!
//! A run that fails anywhere before the seal leaves only staged work: its keys
//! do not count as processed, its data files are never committed, and the next
//! run seals it empty, deletes its files and reads those rows again. A run that
//! fails after the seal is finished by the next run's repair step. Either way
//! each source key reaches the table once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::future::BoxFuture;

use crate::commit::{CommitReport, CommitSink, Committer};
use crate::error::{Error, Result};
use crate::gc::{collect_garbage, GcReport, TableFiles};
use crate::read::{CheckpointedRead, ReadOptions, ReadStats};
use crate::source::{Shard, Source};
use crate::store::{
    CheckpointId, CheckpointStore, CheckpointWriter, Lease, LeaseClaim, LeaseOptions,
};
use crate::transform::Transform;

/// Writes data files of a table and records them in a checkpoint. The Iceberg
/// and Delta connectors implement it for their writers.
pub trait DataWriter: Send {
    /// Writes a batch, recording any file it opens as in flight first.
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        checkpoint: &'a mut CheckpointWriter,
    ) -> BoxFuture<'a, Result<()>>;

    /// Closes open files and stages them in `checkpoint`.
    fn finish<'a>(&'a mut self, checkpoint: &'a mut CheckpointWriter) -> BoxFuture<'a, Result<()>>;
}

/// Live counters of a running pipeline, for progress bars and metrics. Share
/// one with [`Pipeline::with_progress`] and read it from another task.
#[derive(Debug, Default)]
pub struct Progress {
    rows_read: AtomicU64,
    rows_skipped: AtomicU64,
    rows_written: AtomicU64,
    files_written: AtomicU64,
    bytes_written: AtomicU64,
}

/// A reading of [`Progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Source rows read so far.
    pub rows_read: u64,
    /// Rows skipped because an earlier run processed their key (or repeated).
    pub rows_skipped: u64,
    /// Rows handed to the writer.
    pub rows_written: u64,
    /// Data files staged.
    pub files_written: u64,
    /// Bytes of those files.
    pub bytes_written: u64,
}

impl Progress {
    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            rows_read: self.rows_read.load(Ordering::Relaxed),
            rows_skipped: self.rows_skipped.load(Ordering::Relaxed),
            rows_written: self.rows_written.load(Ordering::Relaxed),
            files_written: self.files_written.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }

    fn update(&self, read: &ReadStats, rows_written: u64, checkpoint: &CheckpointWriter) {
        self.rows_read.store(read.rows_read, Ordering::Relaxed);
        self.rows_skipped.store(
            read.rows_skipped + read.duplicates_dropped,
            Ordering::Relaxed,
        );
        self.rows_written.store(rows_written, Ordering::Relaxed);
        let files = checkpoint.staged_files();
        self.files_written
            .store(files.len() as u64, Ordering::Relaxed);
        self.bytes_written.store(
            files.iter().map(|f| f.file_size_bytes).sum(),
            Ordering::Relaxed,
        );
    }
}

/// What one [`Pipeline::run`] did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The lease the run held.
    pub lease: LeaseClaim,
    /// Unfinished checkpoints of dead or fenced earlier runs sealed empty.
    pub fenced_checkpoints: usize,
    /// Commits finished for earlier runs before reading.
    pub repaired: CommitReport,
    /// Orphan data files of earlier runs deleted before reading.
    pub gc: GcReport,
    /// The checkpointed read: rows read, skipped, passed, filter memory.
    pub read: ReadStats,
    /// The checkpoint this run sealed.
    pub checkpoint: CheckpointId,
    /// Rows handed to the writer after the transform.
    pub rows_written: u64,
    /// Data files staged.
    pub files_written: u64,
    /// Bytes of those files.
    pub bytes_written: u64,
    /// The commits made after sealing (normally one; none if nothing was written).
    pub committed: CommitReport,
}

/// What [`Pipeline::repair`] did.
#[derive(Debug, Clone)]
pub struct RepairReport {
    /// The lease held while repairing.
    pub lease: LeaseClaim,
    /// Unfinished checkpoints of dead or fenced runs sealed empty.
    pub fenced_checkpoints: usize,
    /// Commits finished.
    pub committed: CommitReport,
    /// Orphan data files deleted.
    pub gc: GcReport,
}

/// A pipeline: a checkpoint store, a table to commit into, and how to run.
#[derive(Debug)]
pub struct Pipeline<S> {
    store: CheckpointStore,
    committer: Committer<S>,
    read_options: ReadOptions,
    lease_options: LeaseOptions,
    shard: Shard,
    map_workers: usize,
    progress: Option<Arc<Progress>>,
}

impl<S: CommitSink + TableFiles> Pipeline<S> {
    /// A pipeline committing `store`'s checkpoints into `sink` under
    /// `pipeline_id` (keep it stable across runs).
    pub fn new(store: CheckpointStore, sink: S, pipeline_id: impl Into<String>) -> Self {
        Pipeline {
            committer: Committer::new(store.clone(), sink, pipeline_id),
            store,
            read_options: ReadOptions::default(),
            lease_options: LeaseOptions::default(),
            shard: Shard::all(),
            map_workers: 1,
            progress: None,
        }
    }

    /// Sets how the source is read (memory budget, duplicate policy, ...).
    pub fn with_read_options(mut self, options: ReadOptions) -> Self {
        self.read_options = options;
        self
    }

    /// Sets the lease's time to live and holder name.
    pub fn with_lease_options(mut self, options: LeaseOptions) -> Self {
        self.lease_options = options;
        self
    }

    /// Runs only the source files of `shard`, under the shard's own lease, so
    /// that other processes or machines can run the other shards at the same
    /// time. See [`Shard`] for how files are assigned.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    /// Runs the transform on up to `workers` batches at once, on blocking
    /// threads (default 1). Batches reach the writer in source order.
    pub fn with_map_workers(mut self, workers: usize) -> Self {
        self.map_workers = workers.max(1);
        self
    }

    /// Publishes live counters to `progress` while running.
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The table sink.
    pub fn sink(&self) -> &S {
        self.committer.sink()
    }

    /// The checkpoint store.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Takes the lease and finishes what earlier runs left: seals their
    /// unfinished checkpoints empty, commits sealed checkpoints and deletes
    /// orphan data files. Fails with [`Error::LeaseHeld`] while a run is live.
    pub async fn repair(&self) -> Result<RepairReport> {
        let lease = self.acquire().await?;
        let result = self.repair_under(&lease).await;
        release(lease, result.is_ok()).await;
        result
    }

    /// Runs one pass over `source`: repairs, then passes the rows whose keys no
    /// earlier run processed through `transform` into `writer`, seals one
    /// checkpoint and commits it. Fails with [`Error::LeaseHeld`] while another
    /// run of the pipeline (or shard) is live, and with [`Error::Fenced`] if a
    /// newer run took the lease over before this one sealed.
    pub async fn run(
        &self,
        source: Arc<dyn Source>,
        transform: &Transform,
        writer: &mut dyn DataWriter,
    ) -> Result<RunReport> {
        let lease = self.acquire().await?;
        let result = self.run_under(&lease, source, transform, writer).await;
        release(lease, result.is_ok()).await;
        result
    }

    async fn acquire(&self) -> Result<Lease> {
        Lease::acquire(
            &self.store,
            &self.shard.lease_scope(),
            self.lease_options.clone(),
        )
        .await
    }

    async fn repair_under(&self, lease: &Lease) -> Result<RepairReport> {
        let committed = self.committer.commit_pending().await?;
        let gc = collect_garbage(&self.store, self.committer.sink()).await?;
        Ok(RepairReport {
            lease: lease.claim().clone(),
            fenced_checkpoints: lease.fenced_checkpoints(),
            committed,
            gc,
        })
    }

    async fn run_under(
        &self,
        lease: &Lease,
        source: Arc<dyn Source>,
        transform: &Transform,
        writer: &mut dyn DataWriter,
    ) -> Result<RunReport> {
        let repair = self.repair_under(lease).await?;
        let units = self.shard.units_of(source.as_ref());
        tracing::info!(
            scope = lease.claim().scope,
            epoch = lease.claim().epoch,
            units = units.len(),
            repaired_commits = repair.committed.commits.len(),
            orphans_deleted = repair.gc.files_deleted + repair.gc.prefixes_deleted,
            "pipeline run started"
        );
        let mut read =
            CheckpointedRead::open_units(&self.store, source, units, self.read_options.clone())
                .await?;
        let mut checkpoint = self.store.begin_fenced(lease.fence()).await?;
        checkpoint.set_property("tidemark.lease.scope", lease.claim().scope.clone());
        checkpoint.set_property("tidemark.lease.epoch", lease.claim().epoch.to_string());
        let mut rows_written = 0;
        let mut mapping: VecDeque<tokio::task::JoinHandle<Result<RecordBatch>>> = VecDeque::new();
        let mut exhausted = false;
        loop {
            while !exhausted && mapping.len() < self.map_workers {
                match read.next_batch(&mut checkpoint).await? {
                    Some(batch) => {
                        let transform = transform.clone();
                        mapping
                            .push_back(tokio::task::spawn_blocking(move || transform.apply(batch)));
                    }
                    None => exhausted = true,
                }
            }
            let Some(next) = mapping.pop_front() else {
                break;
            };
            let batch = next.await.map_err(|e| Error::Map {
                source: Box::new(e),
            })??;
            if batch.num_rows() > 0 {
                writer.write(&batch, &mut checkpoint).await?;
                rows_written += batch.num_rows() as u64;
            }
            if let Some(progress) = &self.progress {
                progress.update(read.stats(), rows_written, &checkpoint);
            }
        }
        writer.finish(&mut checkpoint).await?;
        if let Some(progress) = &self.progress {
            progress.update(read.stats(), rows_written, &checkpoint);
        }
        let files_written = checkpoint.staged_files().len() as u64;
        let bytes_written = checkpoint
            .staged_files()
            .iter()
            .map(|f| f.file_size_bytes)
            .sum();
        checkpoint.seal().await?;
        let committed = self.committer.commit_pending().await?;
        tracing::info!(
            rows_read = read.stats().rows_read,
            rows_skipped = read.stats().rows_skipped,
            rows_written,
            files_written,
            bytes_written,
            commits = committed.commits.len(),
            "pipeline run finished"
        );
        Ok(RunReport {
            lease: lease.claim().clone(),
            fenced_checkpoints: repair.fenced_checkpoints,
            repaired: repair.committed,
            gc: repair.gc,
            read: read.stats().clone(),
            checkpoint: checkpoint.id(),
            rows_written,
            files_written,
            bytes_written,
            committed,
        })
    }
}

/// Releases the lease; a failure only delays the next run until it expires.
async fn release(lease: Lease, succeeded: bool) {
    if let Err(e) = lease.release().await {
        tracing::warn!(error = %e, succeeded, "releasing the lease failed; it will expire");
    }
}
