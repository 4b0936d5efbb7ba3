//! The checkpointed-read anti-join, side by side with DataFusion, DuckDB and
//! polars on the same Parquet data.
//!
//! ```text
//! cargo bench --bench anti_join -- [--data DIR] [--rows N] [--keys N,N,...] [--types int64,utf8]
//! ```
//!
//! For each key type and each count of checkpointed keys, every engine runs in
//! its own child process (so peak memory is its own) and reads the same files:
//! the source (`--rows` rows, key `id` plus a payload) and the key files of one
//! sealed tidemark checkpoint. Each engine returns the source rows whose key is
//! not checkpointed; the table shows rows/s over the source and peak RSS.
//! tidemark runs three ways: the default (1 GiB budget, keys repeated within
//! the source dropped), unbounded memory, and without the repeated-key check
//! (`DuplicatePolicy::PassAll`, which is what the other engines compute).
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
use tidemark::store::{CheckpointStore, KeySchema};

use support::{cores, BenchArgs};

const FILES: u64 = 10;
/// A multiplier coprime to every power of ten: scatters keys over their range.
const SCATTER: u64 = 7_777_777;

fn main() {
    let args = BenchArgs::from_env();
    if let Some(child_args) = args.child() {
        return child(child_args);
    }
    let flag = |name: &str, default: &str| args.flag(name, default);
    let data = PathBuf::from(flag("--data", "/tmp/tidemark-bench"));
    let rows: u64 = flag("--rows", "10000000").parse().unwrap();
    let key_counts: Vec<u64> = flag("--keys", "1000000,10000000,100000000")
        .split(',')
        .map(|k| k.parse().unwrap())
        .collect();
    let types: Vec<String> = flag("--types", "int64,utf8")
        .split(',')
        .map(str::to_string)
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    println!("source rows: {rows}; machine: {} cores", cores());
    println!();
    println!("| key type | checkpointed keys | engine | rows out | seconds | source rows/s | peak RSS (MiB) | time vs tidemark |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for key_type in &types {
        for &keys in &key_counts {
            let case = runtime.block_on(prepare(&data, key_type, rows, keys));
            let mut tidemark_seconds = None;
            for engine in [
                "tidemark",
                "tidemark-in-memory",
                "tidemark-pass-all",
                "datafusion",
                "duckdb",
                "polars",
            ] {
                let Some(result) = run_engine(engine, &case) else {
                    println!("| {key_type} | {keys} | {engine} | failed | | | | |");
                    continue;
                };
                if engine == "tidemark" {
                    tidemark_seconds = Some(result.seconds);
                }
                println!(
                    "| {key_type} | {keys} | {engine} | {} | {:.2} | {:.1} M | {} | {} |",
                    result.rows,
                    result.seconds,
                    rows as f64 / result.seconds / 1e6,
                    result.peak_rss / (1 << 20),
                    tidemark_seconds.map_or("".into(), |t| format!("{:.2}x", result.seconds / t)),
                );
            }
        }
    }
}

/// The files of one case.
struct Case {
    key_type: String,
    source_dir: PathBuf,
    store_dir: PathBuf,
    keys_dir: PathBuf,
}

struct Measured {
    rows: u64,
    seconds: f64,
    peak_rss: u64,
}

