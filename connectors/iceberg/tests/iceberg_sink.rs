//! The Iceberg sink against real tables in a SQL catalog on SQLite (table
//! files on the local file system; checkpoint stores on the local file system
//! and on a local S3-compatible server): appends land once, and lost catalog
//! responses, crashes between the protocol's steps, concurrent committers and
//! snapshot expiry still leave every key exactly once, as pyiceberg and
//! DuckDB's iceberg extension read it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;
use iceberg::io::LocalFsStorageFactory;
use iceberg::spec::{
    ManifestContentType, ManifestFile, NestedField, PrimitiveType, Transform, Type,
    UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{
    Catalog, CatalogBuilder, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent,
};
use iceberg_catalog_rest::{RestCatalogBuilder, REST_CATALOG_PROP_URI};
use iceberg_catalog_sql::{SqlCatalogBuilder, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE};
use support::{assert_rows, region, Backend, BoundedOutput, Fault};
use tidemark::commit::{CommitRequest, CommitSink, Committer, Lineage};
use tidemark::gc::TableFiles;
use tidemark::store::{CheckpointId, CheckpointStore, KeySchema};
use tidemark_iceberg::sink::{marker_property, SnapshotExpiry};
use tidemark_iceberg::{IcebergSink, IcebergWriterOptions, ObjectStorageFactory};

const PIPELINE: &str = "daily-embeddings";

/// The catalog: the SQL catalog on SQLite or PostgreSQL, or a REST catalog.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Db {
    Sqlite,
    Postgres,
    Rest,
}

/// A SQL catalog with one partitioned table, and a checkpoint store.
struct Fixture {
    /// Holds the SQLite database and local warehouse; removed on drop.
    _dir: tempfile::TempDir,
    backend: Backend,
    /// The catalog's database, as sqlx (Rust) and SQLAlchemy (pyiceberg) name it.
    rust_uri: String,
    python_uri: String,
    /// The S3 server's endpoint when the table's files live there.
    s3_endpoint: Option<String>,
    warehouse: String,
    /// `pipeline`, or a fresh name on the REST server that several tests share.
    namespace: String,
}

impl Fixture {
    async fn new(backend: Backend) -> Self {
        Self::on(Db::Sqlite, backend).await
    }

    async fn on(db: Db, backend: Backend) -> Self {
        Self::with(db, backend, false).await
    }

