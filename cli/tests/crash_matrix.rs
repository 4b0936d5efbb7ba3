//! The crash matrix: a pipeline into Iceberg and into Delta, with its checkpoint
//! store and table on the local file system and on a local S3 server, killed at
//! every step of the protocol and run again to completion. After every
//! scenario pyiceberg + DuckDB (Iceberg) or deltalake + DuckDB (Delta) must see
//! every source key exactly once, the table's storage must hold no data file
//! the table does not reference, and `tidemark status` must report a clean
//! store.
//!
//! A kill is a fault-injecting wrapper around the checkpoint store: at the
//! chosen request it fails, and (for a crash) so does every later request, as
//! if the process had died there. The table's own storage is not wrapped, so a
//! killed run keeps whatever data files it wrote, as a real one would.
//!
//! Further tests kill `tidemark run` child processes with SIGKILL, and run
//! through an HTTP proxy in front of the S3 server that answers 503s, stalls
//! reads past the client's time-out and loses the responses of applied writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/support/mod.rs"]
mod support;
mod worker;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use iceberg::spec::{NestedField, PrimitiveType, Type};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlCatalogBuilder, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE};
use object_store::ObjectStore;
use tidemark::gc::{collect_garbage, TableFiles};
use tidemark::pipeline::{CheckpointPolicy, Pipeline, RunReport};
use tidemark::source::{ParquetSource, ParquetSourceOptions, Shard, Source, UnionSource};
use tidemark::store::{
    CheckpointStore, CompactionOptions, KeySchema, Lease, LeaseOptions, StoreLocation,
    PIPELINE_SCOPE,
};
use tidemark::transform::Transform;
use tidemark::Error;
use tidemark_delta::{DeltaSink, DeltaWriterOptions};
use tidemark_iceberg::{IcebergSink, IcebergWriterOptions, ObjectStorageFactory};

use support::{Backend, BoundedOutput, Fault, FaultProxy, Op};
use worker::{run_totals, WorkerProcess};

const PIPELINE: &str = "crash-matrix";
/// Small files, so one run writes several and a crash can fall between them.
const TARGET_FILE_BYTES: usize = 4 << 10;
/// Rows in the crash matrix's source (three files; the last repeats 100 keys).
const SOURCE_ROWS: u64 = 1200;
/// Distinct keys in it.
const DISTINCT_KEYS: u64 = 1100;
/// Data files one run writes into Delta at [`TARGET_FILE_BYTES`].
const DELTA_FILES_PER_RUN: usize = 11;

/// Where to kill the run: the first checkpoint-store write whose path
/// contains `path` (after letting `skip` such writes through) gets `fault`.
struct Step {
    name: &'static str,
    path: &'static str,
    fault: Fault,
    skip: usize,
    /// What the rerun must find and do.
    rerun: Expected,
}

/// What a rerun after a kill at one step does, as the step implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expected {
    /// The killed run's checkpoint was unsealed: the rerun seals it empty
    /// (1), and reads, maps and writes every row again (the source's 1 100
    /// distinct keys). Otherwise it was sealed: nothing is fenced, nothing
    /// is written again.
    unsealed: bool,
    /// Table commits the rerun's repair finishes (0 or 1).
    repaired: usize,
    /// Whether the repair's commit appends the files (`false`: the table
    /// already held them, only the store's marks were missing).
    applied_by_repair: bool,
    /// Orphan paths (files for Delta, directories for Iceberg) the rerun's
    /// gc deletes.
    orphans: usize,
}

