//! The Delta table as a [`CommitSink`]: one Delta version per commit, carrying
//! a `txn` action (appId = pipeline id, version = commit sequence).
//!
//! delta-rs replays an already-committed `(appId, version)` without complaint
//! when it is committed again, so this sink reads the table's transaction
//! version for the pipeline before every attempt. delta-rs retries a commit
//! that lost the race for its log version itself, against each newer
//! version's conflict check, in which the pipeline's `txn` makes a version
//! that landed (this commit's, or another committer's of the same sequence) a
//! conflict; a conflict comes back here, the table is reloaded and the marker
//! read again before the next attempt. A commit whose response was lost
//! therefore shows up as "already applied", never as a second version.
//!
//! `delta.setTransactionRetentionDuration`: delta-rs (through delta-kernel)
//! forgets a `txn` entry older than the duration at checkpoint time only when
//! the entry carries `lastUpdated`. This sink's entries carry none, so under
//! delta-rs a pipeline's marker stays however long the pipeline goes without
//! a commit (`cli/tests/table_protocols.rs` checkpoints a table with a
//! retention of 0 s and commits again; with `lastUpdated` set, that test
//! fails). Delta Spark keeps only entries whose `lastUpdated` is recent, so a
//! checkpoint that Spark writes on a table that sets the property drops the
//! marker: on such tables leave the property unset (its default).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::Schema;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, CommitInfo, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore};
use futures::future::BoxFuture;
use serde_json::json;
use tidemark::commit::{
    retry_backoff, CommitOutcome, CommitRequest, CommitSink, Lineage, SINK_COMMIT_ATTEMPTS,
};
use tidemark::error::BoxError;
use tidemark::gc::TableFiles;
use tokio::sync::Mutex;
use url::Url;

use crate::writer::{DeltaWriter, DeltaWriterOptions};
use crate::{record_to_add, Error, Result};

/// A Delta table that pipelines append to idempotently.
pub struct DeltaSink {
    url: Url,
    table: Mutex<DeltaTable>,
}

impl std::fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaSink")
            .field("url", &self.url.as_str())
            .finish()
    }
}

impl DeltaSink {
    /// Opens the table at `url` (`file://`, `s3://`, ...). `storage_options` are
    /// the object store options of delta-rs (for S3: `AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...). Fails with
    /// [`Error::TableNotFound`] if there is no table there.
    pub async fn open(url: Url, storage_options: HashMap<String, String>) -> Result<Self> {
        register_handlers(&url);
        let table = Self::builder(&url)?
            .with_storage_options(storage_options)
            .build()
            .map_err(|e| Error::delta(url.as_str(), "opening the table", e))?;
        Self::load(url, table).await
    }

    /// Opens the table at `url` through a caller-provided object store rooted at
    /// the store's root (for example one that adds retries or metrics).
    pub async fn open_with_store(url: Url, store: Arc<dyn ObjectStore>) -> Result<Self> {
        register_handlers(&url);
        let table = Self::builder(&url)?
            .with_storage_backend(store, url.clone())
            .build()
            .map_err(|e| Error::delta(url.as_str(), "opening the table", e))?;
        Self::load(url, table).await
    }

