//! End to end: the same checkpointed pipeline in tidemark and in Daft, and
//! each of them without checkpointing, on the same data, in one run.
//!
//! ```text
//! cargo bench --bench pipeline -- [--data DIR] [--rows N] [--grow N]
//!     [--sinks iceberg,delta] [--engines tidemark,tidemark-plain,daft,daft-plain]
//!     [--daft-python PATH] [--python PATH]
//! ```
//!
//! The pipeline reads Parquet files keyed on `id`, adds `chars = length(text)`
//! to every row and appends the rows to an Iceberg table (SQLite catalog,
//! local warehouse) or a Delta table (local directory). Each engine runs it
//! three times on a fresh table, each run in its own process:
//!
//! - `first`: over the first day's source (`--rows` rows in 10 files);
//! - `grown`: over the source grown by a second day (`--grow` new rows in 2
//!   more files): a checkpointed engine processes only the new rows;
//! - `again`: over the same grown source: nothing is new.
//!
//! Engines: `tidemark` (a `Pipeline`: lease, checkpointed read, map, write,
//! seal, idempotent commit, with the default checkpoint policy);
//! `tidemark-every-N` (the same, sealing a checkpoint every N rows) and
//! `tidemark-every-N-commit` (also committing after every seal); `tidemark-plain` (the same Parquet source, map and
//! table writers of iceberg-rust and delta-rs, one plain append per run, no
//! checkpoint: the cost of exactly-once is the difference); `daft` (Daft on
//! its Ray runner, `read_parquet(checkpoint=...)` then `write_iceberg` /
//! `write_deltalake` with an idempotent commit); `daft-plain` (the same Daft
//! pipeline without a checkpoint). After the three runs the table is read by
//! pyiceberg or the deltalake package and its rows and distinct ids printed:
//! a checkpointed engine holds every key once, a plain one holds repeats.
//!
//! Seconds are the pipeline's own (opening the source, store and table, then
//! reading, writing and committing); `process s` adds the start of the
//! process (and of Ray, for Daft).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/lake.rs"]
mod lake;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use futures::StreamExt;
use iceberg::spec::DataFileFormat;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter as _, IcebergWriterBuilder as _};
use iceberg::{Catalog, TableIdent};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tidemark::commit::CommitSink;
use tidemark::gc::TableFiles;
use tidemark::pipeline::{CheckpointPolicy, DataWriter, Pipeline};
use tidemark::source::{read_units, Source};

use lake::{add_chars, delta_table, iceberg_table, open_source, store, write_documents};
use support::{cores, BenchArgs};
use tidemark::transform::Transform;
use tidemark_delta::{DeltaSink, DeltaWriterOptions};
use tidemark_iceberg::{IcebergSink, IcebergWriterOptions};

const FIRST_DAY_FILES: u64 = 10;
const SECOND_DAY_FILES: u64 = 2;
/// Data files are closed at this size by every Rust writer here.
const TARGET_FILE_SIZE: usize = 128 * 1024 * 1024;
const PHASES: [(&str, &str); 3] = [("first", "day-1"), ("grown", "day-2"), ("again", "day-2")];

