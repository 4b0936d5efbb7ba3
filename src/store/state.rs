//! Loading what the store holds: the compacted index plus the sealed checkpoints
//! not yet folded into it.
//!
//! Cost of a load: four LISTs (`forgotten/`, `sealed/`, `committed/`,
//! `index/`), one GET of the current index, and one GET per sealed checkpoint
//! that is not compacted yet (and per forgotten commit, when there are any).
//! The index document lists every compacted checkpoint, so it grows with
//! history; a store handle decodes each generation once and serves later
//! loads from memory.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use object_store::ObjectMeta;

use super::layout::Layout;
use super::records::{self, CheckpointId, IndexGeneration, KeyFileRef, Manifest};
use super::{io, CheckpointStore};
use crate::error::{Error, ObjectKind, Result};

/// How many times a load starts over when a compaction removes what it listed.
const LOAD_ATTEMPTS: u32 = 5;

/// Where a checkpoint is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointState {
    /// Keys or in-flight files were staged; invisible to readers.
    Staged,
    /// Sealed: keys are skipped; files wait for a commit.
    Checkpointed,
    /// Files are in the table.
    Committed,
}

/// A sealed checkpoint that is not yet in the compacted index.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSummary {
    /// Its manifest.
    pub manifest: Manifest,
    /// Whether its files are marked committed.
    pub committed: bool,
}

/// Everything sealed in the store at the moment of a load.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreState {
    /// The current compacted index, if the store was ever compacted.
    pub index: Option<Arc<IndexGeneration>>,
    /// Sealed checkpoints outside the index, in id order, but for those
    /// of forgotten commits.
    pub checkpoints: Vec<CheckpointSummary>,
    /// Sealed checkpoints of commits the user chose to reprocess
    /// ([`super::ForgottenCommit`]): their keys do not count as processed,
    /// and their files are not committed again.
    pub forgotten: Vec<CheckpointId>,
    /// Checkpoints whose finished source units are not trusted while commits
    /// are forgotten ([`super::ForgottenCommit::distrusted`]).
    pub distrusted: BTreeSet<CheckpointId>,
}

impl StoreState {
    /// Every key file whose keys are checkpointed: the index runs, then the key
    /// files of sealed checkpoints outside the index. Staged keys are not included.
    pub fn key_files(&self) -> Vec<KeyFileRef> {
        let indexed = self.index.iter().flat_map(|i| i.key_files()).cloned();
        let sealed = self
            .checkpoints
            .iter()
            .flat_map(|c| c.manifest.key_files.iter().cloned());
        indexed.chain(sealed).collect()
    }

    /// Digests of the source units read to their end by sealed checkpoints
    /// ([`Manifest::finished_units`]): every row they hold is checkpointed.
    /// Not those of [distrusted](Self::distrusted) checkpoints: such a unit's
    /// earlier rows may be in a forgotten checkpoint, and must be read again.
    pub fn finished_units(&self) -> BTreeSet<&str> {
        let indexed = self
            .index
            .iter()
            .flat_map(|i| i.finished_units.iter().map(String::as_str));
        let sealed = self
            .checkpoints
            .iter()
            .filter(|c| !self.distrusted.contains(&c.manifest.checkpoint_id))
            .flat_map(|c| c.manifest.finished_units.iter().map(String::as_str));
        indexed.chain(sealed).collect()
    }

    /// Number of checkpointed keys.
    pub fn key_count(&self) -> u64 {
        self.key_files().iter().map(|k| k.row_count).sum()
    }

    /// Sealed checkpoints whose files are not committed yet, in id order.
    pub fn pending_commit(&self) -> Vec<&Manifest> {
        self.checkpoints
            .iter()
            .filter(|c| !c.committed)
            .map(|c| &c.manifest)
            .collect()
    }

    /// Number of checkpoints folded into the compacted index.
    pub fn compacted_count(&self) -> usize {
        self.index.as_ref().map_or(0, |i| i.checkpoints.len())
    }
}

impl CheckpointStore {
    /// Loads the sealed state of the store. Starts over (a bounded number of times)
    /// if a concurrent compaction removes a manifest between listing and reading.
    pub async fn load(&self) -> Result<StoreState> {
        for _ in 0..LOAD_ATTEMPTS {
            if let Some(state) = self.try_load().await? {
                return Ok(state);
            }
        }
        Err(Error::ConcurrentChange {
            operation: "loading the store state",
            attempts: LOAD_ATTEMPTS,
        })
    }

