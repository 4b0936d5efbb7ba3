//! Lost commits the user chose to reprocess (`forgotten/{sequence}.json`):
//! the keys of their checkpoints no longer count as processed.
//!
//! Forgetting is a record beside the checkpoints, not a change to them: a
//! seal is written once and never altered. [`CheckpointStore::load`] leaves
//! the checkpoints of every forgotten commit out of the state it returns, so
//! no read skips their keys. Only checkpoints outside the compacted index can
//! be forgotten: the index's sorted runs no longer say which checkpoint a key
//! came from.

use super::layout::Layout;
use super::records::{self, ForgottenCommit, IndexGeneration, FORMAT_VERSION};
use super::{io, CheckpointStore};
use crate::error::{Error, ObjectKind, Result};

/// Attempts to publish the fencing index generation.
const FENCE_ATTEMPTS: u32 = 5;

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
        self.records_in(&self.layout().forgotten_dir(), |layout, sequence| {
            layout.forgotten(sequence)
        })
        .await
    }

    /// Every forgotten commit whose rows a later commit carried anew (its
    /// record moved from `forgotten/` to `reprocessed/` when compaction
    /// removed its checkpoints), in sequence order. Kept for good: should
    /// the table hold such a commit again, the later commit must not be
    /// reprocessed.
    pub async fn reprocessed_commits(&self) -> Result<Vec<ForgottenCommit>> {
        self.records_in(&self.layout().reprocessed_dir(), |layout, sequence| {
            layout.reprocessed(sequence)
        })
        .await
    }

    async fn records_in(
        &self,
        dir: &object_store::path::Path,
        path_of: impl Fn(&Layout, u64) -> object_store::path::Path,
    ) -> Result<Vec<ForgottenCommit>> {
        let store = self.object_store();
        let mut sequences: Vec<u64> = io::list(store, dir)
            .await?
            .iter()
            .filter_map(|meta| Layout::sequence_of(&meta.location))
            .collect();
        sequences.sort_unstable();
        let mut found = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            let path = path_of(self.layout(), sequence);
            // Deleted since the listing (compaction removed it): skipped.
            if let Some(bytes) = io::get_optional(store, &path).await? {
                found.push(records::decode(
                    ObjectKind::ForgottenCommit,
                    path.as_ref(),
                    &bytes,
                )?);
            }
        }
        Ok(found)
    }

    /// Publishes the next index generation as a copy of the current one (an
    /// empty first generation if there is none), and returns it. A
    /// compaction that planned from an older state then fails to publish
    /// (generations are written once), so none planned before a forgotten
    /// record existed can fold its checkpoints in. Concurrent publishers are
    /// retried a bounded number of times.
    pub async fn fence_compaction(&self) -> Result<Option<IndexGeneration>> {
        for _ in 0..FENCE_ATTEMPTS {
            let current = self.current_index().await?;
            let fenced = IndexGeneration {
                format_version: FORMAT_VERSION,
                generation: current.as_ref().map_or(1, |i| i.generation + 1),
                created_at: self.now(),
                checkpoints: current
                    .as_ref()
                    .map(|i| i.checkpoints.clone())
                    .unwrap_or_default(),
                // Staged objects of the checkpoints the current generation
                // folded in are deleted by the next compaction, as before.
                newly_compacted: current
                    .as_ref()
                    .map(|i| i.newly_compacted.clone())
                    .unwrap_or_default(),
                runs: current.as_ref().map(|i| i.runs.clone()).unwrap_or_default(),
                committed_rows: current.as_ref().map_or(0, |i| i.committed_rows),
                finished_units: current
                    .as_ref()
                    .map(|i| i.finished_units.clone())
                    .unwrap_or_default(),
            };
            let path = self.layout().index(fenced.generation);
            let encoded = records::encode(ObjectKind::Index, path.as_ref(), &fenced)?;
            if io::put_if_absent(self.object_store(), &path, encoded).await? {
                return Ok(Some(fenced));
            }
        }
        Err(Error::ConcurrentChange {
            operation: "fencing compaction (other compactions kept publishing)",
            attempts: FENCE_ATTEMPTS,
        })
    }

    /// Deletes what forgotten commits left once nothing can need it: a
    /// commit made after the forgetting is marked committed (so the table's
    /// marker moved past the record's), and `index` (just published) holds
    /// every checkpoint the record distrusts. The record is first copied to
    /// `reprocessed/` ([`Self::reprocessed_commits`]); then deleted are the
    /// checkpoints' staged objects, seals, commit markers and collection
    /// records, the commit's intent, and last the record itself, so that a
    /// crash part-way leaves the record and the checkpoints stay forgotten. A checkpoint
    /// with orphans that gc has not collected yet waits. Returns how many
    /// records it removed.
    pub(super) async fn remove_forgotten(&self, index: &IndexGeneration) -> Result<usize> {
        let records = self.forgotten_commits().await?;
        if records.is_empty() {
            return Ok(0);
        }
        let committed = self.committed_sequence().await?;
        let store = self.object_store();
        let layout = self.layout();
        let mut removed = 0;
        for record in records {
            let superseded = committed.is_some_and(|c| c > record.marker);
            let distrust_settled = record
                .distrusted
                .iter()
                .all(|id| index.checkpoints.contains(id));
            if !superseded || !distrust_settled {
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
            let settled = layout.reprocessed(record.sequence);
            let encoded = records::encode(ObjectKind::ForgottenCommit, settled.as_ref(), &record)?;
            io::put(store, &settled, encoded).await?;
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