    /// Opens the table at `url`, creating it with `schema` and
    /// `partition_columns` if there is none. An existing table is used as it is.
    pub async fn create_if_missing(
        url: Url,
        storage_options: HashMap<String, String>,
        schema: &Schema,
        partition_columns: &[&str],
    ) -> Result<Self> {
        register_handlers(&url);
        let name = tidemark::redact::redact_url(url.as_str());
        let schema =
            tidemark::conform::storable_schema(schema).map_err(|reason| Error::SchemaMismatch {
                table: name.clone(),
                reason,
            })?;
        let delta_schema =
            StructType::try_from_arrow(&schema).map_err(|e| Error::SchemaMismatch {
                table: name.clone(),
                reason: format!("the schema cannot be a Delta schema: {e}"),
            })?;
        if url.scheme() == "file" {
            // delta-rs wants an existing directory on the local file system.
            if let Ok(dir) = url.to_file_path() {
                std::fs::create_dir_all(&dir).map_err(|e| Error::InvalidTable {
                    table: name.clone(),
                    reason: format!("cannot create directory `{}`: {e}", dir.display()),
                })?;
            }
        }
        let mut table = Self::builder(&url)?
            .with_storage_options(storage_options.clone())
            .build()
            .map_err(|e| Error::delta(&name, "opening the table location", e))?;
        match table.load().await {
            // No table there yet: it is created below.
            Ok(()) | Err(DeltaTableError::NotATable(_)) => {}
            Err(e) => return Err(Error::delta(&name, "opening the table location", e)),
        }
        let table = if table.version().is_some() {
            table
        } else {
            // One attempt at version 0. delta-rs would retry a create that
            // lost the race for it at version 1, as a second CREATE TABLE
            // with a new table id (and this run's schema and partitioning,
            // whatever the winner's were).
            let created = table
                .clone()
                .create()
                .with_columns(delta_schema.fields().cloned())
                .with_partition_columns(partition_columns.iter().map(|c| c.to_string()))
                .with_save_mode(SaveMode::Ignore)
                .with_commit_properties(CommitProperties::default().with_max_retries(0))
                .await;
            match created {
                Ok(table) => table,
                // Another run created it between the look and the create: its
                // version 0 won, and this run uses that table.
                Err(error) => {
                    let mut table = table;
                    match table.load().await {
                        Ok(()) if table.version().is_some() => {
                            tracing::info!(table = %name, "another run created the table first; using it");
                            table
                        }
                        _ => return Err(Error::delta(&name, "creating the table", error)),
                    }
                }
            }
        };
        // Opened again as every sink is: without the file actions.
        drop(table);
        Self::open(url, storage_options).await
    }

    /// The builder of the sink's table handle. It loads the log without the
    /// table's file actions: an append, the marker, the history and the
    /// log's checkpoints need none of them, and loading them costs every
    /// snapshot update time in proportion to the table's data files (20 ms
    /// at 10,000 files).
    fn builder(url: &Url) -> Result<DeltaTableBuilder> {
        Ok(DeltaTableBuilder::from_url(url.clone())
            .map_err(|e| Error::delta(url.as_str(), "opening the table", e))?
            .without_files())
    }

    async fn load(url: Url, mut table: DeltaTable) -> Result<Self> {
        let missing_dir = url.scheme() == "file" && url.to_file_path().is_ok_and(|p| !p.exists());
        if missing_dir {
            return Err(Error::TableNotFound {
                table: url.to_string(),
            });
        }
        match table.load().await {
            Ok(()) => Ok(DeltaSink {
                url,
                table: Mutex::new(table),
            }),
            Err(DeltaTableError::NotATable(_)) => Err(Error::TableNotFound {
                table: url.to_string(),
            }),
            Err(e) => Err(Error::delta(url.as_str(), "reading the table's log", e)),
        }
    }

    /// The table URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The table as last loaded (a cheap handle; reload it for new versions).
    /// The handle is loaded without the table's file actions, as the sink
    /// needs none: its file listings are empty. Use
    /// [`DeltaSink::table_with_files`] to read the table's data.
    pub async fn table(&self) -> DeltaTable {
        self.table.lock().await.clone()
    }

    /// The table at its latest version with its file actions loaded, to read
    /// its data (for example through [`crate::DeltaSource`]).
    pub async fn table_with_files(&self) -> Result<DeltaTable> {
        let mut table = self.table().await;
        table.config.require_files = true;
        table.state = None;
        table
            .update_state()
            .await
            .map_err(|e| Error::delta(self.url.as_str(), "loading the table's files", e))?;
        Ok(table)
    }

