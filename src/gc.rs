//! Garbage collection: deletes the orphan data files of sealed checkpoints
//! (see [`CheckpointStore::orphans`]) from the table's storage.
//!
//! Safe to run at any time and more than once: it only touches paths that a
//! writer recorded as in flight and that no manifest carries, so no commit,
//! past or future, refers to them. Files a table already references are never
//! in that set, because every file a commit appends comes from a manifest.

use futures::future::BoxFuture;

use crate::error::Result;
use crate::store::CheckpointStore;

/// Deletes data files in a table's storage. The Iceberg and Delta sinks
/// implement it over their own file I/O.
pub trait TableFiles: Send + Sync {
    /// Deletes the file at `path` (as the writer recorded it). A missing file
    /// is not an error.
    fn delete_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Deletes every file below the directory `prefix` (ending in `/`).
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// What a collection deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Checkpoints that had orphans.
    pub checkpoints: usize,
    /// Orphan data files deleted.
    pub files_deleted: usize,
    /// Orphan directories deleted.
    pub prefixes_deleted: usize,
}

/// Deletes every orphan of `store` from `files` and records it as collected.
pub async fn collect_garbage(store: &CheckpointStore, files: &dyn TableFiles) -> Result<GcReport> {
    let mut report = GcReport::default();
    for orphans in store.orphans().await? {
        for path in &orphans.files {
            files.delete_file(path).await?;
        }
        for prefix in &orphans.prefixes {
            files.delete_prefix(prefix).await?;
        }
        let deleted: Vec<String> = orphans.paths().cloned().collect();
        store.record_collected(orphans.checkpoint, &deleted).await?;
        tracing::info!(
            checkpoint = %orphans.checkpoint,
            files = orphans.files.len(),
            prefixes = orphans.prefixes.len(),
            "deleted orphan data files"
        );
        report.checkpoints += 1;
        report.files_deleted += orphans.files.len();
        report.prefixes_deleted += orphans.prefixes.len();
    }
    Ok(report)
}
