//! The lake the pipeline benchmarks share: the documents source, the per-row
//! work, the checkpoint store and the two tables (an Iceberg table in a
//! SQLite catalog, a Delta table in a local directory).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::compute::kernels::length::length;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use iceberg::io::LocalFsStorageFactory;
use iceberg::spec::{NestedField, PrimitiveType, Type};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlCatalogBuilder, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tidemark::source::{ParquetSource, ParquetSourceOptions, Source};
use tidemark::store::{CheckpointStore, KeySchema};
use tidemark_delta::DeltaSink;

/// The source's columns: `id` (the key) and `text`.
pub(crate) fn source_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("text", DataType::Utf8, true),
    ]))
}

/// Documents of 50 to 150 characters, keys in order within a file.
pub(crate) fn write_documents(path: &Path, ids: std::ops::Range<u64>) {
    let schema = source_schema();
    let file = std::fs::File::create(path).unwrap();
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties)).unwrap();
    let ids: Vec<i64> = ids.map(|i| i as i64).collect();
    for chunk in ids.chunks(65_536) {
        let text: StringArray = chunk
            .iter()
            .map(|i| {
                let words = 6 + (i % 11) as usize;
                let body: Vec<String> = (0..words)
                    .map(|w| format!("tide{}", (i * 31 + w as i64 * 7) % 1_000))
                    .collect();
                Some(format!("document {i}: {}", body.join(" ")))
            })
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(chunk.to_vec())), Arc::new(text)],
        )
        .unwrap();
        writer.write(&batch).unwrap();
    }
    writer.close().unwrap();
}

/// The per-row work: `chars = length(text)`.
pub(crate) fn add_chars(batch: RecordBatch) -> tidemark::Result<RecordBatch> {
    let map_error = |e: arrow::error::ArrowError| tidemark::Error::Map {
        source: Box::new(e),
    };
    let text = batch
        .column_by_name("text")
        .cloned()
        .ok_or_else(|| tidemark::Error::Map {
            source: "the source has no `text` column".into(),
        })?;
    let id = batch
        .column_by_name("id")
        .cloned()
        .ok_or_else(|| tidemark::Error::Map {
            source: "the source has no `id` column".into(),
        })?;
    let chars = arrow::compute::cast(&length(&text).map_err(map_error)?, &DataType::Int64)
        .map_err(map_error)?;
    RecordBatch::try_new(output_schema(), vec![id, text, chars as ArrayRef]).map_err(map_error)
}

/// The table's columns: the source's and `chars`.
pub(crate) fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("text", DataType::Utf8, true),
        Field::new("chars", DataType::Int64, true),
    ]))
}

/// The Parquet source at `url`.
pub(crate) async fn open_source(url: &str) -> Arc<dyn Source> {
    Arc::new(
        ParquetSource::open(url, &ParquetSourceOptions::default())
            .await
            .unwrap(),
    )
}

/// The checkpoint store below `work`, keyed on `id`.
pub(crate) async fn store(work: &Path) -> CheckpointStore {
    CheckpointStore::open(
        &format!("file://{}/checkpoints", work.display()),
        &HashMap::new(),
        KeySchema::single("id", DataType::Int64).unwrap(),
    )
    .await
    .unwrap()
}

/// The SQLite catalog and the table, created (unpartitioned) when missing.
pub(crate) async fn iceberg_table(work: &Path) -> (Arc<dyn Catalog>, TableIdent) {
    let catalog = SqlCatalogBuilder::default()
        .with_storage_factory(Arc::new(LocalFsStorageFactory))
        .load(
            "bench",
            HashMap::from([
                (
                    SQL_CATALOG_PROP_URI.to_string(),
                    format!("sqlite://{}/catalog.db?mode=rwc", work.display()),
                ),
                (
                    SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                    format!("file://{}/warehouse", work.display()),
                ),
            ]),
        )
        .await
        .unwrap();
    let namespace = NamespaceIdent::new("bench".into());
    let ident = TableIdent::new(namespace.clone(), "documents".into());
    if !catalog.table_exists(&ident).await.unwrap() {
        if !catalog.namespace_exists(&namespace).await.unwrap() {
            catalog
                .create_namespace(&namespace, HashMap::new())
                .await
                .unwrap();
        }
        let schema = iceberg::spec::Schema::builder()
            .with_fields(vec![
                NestedField::optional(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "text", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "chars", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .unwrap();
        let creation = TableCreation::builder()
            .name("documents".into())
            .schema(schema)
            .build();
        catalog.create_table(&namespace, creation).await.unwrap();
    }
    (Arc::new(catalog), ident)
}

/// The Delta table's sink, the table created when missing (one open, as
/// the CLI makes).
pub(crate) async fn delta_table(work: &Path) -> DeltaSink {
    let url = url::Url::from_directory_path(work.join("table")).unwrap();
    DeltaSink::create_if_missing(url, HashMap::new(), &output_schema(), &[])
        .await
        .unwrap()
}
