"""Scale: the cold chain on N ragged series (default 100,000 x up to 260 weeks, ~21M rows).

The realistic sales data (``SalesShape(realistic=True)``: new and discontinued series, missing
weeks, intermittent slow movers) lands as one history drop, then one run of the daily job
(``sales_daily_retrain``: ingest, validate, train with the local engine, evaluate, register)
runs on a SQLite Dagster instance, as ``bench_chain`` runs it. Per phase (landing, each step,
the run): wall seconds, CPU seconds and the peak memory of this process and all its children
(``TreeSampler``: PSS and RSS sums), and the load average at its start and end: this machine
is shared.

    python -m benchmarks.bench_scale [--series N --periods T]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pyarrow.parquet as pq

from benchmarks.bench_chain import chain_home, run_job, step_spans
from benchmarks.common import TreeSampler, write_result

WALL_TARGET_S, RSS_TARGET_MB = 120.0, 8 * 1024
AS_OF = "2026-11-17"  # the day after the newest generated week


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--periods", type=int, default=260, help="weeks of the longest life")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.2, help="sampling seconds")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as home, TreeSampler(args.interval) as sampler:
        from mlops_assets.domain.sample_drops import land_sales
        from mlops_assets.ml.sample_data import SalesShape

        storage, spec, job, instance = chain_home(home)
        shape = SalesShape(args.series, args.periods, args.seed, realistic=True)
        t0, wall0 = time.time(), time.perf_counter()
        landed = land_sales(storage, spec, shape, n_drops=1)
        land = {"wall_s": round(time.perf_counter() - wall0, 2), **sampler.window(t0)}
        rows = sum(pq.read_metadata(storage.local_path(b.name)).num_rows for b in landed)
        t1 = time.time()
        cold = run_job(job, instance, AS_OF)
        spans = step_spans(instance, cold["run_id"])
        run_window = sampler.window(t1)
        cold["steps"] = {
            key: {"wall_s": round(b - a, 3), **sampler.window(a, b)}
            for key, (a, b) in spans.items()
        }
        del cold["steps_s"]  # in "steps", with each step's CPU and memory
    out = {
        "benchmark": "scale",
        "series": args.series,
        "periods": args.periods,
        "rows": rows,
        "land": land,
        "cold_chain": {**cold, **run_window},
        "peak_pss_mb": sampler.window()["peak_pss_mb"],
        "peak_rss_sum_mb": sampler.window()["peak_rss_sum_mb"],
        # Held memory is the PSS sum; the RSS sum counts a forked worker's shared pages again.
        "targets": {"cold_chain_s": WALL_TARGET_S, "peak_memory_mb": RSS_TARGET_MB},
        "met": {
            "cold_chain_s": cold["wall_s"] <= WALL_TARGET_S,
            "peak_memory_mb": run_window["peak_pss_mb"] <= RSS_TARGET_MB,
            "peak_memory_mb_as_rss_sum": run_window["peak_rss_sum_mb"] <= RSS_TARGET_MB,
        },
    }
    # The default size is the registered figure; other sizes keep their own file beside it.
    write_result("scale" if args.series == 100_000 else f"scale_{args.series}", out)
    return out


if __name__ == "__main__":
    main()
