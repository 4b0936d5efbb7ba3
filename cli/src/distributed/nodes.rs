//! The plan nodes of a distributed run: the shards, each task's run of its
//! shard, and the commit stage.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion_distributed::DistributedTaskContext;
use futures::future::BoxFuture;
use futures::{stream, TryStreamExt};
use serde::{Deserialize, Serialize};
use tidemark::commit::Committer;
use tidemark::redact::redact_url;
use tidemark::source::Shard;

use crate::spec::RunSpec;
use crate::targets::AnySink;
use crate::CliError;

/// The columns of a task's report, one row per task.
fn task_report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::Utf8, false),
        Field::new("rows_read", DataType::UInt64, false),
        Field::new("rows_skipped", DataType::UInt64, false),
        Field::new("rows_written", DataType::UInt64, false),
        Field::new("files_written", DataType::UInt64, false),
        Field::new("checkpoints_sealed", DataType::UInt64, false),
        Field::new("units_skipped", DataType::UInt64, false),
    ]))
}

/// The columns of the commit stage's answer: one row.
fn commit_report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tasks", DataType::UInt64, false),
        Field::new("rows_read", DataType::UInt64, false),
        Field::new("rows_skipped", DataType::UInt64, false),
        Field::new("rows_written", DataType::UInt64, false),
        Field::new("files_written", DataType::UInt64, false),
        Field::new("checkpoints_sealed", DataType::UInt64, false),
        Field::new("commits", DataType::UInt64, false),
        Field::new("files_committed", DataType::UInt64, false),
        Field::new("rows_committed", DataType::UInt64, false),
        Field::new("table_versions", DataType::Utf8, false),
    ]))
}

fn plan_properties(schema: SchemaRef) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(1),
        EmissionType::Final,
        Boundedness::Bounded,
    ))
}

pub(super) fn external(error: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

/// The plan's leaf: splits the run into shards, task `i` of `N` taking shard
/// `i/N`. One row, the shard's index and count.
#[derive(Debug)]
pub(crate) struct PipelineShardsExec {
    /// Shards the run is split into (the distributed planner's task count).
    pub(super) count: u32,
    properties: Arc<PlanProperties>,
}

impl PipelineShardsExec {
    /// The leaf of a run split into `count` shards.
    pub(super) fn new(count: u32) -> Self {
        PipelineShardsExec {
            count: count.max(1),
            properties: plan_properties(Self::schema_of()),
        }
    }

    fn schema_of() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("shard_index", DataType::UInt64, false),
            Field::new("shard_count", DataType::UInt64, false),
        ]))
    }
}

impl DisplayAs for PipelineShardsExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PipelineShardsExec: shards={}", self.count)
    }
}

impl ExecutionPlan for PipelineShardsExec {
    fn name(&self) -> &str {
        "PipelineShardsExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> DataFusionResult<SendableRecordBatchStream> {
        let task = DistributedTaskContext::from_ctx(&context);
        if task.task_count != self.count as usize || task.task_index >= task.task_count {
            return Err(DataFusionError::Internal(format!(
                "task {} of {} runs a plan split into {} shards",
                task.task_index, task.task_count, self.count
            )));
        }
        let schema = Self::schema_of();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(UInt64Array::from(vec![task.task_index as u64])) as ArrayRef,
                Arc::new(UInt64Array::from(vec![u64::from(self.count)])),
            ],
        )?;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream::once(async move { Ok(batch) }),
        )))
    }
}

/// What a stage node of the run does with its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RunStage {
    /// `CheckpointedRunExec`, in each task: runs the pipeline over each
    /// shard its input names, sealing without committing, and answers one
    /// report row per shard.
    Run,
    /// `CheckpointedCommitExec`, the head of the plan on the coordinator:
    /// once every task has reported, commits every sealed checkpoint of the
    /// pipeline in one table commit and answers the run's totals.
    Commit,
}

