"""Reads an Iceberg table with readers we did not write and prints what they
see as JSON: the `id` column by pyiceberg (SqlCatalog on the same database) and
by DuckDB's iceberg extension (loaded with avro from the duckdb-extension-*
packages, reading the table's current metadata file), the table properties and
the summary of the current snapshot.

usage: iceberg_read.py CATALOG_URI WAREHOUSE TABLE
"""
import json
import os
import pathlib
import sys

import duckdb
import duckdb_extension_avro
import duckdb_extension_iceberg
from pyiceberg.catalog.sql import SqlCatalog

uri, warehouse, table_name = sys.argv[1:4]
catalog = SqlCatalog("tidemark", uri=uri, warehouse=warehouse)
table = catalog.load_table(table_name)
snapshot = table.current_snapshot()
result = {
    "pyiceberg_ids": table.scan(selected_fields=("id",)).to_arrow().column("id").to_pylist(),
    "properties": dict(table.properties),
    "summary": dict(snapshot.summary.additional_properties) if snapshot else {},
    "snapshots": len(table.snapshots()),
}
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
# Offline: the iceberg extension needs avro, and both load by file path.
for module, name in [(duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")]:
    package = pathlib.Path(module.__file__).parent
    extension = next(package.rglob(f"{name}.duckdb_extension"))
    con.execute(f"LOAD '{extension}'")
metadata = table.metadata_location.removeprefix("file://")
rows = con.execute("SELECT id FROM iceberg_scan(?)", [metadata]).fetchall()
result["duckdb_ids"] = [r[0] for r in rows]
print(json.dumps(result), flush=True)
# Skip interpreter teardown: pyarrow's S3 client can abort the process while it
# is finalised ("terminate called without an active exception") after the
# result is already out.
os._exit(0)
