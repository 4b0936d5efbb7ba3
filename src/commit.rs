//! Idempotent table commits that consume the sealed checkpoints of a store.
//!
//! One table commit goes through three steps, each repeatable:
//! 1. **Intent.** `commits/{n}.json` fixes which sealed, uncommitted checkpoints
//!    the pipeline's n-th table commit carries. It is written with
//!    put-if-not-exists, so of two committers exactly one claims `n`.
//! 2. **Table commit.** The [`CommitSink`] appends the files of those
//!    checkpoints in one transaction that also sets the pipeline's marker in the
//!    table to `n`. Before every attempt, conflict retries included, it reads the
//!    marker and does nothing if it already reached `n`: a commit whose response
//!    was lost is recognised, never applied twice.
//! 3. **Mark committed.** Every checkpoint of the intent gets its commit marker.
//!
//! Sealed checkpoints without data files are marked committed directly: no
//! table commit, no empty snapshot or version.
//!
//! A crash between any two steps is repaired by the next
//! [`Committer::commit_pending`]: an intent whose checkpoints are not all marked
//! is resumed with the same files under the same number. A new intent is only
//! written once the previous one is fully marked, so a checkpoint belongs to at
//! most one table commit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;

use crate::error::{BoxError, Error, Result};
use crate::redact::validate_pipeline_id;
use crate::store::{
    ensure_not_fenced, AcceptanceRecord, CheckpointId, CheckpointStore, CommitIntent, Fence,
    FileRecord, ForgottenCommit, Manifest,
};

/// How many times in a row a committer may lose the race for an intent to
/// another committer before it gives up.
const MAX_LOST_RACES: u32 = 16;

/// How many times a sink attempts one table commit (re-reading its marker
/// before each attempt) before it gives up.
pub const SINK_COMMIT_ATTEMPTS: u32 = 12;

/// The pause before attempt `attempt` (counted from 0) of a sink's commit
/// loop: 20 ms, doubling, at most about 5 s.
pub fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_millis(20u64.saturating_mul(1 << attempt.min(8)))
}

/// The default cap on checkpoints per table commit.
pub const DEFAULT_MAX_CHECKPOINTS_PER_COMMIT: usize = 1_000;

/// A table that can append checkpointed files idempotently.
///
/// Implementations keep, in the table itself, a marker per pipeline: the
/// highest commit sequence applied. The marker must be written in the same
/// transaction as the files and must be re-read before every attempt.
pub trait CommitSink: Send + Sync {
    /// Names the table (a URI or catalog identifier). Recorded in every commit
    /// intent so that one store never feeds two tables.
    fn table(&self) -> String;

    /// The highest commit sequence of `pipeline_id` the table holds, if any.
    fn committed_sequence<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Option<u64>, BoxError>>;

    /// Appends `request.files` in one transaction that sets the pipeline's
    /// marker to `request.sequence`, unless the marker already reached it.
    fn commit<'a>(
        &'a self,
        request: &'a CommitRequest,
    ) -> BoxFuture<'a, std::result::Result<CommitOutcome, BoxError>>;

    /// Whether the table's current state still carries the pipeline's latest
    /// commit, as its history shows (Iceberg: the snapshots that are
    /// ancestors of the current one; Delta: the log since that commit, for a
    /// restore). Maintenance (compaction, expiry, checkpoints) carries it.
    /// [`Lineage::Unknown`] when the history in reach cannot tell.
    fn lineage<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Lineage, BoxError>>;

    /// A setting of the table that can drop a pipeline's marker, named for
    /// the user when the marker is behind the store (Delta:
    /// `delta.setTransactionRetentionDuration`). `None` when there is none.
    /// Required of every sink (no default), so that a wrapper cannot hide
    /// the hint of the sink it wraps.
    fn marker_risk(&self) -> BoxFuture<'_, std::result::Result<Option<String>, BoxError>>;
}

/// What a table's history says about a pipeline's latest commit
/// ([`CommitSink::lineage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lineage {
    /// The current state carries the commit of this sequence, the latest of
    /// the pipeline that the current state carries.
    Carries(u64),
    /// The history in reach shows no commit of the pipeline (expired, or
    /// never made): nothing to compare.
    Unknown,
    /// The current state carries the pipeline's commits up to `carried`
    /// only (none: `None`), because of what `why` says (a rollback to a
    /// snapshot, a restore to a version).
    RolledBack {
        /// The latest commit sequence the current state carries.
        carried: Option<u64>,
        /// What happened, as the table's history tells it.
        why: String,
    },
}

/// The store and the table compared ([`Committer::check_table`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    /// The table.
    pub table: String,
    /// The latest commit sequence the store marked committed.
    pub store_committed: Option<u64>,
    /// The table's marker for the pipeline.
    pub marker: Option<u64>,
    /// What the table's history says.
    pub lineage: Lineage,
    /// The user's acceptance of the table state with this marker, if one is
    /// recorded in the store.
    pub accepted: Option<AcceptanceRecord>,
    /// A table setting that can drop the marker ([`CommitSink::marker_risk`]),
    /// read when the marker is behind the store.
    pub marker_risk: Option<String>,
}

