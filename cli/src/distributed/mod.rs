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
//! nothing ([`tidemark::pipeline::Pipeline::sealing_only`]). The head stage,
//! on the coordinator, commits every sealed checkpoint in one table commit
//! once all tasks are done. datafusion-distributed retries no task: a lost
//! worker fails the attempt, and the coordinator retries it on the workers
//! that still answer ([`run_with_retries`]). The checkpoints the other tasks
//! sealed are kept and committed by the retry; the lost task's open
//! checkpoint is sealed empty by the retry's lease (it outlived its TTL) and
//! its data files are collected as orphans.
//!
//! - `nodes`: the plan nodes and what each task and the commit stage run;
//! - `codec`: the nodes on the wire, as a [`RunSpec`] without secrets;
//! - `worker`: `tidemark worker`, a datafusion-distributed worker;
//! - here: the plan, its distribution over workers, and the retries.

mod codec;
mod nodes;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use async_trait::async_trait;
use datafusion::common::DataFusionError;
use datafusion::config::ConfigOptions;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_distributed::{
    display_plan_ascii, DistributedExt, DistributedPhysicalOptimizerRule, TaskEstimation,
    TaskEstimator, WorkerResolver,
};
use tidemark::redact::redact_url;
use url::Url;

pub(crate) use codec::TidemarkCodec;
use nodes::{PipelineShardsExec, RunStage, RunStageExec};
pub(crate) use worker::serve_worker;

use crate::shown::say;
use crate::spec::RunSpec;
use crate::CliError;

/// The plan of a run split into `tasks` shards.
pub(crate) fn run_plan(
    spec: &RunSpec,
    local_options: &HashMap<String, String>,
    tasks: u32,
) -> Arc<dyn ExecutionPlan> {
    let shards = Arc::new(PipelineShardsExec::new(tasks));
    let run = Arc::new(RunStageExec::new(
        RunStage::Run,
        spec.clone(),
        local_options.clone(),
        shards,
    ));
    let gathered = Arc::new(CoalescePartitionsExec::new(run));
    Arc::new(RunStageExec::new(
        RunStage::Commit,
        spec.clone(),
        local_options.clone(),
        gathered,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::TaskContext;
    use datafusion_proto::physical_plan::PhysicalExtensionCodec;

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
            .and_then(|p| p.as_any().downcast_ref::<RunStageExec>());
        assert_eq!(decoded.map(|r| r.stage), Some(RunStage::Run));
        assert_eq!(decoded.map(|r| &r.spec), Some(&spec("delta+file:///t")));
        assert_eq!(decoded.map(|r| r.local_options.len()), Some(0));
    }
}
