//! Thin helpers over the object store that attach paths to errors and turn the
//! two expected outcomes (not found, already exists) into values.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};

/// Reads a whole object; `None` if it does not exist.
pub(crate) async fn get_optional(store: &dyn ObjectStore, path: &Path) -> Result<Option<Bytes>> {
    match store.get(path).await {
        Ok(result) => result
            .bytes()
            .await
            .map(Some)
            .map_err(|e| Error::store("get", path, e)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::store("get", path, e)),
    }
}

/// Reads a whole object that must exist.
pub(crate) async fn get(store: &dyn ObjectStore, path: &Path) -> Result<Bytes> {
    let result = store
        .get(path)
        .await
        .map_err(|e| Error::store("get", path, e))?;
    result
        .bytes()
        .await
        .map_err(|e| Error::store("get", path, e))
}

/// Whether an object exists.
pub(crate) async fn exists(store: &dyn ObjectStore, path: &Path) -> Result<bool> {
    match store.head(path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(Error::store("head", path, e)),
    }
}

/// Writes an object, replacing any previous one.
pub(crate) async fn put(store: &dyn ObjectStore, path: &Path, bytes: Bytes) -> Result<()> {
    store
        .put(path, PutPayload::from(bytes))
        .await
        .map(|_| ())
        .map_err(|e| Error::store("put", path, e))
}

/// Writes an object only if none exists at `path` (one conditional request).
/// Returns `false` if another writer got there first.
pub(crate) async fn put_if_absent(
    store: &dyn ObjectStore,
    path: &Path,
    bytes: Bytes,
) -> Result<bool> {
    let options = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(path, PutPayload::from(bytes), options).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(Error::store("conditional put", path, e)),
    }
}

/// Lists every object below a prefix.
pub(crate) async fn list(store: &dyn ObjectStore, prefix: &Path) -> Result<Vec<ObjectMeta>> {
    store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|e| Error::store("list", prefix, e))
}

/// Deletes an object; a missing object is not an error.
pub(crate) async fn delete(store: &dyn ObjectStore, path: &Path) -> Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(Error::store("delete", path, e)),
    }
}
