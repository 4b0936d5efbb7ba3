//! The checkpointed read against the anti-join of DataFusion, DuckDB and
//! polars, on the same Parquet files, case by case.
//!
//! ```text
//! cargo bench --bench anti_join -- [--data DIR] [--rows N] [--keys N,N,...]
//!     [--types int64,int64-scattered,utf8,composite]
//!     [--cases first,overlap,overlap90,rerun,grown1,grown10] [--python PATH]
//! ```
//!
//! Every engine answers one question: the source rows, with every column,
//! whose key is not checkpointed. Each runs in its own child process (so peak
//! memory is its own) and reads the same files: the source and the key files of
//! the tidemark store.
//!
//! Cases:
//! - `first`: nothing is checkpointed; beside the engines, a plain scan of the
//!   same columns (DataFusion) is the floor.
//! - `overlap`: `--keys` keys are checkpointed by a run over other files; the
//!   source (`--rows` rows) overlaps them in part (half the source, or all the
//!   keys when there are fewer).
//! - `overlap90`: the same, with nine in ten of the source's rows
//!   checkpointed (all the keys when there are fewer).
//! - `rerun`: a tidemark run read the whole source before; nothing is new.
//! - `grown1`, `grown10`: that source, grown by a file of 1% or 10% new rows.
//!
//! Key types: `int64` (ids handed out in sequence, in scattered order),
//! `int64-scattered` (random 64-bit values), `utf8` (UUID strings) and
//! `composite` (a utf8 tenant and an int64 id).
//!
//! tidemark runs as a pipeline runs it: keys repeated within the source are
//! dropped, and the keys passed are written as staged key files, which the
//! others do not do, within a memory budget of 2 GiB (every byte of its
//! filter counted; the others have none). `tidemark-pass-all` leaves out the repeated-key check
//! (what the others compute); `tidemark-partitioned` runs with a 1-byte memory
//! budget, so its filter spills hash partitions to disk.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use tidemark::read::{CheckpointedRead, DuplicatePolicy, ReadOptions};
use tidemark::source::{ParquetSource, ParquetSourceOptions};
use tidemark::store::{CheckpointStore, KeyColumn, KeySchema};

use support::{cores, BenchArgs};

/// Files of a source of `--rows` rows.
const FILES: u64 = 10;
/// A multiplier coprime to every power of ten: scatters keys over their range.
const SCATTER: u64 = 7_777_777;
/// Tenants of the composite key.
const TENANTS: u64 = 1000;

const ENGINES: [&str; 7] = [
    "tidemark",
    "tidemark-pass-all",
    "tidemark-partitioned",
    "datafusion",
    "duckdb",
    "polars",
    "scan",
];
const PEERS: [&str; 3] = ["datafusion", "duckdb", "polars"];

