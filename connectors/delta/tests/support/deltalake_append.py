"""Appends rows to a Delta table with the deltalake Python package (a writer we
did not write), partitioned by `region`.

usage: deltalake_append.py TABLE_DIR IDS_JSON
"""
import json
import sys

import pyarrow as pa
from deltalake import write_deltalake

table_dir, ids_json = sys.argv[1:3]
ids = json.loads(ids_json)
data = pa.table(
    {
        "id": pa.array(ids, pa.int64()),
        "region": pa.array(["eu" if i % 2 == 0 else "us" for i in ids], pa.string()),
        "payload": pa.array([f"payload of {i}" for i in ids], pa.string()),
    }
)
write_deltalake(table_dir, data, mode="append", partition_by=["region"])
print("appended", len(ids))
