"""Reads an Iceberg table with readers we did not write and prints what they
see as JSON: the `id` column by pyiceberg (SqlCatalog on the same database) and
by DuckDB's iceberg extension (loaded with avro from the duckdb-extension-*
packages, reading the table's current metadata file), the table properties and
the summary of the current snapshot.

usage: iceberg_read.py CATALOG_URI WAREHOUSE TABLE [S3_ENDPOINT]
CATALOG_URI is an SQLAlchemy URI (SQL catalog) or an http URL (REST catalog).
With S3_ENDPOINT, the table's files are on that S3-compatible server (key and
secret `tidemark`, region us-east-1, path-style URLs).
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
result = {
    "pyiceberg_ids": table.scan(selected_fields=("id",)).to_arrow().column("id").to_pylist(),
    "properties": dict(table.properties),
    "summary": dict(snapshot.summary.additional_properties) if snapshot else {},
    "snapshots": len(table.snapshots()),
    "files": len(list(table.scan().plan_files())),
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
rows = con.execute("SELECT id FROM iceberg_scan(?)", [metadata]).fetchall()
result["duckdb_ids"] = [r[0] for r in rows]
print(json.dumps(result), flush=True)
# Skip interpreter teardown: pyarrow's S3 client can abort the process while it
# is finalised ("terminate called without an active exception") after the
# result is already out.
os._exit(0)