    /// With `s3_tables`, the warehouse (metadata and data files) is on the S3
    /// server, written through tidemark's object_store-backed Iceberg storage.
    async fn with(db: Db, backend: Backend, s3_tables: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (s3_endpoint, warehouse) = if s3_tables {
            let warehouse = format!(
                "s3://{}/{}/warehouse",
                support::S3_BUCKET,
                uuid::Uuid::new_v4()
            );
            (Some(support::s3_endpoint()), warehouse)
        } else {
            (None, format!("file://{}/warehouse", dir.path().display()))
        };
        let (rust_uri, python_uri) = match db {
            Db::Sqlite => {
                let path = format!("{}/catalog.db", dir.path().display());
                (
                    format!("sqlite://{path}?mode=rwc"),
                    format!("sqlite:///{path}"),
                )
            }
            Db::Postgres => {
                let url = support::postgres_database();
                let python = url.replacen("postgres://", "postgresql+psycopg://", 1);
                (url, python)
            }
            Db::Rest => {
                let url = support::rest_catalog_server();
                (url.clone(), url)
            }
        };
        let fixture = Fixture {
            _dir: dir,
            backend,
            rust_uri,
            python_uri,
            s3_endpoint,
            warehouse,
            namespace: if db == Db::Rest {
                format!("pipeline_{}", uuid::Uuid::new_v4().simple())
            } else {
                "pipeline".to_string()
            },
        };
        let catalog = fixture.catalog().await;
        let namespace = NamespaceIdent::new(fixture.namespace.clone());
        catalog
            .create_namespace(&namespace, HashMap::new())
            .await
            .unwrap();
        let schema = iceberg::spec::Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "region", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "payload", Type::Primitive(PrimitiveType::String)).into(),
            ])
            .build()
            .unwrap();
        let spec = UnboundPartitionSpec::builder()
            .add_partition_field(2, "region", Transform::Identity)
            .unwrap()
            .add_partition_field(1, "id_bucket", Transform::Bucket(4))
            .unwrap()
            .build();
        catalog
            .create_table(
                &namespace,
                TableCreation::builder()
                    .name("events".into())
                    .schema(schema)
                    .partition_spec(spec)
                    .build(),
            )
            .await
            .unwrap();
        fixture
    }

    async fn catalog(&self) -> Arc<dyn Catalog> {
        if self.rust_uri.starts_with("http") {
            let catalog = RestCatalogBuilder::default()
                .with_storage_factory(Arc::new(LocalFsStorageFactory))
                // The server places tables in its own warehouse.
                .load(
                    "tidemark",
                    HashMap::from([(REST_CATALOG_PROP_URI.to_string(), self.rust_uri.clone())]),
                )
                .await
                .unwrap();
            return Arc::new(catalog);
        }
        let properties = HashMap::from([
            (SQL_CATALOG_PROP_URI.to_string(), self.rust_uri.clone()),
            (
                SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                self.warehouse.clone(),
            ),
        ]);
        let builder = match &self.s3_endpoint {
            Some(endpoint) => SqlCatalogBuilder::default().with_storage_factory(Arc::new(
                ObjectStorageFactory::new(support::s3_options(endpoint)),
            )),
            None => {
                SqlCatalogBuilder::default().with_storage_factory(Arc::new(LocalFsStorageFactory))
            }
        };
        Arc::new(builder.load("default", properties).await.unwrap())
    }

    fn ident(&self) -> TableIdent {
        TableIdent::from_strs([self.namespace.as_str(), "events"]).unwrap()
    }

    fn table_name(&self) -> String {
        format!("{}.events", self.namespace)
    }

    async fn sink(&self) -> IcebergSink {
        IcebergSink::open(self.catalog().await, self.ident())
            .await
            .unwrap()
    }

    async fn faulty_sink(&self, fault: Fault) -> IcebergSink {
        self.faulty_sink_and_catalog(Some(fault)).await.0
    }

    /// A sink through a faulty catalog, and that catalog.
    async fn faulty_sink_and_catalog(
        &self,
        fault: Option<Fault>,
    ) -> (IcebergSink, Arc<FaultyCatalog>) {
        let catalog = Arc::new(FaultyCatalog {
            inner: self.catalog().await,
            fault: Mutex::new(fault),
            refusal: Mutex::new(None),
            refusal_after_landing: Mutex::new(None),
            dead: AtomicBool::new(false),
            rival: tokio::sync::Mutex::new(None),
            loads: AtomicUsize::new(0),
            commits: AtomicUsize::new(0),
        });
        let sink = IcebergSink::open(catalog.clone(), self.ident())
            .await
            .unwrap();
        (sink, catalog)
    }

    /// A sink whose commit a rival beats: `rival` commits `request` after the
    /// sink first reads the table (its marker check), on the next load of the
    /// table or the first commit that reaches this catalog, whichever comes first.
    async fn sink_beaten_by(&self, rival: IcebergSink, request: CommitRequest) -> IcebergSink {
        let (sink, catalog) = self.faulty_sink_and_catalog(None).await;
        // Armed once the sink is open (opening loads the table too).
        *catalog.rival.lock().await = Some((rival, request));
        catalog.loads.store(0, Ordering::SeqCst);
        sink
    }

    async fn store(&self) -> CheckpointStore {
        CheckpointStore::open_at(
            self.backend.location(),
            KeySchema::single("id", DataType::Int64).unwrap(),
        )
        .await
        .unwrap()
    }

    /// What pyiceberg and DuckDB see.
    fn read(&self) -> Readout {
        let table = self.table_name();
        let mut args = vec![self.python_uri.as_str(), &self.warehouse, &table];
        args.extend(self.s3_endpoint.as_deref());
        let stdout = run_python("iceberg_read.py", &args, "reading the table");
        let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let ids = |key: &str| {
            let mut ids: Vec<i64> = serde_json::from_value(value[key].clone()).unwrap();
            ids.sort_unstable();
            ids
        };
        Readout {
            pyiceberg_ids: ids("pyiceberg_ids"),
            duckdb_ids: ids("duckdb_ids"),
            // The documented property name, spelled out: readers and other
            // tools find the marker by it.
            marker: value["properties"][format!("tidemark.pipeline.{PIPELINE}.commit-sequence")]
                .as_str()
                .map(|s| s.parse().unwrap()),
            summary: value["summary"].clone(),
            rows: ["pyiceberg_rows", "duckdb_rows"]
                .into_iter()
                .map(|key| (key, value[key].clone()))
                .collect(),
        }
    }

    fn foreign_append(&self, ids: &[i64]) {
        let warehouse = self.warehouse.trim_start_matches("file://");
        let ids = serde_json::to_string(ids).unwrap();
        let args = [
            self.python_uri.as_str(),
            warehouse,
            &self.table_name(),
            &ids,
        ];
        run_python("pyiceberg_append.py", &args, "pyiceberg append");
    }
}

impl Fixture {
    /// Deletes the rows matching `predicate` with DuckDB (through the REST
    /// catalog: a positional delete file); returns how many it deleted.
    fn foreign_delete(&self, predicate: &str) -> u64 {
        let args = [self.python_uri.as_str(), &self.table_name(), predicate];
        run_python("duckdb_delete.py", &args, "DuckDB delete")
            .parse()
            .unwrap()
    }

    /// Evolves the partition spec with pyiceberg; returns the new default spec id.
    fn evolve_spec(&self, action: &str, field: &str) -> i32 {
        let table = self.table_name();
        let args = [
            self.python_uri.as_str(),
            &self.warehouse,
            &table,
            action,
            field,
        ];
        run_python("pyiceberg_spec.py", &args, "pyiceberg spec change")
            .parse()
            .unwrap()
    }

    /// What the current snapshot of the table is, as the sink reports a
    /// commit's table version.
    async fn snapshot_version(&self) -> serde_json::Value {
        let table = self
            .catalog()
            .await
            .load_table(&self.ident())
            .await
            .unwrap();
        serde_json::json!({ "snapshot_id": table.metadata().current_snapshot_id() })
    }
}

