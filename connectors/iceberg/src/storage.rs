//! Iceberg file I/O over `object_store`, so tables can live wherever the
//! checkpoint store can: the local file system, S3 and S3-compatible servers,
//! and the other backends `object_store` supports.
//!
//! Give [`ObjectStorageFactory`] to a catalog builder
//! (`SqlCatalogBuilder::default().with_storage_factory(...)`). Options are
//! `object_store`'s (`aws_endpoint`, `aws_region`, `aws_access_key_id`,
//! `aws_allow_http`, ...); Iceberg's own S3 properties (`s3.endpoint`,
//! `s3.access-key-id`, `s3.secret-access-key`, `s3.region`,
//! `s3.session-token`, `s3.path-style-access`) set by the catalog are mapped
//! onto them and take precedence.

use std::collections::HashMap;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use url::Url;

/// Builds [`ObjectStorage`] for catalogs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorageFactory {
    options: HashMap<String, String>,
}

impl ObjectStorageFactory {
    /// A factory whose storages open object stores with `options`.
    pub fn new(options: HashMap<String, String>) -> Self {
        ObjectStorageFactory { options }
    }
}

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        let mut options = self.options.clone();
        options.extend(object_store_options(config.props()));
        Ok(Arc::new(ObjectStorage::new(options)))
    }
}

/// Iceberg properties that have an `object_store` equivalent.
fn object_store_options(props: &HashMap<String, String>) -> HashMap<String, String> {
    let mut options = HashMap::new();
    for (key, value) in props {
        let mapped = match key.as_str() {
            "s3.endpoint" => "aws_endpoint",
            "s3.access-key-id" => "aws_access_key_id",
            "s3.secret-access-key" => "aws_secret_access_key",
            "s3.session-token" => "aws_session_token",
            "s3.region" | "client.region" => "aws_region",
            "s3.path-style-access" => "aws_virtual_hosted_style_request",
            _ => continue,
        };
        let value = if key == "s3.path-style-access" {
            // Path style on means virtual-hosted style off.
            (!value.eq_ignore_ascii_case("true")).to_string()
        } else {
            value.clone()
        };
        if key == "s3.endpoint" && value.starts_with("http://") {
            options.insert("aws_allow_http".to_string(), "true".to_string());
        }
        options.insert(mapped.to_string(), value);
    }
    options
}

/// Iceberg [`Storage`] on `object_store`: one store per scheme and bucket,
/// opened on first use with the storage's options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorage {
    options: HashMap<String, String>,
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl ObjectStorage {
    /// A storage that opens object stores with `options`.
    pub fn new(options: HashMap<String, String>) -> Self {
        ObjectStorage {
            options,
            stores: Arc::default(),
        }
    }

    /// The store holding `location` and the object's path in it.
    fn resolve(&self, location: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let url = Url::parse(location).map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("`{location}` is not a URL: {e}"),
            )
        })?;
        let root = format!("{}://{}", url.scheme(), url.authority());
        let mut stores = self
            .stores
            .lock()
            .map_err(|_| Error::new(ErrorKind::Unexpected, "object store cache poisoned"))?;
        let (store, path) = match stores.get(&root) {
            Some(store) => (store.clone(), path_of(&url)?),
            None => {
                let (store, path) = open_store(&url, &self.options)
                    .map_err(|e| store_error("opening", location, e))?;
                stores.insert(root, store.clone());
                (store, path)
            }
        };
        Ok((store, path))
    }
}

/// The object store of `url`. S3 starts from the `AWS_*` environment (as the
/// checkpoint store does), then applies `options`; other schemes take
/// `options` alone.
fn open_store(
    url: &Url,
    options: &HashMap<String, String>,
) -> object_store::Result<(Arc<dyn ObjectStore>, Path)> {
    if !matches!(url.scheme(), "s3" | "s3a") {
        let (store, path) = object_store::parse_url_opts(url, options)?;
        return Ok((Arc::from(store), path));
    }
    let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
    for (key, value) in options {
        // Keys object_store does not know (tidemark's own retry settings)
        // are not S3 settings.
        if let Ok(key) = AmazonS3ConfigKey::from_str(key) {
            builder = builder.with_config(key, value.clone());
        }
    }
    let path = Path::from_url_path(url.path())?;
    Ok((Arc::new(builder.build()?), path))
}

fn path_of(url: &Url) -> Result<Path> {
    Path::from_url_path(url.path()).map_err(|e| {
        Error::new(
            ErrorKind::DataInvalid,
            format!("`{url}` is not an object path: {e}"),
        )
    })
}

fn store_error(operation: &str, location: &str, error: object_store::Error) -> Error {
    let kind = match error {
        object_store::Error::NotFound { .. } => ErrorKind::DataInvalid,
        _ => ErrorKind::Unexpected,
    };
    Error::new(kind, format!("{operation} `{location}` failed")).with_source(error)
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        let (store, object) = self.resolve(path)?;
        match store.head(&object).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error("checking", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        let (store, object) = self.resolve(path)?;
        let meta = store
            .head(&object)
            .await
            .map_err(|e| store_error("reading metadata of", path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        let (store, object) = self.resolve(path)?;
        store
            .get(&object)
            .await
            .map_err(|e| store_error("reading", path, e))?
            .bytes()
            .await
            .map_err(|e| store_error("reading", path, e))
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        let (store, object) = self.resolve(path)?;
        Ok(Box::new(ObjectRead {
            store,
            object,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let (store, object) = self.resolve(path)?;
        store
            .put(&object, PutPayload::from(bs))
            .await
            .map(|_| ())
            .map_err(|e| store_error("writing", path, e))
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let (store, object) = self.resolve(path)?;
        let upload = store
            .put_multipart(&object)
            .await
            .map_err(|e| store_error("starting an upload of", path, e))?;
        Ok(Box::new(ObjectWrite {
            upload: Some(WriteMultipart::new(upload)),
            location: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (store, object) = self.resolve(path)?;
        match store.delete(&object).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("deleting", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let (store, prefix) = self.resolve(path)?;
        let objects = store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        store
            .delete_stream(objects)
            .try_collect::<Vec<_>>()
            .await
            .map(|_| ())
            .map_err(|e| store_error("deleting below", path, e))
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    object: Path,
    location: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.object, range)
            .await
            .map_err(|e| store_error("reading a range of", &self.location, e))
    }
}

struct ObjectWrite {
    upload: Option<WriteMultipart>,
    location: String,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        let upload = self.upload.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!("`{}` is already closed", self.location),
            )
        })?;
        upload
            .wait_for_capacity(8)
            .await
            .map_err(|e| store_error("uploading", &self.location, e))?;
        upload.put(bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        let upload = self.upload.take().ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!("`{}` is already closed", self.location),
            )
        })?;
        upload
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| store_error("finishing the upload of", &self.location, e))
    }
}
