//! Deletes are where a crash can lose a file that is still referenced:
//! compaction deletes markers, staged key files, superseded index files and
//! pruned intents; gc deletes orphan data files. These tests kill the
//! process at every delete of each (the Nth delete, for every N) and check
//! that a rerun finishes the job, that no key is lost, and that no file a
//! manifest carries is deleted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array};
use arrow_schema::DataType;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use support::{Fault, FaultyStore, MemoryTable, Op};
use tidemark::commit::Committer;
use tidemark::gc::collect_garbage;
use tidemark::store::{
    CheckpointStore, CompactionOptions, FileRecord, KeySchema, StoreLocation, TableFileMetadata,
};

fn keys() -> KeySchema {
    KeySchema::single("id", DataType::Int64).unwrap()
}

fn file(path: &str) -> FileRecord {
    FileRecord {
        path: path.to_string(),
        file_size_bytes: 1,
        record_count: 10,
        table_metadata: TableFileMetadata {
            format: "test".into(),
            version: 1,
            body: serde_json::Value::Null,
        },
    }
}

/// A store of `checkpoints` committed checkpoints of 10 keys each, every
/// one with a kept data file and an orphan, all in `table_files`; compacted
/// once (so a second compaction also supersedes index files).
async fn history(bucket: Arc<InMemory>, table_files: Arc<InMemory>, checkpoints: i64) {
    let store = CheckpointStore::open_at(
        StoreLocation::from_object_store(bucket, Path::from("store")),
        keys(),
    )
    .await
    .unwrap();
    let table = MemoryTable::with_files(table_files.clone());
    for n in 0..checkpoints {
        let mut writer = store.begin().await.unwrap();
        writer
            .stage_keys(&[Arc::new(Int64Array::from_iter_values(n * 10..n * 10 + 10)) as ArrayRef])
            .await
            .unwrap();
        for name in [format!("data/kept-{n}"), format!("data/orphan-{n}")] {
            writer.record_in_flight(&name).await.unwrap();
            table_files
                .put(&Path::from(name.as_str()), PutPayload::from("rows"))
                .await
                .unwrap();
        }
        writer
            .stage_file(file(&format!("data/kept-{n}")))
            .await
            .unwrap();
        writer.seal().await.unwrap();
        Committer::new(store.clone(), table.clone(), "p")
            .commit_pending()
            .await
            .unwrap();
        if n == checkpoints / 2 {
            collect_garbage(&store, &table).await.unwrap();
            store.compact(&CompactionOptions::default()).await.unwrap();
        }
    }
}

async fn copy(from: &InMemory) -> Arc<InMemory> {
    use futures::StreamExt as _;
    let to = Arc::new(InMemory::new());
    let listed: Vec<_> = from.list(None).collect().await;
    for meta in listed {
        let path = meta.unwrap().location;
        let bytes = from.get(&path).await.unwrap().bytes().await.unwrap();
        to.put(&path, PutPayload::from(bytes)).await.unwrap();
    }
    to
}

async fn open(bucket: Arc<dyn ObjectStore>) -> CheckpointStore {
    CheckpointStore::open_existing(StoreLocation::from_object_store(
        bucket,
        Path::from("store"),
    ))
    .await
    .unwrap()
}

/// Every key is still skipped, and every key file the state names reads.
async fn no_key_lost(store: &CheckpointStore, expected: u64) {
    let state = store.load().await.unwrap();
    assert_eq!(state.key_count(), expected);
    let mut read = 0;
    for key_file in state.key_files() {
        for batch in store.read_keys(&key_file).await.unwrap() {
            read += batch.num_rows() as u64;
        }
    }
    assert_eq!(read, expected);
}

#[tokio::test]
async fn compaction_killed_at_each_delete_loses_no_key_and_a_rerun_finishes() {
    let base = Arc::new(InMemory::new());
    let table_files = Arc::new(InMemory::new());
    history(base.clone(), table_files.clone(), 6).await;
    let table = MemoryTable::with_files(table_files);
    // Count the deletes of a full gc and compaction.
    let counting = Arc::new(FaultyStore::new(copy(&base).await));
    let store = open(counting.clone()).await;
    collect_garbage(&store, &table).await.unwrap();
    let deletes_before = counting.deletes.load(std::sync::atomic::Ordering::SeqCst);
    let report = store.compact(&CompactionOptions::default()).await.unwrap();
    let deletes = counting.deletes.load(std::sync::atomic::Ordering::SeqCst) - deletes_before;
    assert!(
        report.checkpoints_compacted > 0 && deletes >= 3,
        "{report:?}, {deletes} deletes"
    );

    for nth in 0..deletes {
        for fault in [Fault::CrashBefore, Fault::CrashAfter] {
            let bucket = copy(&base).await;
            let faulty = Arc::new(FaultyStore::new(bucket.clone()));
            let store = open(faulty.clone()).await;
            collect_garbage(&store, &table).await.unwrap();
            faulty.inject_on(Op::Delete, "", fault, nth, 1);
            let killed = store.compact(&CompactionOptions::default()).await;
            assert!(
                killed.is_err(),
                "delete {nth} ({fault:?}) did not kill compaction"
            );
            assert!(faulty.is_dead());
            // The next process.
            let store = open(bucket.clone()).await;
            no_key_lost(&store, 60).await;
            store.compact(&CompactionOptions::default()).await.unwrap();
            no_key_lost(&store, 60).await;
            let status = store.status().await.unwrap();
            assert_eq!(status.compacted, 6, "delete {nth} ({fault:?}): {status:?}");
        }
    }
}