/// Runs `tests/support/{script}` with `args` (scripts/test-setup.sh installs
/// the packages it needs) and returns its standard output, trimmed; `what`
/// names the step in the failure message.
fn run_python(script: &str, args: &[&str], what: &str) -> String {
    let script = format!("{}/tests/support/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(&script)
        .args(args)
        .bounded_output()
        .expect("run python3 (scripts/test-setup.sh installs pyiceberg and duckdb)");
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The manifests of `table`'s current snapshot.
async fn current_manifests(table: &Table) -> Vec<ManifestFile> {
    let snapshot = table.metadata().current_snapshot().unwrap();
    let list = table.manifest_list_reader(snapshot).load().await.unwrap();
    list.entries().to_vec()
}

struct Readout {
    pyiceberg_ids: Vec<i64>,
    duckdb_ids: Vec<i64>,
    marker: Option<u64>,
    summary: serde_json::Value,
    /// Each reader's rows, all columns, as it printed them.
    rows: Vec<(&'static str, serde_json::Value)>,
}

impl Readout {
    /// Both readers see exactly `expected`, each key once, and every value
    /// of its row. (The reader itself checked each data file's bounds,
    /// counts and partition values against its rows.)
    fn assert_each_once(&self, expected: impl IntoIterator<Item = i64>) {
        let mut expected: Vec<i64> = expected.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(self.pyiceberg_ids, expected, "pyiceberg reader");
        assert_eq!(self.duckdb_ids, expected, "duckdb reader");
        assert_rows(&self.rows, &expected);
    }
}

fn batch(ids: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("payload", DataType::Utf8, true),
    ]));
    let regions: Vec<Option<&str>> = ids.iter().map(|i| region(*i)).collect();
    RecordBatch::try_new(
        schema,
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

/// One shard of work: stage the keys, write the rows, seal.
async fn process(store: &CheckpointStore, sink: &IcebergSink, ids: &[i64]) -> CheckpointId {
    let mut checkpoint = store.begin().await.unwrap();
    checkpoint
        .stage_keys(&[Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef])
        .await
        .unwrap();
    let mut writer = sink.writer(IcebergWriterOptions::default()).await.unwrap();
    for chunk in ids.chunks(100) {
        writer.write(&batch(chunk), &mut checkpoint).await.unwrap();
    }
    writer.finish(&mut checkpoint).await.unwrap();
    checkpoint.seal().await.unwrap().checkpoint_id
}

fn range(from: i64, to: i64) -> Vec<i64> {
    (from..to).collect()
}

#[tokio::test]
async fn appends_land_once_and_repeated_commits_change_nothing() {
    let cases = [
        (Db::Sqlite, Backend::local(), false),
        (Db::Sqlite, Backend::s3(), true),
        (Db::Postgres, Backend::s3(), true),
        (Db::Rest, Backend::local(), false),
    ];
    for (db, backend, s3_tables) in cases {
        let name = format!(
            "{db:?} catalog, {} store, tables on {}",
            backend.name,
            if s3_tables { "S3" } else { "local disk" }
        );
        let fixture = Fixture::with(db, backend, s3_tables).await;
        let store = fixture.store().await;
        let sink = fixture.sink().await;
        process(&store, &sink, &range(0, 500)).await;
        process(&store, &sink, &range(500, 1_000)).await;
        let committer = Committer::new(store.clone(), sink, PIPELINE);

        let report = committer.commit_pending().await.unwrap();
        assert_eq!(report.commits.len(), 1, "{name}");
        assert!(
            report.commits[0].files >= 6,
            "{name}: one file per partition"
        );
        assert_eq!(report.rows_applied(), 1_000);
        assert!(committer.commit_pending().await.unwrap().commits.is_empty());
        let seen = fixture.read();
        assert_eq!(seen.marker, Some(1), "{name}");
        assert_eq!(seen.summary["tidemark.pipeline"], PIPELINE);
        assert_eq!(seen.summary["tidemark.commit-sequence"], "1");
        seen.assert_each_once(range(0, 1_000));

        process(&store, committer.sink(), &range(1_000, 1_100)).await;
        assert_eq!(
            committer.commit_pending().await.unwrap().commits[0].sequence,
            2
        );
        let seen = fixture.read();
        assert_eq!(seen.marker, Some(2), "{name}");
        seen.assert_each_once(range(0, 1_100));
    }
}

#[tokio::test]
async fn a_lost_commit_response_is_recognised_not_applied_again() {
    for db in [Db::Sqlite, Db::Postgres, Db::Rest] {
        let fixture = Fixture::on(db, Backend::local()).await;
        let store = fixture.store().await;
        process(&store, &fixture.sink().await, &range(0, 300)).await;
        // The catalog applies the commit; the committer hears an error.
        let sink = fixture.faulty_sink(Fault::LoseResponse).await;
        let report = Committer::new(store, sink, PIPELINE)
            .commit_pending()
            .await
            .unwrap();
        assert!(
            !report.commits[0].applied_now,
            "{db:?}: recognised by the marker"
        );
        assert_eq!(
            report.commits[0].table_version,
            fixture.snapshot_version().await,
            "{db:?}: the snapshot the marker was found in"
        );
        let seen = fixture.read();
        assert_eq!(seen.marker, Some(1), "{db:?}");
        seen.assert_each_once(range(0, 300));
    }
}

/// A commit attempt that fails before it reaches the catalog (an error of a
/// kind worth another try) is tried again and lands once. One that the
/// catalog refuses as wrong (`DataInvalid`) is not tried again: it fails at
/// once with the catalog's error, and nothing lands.
#[tokio::test]
async fn a_failed_attempt_is_tried_again_and_a_refused_one_is_not() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    process(&store, &fixture.sink().await, &range(0, 100)).await;
    let (sink, catalog) = fixture
        .faulty_sink_and_catalog(Some(Fault::FailBefore))
        .await;
    let report = Committer::new(store.clone(), sink, PIPELINE)
        .commit_pending()
        .await
        .unwrap();
    assert!(report.commits[0].applied_now);
    assert_eq!(
        catalog.commits.load(Ordering::SeqCst),
        2,
        "one failed, one landed"
    );
    assert_eq!(
        report.commits[0].table_version,
        fixture.snapshot_version().await,
        "the snapshot the commit made"
    );

    process(&store, &fixture.sink().await, &range(100, 200)).await;
    let (sink, catalog) = fixture.faulty_sink_and_catalog(None).await;
    *catalog.refusal.lock().unwrap() = Some(iceberg::ErrorKind::DataInvalid);
    let error = Committer::new(store.clone(), sink, PIPELINE)
        .commit_pending()
        .await
        .unwrap_err();
    let message = format!("{error:?}");
    assert!(message.contains("injected refusal"), "{message}");
    assert!(!message.contains("CommitGaveUp"), "{message}");
    assert_eq!(catalog.commits.load(Ordering::SeqCst), 1, "not tried again");
    let seen = fixture.read();
    assert_eq!(seen.marker, Some(1));
    seen.assert_each_once(range(0, 100));
}

/// A table the catalog does not have is told apart from a catalog that
/// cannot be reached: the first is `TableNotFound`, naming the table; the
/// second is the catalog's own error, never taken for a missing table. A
/// sink names its table as `iceberg:namespace.table`.
#[tokio::test]
async fn a_missing_table_and_an_unreachable_catalog_are_told_apart() {
    let fixture = Fixture::new(Backend::local()).await;
    let missing = TableIdent::from_strs([fixture.namespace.as_str(), "missing"]).unwrap();
    let error = IcebergSink::open(fixture.catalog().await, missing)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, tidemark_iceberg::Error::TableNotFound { table } if table.ends_with(".missing")),
        "{error:?}"
    );

    let (sink, catalog) = fixture.faulty_sink_and_catalog(None).await;
    catalog.dead.store(true, Ordering::SeqCst);
    let error = sink.load().await.unwrap_err();
    assert!(
        !matches!(error, tidemark_iceberg::Error::TableNotFound { .. }),
        "{error:?}"
    );
    let shown = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(shown.contains("injected fault"), "{shown}");

    // The name that commit intents record and messages show.
    let sink = fixture.sink().await;
    assert_eq!(
        CommitSink::table(&sink),
        format!("iceberg:{}", fixture.table_name())
    );
    assert!(
        format!("{sink:?}").contains(&fixture.table_name()),
        "{sink:?}"
    );
}

