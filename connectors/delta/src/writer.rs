//! Writing Arrow batches as Parquet data files of a Delta table, each recorded
//! in a checkpoint: first as an in-flight write, then as its Add action.
//!
//! Files are named `part-{uuid}.parquet` below hive-style directories of the
//! partition values (`region=eu/`). The directory is a readable hint only:
//! readers take partition values from the Add action, and characters outside
//! `[A-Za-z0-9_.-]` are replaced by `_` in the directory name.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_cast::cast;
use arrow_schema::{DataType, Schema, SchemaRef};
use chrono::Utc;
use deltalake::kernel::Add;
use deltalake::logstore::ObjectStoreRef;
use deltalake::{DeltaTable, Path};
use object_store::ObjectStoreExt as _;
use parquet::arrow::async_writer::ParquetObjectWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tidemark::conform::conform_batch;
use tidemark::store::CheckpointWriter;
use uuid::Uuid;

use crate::protocol::{check_writable, RowChecks};
use crate::stats::FileStats;
use crate::{add_to_record, Error, Result};

/// Default target size of a data file: 128 MiB.
pub const DEFAULT_TARGET_FILE_SIZE_BYTES: u64 = 128 * 1024 * 1024;

/// How a [`DeltaWriter`] writes files.
#[derive(Debug, Clone)]
pub struct DeltaWriterOptions {
    /// A file is closed once its encoded size reaches this many bytes; files
    /// end a little above it, by at most one batch.
    pub target_file_size_bytes: u64,
    /// Parquet writer properties; `None` for Snappy-compressed defaults.
    pub writer_properties: Option<WriterProperties>,
}

impl Default for DeltaWriterOptions {
    fn default() -> Self {
        DeltaWriterOptions {
            target_file_size_bytes: DEFAULT_TARGET_FILE_SIZE_BYTES,
            writer_properties: None,
        }
    }
}

/// Counts of what a [`DeltaWriter`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows written.
    pub rows: u64,
    /// Data files closed and staged.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

struct OpenFile {
    path: String,
    partition_values: HashMap<String, Option<String>>,
    writer: AsyncArrowWriter<ParquetObjectWriter>,
    stats: FileStats,
}

/// Writes batches into one Delta table's location, one open file per
/// partition, and stages every closed file in the caller's checkpoint.
pub struct DeltaWriter {
    table: String,
    store: ObjectStoreRef,
    table_schema: SchemaRef,
    data_schema: SchemaRef,
    /// Positions of `data_schema`'s columns in `table_schema`.
    data_indices: Vec<usize>,
    partition_columns: Vec<String>,
    properties: WriterProperties,
    target_file_size_bytes: u64,
    row_checks: RowChecks,
    open: HashMap<Vec<Option<String>>, OpenFile>,
    stats: WriteStats,
}

