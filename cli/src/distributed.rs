//! A run across machines on datafusion-distributed: the run as a physical
//! plan whose tasks run on worker processes.
//!
//! ```text
//! CheckpointedCommitExec        on the coordinator: one table commit of every
//!   CoalescePartitionsExec      task's sealed checkpoints (a network coalesce
//!     CheckpointedRunExec       once distributed); each task runs its shard
//!       PipelineShardsExec      of the pipeline and seals; the leaf gives
//!                               task i of N the shard i/N
//! ```
//!
//! Task `i` of `N` runs the pipeline over the source units of shard `i/N`
//! exactly as `tidemark run --shard i/N` would (the shard's lease, repair,
//! the checkpointed read, the map, the writer, seals), except that it commits
//! nothing ([`Pipeline::sealing_only`]). The head stage, on the coordinator,
//! commits every sealed checkpoint in one table commit once all tasks are
//! done. datafusion-distributed retries no task: a lost worker fails the
//! query, and the rerun is the retry. The checkpoints the other tasks sealed
//! are kept and committed by it; the lost task's open checkpoint is sealed
//! empty by the rerun's lease (it outlived its TTL) and its data files are
//! collected as orphans.
//!
//! The plan crosses the wire as a [`RunSpec`]: URLs and settings, without the
//! secret object store options, which each worker takes from its own command
//! line or environment (see [`TidemarkCodec`]).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result as DataFusionResult};
use datafusion::config::ConfigOptions;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_distributed::{
    display_plan_ascii, DistributedExt, DistributedPhysicalOptimizerRule, DistributedTaskContext,
    TaskEstimation, TaskEstimator, Worker, WorkerQueryContext, WorkerResolver,
};
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use futures::future::BoxFuture;
use futures::{stream, TryStreamExt};
use serde::{Deserialize, Serialize};
use tidemark::commit::Committer;
use tidemark::redact::redact_url;
use tidemark::source::Shard;
use url::Url;

use crate::shown::say;
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

fn external(error: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

/// The plan's leaf: splits the run into shards, task `i` of `N` taking shard
/// `i/N`. One row, the shard's index and count.
#[derive(Debug)]
pub(crate) struct PipelineShardsExec {
    /// Shards the run is split into (the distributed planner's task count).
    count: u32,
    properties: Arc<PlanProperties>,
}

impl PipelineShardsExec {
    fn new(count: u32) -> Self {
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

/// Runs the pipeline over each shard its input names, sealing without
/// committing, and answers one report row per shard.
#[derive(Debug)]
pub(crate) struct CheckpointedRunExec {
    spec: RunSpec,
    /// This process's own object store options (secrets included): never
    /// encoded.
    local_options: HashMap<String, String>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl CheckpointedRunExec {
    fn new(
        spec: RunSpec,
        local_options: HashMap<String, String>,
        input: Arc<dyn ExecutionPlan>,
    ) -> Self {
        CheckpointedRunExec {
            spec,
            local_options,
            input,
            properties: plan_properties(task_report_schema()),
        }
    }
}

impl DisplayAs for CheckpointedRunExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CheckpointedRunExec: pipeline={}, keys=[{}], sources={}, sink={}, sql={}",
            self.spec.pipeline,
            self.spec.keys.join(", "),
            self.spec.sources.len(),
            redact_url(&self.spec.sink),
            self.spec.sql.is_some(),
        )
    }
}

impl ExecutionPlan for CheckpointedRunExec {
    fn name(&self) -> &str {
        "CheckpointedRunExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(CheckpointedRunExec::new(
                self.spec.clone(),
                self.local_options.clone(),
                input,
            ))),
            _ => Err(DataFusionError::Internal(
                "CheckpointedRunExec takes one input".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DataFusionResult<SendableRecordBatchStream> {
        let shards = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let options = spec.options(&self.local_options);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            task_report_schema(),
            stream::once(run_shards(shards, spec, options)),
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

/// The head of the plan, on the coordinator: once every task is done,
/// commits every sealed checkpoint of the pipeline in one table commit.
#[derive(Debug)]
pub(crate) struct CheckpointedCommitExec {
    spec: RunSpec,
    local_options: HashMap<String, String>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl CheckpointedCommitExec {
    fn new(
        spec: RunSpec,
        local_options: HashMap<String, String>,
        input: Arc<dyn ExecutionPlan>,
    ) -> Self {
        CheckpointedCommitExec {
            spec,
            local_options,
            input,
            properties: plan_properties(commit_report_schema()),
        }
    }
}

impl DisplayAs for CheckpointedCommitExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CheckpointedCommitExec: pipeline={}, sink={}",
            self.spec.pipeline,
            redact_url(&self.spec.sink)
        )
    }
}

impl ExecutionPlan for CheckpointedCommitExec {
    fn name(&self) -> &str {
        "CheckpointedCommitExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(CheckpointedCommitExec::new(
                self.spec.clone(),
                self.local_options.clone(),
                input,
            ))),
            _ => Err(DataFusionError::Internal(
                "CheckpointedCommitExec takes one input".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DataFusionResult<SendableRecordBatchStream> {
        let tasks = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let options = spec.options(&self.local_options);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            commit_report_schema(),
            stream::once(commit_all(tasks, spec, options)),
        )))
    }
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

