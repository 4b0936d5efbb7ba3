//! The model table (a fast stand-in for Iceberg and Delta that keeps the
//! same contract), its data writer, and an in-memory source.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tidemark::commit::{CommitOutcome, CommitRequest, CommitSink, Lineage};
use tidemark::environment::Environment;
use tidemark::error::{BoxError, Error, Result};
use tidemark::gc::TableFiles;
use tidemark::pipeline::DataWriter;
use tidemark::source::{BatchStream, Source, SourceUnit};
use tidemark::store::{CheckpointWriter, FileRecord, TableFileMetadata};

use super::store::SimStore;
use super::world::{Actor, SimEnvironment};

pub const TABLE: &str = "sim://table";

/// What the table holds: a marker per pipeline and the data files appended,
/// changed atomically by one commit (as an Iceberg snapshot or a Delta version).
#[derive(Debug, Default)]
pub struct TableState {
    pub markers: BTreeMap<String, u64>,
    pub files: Vec<String>,
    pub commits: u64,
}

/// The table and the bucket its data files live in.
#[derive(Debug, Default)]
pub struct ModelTable {
    pub state: Mutex<TableState>,
    pub storage: Arc<InMemory>,
}

/// One actor's handle on the table: every call passes the actor's gate.
pub struct TableHandle {
    table: Arc<ModelTable>,
    actor: Arc<Actor>,
    storage: SimStore,
}

impl TableHandle {
    pub fn new(table: Arc<ModelTable>, actor: Arc<Actor>) -> Self {
        let storage = SimStore::new(table.storage.clone(), actor.clone(), "table");
        TableHandle {
            table,
            actor,
            storage,
        }
    }
}

impl CommitSink for TableHandle {
    fn table(&self) -> String {
        TABLE.to_string()
    }

    /// The model table is never rolled back: it carries its marker's commit.
    fn lineage<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Lineage, BoxError>> {
        let call = async move {
            let state = self.table.state.lock().expect("table");
            Ok(match state.markers.get(pipeline_id) {
                Some(marker) => Lineage::Carries(*marker),
                None => Lineage::Unknown,
            })
        };
        Box::pin(self.actor.call("read lineage", TABLE, call, BoxError::from))
    }

    /// The model table's markers are never dropped.
    fn marker_risk(&self) -> BoxFuture<'_, std::result::Result<Option<String>, BoxError>> {
        Box::pin(async { Ok(None) })
    }

    fn committed_sequence<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Option<u64>, BoxError>> {
        let call = async move {
            let state = self.table.state.lock().expect("table");
            Ok(state.markers.get(pipeline_id).copied())
        };
        Box::pin(self.actor.call("read marker", TABLE, call, BoxError::from))
    }

    fn commit<'a>(
        &'a self,
        request: &'a CommitRequest,
    ) -> BoxFuture<'a, std::result::Result<CommitOutcome, BoxError>> {
        Box::pin(async move {
            let what = format!("{TABLE} sequence {}", request.sequence);
            let call = async {
                let mut state = self.table.state.lock().expect("table");
                let marker = state.markers.get(&request.pipeline_id).copied();
                let applied = if marker.is_some_and(|m| m >= request.sequence) {
                    false
                } else {
                    state
                        .markers
                        .insert(request.pipeline_id.clone(), request.sequence);
                    state
                        .files
                        .extend(request.files.iter().map(|f| f.path.clone()));
                    state.commits += 1;
                    true
                };
                Ok(CommitOutcome {
                    applied,
                    table_version: serde_json::Value::Null,
                })
            };
            self.actor
                .call("table commit", &what, call, BoxError::from)
                .await
        })
    }
}

impl TableFiles for TableHandle {
    fn delete_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match self.storage.delete(&Path::from(path)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(sink_error(e)),
            }
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let listed: Vec<_> = self.storage.list(Some(&Path::from(prefix))).collect().await;
            for meta in listed {
                let meta = meta.map_err(sink_error)?;
                self.delete_file(meta.location.as_ref()).await?;
            }
            Ok(())
        })
    }
}