/// The kill points of a run, in the order the run reaches them. Each is
/// named after the call it kills. A run writes its data files first
/// (recording each in flight), then at its seal flushes the key file (keys
/// are buffered until then), writes the seal, the commit intent, the table
/// commit and the commit marks.
fn steps(sink: SinkKind) -> Vec<Step> {
    let step = |name, path, fault, skip, rerun| Step {
        name,
        path,
        fault,
        skip,
        rerun,
    };
    let unsealed = |orphans| Expected {
        unsealed: true,
        repaired: 0,
        applied_by_repair: false,
        orphans,
    };
    let sealed = |repaired, applied_by_repair| Expected {
        unsealed: false,
        repaired,
        applied_by_repair,
        orphans: 0,
    };
    // Iceberg records one directory per writer, Delta each file.
    let written = match sink {
        SinkKind::Iceberg => 1,
        SinkKind::Delta => DELTA_FILES_PER_RUN,
    };
    let mut steps = vec![step(
        "after recording the first in-flight write, before its data file",
        "/inflight/",
        Fault::CrashAfter,
        0,
        unsealed(1),
    )];
    if sink == SinkKind::Delta {
        // The Delta writer records each file before writing it: dying at the
        // third record leaves two complete data files that no manifest names.
        steps.push(step(
            "after writing two data files, before recording the third",
            "/inflight/",
            Fault::CrashBefore,
            2,
            unsealed(2),
        ));
    }
    steps.extend([
        step(
            "at the seal, before the key file (data files written)",
            "/keys/",
            Fault::CrashBefore,
            0,
            unsealed(written),
        ),
        step(
            "at the seal, after the key file",
            "/keys/",
            Fault::CrashAfter,
            0,
            unsealed(written),
        ),
        step(
            "before the seal (keys and data files written)",
            "sealed/",
            Fault::CrashBefore,
            0,
            unsealed(written),
        ),
        step(
            "after the seal",
            "sealed/",
            Fault::CrashAfter,
            0,
            sealed(1, true),
        ),
        step(
            "seal applied, response lost",
            "sealed/",
            Fault::LoseResponse,
            0,
            sealed(1, true),
        ),
        step(
            "before the commit intent",
            "commits/",
            Fault::CrashBefore,
            0,
            sealed(1, true),
        ),
        step(
            "after the commit intent, before the catalog commit",
            "commits/",
            Fault::CrashAfter,
            0,
            sealed(1, true),
        ),
        step(
            "after the catalog commit, before mark-committed",
            "committed/",
            Fault::CrashBefore,
            0,
            sealed(1, false),
        ),
        step(
            "after mark-committed",
            "committed/",
            Fault::CrashAfter,
            0,
            sealed(0, false),
        ),
    ]);
    steps
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkKind {
    Iceberg,
    Delta,
}

/// One scenario's table, store and source.
struct Scenario {
    sink: SinkKind,
    backend: Backend,
    dir: tempfile::TempDir,
    table_url: String,
    table_options: HashMap<String, String>,
    namespace: String,
    /// The source's keys are 0..keys.
    keys: i64,
}

impl Scenario {
    async fn new(sink: SinkKind, backend: Backend, index: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (table_url, table_options) = backend.data_url(&format!("table-{index}"));
        let scenario = Scenario {
            sink,
            backend,
            dir,
            table_url,
            table_options,
            namespace: format!("ns{index}"),
            keys: 1100,
        };
        scenario.write_source(true);
        scenario.create_table().await;
        scenario
    }

    /// From now on, reach the store and table straight, not through `proxy`
    /// (the independent readers and `tidemark status` check the result).
    fn bypass(&mut self, proxy: &FaultProxy) {
        self.backend = self.backend.bypassing(proxy);
        self.table_options = proxy.bypass(&self.table_options);
    }

    /// Three files, 1 100 distinct keys; with `overlap`, the last file
    /// repeats 100 keys of the second.
    fn write_source(&self, overlap: bool) {
        let source = self.dir.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        let last = if overlap { 700..1100 } else { 800..1100 };
        for (n, range) in [(0, 0..400), (1, 400..800), (2, last)] {
            let ids: Vec<i64> = range.collect();
            let text: Vec<String> = ids
                .iter()
                .map(|i| format!("document {i} {}", "x".repeat(40)))
                .collect();
            write_parquet(&source.join(format!("part-{n}.parquet")), ids, text);
        }
    }

    fn sqlite_path(&self) -> String {
        format!("{}/catalog.db", self.dir.path().display())
    }

    async fn catalog(&self) -> Arc<dyn Catalog> {
        let properties = HashMap::from([
            (
                SQL_CATALOG_PROP_URI.to_string(),
                format!("sqlite://{}?mode=rwc", self.sqlite_path()),
            ),
            (
                SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                self.table_url.clone(),
            ),
        ]);
        let catalog = SqlCatalogBuilder::default()
            .with_storage_factory(Arc::new(ObjectStorageFactory::new(
                self.table_options.clone(),
            )))
            .load("default", properties)
            .await
            .unwrap();
        Arc::new(catalog)
    }

    fn ident(&self) -> TableIdent {
        TableIdent::from_strs([self.namespace.as_str(), "docs"]).unwrap()
    }

    fn delta_options(&self) -> HashMap<String, String> {
        tidemark_delta::storage_options(&self.table_options)
    }

    async fn create_table(&self) {
        match self.sink {
            SinkKind::Iceberg => {
                let catalog = self.catalog().await;
                let namespace = NamespaceIdent::new(self.namespace.clone());
                catalog
                    .create_namespace(&namespace, HashMap::new())
                    .await
                    .unwrap();
                let schema = iceberg::spec::Schema::builder()
                    .with_fields(vec![
                        NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                        NestedField::optional(2, "text", Type::Primitive(PrimitiveType::String))
                            .into(),
                    ])
                    .build()
                    .unwrap();
                let creation = TableCreation::builder()
                    .name("docs".into())
                    .schema(schema)
                    .build();
                catalog.create_table(&namespace, creation).await.unwrap();
            }
            SinkKind::Delta => {
                DeltaSink::create_if_missing(
                    self.table_url.parse().unwrap(),
                    self.delta_options(),
                    &schema(),
                    &[],
                )
                .await
                .unwrap();
            }
        }
    }

    /// The source files, 100 rows a batch.
    async fn source(&self) -> tidemark::Result<Arc<dyn Source>> {
        Ok(Arc::new(
            ParquetSource::open(
                &format!("file://{}/source/", self.dir.path().display()),
                &ParquetSourceOptions {
                    batch_size: 100,
                    ..Default::default()
                },
            )
            .await?,
        ))
    }

    /// One run through `location` (the backend, or the backend behind faults).
    async fn run(&self, location: StoreLocation, ttl: Duration) -> tidemark::Result<RunReport> {
        let source = self.source().await?;
        self.run_source(location, ttl, source, Shard::all()).await
    }

    /// One run of `shard` of `source`.
    async fn run_source(
        &self,
        location: StoreLocation,
        ttl: Duration,
        source: Arc<dyn Source>,
        shard: Shard,
    ) -> tidemark::Result<RunReport> {
        self.run_policy(
            location,
            ttl,
            source,
            shard,
            CheckpointPolicy::default(),
            &Transform::new(),
        )
        .await
    }

    /// One run of `shard` of `source` under a checkpoint policy and transform.
    async fn run_policy(
        &self,
        location: StoreLocation,
        ttl: Duration,
        source: Arc<dyn Source>,
        shard: Shard,
        policy: CheckpointPolicy,
        transform: &Transform,
    ) -> tidemark::Result<RunReport> {
        let keys = KeySchema::single("id", DataType::Int64)?;
        let store = CheckpointStore::open_at(location, keys).await?;
        let lease = LeaseOptions {
            ttl,
            ..Default::default()
        };
        let sink_error = |e: String| Error::Sink {
            table: self.table_url.clone(),
            source: e.into(),
        };
        match self.sink {
            SinkKind::Iceberg => {
                let sink = IcebergSink::open(self.catalog().await, self.ident())
                    .await
                    .map_err(|e| sink_error(e.to_string()))?;
                let mut writer = sink
                    .writer(IcebergWriterOptions {
                        target_file_size_bytes: TARGET_FILE_BYTES,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| sink_error(e.to_string()))?;
                let pipeline = Pipeline::new(store, sink, PIPELINE)
                    .with_lease_options(lease)
                    .with_shard(shard)
                    .with_map_workers(2)
                    .with_checkpoint_policy(policy);
                pipeline.run(source, transform, &mut writer).await
            }
            SinkKind::Delta => {
                let sink = DeltaSink::open(self.table_url.parse().unwrap(), self.delta_options())
                    .await
                    .map_err(|e| sink_error(e.to_string()))?;
                let mut writer = sink
                    .writer(DeltaWriterOptions {
                        target_file_size_bytes: TARGET_FILE_BYTES as u64,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| sink_error(e.to_string()))?;
                let pipeline = Pipeline::new(store, sink, PIPELINE)
                    .with_lease_options(lease)
                    .with_shard(shard)
                    .with_map_workers(2)
                    .with_checkpoint_policy(policy);
                pipeline.run(source, transform, &mut writer).await
            }
        }
    }

    /// Reruns until the dead run's lease has expired, then to completion.
    async fn rerun(&self) -> RunReport {
        for _ in 0..40 {
            match self
                .run(self.backend.location(), Duration::from_secs(30))
                .await
            {
                Err(Error::LeaseHeld { .. }) => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                other => return other.unwrap(),
            }
        }
        panic!("the crashed run's lease never expired");
    }

    /// What the independent readers see: each reader's rows (all columns),
    /// and the data file count. The readers themselves fail when a data
    /// file's statistics or partition values disagree with its rows.
    fn read(&self) -> (Vec<(String, ReadRows)>, u64) {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut command = Command::new("python3");
        match self.sink {
            SinkKind::Iceberg => {
                command.arg(format!(
                    "{root}/../connectors/iceberg/tests/support/iceberg_read.py"
                ));
                command.args([
                    format!("sqlite:///{}", self.sqlite_path()),
                    self.table_url.clone(),
                    format!("{}.docs", self.namespace),
                ]);
                if let Some(endpoint) = self.table_options.get("aws_endpoint") {
                    command.arg(endpoint);
                }
            }
            SinkKind::Delta => {
                command.arg(format!(
                    "{root}/../connectors/delta/tests/support/delta_read.py"
                ));
                command.args([
                    self.table_url.clone(),
                    serde_json::to_string(&self.delta_options()).unwrap(),
                    PIPELINE.to_string(),
                ]);
            }
        }
        let output = command
            .bounded_output()
            .expect("python3 (bash .ci/run installs the readers)");
        assert!(
            output.status.success(),
            "reader failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let readers = ["pyiceberg_rows", "deltalake_rows", "duckdb_rows"];
        let rows = readers
            .iter()
            .filter_map(|key| Some((key.to_string(), value.get(*key)?)))
            .map(|(key, v)| (key, serde_json::from_value(v.clone()).unwrap()))
            .collect();
        assert_eq!(
            value["files_checked"], value["files"],
            "the reader checked the statistics of every data file"
        );
        (rows, value["files"].as_u64().unwrap())
    }

    /// The rows the table must hold: the source's (`id`, `text`), the first
    /// row of each key, in key order. The source is the `source` folder, and
    /// the `drop` folder that some tests read before it.
    fn source_rows(&self) -> Vec<(i64, Option<String>)> {
        let mut files = Vec::new();
        for folder in ["drop", "source"] {
            let Ok(entries) = std::fs::read_dir(self.dir.path().join(folder)) else {
                continue;
            };
            let mut listed: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
            listed.sort();
            files.extend(listed);
        }
        let mut rows = std::collections::BTreeMap::new();
        for path in files {
            let file = std::fs::File::open(&path).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let ids = arrow_array::cast::as_primitive_array::<arrow_array::types::Int64Type>(
                    batch.column_by_name("id").unwrap(),
                );
                let text =
                    arrow_array::cast::as_string_array(batch.column_by_name("text").unwrap());
                for row in 0..batch.num_rows() {
                    rows.entry(ids.value(row))
                        .or_insert_with(|| text.is_valid(row).then(|| text.value(row).to_string()));
                }
            }
        }
        rows.into_iter().collect()
    }

    /// Parquet files in the table's storage (the Delta log excluded).
    async fn parquet_files_stored(&self) -> usize {
        let url = url::Url::parse(&self.table_url).unwrap();
        let (store, prefix) = object_store::parse_url_opts(&url, &self.table_options).unwrap();
        let listed: Vec<object_store::ObjectMeta> =
            store.list(Some(&prefix)).try_collect().await.unwrap();
        listed
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .filter(|m| !m.location.as_ref().contains("_delta_log"))
            .count()
    }

    /// `tidemark status --json` on the store: its exit code and report.
    fn status(&self) -> (i32, serde_json::Value) {
        self.try_status().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `tidemark status --json`, or why it printed no report (there is no
    /// store yet, say).
    fn try_status(&self) -> Result<(i32, serde_json::Value), String> {
        let (url, options) = self.backend.url();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        command.args(["status", "--json", "--store", url]);
        for (key, value) in options {
            command.args(["-o", &format!("{key}={value}")]);
        }
        let output = command.bounded_output().unwrap();
        let value = serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "status printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok((output.status.code().unwrap_or(-1), value))
    }

    /// Every check after a scenario.
    async fn verify(&self, what: &str) {
        let expected = self.source_rows();
        assert_eq!(
            expected.len() as i64,
            self.keys,
            "{what}: the source's keys"
        );
        let (readers, files) = self.read();
        // DuckDB reads the Delta tables on local disk only (see delta_read.py).
        let delta_on_s3 = self.sink == SinkKind::Delta && self.table_url.starts_with("s3://");
        let readers_expected = if delta_on_s3 { 1 } else { 2 };
        assert_eq!(readers.len(), readers_expected, "{what}: readers that ran");
        for (reader, read) in &readers {
            assert_eq!(read.columns, ["id", "text"], "{what}: {reader}'s columns");
            assert_eq!(
                read.rows.len(),
                expected.len(),
                "{what}: {reader}'s row count"
            );
            let ids: Vec<i64> = read.rows.iter().map(|(id, _)| *id).collect();
            let expected_ids: Vec<i64> = expected.iter().map(|(id, _)| *id).collect();
            assert_eq!(
                ids, expected_ids,
                "{what}: {reader} sees every key exactly once"
            );
            assert_eq!(read.rows, expected, "{what}: {reader} sees every value");
        }
        assert_eq!(
            self.parquet_files_stored().await as u64,
            files,
            "{what}: the table's storage holds data files the table does not reference"
        );
        let (code, status) = self.status();
        assert_eq!(status["clean"], true, "{what}: status {status}");
        assert_eq!(code, 0, "{what}: status exit code");
        assert_eq!(
            status["orphans"].as_array().map(Vec::len),
            Some(0),
            "{what}"
        );
        assert_eq!(status["key_count"], self.keys, "{what}: checkpointed keys");
    }
}

/// A reader's rows: its column names and the rows in key order.
#[derive(Debug, serde::Deserialize)]
struct ReadRows {
    columns: Vec<String>,
    rows: Vec<(i64, Option<String>)>,
}

/// One Parquet file of `id` and `text`, one row group.
fn write_parquet(path: &std::path::Path, ids: Vec<i64>, text: Vec<String>) {
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids)) as ArrayRef,
            Arc::new(StringArray::from(text)) as ArrayRef,
        ],
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]))
}

