//! The Iceberg table as a [`CommitSink`]: one snapshot per commit, appending
//! the checkpointed data files, with the pipeline's marker kept where snapshot
//! expiry cannot remove it.
//!
//! The marker is the table property `tidemark.pipeline.{id}.commit-sequence`,
//! set in the same transaction as the append (an Iceberg commit applies all of
//! its updates or none). The snapshot summary also names the pipeline, the
//! sequence and the checkpoints, for people reading the history; recovery
//! never walks that history.
//!
//! iceberg's `Transaction::commit` retries a conflict by re-applying the
//! append to the refreshed table without knowing about the marker, so a commit
//! whose response was lost could land twice. This sink commits with those
//! retries off (on an in-memory copy of the table's metadata; the table's own
//! properties are not changed) and runs its own loop, which reloads the table
//! and reads the marker before every attempt.
//!
//! Even a single attempt loads the table again when it commits and builds the
//! append on what it finds. The sink hands the transaction a catalog that
//! answers that load with the table whose marker it just read
//! (`PinnedCatalog`), so the append requires, at the catalog, that the main
//! branch still points at the snapshot the marker was read from. Another
//! committer of the same pipeline landing the same files in between (or any
//! other commit) makes the catalog refuse the attempt as a conflict, and the
//! loop reads the marker again. That requirement is what keeps files from
//! landing twice, so iceberg's duplicate-file check, which reads every
//! manifest of the current snapshot (a cost that grows with every commit), is
//! off. The same base carries the merge of the table's manifests once there
//! are many (see `merge`), so that the manifest list each commit writes stays
//! short.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use iceberg::spec::{TableMetadata, TableProperties};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, ErrorKind, Runtime, TableIdent};
use serde_json::json;
use tidemark::commit::{
    retry_backoff, CommitOutcome, CommitRequest, CommitSink, Lineage, SINK_COMMIT_ATTEMPTS,
};
use tidemark::error::BoxError;
use tidemark::gc::TableFiles;
use tidemark::store::FileRecord;

use crate::merge::with_merged_manifests;
use crate::pinned::PinnedCatalog;

use crate::writer::{IcebergWriter, IcebergWriterOptions};
use crate::{record_to_data_file, recorded_spec_id, Error, Result};

/// The table property holding a pipeline's last committed sequence.
pub fn marker_property(pipeline_id: &str) -> String {
    format!("tidemark.pipeline.{pipeline_id}.commit-sequence")
}

/// Which snapshots [`IcebergSink::expire_snapshots`] expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotExpiry {
    /// Snapshots older than this expire...
    pub older_than: std::time::Duration,
    /// ...except the latest this many of each branch (at least 1).
    pub retain_last: usize,
}

/// An Iceberg table, through its catalog, that pipelines append to idempotently.
pub struct IcebergSink {
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
}

impl std::fmt::Debug for IcebergSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergSink")
            .field("table", &self.ident.to_string())
            .finish()
    }
}

impl IcebergSink {
    /// The table `ident` of `catalog`. Fails with [`Error::TableNotFound`] if
    /// the catalog has no such table, or with the catalog's error if it cannot
    /// be reached.
    pub async fn open(catalog: Arc<dyn Catalog>, ident: TableIdent) -> Result<Self> {
        let sink = IcebergSink { catalog, ident };
        sink.load().await?;
        Ok(sink)
    }

    /// The table's current state, loaded from the catalog.
    pub async fn load(&self) -> Result<Table> {
        match self.catalog.load_table(&self.ident).await {
            Ok(table) => Ok(table),
            Err(e) if e.kind() == ErrorKind::TableNotFound => Err(Error::TableNotFound {
                table: self.ident.to_string(),
            }),
            Err(e) => Err(Error::iceberg(
                format!("loading table `{}` from the catalog", self.ident),
                e,
            )),
        }
    }

    /// A writer of data files for the table's current schema and spec.
    pub async fn writer(&self, options: IcebergWriterOptions) -> Result<IcebergWriter> {
        IcebergWriter::new(&self.load().await?, options)
    }