/// What [`Committer::ensure_table_agrees`] does when the table lost commits
/// of the pipeline (rolled back or restored while its marker stayed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LostCommitsPolicy {
    /// Fail with [`Error::TableDiverged`] before any read or write.
    #[default]
    Refuse,
    /// Go on with the table as it is: the lost commits' keys stay processed,
    /// and their rows are not written again.
    Accept,
    /// Forget the lost commits' keys, so that the run reads their rows
    /// again and commits them anew. Fails with [`Error::CannotReprocess`]
    /// when compaction already folded a lost commit's keys into the index.
    Reprocess,
}

/// Commits a table lost ([`TableCheck::lost`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostCommits {
    /// The first lost commit sequence.
    pub first: u64,
    /// The last lost commit sequence (the table's marker, or what the store
    /// committed).
    pub last: u64,
    /// The commit sequences (`3` or `3..=5`).
    pub commits: String,
    /// What the table shows.
    pub why: String,
    /// Whether a run may accept the table as it is
    /// ([`crate::pipeline::Pipeline::with_accepted_table_state`]): the
    /// table's marker is intact, so later commits continue from it. Not when
    /// the marker itself is behind the store (a recreated or replaced table).
    pub acceptable: bool,
}

impl LostCommits {
    /// What the user can do about it.
    pub fn way_out(&self) -> &'static str {
        if self.acceptable {
            "Restore the table to a state that holds them; or run with \
             `--reprocess-lost-commits` (`LostCommitsPolicy::Reprocess`): their keys are \
             forgotten and their rows read and written again; or accept the table as it is with \
             `--accept-table-state` (`LostCommitsPolicy::Accept`): those keys then stay processed"
        } else {
            "Restore the table that holds them, or start over on this table: a new store (or a \
             new pipeline id), then `tidemark adopt` to record the rows the table holds now as \
             processed"
        }
    }
}

impl TableCheck {
    /// The commits the table lost and why, if it lost any: its marker is
    /// below what the store committed (the table was dropped and recreated,
    /// replaced, or its marker expired), or its current state no longer
    /// carries commits its marker names (rolled back or restored).
    /// A loss the user accepted ([`TableCheck::accepted`]) is not one, as
    /// long as the table lost no more since.
    pub fn lost(&self) -> Option<LostCommits> {
        self.lost_commits()
            .filter(|(_, _, acceptable)| !(*acceptable && self.acceptance_covers()))
            .map(|((first, last), why, acceptable)| LostCommits {
                first,
                last,
                commits: sequences(first, last),
                why,
                acceptable,
            })
    }

    /// The latest commit of the pipeline that the table's current state
    /// carries, as far as its history tells.
    pub fn carried(&self) -> Option<u64> {
        match &self.lineage {
            Lineage::Carries(sequence) => Some(*sequence),
            Lineage::RolledBack { carried, .. } => *carried,
            Lineage::Unknown => None,
        }
    }

    /// Whether the table's current state carries its marker's commit (so a
    /// recorded acceptance of a loss is out of date).
    fn carries_marker(&self) -> bool {
        matches!(
            self.lineage,
            Lineage::Carries(_) | Lineage::RolledBack { .. }
        ) && self.marker.is_some()
            && self.carried() >= self.marker
    }

    /// Whether the recorded acceptance is of this table state: the same
    /// marker, and the current state carries at least what it carried then.
    fn acceptance_covers(&self) -> bool {
        self.accepted
            .as_ref()
            .is_some_and(|a| Some(a.marker) == self.marker && self.carried() >= a.carried)
    }

    fn lost_commits(&self) -> Option<((u64, u64), String, bool)> {
        let marker = self.marker.unwrap_or(0);
        if let Some(committed) = self.store_committed.filter(|c| *c > marker) {
            let mut why = match self.marker {
                Some(m) => format!(
                    "its marker says commit {m}, the store committed up to {committed} (the table \
                     was replaced or recreated, or its marker expired)"
                ),
                None => format!(
                    "it has no marker for the pipeline, the store committed up to {committed} (the \
                     table was dropped and recreated or replaced, or its marker expired)"
                ),
            };
            if let Some(risk) = &self.marker_risk {
                why = format!("{why}; {risk}");
            }
            return Some(((marker + 1, committed), why, false));
        }
        match &self.lineage {
            Lineage::RolledBack { carried, why } if carried.unwrap_or(0) < marker => Some((
                (carried.unwrap_or(0) + 1, marker),
                format!(
                    "its marker says commit {marker}, but its current state carries the \
                     pipeline's commits up to {}: {why}",
                    carried.map_or("none".to_string(), |c| c.to_string())
                ),
                true,
            )),
            Lineage::Carries(carried) if *carried < marker => Some((
                (carried + 1, marker),
                format!(
                    "its marker says commit {marker}, but its current state carries the \
                     pipeline's commits up to {carried}"
                ),
                true,
            )),
            _ => None,
        }
    }
}