async fn crash_matrix(sink: SinkKind, backend: fn() -> Backend) {
    let steps = steps(sink);
    let mut passed = 0;
    for (index, step) in steps.iter().enumerate() {
        let scenario = Scenario::new(sink, backend(), index).await;
        let what = format!("{sink:?} on {}: {}", scenario.backend.name, step.name);
        let (location, faulty) = scenario.backend.faulty();
        faulty.inject_after(step.path, step.fault, step.skip, 1);
        let crashed = scenario.run(location, Duration::from_secs(1)).await;
        assert_eq!(faulty.faults_fired(), 1, "{what}: the fault never fired");
        assert!(crashed.is_err(), "{what}: the killed run reported success");
        let rerun = scenario.rerun().await;
        scenario.collect_and_compact().await;
        let again = scenario.rerun().await;
        assert_eq!(again.rows_written, 0, "{what}: a second rerun wrote rows");
        assert_eq!(again.read.rows_skipped, SOURCE_ROWS, "{what}: keys lost");
        assert!(
            again.committed.commits.is_empty(),
            "{what}: a second rerun committed"
        );
        scenario.verify(&what).await;
        let expected = step.rerun;
        let found = Expected {
            unsealed: rerun.fenced_checkpoints == 1 && rerun.rows_written == DISTINCT_KEYS,
            repaired: rerun.repaired.commits.len(),
            applied_by_repair: rerun.repaired.commits.iter().any(|c| c.applied_now),
            orphans: rerun.gc.files_deleted + rerun.gc.prefixes_deleted,
        };
        assert_eq!(
            found, expected,
            "{what}: the rerun (fenced {}, wrote {} rows) did not do what the step implies",
            rerun.fenced_checkpoints, rerun.rows_written
        );
        if !expected.unsealed {
            assert_eq!(rerun.fenced_checkpoints, 0, "{what}");
            assert_eq!(rerun.rows_written, 0, "{what}");
            assert_eq!(rerun.read.rows_skipped, SOURCE_ROWS, "{what}");
        }
        eprintln!(
            "PASS {what}: rerun wrote {} rows, repaired {} commit(s), fenced {}, deleted {} orphan file(s) + {} dir(s)",
            rerun.rows_written,
            rerun.repaired.commits.len(),
            rerun.fenced_checkpoints,
            rerun.gc.files_deleted,
            rerun.gc.prefixes_deleted
        );
        passed += 1;
    }
    eprintln!("{sink:?}: {passed}/{} scenarios passed", steps.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_local() {
    crash_matrix(SinkKind::Iceberg, Backend::local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_s3() {
    crash_matrix(SinkKind::Iceberg, Backend::s3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_local() {
    crash_matrix(SinkKind::Delta, Backend::local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_s3() {
    crash_matrix(SinkKind::Delta, Backend::s3).await;
}

/// A second run while one holds the lease is refused; a run whose lease was
/// taken over (it stalled past its ttl) cannot seal, and its staged keys and
/// data file are cleaned up by the run that took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_run_is_fenced() {
    for sink in [SinkKind::Delta, SinkKind::Iceberg] {
        let scenario = Scenario::new(sink, Backend::local(), 0).await;
        let store = CheckpointStore::open_at(
            scenario.backend.location(),
            KeySchema::single("id", DataType::Int64).unwrap(),
        )
        .await
        .unwrap();
        let options = LeaseOptions {
            ttl: Duration::from_secs(1),
            holder: "stalled-run".into(),
        };
        let stalled = Lease::acquire(&store, PIPELINE_SCOPE, 1, options)
            .await
            .unwrap();
        let refused = scenario
            .run(scenario.backend.location(), Duration::from_secs(30))
            .await;
        assert!(
            matches!(refused, Err(Error::LeaseHeld { .. })),
            "{refused:?}"
        );

        // The stalled run staged keys of rows it is processing, and a data file.
        let mut writer = store.begin_fenced(stalled.fence()).await.unwrap();
        writer
            .stage_keys(&[Arc::new(Int64Array::from_iter_values(0..50)) as ArrayRef])
            .await
            .unwrap();
        let stale_file = match sink {
            SinkKind::Delta => "stale-part.parquet".to_string(),
            SinkKind::Iceberg => format!("{}/stale/", scenario.table_url),
        };
        if sink == SinkKind::Delta {
            writer.record_in_flight(&stale_file).await.unwrap();
            let dir = scenario.table_url.trim_start_matches("file://");
            std::fs::copy(
                scenario.dir.path().join("source/part-0.parquet"),
                format!("{dir}/{stale_file}"),
            )
            .unwrap();
        } else {
            writer.record_in_flight_prefix(&stale_file).await.unwrap();
            let dir = stale_file.trim_start_matches("file://");
            std::fs::create_dir_all(dir).unwrap();
            std::fs::copy(
                scenario.dir.path().join("source/part-0.parquet"),
                format!("{dir}part-0.parquet"),
            )
            .unwrap();
        }
        // It stops renewing (a long pause) and its lease expires.
        drop(stalled);
        tokio::time::sleep(Duration::from_millis(1200)).await;

        let report = scenario.rerun().await;
        assert_eq!(report.lease.epoch, 2);
        assert_eq!(report.fenced_checkpoints, 1, "{sink:?}");
        assert_eq!(
            report.rows_written, 1100,
            "{sink:?}: the fenced keys were processed again"
        );
        assert_eq!(
            report.gc.files_deleted + report.gc.prefixes_deleted,
            1,
            "{sink:?}"
        );
        let sealed = writer.seal().await;
        assert!(
            matches!(
                sealed,
                Err(Error::Fenced { epoch: 1, ref by, .. }) if by.starts_with("epoch 2 ")
            ),
            "{sink:?}: the fenced writer sealed: {sealed:?}"
        );
        scenario.verify(&format!("{sink:?} fenced run")).await;
    }
}

/// A run over a source with no rows commits nothing and leaves a clean store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_source_commits_nothing() {
    for sink in [SinkKind::Delta, SinkKind::Iceberg] {
        let scenario = Scenario::new(sink, Backend::local(), 0).await;
        let empty = scenario.dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let file = std::fs::File::create(empty.join("none.parquet")).unwrap();
        parquet::arrow::ArrowWriter::try_new(file, schema(), None)
            .unwrap()
            .close()
            .unwrap();
        let source: Arc<dyn Source> = Arc::new(
            ParquetSource::open(
                &format!("file://{}/", empty.display()),
                &ParquetSourceOptions::default(),
            )
            .await
            .unwrap(),
        );
        let report = scenario
            .run_source(
                scenario.backend.location(),
                Duration::from_secs(30),
                source,
                Shard::all(),
            )
            .await
            .unwrap();
        assert_eq!(report.rows_written, 0);
        assert!(report.committed.commits.is_empty(), "{sink:?}");
        let (readers, files) = scenario.read();
        assert!(readers.iter().all(|(_, r)| r.rows.is_empty()), "{sink:?}");
        assert_eq!(files, 0);
        let (code, status) = scenario.status();
        assert_eq!(
            (code, &status["clean"]),
            (0, &serde_json::json!(true)),
            "{status}"
        );
        assert_eq!(
            status["latest_commit"],
            serde_json::Value::Null,
            "{sink:?}: {status}"
        );
    }
}

/// Two shards of the union of two sources run at the same time, each under its
/// own lease, into one table: every key lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_of_a_union_run_at_once() {
    for sink in [SinkKind::Delta, SinkKind::Iceberg] {
        let scenario = Scenario::new(sink, Backend::local(), 0).await;
        scenario.write_source(false);
        // The union of "yesterday's drop" (part-0) and the rest (part-1, part-2).
        let source_dir = scenario.dir.path().join("source");
        let drop_dir = scenario.dir.path().join("drop");
        std::fs::create_dir_all(&drop_dir).unwrap();
        std::fs::rename(
            source_dir.join("part-0.parquet"),
            drop_dir.join("part-0.parquet"),
        )
        .unwrap();
        let open = |dir: std::path::PathBuf| async move {
            Arc::new(
                ParquetSource::open(
                    &format!("file://{}/", dir.display()),
                    &ParquetSourceOptions {
                        batch_size: 100,
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
            ) as Arc<dyn Source>
        };
        let union: Arc<dyn Source> =
            Arc::new(UnionSource::new(vec![open(drop_dir).await, open(source_dir).await]).unwrap());
        let shards = [Shard::new(0, 2).unwrap(), Shard::new(1, 2).unwrap()];
        let ttl = Duration::from_secs(30);
        let (a, b) = tokio::join!(
            scenario.run_source(scenario.backend.location(), ttl, union.clone(), shards[0]),
            scenario.run_source(scenario.backend.location(), ttl, union.clone(), shards[1]),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.rows_written + b.rows_written, 1100, "{sink:?}");
        assert_ne!(a.lease.scope, b.lease.scope);
        scenario.verify(&format!("{sink:?} sharded union")).await;
    }
}

/// Client settings for runs behind the fault proxy: a request time-out shorter
/// than the proxy's stalls (retries keep object_store's defaults: 10 within
/// 3 minutes).
const CLIENT_UNDER_FAULTS: [(&str, &str); 1] = [("timeout", "1s")];

/// S3 answers some requests with 503 SlowDown and stalls some reads past the
/// client's time-out: the object store client retries them, so one run
/// finishes, and every key lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_s3_errors_are_retried() {
    for sink in [SinkKind::Delta, SinkKind::Iceberg] {
        let proxy = FaultProxy::start(&[
            "--unavailable-every",
            "5",
            "--stall-every",
            "13",
            "--stall-seconds",
            "2.5",
        ]);
        let backend = Backend::s3_through(&proxy, &CLIENT_UNDER_FAULTS);
        let mut scenario = Scenario::new(sink, backend, 0).await;
        let report = scenario
            .run(scenario.backend.location(), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{sink:?}: a run under transient faults failed: {e}"));
        assert_eq!(report.rows_written, 1100, "{sink:?}");
        let faults = proxy.faults();
        let count = |kind: &str| faults.iter().filter(|f| f.starts_with(kind)).count();
        assert!(count("503 ") > 0, "{sink:?}: no 503 was injected");
        assert!(count("stall ") > 0, "{sink:?}: no read was stalled");
        eprintln!(
            "{sink:?}: one run under {} 503s and {} stalled reads wrote 1100 rows",
            count("503 "),
            count("stall ")
        );
        scenario.bypass(&proxy);
        scenario
            .verify(&format!("{sink:?} under transient S3 errors"))
            .await;
    }
}

/// S3 applies some writes and the answer never comes back (the client times
/// out), so a run fails wherever that hits a write that is not safe to repeat
/// (creating an object only if it does not exist). Runs are restarted until
/// one finishes, as a scheduler would restart the job: every key lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_s3_responses_are_repaired() {
    for sink in [SinkKind::Delta, SinkKind::Iceberg] {
        let proxy = FaultProxy::start(&["--lose-every", "7", "--stall-seconds", "2"]);
        let backend = Backend::s3_through(&proxy, &CLIENT_UNDER_FAULTS);
        let mut scenario = Scenario::new(sink, backend, 0).await;
        let mut failures = Vec::new();
        let mut finished = None;
        for _ in 0..30 {
            match scenario
                .run(scenario.backend.location(), Duration::from_secs(3))
                .await
            {
                Ok(report) => {
                    finished = Some(report);
                    break;
                }
                Err(Error::LeaseHeld { .. }) => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        let lost = proxy.faults().len();
        assert!(
            finished.is_some(),
            "{sink:?}: no run finished; failures: {failures:#?}"
        );
        assert!(lost > 0, "{sink:?}: no response was lost");
        eprintln!(
            "{sink:?}: {lost} lost responses, {} failed run(s) before one finished",
            failures.len()
        );
        for failure in &failures {
            eprintln!("  failed run: {failure}");
        }
        scenario.bypass(&proxy);
        // A rerun straight to the server finds nothing left to do.
        let again = scenario.rerun().await;
        assert_eq!(again.rows_written, 0, "{sink:?}: a rerun wrote rows");
        scenario
            .verify(&format!("{sink:?} under lost S3 responses"))
            .await;
    }
}

impl Scenario {
    /// The table, as the CLI's `--sink` names it.
    fn sink_arg(&self) -> String {
        match self.sink {
            SinkKind::Iceberg => format!(
                "iceberg+sqlite://{}?warehouse={}#{}.docs",
                self.sqlite_path(),
                self.table_url,
                self.namespace
            ),
            SinkKind::Delta => format!("delta+{}", self.table_url),
        }
    }

    /// `tidemark run` for this scenario's source, store and table, as a
    /// child process.
    fn run_command(&self) -> Command {
        let (store, options) = self.backend.url();
        let sink = self.sink_arg();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        command.args(["run", "--quiet", "--key", "id", "--lease-ttl-secs", "2"]);
        command.args(["--pipeline", PIPELINE, "--store", store, "--sink", &sink]);
        command.arg("--source").arg(self.dir.path().join("source"));
        with_options(command, options)
    }
}

/// `command` with each of `options` as `-o KEY=VALUE`, its output dropped
/// and its standard error piped.
fn with_options(mut command: Command, options: &HashMap<String, String>) -> Command {
    for (key, value) in options {
        command.args(["-o", &format!("{key}={value}")]);
    }
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

/// `tidemark run` is killed with SIGKILL at points spread over a run's
/// length (measured first on a throwaway table), and once as soon as the
/// store holds its first in-flight record (a kill that timing cannot make
/// miss on a loaded machine), then run again as a new process until it
/// finishes: every key lands once and the store is clean. At least one kill
/// must have left unfinished work behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_processes_are_repaired() {
    for sink in [SinkKind::Delta, SinkKind::Iceberg] {
        let timing = Scenario::new(sink, Backend::local(), 0).await;
        let started = std::time::Instant::now();
        let output = timing.run_command().bounded_output().unwrap();
        assert!(
            output.status.success(),
            "{sink:?}: tidemark run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let full = started.elapsed();
        let mut interrupted = 0;
        // `None`: at the first in-flight record.
        let kills = [
            Some(0.2),
            Some(0.3),
            Some(0.4),
            Some(0.5),
            Some(0.6),
            Some(0.75),
            None,
        ];
        for (index, fraction) in kills.into_iter().enumerate() {
            let scenario = Scenario::new(sink, Backend::local(), index + 1).await;
            let what = match fraction {
                Some(fraction) => format!("{sink:?}, killed at {:.0}% of a run", fraction * 100.0),
                None => format!("{sink:?}, killed at its first in-flight record"),
            };
            let mut child = scenario.run_command().spawn().unwrap();
            match fraction {
                Some(fraction) => std::thread::sleep(full.mul_f64(fraction)),
                None => scenario.await_in_flight(&mut child, &what).await,
            }
            let _ = child.kill();
            let exited = child.wait().unwrap();
            // A kill before the run made its store leaves nothing to repair.
            let pending = scenario.try_status().is_ok_and(|(code, _)| code != 0);
            if !exited.success() && pending {
                interrupted += 1;
            } else {
                assert!(fraction.is_some(), "{what}: it left no unfinished work");
            }
            let mut finished = false;
            for _ in 0..40 {
                let output = scenario.run_command().bounded_output().unwrap();
                if output.status.success() {
                    finished = true;
                    break;
                }
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(
                    stderr.contains("held"),
                    "{what}: the rerun failed for another reason than the lease: {stderr}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert!(finished, "{what}: no rerun finished");
            scenario.verify(&what).await;
            eprintln!("PASS {what} (killed while running: {})", !exited.success());
        }
        assert!(
            interrupted > 0,
            "{sink:?}: no kill left unfinished work (a full run took {full:?})"
        );
        eprintln!(
            "{sink:?}: {interrupted}/{} kills left unfinished work; all repaired",
            kills.len()
        );
    }
}

impl Scenario {
    /// Replaces the source with `files` files of `rows` rows each, keys
    /// 0..files*rows in order, one batch per file.
    fn write_files(&mut self, files: i64, rows: i64) {
        let source = self.dir.path().join("source");
        std::fs::remove_dir_all(&source).unwrap();
        std::fs::create_dir_all(&source).unwrap();
        for n in 0..files {
            let ids: Vec<i64> = (n * rows..(n + 1) * rows).collect();
            let text: Vec<String> = ids.iter().map(|i| format!("document {i}")).collect();
            write_parquet(&source.join(format!("part-{n:03}.parquet")), ids, text);
        }
        self.keys = files * rows;
    }

    /// Waits until the store holds an in-flight record of `child`'s run
    /// (polling every millisecond, for at most 60 s), while `child` runs.
    async fn await_in_flight(&self, child: &mut std::process::Child, what: &str) {
        let location = self.backend.location();
        let prefix = location.prefix.clone().join("staging");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let listed: Vec<object_store::ObjectMeta> = location
                .object_store
                .list(Some(&prefix))
                .try_collect()
                .await
                .unwrap_or_default();
            if listed
                .iter()
                .any(|m| m.location.as_ref().contains("/inflight/"))
            {
                return;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{what}: the run ended before its first in-flight record was seen"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: no in-flight record within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Sealed checkpoints in the store, listed straight from the backend.
    async fn sealed_checkpoints(&self) -> usize {
        let location = self.backend.location();
        let prefix = location.prefix.clone().join("sealed");
        let listed: Vec<object_store::ObjectMeta> = location
            .object_store
            .list(Some(&prefix))
            .try_collect()
            .await
            .unwrap();
        listed.len()
    }

    /// Checkpointed keys, as `tidemark status` reports them (0 before the
    /// store exists).
    fn sealed_keys(&self) -> i64 {
        self.try_status()
            .map(|(_, status)| status["key_count"].as_i64().unwrap())
            .unwrap_or(0)
    }

    /// Spawns each command and SIGKILLs them all once the store holds
    /// `target` sealed checkpoints. A command that exits first because an
    /// earlier (killed) run's lease is still live is started again. Returns
    /// whether every command was still running when killed.
    async fn kill_at_sealed(&self, mut commands: Vec<Command>, target: usize, what: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut children: Vec<std::process::Child> =
            commands.iter_mut().map(|c| c.spawn().unwrap()).collect();
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {target} sealed checkpoints never appeared within 120 s"
            );
            if self.sealed_checkpoints().await >= target {
                break;
            }
            for (child, command) in children.iter_mut().zip(commands.iter_mut()) {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
                    }
                    assert!(
                        !status.success() && stderr.contains("held"),
                        "{what}: the run ended before {target} checkpoints were sealed \
                         ({status}): {stderr}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    *child = command.spawn().unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut all_running = true;
        for child in &mut children {
            all_running &= child.try_wait().unwrap().is_none();
            let _ = child.kill();
            child.wait().unwrap();
        }
        all_running
    }

    /// Runs `command` until it succeeds (an earlier run's lease may still be
    /// live), and returns what it processed: (skipped, processed, checkpoints).
    async fn run_to_completion(&self, mut command: Command, what: &str) -> (u64, u64, u64) {
        command.stdout(std::process::Stdio::piped());
        for _ in 0..80 {
            let output = command.bounded_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                let number_before = |word: &str| -> u64 {
                    let at = stdout
                        .find(word)
                        .unwrap_or_else(|| panic!("{what}: no `{word}` in {stdout}"));
                    stdout[..at]
                        .split_whitespace()
                        .last()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                let skipped = number_before(" already processed");
                let processed_at = stdout.find("processed ").unwrap() + "processed ".len();
                let processed = stdout[processed_at..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let checkpoints = stdout
                    .lines()
                    .find_map(|line| line.strip_prefix("sealed "))
                    .and_then(|rest| rest.split_whitespace().next())
                    .unwrap_or_else(|| panic!("{what}: no `sealed N checkpoint(s)` in {stdout}"))
                    .parse()
                    .unwrap();
                return (skipped, processed, checkpoints);
            }
            assert!(
                stderr.contains("held"),
                "{what}: the run failed for another reason than the lease: {stderr}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{what}: no run finished");
    }
}

/// Rows per checkpoint in the durable-progress tests.
const ROWS_PER_CHECKPOINT: u64 = 200;

/// A run whose map fails midway keeps the checkpoints it sealed: the table
/// already holds their rows (a commit follows every seal here), and the
/// rerun skips exactly them. The rows done again (mapped by the failed run,
/// then by the rerun) are fewer than one checkpoint's: `ROWS_PER_CHECKPOINT`
/// plus one source batch, counted by the map and the rerun's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_its_sealed_checkpoints() {
    const FAIL_AT: u64 = 700;
    const BATCH: u64 = 100;
    let mut index = 0;
    for backend in [Backend::local as fn() -> Backend, Backend::s3] {
        for sink in [SinkKind::Iceberg, SinkKind::Delta] {
            index += 1;
            let scenario = Scenario::new(sink, backend(), 200 + index).await;
            scenario.write_source(false);
            let what = format!("{sink:?} on {}", scenario.backend.name);
            let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counter = seen.clone();
            let failing = Transform::new().map(move |batch| {
                let before =
                    counter.fetch_add(batch.num_rows() as u64, std::sync::atomic::Ordering::SeqCst);
                if before >= FAIL_AT {
                    return Err(Error::Map {
                        source: "simulated preemption".into(),
                    });
                }
                Ok(batch)
            });
            let policy = CheckpointPolicy {
                rows: Some(ROWS_PER_CHECKPOINT),
                interval: None,
                per_unit: false,
                commit_interval: Duration::ZERO,
            };
            let failed = scenario
                .run_policy(
                    scenario.backend.location(),
                    Duration::from_secs(30),
                    scenario.source().await.unwrap(),
                    Shard::all(),
                    policy,
                    &failing,
                )
                .await;
            assert!(
                matches!(failed, Err(Error::Map { .. })),
                "{what}: {failed:?}"
            );
            let sealed = scenario.sealed_keys() as u64;
            assert!(
                sealed + ROWS_PER_CHECKPOINT + BATCH > FAIL_AT,
                "{what}: only {sealed} keys sealed before a failure at row {FAIL_AT}"
            );
            // The table saw the sealed rows during the run, before any rerun.
            let (readers, _) = scenario.read();
            for (_, read) in &readers {
                assert_eq!(
                    read.rows.len() as u64,
                    sealed,
                    "{what}: rows in the table mid-run"
                );
                let distinct: std::collections::BTreeSet<i64> =
                    read.rows.iter().map(|(id, _)| *id).collect();
                assert_eq!(distinct.len() as u64, sealed, "{what}: mid-run duplicates");
            }
            let (_, status) = scenario.status();
            assert_eq!(status["rows_committed"], sealed, "{what}: {status}");
            assert!(
                !status["last_successful_commit"].is_null(),
                "{what}: {status}"
            );

            let rerun = scenario.rerun().await;
            assert_eq!(rerun.read.rows_skipped, sealed, "{what}: rerun skipped");
            assert_eq!(
                rerun.read.rows_passed,
                1100 - sealed,
                "{what}: rerun processed"
            );
            // Rows the failed run mapped and the rerun mapped again.
            let mapped = seen.load(std::sync::atomic::Ordering::SeqCst);
            let redone = rerun.read.rows_passed - (1100 - mapped);
            assert!(
                redone < ROWS_PER_CHECKPOINT + BATCH,
                "{what}: the rerun did {redone} rows of the failed run again"
            );
            scenario.verify(&what).await;
            eprintln!("PASS {what}: {sealed} rows kept, {redone} done again");
        }
    }
}

/// `tidemark run` with a checkpoint every 1 000 rows and a commit after every
/// seal is SIGKILLed once 2, then 5 checkpoints are sealed, with two map
/// workers; the final run skips exactly the keys sealed before the last kill
/// and processes the rest. Every key lands once, read by the independent
/// readers. Iceberg and Delta, on local disk and on the S3 server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_keep_their_sealed_checkpoints() {
    let mut index = 0;
    for backend in [Backend::local as fn() -> Backend, Backend::s3] {
        for sink in [SinkKind::Iceberg, SinkKind::Delta] {
            index += 1;
            let mut scenario = Scenario::new(sink, backend(), 300 + index).await;
            scenario.write_files(20, 500);
            let what = format!("{sink:?} on {}", scenario.backend.name);
            let command = || {
                let mut command = scenario.run_command();
                command.args([
                    "--checkpoint-every-rows",
                    "1000",
                    "--commit-every-secs",
                    "0",
                ]);
                command.args(["--map-workers", "2"]);
                command
            };
            let mut kept = 0;
            for target in [2, 5] {
                let running = scenario
                    .kill_at_sealed(vec![command()], target, &what)
                    .await;
                assert!(running, "{what}: the run finished before the kill");
                let sealed = scenario.sealed_keys();
                assert!(
                    sealed > kept,
                    "{what}: no progress kept by the kill at {target}"
                );
                kept = sealed;
            }
            let (skipped, processed, checkpoints) =
                scenario.run_to_completion(command(), &what).await;
            assert_eq!(skipped as i64, kept, "{what}: the rerun skipped");
            assert_eq!(
                processed as i64,
                10_000 - kept,
                "{what}: the rerun processed"
            );
            assert!(checkpoints > 1, "{what}: the rerun sealed one checkpoint");
            scenario.verify(&what).await;
            eprintln!("PASS {what}: {kept} of 10000 rows kept over two kills");
        }
    }
}

/// Two shards run at once with a checkpoint every 500 rows, and both are
/// SIGKILLed once four checkpoints are sealed between them. Rerun, the two
/// shards skip exactly what was sealed and every key lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shards_keep_their_sealed_checkpoints() {
    for (index, sink) in [SinkKind::Iceberg, SinkKind::Delta].into_iter().enumerate() {
        let mut scenario = Scenario::new(sink, Backend::local(), 400 + index).await;
        scenario.write_files(20, 500);
        let what = format!("{sink:?}, two shards");
        let command = |shard: &str| {
            let mut command = scenario.run_command();
            command.args(["--checkpoint-every-rows", "500", "--shard", shard]);
            command.args(["--map-workers", "3"]);
            command
        };
        let running = scenario
            .kill_at_sealed(vec![command("0/2"), command("1/2")], 4, &what)
            .await;
        assert!(running, "{what}: a shard finished before the kill");
        let kept = scenario.sealed_keys();
        assert!(kept > 0, "{what}: nothing kept");
        let mut skipped = 0;
        let mut processed = 0;
        for shard in ["0/2", "1/2"] {
            let (s, p, _) = scenario.run_to_completion(command(shard), &what).await;
            skipped += s as i64;
            processed += p as i64;
        }
        assert_eq!(skipped, kept, "{what}: the reruns skipped");
        assert_eq!(processed, 10_000 - kept, "{what}: the reruns processed");
        scenario.verify(&what).await;
        eprintln!("PASS {what}: {kept} of 10000 rows kept");
    }
}

/// A run on three `tidemark worker` processes, a task (shard) on each,
/// sealing every 500 rows: one worker is SIGKILLed once four checkpoints are
/// sealed, which fails the attempt (datafusion-distributed retries no task).
/// With retries (the default), the run waits for the dead tasks' leases to
/// expire and runs again on the two workers left; without (`--retries 0`) it
/// fails, and a rerun on the two workers does the same. Either way the
/// attempt that finishes (two shards: a new shard layout) skips every key
/// sealed before the kill, commits the checkpoints of both attempts in one
/// table commit, and every key lands once: pyiceberg or deltalake, and
/// DuckDB, read each key once with its value; the table's storage holds no
/// file it does not reference; `status` is clean (the dead task's files were
/// collected). On the S3 server too, where the plan carries the endpoint and
/// not the secret key, which each worker is given itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_run_survives_a_killed_worker() {
    let local = Backend::local as fn() -> Backend;
    let cases = [
        (SinkKind::Iceberg, local, true),
        (SinkKind::Delta, local, true),
        (SinkKind::Iceberg, local, false),
        (SinkKind::Delta, local, false),
        (SinkKind::Iceberg, Backend::s3, true),
    ];
    for (index, (sink, backend, retries)) in cases.into_iter().enumerate() {
        let mut scenario = Scenario::new(sink, backend(), 500 + index).await;
        scenario.write_files(30, 500);
        let what = format!(
            "{sink:?} on {}, three workers, retries: {retries}",
            scenario.backend.name
        );
        let (_, options) = scenario.backend.url();
        let mut workers: Vec<WorkerProcess> =
            (0..3).map(|_| WorkerProcess::start(options)).collect();
        let command = |workers: &[WorkerProcess]| {
            let mut command = scenario.run_command();
            command.args(["--checkpoint-every-rows", "500", "--map-workers", "2"]);
            let urls: Vec<&str> = workers.iter().map(|w| w.url.as_str()).collect();
            command.args(["--workers", &urls.join(",")]);
            if !retries {
                command.args(["--retries", "0"]);
            }
            command.stdout(std::process::Stdio::piped());
            command
        };
        let mut run = command(&workers).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while scenario.sealed_checkpoints().await < 4 {
            assert!(
                run.try_wait().unwrap().is_none(),
                "{what}: the run ended before four checkpoints were sealed"
            );
            assert!(std::time::Instant::now() < deadline, "{what}: no seals");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        workers[1].kill();
        let kept = scenario.sealed_keys();
        assert!(kept > 0, "{what}: nothing kept");
        assert!(
            kept < 15_000,
            "{what}: everything was sealed before the kill"
        );
        let first = run.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&first.stdout).to_string();
        let stderr = String::from_utf8_lossy(&first.stderr).to_string();
        let report = if retries {
            assert!(first.status.success(), "{what}: the retry failed: {stderr}");
            assert!(
                stdout.contains("attempt 1 of the distributed run failed"),
                "{what}: no retry: {stdout}"
            );
            stdout
        } else {
            assert!(
                !first.status.success(),
                "{what}: the run succeeded without a worker"
            );
            assert!(stderr.contains("a rerun skips it"), "{what}: {stderr}");
            workers.remove(1);
            let mut rerun = command(&workers);
            let mut finished = None;
            for _ in 0..80 {
                let output = rerun.bounded_output().unwrap();
                let stderr = String::from_utf8_lossy(&output.stderr).to_string();
                if output.status.success() {
                    finished = Some(String::from_utf8_lossy(&output.stdout).to_string());
                    break;
                }
                assert!(
                    stderr.contains("held"),
                    "{what}: the rerun failed for another reason than a dead task's lease: \
                     {stderr}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            finished.unwrap_or_else(|| panic!("{what}: no rerun finished"))
        };
        let totals = run_totals(&report);
        assert_eq!(totals["tasks"], 2, "{what}: {report}");
        // Tasks of the failed attempt on the workers left may seal more
        // before they stop: the last attempt skips at least what was sealed
        // at the kill.
        assert!(
            totals["rows_skipped"] >= kept as u64,
            "{what}: {kept} sealed at the kill: {report}"
        );
        assert_eq!(
            totals["rows_skipped"] + totals["rows_written"],
            15_000,
            "{what}: every row skipped or written: {report}"
        );
        assert_eq!(
            totals["commits"], 1,
            "{what}: one commit of every task: {report}"
        );
        assert_eq!(
            totals["rows_committed"], 15_000,
            "{what}: the commit carries both attempts' checkpoints: {report}"
        );
        scenario.verify(&what).await;
        eprintln!("PASS {what}: {kept} of 15000 rows sealed before a worker was killed");
    }
}

/// `run --workers ... --explain` prints the distributed plan without running
/// it: the commit on the coordinator, a network coalesce of one task a
/// worker, and each task's run over its shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_run_explains_its_plan() {
    let scenario = Scenario::new(SinkKind::Delta, Backend::local(), 510).await;
    let mut command = scenario.run_command();
    command.args(["--sql", "SELECT id, upper(text) AS text FROM source"]);
    command.args([
        "--workers",
        "http://127.0.0.1:1,http://127.0.0.1:2",
        "--workers",
        "http://127.0.0.1:3",
        "--explain",
    ]);
    let output = command.bounded_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown = String::from_utf8_lossy(&output.stdout)
        .replace(&scenario.sink_arg(), "SINK")
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    let expected = "\
┌───── DistributedExec ── Tasks: t0:[p0]
│ CheckpointedCommitExec: pipeline=crash-matrix, sink=SINK
│   CoalescePartitionsExec
│     [Stage 1] => NetworkCoalesceExec: output_partitions=3, input_tasks=3
└──────────────────────────────────────────────────
  ┌───── Stage 1 ── Tasks: t0:[p0] t1:[p1] t2:[p2]
  │ CheckpointedRunExec: pipeline=crash-matrix, keys=[id], sources=1, sink=SINK, sql=true
  │   PipelineShardsExec: shards=3
  └──────────────────────────────────────────────────";
    assert_eq!(shown.trim_end(), expected);
    assert_eq!(scenario.sealed_checkpoints().await, 0, "nothing ran");
}

/// What a maintenance step leaves in the store before the killed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Nothing: the killed command is the first run.
    Fresh,
    /// A run killed just before its key file: data files written, its
    /// checkpoint unsealed. With `fenced`, a later lease then sealed it
    /// empty (a tombstone), so its data files are orphans waiting for gc.
    Unsealed { fenced: bool },
    /// A run killed after its seal, before its commit intent.
    SealedUncommitted,
    /// A run killed after the table commit, before marking it committed.
    CommittedUnmarked,
    /// History for compaction: a run over the first two source files that
    /// seals and commits a checkpoint per file, a compaction, then a run over
    /// all three files (one more checkpoint).
    History,
}

/// The command a maintenance step kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Killed {
    /// `run`.
    Run,
    /// `run`, whose map waits for the fault to fire (at a lease renewal).
    RunAtRenewal,
    /// Garbage collection.
    Gc,
    /// Compaction.
    Compact,
}

/// A kill in the lease, fence, repair, gc or compaction of a pipeline.
struct MaintenanceStep {
    name: &'static str,
    setup: Setup,
    killed: Killed,
    /// The call that dies: a checkpoint-store call (`op` on a path that
    /// contains `path`), or with `table`, a delete gc makes in the table's
    /// storage.
    op: Op,
    table: bool,
    path: &'static str,
    fault: Fault,
    /// Matching calls let through first.
    skip: usize,
    /// Rows the first run after the kill writes: every distinct key when no
    /// checkpoint holds them yet, none when one does.
    rerun_rows: u64,
}

/// The kill points of every command but a first run's reading and writing
/// (the main matrix has those), in the order each command makes its calls.
fn maintenance_steps(sink: SinkKind) -> Vec<MaintenanceStep> {
    let step = |name, setup, killed, op, path, fault, skip, rerun_rows| MaintenanceStep {
        name,
        setup,
        killed,
        op,
        table: false,
        path,
        fault,
        skip,
        rerun_rows,
    };
    let all = DISTINCT_KEYS;
    let unfenced = Setup::Unsealed { fenced: false };
    let fenced = Setup::Unsealed { fenced: true };
    use Fault::{CrashAfter, CrashBefore};
    use Killed::{Compact, Gc, Run, RunAtRenewal};
    use Setup::{CommittedUnmarked, Fresh, History, SealedUncommitted};
    let mut steps = vec![
        step(
            "lease: after starting the shard layout",
            Fresh,
            Run,
            Op::Put,
            "layouts/",
            CrashAfter,
            0,
            all,
        ),
        step(
            "lease: before claiming an epoch",
            Fresh,
            Run,
            Op::Put,
            "/epochs/",
            CrashBefore,
            0,
            all,
        ),
        step(
            "lease: after claiming an epoch",
            Fresh,
            Run,
            Op::Put,
            "/epochs/",
            CrashAfter,
            0,
            all,
        ),
        step(
            "lease: after the first heartbeat",
            Fresh,
            Run,
            Op::Put,
            "/heartbeats/",
            CrashAfter,
            0,
            all,
        ),
        step(
            "lease: at a renewal",
            Fresh,
            RunAtRenewal,
            Op::Put,
            "/heartbeats/",
            CrashBefore,
            1,
            all,
        ),
        step(
            "fence: before the dead run's tombstone",
            unfenced,
            Run,
            Op::Put,
            "sealed/",
            CrashBefore,
            0,
            all,
        ),
        step(
            "fence: after the dead run's tombstone",
            unfenced,
            Run,
            Op::Put,
            "sealed/",
            CrashAfter,
            0,
            all,
        ),
        step(
            "repair: after its commit intent, before the catalog commit",
            SealedUncommitted,
            Run,
            Op::Put,
            "commits/",
            CrashAfter,
            0,
            0,
        ),
        step(
            "repair: after its catalog commit, before mark-committed",
            SealedUncommitted,
            Run,
            Op::Put,
            "committed/",
            CrashBefore,
            0,
            0,
        ),
        step(
            "repair: before marking a commit found in the table",
            CommittedUnmarked,
            Run,
            Op::Put,
            "committed/",
            CrashBefore,
            0,
            0,
        ),
        step(
            "gc: before recording the orphans collected",
            fenced,
            Gc,
            Op::Put,
            "collected/",
            CrashBefore,
            0,
            all,
        ),
        step(
            "compact: before the index key file",
            History,
            Compact,
            Op::Put,
            "index-keys/",
            CrashBefore,
            0,
            0,
        ),
        step(
            "compact: after the index key file",
            History,
            Compact,
            Op::Put,
            "index-keys/",
            CrashAfter,
            0,
            0,
        ),
        step(
            "compact: before publishing the index",
            History,
            Compact,
            Op::Put,
            "index/",
            CrashBefore,
            0,
            0,
        ),
        step(
            "compact: after publishing the index, before any delete",
            History,
            Compact,
            Op::Put,
            "index/",
            CrashAfter,
            0,
            0,
        ),
        step(
            "compact: at the first delete",
            History,
            Compact,
            Op::Delete,
            "",
            CrashBefore,
            0,
            0,
        ),
        step(
            "compact: after four deletes",
            History,
            Compact,
            Op::Delete,
            "",
            CrashAfter,
            3,
            0,
        ),
        step(
            "compact: at pruning a commit intent",
            History,
            Compact,
            Op::Delete,
            "commits/",
            CrashBefore,
            0,
            0,
        ),
    ];
    let mut table_delete = |name, fault, skip| {
        steps.push(MaintenanceStep {
            table: true,
            ..step(name, fenced, Gc, Op::Delete, "", fault, skip, all)
        })
    };
    table_delete("gc: before the first orphan delete", CrashBefore, 0);
    table_delete("gc: after the first orphan delete", CrashAfter, 0);
    if sink == SinkKind::Delta {
        // Delta's orphans are files (11 here); Iceberg's are one directory.
        table_delete("gc: after five of the orphan deletes", CrashAfter, 4);
    }
    steps
}

/// The table's storage as gc sees it, dying at a chosen delete.
struct DyingFiles {
    inner: Box<dyn TableFiles>,
    fault: Fault,
    skip: std::sync::atomic::AtomicUsize,
    fired: std::sync::atomic::AtomicBool,
}

impl DyingFiles {
    async fn call(
        &self,
        what: &str,
        delete: futures::future::BoxFuture<'_, tidemark::Result<()>>,
    ) -> tidemark::Result<()> {
        use std::sync::atomic::Ordering;
        let killed = || Error::Sink {
            table: "the table's storage".into(),
            source: format!("killed at deleting {what}").into(),
        };
        if self.fired.load(Ordering::SeqCst) {
            return Err(killed());
        }
        let letting_through = self
            .skip
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if letting_through {
            return delete.await;
        }
        self.fired.store(true, Ordering::SeqCst);
        if self.fault == Fault::CrashAfter {
            delete.await?;
        }
        Err(killed())
    }
}

impl TableFiles for DyingFiles {
    fn delete_file<'a>(
        &'a self,
        path: &'a str,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(self.call(path, self.inner.delete_file(path)))
    }

    fn delete_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(self.call(prefix, self.inner.delete_prefix(prefix)))
    }
}

impl Scenario {
    /// The table's storage, as gc deletes from it.
    async fn table_files(&self) -> Box<dyn TableFiles> {
        match self.sink {
            SinkKind::Iceberg => Box::new(
                IcebergSink::open(self.catalog().await, self.ident())
                    .await
                    .unwrap(),
            ),
            SinkKind::Delta => Box::new(
                DeltaSink::open(self.table_url.parse().unwrap(), self.delta_options())
                    .await
                    .unwrap(),
            ),
        }
    }

    /// gc, compaction and gc again, as a user's maintenance would run them.
    async fn collect_and_compact(&self) {
        let store = self.store_at(self.backend.location()).await;
        let files = self.table_files().await;
        collect_garbage(&store, files.as_ref()).await.unwrap();
        store.compact(&CompactionOptions::default()).await.unwrap();
        collect_garbage(&store, files.as_ref()).await.unwrap();
    }

    /// The checkpoint store through `location`.
    async fn store_at(&self, location: StoreLocation) -> CheckpointStore {
        CheckpointStore::open_at(location, KeySchema::single("id", DataType::Int64).unwrap())
            .await
            .unwrap()
    }

    /// After a kill: a rerun that writes `rerun_rows` rows, gc, compact and
    /// gc, a further run that writes nothing, and every check of
    /// [`Scenario::verify`]. Returns the rerun's report.
    async fn recover(&self, what: &str, rerun_rows: u64) -> RunReport {
        let rerun = self.rerun().await;
        assert_eq!(
            rerun.rows_written, rerun_rows,
            "{what}: rows the rerun wrote"
        );
        self.collect_and_compact().await;
        let again = self.rerun().await;
        assert_eq!(
            again.rows_written, 0,
            "{what}: a run after compaction wrote rows"
        );
        assert_eq!(again.read.rows_skipped, SOURCE_ROWS, "{what}: keys lost");
        self.verify(what).await;
        eprintln!("PASS {what}: the rerun wrote {} rows", rerun.rows_written);
        rerun
    }

    /// Leaves the store as `setup` says.
    async fn prepare(&self, setup: Setup) {
        match setup {
            Setup::Fresh => {}
            Setup::Unsealed { fenced } => {
                self.killed_run("/keys/", Fault::CrashBefore).await;
                if fenced {
                    self.fence().await;
                }
            }
            Setup::SealedUncommitted => self.killed_run("commits/", Fault::CrashBefore).await,
            Setup::CommittedUnmarked => self.killed_run("committed/", Fault::CrashBefore).await,
            Setup::History => self.history().await,
        }
    }

    /// One run killed at `path` (`fault`), as a setup.
    async fn killed_run(&self, path: &str, fault: Fault) {
        let (location, faulty) = self.backend.faulty();
        faulty.inject_after(path, fault, 0, 1);
        let result = self.run(location, Duration::from_secs(1)).await;
        assert!(
            result.is_err() && faulty.faults_fired() == 1,
            "setup: killed at {path}"
        );
        self.await_lease_expiry().await;
    }

    /// Waits until the dead run's lease has expired, so the next command is
    /// not refused for it.
    async fn await_lease_expiry(&self) {
        let store = self.store_at(self.backend.location()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Some(status) = store.lease_status(PIPELINE_SCOPE).await.unwrap() {
            if !status.is_live(chrono::Utc::now()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "setup: the dead run's lease is live after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes and releases the pipeline's lease once the dead run's has
    /// expired: the unsealed checkpoints of earlier epochs are sealed empty.
    async fn fence(&self) {
        let store = self.store_at(self.backend.location()).await;
        let options = LeaseOptions {
            ttl: Duration::from_secs(30),
            ..Default::default()
        };
        // `killed_run` waited for the dead run's lease to expire.
        let lease = Lease::acquire(&store, PIPELINE_SCOPE, 1, options)
            .await
            .unwrap_or_else(|e| panic!("setup: fencing: {e}"));
        assert_eq!(lease.fenced_checkpoints(), 1, "setup: the fence");
        lease.release().await.unwrap();
    }

    /// Runs (to completion) that seal and commit a checkpoint per source
    /// file: over the first two files, then over all three, with a
    /// compaction between.
    async fn history(&self) {
        let per_file = CheckpointPolicy {
            per_unit: true,
            commit_interval: Duration::ZERO,
            ..Default::default()
        };
        let source = self.dir.path().join("source");
        let held = self.dir.path().join("held");
        std::fs::create_dir_all(&held).unwrap();
        std::fs::rename(source.join("part-2.parquet"), held.join("part-2.parquet")).unwrap();
        let first = self
            .run_policy(
                self.backend.location(),
                Duration::from_secs(30),
                self.source().await.unwrap(),
                Shard::all(),
                per_file.clone(),
                &Transform::new(),
            )
            .await
            .unwrap();
        assert_eq!(first.checkpoints.len(), 2, "setup: a checkpoint per file");
        let store = self.store_at(self.backend.location()).await;
        store.compact(&CompactionOptions::default()).await.unwrap();
        std::fs::rename(held.join("part-2.parquet"), source.join("part-2.parquet")).unwrap();
        let second = self
            .run_policy(
                self.backend.location(),
                Duration::from_secs(30),
                self.source().await.unwrap(),
                Shard::all(),
                per_file,
                &Transform::new(),
            )
            .await
            .unwrap();
        assert_eq!(second.rows_written, 300, "setup: the third file's new keys");
    }
}

/// Kills every command but a first run's reading and writing at each of its
/// calls: lease acquire and renewal, the fence of a dead run, the repair of
/// its commit, gc (in the store and in the middle of its deletes from the
/// table's storage) and compaction. After each kill: a rerun, gc, compact
/// and gc, and a further run that finds nothing to do. The independent
/// readers see every source row once, with its values, no referenced file
/// is missing, no orphan is left and `tidemark status` reports clean.
async fn maintenance_matrix(sink: SinkKind, backend: fn() -> Backend) {
    let steps = maintenance_steps(sink);
    for (index, step) in steps.iter().enumerate() {
        let scenario = Scenario::new(sink, backend(), 100 + index).await;
        let what = format!("{sink:?} on {}: {}", scenario.backend.name, step.name);
        scenario.prepare(step.setup).await;
        let (location, faulty) = scenario.backend.faulty();
        if !step.table {
            faulty.inject_on(step.op, step.path, step.fault, step.skip, 1);
        }
        let result: Result<(), String> = match step.killed {
            Killed::Run => scenario
                .run(location, Duration::from_secs(1))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Killed::RunAtRenewal => {
                // The map holds the first batch until the renewal died, so the
                // kill lands at a renewal, not at a later call of the run.
                let watched = faulty.clone();
                let wait = Transform::new().map(move |batch| {
                    let deadline = std::time::Instant::now() + Duration::from_secs(20);
                    while watched.faults_fired() == 0 && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(batch)
                });
                scenario
                    .run_policy(
                        location,
                        Duration::from_secs(1),
                        scenario.source().await.unwrap(),
                        Shard::all(),
                        CheckpointPolicy::default(),
                        &wait,
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Killed::Gc => {
                let store = scenario.store_at(location).await;
                let files = DyingFiles {
                    inner: scenario.table_files().await,
                    fault: step.fault,
                    skip: step.skip.into(),
                    fired: false.into(),
                };
                let result = if step.table {
                    collect_garbage(&store, &files).await
                } else {
                    collect_garbage(&store, files.inner.as_ref()).await
                };
                if step.table {
                    assert!(files.fired.into_inner(), "{what}: the delete never came");
                }
                result.map(drop).map_err(|e| e.to_string())
            }
            Killed::Compact => scenario
                .store_at(location)
                .await
                .compact(&CompactionOptions::default())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        if !step.table {
            assert_eq!(
                faulty.faults_fired(),
                1,
                "{what}: the fault never fired ({result:?})"
            );
        }
        assert!(
            result.is_err(),
            "{what}: the killed command reported success"
        );

        scenario.recover(&what, step.rerun_rows).await;
    }
    eprintln!("{sink:?}: {} maintenance kills passed", steps.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_maintenance_local() {
    maintenance_matrix(SinkKind::Iceberg, Backend::local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_maintenance_s3() {
    maintenance_matrix(SinkKind::Iceberg, Backend::s3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_maintenance_local() {
    maintenance_matrix(SinkKind::Delta, Backend::local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_maintenance_s3() {
    maintenance_matrix(SinkKind::Delta, Backend::s3).await;
}

/// A `tidemark gc` or `tidemark compact` process SIGKILLed while the S3
/// proxy holds one of its requests.
struct ProcessKill {
    name: &'static str,
    setup: Setup,
    killed: Killed,
    /// The held request: its method, and where it goes: the table's storage
    /// (`table`) or the store, below `path` there.
    method: &'static str,
    table: bool,
    path: &'static str,
    /// Matching requests let through first.
    skip: usize,
    /// Whether the server applied the held request before the kill.
    applied: bool,
    /// Rows the first run after the kill writes.
    rerun_rows: u64,
}

/// Kills of real gc and compaction processes, each at a call where dying
/// leaves the store and the table's storage half changed.
fn process_kills(sink: SinkKind) -> Vec<ProcessKill> {
    let kill = |name, setup, killed, method, table, path, skip, applied, rerun_rows| ProcessKill {
        name,
        setup,
        killed,
        method,
        table,
        path,
        skip,
        applied,
        rerun_rows,
    };
    let fenced = Setup::Unsealed { fenced: true };
    let all = DISTINCT_KEYS;
    use Killed::{Compact, Gc};
    use Setup::{History, SealedUncommitted};
    let mut kills = vec![
        kill(
            "gc: after its first orphan delete",
            fenced,
            Gc,
            "DELETE",
            true,
            "",
            0,
            true,
            all,
        ),
        kill(
            "gc: before recording the orphans collected",
            fenced,
            Gc,
            "PUT",
            false,
            "collected/",
            0,
            false,
            all,
        ),
        kill(
            "gc: after its repair's table commit, before mark-committed",
            SealedUncommitted,
            Gc,
            "PUT",
            false,
            "committed/",
            0,
            false,
            0,
        ),
        kill(
            "compact: after the index key file",
            History,
            Compact,
            "PUT",
            false,
            "index-keys/",
            0,
            true,
            0,
        ),
        kill(
            "compact: after publishing the index",
            History,
            Compact,
            "PUT",
            false,
            "index/",
            0,
            true,
            0,
        ),
        kill(
            "compact: after four deletes",
            History,
            Compact,
            "DELETE",
            false,
            "",
            3,
            true,
            0,
        ),
    ];
    if sink == SinkKind::Delta {
        // Delta's orphans are files (11 here); Iceberg's are one directory.
        kills.push(kill(
            "gc: holding the fifth orphan delete",
            fenced,
            Gc,
            "DELETE",
            true,
            "",
            4,
            false,
            all,
        ));
    }
    kills
}

/// `tidemark gc` and `tidemark compact` as real processes on S3, each
/// killed with SIGKILL while the proxy in front of the S3 server holds the
/// request of a chosen step: no destructor, no release of the lease, no
/// error path runs. After each kill: a rerun, gc, compact and gc, a further
/// run that finds nothing to do, and every check of [`Scenario::verify`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_maintenance_processes_are_repaired() {
    for sink in [SinkKind::Delta, SinkKind::Iceberg] {
        let kills = process_kills(sink);
        for (index, kill) in kills.iter().enumerate() {
            let scenario = Scenario::new(sink, Backend::s3(), 200 + index).await;
            let what = format!("{sink:?} on S3, SIGKILL {}", kill.name);
            scenario.prepare(kill.setup).await;
            let below = if kill.table {
                scenario.table_url.as_str()
            } else {
                scenario.backend.url().0
            };
            // The object key below the bucket: what a request's path and a
            // bulk delete's body both name.
            let key = below.trim_start_matches("s3://").split_once('/').unwrap().1;
            let part = format!("{key}/{}", kill.path);
            let when = if kill.applied { "after" } else { "before" };
            let skip = kill.skip.to_string();
            let proxy = FaultProxy::start(&["--hold", kill.method, &part, &skip, when]);
            let mut child = scenario
                .maintenance_command(kill.killed, &proxy)
                .spawn()
                .unwrap();
            let held = proxy.await_held(&mut child, &what);
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert!(!status.success(), "{what}: the command finished");
            eprintln!("{what}: killed at `{held}`");
            let rerun = scenario.recover(&what, kill.rerun_rows).await;
            if kill.path == "committed/" {
                // The killed gc's table commit landed: the rerun only marks it.
                let repaired = &rerun.repaired.commits;
                assert_eq!(repaired.len(), 1, "{what}: commits the rerun repaired");
                assert!(!repaired[0].applied_now, "{what}: appended again");
            }
        }
        eprintln!(
            "{sink:?}: {} killed maintenance processes repaired",
            kills.len()
        );
    }
}

impl Scenario {
    /// `tidemark gc` (lease time-to-live 2 s) or `tidemark compact` on this
    /// scenario's store, reaching S3 through `proxy`.
    fn maintenance_command(&self, killed: Killed, proxy: &FaultProxy) -> Command {
        let (store, options) = self.backend.url();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        match killed {
            Killed::Gc => command
                .args(["gc", "--pipeline", PIPELINE, "--lease-ttl-secs", "2"])
                .args(["--sink", &self.sink_arg()]),
            Killed::Compact => command.arg("compact"),
            Killed::Run | Killed::RunAtRenewal => panic!("not a maintenance command"),
        };
        command.args(["--store", store]);
        with_options(command, &proxy.through(options))
    }
}

/// Other tools' maintenance between a crash after the table commit and its
/// recovery. A first run commits the first two source files; a second run
/// commits the third and dies before it marks its commit in the store.
/// Then, for Delta, deltalake-py compacts the table (`optimize`: the files
/// of both commits become one), vacuums the replaced files and writes a log
/// checkpoint; for Iceberg, pyiceberg expires every snapshot but the current
/// one (two to one). The rerun still finds the commit by the table's marker
/// and marks it without appending again; the readers see every key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_between_a_crash_and_its_recovery() {
    for sink in [SinkKind::Delta, SinkKind::Iceberg] {
        let scenario = Scenario::new(sink, Backend::local(), 300).await;
        let what = format!("{sink:?}: maintenance between a crash and its recovery");
        let source = scenario.dir.path().join("source");
        let held = scenario.dir.path().join("held");
        std::fs::create_dir_all(&held).unwrap();
        std::fs::rename(source.join("part-2.parquet"), held.join("part-2.parquet")).unwrap();
        let first = scenario.rerun().await;
        assert_eq!(first.rows_written, 800, "{what}: the first two files");
        std::fs::rename(held.join("part-2.parquet"), source.join("part-2.parquet")).unwrap();
        scenario.prepare(Setup::CommittedUnmarked).await;
        scenario.other_tools_maintenance(&what);
        let rerun = scenario.rerun().await;
        assert_eq!(rerun.rows_written, 0, "{what}: rows the rerun wrote");
        let repaired = &rerun.repaired.commits;
        assert_eq!(repaired.len(), 1, "{what}: commits the rerun repaired");
        assert!(
            !repaired[0].applied_now,
            "{what}: the repair appended the commit again"
        );
        scenario.collect_and_compact().await;
        let again = scenario.rerun().await;
        assert_eq!(again.rows_written, 0, "{what}: a later run wrote rows");
        scenario.verify(&what).await;
        eprintln!("PASS {what}");
    }
}

impl Scenario {
    /// Maintenance by the format's Python library: Delta optimize, vacuum
    /// (retention 0) and a log checkpoint; Iceberg expiry of every snapshot
    /// but the current one.
    fn other_tools_maintenance(&self, what: &str) {
        let script = match self.sink {
            SinkKind::Delta => {
                r#"
import sys
from deltalake import DeltaTable
table = DeltaTable(sys.argv[1])
assert len(table.file_uris()) > 1, table.file_uris()
table.optimize.compact()
table = DeltaTable(sys.argv[1])
table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
DeltaTable(sys.argv[1]).create_checkpoint()
assert len(DeltaTable(sys.argv[1]).file_uris()) == 1
"#
            }
            SinkKind::Iceberg => {
                r#"
import sys, datetime
from pyiceberg.catalog.sql import SqlCatalog
catalog = SqlCatalog("default", uri="sqlite:///" + sys.argv[2], warehouse=sys.argv[1])
table = catalog.load_table(sys.argv[3])
assert len(table.snapshots()) == 2, table.snapshots()
table.maintenance.expire_snapshots().older_than(datetime.datetime.now(datetime.timezone.utc)).commit()
assert len(catalog.load_table(sys.argv[3]).snapshots()) == 1
"#
            }
        };
        let output = Command::new("python3")
            .args(["-c", script, &self.table_url, &self.sqlite_path()])
            .arg(format!("{}.docs", self.namespace))
            .bounded_output()
            .unwrap();
        assert!(
            output.status.success(),
            "{what}: the maintenance failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