fn main() {
    let args = BenchArgs::from_env();
    if let Some(child_args) = args.child() {
        return child(child_args);
    }
    let flag = |name: &str, default: &str| args.flag(name, default);
    let data = PathBuf::from(flag("--data", "/tmp/tidemark-bench-pipeline"));
    let rows: u64 = flag("--rows", "2000000").parse().unwrap();
    let grow: u64 = flag("--grow", &(rows / 5).to_string()).parse().unwrap();
    let sinks: Vec<String> = list(&flag("--sinks", "iceberg,delta"));
    let engines: Vec<String> = list(&flag(
        "--engines",
        "tidemark,tidemark-plain,daft,daft-plain",
    ));
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let daft_python = flag(
        "--daft-python",
        &format!("{home}/.cache/tidemark/bench-venv/bin/python"),
    );
    let python = flag("--python", "python3");
    let benches = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
    let script = benches.join("pipeline.py");
    if engines.iter().any(|e| e.starts_with("daft")) {
        install_daft(
            Path::new(&daft_python),
            &benches.join("requirements-daft.txt"),
        );
    }

    prepare(&data, rows, grow);
    let source_rows = |day: &str| if day == "day-1" { rows } else { rows + grow };
    println!(
        "source: {rows} rows in {FIRST_DAY_FILES} files, grown by {grow} rows in {SECOND_DAY_FILES} files; machine: {} cores",
        cores()
    );
    println!();
    println!("| sink | engine | run | source rows | rows written | seconds | source rows/s | process s | vs tidemark | table rows / distinct ids |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    for sink in &sinks {
        let mut tidemark_seconds: HashMap<&str, f64> = HashMap::new();
        for engine in &engines {
            let work = data.join("runs").join(format!("{sink}-{engine}"));
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work).unwrap();
            let work = std::fs::canonicalize(&work).unwrap();
            for (i, (phase, day)) in PHASES.iter().enumerate() {
                let source = std::fs::canonicalize(data.join(day)).unwrap();
                let mut command = if engine.starts_with("daft") {
                    let mut c = Command::new(&daft_python);
                    c.arg(&script).args(["daft", "--sink", sink]);
                    c.arg("--work").arg(&work).arg("--source").arg(&source);
                    c.args(["--phase", phase]);
                    if engine == "daft-plain" {
                        c.arg("--no-checkpoint");
                    }
                    c
                } else {
                    let mut c = Command::new(std::env::current_exe().unwrap());
                    c.args(["--child", engine, sink]).arg(&work).arg(&source);
                    c
                };
                let started = Instant::now();
                let output = command.output().unwrap();
                let process_seconds = started.elapsed().as_secs_f64();
                let result = last_json_line(&output.stdout).filter(|_| output.status.success());
                let Some(result) = result else {
                    println!(
                        "| {sink} | {engine} | {phase} | {} | failed | | | | | |",
                        source_rows(day)
                    );
                    eprintln!("{engine} {sink} {phase} failed: {}", tail(&output.stderr));
                    break;
                };
                let seconds = result["seconds"].as_f64().unwrap();
                if engine == "tidemark" {
                    tidemark_seconds.insert(phase, seconds);
                }
                let relative = tidemark_seconds
                    .get(phase)
                    .map_or(String::new(), |t| format!("{:.2}x", seconds / t));
                let check = if i + 1 == PHASES.len() {
                    check_table(&python, &script, sink, &work)
                } else {
                    String::new()
                };
                println!(
                    "| {sink} | {engine} | {phase} | {} | {} | {seconds:.2} | {} | {process_seconds:.2} | {relative} | {check} |",
                    source_rows(day),
                    result["rows_written"],
                    per_second(source_rows(day), seconds),
                );
            }
        }
    }
}

/// Makes the virtual environment of `python` with Daft if it has none.
fn install_daft(python: &Path, requirements: &Path) {
    if python.exists() {
        return;
    }
    let venv = python.parent().and_then(Path::parent).unwrap();
    eprintln!("installing Daft into {}", venv.display());
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .unwrap();
    assert!(made.success(), "python3 -m venv {}", venv.display());
    let installed = Command::new(python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(requirements)
        .status()
        .unwrap();
    assert!(
        installed.success(),
        "pip install -r {}",
        requirements.display()
    );
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::to_string).collect()
}

fn per_second(rows: u64, seconds: f64) -> String {
    format!("{:.2} M", rows as f64 / seconds / 1e6)
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn last_json_line(stdout: &[u8]) -> Option<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line.trim()).ok())
}

/// Reads the table with pyiceberg or the deltalake package.
fn check_table(python: &str, script: &Path, sink: &str, work: &Path) -> String {
    let output = Command::new(python)
        .arg(script)
        .args(["check", "--sink", sink])
        .arg("--work")
        .arg(work)
        .output()
        .unwrap();
    match last_json_line(&output.stdout) {
        Some(v) => format!("{} / {}", v["rows"], v["distinct"]),
        None => format!("check failed: {}", tail(&output.stderr)),
    }
}

