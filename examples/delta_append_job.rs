//! A daily Delta append job: Parquet drops appended to a Delta table
//! partitioned by region, exactly once per key, with a `txn` action per commit.
//!
//! Day 1 is interrupted midway (a simulated preemption) and resumed; day 2
//! overlaps day 1 and adds only its new keys; a rerun adds nothing. The job
//! then reads the table back and checks every key is in it once.
//!
//! `cargo run --example delta_append_job [-- DIRECTORY]`

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use parquet::arrow::ArrowWriter;
use tidemark::pipeline::{CheckpointPolicy, Pipeline, RunReport};
use tidemark::source::{read_units, ParquetSource, ParquetSourceOptions, Source};
use tidemark::store::{CheckpointStore, KeySchema};
use tidemark::transform::Transform;
use tidemark_delta::{DeltaSink, DeltaSource, DeltaWriterOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PIPELINE_ID: &str = "delta-append-job";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("tidemark-delta-job-{}", std::process::id())),
    };
    std::fs::create_dir_all(dir.join("drops"))?;
    let dir = std::fs::canonicalize(&dir)?;
    println!("working in {}", dir.display());

    let table_url = url::Url::from_directory_path(dir.join("events"))
        .map_err(|_| "the table directory is not an absolute path")?;
    let table_schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("body", DataType::Utf8, true),
        Field::new("body_length", DataType::Int64, true),
    ]);
    let sink =
        DeltaSink::create_if_missing(table_url, HashMap::new(), &table_schema, &["region"]).await?;
    let store = CheckpointStore::open(
        &format!("file://{}/checkpoints", dir.display()),
        &HashMap::new(),
        KeySchema::single("id", DataType::Int64)?,
    )
    .await?;
    // A checkpoint every 5 000 rows: the interrupted day 1 keeps what it sealed.
    let pipeline =
        Pipeline::new(store, sink, PIPELINE_ID).with_checkpoint_policy(CheckpointPolicy {
            rows: Some(5_000),
            ..Default::default()
        });

    write_drop(&dir.join("drops/day-1.parquet"), 0..30_000)?;
    match run(&pipeline, &dir, Some(12_000)).await {
        Ok(_) => println!("day 1: finished (it was meant to be interrupted)"),
        Err(e) => println!("day 1: interrupted: {e}"),
    }
    print_run("day 1 (resumed)", &run(&pipeline, &dir, None).await?);
    write_drop(&dir.join("drops/day-2.parquet"), 25_000..40_000)?;
    print_run("day 2", &run(&pipeline, &dir, None).await?);
    print_run("day 2 (rerun)", &run(&pipeline, &dir, None).await?);

    // Read the table's current version back and count the keys.
    let table = pipeline.sink().table_with_files().await?;
    let source: Arc<dyn Source> =
        Arc::new(DeltaSource::open(&table, &ParquetSourceOptions::default()).await?);
    let units = (0..source.units().len()).collect();
    let batches: Vec<(usize, RecordBatch)> = read_units(source, units, Some(vec!["id".into()]), 2)
        .try_collect()
        .await?;
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|(_, b)| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    let txn = pipeline.sink().transaction_version(PIPELINE_ID).await?;
    let once = ids.len() == 40_000 && distinct.len() == 40_000;
    println!(
        "table version {:?}, txn version of `{PIPELINE_ID}`: {txn:?}; {} rows, {} distinct ids, expected 40000: {}",
        table.version(),
        ids.len(),
        distinct.len(),
        if once { "every key exactly once" } else { "MISMATCH" }
    );
    if !once {
        return Err("the table does not hold every key exactly once".into());
    }
    Ok(())
}

/// One pass over the drops directory; the map derives `body_length` (the
/// per-row work). With `fail_after`, the map fails once that many rows went
/// through, as a preempted worker would stop.
async fn run(
    pipeline: &Pipeline<DeltaSink>,
    dir: &Path,
    fail_after: Option<u64>,
) -> Result<RunReport, BoxError> {
    let source = ParquetSource::open(
        &format!("file://{}/drops/", dir.display()),
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
        with_length(batch)
    });
    let mut writer = pipeline
        .sink()
        .writer(DeltaWriterOptions::default())
        .await?;
    Ok(pipeline
        .run(Arc::new(source), &transform, &mut writer)
        .await?)
}

fn print_run(name: &str, report: &RunReport) {
    println!(
        "{name}: read {}, skipped {}, wrote {}, {} Delta version(s) committed",
        report.read.rows_read,
        report.read.rows_skipped,
        report.rows_written,
        report.committed.commits.len(),
    );
}

/// Adds `body_length`, one value per row.
fn with_length(batch: RecordBatch) -> tidemark::Result<RecordBatch> {
    let missing = |name: &str| tidemark::Error::Map {
        source: format!("the drop has no `{name}` column").into(),
    };
    let body = batch
        .column_by_name("body")
        .ok_or_else(|| missing("body"))?
        .as_string::<i32>()
        .clone();
    let lengths: Int64Array = body.iter().map(|b| b.map(|b| b.len() as i64)).collect();
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(lengths));
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("body_length", DataType::Int64, true));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| tidemark::Error::Map {
        source: Box::new(e),
    })
}

fn write_drop(path: &Path, ids: std::ops::Range<i64>) -> Result<(), BoxError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("body", DataType::Utf8, true),
    ]));
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path)?, schema.clone(), None)?;
    let ids: Vec<i64> = ids.collect();
    for chunk in ids.chunks(8_192) {
        let regions: StringArray = chunk
            .iter()
            .map(|i| Some(["eu", "us", "apac"][(i % 3) as usize]))
            .collect();
        let bodies: StringArray = chunk
            .iter()
            .map(|i| Some(format!("event {i}: {}", "x".repeat((i % 17) as usize))))
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(chunk.to_vec())),
                Arc::new(regions),
                Arc::new(bodies),
            ],
        )?;
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(())
}
