"""Production forecast accuracy: predictions joined with the actuals that arrived later.

Pure functions over pandas frames (no storage, no Dagster): the horizon step of a prediction,
error and interval coverage per group, and which series degraded against their backtest.
A *joined* frame has one row per predicted period with an actual: ``series_id``, ``step``,
``model_set_version``, ``family``, ``prediction``, ``actual``, the interval bounds
``prediction_lower_<level>`` / ``prediction_upper_<level>`` (NaN where none was given), and
per row the series' backtest ``backtest_mae`` and naive ``scale`` from the manifest of the
model set that predicted it (NaN where unknown).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlops_assets.ml.score_request import bound_fields

GROUPS = ("series_id", "step", "model_set_version")


def horizon_steps(times: pd.Series, history_end: pd.Series, frequency: str) -> np.ndarray:
    """Periods of ``frequency`` from each row's ``history_end`` to its ``time`` (1: the first
    period after the data the model saw); 0 where ``history_end`` is unknown."""
    known = history_end.notna().to_numpy()
    steps = np.zeros(len(times), dtype=np.int64)
    if known.any():
        when = pd.PeriodIndex(pd.to_datetime(times[known]), freq=frequency)
        end = pd.PeriodIndex(pd.to_datetime(history_end[known]), freq=frequency)
        steps[known] = (when.asi8 - end.asi8).astype(np.int64)
    return steps


def _summarise(group: pd.DataFrame, levels: list[float]) -> dict[str, float]:
    err = group["prediction"] - group["actual"]
    mae = float(err.abs().mean())
    scale = float(group["scale"].iloc[0]) if "scale" in group else float("nan")
    out = {
        "n": len(group),
        "mae": mae,
        "bias": float(err.mean()),
        "scaled_error": mae / scale if np.isfinite(scale) and scale > 0 else float("nan"),
    }
    for level in levels:
        low, high = bound_fields(level)
        has = group[low].notna() & group[high].notna() if low in group else None
        if has is None or not has.any():
            out[f"coverage_{level:g}"] = float("nan")
            continue
        inside = (group.loc[has, low] <= group.loc[has, "actual"]) & (
            group.loc[has, "actual"] <= group.loc[has, high]
        )
        out[f"coverage_{level:g}"] = float(inside.mean())
    return out


def accuracy_table(
    joined: pd.DataFrame, levels: list[float], by: tuple[str, ...] = GROUPS
) -> pd.DataFrame:
    """Per group of ``by``: ``n``, ``mae``, ``bias``, ``scaled_error`` (MAE over the series'
    naive scale, where ``by`` holds ``series_id``) and ``coverage_<level>`` (share of actuals
    inside the interval, over the rows that had one)."""
    columns = [*by, "n", "mae", "bias", "scaled_error", *(f"coverage_{lv:g}" for lv in levels)]
    if joined.empty:
        return pd.DataFrame(columns=columns)
    data = joined if "series_id" in by else joined.drop(columns="scale", errors="ignore")
    rows = [
        {**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)), **stats}
        for key, group in data.groupby(list(by), sort=True)
        for stats in [_summarise(group, levels)]
    ]
    return pd.DataFrame(rows, columns=columns)


def degraded_series(joined: pd.DataFrame, ratio: float, min_points: int) -> pd.DataFrame:
    """Each series judged on the model set that predicted its latest period.

    A series is degraded when it has at least ``min_points`` actuals from that model set and
    their MAE exceeds ``ratio`` times the series' backtest MAE. Series without a backtest MAE
    are reported but never degraded.

    Returns:
        One row per series: ``series_id``, ``model_set_version``, ``family``, ``n``, ``mae``,
        ``backtest_mae``, ``error_ratio`` (production over backtest MAE) and ``degraded``.
    """
    columns = [
        "series_id",
        "model_set_version",
        "family",
        "n",
        "mae",
        "backtest_mae",
        "error_ratio",
        "degraded",
    ]
    if joined.empty:
        return pd.DataFrame(columns=columns)
    latest = joined.sort_values("time").groupby("series_id")["model_set_version"].last()
    current = joined[joined["model_set_version"].to_numpy() == latest[joined["series_id"]].values]
    err = (current["prediction"] - current["actual"]).abs()
    g = current.assign(err=err).groupby("series_id", sort=True)
    out = pd.DataFrame(
        {
            "model_set_version": g["model_set_version"].first(),
            "family": g["family"].first(),
            "n": g["err"].size(),
            "mae": g["err"].mean(),
            "backtest_mae": g["backtest_mae"].first(),
        }
    )
    mae, backtest = out["mae"].to_numpy(float), out["backtest_mae"].to_numpy(float)
    known = np.isfinite(backtest) & (backtest > 0)
    safe = np.where(known, backtest, 1.0)
    out["error_ratio"] = np.where(known, mae / safe, np.nan)
    out["degraded"] = (out["n"].to_numpy() >= min_points) & known & (mae > ratio * safe)
    return out.reset_index()[columns]