/// Key `k` as an int64 or a UUID-like string.
fn key_array(key_type: &str, keys: impl Iterator<Item = u64>) -> ArrayRef {
    match key_type {
        "int64" => Arc::new(Int64Array::from_iter_values(keys.map(|k| k as i64))),
        _ => Arc::new(StringArray::from_iter_values(keys.map(|k| {
            uuid::Uuid::from_u64_pair(splitmix(k), splitmix(k ^ 0x5555_5555_5555_5555)).to_string()
        }))),
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn key_data_type(key_type: &str) -> DataType {
    match key_type {
        "int64" => DataType::Int64,
        _ => DataType::Utf8,
    }
}

/// Writes the source and a store with `keys` checkpointed keys, once.
/// Checkpointed keys are `0..keys`; the source holds `rows` keys starting at
/// `keys - min(keys, rows) / 2`, so a part of it overlaps. Both are scattered.
async fn prepare(data: &Path, key_type: &str, rows: u64, keys: u64) -> Case {
    let base = data.join(key_type);
    let source_dir = base.join(format!("source-{rows}-over-{keys}"));
    let store_dir = base.join(format!("store-{keys}"));
    if !source_dir.join("done").exists() {
        let _ = std::fs::remove_dir_all(&source_dir);
        std::fs::create_dir_all(&source_dir).unwrap();
        let start = keys - keys.min(rows) / 2;
        let per_file = rows / FILES;
        for f in 0..FILES {
            let ids = (f * per_file..(f + 1) * per_file).map(|i| start + (i * SCATTER) % rows);
            let payload = Int64Array::from_iter_values(
                (f * per_file..(f + 1) * per_file).map(|i| i as i64 * 3),
            );
            let batch = RecordBatch::try_from_iter([
                ("id", key_array(key_type, ids)),
                ("payload", Arc::new(payload) as ArrayRef),
            ])
            .unwrap();
            write_parquet(&source_dir.join(format!("part-{f:03}.parquet")), &batch);
        }
        std::fs::write(source_dir.join("done"), "").unwrap();
    }
    if !store_dir.join("done").exists() {
        let _ = std::fs::remove_dir_all(&store_dir);
        std::fs::create_dir_all(&store_dir).unwrap();
        let schema = KeySchema::single("id", key_data_type(key_type)).unwrap();
        let url = format!("file://{}", store_dir.display());
        let store = CheckpointStore::open(&url, &HashMap::new(), schema)
            .await
            .unwrap();
        let mut writer = store.begin().await.unwrap();
        let chunk = 1_000_000;
        let mut at = 0;
        while at < keys {
            let end = (at + chunk).min(keys);
            let array = key_array(key_type, (at..end).map(|j| (j * SCATTER) % keys));
            writer.stage_keys(&[array]).await.unwrap();
            at = end;
        }
        writer.seal().await.unwrap();
        std::fs::write(store_dir.join("done"), "").unwrap();
    }
    let keys_dir = find_keys_dir(&store_dir.join("staging"));
    Case {
        key_type: key_type.to_string(),
        source_dir,
        store_dir,
        keys_dir,
    }
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
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

fn run_engine(engine: &str, case: &Case) -> Option<Measured> {
    let source = case.source_dir.display().to_string();
    let keys = case.keys_dir.display().to_string();
    let output = match engine {
        "duckdb" | "polars" => Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/anti_join.py"))
            .args([engine, &source, &keys])
            .output(),
        _ => Command::new(std::env::current_exe().unwrap())
            .args(["--child", engine, &case.key_type, &source])
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
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse::<f64>().ok().map(|v| v as u64))
        .collect();
    let seconds: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(Measured {
        rows: *fields.first()?,
        seconds,
        peak_rss: *fields.get(2)?,
    })
}

/// Runs one engine and prints `rows seconds peak_rss_bytes`.
fn child(args: &[String]) {
    let (engine, key_type, source, store_dir, keys_dir) =
        (&args[0], &args[1], &args[2], &args[3], &args[4]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let rows = runtime.block_on(async {
        match engine.as_str() {
            "tidemark" | "tidemark-in-memory" | "tidemark-pass-all" => {
                let schema = KeySchema::single("id", key_data_type(key_type)).unwrap();
                let url = format!("file://{store_dir}");
                let store = CheckpointStore::open(&url, &HashMap::new(), schema)
                    .await
                    .unwrap();
                let source = ParquetSource::open(
                    &format!("file://{source}"),
                    &ParquetSourceOptions::default(),
                )
                .await
                .unwrap();
                let mut options = ReadOptions::default();
                if engine == "tidemark-in-memory" {
                    options.memory_budget_bytes = usize::MAX;
                }
                if engine == "tidemark-pass-all" {
                    // What the other engines do: no check for keys repeated
                    // within the source.
                    options.duplicates = DuplicatePolicy::PassAll;
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
            "datafusion" => {
                use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
                let ctx = SessionContext::new_with_config(
                    SessionConfig::new().with_target_partitions(cores()),
                );
                ctx.register_parquet("s", source, ParquetReadOptions::default())
                    .await
                    .unwrap();
                ctx.register_parquet("k", keys_dir, ParquetReadOptions::default())
                    .await
                    .unwrap();
                let frame = ctx
                    .sql("SELECT s.* FROM s LEFT ANTI JOIN k ON s.id = k.id")
                    .await
                    .unwrap();
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
