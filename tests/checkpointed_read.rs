//! Checkpointed reads of Parquet sources, on the local file system and on S3,
//! with the filter in memory and partitioned to spill files: a rerun yields
//! nothing, a grown source yields exactly its new keys, and the key edge cases,
//! duplicate policies and bad sources behave as documented.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use arrow_schema::DataType;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use support::Backend;
use tidemark::plan::{CheckpointedScanExec, UnprocessedTable};
use tidemark::read::{CheckpointedRead, DuplicatePolicy, FilterMode, ReadOptions, ReadStats};
use tidemark::source::{ParquetSource, ParquetSourceOptions, Source};
use tidemark::store::{CheckpointStore, CheckpointWriter, KeyColumn, KeySchema, StoreLocation};
use tidemark::Error;

/// A budget that holds everything, and one so small that every read partitions.
const IN_MEMORY: usize = 1 << 30;
const PARTITIONED: usize = 1;

struct Fixture {
    backend: Backend,
    budget: usize,
    source_url: String,
    options: HashMap<String, String>,
}

impl Fixture {
    fn new(backend: Backend, budget: usize) -> Self {
        let (source_url, options) = backend.data_url("source");
        Fixture {
            backend,
            budget,
            source_url,
            options,
        }
    }

    async fn store(&self, keys: KeySchema) -> CheckpointStore {
        CheckpointStore::open_at(self.backend.location(), keys)
            .await
            .unwrap()
    }

    async fn write(&self, name: &str, batch: &RecordBatch) {
        let location = StoreLocation::from_url(&self.source_url, &self.options).unwrap();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
        let path = Path::from(format!("{}/{name}", location.prefix));
        location
            .object_store
            .put(&path, bytes.into())
            .await
            .unwrap();
    }

    async fn source(&self) -> Arc<dyn Source> {
        self.source_at(&self.source_url).await
    }

    async fn source_at(&self, url: &str) -> Arc<dyn Source> {
        let options = ParquetSourceOptions {
            store_options: self.options.clone(),
            batch_size: 100,
            ..Default::default()
        };
        Arc::new(ParquetSource::open(url, &options).await.unwrap())
    }

    fn options(&self, duplicates: DuplicatePolicy) -> ReadOptions {
        ReadOptions {
            memory_budget_bytes: self.budget,
            duplicates,
            parallelism: 2,
            ..Default::default()
        }
    }

    fn expected_mode(&self, stats: &ReadStats) {
        match (self.budget, stats.mode) {
            (IN_MEMORY, FilterMode::InMemory) | (PARTITIONED, FilterMode::Partitioned { .. }) => {}
            // With nothing checkpointed and no duplicates to track, or no unit
            // left to read, nothing is held.
            (PARTITIONED, FilterMode::InMemory)
                if (stats.checkpointed_keys == 0 || stats.rows_read == 0)
                    && stats.peak_filter_bytes == 0 => {}
            (budget, mode) => panic!("budget {budget} ran in mode {mode:?}"),
        }
    }

    /// One run: reads everything through the store, stages, seals.
    async fn run(&self, store: &CheckpointStore) -> (Vec<RecordBatch>, ReadStats) {
        self.run_with(store, self.options(DuplicatePolicy::KeepFirst))
            .await
            .unwrap()
    }

    async fn run_with(
        &self,
        store: &CheckpointStore,
        options: ReadOptions,
    ) -> Result<(Vec<RecordBatch>, ReadStats), Error> {
        let mut read = CheckpointedRead::open(store, self.source().await, options).await?;
        let mut writer = store.begin().await?;
        let batches = read_to_end(&mut read, &mut writer).await?;
        writer.seal().await?;
        self.expected_mode(read.stats());
        Ok((batches, read.stats().clone()))
    }

    /// One run as the pipeline makes it: the units read to their end are
    /// recorded in the checkpoint, so later runs skip them.
    async fn run_recording(&self, store: &CheckpointStore) -> (Vec<RecordBatch>, ReadStats) {
        let options = self.options(DuplicatePolicy::KeepFirst);
        let mut read = CheckpointedRead::open(store, self.source().await, options)
            .await
            .unwrap();
        let mut writer = store.begin().await.unwrap();
        let batches = read_to_end(&mut read, &mut writer).await.unwrap();
        writer.record_finished_units(read.take_finished_units());
        let manifest = writer.seal().await.unwrap();
        assert_eq!(
            manifest.finished_units.len() as u64,
            read.stats().units_finished,
            "every unit read to its end is recorded"
        );
        self.expected_mode(read.stats());
        (batches, read.stats().clone())
    }
}

fn int_batch(ids: &[Option<i64>]) -> RecordBatch {
    let payload: Vec<String> = ids.iter().map(|id| format!("payload of {id:?}")).collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef),
        ("payload", Arc::new(StringArray::from(payload)) as ArrayRef),
    ])
    .unwrap()
}

