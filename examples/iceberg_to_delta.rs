//! A checkpointed pipeline from an Iceberg table into a Delta table.
//!
//! A first pipeline loads Parquet drops into an Iceberg table (SQLite catalog,
//! local files). A second one reads that table's current snapshot through its
//! own checkpoint and appends to a Delta table. When the Iceberg table grows,
//! the second pipeline moves only the new keys. The example then reads the
//! Delta table back and checks every key is in it once.
//!
//! `cargo run --example iceberg_to_delta [-- DIRECTORY]`

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use iceberg::io::LocalFsStorageFactory;
use iceberg::spec::{NestedField, PrimitiveType, Type};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlCatalogBuilder, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE};
use parquet::arrow::ArrowWriter;
use tidemark::pipeline::Pipeline;
use tidemark::source::{read_units, ParquetSource, ParquetSourceOptions, Source};
use tidemark::store::{CheckpointStore, KeySchema};
use tidemark::transform::Transform;
use tidemark_delta::{DeltaSink, DeltaSource, DeltaWriterOptions};
use tidemark_iceberg::{IcebergSink, IcebergSource, IcebergWriterOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("tidemark-ice2delta-{}", std::process::id())),
    };
    std::fs::create_dir_all(dir.join("drops"))?;
    let dir = std::fs::canonicalize(&dir)?;
    println!("working in {}", dir.display());

    // The Iceberg source table and the pipeline that loads it.
    let catalog = catalog(&dir).await?;
    let ident = create_iceberg_table(catalog.as_ref()).await?;
    let load = Pipeline::new(
        store(&dir, "load-checkpoints").await?,
        IcebergSink::open(catalog.clone(), ident.clone()).await?,
        "load-raw-events",
    );
    // The Delta table and the pipeline from Iceberg into it.
    let delta_url = url::Url::from_directory_path(dir.join("delta-events"))
        .map_err(|_| "the table directory is not an absolute path")?;
    let delta_schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("message", DataType::Utf8, true),
    ]);
    let delta = DeltaSink::create_if_missing(delta_url, HashMap::new(), &delta_schema, &[]).await?;
    let copy = Pipeline::new(
        store(&dir, "copy-checkpoints").await?,
        delta,
        "iceberg-to-delta",
    );

    for (day, ids) in [(1, 0..20_000), (2, 15_000..30_000)] {
        write_drop(&dir.join(format!("drops/day-{day}.parquet")), ids)?;
        let drops = ParquetSource::open(
            &format!("file://{}/drops/", dir.display()),
            &ParquetSourceOptions::default(),
        )
        .await?;
        let mut writer = load.sink().writer(IcebergWriterOptions::default()).await?;
        let loaded = load
            .run(Arc::new(drops), &Transform::new(), &mut writer)
            .await?;
        println!(
            "day {day}: loaded {} new rows into Iceberg `{ident}`",
            loaded.rows_written
        );

        let table = catalog.load_table(&ident).await?;
        let source = IcebergSource::open(&table).await?;
        let mut writer = copy.sink().writer(DeltaWriterOptions::default()).await?;
        let copied = copy
            .run(Arc::new(source), &Transform::new(), &mut writer)
            .await?;
        println!(
            "day {day}: copied to Delta: read {}, skipped {}, wrote {}",
            copied.read.rows_read, copied.read.rows_skipped, copied.rows_written
        );
    }

    // Read the Delta table back.
    let table = copy.sink().table_with_files().await?;
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
    let once = ids.len() == 30_000 && distinct.len() == 30_000;
    println!(
        "Delta table: {} rows, {} distinct ids, expected 30000: {}",
        ids.len(),
        distinct.len(),
        if once {
            "every key exactly once"
        } else {
            "MISMATCH"
        }
    );
    if !once {
        return Err("the Delta table does not hold every key exactly once".into());
    }
    Ok(())
}

async fn store(dir: &Path, name: &str) -> Result<CheckpointStore, BoxError> {
    Ok(CheckpointStore::open(
        &format!("file://{}/{name}", dir.display()),
        &HashMap::new(),
        KeySchema::single("id", DataType::Int64)?,
    )
    .await?)
}

async fn create_iceberg_table(catalog: &dyn Catalog) -> Result<TableIdent, BoxError> {
    let namespace = NamespaceIdent::new("raw".into());
    let ident = TableIdent::new(namespace.clone(), "events".into());
    if catalog.table_exists(&ident).await? {
        return Ok(ident);
    }
    if !catalog.namespace_exists(&namespace).await? {
        catalog.create_namespace(&namespace, HashMap::new()).await?;
    }
    let schema = iceberg::spec::Schema::builder()
        .with_fields(vec![
            NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::optional(2, "message", Type::Primitive(PrimitiveType::String)).into(),
        ])
        .build()?;
    let creation = TableCreation::builder()
        .name("events".into())
        .schema(schema)
        .build();
    catalog.create_table(&namespace, creation).await?;
    Ok(ident)
}

fn write_drop(path: &Path, ids: std::ops::Range<i64>) -> Result<(), BoxError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("message", DataType::Utf8, true),
    ]));
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path)?, schema.clone(), None)?;
    let ids: Vec<i64> = ids.collect();
    for chunk in ids.chunks(8_192) {
        let messages: StringArray = chunk.iter().map(|i| Some(format!("event {i}"))).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(chunk.to_vec())),
                Arc::new(messages),
            ],
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
