//! A pipeline that lives for thousands of runs: does a small run cost more
//! when many runs came before it?
//!
//! ```text
//! cargo bench --bench history -- [--marks 10,100,1000] [--rows 1000]
//!     [--window 9] [--sinks delta,iceberg] [--data DIR]
//!     [--delta-log-retention 'interval 0 seconds'] [--from N]
//!     [--iceberg-expire-every N] [--side-by-side ROUNDS [--reuse yes]]
//! ```
//!
//! Each run reads a source folder of its own holding `--rows` new documents
//! (so every run reads, maps and writes the same amount), adds
//! `chars = length(text)` and appends the rows to the table through a
//! `Pipeline` with its defaults: the lease, the checkpointed read, one seal,
//! the idempotent commit, and the automatic compaction of the checkpoint
//! history. Runs go one after another, in this process, each opening the
//! store, the catalog and the table as a new process would.
//!
//! At each mark (a number of runs made), the table prints the median, least
//! and most seconds of the last `--window` runs (never run 1, which creates
//! the table and the store), their ratio to the first mark's median, the
//! checkpointed keys the run had behind it, the objects in the store and the
//! table's metadata objects (Delta log entries; Iceberg metadata files,
//! manifest lists and manifests). Every run's seconds go to
//! `DATA/SINK/seconds.csv`.
//!
//! Runs here follow each other within a second, so the Delta log keeps every
//! commit, where a pipeline run hourly under the default retention (30 days)
//! keeps about 720. `--delta-log-retention` sets the table's
//! `delta.logRetentionDuration` after its first run, to see a log that time
//! would have cleaned up.
//!
//! `--iceberg-expire-every N` expires, after every `N`th run, the Iceberg
//! table's snapshots but the latest `N` (as a daily `tidemark compact
//! --expire-snapshots-older-than-hours 24` does for hourly runs), so that its
//! metadata file stops growing; the expiry is not counted in any run's time.
//!
//! `--side-by-side ROUNDS` compares the marks in the same minutes instead:
//! one history per mark is made up to its mark (kept for a later invocation
//! with `--reuse yes`), then each round makes one more run on every history,
//! in turns, and the table gives the median of each history's `ROUNDS` runs.
//! On a machine whose speed drifts from one minute to the next, this is the
//! comparison that holds.
//!
//! `--from N` keeps the table and the store of an earlier invocation (same
//! `--data`) that made `N` runs, and goes on from run `N + 1`: a change to
//! the run can be measured at 10,000 runs without making them again. Copy
//! `DATA/SINK` aside first to measure from the same history twice.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/lake.rs"]
mod lake;
mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use lake::{add_chars, delta_table, iceberg_table, open_source, store, write_documents};
use support::{cores, BenchArgs};
use tidemark::commit::CommitSink;
use tidemark::gc::TableFiles;
use tidemark::pipeline::{DataWriter, Pipeline, RunReport};
use tidemark::transform::Transform;
use tidemark_delta::DeltaWriterOptions;
use tidemark_iceberg::{IcebergSink, IcebergWriterOptions, SnapshotExpiry};