/// What one table commit carries.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitRequest {
    /// The pipeline whose marker the commit sets.
    pub pipeline_id: String,
    /// The commit's sequence; the marker becomes this value.
    pub sequence: u64,
    /// The checkpoints whose files these are, in id order.
    pub checkpoints: Vec<CheckpointId>,
    /// The data files to append.
    pub files: Vec<FileRecord>,
}

/// What a sink did with a [`CommitRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct CommitOutcome {
    /// `true` if this call appended the files; `false` if the table's marker
    /// showed the sequence already applied (for example by an attempt whose
    /// response was lost, or by another committer).
    pub applied: bool,
    /// What the sink reports about the table afterwards (version, snapshot id).
    pub table_version: serde_json::Value,
}

/// One table commit made or finished by [`Committer::commit_pending`].
#[derive(Debug, Clone, PartialEq)]
pub struct CommitSummary {
    /// The commit sequence.
    pub sequence: u64,
    /// The checkpoints it carried.
    pub checkpoints: Vec<CheckpointId>,
    /// Number of data files.
    pub files: usize,
    /// Number of rows in those files.
    pub rows: u64,
    /// `false` if the table already held this commit and only the store's
    /// commit markers were missing (a repair after a crash or a lost response).
    pub applied_now: bool,
    /// What the sink reported about the table.
    pub table_version: serde_json::Value,
}

/// Everything one [`Committer::commit_pending`] call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitReport {
    /// The commits, in sequence order.
    pub commits: Vec<CommitSummary>,
}

impl CommitReport {
    /// Rows appended to the table by this call.
    pub fn rows_applied(&self) -> u64 {
        self.commits
            .iter()
            .filter(|c| c.applied_now)
            .map(|c| c.rows)
            .sum()
    }
}

/// Commits the sealed checkpoints of one store into one table for one pipeline.
pub struct Committer<S> {
    store: CheckpointStore,
    sink: S,
    pipeline_id: String,
    max_checkpoints_per_commit: usize,
    fence: Option<Fence>,
}

impl<S> fmt::Debug for Committer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Committer")
            .field("store", &self.store.location().url)
            .field("pipeline_id", &self.pipeline_id)
            .finish()
    }
}

impl<S: CommitSink> Committer<S> {
    /// A committer of `store` into `sink` under `pipeline_id`, the name of the
    /// pipeline's marker in the table. Keep the id stable across runs.
    pub fn new(store: CheckpointStore, sink: S, pipeline_id: impl Into<String>) -> Self {
        Committer {
            store,
            sink,
            pipeline_id: pipeline_id.into(),
            max_checkpoints_per_commit: DEFAULT_MAX_CHECKPOINTS_PER_COMMIT,
            fence: None,
        }
    }

