"""Reads a Delta table with readers we did not write and prints what they see
as JSON: every row, all columns, by the deltalake package and, for local
tables, by DuckDB's delta extension (loaded from the duckdb-extension-delta
package), plus the table version and the transaction version of an app id.

It also checks every data file's `stats` against the file's own rows, as an
engine that skips files with them would trust them: `numRecords`, and each
column's `nullCount`, `minValues` and `maxValues`. Any mismatch is printed to
stderr and the script exits with status 1: wrong statistics make other
engines skip rows silently.

usage: delta_read.py TABLE_URI STORAGE_OPTIONS_JSON APP_ID
"""
import datetime
import json
import os
import pathlib
import sys
import urllib.parse

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
from deltalake import DeltaTable

# Delta writers cut string statistics to a prefix (delta-rs and Spark keep 32
# characters), so only that prefix of a string bound is compared.
STRING_PREFIX = 32


def file_system(uri, storage):
    """The pyarrow file system and root path of the table's storage."""
    if uri.startswith("s3://"):
        storage = {k.upper(): v for k, v in (storage or {}).items()}
        endpoint = storage.get("AWS_ENDPOINT_URL", "")
        fs = pyarrow.fs.S3FileSystem(
            access_key=storage.get("AWS_ACCESS_KEY_ID"),
            secret_key=storage.get("AWS_SECRET_ACCESS_KEY"),
            region=storage.get("AWS_REGION", "us-east-1"),
            endpoint_override=endpoint.split("://")[-1] or None,
            scheme=endpoint.split("://")[0] if "://" in endpoint else "https",
        )
        return fs, uri.removeprefix("s3://").rstrip("/")
    return pyarrow.fs.LocalFileSystem(), uri.removeprefix("file://").rstrip("/")


def comparable(value):
    """A statistic or a row value in one form (timestamps at milliseconds, as
    Delta's statistics keep them)."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if isinstance(value, str):
        return value[:STRING_PREFIX]
    return value


def check_files(table, uri, storage):
    """The mismatches between each data file's statistics and its rows."""
    fs, root = file_system(uri, storage)
    actions = pa.table(table.get_add_actions(flatten=True))
    partition_columns = set(table.metadata().partition_columns)
    problems = []
    for action in actions.to_pylist():
        path = urllib.parse.unquote(action["path"])
        full = path if "://" in path else f"{root}/{path}"
        with fs.open_input_file(full) as stream:
            rows = pq.read_table(stream)
        if action.get("num_records") is None:
            problems.append(f"{path}: no numRecords")
            continue
        if action["num_records"] != rows.num_rows:
            problems.append(f"{path}: numRecords {action['num_records']}, rows {rows.num_rows}")
        for name in rows.column_names:
            if name in partition_columns:
                continue
            if not pa.types.is_primitive(rows.schema.field(name).type) and not pa.types.is_string(
                rows.schema.field(name).type
            ) and not pa.types.is_large_string(rows.schema.field(name).type):
                continue
            values = rows.column(name).to_pylist()
            present = [comparable(v) for v in values if v is not None]
            nulls = len(values) - len(present)
            null_count = action.get(f"null_count.{name}")
            if null_count is None:
                problems.append(f"{path}: column {name}: no nullCount")
            elif null_count != nulls:
                problems.append(f"{path}: column {name}: nullCount {null_count}, nulls {nulls}")
            if not present:
                continue
            for kind, actual, holds in [
                ("min", min(present), lambda s, a: s <= a),
                ("max", max(present), lambda s, a: s >= a),
            ]:
                stat = action.get(f"{kind}.{name}")
                if stat is None:
                    problems.append(f"{path}: column {name}: no {kind}Values")
                    continue
                stat = comparable(stat)
                exact = isinstance(actual, str) or stat == actual
                if not holds(stat, actual) or not exact:
                    problems.append(f"{path}: column {name}: {kind}Values {stat!r}, rows' {actual!r}")
    return problems, actions.num_rows


def plain(value):
    """A value JSON can carry (dates and times as ISO strings)."""
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def rows_of(columns, rows):
    """Rows as lists of plain values, ordered by every column."""
    rows = [[plain(v) for v in row] for row in rows]
    rows.sort(key=lambda row: [(v is None, repr(type(v)), v if v is not None else 0) for v in row])
    return {"columns": columns, "rows": rows}


uri, storage_json, app_id = sys.argv[1:4]
storage = json.loads(storage_json) or None
table = DeltaTable(uri, storage_options=storage)
problems, files = check_files(table, uri, storage)
if problems:
    print("the table's statistics disagree with its data files:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)
scanned = table.to_pyarrow_table()
result = {
    "version": table.version(),
    "txn": table.transaction_version(app_id),
    "deltalake_ids": scanned.column("id").to_pylist(),
    "deltalake_rows": rows_of(scanned.column_names, [list(r.values()) for r in scanned.to_pylist()]),
    "files": len(table.file_uris()),
    "files_checked": files,
}
if uri.startswith("file://"):
    import duckdb
    import duckdb_extension_delta

    package = pathlib.Path(duckdb_extension_delta.__file__).parent
    extension = next(package.rglob("delta.duckdb_extension"))
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{extension}'")
    cursor = con.execute("SELECT * FROM delta_scan(?)", [uri.removeprefix("file://")])
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    result["duckdb_ids"] = [r[columns.index("id")] for r in rows]
    result["duckdb_rows"] = rows_of(columns, rows)
print(json.dumps(result), flush=True)
# Skip interpreter teardown: pyarrow's S3 client can abort the process while it
# is finalised ("terminate called without an active exception") after the
# result is already out.
os._exit(0)
