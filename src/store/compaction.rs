//! Compaction: folds the keys of committed checkpoints into sorted runs of the
//! index, so that loading the store costs a bounded number of requests however
//! many runs came before.

use std::collections::BTreeSet;

use arrow_array::RecordBatch;
use arrow_ord::sort::{lexsort_to_indices, SortColumn};
use arrow_select::concat::concat_batches;
use arrow_select::take::take_record_batch;
use futures::{StreamExt, TryStreamExt};

use super::layout::Layout;
use super::records::{self, CheckpointId, IndexGeneration, KeyFileRef, KeyRun, FORMAT_VERSION};
use super::{io, CheckpointStore};
use crate::error::{BoxError, Error, ObjectKind, Result};

/// Parallel key file reads during compaction.
const READ_CONCURRENCY: usize = 8;

/// How compaction shapes the index.
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    /// Keys per index file (the last file of a run holds the rest).
    pub max_keys_per_file: usize,
    /// The most runs the index keeps. A compaction merges the newest runs
    /// with the new keys while each is at most twice the keys being merged
    /// (size-tiered, as an LSM tree merges: a key is rewritten about log2 of
    /// the history's size times), and always until at most this many remain.
    /// A merge holds the keys it merges in memory once.
    pub max_runs: usize,
    /// Committed checkpoints that must be waiting before a compaction does
    /// anything (1: any). A run compacts by itself once
    /// [`AUTO_COMPACTION_CHECKPOINTS`] wait, so that loading the store reads
    /// at most that many checkpoints' key files beside the index's runs.
    pub min_checkpoints: usize,
    /// The checkpoints of this many latest table commits stay out of the
    /// index, so that those commits can still be reprocessed
    /// ([`crate::commit::LostCommitsPolicy::Reprocess`]) if the table loses
    /// them: the index does not say which commit a key came from.
    pub keep_latest_commits: u64,
}

/// The latest table commits a pipeline run keeps out of the index
/// ([`CompactionOptions::automatic`]).
pub const AUTO_COMPACTION_KEPT_COMMITS: u64 = 3;

/// The checkpoints a pipeline run lets wait before it compacts them at its
/// end ([`CompactionOptions::automatic`]).
pub const AUTO_COMPACTION_CHECKPOINTS: usize = 8;

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            max_keys_per_file: 1_000_000,
            max_runs: 8,
            min_checkpoints: 1,
            keep_latest_commits: 0,
        }
    }
}

impl CompactionOptions {
    /// The compaction a pipeline run makes at its end: once
    /// [`AUTO_COMPACTION_CHECKPOINTS`] committed checkpoints wait, beside
    /// those of the [`AUTO_COMPACTION_KEPT_COMMITS`] latest commits.
    pub fn automatic() -> Self {
        CompactionOptions {
            min_checkpoints: AUTO_COMPACTION_CHECKPOINTS,
            keep_latest_commits: AUTO_COMPACTION_KEPT_COMMITS,
            ..Default::default()
        }
    }
}

/// How many of the oldest runs of `previous` a compaction keeps as they are;
/// it merges the others (the newest) with `new_keys` keys into one run. See
/// [`CompactionOptions::max_runs`].
fn runs_kept(previous: &[KeyRun], new_keys: u64, max_runs: usize) -> usize {
    let mut keep = previous.len();
    let mut merging = new_keys;
    while let Some(newest) = keep.checked_sub(1).and_then(|i| previous.get(i)) {
        let size = newest.key_count();
        let too_many = keep + 1 > max_runs.max(1);
        if !too_many && size > merging.saturating_mul(2) {
            break;
        }
        merging = merging.saturating_add(size);
        keep -= 1;
    }
    keep
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// The index generation written, or `None` if there was nothing to do.
    pub generation: Option<u64>,
    /// Committed checkpoints folded in.
    pub checkpoints_compacted: usize,
    /// Keys those checkpoints held.
    pub keys_compacted: u64,
    /// Runs in the index afterwards.
    pub runs: usize,
    /// Index key files written.
    pub key_files_written: usize,
    /// Objects deleted: markers of the compacted checkpoints, staged objects of
    /// those compacted by the previous generation, and superseded index files.
    pub objects_deleted: usize,
    /// Acceptances deleted ([`crate::store::AcceptanceRecord`]): those of
    /// table states that a compacted commit moved the marker past.
    pub acceptances_pruned: usize,
    /// Commit intents deleted: all but the latest, once every checkpoint they
    /// carry is compacted.
    pub intents_pruned: usize,
    /// Forgotten commits ([`super::ForgottenCommit`]) whose records were
    /// deleted with their checkpoints' once a later commit was marked.
    pub forgotten_removed: usize,
    /// Committed checkpoints left out because their orphan data files wait
    /// for garbage collection ([`crate::gc::collect_garbage`]).
    pub waiting_for_gc: usize,
}

