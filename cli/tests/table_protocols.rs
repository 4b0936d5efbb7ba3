//! Tables made by other tools, honoured: `tidemark run` against Delta tables
//! with CHECK constraints, generated columns, column mapping and deletion
//! vectors made by deltalake-py, and Iceberg tables made by pyiceberg in SQL
//! (SQLite, PostgreSQL) and REST catalogs, evolved between runs, with keys of
//! every supported type. Each table is read back by pyiceberg, DuckDB or
//! deltalake-py, which must see every source row exactly once with its values.
//! What cannot be written correctly must be refused before the read, leaving
//! the table and the store untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use support::BoundedOutput;

use tempfile::TempDir;

/// Runs `tidemark` with `args`, never reaching beyond loopback.
fn tidemark(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")
        .bounded_output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn succeeded(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn failed(output: Output, what: &str) -> String {
    assert!(
        !output.status.success(),
        "{what} should fail: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Defines `duck(*extensions)`: a DuckDB connection with extensions loaded
/// by file path from their PyPI packages (the tests never download).
const DUCKDB: &str = r#"
import duckdb, pathlib, importlib
def duck(*names):
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    for name in names:
        package = pathlib.Path(importlib.import_module(f"duckdb_extension_{name}").__file__).parent
        con.execute(f"LOAD '{next(package.rglob(f'{name}.duckdb_extension'))}'")
    return con
"#;

/// Runs a Python script (pyarrow, deltalake, pyiceberg, duckdb) with `args`
/// as `sys.argv[1:]`; returns its stdout.
fn python(script: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(format!("{DUCKDB}\n{script}"))
        .args(args)
        .bounded_output()
        .expect("python3 (scripts/test installs the readers)");
    assert!(
        output.status.success(),
        "python failed:\n{script}\n{}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A work directory with a store, source folders and tables.
struct Lake {
    dir: TempDir,
}

impl Lake {
    fn new() -> Self {
        Lake {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes `source/part-N.parquet` with pyarrow from a Python expression
    /// of a `pa.table`.
    fn source(&self, folder: &str, table: &str) -> String {
        let dir = self.path(folder);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!(
            "part-{}.parquet",
            std::fs::read_dir(&dir).unwrap().count()
        ));
        python(
            &format!(
                "import sys, datetime, decimal, uuid\nimport pyarrow as pa, pyarrow.parquet as pq\n\
                 pq.write_table({table}, sys.argv[1])"
            ),
            &[&file.display().to_string()],
        );
        format!("{}/", dir.display())
    }

    fn run(&self, source: &[&str], sink: &str, extra: &[&str]) -> Output {
        let store = self.p("store");
        let mut args = vec!["run", "--store", &store, "--sink", sink, "--pipeline", "p"];
        for s in source {
            args.extend(["--source", s]);
        }
        args.extend(extra);
        tidemark(&args)
    }

    fn gc(&self, sink: &str) {
        let store = self.p("store");
        succeeded(
            tidemark(&["gc", "--store", &store, "--sink", sink, "--pipeline", "p"]),
            "gc",
        );
    }

    /// `tidemark verify` of the lake's store against `sink`, pipeline `p`.
    fn verify(&self, sink: &str, extra: &[&str]) -> Output {
        let store = self.p("store");
        let mut args = vec![
            "verify",
            "--store",
            &store,
            "--sink",
            sink,
            "--pipeline",
            "p",
        ];
        args.extend(extra);
        tidemark(&args)
    }

    /// `verify --json`: its exit code and its report.
    fn verify_json(&self, sink: &str) -> (Option<i32>, serde_json::Value) {
        let output = self.verify(sink, &["--json"]);
        let report = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("verify --json: {}", text(&output)));
        (output.status.code(), report)
    }

    /// Keys in the store's checkpoints, as `status` counts them.
    fn keys_checkpointed(&self) -> u64 {
        let store = self.p("store");
        let output = tidemark(&["status", "--store", &store, "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("status --json: {}", text(&output)));
        status["key_count"].as_u64().unwrap()
    }
}

/// Reads a Delta table with deltalake-py and with DuckDB's delta extension;
/// both must print the same rows (sorted by the first column), and deltalake
/// must find every data file in the table directory referenced.
fn delta_rows(table: &str, columns: &str) -> String {
    python(
        r#"
import sys, os, duckdb
from deltalake import DeltaTable
path, columns = sys.argv[1], sys.argv[2]
dt = DeltaTable(path)
rows = sorted(dt.to_pyarrow_table(columns=columns.split(",")).to_pylist(), key=lambda r: str(r[columns.split(",")[0]]))
con = duck("delta")
quoted = ", ".join(f'"{c}"' for c in columns.split(","))
duck_rows = con.execute(f"SELECT {quoted} FROM delta_scan('{path}')").to_arrow_table().to_pylist()
duck_rows = sorted(duck_rows, key=lambda r: str(r[columns.split(",")[0]]))
assert rows == duck_rows, f"deltalake {rows} != duckdb {duck_rows}"
referenced = sorted(os.path.relpath(u.removeprefix("file://"), path) for u in dt.file_uris())
on_disk = sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) if "_delta_log" not in d for f in fs if f.endswith(".parquet"))
assert referenced == on_disk, f"files on disk {on_disk} but the table references {referenced}"
for r in rows:
    print(r)
"#,
        &[table, columns],
    )
}

/// The rows the test expects, printed as Python prints dicts.
fn expected(rows: impl IntoIterator<Item = String>) -> String {
    rows.into_iter().map(|r| format!("{r}\n")).collect()
}

#[test]
fn a_delta_check_constraint_is_enforced_and_nothing_is_committed() {
    let lake = Lake::new();
    let table = lake.p("checked");
    python(
        r#"
import sys, pyarrow as pa
from deltalake import DeltaTable, write_deltalake
write_deltalake(sys.argv[1], pa.table({"id": pa.array([1, 2], pa.int64()), "text": ["a", "b"]}))
DeltaTable(sys.argv[1]).alter.add_constraint({"id_positive": "id > 0"})
"#,
        &[&table],
    );
    let sink = format!("delta+file://{table}");
    let bad = lake.source(
        "bad",
        "pa.table({'id': pa.array([10, -5, 11], pa.int64()), 'text': ['x', 'minus five', 'y']})",
    );
    let stderr = failed(
        lake.run(&[&bad], &sink, &["--key", "id"]),
        "a violating run",
    );
    assert!(
        stderr.contains("CHECK constraint `id_positive` (id > 0)")
            && stderr.contains("id = -5")
            && stderr.contains("text = minus five"),
        "the error names the constraint and the row: {stderr}"
    );
    lake.gc(&sink);
    // Nothing committed, nothing orphaned: both readers see the two rows, and
    // every Parquet file in the table is one the table references.
    assert_eq!(
        delta_rows(&table, "id,text"),
        expected([
            "{'id': 1, 'text': 'a'}".into(),
            "{'id': 2, 'text': 'b'}".into()
        ])
    );
    let version = python(
        "import sys\nfrom deltalake import DeltaTable\nprint(DeltaTable(sys.argv[1]).version())",
        &[&table],
    );
    assert_eq!(version.trim(), "1", "no version after the constraint's");
    // Fixed rows go through, and the keys of the failed run are not skipped.
    let good = lake.source(
        "good",
        "pa.table({'id': pa.array([10, 5, 11], pa.int64()), 'text': ['x', 'five', 'y']})",
    );
    succeeded(lake.run(&[&good], &sink, &["--key", "id"]), "the fixed run");
    assert_eq!(
        delta_rows(&table, "id"),
        expected(
            ["1", "10", "11", "2", "5"]
                .iter()
                .map(|id| format!("{{'id': {id}}}"))
        )
    );
}

#[test]
fn delta_generated_columns_are_checked_and_their_absence_refused_up_front() {
    let lake = Lake::new();
    let table = lake.p("generated");
    python(
        r#"
import sys, pyarrow as pa
from deltalake import DeltaTable
schema = pa.schema([
    pa.field("id", pa.int64()),
    pa.field("doubled", pa.int64(), metadata={"delta.generationExpression": "id * 2"}),
])
DeltaTable.create(sys.argv[1], schema=schema)
"#,
        &[&table],
    );
    let sink = format!("delta+file://{table}");
    let missing = lake.source("missing", "pa.table({'id': pa.array([1, 2], pa.int64())})");
    let stderr = failed(
        lake.run(&[&missing], &sink, &["--key", "id"]),
        "a run without the generated column",
    );
    assert!(
        stderr.contains("`doubled`") && stderr.contains("id * 2"),
        "the error names the generated column and its expression: {stderr}"
    );
    assert_eq!(lake.keys_checkpointed(), 0, "refused before the read");
    let wrong = lake.source(
        "wrong",
        "pa.table({'id': pa.array([1, 2], pa.int64()), 'doubled': pa.array([2, 5], pa.int64())})",
    );
    let stderr = failed(
        lake.run(&[&wrong], &sink, &["--key", "id"]),
        "a run with a wrong generated value",
    );
    assert!(
        stderr.contains("generated column `doubled`") && stderr.contains("id = 2, doubled = 5"),
        "{stderr}"
    );
    let right = lake.source(
        "right",
        "pa.table({'id': pa.array([1, 2], pa.int64()), 'doubled': pa.array([2, 4], pa.int64())})",
    );
    succeeded(lake.run(&[&right], &sink, &["--key", "id"]), "a right run");
    lake.gc(&sink);
    assert_eq!(
        delta_rows(&table, "id,doubled"),
        expected([
            "{'id': 1, 'doubled': 2}".into(),
            "{'id': 2, 'doubled': 4}".into()
        ])
    );
}

#[test]
fn delta_column_mapping_is_refused_before_the_read() {
    let lake = Lake::new();
    let table = lake.p("mapped");
    python(
        r#"
import sys, pyarrow as pa
from deltalake import DeltaTable
schema = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])
DeltaTable.create(sys.argv[1], schema=schema, configuration={"delta.columnMapping.mode": "name"})
"#,
        &[&table],
    );
    let source = lake.source(
        "src",
        "pa.table({'id': pa.array([1, 2], pa.int64()), 'text': ['a', 'b']})",
    );
    let sink = format!("delta+file://{table}");
    let stderr = failed(lake.run(&[&source], &sink, &["--key", "id"]), "the run");
    assert!(
        stderr.contains("columnMapping") && stderr.contains("Nothing was read or written"),
        "the error names the feature: {stderr}"
    );
    assert!(
        !support::files_below(&lake.path("mapped"))
            .iter()
            .any(|file| file.extension().is_some_and(|e| e == "parquet")),
        "no data file was written"
    );
    assert_eq!(lake.keys_checkpointed(), 0, "refused before the read");
}

#[test]
fn delta_tables_with_deletion_vectors_are_appended() {
    let lake = Lake::new();
    let table = lake.p("dv");
    python(
        r#"
import sys, pyarrow as pa
from deltalake import DeltaTable, write_deltalake
schema = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])
DeltaTable.create(sys.argv[1], schema=schema, configuration={"delta.enableDeletionVectors": "true"})
write_deltalake(sys.argv[1], pa.table({"id": pa.array([1, 2, 3], pa.int64()), "text": ["a", "b", "c"]}), mode="append")
DeltaTable(sys.argv[1]).delete("id = 2")
assert "deletionVectors" in (DeltaTable(sys.argv[1]).protocol().writer_features or [])
"#,
        &[&table],
    );
    let sink = format!("delta+file://{table}");
    let source = lake.source(
        "src",
        "pa.table({'id': pa.array([10, 11], pa.int64()), 'text': ['x', 'y']})",
    );
    succeeded(lake.run(&[&source], &sink, &["--key", "id"]), "the run");
    succeeded(lake.run(&[&source], &sink, &["--key", "id"]), "the rerun");
    // deltalake-py reads no table with deletion vectors yet; DuckDB does.
    let rows = python(
        r#"
import sys
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1])
assert "deletionVectors" in (dt.protocol().writer_features or [])
con = duck("delta")
print(con.execute(f"SELECT id, text FROM delta_scan('{sys.argv[1]}') ORDER BY id").to_arrow_table().to_pylist())
"#,
        &[&table],
    );
    assert_eq!(
        rows.trim(),
        "[{'id': 1, 'text': 'a'}, {'id': 3, 'text': 'c'}, {'id': 10, 'text': 'x'}, {'id': 11, 'text': 'y'}]"
    );
}

