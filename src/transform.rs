//! The map-only guard: what may run between a checkpointed read and a sink.
//!
//! A checkpointed read stages the key of every row it returns. The table must
//! then receive, for each of those rows, exactly what a row-wise function of
//! that row produces (or nothing, if the row is filtered out). Operations whose
//! output for one row depends on other rows break this: `limit` and `sample`
//! drop rows whose keys are already staged, so they are lost for good;
//! aggregations, joins and sorts across batches mix rows of this run with rows
//! of other runs; a repartition reorders rows across shards. A [`Transform`]
//! therefore holds only row-wise steps, and checks at run time that a map keeps
//! its row count.

use std::fmt;
use std::sync::Arc;

use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;

use crate::error::{Error, Result};
use crate::filter::filter_rows;

type MapFn = dyn Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync;
type AsyncMapFn = dyn Fn(RecordBatch) -> BoxFuture<'static, Result<RecordBatch>> + Send + Sync;
type FilterFn = dyn Fn(&RecordBatch) -> Result<BooleanArray> + Send + Sync;

/// One row-wise step.
#[derive(Clone)]
enum Step {
    /// A map, and the schema of its output when it is declared.
    Map(Arc<MapFn>, Option<SchemaRef>),
    /// A map that awaits (a model or service call), and its declared schema.
    AsyncMap(Arc<AsyncMapFn>, Option<SchemaRef>),
    Filter(Arc<FilterFn>),
    Project(Vec<String>),
}

/// A chain of row-wise steps, applied batch by batch.
#[derive(Clone, Default)]
pub struct Transform {
    steps: Vec<Step>,
}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Map(..) => "map",
                Step::AsyncMap(..) => "async map",
                Step::Filter(_) => "filter",
                Step::Project(_) => "project",
            })
            .collect();
        f.debug_struct("Transform").field("steps", &names).finish()
    }
}

impl Transform {
    /// The identity transform.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a per-row function, applied to a batch at a time. It must return one
    /// output row per input row, in order; a different count fails the run with
    /// [`Error::NotRowWise`].
    pub fn map(
        mut self,
        f: impl Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync + 'static,
    ) -> Self {
        self.steps.push(Step::Map(Arc::new(f), None));
        self
    }

    /// Adds a per-row function whose output has `schema`, as [`Transform::map`]
    /// does. The declared schema lets [`Transform::output_schema`] (and so a
    /// sink) check the output before any row is read; a batch of another
    /// schema fails the run.
    pub fn map_to(
        mut self,
        schema: SchemaRef,
        f: impl Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync + 'static,
    ) -> Self {
        self.steps.push(Step::Map(Arc::new(f), Some(schema)));
        self
    }

