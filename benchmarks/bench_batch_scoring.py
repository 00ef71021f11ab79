"""Batch scoring through the local path (the Pipes script's core) against a bare baseline.

    python -m benchmarks.bench_batch_scoring --series 10000 --periods 4000   # 40M rows
    python -m benchmarks.bench_batch_scoring --series 1000 --periods 200     # quick

Baseline in the same run: read the drop, build features for all series at once, one vectorised
linear predict (coefficients stacked per row), write. Results: benchmarks/results/batch_scoring.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.batch.demo import publish_model_set
from mlops_assets.batch.score_drop import DropJob, run_instance
from mlops_assets.ml.features import feature_matrix, to_series_frame
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from resources.storage import LocalStorage

HISTORY = 120


def baseline(storage: LocalStorage, name: str, spec, coefs: dict) -> float:
    t = time.perf_counter()
    table = pq.read_table(storage.local_path(name))
    frame = to_series_frame(table, spec)
    X = feature_matrix(frame, spec)
    sid = np.repeat(np.arange(frame.n_series), np.diff(frame.offsets))
    W = np.stack([coefs[k][0] for k in frame.keys])
    b = np.array([coefs[k][1] for k in frame.keys])
    pred = np.einsum("ij,ij->i", np.nan_to_num(X), W[sid]) + b[sid]
    buf = io.BytesIO()
    pq.write_table(pa.table({"prediction": pred}), buf)
    storage.write_bytes("bench/baseline.parquet", buf.getvalue())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--periods", type=int, default=4_000)
    ap.add_argument("--out", default="benchmarks/results/batch_scoring.json")
    args = ap.parse_args()
    spec = load_spec("sales")
    root = tempfile.mkdtemp(prefix="bench-batch-")
    storage = LocalStorage(root=root)
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
    cfg = {"kind": "local", "root": root}
    job = DropJob(
        "sales", info.name, info.etag, f"bench.parquet@{info.etag}", cfg, cfg, "m/v1", "1"
    )
    t = time.perf_counter()
    summary = run_instance(job)
    ours = time.perf_counter() - t
    # baseline coefficients: a random linear model per series (same shapes, same arithmetic)
    n_feat = feature_matrix(to_series_frame(drop.slice(0, 10), spec), spec).shape[1]
    keys = {tuple(str(v) for v in k) for k in to_series_frame(drop, spec).keys}
    rng = np.random.default_rng(0)
    coefs = {k: (rng.normal(size=n_feat), 1.0) for k in keys}
    coefs = {k: coefs.get(tuple(map(str, k)), (np.zeros(n_feat), 0.0)) for k in coefs}
    frame_keys = to_series_frame(drop.slice(0, 0), spec).keys
    del frame_keys
    base = baseline(
        storage,
        info.name,
        spec,
        {k: v for k, v in coefs.items()} | {tuple(k): v for k, v in coefs.items()},
    )
    result = {
        "rows": drop.num_rows,
        "series": args.series,
        "models": manifest.num_rows,
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "prepare_s": round(prep, 3),
        "score_drop_s": round(ours, 3),
        "phases_s": summary.seconds,
        "rows_scored": summary.rows_scored,
        "baseline_read_features_predict_write_s": round(base, 3),
        "ratio_to_baseline": round(ours / base, 2),
        "target_s_40M_rows": 15.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