#[tokio::test]
async fn gc_killed_at_each_delete_keeps_every_kept_file_and_a_rerun_finishes() {
    let base = Arc::new(InMemory::new());
    let base_files = Arc::new(InMemory::new());
    history(base.clone(), base_files.clone(), 6).await;
    // The checkpoints after the first compaction (4 and 5) have an orphan each.
    for nth in 0..2 {
        for fault in [Fault::CrashBefore, Fault::CrashAfter, Fault::FailBefore] {
            let bucket = copy(&base).await;
            let files = copy(&base_files).await;
            let faulty_files = Arc::new(FaultyStore::new(files.clone()));
            faulty_files.inject_on(Op::Delete, "orphan", fault, nth, 1);
            let store = open(bucket.clone()).await;
            let table = MemoryTable::with_files(faulty_files.clone());
            assert!(
                collect_garbage(&store, &table).await.is_err(),
                "delete {nth} ({fault:?}) did not stop gc"
            );
            let table = MemoryTable::with_files(files.clone());
            let report = collect_garbage(&store, &table).await.unwrap();
            assert!(report.files_deleted >= 1, "{report:?}");
            for n in 0..6 {
                let kept = Path::from(format!("data/kept-{n}"));
                assert!(files.head(&kept).await.is_ok(), "gc deleted {kept}");
                let orphan = Path::from(format!("data/orphan-{n}"));
                assert!(files.head(&orphan).await.is_err(), "{orphan} survived");
            }
            assert!(store.orphans().await.unwrap().is_empty());
        }
    }
}

#[tokio::test]
async fn a_failed_listing_is_an_error_naming_the_prefix() {
    let bucket = Arc::new(InMemory::new());
    history(bucket.clone(), Arc::new(InMemory::new()), 2).await;
    let faulty = Arc::new(FaultyStore::new(bucket));
    let store = open(faulty.clone()).await;
    faulty.inject_on(Op::List, "sealed", Fault::FailBefore, 0, 1);
    let err = store.load().await.expect_err("the listing fails");
    assert!(err.to_string().contains("store/sealed"), "{err}");
    store.load().await.unwrap();
}

/// The reports of gc and compaction count what they did: checkpoints
/// waiting for gc, orphans deleted, and the runs of an index that a
/// compaction with nothing to do leaves as it is.
#[tokio::test]
async fn reports_count_what_gc_and_compaction_did() {
    let base = Arc::new(InMemory::new());
    let table_files = Arc::new(InMemory::new());
    // Six checkpoints, gc and compaction after the fourth: the fifth and
    // sixth have one orphan each.
    history(base.clone(), table_files.clone(), 6).await;
    let table = MemoryTable::with_files(table_files);
    let store = open(copy(&base).await).await;
    let before_gc = store.compact(&CompactionOptions::default()).await.unwrap();
    assert_eq!(before_gc.waiting_for_gc, 2, "{before_gc:?}");
    assert_eq!(before_gc.generation, None, "{before_gc:?}");
    assert_eq!(
        before_gc.runs, 1,
        "the index's run, left as it is: {before_gc:?}"
    );
    let gc = collect_garbage(&store, &table).await.unwrap();
    assert_eq!(gc.checkpoints, 2, "{gc:?}");
    assert_eq!(gc.files_deleted, 2, "{gc:?}");
    assert_eq!(gc.prefixes_deleted, 0, "{gc:?}");
    let compacted = store.compact(&CompactionOptions::default()).await.unwrap();
    assert_eq!(compacted.checkpoints_compacted, 2, "{compacted:?}");
    assert_eq!(compacted.waiting_for_gc, 0, "{compacted:?}");
    // Intents 1 to 3 went with the first compaction; 4 and 5 go now, the
    // latest (6) stays.
    assert_eq!(compacted.intents_pruned, 2, "{compacted:?}");
    let index = store.load().await.unwrap().index.unwrap();
    assert_eq!(index.committed_rows, 60, "6 checkpoints of one 10-row file");
}