fn some(range: std::ops::Range<i64>) -> Vec<Option<i64>> {
    range.map(Some).collect()
}

fn ids(batches: &[RecordBatch]) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    for batch in batches {
        let column = batch.column_by_name("id").unwrap();
        let ids = column.as_any().downcast_ref::<Int64Array>().unwrap();
        out.extend((0..ids.len()).map(|i| ids.is_valid(i).then(|| ids.value(i))));
    }
    out
}

fn sorted(mut v: Vec<Option<i64>>) -> Vec<Option<i64>> {
    v.sort();
    v
}

/// Marks every sealed checkpoint committed (as one table commit would), so
/// that a compaction folds them into the index.
async fn commit_every_checkpoint(store: &CheckpointStore) {
    let state = store.load().await.unwrap();
    let sealed: Vec<_> = state
        .checkpoints
        .iter()
        .map(|c| c.manifest.checkpoint_id)
        .collect();
    store
        .mark_committed(&sealed, &serde_json::json!({"sequence": 1}))
        .await
        .unwrap();
}

fn int_keys() -> KeySchema {
    KeySchema::single("id", DataType::Int64).unwrap()
}

async fn rerun_yields_nothing_and_growth_yields_new_keys(f: Fixture) {
    let store = f.store(int_keys()).await;
    f.write("a.parquet", &int_batch(&some(0..700))).await;
    f.write("b.parquet", &int_batch(&some(700..1000))).await;

    let (batches, stats) = f.run(&store).await;
    assert_eq!(sorted(ids(&batches)), some(0..1000));
    assert_eq!((stats.rows_read, stats.rows_passed), (1000, 1000));
    // Source order is kept: file a, then file b, each in row order.
    assert_eq!(ids(&batches), some(0..1000));

    let (batches, stats) = f.run(&store).await;
    assert!(ids(&batches).is_empty());
    assert_eq!((stats.checkpointed_keys, stats.rows_skipped), (1000, 1000));

    // The source grows with a file that overlaps the old keys.
    f.write("c.parquet", &int_batch(&some(900..1500))).await;
    let (batches, stats) = f.run(&store).await;
    assert_eq!(ids(&batches), some(1000..1500));
    assert_eq!((stats.rows_read, stats.rows_skipped), (1600, 1100));

    let (batches, _) = f.run(&store).await;
    assert!(ids(&batches).is_empty());
}

/// Units read to their end are recorded at the seal and not opened again; a
/// unit read in part, a new file, and a file replaced in place are read.
async fn finished_units_are_skipped_unopened(f: Fixture) {
    let store = f.store(int_keys()).await;
    f.write("a.parquet", &int_batch(&some(0..700))).await;
    f.write("b.parquet", &int_batch(&some(700..1000))).await;

    // A run that stops after its first batch (100 rows of a) finished no unit.
    let options = f.options(DuplicatePolicy::KeepFirst);
    let mut read = CheckpointedRead::open(&store, f.source().await, options)
        .await
        .unwrap();
    let mut writer = store.begin().await.unwrap();
    let first = read.next_batch(&mut writer).await.unwrap().unwrap();
    assert_eq!(ids(&[first]), some(0..100));
    assert!(read.take_finished_units().is_empty());
    writer.seal().await.unwrap();

    let (batches, stats) = f.run_recording(&store).await;
    assert_eq!(ids(&batches), some(100..1000));
    assert_eq!((stats.units_skipped, stats.units_finished), (0, 2));

    // Both units are finished: nothing is opened, no key is loaded.
    let (batches, stats) = f.run_recording(&store).await;
    assert!(batches.is_empty());
    assert_eq!(
        (stats.units_skipped, stats.rows_read, stats.rows_skipped),
        (2, 0, 1000)
    );
    assert_eq!(
        (stats.checkpointed_keys, stats.peak_filter_bytes),
        (1000, 0)
    );

    // The source grows by a file that overlaps the old keys: only it is read.
    f.write("c.parquet", &int_batch(&some(900..1500))).await;
    let (batches, stats) = f.run_recording(&store).await;
    assert_eq!(ids(&batches), some(1000..1500));
    assert_eq!(
        (stats.units_skipped, stats.rows_read, stats.rows_skipped),
        (2, 600, 1100)
    );

    // b is replaced in place with other keys: it is read again, a and c are not.
    f.write("b.parquet", &int_batch(&some(2000..2300))).await;
    let (batches, stats) = f.run_recording(&store).await;
    assert_eq!(ids(&batches), some(2000..2300));
    assert_eq!((stats.units_skipped, stats.rows_read), (2, 300));

    // Once the checkpoints are committed and compacted, the index keeps them.
    commit_every_checkpoint(&store).await;
    store.compact(&Default::default()).await.unwrap();
    let state = store.load().await.unwrap();
    assert!(state.checkpoints.is_empty(), "all compacted");
    // a, c, and b before and after its replacement.
    assert_eq!(state.index.as_ref().unwrap().finished_units.len(), 4);
    let (batches, stats) = f.run_recording(&store).await;
    assert!(batches.is_empty());
    assert_eq!((stats.units_skipped, stats.rows_read), (3, 0));
}

