//! Writing Arrow batches as Parquet data files of an Iceberg table with
//! iceberg's own writers (field ids, column statistics, partition transforms),
//! each file recorded in a checkpoint.
//!
//! Every file of one writer goes below its own directory,
//! `{data location}/tm-{uuid}/{partition path}/`, recorded in the checkpoint
//! as an in-flight prefix before the first byte: iceberg names files as it
//! rolls them, and a crash leaves files only under that prefix.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use iceberg::arrow::{schema_to_arrow_schema, RecordBatchPartitionSplitter};
use iceberg::spec::{DataFile, DataFileFormat, PartitionKey, TableMetadata};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::{IcebergWriter as _, IcebergWriterBuilder as _};
use parquet::file::properties::WriterProperties;
use tidemark::conform::conform_batch;
use tidemark::store::CheckpointWriter;
use uuid::Uuid;

use crate::{data_file_to_record, Error, Result};

/// Default target size of a data file: 128 MiB.
pub const DEFAULT_TARGET_FILE_SIZE_BYTES: usize = 128 * 1024 * 1024;

/// How an [`IcebergWriter`] writes files.
#[derive(Debug, Clone)]
pub struct IcebergWriterOptions {
    /// A file is closed once its encoded size reaches this many bytes.
    pub target_file_size_bytes: usize,
    /// Parquet writer properties; `None` for the table's own
    /// (`write.parquet.compression-codec` and `-level`; zstd when unset, as
    /// Iceberg's default).
    pub writer_properties: Option<WriterProperties>,
}

impl Default for IcebergWriterOptions {
    fn default() -> Self {
        IcebergWriterOptions {
            target_file_size_bytes: DEFAULT_TARGET_FILE_SIZE_BYTES,
            writer_properties: None,
        }
    }
}

/// Puts every file below one directory of the table's data location.
#[derive(Debug, Clone)]
struct PrefixedLocations {
    /// `{data location}/tm-{uuid}/`.
    prefix: String,
}

impl PrefixedLocations {
    fn new(metadata: &TableMetadata) -> iceberg::Result<Self> {
        // The default generator knows the table's data location (and the
        // properties that move it); ask it for a file name and keep the folder.
        let sample = DefaultLocationGenerator::new(metadata)?.generate_location(None, "x");
        let data = sample.strip_suffix('x').unwrap_or(&sample);
        Ok(PrefixedLocations {
            prefix: format!("{data}tm-{}/", Uuid::now_v7()),
        })
    }
}

impl LocationGenerator for PrefixedLocations {
    fn generate_location(&self, partition_key: Option<&PartitionKey>, file_name: &str) -> String {
        match partition_key.filter(|k| !PartitionKey::is_effectively_none(Some(k))) {
            Some(key) => format!("{}{}/{file_name}", self.prefix, key.to_path()),
            None => format!("{}{file_name}", self.prefix),
        }
    }
}

type FileWriterBuilder =
    DataFileWriterBuilder<ParquetWriterBuilder, PrefixedLocations, DefaultFileNameGenerator>;

enum Open {
    Unpartitioned(
        Box<DataFileWriter<ParquetWriterBuilder, PrefixedLocations, DefaultFileNameGenerator>>,
    ),
    Partitioned(Box<FanoutWriter<FileWriterBuilder>>),
}

/// Writes batches into one Iceberg table and stages every closed file in the
/// caller's checkpoint.
pub struct IcebergWriter {
    table: Table,
    arrow_schema: SchemaRef,
    splitter: Option<RecordBatchPartitionSplitter>,
    options: IcebergWriterOptions,
    open: Option<Open>,
    rows: u64,
}

impl std::fmt::Debug for IcebergWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergWriter")
            .field("table", &self.table.identifier().to_string())
            .field("rows", &self.rows)
            .finish()
    }
}