    /// A writer of data files for the table's current version.
    pub async fn writer(&self, options: DeltaWriterOptions) -> Result<DeltaWriter> {
        let mut table = self.table.lock().await;
        self.refresh(&mut table).await?;
        DeltaWriter::new(&table, options)
    }

    /// The table's transaction version for `app_id`, read from the latest version.
    pub async fn transaction_version(&self, app_id: &str) -> Result<Option<i64>> {
        let mut table = self.table.lock().await;
        self.refresh(&mut table).await?;
        marker(&self.url, &table, app_id).await
    }

    async fn refresh(&self, table: &mut DeltaTable) -> Result<()> {
        table
            .update_state()
            .await
            .map_err(|e| Error::delta(self.url.as_str(), "reading the table's log", e))
    }

    async fn commit_request(&self, request: &CommitRequest) -> Result<CommitOutcome> {
        let adds = request
            .files
            .iter()
            .map(|f| record_to_add(f).map(Action::Add))
            .collect::<Result<Vec<_>>>()?;
        let sequence = i64::try_from(request.sequence).map_err(|_| Error::InvalidTable {
            table: self.url.to_string(),
            reason: format!(
                "commit sequence {} does not fit a Delta txn",
                request.sequence
            ),
        })?;
        let metadata = [
            ("tidemark.pipeline".to_string(), json!(request.pipeline_id)),
            (
                "tidemark.commit-sequence".to_string(),
                json!(request.sequence),
            ),
            (
                "tidemark.checkpoints".to_string(),
                json!(request
                    .checkpoints
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()),
            ),
        ];
        let mut table = self.table.lock().await;
        let mut last_error = None;
        for attempt in 0..SINK_COMMIT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(retry_backoff(attempt)).await;
            }
            // The marker is read again before every attempt: an earlier attempt
            // may have landed although its response was lost.
            self.refresh(&mut table).await?;
            let applied = marker(&self.url, &table, &request.pipeline_id).await?;
            if applied.is_some_and(|v| v >= sequence) {
                return Ok(CommitOutcome {
                    applied: false,
                    table_version: json!({ "version": table.version() }),
                });
            }
            let snapshot = table
                .snapshot()
                .map_err(|e| Error::delta(self.url.as_str(), "reading the table's state", e))?;
            // The sink checkpoints the log itself: delta-rs's hook does not
            // without the file actions loaded. At the table's interval if it
            // sets one; otherwise every 10 commits, as the Delta reference
            // implementation does (delta-rs's default is 100), so that
            // opening the table replays at most 10 commits after the latest
            // checkpoint.
            let interval = snapshot
                .metadata()
                .configuration()
                .get(CHECKPOINT_INTERVAL)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&i| i > 0)
                .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL);
            // delta-rs retries a commit that lost the race for its version
            // itself, against each newer version's conflict check: an
            // append beside another writer's optimize or append goes on at
            // once. It never applies the commit twice: the commit carries
            // the pipeline's `txn`, so a newer version with a `txn` of the
            // same app id (this commit landed with its response lost, or
            // another committer applied the sequence) is a conflict, which
            // comes back here, to the marker's check.
            let properties = CommitProperties::default()
                .with_application_transaction(Transaction::new(&request.pipeline_id, sequence))
                .with_metadata(metadata.clone())
                .with_max_retries(DELTA_VERSION_RETRIES)
                .with_create_checkpoint(false);
            let result = CommitBuilder::from(properties)
                .with_actions(adds.clone())
                .build(
                    Some(snapshot),
                    table.log_store(),
                    DeltaOperation::Write {
                        mode: SaveMode::Append,
                        partition_by: None,
                        predicate: None,
                    },
                )
                .await;
            match result {
                Ok(commit) => {
                    if (commit.version() + 1) % interval == 0 {
                        self.checkpoint_log(&mut table, commit.version()).await;
                    }
                    return Ok(CommitOutcome {
                        applied: true,
                        table_version: json!({ "version": commit.version() }),
                    });
                }
                Err(e) if retryable(&e) => {
                    tracing::warn!(table = %self.url, attempt, error = %e, "delta commit attempt failed; re-checking the marker");
                    last_error = Some(e);
                }
                Err(e) => return Err(Error::delta(self.url.as_str(), "committing", e)),
            }
        }
        Err(Error::CommitGaveUp {
            table: self.url.to_string(),
            attempts: SINK_COMMIT_ATTEMPTS,
            last: last_error.map_or_else(String::new, |e| e.to_string()),
        })
    }

    /// Writes a checkpoint of the log at `version`. The commit has landed
    /// whatever happens here: a failure is logged, and the next checkpoint
    /// will cover this one's commits.
    async fn checkpoint_log(&self, table: &mut DeltaTable, version: u64) {
        let written = match table.update_incremental(Some(version)).await {
            Ok(()) => deltalake::checkpoints::create_checkpoint(table, None).await,
            Err(e) => Err(e),
        };
        if let Err(error) = written {
            tracing::warn!(table = %tidemark::redact::redact_url(self.url.as_str()), version, %error, "writing a checkpoint of the Delta log failed; the commit stands");
        }
    }
}

