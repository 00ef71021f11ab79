"""Train one scikit-learn Pipeline per series, evaluated on a time-based holdout.

``fit_series`` is the one per-series function every engine calls (local processes, Spark's
``applyInPandas``, an Azure ML job); ``train_partition`` wraps it for a pandas frame of one
series. Neither raises for a bad series: the outcome is a status (``trained``, ``skipped``,
``failed``) with a reason, and the naive and seasonal-naive baselines are recorded whenever there
is a holdout, each scored on exactly the model's holdout rows or not at all.

Decisions:

* Holdout: the last ``spec.holdout`` rows of the series, evaluated one step ahead (see
  ``features``). Training rows are earlier rows with a finite target and complete features.
* Stored model: fit on the training window only, never refit on train + holdout, so the
  artifact that is registered is exactly the one whose holdout metrics are compared with the
  champion. Lag features at scoring time still use the newest actuals.
* Model families come from one table (``families``). A family with a closed-form fit (ridge
  with only ``alpha`` set: ``fast_ridge``) takes it; the others use ``Pipeline.fit``.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from pandas.tseries.frequencies import to_offset
from sklearn.pipeline import Pipeline

from mlops_assets.ml.calendar import calendar_series
from mlops_assets.ml.families import family
from mlops_assets.ml.features import feature_matrix, feature_names, to_series_frame
from mlops_assets.ml.metrics import ERROR_METRICS, regression_metrics, regression_metrics_rows
from mlops_assets.ml.predict import clip_to_bounds, predict_pipeline
from mlops_assets.ml.spec import ColumnType, DatasetSpec

TRAINED, SKIPPED, FAILED = "trained", "skipped", "failed"
BASELINES = ("naive", "seasonal_naive")
METRIC_NAMES = (
    *ERROR_METRICS,
    *(f"{b}_{m}" for b in BASELINES for m in ERROR_METRICS),
)
_SEASONS = {"W": 52, "D": 7, "B": 5, "M": 12, "ME": 12, "MS": 12, "Q": 4, "QE": 4, "h": 24}


@dataclass
class SeriesFit:
    """What training one series produced: a model or a reason why not, and its metrics."""

    model: Pipeline | None
    status: str
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRIC_NAMES, np.nan))
    n_train: int = 0
    n_holdout: int = 0
    train_start: str | None = None
    train_end: str | None = None
    fit_seconds: float = 0.0

    def info(self) -> dict[str, Any]:
        """Everything but the model, as a flat dict."""
        return {
            "status": self.status,
            "reason": self.reason,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "train_start": self.train_start,
            "train_end": self.train_end,
            "fit_seconds": self.fit_seconds,
            **self.metrics,
        }


@lru_cache(maxsize=64)
def season_length(frequency: str) -> int | None:
    """Periods per season for the seasonal naive baseline (52 for weekly data), if known."""
    try:
        name = to_offset(frequency).rule_code
    except ValueError:
        return None
    return _SEASONS.get(name.split("-")[0])


def _fit(X: np.ndarray, y: np.ndarray, spec: DatasetSpec, fast: bool) -> Pipeline:
    """The spec's family fitted: in closed form where it has one for these params."""
    fam, params = family(spec.model.family), spec.model.params
    closed_form = fam.closed_form if fast and fam.has_closed_form(params) else None
    if closed_form is not None:
        return closed_form(X, y, params)
    with sklearn.config_context(assume_finite=True):
        return fam.pipeline(params).fit(X, y)


def _format_time(t: np.datetime64, spec: DatasetSpec) -> str:
    unit = "D" if spec.columns[spec.time].type == ColumnType.date else "s"
    return str(t.astype(f"datetime64[{unit}]"))


def _baselines(y: np.ndarray, rows: np.ndarray, season: int | None) -> dict[str, float]:
    """Naive (the last value observed before the row) and seasonal naive (the value one season
    back) on exactly the evaluation ``rows``.

    A baseline that cannot forecast every one of the rows (under a season of history, a value
    one season back not observed) is not scored at all (NaN): its error always describes the
    same rows as the model's, so the champion gate can compare them.
    """
    predictions = np.full((len(BASELINES), len(rows)), np.nan)
    if len(rows):
        seen = np.maximum.accumulate(np.where(np.isfinite(y), np.arange(len(y)), -1))
        last = seen[rows - 1]  # rows >= 1: the holdout starts after at least one row
        predictions[0, last >= 0] = y[last[last >= 0]]
        if season is not None:
            ok = rows >= season
            predictions[1, ok] = y[rows[ok] - season]
    predictions[~np.isfinite(predictions).all(axis=1)] = np.nan
    per_baseline = regression_metrics_rows(y[rows], predictions)
    return {
        f"{b}_{k}": v for b, m in zip(BASELINES, per_baseline, strict=True) for k, v in m.items()
    }


