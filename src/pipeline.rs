//! Running one checkpointed pipeline pass: take the lease, repair what an
//! earlier run left, read through the checkpoint, map, write, seal, commit.
//!
//! ```text
//! Lease::acquire (fences older runs) -> commit_pending + gc (repair)
//!     -> CheckpointedRead -> Transform (map workers) -> DataWriter
//!     -> seal (every N rows, T seconds or source unit; see CheckpointPolicy)
//!     -> commit_pending (on its own interval, and at the end) -> release
//! ```
//!
//! A run that fails leaves its open checkpoint staged: its keys do not count
//! as processed, its data files are never committed, and the next run seals
//! it empty, deletes its files and reads those rows again. The checkpoints it
//! sealed before failing stay: their keys are skipped by every later run, and
//! the next run's repair step commits their files. Either way each source key
//! reaches the table once, and a kill loses at most one checkpoint's work.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::commit::{CommitReport, CommitSink, Committer, LostCommitsPolicy};
use crate::error::{Error, Result};
use crate::gc::{collect_garbage, GcReport, TableFiles};
use crate::read::{CheckpointedRead, ReadOptions, ReadStats};
use crate::redact::validate_pipeline_id;
use crate::source::{Shard, Source};
use crate::store::{
    CheckpointId, CheckpointStore, CheckpointWriter, CompactionOptions, CompactionReport, Lease,
    LeaseClaim, LeaseOptions,
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

    /// Checks, before any row is read, that batches of `schema` can be written
    /// (every column the table needs, types it can store, its protocol). The
    /// run fails with the writer's error, naming the column and the way out,
    /// before it takes a lease or reads the source. The default accepts all.
    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        let _ = schema;
        Ok(())
    }
}

/// When a run seals checkpoints and commits them, so that a killed run keeps
/// what it finished.
///
/// A checkpoint closes when the first of its triggers fires: `rows` rows
/// handed to the map, `interval` since it opened, or (with `per_unit`) a
/// source unit read to its end. Closing drains the map workers, closes the
/// open data files and seals, so a checkpoint's keys are exactly those of
/// the rows in its data files and no key's rows span two checkpoints. A kill
/// then loses at most one checkpoint's rows: `rows` plus one source batch.
///
/// Commits run on their own cadence: after a seal, once `commit_interval`
/// has passed since the run's last commit, every sealed checkpoint is
/// committed in one table commit; the end of a run always commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Seal after this many rows reached the map (none by default).
    pub rows: Option<u64>,
    /// Seal after this long (default 60 s: a kill loses about a minute of work,
    /// and a run shorter than that stays one checkpoint).
    pub interval: Option<Duration>,
    /// Seal whenever a source unit (a file, a table's data file) is read to
    /// its end (off by default).
    pub per_unit: bool,
    /// Commit sealed checkpoints during the run once this long has passed
    /// since the last commit (default 5 minutes, the commit interval of the
    /// Iceberg Kafka Connect sink). Zero commits after every seal.
    pub commit_interval: Duration,
}

/// The default of [`CheckpointPolicy::interval`].
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// The default of [`CheckpointPolicy::commit_interval`].
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(300);

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            rows: None,
            interval: Some(DEFAULT_CHECKPOINT_INTERVAL),
            per_unit: false,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    }
}

impl CheckpointPolicy {
    /// One checkpoint per run, committed at its end.
    pub fn once_per_run() -> Self {
        CheckpointPolicy {
            rows: None,
            interval: None,
            per_unit: false,
            commit_interval: Duration::MAX,
        }
    }

    /// Whether the open checkpoint should close: it holds rows and a trigger fired.
    fn seal_due(&self, open: &OpenCheckpoint, read: &ReadStats) -> bool {
        open.rows > 0
            && (self.rows.is_some_and(|rows| open.rows >= rows)
                || self
                    .interval
                    .is_some_and(|interval| open.opened.elapsed() >= interval)
                || (self.per_unit && read.units_finished > open.units_finished))
    }
}