    /// One attempt; `None` if a listed manifest vanished. The order matters: the
    /// index is read after the listings, and a compaction publishes its index
    /// before deleting markers, so every listed id that vanished is in the index.
    async fn try_load(&self) -> Result<Option<StoreState>> {
        let store = self.object_store();
        let layout = self.layout();
        let sealed = marker_ids(io::list(store, &layout.sealed_dir()).await?);
        let committed = marker_ids(io::list(store, &layout.committed_dir()).await?);
        let index = self.current_index().await?;
        // Forgotten records after the index: a forgetting writes its records
        // before it publishes an index generation of its own, so a load that
        // read that generation (or a later one) sees the records, and a
        // compaction planned from an earlier one fails to publish. A record
        // this listing misses because compaction deleted it had its seal
        // deleted first: its manifest is not found below, and the load starts
        // over.
        let forgotten_commits = self.forgotten_commits().await?;
        let forgotten: BTreeSet<CheckpointId> = forgotten_commits
            .iter()
            .flat_map(|record| record.checkpoints.iter().copied())
            .collect();
        let distrusted: BTreeSet<CheckpointId> = forgotten_commits
            .iter()
            .flat_map(|record| record.distrusted.iter().copied())
            .collect();
        let compacted: BTreeSet<CheckpointId> = index
            .iter()
            .flat_map(|i| i.checkpoints.iter().copied())
            .collect();
        let mut checkpoints = Vec::new();
        let mut forgotten_sealed = Vec::new();
        for id in sealed.into_iter().filter(|id| !compacted.contains(id)) {
            if forgotten.contains(&id) {
                forgotten_sealed.push(id);
                continue;
            }
            let Some(manifest) = self.read_manifest(id).await? else {
                return Ok(None);
            };
            checkpoints.push(CheckpointSummary {
                committed: committed.contains(&id),
                manifest,
            });
        }
        Ok(Some(StoreState {
            index,
            checkpoints,
            forgotten: forgotten_sealed,
            distrusted,
        }))
    }

    /// The highest index generation, if any. Decoded once per handle and
    /// generation: a run loads the state several times, and the index grows
    /// with history.
    pub(super) async fn current_index(&self) -> Result<Option<Arc<IndexGeneration>>> {
        let store = self.object_store();
        let listed = io::list(store, &self.layout().index_dir()).await?;
        let Some((generation, meta)) = listed
            .into_iter()
            .filter_map(|m| Layout::generation_of(&m.location).map(|g| (g, m)))
            .max_by_key(|(generation, _)| *generation)
        else {
            return Ok(None);
        };
        let cache = &self.inner.index_cache;
        if let Some(index) = cache.get(&meta) {
            return Ok(Some(index));
        }
        let path = self.layout().index(generation);
        let bytes = io::get(store, &path).await?;
        let index: IndexGeneration = records::decode(ObjectKind::Index, path.as_ref(), &bytes)?;
        let index = Arc::new(index);
        cache.put(&meta, Arc::clone(&index));
        Ok(Some(index))
    }
}

/// The last index generation a store handle decoded, with the identity of
/// the object it came from. Generations are written once (put-if-absent), so
/// an object listed again with the same location, size and ETag holds the
/// same generation; a store wiped and made again gives new ETags. Objects
/// listed without an ETag are never served from the cache.
#[derive(Debug, Default)]
pub(super) struct IndexCache {
    last: Mutex<Option<CachedIndex>>,
}

#[derive(Debug)]
struct CachedIndex {
    location: object_store::path::Path,
    size: u64,
    e_tag: String,
    index: Arc<IndexGeneration>,
}

impl IndexCache {
    fn get(&self, meta: &ObjectMeta) -> Option<Arc<IndexGeneration>> {
        let e_tag = meta.e_tag.as_deref()?;
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|c| c.location == meta.location && c.size == meta.size && c.e_tag == e_tag)
            .map(|c| Arc::clone(&c.index))
    }

    fn put(&self, meta: &ObjectMeta, index: Arc<IndexGeneration>) {
        let Some(e_tag) = meta.e_tag.clone() else {
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        *last = Some(CachedIndex {
            location: meta.location.clone(),
            size: meta.size,
            e_tag,
            index,
        });
    }
}

fn marker_ids(listed: Vec<ObjectMeta>) -> BTreeSet<CheckpointId> {
    listed
        .iter()
        .filter_map(|m| Layout::id_of_marker(&m.location))
        .collect()
}
