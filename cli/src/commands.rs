//! The subcommands.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::util::pretty::{pretty_format_batches, pretty_format_batches_with_schema};
use datafusion::execution::context::SessionContext;
use indicatif::{ProgressBar, ProgressStyle};
use text::format_status;
use tidemark::commit::{Committer, Lineage};
use tidemark::pipeline::{Pipeline, Progress};
use tidemark::plan::UnprocessedTable;
use tidemark::read::ReadOptions;
use tidemark::source::Shard;
use tidemark::sql::query_only;
use tidemark::store::{CheckpointStore, CompactionOptions, KeySchema, StoreLocation};
use tidemark_iceberg::SnapshotExpiry;

use crate::distributed::{self, parse_workers, refuse_secrets_on_the_wire};
use crate::shown::say;
use crate::spec::{open_sources, RunSpec};
use crate::targets::{open_source, parse_location, parse_table, AnySink, TableUrl};
use crate::{
    AdoptArgs, CliError, CompactArgs, GcArgs, PendingArgs, RunArgs, StatusArgs, StoreArgs,
    VerifyArgs,
};

/// Exit code of `status` when work is pending (unsealed, uncommitted or orphans).
const EXIT_PENDING: u8 = 3;

pub(crate) async fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    // Names and URLs are checked before anything is opened or written.
    parse_table(&args.target.sink)?;
    let spec = RunSpec::from_args(&args);
    if !args.workers.is_empty() {
        return run_distributed(&args, spec).await;
    }
    let options = args.target.store.options();
    // The transform is planned (and refused if it is not row-wise) before
    // the store, the table or the source's rows are touched.
    let planned = spec.plan(&options).await?;
    let source = planned.source;
    let transform = planned.transform;
    let store = spec.open_store(&options, planned.keys).await?;
    let sink = AnySink::open(
        &args.target.sink,
        &options,
        args.create.then_some(&planned.output_schema),
    )
    .await?;
    let mut writer = sink.writer(spec.target_file_size_bytes()).await?;
    let progress = Arc::new(Progress::default());
    let shard = args.shard.unwrap_or_else(Shard::all);
    let pipeline = spec
        .pipeline(store, sink, shard)
        .with_progress(progress.clone());
    let bar = progress_bar(args.quiet, source.row_count());
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                let now = progress.snapshot();
                bar.set_position(now.rows_read);
                bar.set_message(format!(
                    "skipped {} written {} files {} bytes {} | sealed {} rows in {} checkpoint(s) | committed {} rows in {} commit(s)",
                    now.rows_skipped,
                    now.rows_written,
                    now.files_written,
                    now.bytes_written,
                    now.rows_sealed,
                    now.checkpoints_sealed,
                    now.rows_committed,
                    now.commits
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let result = pipeline.run(source, &transform, writer.as_mut()).await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = result?;
    say!(
        "lease {} epoch {}: repaired {} commit(s), sealed {} stale checkpoint(s) empty, deleted {} orphan file(s) and {} director(ies)",
        report.lease.scope,
        report.lease.epoch,
        report.repaired.commits.len(),
        report.fenced_checkpoints,
        report.gc.files_deleted,
        report.gc.prefixes_deleted,
    );
    say!(
        "read {} rows, skipped {} already processed, {} repeated; processed {} rows; wrote {} rows in {} file(s), {} bytes; {} source unit(s) read to their end by earlier runs, not opened; {} key file(s) of earlier runs not read (no source key in their range)",
        report.read.rows_read,
        report.read.rows_skipped,
        report.read.duplicates_dropped,
        report.read.rows_passed,
        report.rows_written,
        report.files_written,
        report.bytes_written,
        report.read.units_skipped,
        report.read.key_files_skipped,
    );
    say!(
        "sealed {} checkpoint(s); made {} table commit(s)",
        report.checkpoints.len(),
        report.committed.commits.len(),
    );
    for commit in &report.committed.commits {
        say!(
            "committed sequence {} ({} file(s), {} rows) into {}: {}",
            commit.sequence,
            commit.files,
            commit.rows,
            pipeline_table(&pipeline),
            commit.table_version
        );
    }
    if report.committed.commits.is_empty() {
        say!("nothing new to commit");
    }
    if let Some(compaction) = report.compaction.filter(|c| c.generation.is_some()) {
        say!(
            "compacted {} checkpoint(s) ({} keys) into the index: {} run(s)",
            compaction.checkpoints_compacted,
            compaction.keys_compacted,
            compaction.runs
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `run --workers`: the run as a plan whose tasks run on the workers, each
/// sealing its shard, and one commit of them all on this process.
async fn run_distributed(args: &RunArgs, spec: RunSpec) -> Result<ExitCode, CliError> {
    let workers = parse_workers(&args.workers)?;
    refuse_secrets_on_the_wire(&spec)?;
    let tasks = args.tasks.map_or(workers.len(), |t| t as usize).max(1);
    let options = args.target.store.options();
    // Everything a worker would refuse is refused here first, before any
    // task starts: the source, the key, the transform, the store, the table.
    let planned = spec.plan(&options).await?;
    spec.open_store(&options, planned.keys).await?;
    AnySink::open(
        &args.target.sink,
        &options,
        args.create.then_some(&planned.output_schema),
    )
    .await?
    .writer(spec.target_file_size_bytes())
    .await?
    .check_schema(&planned.output_schema)?;
    if args.explain {
        let plan = distributed::run_plan(&spec, &options, distributed::shard_count(tasks)?);
        let (_, plan) = distributed::distribute(plan, workers, tasks, &options)?;
        println!("{}", distributed::explain(&plan));
        return Ok(ExitCode::SUCCESS);
    }
    let batches =
        distributed::run_with_retries(&spec, &options, &workers, tasks, args.retries).await?;
    let shown = pretty_format_batches(&batches).map_err(|e| CliError::Query {
        what: "printing the run's report".into(),
        source: Box::new(datafusion::error::DataFusionError::ArrowError(
            Box::new(e),
            None,
        )),
    })?;
    say!("{shown}");
    Ok(ExitCode::SUCCESS)
}

fn pipeline_table(pipeline: &Pipeline<AnySink>) -> String {
    tidemark::commit::CommitSink::table(pipeline.sink())
}

fn progress_bar(quiet: bool, rows: Option<u64>) -> Option<ProgressBar> {
    if quiet {
        return None;
    }
    let bar = match rows {
        Some(rows) => ProgressBar::new(rows),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows read, {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

pub(crate) async fn status(args: StatusArgs) -> Result<ExitCode, CliError> {
    let store = open_store(&args.store, None).await?;
    let status = store.status().await?;
    if args.json {
        say!("{}", status_json(&status));
    } else {
        say!("{}", format_status(&status).trim_end());
    }
    Ok(if status.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PENDING)
    })
}

pub(crate) async fn adopt(args: AdoptArgs) -> Result<ExitCode, CliError> {
    let target = args.target;
    parse_table(&target.sink)?;
    let options = target.store.options();
    let table = open_source(&target.sink, &options).await?;
    let key_names: Vec<&str> = args.key.iter().map(String::as_str).collect();
    let keys = KeySchema::from_source(&table.schema(), &key_names)?;
    let store = open_store(&target.store, Some(keys)).await?;
    let sink = AnySink::open(&target.sink, &options, None).await?;
    let report = Pipeline::new(store, sink, target.pipeline.clone())
        .with_lease_options(args.lease.options())
        .adopt(table)
        .await?;
    say!(
        "lease {} epoch {}: adopted {} key(s) of {} as processed (checkpoint {})",
        report.lease.scope,
        report.lease.epoch,
        report.keys_adopted,
        tidemark::redact::redact_url(&target.sink),
        report.checkpoint
    );
    Ok(ExitCode::SUCCESS)
}

/// `tidemark verify`'s exit code when the store and the table disagree.
const EXIT_DIVERGED: u8 = 4;

pub(crate) async fn verify(args: VerifyArgs) -> Result<ExitCode, CliError> {
    let target = args.target;
    parse_table(&target.sink)?;
    let options = target.store.options();
    let store = open_store(&target.store, None).await?;
    let sink = AnySink::open(&target.sink, &options, None).await?;
    let committer = Committer::new(store, sink, target.pipeline.clone());
    let check = committer.check_table().await?;
    let lost = check.lost();
    let number = |n: Option<u64>| n.map_or(serde_json::Value::Null, serde_json::Value::from);
    let (lineage, carried) = match &check.lineage {
        Lineage::Carries(sequence) => ("carries", Some(*sequence)),
        Lineage::Unknown => ("unknown", None),
        Lineage::RolledBack { carried, .. } => ("rolled back", *carried),
    };
    // A loss the user accepted earlier, which the table's history still
    // shows.
    let accepted = check
        .accepted
        .as_ref()
        .filter(|_| lost.is_none() && lineage != "unknown" && carried < check.marker);
    if args.json {
        let report = serde_json::json!({
            "table": check.table,
            "pipeline": target.pipeline,
            "store_committed": number(check.store_committed),
            "table_marker": number(check.marker),
            "table_carries": number(carried),
            "lineage": lineage,
            "agree": lost.is_none(),
            "lost_commits": lost.as_ref().map(|l| l.commits.clone()),
            "why": lost.as_ref().map(|l| l.why.clone()),
            "way_out": lost.as_ref().map(|l| l.way_out()),
            "accepted": accepted.map(|a| serde_json::json!({
                "commits": a.commits,
                "why": a.why,
                "accepted_at": a.accepted_at,
                "reprocessed": a.reprocessed,
            })),
        });
        say!("{report}");
    } else {
        let shown = |n: Option<u64>| n.map_or("none".to_string(), |n| n.to_string());
        say!("table {} for pipeline {}", check.table, target.pipeline);
        say!("store: committed up to {}", shown(check.store_committed));
        say!(
            "table: marker {}, history {lineage} (carries {})",
            shown(check.marker),
            shown(carried)
        );
        match &lost {
            None => match accepted {
                Some(a) if a.reprocessed => say!(
                    "the store and the table agree: the table lost commits {} ({}), reprocessed from {} on (their keys were forgotten)",
                    a.commits,
                    a.why,
                    a.accepted_at
                ),
                Some(a) => say!(
                    "the store and the table agree: the table lost commits {} ({}), accepted as it is on {}",
                    a.commits,
                    a.why,
                    a.accepted_at
                ),
                None => say!("the store and the table agree"),
            },
            Some(lost) => {
                say!(
                    "the table no longer holds commits {}: {}",
                    lost.commits,
                    lost.why
                );
                say!("{}", lost.way_out());
            }
        }
    }
    Ok(if lost.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIVERGED)
    })
}

pub(crate) async fn gc(args: GcArgs) -> Result<ExitCode, CliError> {
    let target = args.target;
    parse_table(&target.sink)?;
    let options = target.store.options();
    let store = open_store(&target.store, None).await?;
    let sink = AnySink::open(&target.sink, &options, None).await?;
    let report = Pipeline::new(store, sink, target.pipeline)
        .with_lease_options(args.lease.options())
        .repair()
        .await?;
    say!(
        "lease {} epoch {}: sealed {} stale checkpoint(s) empty, committed {} pending commit(s), deleted {} orphan file(s) and {} director(ies)",
        report.lease.scope,
        report.lease.epoch,
        report.fenced_checkpoints,
        report.committed.commits.len(),
        report.gc.files_deleted,
        report.gc.prefixes_deleted
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn compact(args: CompactArgs) -> Result<ExitCode, CliError> {
    if let Some(sink) = &args.sink {
        let table = parse_table(sink)?;
        if args.expire_snapshots_older_than_hours.is_some() && matches!(table, TableUrl::Delta(_)) {
            return Err(CliError::usage(
                "--expire-snapshots-older-than-hours applies to Iceberg tables; a Delta table \
                 cleans up its own log (delta.logRetentionDuration, at each log checkpoint)"
                    .to_string(),
            ));
        }
    }
    let options = args.store.options();
    let store = open_store(&args.store, None).await?;
    let mut expire_hours = None;
    let mut expiring = None;
    if let (Some(sink), Some(pipeline)) = (&args.sink, &args.pipeline) {
        let sink = AnySink::open(sink, &options, None).await?;
        if let (Some(hours), AnySink::Iceberg(table)) =
            (args.expire_snapshots_older_than_hours, &sink)
        {
            // Refused before any work if the table forbids it.
            table.ensure_snapshots_can_expire().await?;
            expire_hours = Some(hours);
        }
        let pipeline = Pipeline::new(store.clone(), sink, pipeline.clone())
            .with_lease_options(crate::lease_options(args.lease_ttl_secs));
        let report = pipeline.repair().await?;
        say!(
            "gc: deleted {} orphan file(s) and {} director(ies)",
            report.gc.files_deleted,
            report.gc.prefixes_deleted
        );
        expiring = expire_hours.map(|hours| (hours, pipeline));
    }
    let report = store
        .compact(&CompactionOptions {
            max_keys_per_file: args.keys_per_file.max(1),
            ..Default::default()
        })
        .await?;
    match report.generation {
        Some(generation) => say!(
            "index generation {generation}: folded {} checkpoint(s) ({} keys), {} run(s), deleted {} object(s), pruned {} commit intent(s), removed {} reprocessed commit(s)",
            report.checkpoints_compacted,
            report.keys_compacted,
            report.runs,
            report.objects_deleted,
            report.intents_pruned,
            report.forgotten_removed
        ),
        None => say!("nothing to compact"),
    }
    if report.waiting_for_gc > 0 {
        say!(
            "{} committed checkpoint(s) wait for garbage collection: run `tidemark gc`",
            report.waiting_for_gc
        );
    }
    if let Some((hours, pipeline)) = expiring {
        if let AnySink::Iceberg(table) = pipeline.sink() {
            let expired = table
                .expire_snapshots(SnapshotExpiry {
                    older_than: Duration::from_secs(hours.saturating_mul(3600)),
                    retain_last: args.retain_snapshots,
                })
                .await?;
            say!("expired {expired} snapshot(s) of the table");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The query `pending` answers when given none.
const PENDING_COUNT: &str = "SELECT count(*) AS unprocessed_rows FROM unprocessed";

pub(crate) async fn pending(args: PendingArgs) -> Result<ExitCode, CliError> {
    let options = args.store.options();
    let source = open_sources(&args.source, &options).await?;
    let store = open_store(&args.store, None).await?;
    let table = UnprocessedTable::new(
        store,
        source,
        ReadOptions {
            memory_budget_bytes: args.memory_mib << 20,
            ..Default::default()
        },
    )?;
    let context = SessionContext::new();
    let query_error = |what: &str, source| CliError::Query {
        what: what.to_string(),
        source: Box::new(source),
    };
    context
        .register_table("unprocessed", Arc::new(table))
        .map_err(|e| query_error("registering the table `unprocessed`", e))?;
    let sql = args.sql.as_deref().unwrap_or(PENDING_COUNT);
    let frame = context
        .sql_with_options(sql, query_only())
        .await
        .map_err(|e| query_error("planning the query", e))?;
    let schema = Arc::clone(frame.schema().inner());
    let batches = frame
        .collect()
        .await
        .map_err(|e| query_error("running the query", e))?;
    let shown = pretty_format_batches_with_schema(schema, &batches).map_err(|e| {
        query_error(
            "printing the answer",
            datafusion::error::DataFusionError::ArrowError(Box::new(e), None),
        )
    })?;
    println!("{shown}");
    Ok(ExitCode::SUCCESS)
}

async fn open_store(
    args: &StoreArgs,
    keys: Option<KeySchema>,
) -> Result<CheckpointStore, CliError> {
    let url = parse_location(&args.store)?;
    let location = StoreLocation::from_url(url.as_str(), &args.options())?;
    Ok(match keys {
        Some(keys) => CheckpointStore::open_at(location, keys).await?,
        None => CheckpointStore::open_existing(location).await?,
    })
}

fn status_json(status: &tidemark::store::StoreStatus) -> serde_json::Value {
    serde_json::json!({
        "clean": status.is_clean(),
        "key_count": status.key_count,
        "staged": status.staged.iter().map(|s| serde_json::json!({
            "checkpoint": s.id.to_string(),
            "leases": s.leases.iter().map(|l| format!("{}@{}", l.scope, l.epoch)).collect::<Vec<_>>(),
            "in_flight_records": s.in_flight_records,
        })).collect::<Vec<_>>(),
        "pending_commit": status.pending_commit.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
        "committed": status.committed,
        "compacted": status.compacted,
        "fenced": status.fenced,
        "sealed": status.sealed,
        "rows_committed": status.rows_committed,
        "rows_pending_commit": status.rows_pending_commit,
        "latest_commit": status.latest_commit,
        "last_successful_commit": status.last_commit.as_ref().map(|c| serde_json::json!({
            "sequence": c.sequence,
            "committed_at": c.committed_at.to_rfc3339(),
            "seconds_since": seconds_since(c.committed_at),
        })),
        "commit_intents": status.commit_intents,
        "orphans": status.orphans.iter().map(|o| serde_json::json!({
            "checkpoint": o.checkpoint.to_string(),
            "files": o.files,
            "prefixes": o.prefixes,
        })).collect::<Vec<_>>(),
        "leases": status.leases.iter().map(|(scope, lease)| serde_json::json!({
            "scope": scope,
            "epoch": lease.record.claim.epoch,
            "holder": lease.record.holder,
            "released": lease.released(),
            "expires_at": lease.expires_at().to_rfc3339(),
        })).collect::<Vec<_>>(),
    })
}

/// Whole seconds from `at` to now (0 if `at` is in the future).
fn seconds_since(at: chrono::DateTime<chrono::Utc>) -> i64 {
    (chrono::Utc::now() - at).num_seconds().max(0)
}

/// Text rendering of a status.
mod text {
    use std::fmt::Write as _;

    use super::seconds_since;

    use tidemark::store::StoreStatus;

    pub(crate) fn format_status(status: &StoreStatus) -> String {
        let mut out = String::new();
        let now = chrono::Utc::now();
        let _ = writeln!(out, "keys checkpointed:   {}", status.key_count);
        let _ = writeln!(
            out,
            "checkpoints:         {} sealed: {} staged, {} pending commit, {} committed, {} compacted ({} fenced)",
            status.sealed,
            status.staged.len(),
            status.pending_commit.len(),
            status.committed,
            status.compacted,
            status.fenced
        );
        let _ = writeln!(
            out,
            "rows:                {} committed, {} sealed and pending commit",
            status.rows_committed, status.rows_pending_commit
        );
        let _ = writeln!(
            out,
            "table commits:       latest sequence {}, {} intent(s) kept",
            status
                .latest_commit
                .map_or("none".to_string(), |s| s.to_string()),
            status.commit_intents
        );
        let _ = writeln!(
            out,
            "last commit:         {}",
            status
                .last_commit
                .as_ref()
                .map_or("none".to_string(), |c| format!(
                    "sequence {} at {} ({} s ago)",
                    c.sequence,
                    c.committed_at.to_rfc3339(),
                    seconds_since(c.committed_at)
                ))
        );
        for staged in &status.staged {
            let leases: Vec<String> = staged
                .leases
                .iter()
                .map(|l| format!("{}@{}", l.scope, l.epoch))
                .collect();
            let _ = writeln!(
                out,
                "  staged {} (lease {}, {} in-flight record(s))",
                staged.id,
                if leases.is_empty() {
                    "none".to_string()
                } else {
                    leases.join(",")
                },
                staged.in_flight_records
            );
        }
        for id in &status.pending_commit {
            let _ = writeln!(out, "  pending commit {id}");
        }
        let orphan_count: usize = status
            .orphans
            .iter()
            .map(|o| o.files.len() + o.prefixes.len())
            .sum();
        let _ = writeln!(out, "orphan data files:   {orphan_count}");
        for orphans in &status.orphans {
            for path in orphans.paths() {
                let _ = writeln!(out, "  {path} (checkpoint {})", orphans.checkpoint);
            }
        }
        for (scope, lease) in &status.leases {
            let state = if lease.released() {
                "released".to_string()
            } else if lease.is_live(now) {
                format!("held until {}", lease.expires_at().to_rfc3339())
            } else {
                format!("expired at {}", lease.expires_at().to_rfc3339())
            };
            let _ = writeln!(
                out,
                "lease {scope}:  epoch {} by {}, {state}",
                lease.record.claim.epoch, lease.record.holder
            );
        }
        let _ = writeln!(
            out,
            "state:               {}",
            if status.is_clean() {
                "clean"
            } else {
                "work pending (run `tidemark run` or `tidemark gc`)"
            }
        );
        out
    }
}
