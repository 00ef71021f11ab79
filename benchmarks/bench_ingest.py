"""Generate and ingest the sales dataset (default 10,000 series x 4,000 weeks = 40M rows).

Baseline, same run and data: a bare pyarrow read of the landed drop and write of it as Parquet,
the floor any ingestion pays. Usage: python -m benchmarks.bench_ingest [--series N --periods T]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import pyarrow.parquet as pq

from benchmarks.common import peak_rss_mb, write_result
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.curation import ingest, pending_drops
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.storage import LocalStorage


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--periods", type=int, default=4_000)
    parser.add_argument("--drops", type=int, default=2)
    args = parser.parse_args(argv)
    spec = load_spec("sales")
    rows = args.series * args.periods

    with tempfile.TemporaryDirectory() as root:
        storage = LocalStorage(root=root)
        t0 = time.perf_counter()
        landed = land_sales(storage, spec, SalesShape(args.series, args.periods), args.drops)
        generate_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        for b in landed:
            table = pq.read_table(storage.local_path(b.name))
            pq.write_table(table, io.BytesIO(), compression="zstd")
        del table
        floor_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        result = ingest(storage, spec, pending_drops(storage, spec))
        ingest_s = time.perf_counter() - t0
        assert result.rows_curated == rows, (result.rows_curated, rows)

        t0 = time.perf_counter()
        summary = CuratedStore(storage, spec).summary()
        summary_s = time.perf_counter() - t0
        assert summary["rows"] == rows and summary["series"] == args.series

    out = {
        "benchmark": "ingest",
        "series": args.series,
        "periods": args.periods,
        "rows": rows,
        "drops": args.drops,
        "seconds": {
            "generate_and_land": round(generate_s, 2),
            "baseline_read_write_parquet": round(floor_s, 2),
            "ingest": round(ingest_s, 2),
            "curated_summary": round(summary_s, 2),
        },
        "ingest_rows_per_s": round(rows / ingest_s),
        "ingest_vs_baseline": round(ingest_s / floor_s, 2),
        "peak_rss_mb": peak_rss_mb(),
    }
    write_result("ingest", out)
    return out


if __name__ == "__main__":
    main()