/// Every batch `read` returns, its keys staged into `writer`.
async fn read_to_end(
    read: &mut CheckpointedRead,
    writer: &mut CheckpointWriter,
) -> Result<Vec<RecordBatch>, Error> {
    let mut batches = Vec::new();
    while let Some(batch) = read.next_batch(writer).await? {
        batches.push(batch);
    }
    Ok(batches)
}

/// A store whose one sealed checkpoint holds the 2,000 multiples of 7 below
/// 14,000: many more keys than the small sources read through it.
async fn multiples_of_seven_checkpointed(f: &Fixture) -> CheckpointStore {
    let store = f.store(int_keys()).await;
    let mut writer = store.begin().await.unwrap();
    let checkpointed: Vec<i64> = (0..2000).map(|k| k * 7).collect();
    writer
        .stage_keys(&[Arc::new(Int64Array::from(checkpointed)) as ArrayRef])
        .await
        .unwrap();
    writer.seal().await.unwrap();
    store
}

/// 150 source rows against that store: 50 checkpointed (multiples of 21),
/// then 100 new (20,000 to 20,099).
fn checkpointed_and_new_rows() -> Vec<Option<i64>> {
    let mut rows: Vec<Option<i64>> = (0..50).map(|k| Some(k * 7 * 3)).collect();
    rows.extend((0..100).map(|k| Some(20_000 + k)));
    rows
}

/// A source much smaller than the checkpoint has its keys read first, and
/// the filter holds only the checkpointed keys among them.
async fn a_small_source_holds_only_its_checkpointed_keys(f: Fixture) {
    let store = multiples_of_seven_checkpointed(&f).await;
    // 150 rows: 50 checkpointed, 100 new, one of them twice.
    let mut rows = checkpointed_and_new_rows();
    rows.push(Some(20_000));
    f.write("a.parquet", &int_batch(&rows)).await;

    let (batches, stats) = f.run(&store).await;
    assert_eq!(ids(&batches), some(20_000..20_100));
    assert_eq!(
        (
            stats.rows_read,
            stats.rows_skipped,
            stats.duplicates_dropped
        ),
        (151, 50, 1)
    );
    assert_eq!(stats.checkpointed_keys, 2000);
    if f.budget == IN_MEMORY {
        assert_eq!(stats.filter_keys, 50, "only the source's checkpointed keys");
    }

    // A source that returns other keys on its second read is refused. (The
    // partitioned mode only notices a second read with more rows.)
    if f.budget != IN_MEMORY {
        return;
    }
    f.write("b.parquet", &int_batch(&some(30_000..30_151)))
        .await;
    let first = f.source_at(&format!("{}/a.parquet", f.source_url)).await;
    let second = f.source_at(&format!("{}/b.parquet", f.source_url)).await;
    let changing = Arc::new(ChangingSource {
        reads: Default::default(),
        first,
        second,
    });
    let options = f.options(DuplicatePolicy::KeepFirst);
    let result = async {
        let mut read = CheckpointedRead::open(&store, changing, options).await?;
        let mut writer = store.begin().await?;
        while read.next_batch(&mut writer).await?.is_some() {}
        Ok::<_, Error>(())
    }
    .await;
    let err = result.expect_err("a source that changed between reads");
    assert!(err.to_string().contains("fixed snapshot"), "{err}");
}

/// A small source's keys are read first under a floor of their size; when
/// the sets they take pass the budget all the same, the read is partitioned.
async fn a_small_source_over_the_budget_is_partitioned(f: Fixture) {
    if f.budget != IN_MEMORY {
        return;
    }
    let store = multiples_of_seven_checkpointed(&f).await;
    // 50 checkpointed, 100 new, and one far above them: the source's keys
    // take a bitmap of about a million bits (128 KiB), where the floor
    // counts 9 bytes a key.
    let mut rows = checkpointed_and_new_rows();
    rows.push(Some(900_000));
    f.write("a.parquet", &int_batch(&rows)).await;
    let mut expected = some(20_000..20_100);
    expected.push(Some(900_000));

    let fixture = &f;
    let read = |budget: usize| {
        let store = store.clone();
        async move {
            let f = fixture;
            let options = ReadOptions {
                memory_budget_bytes: budget,
                ..f.options(DuplicatePolicy::KeepFirst)
            };
            let mut read = CheckpointedRead::open(&store, f.source().await, options)
                .await
                .unwrap();
            // Never sealed: each read sees the same checkpoint.
            let mut writer = store.begin().await.unwrap();
            let batches = read_to_end(&mut read, &mut writer).await.unwrap();
            (ids(&batches), read.stats().clone())
        }
    };
    let (in_memory, stats) = read(IN_MEMORY).await;
    assert_eq!(in_memory, expected);
    assert_eq!(stats.mode, FilterMode::InMemory);
    assert!(stats.peak_filter_bytes > 64 << 10, "{stats:?}");
    let (partitioned, stats) = read(64 << 10).await;
    assert_eq!(partitioned, expected);
    assert!(
        matches!(stats.mode, FilterMode::Partitioned { .. }),
        "{stats:?}"
    );
}

