"""The daily chain end to end: a cold start, then a daily retrain, through Dagster.

Cold start: 10,000 series x 4,000 weeks (40M rows) land, then one run of ``sales_daily_retrain``
(ingest, validate, train, evaluate, register) on a SQLite Dagster instance, as ``make demo`` and
the schedule run it. Daily retrain: one new week (10,000 rows) lands and the next day's run
validates it incrementally and retrains. Per step: its wall time from Dagster's event log;
orchestration overhead = run wall time minus the steps' own time, against the training step
and against the whole run.

    python -m benchmarks.bench_chain [--series N --periods T]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import peak_rss_mb, write_result

COLD_TARGET_S, DAILY_TARGET_S, OVERHEAD_TARGET = 25.0, 10.0, 0.05  # docs/architecture.md §4


def step_spans(instance, run_id: str) -> dict[str, tuple[float, float]]:
    """Each step's start and end (``time.time()`` seconds) from the run's event log."""
    import dagster as dg

    starts, out = {}, {}
    for record in instance.all_logs(run_id):
        ev = record.dagster_event
        if ev is None or not ev.step_key:
            continue
        if ev.event_type == dg.DagsterEventType.STEP_START:
            starts[ev.step_key] = record.timestamp
        elif ev.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            out[ev.step_key] = (starts[ev.step_key], record.timestamp)
    return out


def _step_seconds(instance, run_id: str) -> dict[str, float]:
    return {k: round(b - a, 3) for k, (a, b) in step_spans(instance, run_id).items()}


def run_job(job, instance, partition: str) -> dict:
    """One run of ``job`` for ``partition`` (added to its dynamic as-of partitions first, as
    the daily sensor does): wall, steps' seconds, asset phases, orchestration overhead."""
    name = job.partitions_def.name
    if not instance.has_dynamic_partition(name, partition):
        instance.add_dynamic_partitions(name, [partition])
    t0 = time.perf_counter()
    result = job.execute_in_process(partition_key=partition, instance=instance)
    wall = time.perf_counter() - t0
    steps = _step_seconds(instance, result.run_id)
    train_key = next(k for k in steps if k.endswith("candidate_models"))
    overhead = wall - sum(steps.values())
    phases = {}
    for node in ("sales__curated", "sales__candidate_models", "sales__evaluation"):
        for mat in result.asset_materializations_for_node(node):
            phases[node] = {
                k: round(float(v.value), 3)
                for k, v in mat.metadata.items()
                if k.startswith("seconds") and isinstance(v.value, int | float)
            }
    return {
        "run_id": result.run_id,
        "wall_s": round(wall, 2),
        "steps_s": steps,
        "phases_s": phases,
        "orchestration_overhead_s": round(overhead, 2),
        "overhead_vs_training": round(overhead / steps[train_key], 3),
        # The same seconds against the whole run (a daily run's training step is short).
        "overhead_vs_run": round(overhead / wall, 3),
    }


def chain_home(home: str) -> tuple:
    """A project home at ``home`` (local storage, SQLite Dagster instance): its storage, the
    sales spec, the sales daily job and the instance."""
    os.environ["MLOPS_HOME"] = home
    import dagster as dg

    from mlops_assets.definitions import daily_job_name, defs
    from mlops_assets.ml.spec import load_spec
    from mlops_assets.profiles import ensure_dagster_home, project_home, storage_for

    ensure_dagster_home(Path(home))
    spec = load_spec("sales")
    storage = storage_for("local", project_home()).process_config_and_initialize()
    job = defs().resolve_job_def(daily_job_name(spec))
    return storage, spec, job, dg.DagsterInstance.get()


def against_full_refit(storage, spec, as_of: str) -> dict:
    """The latest (daily) set's ridge coefficients and metrics against a full refit of every
    series on the same curated data (the training run with every series chosen: no
    incremental plan), written as one more candidate set."""
    import numpy as np
    import pyarrow.compute as pc

    from mlops_assets.domain import model_sets as ms
    from mlops_assets.domain.training_run import train_candidate
    from resources.training_engine import LocalTrainingEngine

    daily = ms.read_manifest(storage, ms.read_pointer(storage, ms.latest_pointer(spec)))
    ids = daily["series_id"].to_pylist()
    t0 = time.perf_counter()
    full = train_candidate(
        storage, spec, LocalTrainingEngine(), as_of=as_of, run_id="fullrefit", series=ids
    ).manifest
    seconds = time.perf_counter() - t0
    a = ms.load_models(storage, daily, set(ids))
    b = ms.load_models(storage, full, set(ids))
    worst, compared = 0.0, 0
    for sid, model in b.items():
        if not hasattr(model, "steps") or sid not in a:
            continue
        x, y = a[sid][-1].coef_, model[-1].coef_
        worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300)))
        compared += 1
    metric = {}
    for name in ("mae", "smape", "mase"):
        x = np.asarray(daily[name].to_numpy(zero_copy_only=False), float)
        y = np.asarray(full[name].to_numpy(zero_copy_only=False), float)
        ok = np.isfinite(y)
        metric[name] = float(np.max(np.abs(x[ok] - y[ok]) / np.maximum(np.abs(y[ok]), 1e-12)))
    same_fp = bool(pc.all(pc.equal(daily["data_fingerprint"], full["data_fingerprint"])).as_py())
    return {
        "series_compared": compared,
        "max_relative_coef_difference": worst,  # per series, in norm
        "max_relative_metric_difference": metric,
        "fingerprints_equal": same_fp,
        "full_refit_s": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--periods", type=int, default=4_000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as home:
        from mlops_assets.domain.sample_drops import land_sales
        from mlops_assets.ml.sample_data import SalesShape

        storage, spec, job, instance = chain_home(home)
        t0 = time.perf_counter()
        shape = SalesShape(args.series, args.periods + 1, end="2026-11-16")
        _history, week = land_sales(storage, spec, shape, n_drops=2)
        held = storage.move(week.name, "holding/" + week.name.rsplit("/", 1)[-1])
        land_s = time.perf_counter() - t0
        cold = run_job(job, instance, "2026-11-10")
        storage.move(held.name, week.name)
        daily = run_job(job, instance, "2026-11-17")
        daily["incremental"] = "seconds_refresh" in daily["phases_s"]["sales__candidate_models"]
        equal_to_full = against_full_refit(storage, spec, "2026-11-17")

    out = {
        "benchmark": "chain",
        "series": args.series,
        "periods": args.periods,
        "rows": args.series * args.periods,
        "land_s": round(land_s, 2),
        "cold_start": cold,
        "daily_retrain": daily,
        # The daily set against a full refit of every series on the same data, outside Dagster.
        "daily_vs_full_refit": equal_to_full,
        "targets": {
            "cold_start_s": COLD_TARGET_S,
            "daily_retrain_s": DAILY_TARGET_S,
            "overhead_vs_training": OVERHEAD_TARGET,
        },
        "peak_rss_mb": peak_rss_mb(),
    }
    write_result("chain", out)
    return out


if __name__ == "__main__":
    main()
