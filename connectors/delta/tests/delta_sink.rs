//! The Delta sink against real tables on the local file system and on a local
//! S3-compatible server: appends land once, and lost responses, crashes between
//! the protocol's steps and concurrent committers still leave every key exactly
//! once, as the deltalake Python package and DuckDB's delta extension read it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::ObjectStore;
use support::{assert_rows, region, Backend, BoundedOutput, Fault, FaultyStore};
use tidemark::commit::{CommitSink as _, Committer};
use tidemark::store::{CheckpointId, CheckpointStore, KeySchema};
use tidemark_delta::{DeltaSink, DeltaWriterOptions};
use url::Url;

const PIPELINE: &str = "daily-embeddings";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("payload", DataType::Utf8, true),
    ]))
}

fn batch(ids: &[i64]) -> RecordBatch {
    let regions: Vec<Option<&str>> = ids.iter().map(|i| region(*i)).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(regions)),
            Arc::new(StringArray::from(
                ids.iter()
                    .map(|i| format!("payload of {i}"))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// A store and a table URL on one backend.
struct Fixture {
    backend: Backend,
    url: Url,
    storage: HashMap<String, String>,
}

impl Fixture {
    async fn new(backend: Backend) -> Self {
        let (url, storage) = backend.data_url(&format!("table-{}", uuid::Uuid::new_v4()));
        let fixture = Fixture {
            backend,
            url: Url::parse(&url).unwrap(),
            storage,
        };
        DeltaSink::create_if_missing(
            fixture.url.clone(),
            fixture.storage.clone(),
            &schema(),
            &["region"],
        )
        .await
        .unwrap();
        fixture
    }

    /// Sets one table property, as another writer would (a Delta version).
    async fn set_property(&self, key: &str, value: &str) {
        self.sink()
            .await
            .table()
            .await
            .set_tbl_properties()
            .with_properties(HashMap::from([(key.to_string(), value.to_string())]))
            .await
            .unwrap();
    }

    async fn store(&self) -> CheckpointStore {
        CheckpointStore::open_at(
            self.backend.location(),
            KeySchema::single("id", DataType::Int64).unwrap(),
        )
        .await
        .unwrap()
    }

    async fn sink(&self) -> DeltaSink {
        DeltaSink::open(self.url.clone(), self.storage.clone())
            .await
            .unwrap()
    }

    /// The table seen through a fault-injecting object store.
    async fn faulty_sink(&self) -> (DeltaSink, Arc<FaultyStore>) {
        let (root, _) = object_store::parse_url_opts(&self.url, &self.storage).unwrap();
        let faulty = Arc::new(FaultyStore::new(Arc::from(root)));
        let sink =
            DeltaSink::open_with_store(self.url.clone(), faulty.clone() as Arc<dyn ObjectStore>)
                .await
                .unwrap();
        (sink, faulty)
    }

    /// What the independent readers see.
    fn read(&self) -> Readout {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/delta_read.py");
        let storage: HashMap<String, String> = self
            .storage
            .iter()
            .map(|(k, v)| (python_option(k), v.clone()))
            .collect();
        let output = Command::new("python3")
            .arg(script)
            .arg(self.url.as_str())
            .arg(serde_json::to_string(&storage).unwrap())
            .arg(PIPELINE)
            .bounded_output()
            .expect("run python3 (bash .ci/run installs deltalake and duckdb)");
        assert!(
            output.status.success(),
            "reading the table failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let ids = |key: &str| {
            value.get(key).map(|v| {
                let mut ids: Vec<i64> = serde_json::from_value(v.clone()).unwrap();
                ids.sort_unstable();
                ids
            })
        };
        Readout {
            version: value["version"].as_i64().unwrap(),
            txn: value["txn"].as_i64(),
            deltalake_ids: ids("deltalake_ids").unwrap(),
            duckdb_ids: ids("duckdb_ids"),
            rows: ["deltalake_rows", "duckdb_rows"]
                .into_iter()
                .filter_map(|key| Some((key, value.get(key)?.clone())))
                .collect(),
        }
    }
}

/// The deltalake package's names of the S3 options used here.
fn python_option(key: &str) -> String {
    match key {
        "aws_endpoint" => "AWS_ENDPOINT_URL".into(),
        "aws_allow_http" => "AWS_ALLOW_HTTP".into(),
        other => other.to_uppercase(),
    }
}

struct Readout {
    version: i64,
    txn: Option<i64>,
    deltalake_ids: Vec<i64>,
    duckdb_ids: Option<Vec<i64>>,
    /// Each reader's rows, all columns, as it printed them.
    rows: Vec<(&'static str, serde_json::Value)>,
}

impl Readout {
    /// Both readers see exactly `expected`, each key once, and every value
    /// of its row (the region comes back from the partition values).
    fn assert_each_once(&self, expected: impl IntoIterator<Item = i64>) {
        let expected: Vec<i64> = expected.into_iter().collect();
        assert_eq!(self.deltalake_ids, expected, "deltalake reader");
        if let Some(duckdb) = &self.duckdb_ids {
            assert_eq!(duckdb, &expected, "duckdb reader");
        }
        assert_rows(&self.rows, &expected);
    }
}

/// One shard of work: stage the keys, write the rows, seal.
async fn process(store: &CheckpointStore, sink: &DeltaSink, ids: &[i64]) -> CheckpointId {
    let mut checkpoint = store.begin().await.unwrap();
    checkpoint
        .stage_keys(&[Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef])
        .await
        .unwrap();
    let options = DeltaWriterOptions {
        target_file_size_bytes: 2_048,
        ..Default::default()
    };
    let mut writer = sink.writer(options).await.unwrap();
    for chunk in ids.chunks(100) {
        writer.write(&batch(chunk), &mut checkpoint).await.unwrap();
    }
    writer.finish(&mut checkpoint).await.unwrap();
    checkpoint.seal().await.unwrap().checkpoint_id
}

fn range(from: i64, to: i64) -> Vec<i64> {
    (from..to).collect()
}

fn backends() -> [Backend; 2] {
    [Backend::local(), Backend::s3()]
}

#[tokio::test]
async fn appends_land_once_and_repeated_commits_change_nothing() {
    for backend in backends() {
        let name = backend.name;
        let fixture = Fixture::new(backend).await;
        let store = fixture.store().await;
        let sink = fixture.sink().await;
        process(&store, &sink, &range(0, 500)).await;
        process(&store, &sink, &range(500, 1_000)).await;
        let committer = Committer::new(store.clone(), sink, PIPELINE);

        let report = committer.commit_pending().await.unwrap();
        assert_eq!(report.commits.len(), 1, "{name}: one table commit");
        assert_eq!(report.commits[0].checkpoints.len(), 2);
        assert!(
            report.commits[0].files > 2,
            "{name}: files roll at the target size"
        );
        assert_eq!(report.rows_applied(), 1_000);
        assert_eq!(
            report.commits[0].table_version,
            serde_json::json!({ "version": 1 }),
            "{name}: the version the commit made"
        );
        assert!(committer.commit_pending().await.unwrap().commits.is_empty());
        assert!(store.load().await.unwrap().pending_commit().is_empty());
        let seen = fixture.read();
        assert_eq!((seen.version, seen.txn), (1, Some(1)), "{name}");
        seen.assert_each_once(range(0, 1_000));

        process(&store, &sink_of(&fixture).await, &range(1_000, 1_200)).await;
        let report = committer.commit_pending().await.unwrap();
        assert_eq!(report.commits[0].sequence, 2);
        let seen = fixture.read();
        assert_eq!((seen.version, seen.txn), (2, Some(2)), "{name}");
        seen.assert_each_once(range(0, 1_200));
    }
}

async fn sink_of(fixture: &Fixture) -> DeltaSink {
    fixture.sink().await
}

#[tokio::test]
async fn a_lost_commit_response_is_recognised_not_applied_again() {
    for backend in backends() {
        let name = backend.name;
        let fixture = Fixture::new(backend).await;
        let store = fixture.store().await;
        process(&store, &fixture.sink().await, &range(0, 300)).await;
        let (sink, faulty) = fixture.faulty_sink().await;
        // The log entry of version 1 is written, but the committer hears an error.
        faulty.inject(
            "_delta_log/00000000000000000001.json",
            Fault::LoseResponse,
            1,
        );

        let report = Committer::new(store.clone(), sink, PIPELINE)
            .commit_pending()
            .await
            .unwrap();
        assert!(
            !report.commits[0].applied_now,
            "{name}: recognised by the marker"
        );
        assert_eq!(
            report.commits[0].table_version,
            serde_json::json!({ "version": 1 }),
            "{name}: the version the marker was found in"
        );
        let seen = fixture.read();
        assert_eq!(
            seen.version, 1,
            "{name}: no second version with the same files"
        );
        seen.assert_each_once(range(0, 300));
    }
}

#[tokio::test]
async fn a_crash_at_each_commit_step_is_repaired_by_the_next_run() {
    // (step, which side dies, at which put, how, commits the repair makes,
    // whether the repair appends the files itself).
    let steps = [
        (
            "before the commit intent",
            "store",
            "commits/",
            Fault::CrashBefore,
            1,
            true,
        ),
        (
            "after the commit intent",
            "store",
            "commits/",
            Fault::CrashAfter,
            1,
            true,
        ),
        (
            "before the table commit",
            "table",
            "_delta_log/0",
            Fault::CrashBefore,
            1,
            true,
        ),
        (
            "after the table commit",
            "table",
            "_delta_log/0",
            Fault::CrashAfter,
            1,
            false,
        ),
        (
            "before mark-committed",
            "store",
            "committed/",
            Fault::CrashBefore,
            1,
            false,
        ),
        (
            "after mark-committed",
            "store",
            "committed/",
            Fault::CrashAfter,
            0,
            false,
        ),
    ];
    for backend in backends() {
        let name = backend.name;
        let fixture = Fixture::new(backend).await;
        let mut expected = Vec::new();
        for (n, (step, side, path, fault, commits, applied)) in steps.iter().enumerate() {
            let ids = range(n as i64 * 100, n as i64 * 100 + 100);
            expected.extend(&ids);
            let store = fixture.store().await;
            process(&store, &fixture.sink().await, &ids).await;

            let (location, faulty_store) = fixture.backend.faulty();
            let crashed_store = CheckpointStore::open_existing(location).await.unwrap();
            let (crashed_sink, faulty_table) = fixture.faulty_sink().await;
            let faulty = if *side == "table" {
                faulty_table
            } else {
                faulty_store
            };
            faulty.inject(path, *fault, 1);
            let crashed = Committer::new(crashed_store, crashed_sink, PIPELINE)
                .commit_pending()
                .await;
            assert!(crashed.is_err(), "{name}, {step}: the run must fail");

            let report = Committer::new(store.clone(), fixture.sink().await, PIPELINE)
                .commit_pending()
                .await
                .unwrap_or_else(|e| panic!("{name}, {step}: repair failed: {e}"));
            assert_eq!(report.commits.len(), *commits, "{name}, {step}");
            if let Some(commit) = report.commits.first() {
                assert_eq!(commit.applied_now, *applied, "{name}, {step}");
            }
            assert!(store.load().await.unwrap().pending_commit().is_empty());
            let seen = fixture.read();
            assert_eq!(seen.txn, Some(n as i64 + 1), "{name}, {step}");
            expected.sort_unstable();
            seen.assert_each_once(expected.clone());
        }
    }
}

#[tokio::test]
async fn concurrent_writers_and_committers_land_every_key_once() {
    for backend in backends() {
        let name = backend.name;
        let fixture = Arc::new(Fixture::new(backend).await);
        // Two pipelines append to the same table, each with two committers racing.
        let mut tasks = Vec::new();
        for pipeline in 0..2i64 {
            let (url, options) = fixture.backend.data_url(&format!("store-{pipeline}"));
            let store = CheckpointStore::open(
                &url,
                &options,
                KeySchema::single("id", DataType::Int64).unwrap(),
            )
            .await
            .unwrap();
            for shard in 0..2 {
                let start = pipeline * 1_000 + shard * 200;
                process(&store, &fixture.sink().await, &range(start, start + 200)).await;
            }
            for _ in 0..2 {
                let store = store.clone();
                let fixture = fixture.clone();
                tasks.push(tokio::spawn(async move {
                    let id = format!("{PIPELINE}-{pipeline}");
                    Committer::new(store, fixture.sink().await, id)
                        .commit_pending()
                        .await
                }));
            }
        }
        let mut applied = 0;
        for task in tasks {
            let report = task
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            applied += report.rows_applied();
        }
        assert_eq!(
            applied, 800,
            "{name}: each row applied by exactly one committer"
        );
        let mut expected = range(0, 400);
        expected.extend(range(1_000, 1_400));
        fixture.read().assert_each_once(expected);
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_half_committed() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    let sink = fixture.sink().await;
    let mut checkpoint = store.begin().await.unwrap();
    let mut writer = sink.writer(DeltaWriterOptions::default()).await.unwrap();

    let wrong_type = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("region", DataType::Utf8, true),
            Field::new("payload", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["1"])),
            Arc::new(StringArray::from(vec!["eu"])),
            Arc::new(StringArray::from(vec!["x"])),
        ],
    )
    .unwrap();
    let error = writer
        .write(&wrong_type, &mut checkpoint)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("column `id` is Utf8 in the batch but Int64 in the table"),
        "{error}"
    );
    let extra = batch(&[1]).project(&[0, 1]).unwrap();
    let error = writer.write(&extra, &mut checkpoint).await.unwrap_err();
    assert!(error.to_string().contains("no column `payload`"), "{error}");
    let nulls = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("region", DataType::Utf8, true),
            Field::new("payload", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(arrow::array::Int32Array::from(vec![Some(1), None])),
            Arc::new(StringArray::from(vec!["eu", "eu"])),
            Arc::new(StringArray::from(vec!["x", "y"])),
        ],
    )
    .unwrap();
    let error = writer.write(&nulls, &mut checkpoint).await.unwrap_err();
    assert!(error.to_string().contains("not nullable"), "{error}");
    assert_eq!(writer.finish(&mut checkpoint).await.unwrap().files, 0);
    assert!(
        checkpoint.seal().await.unwrap().files.is_empty(),
        "nothing was written"
    );

    let empty = tempfile::tempdir().unwrap();
    for missing in [empty.path().to_path_buf(), empty.path().join("absent")] {
        let url = Url::from_directory_path(missing).unwrap();
        let error = DeltaSink::open(url, HashMap::new()).await.unwrap_err();
        assert!(error.to_string().contains("no Delta table"), "{error}");
    }

    // A log entry that is not JSON: the commit fails with the table named, and
    // the checkpoint stays pending for the next run.
    process(&store, &sink, &range(0, 10)).await;
    let log = fixture.url.to_file_path().unwrap().join("_delta_log");
    std::fs::write(log.join("00000000000000000001.json"), b"{not json").unwrap();
    let error = Committer::new(store.clone(), sink, PIPELINE)
        .commit_pending()
        .await
        .unwrap_err();
    assert!(error.to_string().contains(fixture.url.as_str()), "{error}");
    // The empty checkpoint sealed above needed no table commit; this one waits.
    assert_eq!(store.load().await.unwrap().pending_commit().len(), 1);
}

