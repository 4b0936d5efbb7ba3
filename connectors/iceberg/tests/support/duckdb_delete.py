"""Deletes rows of an Iceberg table with DuckDB (an engine we did not write),
through a REST catalog. DuckDB deletes by merge-on-read: the rows stay in
their data files and a positional delete file, in a delete manifest, names
them.

usage: duckdb_delete.py REST_URI TABLE WHERE
TABLE is NAMESPACE.NAME; WHERE is a DuckDB predicate over the table's columns.
Prints the number of rows deleted.
"""
import json
import pathlib
import sys
import urllib.request

import duckdb
import duckdb_extension_avro
import duckdb_extension_httpfs
import duckdb_extension_iceberg

uri, table_name, where = sys.argv[1:4]
# The server serves one warehouse, named in its config's overrides.
with urllib.request.urlopen(f"{uri}/v1/config", timeout=30) as response:
    warehouse = json.load(response)["overrides"]["warehouse"]
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
# Offline: the iceberg extension needs avro, and httpfs for the catalog's
# REST calls; all load by file path.
modules = [
    (duckdb_extension_httpfs, "httpfs"),
    (duckdb_extension_avro, "avro"),
    (duckdb_extension_iceberg, "iceberg"),
]
for module, name in modules:
    extension = next(pathlib.Path(module.__file__).parent.rglob(f"{name}.duckdb_extension"))
    con.execute(f"LOAD '{extension}'")
con.execute(
    f"ATTACH '{warehouse}' AS lake (TYPE iceberg, ENDPOINT '{uri}', AUTHORIZATION_TYPE 'none')"
)
deleted = con.execute(f"DELETE FROM lake.{table_name} WHERE {where}").fetchall()
print(deleted[0][0] if deleted else 0, flush=True)