/// Key files record their least and greatest key; a small source's read
/// does not open those whose range holds none of its keys, before and after
/// compaction, and still drops every checkpointed key it holds.
async fn key_files_outside_the_source_range_are_not_read(f: Fixture) {
    let store = f.store(int_keys()).await;
    for range in [0..1000, 1000..2000, 5000..6000] {
        let mut writer = store.begin().await.unwrap();
        writer
            .stage_keys(&[Arc::new(Int64Array::from_iter_values(range)) as ArrayRef])
            .await
            .unwrap();
        writer.seal().await.unwrap();
    }
    // 10 checkpointed keys in the second file's range, 40 new ones past it.
    f.write("a.parquet", &int_batch(&some(1990..2040))).await;
    let (batches, stats) = f.run(&store).await;
    assert_eq!(ids(&batches), some(2000..2040));
    assert_eq!((stats.rows_read, stats.rows_skipped), (50, 10));
    if f.budget == IN_MEMORY {
        assert_eq!(
            (stats.key_files_skipped, stats.filter_keys),
            (2, 10),
            "only the file of keys 1000..2000 is read"
        );
    }

    // The run's own keys (2000..2040) are checkpointed too. Compacted into
    // index files of 1500 keys in key order: 0..1500, then 1500..2040 with
    // 5000..5960, then 5960..6000. The source, replaced, meets the middle one.
    commit_every_checkpoint(&store).await;
    let options = tidemark::store::CompactionOptions {
        max_keys_per_file: 1500,
        ..Default::default()
    };
    store.compact(&options).await.unwrap();
    f.write("a.parquet", &int_batch(&some(1995..2045))).await;
    let (batches, stats) = f.run(&store).await;
    assert_eq!(ids(&batches), some(2040..2045));
    assert_eq!(stats.rows_skipped, 45);
    if f.budget == IN_MEMORY {
        assert_eq!((stats.key_files_skipped, stats.filter_keys), (2, 45));
    }
}

/// Key files of string keys carry their keys' fingerprints; a small
/// source's read does not decode those that hold none of its keys', and
/// still drops every checkpointed key it holds.
async fn key_files_without_the_source_s_fingerprints_are_not_decoded(f: Fixture) {
    fingerprinted_key_files(f, false).await
}

/// The same with composite keys, whose fingerprints hash their columns in turn.
async fn composite_key_files_without_the_source_s_fingerprints_are_not_decoded(f: Fixture) {
    fingerprinted_key_files(f, true).await
}