fn main() {
    let args = BenchArgs::from_env();
    let flag = |name: &str, default: &str| args.flag(name, default);
    let data = PathBuf::from(flag("--data", "/tmp/tidemark-bench-history"));
    let rows: u64 = flag("--rows", "1000").parse().unwrap();
    let window: usize = flag("--window", "9").parse().unwrap();
    let mut marks: Vec<usize> = list(&flag("--marks", "10,100,1000"))
        .iter()
        .map(|m| m.parse().unwrap())
        .collect();
    marks.sort_unstable();
    let sinks = list(&flag("--sinks", "delta,iceberg"));
    // `delta.logRetentionDuration` of the Delta table (for example `interval
    // 0 seconds`): a log that real time between runs would have cleaned up.
    let delta_log_retention = flag("--delta-log-retention", "");
    // Every this many runs, the Iceberg table's snapshots but the latest this
    // many expire (0: never).
    let iceberg_expire_every: usize = flag("--iceberg-expire-every", "0").parse().unwrap();
    let runs = *marks.last().expect("--marks names at least one mark");
    // Runs an earlier invocation made, whose table and store are kept.
    let from: usize = flag("--from", "0").parse().unwrap();
    assert!(
        marks[0] > from + window,
        "the first mark must be more than --from plus --window (run 1 is not counted)"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sources = data.join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let settings = RunSettings {
        rows,
        sources,
        delta_log_retention,
        iceberg_expire_every,
    };
    // Rounds of runs made in turns on one history per mark (0: one history,
    // measured at each mark as it passes).
    let rounds: usize = flag("--side-by-side", "0").parse().unwrap();
    if rounds > 0 {
        assert_eq!(from, 0, "--from and --side-by-side do not go together");
        let reuse = flag("--reuse", "no") == "yes";
        for sink in &sinks {
            side_by_side(&runtime, &settings, sink, &data, &marks, rounds, reuse);
        }
        return;
    }
    println!(
        "{rows} new rows a run, median of the last {window} runs at each mark; machine: {} cores",
        cores()
    );
    println!();
    println!("| sink | runs made | median s | min s | max s | vs first mark | checkpointed keys | store objects | table metadata objects |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for sink in &sinks {
        let work = data.join(sink);
        if from == 0 {
            let _ = std::fs::remove_dir_all(&work);
        } else {
            assert!(
                work.exists(),
                "--from {from}: {} is missing",
                work.display()
            );
        }
        std::fs::create_dir_all(&work).unwrap();
        let work = std::fs::canonicalize(&work).unwrap();
        let mut seconds = Vec::with_capacity(runs);
        let mut first_median = None;
        for run in from..runs {
            let (elapsed, report) = settings.make_run(&runtime, sink, &work, run);
            seconds.push(elapsed);
            if from == 0 && ((run + 1) % 100 == 0 || run + 1 == runs) {
                let csv: String = seconds.iter().map(|s| format!("{s:.6}\n")).collect();
                std::fs::write(work.join("seconds.csv"), csv).unwrap();
            }
            if (run + 1) % 100 == 0 {
                eprintln!("{sink}: {} runs", run + 1);
            }
            if !marks.contains(&(run + 1)) {
                continue;
            }
            // Run 1 creates the table and the store: it is never counted.
            let mut last = seconds[seconds.len().saturating_sub(window).max(1)..].to_vec();
            last.sort_by(f64::total_cmp);
            let median = last[last.len() / 2];
            let first = *first_median.get_or_insert(median);
            println!(
                "| {sink} | {} | {median:.3} | {:.3} | {:.3} | {:.2}x | {} | {} | {} |",
                run + 1,
                last[0],
                last[last.len() - 1],
                median / first,
                report.read.checkpointed_keys,
                files_below(&work.join("checkpoints"), &|_| true),
                table_metadata_objects(sink, &work),
            );
        }
    }
}

/// What every run of the benchmark shares.
struct RunSettings {
    /// New rows a run reads.
    rows: u64,
    /// The folder holding each run's source folder.
    sources: PathBuf,
    /// `delta.logRetentionDuration`, set after a Delta table's first run
    /// (empty: the default).
    delta_log_retention: String,
    /// Every this many runs, the Iceberg table's snapshots but the latest
    /// this many expire (0: never).
    iceberg_expire_every: usize,
}

impl RunSettings {
    /// Makes run number `run` (from 0) of the history under `work`: its
    /// source folder is written if missing, the run is timed, and the table's
    /// maintenance that follows it (log retention, snapshot expiry) is not.
    fn make_run(
        &self,
        runtime: &tokio::runtime::Runtime,
        sink: &str,
        work: &Path,
        run: usize,
    ) -> (f64, RunReport) {
        let rows = self.rows;
        let folder = self.sources.join(format!("run-{run:05}"));
        if !folder.exists() {
            let part = self.sources.join(format!("writing-{run:05}"));
            let _ = std::fs::remove_dir_all(&part);
            std::fs::create_dir_all(&part).unwrap();
            let first = run as u64 * rows;
            write_documents(&part.join("part-0.parquet"), first..first + rows);
            std::fs::rename(&part, &folder).unwrap();
        }
        let started = Instant::now();
        let report = runtime.block_on(one_run(sink, work, &folder));
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(report.rows_written, rows, "{sink} run {run}");
        if run == 0 && sink == "delta" && !self.delta_log_retention.is_empty() {
            runtime.block_on(set_log_retention(work, &self.delta_log_retention));
        }
        let every = self.iceberg_expire_every;
        if sink == "iceberg" && every > 0 && (run + 1) % every == 0 {
            runtime.block_on(expire_snapshots(work, every));
        }
        (elapsed, report)
    }
}

/// `--side-by-side ROUNDS`: one history per mark, each under
/// `DATA/SINK-history-MARK` and made up to its mark (kept from an earlier
/// invocation with `--reuse yes`), then `ROUNDS` rounds in which every
/// history makes one more run, in an order that turns from round to round.
/// The runs compared are thus made in the same minutes, and a machine whose
/// speed drifts (a busy neighbour, CPU steal) moves every mark alike.
fn side_by_side(
    runtime: &tokio::runtime::Runtime,
    settings: &RunSettings,
    sink: &str,
    data: &Path,
    marks: &[usize],
    rounds: usize,
    reuse: bool,
) {
    let mut works = Vec::with_capacity(marks.len());
    let mut made = Vec::with_capacity(marks.len());
    for &mark in marks {
        let work = data.join(format!("{sink}-history-{mark}"));
        let count = work.join("runs-made");
        let mut runs = match std::fs::read_to_string(&count) {
            Ok(text) if reuse => text.trim().parse().unwrap(),
            _ => {
                let _ = std::fs::remove_dir_all(&work);
                0
            }
        };
        std::fs::create_dir_all(&work).unwrap();
        let work = std::fs::canonicalize(&work).unwrap();
        while runs < mark {
            settings.make_run(runtime, sink, &work, runs);
            runs += 1;
            if runs % 100 == 0 || runs == mark {
                std::fs::write(&count, runs.to_string()).unwrap();
                eprintln!("{sink}: history {mark}: {runs} runs");
            }
        }
        works.push(work);
        made.push(runs);
    }
    let mut seconds = vec![Vec::with_capacity(rounds); marks.len()];
    let mut last_reports = vec![None; marks.len()];
    for round in 0..rounds {
        for turn in 0..marks.len() {
            let i = (round + turn) % marks.len();
            let (elapsed, report) = settings.make_run(runtime, sink, &works[i], made[i]);
            made[i] += 1;
            std::fs::write(works[i].join("runs-made"), made[i].to_string()).unwrap();
            seconds[i].push(elapsed);
            last_reports[i] = Some(report);
        }
    }
    println!();
    println!(
        "{sink}: {rounds} rounds, one run on each history per round, in turns; {} new rows a run",
        settings.rows
    );
    println!();
    println!("| sink | runs before | median s | min s | max s | vs first | checkpointed keys | store objects | table metadata objects |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut first_median = None;
    for (i, mark) in marks.iter().enumerate() {
        let mut times = seconds[i].clone();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let first = *first_median.get_or_insert(median);
        let report: &RunReport = last_reports[i].as_ref().unwrap();
        println!(
            "| {sink} | {mark} to {} | {median:.3} | {:.3} | {:.3} | {:.2}x | {} | {} | {} |",
            mark + rounds - 1,
            times[0],
            times[times.len() - 1],
            median / first,
            report.read.checkpointed_keys,
            files_below(&works[i].join("checkpoints"), &|_| true),
            table_metadata_objects(sink, &works[i]),
        );
    }
}

/// One pipeline run over `source` into the sink's table under `work`.
async fn one_run(sink: &str, work: &Path, source: &Path) -> RunReport {
    let url = format!("file://{}/", source.display());
    match sink {
        "iceberg" => {
            let (catalog, ident) = iceberg_table(work).await;
            let sink = IcebergSink::open(catalog, ident).await.unwrap();
            let mut writer = sink.writer(IcebergWriterOptions::default()).await.unwrap();
            run_pipeline(sink, &mut writer, work, &url).await
        }
        "delta" => {
            let sink = delta_table(work).await;
            let mut writer = sink.writer(DeltaWriterOptions::default()).await.unwrap();
            run_pipeline(sink, &mut writer, work, &url).await
        }
        other => panic!("unknown sink {other}: iceberg or delta"),
    }
}

async fn run_pipeline<S: CommitSink + TableFiles>(
    sink: S,
    writer: &mut dyn DataWriter,
    work: &Path,
    source: &str,
) -> RunReport {
    Pipeline::new(store(work).await, sink, "history")
        .run(
            open_source(source).await,
            &Transform::new().map(add_chars),
            writer,
        )
        .await
        .unwrap()
}

/// Expires the Iceberg table's snapshots but the latest `keep`.
async fn expire_snapshots(work: &Path, keep: usize) {
    let (catalog, ident) = iceberg_table(work).await;
    IcebergSink::open(catalog, ident)
        .await
        .unwrap()
        .expire_snapshots(SnapshotExpiry {
            older_than: std::time::Duration::ZERO,
            retain_last: keep,
        })
        .await
        .unwrap();
}

/// Sets the Delta table's `delta.logRetentionDuration`.
async fn set_log_retention(work: &Path, duration: &str) {
    delta_table(work)
        .await
        .table()
        .await
        .set_tbl_properties()
        .with_properties(
            [(
                "delta.logRetentionDuration".to_string(),
                duration.to_string(),
            )]
            .into(),
        )
        .await
        .unwrap();
}

/// The table's metadata objects: the Delta log's entries, or the Iceberg
/// table's metadata files, manifest lists and manifests.
fn table_metadata_objects(sink: &str, work: &Path) -> usize {
    match sink {
        "delta" => files_below(&work.join("table").join("_delta_log"), &|_| true),
        _ => files_below(&work.join("warehouse"), &|path| {
            path.components().any(|c| c.as_os_str() == "metadata")
        }),
    }
}

/// Files below `dir` (recursively) that `keep` accepts.
fn files_below(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|entry| entry.unwrap().path())
        .map(|path| {
            if path.is_dir() {
                files_below(&path, keep)
            } else {
                usize::from(keep(&path))
            }
        })
        .sum()
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::to_string).collect()
}
