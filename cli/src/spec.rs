//! What a run is: its source, table, store, key and transform, and how it
//! seals, as plain data. `run` builds its pipeline from it, and a distributed
//! run sends it to every worker inside the plan, so it carries no secret: the
//! object store options that name one (`aws_secret_access_key`, ...) stay in
//! the process that was given them, and each worker adds its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};
use tidemark::commit::LostCommitsPolicy;
use tidemark::pipeline::{CheckpointPolicy, Pipeline};
use tidemark::read::ReadOptions;
use tidemark::redact::is_secret_name;
use tidemark::source::{Shard, Source, UnionSource};
use tidemark::sql::SqlTransform;
use tidemark::store::{CheckpointStore, KeySchema, StoreLocation};
use tidemark::transform::Transform;

use crate::targets::{open_source, parse_location, AnySink};
use crate::{lease_options, CliError, RunArgs};

/// A run of `tidemark run`, without the process's secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunSpec {
    /// The sources' URLs (a union when more than one).
    pub(crate) sources: Vec<String>,
    /// The table's URL.
    pub(crate) sink: String,
    /// The checkpoint store's URL.
    pub(crate) store: String,
    /// The pipeline id.
    pub(crate) pipeline: String,
    /// The key columns.
    pub(crate) keys: Vec<String>,
    /// The SQL transform, if any.
    pub(crate) sql: Option<String>,
    /// Object store options whose names are not secret ([`is_secret_name`]).
    pub(crate) shared_options: BTreeMap<String, String>,
    /// The key filter's memory budget in MiB.
    pub(crate) memory_mib: usize,
    /// The lease's time to live in seconds.
    pub(crate) lease_ttl_secs: u64,
    /// Seal after this many rows (0: no row trigger).
    pub(crate) checkpoint_every_rows: u64,
    /// Seal after this many seconds (0: no time trigger).
    pub(crate) checkpoint_every_secs: u64,
    /// Seal whenever a source unit is read to its end.
    pub(crate) checkpoint_every_file: bool,
    /// Commit during the run after this many seconds (0: after every seal).
    pub(crate) commit_every_secs: u64,
    /// Target size of a data file in MiB.
    pub(crate) target_file_size_mib: usize,
    /// Batches mapped at once.
    pub(crate) map_workers: usize,
    /// Accept a table that lost commits of the pipeline.
    pub(crate) accept_table_state: bool,
    /// Write the rows of lost commits again.
    pub(crate) reprocess_lost_commits: bool,
}

/// What a run opens before it touches the store or the table: the source, its
/// key columns, and the transform planned (and checked) against its schema.
pub(crate) struct PlannedRun {
    /// The source.
    pub(crate) source: Arc<dyn Source>,
    /// The key columns, with their types in the source.
    pub(crate) keys: KeySchema,
    /// The transform.
    pub(crate) transform: Transform,
    /// The schema of the transform's output: the table's rows.
    pub(crate) output_schema: SchemaRef,
}

impl RunSpec {
    /// The run `args` describe.
    pub(crate) fn from_args(args: &RunArgs) -> Self {
        RunSpec {
            sources: args.source.clone(),
            sink: args.target.sink.clone(),
            store: args.target.store.store.clone(),
            pipeline: args.target.pipeline.clone(),
            keys: args.key.clone(),
            sql: args.sql.clone(),
            shared_options: args
                .target
                .store
                .options
                .iter()
                .filter(|(name, _)| !is_secret_name(name))
                .cloned()
                .collect(),
            memory_mib: args.memory_mib,
            lease_ttl_secs: args.lease.lease_ttl_secs,
            checkpoint_every_rows: args.checkpoint_every_rows.unwrap_or(0),
            checkpoint_every_secs: args.checkpoint_every_secs,
            checkpoint_every_file: args.checkpoint_every_file,
            commit_every_secs: args.commit_every_secs,
            target_file_size_mib: args.target_file_size_mib,
            map_workers: args.map_workers,
            accept_table_state: args.accept_table_state,
            reprocess_lost_commits: args.reprocess_lost_commits,
        }
    }

    /// The object store options of a process that holds `local` (its own
    /// options, secrets included): the spec's shared ones, overridden by
    /// `local`.
    pub(crate) fn options(&self, local: &HashMap<String, String>) -> HashMap<String, String> {
        let mut options: HashMap<String, String> = self
            .shared_options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        options.extend(local.iter().map(|(k, v)| (k.clone(), v.clone())));
        options
    }

