//! Orphans: data files that writers recorded as in flight but that no manifest
//! carries, so no commit will ever reference them.
//!
//! They come from writers that crashed or were fenced (their checkpoint was
//! sealed empty by the next lease holder), from retried shard attempts that
//! lost the race to seal, and from files a writer opened but never staged.
//! Only checkpoints that are sealed are looked at: the writer of an unsealed
//! checkpoint may still be running. Deleting is [`crate::gc`]'s job; this
//! module finds the candidates and records what was deleted.

use std::collections::BTreeSet;

use super::records::{self, CheckpointId, CollectedRecord, Manifest, FORMAT_VERSION};
use super::{io, CheckpointStore};
use crate::error::{ObjectKind, Result};

/// The orphan data files of one sealed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphans {
    /// The checkpoint whose writers recorded them.
    pub checkpoint: CheckpointId,
    /// Data files (full paths as the writer recorded them).
    pub files: Vec<String>,
    /// Directories (ending in `/`) under which nothing made it into the manifest.
    pub prefixes: Vec<String>,
}

impl Orphans {
    /// Whether there is nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.prefixes.is_empty()
    }

    /// Files and prefixes together.
    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.files.iter().chain(self.prefixes.iter())
    }
}

impl CheckpointStore {
    /// The orphans of every sealed checkpoint not yet compacted (forgotten
    /// ones included), leaving out
    /// what an earlier collection already deleted. Costs one LIST of the
    /// checkpoint's staging objects and one GET per in-flight record.
    pub async fn orphans(&self) -> Result<Vec<Orphans>> {
        let state = self.load().await?;
        let mut found = Vec::new();
        for summary in &state.checkpoints {
            let orphans = self.orphans_of(&summary.manifest).await?;
            if !orphans.is_empty() {
                found.push(orphans);
            }
        }
        for &id in &state.forgotten {
            let Some(manifest) = self.read_manifest(id).await? else {
                continue;
            };
            let orphans = self.orphans_of(&manifest).await?;
            if !orphans.is_empty() {
                found.push(orphans);
            }
        }
        Ok(found)
    }

    /// The orphans of one sealed checkpoint.
    pub async fn orphans_of(&self, manifest: &Manifest) -> Result<Orphans> {
        let id = manifest.checkpoint_id;
        let recorded = self.in_flight_records_of(id).await?;
        let collected = self.collected(id).await?;
        let kept: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        let mut files = BTreeSet::new();
        let mut prefixes = BTreeSet::new();
        let recorded_paths = recorded.iter().map(|r| (r.path.as_str(), r.prefix)).chain(
            manifest
                .abandoned_writes
                .iter()
                .map(|p| (p.as_str(), p.ends_with('/'))),
        );
        for (path, prefix) in recorded_paths {
            if collected.contains(path) {
                continue;
            }
            if prefix {
                if !kept.iter().any(|k| k.starts_with(path)) {
                    prefixes.insert(path.to_string());
                }
            } else if !kept.contains(path) {
                files.insert(path.to_string());
            }
        }
        Ok(Orphans {
            checkpoint: id,
            files: files.into_iter().collect(),
            prefixes: prefixes.into_iter().collect(),
        })
    }

    /// Records that `deleted` (files and prefixes of `checkpoint`) are gone.
    pub async fn record_collected(
        &self,
        checkpoint: CheckpointId,
        deleted: &[String],
    ) -> Result<()> {
        let mut all = self.collected(checkpoint).await?;
        all.extend(deleted.iter().cloned());
        let record = CollectedRecord {
            format_version: FORMAT_VERSION,
            checkpoint_id: checkpoint,
            deleted: all.into_iter().collect(),
            collected_at: self.now(),
        };
        let path = self.layout().collected(checkpoint);
        let encoded = records::encode(ObjectKind::Collected, path.as_ref(), &record)?;
        io::put(self.object_store(), &path, encoded).await
    }

    async fn collected(&self, checkpoint: CheckpointId) -> Result<BTreeSet<String>> {
        let path = self.layout().collected(checkpoint);
        match io::get_optional(self.object_store(), &path).await? {
            Some(bytes) => {
                let record: CollectedRecord =
                    records::decode(ObjectKind::Collected, path.as_ref(), &bytes)?;
                Ok(record.deleted.into_iter().collect())
            }
            None => Ok(BTreeSet::new()),
        }
    }
}