#[test]
fn an_unsigned_64_bit_key_is_refused_before_any_work_and_narrower_ones_widen() {
    let lake = Lake::new();
    let big = lake.source(
        "big",
        "pa.table({'id': pa.array([1, 2**64 - 1], pa.uint64())})",
    );
    let sink = format!("delta+file://{}", lake.p("unsigned"));
    let stderr = failed(
        lake.run(&[&big], &sink, &["--key", "id", "--create"]),
        "a UInt64 key into Delta",
    );
    assert!(
        stderr.contains("UInt64") && stderr.contains("Decimal128(20, 0)"),
        "the error names the way out: {stderr}"
    );
    assert!(!lake.path("unsigned").join("_delta_log").exists());
    assert_eq!(lake.keys_checkpointed(), 0);

    let lake = Lake::new();
    let small = lake.source(
        "small",
        "pa.table({'id': pa.array([1, 2**32 - 1], pa.uint32())})",
    );
    let sink = format!("delta+file://{}", lake.p("widened"));
    succeeded(
        lake.run(&[&small], &sink, &["--key", "id", "--create"]),
        "a UInt32 key",
    );
    succeeded(
        lake.run(&[&small], &sink, &["--key", "id"]),
        "a UInt32 rerun",
    );
    assert_eq!(
        delta_rows(&lake.p("widened"), "id"),
        expected(["{'id': 1}".into(), "{'id': 4294967295}".into()])
    );
}

/// Reads an Iceberg table of a SQLite catalog with pyiceberg and DuckDB;
/// prints its rows, sorted, as dicts of the named columns.
fn iceberg_rows(catalog: &str, name: &str, warehouse: &str, columns: &str) -> String {
    python(
        r#"
import sys, duckdb
from pyiceberg.catalog.sql import SqlCatalog
uri, name, warehouse, columns = sys.argv[1:5]
table = SqlCatalog(name, uri=uri, warehouse=warehouse).load_table("lake.t")
cols = columns.split(",")
rows = sorted(table.scan(selected_fields=tuple(cols)).to_arrow().select(cols).to_pylist(), key=lambda r: str(r[cols[0]]))
con = duck("avro", "iceberg")
quoted = ", ".join(f'"{c}"' for c in cols)
duck_rows = con.execute(f"SELECT {quoted} FROM iceberg_scan('{table.metadata_location.removeprefix('file://')}')").to_arrow_table().to_pylist()
duck_rows = sorted(duck_rows, key=lambda r: str(r[cols[0]]))
assert rows == duck_rows, f"pyiceberg {rows} != duckdb {duck_rows}"
for r in rows:
    print(r)
"#,
        &[catalog, name, warehouse, columns],
    )
}

/// A SQL catalog on SQLite in a lake, under pyiceberg's default name, and
/// the URL of its table `lake.t` for `tidemark`.
struct SqliteCatalog {
    /// The catalog database URI as pyiceberg takes it (`sqlite:///...`).
    uri: String,
    /// The warehouse URL.
    warehouse: String,
    /// `iceberg+sqlite://...#lake.t`.
    sink: String,
}

impl SqliteCatalog {
    fn in_lake(lake: &Lake) -> Self {
        let db = lake.p("catalog.db");
        let warehouse = format!("file://{}", lake.p("warehouse"));
        SqliteCatalog {
            uri: format!("sqlite:///{db}"),
            sink: format!("iceberg+sqlite://{db}?warehouse={warehouse}#lake.t"),
            warehouse,
        }
    }

    /// The rows of `lake.t` (see [`iceberg_rows`]).
    /// pyiceberg rolls `lake.t` back to the snapshot of the pipeline's
    /// first commit.
    fn roll_back_to_first_commit(&self) -> String {
        python(
            r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
table = SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2]).load_table("lake.t")
first = next(
    s.snapshot_id for s in table.snapshots()
    if s.summary.additional_properties.get("tidemark.commit-sequence") == "1"
)
table.manage_snapshots().rollback_to_snapshot(first).commit()
"#,
            &[&self.uri, &self.warehouse],
        )
    }

    fn rows(&self, columns: &str) -> String {
        iceberg_rows(&self.uri, "default", &self.warehouse, columns)
    }
}

#[test]
fn an_iceberg_timestamptz_key_runs_again_and_again() {
    let lake = Lake::new();
    let catalog = SqliteCatalog::in_lake(&lake);
    let sink = &catalog.sink;
    let day1 = lake.source(
        "src",
        "pa.table({'at': pa.array([datetime.datetime(2026, 12, 1, 8, 0, tzinfo=datetime.timezone.utc), \
         datetime.datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=datetime.timezone.utc)], pa.timestamp('us', tz='UTC')), \
         'n': pa.array([1, 2], pa.int64())})",
    );
    succeeded(
        lake.run(&[&day1], sink, &["--key", "at", "--create"]),
        "run 1",
    );
    lake.source(
        "src",
        "pa.table({'at': pa.array([datetime.datetime(2026, 12, 2, 8, 0, tzinfo=datetime.timezone.utc)], \
         pa.timestamp('us', tz='UTC')), 'n': pa.array([3], pa.int64())})",
    );
    let out = succeeded(lake.run(&[&day1], sink, &["--key", "at"]), "run 2");
    assert!(out.contains("skipped 2 already processed"), "{out}");
    let rows = catalog.rows("n,at");
    assert_eq!(
        rows,
        expected([
            "{'n': 1, 'at': datetime.datetime(2026, 12, 1, 8, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC'))}".into(),
            "{'n': 2, 'at': datetime.datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=zoneinfo.ZoneInfo(key='UTC'))}"
                .into(),
            "{'n': 3, 'at': datetime.datetime(2026, 12, 2, 8, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC'))}".into(),
        ])
    );
}

