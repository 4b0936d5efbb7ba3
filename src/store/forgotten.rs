//! Lost commits the user chose to reprocess (`forgotten/{sequence}.json`):
//! the keys of their checkpoints no longer count as processed.
//!
//! Forgetting is a record beside the checkpoints, not a change to them: a
//! seal is written once and never altered. [`CheckpointStore::load`] leaves
//! the checkpoints of every forgotten commit out of the state it returns, so
//! no read skips their keys. Only checkpoints outside the compacted index can
//! be forgotten: the index's sorted runs no longer say which checkpoint a key
//! came from.

use std::collections::BTreeSet;

use super::layout::Layout;
use super::records::{self, CheckpointId, ForgottenCommit};
use super::{io, CheckpointStore};
use crate::error::{ObjectKind, Result};

impl CheckpointStore {
    /// Records that commit `record.sequence` is forgotten: from the next load
    /// on, its checkpoints' keys are not processed. Writing it again is
    /// harmless.
    pub async fn forget_commit(&self, record: &ForgottenCommit) -> Result<()> {
        let path = self.layout().forgotten(record.sequence);
        let encoded = records::encode(ObjectKind::ForgottenCommit, path.as_ref(), record)?;
        io::put(self.object_store(), &path, encoded).await
    }

    /// Undoes [`Self::forget_commit`]: the keys of commit `sequence` count as
    /// processed again.
    pub async fn remember_commit(&self, sequence: u64) -> Result<()> {
        io::delete(self.object_store(), &self.layout().forgotten(sequence)).await
    }

    /// Every forgotten commit, in sequence order. One LIST, and one GET per
    /// record (there are none unless a table lost commits).
    pub async fn forgotten_commits(&self) -> Result<Vec<ForgottenCommit>> {
        let store = self.object_store();
        let mut sequences: Vec<u64> = io::list(store, &self.layout().forgotten_dir())
            .await?
            .iter()
            .filter_map(|meta| Layout::sequence_of(&meta.location))
            .collect();
        sequences.sort_unstable();
        let mut forgotten = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            let path = self.layout().forgotten(sequence);
            // Deleted since the listing (compaction removed it): skipped.
            if let Some(bytes) = io::get_optional(store, &path).await? {
                forgotten.push(records::decode(
                    ObjectKind::ForgottenCommit,
                    path.as_ref(),
                    &bytes,
                )?);
            }
        }
        Ok(forgotten)
    }

    /// The checkpoints of every forgotten commit.
    pub(super) async fn forgotten_checkpoints(&self) -> Result<BTreeSet<CheckpointId>> {
        Ok(self
            .forgotten_commits()
            .await?
            .into_iter()
            .flat_map(|record| record.checkpoints)
            .collect())
    }

    /// Deletes what forgotten commits below the latest commit intent left: their checkpoints' staged objects, seals, commit
    /// markers and collection records, their commit intents, and last the
    /// forgotten record itself, so that a crash part-way leaves the record
    /// and the checkpoints stay forgotten. The latest commit's are kept: its
    /// intent decides what the store committed last. A checkpoint with
    /// orphans that gc has not collected yet waits. Returns how many records
    /// it removed.
    pub(super) async fn remove_forgotten(&self) -> Result<usize> {
        let records = self.forgotten_commits().await?;
        if records.is_empty() {
            return Ok(0);
        }
        let Some(latest_sequence) = self.latest_commit_intent().await?.map(|i| i.sequence) else {
            return Ok(0);
        };
        let store = self.object_store();
        let layout = self.layout();
        let mut removed = 0;
        for record in records {
            if record.sequence >= latest_sequence {
                continue;
            }
            let mut waiting_for_gc = false;
            for &id in &record.checkpoints {
                if let Some(manifest) = self.read_manifest(id).await? {
                    waiting_for_gc |= !self.orphans_of(&manifest).await?.is_empty();
                }
            }
            if waiting_for_gc {
                continue;
            }
            for &id in &record.checkpoints {
                for meta in io::list(store, &layout.staging_of(id)).await? {
                    io::delete(store, &meta.location).await?;
                }
                io::delete(store, &layout.sealed(id)).await?;
                io::delete(store, &layout.committed(id)).await?;
                io::delete(store, &layout.collected(id)).await?;
            }
            io::delete(store, &layout.commit_intent(record.sequence)).await?;
            io::delete(store, &layout.forgotten(record.sequence)).await?;
            removed += 1;
        }
        Ok(removed)
    }
}
