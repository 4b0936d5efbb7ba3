//! Checkpointed reads of a partitioned Delta table written by the deltalake
//! Python package: a rerun yields nothing, each append yields exactly its new
//! keys, and partition columns come back with their values and types.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use support::BoundedOutput;

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use tidemark::read::{CheckpointedRead, ReadOptions};
use tidemark::source::ParquetSourceOptions;
use tidemark::store::{CheckpointStore, KeyColumn, KeySchema};
use tidemark_delta::DeltaSource;

fn append(table_dir: &std::path::Path, ids: &[i64]) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/deltalake_append.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg(table_dir)
        .arg(serde_json::to_string(ids).unwrap())
        .bounded_output()
        .expect("run python3 (bash .ci/run installs deltalake)");
    assert!(
        output.status.success(),
        "deltalake append failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn source(table_dir: &std::path::Path) -> DeltaSource {
    let url = url::Url::from_directory_path(table_dir).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    DeltaSource::open(&table, &ParquetSourceOptions::default())
        .await
        .unwrap()
}

/// Runs a read; returns `(id, region)` of the rows passed, sorted.
async fn run(store: &CheckpointStore, source: DeltaSource, budget: usize) -> Vec<(i64, String)> {
    let options = ReadOptions {
        memory_budget_bytes: budget,
        projection: Some(vec!["region".into(), "id".into()]),
        ..Default::default()
    };
    let mut read = CheckpointedRead::open(store, Arc::new(source), options)
        .await
        .unwrap();
    let mut writer = store.begin().await.unwrap();
    let mut rows = Vec::new();
    while let Some(batch) = read.next_batch(&mut writer).await.unwrap() {
        let regions = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let ids = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for i in 0..batch.num_rows() {
            rows.push((ids.value(i), regions.value(i).to_string()));
        }
    }
    writer.seal().await.unwrap();
    rows.sort();
    rows
}

fn region(i: i64) -> String {
    if i % 2 == 0 { "eu" } else { "us" }.to_string()
}

async fn reruns_and_appends(keys: KeySchema, budget: usize) {
    let dir = tempfile::tempdir().unwrap();
    let table_dir = dir.path().join("table");
    let store = CheckpointStore::open(
        &format!("file://{}/store", dir.path().display()),
        &HashMap::new(),
        keys,
    )
    .await
    .unwrap();
    let two53 = 1i64 << 53;
    let first: Vec<i64> = (0..200).chain([two53, i64::MAX]).collect();
    append(&table_dir, &first);
    let mut expected: Vec<(i64, String)> = first.iter().map(|&i| (i, region(i))).collect();
    expected.sort();
    assert_eq!(
        run(&store, source(&table_dir).await, budget).await,
        expected
    );
    assert!(run(&store, source(&table_dir).await, budget)
        .await
        .is_empty());

    let second: Vec<i64> = (150..300)
        .chain([two53 - 1, two53 + 1, i64::MAX - 1])
        .collect();
    append(&table_dir, &second);
    let mut new: Vec<(i64, String)> = (200..300)
        .chain([two53 - 1, two53 + 1, i64::MAX - 1])
        .map(|i| (i, region(i)))
        .collect();
    new.sort();
    assert_eq!(run(&store, source(&table_dir).await, budget).await, new);
    assert!(run(&store, source(&table_dir).await, budget)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_source_in_memory() {
    reruns_and_appends(KeySchema::single("id", DataType::Int64).unwrap(), 1 << 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_source_partitioned() {
    reruns_and_appends(KeySchema::single("id", DataType::Int64).unwrap(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_key_with_a_partition_column() {
    let keys = KeySchema::new(vec![
        KeyColumn::new("region", DataType::Utf8),
        KeyColumn::new("id", DataType::Int64),
    ])
    .unwrap();
    reruns_and_appends(keys, 1 << 30).await;
}