async fn fingerprinted_key_files(f: Fixture, composite: bool) {
    let schema = if composite {
        KeySchema::new(vec![
            KeyColumn::new("tenant", DataType::Utf8),
            KeyColumn::new("id", DataType::Int64),
        ])
        .unwrap()
    } else {
        KeySchema::single("id", DataType::Utf8).unwrap()
    };
    let store = f.store(schema).await;
    // Keys numbered in a scattered order, so that every key file's range
    // spans nearly all of them and no file is skipped by its range.
    let key = |i: i64| format!("key-{:05}", (i * 7919) % 100_000);
    // Key columns of keys numbered `ids`, in the key schema's order.
    let columns = |ids: &[i64]| -> Vec<(&'static str, ArrayRef)> {
        if composite {
            let tenants: Vec<String> = ids.iter().map(|i| format!("t{}", i % 7)).collect();
            vec![
                ("tenant", Arc::new(StringArray::from(tenants)) as ArrayRef),
                ("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef),
            ]
        } else {
            let keys: Vec<String> = ids.iter().map(|&i| key(i)).collect();
            vec![("id", Arc::new(StringArray::from(keys)) as ArrayRef)]
        }
    };
    // Three key files over the same range: keys 0, 3, 6, ...; 1, 4, ...; 2, 5, ...
    for first in 0..3 {
        let ids: Vec<i64> = (0..1000).map(|i| i * 3 + first).collect();
        let keys: Vec<ArrayRef> = columns(&ids).into_iter().map(|(_, c)| c).collect();
        let mut writer = store.begin().await.unwrap();
        writer.stage_keys(&keys).await.unwrap();
        writer.seal().await.unwrap();
    }
    // 10 keys of the second file (1, 4, ..., 28), and 40 new ones among them.
    let mut rows: Vec<i64> = (0..10).map(|i| i * 3 + 1).collect();
    rows.extend((0..40).map(|i| 3000 + i));
    let source = RecordBatch::try_from_iter(columns(&rows)).unwrap();
    f.write("a.parquet", &source).await;
    let (batches, stats) = f.run(&store).await;
    let passed = arrow::compute::concat_batches(&source.schema(), &batches).unwrap();
    let new: Vec<i64> = (3000..3040).collect();
    assert_eq!(
        passed,
        RecordBatch::try_from_iter(columns(&new)).unwrap(),
        "exactly the 40 new keys pass"
    );
    assert_eq!((stats.rows_read, stats.rows_skipped), (50, 10));
    if f.budget == IN_MEMORY {
        assert_eq!(
            (
                stats.key_files_skipped,
                stats.key_files_not_decoded,
                stats.filter_keys
            ),
            (0, 2, 10),
            "only the second file is decoded"
        );

        // A file ruled out is not fetched whole: only its fingerprint column
        // and footer. Damage elsewhere (here, its first key column's first
        // byte) goes unseen by a read that rules every file out...
        let location = f.backend.location();
        let key_files = store.load().await.unwrap().key_files();
        assert_eq!(key_files.len(), 4, "three checkpoints and the run's own");
        for file in &key_files {
            assert!(
                file.fingerprints.is_some(),
                "{} records its fingerprints",
                file.path
            );
            let path = Path::from(format!("{}/{}", location.prefix, file.path));
            let bytes = location.object_store.get(&path).await.unwrap();
            let mut bytes = bytes.bytes().await.unwrap().to_vec();
            bytes[4] ^= 0xff;
            location
                .object_store
                .put(&path, bytes.into())
                .await
                .unwrap();
        }
        let rows: Vec<i64> = (5000..5010).collect();
        f.write(
            "a.parquet",
            &RecordBatch::try_from_iter(columns(&rows)).unwrap(),
        )
        .await;
        let (batches, stats) = f.run(&store).await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
        assert_eq!(stats.key_files_not_decoded, 4);
        // ...and is found by a read that needs the keys of one of them.
        let rows: Vec<i64> = vec![1, 6000];
        f.write(
            "a.parquet",
            &RecordBatch::try_from_iter(columns(&rows)).unwrap(),
        )
        .await;
        let damaged = f
            .run_with(&store, f.options(DuplicatePolicy::KeepFirst))
            .await
            .unwrap_err();
        assert!(
            matches!(damaged, Error::Corrupt { .. }),
            "a damaged key file is an error: {damaged}"
        );
    }
}

/// A source whose first read of a unit differs from the later ones.
#[derive(Debug)]
struct ChangingSource {
    reads: std::sync::atomic::AtomicUsize,
    first: Arc<dyn Source>,
    second: Arc<dyn Source>,
}

impl Source for ChangingSource {
    fn schema(&self) -> arrow_schema::SchemaRef {
        self.first.schema()
    }

    fn units(&self) -> &[tidemark::source::SourceUnit] {
        self.first.units()
    }

    fn read_unit(
        &self,
        unit: usize,
        projection: Option<Vec<String>>,
    ) -> futures::future::BoxFuture<'static, tidemark::Result<tidemark::source::BatchStream>> {
        let reads = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let source = if reads == 0 {
            &self.first
        } else {
            &self.second
        };
        source.read_unit(unit, projection)
    }
}

async fn edge_keys_are_exact(f: Fixture) {
    let two53 = 1i64 << 53;
    let store = f.store(int_keys()).await;
    f.write(
        "first.parquet",
        &int_batch(&[Some(two53), Some(i64::MAX), Some(i64::MIN + 1), None]),
    )
    .await;
    let (batches, _) = f.run(&store).await;
    assert_eq!(ids(&batches).len(), 4);

    let neighbours = [
        Some(two53 - 1),
        Some(two53),
        Some(two53 + 1),
        Some(i64::MAX - 1),
        Some(i64::MAX),
        Some(i64::MIN),
        Some(i64::MIN + 1),
        Some(-two53),
        Some(0),
        None,
    ];
    f.write("second.parquet", &int_batch(&neighbours)).await;
    let (batches, _) = f.run(&store).await;
    assert_eq!(
        ids(&batches),
        vec![
            Some(two53 - 1),
            Some(two53 + 1),
            Some(i64::MAX - 1),
            Some(i64::MIN),
            Some(-two53),
            Some(0),
        ]
    );
}

