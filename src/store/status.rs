//! A summary of everything a store holds, for `tidemark status` and for tests
//! that check a pipeline left nothing behind.

use super::layout::Layout;
use super::lease::LeaseStatus;
use super::orphans::Orphans;
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::records::{self, CheckpointId, CommitMarker, LeaseClaim};
use super::{io, CheckpointStore};
use crate::error::{ObjectKind, Result};

/// A checkpoint that a writer began and nobody sealed: a run in progress, or
/// one that died and will be sealed empty by the next holder of its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedCheckpoint {
    /// The checkpoint.
    pub id: CheckpointId,
    /// The leases its writers held (none for writers without a lease).
    pub leases: Vec<LeaseClaim>,
    /// In-flight records its writers made.
    pub in_flight_records: usize,
}

/// The newest table commit whose checkpoints are all marked committed.
#[derive(Debug, Clone, PartialEq)]
pub struct LastCommit {
    /// Its commit sequence.
    pub sequence: u64,
    /// When the store recorded it as landed in the table (the commit marker
    /// of its first checkpoint; the intent's time once compaction removed it).
    pub committed_at: DateTime<Utc>,
}

/// What a store holds, by lifecycle state.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreStatus {
    /// Checkpointed keys (sealed and compacted).
    pub key_count: u64,
    /// Unsealed checkpoints.
    pub staged: Vec<StagedCheckpoint>,
    /// Sealed checkpoints whose files wait for a table commit.
    pub pending_commit: Vec<CheckpointId>,
    /// Sealed, committed checkpoints not compacted yet.
    pub committed: usize,
    /// Checkpoints in the compacted index.
    pub compacted: usize,
    /// Sealed checkpoints that are tombstones of fenced writers.
    pub fenced: usize,
    /// Sealed checkpoints ever (in the index or not), fenced tombstones included.
    pub sealed: usize,
    /// Rows in the data files of committed checkpoints: what reached the table.
    pub rows_committed: u64,
    /// Rows in the data files of sealed checkpoints waiting for a commit.
    pub rows_pending_commit: u64,
    /// The highest table commit sequence started, if any.
    pub latest_commit: Option<u64>,
    /// The newest table commit that finished, and when.
    pub last_commit: Option<LastCommit>,
    /// Commit intents kept in the store.
    pub commit_intents: usize,
    /// Orphan data files waiting for garbage collection.
    pub orphans: Vec<Orphans>,
    /// Every lease scope and its state.
    pub leases: Vec<(String, LeaseStatus)>,
}

impl StoreStatus {
    /// Nothing unsealed, nothing waiting for a commit, no orphan files.
    pub fn is_clean(&self) -> bool {
        self.staged.is_empty() && self.pending_commit.is_empty() && self.orphans.is_empty()
    }
}

impl CheckpointStore {
    /// Summarises the store: checkpoints by state, pending commits, unsealed
    /// writes, orphans, key count and leases. Reads every sealed manifest not
    /// yet compacted and every staged begin marker and in-flight record.
    pub async fn status(&self) -> Result<StoreStatus> {
        let state = self.load().await?;
        let staged: Vec<StagedCheckpoint> = self
            .unsealed_checkpoints()
            .await?
            .into_iter()
            .map(|unsealed| StagedCheckpoint {
                id: unsealed.id,
                leases: unsealed.begun.into_iter().filter_map(|m| m.lease).collect(),
                in_flight_records: unsealed.in_flight.len(),
            })
            .collect();
        let mut orphans = Vec::new();
        for summary in &state.checkpoints {
            let found = self.orphans_of(&summary.manifest).await?;
            if !found.is_empty() {
                orphans.push(found);
            }
        }
        let intents: Vec<u64> = io::list(self.object_store(), &self.layout().commit_intents_dir())
            .await?
            .iter()
            .filter_map(|m| Layout::sequence_of(&m.location))
            .collect();
        let pending_manifests = state.pending_commit();
        let pending_commit: Vec<CheckpointId> =
            pending_manifests.iter().map(|m| m.checkpoint_id).collect();
        let rows_pending_commit = pending_manifests.iter().map(|m| m.row_count()).sum();
        let pending: BTreeSet<CheckpointId> = pending_commit.iter().copied().collect();
        let last_commit = self.last_commit(&intents, &pending).await?;
        let rows_committed = state.index.as_ref().map_or(0, |i| i.committed_rows)
            + state
                .checkpoints
                .iter()
                .filter(|c| c.committed)
                .map(|c| c.manifest.row_count())
                .sum::<u64>();
        let mut leases = Vec::new();
        for scope in self.lease_scopes().await? {
            if let Some(status) = self.lease_status(&scope).await? {
                leases.push((scope, status));
            }
        }
        Ok(StoreStatus {
            key_count: state.key_count(),
            staged,
            pending_commit,
            committed: state.checkpoints.iter().filter(|c| c.committed).count(),
            compacted: state.compacted_count(),
            fenced: state
                .checkpoints
                .iter()
                .filter(|c| c.manifest.fenced_by.is_some())
                .count(),
            sealed: state.checkpoints.len() + state.compacted_count(),
            rows_committed,
            rows_pending_commit,
            latest_commit: intents.iter().copied().max(),
            last_commit,
            commit_intents: intents.len(),
            orphans,
            leases,
        })
    }

    /// The newest of the two highest commit intents whose checkpoints are no
    /// longer pending (the highest may still be on its way to the table).
    async fn last_commit(
        &self,
        intents: &[u64],
        pending: &BTreeSet<CheckpointId>,
    ) -> Result<Option<LastCommit>> {
        let mut sequences = intents.to_vec();
        sequences.sort_unstable_by(|a, b| b.cmp(a));
        for sequence in sequences.into_iter().take(2) {
            let Some(intent) = self.commit_intent(sequence).await? else {
                continue;
            };
            if intent.checkpoints.iter().any(|id| pending.contains(id)) {
                continue;
            }
            let mut committed_at = intent.created_at;
            if let Some(first) = intent.checkpoints.first() {
                let path = self.layout().committed(*first);
                if let Some(bytes) = io::get_optional(self.object_store(), &path).await? {
                    let marker: CommitMarker =
                        records::decode(ObjectKind::CommitMarker, path.as_ref(), &bytes)?;
                    committed_at = marker.committed_at;
                }
            }
            return Ok(Some(LastCommit {
                sequence,
                committed_at,
            }));
        }
        Ok(None)
    }
}
