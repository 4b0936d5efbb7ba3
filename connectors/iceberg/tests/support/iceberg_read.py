"""Reads an Iceberg table with readers we did not write and prints what they
see as JSON: every row, all columns, by pyiceberg (SqlCatalog on the same
database) and by DuckDB's iceberg extension (loaded with avro from the
duckdb-extension-* packages, reading the table's current metadata file), the
table properties and the summary of the current snapshot.

It also checks every data file's metadata against the file's own rows, as an
engine that prunes with it would trust it: the record count, the value and
null counts and the lower and upper bounds of each column, and the partition
values (each row's partition transform must give the file's value). Any
mismatch is printed to stderr and the script exits with status 1: wrong
bounds make other engines skip rows silently.

usage: iceberg_read.py CATALOG_URI WAREHOUSE TABLE [S3_ENDPOINT]
CATALOG_URI is an SQLAlchemy URI (SQL catalog) or an http URL (REST catalog).
With S3_ENDPOINT, the table's files are on that S3-compatible server (key and
secret `tidemark`, region us-east-1, path-style URLs).
"""
import json
import os
import pathlib
import sys

import datetime

import duckdb
import duckdb_extension_avro
import duckdb_extension_iceberg
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.conversions import from_bytes
from pyiceberg.types import StringType, BinaryType

EPOCH = datetime.datetime(1970, 1, 1)


def internal(value):
    """A Python value as Iceberg represents it (days, microseconds)."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return (value - EPOCH) // datetime.timedelta(microseconds=1)
    if isinstance(value, datetime.date):
        return (value - EPOCH.date()).days
    return value


def check_file(table, task):
    """The mismatches between one data file's metadata and its rows."""
    data_file = task.file
    problems = []
    where = data_file.file_path
    with table.io.new_input(data_file.file_path).open() as stream:
        rows = pq.read_table(stream)
    if data_file.record_count != rows.num_rows:
        problems.append(f"{where}: record_count {data_file.record_count}, rows {rows.num_rows}")
    schema = table.schema()
    by_id = {}
    for index, field in enumerate(rows.schema):
        field_id = (field.metadata or {}).get(b"PARQUET:field_id")
        if field_id is not None:
            by_id[int(field_id)] = rows.column(index)
    if not by_id:
        problems.append(f"{where}: no column carries an Iceberg field id, nothing could be checked")
    for field in schema.fields:
        column = by_id.get(field.field_id)
        if column is None or not field.field_type.is_primitive:
            continue
        name = f"{where}: column {field.name}"
        values = [internal(v) for v in column.to_pylist()]
        present = [v for v in values if v is not None]
        nulls = len(values) - len(present)
        value_count = (data_file.value_counts or {}).get(field.field_id)
        if value_count is not None and value_count != len(values):
            problems.append(f"{name}: value count {value_count}, rows {len(values)}")
        null_count = (data_file.null_value_counts or {}).get(field.field_id)
        if null_count is None:
            problems.append(f"{name}: no null count")
        elif null_count != nulls:
            problems.append(f"{name}: null count {null_count}, nulls {nulls}")
        if not present:
            continue
        truncatable = isinstance(field.field_type, (StringType, BinaryType))
        for kind, bounds, actual, holds in [
            ("lower", data_file.lower_bounds, min(present), lambda b, a: b <= a),
            ("upper", data_file.upper_bounds, max(present), lambda b, a: b >= a),
        ]:
            raw = (bounds or {}).get(field.field_id)
            if raw is None:
                problems.append(f"{name}: no {kind} bound")
                continue
            bound = from_bytes(field.field_type, raw)
            exact = bound == actual
            if not holds(bound, actual) or (not truncatable and not exact):
                problems.append(f"{name}: {kind} bound {bound!r}, rows' {actual!r}")
    spec = table.specs()[data_file.spec_id]
    for position, partition_field in enumerate(spec.fields):
        column = by_id.get(partition_field.source_id)
        if column is None:
            problems.append(f"{where}: partition source {partition_field.source_id} not in the file")
            continue
        source_type = schema.find_field(partition_field.source_id).field_type
        transform = partition_field.transform.transform(source_type)
        expected = data_file.partition[position]
        seen = {transform(internal(v)) for v in column.to_pylist()}
        if seen != {expected}:
            problems.append(
                f"{where}: partition {partition_field.name} is {expected!r}, its rows give {sorted(seen, key=repr)!r}"
            )
    return problems


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

uri, warehouse, table_name = sys.argv[1:4]
endpoint = sys.argv[4] if len(sys.argv) > 4 else None
s3 = {}
if endpoint:
    s3 = {
        "s3.endpoint": endpoint,
        "s3.access-key-id": "tidemark",
        "s3.secret-access-key": "tidemark",
        "s3.region": "us-east-1",
    }
if uri.startswith("http"):
    from pyiceberg.catalog.rest import RestCatalog

    catalog = RestCatalog("tidemark", uri=uri, **s3)
else:
    catalog = SqlCatalog("default", uri=uri, warehouse=warehouse, **s3)
table = catalog.load_table(table_name)
snapshot = table.current_snapshot()
tasks = list(table.scan().plan_files())
problems = [p for task in tasks for p in check_file(table, task)]
if problems:
    print("the table's metadata disagrees with its data files:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)
scanned = table.scan().to_arrow()
result = {
    "pyiceberg_ids": scanned.column("id").to_pylist(),
    "pyiceberg_rows": rows_of(scanned.column_names, [list(r.values()) for r in scanned.to_pylist()]),
    "properties": dict(table.properties),
    "summary": dict(snapshot.summary.additional_properties) if snapshot else {},
    "snapshots": len(table.snapshots()),
    "files": len(tasks),
    "files_checked": len(tasks),
}
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
# Offline: the iceberg extension needs avro (and httpfs for S3); all load by
# file path.
modules = [(duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")]
if endpoint:
    import duckdb_extension_httpfs

    modules.insert(0, (duckdb_extension_httpfs, "httpfs"))
for module, name in modules:
    package = pathlib.Path(module.__file__).parent
    extension = next(package.rglob(f"{name}.duckdb_extension"))
    con.execute(f"LOAD '{extension}'")
if endpoint:
    host = endpoint.removeprefix("http://")
    con.execute(
        "CREATE SECRET (TYPE S3, KEY_ID 'tidemark', SECRET 'tidemark', REGION 'us-east-1', "
        f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)"
    )
metadata = table.metadata_location.removeprefix("file://")
cursor = con.execute("SELECT * FROM iceberg_scan(?)", [metadata])
columns = [d[0] for d in cursor.description]
rows = cursor.fetchall()
result["duckdb_ids"] = [r[columns.index("id")] for r in rows]
result["duckdb_rows"] = rows_of(columns, rows)
print(json.dumps(result), flush=True)
# Skip interpreter teardown: pyarrow's S3 client can abort the process while it
# is finalised ("terminate called without an active exception") after the
# result is already out.
os._exit(0)