    /// Commits only while `fence` holds: before it claims a sequence and
    /// before it asks the sink to commit, it fails with
    /// [`Error::Fenced`] once a newer run took the lease over. Safety does
    /// not depend on it (the table's marker decides what landed), but a
    /// zombie stops at once instead of racing the run that replaced it.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Caps how many checkpoints one table commit carries (at least 1).
    pub fn with_max_checkpoints_per_commit(mut self, max: usize) -> Self {
        self.max_checkpoints_per_commit = max.max(1);
        self
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The pipeline id, the name of the pipeline's marker in the table.
    pub fn pipeline_id(&self) -> &str {
        &self.pipeline_id
    }

    /// Commits every sealed checkpoint not yet committed, finishing first any
    /// commit an earlier run left half done. Safe to run from several processes
    /// at once and to repeat after any failure.
    pub async fn commit_pending(&self) -> Result<CommitReport> {
        self.commit_pending_under(self.fence.as_ref()).await
    }

    /// [`Self::commit_pending`] while `fence` (if any) holds: a pipeline
    /// passes the lease of the run in progress.
    pub(crate) async fn commit_pending_under(&self, fence: Option<&Fence>) -> Result<CommitReport> {
        validate_pipeline_id(&self.pipeline_id)?;
        let mut report = CommitReport::default();
        let mut lost_races = 0;
        loop {
            // The latest intent before the state: the state is then at least as
            // new as the intent, and holds every checkpoint the intent names
            // (they were sealed before it was written). Read the other way
            // round, a newer intent could name checkpoints a stale state does
            // not show as pending.
            let latest = self.store.latest_commit_intent().await?;
            let state = self.store.load().await?;
            let pending: BTreeMap<CheckpointId, &Manifest> = state
                .pending_commit()
                .into_iter()
                .map(|m| (m.checkpoint_id, m))
                .collect();
            if let Some(intent) = &latest {
                self.ensure_ours(intent)?;
                if intent.checkpoints.iter().any(|id| pending.contains_key(id)) {
                    report
                        .commits
                        .push(self.finish(intent, &pending, fence).await?);
                    continue;
                }
            }
            // Checkpoints without files (a run that read nothing new, or whose
            // rows were all filtered out) need no table commit: their keys
            // count as processed from the seal on, and marking them keeps the
            // table free of empty snapshots.
            let empty: Vec<CheckpointId> = pending
                .values()
                .filter(|m| m.files.is_empty())
                .map(|m| m.checkpoint_id)
                .collect();
            if !empty.is_empty() {
                let commit = json!({ "pipeline_id": self.pipeline_id, "files": 0 });
                self.store.mark_committed(&empty, &commit).await?;
            }
            let fresh: Vec<CheckpointId> = pending
                .values()
                .filter(|m| !m.files.is_empty())
                .map(|m| m.checkpoint_id)
                .take(self.max_checkpoints_per_commit)
                .collect();
            if fresh.is_empty() {
                return Ok(report);
            }
            let sequence = latest.as_ref().map_or(1, |i| i.sequence + 1);
            if !self.claim(sequence, fresh, fence).await? {
                lost_races += 1;
                if lost_races > MAX_LOST_RACES {
                    return Err(Error::ConcurrentChange {
                        operation: "claiming the next commit sequence",
                        attempts: lost_races,
                    });
                }
            }
        }
    }

    /// Writes the intent for `sequence`. Returns `false` if another committer
    /// claimed that sequence first (its intent is resumed by the next round).
    async fn claim(
        &self,
        sequence: u64,
        checkpoints: Vec<CheckpointId>,
        fence: Option<&Fence>,
    ) -> Result<bool> {
        ensure_not_fenced(fence, "claiming a commit sequence").await?;
        let marker = self.marker().await?;
        if marker.is_some_and(|m| m >= sequence) {
            // Either another committer just claimed and applied `sequence`, or
            // the table holds commits this store never made.
            let latest = self.store.latest_commit_intent().await?;
            if latest.is_some_and(|i| i.sequence >= sequence) {
                return Ok(false);
            }
            return Err(self.mismatch(
                marker,
                sequence,
                "the table holds commits of this pipeline that this store never made; \
                 the store was replaced, or it belongs to another table. Use the store \
                 that made those commits, or a new pipeline id",
            ));
        }
        let intent = CommitIntent {
            format_version: crate::store::FORMAT_VERSION,
            sequence,
            pipeline_id: self.pipeline_id.clone(),
            table: self.sink.table(),
            checkpoints,
            created_at: self.store.now(),
        };
        self.store.put_commit_intent(&intent).await
    }

    /// Compares the store with the table: the store's latest committed
    /// sequence, the table's marker, and what the table's history says about
    /// the pipeline's latest commit.
    pub async fn check_table(&self) -> Result<TableCheck> {
        let store_committed = match self.store.latest_commit_intent().await? {
            None => None,
            Some(intent) => {
                self.ensure_ours(&intent)?;
                self.store.committed_sequence_of(&intent).await?
            }
        };
        let marker = self.marker().await?;
        let lineage = self
            .sink
            .lineage(&self.pipeline_id)
            .await
            .map_err(|source| self.sink_error(source))?;
        let accepted = match marker {
            Some(marker) => self.store.acceptance(marker).await?,
            None => None,
        };
        let marker_risk = if store_committed.is_some_and(|c| c > marker.unwrap_or(0)) {
            self.sink
                .marker_risk()
                .await
                .map_err(|source| self.sink_error(source))?
        } else {
            None
        };
        Ok(TableCheck {
            table: self.sink.table(),
            store_committed,
            marker,
            lineage,
            accepted,
            marker_risk,
        })
    }

    /// Fails with [`Error::TableDiverged`] if the table lost commits the
    /// store made ([`TableCheck::lost`]), unless `policy` says otherwise and
    /// the loss is [acceptable](LostCommits::acceptable) (the table's marker
    /// is intact):
    /// - [`LostCommitsPolicy::Accept`]: the lost commits' keys stay
    ///   processed;
    /// - [`LostCommitsPolicy::Reprocess`]: their keys are forgotten first
    ///   (a [`ForgottenCommit`] record per lost commit), so the run reads
    ///   their rows again.
    ///
    /// Either way the decision is recorded in the store as an acceptance of
    /// this table state (later checks of it pass without being told again)
    /// and logged as a warning.
    ///
    /// Forgotten commits that the table carries again (restored before
    /// their rows were committed anew) are remembered first: their keys
    /// count as processed again.
    pub async fn ensure_table_agrees(&self, policy: LostCommitsPolicy) -> Result<TableCheck> {
        self.ensure_table_agrees_under(policy, self.fence.as_ref())
            .await
    }

    /// [`Self::ensure_table_agrees`] by the holder of `fence` (if any): the
    /// runs of other lease scopes must not be live while keys are forgotten
    /// or remembered, since they read with the keys they loaded before.
    pub(crate) async fn ensure_table_agrees_under(
        &self,
        policy: LostCommitsPolicy,
        fence: Option<&Fence>,
    ) -> Result<TableCheck> {
        let mut check = self.check_table().await?;
        self.remember_regained(&check, policy, fence).await?;
        match check.lost() {
            Some(lost) if policy != LostCommitsPolicy::Refuse && lost.acceptable => {
                let reprocessed = policy == LostCommitsPolicy::Reprocess;
                if reprocessed {
                    self.forget(&check, &lost, fence).await?;
                }
                let record = AcceptanceRecord {
                    format_version: crate::store::FORMAT_VERSION,
                    marker: check.marker.unwrap_or(0),
                    carried: check.carried(),
                    commits: lost.commits.clone(),
                    why: lost.why.clone(),
                    accepted_at: self.store.now(),
                    reprocessed,
                };
                self.store.record_acceptance(&record).await?;
                let choice = if reprocessed {
                    "their keys are forgotten, so their rows are read and written again"
                } else {
                    "accepted as it is: their keys stay processed"
                };
                tracing::warn!(
                    table = check.table,
                    pipeline = self.pipeline_id,
                    commits = lost.commits,
                    why = lost.why,
                    choice,
                    "the table lost commits of this pipeline; the choice is recorded in the store"
                );
                check.accepted = Some(record);
                Ok(check)
            }
            Some(lost) => Err(Error::TableDiverged {
                table: check.table,
                pipeline: self.pipeline_id.clone(),
                way_out: lost.way_out().to_string(),
                lost: lost.commits,
                why: lost.why,
            }),
            None => {
                // The table carries its marker again (restored to a state
                // that holds the lost commits): the acceptance is out of
                // date, and a later loss must be refused again.
                if let (Some(accepted), true) = (&check.accepted, check.carries_marker()) {
                    self.store.remove_acceptance(accepted.marker).await?;
                    check.accepted = None;
                }
                Ok(check)
            }
        }
    }

    /// Forgets the keys of every lost commit: one [`ForgottenCommit`] per
    /// commit, naming the checkpoints its intent carried. Checks them all
    /// before it writes any, so a commit that cannot be reprocessed (its
    /// intent gone, or a checkpoint folded into the compacted index, where
    /// its keys are no longer told apart) forgets nothing. Then it fences
    /// compaction ([`CheckpointStore::fence_compaction`]), so that no
    /// compaction planned before the records existed folds those
    /// checkpoints in.
    async fn forget(
        &self,
        check: &TableCheck,
        lost: &LostCommits,
        fence: Option<&Fence>,
    ) -> Result<()> {
        self.ensure_no_other_live_run(fence).await?;
        let state = self.store.load().await?;
        let cannot = |commit: u64, reason: &str| Error::CannotReprocess {
            table: check.table.clone(),
            pipeline: self.pipeline_id.clone(),
            commit,
            reason: reason.to_string(),
        };
        let compacted = |index: Option<&crate::store::IndexGeneration>, id: &CheckpointId| {
            index.is_some_and(|index| index.checkpoints.contains(id))
        };
        // A lost commit made after earlier forgotten commits carried their
        // rows anew. If the table holds those earlier commits again (it was
        // restored over the reprocessing), forgetting it would write their
        // rows a second time.
        let carried = check.carried();
        if let Some(earlier) = self
            .store
            .reprocessed_commits()
            .await?
            .into_iter()
            .find(|r| carried >= Some(r.sequence) && lost.last > r.marker)
        {
            return Err(cannot(
                lost.last,
                &format!(
                    "it carried anew the rows of commit {}, which was reprocessed and which the \
                     table holds again: reprocessing it would write those rows twice",
                    earlier.sequence
                ),
            ));
        }
        let mut records = Vec::new();
        for sequence in lost.first..=lost.last {
            let Some(intent) = self.store.commit_intent(sequence).await? else {
                return Err(cannot(
                    sequence,
                    "the store no longer holds its record (compaction removes the records of \
                     commits whose keys it folded into the index, and of commits reprocessed \
                     before)",
                ));
            };
            self.ensure_ours(&intent)?;
            if intent
                .checkpoints
                .iter()
                .any(|id| compacted(state.index.as_deref(), id))
            {
                return Err(cannot(
                    sequence,
                    "compaction has folded its keys into the index, where they are no longer \
                     told apart from other commits' keys",
                ));
            }
            records.push(ForgottenCommit {
                format_version: crate::store::FORMAT_VERSION,
                sequence,
                marker: check.marker.unwrap_or(lost.last),
                checkpoints: intent.checkpoints,
                distrusted: Vec::new(),
                why: lost.why.clone(),
                forgotten_at: self.store.now(),
            });
        }
        // Sealed checkpoints waiting for their commit (but for the lost
        // commits' own, landed before their marks) may have read a source
        // unit to its end whose earlier rows are in a lost commit: their
        // finished units are not trusted.
        let lost_checkpoints: BTreeSet<CheckpointId> = records
            .iter()
            .flat_map(|r| r.checkpoints.iter().copied())
            .collect();
        let distrusted: Vec<CheckpointId> = state
            .pending_commit()
            .iter()
            .map(|m| m.checkpoint_id)
            .filter(|id| !lost_checkpoints.contains(id))
            .collect();
        for record in &mut records {
            record.distrusted = distrusted.clone();
        }
        for record in &records {
            self.store.forget_commit(record).await?;
        }
        let index = self.store.fence_compaction().await?;
        if let Some(record) = records
            .iter()
            .find(|r| r.checkpoints.iter().any(|id| compacted(index.as_ref(), id)))
        {
            // A compaction planned before the records folded it in first.
            for record in &records {
                self.store.remember_commit(record.sequence).await?;
            }
            return Err(cannot(
                record.sequence,
                "a compaction folded its keys into the index while it was being forgotten",
            ));
        }
        Ok(())
    }

    /// Undoes [`Self::forget`] for the forgotten commits that the table
    /// carries again (restored to a state no later than the marker they
    /// were forgotten under, so before any commit made their rows anew):
    /// their keys count as processed again. Refused while checkpoints that
    /// may hold those rows read again wait for their commit or are being
    /// written.
    ///
    /// When the table's history cannot tell what it carries
    /// ([`Lineage::Unknown`]) and no commit was made since the forgetting,
    /// `policy` decides: [`LostCommitsPolicy::Reprocess`] keeps them
    /// forgotten, [`LostCommitsPolicy::Accept`] remembers them, and
    /// [`LostCommitsPolicy::Refuse`] fails with
    /// [`Error::ForgottenCommitsUndecided`].
    async fn remember_regained(
        &self,
        check: &TableCheck,
        policy: LostCommitsPolicy,
        fence: Option<&Fence>,
    ) -> Result<()> {
        let carried = check.carried();
        let forgotten = self.store.forgotten_commits().await?;
        let undecided: Vec<&ForgottenCommit> = forgotten
            .iter()
            .filter(|record| {
                check.lineage == Lineage::Unknown && check.marker == Some(record.marker)
            })
            .collect();
        if let (Some(first), Some(last)) = (undecided.first(), undecided.last()) {
            if policy == LostCommitsPolicy::Refuse {
                return Err(Error::ForgottenCommitsUndecided {
                    table: check.table.clone(),
                    pipeline: self.pipeline_id.clone(),
                    commits: sequences(first.sequence, last.sequence),
                });
            }
        }
        let regained: Vec<ForgottenCommit> = forgotten
            .into_iter()
            .filter(|record| {
                let carried_again =
                    carried.is_some_and(|c| record.sequence <= c && c <= record.marker);
                let told_so = policy == LostCommitsPolicy::Accept
                    && check.lineage == Lineage::Unknown
                    && check.marker == Some(record.marker);
                carried_again || told_so
            })
            .collect();
        let (Some(first), Some(last)) = (regained.first(), regained.last()) else {
            return Ok(());
        };
        let commits = sequences(first.sequence, last.sequence);
        self.ensure_no_other_live_run(fence).await?;
        let pending = self.store.load().await?.pending_commit().len()
            + self.store.unsealed_checkpoints().await?.len();
        if pending > 0 {
            return Err(Error::ForgottenCommitsRegained {
                table: check.table.clone(),
                pipeline: self.pipeline_id.clone(),
                commits,
                pending,
            });
        }
        for record in &regained {
            self.store.remember_commit(record.sequence).await?;
        }
        tracing::warn!(
            table = check.table,
            pipeline = self.pipeline_id,
            commits,
            "the table holds commits forgotten for reprocessing again; their keys count as processed again"
        );
        Ok(())
    }

    /// Fails with [`Error::LeaseHeld`] if a run of another lease scope than
    /// `fence`'s is live.
    async fn ensure_no_other_live_run(&self, fence: Option<&Fence>) -> Result<()> {
        let own = fence.map(|f| f.claim().scope.as_str());
        let now = self.store.now();
        for scope in self.store.lease_scopes().await? {
            if Some(scope.as_str()) == own {
                continue;
            }
            if let Some(status) = self.store.lease_status(&scope).await? {
                if status.is_live(now) {
                    return Err(Error::LeaseHeld {
                        scope,
                        epoch: status.record.claim.epoch,
                        holder: status.record.holder.clone(),
                        expires_at: status.expires_at().to_rfc3339(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies (or recognises as applied) the table commit of `intent`, then
    /// marks its checkpoints committed. Whether the commit landed is decided by
    /// the table's marker alone.
    async fn finish(
        &self,
        intent: &CommitIntent,
        pending: &BTreeMap<CheckpointId, &Manifest>,
        fence: Option<&Fence>,
    ) -> Result<CommitSummary> {
        let marker = self.marker().await?;
        let landed = marker.is_some_and(|m| m >= intent.sequence);
        let manifests: Vec<&Manifest> = intent
            .checkpoints
            .iter()
            .filter_map(|id| pending.get(id).copied())
            .collect();
        if !landed && manifests.len() < intent.checkpoints.len() {
            // Marks follow the table commit, so the table held this commit once
            // and no longer does.
            return Err(self.mismatch(
                marker,
                intent.sequence,
                &format!(
                    "some checkpoints of commit {} are marked committed, so the table held \
                     that commit, but its marker no longer reaches it: the table was rolled \
                     back, restored or replaced. Inspect the table for the files of checkpoints \
                     {:?}",
                    intent.sequence, intent.checkpoints
                ),
            ));
        }
        let files: Vec<FileRecord> = manifests.iter().flat_map(|m| m.files.clone()).collect();
        let file_count = files.len();
        let rows = files.iter().map(|f| f.record_count).sum();
        let outcome = if landed {
            CommitOutcome {
                applied: false,
                table_version: json!(null),
            }
        } else {
            self.apply(intent, marker, files, fence).await?
        };
        let commit = json!({
            "pipeline_id": self.pipeline_id,
            "table": intent.table,
            "sequence": intent.sequence,
            "table_version": outcome.table_version,
        });
        self.store
            .mark_committed(&intent.checkpoints, &commit)
            .await?;
        tracing::info!(
            pipeline = %self.pipeline_id,
            table = %intent.table,
            sequence = intent.sequence,
            checkpoints = intent.checkpoints.len(),
            files = file_count,
            rows,
            applied_now = outcome.applied,
            "table commit finished"
        );
        Ok(CommitSummary {
            sequence: intent.sequence,
            checkpoints: intent.checkpoints.clone(),
            files: file_count,
            rows,
            applied_now: outcome.applied,
            table_version: outcome.table_version,
        })
    }

    /// Asks the sink to commit, after checking that the table's `marker` (read
    /// just before, below `intent.sequence`) can tell whether it landed: it
    /// must show the previous commit.
    async fn apply(
        &self,
        intent: &CommitIntent,
        marker: Option<u64>,
        files: Vec<FileRecord>,
        fence: Option<&Fence>,
    ) -> Result<CommitOutcome> {
        let sequence = intent.sequence;
        // Intents are checked on read to start at 1.
        let previous = sequence.saturating_sub(1);
        if marker.unwrap_or(0) != previous {
            return Err(self.mismatch(
                marker,
                sequence,
                &format!(
                    "the table should show commit {previous} of this pipeline; without it, \
                     whether commit {sequence} landed cannot be told and committing again \
                     could duplicate rows. The table was rolled back, restored or replaced \
                     since, or (Delta) a checkpoint by Spark under \
                     `delta.setTransactionRetentionDuration` dropped the marker. Inspect the \
                     table for the files of checkpoints {:?}",
                    intent.checkpoints
                ),
            ));
        }
        ensure_not_fenced(fence, "committing to the table").await?;
        let request = CommitRequest {
            pipeline_id: self.pipeline_id.clone(),
            sequence,
            checkpoints: intent.checkpoints.clone(),
            files,
        };
        self.sink
            .commit(&request)
            .await
            .map_err(|source| self.sink_error(source))
    }

    /// A failure the sink reported, named with its table.
    fn sink_error(&self, source: BoxError) -> Error {
        Error::Sink {
            table: self.sink.table(),
            source,
        }
    }

    async fn marker(&self) -> Result<Option<u64>> {
        self.sink
            .committed_sequence(&self.pipeline_id)
            .await
            .map_err(|source| self.sink_error(source))
    }

    fn ensure_ours(&self, intent: &CommitIntent) -> Result<()> {
        let table = self.sink.table();
        if intent.pipeline_id == self.pipeline_id && intent.table == table {
            return Ok(());
        }
        Err(Error::CommitTargetMismatch {
            sequence: intent.sequence,
            pipeline: self.pipeline_id.clone(),
            table,
            found_pipeline: intent.pipeline_id.clone(),
            found_table: intent.table.clone(),
        })
    }

    fn mismatch(&self, table_sequence: Option<u64>, store_sequence: u64, why: &str) -> Error {
        Error::MarkerMismatch {
            table: self.sink.table(),
            pipeline: self.pipeline_id.clone(),
            table_sequence,
            store_sequence,
            why: why.to_string(),
        }
    }
}

/// Commit sequences `first..=last` as messages show them: `3` or `3..=5`.
fn sequences(first: u64, last: u64) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}..={last}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn check(store_committed: Option<u64>, marker: Option<u64>, lineage: Lineage) -> TableCheck {
        TableCheck {
            table: "t".into(),
            store_committed,
            marker,
            lineage,
            accepted: None,
            marker_risk: None,
        }
    }

    fn acceptance(marker: u64, carried: Option<u64>) -> AcceptanceRecord {
        AcceptanceRecord {
            format_version: 1,
            marker,
            carried,
            commits: "lost".into(),
            why: "restored".into(),
            accepted_at: chrono::DateTime::UNIX_EPOCH,
            reprocessed: false,
        }
    }

    #[test]
    fn an_accepted_loss_passes_until_the_table_loses_more() {
        let restored = |carried| Lineage::RolledBack {
            carried,
            why: "restored".into(),
        };
        let accepted = |lineage, record| TableCheck {
            accepted: Some(record),
            ..check(Some(3), Some(3), lineage)
        };
        assert_eq!(
            accepted(restored(Some(2)), acceptance(3, Some(2))).lost(),
            None
        );
        assert_eq!(
            accepted(Lineage::Carries(1), acceptance(3, Some(1))).lost(),
            None
        );
        assert_eq!(accepted(restored(None), acceptance(3, None)).lost(), None);
        // Restored further back than what was accepted.
        let lost = accepted(restored(Some(1)), acceptance(3, Some(2)))
            .lost()
            .unwrap();
        assert_eq!(lost.commits, "2..=3");
        let lost = accepted(restored(None), acceptance(3, Some(1)))
            .lost()
            .unwrap();
        assert_eq!(lost.commits, "1..=3");
        // An acceptance of another marker.
        assert!(accepted(restored(Some(2)), acceptance(2, Some(2)))
            .lost()
            .is_some());
        // A marker behind the store cannot be accepted, recorded or not.
        let recreated = TableCheck {
            accepted: Some(acceptance(2, Some(2))),
            ..check(Some(4), Some(2), Lineage::Carries(2))
        };
        assert_eq!(recreated.lost().unwrap().commits, "3..=4");
    }

    #[test]
    fn a_table_that_carries_the_marker_s_commit_agrees() {
        assert_eq!(check(Some(3), Some(3), Lineage::Carries(3)).lost(), None);
        // A commit applied but not yet marked in the store.
        assert_eq!(check(Some(2), Some(3), Lineage::Carries(3)).lost(), None);
        // History out of reach cannot tell.
        assert_eq!(check(Some(3), Some(3), Lineage::Unknown).lost(), None);
        assert_eq!(check(None, None, Lineage::Unknown).lost(), None);
    }

    #[test]
    fn a_marker_below_the_store_s_commits_loses_them() {
        let lost = check(Some(4), Some(2), Lineage::Carries(2)).lost().unwrap();
        assert_eq!(lost.commits, "3..=4");
        assert!(lost.why.contains("marker says commit 2"), "{lost:?}");
        assert!(
            !lost.acceptable,
            "a marker behind the store cannot continue"
        );
        let way_out = lost.way_out();
        assert!(
            way_out.contains("new store") && way_out.contains("`tidemark adopt`"),
            "{way_out}"
        );
        assert!(!way_out.contains("--accept-table-state"), "{way_out}");
        let lost = check(Some(1), None, Lineage::Unknown).lost().unwrap();
        assert_eq!(lost.commits, "1");
        assert!(lost.why.contains("no marker"), "{lost:?}");
        // A table setting that can drop the marker is named.
        let risky = TableCheck {
            marker_risk: Some("the table sets delta.setTransactionRetentionDuration".into()),
            ..check(Some(1), None, Lineage::Unknown)
        };
        let why = risky.lost().unwrap().why;
        assert!(
            why.contains("no marker") && why.ends_with("delta.setTransactionRetentionDuration"),
            "{why}"
        );
    }

    #[test]
    fn a_rolled_back_table_loses_the_commits_after_what_it_carries() {
        let lost = check(Some(3), Some(3), Lineage::Carries(1)).lost().unwrap();
        assert_eq!(lost.commits, "2..=3");
        assert!(lost.why.contains("up to 1"), "{lost:?}");
        assert!(lost.acceptable, "the marker is intact");
        let way_out = lost.way_out();
        for flag in ["--reprocess-lost-commits", "--accept-table-state"] {
            assert!(way_out.contains(flag), "{way_out}");
        }
        let restored = Lineage::RolledBack {
            carried: Some(2),
            why: "restored".into(),
        };
        let lost = check(Some(3), Some(3), restored).lost().unwrap();
        assert_eq!(lost.commits, "3");
        assert!(lost.why.ends_with("restored"), "{lost:?}");
        let everything = Lineage::RolledBack {
            carried: None,
            why: "restored".into(),
        };
        assert_eq!(
            check(Some(2), Some(2), everything).lost().unwrap().commits,
            "1..=2"
        );
    }

    #[test]
    fn the_retry_backoff_starts_at_20_ms_doubles_and_stops_at_about_5_s() {
        let pauses: Vec<u128> = (0..12).map(|a| retry_backoff(a).as_millis()).collect();
        assert_eq!(
            pauses,
            [20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 5120, 5120, 5120]
        );
    }
}
