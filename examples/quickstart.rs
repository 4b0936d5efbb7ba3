//! The quickstart: a checkpointed pipeline from Parquet files into an Iceberg
//! table on the embedded default (local files and a SQLite catalog).
//!
//! It makes sample data, runs a pipeline that is interrupted midway (its map
//! fails after some rows, as a crash or a preemption would end it), runs it
//! again to completion (skipping what the first run sealed before it was
//! interrupted: the pipeline seals a checkpoint every 10 000 rows), lets the
//! source grow and runs once more. It prints
//! what each run read, skipped and wrote, then reads the table back and checks
//! that every source key is in it exactly once.
//!
//! `cargo run --example quickstart [-- DIRECTORY]`

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use iceberg::io::LocalFsStorageFactory;
use iceberg::spec::{NestedField, PrimitiveType, Type};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlCatalogBuilder, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE};
use parquet::arrow::ArrowWriter;
use tidemark::pipeline::{CheckpointPolicy, Pipeline, RunReport};
use tidemark::source::{ParquetSource, ParquetSourceOptions};
use tidemark::store::{CheckpointStore, KeySchema};
use tidemark::transform::Transform;
use tidemark_iceberg::{IcebergSink, IcebergWriterOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("tidemark-quickstart-{}", std::process::id())),
    };
    std::fs::create_dir_all(dir.join("source"))?;
    let dir = std::fs::canonicalize(&dir)?;
    println!("working in {}", dir.display());

    // 1. Sample data: 50 000 documents, keyed by `id`.
    write_documents(&dir.join("source/day-1.parquet"), 0..50_000)?;

    // 2. The table, in a SQL catalog on SQLite.
    let catalog = catalog(&dir).await?;
    let namespace = NamespaceIdent::new("demo".into());
    let ident = TableIdent::new(namespace.clone(), "documents".into());
    if !catalog.table_exists(&ident).await? {
        if !catalog.namespace_exists(&namespace).await? {
            catalog.create_namespace(&namespace, HashMap::new()).await?;
        }
        let schema = iceberg::spec::Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "text", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "score", Type::Primitive(PrimitiveType::Double)).into(),
            ])
            .build()?;
        let creation = TableCreation::builder()
            .name("documents".into())
            .schema(schema)
            .build();
        catalog.create_table(&namespace, creation).await?;
    }

    // 3. The pipeline: a checkpoint store beside the table, keyed on `id`.
    let store = CheckpointStore::open(
        &format!("file://{}/checkpoints", dir.display()),
        &HashMap::new(),
        KeySchema::single("id", DataType::Int64)?,
    )
    .await?;
    let sink = IcebergSink::open(catalog.clone(), ident.clone()).await?;
    // A checkpoint seals every 10 000 rows (and every minute, the default), so
    // an interrupted run keeps what it finished.
    let pipeline =
        Pipeline::new(store, sink, "quickstart").with_checkpoint_policy(CheckpointPolicy {
            rows: Some(10_000),
            ..Default::default()
        });

    // Run 1 is interrupted after 20 000 rows.
    let report = run(&pipeline, &dir, Some(20_000)).await;
    match report {
        Ok(_) => println!("run 1: finished (it was meant to be interrupted)"),
        Err(e) => {
            let kept = pipeline.store().status().await?.key_count;
            println!("run 1: interrupted: {e}; {kept} keys were sealed before it and are kept");
        }
    }
    // Run 2 commits what run 1 sealed, skips those rows and does the rest.
    print_run("run 2 (resume)", &run(&pipeline, &dir, None).await?);
    // The source grows: a second day overlapping the first by 10 000 keys.
    write_documents(&dir.join("source/day-2.parquet"), 40_000..60_000)?;
    print_run("run 3 (grown source)", &run(&pipeline, &dir, None).await?);
    // A rerun over the same source does nothing.
    print_run("run 4 (rerun)", &run(&pipeline, &dir, None).await?);

    // Read the table back with iceberg's own reader.
    let table = catalog.load_table(&ident).await?;
    let batches: Vec<RecordBatch> = table
        .scan()
        .select(["id"])
        .build()?
        .to_arrow()
        .await?
        .try_collect()
        .await?;
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    println!(
        "table {}: {} rows, {} distinct ids, expected 60000: {}",
        ident,
        ids.len(),
        distinct.len(),
        if ids.len() == 60_000 && distinct.len() == 60_000 {
            "every key exactly once"
        } else {
            "MISMATCH"
        }
    );
    if ids.len() != 60_000 || distinct.len() != 60_000 {
        return Err("the table does not hold every key exactly once".into());
    }
    Ok(())
}