/// The checkpoint a run is filling, and what it held when it opened.
struct OpenCheckpoint {
    writer: CheckpointWriter,
    opened: Instant,
    /// Rows handed to the map since it opened.
    rows: u64,
    /// Source units finished when it opened.
    units_finished: u64,
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
    checkpoints_sealed: AtomicU64,
    rows_sealed: AtomicU64,
    commits: AtomicU64,
    rows_committed: AtomicU64,
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
    /// Checkpoints this run sealed: their rows survive a kill.
    pub checkpoints_sealed: u64,
    /// Rows handed to the map whose keys are in those checkpoints.
    pub rows_sealed: u64,
    /// Table commits this run made since it began reading (the repair of
    /// earlier runs' commits before it is in [`RunReport::repaired`]).
    pub commits: u64,
    /// Rows those commits appended to the table.
    pub rows_committed: u64,
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
            checkpoints_sealed: self.checkpoints_sealed.load(Ordering::Relaxed),
            rows_sealed: self.rows_sealed.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            rows_committed: self.rows_committed.load(Ordering::Relaxed),
        }
    }

    fn update(&self, read: &ReadStats, totals: &RunTotals, open: &CheckpointWriter) {
        self.rows_read.store(read.rows_read, Ordering::Relaxed);
        self.rows_skipped.store(
            read.rows_skipped + read.duplicates_dropped,
            Ordering::Relaxed,
        );
        self.rows_written
            .store(totals.rows_written, Ordering::Relaxed);
        self.files_written.store(
            totals.files_written + open.staged_files().len() as u64,
            Ordering::Relaxed,
        );
        self.bytes_written.store(
            totals.bytes_written + open.staged_bytes(),
            Ordering::Relaxed,
        );
        self.checkpoints_sealed
            .store(totals.checkpoints.len() as u64, Ordering::Relaxed);
        self.rows_sealed
            .store(totals.rows_sealed, Ordering::Relaxed);
        self.commits
            .store(totals.committed.commits.len() as u64, Ordering::Relaxed);
        self.rows_committed
            .store(totals.committed.rows_applied(), Ordering::Relaxed);
    }
}

/// What a run has done so far, across its checkpoints.
#[derive(Debug, Default)]
struct RunTotals {
    rows_written: u64,
    files_written: u64,
    bytes_written: u64,
    rows_sealed: u64,
    checkpoints: Vec<CheckpointId>,
    committed: CommitReport,
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
    /// The checkpoints this run sealed, in order (at least one).
    pub checkpoints: Vec<CheckpointId>,
    /// Rows handed to the writer after the transform.
    pub rows_written: u64,
    /// Data files staged.
    pub files_written: u64,
    /// Bytes of those files.
    pub bytes_written: u64,
    /// The table commits made during and at the end of the run, in order
    /// (none if nothing was written). Each is one Iceberg snapshot or one
    /// Delta version.
    pub committed: CommitReport,
    /// The compaction the run made at its end, when enough committed
    /// checkpoints waited (see [`Pipeline::with_compaction`]). A compaction
    /// that fails does not fail the run (its rows are committed): it is
    /// logged, and the next run tries again.
    pub compaction: Option<CompactionReport>,
}

