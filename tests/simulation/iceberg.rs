//! A real Iceberg table for the simulator: iceberg's memory catalog over a
//! warehouse on the local disk, seen by each actor through a catalog whose
//! every call (load, commit, ...) passes the actor's gate, and through a data
//! writer whose every write and close passes it too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use iceberg::io::LocalFsStorageFactory;
use iceberg::memory::{MemoryCatalogBuilder, MEMORY_CATALOG_WAREHOUSE};
use iceberg::spec::{NestedField, PrimitiveType, Transform, Type, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::{
    Catalog, CatalogBuilder, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent,
};
use tidemark::error::{Error, Result};
use tidemark::pipeline::DataWriter;
use tidemark::store::CheckpointWriter;
use tidemark_iceberg::{IcebergSink, IcebergWriter, IcebergWriterOptions};

use super::world::Actor;

/// An Iceberg table `sim.events` (id long, v long; bucket(2) on id).
pub struct IcebergLake {
    _dir: tempfile::TempDir,
    pub warehouse: PathBuf,
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
}

impl IcebergLake {
    pub async fn create() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let warehouse = dir.path().join("warehouse");
        let catalog = MemoryCatalogBuilder::default()
            .with_storage_factory(Arc::new(LocalFsStorageFactory))
            .load(
                "sim",
                HashMap::from([(
                    MEMORY_CATALOG_WAREHOUSE.to_string(),
                    format!("file://{}", warehouse.display()),
                )]),
            )
            .await
            .expect("a memory catalog");
        let namespace = NamespaceIdent::new("sim".into());
        catalog
            .create_namespace(&namespace, HashMap::new())
            .await
            .expect("a namespace");
        let schema = iceberg::spec::Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::required(2, "v", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .expect("a schema");
        let spec = UnboundPartitionSpec::builder()
            .add_partition_field(1, "id_bucket", Transform::Bucket(2))
            .expect("a partition field")
            .build();
        catalog
            .create_table(
                &namespace,
                TableCreation::builder()
                    .name("events".into())
                    .schema(schema)
                    .partition_spec(spec)
                    .build(),
            )
            .await
            .expect("a table");
        IcebergLake {
            _dir: dir,
            warehouse,
            catalog: Arc::new(catalog),
            ident: TableIdent::from_strs(["sim", "events"]).expect("an identifier"),
        }
    }

    /// The sink of `actor`, every catalog call gated.
    pub async fn open(&self, actor: &Arc<Actor>) -> Result<IcebergSink> {
        let gated = Arc::new(GatedCatalog {
            inner: self.catalog.clone(),
            actor: actor.clone(),
        });
        IcebergSink::open(gated, self.ident.clone())
            .await
            .map_err(iceberg_error)
    }

    /// A writer of `sink` whose writes and closes are gated.
    pub async fn writer(&self, sink: &IcebergSink, actor: &Arc<Actor>) -> Result<GatedWriter> {
        let inner = sink
            .writer(IcebergWriterOptions::default())
            .await
            .map_err(iceberg_error)?;
        Ok(GatedWriter {
            inner,
            actor: actor.clone(),
        })
    }

    /// The data files of the current snapshot, as absolute paths.
    pub async fn table_files(&self) -> std::result::Result<Vec<String>, String> {
        let table = self
            .catalog
            .load_table(&self.ident)
            .await
            .map_err(|e| e.to_string())?;
        if table.metadata().current_snapshot().is_none() {
            return Ok(Vec::new());
        }
        let tasks: Vec<_> = table
            .scan()
            .build()
            .map_err(|e| e.to_string())?
            .plan_files()
            .await
            .map_err(|e| e.to_string())?
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(tasks
            .iter()
            .map(|t| local_path(t.data_file_path()))
            .collect())
    }

    /// Every Parquet data file in the warehouse, referenced or not.
    pub fn stored_files(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![self.warehouse.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    if !path.ends_with("metadata") {
                        dirs.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    found.push(path.display().to_string());
                }
            }
        }
        found.sort();
        found
    }
}

/// A `file://` location as a local path (other paths as they are).
pub fn local_path(location: &str) -> String {
    location
        .strip_prefix("file://")
        .or_else(|| location.strip_prefix("file:"))
        .unwrap_or(location)
        .to_string()
}

fn iceberg_error(e: tidemark_iceberg::Error) -> Error {
    Error::Sink {
        table: "iceberg:sim.events".into(),
        source: Box::new(e),
    }
}

/// The real writer, each call gated.
pub struct GatedWriter {
    inner: IcebergWriter,
    actor: Arc<Actor>,
}

fn gate_error(message: String) -> Error {
    Error::Sink {
        table: "iceberg:sim.events".into(),
        source: message.into(),
    }
}

impl DataWriter for GatedWriter {
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        checkpoint: &'a mut CheckpointWriter,
    ) -> BoxFuture<'a, Result<()>> {
        let call = DataWriter::write(&mut self.inner, batch, checkpoint);
        Box::pin(self.actor.call("iceberg write", "data", call, gate_error))
    }

    fn finish<'a>(&'a mut self, checkpoint: &'a mut CheckpointWriter) -> BoxFuture<'a, Result<()>> {
        let call = DataWriter::finish(&mut self.inner, checkpoint);
        Box::pin(self.actor.call("iceberg close", "data", call, gate_error))
    }

    fn check_schema(&self, schema: &SchemaRef) -> Result<()> {
        DataWriter::check_schema(&self.inner, schema)
    }
}

/// A catalog whose every call passes the actor's gate.
#[derive(Debug)]
struct GatedCatalog {
    inner: Arc<dyn Catalog>,
    actor: Arc<Actor>,
}

fn injected(message: String) -> iceberg::Error {
    iceberg::Error::new(iceberg::ErrorKind::Unexpected, message)
}

impl GatedCatalog {
    async fn gated<T>(
        &self,
        op: &str,
        call: impl std::future::Future<Output = iceberg::Result<T>>,
    ) -> iceberg::Result<T> {
        self.actor.call(op, "catalog", call, injected).await
    }
}

#[async_trait]
impl Catalog for GatedCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.gated("list namespaces", self.inner.list_namespaces(parent))
            .await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.gated(
            "create namespace",
            self.inner.create_namespace(namespace, properties),
        )
        .await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.gated("get namespace", self.inner.get_namespace(namespace))
            .await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.gated("namespace exists", self.inner.namespace_exists(namespace))
            .await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.gated(
            "update namespace",
            self.inner.update_namespace(namespace, properties),
        )
        .await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.gated("drop namespace", self.inner.drop_namespace(namespace))
            .await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.gated("list tables", self.inner.list_tables(namespace))
            .await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.gated("create table", self.inner.create_table(namespace, creation))
            .await
    }

    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        self.gated("load table", self.inner.load_table(table)).await
    }

    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.gated("drop table", self.inner.drop_table(table)).await
    }

    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.gated("purge table", self.inner.purge_table(table))
            .await
    }

    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.gated("table exists", self.inner.table_exists(table))
            .await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.gated("rename table", self.inner.rename_table(src, dest))
            .await
    }

    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.gated(
            "register table",
            self.inner.register_table(table, metadata_location),
        )
        .await
    }

    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        self.gated("table commit", self.inner.update_table(commit))
            .await
    }
}
