//! A summary of everything a store holds, for `tidemark status` and for tests
//! that check a pipeline left nothing behind.

use std::collections::{BTreeMap, BTreeSet};

use super::layout::Layout;
use super::lease::LeaseStatus;
use super::orphans::Orphans;
use super::records::{self, BeginMarker, CheckpointId, LeaseClaim};
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
    /// The highest table commit sequence started, if any.
    pub latest_commit: Option<u64>,
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
        let store = self.object_store();
        let layout = self.layout();
        let sealed: BTreeSet<CheckpointId> = io::list(store, &layout.sealed_dir())
            .await?
            .iter()
            .filter_map(|m| Layout::id_of_marker(&m.location))
            .collect();
        let compacted: BTreeSet<CheckpointId> = state
            .index
            .iter()
            .flat_map(|i| i.checkpoints.iter().copied())
            .collect();
        let mut staged: BTreeMap<CheckpointId, StagedCheckpoint> = BTreeMap::new();
        for meta in io::list(store, &layout.staging_dir()).await? {
            let Some((id, _)) = layout.staged_owner(&meta.location) else {
                continue;
            };
            if sealed.contains(&id) || compacted.contains(&id) {
                continue;
            }
            let entry = staged.entry(id).or_insert_with(|| StagedCheckpoint {
                id,
                leases: Vec::new(),
                in_flight_records: 0,
            });
            if meta.location.filename() == Some("begun.json") {
                let bytes = io::get(store, &meta.location).await?;
                let marker: BeginMarker =
                    records::decode(ObjectKind::BeginMarker, meta.location.as_ref(), &bytes)?;
                entry.leases.extend(marker.lease);
            } else if super::lease::is_in_flight_record(&meta.location) {
                entry.in_flight_records += 1;
            }
        }
        let mut orphans = Vec::new();
        for summary in &state.checkpoints {
            let found = self.orphans_of(&summary.manifest).await?;
            if !found.is_empty() {
                orphans.push(found);
            }
        }
        let intents: Vec<u64> = io::list(store, &layout.commit_intents_dir())
            .await?
            .iter()
            .filter_map(|m| Layout::sequence_of(&m.location))
            .collect();
        let mut leases = Vec::new();
        for scope in self.lease_scopes().await? {
            if let Some(status) = self.lease_status(&scope).await? {
                leases.push((scope, status));
            }
        }
        Ok(StoreStatus {
            key_count: state.key_count(),
            staged: staged.into_values().collect(),
            pending_commit: state
                .pending_commit()
                .iter()
                .map(|m| m.checkpoint_id)
                .collect(),
            committed: state.checkpoints.iter().filter(|c| c.committed).count(),
            compacted: state.compacted_count(),
            fenced: state
                .checkpoints
                .iter()
                .filter(|c| c.manifest.fenced_by.is_some())
                .count(),
            latest_commit: intents.iter().copied().max(),
            commit_intents: intents.len(),
            orphans,
            leases,
        })
    }
}