#[test]
fn an_iceberg_table_evolved_by_pyiceberg_between_runs_is_written_by_field_id() {
    let lake = Lake::new();
    let catalog = SqliteCatalog::in_lake(&lake);
    let (uri, warehouse, sink) = (&catalog.uri, &catalog.warehouse, &catalog.sink);
    // pyiceberg makes the table, in its default catalog.
    python(
        r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import NestedField, LongType, StringType
catalog = SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2])
catalog.create_namespace("lake")
catalog.create_table("lake.t", Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "text", StringType(), required=False),
))
"#,
        &[uri, warehouse],
    );
    let run1 = lake.source(
        "day1",
        "pa.table({'id': pa.array([1, 2], pa.int64()), 'text': ['one', 'two']})",
    );
    succeeded(lake.run(&[&run1], sink, &["--key", "id"]), "run 1");
    // pyiceberg renames `text`, adds `score` and moves it first.
    python(
        r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.types import DoubleType
table = SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2]).load_table("lake.t")
with table.update_schema() as update:
    update.rename_column("text", "body")
    update.add_column("score", DoubleType())
    update.move_first("score")
"#,
        &[uri, warehouse],
    );
    let run2 = lake.source(
        "day2",
        "pa.table({'body': ['three'], 'id': pa.array([3], pa.int64()), 'score': [0.5]})",
    );
    succeeded(lake.run(&[&run2], sink, &["--key", "id"]), "run 2");
    let rows = catalog.rows("id,body,score");
    assert_eq!(
        rows,
        expected([
            "{'id': 1, 'body': 'one', 'score': None}".into(),
            "{'id': 2, 'body': 'two', 'score': None}".into(),
            "{'id': 3, 'body': 'three', 'score': 0.5}".into(),
        ])
    );
    // A null in the required `id` is refused before anything is written.
    let nulls = lake.source(
        "nulls",
        "pa.table({'body': ['x'], 'id': pa.array([None], pa.int64()), 'score': [1.0]})",
    );
    let stderr = failed(lake.run(&[&nulls], sink, &["--key", "id"]), "a null id");
    assert!(stderr.contains("column `id` is not nullable"), "{stderr}");
}

#[test]
fn keys_of_every_supported_type_land_once_in_both_formats() {
    let cases = [
        ("int32", "pa.array([1, 2], pa.int32())", "pa.array([3], pa.int32())"),
        ("int64", "pa.array([1, 2], pa.int64())", "pa.array([3], pa.int64())"),
        ("string", "pa.array(['a', 'b'])", "pa.array(['c'])"),
        ("large_string", "pa.array(['a', 'b'], pa.large_string())", "pa.array(['c'], pa.large_string())"),
        ("binary", "pa.array([b'a', b'b'])", "pa.array([b'c'])"),
        ("date", "pa.array([datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)])", "pa.array([datetime.date(2026, 1, 3)])"),
        ("timestamp", "pa.array([datetime.datetime(2026, 1, 1), datetime.datetime(2026, 1, 2)], pa.timestamp('us'))", "pa.array([datetime.datetime(2026, 1, 3)], pa.timestamp('us'))"),
        ("decimal", "pa.array([decimal.Decimal('1.50'), decimal.Decimal('2.25')], pa.decimal128(10, 2))", "pa.array([decimal.Decimal('3.75')], pa.decimal128(10, 2))"),
    ];
    for (name, first, second) in cases {
        for format in ["iceberg", "delta"] {
            let lake = Lake::new();
            let source = lake.source(
                "src",
                &format!("pa.table({{'k': {first}, 'n': pa.array([1, 2], pa.int64())}})"),
            );
            let catalog = SqliteCatalog::in_lake(&lake);
            let sink = match format {
                "iceberg" => catalog.sink.clone(),
                _ => format!("delta+file://{}", lake.p("t")),
            };
            let what = format!("{name} key into {format}");
            succeeded(
                lake.run(&[&source], &sink, &["--key", "k", "--create"]),
                &what,
            );
            lake.source(
                "src",
                &format!("pa.table({{'k': {second}, 'n': pa.array([3], pa.int64())}})"),
            );
            let out = succeeded(lake.run(&[&source], &sink, &["--key", "k"]), &what);
            assert!(out.contains("skipped 2 already processed"), "{what}: {out}");
            let rows = match format {
                "iceberg" => catalog.rows("n"),
                _ => delta_rows(&lake.p("t"), "n"),
            };
            assert_eq!(
                rows,
                expected(["{'n': 1}".into(), "{'n': 2}".into(), "{'n': 3}".into()]),
                "{what}"
            );
        }
    }
}

#[test]
fn racing_creates_make_one_table_and_every_run_lands() {
    for format in ["iceberg", "delta"] {
        let lake = Lake::new();
        let catalog = SqliteCatalog::in_lake(&lake);
        let sink = match format {
            "iceberg" => catalog.sink.clone(),
            _ => format!("delta+file://{}", lake.p("t")),
        };
        // Four pipelines, each with its own store and keys, create one table.
        let children: Vec<_> = (0..4)
            .map(|i| {
                let source = lake.source(
                    &format!("src{i}"),
                    &format!(
                        "pa.table({{'id': pa.array([{}, {}], pa.int64())}})",
                        2 * i,
                        2 * i + 1
                    ),
                );
                let store = lake.p(&format!("store{i}"));
                let pipeline = format!("p{i}");
                Command::new(env!("CARGO_BIN_EXE_tidemark"))
                    .args([
                        "run",
                        "--store",
                        &store,
                        "--sink",
                        &sink,
                        "--pipeline",
                        &pipeline,
                        "--source",
                        &source,
                        "--key",
                        "id",
                        "--create",
                    ])
                    .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            succeeded(
                child.wait_with_output().unwrap(),
                &format!("a racing {format} create"),
            );
        }
        let rows = match format {
            "iceberg" => catalog.rows("id"),
            _ => delta_rows(&lake.p("t"), "id"),
        };
        let mut ids: Vec<String> = (0..8).map(|i| format!("{{'id': {i}}}")).collect();
        ids.sort();
        assert_eq!(rows, expected(ids), "{format}");
    }
}

#[test]
fn sql_catalogs_are_shared_with_pyiceberg_by_name() {
    let lake = Lake::new();
    let db = lake.p("catalog.db");
    let warehouse = format!("file://{}", lake.p("warehouse"));
    let postgres = support::postgres_database();
    let postgres_python = postgres.replacen("postgres://", "postgresql+psycopg://", 1);
    let catalogs = [
        // pyiceberg's default name, which the CLI uses when the URL names none.
        (
            format!("sqlite:///{db}"),
            "default",
            format!("iceberg+sqlite://{db}?warehouse={warehouse}#lake.t"),
        ),
        (
            format!("sqlite:///{db}"),
            "other",
            format!("iceberg+sqlite://{db}?warehouse={warehouse}&catalog=other#lake.t"),
        ),
        (
            postgres_python,
            "default",
            format!("iceberg+{postgres}?warehouse={warehouse}#lake.t"),
        ),
    ];
    for (i, (uri, name, sink)) in catalogs.iter().enumerate() {
        // Each catalog its own warehouse folder.
        let own_warehouse = format!("{warehouse}{i}");
        let sink = sink.replace(
            &format!("warehouse={warehouse}"),
            &format!("warehouse={own_warehouse}"),
        );
        python(
            r#"
import sys, pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
catalog = SqlCatalog(sys.argv[2], uri=sys.argv[1], warehouse=sys.argv[3])
catalog.create_namespace("lake")
table = catalog.create_table("lake.t", pa.schema([pa.field("id", pa.int64())]))
table.append(pa.table({"id": pa.array([100], pa.int64())}))
"#,
            &[uri, name, &own_warehouse],
        );
        let source = lake.source(
            &format!("src{i}"),
            "pa.table({'id': pa.array([1, 2], pa.int64())})",
        );
        let store = lake.p(&format!("store{i}"));
        succeeded(
            tidemark(&[
                "run",
                "--store",
                &store,
                "--sink",
                &sink,
                "--pipeline",
                "p",
                "--source",
                &source,
                "--key",
                "id",
            ]),
            &format!("a run into catalog `{name}` at {uri}"),
        );
        let rows = python(
            r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
table = SqlCatalog(sys.argv[2], uri=sys.argv[1], warehouse=sys.argv[3]).load_table("lake.t")
print(sorted(table.scan().to_arrow()["id"].to_pylist()))
"#,
            &[uri, name, &own_warehouse],
        );
        assert_eq!(rows.trim(), "[1, 2, 100]", "catalog `{name}` at {uri}");
    }
}

#[test]
fn a_rest_catalog_table_made_by_pyiceberg_is_appended() {
    let lake = Lake::new();
    let server = support::rest_catalog_server();
    python(
        r#"
import sys, pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
catalog = RestCatalog("rest", uri=sys.argv[1])
catalog.create_namespace("restlake")
table = catalog.create_table("restlake.t", pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())]))
table.append(pa.table({"id": pa.array([100], pa.int64()), "text": ["from pyiceberg"]}))
"#,
        &[&server],
    );
    let rest = server.replacen("http://", "iceberg+rest://", 1);
    let sink = format!("{rest}#restlake.t");
    let source = lake.source(
        "src",
        "pa.table({'id': pa.array([1, 2], pa.int64()), 'text': ['one', 'two']})",
    );
    succeeded(lake.run(&[&source], &sink, &["--key", "id"]), "run 1");
    let out = succeeded(lake.run(&[&source], &sink, &["--key", "id"]), "run 2");
    assert!(out.contains("skipped 2 already processed"), "{out}");
    let rows = python(
        r#"
import sys
from pyiceberg.catalog.rest import RestCatalog
table = RestCatalog("rest", uri=sys.argv[1]).load_table("restlake.t")
print(sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["id"]))
"#,
        &[&server],
    );
    assert_eq!(
        rows.trim(),
        "[{'id': 1, 'text': 'one'}, {'id': 2, 'text': 'two'}, {'id': 100, 'text': 'from pyiceberg'}]"
    );
}