impl CheckpointStore {
    /// Folds every committed checkpoint into the index, once at least
    /// [`CompactionOptions::min_checkpoints`] of them wait (or the index holds
    /// more runs than allowed). Checkpoints that are only
    /// sealed stay as they are: their files still wait for a commit. Never loses a
    /// key: the new index is published (put-if-not-exists) before anything is
    /// deleted, and a concurrent compaction that publishes first makes this one
    /// fail with [`Error::ConcurrentChange`] after removing its own files.
    pub async fn compact(&self, options: &CompactionOptions) -> Result<CompactionReport> {
        let state = self.load().await?;
        // A checkpoint with orphans waits for garbage collection: its in-flight
        // records are the only trace of those files, and they go with it.
        let mut targets = Vec::new();
        let mut waiting_for_gc = 0;
        for summary in state.checkpoints.iter().filter(|c| c.committed) {
            if self.orphans_of(&summary.manifest).await?.is_empty() {
                targets.push(&summary.manifest);
            } else {
                waiting_for_gc += 1;
            }
        }
        if options.keep_latest_commits > 0 && targets.len() >= options.min_checkpoints.max(1) {
            let kept = self
                .checkpoints_of_latest_commits(options.keep_latest_commits)
                .await?;
            targets.retain(|m| !kept.contains(&m.checkpoint_id));
        }
        let previous_runs: &[KeyRun] = state.index.as_ref().map_or(&[], |i| &i.runs);
        let too_few = targets.len() < options.min_checkpoints.max(1);
        if too_few && previous_runs.len() <= options.max_runs {
            return Ok(CompactionReport {
                runs: previous_runs.len(),
                waiting_for_gc,
                ..Default::default()
            });
        }
        let generation = state.index.as_ref().map_or(1, |i| i.generation + 1);
        let keys_compacted = targets.iter().map(|m| m.key_count()).sum();
        let kept = runs_kept(previous_runs, keys_compacted, options.max_runs);

        let mut sources: Vec<KeyFileRef> = targets
            .iter()
            .flat_map(|m| m.key_files.iter().cloned())
            .collect();
        sources.extend(
            previous_runs[kept..]
                .iter()
                .flat_map(|run| run.key_files.iter().cloned()),
        );
        let mut runs: Vec<KeyRun> = previous_runs[..kept].to_vec();
        let new_run = self
            .write_sorted_run(generation, &sources, options.max_keys_per_file)
            .await?;
        let key_files_written = new_run.key_files.len();
        if !new_run.key_files.is_empty() {
            runs.push(new_run.clone());
        }

        let newly_compacted: Vec<CheckpointId> = targets.iter().map(|m| m.checkpoint_id).collect();
        let mut checkpoints: Vec<CheckpointId> = state
            .index
            .as_ref()
            .map(|i| i.checkpoints.clone())
            .unwrap_or_default();
        checkpoints.extend(newly_compacted.iter().copied());
        let committed_rows = state.index.as_ref().map_or(0, |i| i.committed_rows)
            + targets.iter().map(|m| m.row_count()).sum::<u64>();
        let mut finished_units: BTreeSet<String> = state
            .index
            .iter()
            .flat_map(|i| i.finished_units.iter().cloned())
            .collect();
        finished_units.extend(
            targets
                .iter()
                .filter(|m| !state.distrusted.contains(&m.checkpoint_id))
                .flat_map(|m| m.finished_units.iter().cloned()),
        );
        let index = IndexGeneration {
            format_version: FORMAT_VERSION,
            generation,
            created_at: self.now(),
            checkpoints,
            newly_compacted: newly_compacted.clone(),
            runs,
            committed_rows,
            finished_units: finished_units.into_iter().collect(),
        };
        let store = self.object_store();
        let layout = self.layout();
        let index_path = layout.index(generation);
        let encoded = records::encode(ObjectKind::Index, index_path.as_ref(), &index)?;
        if !io::put_if_absent(store, &index_path, encoded).await? {
            for file in &new_run.key_files {
                io::delete(store, &layout.absolute(&file.path)).await?;
            }
            return Err(Error::ConcurrentChange {
                operation: "compaction (another compaction published this generation first)",
                attempts: 1,
            });
        }

        let objects_deleted = self
            .delete_superseded(&index, state.index.as_deref())
            .await?;
        let (intents_pruned, compacted_sequence) = self.prune_commit_intents(&index).await?;
        let acceptances_pruned = match compacted_sequence {
            Some(sequence) => self.prune_acceptances_below(sequence).await?,
            None => 0,
        };
        let forgotten_removed = self.remove_forgotten(&index).await?;
        Ok(CompactionReport {
            generation: Some(generation),
            checkpoints_compacted: newly_compacted.len(),
            keys_compacted,
            runs: index.runs.len(),
            key_files_written,
            objects_deleted,
            acceptances_pruned,
            intents_pruned,
            forgotten_removed,
            waiting_for_gc,
        })
    }