/// The plan of a run split into `tasks` shards.
pub(crate) fn run_plan(
    spec: &RunSpec,
    local_options: &HashMap<String, String>,
    tasks: u32,
) -> Arc<dyn ExecutionPlan> {
    let shards = Arc::new(PipelineShardsExec::new(tasks));
    let run = Arc::new(CheckpointedRunExec::new(
        spec.clone(),
        local_options.clone(),
        shards,
    ));
    let gathered = Arc::new(CoalescePartitionsExec::new(run));
    Arc::new(CheckpointedCommitExec::new(
        spec.clone(),
        local_options.clone(),
        gathered,
    ))
}

/// Encodes the run's plan nodes for the wire: a [`RunSpec`] as JSON (no
/// secret in it), and on decoding adds the decoding process's own options.
#[derive(Debug, Clone, Default)]
pub(crate) struct TidemarkCodec {
    local_options: HashMap<String, String>,
}

/// A plan node as it crosses the wire.
#[derive(Serialize, Deserialize)]
enum WireNode {
    Shards { count: u32 },
    Run { spec: RunSpec },
    Commit { spec: RunSpec },
}

impl TidemarkCodec {
    /// A codec whose decoded nodes use `local_options` beside the shared ones.
    pub(crate) fn new(local_options: HashMap<String, String>) -> Self {
        TidemarkCodec { local_options }
    }
}

impl PhysicalExtensionCodec for TidemarkCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        let node: WireNode = serde_json::from_slice(buf).map_err(external)?;
        let input = || {
            inputs.first().cloned().ok_or_else(|| {
                DataFusionError::Internal("a tidemark plan node arrived without its input".into())
            })
        };
        Ok(match node {
            WireNode::Shards { count } => Arc::new(PipelineShardsExec::new(count)),
            WireNode::Run { spec } => Arc::new(CheckpointedRunExec::new(
                spec,
                self.local_options.clone(),
                input()?,
            )),
            WireNode::Commit { spec } => Arc::new(CheckpointedCommitExec::new(
                spec,
                self.local_options.clone(),
                input()?,
            )),
        })
    }

    fn try_encode(&self, node: Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> DataFusionResult<()> {
        let any = node.as_any();
        let wire = if let Some(shards) = any.downcast_ref::<PipelineShardsExec>() {
            WireNode::Shards {
                count: shards.count,
            }
        } else if let Some(run) = any.downcast_ref::<CheckpointedRunExec>() {
            WireNode::Run {
                spec: run.spec.clone(),
            }
        } else if let Some(commit) = any.downcast_ref::<CheckpointedCommitExec>() {
            WireNode::Commit {
                spec: commit.spec.clone(),
            }
        } else {
            return Err(DataFusionError::Internal(format!(
                "the tidemark codec cannot encode {}",
                node.name()
            )));
        };
        serde_json::to_writer(buf, &wire).map_err(external)
    }
}

/// Splits the plan's leaf into one task per shard: as many as asked, at
/// most one per worker (the planner's limit).
#[derive(Debug)]
struct ShardEstimator {
    tasks: usize,
}

impl TaskEstimator for ShardEstimator {
    fn task_estimation(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        _cfg: &ConfigOptions,
    ) -> Option<TaskEstimation> {
        plan.as_any()
            .downcast_ref::<PipelineShardsExec>()
            .map(|_| TaskEstimation::desired(self.tasks))
    }

    fn scale_up_leaf_node(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        task_count: usize,
        _cfg: &ConfigOptions,
    ) -> Option<Arc<dyn ExecutionPlan>> {
        plan.as_any().downcast_ref::<PipelineShardsExec>()?;
        let count = u32::try_from(task_count).ok()?;
        Some(Arc::new(PipelineShardsExec::new(count)))
    }
}

/// The workers named on the command line.
#[derive(Debug, Clone)]
struct WorkerList(Vec<Url>);