#[test]
fn every_iceberg_type_round_trips_through_a_pyiceberg_table() {
    let lake = Lake::new();
    let catalog = SqliteCatalog::in_lake(&lake);
    let (uri, warehouse, sink) = (&catalog.uri, &catalog.warehouse, &catalog.sink);
    python(
        r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import *
catalog = SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2])
catalog.create_namespace("lake")
catalog.create_table("lake.t", Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "amount", DecimalType(12, 3)),
    NestedField(3, "day", DateType()),
    NestedField(4, "at_time", TimeType()),
    NestedField(5, "local", TimestampType()),
    NestedField(6, "utc", TimestamptzType()),
    NestedField(7, "uid", UUIDType()),
    NestedField(8, "fixed", FixedType(3)),
    NestedField(9, "blob", BinaryType()),
    NestedField(10, "tags", ListType(20, StringType(), element_required=False)),
    NestedField(11, "counts", MapType(21, StringType(), 22, LongType(), value_required=False)),
    NestedField(12, "point", StructType(NestedField(23, "x", DoubleType()), NestedField(24, "label", StringType()))),
    NestedField(13, "flag", BooleanType()),
    NestedField(14, "ratio", FloatType()),
), properties={"write.parquet.compression-codec": "snappy"})
"#,
        &[uri, warehouse],
    );
    let rows = "[\
        {'id': 1, 'amount': decimal.Decimal('12.345'), 'day': datetime.date(2026, 12, 2), \
         'at_time': datetime.time(8, 30, 0, 250), 'local': datetime.datetime(2026, 12, 2, 8, 30), \
         'utc': datetime.datetime(2026, 12, 2, 8, 30, tzinfo=datetime.timezone.utc), \
         'uid': uuid.UUID('12345678-1234-5678-1234-567812345678').bytes, 'fixed': b'abc', \
         'blob': b'\\x00\\xff', 'tags': ['a', None], 'counts': [('x', 1), ('y', None)], \
         'point': {'x': 1.5, 'label': 'p'}, 'flag': True, 'ratio': 0.5}, \
        {'id': 2, 'amount': None, 'day': None, 'at_time': None, 'local': None, 'utc': None, \
         'uid': None, 'fixed': None, 'blob': None, 'tags': None, 'counts': None, 'point': None, \
         'flag': None, 'ratio': None}]";
    let schema = "pa.schema([('id', pa.int64()), ('amount', pa.decimal128(12, 3)), \
        ('day', pa.date32()), ('at_time', pa.time64('us')), ('local', pa.timestamp('us')), \
        ('utc', pa.timestamp('us', tz='UTC')), ('uid', pa.binary(16)), ('fixed', pa.binary(3)), \
        ('blob', pa.binary()), ('tags', pa.list_(pa.string())), \
        ('counts', pa.map_(pa.string(), pa.int64())), \
        ('point', pa.struct([('x', pa.float64()), ('label', pa.string())])), \
        ('flag', pa.bool_()), ('ratio', pa.float32())])";
    let source = lake.source(
        "src",
        &format!("pa.Table.from_pylist({rows}, schema={schema})"),
    );
    succeeded(lake.run(&[&source], sink, &["--key", "id"]), "the run");
    // pyiceberg reads every value back as it was written (uuids as UUIDs).
    python(
        &format!(
            r#"
import sys, datetime, decimal, uuid
from pyiceberg.catalog.sql import SqlCatalog
table = SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2]).load_table("lake.t")
got = sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["id"])
want = {rows}
def norm(row):
    row = dict(row)
    if isinstance(row.get("uid"), uuid.UUID):
        row["uid"] = row["uid"].bytes
    if row.get("counts") is not None:
        row["counts"] = sorted(row["counts"].items() if isinstance(row["counts"], dict) else row["counts"])
    if row.get("utc") is not None:
        row["utc"] = row["utc"].astimezone(datetime.timezone.utc)
    return row
got = [norm(r) for r in got]
want = [norm(r) for r in want]
assert got == want, f"pyiceberg read\n{{got}}\nbut the source held\n{{want}}"
# The table's write properties are honoured: its codec, not the default zstd.
import pyarrow.parquet as pq
for task in table.scan().plan_files():
    meta = pq.ParquetFile(task.file.file_path.removeprefix("file://")).metadata
    codecs = {{meta.row_group(g).column(c).compression for g in range(meta.num_row_groups) for c in range(meta.num_columns)}}
    assert codecs == {{"SNAPPY"}}, codecs
"#
        ),
        &[uri, warehouse],
    );
}

#[test]
fn a_delta_column_invariant_is_enforced() {
    let lake = Lake::new();
    let table = lake.p("invariant");
    python(
        r#"
import sys, json, pyarrow as pa
from deltalake import DeltaTable
invariant = json.dumps({"expression": {"expression": "score < 100"}})
schema = pa.schema([pa.field("id", pa.int64()), pa.field("score", pa.int64(), metadata={"delta.invariants": invariant})])
DeltaTable.create(sys.argv[1], schema=schema)
"#,
        &[&table],
    );
    let sink = format!("delta+file://{table}");
    let bad = lake.source(
        "bad",
        "pa.table({'id': pa.array([1, 2], pa.int64()), 'score': pa.array([5, 150], pa.int64())})",
    );
    let stderr = failed(
        lake.run(&[&bad], &sink, &["--key", "id"]),
        "a violating run",
    );
    assert!(
        stderr.contains("invariant of column `score` (score < 100)")
            && stderr.contains("id = 2, score = 150"),
        "{stderr}"
    );
    lake.gc(&sink);
    assert_eq!(delta_rows(&table, "id"), "");
    let good = lake.source(
        "good",
        "pa.table({'id': pa.array([1, 2], pa.int64()), 'score': pa.array([5, 99], pa.int64())})",
    );
    succeeded(lake.run(&[&good], &sink, &["--key", "id"]), "the fixed run");
    assert_eq!(
        delta_rows(&table, "id,score"),
        expected([
            "{'id': 1, 'score': 5}".into(),
            "{'id': 2, 'score': 99}".into()
        ])
    );
}