    /// Deletes the commit intents below the latest whose checkpoints are all in
    /// `index`. The latest stays: the committer numbers the next commit from
    /// it, and resumes it if it is unfinished. Returns how many it deleted,
    /// and the highest sequence whose checkpoints are all in `index` (so
    /// committed), if any.
    async fn prune_commit_intents(&self, index: &IndexGeneration) -> Result<(usize, Option<u64>)> {
        let store = self.object_store();
        let mut sequences: Vec<u64> = io::list(store, &self.layout().commit_intents_dir())
            .await?
            .iter()
            .filter_map(|m| Layout::sequence_of(&m.location))
            .collect();
        sequences.sort_unstable();
        let latest = sequences.last().copied();
        let compacted: BTreeSet<CheckpointId> = index.checkpoints.iter().copied().collect();
        let mut pruned = 0;
        let mut highest_compacted = None;
        for sequence in sequences {
            let Some(intent) = self.commit_intent(sequence).await? else {
                continue;
            };
            if intent.checkpoints.iter().all(|id| compacted.contains(id)) {
                highest_compacted = Some(sequence);
                if Some(sequence) != latest {
                    io::delete(store, &self.layout().commit_intent(sequence)).await?;
                    pruned += 1;
                }
            }
        }
        Ok((pruned, highest_compacted))
    }

    /// Reads `sources`, sorts all their keys and writes them as one run.
    async fn write_sorted_run(
        &self,
        generation: u64,
        sources: &[KeyFileRef],
        max_keys_per_file: usize,
    ) -> Result<KeyRun> {
        // Owned refs: a closure over borrowed ones would make this future
        // unusable in `tokio::spawn` (not `Send` for every lifetime).
        let batches: Vec<Vec<RecordBatch>> = futures::stream::iter(sources.to_vec())
            .map(|file| async move { self.read_keys(&file).await })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let schema = self.key_schema().arrow_schema().clone();
        let batches: Vec<RecordBatch> = batches.into_iter().flatten().collect();
        let sort_error = |e: arrow_schema::ArrowError| Error::EncodeKeys {
            path: format!("index generation {generation}"),
            source: BoxError::from(e),
        };
        let all = concat_batches(&schema, &batches).map_err(sort_error)?;
        let sort_columns: Vec<SortColumn> = all
            .columns()
            .iter()
            .map(|values| SortColumn {
                values: values.clone(),
                options: None,
            })
            .collect();
        let order = lexsort_to_indices(&sort_columns, None).map_err(sort_error)?;
        let sorted = take_record_batch(&all, &order).map_err(sort_error)?;

        let run_id = self.new_id();
        let layout = self.layout();
        let mut key_files = Vec::new();
        let step = max_keys_per_file.max(1);
        let mut offset = 0;
        while offset < sorted.num_rows() {
            let slice = sorted.slice(offset, step.min(sorted.num_rows() - offset));
            let path = layout.index_key_file(generation, run_id, key_files.len());
            key_files.push(self.put_key_file(&path, &slice).await?);
            offset += slice.num_rows();
        }
        Ok(KeyRun { key_files })
    }

