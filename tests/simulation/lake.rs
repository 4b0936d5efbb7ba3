//! The table a seed commits into: the model table; a real Delta table on
//! the local disk whose every object store call (log reads, the commit's
//! put-if-absent, data files, deletes) passes the actor's gate; or a real
//! Iceberg table whose catalog calls and writer calls pass it (see `iceberg`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Array, Int64Array};
use futures::future::BoxFuture;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use tidemark::commit::{CommitOutcome, CommitRequest, CommitSink, Lineage};
use tidemark::error::{BoxError, Error, Result};
use tidemark::gc::TableFiles;
use tidemark::pipeline::DataWriter;
use tidemark_delta::{DeltaSink, DeltaWriterOptions};
use url::Url;

use super::iceberg::{local_path, IcebergLake};
use super::store::SimStore;
use super::table::{decode_ids, ModelTable, ModelWriter, TableHandle};
use super::world::Actor;

/// Which table a seed writes.
pub enum Lake {
    Model(Arc<ModelTable>),
    Delta(DeltaLake),
    Iceberg(IcebergLake),
}

/// A Delta table in a temporary directory.
pub struct DeltaLake {
    _dir: tempfile::TempDir,
    root: PathBuf,
    url: Url,
    disk: Arc<dyn ObjectStore>,
}

impl DeltaLake {
    pub async fn create(schema: &arrow_schema::Schema) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().join("table");
        let url = Url::from_directory_path(&root).expect("an absolute path");
        DeltaSink::create_if_missing(url.clone(), HashMap::new(), schema, &[])
            .await
            .expect("creating the Delta table");
        DeltaLake {
            _dir: dir,
            root,
            url,
            disk: Arc::new(LocalFileSystem::new()),
        }
    }
}

/// One actor's handle on the table.
pub enum LakeSink {
    Model(TableHandle),
    Delta(DeltaSink),
    Iceberg(tidemark_iceberg::IcebergSink),
}

fn delta_error(e: tidemark_delta::Error) -> Error {
    Error::Sink {
        table: "delta".into(),
        source: Box::new(e),
    }
}

impl Lake {
    pub async fn open(&self, actor: &Arc<Actor>) -> Result<LakeSink> {
        match self {
            Lake::Model(table) => Ok(LakeSink::Model(TableHandle::new(
                table.clone(),
                actor.clone(),
            ))),
            Lake::Delta(lake) => {
                let gated = Arc::new(SimStore::new(lake.disk.clone(), actor.clone(), "table"));
                DeltaSink::open_with_store(lake.url.clone(), gated)
                    .await
                    .map(LakeSink::Delta)
                    .map_err(delta_error)
            }
            Lake::Iceberg(lake) => lake.open(actor).await.map(LakeSink::Iceberg),
        }
    }

    /// A data file path as a writer recorded it, in the form of
    /// [`Self::table_files`] and [`Self::stored_files`].
    pub fn normalize(&self, recorded: &str) -> String {
        match self {
            Lake::Iceberg(_) => local_path(recorded),
            _ => recorded.to_string(),
        }
    }

    pub async fn writer(&self, sink: &LakeSink, actor: &Arc<Actor>) -> Result<Box<dyn DataWriter>> {
        match (self, sink) {
            (Lake::Model(table), _) => Ok(Box::new(ModelWriter::new(table, actor.clone()))),
            (Lake::Delta(_), LakeSink::Delta(sink)) => sink
                .writer(DeltaWriterOptions::default())
                .await
                .map(|w| Box::new(w) as Box<dyn DataWriter>)
                .map_err(delta_error),
            (Lake::Iceberg(lake), LakeSink::Iceberg(sink)) => lake
                .writer(sink, actor)
                .await
                .map(|w| Box::new(w) as Box<dyn DataWriter>),
            _ => Err(Error::Sink {
                table: "simulation".into(),
                source: "a sink of another kind of table".into(),
            }),
        }
    }

    /// The data files the table references, as writers record them.
    pub async fn table_files(&self) -> std::result::Result<Vec<String>, String> {
        match self {
            Lake::Model(table) => Ok(table.state.lock().expect("table").files.clone()),
            Lake::Delta(lake) => {
                let sink = DeltaSink::open(lake.url.clone(), HashMap::new())
                    .await
                    .map_err(|e| e.to_string())?;
                let table = sink.table_with_files().await.map_err(|e| e.to_string())?;
                let uris = table.get_file_uris().map_err(|e| e.to_string())?;
                let prefixes = [lake.url.to_string(), format!("{}/", lake.root.display())];
                Ok(uris
                    .map(|uri| {
                        prefixes
                            .iter()
                            .find_map(|p| uri.strip_prefix(p.as_str()))
                            .unwrap_or(&uri)
                            .to_string()
                    })
                    .collect())
            }
            Lake::Iceberg(lake) => lake.table_files().await,
        }
    }