/// A catalog that applies a commit and then answers with an error of a kind
/// not worth another try (`DataInvalid`, as a catalog whose check after the
/// write failed). The marker is read again before the error is believed: the
/// commit landed, so it is reported as found in the table, not as failed,
/// and the catalog is not asked again.
#[tokio::test]
async fn a_commit_refused_after_it_landed_is_recognised_by_the_marker() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    process(&store, &fixture.sink().await, &range(0, 100)).await;
    let (sink, catalog) = fixture.faulty_sink_and_catalog(None).await;
    *catalog.refusal_after_landing.lock().unwrap() = Some(iceberg::ErrorKind::DataInvalid);
    let report = Committer::new(store.clone(), sink, PIPELINE)
        .commit_pending()
        .await
        .unwrap();
    assert!(!report.commits[0].applied_now, "recognised by the marker");
    assert_eq!(catalog.commits.load(Ordering::SeqCst), 1, "not tried again");
    assert_eq!(
        report.commits[0].table_version,
        fixture.snapshot_version().await,
        "the snapshot the marker was found in"
    );
    let seen = fixture.read();
    assert_eq!(seen.marker, Some(1));
    seen.assert_each_once(range(0, 100));
}

/// Two committers of one commit (a stalled one and the run that took over,
/// say): the rival lands the files after this committer read the marker and
/// before its commit reaches the catalog, or while iceberg's transaction
/// reloads the table to build the append. The commit is refused as a
/// conflict (its base is the snapshot the marker was read from), the marker is
/// read again, and the files are in the table once.
#[tokio::test]
async fn a_rival_landing_after_the_marker_check_is_not_appended_again() {
    for db in [Db::Sqlite, Db::Postgres, Db::Rest] {
        let fixture = Fixture::on(db, Backend::local()).await;
        let store = fixture.store().await;
        let checkpoint = process(&store, &fixture.sink().await, &range(0, 300)).await;
        let state = store.load().await.unwrap();
        let files = state.pending_commit()[0].files.clone();
        let request = CommitRequest {
            pipeline_id: PIPELINE.into(),
            sequence: 1,
            checkpoints: vec![checkpoint],
            files,
        };
        let sink = fixture
            .sink_beaten_by(fixture.sink().await, request.clone())
            .await;
        let outcome = sink.commit(&request).await.unwrap();
        assert!(!outcome.applied, "{db:?}: the rival's commit is recognised");
        let seen = fixture.read();
        assert_eq!(seen.marker, Some(1), "{db:?}");
        seen.assert_each_once(range(0, 300));
    }
}