fn main() {
    let args = BenchArgs::from_env();
    if let Some(child_args) = args.child() {
        return child(child_args);
    }
    let flag = |name: &str, default: &str| args.flag(name, default);
    let data = PathBuf::from(flag("--data", "/tmp/tidemark-bench"));
    let rows: u64 = flag("--rows", "10000000").parse().unwrap();
    let list = |name: &str, default: &str| -> Vec<String> {
        flag(name, default).split(',').map(str::to_string).collect()
    };
    let key_counts: Vec<u64> = list("--keys", "1000000,10000000")
        .iter()
        .map(|k| k.parse().unwrap())
        .collect();
    let types = list("--types", "int64,int64-scattered,utf8,composite");
    let cases = list("--cases", "first,overlap,overlap90,rerun,grown1,grown10");
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = format!("{home}/.cache/tidemark/venv/bin/python");
    let default_python = if Path::new(&venv).exists() {
        venv
    } else {
        "python3".into()
    };
    let python = flag("--python", &default_python);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    println!("source rows: {rows}; machine: {} cores", cores());
    println!();
    println!("| key type | case | checkpointed keys | engine | rows out | seconds | source rows/s | peak RSS (MiB) | time vs tidemark |");
    println!("|---|---|---:|---|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for key_type in &types {
        for case_name in &cases {
            let counts: Vec<Option<u64>> = match case_name.as_str() {
                "overlap" | "overlap90" => key_counts.iter().copied().map(Some).collect(),
                _ => vec![None],
            };
            for keys in counts {
                let case = runtime.block_on(prepare(&data, key_type, case_name, rows, keys));
                let mut results: Vec<(&str, Measured)> = Vec::new();
                for engine in ENGINES {
                    if engine == "tidemark-partitioned" && !case_name.starts_with("overlap") {
                        continue;
                    }
                    let Some(result) = run_engine(engine, &case, &python) else {
                        println!(
                            "| {key_type} | {case_name} | {} | {engine} | failed | | | | |",
                            case.checkpointed
                        );
                        continue;
                    };
                    let tidemark = results
                        .iter()
                        .find(|(e, _)| *e == "tidemark")
                        .map(|(_, m)| m.seconds);
                    println!(
                        "| {key_type} | {case_name} | {} | {engine} | {} | {:.2} | {:.1} M | {} | {} |",
                        case.checkpointed,
                        result.rows,
                        result.seconds,
                        case.source_rows as f64 / result.seconds / 1e6,
                        result.peak_rss / (1 << 20),
                        tidemark.map_or("".into(), |t| format!("{:.2}x", result.seconds / t)),
                    );
                    results.push((engine, result));
                }
                summary.push(Summary::of(key_type, case_name, &case, &results));
            }
        }
    }
    println!();
    println!("| key type | case | checkpointed keys | tidemark s | fastest peer | peer s | peer time / tidemark time | plain scan s | tidemark / scan |");
    println!("|---|---|---:|---:|---|---:|---:|---:|---:|");
    for s in summary {
        println!("{s}");
    }
}

/// One case's line of the summary table.
struct Summary(String);

