//! Sources of rows: Parquet files here; Iceberg and Delta tables in the connector
//! crates. A source is a fixed snapshot split into units (files), each read as a
//! stream of Arrow batches in a deterministic order.

mod evolve;
mod glob;
mod parquet;
mod shard;
mod union;

use std::fmt::Debug;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;

use crate::error::Result;

pub use self::parquet::{ParquetSource, ParquetSourceOptions};
pub use self::shard::Shard;
pub use self::union::UnionSource;

/// A stream of record batches.
pub type BatchStream = BoxStream<'static, Result<RecordBatch>>;

/// One unit of a source, read on its own: a data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUnit {
    /// What to call it in messages and manifests (a file URL or path).
    pub name: String,
    /// Rows in the unit, when the source knows it without reading.
    pub row_count: Option<u64>,
    /// What the unit holds, when the source can name it without reading it:
    /// two units with one content id yield the same keys. A read skips a
    /// unit whose content id a sealed checkpoint recorded as read to its end
    /// (see [`crate::read`]). `None`: the unit is read on every run.
    pub content_id: Option<String>,
}

/// A snapshot of a source: its schema and its units, fixed for the life of the
/// value, so that reading a unit twice yields the same rows in the same order.
pub trait Source: Send + Sync + Debug {
    /// The schema of the rows (all columns).
    fn schema(&self) -> SchemaRef;

    /// The units, in order.
    fn units(&self) -> &[SourceUnit];

    /// Reads unit `unit` with only the columns in `projection` (all when `None`),
    /// in the order given. The stream yields the same rows in the same order on
    /// every call.
    fn read_unit(
        &self,
        unit: usize,
        projection: Option<Vec<String>>,
    ) -> BoxFuture<'static, Result<BatchStream>>;

    /// Rows in the whole source, when every unit knows its count.
    fn row_count(&self) -> Option<u64> {
        self.units().iter().map(|u| u.row_count).sum()
    }
}

/// A function applied to each batch in the task that decoded it, so that work
/// on a batch runs beside the decoding of other units.
pub(crate) type BatchMap<T> = Arc<dyn Fn(RecordBatch) -> Result<T> + Send + Sync>;

/// Reads `units` of `source` in order, decoding up to `parallelism` units at
/// once in background tasks. Yields `(unit, batch)`.
pub fn read_units(
    source: Arc<dyn Source>,
    units: Vec<usize>,
    projection: Option<Vec<String>>,
    parallelism: usize,
) -> BoxStream<'static, Result<(usize, RecordBatch)>> {
    read_units_mapped(source, units, projection, parallelism, Arc::new(Ok))
}

/// Like [`read_units`], with `map` applied to each batch in its decoding task.
pub(crate) fn read_units_mapped<T: Send + 'static>(
    source: Arc<dyn Source>,
    units: Vec<usize>,
    projection: Option<Vec<String>>,
    parallelism: usize,
    map: BatchMap<T>,
) -> BoxStream<'static, Result<(usize, T)>> {
    let parallelism = parallelism.max(1);
    stream::iter(units)
        .map(move |unit| {
            let source = source.clone();
            let projection = projection.clone();
            let map = map.clone();
            async move {
                // Two batches of read-ahead per unit: enough to keep the decoder
                // busy, little enough to bound memory.
                let (tx, rx) = mpsc::channel::<Result<T>>(2);
                tokio::spawn(async move {
                    let mut batches = match source.read_unit(unit, projection).await {
                        Ok(batches) => batches,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    while let Some(item) = batches.next().await {
                        let item = item.and_then(|batch| map(batch));
                        let failed = item.is_err();
                        if tx.send(item).await.is_err() || failed {
                            return;
                        }
                    }
                });
                stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                })
                .map(move |item| item.map(|value| (unit, value)))
            }
        })
        .buffered(parallelism)
        .flatten()
        .boxed()
}