#[tokio::test]
async fn a_store_that_did_not_make_the_tables_commits_is_refused() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    process(&store, &fixture.sink().await, &range(0, 10)).await;
    Committer::new(store, fixture.sink().await, PIPELINE)
        .commit_pending()
        .await
        .unwrap();

    // A second, fresh store under the same pipeline id: its commit 1 would be
    // mistaken for the table's commit 1 and its rows dropped.
    let other = Backend::local();
    let store = CheckpointStore::open_at(
        other.location(),
        KeySchema::single("id", DataType::Int64).unwrap(),
    )
    .await
    .unwrap();
    process(&store, &fixture.sink().await, &range(10, 20)).await;
    let error = Committer::new(store.clone(), fixture.sink().await, PIPELINE)
        .commit_pending()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("never made"), "{error}");
    assert_eq!(store.load().await.unwrap().pending_commit().len(), 1);
    fixture.read().assert_each_once(range(0, 10));
}

#[tokio::test]
async fn a_run_that_wrote_nothing_commits_nothing() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    // Keys were processed (and all filtered out by the user's map): no files.
    let mut checkpoint = store.begin().await.unwrap();
    checkpoint
        .stage_keys(&[Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef])
        .await
        .unwrap();
    checkpoint.seal().await.unwrap();

    let report = Committer::new(store.clone(), fixture.sink().await, PIPELINE)
        .commit_pending()
        .await
        .unwrap();
    assert!(report.commits.is_empty(), "no table commit");
    let state = store.load().await.unwrap();
    assert!(state.pending_commit().is_empty(), "nothing left pending");
    assert_eq!(state.key_count(), 3, "the keys stay processed");
    let seen = fixture.read();
    assert_eq!((seen.version, seen.txn), (0, None), "no new version");
    seen.assert_each_once([]);
}