fn sink_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Sink {
        table: TABLE.to_string(),
        source: Box::new(e),
    }
}

/// Writes each batch as one data file of its ids (little-endian i64s),
/// recorded in flight before it is written and staged once it is.
pub struct ModelWriter {
    storage: SimStore,
    environment: Arc<SimEnvironment>,
}

impl ModelWriter {
    pub fn new(table: &ModelTable, actor: Arc<Actor>) -> Self {
        let environment = Arc::new(SimEnvironment(actor.world().clone()));
        ModelWriter {
            storage: SimStore::new(table.storage.clone(), actor, "table"),
            environment,
        }
    }
}

impl DataWriter for ModelWriter {
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        checkpoint: &'a mut CheckpointWriter,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let ids = batch
                .column_by_name("id")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .ok_or_else(|| sink_error(std::io::Error::other("no int64 id column")))?;
            let bytes: Vec<u8> = ids.values().iter().flat_map(|v| v.to_le_bytes()).collect();
            let path = format!("data/{}.bin", self.environment.new_id());
            checkpoint.record_in_flight(&path).await?;
            let size = bytes.len() as u64;
            self.storage
                .put(&Path::from(path.as_str()), PutPayload::from(bytes))
                .await
                .map_err(sink_error)?;
            checkpoint
                .stage_file(FileRecord {
                    path,
                    file_size_bytes: size,
                    record_count: ids.len() as u64,
                    table_metadata: TableFileMetadata {
                        format: "simulation.file".into(),
                        version: 1,
                        body: serde_json::Value::Null,
                    },
                })
                .await
        })
    }

    fn finish<'a>(
        &'a mut self,
        _checkpoint: &'a mut CheckpointWriter,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// The ids in a data file written by [`ModelWriter`].
pub fn decode_ids(bytes: &Bytes) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// A source of `units` units, unit `u` holding ids `u * rows .. (u + 1) * rows`
/// in batches of `batch` rows. It never fails: faults are the store's and the
/// table's.
#[derive(Debug)]
pub struct MemorySource {
    schema: SchemaRef,
    units: Vec<SourceUnit>,
    rows: u64,
    batch: u64,
}

impl MemorySource {
    pub fn new(units: u64, rows: u64, batch: u64) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        MemorySource {
            schema,
            units: (0..units)
                .map(|u| SourceUnit {
                    name: format!("unit-{u}"),
                    row_count: Some(rows),
                    content_id: Some(format!("memory:unit-{u}:{rows}")),
                })
                .collect(),
            rows,
            batch,
        }
    }

    pub fn all_ids(&self) -> Vec<i64> {
        (0..self.units.len() as u64 * self.rows)
            .map(|id| id as i64)
            .collect()
    }
}

impl Source for MemorySource {
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
    ) -> BoxFuture<'static, Result<BatchStream>> {
        let start = unit as u64 * self.rows;
        let end = start + self.rows;
        let batch = self.batch.max(1);
        let schema = self.schema.clone();
        Box::pin(async move {
            let batches: Vec<Result<RecordBatch>> =
                (start..end)
                    .step_by(batch as usize)
                    .map(|from| {
                        let to = (from + batch).min(end);
                        let ids: ArrayRef =
                            Arc::new(Int64Array::from_iter_values((from..to).map(|i| i as i64)));
                        let values: ArrayRef = Arc::new(Int64Array::from_iter_values(
                            (from..to).map(|i| i as i64 * 10),
                        ));
                        let full = RecordBatch::try_new(schema.clone(), vec![ids, values])
                            .map_err(|e| Error::Source {
                                location: format!("unit-{unit}"),
                                source: Box::new(e),
                            })?;
                        match &projection {
                            None => Ok(full),
                            Some(columns) => {
                                let indices: Vec<usize> = columns
                                    .iter()
                                    .filter_map(|c| schema.index_of(c).ok())
                                    .collect();
                                full.project(&indices).map_err(|e| Error::Source {
                                    location: format!("unit-{unit}"),
                                    source: Box::new(e),
                                })
                            }
                        }
                    })
                    .collect();
            Ok(stream::iter(batches).boxed())
        })
    }
}