/// Writes `day-1/` (the first day's files) and `day-2/` (links to them plus
/// the second day's files) once.
fn prepare(data: &Path, rows: u64, grow: u64) {
    let marker = data.join(format!("prepared-{rows}-{grow}"));
    if marker.exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data.join("day-1")).unwrap();
    std::fs::create_dir_all(data.join("day-2")).unwrap();
    let per_file = rows.div_ceil(FIRST_DAY_FILES);
    for f in 0..FIRST_DAY_FILES {
        let ids = (f * per_file).min(rows)..((f + 1) * per_file).min(rows);
        let name = format!("part-{f:03}.parquet");
        write_documents(&data.join("day-1").join(&name), ids);
        std::fs::hard_link(
            data.join("day-1").join(&name),
            data.join("day-2").join(&name),
        )
        .unwrap();
    }
    let per_file = grow.div_ceil(SECOND_DAY_FILES);
    for f in 0..SECOND_DAY_FILES {
        let start = rows + f * per_file;
        let ids = start.min(rows + grow)..(start + per_file).min(rows + grow);
        let name = format!("part-{:03}.parquet", FIRST_DAY_FILES + f);
        write_documents(&data.join("day-2").join(name), ids);
    }
    std::fs::write(marker, b"").unwrap();
}

/// `--child ENGINE SINK WORK SOURCE`: one run, one JSON line on stdout.
fn child(args: &[String]) {
    let [engine, sink, work, source] = args else {
        panic!("--child ENGINE SINK WORK SOURCE");
    };
    let work = PathBuf::from(work);
    let source_url = format!("file://{source}/");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        match (engine.as_str(), sink.as_str()) {
            (checkpointed, "iceberg") if checkpoint_policy(checkpointed).is_some() => {
                let policy = checkpoint_policy(checkpointed).unwrap();
                let (catalog, ident) = iceberg_table(&work).await;
                let started = Instant::now();
                let sink = IcebergSink::open(catalog, ident).await.unwrap();
                let mut writer = sink.writer(IcebergWriterOptions::default()).await.unwrap();
                let rows = run_checkpointed(sink, &mut writer, &work, &source_url, policy).await;
                (started.elapsed().as_secs_f64(), rows)
            }
            (checkpointed, "delta") if checkpoint_policy(checkpointed).is_some() => {
                let policy = checkpoint_policy(checkpointed).unwrap();
                let url = delta_table(&work).await.url().clone();
                let started = Instant::now();
                let sink = DeltaSink::open(url, HashMap::new()).await.unwrap();
                let mut writer = sink.writer(DeltaWriterOptions::default()).await.unwrap();
                let rows = run_checkpointed(sink, &mut writer, &work, &source_url, policy).await;
                (started.elapsed().as_secs_f64(), rows)
            }
            ("tidemark-plain", "iceberg") => {
                let (catalog, ident) = iceberg_table(&work).await;
                let started = Instant::now();
                let rows = plain_iceberg_append(catalog, &ident, &source_url).await;
                (started.elapsed().as_secs_f64(), rows)
            }
            ("tidemark-plain", "delta") => {
                let url = delta_table(&work).await.url().clone();
                let started = Instant::now();
                let rows = plain_delta_append(url, &source_url).await;
                (started.elapsed().as_secs_f64(), rows)
            }
            other => panic!("unknown engine and sink {other:?}"),
        }
    });
    println!(
        "{}",
        serde_json::json!({ "seconds": result.0, "rows_written": result.1 })
    );
}

/// The checkpoint policy of a tidemark engine: `tidemark` runs the default
/// (a seal a minute, a commit every 5 minutes and at the end);
/// `tidemark-every-N` seals every N rows and commits at the end;
/// `tidemark-every-N-commit` also commits after every seal.
fn checkpoint_policy(engine: &str) -> Option<CheckpointPolicy> {
    if engine == "tidemark" {
        return Some(CheckpointPolicy::default());
    }
    let rest = engine.strip_prefix("tidemark-every-")?;
    let (rows, commit_every_seal) = match rest.strip_suffix("-commit") {
        Some(rows) => (rows, true),
        None => (rest, false),
    };
    Some(CheckpointPolicy {
        rows: Some(rows.parse().ok()?),
        commit_interval: if commit_every_seal {
            std::time::Duration::ZERO
        } else {
            CheckpointPolicy::default().commit_interval
        },
        ..Default::default()
    })
}