/// Writes `ids` as one Parquet file `name` in `dir`.
fn write_source_file(dir: &std::path::Path, name: &str, ids: &[i64]) {
    let file = std::fs::File::create(dir.join(name)).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema(), None).unwrap();
    writer.write(&batch(ids)).unwrap();
    writer.close().unwrap();
}

/// A filter in the transform, through `Pipeline::run`: the table holds
/// exactly the kept rows (as deltalake-py and DuckDB read them), and on the
/// rerun over a grown source the dropped rows' keys count as processed: only
/// the new file's rows are read into the map, and only its kept rows land.
#[tokio::test]
async fn rows_a_filter_drops_never_land_and_their_keys_count_as_processed() {
    use tidemark::pipeline::{CheckpointPolicy, Pipeline};
    use tidemark::source::{ParquetSource, ParquetSourceOptions};
    use tidemark::transform::Transform;

    let fixture = Fixture::new(Backend::local()).await;
    let source_dir = tempfile::tempdir().unwrap();
    write_source_file(source_dir.path(), "day-1.parquet", &range(0, 300));
    let source_url = format!("file://{}", source_dir.path().display());
    // Rows without a region (ids with id % 3 == 2) are dropped.
    let with_region = Transform::new().filter(|batch| {
        let region = batch.column_by_name("region").expect("a region column");
        arrow::compute::is_not_null(region).map_err(|source| tidemark::Error::Arrow {
            context: "filtering on region",
            source,
        })
    });
    let kept = |to: i64| -> Vec<i64> { (0..to).filter(|id| id % 3 != 2).collect() };

    let run = |expected_read: u64, expected_written: u64| {
        let fixture = &fixture;
        let source_url = source_url.clone();
        let with_region = with_region.clone();
        async move {
            let sink = fixture.sink().await;
            let mut writer = sink.writer(DeltaWriterOptions::default()).await.unwrap();
            let source = ParquetSource::open(&source_url, &ParquetSourceOptions::default())
                .await
                .unwrap();
            let report = Pipeline::new(fixture.store().await, sink, PIPELINE)
                .with_checkpoint_policy(CheckpointPolicy::once_per_run())
                .run(Arc::new(source), &with_region, &mut writer)
                .await
                .unwrap();
            assert_eq!(report.read.rows_passed, expected_read, "{report:?}");
            assert_eq!(report.rows_written, expected_written, "{report:?}");
            report
        }
    };
    let first = run(300, 200).await;
    assert_eq!(first.read.rows_skipped, 0);
    fixture.read().assert_each_once(kept(300));

    write_source_file(source_dir.path(), "day-2.parquet", &range(300, 330));
    let second = run(30, 20).await;
    assert_eq!(
        second.read.rows_skipped, 300,
        "the dropped rows' keys count too"
    );
    fixture.read().assert_each_once(kept(330));
}

