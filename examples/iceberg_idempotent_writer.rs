//! Idempotent writes to an Iceberg table with the lower-level API: shards
//! written in parallel, each under its own checkpoint id, then committed by two
//! committers racing each other.
//!
//! - Three shard tasks write data files with `IcebergWriter` and seal one
//!   checkpoint each, under an id assigned to the shard, so a retried shard
//!   can never be sealed twice.
//! - A retry of shard 0 is refused at `begin_with_id` (`AlreadySealed`).
//! - Two committers run `commit_pending` at once: one appends all three
//!   shards in one snapshot, the other finds the commit already applied.
//!
//! `cargo run --example iceberg_idempotent_writer [-- DIRECTORY]`

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use iceberg::io::LocalFsStorageFactory;
use iceberg::spec::{NestedField, PrimitiveType, Type};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlCatalogBuilder, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE};
use tidemark::commit::Committer;
use tidemark::store::{CheckpointId, CheckpointStore, KeySchema};
use tidemark_iceberg::sink::marker_property;
use tidemark_iceberg::{IcebergSink, IcebergWriterOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PIPELINE_ID: &str = "idempotent-writer";
const SHARDS: i64 = 3;
const ROWS_PER_SHARD: i64 = 10_000;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            std::env::temp_dir().join(format!("tidemark-iceberg-writer-{}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    println!("working in {}", dir.display());

    let catalog = catalog(&dir).await?;
    let ident = create_table(catalog.as_ref()).await?;
    let store = CheckpointStore::open(
        &format!("file://{}/checkpoints", dir.display()),
        &HashMap::new(),
        KeySchema::single("id", DataType::Int64)?,
    )
    .await?;
    // One checkpoint id per shard, assigned once by whoever hands out the
    // shards and reused by every attempt at that shard.
    let shard_ids: Vec<CheckpointId> = (0..SHARDS).map(|_| CheckpointId::new()).collect();

    let mut tasks = Vec::new();
    for shard in 0..SHARDS {
        let (store, catalog, ident) = (store.clone(), catalog.clone(), ident.clone());
        let id = shard_ids[shard as usize];
        tasks.push(tokio::spawn(async move {
            write_shard(&store, catalog, ident, id, shard).await
        }));
    }
    for task in tasks {
        let files = task.await??;
        println!("shard sealed with {files} data file(s)");
    }

    // A retried shard 0 (say its worker was thought dead) is refused.
    match store.begin_with_id(shard_ids[0]).await {
        Err(e) => println!("retry of shard 0 refused: {e}"),
        Ok(_) => return Err("a sealed shard was begun again".into()),
    }

    // Two committers race; exactly one applies the commit.
    let mut racers = Vec::new();
    for _ in 0..2 {
        let sink = IcebergSink::open(catalog.clone(), ident.clone()).await?;
        let committer = Committer::new(store.clone(), sink, PIPELINE_ID);
        racers.push(tokio::spawn(
            async move { committer.commit_pending().await },
        ));
    }
    for (n, racer) in racers.into_iter().enumerate() {
        let report = racer.await??;
        for commit in &report.commits {
            println!(
                "committer {n}: commit {} with {} checkpoint(s), {} rows: {}",
                commit.sequence,
                commit.checkpoints.len(),
                commit.rows,
                if commit.applied_now {
                    "applied by this committer"
                } else {
                    "already in the table"
                }
            );
        }
    }

    let table = catalog.load_table(&ident).await?;
    let marker = table
        .metadata()
        .properties()
        .get(&marker_property(PIPELINE_ID));
    let snapshots = table.metadata().snapshots().count();
    let rows: usize = table
        .scan()
        .select(["id"])
        .build()?
        .to_arrow()
        .await?
        .try_collect::<Vec<RecordBatch>>()
        .await?
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    let expected = (SHARDS * ROWS_PER_SHARD) as usize;
    println!(
        "table {ident}: {snapshots} snapshot(s), marker {marker:?}, {rows} rows, expected {expected}: {}",
        if rows == expected && snapshots == 1 { "written once" } else { "MISMATCH" }
    );
    if rows != expected || snapshots != 1 {
        return Err("the shards were not committed exactly once".into());
    }
    Ok(())
}

/// Writes one shard's rows as data files and seals its checkpoint.
async fn write_shard(
    store: &CheckpointStore,
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    id: CheckpointId,
    shard: i64,
) -> Result<usize, BoxError> {
    let sink = IcebergSink::open(catalog, ident).await?;
    let mut checkpoint = store.begin_with_id(id).await?;
    let mut writer = sink.writer(IcebergWriterOptions::default()).await?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("shard", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (shard * ROWS_PER_SHARD..(shard + 1) * ROWS_PER_SHARD).collect();
    for chunk in ids.chunks(4_096) {
        let ids: ArrayRef = Arc::new(Int64Array::from(chunk.to_vec()));
        checkpoint.stage_keys(std::slice::from_ref(&ids)).await?;
        let shards: StringArray = chunk
            .iter()
            .map(|_| Some(format!("shard-{shard}")))
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![ids, Arc::new(shards)])?;
        writer.write(&batch, &mut checkpoint).await?;
    }
    let files = writer.finish(&mut checkpoint).await?.len();
    checkpoint.seal().await?;
    Ok(files)
}

async fn create_table(catalog: &dyn Catalog) -> Result<TableIdent, BoxError> {
    let namespace = NamespaceIdent::new("demo".into());
    let ident = TableIdent::new(namespace.clone(), "shards".into());
    if !catalog.namespace_exists(&namespace).await? {
        catalog.create_namespace(&namespace, HashMap::new()).await?;
    }
    let schema = iceberg::spec::Schema::builder()
        .with_fields(vec![
            NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::optional(2, "shard", Type::Primitive(PrimitiveType::String)).into(),
        ])
        .build()?;
    let creation = TableCreation::builder()
        .name("shards".into())
        .schema(schema)
        .build();
    catalog.create_table(&namespace, creation).await?;
    Ok(ident)
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
