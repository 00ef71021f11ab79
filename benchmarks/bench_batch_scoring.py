"""Batch scoring through the local path (the Pipes script's core) against a bare baseline.

    python -m benchmarks.bench_batch_scoring --series 10000 --periods 4000   # 40M rows
    python -m benchmarks.bench_batch_scoring --series 1000 --periods 200     # quick

Baseline in the same run (the floor docs/architecture.md §4 quotes as "read + validate +
features + predict + write"): read the drop a piece at a time, type and check its rows with the
same value rules, features, one vectorised linear predict, write the predictions. A second
floor, reported beside it, also writes the four interval bounds the job writes (each
prediction ± a per-series width, encoded as the job encodes them): the same float columns out.
Wall and CPU seconds (all threads of this process) of each.

Each round runs the job (cold: its model set read and loaded again), the floor and the second
floor, each in a fresh process of its own (spawned; imports not timed) as an AML job or a
script would run, so none of them finds memory another one grew and freed, each after
``os.sync()`` (no earlier write still going to the disk) and with no output left from the
round before. The ratio reported is the median of the rounds' ratios, beside every round's
figures (one round on this shared VM varies by ±15%). Results:
benchmarks/results/batch_scoring.json.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import write_result
from mlops_assets.domain.batch_layout import predictions_name
from mlops_assets.domain.demo_model_set import demo_ref, publish_model_set
from mlops_assets.heap import retain_freed_memory
from mlops_assets.jobs.batch_params import DropJob, job_spec
from mlops_assets.jobs.drop_scoring import parquet_options
from mlops_assets.jobs.drop_validation import apply_value_rules, scoring_spec
from mlops_assets.jobs.score_drops import run_instance
from mlops_assets.ml.drops import type_rows
from mlops_assets.ml.features import feature_columns, to_series_frame
from mlops_assets.ml.predict import predict_grouped
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.score_request import bound_fields
from mlops_assets.ml.spec import load_spec
from mlops_assets.storage import LocalStorage

HISTORY = 120


def baseline(
    storage: LocalStorage, name: str, spec, piece_rows: int = 1 << 21, bounds: bool = False
) -> tuple[float, float]:
    """The floor: read, validate (the drop's value rules, as ours), features, one vectorised
    linear predict per piece, write the predictions; pieces of about ``piece_rows`` rows, as
    ours. No quarantine, no history tails
    (a series cut by a piece just loses its lags there), no per-row errors, no model loading
    (a random linear model per series: the same arithmetic), no threads. ``bounds``: also the
    interval bound columns, as the job encodes them. Returns (wall, CPU) seconds."""
    t, cpu = time.perf_counter(), time.process_time()
    pf = pq.ParquetFile(storage.local_path(name))
    rng = np.random.default_rng(0)
    buf, writer = io.BytesIO(), None
    sspec = scoring_spec(spec, has_target=spec.target in pf.schema_arrow.names)
    first = 0
    for batch in pf.iter_batches(batch_size=piece_rows):
        raw = pa.Table.from_batches([batch])
        good = apply_value_rules(type_rows(raw, sspec, first, keep_dictionaries=True), sspec).good
        first += raw.num_rows
        frame = to_series_frame(good, spec)
        columns = feature_columns(frame, spec)
        W, b = rng.normal(size=(frame.n_series, len(columns))), rng.normal(size=frame.n_series)
        pred = predict_grouped(columns, np.arange(frame.n_series), np.diff(frame.offsets), (W, b))
        out = {"prediction": pred}
        if bounds:
            for level in spec.intervals.levels:
                width = np.repeat(rng.random(frame.n_series), np.diff(frame.offsets))
                lower, upper = bound_fields(level)
                out[lower], out[upper] = np.maximum(pred - width, 0.0), pred + width
        table = pa.table(out)
        options = parquet_options(table.column_names) if bounds else {}
        writer = writer or pq.ParquetWriter(buf, table.schema, **options)
        writer.write_table(table)
    writer.close()
    storage.write_bytes("bench/baseline.parquet", buf.getvalue())
    return time.perf_counter() - t, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--periods", type=int, default=4_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/batch_scoring.json"
    )
    args = ap.parse_args()
    spec = load_spec("sales")
    root = tempfile.mkdtemp(prefix="bench-batch-")
    try:
        run(args, spec, LocalStorage(root=root))
    finally:
        shutil.rmtree(root, ignore_errors=True)  # ~2 GB at the full size


def run(args: argparse.Namespace, spec, storage: LocalStorage) -> None:
    t = time.perf_counter()
    full = sales_table(SalesShape(args.series, HISTORY + args.periods))
    cut = sorted(set(full[spec.time].to_pylist()))[HISTORY]
    manifest = publish_model_set(
        storage, spec, full.filter(pc.less(full[spec.time], cut)), "m/v1", max_workers=2
    )
    drop = full.filter(pc.greater_equal(full[spec.time], cut))
    buf = io.BytesIO()
    pq.write_table(drop, buf)
    info = storage.write_bytes("scoring/sales/inbox/bench.parquet", buf.getvalue())
    prep = time.perf_counter() - t
    cfg = {"kind": "local", "root": storage.root}
    ref = demo_ref(storage, spec, "m/v1").to_dict()
    spec_json = spec.model_dump(mode="json")
    job = DropJob(spec_json, info.name, info.etag, f"bench.parquet@{info.etag}", cfg, cfg, ref)
    rounds = [one_round(job, storage, info.name) for _ in range(args.rounds)]
    last = rounds[-1]
    result = {
        "rows": drop.num_rows,
        "series": args.series,
        "models": manifest.num_rows,
        "cpus": os.cpu_count(),
        "prepare_s": round(prep, 3),
        "rounds": rounds,
        "ratio_to_baseline": statistics.median(r["ratio_to_baseline"] for r in rounds),
        "ratio_to_baseline_writing_the_bounds_too": statistics.median(
            r["ratio_to_baseline_writing_the_bounds_too"] for r in rounds
        ),
        "score_drop_s": statistics.median(r["score_drop_s"] for r in rounds),
        "baseline_read_validate_features_predict_write_s": statistics.median(
            r["baseline_read_validate_features_predict_write_s"] for r in rounds
        ),
        "phases_s": last["phases_s"],
        "rows_scored": last["rows_scored"],
        "target_ratio": 1.5,
    }
    write_result("batch_scoring", result, args.out)


def _fresh_process(what: str, job: DropJob, root: str, name: str) -> dict:
    """``what`` ("job", "floor", "floor_bounds") timed in this process (a fresh one)."""
    retain_freed_memory()  # as the job script does (score_drops.main)
    storage, spec = LocalStorage(root=root), job_spec(job)
    if what != "job":
        wall, cpu = baseline(storage, name, spec, bounds=what == "floor_bounds")
        return {"wall": wall, "cpu": cpu}
    t, cpu = time.perf_counter(), time.process_time()
    summary = run_instance(job)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"wall": wall, "cpu": cpu, "phases": summary.seconds, "rows": summary.rows_scored}


def _in_fresh_process(what: str, job: DropJob, storage: LocalStorage, name: str) -> dict:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as one:
        return one.submit(_fresh_process, what, job, storage.root, name).result()


def _quiet_disk(storage: LocalStorage, *names: str) -> None:
    """No output of an earlier run left (replacing one would add its removal), and nothing
    still being written back to the disk when the next measurement starts."""
    for name in names:
        storage.delete(name)
    os.sync()


def one_round(job: DropJob, storage: LocalStorage, name: str) -> dict:
    """The job (cold), then the floor, then the floor writing the bounds too, each in a fresh
    process."""
    output = predictions_name(job.dataset, job.key)
    _quiet_disk(storage, output, "bench/baseline.parquet")
    load = os.getloadavg()[0]
    job_run = _in_fresh_process("job", job, storage, name)
    ours, ours_cpu = job_run["wall"], job_run["cpu"]
    _quiet_disk(storage)
    floor = _in_fresh_process("floor", job, storage, name)
    base, base_cpu = floor["wall"], floor["cpu"]
    _quiet_disk(storage, "bench/baseline.parquet")
    floor_bounds = _in_fresh_process("floor_bounds", job, storage, name)
    same_columns, same_columns_cpu = floor_bounds["wall"], floor_bounds["cpu"]
    return {
        "load_avg_1m": round(load, 2),
        "score_drop_s": round(ours, 3),
        "score_drop_cpu_s": round(ours_cpu, 2),
        "phases_s": job_run["phases"],
        "rows_scored": job_run["rows"],
        "baseline_read_validate_features_predict_write_s": round(base, 3),
        "baseline_cpu_s": round(base_cpu, 2),
        "ratio_to_baseline": round(ours / base, 2),
        "baseline_writing_the_bounds_too_s": round(same_columns, 3),
        "baseline_writing_the_bounds_too_cpu_s": round(same_columns_cpu, 2),
        "ratio_to_baseline_writing_the_bounds_too": round(ours / same_columns, 2),
    }


if __name__ == "__main__":
    main()