/// Rows `describe` was given, across the test's runs.
static DESCRIBED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `describe(id)`, an async SQL function as a model call would be: it waits
/// longer for lower ids (so that later batches finish first), then gives
/// `payload of {id}`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Describe(datafusion::logical_expr::Signature);

impl datafusion::logical_expr::ScalarUDFImpl for Describe {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn name(&self) -> &str {
        "describe"
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.0
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(
        &self,
        _: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        unreachable!("an async function is only invoked through invoke_async_with_args")
    }
}

#[async_trait::async_trait]
impl datafusion::logical_expr::async_udf::AsyncScalarUDFImpl for Describe {
    async fn invoke_async_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        let ids = args.args[0].to_array(args.number_rows)?;
        let ids = ids
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64 ids");
        let first = ids.iter().flatten().min().unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(
            (300 - first.clamp(0, 300)) as u64 / 2,
        ))
        .await;
        DESCRIBED.fetch_add(ids.len(), std::sync::atomic::Ordering::SeqCst);
        let described: StringArray = ids
            .iter()
            .map(|id| id.map(|id| format!("payload of {id}")))
            .collect();
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            described,
        )))
    }
}

/// A SQL transform that calls an async function, through `Pipeline::run`
/// with four batches in flight: the function is awaited once per row that
/// the `WHERE` keeps, its results land in order with every value (as
/// deltalake-py and DuckDB read them), and the rerun over a grown source
/// calls it for the new rows only.
#[tokio::test]
async fn an_async_sql_function_is_called_once_per_kept_row() {
    use tidemark::pipeline::{CheckpointPolicy, Pipeline};
    use tidemark::source::{ParquetSource, ParquetSourceOptions};
    use tidemark::sql::SqlTransform;

    let context = datafusion::prelude::SessionContext::new();
    context.register_udf(
        datafusion::logical_expr::async_udf::AsyncScalarUDF::new(Arc::new(Describe(
            datafusion::logical_expr::Signature::exact(
                vec![DataType::Int64],
                datafusion::logical_expr::Volatility::Volatile,
            ),
        )))
        .into_scalar_udf(),
    );
    let fixture = Fixture::new(Backend::local()).await;
    let source_dir = tempfile::tempdir().unwrap();
    for part in 0..3 {
        let ids = range(part * 100, part * 100 + 100);
        write_source_file(source_dir.path(), &format!("day-1-{part}.parquet"), &ids);
    }
    let source_url = format!("file://{}", source_dir.path().display());
    let kept = |to: i64| -> Vec<i64> { (0..to).filter(|id| id % 3 != 2).collect() };
    let sql = "SELECT id, region, describe(id) AS payload FROM source WHERE region IS NOT NULL";

    let run = |expected_read: u64, expected_written: u64| {
        let (fixture, context, source_url) = (&fixture, &context, source_url.clone());
        async move {
            let sink = fixture.sink().await;
            let mut writer = sink.writer(DeltaWriterOptions::default()).await.unwrap();
            let source = ParquetSource::open(&source_url, &ParquetSourceOptions::default())
                .await
                .unwrap();
            let planned =
                SqlTransform::new_in(context, sql, &tidemark::source::Source::schema(&source))
                    .await
                    .unwrap();
            DESCRIBED.store(0, std::sync::atomic::Ordering::SeqCst);
            let report = Pipeline::new(fixture.store().await, sink, PIPELINE)
                .with_checkpoint_policy(CheckpointPolicy::once_per_run())
                .with_map_workers(4)
                .run(Arc::new(source), planned.transform(), &mut writer)
                .await
                .unwrap();
            assert_eq!(report.read.rows_passed, expected_read, "{report:?}");
            assert_eq!(report.rows_written, expected_written, "{report:?}");
            assert_eq!(
                DESCRIBED.load(std::sync::atomic::Ordering::SeqCst) as u64,
                expected_written,
                "one call per kept row"
            );
        }
    };
    run(300, 200).await;
    fixture.read().assert_each_once(kept(300));

    write_source_file(source_dir.path(), "day-2.parquet", &range(300, 330));
    run(30, 20).await;
    fixture.read().assert_each_once(kept(330));
}

