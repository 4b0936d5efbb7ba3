//! An Iceberg table's current snapshot as a tidemark [`Source`]: one unit per
//! data file, read with the table's own reader (so delete files apply).

use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt, TryStreamExt};
use iceberg::arrow::{schema_to_arrow_schema, ArrowReaderBuilder};
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;
use iceberg::Runtime;
use tidemark::source::{BatchStream, Source, SourceUnit};

/// The data files of a table's current snapshot, fixed when opened.
#[derive(Debug, Clone)]
pub struct IcebergSource {
    table: String,
    file_io: FileIO,
    tasks: Vec<FileScanTask>,
    units: Vec<SourceUnit>,
    iceberg_schema: iceberg::spec::SchemaRef,
    schema: SchemaRef,
    batch_size: usize,
}

impl IcebergSource {
    /// Plans a scan of every column of `table`'s current snapshot. A table
    /// without a snapshot is a source with no units.
    pub async fn open(table: &Table) -> tidemark::Result<Self> {
        let name = table.identifier().to_string();
        let iceberg_schema = table.metadata().current_schema().clone();
        let schema =
            Arc::new(schema_to_arrow_schema(&iceberg_schema).map_err(|e| source_error(&name, e))?);
        let mut tasks: Vec<FileScanTask> = if table.metadata().current_snapshot().is_some() {
            let scan = table
                .scan()
                .select_all()
                .build()
                .map_err(|e| source_error(&name, e))?;
            scan.plan_files()
                .await
                .map_err(|e| source_error(&name, e))?
                .try_collect()
                .await
                .map_err(|e| source_error(&name, e))?
        } else {
            Vec::new()
        };
        // One order for every reader of this snapshot.
        tasks.sort_by(|a, b| {
            (a.data_file_path.as_str(), a.start).cmp(&(b.data_file_path.as_str(), b.start))
        });
        let units = tasks
            .iter()
            .map(|t| SourceUnit {
                name: t.data_file_path.clone(),
                row_count: if t.deletes.is_empty() {
                    t.record_count
                } else {
                    None
                },
                // Iceberg data files are immutable and their paths unique; a
                // delete file added later only removes rows.
                content_id: Some(format!(
                    "iceberg:{}:{}:{}",
                    t.data_file_path, t.start, t.length
                )),
            })
            .collect();
        Ok(IcebergSource {
            table: name,
            file_io: table.file_io().clone(),
            tasks,
            units,
            iceberg_schema,
            schema,
            batch_size: 8192,
        })
    }

    /// Sets the rows per batch (default 8192).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }
}

impl Source for IcebergSource {
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
        let task = self.tasks.get(unit).cloned();
        let this = self.clone_light();
        Box::pin(async move {
            let mut task = task.ok_or_else(|| tidemark::Error::InvalidSource {
                location: this.table.clone(),
                reason: format!("no unit {unit}"),
            })?;
            let location = task.data_file_path.clone();
            if let Some(columns) = projection {
                task.project_field_ids = columns
                    .iter()
                    .map(|c| {
                        this.iceberg_schema.field_id_by_name(c).ok_or_else(|| {
                            tidemark::Error::InvalidSource {
                                location: this.table.clone(),
                                reason: format!("no column `{c}`"),
                            }
                        })
                    })
                    .collect::<tidemark::Result<_>>()?;
            }
            let runtime = Runtime::try_current().map_err(|e| source_error(&location, e))?;
            let reader = ArrowReaderBuilder::new(this.file_io.clone(), runtime)
                .with_batch_size(this.batch_size)
                .with_data_file_concurrency_limit(1)
                .build();
            let batches = reader
                .read(stream::iter([Ok(task)]).boxed())
                .map_err(|e| source_error(&location, e))?
                .stream();
            Ok(batches
                .map(move |b| b.map_err(|e| source_error(&location, e)))
                .boxed())
        })
    }
}

impl IcebergSource {
    /// What a unit read needs, without the task list.
    fn clone_light(&self) -> Self {
        IcebergSource {
            table: self.table.clone(),
            file_io: self.file_io.clone(),
            tasks: Vec::new(),
            units: Vec::new(),
            iceberg_schema: self.iceberg_schema.clone(),
            schema: Arc::new(Schema::empty()),
            batch_size: self.batch_size,
        }
    }
}

fn source_error(location: &str, e: iceberg::Error) -> tidemark::Error {
    tidemark::Error::Source {
        location: location.to_string(),
        source: Box::new(e),
    }
}