    /// Opens the source and plans the transform (refused here if it is not
    /// row-wise), before the store or the table is touched.
    pub(crate) async fn plan(
        &self,
        options: &HashMap<String, String>,
    ) -> Result<PlannedRun, CliError> {
        let source = open_sources(&self.sources, options).await?;
        let schema = source.schema();
        let key_names: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        let keys = KeySchema::from_source(&schema, &key_names)?;
        let (transform, output_schema) = match &self.sql {
            Some(sql) => {
                let planned = SqlTransform::new(sql, &schema).await?;
                (planned.transform().clone(), planned.output_schema().clone())
            }
            None => (Transform::new(), schema.clone()),
        };
        Ok(PlannedRun {
            source,
            keys,
            transform,
            output_schema,
        })
    }

    /// Opens the checkpoint store, creating it for `keys` if it is new.
    pub(crate) async fn open_store(
        &self,
        options: &HashMap<String, String>,
        keys: KeySchema,
    ) -> Result<CheckpointStore, CliError> {
        let url = parse_location(&self.store)?;
        let location = StoreLocation::from_url(url.as_str(), options)?;
        Ok(CheckpointStore::open_at(location, keys).await?)
    }

    /// The pipeline of this run over `shard`, committing into `sink`.
    pub(crate) fn pipeline(
        &self,
        store: CheckpointStore,
        sink: AnySink,
        shard: Shard,
    ) -> Pipeline<AnySink> {
        Pipeline::new(store, sink, self.pipeline.clone())
            .with_shard(shard)
            .with_read_options(ReadOptions {
                memory_budget_bytes: self.memory_mib << 20,
                ..Default::default()
            })
            .with_lease_options(lease_options(self.lease_ttl_secs))
            .with_map_workers(self.map_workers)
            .with_lost_commits_policy(self.lost_commits_policy())
            .with_checkpoint_policy(self.checkpoint_policy())
    }

    /// The target size of a data file in bytes.
    pub(crate) fn target_file_size_bytes(&self) -> usize {
        self.target_file_size_mib.saturating_mul(1 << 20)
    }

    /// What the run does with commits the table lost, by its flags.
    fn lost_commits_policy(&self) -> LostCommitsPolicy {
        if self.reprocess_lost_commits {
            LostCommitsPolicy::Reprocess
        } else if self.accept_table_state {
            LostCommitsPolicy::Accept
        } else {
            LostCommitsPolicy::Refuse
        }
    }

    /// The policy of the checkpoint and commit flags (0 turns an interval
    /// off; a commit interval of 0 commits after every seal).
    fn checkpoint_policy(&self) -> CheckpointPolicy {
        CheckpointPolicy {
            rows: (self.checkpoint_every_rows > 0).then_some(self.checkpoint_every_rows),
            interval: (self.checkpoint_every_secs > 0)
                .then(|| Duration::from_secs(self.checkpoint_every_secs)),
            per_unit: self.checkpoint_every_file,
            commit_interval: Duration::from_secs(self.commit_every_secs),
        }
    }
}

/// One source, or the union of several.
pub(crate) async fn open_sources(
    urls: &[String],
    options: &HashMap<String, String>,
) -> Result<Arc<dyn Source>, CliError> {
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    for text in urls {
        sources.push(open_source(text, options).await?);
    }
    Ok(if sources.len() == 1 {
        sources.remove(0)
    } else {
        Arc::new(UnionSource::new(sources)?)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn secret_options_stay_out_of_the_spec_and_local_ones_win() {
        let cli = Cli::try_parse_from([
            "tidemark",
            "run",
            "--store",
            "s3://bucket/checkpoints",
            "--sink",
            "delta+s3://bucket/table",
            "--pipeline",
            "p",
            "--source",
            "s3://bucket/drop/",
            "--key",
            "id",
            "-o",
            "aws_endpoint=http://localhost:9000",
            "-o",
            "aws_secret_access_key=hush",
        ]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = cli
        else {
            panic!("the command line did not parse as a run: {cli:?}");
        };
        let spec = RunSpec::from_args(&args);
        let wire = serde_json::to_string(&spec).unwrap_or_default();
        assert!(wire.contains("aws_endpoint"), "{wire}");
        assert!(!wire.contains("hush"), "{wire}");
        assert!(!wire.contains("aws_secret_access_key"), "{wire}");
        let local: HashMap<String, String> = [
            ("aws_secret_access_key", "worker's own"),
            ("aws_endpoint", "http://127.0.0.1:9000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let options = spec.options(&local);
        assert_eq!(options["aws_endpoint"], "http://127.0.0.1:9000");
        assert_eq!(options["aws_secret_access_key"], "worker's own");
    }
}