/// The log files of `fixture`'s table whose name ends with `suffix`, sorted.
fn log_files(fixture: &Fixture, suffix: &str) -> Vec<String> {
    let log = fixture.url.to_file_path().unwrap().join("_delta_log");
    let mut names: Vec<String> = std::fs::read_dir(log)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// Commits `rounds` checkpoints of 10 keys each, one table commit apiece.
async fn commit_rounds(fixture: &Fixture, store: &CheckpointStore, rounds: std::ops::Range<i64>) {
    for round in rounds {
        let sink = fixture.sink().await;
        process(store, &sink, &range(round * 10, round * 10 + 10)).await;
        let report = Committer::new(store.clone(), sink, PIPELINE)
            .commit_pending()
            .await
            .unwrap();
        assert_eq!(report.commits.len(), 1);
    }
}

/// Opening a Delta table replays the log after its latest checkpoint, so the
/// sink checkpoints the log every 10 commits (the Delta reference
/// implementation's default; delta-rs's is 100) unless the table sets
/// `delta.checkpointInterval`, which is then followed. The checkpoint stands
/// for the commits before it: with their log entries gone, the readers and
/// the marker still see every row and commit. An interval that is no
/// positive number (`0`, a word) is ignored.
#[tokio::test]
async fn the_log_is_checkpointed_every_ten_commits_unless_the_table_says_otherwise() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    commit_rounds(&fixture, &store, 0..12).await;
    // Version 0 made the table; commits 1 to 12 are versions 1 to 12.
    assert_eq!(
        log_files(&fixture, ".checkpoint.parquet"),
        ["00000000000000000009.checkpoint.parquet"]
    );
    let log = fixture.url.to_file_path().unwrap().join("_delta_log");
    for version in 0..=9 {
        std::fs::remove_file(log.join(format!("{version:020}.json"))).unwrap();
    }
    let seen = fixture.read();
    assert_eq!((seen.version, seen.txn), (12, Some(12)));
    seen.assert_each_once(range(0, 120));
    commit_rounds(&fixture, &store, 12..13).await;
    fixture.read().assert_each_once(range(0, 130));

    // The sink's handle is loaded without the file actions: a source made
    // from it is refused, not read as an empty table; the handle with its
    // files reads every row.
    let sink = fixture.sink().await;
    let options = tidemark::source::ParquetSourceOptions::default();
    let err = tidemark_delta::DeltaSource::open(&sink.table().await, &options)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("without its file actions"),
        "{err}"
    );
    let table = sink.table_with_files().await.unwrap();
    let source: Arc<dyn tidemark::source::Source> = Arc::new(
        tidemark_delta::DeltaSource::open(&table, &options)
            .await
            .unwrap(),
    );
    let units = (0..source.units().len()).collect();
    let batches: Vec<(usize, RecordBatch)> = futures::TryStreamExt::try_collect(
        tidemark::source::read_units(source, units, Some(vec!["id".into()]), 2),
    )
    .await
    .unwrap();
    assert_eq!(
        batches.iter().map(|(_, b)| b.num_rows()).sum::<usize>(),
        130
    );

    // A table that sets its interval keeps it.
    let fixture = Fixture::new(Backend::local()).await;
    fixture.set_property("delta.checkpointInterval", "4").await;
    let store = fixture.store().await;
    // The property change is version 1; commits are versions 2 to 13.
    commit_rounds(&fixture, &store, 0..12).await;
    assert_eq!(
        log_files(&fixture, ".checkpoint.parquet"),
        [3, 7, 11].map(|v| format!("{v:020}.checkpoint.parquet"))
    );
    fixture.read().assert_each_once(range(0, 120));

    // An interval that is no positive number is ignored: every 10 commits.
    for interval in ["0", "often"] {
        let fixture = Fixture::new(Backend::local()).await;
        fixture
            .set_property("delta.checkpointInterval", interval)
            .await;
        let store = fixture.store().await;
        commit_rounds(&fixture, &store, 0..12).await;
        assert_eq!(
            log_files(&fixture, ".checkpoint.parquet"),
            ["00000000000000000009.checkpoint.parquet"],
            "interval {interval}"
        );
    }
}

