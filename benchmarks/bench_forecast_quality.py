"""Forecast quality on real panels: rolling-origin backtests at horizon 4, baselines vs ridge.

Loads the Dominick's beer panel and the Walmart store sales from ``--data`` (default: the
environment variable MLOPS_REAL_DATA; the files are never copied into the repository), makes
the series calendar-true (``ml.calendar``), and backtests at 8 origins, horizon 4:

* folds 1-4 (older) choose each series' method (lowest MAE) and calibrate conformal intervals;
* folds 5-8 (the newest 4 origins) are the reported 4-origin backtest.

Methods: naive, seasonal naive, window mean, Croston-SBA, TSB, the fallback chain
``[seasonal_naive, naive, mean]``, and today's ridge (per series, refit at every origin,
forecast recursively). A method that cannot forecast a (series, fold) is filled by the chain,
so every method is scored on the same pairs. Writes ``benchmarks/results/forecast_quality.json``.

    python -m benchmarks.bench_forecast_quality --data "$MLOPS_REAL_DATA" --max-series 1000
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from benchmarks.common import peak_rss_mb, write_result
from mlops_assets.ml import backtest, baselines, calendar, intervals, multistep
from mlops_assets.ml.features import to_series_frame
from mlops_assets.ml.fitting import season_length
from mlops_assets.ml.spec import DatasetSpec

HORIZON, SELECT_FOLDS, EVAL_FOLDS = 4, 4, 4
CHAIN = ["seasonal_naive", "naive", "mean"]
LEVELS = [80, 95]


def _spec(name, keys, time_col, target, exog, known, frequency, fill, lags) -> DatasetSpec:
    columns = {k: {"type": "string"} for k in keys}
    columns |= {time_col: {"type": "timestamp"}, target: {"type": "float", "min": 0}}
    columns |= {c: {"type": "float"} for c in exog}
    return DatasetSpec.model_validate(
        {
            "name": name,
            "series_keys": keys,
            "time": time_col,
            "target": target,
            "columns": columns,
            "frequency": frequency,
            "horizon": HORIZON,
            "holdout": HORIZON,
            "min_history": 26,
            "features": {
                "lags": lags,
                "rolling": [4, 13],
                "calendar": ["fourier_year"],
                "exogenous": exog,
                "known_in_advance": known,
            },
            "model": {"family": "ridge", "params": {"alpha": 1.0}},
            "calendar": {"fill": fill},
            "fallback": CHAIN,
            "mean_window": 13,
            "backtest": {"origins": SELECT_FOLDS + EVAL_FOLDS, "step": 1},
            "intervals": {"levels": LEVELS},
        }
    )


def load_beer(data: Path) -> tuple[pd.DataFrame, DatasetSpec]:
    df = pq.read_table(data / "dominicks_beer_dev.parquet").to_pandas()
    # No row is written for a week without sales: a missing week sold zero; prices hold.
    fill = {"units": "zero", "price": "ffill"}
    spec = _spec(
        "beer", ["store", "product"], "date", "units", ["price"], ["price"], "W-THU", fill, []
    )
    return df, spec


def load_walmart(data: Path) -> tuple[pd.DataFrame, DatasetSpec]:
    df = pd.read_csv(data / "walmart_store_sales.csv")
    df["Date"] = pd.to_datetime(df["Date"], format="%d-%m-%Y")
    df["Store"] = df["Store"].astype(str)
    df["Holiday_Flag"] = df["Holiday_Flag"].astype(float)
    exog = ["Holiday_Flag"]
    spec = _spec("walmart", ["Store"], "Date", "Weekly_Sales", exog, exog, "W-FRI", {}, [])
    return df, spec


def _subset(df: pd.DataFrame, spec: DatasetSpec, max_series: int | None, seed: int):
    ids = df[spec.series_keys].drop_duplicates()
    if max_series is not None and len(ids) > max_series:
        ids = ids.sample(max_series, random_state=seed)
    return df.merge(ids, on=spec.series_keys)


def _forecasters(spec: DatasetSpec, frame) -> dict:
    season = season_length(spec.frequency)
    out = {m: baselines.method_forecaster(m, season, spec.mean_window) for m in baselines.METHODS}
    out["fallback_chain"] = baselines.spec_fallback(spec)
    for name, lags in (("ridge_lags_1_2_4", [1, 2, 4]), ("ridge_lags_1_2_4_52", [1, 2, 4, 52])):
        ridge_spec = spec.model_copy(deep=True)
        ridge_spec.features.lags = lags
        out[name] = multistep.linear_forecaster(ridge_spec, frame)
    return out


def _fold_subset(folds: backtest.Folds, ks: slice) -> backtest.Folds:
    return replace(
        folds,
        cuts=folds.cuts[ks],
        valid=folds.valid[ks],
        actual=folds.actual[ks],
        scale=folds.scale[ks],
    )


def evaluate_panel(df: pd.DataFrame, spec: DatasetSpec) -> dict:
    started, cpu = time.perf_counter(), time.process_time()
    raw = to_series_frame(df, spec)
    kept, off = calendar.apply_off_calendar(raw, spec)
    gaps = calendar.series_gaps(kept, spec.frequency)
    frame = calendar.regularize(kept, spec).frame
    season = season_length(spec.frequency)
    folds = backtest.make_folds(frame, HORIZON, SELECT_FOLDS + EVAL_FOLDS, 1, season)
    prepared = time.perf_counter() - started

    predictions, seconds = {}, {}
    chain = None
    for name, forecaster in _forecasters(spec, frame).items():
        t0 = time.perf_counter()
        p = np.maximum(backtest.run(folds, forecaster), 0.0)  # target bound min: 0
        seconds[name] = time.perf_counter() - t0
        if name == "fallback_chain":
            chain = p
        predictions[name] = p
    own_cover = {n: np.isfinite(p).all(axis=2) for n, p in predictions.items()}
    predictions = {n: np.where(np.isfinite(p), p, chain) for n, p in predictions.items()}

    select, evaluate = (
        _fold_subset(folds, slice(0, SELECT_FOLDS)),
        _fold_subset(folds, slice(SELECT_FOLDS, None)),
    )
    names = list(predictions)
    select_mae = np.stack(
        [backtest.series_metrics(select, p[:SELECT_FOLDS])["mae"] for p in predictions.values()]
    )
    best = np.argmin(np.where(np.isfinite(select_mae), select_mae, np.inf), axis=0)
    best[~np.isfinite(select_mae).any(axis=0)] = names.index("fallback_chain")
    stacked = np.stack(list(predictions.values()))  # [methods, K, n, h]
    series = np.arange(frame.n_series)
    choice = stacked[best, :, series].transpose(1, 0, 2)
    predictions["per_series_choice"] = choice

    scores = {
        n: backtest.backtest_metrics(evaluate, p[SELECT_FOLDS:]) for n, p in predictions.items()
    }
    mae = {n: s["overall"]["mae"] for n, s in scores.items()}
    naive_best = min(mae["naive"], mae["seasonal_naive"])
    single_best = min(v for n, v in mae.items() if n != "per_series_choice")

    residuals = folds.actual[:SELECT_FOLDS] - choice[:SELECT_FOLDS]
    q = intervals.conformal_quantiles(residuals, LEVELS, scale=folds.scale[SELECT_FOLDS - 1])
    cover = {}
    for level in LEVELS:
        lower, upper = intervals.interval_bounds(choice[SELECT_FOLDS:], q.width[level][None], 0.0)
        c = intervals.coverage(folds.actual[SELECT_FOLDS:], lower, upper)
        cover[str(level)] = {
            "overall": c.overall,
            "per_step": c.per_step.tolist(),
            "pairs": c.count,
            "pooled_share": float(q.pooled[level].mean()),
        }

    observed = baselines.observed_counts(frame) > 0
    eval_valid = folds.valid[SELECT_FOLDS:]
    forecast_ok = np.isfinite(choice[SELECT_FOLDS:]).all(axis=2) | ~eval_valid
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "series": frame.n_series,
        "rows_raw": raw.n_rows,
        "rows_regular": frame.n_rows,
        "off_calendar_rows": int(off.sum()),
        "series_with_missing_periods": int((gaps.missing > 0).sum()),
        "missing_periods": int(gaps.missing.sum()),
        "series_with_an_eval_fold": int(eval_valid.any(axis=0).sum()),
        "share_of_series_forecast": float(
            (forecast_ok.all(axis=0) & observed).sum() / max(observed.sum(), 1)
        ),
        "own_forecast_share_of_fold_pairs": {
            n: float((c[SELECT_FOLDS:] & eval_valid).sum() / max(eval_valid.sum(), 1))
            for n, c in own_cover.items()
        },
        "pooled_mae": mae,
        "metrics": {n: s["overall"] for n, s in scores.items()},
        "per_step_mae": {n: s["per_step"]["mae"] for n, s in scores.items()},
        "choice_counts": {names[m]: int((best == m).sum()) for m in np.unique(best)},
        "choice_vs_best_naive": mae["per_series_choice"] / naive_best,
        "choice_vs_best_single_method": mae["per_series_choice"] / single_best,
        "interval_coverage": cover,
        "seconds": {"prepare": prepared, **seconds, "total_wall": wall, "total_cpu": cpu},
        "seconds_per_series": {n: s / max(frame.n_series, 1) for n, s in seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MLOPS_REAL_DATA"))
    parser.add_argument("--max-series", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data or set MLOPS_REAL_DATA to the folder of the real panels")
    data = Path(args.data)
    load_before = os.getloadavg()
    started, cpu = time.perf_counter(), time.process_time()
    panels = {}
    for load in (load_beer, load_walmart):
        df, spec = load(data)
        df = _subset(df, spec, args.max_series, args.seed)
        panels[spec.name] = evaluate_panel(df, spec)
    write_result(
        "forecast_quality",
        {
            "command": f"--data {args.data} --max-series {args.max_series} --seed {args.seed}",
            "horizon": HORIZON,
            "folds": {"select_and_calibrate": SELECT_FOLDS, "evaluate": EVAL_FOLDS},
            "panels": panels,
            "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