impl Summary {
    fn of(key_type: &str, case_name: &str, case: &Case, results: &[(&str, Measured)]) -> Self {
        let seconds = |engine: &str| {
            results
                .iter()
                .find(|(e, _)| *e == engine)
                .map(|(_, m)| m.seconds)
        };
        let tidemark = seconds("tidemark");
        let peer = PEERS
            .iter()
            .filter_map(|p| seconds(p).map(|s| (*p, s)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let scan = seconds("scan");
        let fmt = |v: Option<f64>| v.map_or("".into(), |v| format!("{v:.2}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}x", a / b),
            _ => "".into(),
        };
        Summary(format!(
            "| {key_type} | {case_name} | {} | {} | {} | {} | {} | {} | {} |",
            case.checkpointed,
            fmt(tidemark),
            peer.map_or("", |p| p.0),
            fmt(peer.map(|p| p.1)),
            ratio(peer.map(|p| p.1), tidemark),
            fmt(scan),
            ratio(tidemark, scan),
        ))
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The files of one case.
struct Case {
    key_type: String,
    /// Source directories, read as one source.
    source_dirs: Vec<PathBuf>,
    source_rows: u64,
    store_dir: PathBuf,
    /// The store's key files, for the other engines.
    keys_dir: PathBuf,
    checkpointed: u64,
}

struct Measured {
    rows: u64,
    seconds: f64,
    peak_rss: u64,
}

/// The key columns of `key_type`.
fn key_columns(key_type: &str) -> Vec<KeyColumn> {
    match key_type {
        "int64" | "int64-scattered" => vec![KeyColumn::new("id", DataType::Int64)],
        "utf8" => vec![KeyColumn::new("id", DataType::Utf8)],
        _ => vec![
            KeyColumn::new("tenant", DataType::Utf8),
            KeyColumn::new("id", DataType::Int64),
        ],
    }
}

/// The key columns holding key `k` for each of `keys`.
fn key_arrays(key_type: &str, keys: &[u64]) -> Vec<ArrayRef> {
    match key_type {
        "int64" => vec![Arc::new(Int64Array::from_iter_values(
            keys.iter().map(|&k| k as i64),
        ))],
        "int64-scattered" => vec![Arc::new(Int64Array::from_iter_values(
            keys.iter().map(|&k| splitmix(k) as i64),
        ))],
        "utf8" => vec![Arc::new(StringArray::from_iter_values(keys.iter().map(
            |&k| {
                uuid::Uuid::from_u64_pair(splitmix(k), splitmix(k ^ 0x5555_5555_5555_5555))
                    .to_string()
            },
        )))],
        _ => vec![
            Arc::new(StringArray::from_iter_values(
                keys.iter().map(|&k| format!("tenant-{:04}", k % TENANTS)),
            )),
            Arc::new(Int64Array::from_iter_values(
                keys.iter().map(|&k| (k / TENANTS) as i64),
            )),
        ],
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Writes, once, `files` Parquet files of keys `start .. start + rows` (in
/// scattered order) with an int64 payload.
fn write_source(dir: &Path, key_type: &str, start: u64, rows: u64, files: u64) {
    if dir.join("done").exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let per_file = rows / files;
    for f in 0..files {
        let range = f * per_file..(f + 1) * per_file;
        let keys: Vec<u64> = range
            .clone()
            .map(|i| start + (i * SCATTER) % rows)
            .collect();
        let mut columns: Vec<(String, ArrayRef)> = key_columns(key_type)
            .into_iter()
            .map(|c| c.name)
            .zip(key_arrays(key_type, &keys))
            .collect();
        let payload = Int64Array::from_iter_values(range.map(|i| i as i64 * 3));
        columns.push(("payload".into(), Arc::new(payload)));
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        write_parquet(&dir.join(format!("part-{f:03}.parquet")), &batch);
    }
    std::fs::write(dir.join("done"), "").unwrap();
}

async fn open_store(dir: &Path, key_type: &str) -> CheckpointStore {
    let schema = KeySchema::new(key_columns(key_type)).unwrap();
    let url = format!("file://{}", dir.display());
    CheckpointStore::open(&url, &HashMap::new(), schema)
        .await
        .unwrap()
}

/// Writes a case's files once.
async fn prepare(
    data: &Path,
    key_type: &str,
    case_name: &str,
    rows: u64,
    keys: Option<u64>,
) -> Case {
    let base = data.join(key_type);
    let base_source = base.join(format!("source-{rows}"));
    let (source_dirs, store_dir, checkpointed) = match case_name {
        "overlap" | "overlap90" => {
            let keys = keys.unwrap();
            // Half the source checkpointed, or nine in ten.
            let (name, checkpointed_rows) = match case_name {
                "overlap" => ("over", keys.min(rows) / 2),
                _ => ("over90", keys.min(rows * 9 / 10)),
            };
            let dir = base.join(format!("source-{rows}-{name}-{keys}"));
            write_source(&dir, key_type, keys - checkpointed_rows, rows, FILES);
            let store_dir = base.join(format!("store-{keys}"));
            if !store_dir.join("done").exists() {
                let _ = std::fs::remove_dir_all(&store_dir);
                std::fs::create_dir_all(&store_dir).unwrap();
                let store = open_store(&store_dir, key_type).await;
                let mut writer = store.begin().await.unwrap();
                let chunk = 1_000_000;
                let mut at = 0;
                while at < keys {
                    let end = (at + chunk).min(keys);
                    let batch: Vec<u64> = (at..end).map(|j| (j * SCATTER) % keys).collect();
                    writer
                        .stage_keys(&key_arrays(key_type, &batch))
                        .await
                        .unwrap();
                    at = end;
                }
                writer.seal().await.unwrap();
                std::fs::write(store_dir.join("done"), "").unwrap();
            }
            (vec![dir], store_dir, keys)
        }
        "first" => {
            write_source(&base_source, key_type, 0, rows, FILES);
            let store_dir = base.join("store-empty");
            if !store_dir.join("done").exists() {
                let _ = std::fs::remove_dir_all(&store_dir);
                std::fs::create_dir_all(&store_dir).unwrap();
                let store = open_store(&store_dir, key_type).await;
                // One sealed checkpoint with an empty key file, so that the
                // other engines have a key file to join with.
                let mut writer = store.begin().await.unwrap();
                let empty: Vec<ArrayRef> = key_arrays(key_type, &[]).into_iter().collect();
                let schema = store.key_schema().arrow_schema().clone();
                let batch = RecordBatch::try_new(schema, empty).unwrap();
                let dir = keys_dir_of(&store_dir, writer.id().to_string(), writer.writer_id());
                std::fs::create_dir_all(&dir).unwrap();
                write_parquet(&dir.join("empty.parquet"), &batch);
                writer.seal().await.unwrap();
                std::fs::write(store_dir.join("done"), "").unwrap();
            }
            (vec![base_source], store_dir, 0)
        }
        "rerun" | "grown1" | "grown10" => {
            write_source(&base_source, key_type, 0, rows, FILES);
            let store_dir = base.join(format!("store-read-{rows}"));
            if !store_dir.join("done").exists() {
                let _ = std::fs::remove_dir_all(&store_dir);
                std::fs::create_dir_all(&store_dir).unwrap();
                let store = open_store(&store_dir, key_type).await;
                // The earlier run: a checkpointed read of the whole source,
                // sealed with the units it read to their end.
                let source = ParquetSource::open(
                    &format!("file://{}", base_source.display()),
                    &ParquetSourceOptions::default(),
                )
                .await
                .unwrap();
                let mut read =
                    CheckpointedRead::open(&store, Arc::new(source), ReadOptions::default())
                        .await
                        .unwrap();
                let mut writer = store.begin().await.unwrap();
                while read.next_batch(&mut writer).await.unwrap().is_some() {}
                writer.record_finished_units(read.take_finished_units());
                writer.seal().await.unwrap();
                std::fs::write(store_dir.join("done"), "").unwrap();
            }
            let mut dirs = vec![base_source];
            let new_rows = match case_name {
                "grown1" => rows / 100,
                "grown10" => rows / 10,
                _ => 0,
            };
            if new_rows > 0 {
                let dir = base.join(format!("new-{new_rows}-after-{rows}"));
                write_source(&dir, key_type, rows, new_rows, 1);
                dirs.push(dir);
            }
            (dirs, store_dir, rows)
        }
        other => panic!("unknown case {other}"),
    };
    let source_rows = rows
        + match case_name {
            "grown1" => rows / 100,
            "grown10" => rows / 10,
            _ => 0,
        };
    let keys_dir = find_keys_dir(&store_dir.join("staging"));
    Case {
        key_type: key_type.to_string(),
        source_dirs,
        source_rows,
        store_dir,
        keys_dir,
        checkpointed,
    }
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

fn keys_dir_of(store_dir: &Path, checkpoint: String, writer: uuid::Uuid) -> PathBuf {
    store_dir
        .join("staging")
        .join(checkpoint)
        .join(writer.to_string())
        .join("keys")
}

/// `staging/{checkpoint}/{writer}/keys` of the one sealed checkpoint.
fn find_keys_dir(staging: &Path) -> PathBuf {
    let checkpoint = std::fs::read_dir(staging)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let writer = std::fs::read_dir(&checkpoint)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    writer.join("keys")
}

fn run_engine(engine: &str, case: &Case, python: &str) -> Option<Measured> {
    let sources: Vec<String> = case
        .source_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let sources = sources.join(",");
    let keys = case.keys_dir.display().to_string();
    let key_names: Vec<String> = key_columns(&case.key_type)
        .into_iter()
        .map(|c| c.name)
        .collect();
    let key_names = key_names.join(",");
    let output = match engine {
        "duckdb" | "polars" => Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/anti_join.py"))
            .args([engine, &sources, &keys, &key_names])
            .output(),
        _ => Command::new(std::env::current_exe().unwrap())
            .args(["--child", engine, &case.key_type, &sources])
            .arg(&case.store_dir)
            .arg(&keys)
            .output(),
    }
    .ok()?;
    if !output.status.success() {
        eprintln!(
            "{engine} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let mut fields = line.split_whitespace();
    let rows = fields.next()?.parse().ok()?;
    let seconds = fields.next()?.parse().ok()?;
    let peak_rss = fields.next()?.parse().ok()?;
    Some(Measured {
        rows,
        seconds,
        peak_rss,
    })
}

/// Runs one engine and prints `rows seconds peak_rss_bytes`.
fn child(args: &[String]) {
    let (engine, key_type, sources, store_dir, keys_dir) =
        (&args[0], &args[1], &args[2], &args[3], &args[4]);
    let sources: Vec<&str> = sources.split(',').collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let rows = runtime.block_on(async {
        match engine.as_str() {
            "tidemark" | "tidemark-pass-all" | "tidemark-partitioned" => {
                let store = open_store(Path::new(store_dir), key_type).await;
                let urls: Vec<String> = sources.iter().map(|s| format!("file://{s}")).collect();
                let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
                let source = ParquetSource::open_many(&urls, &ParquetSourceOptions::default())
                    .await
                    .unwrap();
                // The budget a user sets for 100 million keys: 2 GiB.
                let mut options = ReadOptions {
                    memory_budget_bytes: 2 << 30,
                    ..ReadOptions::default()
                };
                match engine.as_str() {
                    // What the other engines do: no check for keys repeated
                    // within the source.
                    "tidemark-pass-all" => options.duplicates = DuplicatePolicy::PassAll,
                    "tidemark-partitioned" => options.memory_budget_bytes = 1,
                    _ => {}
                }
                let mut read = CheckpointedRead::open(&store, Arc::new(source), options)
                    .await
                    .unwrap();
                let mut writer = store.begin().await.unwrap();
                let mut rows = 0;
                while let Some(batch) = read.next_batch(&mut writer).await.unwrap() {
                    rows += batch.num_rows() as u64;
                }
                writer.flush_keys().await.unwrap();
                eprintln!("{:?}", read.stats());
                // Leave the store as it was for the next engine: drop the staged run.
                let staged = Path::new(store_dir)
                    .join("staging")
                    .join(writer.id().to_string());
                std::fs::remove_dir_all(staged).unwrap();
                rows
            }
            "datafusion" | "scan" => {
                use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
                let ctx = SessionContext::new_with_config(
                    SessionConfig::new().with_target_partitions(cores()),
                );
                let mut parts = Vec::new();
                for (i, source) in sources.iter().enumerate() {
                    ctx.register_parquet(format!("s{i}"), *source, ParquetReadOptions::default())
                        .await
                        .unwrap();
                    parts.push(format!("SELECT * FROM s{i}"));
                }
                ctx.sql(&format!("CREATE VIEW s AS {}", parts.join(" UNION ALL ")))
                    .await
                    .unwrap();
                ctx.register_parquet("k", keys_dir, ParquetReadOptions::default())
                    .await
                    .unwrap();
                let on: Vec<String> = key_columns(key_type)
                    .iter()
                    .map(|c| format!("s.{0} = k.{0}", c.name))
                    .collect();
                let query = match engine.as_str() {
                    "scan" => "SELECT * FROM s".to_string(),
                    _ => format!("SELECT s.* FROM s LEFT ANTI JOIN k ON {}", on.join(" AND ")),
                };
                let frame = ctx.sql(&query).await.unwrap();
                let mut stream = frame.execute_stream().await.unwrap();
                let mut rows = 0;
                while let Some(batch) = stream.next().await {
                    rows += batch.unwrap().num_rows() as u64;
                }
                rows
            }
            other => panic!("unknown engine {other}"),
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    println!("{rows} {seconds:.3} {}", peak_rss());
}

/// This process's peak resident set, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