/// A sink refreshes its view of the table with one HEAD of the next commit
/// file, listing the log only when that exists: a commit made through
/// another sink (another process) must still be seen, on every backend.
#[tokio::test]
async fn a_sink_sees_commits_made_elsewhere_since_it_opened() {
    for backend in backends() {
        let name = backend.name;
        let fixture = Fixture::new(backend).await;
        let store = fixture.store().await;
        let watcher = fixture.sink().await;
        assert_eq!(watcher.committed_sequence(PIPELINE).await.unwrap(), None);
        for sequence in 1..=2 {
            let sink = fixture.sink().await;
            process(&store, &sink, &range(sequence * 10, sequence * 10 + 10)).await;
            Committer::new(store.clone(), sink, PIPELINE)
                .commit_pending()
                .await
                .unwrap();
            assert_eq!(
                watcher.committed_sequence(PIPELINE).await.unwrap(),
                Some(sequence as u64),
                "{name}: the watcher missed commit {sequence}"
            );
        }
    }
}

/// A table whose properties set `delta.setTransactionRetentionDuration`, under
/// which Spark's log checkpoints can drop the marker, is named as a risk to
/// it, by a sink opened before the property was set as well; a table that
/// leaves it unset is not.
#[tokio::test]
async fn a_txn_retention_on_the_table_is_named_as_a_risk_to_the_marker() {
    let fixture = Fixture::new(Backend::local()).await;
    let sink = fixture.sink().await;
    assert_eq!(sink.marker_risk().await.unwrap(), None);
    fixture
        .set_property("delta.setTransactionRetentionDuration", "interval 7 days")
        .await;
    let risk = sink.marker_risk().await.unwrap().unwrap();
    assert!(
        risk.contains("delta.setTransactionRetentionDuration = interval 7 days"),
        "{risk}"
    );
}

