"""One engine's anti-join for benches/anti_join.rs: prints `rows seconds peak_rss_bytes`."""
import os
import resource
import sys
import time

engine, source, keys = sys.argv[1:4]
threads = os.cpu_count() or 1
start = time.perf_counter()
if engine == "duckdb":
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads={threads}")
    reader = con.execute(
        f"SELECT s.* FROM read_parquet('{source}/*.parquet') s "
        f"ANTI JOIN read_parquet('{keys}/*.parquet') k ON s.id = k.id"
    ).fetch_record_batch(1 << 17)
    rows = sum(batch.num_rows for batch in reader)
elif engine == "polars":
    import polars as pl

    frame = pl.scan_parquet(f"{source}/*.parquet").join(
        pl.scan_parquet(f"{keys}/*.parquet"), on="id", how="anti"
    )
    rows = frame.collect(engine="streaming").height
else:
    raise SystemExit(f"unknown engine {engine}")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(rows, f"{seconds:.3f}", peak)