/// One pipeline pass over the source directory. The map is the costly
/// per-row work (here a stand-in score); with `fail_after`, it fails once that
/// many rows went through, as a crash would end the run.
async fn run(
    pipeline: &Pipeline<IcebergSink>,
    dir: &Path,
    fail_after: Option<u64>,
) -> Result<RunReport, BoxError> {
    let source = ParquetSource::open(
        &format!("file://{}/source/", dir.display()),
        &ParquetSourceOptions::default(),
    )
    .await?;
    let seen = Arc::new(AtomicU64::new(0));
    let transform = Transform::new().map(move |batch| {
        let rows = seen.fetch_add(batch.num_rows() as u64, Ordering::SeqCst);
        if fail_after.is_some_and(|limit| rows >= limit) {
            return Err(tidemark::Error::Map {
                source: "simulated crash: the worker was preempted".into(),
            });
        }
        score(batch)
    });
    let mut writer = pipeline
        .sink()
        .writer(IcebergWriterOptions::default())
        .await?;
    Ok(pipeline
        .run(Arc::new(source), &transform, &mut writer)
        .await?)
}

fn print_run(name: &str, report: &RunReport) {
    println!(
        "{name}: read {}, skipped {} (already processed), wrote {} in {} checkpoint(s), committed {} file(s) in {} commit(s), repaired {} earlier commit(s)",
        report.read.rows_read,
        report.read.rows_skipped,
        report.rows_written,
        report.checkpoints.len(),
        report.committed.commits.iter().map(|c| c.files).sum::<usize>(),
        report.committed.commits.len(),
        report.repaired.commits.len(),
    );
}

/// Adds a `score` column computed from the text, one value per row.
fn score(batch: RecordBatch) -> tidemark::Result<RecordBatch> {
    let text = batch
        .column_by_name("text")
        .map(|c| c.as_string::<i32>().clone())
        .ok_or_else(|| tidemark::Error::Map {
            source: "the source has no `text` column".into(),
        })?;
    let scores: Float64Array = text
        .iter()
        .map(|t| t.map(|t| t.bytes().map(f64::from).sum::<f64>() / t.len().max(1) as f64))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]));
    let id = batch
        .column_by_name("id")
        .cloned()
        .ok_or_else(|| tidemark::Error::Map {
            source: "the source has no `id` column".into(),
        })?;
    RecordBatch::try_new(
        schema,
        vec![id, Arc::new(text) as ArrayRef, Arc::new(scores)],
    )
    .map_err(|e| tidemark::Error::Map {
        source: Box::new(e),
    })
}

fn write_documents(path: &Path, ids: std::ops::Range<i64>) -> Result<(), BoxError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path)?, schema.clone(), None)?;
    let ids: Vec<i64> = ids.collect();
    for chunk in ids.chunks(8_192) {
        let text: StringArray = chunk
            .iter()
            .map(|i| Some(format!("document {i} about tide number {}", i % 97)))
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(chunk.to_vec())), Arc::new(text)],
        )?;
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(())
}

async fn catalog(dir: &Path) -> Result<Arc<dyn Catalog>, BoxError> {
    let catalog = SqlCatalogBuilder::default()
        .with_storage_factory(Arc::new(LocalFsStorageFactory))
        .load(
            "default",
            HashMap::from([
                (
                    SQL_CATALOG_PROP_URI.to_string(),
                    format!("sqlite://{}/catalog.db?mode=rwc", dir.display()),
                ),
                (
                    SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                    format!("file://{}/warehouse", dir.display()),
                ),
            ]),
        )
        .await?;
    Ok(Arc::new(catalog))
}