impl CommitSink for DeltaSink {
    fn table(&self) -> String {
        tidemark::redact::redact_url(self.url.as_str())
    }

    fn committed_sequence<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Option<u64>, BoxError>> {
        Box::pin(async move {
            let version = self.transaction_version(pipeline_id).await?;
            Ok(version.and_then(|v| u64::try_from(v).ok()))
        })
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
            let mut table = self.table.lock().await;
            self.refresh(&mut table).await?;
            // The latest commit is usually a few versions back: read a few
            // first, and more only when they do not tell.
            let mut found = Lineage::Unknown;
            for limit in LINEAGE_HISTORY {
                let history: Vec<CommitInfo> = table
                    .history(Some(limit))
                    .await
                    .map_err(|e| Error::delta(self.url.as_str(), "reading the table's history", e))?
                    .collect();
                let current = table.version().and_then(|v| i64::try_from(v).ok());
                found = lineage(&history, current, pipeline_id);
                let settled = !matches!(
                    found,
                    Lineage::Unknown | Lineage::RolledBack { carried: None, .. }
                );
                if settled || history.len() < limit {
                    break;
                }
            }
            Ok(found)
        })
    }

    fn marker_risk(&self) -> BoxFuture<'_, std::result::Result<Option<String>, BoxError>> {
        Box::pin(async move {
            let mut table = self.table.lock().await;
            self.refresh(&mut table).await?;
            let snapshot = table
                .snapshot()
                .map_err(|e| Error::delta(self.url.as_str(), "reading the table's state", e))?;
            let duration = snapshot.metadata().configuration().get(TXN_RETENTION);
            Ok(duration.map(|d| txn_retention_risk(d)))
        })
    }
}

/// Versions of the log read, newest first, to find the pipeline's latest
/// commit and any restore after it: a few, then more.
const LINEAGE_HISTORY: [usize; 2] = [16, 1_000];

/// Newer versions a commit attempt may meet, conflict-checked by delta-rs,
/// before it comes back to the sink's own retry (which reads the marker
/// again). delta-rs's own default.
const DELTA_VERSION_RETRIES: usize = 15;

/// The Delta table property that sets how many commits come between two
/// checkpoints of the log.
const CHECKPOINT_INTERVAL: &str = "delta.checkpointInterval";

/// Commits between two checkpoints of the log on a table that does not set
/// [`CHECKPOINT_INTERVAL`]: the Delta reference implementation's default.
const DEFAULT_CHECKPOINT_INTERVAL: u64 = 10;

/// The Delta table property under which Spark's log checkpoints drop `txn`
/// entries without a recent `lastUpdated`, this sink's markers included.
const TXN_RETENTION: &str = "delta.setTransactionRetentionDuration";