impl std::fmt::Debug for DeltaWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaWriter")
            .field("table", &self.table)
            .field("open_files", &self.open.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl DeltaWriter {
    /// A writer for the loaded version of `table`. Batches must have the
    /// table's columns (see [`write`](Self::write)).
    ///
    /// Fails with [`Error::UnsupportedProtocol`] if the table's protocol has
    /// features this writer cannot honour (column mapping, identity columns,
    /// ...), or a constraint it cannot parse: before any row is read.
    pub fn new(table: &DeltaTable, options: DeltaWriterOptions) -> Result<Self> {
        let name = tidemark::redact::redact_url(table.table_url().as_str());
        let snapshot = table
            .snapshot()
            .map_err(|e| Error::delta(&name, "reading the table's metadata", e))?;
        check_writable(&name, snapshot)?;
        let table_schema = snapshot.snapshot().arrow_schema();
        let row_checks = RowChecks::new(&name, snapshot, &table_schema)?;
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        for column in &partition_columns {
            let field = table_schema
                .field_with_name(column)
                .map_err(|_| Error::InvalidTable {
                    table: name.clone(),
                    reason: format!("partition column `{column}` is not in the schema"),
                })?;
            if !partition_type_supported(field.data_type()) {
                return Err(Error::InvalidTable {
                    table: name.clone(),
                    reason: format!(
                        "partition column `{column}` has type {}, which this writer cannot \
                         partition by (supported: strings, integers, dates, booleans)",
                        field.data_type()
                    ),
                });
            }
        }
        let data_indices: Vec<usize> = table_schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !partition_columns.contains(f.name()))
            .map(|(i, _)| i)
            .collect();
        let data_schema = Arc::new(Schema::new(
            data_indices
                .iter()
                .map(|&i| table_schema.field(i).clone())
                .collect::<Vec<_>>(),
        ));
        let properties = options.writer_properties.unwrap_or_else(|| {
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build()
        });
        Ok(DeltaWriter {
            table: name,
            store: table.object_store(),
            table_schema,
            data_schema,
            data_indices,
            partition_columns,
            properties,
            target_file_size_bytes: options.target_file_size_bytes.max(1),
            row_checks,
            open: HashMap::new(),
            stats: WriteStats::default(),
        })
    }

    /// Writes a batch. Its columns must match the table's by name; a column may
    /// have a narrower type that widens exactly (`Int32` into `Int64`, string
    /// views into strings). Anything else, a null in a non-nullable column, or
    /// a row that breaks a CHECK constraint, column invariant or generated
    /// column, is refused before a byte of the batch is written.
    pub async fn write(
        &mut self,
        batch: &RecordBatch,
        checkpoint: &mut CheckpointWriter,
    ) -> Result<()> {
        let batch = self.conform(batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.row_checks.check(&batch)?;
        for (values, part) in self.split(&batch)? {
            self.write_part(values, part, checkpoint).await?;
        }
        Ok(())
    }

    /// Checks, before any row is read, that batches of `schema` fit the table:
    /// every column it needs (generated ones included), of types it can store.
    pub fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        if let Some(reason) = self.row_checks.missing_generated(schema) {
            return Err(Error::SchemaMismatch {
                table: self.table.clone(),
                reason,
            });
        }
        self.conform(&RecordBatch::new_empty(schema.clone()))
            .map(|_| ())
    }

    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        conform_batch(&self.table_schema, batch).map_err(|reason| Error::SchemaMismatch {
            table: self.table.clone(),
            reason,
        })
    }

    /// Closes every open file and stages it in `checkpoint`. Call before
    /// sealing; the writer can be used again afterwards.
    pub async fn finish(&mut self, checkpoint: &mut CheckpointWriter) -> Result<WriteStats> {
        let open: Vec<OpenFile> = self.open.drain().map(|(_, file)| file).collect();
        for file in open {
            self.close(file, checkpoint).await?;
        }
        Ok(self.stats)
    }

    /// What was written so far (closed files only for `files` and `bytes`).
    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    async fn write_part(
        &mut self,
        values: Vec<Option<String>>,
        part: RecordBatch,
        checkpoint: &mut CheckpointWriter,
    ) -> Result<()> {
        let data = part
            .project(&self.data_indices)
            .map_err(|e| Error::arrow(&self.table, "projecting data columns", e))?;
        if !self.open.contains_key(&values) {
            let path = self.new_file_path(&values);
            // Recorded before the first byte, so a crash leaves no untracked file.
            checkpoint
                .record_in_flight(&path)
                .await
                .map_err(|e| Error::checkpoint(&path, e))?;
            let file = self.create_file(path, &values)?;
            self.open.insert(values.clone(), file);
        }
        let Some(file) = self.open.get_mut(&values) else {
            return Ok(());
        };
        file.writer
            .write(&data)
            .await
            .map_err(|e| Error::parquet(&file.path, e))?;
        file.stats.add(&data);
        self.stats.rows += data.num_rows() as u64;
        let size = file.writer.bytes_written() + file.writer.in_progress_size();
        if size as u64 >= self.target_file_size_bytes {
            if let Some(file) = self.open.remove(&values) {
                self.close(file, checkpoint).await?;
            }
        }
        Ok(())
    }

    /// A new file's path below the table root, in its partition's directory.
    fn new_file_path(&self, values: &[Option<String>]) -> String {
        let mut path = String::new();
        for (column, value) in self.partition_columns.iter().zip(values) {
            path.push_str(&format!("{column}={}/", directory_name(value.as_deref())));
        }
        path.push_str(&format!("part-{}.parquet", Uuid::now_v7()));
        path
    }

    /// Opens the Parquet writer of a file already recorded as in flight.
    fn create_file(&self, path: String, values: &[Option<String>]) -> Result<OpenFile> {
        let object = ParquetObjectWriter::new(self.store.clone(), Path::from(path.as_str()));
        let writer = AsyncArrowWriter::try_new(
            object,
            self.data_schema.clone(),
            Some(self.properties.clone()),
        )
        .map_err(|e| Error::parquet(&path, e))?;
        Ok(OpenFile {
            partition_values: self
                .partition_columns
                .iter()
                .cloned()
                .zip(values.iter().cloned())
                .collect(),
            path,
            writer,
            stats: FileStats::default(),
        })
    }

    async fn close(&mut self, file: OpenFile, checkpoint: &mut CheckpointWriter) -> Result<()> {
        let OpenFile {
            path,
            partition_values,
            writer,
            stats,
        } = file;
        writer.close().await.map_err(|e| Error::parquet(&path, e))?;
        let size = self
            .store
            .head(&Path::from(path.as_str()))
            .await
            .map_err(|e| Error::ObjectStore {
                path: path.clone(),
                source: e,
            })?
            .size;
        let add = Add {
            path: path.clone(),
            partition_values,
            size: i64::try_from(size).unwrap_or(i64::MAX),
            modification_time: Utc::now().timestamp_millis(),
            data_change: true,
            stats: Some(stats.to_json()),
            ..Default::default()
        };
        checkpoint
            .stage_file(add_to_record(&add)?)
            .await
            .map_err(|e| Error::checkpoint(&path, e))?;
        self.stats.files += 1;
        self.stats.bytes += size;
        tracing::debug!(table = %self.table, %path, rows = stats.rows(), size, "data file staged");
        Ok(())
    }

    /// Splits a batch by partition values, in order of first appearance.
    fn split(&self, batch: &RecordBatch) -> Result<Vec<(Vec<Option<String>>, RecordBatch)>> {
        if self.partition_columns.is_empty() {
            return Ok(vec![(Vec::new(), batch.clone())]);
        }
        let columns: Vec<StringArray> = self
            .partition_columns
            .iter()
            .map(|name| {
                let array = batch
                    .column_by_name(name)
                    .ok_or_else(|| Error::SchemaMismatch {
                        table: self.table.clone(),
                        reason: format!("partition column `{name}` is missing"),
                    })?;
                partition_strings(array)
                    .map_err(|e| Error::arrow(&self.table, "formatting partition values", e))
            })
            .collect::<Result<_>>()?;
        let mut order: Vec<Vec<Option<String>>> = Vec::new();
        let mut rows: HashMap<Vec<Option<String>>, Vec<u32>> = HashMap::new();
        for row in 0..batch.num_rows() {
            let key: Vec<Option<String>> = columns
                .iter()
                .map(|c| c.is_valid(row).then(|| c.value(row).to_string()))
                .collect();
            let entry = rows.entry(key.clone()).or_default();
            if entry.is_empty() {
                order.push(key);
            }
            entry.push(u32::try_from(row).unwrap_or(u32::MAX));
        }
        if order.len() == 1 {
            return Ok(order.into_iter().map(|k| (k, batch.clone())).collect());
        }
        order
            .into_iter()
            .map(|key| {
                let indices = UInt32Array::from(rows.remove(&key).unwrap_or_default());
                let part = arrow_select::take::take_record_batch(batch, &indices)
                    .map_err(|e| Error::arrow(&self.table, "splitting by partition", e))?;
                Ok((key, part))
            })
            .collect()
    }
}

