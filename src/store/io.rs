//! Thin helpers over the object store that attach paths to errors and turn the
//! two expected outcomes (not found, already exists) into values.
//!
//! Reads (GET, HEAD, LIST) are also repeated when their transport failed in a
//! way the object store client does not retry by itself: it retries what it
//! can classify (refused connections, resets, time-outs of idempotent
//! requests, 5xx answers) and gives up at once on an "unknown" send error,
//! such as a request sent on a pooled connection the server was closing.
//! A read changes nothing, so repeating it is always safe.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};

/// Attempts of one read whose transport keeps failing unclassified.
const READ_ATTEMPTS: u32 = 3;

/// Whether `error` is a transport failure that the object store client
/// classed as unknown, and so did not retry.
fn unretried_transport_error(error: &object_store::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(http) = cause.downcast_ref::<HttpError>() {
            return http.kind() == HttpErrorKind::Unknown;
        }
        source = cause.source();
    }
    false
}

/// Runs `read` until it succeeds, fails otherwise than by an unretried
/// transport error, or has been attempted [`READ_ATTEMPTS`] times.
async fn retrying_read<T, F, Fut>(what: &str, path: &Path, mut read: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match read().await {
            Err(e) if attempt < READ_ATTEMPTS && unretried_transport_error(&e) => {
                tracing::warn!(error = %e, %path, attempt, "{what} failed in transport; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Reads a whole object; `None` if it does not exist.
pub(crate) async fn get_optional(store: &dyn ObjectStore, path: &Path) -> Result<Option<Bytes>> {
    match retrying_read("get", path, || async {
        store.get(path).await?.bytes().await
    })
    .await
    {
        Ok(bytes) => Ok(Some(bytes)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::store("get", path, e)),
    }
}

/// Reads a whole object that must exist.
pub(crate) async fn get(store: &dyn ObjectStore, path: &Path) -> Result<Bytes> {
    retrying_read("get", path, || async {
        store.get(path).await?.bytes().await
    })
    .await
    .map_err(|e| Error::store("get", path, e))
}

/// Reads byte ranges of an object; `None` if it does not exist.
pub(crate) async fn get_ranges_optional(
    store: &dyn ObjectStore,
    path: &Path,
    ranges: &[std::ops::Range<u64>],
) -> Result<Option<Vec<Bytes>>> {
    match retrying_read("ranged get", path, || store.get_ranges(path, ranges)).await {
        Ok(pieces) => Ok(Some(pieces)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::store("ranged get", path, e)),
    }
}

/// Whether an object exists.
pub(crate) async fn exists(store: &dyn ObjectStore, path: &Path) -> Result<bool> {
    match retrying_read("head", path, || store.head(path)).await {
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
    retrying_read("list", prefix, || store.list(Some(prefix)).try_collect())
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn transport_error(kind: HttpErrorKind) -> object_store::Error {
        let cause = std::io::Error::other("error sending request");
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(kind, cause)),
        }
    }

    /// Runs a read whose first `failures` attempts fail with `error`.
    async fn attempts_of(failures: u32, error: fn() -> object_store::Error) -> (u32, bool) {
        let calls = AtomicU32::new(0);
        let result = retrying_read("get", &Path::from("x"), || {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if call < failures {
                    Err(error())
                } else {
                    Ok(())
                }
            }
        })
        .await;
        (calls.load(Ordering::SeqCst), result.is_ok())
    }

    #[tokio::test(start_paused = true)]
    async fn reads_repeat_only_unclassified_transport_errors_a_bounded_number_of_times() {
        let unknown = || transport_error(HttpErrorKind::Unknown);
        assert_eq!(attempts_of(1, unknown).await, (2, true));
        assert_eq!(attempts_of(2, unknown).await, (3, true));
        let started = tokio::time::Instant::now();
        assert_eq!(attempts_of(5, unknown).await, (READ_ATTEMPTS, false));
        // 200 ms before the second attempt, 400 ms before the third.
        assert_eq!(started.elapsed(), Duration::from_millis(600));
        // What the client classifies, it has retried already: not again.
        let timeout = || transport_error(HttpErrorKind::Timeout);
        assert_eq!(attempts_of(1, timeout).await, (1, false));
        // Nor any other failure.
        let other = || object_store::Error::Generic {
            store: "S3",
            source: "access denied".into(),
        };
        assert_eq!(attempts_of(1, other).await, (1, false));
        let missing = || object_store::Error::NotFound {
            path: "x".into(),
            source: "absent".into(),
        };
        assert_eq!(attempts_of(1, missing).await, (1, false));
    }
}
