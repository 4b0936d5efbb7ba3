//! `tidemark`: checkpointed, exactly-once copies from Parquet, Iceberg or Delta
//! sources into Iceberg or Delta tables, and the upkeep of their checkpoint
//! stores.

mod commands;
mod distributed;
mod shown;
mod spec;
mod targets;

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Failures of the command, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// The core library failed.
    #[error(transparent)]
    Tidemark(#[from] tidemark::Error),
    /// The Iceberg connector failed.
    #[error(transparent)]
    IcebergSink(#[from] tidemark_iceberg::Error),
    /// The Delta connector failed.
    #[error(transparent)]
    DeltaSink(#[from] tidemark_delta::Error),
    /// The iceberg crate failed.
    #[error("{what}: {source}")]
    Iceberg {
        /// What the command was doing.
        what: String,
        /// The error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// A query of `pending --sql` failed.
    #[error("{what}: {source}")]
    Query {
        /// What the command was doing.
        what: String,
        /// The error.
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },
    /// The deltalake crate failed.
    #[error("{what}: {source}")]
    Delta {
        /// What the command was doing.
        what: String,
        /// The error.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
}

impl CliError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }
}

/// Exactly-once pipelines over lakehouse tables.
///
/// Sources:  Parquet files (file:///dir/, s3://bucket/drop/*.parquet, ./path),
///           iceberg+sqlite:///catalog.db?warehouse=URL#ns.table,
///           iceberg+postgresql://user:pw@host/db?warehouse=URL#ns.table,
///           iceberg+rest://host:8181/?warehouse=NAME#ns.table,
///           iceberg+https://host/path?warehouse=NAME#ns.table,
///           delta+file:///path, delta+s3://bucket/path.
///           A SQL catalog's name is `default` (pyiceberg's), or `catalog=NAME`
///           in the query. A REST catalog's secret goes in
///           TIDEMARK_ICEBERG_CREDENTIAL (client_id:secret) or
///           TIDEMARK_ICEBERG_TOKEN, never in the URL.
/// Sinks:    the same iceberg+... and delta+... URLs.
/// Stores:   file:///path, s3://bucket/prefix, or a local path.
/// Options:  -o KEY=VALUE, object_store names (aws_endpoint, aws_region,
///           aws_access_key_id, aws_secret_access_key, aws_allow_http, ...),
///           applied to every URL.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copies the rows of a source whose key no earlier run processed into a
    /// table, exactly once, then commits. Safe to kill and rerun at any point.
    Run(RunArgs),
    /// Shows a store: checkpoints by state, pending commits, unsealed writes,
    /// orphan files, keys and leases. Exits 3 if work is pending.
    Status(StatusArgs),
    /// Finishes what dead runs left: seals their checkpoints empty, commits
    /// sealed ones and deletes orphan data files.
    Gc(GcArgs),
    /// Folds committed checkpoints into the sorted key index and prunes old
    /// commit intents, so reads stay fast after thousands of runs. With a sink,
    /// collects garbage first.
    Compact(CompactArgs),
    /// Checks the store and the table against each other: the store's last
    /// committed sequence, the table's marker, and whether the table's
    /// current state still carries the pipeline's commits (not rolled back,
    /// restored or recreated). Exits 4 when they disagree.
    Verify(VerifyArgs),
    /// Records the keys of the rows a table already holds as processed, so
    /// that runs do not process them again (a table written before tidemark,
    /// or by another tool). Reads only the key columns; memory stays bounded.
    Adopt(AdoptArgs),
    /// Shows the rows of a source that the next run would process (their key
    /// is in no sealed checkpoint), staging nothing: their count, or the
    /// answer of a SQL query over them, registered as `unprocessed`.
    Pending(PendingArgs),
    /// Serves a worker of distributed runs (`run --workers`): a
    /// datafusion-distributed worker that runs the tasks of their plans.
    /// Prints the URL it listens on. Secrets (object store options such as
    /// aws_secret_access_key, AWS_* and TIDEMARK_ICEBERG_* variables) are
    /// given to each worker itself: plans carry none.
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Object store options, KEY=VALUE (repeatable), added to those of each
    /// plan: this worker's own settings and secrets.
    #[arg(short = 'o', long = "option", value_parser = parse_option)]
    options: Vec<(String, String)>,
}

#[derive(Debug, Args)]
struct PendingArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A source (repeat for the union of several), as for `run`.
    #[arg(long, required = true)]
    source: Vec<String>,
    /// A read-only query over the table `unprocessed` (default:
    /// `SELECT count(*) AS unprocessed_rows FROM unprocessed`). Any query
    /// DataFusion runs: aggregates, ORDER BY, LIMIT. DDL, DML and SET are
    /// refused.
    #[arg(long)]
    sql: Option<String>,
    /// Memory budget of the key filter in MiB; above it keys spill to disk.
    #[arg(long, default_value_t = 1024)]
    memory_mib: usize,
}