def _why_not_trainable(X: np.ndarray, y: np.ndarray, split: int, spec: DatasetSpec) -> str | None:
    missing = ~np.isfinite(X[:split]).any(axis=0)
    if missing.any():
        names = [n for n, m in zip(feature_names(spec), missing, strict=True) if m]
        return f"features with no value in the training window: {names}"
    if not np.isfinite(y[:split]).any():
        return "target has no value in the training window"
    return None


def fit_series(
    X: np.ndarray, y: np.ndarray, time: np.ndarray, spec: DatasetSpec, *, fast: bool = True
) -> SeriesFit:
    """Fit and evaluate one series. Never raises for bad data: returns a status and reason.

    Args:
        X: Features of every row of the series, ``feature_matrix`` order, time-ordered.
        y: Target of every row.
        time: Timestamps of every row (``datetime64``).
        spec: The dataset spec (holdout, min_history, model family).
        fast: Allow the closed-form ridge path (False forces ``Pipeline.fit``).

    Returns:
        The fitted Pipeline (or None) with status, reason, metrics and training window.
    """
    started = _time.perf_counter()
    fit = _evaluate(X, y, time, spec, fast)
    fit.fit_seconds = _time.perf_counter() - started
    return fit


def _evaluate(
    X: np.ndarray, y: np.ndarray, time: np.ndarray, spec: DatasetSpec, fast: bool
) -> SeriesFit:
    n = len(y)
    split = n - spec.holdout
    if n > 1 and np.any(time[1:] <= time[:-1]):
        return SeriesFit(None, FAILED, "duplicate timestamps in the series")
    if split < 1:
        return SeriesFit(None, SKIPPED, f"{n} rows: need more than holdout={spec.holdout}")
    complete = np.isfinite(X).all(axis=1) & np.isfinite(y)
    rows = np.flatnonzero(complete[split:]) + split
    train = np.flatnonzero(complete[:split])
    result = SeriesFit(None, SKIPPED, n_train=len(train), n_holdout=len(rows))
    result.metrics.update(_baselines(y, rows, season_length(spec.frequency)))
    if len(train):
        result.train_start = _format_time(time[train[0]], spec)
        result.train_end = _format_time(time[train[-1]], spec)
    reason = None
    if split < spec.min_history:
        reason = f"{split} training periods < min_history={spec.min_history}"
    reason = reason or _why_not_trainable(X, y, split, spec)
    if reason is None and len(train) < spec.min_history:
        reason = f"{len(train)} complete training rows < min_history={spec.min_history}"
    if reason is None and np.ptp(y[train]) == 0:
        reason = "constant target in the training window"
    if reason is None and len(rows) == 0:
        reason = "no holdout row with complete features"
    if reason is not None:
        result.reason = reason
        return result
    return _fit_and_score(X, y, train, rows, spec, fast, result)


def _fit_and_score(
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    rows: np.ndarray,
    spec: DatasetSpec,
    fast: bool,
    result: SeriesFit,
) -> SeriesFit:
    try:
        model = _fit(X[train], y[train], spec, fast)
        predicted = clip_to_bounds(predict_pipeline(model, X[rows]), spec)
    except Exception as exc:  # one bad series must not stop the others
        result.status, result.reason = FAILED, f"{type(exc).__name__}: {exc}"
        return result
    if not np.all(np.isfinite(predicted)):
        result.status, result.reason = FAILED, "non-finite predictions on the holdout"
        return result
    result.metrics.update(regression_metrics(y[rows], predicted))
    result.model, result.status = model, TRAINED
    return result


def train_partition(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[Pipeline | None, dict]:
    """Train the model of one series from its rows.

    Args:
        frame: Rows of exactly one series, with the spec's columns, in any order.
        spec: The dataset spec.

    Returns:
        The fitted Pipeline (None unless trained) and a flat dict of status, reason, counts,
        training window, fit seconds and ``METRIC_NAMES`` metrics (NaN where undefined).

    Raises:
        ValueError: ``frame`` holds no rows or more than one series (a caller error).
    """
    series = to_series_frame(frame, spec)
    if series.n_series != 1:
        raise ValueError(f"train_partition takes one series; got {series.n_series}")
    cal = calendar_series(series, spec)  # the engines' layout: one row per period
    if cal.invalid:
        return None, SeriesFit(None, FAILED, cal.invalid[0]).info()
    series = cal.frame
    X = feature_matrix(series, spec)
    fit = fit_series(X, series.target, series.time, spec)
    return fit.model, fit.info()