/// Two runs load day 1 and day 2 into Delta; deltalake-py's maintenance
/// (optimize, vacuum, a log checkpoint) is not taken for a rollback. A third
/// run loads day 3, then deltalake-py restores the version its optimize made
/// (which undoes day 3) and vacuums: the next run refuses before it reads, naming the
/// lost commit and the restore, and writes nothing. With
/// `--accept-table-state` it goes on, and day 3's keys stay processed.
#[test]
fn a_delta_table_restored_behind_the_pipeline_is_refused_before_the_read() {
    let lake = Lake::new();
    let table = lake.p("restored");
    let sink = format!("delta+file://{table}");
    let src = lake.source("src", "pa.table({'id': pa.array([1, 2], pa.int64())})");
    succeeded(
        lake.run(&[&src], &sink, &["--key", "id", "--create"]),
        "day 1",
    );
    lake.source("src", "pa.table({'id': pa.array([3, 4], pa.int64())})");
    succeeded(lake.run(&[&src], &sink, &["--key", "id"]), "day 2");
    python(
        r#"
import sys
from deltalake import DeltaTable
DeltaTable(sys.argv[1]).optimize.compact()
DeltaTable(sys.argv[1]).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
DeltaTable(sys.argv[1]).create_checkpoint()
"#,
        &[&table],
    );
    let out = succeeded(
        lake.run(&[&src], &sink, &["--key", "id"]),
        "a run after maintenance",
    );
    assert!(out.contains("nothing new to commit"), "{out}");
    let out = succeeded(lake.verify(&sink, &[]), "verify after maintenance");
    assert!(out.contains("the store and the table agree"), "{out}");
    lake.source("src", "pa.table({'id': pa.array([5, 6], pa.int64())})");
    succeeded(lake.run(&[&src], &sink, &["--key", "id"]), "day 3");
    python(
        r#"
import sys
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1])
dt.restore(next(h["version"] for h in dt.history() if h["operation"] == "OPTIMIZE"))
DeltaTable(sys.argv[1]).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
"#,
        &[&table],
    );
    let stderr = failed(
        lake.run(&[&src], &sink, &["--key", "id"]),
        "after a restore",
    );
    assert!(
        stderr.contains("no longer holds commits 3") && stderr.contains("restored to version"),
        "{stderr}"
    );
    assert!(stderr.contains("--accept-table-state"), "{stderr}");
    // `verify` reports the same, and exits 4.
    let store = lake.p("store");
    let (code, report) = lake.verify_json(&sink);
    assert_eq!(code, Some(4), "{report}");
    assert_eq!(report["agree"], false, "{report}");
    assert_eq!(report["lost_commits"], "3", "{report}");
    assert_eq!(report["store_committed"], 3, "{report}");
    assert_eq!(report["table_marker"], 3, "{report}");
    assert_eq!(report["table_carries"], 2, "{report}");
    let before_day_3 = expected((1..=4).map(|id| format!("{{'id': {id}}}")));
    assert_eq!(delta_rows(&table, "id"), before_day_3, "nothing written");
    let out = succeeded(
        lake.run(&[&src], &sink, &["--key", "id", "--accept-table-state"]),
        "accepted",
    );
    assert!(out.contains("skipped 6 already processed"), "{out}");
    assert_eq!(delta_rows(&table, "id"), before_day_3);
    // The acceptance is recorded: the next run and `verify` go on without
    // being told again.
    let out = succeeded(
        lake.run(&[&src], &sink, &["--key", "id"]),
        "a run after the acceptance",
    );
    assert!(out.contains("skipped 6 already processed"), "{out}");
    let (code, report) = lake.verify_json(&sink);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["agree"], true, "{report}");
    assert_eq!(report["accepted"]["commits"], "3", "{report}");
    // Once a later commit moves the marker past it, compaction deletes it.
    // (A store on disk removes the directories its deletes leave empty.)
    let accepted = std::path::Path::new(&store).join("accepted");
    let records = || std::fs::read_dir(&accepted).map_or(0, |entries| entries.count());
    assert_eq!(records(), 1);
    lake.source("src", "pa.table({'id': pa.array([7], pa.int64())})");
    succeeded(lake.run(&[&src], &sink, &["--key", "id"]), "day 4");
    succeeded(tidemark(&["compact", "--store", &store]), "compact");
    assert_eq!(records(), 0);
    let ids = [1, 2, 3, 4, 7].map(|id| format!("{{'id': {id}}}"));
    assert_eq!(delta_rows(&table, "id"), expected(ids));
}

/// Iceberg: another writer's append and snapshot expiry between runs are
/// not taken for a rollback; pyiceberg's `rollback_to_snapshot` to the
/// snapshot of commit 1 is, and the next run refuses before it reads.
#[test]
fn an_iceberg_table_rolled_back_behind_the_pipeline_is_refused_before_the_read() {
    // Maintenance and another writer: not a rollback.
    let lake = Lake::new();
    let catalog = SqliteCatalog::in_lake(&lake);
    let (uri, warehouse, sink) = (&catalog.uri, &catalog.warehouse, &catalog.sink);
    let day1 = lake.source("src", "pa.table({'id': pa.array([1, 2], pa.int64())})");
    succeeded(
        lake.run(&[&day1], sink, &["--key", "id", "--create"]),
        "day 1",
    );
    lake.source("src", "pa.table({'id': pa.array([3, 4], pa.int64())})");
    succeeded(lake.run(&[&day1], sink, &["--key", "id"]), "day 2");
    python(
        r#"
import sys, datetime, pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
table = SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2]).load_table("lake.t")
table.append(pa.table({"id": pa.array([100], pa.int64())}, schema=table.schema().as_arrow()))
table = table.refresh()
table.maintenance.expire_snapshots().older_than(datetime.datetime.now(datetime.timezone.utc)).commit()
assert len(table.refresh().snapshots()) == 1, table.refresh().snapshots()
"#,
        &[uri, warehouse],
    );
    let out = succeeded(
        lake.run(&[&day1], sink, &["--key", "id"]),
        "a run after another writer and expiry",
    );
    assert!(out.contains("nothing new to commit"), "{out}");

    // A rollback.
    let lake = Lake::new();
    let catalog = SqliteCatalog::in_lake(&lake);
    let sink = &catalog.sink;
    let day1 = lake.source("src", "pa.table({'id': pa.array([1, 2], pa.int64())})");
    succeeded(
        lake.run(&[&day1], sink, &["--key", "id", "--create"]),
        "day 1",
    );
    lake.source("src", "pa.table({'id': pa.array([3, 4], pa.int64())})");
    succeeded(lake.run(&[&day1], sink, &["--key", "id"]), "day 2");
    catalog.roll_back_to_first_commit();
    let stderr = failed(
        lake.run(&[&day1], sink, &["--key", "id"]),
        "after a rollback",
    );
    assert!(
        stderr.contains("no longer holds commits 2")
            && stderr.contains("carries the pipeline's commits up to 1"),
        "{stderr}"
    );
    assert_eq!(
        catalog.rows("id"),
        expected(["{'id': 1}".into(), "{'id': 2}".into()]),
        "nothing written"
    );
    let out = succeeded(
        lake.run(&[&day1], sink, &["--key", "id", "--accept-table-state"]),
        "accepted",
    );
    assert!(out.contains("skipped 4 already processed"), "{out}");
    let out = succeeded(
        lake.run(&[&day1], sink, &["--key", "id"]),
        "a run after the acceptance",
    );
    assert!(out.contains("skipped 4 already processed"), "{out}");

    // A rollback to the snapshot another writer made before the pipeline's
    // first commit: no ancestor left is a commit of the pipeline.
    let lake = Lake::new();
    let catalog = SqliteCatalog::in_lake(&lake);
    let (uri, warehouse, sink) = (&catalog.uri, &catalog.warehouse, &catalog.sink);
    python(
        r#"
import sys, pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
catalog = SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2])
catalog.create_namespace("lake")
data = pa.table({"id": pa.array([100], pa.int64())})
catalog.create_table("lake.t", schema=data.schema).append(data)
"#,
        &[uri, warehouse],
    );
    let day1 = lake.source("src", "pa.table({'id': pa.array([1, 2], pa.int64())})");
    succeeded(lake.run(&[&day1], sink, &["--key", "id"]), "day 1");
    python(
        r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
table = SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2]).load_table("lake.t")
first = min(table.snapshots(), key=lambda s: s.sequence_number)
table.manage_snapshots().rollback_to_snapshot(first.snapshot_id).commit()
"#,
        &[uri, warehouse],
    );
    let stderr = failed(
        lake.run(&[&day1], sink, &["--key", "id"]),
        "after a rollback to before the first commit",
    );
    assert!(stderr.contains("no longer holds commits 1"), "{stderr}");
}

