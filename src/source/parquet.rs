//! Parquet files on any object store: a directory, a glob or a list of URLs.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use super::{evolve, glob};
use super::{BatchStream, Source, SourceUnit};
use crate::error::{BoxError, Error, Result};
use crate::store::StoreLocation;

/// How Parquet files are read.
#[derive(Debug, Clone)]
pub struct ParquetSourceOptions {
    /// Options of the object store (see [`StoreLocation::from_url`]).
    pub store_options: HashMap<String, String>,
    /// Rows per batch.
    pub batch_size: usize,
    /// Footers read at once while opening.
    pub open_parallelism: usize,
}

impl Default for ParquetSourceOptions {
    fn default() -> Self {
        ParquetSourceOptions {
            store_options: HashMap::new(),
            batch_size: 8192,
            open_parallelism: 16,
        }
    }
}

/// A fixed set of Parquet files, read as the union of their columns by name
/// (see [`super::evolve`]: a column a file lacks is null in its rows).
#[derive(Debug, Clone)]
pub struct ParquetSource {
    files: Vec<ParquetFile>,
    units: Vec<SourceUnit>,
    schema: SchemaRef,
    batch_size: usize,
}

#[derive(Debug, Clone)]
struct ParquetFile {
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    reader_metadata: ArrowReaderMetadata,
}

impl ParquetSource {
    /// Opens the Parquet files at `url`: a file, a directory (every `*.parquet`
    /// below it, skipping names that start with `_` or `.`), or a glob in the
    /// last segment (`s3://bucket/drop/2026-*.parquet`).
    pub async fn open(url: &str, options: &ParquetSourceOptions) -> Result<Self> {
        Self::open_many(&[url], options).await
    }

    /// Opens the files of several URLs (each as in [`open`](Self::open)) as one
    /// source. Files are ordered by URL, then by path.
    pub async fn open_many(urls: &[&str], options: &ParquetSourceOptions) -> Result<Self> {
        let mut found: Vec<(Arc<dyn ObjectStore>, ObjectMeta, String)> = Vec::new();
        for url in urls {
            for (store, meta) in list_files(url, &options.store_options).await? {
                found.push((store, meta, (*url).to_string()));
            }
        }
        if found.is_empty() {
            return Err(Error::InvalidSource {
                location: urls.join(", "),
                reason: "no Parquet files found".into(),
            });
        }
        Self::from_found(found, options).await
    }

    /// A source of the given objects of one store, in the order given (for
    /// table formats that list their own files). Fails if `objects` is empty.
    pub async fn from_objects(
        store: Arc<dyn ObjectStore>,
        objects: Vec<ObjectMeta>,
        location: &str,
        options: &ParquetSourceOptions,
    ) -> Result<Self> {
        if objects.is_empty() {
            return Err(Error::InvalidSource {
                location: location.to_string(),
                reason: "no data files".into(),
            });
        }
        let found = objects
            .into_iter()
            .map(|meta| (store.clone(), meta, location.to_string()))
            .collect();
        Self::from_found(found, options).await
    }

    async fn from_found(
        found: Vec<(Arc<dyn ObjectStore>, ObjectMeta, String)>,
        options: &ParquetSourceOptions,
    ) -> Result<Self> {
        let files: Vec<ParquetFile> = stream::iter(found)
            .map(|(store, meta, url)| async move {
                let mut reader = ParquetObjectReader::new(store.clone(), meta.location.clone())
                    .with_file_size(meta.size);
                let reader_metadata =
                    ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
                        .await
                        .map_err(|e| source_error(&format!("{url} ({})", meta.location), e))?;
                Ok::<_, Error>(ParquetFile {
                    store,
                    meta,
                    reader_metadata,
                })
            })
            .buffered(options.open_parallelism.max(1))
            .try_collect()
            .await?;
        let names: Vec<String> = files.iter().map(|f| f.meta.location.to_string()).collect();
        let schema = evolve::unify(
            names
                .iter()
                .zip(&files)
                .map(|(name, f)| (name.as_str(), f.reader_metadata.schema().clone())),
        )?;
        let units = files
            .iter()
            .map(|f| SourceUnit {
                name: f.meta.location.to_string(),
                row_count: u64::try_from(f.reader_metadata.metadata().file_metadata().num_rows())
                    .ok(),
                content_id: Some(content_id(f.store.as_ref(), &f.meta)),
            })
            .collect();
        Ok(ParquetSource {
            files,
            units,
            schema,
            batch_size: options.batch_size.max(1),
        })
    }
}