/// Manifests merge once the table's `commit.manifest.min-count-to-merge` is
/// reached (100 by default, then 2): three commits leave three data
/// manifests; with the count set to 2, each of two more commits merges the
/// manifests it finds (three, then two), so the current snapshot names two
/// data manifests, the merged one and the last commit's. Every data
/// file is there once, alive, under the snapshot that added it and with that
/// snapshot's sequence number, and both
/// readers see every row once with its values, bounds and counts. Manifests
/// of the table's target size or more are not merged.
#[tokio::test]
async fn manifests_merge_at_the_table_s_count_and_every_row_stays() {
    for db in [Db::Sqlite, Db::Rest] {
        let fixture = Fixture::on(db, Backend::local()).await;
        let catalog = fixture.catalog().await;
        let store = fixture.store().await;
        let committer = Committer::new(store.clone(), fixture.sink().await, PIPELINE);
        for run in 0..5 {
            if run == 3 {
                let table = catalog.load_table(&fixture.ident()).await.unwrap();
                let manifests = current_manifests(&table).await;
                assert_eq!(manifests.len(), 3, "{db:?}: none merged below 100");
                set_table_property(
                    catalog.as_ref(),
                    &table,
                    "commit.manifest.min-count-to-merge",
                    "2",
                )
                .await;
            }
            process(&store, committer.sink(), &range(run * 200, (run + 1) * 200)).await;
            assert_eq!(committer.commit_pending().await.unwrap().commits.len(), 1);
        }

        let table = catalog.load_table(&fixture.ident()).await.unwrap();
        let list = current_manifests(&table).await;
        assert_eq!(
            list.len(),
            2,
            "{db:?}: the merged manifest and the last commit's"
        );
        let mut paths = std::collections::BTreeSet::new();
        let mut added_by = std::collections::BTreeSet::new();
        for manifest in &list {
            for entry in manifest
                .load_manifest(table.file_io())
                .await
                .unwrap()
                .entries()
            {
                assert!(entry.is_alive(), "{db:?}");
                assert!(
                    paths.insert(entry.data_file().file_path().to_string()),
                    "{db:?}: a data file listed twice"
                );
                let added = entry.snapshot_id().unwrap();
                added_by.insert(added);
                let sequence = table
                    .metadata()
                    .snapshot_by_id(added)
                    .unwrap()
                    .sequence_number();
                assert_eq!(
                    entry.sequence_number(),
                    Some(sequence),
                    "{db:?}: the sequence number of the commit that added it"
                );
            }
        }
        assert_eq!(
            added_by.len(),
            5,
            "{db:?}: each commit's snapshot adds its files"
        );
        let seen = fixture.read();
        assert_eq!(seen.marker, Some(5), "{db:?}");
        seen.assert_each_once(range(0, 1_000));

        // Manifests of `commit.manifest.target-size-bytes` or more are left as
        // they are. With the merged manifest's own size as the target, it
        // stays; the last commit's manifest alone is below the count, so the
        // next commit merges nothing, and the one after merges the two small
        // manifests it finds beside the large one.
        let merged = list
            .iter()
            .max_by_key(|m| m.manifest_length)
            .unwrap()
            .clone();
        assert!(
            list.iter().all(|m| m.manifest_path == merged.manifest_path
                || m.manifest_length < merged.manifest_length),
            "{db:?}: the merged manifest is the largest"
        );
        set_table_property(
            catalog.as_ref(),
            &table,
            "commit.manifest.target-size-bytes",
            &merged.manifest_length.to_string(),
        )
        .await;
        let manifests = |table: Table| async move {
            let listed = current_manifests(&table).await;
            listed
                .into_iter()
                .map(|m| m.manifest_path)
                .collect::<Vec<_>>()
        };
        process(&store, committer.sink(), &range(1_000, 1_200)).await;
        committer.commit_pending().await.unwrap();
        let after_one = manifests(catalog.load_table(&fixture.ident()).await.unwrap()).await;
        assert_eq!(after_one.len(), 3, "{db:?}: none merged: {after_one:?}");
        process(&store, committer.sink(), &range(1_200, 1_400)).await;
        committer.commit_pending().await.unwrap();
        let after_two = manifests(catalog.load_table(&fixture.ident()).await.unwrap()).await;
        assert_eq!(after_two.len(), 3, "{db:?}: two merged: {after_two:?}");
        assert!(
            after_two.contains(&merged.manifest_path),
            "{db:?}: the large manifest is left as it is: {after_two:?}"
        );
        assert!(
            after_one
                .iter()
                .all(|m| *m == merged.manifest_path || !after_two.contains(m)),
            "{db:?}: the two small manifests are merged: {after_one:?} then {after_two:?}"
        );
        fixture.read().assert_each_once(range(0, 1_400));
    }
}

/// Rows another engine deleted stay deleted when the sink merges manifests.
/// DuckDB deletes a third of the rows of two commits by merge-on-read (a
/// positional delete file in a delete manifest); two more commits, with the
/// merge count at 2, merge the data manifests. The delete manifest is kept
/// as it is, never merged as data, and both readers see every row once
/// except the deleted ones.
#[tokio::test]
async fn rows_another_engine_deleted_stay_deleted_when_manifests_merge() {
    let fixture = Fixture::on(Db::Rest, Backend::local()).await;
    let catalog = fixture.catalog().await;
    let store = fixture.store().await;
    let committer = Committer::new(store.clone(), fixture.sink().await, PIPELINE);
    for run in 0..2 {
        process(&store, committer.sink(), &range(run * 200, (run + 1) * 200)).await;
        committer.commit_pending().await.unwrap();
    }
    assert_eq!(fixture.foreign_delete("id % 3 = 0"), 134);
    let contents = |table: Table| async move {
        let listed = current_manifests(&table).await;
        listed
            .into_iter()
            .map(|m| (m.content, m.manifest_path))
            .collect::<Vec<_>>()
    };
    let before = contents(catalog.load_table(&fixture.ident()).await.unwrap()).await;
    let deletes: Vec<_> = before
        .iter()
        .filter(|(content, _)| *content == ManifestContentType::Deletes)
        .cloned()
        .collect();
    assert_eq!(deletes.len(), 1, "DuckDB's delete manifest: {before:?}");

    let table = catalog.load_table(&fixture.ident()).await.unwrap();
    set_table_property(
        catalog.as_ref(),
        &table,
        "commit.manifest.min-count-to-merge",
        "2",
    )
    .await;
    for run in 2..4 {
        process(&store, committer.sink(), &range(run * 200, (run + 1) * 200)).await;
        committer.commit_pending().await.unwrap();
    }
    let after = contents(catalog.load_table(&fixture.ident()).await.unwrap()).await;
    let data = after
        .iter()
        .filter(|(content, _)| *content == ManifestContentType::Data)
        .count();
    assert_eq!(
        data, 2,
        "the merged manifest and the last commit's: {after:?}"
    );
    assert!(
        deletes.iter().all(|d| after.contains(d)),
        "the delete manifest is kept as it is: {after:?}"
    );
    let seen = fixture.read();
    assert_eq!(seen.marker, Some(4));
    seen.assert_each_once((0..800).filter(|id| *id >= 400 || id % 3 != 0));
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
            "before the catalog commit",
            "table",
            "",
            Fault::CrashBefore,
            1,
            true,
        ),
        (
            "after the catalog commit",
            "table",
            "",
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
    let cases = [
        (Db::Sqlite, Backend::local(), false),
        (Db::Sqlite, Backend::s3(), true),
        (Db::Postgres, Backend::local(), false),
        (Db::Rest, Backend::local(), false),
    ];
    for (db, backend, s3_tables) in cases {
        let name = format!(
            "{db:?} catalog, {} store, S3 tables: {s3_tables}",
            backend.name
        );
        let fixture = Fixture::with(db, backend, s3_tables).await;
        let mut expected = Vec::new();
        for (n, (step, side, path, fault, commits, applied)) in steps.iter().enumerate() {
            let ids = range(n as i64 * 100, n as i64 * 100 + 100);
            expected.extend(&ids);
            let store = fixture.store().await;
            process(&store, &fixture.sink().await, &ids).await;

            let (location, faulty_store) = fixture.backend.faulty();
            let crashed_store = CheckpointStore::open_existing(location).await.unwrap();
            let crashed_sink = if *side == "table" {
                fixture.faulty_sink(*fault).await
            } else {
                faulty_store.inject(path, *fault, 1);
                fixture.sink().await
            };
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
            assert_eq!(seen.marker, Some(n as u64 + 1), "{name}, {step}");
            seen.assert_each_once(expected.clone());
        }
    }
}

