//! An object store whose every call passes its actor's gate (see `world`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::world::Actor;

/// One actor's view of a shared bucket (in memory, or the local disk).
pub struct SimStore {
    inner: Arc<dyn ObjectStore>,
    actor: Arc<Actor>,
    bucket: &'static str,
}

impl SimStore {
    pub fn new(inner: Arc<dyn ObjectStore>, actor: Arc<Actor>, bucket: &'static str) -> Self {
        SimStore {
            inner,
            actor,
            bucket,
        }
    }

    fn what(&self, path: &Path) -> String {
        format!("{}/{path}", self.bucket)
    }
}

fn injected(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "simulation",
        source: message.into(),
    }
}

impl fmt::Debug for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimStore({}, {})", self.bucket, self.actor.name)
    }
}

impl fmt::Display for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sim-{}", self.bucket)
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let op = match opts.mode {
            PutMode::Create => "put-if-absent",
            _ => "put",
        };
        let what = self.what(location);
        let exit = self.actor.enter(op, &what).await.map_err(injected)?;
        let result = self.inner.put_opts(location, payload, opts).await;
        self.actor
            .exit(exit, op, &what, result.is_ok())
            .map_err(injected)?;
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let what = self.what(location);
        let exit = self
            .actor
            .enter("multipart", &what)
            .await
            .map_err(injected)?;
        let result = self.inner.put_multipart_opts(location, opts).await;
        self.actor
            .exit(exit, "multipart", &what, result.is_ok())
            .map_err(injected)?;
        result
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        let what = self.what(location);
        let exit = self.actor.enter(op, &what).await.map_err(injected)?;
        let result = self.inner.get_opts(location, options).await;
        self.actor
            .exit(exit, op, &what, result.is_ok())
            .map_err(injected)?;
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = self.inner.clone();
        let actor = self.actor.clone();
        let bucket = self.bucket;
        locations
            .then(move |location| {
                let inner = inner.clone();
                let actor = actor.clone();
                async move {
                    let location = location?;
                    let what = format!("{bucket}/{location}");
                    let exit = actor.enter("delete", &what).await.map_err(injected)?;
                    let result = inner
                        .delete_stream(stream::once(async { Ok(location) }).boxed())
                        .next()
                        .await
                        .unwrap_or_else(|| Err(injected("delete returned nothing".into())));
                    actor
                        .exit(exit, "delete", &what, result.is_ok())
                        .map_err(injected)?;
                    result
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let actor = self.actor.clone();
        let prefix = prefix.cloned();
        let what = format!("{}/{}", self.bucket, prefix.clone().unwrap_or_default());
        stream::once(async move {
            let exit = actor.enter("list", &what).await.map_err(injected)?;
            let listed: Vec<object_store::Result<ObjectMeta>> =
                inner.list(prefix.as_ref()).collect().await;
            let ok = listed.iter().all(|m| m.is_ok());
            actor.exit(exit, "list", &what, ok).map_err(injected)?;
            Ok::<_, object_store::Error>(stream::iter(listed))
        })
        .map(|listed| match listed {
            Ok(items) => items.boxed(),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let what = format!("{}/{}", self.bucket, prefix.cloned().unwrap_or_default());
        let exit = self.actor.enter("list/", &what).await.map_err(injected)?;
        let result = self.inner.list_with_delimiter(prefix).await;
        self.actor
            .exit(exit, "list/", &what, result.is_ok())
            .map_err(injected)?;
        result
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let what = format!("{} -> {}", self.what(from), self.what(to));
        let exit = self.actor.enter("copy", &what).await.map_err(injected)?;
        let result = self.inner.copy_opts(from, to, options).await;
        self.actor
            .exit(exit, "copy", &what, result.is_ok())
            .map_err(injected)?;
        result
    }
}
