"""Cost of the forecast-only families: fit_many + forecast_many per series on the beer panel.

Loads the Dominick's beer panel from ``--data`` (default: the environment variable
MLOPS_REAL_DATA), makes ``--max-series`` series calendar-true as ``bench_forecast_quality``
does, fits every baseline and statistical family on all but the last 4 periods and forecasts
4 periods after the full history (one process: parallelism is the engines' job). Writes
``benchmarks/results/param_models.json`` with ms per series, the share of series each family
serves and its MAE on those 4 periods.

    python -m benchmarks.bench_param_models --data "$MLOPS_REAL_DATA" --max-series 1000
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks.bench_forecast_quality import _subset, load_beer
from benchmarks.common import peak_rss_mb, write_result
from mlops_assets.ml import backtest, baselines, calendar, families, param_models
from mlops_assets.ml.features import take_series, to_series_frame
from mlops_assets.ml.phases import Phases

HORIZON = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MLOPS_REAL_DATA"))
    parser.add_argument("--max-series", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="*", default=None)
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data or set MLOPS_REAL_DATA to the folder of the real panels")
    df, spec = load_beer(Path(args.data))
    df = _subset(df, spec, args.max_series, args.seed)
    kept, _ = calendar.apply_off_calendar(to_series_frame(df, spec), spec)
    frame = calendar.regularize(kept, spec).frame
    frame = take_series(frame, np.diff(frame.offsets) > HORIZON)
    train = backtest.head_rows(frame, np.diff(frame.offsets) - HORIZON)
    actual = baselines.right_aligned(frame, frame.target, HORIZON)
    names = args.families or [*families.names("baseline"), *families.names("statistical")]
    param_models.fit_many(train.slice_series(0, 1), "ets", spec)  # numba compile, not timed
    out = {}
    for name in names:
        phases = Phases()
        with phases("fit"):
            models = param_models.fit_many(train, name, spec)
        with phases("forecast"):
            pred = param_models.forecast_many(models, frame, HORIZON, spec)
        # Forecast from the training window, scored on the 4 held-out periods.
        held = param_models.forecast_many(models, train, HORIZON, spec)
        served = np.isfinite(held).all(axis=1)
        out[name] = {
            **{f"ms_per_series_{k}": 1000 * v / frame.n_series for k, v in phases.seconds.items()},
            "share_served": float(served.mean()),
            "share_forecast_from_full_history": float(np.isfinite(pred).all(axis=1).mean()),
            "mae_held_out": float(np.nanmean(np.abs(held[served] - actual[served]))),
        }
    write_result(
        "param_models",
        {
            "command": f"--data {args.data} --max-series {args.max_series} --seed {args.seed}",
            "n_series": frame.n_series,
            "mean_periods": float(np.diff(frame.offsets).mean()),
            "horizon": HORIZON,
            "families": out,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
