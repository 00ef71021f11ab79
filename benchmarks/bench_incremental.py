"""Incremental ridge benchmark: a daily step of exact incremental fits against full refits.

For S series with the sales spec's feature count, each with a 156-period training window:
the full refit (``fast_ridge.fit_ridge`` per series, today's path), its batched floor
(``RidgeMoments.from_rows`` + ``solve`` on every window's rows), and the daily step (one new
row per series folded in, the oldest one downdated, every series solved; then the Pipelines
built). Each figure with CPU time and the load average beside its wall time, and as a ratio to
the full refit of the same run. Writes ``benchmarks/results/incremental.json``.

    python -m benchmarks.bench_incremental --series 10000
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from statistics import median
from typing import Any

import numpy as np

from benchmarks.common import peak_rss_mb, write_result
from mlops_assets.ml.fast_ridge import fit_ridge, make_pipeline
from mlops_assets.ml.features import feature_names
from mlops_assets.ml.incremental import RidgeMoments
from mlops_assets.ml.spec import load_spec


def measured(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, dict[str, float]]:
    """``fn()``'s last result and its median wall and CPU seconds over ``repeats`` runs."""
    walls, cpus, out = [], [], None
    load = os.getloadavg()[0]
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    return out, {
        "wall_s": round(median(walls), 4),
        "cpu_s": round(median(cpus), 4),
        "load_avg_1m": round(load, 2),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=156)
    parser.add_argument("--days", type=int, default=5, help="daily steps timed (median)")
    args = parser.parse_args()
    spec = load_spec("sales")
    p = len(feature_names(spec))
    S, W = args.series, args.window
    rng = np.random.default_rng(0)
    X = rng.normal(size=(S, W + args.days, p)) * 1e4 + 1e5
    y = rng.normal(size=(S, W + args.days)) * 2e5 + 1e6 + 0.4 * X[:, :, 0]
    alpha = float(spec.model.params.get("alpha", 1.0))
    params = {"alpha": alpha}

    _, refit = measured(
        lambda: [fit_ridge(X[s, :W], y[s, :W], params) for s in range(S)], repeats=3
    )
    index = np.repeat(np.arange(S), W)
    rows_x, rows_y = X[:, :W].reshape(-1, p), y[:, :W].ravel()
    stats, batched = measured(lambda: RidgeMoments.from_rows(rows_x, rows_y, index, S), 3)
    _, batched_solve = measured(lambda: stats.solve(alpha))
    every = np.arange(S)
    day = iter(range(W, W + args.days))

    def step() -> Any:
        t = next(day)
        stats.update(X[:, t], y[:, t], every)
        stats.downdate(X[:, t - W], y[:, t - W], every)
        return stats.solve(alpha)

    fit, daily = measured(step, repeats=args.days)
    _, pipelines = measured(lambda: [make_pipeline(fit, s, params) for s in range(S)])
    last = W + args.days
    check = rng.choice(S, 20, replace=False)
    worst = max(
        float(np.max(np.abs(fit.coef[s] - ref[-1].coef_)) / np.max(np.abs(ref[-1].coef_)))
        for s in check
        for ref in [fit_ridge(X[s, last - W : last], y[s, last - W : last], params)]
    )
    write_result(
        "incremental",
        {
            "series": S,
            "window": W,
            "features": p,
            "full_refit_fit_ridge": refit,
            "full_refit_batched_from_rows": batched,
            "batched_solve": batched_solve,
            "daily_update_downdate_solve": daily,
            "daily_pipelines": pipelines,
            "daily_over_full_refit": round(daily["wall_s"] / refit["wall_s"], 4),
            "daily_with_pipelines_over_full_refit": round(
                (daily["wall_s"] + pipelines["wall_s"]) / refit["wall_s"], 4
            ),
            "max_rel_coef_diff_vs_refit": worst,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
