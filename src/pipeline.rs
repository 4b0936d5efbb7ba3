//! Running one checkpointed pipeline pass: repair what an earlier run left,
//! read through the checkpoint, map, write, seal, commit.
//!
//! ```text
//! commit_pending (repair) -> CheckpointedRead -> Transform -> DataWriter
//!     -> seal -> commit_pending
//! ```
//!
//! A run that fails anywhere before the seal leaves only staged work: its keys
//! do not count as processed, its data files are never committed, and the next
//! run reads those rows again. A run that fails after the seal is finished by
//! the next run's repair step. Either way each source key reaches the table
//! once.

use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::future::BoxFuture;

use crate::commit::{CommitReport, CommitSink, Committer};
use crate::error::Result;
use crate::read::{CheckpointedRead, ReadOptions, ReadStats};
use crate::source::Source;
use crate::store::{CheckpointStore, CheckpointWriter};
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

/// What one [`Pipeline::run`] did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Commits finished for earlier runs before reading.
    pub repaired: CommitReport,
    /// The checkpointed read: rows read, skipped, passed, filter memory.
    pub read: ReadStats,
    /// Rows handed to the writer after the transform.
    pub rows_written: u64,
    /// The commits made after sealing (normally one; none if nothing was written).
    pub committed: CommitReport,
}

/// A pipeline: a checkpoint store, a table to commit into, and how to read.
#[derive(Debug)]
pub struct Pipeline<S> {
    store: CheckpointStore,
    committer: Committer<S>,
    read_options: ReadOptions,
}

impl<S: CommitSink> Pipeline<S> {
    /// A pipeline committing `store`'s checkpoints into `sink` under
    /// `pipeline_id` (keep it stable across runs).
    pub fn new(store: CheckpointStore, sink: S, pipeline_id: impl Into<String>) -> Self {
        Pipeline {
            committer: Committer::new(store.clone(), sink, pipeline_id),
            store,
            read_options: ReadOptions::default(),
        }
    }

    /// Sets how the source is read (memory budget, duplicate policy, ...).
    pub fn with_read_options(mut self, options: ReadOptions) -> Self {
        self.read_options = options;
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

    /// Runs one pass over `source`: finishes earlier runs' commits, passes the
    /// rows whose keys no earlier run processed through `transform` into
    /// `writer`, seals one checkpoint and commits it.
    pub async fn run(
        &self,
        source: Arc<dyn Source>,
        transform: &Transform,
        writer: &mut dyn DataWriter,
    ) -> Result<RunReport> {
        let repaired = self.committer.commit_pending().await?;
        let mut read =
            CheckpointedRead::open(&self.store, source, self.read_options.clone()).await?;
        let mut checkpoint = self.store.begin().await?;
        let mut rows_written = 0;
        while let Some(batch) = read.next_batch(&mut checkpoint).await? {
            let batch = transform.apply(batch)?;
            if batch.num_rows() > 0 {
                writer.write(&batch, &mut checkpoint).await?;
                rows_written += batch.num_rows() as u64;
            }
        }
        writer.finish(&mut checkpoint).await?;
        checkpoint.seal().await?;
        let committed = self.committer.commit_pending().await?;
        tracing::info!(
            rows_read = read.stats().rows_read,
            rows_skipped = read.stats().rows_skipped,
            rows_written,
            commits = committed.commits.len(),
            "pipeline run finished"
        );
        Ok(RunReport {
            repaired,
            read: read.stats().clone(),
            rows_written,
            committed,
        })
    }
}
