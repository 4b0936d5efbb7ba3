"""Appends rows to an Iceberg table with pyiceberg (a writer we did not write).

usage: pyiceberg_append.py CATALOG WAREHOUSE_DIR TABLE IDS_JSON
CATALOG is a SQLite file path, an SQLAlchemy URI or a REST catalog's http URL.
Creates namespace and table (id long, payload string) when missing; an
existing table gets `id`, `payload` ("payload of ID") and `region` (by the
tests' rule: "eu", "us/east" or null by id % 3) filled, its other columns
null.
"""
import json
import sys

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

db, warehouse, table_name, ids_json = sys.argv[1:5]
ids = json.loads(ids_json)
uri = db if "://" in db else f"sqlite:///{db}"
if uri.startswith("http"):
    from pyiceberg.catalog.rest import RestCatalog

    catalog = RestCatalog("tidemark", uri=uri)
else:
    catalog = SqlCatalog("default", uri=uri, warehouse=f"file://{warehouse}")
namespace = table_name.split(".")[0]
if namespace not in [n[0] for n in catalog.list_namespaces()]:
    catalog.create_namespace(namespace)
schema = pa.schema([pa.field("id", pa.int64()), pa.field("payload", pa.string())])
if not catalog.table_exists(table_name):
    catalog.create_table(table_name, schema=schema)
table = catalog.load_table(table_name)
# Fit the table's own schema (it may have been created elsewhere with more
# columns, or with `id` required); other columns are left null.
schema = table.schema().as_arrow()
columns = {
    "id": pa.array(ids, pa.int64()),
    "payload": pa.array([f"payload of {i}" for i in ids], pa.string()),
    "region": pa.array([{0: "eu", 1: "us/east"}.get(i % 3) for i in ids], pa.string()),
}
data = pa.table(
    [columns.get(f.name, pa.nulls(len(ids), f.type)).cast(f.type) for f in schema],
    schema=schema,
)
table.append(data)
print("appended", len(ids))