    /// Fails with [`Error::InvalidTable`] if the table forbids expiring its
    /// snapshots (`gc.enabled=false`), so that a caller can refuse before
    /// any other work.
    pub async fn ensure_snapshots_can_expire(&self) -> Result<()> {
        let table = self.load().await?;
        let gc = table.metadata().properties().get("gc.enabled");
        if gc.is_some_and(|v| v.eq_ignore_ascii_case("false")) {
            return Err(Error::InvalidTable {
                table: self.ident.to_string(),
                reason: "its property gc.enabled is false, which forbids expiring snapshots: \
                         set it to true, or leave snapshot expiry out"
                    .to_string(),
            });
        }
        Ok(())
    }

    /// Expires the table's snapshots older than `expiry.older_than`, keeping
    /// the latest `expiry.retain_last` (at least 1), so that the table's
    /// metadata stops growing by one snapshot per commit. Only metadata
    /// changes: files that only expired snapshots referenced (their manifest
    /// lists, and data files other writers replaced) stay in storage until an
    /// orphan-file cleanup of another engine deletes them. The pipeline's
    /// marker is a table property and stays; the history that
    /// [`CommitSink::lineage`] walks then ends at the oldest kept snapshot,
    /// which it reads as out of reach, not as a rollback. Returns how many
    /// snapshots expired.
    pub async fn expire_snapshots(&self, expiry: SnapshotExpiry) -> Result<usize> {
        let table = self.load().await?;
        let before = table.metadata().snapshots().count();
        let cutoff = std::time::SystemTime::now()
            .checked_sub(expiry.older_than)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |since| {
                i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
            });
        let tx = Transaction::new(&table);
        let tx = tx
            .expire_snapshots()
            .expire_older_than_ms(cutoff)
            .retain_last(expiry.retain_last.max(1))
            .apply(tx)
            .map_err(|e| self.error("preparing the snapshot expiry", e))?;
        let table = tx
            .commit(self.catalog.as_ref())
            .await
            .map_err(|e| self.error("expiring snapshots", e))?;
        Ok(before.saturating_sub(table.metadata().snapshots().count()))
    }

    /// The pipeline's last committed sequence, from the table's properties.
    pub async fn committed(&self, pipeline_id: &str) -> Result<Option<u64>> {
        marker(&self.load().await?, pipeline_id)
    }

    async fn commit_request(&self, request: &CommitRequest) -> Result<CommitOutcome> {
        let key = marker_property(&request.pipeline_id);
        let summary = HashMap::from([
            ("tidemark.pipeline".to_string(), request.pipeline_id.clone()),
            (
                "tidemark.commit-sequence".to_string(),
                request.sequence.to_string(),
            ),
            (
                "tidemark.checkpoints".to_string(),
                request
                    .checkpoints
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
        let mut last_error = String::new();
        for attempt in 0..SINK_COMMIT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(retry_backoff(attempt)).await;
            }
            // The marker is read again before every attempt: an earlier attempt
            // may have landed although its response was lost.
            let table = self.load().await?;
            if marker(&table, &request.pipeline_id)?.is_some_and(|m| m >= request.sequence) {
                return Ok(CommitOutcome {
                    applied: false,
                    table_version: snapshot_of(&table),
                });
            }
            let metadata = table.metadata();
            self.ensure_default_spec(metadata, &request.files)?;
            let schema = metadata.current_schema();
            let files = request
                .files
                .iter()
                .map(|f| record_to_data_file(f, metadata.default_partition_type(), schema))
                .collect::<Result<Vec<_>>>()?;
            // The append's base: the table as read, with its manifests merged
            // when there are many (in memory; see `merge`).
            let base = with_merged_manifests(&table)
                .await
                .map_err(|e| self.error("merging manifests", e))?
                .unwrap_or(table);
            let tx_base = without_commit_retries(&base)?;
            let tx = Transaction::new(&tx_base);
            let tx = tx
                .fast_append()
                // The pinned base below guards against files landing twice.
                .with_check_duplicate(false)
                .add_data_files(files)
                .set_snapshot_properties(summary.clone())
                .apply(tx)
                .map_err(|e| self.error("preparing the append", e))?;
            let tx = tx
                .update_table_properties()
                .set(key.clone(), request.sequence.to_string())
                .apply(tx)
                .map_err(|e| self.error("preparing the marker", e))?;
            let pinned = PinnedCatalog::new(self.catalog.as_ref(), base);
            match tx.commit(&pinned).await {
                Ok(table) => {
                    return Ok(CommitOutcome {
                        applied: true,
                        table_version: snapshot_of(&table),
                    })
                }
                Err(e) if retryable(&e) => {
                    tracing::warn!(table = %self.ident, attempt, error = %e, "iceberg commit attempt failed; re-checking the marker");
                    last_error = e.to_string();
                }
                Err(e) => {
                    // Whatever the error, the commit may have landed before
                    // it (a catalog that applied it and then failed): tell
                    // that apart from a real error by the marker.
                    let table = self.load().await?;
                    if marker(&table, &request.pipeline_id)?.is_some_and(|m| m >= request.sequence)
                    {
                        return Ok(CommitOutcome {
                            applied: false,
                            table_version: snapshot_of(&table),
                        });
                    }
                    return Err(self.error("committing", e));
                }
            }
        }
        Err(Error::CommitGaveUp {
            table: self.ident.to_string(),
            attempts: SINK_COMMIT_ATTEMPTS,
            last: last_error,
        })
    }

    /// Fails with [`Error::PartitionSpecChanged`] if a file was written
    /// under a spec that is not the table's default (before any attempt:
    /// Iceberg would refuse it on every one).
    fn ensure_default_spec(&self, metadata: &TableMetadata, files: &[FileRecord]) -> Result<()> {
        let current = metadata.default_partition_spec_id();
        for file in files {
            let written = recorded_spec_id(file)?;
            if written != current {
                let fields = |id: i32| match metadata.partition_spec_by_id(id) {
                    Some(spec) if spec.fields().is_empty() => "unpartitioned".to_string(),
                    Some(spec) => spec
                        .fields()
                        .iter()
                        .map(|f| {
                            let source = metadata
                                .current_schema()
                                .name_by_field_id(f.source_id)
                                .unwrap_or("?");
                            format!("{}={}({source})", f.name, f.transform)
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    None => "no longer in the table".to_string(),
                };
                return Err(Error::PartitionSpecChanged {
                    table: self.ident.to_string(),
                    path: file.path.clone(),
                    written,
                    written_fields: fields(written),
                    current,
                    current_fields: fields(current),
                });
            }
        }
        Ok(())
    }

    fn error(&self, context: &str, source: iceberg::Error) -> Error {
        Error::iceberg(format!("table `{}`: {context}", self.ident), source)
    }
}

impl CommitSink for IcebergSink {
    fn table(&self) -> String {
        format!("iceberg:{}", self.ident)
    }

    /// The marker is a table property: no expiry or maintenance drops it.
    fn marker_risk(&self) -> BoxFuture<'_, std::result::Result<Option<String>, BoxError>> {
        Box::pin(async { Ok(None) })
    }

    fn committed_sequence<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Option<u64>, BoxError>> {
        Box::pin(async move { Ok(self.committed(pipeline_id).await?) })
    }

    fn commit<'a>(
        &'a self,
        request: &'a CommitRequest,
    ) -> BoxFuture<'a, std::result::Result<CommitOutcome, BoxError>> {
        Box::pin(async move { Ok(self.commit_request(request).await?) })
    }

    fn lineage<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Lineage, BoxError>> {
        Box::pin(async move {
            let table = self.load().await?;
            Ok(lineage(&table, pipeline_id))
        })
    }
}

