//! A run across machines against one process, on this machine: the same
//! pipeline as `tidemark run` in one process, as two `--shard` processes at
//! once, and as `tidemark run --workers` on one and on two `tidemark worker`
//! processes.
//!
//! ```text
//! cargo bench -p tidemark-cli --bench distributed -- [--rows N] [--files N]
//!     [--sinks iceberg,delta] [--modes single,shards-2,workers-1,workers-2,daft]
//!     [--daft-python PATH]
//! ```
//!
//! The pipeline reads `--files` Parquet files (`--rows` rows in all, keyed on
//! `id`), adds `chars = length(text)` with `--sql`, and appends to an Iceberg
//! table (SQLite catalog, local warehouse) or a Delta table (local
//! directory), created by the first run. Each mode runs twice on a fresh
//! table and store: `first` (every row is new) and `again` (nothing is). The
//! seconds are the whole command's, from its start to its exit (the workers
//! are started before and serve both runs). Every run's report must account
//! for every row, or the bench fails.
//!
//! `daft` runs the same pipeline in Daft on its Ray runner
//! (`benches/pipeline.py`, the end-to-end benchmark's: a checkpointed read on
//! `id`, `chars = length(text)`, an idempotent append) with the Python of
//! `--daft-python` (default: the end-to-end benchmark's virtual environment,
//! `~/.cache/tidemark/bench-venv`; `cargo bench --bench pipeline -- --engines
//! daft` makes it). Its command's seconds include starting Ray; `own s` is
//! Daft's pipeline alone, as it reports it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

#[path = "../tests/worker/mod.rs"]
mod worker;
use worker::{run_totals, WorkerProcess};

const SQL: &str = "SELECT id, text, length(text) AS chars FROM source";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let rows: u64 = flag("--rows", "2000000").parse().unwrap();
    let files: u64 = flag("--files", "10").parse().unwrap();
    let sinks = list(&flag("--sinks", "iceberg,delta"));
    let modes = list(&flag("--modes", "single,shards-2,workers-1,workers-2,daft"));
    let home = std::env::var("HOME").unwrap_or_default();
    let daft_python = flag(
        "--daft-python",
        &format!("{home}/.cache/tidemark/bench-venv/bin/python"),
    );
    let data = tempfile::tempdir().unwrap();
    let source = data.path().join("source");
    write_source(&source, rows, files);
    println!(
        "{rows} rows in {files} Parquet files, {} cores; seconds of the whole command",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("| sink | mode | run | seconds | rows written | rows/s | vs single | own s |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for sink in &sinks {
        let mut single = [None, None];
        for mode in &modes {
            let work = data.path().join(format!("{sink}-{mode}"));
            std::fs::create_dir_all(&work).unwrap();
            let workers: Vec<WorkerProcess> = match mode.strip_prefix("workers-") {
                Some(n) => (0..n.parse::<usize>().unwrap())
                    .map(|_| WorkerProcess::start(&Default::default()))
                    .collect(),
                None => Vec::new(),
            };
            if mode == "daft" && !Path::new(&daft_python).exists() {
                eprintln!("daft: no {daft_python}; skipped (see --daft-python)");
                continue;
            }
            for (phase, name) in ["first", "again"].into_iter().enumerate() {
                let started = Instant::now();
                let (written, own) = if mode == "daft" {
                    run_daft(&daft_python, sink, &work, &source, name)
                } else {
                    (run(mode, sink, &work, &source, &workers), None)
                };
                let seconds = started.elapsed().as_secs_f64();
                let expected = if phase == 0 { rows } else { 0 };
                assert_eq!(written, expected, "{sink} {mode} {name}: rows written");
                if mode == "single" {
                    single[phase] = Some(seconds);
                }
                let relative = single[phase]
                    .map(|s| format!("{:.2}x", s / seconds))
                    .unwrap_or_default();
                println!(
                    "| {sink} | {mode} | {name} | {seconds:.2} | {written} | {} | {relative} | {} |",
                    if written > 0 {
                        format!("{:.2} M", written as f64 / seconds / 1e6)
                    } else {
                        String::new()
                    },
                    own.map(|s| format!("{s:.2}")).unwrap_or_default()
                );
            }
        }
    }
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::to_string).collect()
}

/// `--files` files of ids 0..rows, each row's text about 60 characters.
fn write_source(dir: &Path, rows: u64, files: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let per_file = rows.div_ceil(files);
    for n in 0..files {
        let ids: Vec<i64> = (n * per_file..((n + 1) * per_file).min(rows))
            .map(|i| i as i64)
            .collect();
        let file = std::fs::File::create(dir.join(format!("part-{n:03}.parquet"))).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        for chunk in ids.chunks(65_536) {
            let text: Vec<String> = chunk
                .iter()
                .map(|i| format!("document {i} about the tides of the northern sea"))
                .collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(chunk.to_vec())) as ArrayRef,
                    Arc::new(StringArray::from(text)),
                ],
            )
            .unwrap();
            writer.write(&batch).unwrap();
        }
        writer.close().unwrap();
    }
}

/// One `tidemark run` (or two, for `shards-2`) to its end; the rows written.
fn run(mode: &str, sink: &str, work: &Path, source: &Path, workers: &[WorkerProcess]) -> u64 {
    let command = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        command.args(["run", "--quiet", "--create", "--key", "id", "--sql", SQL]);
        command.args(["--pipeline", "bench", "--lease-ttl-secs", "5"]);
        command.arg("--store").arg(work.join("store"));
        command.args(["--sink", &sink_url(sink, work)]);
        command.arg("--source").arg(source);
        command.args(extra);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    };
    let outputs: Vec<String> = match mode {
        "single" => vec![output(command(&[]))],
        "shards-2" => {
            let children: Vec<Child> = ["0/2", "1/2"]
                .iter()
                .map(|shard| command(&["--shard", shard]).spawn().unwrap())
                .collect();
            children.into_iter().map(finish).collect()
        }
        _ => {
            let urls: Vec<&str> = workers.iter().map(|w| w.url.as_str()).collect();
            vec![output(command(&["--workers", &urls.join(",")]))]
        }
    };
    outputs.iter().map(|text| rows_written(text)).sum()
}

/// One run of the Daft pipeline: the rows it wrote and its own seconds.
fn run_daft(
    python: &str,
    sink: &str,
    work: &Path,
    source: &Path,
    phase: &str,
) -> (u64, Option<f64>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/pipeline.py");
    let output = Command::new(python)
        .arg(script)
        .args(["daft", "--sink", sink, "--phase", phase])
        .arg("--work")
        .arg(work)
        .arg("--source")
        .arg(source)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "daft failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
    let result: serde_json::Value = serde_json::from_str(last).unwrap();
    (
        result["rows_written"].as_u64().unwrap(),
        result["seconds"].as_f64(),
    )
}

fn sink_url(sink: &str, work: &Path) -> String {
    match sink {
        "iceberg" => format!(
            "iceberg+sqlite://{}?warehouse=file://{}#bench.docs",
            work.join("catalog.db").display(),
            work.join("warehouse").display()
        ),
        "delta" => format!("delta+file://{}", work.join("table").display()),
        other => panic!("unknown sink {other}"),
    }
}

fn output(mut command: Command) -> String {
    finish(command.spawn().unwrap())
}

fn finish(child: Child) -> String {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The rows a run's report says it wrote: `wrote N rows` in one process's,
/// the `rows_written` column of a distributed run's table.
fn rows_written(report: &str) -> u64 {
    if let Some(at) = report.find("wrote ") {
        return report[at + "wrote ".len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no row count in {report}"));
    }
    run_totals(report)["rows_written"]
}
