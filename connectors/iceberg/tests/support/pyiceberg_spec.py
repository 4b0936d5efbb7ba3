"""Evolves an Iceberg table's partition spec with pyiceberg (a tool we did not write).

usage: pyiceberg_spec.py CATALOG_URI WAREHOUSE TABLE (drop|add) FIELD
`drop FIELD` removes the partition field FIELD; `add id_bucket` adds back
`bucket[4](id)` named id_bucket. Prints the default spec id afterwards.
"""
import sys

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.transforms import BucketTransform

uri, warehouse, table_name, action, field = sys.argv[1:6]
catalog = SqlCatalog("default", uri=uri, warehouse=warehouse)
table = catalog.load_table(table_name)
with table.update_spec() as update:
    if action == "drop":
        update.remove_field(field)
    elif action == "add" and field == "id_bucket":
        update.add_field("id", BucketTransform(4), "id_bucket")
    else:
        sys.exit(f"unknown change: {action} {field}")
print(catalog.load_table(table_name).spec().spec_id)
