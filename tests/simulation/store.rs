//! An object store whose every call passes its actor's gate (see `world`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
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
        let call = self.inner.put_opts(location, payload, opts);
        self.actor
            .call(op, &self.what(location), call, injected)
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let call = self.inner.put_multipart_opts(location, opts);
        self.actor
            .call("multipart", &self.what(location), call, injected)
            .await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        let call = self.inner.get_opts(location, options);
        self.actor
            .call(op, &self.what(location), call, injected)
            .await
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
                    let call = async {
                        inner
                            .delete_stream(stream::once(async { Ok(location) }).boxed())
                            .next()
                            .await
                            .unwrap_or_else(|| Err(injected("delete returned nothing".into())))
                    };
                    actor.call("delete", &what, call, injected).await
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
            let call = inner.list(prefix.as_ref()).try_collect::<Vec<ObjectMeta>>();
            actor.call("list", &what, call, injected).await
        })
        .map(|listed| match listed {
            Ok(items) => stream::iter(items.into_iter().map(Ok)).boxed(),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let what = format!("{}/{}", self.bucket, prefix.cloned().unwrap_or_default());
        let call = self.inner.list_with_delimiter(prefix);
        self.actor.call("list/", &what, call, injected).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let what = format!("{} -> {}", self.what(from), self.what(to));
        let call = self.inner.copy_opts(from, to, options);
        self.actor.call("copy", &what, call, injected).await
    }
}
