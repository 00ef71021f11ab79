"""Training benchmark: our engines against their floors, side by side in one process.

Runs, on the same generated sales data: the local engine, a plain scikit-learn loop over a
pandas groupby and a numpy floor (the same features, every series' ridge normal equations
solved batched). Writes phase timings and ratios to ``benchmarks/results/training.json``.
The Spark engine against a bare ``applyInPandas`` is ``bench_spark_cluster``'s (a standalone
cluster, executors reading the shards).

    python -m benchmarks.bench_training --series 1000 --periods 4000
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import sklearn
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks.common import write_result
from mlops_assets.ml import persistence
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.features import feature_matrix, feature_names, to_series_frame
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import DatasetSpec, load_spec


def _timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def bench_local(table: pa.Table, spec: DatasetSpec, workers: int) -> tuple[dict, pd.DataFrame]:
    phases = Phases()
    results, wall = _timed(train_local, table, spec, max_workers=workers, phases=phases)
    return {"wall_s": wall, **{f"{k}_s": v for k, v in phases.seconds.items()}}, results


def bench_numpy_floor(table: pa.Table, spec: DatasetSpec, block: int = 500) -> tuple[dict, dict]:
    """Same features; every series' standardised ridge solved batched. Regular series only."""
    started = time.perf_counter()
    frame = to_series_frame(table, spec)
    X = feature_matrix(frame, spec)
    features_s = time.perf_counter() - started
    n_series, n_periods, p = frame.n_series, frame.n_rows // frame.n_series, X.shape[1]
    X = X.reshape(n_series, n_periods, p)
    y = frame.target.reshape(n_series, n_periods)
    alpha = float(spec.model.params.get("alpha", 1.0))
    started = time.perf_counter()
    coefs = np.empty((n_series, p))
    for a in range(0, n_series, block):
        b = min(a + block, n_series)
        xs, ys = X[a:b, : n_periods - spec.holdout], y[a:b, : n_periods - spec.holdout]
        ok = np.isfinite(xs).all(axis=2) & np.isfinite(ys)
        aug = np.concatenate([xs, np.ones_like(ys)[..., None], ys[..., None]], axis=2)
        aug = np.where(ok[..., None], aug, 0.0)
        m = aug.transpose(0, 2, 1) @ aug
        n = m[:, p, p][:, None]
        mean, y_mean = m[:, :p, p] / n, m[:, p, p + 1][:, None] / n
        cov = m[:, :p, :p] - n[..., None] * mean[:, :, None] * mean[:, None, :]
        scale = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2) / n, 0.0))
        scale[scale == 0] = 1.0
        gram = cov / (scale[:, :, None] * scale[:, None, :]) + alpha * np.eye(p)
        rhs = (m[:, :p, p + 1] - n * mean * y_mean) / scale
        coefs[a:b] = np.linalg.solve(gram, rhs[..., None])[..., 0]
    fit_s = time.perf_counter() - started
    timings = {"wall_s": features_s + fit_s, "features_s": features_s, "fit_s": fit_s}
    return timings, {spec.series_id(k): c for k, c in zip(frame.keys, coefs, strict=True)}


def bench_sklearn_loop(table: pa.Table, spec: DatasetSpec) -> dict:
    """What a user writes first: features, then a Pipeline.fit per pandas group."""
    started = time.perf_counter()
    frame = to_series_frame(table, spec)
    names = feature_names(spec)
    df = pd.DataFrame(feature_matrix(frame, spec), columns=names)
    df["series"] = np.repeat(np.arange(frame.n_series), np.diff(frame.offsets))
    df["y"] = frame.target
    df["pos"] = df.groupby("series").cumcount(ascending=False)
    features_s = time.perf_counter() - started
    started = time.perf_counter()
    for _, g in df.groupby("series", sort=False):
        train = g[g["pos"] >= spec.holdout].dropna()
        Pipeline([("scale", StandardScaler()), ("model", Ridge(**spec.model.params))]).fit(
            train[names].to_numpy(), train["y"].to_numpy()
        )
    fit_s = time.perf_counter() - started
    return {"wall_s": features_s + fit_s, "features_s": features_s, "fit_s": fit_s}


def bench_serialization(results: pd.DataFrame, n: int = 200) -> dict:
    models = [persistence.loads(b) for b in results["model"].dropna().head(n)]
    _, linear_s = _timed(lambda: [persistence.dumps(m) for m in models])
    import skops.io as sio

    skops_bytes, skops_s = _timed(lambda: [sio.dumps(m) for m in models])
    return {
        "models": len(models),
        "linear_ms_per_model": 1e3 * linear_s / len(models),
        "linear_bytes_per_model": float(results["model"].dropna().map(len).mean()),
        "skops_ms_per_model": 1e3 * skops_s / len(models),
        "skops_bytes_per_model": float(np.mean([len(b) for b in skops_bytes])),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--periods", type=int, default=4_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-sklearn-loop", action="store_true")
    args = parser.parse_args(argv)

    spec = load_spec("sales")
    table, gen_s = _timed(sales_table, SalesShape(args.series, args.periods))
    report: dict = {
        "series": args.series,
        "periods": args.periods,
        "rows": table.num_rows,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "generate_s": gen_s,
    }
    print(f"generated {table.num_rows:,} rows in {gen_s:.1f}s", flush=True)
    floor, floor_coefs = bench_numpy_floor(table, spec)
    report["numpy_floor"] = floor
    print("numpy floor", floor, flush=True)
    local, results = bench_local(table, spec, args.workers)
    report["local_engine"] = local
    print("local engine", local, flush=True)
    report["local_vs_numpy_floor"] = local["wall_s"] / floor["wall_s"]
    report["trained"] = int((results["status"] == "trained").sum())
    report["median_mae_vs_naive"] = float(results["mae"].median() / results["naive_mae"].median())
    sample = results.dropna(subset=["model"]).head(50)
    report["max_coef_diff_vs_floor"] = float(
        max(
            np.max(np.abs(persistence.loads(m)[-1].coef_ - floor_coefs[sid]))
            for sid, m in zip(sample["series_id"], sample["model"], strict=True)
        )
    )
    report["serialization"] = bench_serialization(results)
    del results
    if not args.skip_sklearn_loop:
        report["sklearn_loop"] = bench_sklearn_loop(table, spec)
        report["local_vs_sklearn_loop"] = local["wall_s"] / report["sklearn_loop"]["wall_s"]
        print("sklearn loop", report["sklearn_loop"], flush=True)
    write_result("training", report)
    return report


if __name__ == "__main__":
    main()