async fn composite_and_string_keys_are_exact(f: Fixture) {
    let keys = KeySchema::new(vec![
        KeyColumn::new("region", DataType::Utf8),
        KeyColumn::new("n", DataType::Int32),
    ])
    .unwrap();
    let store = f.store(keys).await;
    let batch = |regions: Vec<Option<&str>>, ns: Vec<Option<i32>>| {
        RecordBatch::try_from_iter([
            ("region", Arc::new(StringArray::from(regions)) as ArrayRef),
            ("n", Arc::new(Int32Array::from(ns)) as ArrayRef),
        ])
        .unwrap()
    };
    f.write(
        "a.parquet",
        &batch(
            vec![Some("eu"), Some("eu"), None, Some("us"), None],
            vec![Some(1), None, Some(1), Some(i32::MAX), None],
        ),
    )
    .await;
    let (batches, _) = f.run(&store).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    let (batches, _) = f.run(&store).await;
    assert!(batches.is_empty());

    f.write(
        "b.parquet",
        &batch(
            vec![Some("eu"), Some("eu"), None, Some("us"), Some("")],
            vec![Some(2), None, None, Some(i32::MIN), Some(1)],
        ),
    )
    .await;
    let (batches, _) = f.run(&store).await;
    let passed: Vec<(Option<String>, Option<i32>)> = batches
        .iter()
        .flat_map(|b| {
            let r = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let n = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
            (0..b.num_rows())
                .map(|i| {
                    (
                        r.is_valid(i).then(|| r.value(i).to_string()),
                        n.is_valid(i).then(|| n.value(i)),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        passed,
        vec![
            (Some("eu".into()), Some(2)),
            (Some("us".into()), Some(i32::MIN)),
            (Some("".into()), Some(1)),
        ]
    );
}

async fn uuid_string_keys(f: Fixture) {
    let store = f
        .store(KeySchema::single("id", DataType::Utf8).unwrap())
        .await;
    let uuid = |i: u128| uuid::Uuid::from_u128(i * 0x9e37_79b9_7f4a_7c15).to_string();
    let batch = |range: std::ops::Range<u128>| {
        let ids: Vec<String> = range.map(uuid).collect();
        RecordBatch::try_from_iter([("id", Arc::new(StringArray::from(ids)) as ArrayRef)]).unwrap()
    };
    f.write("a.parquet", &batch(0..500)).await;
    let (batches, _) = f.run(&store).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 500);
    f.write("b.parquet", &batch(400..800)).await;
    let (batches, stats) = f.run(&store).await;
    let passed: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(passed, (500..800).map(uuid).collect::<Vec<_>>());
    assert_eq!(stats.rows_skipped, 600);
}

async fn duplicate_policies(f: Fixture) {
    // Key 5 twice in one file and once more in another; key 7 twice.
    f.write(
        "a.parquet",
        &int_batch(&[Some(5), Some(6), Some(5), Some(7)]),
    )
    .await;
    f.write("b.parquet", &int_batch(&[Some(7), Some(5), Some(8)]))
        .await;

    let store = f.store(int_keys()).await;
    let (batches, stats) = f
        .run_with(&store, f.options(DuplicatePolicy::KeepFirst))
        .await
        .unwrap();
    assert_eq!(ids(&batches), vec![Some(5), Some(6), Some(7), Some(8)]);
    assert_eq!(stats.duplicates_dropped, 3);

    let store = CheckpointStore::open_at(
        StoreLocation::from_url(&f.backend.data_url("pass-all").0, &f.options).unwrap(),
        int_keys(),
    )
    .await
    .unwrap();
    let (batches, stats) = f
        .run_with(&store, f.options(DuplicatePolicy::PassAll))
        .await
        .unwrap();
    assert_eq!(ids(&batches).len(), 7);
    assert_eq!(stats.duplicates_dropped, 0);
    let (batches, _) = f.run(&store).await;
    assert!(batches.is_empty(), "every repeated key was staged");

    let store = CheckpointStore::open_at(
        StoreLocation::from_url(&f.backend.data_url("error").0, &f.options).unwrap(),
        int_keys(),
    )
    .await
    .unwrap();
    let err = f
        .run_with(&store, f.options(DuplicatePolicy::Error))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateKey { .. }), "{err}");
    assert!(err.to_string().contains("more than once"), "{err}");
    // Nothing was sealed: a later run sees every key as new.
    assert_eq!(store.load().await.unwrap().key_count(), 0);
}

async fn bad_key_columns_fail_before_any_row(f: Fixture) {
    let store = f.store(int_keys()).await;
    let narrow =
        RecordBatch::try_from_iter([("id", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef)])
            .unwrap();
    f.write("a.parquet", &narrow).await;
    let err = CheckpointedRead::open(
        &store,
        f.source().await,
        f.options(DuplicatePolicy::KeepFirst),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::KeySchemaMismatch { .. }), "{err}");

    let other = RecordBatch::try_from_iter([(
        "user_id",
        Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
    )])
    .unwrap();
    let url = f.backend.data_url("other").0;
    let location = StoreLocation::from_url(&url, &f.options).unwrap();
    let mut bytes = Vec::new();
    let mut w = ArrowWriter::try_new(&mut bytes, other.schema(), None).unwrap();
    w.write(&other).unwrap();
    w.close().unwrap();
    location
        .object_store
        .put(
            &Path::from(format!("{}/x.parquet", location.prefix)),
            bytes.into(),
        )
        .await
        .unwrap();
    let err = CheckpointedRead::open(
        &store,
        f.source_at(&url).await,
        f.options(DuplicatePolicy::KeepFirst),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("key column `id` is not in the source"),
        "{err}"
    );
    assert!(err.to_string().contains("user_id"), "{err}");
}