impl Source for ParquetSource {
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
        let file = self.files.get(unit).cloned();
        let schema = self.schema.clone();
        let batch_size = self.batch_size;
        Box::pin(async move {
            let file = file.ok_or_else(|| Error::InvalidSource {
                location: format!("unit {unit}"),
                reason: "no such unit".into(),
            })?;
            let name = file.meta.location.to_string();
            // The source's columns asked for, as indices of its unified schema.
            let wanted: Vec<usize> = match &projection {
                Some(columns) => columns
                    .iter()
                    .map(|column| {
                        schema.index_of(column).map_err(|_| Error::InvalidSource {
                            location: name.clone(),
                            reason: format!("no column `{column}`"),
                        })
                    })
                    .collect::<Result<_>>()?,
                None => (0..schema.fields().len()).collect(),
            };
            // The file's own columns among them, by name (a file may order its
            // columns differently, or lack some).
            let file_schema = file.reader_metadata.schema();
            let roots = evolve::FileAdapter::roots(&schema, &wanted, file_schema);
            let adapter = evolve::FileAdapter::new(&name, &schema, &wanted, file_schema, &roots);
            let reader = ParquetObjectReader::new(file.store.clone(), file.meta.location.clone())
                .with_file_size(file.meta.size);
            let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
                reader,
                file.reader_metadata.clone(),
            )
            .with_batch_size(batch_size);
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            builder = builder.with_projection(mask);
            let stream = builder.build().map_err(|e| source_error(&name, e))?;
            let batches = stream.map(move |batch| {
                let batch = batch.map_err(|e| source_error(&name, e))?;
                adapter.adapt(&batch)
            });
            Ok(batches.boxed())
        })
    }
}

/// What names a file's content: its store and path, size, and whichever of
/// ETag, version and modification time the store reports. A file replaced
/// in place changes at least one of them.
fn content_id(store: &dyn ObjectStore, meta: &ObjectMeta) -> String {
    format!(
        "parquet:{store}/{}:{}:{}:{}:{}",
        meta.location,
        meta.size,
        meta.e_tag.as_deref().unwrap_or("-"),
        meta.version.as_deref().unwrap_or("-"),
        meta.last_modified.timestamp_nanos_opt().unwrap_or_default(),
    )
}

/// The Parquet files named by one URL.
async fn list_files(
    url: &str,
    options: &HashMap<String, String>,
) -> Result<Vec<(Arc<dyn ObjectStore>, ObjectMeta)>> {
    let (base, last) = match url.trim_end_matches('/').rsplit_once('/') {
        Some((base, last)) if !base.ends_with(':') && !base.ends_with(":/") => (base, last),
        _ => (url, ""),
    };
    let location = StoreLocation::from_url(base, options)?;
    let store = location.object_store.clone();
    let mut prefix = location.prefix.clone();
    let mut pattern = None;
    if glob::is_glob(last) {
        pattern = Some(last);
    } else if !last.is_empty() {
        prefix = prefix.join(last);
        // A single file?
        if let Ok(meta) = store.head(&prefix).await {
            return Ok(vec![(store, meta)]);
        }
    }
    let listed: Vec<ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| source_error(url, e))?;
    let mut files: Vec<ObjectMeta> = listed
        .into_iter()
        .filter(|meta| {
            let relative = relative_parts(&meta.location, &prefix);
            let Some(name) = relative.last() else {
                return false;
            };
            let hidden = relative
                .iter()
                .any(|p| p.starts_with('_') || p.starts_with('.'));
            match pattern {
                Some(pattern) => relative.len() == 1 && glob::matches(pattern, name.as_str()),
                None => !hidden && name.ends_with(".parquet"),
            }
        })
        .collect();
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files.into_iter().map(|m| (store.clone(), m)).collect())
}

fn relative_parts(location: &Path, prefix: &Path) -> Vec<String> {
    location
        .prefix_match(prefix)
        .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
        .unwrap_or_default()
}

fn source_error(location: &str, e: impl Into<BoxError>) -> Error {
    Error::Source {
        location: location.to_string(),
        source: e.into(),
    }
}