/// A stage of the run over its input: the tasks' runs or the commit (see
/// [`RunStage`]), with the run's spec.
#[derive(Debug)]
pub(crate) struct RunStageExec {
    pub(super) stage: RunStage,
    pub(super) spec: RunSpec,
    /// This process's own object store options (secrets included): never
    /// encoded.
    pub(super) local_options: HashMap<String, String>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl RunStageExec {
    /// `stage` of the run `spec` describes, over `input`, in a process with
    /// `local_options`.
    pub(super) fn new(
        stage: RunStage,
        spec: RunSpec,
        local_options: HashMap<String, String>,
        input: Arc<dyn ExecutionPlan>,
    ) -> Self {
        let schema = match stage {
            RunStage::Run => task_report_schema(),
            RunStage::Commit => commit_report_schema(),
        };
        RunStageExec {
            stage,
            spec,
            local_options,
            input,
            properties: plan_properties(schema),
        }
    }
}

impl DisplayAs for RunStageExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = &self.spec;
        match self.stage {
            RunStage::Run => write!(
                f,
                "CheckpointedRunExec: pipeline={}, keys=[{}], sources={}, sink={}, sql={}",
                spec.pipeline,
                spec.keys.join(", "),
                spec.sources.len(),
                redact_url(&spec.sink),
                spec.sql.is_some(),
            ),
            RunStage::Commit => write!(
                f,
                "CheckpointedCommitExec: pipeline={}, sink={}",
                spec.pipeline,
                redact_url(&spec.sink)
            ),
        }
    }
}

impl ExecutionPlan for RunStageExec {
    fn name(&self) -> &str {
        match self.stage {
            RunStage::Run => "CheckpointedRunExec",
            RunStage::Commit => "CheckpointedCommitExec",
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        match self.stage {
            RunStage::Run => vec![Distribution::UnspecifiedDistribution],
            RunStage::Commit => vec![Distribution::SinglePartition],
        }
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(RunStageExec::new(
                self.stage,
                self.spec.clone(),
                self.local_options.clone(),
                input,
            ))),
            _ => Err(DataFusionError::Internal(format!(
                "{} takes one input",
                self.name()
            ))),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DataFusionResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let options = spec.options(&self.local_options);
        let answer = match self.stage {
            RunStage::Run => run_shards(input, spec, options),
            RunStage::Commit => commit_all(input, spec, options),
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream::once(answer),
        )))
    }
}

/// Runs the pipeline over every shard `shards` names, one after the other,
/// and answers a report row for each.
fn run_shards(
    shards: SendableRecordBatchStream,
    spec: RunSpec,
    options: HashMap<String, String>,
) -> BoxFuture<'static, DataFusionResult<RecordBatch>> {
    Box::pin(async move {
        let batches: Vec<RecordBatch> = shards.try_collect().await?;
        let mut named = Vec::new();
        for batch in &batches {
            let indices = u64_column(batch, 0)?;
            let counts = u64_column(batch, 1)?;
            for (index, count) in indices.values().iter().zip(counts.values()) {
                named.push(shard_of(*index, *count)?);
            }
        }
        let reports = on_blocking_thread(move || async move {
            let mut reports = Vec::new();
            for shard in named {
                reports.push(run_shard(&spec, &options, shard).await.map_err(external)?);
            }
            Ok(reports)
        })
        .await?;
        task_report_batch(&reports)
    })
}

/// Runs the future `work` makes to its end on a thread of the blocking pool,
/// driven by the runtime. A plan node's stream must be `Send`, and the
/// futures of a run are not all provably so (iceberg's scan planning, the
/// catalogs' clients hold references across awaits in a way the compiler
/// cannot check for every lifetime); a run's task holds its thread for its
/// whole length anyway. Dropping the returned future (the query failed or
/// was cancelled) drops the work at its next await, as a kill would stop
/// it: its open checkpoint stays unsealed and its lease expires.
async fn on_blocking_thread<T, W, F>(work: W) -> DataFusionResult<T>
where
    T: Send + 'static,
    W: FnOnce() -> F + Send + 'static,
    F: Future<Output = DataFusionResult<T>>,
{
    let runtime = tokio::runtime::Handle::current();
    let (_running, dropped) = tokio::sync::oneshot::channel::<()>();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            tokio::select! {
                result = work() => result,
                _ = dropped => Err(DataFusionError::Execution(
                    "the query stopped before this task finished".into(),
                )),
            }
        })
    })
    .await
    .map_err(external)?
}

fn u64_column(batch: &RecordBatch, index: usize) -> DataFusionResult<&UInt64Array> {
    batch
        .column(index)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| DataFusionError::Internal(format!("column {index} is not UInt64")))
}

fn shard_of(index: u64, count: u64) -> DataFusionResult<Shard> {
    let (Ok(index), Ok(count)) = (u32::try_from(index), u32::try_from(count)) else {
        return Err(DataFusionError::Internal(format!(
            "shard {index}/{count} is out of range"
        )));
    };
    if count == 1 {
        return Ok(Shard::all());
    }
    Shard::new(index, count).map_err(external)
}