    /// After `current` is published: deletes the markers of the checkpoints it
    /// newly folded in, the staged objects of those `previous` folded in, and index
    /// files that neither generation refers to. Objects `previous` still needs
    /// stay for one more compaction, so readers that loaded it can finish.
    async fn delete_superseded(
        &self,
        current: &IndexGeneration,
        previous: Option<&IndexGeneration>,
    ) -> Result<usize> {
        let store = self.object_store();
        let layout = self.layout();
        let mut doomed = Vec::new();
        for &id in &current.newly_compacted {
            doomed.push(layout.sealed(id));
            doomed.push(layout.committed(id));
            doomed.push(layout.collected(id));
        }
        if let Some(previous) = previous {
            for &id in &previous.newly_compacted {
                doomed.extend(
                    io::list(store, &layout.staging_of(id))
                        .await?
                        .into_iter()
                        .map(|m| m.location),
                );
            }
        }
        let keep_from = previous.map_or(current.generation, |p| p.generation);
        for meta in io::list(store, &layout.index_dir()).await? {
            if Layout::generation_of(&meta.location).is_some_and(|g| g < keep_from) {
                doomed.push(meta.location);
            }
        }
        let referenced: BTreeSet<String> = current
            .key_files()
            .chain(previous.into_iter().flat_map(|p| p.key_files()))
            .map(|f| f.path.clone())
            .collect();
        for meta in io::list(store, &layout.index_keys_dir()).await? {
            let relative = layout.relative(&meta.location);
            let written_by_older = Layout::generation_of_index_key_file(&meta.location)
                .is_some_and(|g| g < current.generation);
            if written_by_older && !referenced.contains(&relative) {
                doomed.push(meta.location);
            }
        }
        for path in &doomed {
            io::delete(store, path).await?;
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of the given key counts, oldest first, one key file each.
    fn runs(sizes: &[u64]) -> Vec<KeyRun> {
        sizes
            .iter()
            .map(|&row_count| KeyRun {
                key_files: vec![KeyFileRef {
                    path: format!("index/keys/{row_count}.parquet"),
                    row_count,
                    size_bytes: row_count.saturating_mul(8),
                    crc32: None,
                    key_range: None,
                    fingerprints: None,
                }],
            })
            .collect()
    }

    #[test]
    fn a_run_larger_than_twice_the_merge_is_kept() {
        assert_eq!(runs_kept(&[], 10, 8), 0, "no runs");
        assert_eq!(runs_kept(&runs(&[100]), 10, 8), 1);
        assert_eq!(runs_kept(&runs(&[101]), 50, 8), 1, "just over twice");
        assert_eq!(runs_kept(&runs(&[100]), 50, 8), 0, "exactly twice merges");
        assert_eq!(runs_kept(&runs(&[100]), 0, 8), 1, "nothing new to merge");
    }

    #[test]
    fn merging_cascades_while_each_newer_run_is_at_most_twice_the_merge() {
        // 30 ≤ 2·20 merges (50); 100 ≤ 2·50 merges (150); 1000 > 300 stays.
        assert_eq!(runs_kept(&runs(&[1000, 100, 30]), 20, 8), 1);
        // 30 ≤ 2·15 merges (45); 100 > 90 stays, and so does the oldest.
        assert_eq!(runs_kept(&runs(&[1000, 100, 30]), 15, 8), 2);
        // Every run merged.
        assert_eq!(runs_kept(&runs(&[100, 40, 20]), 10, 8), 0);
    }

    #[test]
    fn runs_merge_until_at_most_the_maximum_remain() {
        // Three runs and the new one make four: the newest merges even though
        // it is far larger than the new keys; then three remain.
        assert_eq!(runs_kept(&runs(&[10_000, 1_000, 100]), 1, 3), 2);
        assert_eq!(runs_kept(&runs(&[10_000, 1_000, 100]), 1, 4), 3);
        // A maximum of 0 counts as 1: everything merges into one run.
        assert_eq!(runs_kept(&runs(&[100, 10]), 1, 0), 0);
        assert_eq!(runs_kept(&runs(&[100, 10]), 1, 1), 0);
        // Sizes near the top of u64 saturate instead of overflowing.
        assert_eq!(runs_kept(&runs(&[u64::MAX]), u64::MAX, 8), 0);
    }
}