/// One tidemark pipeline run into `sink` through `writer`; the rows written.
async fn run_checkpointed<S: CommitSink + TableFiles>(
    sink: S,
    writer: &mut dyn DataWriter,
    work: &Path,
    source_url: &str,
    policy: CheckpointPolicy,
) -> u64 {
    let pipeline = Pipeline::new(store(work).await, sink, "bench").with_checkpoint_policy(policy);
    let transform = Transform::new().map(add_chars);
    let report = pipeline
        .run(open_source(source_url).await, &transform, writer)
        .await
        .unwrap();
    report.rows_written
}

/// Every source row through the map, as a stream of batches.
fn mapped_rows(source: Arc<dyn Source>) -> impl futures::Stream<Item = RecordBatch> {
    let units = (0..source.units().len()).collect();
    read_units(source, units, None, 2).map(|item| add_chars(item.unwrap().1).unwrap())
}

/// iceberg-rust's own writers and one fast append, no checkpoint.
async fn plain_iceberg_append(catalog: Arc<dyn Catalog>, ident: &TableIdent, url: &str) -> u64 {
    let table = catalog.load_table(ident).await.unwrap();
    let metadata = table.metadata();
    let parquet = ParquetWriterBuilder::new(
        WriterProperties::default(),
        metadata.current_schema().clone(),
    );
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        TARGET_FILE_SIZE,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata).unwrap(),
        DefaultFileNameGenerator::new(
            "part".into(),
            Some(uuid::Uuid::now_v7().to_string()),
            DataFileFormat::Parquet,
        ),
    );
    let mut writer = DataFileWriterBuilder::new(rolling)
        .build(None)
        .await
        .unwrap();
    let arrow_schema =
        Arc::new(iceberg::arrow::schema_to_arrow_schema(metadata.current_schema()).unwrap());
    let mut rows = 0;
    let mut batches = Box::pin(mapped_rows(open_source(url).await));
    while let Some(batch) = batches.next().await {
        rows += batch.num_rows() as u64;
        // iceberg's writer wants its field ids on the columns.
        let batch = RecordBatch::try_new(arrow_schema.clone(), batch.columns().to_vec()).unwrap();
        writer.write(batch).await.unwrap();
    }
    let files = writer.close().await.unwrap();
    let tx = Transaction::new(&table);
    let tx = tx.fast_append().add_data_files(files).apply(tx).unwrap();
    tx.commit(catalog.as_ref()).await.unwrap();
    rows
}

/// delta-rs's record batch writer and one commit, no checkpoint.
async fn plain_delta_append(url: url::Url, source: &str) -> u64 {
    let table = deltalake::open_table(url).await.unwrap();
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = RecordBatchWriter::for_table(&table)
        .unwrap()
        .with_writer_properties(properties);
    let mut rows = 0;
    let mut adds = Vec::new();
    let mut batches = Box::pin(mapped_rows(open_source(source).await));
    while let Some(batch) = batches.next().await {
        rows += batch.num_rows() as u64;
        writer.write(batch).await.unwrap();
        if writer.buffer_len() >= TARGET_FILE_SIZE {
            adds.extend(writer.flush().await.unwrap());
        }
    }
    adds.extend(writer.flush().await.unwrap());
    let snapshot = table.snapshot().unwrap();
    deltalake::kernel::transaction::CommitBuilder::default()
        .with_actions(
            adds.into_iter()
                .map(deltalake::kernel::Action::Add)
                .collect(),
        )
        .build(
            Some(snapshot),
            table.log_store(),
            deltalake::protocol::DeltaOperation::Write {
                mode: deltalake::protocol::SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .unwrap();
    rows
}