/// tidemark's commits write Delta log checkpoints at the table's
/// `delta.checkpointInterval` (delta-rs's post-commit hook: after versions 4
/// and 9 at an interval of 5) and clean up the log before the latest one
/// (`delta.logRetentionDuration` of 0 s). The sink reads the log from that
/// checkpoint: a run still finds its marker, skips what earlier runs wrote,
/// commits, and `verify` agrees.
/// The marker also survives `delta.setTransactionRetentionDuration` of 0 s
/// at every checkpoint: tidemark's `txn` actions carry no `lastUpdated`, and
/// Delta expires only those that do.
#[test]
fn delta_log_checkpoints_come_at_the_table_s_interval() {
    let lake = Lake::new();
    let table = lake.p("checkpointed");
    let sink = format!("delta+file://{table}");
    let src = lake.source("src", "pa.table({'id': pa.array([0], pa.int64())})");
    succeeded(
        lake.run(&[&src], &sink, &["--key", "id", "--create"]),
        "run 0",
    );
    python(
        r#"
import sys
from deltalake import DeltaTable
DeltaTable(sys.argv[1]).alter.set_table_properties(
    {
        "delta.checkpointInterval": "5",
        "delta.logRetentionDuration": "interval 0 seconds",
        "delta.setTransactionRetentionDuration": "interval 0 seconds",
    }
)
"#,
        &[&table],
    );
    // Version 0 made the table, 1 was run 0's commit, 2 the properties; runs
    // 1 to 11 commit versions 3 to 13.
    for run in 1..=11 {
        lake.source(
            "src",
            &format!("pa.table({{'id': pa.array([{run}], pa.int64())}})"),
        );
        let out = succeeded(lake.run(&[&src], &sink, &["--key", "id"]), "a run");
        assert!(
            out.contains(&format!("skipped {run} already processed")),
            "{out}"
        );
    }
    let log = std::path::Path::new(&table).join("_delta_log");
    let mut listed: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    listed.sort();
    // The checkpoint after version 9, and nothing older: the hook's cleanup
    // (a retention of 0 s) removed the commits and checkpoint before it.
    let first_kept = listed.iter().find(|name| name.ends_with(".json"));
    assert_eq!(
        first_kept.map(String::as_str),
        Some("00000000000000000009.json"),
        "{listed:?}"
    );
    assert!(
        listed.contains(&format!("{:020}.checkpoint.parquet", 9)),
        "no log checkpoint after version 9: {listed:?}"
    );
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
    assert_eq!(last["version"], 9, "{last}");
    // A checkpoint of the latest version: the marker is read from it now,
    // and the transaction retention of 0 s applied when it was written.
    python(
        r#"
import sys
from deltalake import DeltaTable
DeltaTable(sys.argv[1]).create_checkpoint()
"#,
        &[&table],
    );
    lake.source("src", "pa.table({'id': pa.array([12], pa.int64())})");
    let out = succeeded(
        lake.run(&[&src], &sink, &["--key", "id"]),
        "a run after the cleanup",
    );
    assert!(out.contains("skipped 12 already processed"), "{out}");
    succeeded(lake.verify(&sink, &[]), "verify after the cleanup");
    let mut ids: Vec<i64> = (0..=12).collect();
    ids.sort_by_key(|id| id.to_string());
    let ids = ids.iter().map(|id| format!("{{'id': {id}}}"));
    assert_eq!(delta_rows(&table, "id"), expected(ids));
}

/// `tidemark compact --expire-snapshots-older-than-hours 0
/// --retain-snapshots 2` on an Iceberg table after five runs: pyiceberg
/// then sees two snapshots and every row; the marker (a table property)
/// stays, so a further run skips every key, commits the new one, and
/// `verify` agrees. Asked of a Delta table, it is refused before any work.
#[test]
fn iceberg_snapshots_expire_and_the_pipeline_goes_on() {
    let lake = Lake::new();
    let catalog = SqliteCatalog::in_lake(&lake);
    let (uri, warehouse, sink) = (&catalog.uri, &catalog.warehouse, &catalog.sink);
    let src = lake.source("src", "pa.table({'id': pa.array([0], pa.int64())})");
    succeeded(
        lake.run(&[&src], sink, &["--key", "id", "--create"]),
        "run 0",
    );
    for run in 1..5 {
        lake.source(
            "src",
            &format!("pa.table({{'id': pa.array([{run}], pa.int64())}})"),
        );
        succeeded(lake.run(&[&src], sink, &["--key", "id"]), "a run");
    }
    let store = lake.p("store");
    let expire = [
        "--expire-snapshots-older-than-hours",
        "0",
        "--retain-snapshots",
        "2",
    ];
    let mut args = vec![
        "compact",
        "--store",
        &store,
        "--sink",
        sink,
        "--pipeline",
        "p",
    ];
    args.extend(expire);
    let out = succeeded(tidemark(&args), "compact with snapshot expiry");
    assert!(out.contains("expired 3 snapshot(s)"), "{out}");
    let snapshots = python(
        r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
print(len(SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2]).load_table("lake.t").snapshots()))
"#,
        &[uri, warehouse],
    );
    assert_eq!(snapshots.trim(), "2");
    lake.source("src", "pa.table({'id': pa.array([5], pa.int64())})");
    let out = succeeded(
        lake.run(&[&src], sink, &["--key", "id"]),
        "a run after the expiry",
    );
    assert!(out.contains("skipped 5 already processed"), "{out}");
    succeeded(lake.verify(sink, &[]), "verify after the expiry");
    let ids = (0..=5).map(|id| format!("{{'id': {id}}}"));
    assert_eq!(catalog.rows("id"), expected(ids));

    let delta = format!("delta+file://{}", lake.p("delta"));
    let mut args = vec![
        "compact",
        "--store",
        &store,
        "--sink",
        &delta,
        "--pipeline",
        "p",
    ];
    args.extend(expire);
    let stderr = failed(tidemark(&args), "snapshot expiry asked of Delta");
    assert!(stderr.contains("applies to Iceberg tables"), "{stderr}");
}

/// A Delta table dropped and made again under the same path: the store
/// committed sequence 1 and the new table has no marker. Refused before the
/// read.
#[test]
fn a_recreated_delta_table_is_refused_before_the_read() {
    let lake = Lake::new();
    let table = lake.p("recreated");
    let sink = format!("delta+file://{table}");
    let day1 = lake.source("src", "pa.table({'id': pa.array([1, 2], pa.int64())})");
    succeeded(
        lake.run(&[&day1], &sink, &["--key", "id", "--create"]),
        "day 1",
    );
    std::fs::remove_dir_all(&table).unwrap();
    let stderr = failed(
        lake.run(&[&day1], &sink, &["--key", "id", "--create"]),
        "into the recreated table",
    );
    assert!(
        stderr.contains("no longer holds commits 1") && stderr.contains("no marker"),
        "{stderr}"
    );
    // Accepting cannot help: the new table's marker cannot continue the
    // store's. The way out is a new store and `adopt`.
    assert!(stderr.contains("tidemark adopt"), "{stderr}");
    let stderr = failed(
        lake.run(&[&day1], &sink, &["--key", "id", "--accept-table-state"]),
        "accepting a recreated table",
    );
    assert!(stderr.contains("no longer holds commits 1"), "{stderr}");
    assert!(
        !stderr.contains("setTransactionRetentionDuration"),
        "{stderr}"
    );
    // A table that sets the transaction retention is named as a possible
    // cause: Spark's log checkpoints drop markers under it.
    std::fs::remove_dir_all(&table).unwrap();
    python(
        r#"
import sys, pyarrow as pa
from deltalake import write_deltalake
write_deltalake(
    sys.argv[1],
    pa.table({"id": pa.array([1], pa.int64())}),
    configuration={"delta.setTransactionRetentionDuration": "interval 7 days"},
)
"#,
        &[&table],
    );
    let stderr = failed(
        lake.run(&[&day1], &sink, &["--key", "id"]),
        "into a table that sets the transaction retention",
    );
    assert!(
        stderr.contains("no longer holds commits 1")
            && stderr.contains("delta.setTransactionRetentionDuration = interval 7 days"),
        "{stderr}"
    );
}

