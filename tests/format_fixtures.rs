//! Stores written by an older format version must keep being read. The store in
//! `tests/fixtures/store-v1/` was written by format version 1 and is committed;
//! this test reads a copy of it with the current code.
//!
//! To write it again (only when adding a new fixture version, never to make this
//! test pass): `cargo test --test format_fixtures -- --ignored write_v1_fixture`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use arrow::datatypes::DataType;
use tidemark::store::{
    CheckpointState, CheckpointStore, CompactionOptions, FileRecord, KeyColumn, KeySchema,
    StoreLocation, TableFileMetadata,
};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

fn key_schema() -> KeySchema {
    KeySchema::new(vec![
        KeyColumn::new("tenant", DataType::Utf8),
        KeyColumn::new("id", DataType::Int64),
    ])
    .expect("key schema")
}

fn keys(tenant: Option<&str>, ids: &[Option<i64>]) -> Vec<ArrayRef> {
    vec![
        Arc::new(StringArray::from(vec![tenant; ids.len()])) as ArrayRef,
        Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
    ]
}

fn record(path: &str) -> FileRecord {
    FileRecord {
        path: path.into(),
        file_size_bytes: 4096,
        record_count: 3,
        table_metadata: TableFileMetadata {
            format: "iceberg.data-file".into(),
            version: 1,
            body: serde_json::json!({ "file_path": path, "record_count": 3, "partition": { "day": 20000 } }),
        },
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[tokio::test]
async fn reads_a_store_written_by_format_v1() {
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(&fixture_dir(), dir.path());
    let url = format!("file://{}", dir.path().display());
    let location = StoreLocation::from_url(&url, &Default::default()).expect("location");
    let store = CheckpointStore::open_existing(location)
        .await
        .expect("open v1 store");
    assert_eq!(store.key_schema(), &key_schema());

    let state = store.load().await.expect("load");
    assert_eq!(state.compacted_count(), 1, "one checkpoint was compacted");
    assert_eq!(state.checkpoints.len(), 2, "one committed, one pending");
    let pending = state.pending_commit();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].files,
        vec![record("file:///warehouse/t/data/00000.parquet")]
    );
    assert_eq!(
        pending[0].properties.get("shard").map(String::as_str),
        Some("part-2")
    );
    assert_eq!(state.key_count(), 5 + 4 + 3);

    let mut seen = Vec::new();
    for file in state.key_files() {
        for batch in store.read_keys(&file).await.expect("read keys") {
            let tenants = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8");
            let ids = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64");
            for row in 0..batch.num_rows() {
                let tenant = tenants
                    .is_valid(row)
                    .then(|| tenants.value(row).to_string());
                let id = ids.is_valid(row).then(|| ids.value(row));
                seen.push((tenant, id));
            }
        }
    }
    seen.sort();
    let t = |s: &str| Some(s.to_string());
    let expected = vec![
        (None, Some(1)),
        (None, Some(2)),
        (None, Some(3)),
        (t("a"), None),
        (t("a"), Some(1)),
        (t("a"), Some(2)),
        (t("a"), Some(3)),
        (t("a"), Some(4)),
        (t("a"), Some(5)),
        (t("a"), Some(6)),
        (t("a"), Some(7)),
        (t("a"), Some(8)),
    ];
    assert_eq!(seen, expected);

    let staged = state.index.as_ref().expect("index").checkpoints[0];
    assert_eq!(
        store.checkpoint_state(staged).await.expect("state"),
        CheckpointState::Committed
    );
    // The current code keeps working on the old store.
    store
        .mark_committed(&[pending[0].checkpoint_id], &serde_json::json!({}))
        .await
        .expect("commit");
    let report = store
        .compact(&CompactionOptions::default())
        .await
        .expect("compact");
    assert_eq!(report.checkpoints_compacted, 2);
}

#[tokio::test]
#[ignore = "writes the committed fixture; run by hand only when adding a fixture version"]
async fn write_v1_fixture() {
    let dir = fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let url = format!("file://{}", dir.display());
    let location = StoreLocation::from_url(&url, &Default::default()).expect("location");
    let store = CheckpointStore::open_at(location, key_schema())
        .await
        .expect("open");

    let mut compacted = store.begin().await.expect("begin");
    compacted
        .stage_keys(&keys(
            Some("a"),
            &[Some(1), Some(2), Some(3), Some(4), Some(5)],
        ))
        .await
        .expect("stage");
    let id = compacted.seal().await.expect("seal").checkpoint_id;
    store
        .mark_committed(&[id], &serde_json::json!({"sequence": 1}))
        .await
        .expect("commit");
    store
        .compact(&CompactionOptions::default())
        .await
        .expect("compact");

    let mut committed = store.begin().await.expect("begin");
    committed
        .stage_keys(&keys(Some("a"), &[Some(6), Some(7), Some(8), None]))
        .await
        .expect("stage");
    let id = committed.seal().await.expect("seal").checkpoint_id;
    store
        .mark_committed(&[id], &serde_json::json!({"sequence": 2}))
        .await
        .expect("commit");

    let mut pending = store.begin().await.expect("begin");
    pending
        .stage_keys(&keys(None, &[Some(1), Some(2), Some(3)]))
        .await
        .expect("stage");
    pending
        .record_in_flight("file:///warehouse/t/data/00000.parquet")
        .await
        .expect("in flight");
    pending
        .stage_file(record("file:///warehouse/t/data/00000.parquet"))
        .await
        .expect("stage file");
    pending.set_property("shard", "part-2");
    pending.seal().await.expect("seal");

    let mut staged = store.begin().await.expect("begin");
    staged
        .stage_keys(&keys(Some("z"), &[Some(99)]))
        .await
        .expect("stage");
}
