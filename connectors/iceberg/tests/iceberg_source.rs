//! Checkpointed reads of an Iceberg table written by pyiceberg into a SQL
//! catalog on SQLite: a rerun yields nothing, each append yields exactly its
//! new keys, including the int64 edge cases.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use support::BoundedOutput;

use arrow::array::{Array, Int64Array};
use arrow::datatypes::DataType;
use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder, TableIdent};
use iceberg_catalog_sql::{SqlCatalogBuilder, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE};
use tidemark::read::{CheckpointedRead, FilterMode, ReadOptions};
use tidemark::store::{CheckpointStore, KeySchema};
use tidemark_iceberg::IcebergSource;

struct Warehouse {
    dir: tempfile::TempDir,
}

impl Warehouse {
    fn db(&self) -> String {
        format!("{}/catalog.db", self.dir.path().display())
    }

    fn append(&self, ids: &[i64]) {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/pyiceberg_append.py"
        );
        let output = Command::new("python3")
            .arg(script)
            .arg(self.db())
            .arg(self.dir.path().join("warehouse"))
            .arg("pipeline.events")
            .arg(serde_json::to_string(ids).unwrap())
            .bounded_output()
            .expect("run python3 (bash .ci/run installs pyiceberg)");
        assert!(
            output.status.success(),
            "pyiceberg append failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn source(&self) -> IcebergSource {
        let catalog = SqlCatalogBuilder::default()
            .with_storage_factory(Arc::new(LocalFsStorageFactory))
            .load(
                "default",
                HashMap::from([
                    (
                        SQL_CATALOG_PROP_URI.to_string(),
                        format!("sqlite://{}", self.db()),
                    ),
                    (
                        SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                        format!("file://{}/warehouse", self.dir.path().display()),
                    ),
                ]),
            )
            .await
            .unwrap();
        let table = catalog
            .load_table(&TableIdent::from_strs(["pipeline", "events"]).unwrap())
            .await
            .unwrap();
        IcebergSource::open(&table)
            .await
            .unwrap()
            .with_batch_size(64)
    }
}

async fn run(store: &CheckpointStore, source: IcebergSource, budget: usize) -> Vec<i64> {
    let options = ReadOptions {
        memory_budget_bytes: budget,
        projection: Some(vec!["id".into()]),
        ..Default::default()
    };
    let mut read = CheckpointedRead::open(store, Arc::new(source), options)
        .await
        .unwrap();
    let mut writer = store.begin().await.unwrap();
    let mut ids = Vec::new();
    while let Some(batch) = read.next_batch(&mut writer).await.unwrap() {
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        ids.extend((0..column.len()).map(|i| column.value(i)));
    }
    writer.seal().await.unwrap();
    if budget == 1 && read.stats().checkpointed_keys > 0 {
        assert!(matches!(read.stats().mode, FilterMode::Partitioned { .. }));
    }
    ids.sort_unstable();
    ids
}

async fn reruns_and_appends(budget: usize) {
    let warehouse = Warehouse {
        dir: tempfile::tempdir().unwrap(),
    };
    let store_url = format!("file://{}/store", warehouse.dir.path().display());
    let store = CheckpointStore::open(
        &store_url,
        &HashMap::new(),
        KeySchema::single("id", DataType::Int64).unwrap(),
    )
    .await
    .unwrap();
    let two53 = 1i64 << 53;
    let first: Vec<i64> = (0..300).chain([two53, i64::MAX, i64::MIN]).collect();
    warehouse.append(&first);

    let mut expected = first.clone();
    expected.sort_unstable();
    assert_eq!(
        run(&store, warehouse.source().await, budget).await,
        expected
    );
    assert!(run(&store, warehouse.source().await, budget)
        .await
        .is_empty());

    // A second snapshot overlaps the first and brings the neighbours of the edges.
    let second: Vec<i64> = (250..400)
        .chain([two53 - 1, two53, two53 + 1, i64::MAX - 1, i64::MIN + 1])
        .collect();
    warehouse.append(&second);
    let mut new: Vec<i64> = (300..400)
        .chain([two53 - 1, two53 + 1, i64::MAX - 1, i64::MIN + 1])
        .collect();
    new.sort_unstable();
    assert_eq!(run(&store, warehouse.source().await, budget).await, new);
    assert!(run(&store, warehouse.source().await, budget)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_source_in_memory() {
    reruns_and_appends(1 << 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_source_partitioned() {
    reruns_and_appends(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_type_mismatch_is_refused_before_reading() {
    let warehouse = Warehouse {
        dir: tempfile::tempdir().unwrap(),
    };
    warehouse.append(&[1, 2, 3]);
    let store = CheckpointStore::open(
        "memory://",
        &HashMap::new(),
        KeySchema::single("id", DataType::Utf8).unwrap(),
    )
    .await
    .unwrap();
    let err = CheckpointedRead::open(
        &store,
        Arc::new(warehouse.source().await),
        ReadOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, tidemark::Error::KeySchemaMismatch { .. }),
        "{err}"
    );
}