fn partition_type_supported(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Date32
            | DataType::Boolean
    )
}

/// Partition values as Delta serialises them: decimal integers, `YYYY-MM-DD`
/// dates, `true`/`false`, strings as they are.
fn partition_strings(
    array: &ArrayRef,
) -> std::result::Result<StringArray, arrow_schema::ArrowError> {
    let strings = cast(array, &DataType::Utf8)?;
    strings
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| arrow_schema::ArrowError::CastError("not a string array".into()))
}

fn directory_name(value: Option<&str>) -> String {
    match value {
        None => "__HIVE_DEFAULT_PARTITION__".to_string(),
        Some(v) => v
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    }
}

impl tidemark::pipeline::DataWriter for DeltaWriter {
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        checkpoint: &'a mut CheckpointWriter,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        let table = self.table.clone();
        Box::pin(async move {
            DeltaWriter::write(self, batch, checkpoint)
                .await
                .map_err(|e| tidemark::Error::Sink {
                    table,
                    source: Box::new(e),
                })
        })
    }

    fn finish<'a>(
        &'a mut self,
        checkpoint: &'a mut CheckpointWriter,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        let table = self.table.clone();
        Box::pin(async move {
            DeltaWriter::finish(self, checkpoint)
                .await
                .map(|_| ())
                .map_err(|e| tidemark::Error::Sink {
                    table,
                    source: Box::new(e),
                })
        })
    }

    fn check_schema(&self, schema: &SchemaRef) -> tidemark::Result<()> {
        DeltaWriter::check_schema(self, schema).map_err(|e| tidemark::Error::Sink {
            table: self.table.clone(),
            source: Box::new(e),
        })
    }
}