impl IcebergWriter {
    /// A writer for the current schema and default partition spec of `table`.
    pub fn new(table: &Table, options: IcebergWriterOptions) -> Result<Self> {
        let name = table.identifier().to_string();
        let metadata = table.metadata();
        let schema = metadata.current_schema().clone();
        let arrow_schema = Arc::new(
            schema_to_arrow_schema(&schema)
                .map_err(|e| Error::iceberg(format!("the Arrow schema of `{name}`"), e))?,
        );
        let spec = metadata.default_partition_spec().clone();
        let splitter = if spec.is_unpartitioned() {
            None
        } else {
            Some(
                RecordBatchPartitionSplitter::try_new_with_computed_values(schema, spec)
                    .map_err(|e| Error::iceberg(format!("the partition spec of `{name}`"), e))?,
            )
        };
        let mut options = options;
        if options.writer_properties.is_none() {
            options.writer_properties = Some(table_writer_properties(&name, metadata.properties()));
        }
        Ok(IcebergWriter {
            table: table.clone(),
            arrow_schema,
            splitter,
            options,
            open: None,
            rows: 0,
        })
    }

    /// Checks, before any row is read, that batches of `schema` fit the
    /// table's current schema: every column, of a type that converts exactly.
    pub fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        self.conform(&RecordBatch::new_empty(schema.clone()))
            .map(|_| ())
    }

    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        conform_batch(&self.arrow_schema, batch).map_err(|reason| Error::SchemaMismatch {
            table: self.table.identifier().to_string(),
            reason,
        })
    }

    /// Writes a batch. Its columns must match the table's by name (exact
    /// widenings allowed, written by the current schema's field ids); anything
    /// else, or a null in a required column, is refused before a byte is
    /// written.
    pub async fn write(
        &mut self,
        batch: &RecordBatch,
        checkpoint: &mut CheckpointWriter,
    ) -> Result<()> {
        let batch = self.conform(batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let parts = match &self.splitter {
            Some(splitter) => splitter
                .split(&batch)
                .map_err(|e| self.error("splitting a batch by partition", e))?
                .into_iter()
                .map(|(key, part)| (Some(key), part))
                .collect(),
            None => vec![(None, batch)],
        };
        if self.open.is_none() {
            let partitioned = self.splitter.is_some();
            let open =
                Self::open_writer(&self.table, &self.options, partitioned, checkpoint).await?;
            self.open = Some(open);
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        for (key, part) in parts {
            let rows = part.num_rows() as u64;
            let written = match (open as &mut Open, key) {
                (Open::Partitioned(writer), Some(key)) => writer.write(key, part).await,
                (Open::Unpartitioned(writer), _) => writer.write(part).await,
                // The splitter gives every part a key; never drop rows silently.
                (Open::Partitioned(_), None) => Err(iceberg::Error::new(
                    iceberg::ErrorKind::Unexpected,
                    "a partitioned table got rows without a partition key",
                )),
            };
            written.map_err(|e| Error::iceberg("writing a data file".to_string(), e))?;
            self.rows += rows;
        }
        Ok(())
    }

    /// Closes the open files and stages them in `checkpoint`. Call before
    /// sealing; the writer can be used again afterwards (with a new prefix).
    pub async fn finish(&mut self, checkpoint: &mut CheckpointWriter) -> Result<Vec<DataFile>> {
        let files = match self.open.take() {
            None => Ok(Vec::new()),
            Some(Open::Unpartitioned(mut writer)) => writer.close().await,
            Some(Open::Partitioned(writer)) => writer.close().await,
        }
        .map_err(|e| self.error("closing data files", e))?;
        let metadata = self.table.metadata();
        let spec_id = metadata.default_partition_spec_id();
        let partition_type = metadata.default_partition_type();
        for file in &files {
            let record = data_file_to_record(
                file.clone(),
                spec_id,
                partition_type,
                metadata.format_version(),
            )?;
            let path = record.path.clone();
            checkpoint
                .stage_file(record)
                .await
                .map_err(|e| Error::Checkpoint {
                    path,
                    source: Box::new(e),
                })?;
        }
        Ok(files)
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Opens the file writers. An associated function, not a method: the
    /// future must not hold a shared borrow of the writer, whose open files
    /// are not `Sync`.
    async fn open_writer(
        table: &Table,
        options: &IcebergWriterOptions,
        partitioned: bool,
        checkpoint: &mut CheckpointWriter,
    ) -> Result<Open> {
        let metadata = table.metadata();
        let locations = PrefixedLocations::new(metadata)
            .map_err(|e| table_error(table, "the data location", e))?;
        // Recorded before the first byte, so a crash leaves no untracked file.
        checkpoint
            .record_in_flight_prefix(&locations.prefix)
            .await
            .map_err(|e| Error::Checkpoint {
                path: locations.prefix.clone(),
                source: Box::new(e),
            })?;
        let parquet = ParquetWriterBuilder::new(
            options.writer_properties.clone().unwrap_or_default(),
            metadata.current_schema().clone(),
        );
        let names =
            DefaultFileNameGenerator::new("part".to_string(), None, DataFileFormat::Parquet);
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            options.target_file_size_bytes.max(1),
            table.file_io().clone(),
            locations,
            names,
        );
        let builder = DataFileWriterBuilder::new(rolling);
        Ok(if partitioned {
            Open::Partitioned(Box::new(FanoutWriter::new(builder)))
        } else {
            Open::Unpartitioned(Box::new(
                builder
                    .build(None)
                    .await
                    .map_err(|e| table_error(table, "opening a data file writer", e))?,
            ))
        })
    }

    fn error(&self, context: &str, source: iceberg::Error) -> Error {
        table_error(&self.table, context, source)
    }
}

impl tidemark::pipeline::DataWriter for IcebergWriter {
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        checkpoint: &'a mut CheckpointWriter,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        let table = self.sink_name();
        Box::pin(async move {
            IcebergWriter::write(self, batch, checkpoint)
                .await
                .map_err(|e| sink_error(table, e))
        })
    }

    fn finish<'a>(
        &'a mut self,
        checkpoint: &'a mut CheckpointWriter,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        let table = self.sink_name();
        Box::pin(async move {
            IcebergWriter::finish(self, checkpoint)
                .await
                .map(|_| ())
                .map_err(|e| sink_error(table, e))
        })
    }

    fn check_schema(&self, schema: &SchemaRef) -> tidemark::Result<()> {
        IcebergWriter::check_schema(self, schema).map_err(|e| sink_error(self.sink_name(), e))
    }
}