#[tokio::test]
async fn concurrent_committers_land_every_key_once() {
    for db in [Db::Sqlite, Db::Postgres, Db::Rest] {
        concurrent_committers_on(db).await;
    }
}

async fn concurrent_committers_on(db: Db) {
    let fixture = Arc::new(Fixture::on(db, Backend::local()).await);
    let mut tasks = Vec::new();
    for pipeline in 0..2i64 {
        let backend = Backend::local();
        let store = CheckpointStore::open_at(
            backend.location(),
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
        // The store's directory must outlive the committers.
        std::mem::forget(backend);
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await.unwrap().unwrap().rows_applied();
    }
    assert_eq!(
        applied, 800,
        "{db:?}: each row applied by exactly one committer"
    );
    let mut expected = range(0, 400);
    expected.extend(range(1_000, 1_400));
    fixture.read().assert_each_once(expected);
}

#[tokio::test]
async fn the_marker_survives_snapshot_expiry() {
    for db in [Db::Sqlite, Db::Postgres, Db::Rest] {
        marker_survives_expiry_on(db).await;
    }
}

async fn marker_survives_expiry_on(db: Db) {
    let fixture = Fixture::on(db, Backend::local()).await;
    let store = fixture.store().await;
    process(&store, &fixture.sink().await, &range(0, 100)).await;
    Committer::new(store.clone(), fixture.sink().await, PIPELINE)
        .commit_pending()
        .await
        .unwrap();
    // Commit 2 lands, then the committer dies before marking it.
    process(&store, &fixture.sink().await, &range(100, 200)).await;
    let crashed = Committer::new(
        store.clone(),
        fixture.faulty_sink(Fault::CrashAfter).await,
        PIPELINE,
    )
    .commit_pending()
    .await;
    assert!(crashed.is_err());
    // Another writer appends, and every older snapshot (with the summaries
    // naming commits 1 and 2) is expired.
    fixture.foreign_append(&[5_000, 5_001]);
    let catalog = fixture.catalog().await;
    let table = catalog.load_table(&fixture.ident()).await.unwrap();
    expire_all_but_current(&table, catalog.as_ref()).await;
    assert!(fixture.read().summary.get("tidemark.pipeline").is_none());

    let report = Committer::new(store.clone(), fixture.sink().await, PIPELINE)
        .commit_pending()
        .await
        .unwrap();
    assert!(
        !report.commits[0].applied_now,
        "found by the table property"
    );
    let mut expected = range(0, 200);
    expected.extend([5_000, 5_001]);
    fixture.read().assert_each_once(expected);
}

/// What the sink reads of the table's history and properties, and what it
/// changes there: the pipeline's latest commit among the current snapshot's
/// ancestors (none on a fresh table; out of reach once expiry removed it);
/// snapshot expiry by age and by the number kept (at least one); a
/// `gc.enabled=false` that forbids expiry; a marker that is no
/// number; and the deletion of files and prefixes below the table.
#[tokio::test]
async fn the_sink_reads_history_expires_snapshots_and_deletes_files() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    let sink = fixture.sink().await;
    match sink.lineage(PIPELINE).await.unwrap() {
        Lineage::RolledBack { carried: None, why } => {
            assert!(why.contains("back to the table's first snapshot"), "{why}")
        }
        other => panic!("a fresh table: {other:?}"),
    }
    assert_eq!(sink.committed(PIPELINE).await.unwrap(), None);
    for run in 0..3 {
        process(&store, &sink, &range(run * 10, run * 10 + 10)).await;
        Committer::new(store.clone(), fixture.sink().await, PIPELINE)
            .commit_pending()
            .await
            .unwrap();
    }
    fixture.foreign_append(&[5_000]);
    // Commit 3 is the foreign append's parent.
    assert_eq!(sink.lineage(PIPELINE).await.unwrap(), Lineage::Carries(3));
    assert_eq!(
        sink.lineage("other").await.unwrap(),
        Lineage::RolledBack {
            carried: None,
            why: "none of the current snapshot's ancestors, back to the table's first snapshot, \
              is a commit of the pipeline"
                .to_string(),
        }
    );

    sink.ensure_snapshots_can_expire().await.unwrap();
    let hour = SnapshotExpiry {
        older_than: std::time::Duration::from_secs(3_600),
        retain_last: 1,
    };
    assert_eq!(
        sink.expire_snapshots(hour).await.unwrap(),
        0,
        "all are recent"
    );
    let keep_two = SnapshotExpiry {
        older_than: std::time::Duration::ZERO,
        retain_last: 2,
    };
    assert_eq!(sink.expire_snapshots(keep_two).await.unwrap(), 2);
    assert_eq!(sink.lineage(PIPELINE).await.unwrap(), Lineage::Carries(3));
    let keep_none = SnapshotExpiry {
        retain_last: 0,
        ..keep_two
    };
    assert_eq!(
        sink.expire_snapshots(keep_none).await.unwrap(),
        1,
        "one is kept"
    );
    assert_eq!(
        sink.lineage(PIPELINE).await.unwrap(),
        Lineage::Unknown,
        "commit 3's snapshot expired: out of reach"
    );
    assert_eq!(sink.committed(PIPELINE).await.unwrap(), Some(3));
    let mut expected = range(0, 30);
    expected.push(5_000);
    fixture.read().assert_each_once(expected);

    let catalog = fixture.catalog().await;
    let table = catalog.load_table(&fixture.ident()).await.unwrap();
    set_table_property(catalog.as_ref(), &table, "gc.enabled", "false").await;
    let error = sink.ensure_snapshots_can_expire().await.unwrap_err();
    assert!(error.to_string().contains("gc.enabled is false"), "{error}");
    let table = catalog.load_table(&fixture.ident()).await.unwrap();
    set_table_property(catalog.as_ref(), &table, "gc.enabled", "true").await;
    sink.ensure_snapshots_can_expire().await.unwrap();

    let table = catalog.load_table(&fixture.ident()).await.unwrap();
    set_table_property(
        catalog.as_ref(),
        &table,
        &marker_property(PIPELINE),
        "three",
    )
    .await;
    let error = sink.committed(PIPELINE).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("is `three`, not a commit sequence"),
        "{error}"
    );

    // Files below the table: one deleted alone, then a prefix.
    let location = table.metadata().location().to_string();
    let dir = location.trim_start_matches("file://").to_string();
    let orphans = format!("{dir}/data/orphans");
    std::fs::create_dir_all(format!("{orphans}/deeper")).unwrap();
    for name in ["a.parquet", "b.parquet", "deeper/c.parquet"] {
        std::fs::write(format!("{orphans}/{name}"), b"orphan").unwrap();
    }
    sink.delete_file(&format!("{location}/data/orphans/a.parquet"))
        .await
        .unwrap();
    assert!(!std::path::Path::new(&format!("{orphans}/a.parquet")).exists());
    assert!(std::path::Path::new(&format!("{orphans}/b.parquet")).exists());
    sink.delete_prefix(&format!("{location}/data/orphans/"))
        .await
        .unwrap();
    assert!(support::files_below(std::path::Path::new(&orphans)).is_empty());
}

