"""Validation throughput: the gate ingestion uses vs plain pandas checks of the same rules.

Times, on the same typed drop in the same run:

* ``gate`` (and ``gate_shuffled``, the same rows in random order): exactly what
  ``curation.ingest`` runs per drop with a gate: the row-level masks of the suite and the split
  into kept and quarantined rows (``validate_rows``), and the drop-level expectations (exact profile + great-expectations run on it, with distribution
  bands from a reference window).
* ``pandas``: the same rules written as plain pandas (notna, isfinite, between, isin,
  duplicated, row count, mean/std/quantiles) on the same data already in a DataFrame.
* ``gx_full`` (``--gx-rows``, default 1M): the whole row-level suite run by great-expectations
  itself, for scale.

GX import and context start-up are one-off costs per process, reported apart.

    .venv/bin/python benchmarks/bench_validation.py --rows 10000000 40000000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.common import write_result
from mlops_assets.ml.drops import ROW, DropRejected
from mlops_assets.ml.sample_data import SalesShape, iter_sales
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.validation.gate import DropGate
from mlops_assets.ml.validation.gx import GxRunner
from mlops_assets.ml.validation.rows import validate_rows
from mlops_assets.ml.validation.suite import build_suite, drift_columns, row_expectations

AS_OF = "2026-11-21"


def typed_drop(n_rows: int, n_periods: int = 4000) -> pa.Table:
    """A sales drop typed like ``parse_drop``'s output (plain strings, ROW column)."""
    n_series = max(1, n_rows // n_periods)
    parts = []
    for chunk in iter_sales(SalesShape(n_series, n_periods)):
        parts.append(
            chunk.cast(
                pa.schema(
                    [
                        pa.field(
                            f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type
                        )
                        for f in chunk.schema
                    ]
                )
            )
        )
    t = pa.concat_tables(parts).combine_chunks()
    return t.append_column(ROW, pa.array(np.arange(t.num_rows, dtype=np.int64)))


def run_gate(gate: DropGate, table: pa.Table, spec) -> dict:
    """What ``ingest`` does with a parsed drop: row masks, split, drop-level expectations."""
    t0 = time.perf_counter()
    check = validate_rows(table, spec, for_scoring=False, as_of=gate.as_of)
    t1 = time.perf_counter()
    try:
        report = gate.check_drop("bench.parquet", check)
        out = {"failures": len(report.failures)}
    except DropRejected as e:
        out = {"quarantined": str(e)}
    t2 = time.perf_counter()
    return {"good": check.kept.num_rows, "row_level_s": t1 - t0, "drop_level_s": t2 - t1, **out}


def run_pandas(df, spec) -> dict:
    """The same rules as plain pandas on the same rows, already in a DataFrame."""
    t0 = time.perf_counter()
    v, bad = spec.validation, np.zeros(len(df), dtype=bool)
    for name, col in spec.columns.items():
        s = df[name]
        if not col.nullable:
            bad |= s.isna().to_numpy()
        if col.type.value in ("float", "int") and not col.allowed:
            x = s.to_numpy(dtype=float, na_value=np.nan)
            bad |= ~np.isfinite(x)
            if col.min is not None:
                bad |= x < col.min
            if col.max is not None:
                bad |= x > col.max
        if col.allowed:
            bad |= ~s.isin([int(a) for a in col.allowed]).to_numpy()
    t = df[spec.time]
    bad |= (t < np.datetime64(v.earliest)).to_numpy() | (t > np.datetime64(AS_OF)).to_numpy()
    t1 = time.perf_counter()
    bad |= df.duplicated(subset=spec.key_columns, keep=False).to_numpy()
    t2 = time.perf_counter()
    good = df[~bad]
    stats = {}
    for c in drift_columns(spec):
        g = good[c]
        stats[c] = (g.mean(), g.std(), *g.quantile([0.1, 0.5, 0.9]).tolist())
    ok = v.min_rows_per_drop <= len(good)
    t3 = time.perf_counter()
    return {
        "good": len(good),
        "row_count_ok": ok,
        "values_s": t1 - t0,
        "unique_s": t2 - t1,
        "split_and_stats_s": t3 - t2,
    }


def median_time(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 40_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--gx-rows",
        type=int,
        default=1_000_000,
        help="rows for the full-GX reference run (0 to skip)",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/validation.json"
    )
    args = ap.parse_args()
    spec = load_spec("sales")

    t0 = time.perf_counter()
    runner = GxRunner()
    gx_startup = time.perf_counter() - t0
    results = []
    for n in args.rows:
        table = typed_drop(n)
        # Reference window: every period of the same data (a drop spanning all periods is
        # then in band and passes, the common case; a rejection would take the same path).
        spec.validation.drift.reference_periods = len(pc.unique(table[spec.time]))
        gate = DropGate(spec, AS_OF, reference=table, runner=runner)
        _ = gate.bands  # reference bands are computed once per run, before the first drop
        run_gate(gate, table.take(np.arange(0, table.num_rows, 997)), spec)  # warm-up
        g_med, g_all, g_out = median_time(
            lambda g=gate, t=table: run_gate(g, t, spec), args.repeats
        )
        # Drops usually arrive sorted by (key, time), where one ordered pass proves uniqueness;
        # the same rows shuffled take the counting path instead: time both.
        perm = np.random.default_rng(0).permutation(table.num_rows)
        shuffled = table.take(pa.array(perm))
        u_med, u_all, u_out = median_time(
            lambda g=gate, t=shuffled: run_gate(g, t, spec),
            args.repeats,
        )
        shuffled = None
        df = table.drop_columns([ROW]).to_pandas(date_as_object=False)
        p_med, p_all, p_out = median_time(lambda d=df: run_pandas(d, spec), args.repeats)
        assert g_out["good"] == p_out["good"] == u_out["good"], (g_out, p_out, u_out)
        row = {
            "rows": table.num_rows,
            "gate_s": round(g_med, 3),
            "gate_all_s": [round(x, 3) for x in g_all],
            "gate_rows_per_s": round(table.num_rows / g_med),
            "gate_shuffled_s": round(u_med, 3),
            "gate_shuffled_all_s": [round(x, 3) for x in u_all],
            "gate_shuffled_rows_per_s": round(table.num_rows / u_med),
            "pandas_s": round(p_med, 3),
            "pandas_all_s": [round(x, 3) for x in p_all],
            "pandas_rows_per_s": round(table.num_rows / p_med),
            "good_rows": g_out["good"],
            "gate_phases_last_s": {k: round(g_out[k], 3) for k in ("row_level_s", "drop_level_s")},
            "pandas_phases_last_s": {
                k: round(p_out[k], 3) for k in ("values_s", "unique_s", "split_and_stats_s")
            },
            "load_average": os.getloadavg(),
        }
        results.append(row)
        print(json.dumps(row))
    gx_full = None
    if args.gx_rows:
        small = typed_drop(args.gx_rows)
        frame = small.drop_columns([ROW]).to_pandas(date_as_object=False)
        suite = build_suite("bench.rows", row_expectations(spec, AS_OF))
        g_med, _, res = median_time(lambda: runner.run(suite, frame), 1)
        gx_full = {
            "rows": small.num_rows,
            "s": round(g_med, 3),
            "rows_per_s": round(small.num_rows / g_med),
            "success": res.success,
        }
        print(json.dumps({"gx_full": gx_full}))
    doc = {
        "benchmark": "validation",
        "command": "benchmarks/bench_validation.py "
        + " ".join(["--rows", *map(str, args.rows), "--repeats", str(args.repeats)]),
        "gx_startup_s": round(gx_startup, 3),
        "target_rows_per_s": 2_500_000,
        "results": results,
        "gx_full_suite": gx_full,
    }
    write_result("validation", doc, args.out)


if __name__ == "__main__":
    main()