#[derive(Debug, Args)]
struct GcArgs {
    #[command(flatten)]
    target: SinkArgs,
    #[command(flatten)]
    lease: LeaseArgs,
}

/// How long the pipeline's lease outlives a process that dies holding it.
#[derive(Debug, Args)]
struct LeaseArgs {
    /// Seconds a dead process keeps the pipeline's lease before another
    /// may take over (1 to 604800, a week).
    #[arg(long, default_value_t = 30, value_parser = parse_lease_ttl)]
    lease_ttl_secs: u64,
}

impl LeaseArgs {
    fn options(&self) -> tidemark::store::LeaseOptions {
        lease_options(self.lease_ttl_secs)
    }
}

/// The lease options of a time to live in seconds (checked by
/// [`parse_lease_ttl`]).
fn lease_options(ttl_secs: u64) -> tidemark::store::LeaseOptions {
    tidemark::store::LeaseOptions {
        ttl: std::time::Duration::from_secs(ttl_secs),
        ..Default::default()
    }
}

fn parse_lease_ttl(text: &str) -> Result<u64, String> {
    let max = tidemark::store::MAX_LEASE_TTL.as_secs();
    match text.parse::<u64>() {
        Ok(secs) if (1..=max).contains(&secs) => Ok(secs),
        _ => Err(format!(
            "`{text}` is not a number of seconds from 1 to {max}"
        )),
    }
}