/// Sets one property of `table` through `catalog`, as another tool would.
async fn set_table_property(catalog: &dyn Catalog, table: &Table, key: &str, value: &str) {
    let tx = Transaction::new(table);
    let tx = tx
        .update_table_properties()
        .set(key.into(), value.into())
        .apply(tx)
        .unwrap();
    tx.commit(catalog).await.unwrap();
}

async fn expire_all_but_current(table: &Table, catalog: &dyn Catalog) {
    let now = chrono::Utc::now().timestamp_millis() + 1;
    let tx = Transaction::new(table);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(now)
        .retain_last(1)
        .apply(tx)
        .unwrap();
    let table = tx.commit(catalog).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_half_committed() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    let sink = fixture.sink().await;
    let mut checkpoint = store.begin().await.unwrap();
    let mut writer = sink.writer(IcebergWriterOptions::default()).await.unwrap();
    let wrong = batch(&[1]).project(&[0, 1]).unwrap();
    let error = writer.write(&wrong, &mut checkpoint).await.unwrap_err();
    assert!(error.to_string().contains("no column `payload`"), "{error}");
    assert!(writer.finish(&mut checkpoint).await.unwrap().is_empty());

    let error = IcebergSink::open(
        fixture.catalog().await,
        TableIdent::from_strs(["pipeline", "absent"]).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no Iceberg table `pipeline.absent`"),
        "{error}"
    );

    // A catalog that is down: the commit fails with the table named, and the
    // checkpoint stays pending for the next run.
    process(&store, &sink, &range(0, 10)).await;
    let down = fixture.faulty_sink(Fault::CrashBefore).await;
    let error = Committer::new(store.clone(), down, PIPELINE)
        .commit_pending()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("pipeline.events"), "{error}");
    assert!(!store.load().await.unwrap().pending_commit().is_empty());
    assert_eq!(fixture.read().marker, None);
}

/// A real catalog whose commits can fail as a network or a crash would make
/// them fail: before reaching the catalog, or after it applied the commit.
struct FaultyCatalog {
    inner: Arc<dyn Catalog>,
    fault: Mutex<Option<Fault>>,
    /// When set, every commit is refused with an error of this kind, as a
    /// catalog refuses a request it finds wrong.
    refusal: Mutex<Option<iceberg::ErrorKind>>,
    /// When set, the next commit is applied and then answered with an error
    /// of this kind, as a catalog that failed after applying it.
    refusal_after_landing: Mutex<Option<iceberg::ErrorKind>>,
    dead: AtomicBool,
    /// A rival committer, and what it commits, before the second load of a
    /// table or the first commit.
    rival: tokio::sync::Mutex<Option<(IcebergSink, CommitRequest)>>,
    loads: AtomicUsize,
    /// Commits that reached this catalog.
    commits: AtomicUsize,
}