    /// The ids in data file `path`; `Err` if it is gone.
    pub async fn read_ids(&self, path: &str) -> std::result::Result<Vec<i64>, String> {
        match self {
            Lake::Model(table) => {
                use object_store::ObjectStoreExt as _;
                match table
                    .storage
                    .get(&object_store::path::Path::from(path))
                    .await
                {
                    Ok(found) => Ok(decode_ids(&found.bytes().await.map_err(|e| e.to_string())?)),
                    Err(e) => Err(e.to_string()),
                }
            }
            Lake::Delta(_) | Lake::Iceberg(_) => {
                let local = match self {
                    Lake::Delta(lake) => lake.root.join(path),
                    _ => PathBuf::from(path),
                };
                let file = std::fs::File::open(local).map_err(|e| e.to_string())?;
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .map_err(|e| e.to_string())?
                        .build()
                        .map_err(|e| e.to_string())?;
                let mut ids = Vec::new();
                for batch in reader {
                    let batch = batch.map_err(|e| e.to_string())?;
                    let column = batch
                        .column_by_name("id")
                        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                        .ok_or("no int64 id column")?;
                    ids.extend(column.iter().map(|v| v.unwrap_or(i64::MIN)));
                }
                Ok(ids)
            }
        }
    }

    /// Every data file in the table's storage, referenced or not.
    pub async fn stored_files(&self) -> Vec<String> {
        match self {
            Lake::Model(table) => {
                use futures::StreamExt as _;
                let listed: Vec<_> = table
                    .storage
                    .list(Some(&object_store::path::Path::from("data")))
                    .collect()
                    .await;
                listed
                    .into_iter()
                    .map(|m| m.expect("in-memory list").location.to_string())
                    .collect()
            }
            Lake::Delta(lake) => {
                let mut found = Vec::new();
                let mut dirs = vec![lake.root.clone()];
                while let Some(dir) = dirs.pop() {
                    for entry in std::fs::read_dir(&dir).expect("the table directory") {
                        let path = entry.expect("a directory entry").path();
                        if path.is_dir() {
                            if !path.ends_with("_delta_log") {
                                dirs.push(path);
                            }
                        } else if path.extension().is_some_and(|e| e == "parquet") {
                            let relative = path.strip_prefix(&lake.root).expect("below the root");
                            found.push(relative.display().to_string());
                        }
                    }
                }
                found.sort();
                found
            }
            Lake::Iceberg(lake) => lake.stored_files(),
        }
    }
}

impl CommitSink for LakeSink {
    fn table(&self) -> String {
        match self {
            LakeSink::Model(sink) => sink.table(),
            LakeSink::Delta(sink) => CommitSink::table(sink),
            LakeSink::Iceberg(sink) => CommitSink::table(sink),
        }
    }

    fn committed_sequence<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Option<u64>, BoxError>> {
        match self {
            LakeSink::Model(sink) => sink.committed_sequence(pipeline_id),
            LakeSink::Delta(sink) => sink.committed_sequence(pipeline_id),
            LakeSink::Iceberg(sink) => sink.committed_sequence(pipeline_id),
        }
    }

    fn commit<'a>(
        &'a self,
        request: &'a CommitRequest,
    ) -> BoxFuture<'a, std::result::Result<CommitOutcome, BoxError>> {
        match self {
            LakeSink::Model(sink) => sink.commit(request),
            LakeSink::Delta(sink) => sink.commit(request),
            LakeSink::Iceberg(sink) => sink.commit(request),
        }
    }

    fn lineage<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Lineage, BoxError>> {
        match self {
            LakeSink::Model(sink) => sink.lineage(pipeline_id),
            LakeSink::Delta(sink) => sink.lineage(pipeline_id),
            LakeSink::Iceberg(sink) => sink.lineage(pipeline_id),
        }
    }

    fn marker_risk(&self) -> BoxFuture<'_, std::result::Result<Option<String>, BoxError>> {
        match self {
            LakeSink::Model(sink) => sink.marker_risk(),
            LakeSink::Delta(sink) => sink.marker_risk(),
            LakeSink::Iceberg(sink) => sink.marker_risk(),
        }
    }
}

impl TableFiles for LakeSink {
    fn delete_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        match self {
            LakeSink::Model(sink) => sink.delete_file(path),
            LakeSink::Delta(sink) => sink.delete_file(path),
            LakeSink::Iceberg(sink) => sink.delete_file(path),
        }
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<()>> {
        match self {
            LakeSink::Model(sink) => sink.delete_prefix(prefix),
            LakeSink::Delta(sink) => sink.delete_prefix(prefix),
            LakeSink::Iceberg(sink) => sink.delete_prefix(prefix),
        }
    }
}
