//! A Delta table's current version as a tidemark [`Source`]: one unit per data
//! file, with partition columns restored from the file's partition values.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{Field, Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::{DeltaTable, ObjectMeta, Path};
use futures::future::BoxFuture;
use futures::stream::StreamExt;
use tidemark::source::{BatchStream, ParquetSource, ParquetSourceOptions, Source, SourceUnit};

/// The data files of a Delta table version, fixed when opened.
///
/// Refused, with an error naming the reason: tables with deletion vectors on
/// live files, and tables with column mapping (their Parquet column names are
/// not the table's).
#[derive(Debug, Clone)]
pub struct DeltaSource {
    table: String,
    files: Option<ParquetSource>,
    partition_values: Vec<HashMap<String, Option<String>>>,
    partition_fields: Vec<Field>,
    schema: SchemaRef,
    units: Vec<SourceUnit>,
}

impl DeltaSource {
    /// The files of `table`'s loaded version. A table without files is a
    /// source with no units.
    pub async fn open(
        table: &DeltaTable,
        options: &ParquetSourceOptions,
    ) -> tidemark::Result<Self> {
        let name = table.table_url().to_string();
        let snapshot = table.snapshot().map_err(|e| source_error(&name, e))?;
        if !snapshot.load_config().require_files {
            // Its file listing would be empty: a source that silently holds no rows.
            return Err(tidemark::Error::InvalidSource {
                location: name,
                reason: "the table was loaded without its file actions (`without_files`), so \
                         its data files are unknown; load it with them (for a sink's table, \
                         `DeltaSink::table_with_files`)"
                    .into(),
            });
        }
        let mapping = snapshot
            .metadata()
            .configuration()
            .get("delta.columnMapping.mode")
            .cloned()
            .unwrap_or_else(|| "none".into());
        if mapping != "none" {
            return Err(tidemark::Error::InvalidSource {
                location: name,
                reason: format!("column mapping mode `{mapping}` is not supported"),
            });
        }
        let table_schema: Schema = snapshot
            .schema()
            .as_ref()
            .try_into_arrow()
            .map_err(|e| source_error(&name, e))?;
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let partition_fields: Vec<Field> = partition_columns
            .iter()
            .filter_map(|c| table_schema.field_with_name(c).ok().cloned())
            .collect();

        let mut objects = Vec::new();
        let mut partition_values = Vec::new();
        for file in snapshot.log_data().iter() {
            // The Add action carries partition values as the log's strings, which is
            // what a typed cast needs; the Arrow view would need one per type.
            #[allow(deprecated)]
            let add = file.add_action();
            if add.deletion_vector.is_some() {
                return Err(tidemark::Error::InvalidSource {
                    location: format!("{name} ({})", add.path),
                    reason: "the file has a deletion vector, which this reader does not apply"
                        .into(),
                });
            }
            let location = Path::from_url_path(&add.path).map_err(|e| source_error(&name, e))?;
            objects.push(ObjectMeta {
                location,
                last_modified: chrono::DateTime::from_timestamp_millis(add.modification_time)
                    .unwrap_or_default(),
                size: u64::try_from(add.size).unwrap_or_default(),
                e_tag: None,
                version: None,
            });
            partition_values.push(add.partition_values.clone());
        }
        // One order for every reader of this version.
        let mut order: Vec<usize> = (0..objects.len()).collect();
        order.sort_by(|&a, &b| objects[a].location.cmp(&objects[b].location));
        let objects: Vec<ObjectMeta> = order.iter().map(|&i| objects[i].clone()).collect();
        let partition_values: Vec<_> = order.iter().map(|&i| partition_values[i].clone()).collect();

        let files = if objects.is_empty() {
            None
        } else {
            Some(ParquetSource::from_objects(table.object_store(), objects, &name, options).await?)
        };
        let (schema, units) = match &files {
            Some(files) => {
                let mut fields: Vec<Field> = files
                    .schema()
                    .fields()
                    .iter()
                    .filter(|f| !partition_columns.contains(f.name()))
                    .map(|f| f.as_ref().clone())
                    .collect();
                fields.extend(partition_fields.iter().cloned());
                (Arc::new(Schema::new(fields)), files.units().to_vec())
            }
            None => (Arc::new(table_schema), Vec::new()),
        };
        Ok(DeltaSource {
            table: name,
            files,
            partition_values,
            partition_fields,
            schema,
            units,
        })
    }
}

impl Source for DeltaSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn units(&self) -> &[SourceUnit] {
        &self.units
    }

    fn read_unit(
        &self,
        unit: usize,
        projection: Option<Vec<String>>,
    ) -> BoxFuture<'static, tidemark::Result<BatchStream>> {
        let files = self.files.clone();
        let values = self.partition_values.get(unit).cloned().unwrap_or_default();
        let partition_fields = self.partition_fields.clone();
        let schema = self.schema.clone();
        let table = self.table.clone();
        Box::pin(async move {
            let files = files.ok_or_else(|| tidemark::Error::InvalidSource {
                location: table.clone(),
                reason: format!("no unit {unit}"),
            })?;
            let wanted: Vec<String> = projection
                .unwrap_or_else(|| schema.fields().iter().map(|f| f.name().clone()).collect());
            let is_partition = |c: &String| partition_fields.iter().any(|f| f.name() == c);
            let from_file: Vec<String> = wanted
                .iter()
                .filter(|c| !is_partition(c))
                .cloned()
                .collect();
            let batches = files.read_unit(unit, Some(from_file)).await?;
            Ok(batches
                .map(move |batch| {
                    let batch = batch?;
                    let n = batch.num_rows();
                    let mut fields = Vec::with_capacity(wanted.len());
                    let mut columns: Vec<ArrayRef> = Vec::with_capacity(wanted.len());
                    for column in &wanted {
                        if let Some(field) = partition_fields.iter().find(|f| f.name() == column) {
                            columns.push(partition_column(field, values.get(column), n)?);
                            fields.push(field.clone());
                        } else {
                            let at = batch.schema().index_of(column).map_err(|source| {
                                tidemark::Error::Arrow {
                                    context: "finding a projected column",
                                    source,
                                }
                            })?;
                            columns.push(batch.column(at).clone());
                            fields.push(batch.schema().field(at).clone());
                        }
                    }
                    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|source| {
                        tidemark::Error::Arrow {
                            context: "adding partition columns",
                            source,
                        }
                    })
                })
                .boxed())
        })
    }
}

/// A column of `n` copies of a partition value, in the column's type.
fn partition_column(
    field: &Field,
    value: Option<&Option<String>>,
    n: usize,
) -> tidemark::Result<ArrayRef> {
    match value.and_then(|v| v.as_deref()) {
        None => Ok(new_null_array(field.data_type(), n)),
        Some(text) => {
            let strings = StringArray::from(vec![text; n]);
            arrow_cast::cast(&strings, field.data_type()).map_err(|source| tidemark::Error::Arrow {
                context: "parsing a partition value",
                source,
            })
        }
    }
}

fn source_error(
    location: &str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> tidemark::Error {
    tidemark::Error::Source {
        location: location.to_string(),
        source: e.into(),
    }
}