/// Another writer compacts a Delta table in a loop (deltalake-py
/// `optimize.compact`, then `vacuum`) while `tidemark run` commits a new
/// file's rows five times: every run's commit lands within its retries,
/// every key is in the table once, and no data file path appears twice.
#[test]
fn delta_commits_land_beside_an_optimize_loop() {
    let lake = Lake::new();
    let table = lake.p("busy");
    let sink = format!("delta+file://{table}");
    let src = lake.source("src", "pa.table({'id': pa.array([0], pa.int64())})");
    succeeded(
        lake.run(&[&src], &sink, &["--key", "id", "--create"]),
        "the first run",
    );
    let stop = lake.path("stop");
    let optimizer = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import os, sys, time
from deltalake import DeltaTable
table, stop = sys.argv[1], sys.argv[2]
rounds = 0
deadline = time.time() + 120  # never outlive a failed test for long
while not os.path.exists(stop) and time.time() < deadline:
    try:
        DeltaTable(table).optimize.compact()
        DeltaTable(table).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
        rounds += 1
    except Exception as e:  # a conflict with a tidemark commit: try again
        print("conflict:", e, file=sys.stderr)
    time.sleep(0.05)
print(rounds)
"#,
        )
        .args([&table, &stop.display().to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for run in 1..=5 {
        let ids: Vec<String> = (run * 10..run * 10 + 10).map(|i| i.to_string()).collect();
        lake.source(
            "src",
            &format!(
                "pa.table({{'id': pa.array([{}], pa.int64())}})",
                ids.join(", ")
            ),
        );
        let out = succeeded(
            lake.run(&[&src], &sink, &["--key", "id"]),
            &format!("run {run} beside the optimizer"),
        );
        assert!(out.contains("made 1 table commit(s)"), "run {run}: {out}");
    }
    std::fs::write(&stop, "").unwrap();
    let output = optimizer.wait_with_output().unwrap();
    let rounds: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(rounds > 0, "the optimizer never ran");
    // Every key once (delta_rows also checks that no unreferenced file is
    // left and that DuckDB reads the same rows).
    let keys = std::iter::once(0).chain((1..=5).flat_map(|run| run * 10..run * 10 + 10));
    let mut keys: Vec<i64> = keys.collect();
    keys.sort_by_key(|k| k.to_string());
    assert_eq!(
        delta_rows(&table, "id"),
        expected(keys.iter().map(|k| format!("{{'id': {k}}}")))
    );
    let paths = python(
        r#"
import sys
from deltalake import DeltaTable
uris = DeltaTable(sys.argv[1]).file_uris()
assert len(uris) == len(set(uris)), uris
print(len(uris))
"#,
        &[&table],
    );
    assert!(paths.trim().parse::<usize>().unwrap() > 0);
    eprintln!("{rounds} optimize rounds beside 5 runs");
}

/// pyiceberg, on a PostgreSQL catalog, appends rows of its own and expires
/// every snapshot but the current one in a loop (about twice a second)
/// while `tidemark run`
/// commits a new file's rows five times: every run's commit lands within its
/// retries, and pyiceberg and DuckDB see each key of both writers once.
#[test]
fn iceberg_commits_land_beside_another_writer_and_expiry() {
    let lake = Lake::new();
    let warehouse = format!("file://{}", lake.p("warehouse"));
    let postgres = support::postgres_database();
    let uri = postgres.replacen("postgres://", "postgresql+psycopg://", 1);
    let sink = format!("iceberg+{postgres}?warehouse={warehouse}#lake.t");
    let src = lake.source("src", "pa.table({'id': pa.array([0], pa.int64())})");
    succeeded(
        lake.run(&[&src], &sink, &["--key", "id", "--create"]),
        "the first run",
    );
    let stop = lake.path("stop");
    let progress = lake.p("progress");
    let other = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import os, sys, time, datetime, pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
uri, warehouse, stop, progress = sys.argv[1:5]
catalog = SqlCatalog("default", uri=uri, warehouse=warehouse)
appended, expiries = [], 0
deadline = time.time() + 120  # never outlive a failed test for long
while not os.path.exists(stop) and time.time() < deadline:
    key = 100000 + len(appended)
    try:
        table = catalog.load_table("lake.t")
        table.append(pa.table({"id": pa.array([key], pa.int64())}))
        appended.append(key)
    except Exception as e:  # a conflict with a tidemark commit: try again
        print("append conflict:", e, file=sys.stderr)
    try:
        table = catalog.load_table("lake.t")
        table.maintenance.expire_snapshots().older_than(datetime.datetime.now(datetime.timezone.utc)).commit()
        expiries += 1
    except Exception as e:
        print("expiry conflict:", e, file=sys.stderr)
    with open(progress + ".tmp", "w") as f:
        f.write(str(len(appended)))
    os.replace(progress + ".tmp", progress)
    # Two commits about every half second: beside a writer that commits ten
    # times a second, tidemark's commits lost every attempt here (the
    # window between iceberg-rust's reload and its catalog commit includes
    # the duplicate-file check, which reads every manifest).
    time.sleep(0.4)
print(expiries, " ".join(map(str, appended)))
"#,
        )
        .args([&uri, &warehouse, &stop.display().to_string()])
        .arg(&progress)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Rows the other writer has appended so far.
    let appended_so_far = || -> u64 {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while appended_so_far() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other writer appended nothing within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before_runs = appended_so_far();
    for run in 1..=5 {
        let ids: Vec<String> = (run * 10..run * 10 + 10).map(|i| i.to_string()).collect();
        lake.source(
            "src",
            &format!(
                "pa.table({{'id': pa.array([{}], pa.int64())}})",
                ids.join(", ")
            ),
        );
        let out = succeeded(
            lake.run(&[&src], &sink, &["--key", "id"]),
            &format!("run {run} beside the other writer"),
        );
        assert!(out.contains("made 1 table commit(s)"), "run {run}: {out}");
    }
    // The other writer kept appending while the runs committed.
    let after_runs = appended_so_far();
    std::fs::write(&stop, "").unwrap();
    let output = other.wait_with_output().unwrap();
    assert!(
        after_runs > before_runs,
        "no append of the other writer fell between the runs ({before_runs} before, {after_runs} after)"
    );
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    let mut words = printed.split_whitespace();
    let expiries: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let appended: Vec<i64> = words.map(|w| w.parse().unwrap()).collect();
    assert!(
        expiries > 0 && !appended.is_empty(),
        "the other writer never ran: {printed}"
    );
    let mut keys: Vec<i64> = std::iter::once(0)
        .chain((1..=5).flat_map(|run| run * 10..run * 10 + 10))
        .chain(appended.iter().copied())
        .collect();
    keys.sort_by_key(|k| k.to_string());
    assert_eq!(
        iceberg_rows(&uri, "default", &warehouse, "id"),
        expected(keys.iter().map(|k| format!("{{'id': {k}}}")))
    );
    eprintln!(
        "{} appends and {expiries} expiries beside 5 runs",
        appended.len()
    );
}

/// A table that deltalake-py (Delta) or pyiceberg (Iceberg) filled before
/// tidemark ran: `tidemark adopt` records its keys as processed, and a run
/// over a source that repeats some of them writes only the new ones. The
/// independent readers see every key once, with the first writer's values.
#[test]
fn adopting_a_table_written_by_another_tool_skips_its_rows() {
    // Delta.
    let lake = Lake::new();
    let table = lake.p("adopted");
    python(
        r#"
import sys, pyarrow as pa
from deltalake import write_deltalake
write_deltalake(sys.argv[1], pa.table({"id": pa.array([1, 2, 3, 4, 5], pa.int64()), "text": ["old"] * 5}))
"#,
        &[&table],
    );
    let sink = format!("delta+file://{table}");
    adopt_then_run(&lake, &sink);
    assert_eq!(delta_rows(&table, "id,text"), adopted_rows());

    // Iceberg.
    let lake = Lake::new();
    let catalog = SqliteCatalog::in_lake(&lake);
    python(
        r#"
import sys, pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
catalog = SqlCatalog("default", uri=sys.argv[1], warehouse=sys.argv[2])
catalog.create_namespace("lake")
data = pa.table({"id": pa.array([1, 2, 3, 4, 5], pa.int64()), "text": ["old"] * 5})
catalog.create_table("lake.t", schema=data.schema).append(data)
"#,
        &[&catalog.uri, &catalog.warehouse],
    );
    adopt_then_run(&lake, &catalog.sink);
    assert_eq!(catalog.rows("id,text"), adopted_rows());
}

/// `tidemark adopt` of a table holding ids 1 to 5, then a run over ids 3 to
/// 8: 3 skipped, 3 written.
fn adopt_then_run(lake: &Lake, sink: &str) {
    let store = lake.p("store");
    let out = succeeded(
        tidemark(&[
            "adopt",
            "--store",
            &store,
            "--sink",
            sink,
            "--pipeline",
            "p",
            "--key",
            "id",
        ]),
        "adopt",
    );
    assert!(out.contains("adopted 5 key(s)"), "{out}");
    let src = lake.source(
        "src",
        "pa.table({'id': pa.array([3, 4, 5, 6, 7, 8], pa.int64()), 'text': ['new'] * 6})",
    );
    let out = succeeded(lake.run(&[&src], sink, &["--key", "id"]), "a run");
    assert!(out.contains("skipped 3 already processed"), "{out}");
    assert!(out.contains("wrote 3 rows"), "{out}");
}

/// Ids 1 to 5 with the adopted table's text, 6 to 8 with the run's.
fn adopted_rows() -> String {
    expected((1..=8).map(|id| {
        let text = if id <= 5 { "old" } else { "new" };
        format!("{{'id': {id}, 'text': '{text}'}}")
    }))
}

/// `tidemark run --sql`: a map-only `SELECT` over the source shapes the rows
/// (and, with `--create`, the table). Rows its WHERE drops count as
/// processed, so a later run over a grown source skips them and writes only
/// the new rows. pyiceberg, deltalake-py and DuckDB read every value. A
/// statement that is not row-wise is refused before the store or the table
/// is touched, naming the operator.
#[test]
fn sql_transforms_land_once_in_both_formats() {
    let sql = "SELECT id, lower(text) AS text, length(text) AS chars FROM source WHERE id <> 2";
    for format in ["iceberg", "delta"] {
        let lake = Lake::new();
        let catalog = SqliteCatalog::in_lake(&lake);
        let sink = match format {
            "iceberg" => catalog.sink.clone(),
            _ => format!("delta+file://{}", lake.p("t")),
        };
        let src = lake.source(
            "src",
            "pa.table({'id': pa.array([1, 2, 3, 4, 5], pa.int64()), \
             'text': ['Alpha', 'Beta', None, 'Delta', 'Echo']})",
        );
        let refused = failed(
            lake.run(
                &[&src],
                &sink,
                &[
                    "--key",
                    "id",
                    "--create",
                    "--sql",
                    "SELECT id, text FROM source ORDER BY id",
                ],
            ),
            "a sorted transform",
        );
        assert!(refused.contains("`sort` cannot run"), "{format}: {refused}");
        assert!(
            !lake.path("store").exists(),
            "{format}: the refused run touched the store"
        );
        let out = succeeded(
            lake.run(&[&src], &sink, &["--key", "id", "--create", "--sql", sql]),
            "the first run",
        );
        assert!(out.contains("wrote 4 rows"), "{format}: {out}");
        // Key 2 comes again beside a new key: both 2s count as processed.
        lake.source(
            "src",
            "pa.table({'id': pa.array([2, 6], pa.int64()), 'text': ['Bravo', 'Foxtrot']})",
        );
        let out = succeeded(
            lake.run(&[&src], &sink, &["--key", "id", "--sql", sql]),
            "the run over the grown source",
        );
        assert!(
            out.contains("skipped 6 already processed"),
            "{format}: {out}"
        );
        assert!(out.contains("wrote 1 rows"), "{format}: {out}");
        let rows = match format {
            "iceberg" => catalog.rows("id,text,chars"),
            _ => delta_rows(&lake.p("t"), "id,text,chars"),
        };
        assert_eq!(
            rows,
            expected([
                "{'id': 1, 'text': 'alpha', 'chars': 5}".to_string(),
                "{'id': 3, 'text': None, 'chars': None}".to_string(),
                "{'id': 4, 'text': 'delta', 'chars': 5}".to_string(),
                "{'id': 5, 'text': 'echo', 'chars': 4}".to_string(),
                "{'id': 6, 'text': 'foxtrot', 'chars': 7}".to_string(),
            ]),
            "{format}"
        );
    }
}

/// `pending` answers from the rows the next run would process: their count
/// by default, any read-only query with `--sql`. It stages nothing, so the
/// run after it processes the rows it counted; DDL and DML are refused.
#[test]
fn pending_shows_what_the_next_run_processes() {
    let lake = Lake::new();
    let sink = format!("delta+file://{}", lake.p("t"));
    let src = lake.source(
        "src",
        "pa.table({'id': pa.array([1, 2, 3], pa.int64()), 'text': ['a', 'b', 'c']})",
    );
    let store = lake.p("store");
    let pending = |sql: Option<&str>| {
        let mut args = vec!["pending", "--store", &store, "--source", &src];
        args.extend(sql.map(|sql| ["--sql", sql]).into_iter().flatten());
        tidemark(&args)
    };
    let missing = failed(pending(None), "pending before any run");
    assert!(
        missing.contains("no tidemark checkpoint store"),
        "{missing}"
    );
    succeeded(
        lake.run(&[&src], &sink, &["--key", "id", "--create"]),
        "the first run",
    );
    let count = |out: String| -> String {
        out.lines()
            .find_map(|line| {
                let cell = line.strip_prefix("| ")?.split_whitespace().next()?;
                cell.parse::<u64>().ok().map(|_| cell.to_string())
            })
            .unwrap_or_else(|| panic!("no count in {out}"))
    };
    assert_eq!(
        count(succeeded(pending(None), "pending after the run")),
        "0"
    );

    // Key 3 again, two new keys, and key 5 twice (the first row is kept).
    lake.source(
        "src",
        "pa.table({'id': pa.array([3, 4, 5, 5], pa.int64()), 'text': ['c', 'd', 'e', 'e again']})",
    );
    assert_eq!(
        count(succeeded(pending(None), "pending over the grown source")),
        "2"
    );
    let listed = succeeded(
        pending(Some(
            "SELECT id, upper(text) AS text FROM unprocessed ORDER BY id DESC",
        )),
        "a query of the unprocessed rows",
    );
    assert_eq!(
        listed.trim(),
        "+----+------+\n\
         | id | text |\n\
         +----+------+\n\
         | 5  | E    |\n\
         | 4  | D    |\n\
         +----+------+"
    );
    let refused = failed(pending(Some("DROP TABLE unprocessed")), "DDL");
    assert!(refused.contains("DDL"), "{refused}");

    let out = succeeded(
        lake.run(&[&src], &sink, &["--key", "id"]),
        "the run after pending",
    );
    assert!(out.contains("wrote 2 rows"), "{out}");
    assert_eq!(
        count(succeeded(pending(None), "pending after the second run")),
        "0"
    );
    assert_eq!(
        delta_rows(&lake.p("t"), "id,text"),
        expected((1..=5).map(|id| {
            let text = ["a", "b", "c", "d", "e"][id - 1];
            format!("{{'id': {id}, 'text': '{text}'}}")
        }))
    );
}

/// A table rolled back (pyiceberg) or restored (deltalake-py, then vacuumed)
/// to before day 2's commit: `run --reprocess-lost-commits` forgets day 2's
/// keys, reads those rows again and commits them anew. The readers see every
/// row once with its values; the next run skips everything; `verify` agrees;
/// `compact` then deletes the forgotten commit's records from the store.
#[test]
fn rolled_back_commits_are_reprocessed_in_both_formats() {
    for format in ["delta", "iceberg"] {
        let lake = Lake::new();
        let catalog = SqliteCatalog::in_lake(&lake);
        let table = lake.p("t");
        let sink = match format {
            "delta" => format!("delta+file://{table}"),
            _ => catalog.sink.clone(),
        };
        let rows = |columns: &str| match format {
            "delta" => delta_rows(&table, columns),
            _ => catalog.rows(columns),
        };
        let src = lake.source(
            "src",
            "pa.table({'id': pa.array([1, 2], pa.int64()), 'v': ['one', 'two']})",
        );
        succeeded(
            lake.run(&[&src], &sink, &["--key", "id", "--create"]),
            "day 1",
        );
        lake.source(
            "src",
            "pa.table({'id': pa.array([3, 4], pa.int64()), 'v': ['three', 'four']})",
        );
        succeeded(lake.run(&[&src], &sink, &["--key", "id"]), "day 2");
        match format {
            "delta" => python(
                r#"
import sys
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1])
dt.restore(dt.version() - 1)
DeltaTable(sys.argv[1]).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
"#,
                &[&table],
            ),
            _ => catalog.roll_back_to_first_commit(),
        };
        let day_1 = ["{'id': 1, 'v': 'one'}", "{'id': 2, 'v': 'two'}"].map(String::from);
        assert_eq!(
            rows("id,v"),
            expected(day_1.clone()),
            "{format}: rolled back"
        );
        let stderr = failed(
            lake.run(&[&src], &sink, &["--key", "id"]),
            "after the rollback",
        );
        assert!(
            stderr.contains("no longer holds commits 2")
                && stderr.contains("--reprocess-lost-commits"),
            "{format}: {stderr}"
        );
        let both = failed(
            lake.run(
                &[&src],
                &sink,
                &[
                    "--key",
                    "id",
                    "--reprocess-lost-commits",
                    "--accept-table-state",
                ],
            ),
            "both choices at once",
        );
        assert!(both.contains("cannot be used with"), "{format}: {both}");
        let out = succeeded(
            lake.run(&[&src], &sink, &["--key", "id", "--reprocess-lost-commits"]),
            "reprocessed",
        );
        assert!(
            out.contains("skipped 2 already processed") && out.contains("wrote 2 rows"),
            "{format}: {out}"
        );
        let all = day_1
            .iter()
            .cloned()
            .chain(["{'id': 3, 'v': 'three'}", "{'id': 4, 'v': 'four'}"].map(String::from));
        assert_eq!(rows("id,v"), expected(all.clone()), "{format}: reprocessed");
        let out = succeeded(
            lake.run(&[&src], &sink, &["--key", "id"]),
            "a run after reprocessing",
        );
        assert!(
            out.contains("skipped 4 already processed"),
            "{format}: {out}"
        );
        let store = lake.p("store");
        let (code, report) = lake.verify_json(&sink);
        assert_eq!(code, Some(0), "{report}");
        // The table carries the new commit 3, and so all of the store's.
        assert_eq!(report["agree"], true, "{format}: {report}");
        assert_eq!(report["store_committed"], 3, "{format}: {report}");
        assert_eq!(report["table_carries"], 3, "{format}: {report}");
        let records = |dir: &str| {
            std::fs::read_dir(std::path::Path::new(&store).join(dir))
                .map_or(0, |entries| entries.count())
        };
        assert_eq!(records("forgotten"), 1, "{format}");
        assert_eq!(records("accepted"), 1, "{format}");
        succeeded(tidemark(&["compact", "--store", &store]), "compact");
        assert_eq!(records("forgotten"), 0, "{format}");
        assert_eq!(records("accepted"), 0, "{format}");
        assert_eq!(rows("id,v"), expected(all), "{format}: after compaction");
    }
}