/// Runs that find no table and create it at the same moment all open the one
/// table that won: the log holds a single version 0, with the schema and the
/// partition columns asked for, on every backend. A table that exists is
/// used as it is, whatever the schema and partitioning passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_that_create_one_table_at_once_all_open_it() {
    for backend in backends() {
        let name = backend.name;
        for round in 0..3 {
            let (url, storage) = backend.data_url(&format!("created-{}", uuid::Uuid::new_v4()));
            let url = Url::parse(&url).unwrap();
            let creates = (0..4).map(|_| {
                let (url, storage) = (url.clone(), storage.clone());
                tokio::spawn(async move {
                    DeltaSink::create_if_missing(url, storage, &schema(), &["region"]).await
                })
            });
            for created in futures::future::join_all(creates).await {
                let sink = created.unwrap().unwrap();
                let table = sink.table().await;
                assert_eq!(table.version(), Some(0), "{name} round {round}");
                let snapshot = table.snapshot().unwrap();
                assert_eq!(
                    snapshot.metadata().partition_columns(),
                    &["region".to_string()],
                    "{name} round {round}"
                );
                let columns: Vec<String> = snapshot
                    .schema()
                    .fields()
                    .map(|f| f.name().to_string())
                    .collect();
                assert_eq!(columns, ["id", "region", "payload"], "{name} round {round}");
            }
            let other = Schema::new(vec![Field::new("other", DataType::Utf8, true)]);
            let again = DeltaSink::create_if_missing(url, storage, &other, &[])
                .await
                .unwrap();
            let table = again.table().await;
            assert_eq!(table.version(), Some(0), "{name}: used as it is");
            let snapshot = table.snapshot().unwrap();
            assert_eq!(snapshot.schema().fields().count(), 3, "{name}");
        }
    }
}