    /// Adds a per-row function that awaits, such as a call to a model or
    /// another service, for a batch at a time. It runs on the runtime, not on
    /// a blocking thread, so up to the pipeline's map workers of these calls
    /// are in flight at once, and batches still reach the writer in source
    /// order. Like [`Transform::map`], it must return one row per row.
    pub fn map_async<F>(mut self, f: impl Fn(RecordBatch) -> F + Send + Sync + 'static) -> Self
    where
        F: std::future::Future<Output = Result<RecordBatch>> + Send + 'static,
    {
        self.steps.push(Step::AsyncMap(
            Arc::new(move |batch| Box::pin(f(batch))),
            None,
        ));
        self
    }

    /// [`Transform::map_async`] with the schema of its output declared, as
    /// [`Transform::map_to`] declares it.
    pub fn map_async_to<F>(
        mut self,
        schema: SchemaRef,
        f: impl Fn(RecordBatch) -> F + Send + Sync + 'static,
    ) -> Self
    where
        F: std::future::Future<Output = Result<RecordBatch>> + Send + 'static,
    {
        self.steps.push(Step::AsyncMap(
            Arc::new(move |batch| Box::pin(f(batch))),
            Some(schema),
        ));
        self
    }

    /// Whether a step awaits: such a transform runs with
    /// [`Transform::apply_async`].
    pub fn is_async(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::AsyncMap(..)))
    }

    /// Adds a filter: rows where the predicate is false or null are dropped.
    /// Their keys still count as processed.
    pub fn filter(
        mut self,
        predicate: impl Fn(&RecordBatch) -> Result<BooleanArray> + Send + Sync + 'static,
    ) -> Self {
        self.steps.push(Step::Filter(Arc::new(predicate)));
        self
    }

    /// Adds a projection to the named columns, in order.
    pub fn project(mut self, columns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.steps
            .push(Step::Project(columns.into_iter().map(Into::into).collect()));
        self
    }

    /// Refuses an operation that is not row-wise, explaining why it would break
    /// exactly-once. For builders and plan validators that meet one by name.
    pub fn refuse(operation: &str) -> Error {
        let lowered = operation.to_ascii_lowercase();
        let why = match lowered.as_str() {
            "limit" | "head" | "take" | "sample" => {
                "it drops rows whose keys the checkpointed read already staged, so they would never be written and never be read again"
            }
            "sort" | "order by" => {
                "it orders rows across batches and shards, so a rerun cannot reproduce a partial result"
            }
            "aggregate" | "group by" | "distinct" | "window" => {
                "its output for one row depends on other rows, including rows of earlier runs that this run skips"
            }
            "join" | "union" => {
                "it brings in rows that were not read through the checkpoint, or pairs rows across runs"
            }
            "repartition" | "shuffle" => {
                "it moves rows between shards after their keys were staged by another shard"
            }
            _ => "only row-wise steps (map, filter, project) may run between a checkpointed read and a sink",
        };
        Error::NotRowWise {
            operation: operation.to_string(),
            why: why.to_string(),
        }
    }

    /// The schema of the batches this transform makes from batches of `input`,
    /// when it is known before any row is read: `None` once a map without a
    /// declared schema runs (its output is user code), else `input` projected
    /// and mapped as the steps say. Lets a
    /// sink refuse a schema it cannot store before the read starts.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<Option<SchemaRef>> {
        let mut schema = input.clone();
        for step in &self.steps {
            match step {
                Step::Map(_, Some(declared)) | Step::AsyncMap(_, Some(declared)) => {
                    schema = declared.clone()
                }
                Step::Map(_, None) | Step::AsyncMap(_, None) => return Ok(None),
                Step::Filter(_) => {}
                Step::Project(columns) => {
                    let indices = column_indices(&schema, columns)?;
                    schema = Arc::new(schema.project(&indices).map_err(|source| Error::Arrow {
                        context: "projecting columns",
                        source,
                    })?);
                }
            }
        }
        Ok(Some(schema))
    }

    /// Applies the steps to one batch. Fails on a transform with a step that
    /// awaits ([`Transform::is_async`]): run that one with
    /// [`Transform::apply_async`].
    pub fn apply(&self, mut batch: RecordBatch) -> Result<RecordBatch> {
        for step in &self.steps {
            batch = match step {
                Step::Map(f, declared) => {
                    let rows = batch.num_rows();
                    checked_map(f(batch)?, rows, declared.as_ref())?
                }
                Step::AsyncMap(..) => {
                    return Err(Error::Map {
                        source: "the transform has a step that awaits; run it with apply_async"
                            .into(),
                    })
                }
                Step::Filter(predicate) => {
                    let keep = predicate(&batch)?;
                    if keep.len() != batch.num_rows() {
                        return Err(Error::NotRowWise {
                            operation: "filter".into(),
                            why: format!(
                                "its predicate has {} values for {} rows",
                                keep.len(),
                                batch.num_rows()
                            ),
                        });
                    }
                    filter_rows(&batch, &keep)?
                }
                Step::Project(columns) => {
                    let indices = column_indices(batch.schema_ref(), columns)?;
                    batch.project(&indices).map_err(|source| Error::Arrow {
                        context: "projecting columns",
                        source,
                    })?
                }
            };
        }
        Ok(batch)
    }

    /// Applies the steps to one batch, awaiting the steps that await. The
    /// steps between them run on a blocking thread, as [`Transform::apply`]
    /// runs them.
    pub async fn apply_async(&self, mut batch: RecordBatch) -> Result<RecordBatch> {
        let mut at = 0;
        while at < self.steps.len() {
            if let Step::AsyncMap(f, declared) = &self.steps[at] {
                let rows = batch.num_rows();
                batch = checked_map(f(batch).await?, rows, declared.as_ref())?;
                at += 1;
                continue;
            }
            let end = self.steps[at..]
                .iter()
                .position(|s| matches!(s, Step::AsyncMap(..)))
                .map_or(self.steps.len(), |p| at + p);
            let blocking = Transform {
                steps: self.steps[at..end].to_vec(),
            };
            batch = tokio::task::spawn_blocking(move || blocking.apply(batch))
                .await
                .map_err(|e| Error::Map {
                    source: Box::new(e),
                })??;
            at = end;
        }
        Ok(batch)
    }
}

/// The output of a map over `rows` rows, checked: one row per row, and the
/// declared columns if any.
fn checked_map(out: RecordBatch, rows: usize, declared: Option<&SchemaRef>) -> Result<RecordBatch> {
    if let Some(declared) = declared {
        if out.schema_ref().fields() != declared.fields() {
            return Err(Error::Map {
                source: format!(
                    "it declared the columns {declared:?} and returned {:?}",
                    out.schema_ref()
                )
                .into(),
            });
        }
    }
    if out.num_rows() != rows {
        return Err(Error::NotRowWise {
            operation: "map".into(),
            why: format!(
                "it returned {} rows for {rows} input rows; a map must return one row per row \
                 (use filter to drop rows; limits, aggregations and joins cannot run here)",
                out.num_rows()
            ),
        });
    }
    Ok(out)
}

/// The positions of the named `columns` in `schema`, in the order named.
fn column_indices(schema: &SchemaRef, columns: &[String]) -> Result<Vec<usize>> {
    columns
        .iter()
        .map(|c| {
            schema.index_of(c).map_err(|source| Error::Arrow {
                context: "projecting a column that is not in the batch",
                source,
            })
        })
        .collect()
}