#[async_trait]
impl WorkerResolver for WorkerList {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.0.clone())
    }
}

/// The workers' URLs, checked before any work.
pub(crate) fn parse_workers(texts: &[String]) -> Result<Vec<Url>, CliError> {
    texts
        .iter()
        .flat_map(|text| text.split(','))
        .filter(|text| !text.trim().is_empty())
        .map(|text| {
            let url = Url::parse(text.trim()).map_err(|e| {
                CliError::usage(format!(
                    "`{text}` is not a worker URL (http://host:port): {e}"
                ))
            })?;
            if url.scheme() != "http" || url.host().is_none() || url.port().is_none() {
                return Err(CliError::usage(format!(
                    "`{}` is not a worker URL: give http://host:port, as `tidemark worker --listen` prints",
                    redact_url(text)
                )));
            }
            Ok(url)
        })
        .collect()
}

/// Refuses, before any work, a run whose URLs carry a secret (a password, a
/// token in the query): the plan would carry it to every worker.
pub(crate) fn refuse_secrets_on_the_wire(spec: &RunSpec) -> Result<(), CliError> {
    for url in spec.sources.iter().chain([&spec.sink, &spec.store]) {
        if redact_url(url) != *url {
            return Err(CliError::usage(format!(
                "`{}` carries a secret, which a distributed run would send to every worker in its plan: give each process the secret itself (object store options with -o on `tidemark worker`, AWS_* or TIDEMARK_ICEBERG_* variables in its environment)",
                redact_url(url)
            )));
        }
    }
    Ok(())
}

/// A run's plan, distributed over `workers` in `tasks` tasks (at most one
/// a worker), and the session that runs it.
pub(crate) fn distribute(
    plan: Arc<dyn ExecutionPlan>,
    workers: Vec<Url>,
    tasks: usize,
    local_options: &HashMap<String, String>,
) -> Result<(SessionContext, Arc<dyn ExecutionPlan>), CliError> {
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(SessionConfig::new())
        .with_distributed_worker_resolver(WorkerList(workers))
        .with_distributed_user_codec(TidemarkCodec::new(local_options.clone()))
        .with_distributed_task_estimator(ShardEstimator { tasks })
        .build();
    let context = SessionContext::from(state);
    let plan = DistributedPhysicalOptimizerRule
        .optimize(plan, context.state().config_options())
        .map_err(|e| query_error("distributing the run's plan", e))?;
    Ok((context, plan))
}

/// The shard count of `tasks` tasks.
pub(crate) fn shard_count(tasks: usize) -> Result<u32, CliError> {
    u32::try_from(tasks).map_err(|_| CliError::usage(format!("{tasks} tasks are too many")))
}