/// What [`CommitSink::marker_risk`] says of a table whose properties set
/// [`TXN_RETENTION`] to `duration`.
fn txn_retention_risk(duration: &str) -> String {
    format!(
        "the table sets {TXN_RETENTION} = {duration}, under which a log checkpoint written by \
         Spark drops the pipeline's marker (tidemark's `txn` entries carry no lastUpdated); \
         unset it on tables that Spark checkpoints"
    )
}

/// A number in a commit's JSON, written as a number or a string.
fn json_number(value: Option<&serde_json::Value>) -> Option<i64> {
    match value? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// What a restore went back to.
#[derive(Debug, Clone, Copy)]
enum RestoreTarget {
    Version(i64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

impl RestoreTarget {
    /// Whether the version restored to is older than a commit at `version`
    /// (or `timestamp`): the restore undid that commit.
    fn undoes(self, version: Option<i64>, timestamp: Option<i64>) -> bool {
        match self {
            RestoreTarget::Version(to) => version.is_some_and(|v| v > to),
            RestoreTarget::Timestamp(to) => timestamp.is_some_and(|t| t > to),
        }
    }
}

/// The pipeline's latest commit that the current state still carries, from
/// the commit infos of the log, newest first, the first of them at version
/// `current`. Walking back, a `RESTORE` sets a ceiling: the commits above the
/// version (or time) it restored are not in the current state, and neither
/// is anything they did (an older restore that a newer one undid counts for
/// nothing). Optimize, vacuum and checkpoints change no ceiling. A restore
/// whose target cannot be read makes the answer a rollback of unknown
/// extent, so the run stops and asks.
fn lineage(history: &[CommitInfo], current: Option<i64>, pipeline_id: &str) -> Lineage {
    let mut ceiling: Option<RestoreTarget> = None;
    let mut restored_to: Vec<String> = Vec::new();
    let mut undone: Vec<i64> = Vec::new();
    for (back, info) in history.iter().enumerate() {
        // Writers need not record the version they read, so a commit's version
        // is its place in the log (every commit of delta-rs and Spark has a
        // commit info).
        let position = current.map(|v| v - back as i64);
        let version = position.or(info.read_version.map(|v| v as i64 + 1));
        let hidden = ceiling.is_some_and(|c| c.undoes(version, info.timestamp));
        if info.operation.as_deref() == Some("RESTORE") {
            if hidden {
                continue;
            }
            let parameters = info.operation_parameters.as_ref();
            let target = parameters
                .and_then(|p| json_number(p.get("version")))
                .map(RestoreTarget::Version)
                .or_else(|| {
                    parameters
                        .and_then(|p| json_number(p.get("datetime")))
                        .map(RestoreTarget::Timestamp)
                });
            let Some(target) = target else {
                return Lineage::RolledBack {
                    carried: None,
                    why: format!(
                        "the table was restored (version {}) to a point this check cannot read \
                         ({:?})",
                        version.map_or("?".to_string(), |v| v.to_string()),
                        parameters
                    ),
                };
            };
            restored_to.push(match target {
                RestoreTarget::Version(v) => format!("version {v}"),
                RestoreTarget::Timestamp(ms) => {
                    format!("the table as of {ms} ms since the epoch")
                }
            });
            // Restores only lower the ceiling as the walk goes back.
            ceiling = Some(target);
            continue;
        }
        let ours = info.info.get("tidemark.pipeline").and_then(|v| v.as_str()) == Some(pipeline_id);
        let Some(sequence) =
            json_number(info.info.get("tidemark.commit-sequence")).filter(|_| ours)
        else {
            continue;
        };
        if hidden {
            undone.push(sequence);
            continue;
        }
        let carried = u64::try_from(sequence).ok();
        return match (undone.is_empty(), carried) {
            (true, Some(carried)) => Lineage::Carries(carried),
            (true, None) => Lineage::Unknown,
            (false, carried) => Lineage::RolledBack {
                carried,
                why: restored(&restored_to, &undone),
            },
        };
    }
    if undone.is_empty() {
        Lineage::Unknown
    } else {
        Lineage::RolledBack {
            carried: None,
            why: restored(&restored_to, &undone),
        }
    }
}

/// "the table was restored to version 3, which undid its commit(s) 4, 5".
fn restored(restored_to: &[String], undone: &[i64]) -> String {
    let mut undone: Vec<i64> = undone.to_vec();
    undone.sort_unstable();
    let undone: Vec<String> = undone.iter().map(i64::to_string).collect();
    format!(
        "the table was restored to {}, which undid its commit(s) {}",
        restored_to.join(", then "),
        undone.join(", ")
    )
}

async fn marker(url: &Url, table: &DeltaTable, app_id: &str) -> Result<Option<i64>> {
    let snapshot = table
        .snapshot()
        .map_err(|e| Error::delta(url.as_str(), "reading the table's state", e))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(|e| {
            Error::delta(
                url.as_str(),
                "reading the pipeline's transaction version",
                e,
            )
        })
}

/// Errors after which the commit may or may not have landed, or that another
/// writer caused: worth a reload, a marker check and another attempt.
fn retryable(error: &DeltaTableError) -> bool {
    matches!(
        error,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::ObjectStore { .. }
            | DeltaTableError::Io { .. }
            | DeltaTableError::Transaction {
                source: TransactionError::MaxCommitAttempts(_)
                    | TransactionError::CommitConflict(_)
                    | TransactionError::ObjectStore { .. }
                    | TransactionError::LogStoreError { .. }
            }
    )
}

/// Translates `object_store` option names (`aws_endpoint`, `aws_region`, ...,
/// as the checkpoint store and Parquet sources take them) into the names
/// delta-rs reads (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...), so one set of
/// options can open a store, a source and a Delta table.
pub fn storage_options(object_store_options: &HashMap<String, String>) -> HashMap<String, String> {
    object_store_options
        .iter()
        .map(|(key, value)| {
            let key = match key.to_ascii_lowercase().as_str() {
                "aws_endpoint" => "AWS_ENDPOINT_URL".to_string(),
                other => other.to_ascii_uppercase(),
            };
            (key, value.clone())
        })
        .collect()
}

fn register_handlers(url: &Url) {
    if matches!(url.scheme(), "s3" | "s3a") {
        deltalake::aws::register_handlers(None);
    }
}

impl TableFiles for DeltaSink {
    fn delete_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(async move {
            use object_store::ObjectStoreExt as _;
            let store = self.table.lock().await.object_store();
            match store.delete(&object_store::path::Path::from(path)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.files_error(path, e)),
            }
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(async move {
            use futures::TryStreamExt as _;
            use object_store::ObjectStoreExt as _;
            let store = self.table.lock().await.object_store();
            let root = object_store::path::Path::from(prefix);
            let listed: Vec<object_store::ObjectMeta> = store
                .list(Some(&root))
                .try_collect()
                .await
                .map_err(|e| self.files_error(prefix, e))?;
            for meta in listed {
                match store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.files_error(meta.location.as_ref(), e)),
                }
            }
            Ok(())
        })
    }
}

impl DeltaSink {
    fn files_error(&self, path: &str, error: object_store::Error) -> tidemark::Error {
        tidemark::Error::Sink {
            table: self.url.to_string(),
            source: format!("deleting orphan data file `{path}`: {error}").into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit of pipeline `p` with `sequence`.
    fn ours(sequence: i64) -> CommitInfo {
        CommitInfo {
            operation: Some("WRITE".into()),
            info: [
                ("tidemark.pipeline".to_string(), json!("p")),
                ("tidemark.commit-sequence".to_string(), json!(sequence)),
            ]
            .into(),
            ..Default::default()
        }
    }

    fn operation(name: &str, parameters: serde_json::Value) -> CommitInfo {
        CommitInfo {
            operation: Some(name.into()),
            operation_parameters: serde_json::from_value(parameters).ok(),
            ..Default::default()
        }
    }

    #[test]
    fn maintenance_after_the_latest_commit_carries_it() {
        // Newest first: versions 4 (vacuum), 3 (optimize), 2 (commit 2), 1, 0.
        let history = [
            operation("VACUUM END", json!({})),
            operation("OPTIMIZE", json!({})),
            ours(2),
            ours(1),
            operation("CREATE TABLE", json!({})),
        ];
        assert_eq!(lineage(&history, Some(4), "p"), Lineage::Carries(2));
        assert_eq!(lineage(&history, Some(4), "other"), Lineage::Unknown);
    }

    #[test]
    fn a_restore_before_a_commit_undoes_it() {
        // Versions 5 (restore to 3), 4 (commit 3), 3 (optimize), 2 (commit 2).
        let history = [
            operation("RESTORE", json!({ "version": "3" })),
            ours(3),
            operation("OPTIMIZE", json!({})),
            ours(2),
        ];
        match lineage(&history, Some(5), "p") {
            Lineage::RolledBack { carried, why } => {
                assert_eq!(carried, Some(2));
                assert!(
                    why.contains("restored to version 3") && why.ends_with('3'),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Restoring to the version of the latest commit undoes nothing.
        let history = [operation("RESTORE", json!({ "version": 4 })), ours(3)];
        assert_eq!(lineage(&history, Some(5), "p"), Lineage::Carries(3));
        // Restored to version 3, then to version 4 (commit 3's): the newer
        // restore decides, and commit 3 is carried again.
        let history = [
            operation("RESTORE", json!({ "version": 4 })),
            operation("RESTORE", json!({ "version": 3 })),
            ours(3),
            ours(2),
        ];
        assert_eq!(lineage(&history, Some(6), "p"), Lineage::Carries(3));
        // A restore whose target cannot be read stops the run.
        let history = [
            operation("RESTORE", json!({ "timestamp": "2026-12-01 00:00:00" })),
            ours(3),
        ];
        assert!(matches!(
            lineage(&history, Some(5), "p"),
            Lineage::RolledBack { carried: None, .. }
        ));
        // A commit after the restore is carried.
        let history = [
            ours(4),
            operation("RESTORE", json!({ "version": 1 })),
            ours(3),
        ];
        assert_eq!(lineage(&history, Some(3), "p"), Lineage::Carries(4));
    }

    /// `ours(sequence)` made at `timestamp` ms, having read `read_version`.
    fn ours_at(sequence: i64, timestamp: i64, read_version: Option<u64>) -> CommitInfo {
        CommitInfo {
            timestamp: Some(timestamp),
            read_version,
            ..ours(sequence)
        }
    }

    #[test]
    fn a_restore_to_a_time_undoes_the_commits_made_after_it() {
        // Restored to the table as of 1,000 ms: commit 3 (2,000 ms) is
        // undone, commit 2 (made at exactly 1,000 ms) is not.
        for datetime in [json!(1_000), json!("1000")] {
            let history = [
                operation("RESTORE", json!({ "datetime": datetime })),
                ours_at(3, 2_000, None),
                ours_at(2, 1_000, None),
            ];
            match lineage(&history, Some(7), "p") {
                Lineage::RolledBack { carried, why } => {
                    assert_eq!(carried, Some(2));
                    assert_eq!(
                        why,
                        "the table was restored to the table as of 1000 ms since the epoch, \
                         which undid its commit(s) 3"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn without_the_current_version_a_commit_s_version_is_the_one_it_read_plus_one() {
        // Commit 3 read version 3 (so it is version 4), commit 2 read 2.
        let history = [
            operation("RESTORE", json!({ "version": 3 })),
            ours_at(3, 0, Some(3)),
            ours_at(2, 0, Some(2)),
        ];
        match lineage(&history, None, "p") {
            Lineage::RolledBack { carried, .. } => assert_eq!(carried, Some(2)),
            other => panic!("{other:?}"),
        }
        // With the current version known, places in the log decide: version
        // 3 is commit 3's, which the restore to 3 keeps.
        assert_eq!(lineage(&history, Some(4), "p"), Lineage::Carries(3));
    }

    #[test]
    fn restores_in_a_row_name_every_target_and_every_commit_they_undid() {
        // Versions 7 (restore to 5), 6 (commit 4), 5 (restore to 2), 4, 3
        // (commits 3, 2), 2 (commit 1).
        let history = [
            operation("RESTORE", json!({ "version": 5 })),
            ours(4),
            operation("RESTORE", json!({ "version": 2 })),
            ours(3),
            ours(2),
            ours(1),
        ];
        match lineage(&history, Some(7), "p") {
            Lineage::RolledBack { carried, why } => {
                assert_eq!(carried, Some(1));
                assert_eq!(
                    why,
                    "the table was restored to version 5, then version 2, \
                     which undid its commit(s) 2, 3, 4"
                );
            }
            other => panic!("{other:?}"),
        }
        // Nothing of the pipeline left below the restore: undone, none carried.
        match lineage(&history[..5], Some(7), "p") {
            Lineage::RolledBack { carried, why } => {
                assert_eq!(carried, None);
                assert!(why.ends_with("commit(s) 2, 3, 4"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // A sequence that is not a commit sequence tells nothing.
        assert_eq!(lineage(&[ours(-1)], Some(0), "p"), Lineage::Unknown);
    }

    #[test]
    fn numbers_in_a_commit_s_json_are_numbers_or_strings() {
        assert_eq!(json_number(Some(&json!(7))), Some(7));
        assert_eq!(json_number(Some(&json!("7"))), Some(7));
        assert_eq!(json_number(Some(&json!("seven"))), None);
        assert_eq!(json_number(Some(&json!(true))), None);
        assert_eq!(json_number(None), None);
    }

    #[test]
    fn object_store_options_take_delta_rs_names() {
        let options = storage_options(&HashMap::from([
            (
                "aws_endpoint".to_string(),
                "http://localhost:9000".to_string(),
            ),
            ("aws_region".to_string(), "us-east-1".to_string()),
            ("Aws_Access_Key_Id".to_string(), "key".to_string()),
        ]));
        assert_eq!(
            options,
            HashMap::from([
                (
                    "AWS_ENDPOINT_URL".to_string(),
                    "http://localhost:9000".to_string()
                ),
                ("AWS_REGION".to_string(), "us-east-1".to_string()),
                ("AWS_ACCESS_KEY_ID".to_string(), "key".to_string()),
            ])
        );
    }

    #[test]
    fn the_marker_risk_names_the_property_and_its_value() {
        let risk = txn_retention_risk("interval 7 days");
        assert!(
            risk.contains("delta.setTransactionRetentionDuration = interval 7 days"),
            "{risk}"
        );
    }

    #[test]
    fn conflicts_and_storage_errors_are_retried_and_wrong_requests_are_not() {
        assert!(retryable(&DeltaTableError::VersionAlreadyExists(3)));
        assert!(retryable(&DeltaTableError::Transaction {
            source: TransactionError::MaxCommitAttempts(15),
        }));
        assert!(retryable(&DeltaTableError::ObjectStore {
            source: object_store::Error::NotImplemented {
                operation: "put".into(),
                implementer: "test".into(),
            },
        }));
        assert!(!retryable(&DeltaTableError::Generic("bad".into())));
        assert!(!retryable(&DeltaTableError::Transaction {
            source: TransactionError::UnsupportedTableFeatures(vec![]),
        }));
    }
}
