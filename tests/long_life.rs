//! A pipeline that lives for hundreds of runs. Each run appends 10 new keys
//! from its own source folder, so every run reads the same amount; the
//! pipeline compacts by itself (no `tidemark compact`). The store must stay
//! bounded: a run reads a bounded number of key runs, lease epochs are
//! pruned, and after gc and a compaction the store holds a constant number
//! of objects however many runs came before.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use support::{FaultyStore, MemoryTable, MemoryWriter};
use tidemark::gc::collect_garbage;
use tidemark::pipeline::Pipeline;
use tidemark::source::{ParquetSource, ParquetSourceOptions};
use tidemark::store::{
    CheckpointStore, CompactionOptions, KeySchema, StoreLocation, AUTO_COMPACTION_CHECKPOINTS,
    AUTO_COMPACTION_KEPT_COMMITS, KEPT_LEASE_EPOCHS,
};
use tidemark::transform::Transform;

const KEYS_PER_RUN: i64 = 10;

/// Runs in the test (`TIDEMARK_LONG_LIFE_RUNS` sets another number).
fn runs() -> i64 {
    std::env::var("TIDEMARK_LONG_LIFE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

fn write_source(folder: &std::path::Path, ids: std::ops::Range<i64>) {
    std::fs::create_dir_all(folder).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from_iter_values(ids)) as ArrayRef],
    )
    .unwrap();
    let file = std::fs::File::create(folder.join("part-0.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Run `run` of the pipeline: over a folder of its own below `dir` holding
/// `KEYS_PER_RUN` keys no earlier run saw.
async fn run_over_new_keys(
    store: &CheckpointStore,
    table: &MemoryTable,
    dir: &std::path::Path,
    run: i64,
) -> tidemark::pipeline::RunReport {
    let folder = dir.join(format!("run-{run:05}"));
    write_source(&folder, run * KEYS_PER_RUN..(run + 1) * KEYS_PER_RUN);
    let source = ParquetSource::open(
        &format!("file://{}/", folder.display()),
        &ParquetSourceOptions::default(),
    )
    .await
    .unwrap();
    Pipeline::new(store.clone(), table.clone(), "long-life")
        .run(
            Arc::new(source),
            &Transform::new(),
            &mut MemoryWriter {
                table: table.clone(),
            },
        )
        .await
        .unwrap()
}

/// Objects in the store, by their first path segment below the root.
async fn objects_by_kind(bucket: &InMemory) -> BTreeMap<String, usize> {
    let listed: Vec<object_store::ObjectMeta> = bucket
        .list(Some(&Path::from("store")))
        .try_collect()
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for meta in listed {
        let kind = meta.location.parts().nth(1).unwrap().as_ref().to_string();
        *counts.entry(kind).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_runs_leave_a_bounded_store() {
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(InMemory::new());
    // No faults: the wrapper records what each LIST asked for.
    let recorder = Arc::new(FaultyStore::new(bucket.clone()));
    let keys = KeySchema::single("id", DataType::Int64).unwrap();
    let store = CheckpointStore::open_at(
        StoreLocation::from_object_store(recorder.clone(), Path::from("store")),
        keys,
    )
    .await
    .unwrap();
    let table = MemoryTable::default();
    let mut run_times = Vec::new();
    for run in 0..runs {
        let started = Instant::now();
        let report = run_over_new_keys(&store, &table, dir.path(), run).await;
        run_times.push(started.elapsed());
        assert_eq!(report.rows_written, KEYS_PER_RUN as u64, "run {run}");
        // What the next run reads: the index's runs and the checkpoints not
        // yet folded into it (beside those of the latest commits, kept out
        // so that they can be reprocessed), both bounded.
        let state = store.load().await.unwrap();
        let waiting = state.checkpoints.len();
        let index_runs = state.index.as_ref().map_or(0, |i| i.runs.len());
        assert!(
            waiting < AUTO_COMPACTION_CHECKPOINTS + AUTO_COMPACTION_KEPT_COMMITS as usize,
            "run {run}: {waiting} checkpoints wait for compaction"
        );
        assert!(
            index_runs <= CompactionOptions::default().max_runs,
            "run {run}: {index_runs} index runs"
        );
    }

    // A rerun of the first folder finds every key processed.
    let first = ParquetSource::open(
        &format!("file://{}/", dir.path().join("run-00000").display()),
        &ParquetSourceOptions::default(),
    )
    .await
    .unwrap();
    let again = Pipeline::new(store.clone(), table.clone(), "long-life")
        .run(
            Arc::new(first),
            &Transform::new(),
            &mut MemoryWriter {
                table: table.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(again.rows_written, 0, "the first run's keys were lost");

    collect_garbage(&store, &table).await.unwrap();
    store.compact(&CompactionOptions::default()).await.unwrap();
    collect_garbage(&store, &table).await.unwrap();

    // The table holds every run's files once.
    let appended = table.appended();
    let distinct: BTreeSet<&String> = appended.iter().collect();
    assert_eq!(distinct.len(), appended.len(), "a file appended twice");
    let mut rows = 0;
    for path in &appended {
        let bytes = table.files.get(&Path::from(path.as_str())).await.unwrap();
        let content = bytes.bytes().await.unwrap();
        rows += std::str::from_utf8(&content)
            .unwrap()
            .parse::<i64>()
            .unwrap();
    }
    assert_eq!(rows, runs * KEYS_PER_RUN, "rows in the table");

    // Each LIST reads one directory of the store, never the whole store,
    // whose listing would grow with its history. Among them the ones that
    // find stray objects: staged checkpoints, superseded index key files and
    // heartbeats of pruned lease epochs.
    let listed: BTreeSet<String> = recorder.listed_prefixes().into_iter().collect();
    let whole: Vec<&String> = listed
        .iter()
        .filter(|prefix| prefix.is_empty() || prefix.as_str() == "store")
        .collect();
    assert!(whole.is_empty(), "the whole store listed: {listed:?}");
    for directory in [
        "store/staging",
        "store/index-keys",
        "store/lease/pipeline/heartbeats",
    ] {
        assert!(
            listed.contains(directory),
            "{directory} not listed: {listed:?}"
        );
    }

    let objects = objects_by_kind(&bucket).await;
    let total: usize = objects.values().sum();
    let lease = objects.get("lease").copied().unwrap_or(0);
    let kept_epochs = KEPT_LEASE_EPOCHS as usize + 1;
    eprintln!("after {runs} runs, gc and compact: {total} objects {objects:?}");
    assert_eq!(lease, 2 * kept_epochs, "lease epochs and heartbeats kept");
    // The descriptor, one shard layout, the latest commit intent, the index
    // (current and previous generation, each at most `max_runs` runs of one
    // file here), the lease, and the staged objects (begin marker, key file,
    // in-flight records) of at most one compaction's checkpoints.
    let max_runs = CompactionOptions::default().max_runs;
    let bound = 3 + 2 * (1 + max_runs) + 2 * kept_epochs + 4 * AUTO_COMPACTION_CHECKPOINTS;
    assert!(
        total <= bound,
        "{total} objects after {runs} runs (bound {bound}): {objects:?}"
    );

    let median = |times: &[Duration]| {
        let mut sorted = times.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2]
    };
    let window = 20.min(run_times.len());
    eprintln!(
        "median run time: runs 1-{window} {:?}, the last {window} {:?}",
        median(&run_times[..window]),
        median(&run_times[run_times.len() - window..])
    );
}

/// Directories below `dir` that hold no file at any depth.
fn empty_directories(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn files_below(dir: &std::path::Path, empty: &mut Vec<std::path::PathBuf>) -> usize {
        let mut files = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            files += if path.is_dir() {
                files_below(&path, empty)
            } else {
                1
            };
        }
        if files == 0 {
            empty.push(dir.to_path_buf());
        }
        files
    }
    let mut empty = Vec::new();
    files_below(dir, &mut empty);
    empty
}

/// On a local disk, deleting a store object also removes the directories it
/// leaves empty: a store that kept every checkpoint's staging directories
/// would walk thousands of them on every listing after a few hundred runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_store_leaves_no_empty_directories() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = CheckpointStore::open(
        &format!("file://{}", store_dir.display()),
        &Default::default(),
        KeySchema::single("id", DataType::Int64).unwrap(),
    )
    .await
    .unwrap();
    let table = MemoryTable::default();
    let runs = 2 * AUTO_COMPACTION_CHECKPOINTS as i64 + 3;
    for run in 0..runs {
        run_over_new_keys(&store, &table, dir.path(), run).await;
    }
    collect_garbage(&store, &table).await.unwrap();
    store.compact(&CompactionOptions::default()).await.unwrap();
    collect_garbage(&store, &table).await.unwrap();
    let empty = empty_directories(&store_dir);
    assert!(
        empty.is_empty(),
        "{} empty directories: {empty:?}",
        empty.len()
    );
}

/// Runs that only seal (`Pipeline::sealing_only`, a distributed run's
/// tasks) commit nothing, neither their own checkpoints nor, in their
/// repair, earlier ones; their keys are processed at once, and one
/// `commit_pending` afterwards commits them all in one table commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_only_runs_leave_one_commit_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeySchema::single("id", DataType::Int64).unwrap();
    let store = CheckpointStore::open_at(
        StoreLocation::from_object_store(Arc::new(InMemory::new()), Path::from("store")),
        keys,
    )
    .await
    .unwrap();
    let table = MemoryTable::default();
    let sealing_run = |run: i64| {
        let folder = dir.path().join(format!("run-{run}"));
        write_source(&folder, run * KEYS_PER_RUN..(run + 1) * KEYS_PER_RUN);
        let (store, table) = (store.clone(), table.clone());
        async move {
            let source = ParquetSource::open(
                &format!("file://{}/", folder.display()),
                &ParquetSourceOptions::default(),
            )
            .await
            .unwrap();
            Pipeline::new(store, table.clone(), "long-life")
                .sealing_only()
                .run(
                    Arc::new(source),
                    &Transform::new(),
                    &mut MemoryWriter { table },
                )
                .await
                .unwrap()
        }
    };
    for run in 0..2 {
        let report = sealing_run(run).await;
        assert_eq!(report.rows_written, KEYS_PER_RUN as u64);
        assert!(report.committed.commits.is_empty(), "run {run} committed");
        assert!(report.repaired.commits.is_empty(), "run {run} repaired");
        assert_eq!(table.marker(), None, "run {run}");
        assert!(table.appended().is_empty(), "run {run}");
    }
    let state = store.load().await.unwrap();
    assert_eq!(state.pending_commit().len(), 2);
    let again = sealing_run(0).await;
    assert_eq!(again.rows_written, 0, "sealed keys are processed");
    let committed = tidemark::commit::Committer::new(store.clone(), table.clone(), "long-life")
        .commit_pending()
        .await
        .unwrap();
    assert_eq!(committed.commits.len(), 1, "{committed:?}");
    assert_eq!(committed.rows_applied(), 2 * KEYS_PER_RUN as u64);
    assert_eq!(table.marker(), Some(1));
    assert_eq!(table.appended().len(), 2);
}
