"""One engine's anti-join for benches/anti_join.rs: prints `rows seconds peak_rss_bytes`.

Arguments: engine (duckdb or polars), source directories (comma-separated),
the key files' directory, and the key columns (comma-separated).
"""
import os
import resource
import sys
import time

engine, sources, keys, on = sys.argv[1:5]
sources = [f"{s}/*.parquet" for s in sources.split(",")]
on = on.split(",")
threads = os.cpu_count() or 1
start = time.perf_counter()
if engine == "duckdb":
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads={threads}")
    condition = " AND ".join(f"s.{c} = k.{c}" for c in on)
    reader = con.execute(
        f"SELECT s.* FROM read_parquet({sources!r}) s "
        f"ANTI JOIN read_parquet('{keys}/*.parquet') k ON {condition}"
    ).fetch_record_batch(1 << 17)
    rows = sum(batch.num_rows for batch in reader)
elif engine == "polars":
    import polars as pl

    frame = pl.scan_parquet(sources).join(
        pl.scan_parquet(f"{keys}/*.parquet"), on=on, how="anti"
    )
    rows = frame.collect(engine="streaming").height
else:
    raise SystemExit(f"unknown engine {engine}")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(rows, f"{seconds:.3f}", peak)
