//! A source folder whose files' schemas evolve: later files add a nullable
//! column, widen a type, or order their columns differently. The folder is
//! read as the union of its columns by name (as DataFusion, DuckDB with
//! `union_by_name` and polars read it); a checkpointed read over it skips
//! processed keys whatever file they came from; incompatible types are a
//! clear error naming both files, before any row is read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use tidemark::read::{CheckpointedRead, ReadOptions};
use tidemark::source::{ParquetSource, ParquetSourceOptions, Source};
use tidemark::store::{CheckpointStore, KeySchema, StoreLocation};

fn write(path: &std::path::Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), array.null_count() > 0))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// a: (id int64, v float32); b: (extra utf8, id int64, v float64), columns
/// in another order.
fn evolving_folder(dir: &std::path::Path) {
    write(
        &dir.join("a.parquet"),
        vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            ("v", Arc::new(Float32Array::from(vec![0.5, 1.5, 2.5]))),
        ],
    );
    write(
        &dir.join("b.parquet"),
        vec![
            (
                "extra",
                Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef,
            ),
            ("id", Arc::new(Int64Array::from(vec![4, 5]))),
            ("v", Arc::new(Float64Array::from(vec![4.25, 5.25]))),
        ],
    );
}

async fn all_rows(source: &ParquetSource) -> RecordBatch {
    let mut batches = Vec::new();
    for unit in 0..source.units().len() {
        let stream = source.read_unit(unit, None).await.unwrap();
        batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    arrow_select::concat::concat_batches(&source.schema(), &batches).unwrap()
}

#[tokio::test]
async fn a_folder_whose_later_file_adds_a_column_and_widens_a_type_reads_as_one() {
    let dir = tempfile::tempdir().unwrap();
    evolving_folder(dir.path());
    let url = format!("file://{}/", dir.path().display());
    let source = ParquetSource::open(&url, &ParquetSourceOptions::default())
        .await
        .unwrap();
    let schema = source.schema();
    assert_eq!(
        schema.as_ref(),
        &Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Float64, false),
            Field::new("extra", DataType::Utf8, true),
        ])
    );
    let rows = all_rows(&source).await;
    let ids = rows
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(ids.values(), &[1, 2, 3, 4, 5]);
    let v = rows
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(v.values(), &[0.5, 1.5, 2.5, 4.25, 5.25]);
    let extra = rows
        .column(2)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let extra: Vec<Option<&str>> = extra.iter().collect();
    assert_eq!(extra, [None, None, None, Some("x"), Some("y")]);

    // A projection of a column one file lacks, in another order.
    let stream = source
        .read_unit(0, Some(vec!["extra".into(), "id".into()]))
        .await
        .unwrap();
    let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
    assert_eq!(batches[0].schema().field(0).name(), "extra");
    assert_eq!(batches[0].column(0).null_count(), 3);
}

#[tokio::test]
async fn a_checkpointed_read_of_an_evolving_folder_skips_processed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let source_dir = dir.path().join("source");
    std::fs::create_dir_all(&source_dir).unwrap();
    evolving_folder(&source_dir);
    let store = CheckpointStore::open_at(
        StoreLocation::from_url(
            &format!("file://{}/store/", dir.path().display()),
            &Default::default(),
        )
        .unwrap(),
        KeySchema::single("id", DataType::Int64).unwrap(),
    )
    .await
    .unwrap();
    // Keys 1, 2 (file a) and 4 (file b) are processed.
    let mut checkpoint = store.begin().await.unwrap();
    checkpoint
        .stage_keys(&[Arc::new(Int64Array::from(vec![1, 2, 4])) as ArrayRef])
        .await
        .unwrap();
    checkpoint.seal().await.unwrap();
    let url = format!("file://{}/", source_dir.display());
    let source = Arc::new(
        ParquetSource::open(&url, &ParquetSourceOptions::default())
            .await
            .unwrap(),
    );
    let mut read = CheckpointedRead::open(&store, source, ReadOptions::default())
        .await
        .unwrap();
    let mut writer = store.begin().await.unwrap();
    let mut passed = Vec::new();
    while let Some(batch) = read.next_batch(&mut writer).await.unwrap() {
        assert_eq!(batch.num_columns(), 3, "every unified column");
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        passed.extend(ids.values().iter().copied());
    }
    assert_eq!(passed, [3, 5]);
}

#[tokio::test]
async fn incompatible_types_are_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("a.parquet"),
        vec![
            ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("v", Arc::new(StringArray::from(vec!["one"]))),
        ],
    );
    write(
        &dir.path().join("b.parquet"),
        vec![
            ("id", Arc::new(Int64Array::from(vec![2])) as ArrayRef),
            ("v", Arc::new(Int32Array::from(vec![2]))),
        ],
    );
    let url = format!("file://{}/", dir.path().display());
    let err = ParquetSource::open(&url, &ParquetSourceOptions::default())
        .await
        .expect_err("incompatible");
    let message = err.to_string();
    assert!(
        message.contains("a.parquet") && message.contains("b.parquet") && message.contains("`v`"),
        "{message}"
    );
}