/// The sink finds the pipeline's latest commit however far back the log
/// holds it: after the commit, 20 versions by another writer (more than the
/// first look at the history reads) leave it carried. The sink names its
/// table by URL.
#[tokio::test]
async fn the_pipeline_s_commit_is_found_behind_many_later_versions() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    let sink = fixture.sink().await;
    assert_eq!(
        tidemark::commit::CommitSink::table(&sink),
        fixture.url.as_str()
    );
    commit_rounds(&fixture, &store, 0..1).await;
    assert_eq!(
        sink.lineage(PIPELINE).await.unwrap(),
        tidemark::commit::Lineage::Carries(1)
    );
    for n in 0..20 {
        fixture
            .set_property(
                "delta.logRetentionDuration",
                &format!("interval {} days", 30 + n),
            )
            .await;
    }
    assert_eq!(
        sink.lineage(PIPELINE).await.unwrap(),
        tidemark::commit::Lineage::Carries(1),
        "21 versions back"
    );
    assert_eq!(
        sink.lineage("other").await.unwrap(),
        tidemark::commit::Lineage::Unknown
    );
}

/// Another writer upgrades the table between the seal and the commit to a
/// writer feature delta-rs does not support. The commit is refused at once
/// (an error that no retry can change is not retried), naming the feature,
/// and the checkpoint stays pending.
#[tokio::test]
async fn a_writer_feature_added_before_the_commit_is_refused_at_once() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    process(&store, &fixture.sink().await, &range(0, 10)).await;
    let log = fixture.url.to_file_path().unwrap().join("_delta_log");
    std::fs::write(
        log.join("00000000000000000001.json"),
        concat!(
            r#"{"commitInfo":{"timestamp":1,"operation":"SET TBLPROPERTIES"}}"#,
            "\n",
            r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":7,"writerFeatures":["tidemarkUnknownFeature"]}}"#,
            "\n",
        ),
    )
    .unwrap();
    let error = Committer::new(store.clone(), fixture.sink().await, PIPELINE)
        .commit_pending()
        .await
        .unwrap_err();
    let message = format!("{error:?}");
    assert!(message.contains("tidemarkUnknownFeature"), "{message}");
    assert!(!message.contains("CommitGaveUp"), "{message}");
    assert_eq!(store.load().await.unwrap().pending_commit().len(), 1);
}