/// What [`Pipeline::adopt`] did.
#[derive(Debug, Clone)]
pub struct AdoptReport {
    /// The lease held while adopting.
    pub lease: LeaseClaim,
    /// Keys read from the table, now processed (a key the table holds twice
    /// counts twice).
    pub keys_adopted: u64,
    /// The checkpoint that holds them: sealed with no data files, and
    /// committed without a table commit.
    pub checkpoint: CheckpointId,
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
    policy: CheckpointPolicy,
    compaction: Option<CompactionOptions>,
    on_lost_commits: LostCommitsPolicy,
    progress: Option<Arc<Progress>>,
    /// Whether runs commit (the default) or only seal, leaving the commit to
    /// a caller that commits the checkpoints of many runs at once.
    commits: bool,
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
            policy: CheckpointPolicy::default(),
            compaction: Some(CompactionOptions::automatic()),
            on_lost_commits: LostCommitsPolicy::Refuse,
            progress: None,
            commits: true,
        }
    }

    /// Runs seal their checkpoints and commit none, neither earlier runs'
    /// sealed checkpoints in the repair step nor their own: for the tasks of
    /// a distributed run, whose commit stage then commits every task's
    /// checkpoints in one table commit ([`Committer::commit_pending`]). A
    /// sealed checkpoint is safe uncommitted: its keys are skipped by later
    /// reads, and any later commit (of a run, `tidemark gc`) carries its
    /// files. No compaction runs at the end either: compaction folds in
    /// committed checkpoints only.
    pub fn sealing_only(mut self) -> Self {
        self.commits = false;
        self.compaction = None;
        self
    }

    /// Sets when the run seals checkpoints and commits them (default:
    /// [`CheckpointPolicy::default`]).
    pub fn with_checkpoint_policy(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the compaction a successful run makes at its end, under its
    /// lease: by default [`CompactionOptions::automatic`], which folds the
    /// committed checkpoints into the index once
    /// [`AUTO_COMPACTION_CHECKPOINTS`](crate::store::AUTO_COMPACTION_CHECKPOINTS)
    /// of them wait, so that a run's cost does not grow with the pipeline's
    /// history. `None` leaves compaction to `tidemark compact`.
    pub fn with_compaction(mut self, compaction: Option<CompactionOptions>) -> Self {
        self.compaction = compaction;
        self
    }

    /// With `true`, a table that lost commits of this pipeline while its
    /// marker stayed (rolled back or restored: see
    /// [`Committer::ensure_table_agrees`]) is accepted as it is: the run goes
    /// on, the keys of the lost commits stay processed, and the acceptance is
    /// logged as a warning and recorded in the store, so later runs pass the
    /// same table state without it. A table whose marker is behind the store
    /// (recreated, replaced) cannot be accepted: later commits could not
    /// continue its marker. By default such a run fails with
    /// [`Error::TableDiverged`] before it reads.
    pub fn with_accepted_table_state(mut self, accept: bool) -> Self {
        self.on_lost_commits = if accept {
            LostCommitsPolicy::Accept
        } else {
            LostCommitsPolicy::Refuse
        };
        self
    }

    /// Sets what a run does when the table lost commits of this pipeline
    /// while its marker stayed (rolled back or restored): refuse (the
    /// default), accept the table as it is, or reprocess the lost commits
    /// (their keys are forgotten, so the run reads and writes their rows
    /// again). See [`Committer::ensure_table_agrees`].
    pub fn with_lost_commits_policy(mut self, policy: LostCommitsPolicy) -> Self {
        self.on_lost_commits = policy;
        self
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

    /// Runs the transform on up to `workers` batches at once (default 1): on
    /// blocking threads, or as tasks of the runtime when the transform has a
    /// step that awaits. Batches reach the writer in source order.
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

    /// Records the keys of the rows `table` already holds as processed, so
    /// that runs do not process them again: for a table written before
    /// tidemark, or by another tool. `table` is the sink's table read as a
    /// source (it must have the store's key columns). Takes the lease and
    /// repairs first, like a run; then reads only the key columns, a key
    /// file per [`KEY_FILE_ROWS`](crate::store::KEY_FILE_ROWS) keys (memory
    /// stays bounded for any table size), seals them as one
    /// checkpoint without data files and commits it without a table commit.
    /// Adopting again stages the keys again: no row is processed twice, but
    /// the store holds and loads them twice until a compaction.
    pub async fn adopt(&self, table: Arc<dyn Source>) -> Result<AdoptReport> {
        let lease = self.acquire().await?;
        let result = async {
            self.repair_under(&lease).await?;
            let (checkpoint, keys_adopted) = crate::adopt::stage_table_keys(
                &self.store,
                lease.fence(),
                table.as_ref(),
                &self.committer.sink().table(),
            )
            .await?;
            self.committer
                .commit_pending_under(Some(&lease.fence()))
                .await?;
            Ok(AdoptReport {
                lease: lease.claim().clone(),
                keys_adopted,
                checkpoint,
            })
        }
        .await;
        release(lease, result.is_ok()).await;
        result
    }

    /// Runs one pass over `source`: repairs, then passes the rows whose keys no
    /// earlier run processed through `transform` into `writer`, sealing and
    /// committing checkpoints as the [`CheckpointPolicy`] says and at the end. Fails with [`Error::LeaseHeld`] while another
    /// run of the pipeline (or shard) is live, and with [`Error::Fenced`] if a
    /// newer run took the lease over before this one sealed.
    pub async fn run(
        &self,
        source: Arc<dyn Source>,
        transform: &Transform,
        writer: &mut dyn DataWriter,
    ) -> Result<RunReport> {
        if let Some(schema) = transform.output_schema(&source.schema())? {
            writer.check_schema(&schema)?;
        }
        let lease = self.acquire().await?;
        let result = self.run_under(&lease, source, transform, writer).await;
        release(lease, result.is_ok()).await;
        result
    }

    /// Takes the lease, after checking the pipeline id (before any work).
    async fn acquire(&self) -> Result<Lease> {
        validate_pipeline_id(self.committer.pipeline_id())?;
        Lease::acquire(
            &self.store,
            &self.shard.lease_scope(),
            self.shard.count(),
            self.lease_options.clone(),
        )
        .await
    }

    async fn repair_under(&self, lease: &Lease) -> Result<RepairReport> {
        self.committer
            .ensure_table_agrees_under(self.on_lost_commits, Some(&lease.fence()))
            .await?;
        let committed = if self.commits {
            self.committer
                .commit_pending_under(Some(&lease.fence()))
                .await?
        } else {
            CommitReport::default()
        };
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
        let mut totals = RunTotals::default();
        let mut open = self.open_checkpoint(lease, read.stats()).await?;
        match self
            .process(lease, &mut read, &mut open, transform, writer, &mut totals)
            .await
        {
            Err(fenced @ Error::Fenced { .. }) => {
                self.discard_writes(&open.writer).await;
                return Err(fenced);
            }
            other => other?,
        }
        let stats = read.stats().clone();
        let compaction = self.compact_at_end(lease).await;
        tracing::info!(
            rows_read = stats.rows_read,
            rows_skipped = stats.rows_skipped,
            rows_written = totals.rows_written,
            files_written = totals.files_written,
            bytes_written = totals.bytes_written,
            checkpoints = totals.checkpoints.len(),
            commits = totals.committed.commits.len(),
            "pipeline run finished"
        );
        Ok(RunReport {
            lease: lease.claim().clone(),
            fenced_checkpoints: repair.fenced_checkpoints,
            repaired: repair.committed,
            gc: repair.gc,
            read: stats,
            checkpoints: totals.checkpoints,
            rows_written: totals.rows_written,
            files_written: totals.files_written,
            bytes_written: totals.bytes_written,
            committed: totals.committed,
            compaction,
        })
    }

    /// The compaction at the end of a successful run, if one is set and the
    /// lease is still this run's. Its failure is logged, not returned.
    async fn compact_at_end(&self, lease: &Lease) -> Option<CompactionReport> {
        let options = self.compaction.as_ref()?;
        let compacted = async {
            lease.fence().ensure_current("compacting").await?;
            self.store.compact(options).await
        };
        match compacted.await {
            Ok(report) => Some(report),
            Err(error) => {
                tracing::warn!(%error, "compaction at the end of the run failed; the next run tries again");
                None
            }
        }
    }

    /// Reads, maps and writes until the source is exhausted, sealing and
    /// committing as the policy says, and seals the last checkpoint.
    async fn process(
        &self,
        lease: &Lease,
        read: &mut CheckpointedRead,
        open: &mut OpenCheckpoint,
        transform: &Transform,
        writer: &mut dyn DataWriter,
        totals: &mut RunTotals,
    ) -> Result<()> {
        let mut last_commit = Instant::now();
        let mut mapping = InFlight::default();
        let mut exhausted = false;
        loop {
            while !exhausted
                && mapping.0.len() < self.map_workers
                && !self.policy.seal_due(open, read.stats())
            {
                match read.next_batch(&mut open.writer).await? {
                    Some(batch) => {
                        open.rows += batch.num_rows() as u64;
                        let transform = transform.clone();
                        mapping.0.push_back(if transform.is_async() {
                            tokio::spawn(async move { transform.apply_async(batch).await })
                        } else {
                            tokio::task::spawn_blocking(move || transform.apply(batch))
                        });
                    }
                    None => exhausted = true,
                }
            }
            if let Some(next) = mapping.0.pop_front() {
                let batch = next.await.map_err(|e| Error::Map {
                    source: Box::new(e),
                })??;
                if batch.num_rows() > 0 {
                    writer.write(&batch, &mut open.writer).await?;
                    totals.rows_written += batch.num_rows() as u64;
                }
                self.report_progress(read.stats(), totals, &open.writer);
                continue;
            }
            // Every batch read into the open checkpoint is written: it can
            // close over exactly the rows of its files.
            if exhausted {
                break;
            }
            self.seal(open, read.take_finished_units(), writer, totals)
                .await?;
            *open = self.open_checkpoint(lease, read.stats()).await?;
            if self.commits && last_commit.elapsed() >= self.policy.commit_interval {
                totals.committed.commits.extend(
                    self.committer
                        .commit_pending_under(Some(&lease.fence()))
                        .await?
                        .commits,
                );
                last_commit = Instant::now();
            }
            self.report_progress(read.stats(), totals, &open.writer);
        }
        self.seal(open, read.take_finished_units(), writer, totals)
            .await?;
        if self.commits {
            totals.committed.commits.extend(
                self.committer
                    .commit_pending_under(Some(&lease.fence()))
                    .await?
                    .commits,
            );
        }
        Ok(())
    }

    /// Deletes the data files of a checkpoint whose run was fenced: it can
    /// never be sealed with them, and a file that landed after the new
    /// holder's garbage collection would otherwise stay an orphan. Best
    /// effort: the run is failing anyway.
    async fn discard_writes(&self, checkpoint: &CheckpointWriter) {
        let orphans = checkpoint.recorded_writes();
        let table = self.committer.sink();
        for file in &orphans.files {
            if let Err(e) = table.delete_file(file).await {
                tracing::warn!(error = %e, file, "deleting a fenced run's data file failed");
            }
        }
        for prefix in &orphans.prefixes {
            if let Err(e) = table.delete_prefix(prefix).await {
                tracing::warn!(error = %e, prefix, "deleting a fenced run's data files failed");
            }
        }
    }

    /// Begins the run's next checkpoint under its lease (failing with
    /// [`Error::Fenced`] once a newer run took the lease over).
    async fn open_checkpoint(&self, lease: &Lease, read: &ReadStats) -> Result<OpenCheckpoint> {
        let mut writer = self.store.begin_fenced(lease.fence()).await?;
        writer.set_property("tidemark.lease.scope", lease.claim().scope.clone());
        writer.set_property("tidemark.lease.epoch", lease.claim().epoch.to_string());
        Ok(OpenCheckpoint {
            writer,
            opened: Instant::now(),
            rows: 0,
            units_finished: read.units_finished,
        })
    }

    /// Closes the checkpoint's data files and seals it, with the source units
    /// whose last rows it holds (`finished_units`: every batch read into it is
    /// written by now, so later runs may skip them).
    async fn seal(
        &self,
        open: &mut OpenCheckpoint,
        finished_units: Vec<String>,
        writer: &mut dyn DataWriter,
        totals: &mut RunTotals,
    ) -> Result<()> {
        writer.finish(&mut open.writer).await?;
        open.writer.record_finished_units(finished_units);
        let file_count = open.writer.staged_files().len() as u64;
        totals.files_written += file_count;
        totals.bytes_written += open.writer.staged_bytes();
        open.writer.seal().await?;
        totals.rows_sealed += open.rows;
        totals.checkpoints.push(open.writer.id());
        tracing::debug!(
            checkpoint = %open.writer.id(),
            rows = open.rows,
            files = file_count,
            "checkpoint sealed"
        );
        Ok(())
    }

    fn report_progress(&self, read: &ReadStats, totals: &RunTotals, open: &CheckpointWriter) {
        if let Some(progress) = &self.progress {
            progress.update(read, totals, open);
        }
    }
}

/// Releases the lease; a failure only delays the next run until it expires.
async fn release(lease: Lease, succeeded: bool) {
    if let Err(e) = lease.release().await {
        tracing::warn!(error = %e, succeeded, "releasing the lease failed; it will expire");
    }
}

/// The batches in the map workers' hands, in source order. Dropped with
/// batches left (a run that failed), it aborts those still waiting to run,
/// and the awaiting ones at their next await: their results would not be
/// written, so their calls (a model, a service) would be paid for nothing.
#[derive(Default)]
struct InFlight(VecDeque<tokio::task::JoinHandle<Result<RecordBatch>>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