impl IcebergWriter {
    fn sink_name(&self) -> String {
        format!("iceberg:{}", self.table.identifier())
    }
}

/// Parquet properties from the table's write properties: the compression
/// codec and level (zstd when unset). A codec this build does not have (gzip,
/// lz4, brotli) falls back to zstd with a warning: compression never changes
/// what readers see.
fn table_writer_properties(
    table: &str,
    properties: &std::collections::HashMap<String, String>,
) -> WriterProperties {
    use parquet::basic::{Compression, ZstdLevel};
    let codec = properties
        .get("write.parquet.compression-codec")
        .map_or("zstd", String::as_str)
        .to_ascii_lowercase();
    let level = properties
        .get("write.parquet.compression-level")
        .and_then(|l| l.parse::<i32>().ok());
    let zstd = || {
        Compression::ZSTD(
            level
                .and_then(|l| ZstdLevel::try_new(l).ok())
                .unwrap_or_default(),
        )
    };
    let compression = match codec.as_str() {
        "zstd" => zstd(),
        "snappy" => Compression::SNAPPY,
        "uncompressed" | "none" => Compression::UNCOMPRESSED,
        other => {
            tracing::warn!(
                table,
                codec = other,
                "write.parquet.compression-codec is not built in; writing zstd"
            );
            zstd()
        }
    };
    WriterProperties::builder()
        .set_compression(compression)
        .build()
}

fn table_error(table: &Table, context: &str, source: iceberg::Error) -> Error {
    Error::iceberg(format!("table `{}`: {context}", table.identifier()), source)
}

fn sink_error(table: String, error: Error) -> tidemark::Error {
    tidemark::Error::Sink {
        table,
        source: Box::new(error),
    }
}