/// Runs the run's plan on the workers among `workers` that answer, and
/// again after a failure (a lost worker, a failed task) up to `retries`
/// times. Each retry first waits for the failed attempt's leases to expire
/// (the spec's lease TTL: its tasks stopped without releasing them), leaves
/// out the workers that no longer answer, and splits the run over the
/// others (one task a worker, at most `tasks`). What earlier attempts sealed
/// is kept: a retry skips it, and its commit carries it.
pub(crate) async fn run_with_retries(
    spec: &RunSpec,
    options: &HashMap<String, String>,
    workers: &[Url],
    tasks: usize,
    retries: u32,
) -> Result<Vec<RecordBatch>, CliError> {
    let mut attempt = 0;
    loop {
        let live = answering(workers).await;
        if live.is_empty() {
            return Err(CliError::usage(format!(
                "none of the {} worker(s) answers: start `tidemark worker` on them and rerun; \
                 what earlier attempts sealed is kept",
                workers.len()
            )));
        }
        let attempt_tasks = tasks.min(live.len()).max(1);
        let plan = run_plan(spec, options, shard_count(attempt_tasks)?);
        let (context, plan) = distribute(plan, live.clone(), attempt_tasks, options)?;
        match execute(&context, plan).await {
            Ok(batches) => return Ok(batches),
            Err(error) if attempt < retries => {
                attempt += 1;
                say!(
                    "attempt {attempt} of the distributed run failed on {} worker(s): {error}; \
                     retrying on the workers that answer once its leases expire ({} s)",
                    live.len(),
                    spec.lease_ttl_secs
                );
                tokio::time::sleep(Duration::from_secs(spec.lease_ttl_secs.saturating_add(1)))
                    .await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The workers that accept a connection within two seconds.
async fn answering(workers: &[Url]) -> Vec<Url> {
    let mut live = Vec::new();
    for url in workers {
        let (Some(host), Some(port)) = (url.host_str(), url.port()) else {
            continue;
        };
        let connect = tokio::net::TcpStream::connect((host, port));
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(_)) => live.push(url.clone()),
            _ => tracing::warn!(worker = %url, "the worker does not answer; left out"),
        }
    }
    live
}

/// The plan as `run --explain` prints it: its stages and their tasks.
pub(crate) fn explain(plan: &Arc<dyn ExecutionPlan>) -> String {
    display_plan_ascii(plan.as_ref(), false)
}

/// Runs a distributed plan to its end and answers its batches.
pub(crate) async fn execute(
    context: &SessionContext,
    plan: Arc<dyn ExecutionPlan>,
) -> Result<Vec<RecordBatch>, CliError> {
    datafusion::physical_plan::collect(plan, context.task_ctx())
        .await
        .map_err(|e| {
            query_error(
                "running the distributed run (a task failed, or a worker was lost: what \
                 the tasks sealed is kept, and a rerun skips it and finishes the rest)",
                e,
            )
        })
}

fn query_error(what: &str, source: DataFusionError) -> CliError {
    CliError::Query {
        what: what.to_string(),
        source: Box::new(source),
    }
}

/// Serves a worker on `listen` until the process ends, printing the address
/// it listens on (port 0 picks a free one).
pub(crate) async fn serve_worker(
    listen: SocketAddr,
    local_options: HashMap<String, String>,
) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::usage(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::usage(format!("cannot read the address bound: {e}")))?;
    let codec = TidemarkCodec::new(local_options);
    let worker = Worker::from_session_builder(move |context: WorkerQueryContext| {
        let codec = codec.clone();
        async move { Ok(context.builder.with_distributed_user_codec(codec).build()) }
    });
    println!("tidemark worker listening on http://{bound}");
    tonic::transport::Server::builder()
        .add_service(worker.into_worker_server())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| CliError::usage(format!("the worker on {bound} stopped: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sink: &str) -> RunSpec {
        RunSpec {
            sources: vec!["file:///drop/".into()],
            sink: sink.into(),
            store: "file:///checkpoints".into(),
            pipeline: "p".into(),
            keys: vec!["id".into()],
            sql: None,
            shared_options: Default::default(),
            memory_mib: 1,
            lease_ttl_secs: 30,
            checkpoint_every_rows: 0,
            checkpoint_every_secs: 0,
            checkpoint_every_file: false,
            commit_every_secs: 0,
            target_file_size_mib: 1,
            map_workers: 1,
            accept_table_state: false,
            reprocess_lost_commits: false,
        }
    }

    #[test]
    fn a_url_with_a_secret_never_goes_on_the_wire() {
        let plain = spec("iceberg+postgresql://user@db/catalog?warehouse=s3://b/wh#ns.t");
        assert!(refuse_secrets_on_the_wire(&plain).is_ok());
        let with_password = spec("iceberg+postgresql://user:hush@db/catalog#ns.t");
        let refused = refuse_secrets_on_the_wire(&with_password)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("carries a secret"), "{refused}");
        assert!(!refused.contains("hush"), "{refused}");
    }

    #[test]
    fn worker_urls_are_checked_before_any_work() {
        let urls = parse_workers(&["http://a:1,http://b:2".into(), "http://c:3".into()]);
        assert_eq!(urls.map(|u| u.len()).ok(), Some(3));
        for bad in ["a:1", "https://a:1", "http://a", "grpc://a:1"] {
            assert!(parse_workers(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_codec_carries_the_spec_and_not_the_local_options() {
        let local: HashMap<String, String> =
            [("aws_secret_access_key".to_string(), "hush".to_string())].into();
        let plan = run_plan(&spec("delta+file:///t"), &local, 2);
        let codec = TidemarkCodec::new(HashMap::new());
        let run = Arc::clone(plan.children()[0].children()[0]);
        let mut wire = Vec::new();
        codec.try_encode(Arc::clone(&run), &mut wire).ok();
        let text = String::from_utf8_lossy(&wire);
        assert!(text.contains("delta+file:///t"), "{text}");
        assert!(!text.contains("hush"), "{text}");
        let decoded = codec.try_decode(
            &wire,
            &[Arc::new(PipelineShardsExec::new(2))],
            &TaskContext::default(),
        );
        let decoded = decoded.ok();
        let decoded = decoded
            .as_ref()
            .and_then(|p| p.as_any().downcast_ref::<CheckpointedRunExec>());
        assert_eq!(decoded.map(|r| &r.spec), Some(&spec("delta+file:///t")));
        assert_eq!(decoded.map(|r| r.local_options.len()), Some(0));
    }
}