impl std::fmt::Debug for FaultyCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultyCatalog")
    }
}

fn injected() -> iceberg::Error {
    iceberg::Error::new(iceberg::ErrorKind::Unexpected, "injected fault")
}

impl FaultyCatalog {
    fn alive(&self) -> iceberg::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(injected());
        }
        Ok(())
    }

    /// Lets the rival commit, once.
    async fn let_the_rival_land(&self) {
        if let Some((sink, request)) = self.rival.lock().await.take() {
            let outcome = sink.commit(&request).await.unwrap();
            assert!(outcome.applied, "the rival lands first");
        }
    }
}

#[async_trait]
impl Catalog for FaultyCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.alive()?;
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.alive()?;
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.alive()?;
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.alive()?;
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.alive()?;
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.alive()?;
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.alive()?;
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.alive()?;
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        self.alive()?;
        if self.loads.fetch_add(1, Ordering::SeqCst) == 1 {
            self.let_the_rival_land().await;
        }
        self.inner.load_table(table).await
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.alive()?;
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.alive()?;
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.alive()?;
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.alive()?;
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.alive()?;
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        self.alive()?;
        self.commits.fetch_add(1, Ordering::SeqCst);
        if let Some(kind) = *self.refusal.lock().unwrap() {
            return Err(iceberg::Error::new(kind, "injected refusal"));
        }
        self.let_the_rival_land().await;
        let refusal_after_landing = self.refusal_after_landing.lock().unwrap().take();
        if let Some(kind) = refusal_after_landing {
            self.inner.update_table(commit).await?;
            return Err(iceberg::Error::new(kind, "injected refusal after landing"));
        }
        let fault = self.fault.lock().unwrap().take();
        match fault {
            None => self.inner.update_table(commit).await,
            Some(Fault::FailBefore) => Err(injected()),
            Some(Fault::CrashBefore) => {
                self.dead.store(true, Ordering::SeqCst);
                Err(injected())
            }
            // A catalog commit that landed fails on its retry just as it
            // does when its response is lost.
            Some(Fault::LoseResponse | Fault::LandedBeforeRetry) => {
                self.inner.update_table(commit).await?;
                Err(injected())
            }
            Some(Fault::CrashAfter) => {
                let result = self.inner.update_table(commit).await;
                self.dead.store(true, Ordering::SeqCst);
                result?;
                Err(injected())
            }
        }
    }
}

/// The partition spec changes between seal and commit (pyiceberg drops a
/// partition field). Iceberg appends only files of the default spec, so the
/// commit is refused before any attempt, naming both specs and the way out,
/// and nothing lands; a retry says the same. The way out, taken with
/// pyiceberg (the field added back: spec 0 is the default again), lets the
/// pending checkpoint commit; the spec is then evolved again and later runs
/// write and commit under the new spec. Files written under it and then
/// refused after the last partition field went name the default spec as
/// unpartitioned.
#[tokio::test]
async fn a_partition_spec_changed_between_seal_and_commit_is_refused_with_the_way_out() {
    let fixture = Fixture::new(Backend::local()).await;
    let store = fixture.store().await;
    process(&store, &fixture.sink().await, &range(0, 300)).await;
    assert_eq!(fixture.evolve_spec("drop", "id_bucket"), 1);

    let committer = Committer::new(store.clone(), fixture.sink().await, PIPELINE);
    for _ in 0..2 {
        let err = committer
            .commit_pending()
            .await
            .expect_err("files of spec 0 after the default became spec 1");
        let shown = format!("{err}: {:?}", std::error::Error::source(&err));
        for expected in [
            "partition spec 0 (region=identity(region), id_bucket=bucket[4](id))",
            "default spec is now 1 (region=identity(region))",
            "nothing was committed",
            "evolve the partition spec back to the fields of spec 0",
        ] {
            assert!(shown.contains(expected), "{expected:?} not in: {shown}");
        }
        let readout = fixture.read();
        readout.assert_each_once([]);
        assert_eq!(readout.marker, None);
    }

    assert_eq!(fixture.evolve_spec("add", "id_bucket"), 0);
    let report = committer.commit_pending().await.unwrap();
    assert_eq!(report.rows_applied(), 300);
    fixture.read().assert_each_once(range(0, 300));

    assert_eq!(fixture.evolve_spec("drop", "id_bucket"), 1);
    process(&store, &fixture.sink().await, &range(300, 400)).await;
    let committer = Committer::new(store.clone(), fixture.sink().await, PIPELINE);
    assert_eq!(
        committer.commit_pending().await.unwrap().rows_applied(),
        100
    );
    let readout = fixture.read();
    readout.assert_each_once(range(0, 400));
    assert_eq!(readout.marker, Some(2));

    // The last partition field dropped as well: the refusal names the new
    // default spec as unpartitioned.
    process(&store, &fixture.sink().await, &range(400, 450)).await;
    let unpartitioned = fixture.evolve_spec("drop", "region");
    let committer = Committer::new(store.clone(), fixture.sink().await, PIPELINE);
    let err = committer
        .commit_pending()
        .await
        .expect_err("files of spec 1 after the default became unpartitioned");
    let shown = format!("{err}: {:?}", std::error::Error::source(&err));
    let expected = format!("default spec is now {unpartitioned} (unpartitioned)");
    assert!(shown.contains(&expected), "{expected:?} not in: {shown}");
    fixture.read().assert_each_once(range(0, 400));
}