async fn filtered_rows_count_as_processed_and_crashed_runs_do_not(f: Fixture) {
    let store = f.store(int_keys()).await;
    f.write("a.parquet", &int_batch(&some(0..300))).await;

    // A run that crashes before sealing: its keys never count.
    {
        let mut read = CheckpointedRead::open(
            &store,
            f.source().await,
            f.options(DuplicatePolicy::KeepFirst),
        )
        .await
        .unwrap();
        let mut writer = store.begin().await.unwrap();
        while read.next_batch(&mut writer).await.unwrap().is_some() {}
        writer.flush_keys().await.unwrap();
        assert_eq!(writer.staged_key_count(), 300);
    }
    // A run whose user code keeps only even ids, with a projection that leaves
    // the key out: every key read is still processed.
    let mut options = f.options(DuplicatePolicy::KeepFirst);
    options.projection = Some(vec!["payload".into()]);
    let mut read = CheckpointedRead::open(&store, f.source().await, options)
        .await
        .unwrap();
    let even = tidemark::transform::Transform::new().filter(|batch| {
        let payload = batch
            .column_by_name("payload")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .expect("a payload column");
        Ok(payload
            .iter()
            .map(|p| {
                p.and_then(|p| p.strip_prefix("payload of Some("))
                    .and_then(|p| p.strip_suffix(')'))
                    .and_then(|id| id.parse::<i64>().ok())
                    .map(|id| id % 2 == 0)
            })
            .collect())
    });
    let mut writer = store.begin().await.unwrap();
    let mut kept = Vec::new();
    while let Some(batch) = read.next_batch(&mut writer).await.unwrap() {
        assert_eq!(batch.num_columns(), 1);
        assert_eq!(batch.schema().field(0).name(), "payload");
        let batch = even.apply(batch).unwrap();
        let payload = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        kept.extend(payload.iter().map(|p| p.unwrap().to_string()));
    }
    assert_eq!(read.stats().rows_passed, 300);
    let expected: Vec<String> = (0..300)
        .step_by(2)
        .map(|id| format!("payload of Some({id})"))
        .collect();
    assert_eq!(kept, expected, "the filter kept exactly the even ids");
    writer.seal().await.unwrap();

    let (batches, _) = f.run(&store).await;
    assert!(batches.is_empty());
}

async fn globs_and_lists_of_urls(f: Fixture) {
    let store = f.store(int_keys()).await;
    f.write("2026-11-01.parquet", &int_batch(&some(0..10)))
        .await;
    f.write("2026-11-02.parquet", &int_batch(&some(10..20)))
        .await;
    f.write("notes.txt.parquet.tmp", &int_batch(&some(20..30)))
        .await;
    f.write("_staging/x.parquet", &int_batch(&some(30..40)))
        .await;

    let source = f.source().await;
    assert_eq!(
        source.units().len(),
        2,
        "hidden and non-Parquet files are skipped"
    );
    let glob = f.source_at(&format!("{}/2026-11-02*", f.source_url)).await;
    assert_eq!(glob.units().len(), 1);
    let options = ParquetSourceOptions {
        store_options: f.options.clone(),
        ..Default::default()
    };
    let listed = ParquetSource::open_many(
        &[
            &format!("{}/2026-11-01.parquet", f.source_url),
            &format!("{}/_staging/x.parquet", f.source_url),
        ],
        &options,
    )
    .await
    .unwrap();
    assert_eq!(listed.row_count(), Some(20));

    let mut read = CheckpointedRead::open(
        &store,
        Arc::new(listed),
        f.options(DuplicatePolicy::KeepFirst),
    )
    .await
    .unwrap();
    let mut writer = store.begin().await.unwrap();
    let mut batches = Vec::new();
    while let Some(b) = read.next_batch(&mut writer).await.unwrap() {
        batches.push(b);
    }
    writer.seal().await.unwrap();
    assert_eq!(ids(&batches), [some(0..10), some(30..40)].concat());

    let (batches, _) = f.run(&store).await;
    assert_eq!(ids(&batches), some(10..20));

    let err = ParquetSource::open(&format!("{}/nothing-*", f.source_url), &options)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no Parquet files"), "{err}");
}

