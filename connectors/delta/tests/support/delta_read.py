"""Reads a Delta table with readers we did not write and prints what they see
as JSON: the `id` column by the deltalake package and, for local tables, by
DuckDB's delta extension (loaded from the duckdb-extension-delta package), plus
the table version and the transaction version of an app id.

usage: delta_read.py TABLE_URI STORAGE_OPTIONS_JSON APP_ID
"""
import json
import os
import pathlib
import sys

from deltalake import DeltaTable

uri, storage_json, app_id = sys.argv[1:4]
storage = json.loads(storage_json) or None
table = DeltaTable(uri, storage_options=storage)
result = {
    "version": table.version(),
    "txn": table.transaction_version(app_id),
    "deltalake_ids": table.to_pyarrow_table(columns=["id"]).column("id").to_pylist(),
    "files": len(table.file_uris()),
}
if uri.startswith("file://"):
    import duckdb
    import duckdb_extension_delta

    package = pathlib.Path(duckdb_extension_delta.__file__).parent
    extension = next(package.rglob("delta.duckdb_extension"))
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{extension}'")
    rows = con.execute("SELECT id FROM delta_scan(?)", [uri.removeprefix("file://")]).fetchall()
    result["duckdb_ids"] = [r[0] for r in rows]
print(json.dumps(result), flush=True)
# Skip interpreter teardown: pyarrow's S3 client can abort the process while it
# is finalised ("terminate called without an active exception") after the
# result is already out.
os._exit(0)