#[derive(Debug, Args)]
struct AdoptArgs {
    #[command(flatten)]
    target: SinkArgs,
    #[command(flatten)]
    lease: LeaseArgs,
    /// The key column (repeat for a composite key), as `run --key`.
    #[arg(long, required = true)]
    key: Vec<String>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    target: SinkArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Where the checkpoints are.
#[derive(Debug, Args)]
struct StoreArgs {
    /// The checkpoint store.
    #[arg(long)]
    store: String,
    /// Object store options, KEY=VALUE (repeatable).
    #[arg(short = 'o', long = "option", value_parser = parse_option)]
    options: Vec<(String, String)>,
}

impl StoreArgs {
    fn options(&self) -> HashMap<String, String> {
        self.options.iter().cloned().collect()
    }
}

/// A store and the table its pipeline commits into.
#[derive(Debug, Args)]
struct SinkArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The table (iceberg+... or delta+...).
    #[arg(long)]
    sink: String,
    /// The pipeline id: the name of its commits in the table (ASCII letters,
    /// digits, `.`, `_` and `-`, at most 128, starting with a letter or digit).
    #[arg(long, value_parser = parse_pipeline_id)]
    pipeline: String,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    target: SinkArgs,
    /// A source (repeat for the union of several).
    #[arg(long, required = true)]
    source: Vec<String>,
    /// The key column (repeat for a composite key).
    #[arg(long, required = true)]
    key: Vec<String>,
    /// Create the table from the source's schema (or the `--sql`
    /// statement's output) if it does not exist.
    #[arg(long)]
    create: bool,
    /// A SQL transform: one `SELECT` over the table `source` (for example
    /// `SELECT id, lower(text) AS text FROM source WHERE length(text) > 0`).
    /// Only row-wise work is allowed (expressions, functions, WHERE);
    /// sorts, limits, aggregates, DISTINCT, joins, unions, windows and
    /// subqueries are refused before the read. Rows a WHERE drops count as
    /// processed.
    #[arg(long)]
    sql: Option<String>,
    /// Run only shard I of N of the source files (I/N, from 0), under the
    /// shard's own lease, so N processes can share the work.
    #[arg(long, value_parser = parse_shard, conflicts_with = "workers")]
    shard: Option<tidemark::source::Shard>,
    /// Run across machines: the URLs of `tidemark worker` processes
    /// (http://host:port, comma-separated or repeated). Each task runs a
    /// shard of the source on a worker and seals its checkpoints; this
    /// process then commits them all in one table commit. A lost worker
    /// fails the run: rerun it, and finished work is kept.
    #[arg(long)]
    workers: Vec<String>,
    /// With --workers: the number of tasks (shards), at most one per
    /// worker (default: one per worker).
    #[arg(long, requires = "workers", value_parser = clap::value_parser!(u32).range(1..=4096))]
    tasks: Option<u32>,
    /// With --workers: after a failed attempt (a lost worker, a failed
    /// task), wait for its leases to expire (--lease-ttl-secs) and run again
    /// this many times on the workers that still answer. Each attempt skips
    /// what earlier ones sealed.
    #[arg(long, default_value_t = 2, requires = "workers")]
    retries: u32,
    /// With --workers: print the run's distributed plan (its stages, tasks
    /// and nodes) and exit, after the checks a run makes before any work.
    #[arg(long, requires = "workers")]
    explain: bool,
    /// Memory budget of the key filter in MiB; above it keys spill to disk.
    #[arg(long, default_value_t = 1024)]
    memory_mib: usize,
    #[command(flatten)]
    lease: LeaseArgs,
    /// Seal a checkpoint after this many rows reached the map. A kill loses at
    /// most one checkpoint's rows.
    #[arg(long)]
    checkpoint_every_rows: Option<u64>,
    /// Seal a checkpoint after this many seconds (0: no time trigger).
    #[arg(long, default_value_t = 60)]
    checkpoint_every_secs: u64,
    /// Seal a checkpoint whenever a source file is read to its end.
    #[arg(long)]
    checkpoint_every_file: bool,
    /// Commit sealed checkpoints to the table during the run once this many
    /// seconds passed since the last commit (0: after every seal). The end
    /// of a run always commits.
    #[arg(long, default_value_t = 300)]
    commit_every_secs: u64,
    /// Target size of a data file in MiB; files also close at every seal.
    #[arg(long, default_value_t = 128)]
    target_file_size_mib: usize,
    /// Batches mapped at once.
    #[arg(long, default_value_t = 1)]
    map_workers: usize,
    /// Run although the table lost commits of this pipeline (rolled back or
    /// restored): their keys stay processed, and their rows are not written
    /// again. Without it such a run is refused before it reads. The
    /// acceptance is recorded in the store: later runs pass the same table
    /// state without the flag. A recreated or replaced table cannot be
    /// accepted (use a new store and `adopt`).
    #[arg(long)]
    accept_table_state: bool,
    /// Run although the table lost commits of this pipeline (rolled back or
    /// restored), and write their rows again: their keys are forgotten, so
    /// this run reads and commits those rows anew. Refused when compaction
    /// already folded a lost commit's keys into the index (then accept the
    /// table with --accept-table-state, or start over with `adopt`).
    #[arg(long, conflicts_with = "accept_table_state")]
    reprocess_lost_commits: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CompactArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The table, to collect garbage first (iceberg+... or delta+...).
    #[arg(long, requires = "pipeline")]
    sink: Option<String>,
    /// The pipeline id, with --sink.
    #[arg(long, requires = "sink", value_parser = parse_pipeline_id)]
    pipeline: Option<String>,
    /// Keys per index file.
    #[arg(long, default_value_t = 1_000_000)]
    keys_per_file: usize,
    /// With an Iceberg --sink: after gc and compaction, expire the table's
    /// snapshots older than this many hours (metadata only; the marker
    /// stays), keeping the latest --retain-snapshots.
    #[arg(long, requires = "sink")]
    expire_snapshots_older_than_hours: Option<u64>,
    /// Snapshots kept by --expire-snapshots-older-than-hours whatever their age.
    #[arg(
        long,
        default_value_t = 1,
        requires = "expire_snapshots_older_than_hours"
    )]
    retain_snapshots: usize,
    /// With --sink: seconds a dead gc keeps the pipeline's lease before
    /// another process may take over (1 to 604800).
    #[arg(long, default_value_t = 30, value_parser = parse_lease_ttl, requires = "sink")]
    lease_ttl_secs: u64,
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

fn parse_pipeline_id(text: &str) -> Result<String, String> {
    tidemark::redact::validate_pipeline_id(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

fn parse_shard(text: &str) -> Result<tidemark::source::Shard, String> {
    let (index, count) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not I/N"))?;
    let index = index.parse().map_err(|e| format!("shard index: {e}"))?;
    let count = count.parse().map_err(|e| format!("shard count: {e}"))?;
    tidemark::source::Shard::new(index, count).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    shown::gather();
    shown::install_panic_hook();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,buoyant_kernel=off")),
        )
        .with_writer(shown::ScrubbedStderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let text = shown::scrub(&e.render().to_string());
            return if e.use_stderr() {
                eprint!("{text}");
                ExitCode::from(2)
            } else {
                print!("{text}");
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!(
                "{}",
                shown::scrub(&format!("error: cannot start the async runtime: {e}"))
            );
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => commands::run(args).await,
            Command::Status(args) => commands::status(args).await,
            Command::Gc(args) => commands::gc(args).await,
            Command::Verify(args) => commands::verify(args).await,
            Command::Adopt(args) => commands::adopt(args).await,
            Command::Compact(args) => commands::compact(args).await,
            Command::Pending(args) => commands::pending(args).await,
            Command::Worker(args) => {
                distributed::serve_worker(args.listen, args.options.into_iter().collect())
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", shown::scrub(&format!("error: {e}")));
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("{}", shown::scrub(&format!("  caused by: {cause}")));
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