/// The unprocessed rows as a DataFusion table: a query sees exactly the rows a
/// run would process (checkpointed keys and repeats left out, every column's
/// values intact), `EXPLAIN` shows the checkpointed scan, and querying stages
/// nothing, so the run that follows processes the same rows.
async fn the_unprocessed_table_answers_queries_and_stages_nothing(f: Fixture) {
    let store = f.store(int_keys()).await;
    f.write("a.parquet", &int_batch(&some(0..700))).await;
    f.run(&store).await;
    let mut grown = some(650..1000);
    grown.push(Some(999));
    f.write("b.parquet", &int_batch(&grown)).await;

    let context = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let table = UnprocessedTable::new(
        store.clone(),
        f.source().await,
        f.options(DuplicatePolicy::KeepFirst),
    )
    .unwrap();
    context.register_table("source", Arc::new(table)).unwrap();
    let text = |batches: &[RecordBatch]| pretty_format_batches(batches).unwrap().to_string();
    let query = |sql: &'static str| {
        let context = context.clone();
        async move { context.sql(sql).await.unwrap().collect().await.unwrap() }
    };

    let counted = query("SELECT count(*) AS n, min(id) AS low, max(id) AS high FROM source").await;
    assert_eq!(
        text(&counted),
        "+-----+-----+------+\n\
         | n   | low | high |\n\
         +-----+-----+------+\n\
         | 300 | 700 | 999  |\n\
         +-----+-----+------+"
    );
    let rows = query("SELECT payload, id FROM source WHERE id % 100 = 0 ORDER BY id").await;
    assert_eq!(
        text(&rows),
        "+----------------------+-----+\n\
         | payload              | id  |\n\
         +----------------------+-----+\n\
         | payload of Some(700) | 700 |\n\
         | payload of Some(800) | 800 |\n\
         | payload of Some(900) | 900 |\n\
         +----------------------+-----+"
    );

    let explained = query("EXPLAIN SELECT payload FROM source WHERE id > 900").await;
    let physical = explained[0]
        .column_by_name("plan")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .value(1)
        .to_string();
    assert_eq!(
        physical,
        "FilterExec: id@0 > 900, projection=[payload@1]\n  \
         CheckpointedScanExec: keys=[id], units=2, projection=[id, payload], duplicates=KeepFirst\n"
    );
    // The plan's leaf is the checkpointed scan, under its own name.
    let mut leaf = context
        .sql("SELECT id FROM source")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    while let Some(child) = leaf.children().first().map(|c| Arc::clone(c)) {
        leaf = child;
    }
    assert_eq!(leaf.name(), "CheckpointedScanExec");
    assert!(leaf.as_any().is::<CheckpointedScanExec>());
    let analyzed = text(&query("EXPLAIN ANALYZE SELECT id FROM source").await);
    for metric in [
        "rows_read=1.05 K",
        "rows_skipped=750",
        "duplicates_dropped=1",
        "checkpointed_keys=700",
    ] {
        assert!(analyzed.contains(metric), "{metric} in {analyzed}");
    }

    // A source without the store's key column is refused before any query.
    let other_keys = KeySchema::single("doc", DataType::Utf8).unwrap();
    let other = CheckpointStore::open("memory://", &HashMap::new(), other_keys)
        .await
        .unwrap();
    let refused = UnprocessedTable::new(other, f.source().await, ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(refused.contains("doc"), "{refused}");

    // Nothing was staged: the run processes the rows the queries saw.
    let (batches, _) = f.run(&store).await;
    assert_eq!(ids(&batches), some(700..1000));
    let counted = query("SELECT count(*) AS n FROM source").await;
    assert_eq!(text(&counted), "+---+\n| n |\n+---+\n| 0 |\n+---+");
}

macro_rules! read_suite {
    ($name:ident, $backend:expr, $budget:expr) => {
        mod $name {
            use super::*;
            read_suite!(@cases $backend, $budget;
                rerun_yields_nothing_and_growth_yields_new_keys,
                finished_units_are_skipped_unopened,
                a_small_source_holds_only_its_checkpointed_keys,
                a_small_source_over_the_budget_is_partitioned,
                key_files_outside_the_source_range_are_not_read,
                key_files_without_the_source_s_fingerprints_are_not_decoded,
                composite_key_files_without_the_source_s_fingerprints_are_not_decoded,
                edge_keys_are_exact,
                composite_and_string_keys_are_exact,
                uuid_string_keys,
                duplicate_policies,
                bad_key_columns_fail_before_any_row,
                filtered_rows_count_as_processed_and_crashed_runs_do_not,
                globs_and_lists_of_urls,
                the_unprocessed_table_answers_queries_and_stages_nothing,
            );
        }
    };
    (@cases $backend:expr, $budget:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                super::$case(Fixture::new($backend, $budget)).await
            }
        )*
    };
}

read_suite!(local_in_memory, Backend::local(), IN_MEMORY);
read_suite!(local_partitioned, Backend::local(), PARTITIONED);
read_suite!(s3_in_memory, Backend::s3(), IN_MEMORY);
read_suite!(s3_partitioned, Backend::s3(), PARTITIONED);