/// What one task did.
struct TaskReport {
    shard: String,
    rows_read: u64,
    rows_skipped: u64,
    rows_written: u64,
    files_written: u64,
    checkpoints_sealed: u64,
    units_skipped: u64,
}

fn task_report_batch(reports: &[TaskReport]) -> DataFusionResult<RecordBatch> {
    let column = |f: fn(&TaskReport) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(reports.iter().map(f)))
    };
    Ok(RecordBatch::try_new(
        task_report_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                reports.iter().map(|r| r.shard.as_str()),
            )),
            column(|r| r.rows_read),
            column(|r| r.rows_skipped),
            column(|r| r.rows_written),
            column(|r| r.files_written),
            column(|r| r.checkpoints_sealed),
            column(|r| r.units_skipped),
        ],
    )?)
}

/// Runs `shard` of the pipeline, sealing its checkpoints and committing none.
async fn run_shard(
    spec: &RunSpec,
    options: &HashMap<String, String>,
    shard: Shard,
) -> Result<TaskReport, CliError> {
    let planned = spec.plan(options).await?;
    let store = spec.open_store(options, planned.keys.clone()).await?;
    let sink = AnySink::open(&spec.sink, options, None).await?;
    let mut writer = sink.writer(spec.target_file_size_bytes()).await?;
    let pipeline = spec.pipeline(store, sink, shard).sealing_only();
    let report = pipeline
        .run(planned.source, &planned.transform, writer.as_mut())
        .await?;
    tracing::info!(
        shard = %shard.lease_scope(),
        rows_read = report.read.rows_read,
        rows_written = report.rows_written,
        checkpoints = report.checkpoints.len(),
        "distributed task sealed its shard"
    );
    Ok(TaskReport {
        shard: format!("{}/{}", shard.index(), shard.count()),
        rows_read: report.read.rows_read,
        rows_skipped: report.read.rows_skipped + report.read.duplicates_dropped,
        rows_written: report.rows_written,
        files_written: report.files_written,
        checkpoints_sealed: report.checkpoints.len() as u64,
        units_skipped: report.read.units_skipped,
    })
}

/// Waits for every task's report (a failed task fails the query before
/// anything is committed), then commits every sealed checkpoint of the
/// pipeline and answers the run's totals.
fn commit_all(
    tasks: SendableRecordBatchStream,
    spec: RunSpec,
    options: HashMap<String, String>,
) -> BoxFuture<'static, DataFusionResult<RecordBatch>> {
    Box::pin(async move {
        let tasks: Vec<RecordBatch> = tasks.try_collect().await?;
        on_blocking_thread(move || async move { commit_reported(&spec, &options, tasks).await })
            .await
    })
}

async fn commit_reported(
    spec: &RunSpec,
    options: &HashMap<String, String>,
    tasks: Vec<RecordBatch>,
) -> DataFusionResult<RecordBatch> {
    let mut totals = [0u64; 6];
    for batch in &tasks {
        totals[0] += batch.num_rows() as u64;
        for (total, column) in totals[1..].iter_mut().zip(1..6) {
            *total += u64_column(batch, column)?.values().iter().sum::<u64>();
        }
    }
    let planned = spec.plan(options).await.map_err(external)?;
    let store = spec
        .open_store(options, planned.keys)
        .await
        .map_err(external)?;
    let sink = AnySink::open(&spec.sink, options, None)
        .await
        .map_err(external)?;
    let committed = Committer::new(store, sink, spec.pipeline.clone())
        .commit_pending()
        .await
        .map_err(external)?;
    let versions: Vec<String> = committed
        .commits
        .iter()
        .map(|c| c.table_version.to_string())
        .collect();
    let value = |v: u64| -> ArrayRef { Arc::new(UInt64Array::from(vec![v])) };
    Ok(RecordBatch::try_new(
        commit_report_schema(),
        vec![
            value(totals[0]),
            value(totals[1]),
            value(totals[2]),
            value(totals[3]),
            value(totals[4]),
            value(totals[5]),
            value(committed.commits.len() as u64),
            value(committed.commits.iter().map(|c| c.files as u64).sum()),
            value(committed.rows_applied()),
            Arc::new(StringArray::from(vec![versions.join(",")])),
        ],
    )?)
}