/// The latest commit of `pipeline_id` among the current snapshot and its
/// ancestors (as far as they are kept): its snapshot summary names the
/// pipeline and the commit sequence. A rollback to an older snapshot leaves
/// the later commits' snapshots out of this chain; compactions, manifest
/// rewrites and expiry keep it (they add snapshots without the pipeline's
/// summary, or drop ancestors older than the commit).
///
/// A chain that ends at the table's first snapshot (or a table with no
/// current snapshot) without a commit of the pipeline carries none of them;
/// a chain cut by expiry cannot tell.
fn lineage(table: &Table, pipeline_id: &str) -> Lineage {
    let metadata = table.metadata();
    let mut next = metadata.current_snapshot().cloned();
    while let Some(snapshot) = next {
        let properties = &snapshot.summary().additional_properties;
        if properties.get("tidemark.pipeline").map(String::as_str) == Some(pipeline_id) {
            if let Some(sequence) = properties
                .get("tidemark.commit-sequence")
                .and_then(|s| s.parse().ok())
            {
                return Lineage::Carries(sequence);
            }
        }
        let Some(parent) = snapshot.parent_snapshot_id() else {
            // A root. Expiry can leave a later snapshot without its parent:
            // only the table's first snapshot (sequence number 1; 0 in
            // format 1, which cannot tell) ends the history for sure.
            if snapshot.sequence_number() != 1 {
                return Lineage::Unknown;
            }
            break;
        };
        match metadata.snapshot_by_id(parent) {
            Some(parent) => next = Some(parent.clone()),
            // Expired: the history in reach cannot tell.
            None => return Lineage::Unknown,
        }
    }
    Lineage::RolledBack {
        carried: None,
        why: "none of the current snapshot's ancestors, back to the table's first snapshot, \
              is a commit of the pipeline"
            .to_string(),
    }
}

