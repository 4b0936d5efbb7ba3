"""The Python side of the pipeline benchmark (benches/pipeline.rs).

    python pipeline.py daft  --sink iceberg|delta --work DIR --source DIR --phase NAME [--no-checkpoint]
    python pipeline.py check --sink iceberg|delta --work DIR

`daft` runs the benchmark's pipeline in Daft on its Ray runner: read the
source Parquet files (checkpointed on `id` unless --no-checkpoint), add
`chars = length(text)`, append to the table (an idempotent commit keyed by
the phase unless --no-checkpoint). It prints one JSON line: the seconds of
the pipeline itself, of starting Ray, and the rows written.

`check` reads the table with pyiceberg (SQL catalog on the same SQLite file)
or the deltalake package and prints one JSON line: rows and distinct ids.

Both create nothing but what they are asked to: the table is created by
`daft` when missing, with the same schema the Rust side uses.
"""

import argparse
import json
import os
import time

NAMESPACE = "bench"
TABLE = "documents"


def iceberg_catalog(work):
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        "bench",
        uri=f"sqlite:///{work}/catalog.db",
        warehouse=f"file://{work}/warehouse",
    )


def iceberg_table(work):
    """Loads the table, creating it (unpartitioned) when missing."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType

    catalog = iceberg_catalog(work)
    try:
        catalog.create_namespace(NAMESPACE)
    except NamespaceAlreadyExistsError:
        pass
    schema = Schema(
        NestedField(1, "id", LongType(), required=False),
        NestedField(2, "text", StringType(), required=False),
        NestedField(3, "chars", LongType(), required=False),
    )
    try:
        return catalog.create_table(f"{NAMESPACE}.{TABLE}", schema=schema)
    except TableAlreadyExistsError:
        return catalog.load_table(f"{NAMESPACE}.{TABLE}")


def run_daft(args):
    import daft
    from daft import col

    started = time.perf_counter()
    daft.set_runner_ray()
    import ray

    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    ray_seconds = time.perf_counter() - started

    table = iceberg_table(args.work) if args.sink == "iceberg" else None
    store = daft.CheckpointStore(f"file://{args.work}/daft-checkpoints")
    started = time.perf_counter()
    checkpoint = None if args.no_checkpoint else daft.CheckpointConfig(store, on="id")
    df = daft.read_parquet(os.path.join(args.source, "*.parquet"), checkpoint=checkpoint)
    df = df.with_column("chars", col("text").length().cast(daft.DataType.int64()))
    commit = (
        None
        if args.no_checkpoint
        else daft.IdempotentCommit(store, idempotence_key=f"bench-{args.phase}")
    )
    if args.sink == "iceberg":
        result = df.write_iceberg(table, mode="append", checkpoint=commit)
    else:
        result = df.write_deltalake(
            os.path.join(args.work, "table"), mode="append", checkpoint=commit
        )
    written = sum(int(r) for r in result.to_pydict().get("rows", []) or [0])
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "ray_seconds": ray_seconds, "rows_written": written}))


def run_check(args):
    import pyarrow.compute as pc

    if args.sink == "iceberg":
        table = iceberg_catalog(args.work).load_table(f"{NAMESPACE}.{TABLE}")
        ids = table.scan(selected_fields=("id",)).to_arrow().column("id")
    else:
        from deltalake import DeltaTable

        ids = DeltaTable(os.path.join(args.work, "table")).to_pyarrow_table(columns=["id"]).column("id")
    print(json.dumps({"rows": len(ids), "distinct": pc.count_distinct(ids).as_py()}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["daft", "check"])
    parser.add_argument("--sink", choices=["iceberg", "delta"], required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--source")
    parser.add_argument("--phase", default="first")
    parser.add_argument("--no-checkpoint", action="store_true")
    args = parser.parse_args()
    if args.command == "daft":
        run_daft(args)
    else:
        run_check(args)


if __name__ == "__main__":
    main()