fn marker(table: &Table, pipeline_id: &str) -> Result<Option<u64>> {
    let key = marker_property(pipeline_id);
    match table.metadata().properties().get(&key) {
        None => Ok(None),
        Some(value) => value.parse().map(Some).map_err(|_| Error::InvalidTable {
            table: table.identifier().to_string(),
            reason: format!("table property `{key}` is `{value}`, not a commit sequence"),
        }),
    }
}

fn snapshot_of(table: &Table) -> serde_json::Value {
    json!({ "snapshot_id": table.metadata().current_snapshot_id() })
}

/// A copy of `table` whose metadata, in memory only, turns off
/// `Transaction::commit`'s own retries. The transaction bases its commit on the
/// table freshly loaded from the catalog, so nothing of this copy is written.
fn without_commit_retries(table: &Table) -> Result<Table> {
    let name = table.identifier().to_string();
    let mut properties = table.metadata().properties().clone();
    properties.insert(
        TableProperties::PROPERTY_COMMIT_NUM_RETRIES.to_string(),
        "0".to_string(),
    );
    let metadata = table
        .metadata()
        .clone()
        .into_builder(None)
        .set_properties(properties)
        .and_then(|b| b.build())
        .map_err(|e| Error::iceberg(format!("table `{name}`: copying metadata"), e))?
        .metadata;
    let runtime = Runtime::try_current()
        .map_err(|e| Error::iceberg(format!("table `{name}`: the runtime"), e))?;
    let mut builder = Table::builder()
        .file_io(table.file_io().clone())
        .metadata(metadata)
        .identifier(table.identifier().clone())
        .runtime(runtime);
    if let Some(location) = table.metadata_location() {
        builder = builder.metadata_location(location);
    }
    builder
        .build()
        .map_err(|e| Error::iceberg(format!("table `{name}`: copying metadata"), e))
}

/// Errors after which the commit may or may not have landed, or that another
/// writer caused: worth a reload, a marker check and another attempt. Errors
/// that say the request itself is wrong are not.
fn retryable(error: &iceberg::Error) -> bool {
    !matches!(
        error.kind(),
        ErrorKind::DataInvalid
            | ErrorKind::FeatureUnsupported
            | ErrorKind::TableNotFound
            | ErrorKind::NamespaceNotFound
            | ErrorKind::PreconditionFailed
    )
}

impl TableFiles for IcebergSink {
    fn delete_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(async move {
            let table = self.load().await.map_err(|e| self.files_error(e))?;
            table
                .file_io()
                .delete(path)
                .await
                .map_err(|e| self.files_error(Error::iceberg(format!("deleting `{path}`"), e)))
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(async move {
            let table = self.load().await.map_err(|e| self.files_error(e))?;
            table
                .file_io()
                .delete_prefix(prefix)
                .await
                .map_err(|e| self.files_error(Error::iceberg(format!("deleting `{prefix}`"), e)))
        })
    }
}

impl IcebergSink {
    fn files_error(&self, error: Error) -> tidemark::Error {
        tidemark::Error::Sink {
            table: CommitSink::table(self),
            source: Box::new(error),
        }
    }
}
