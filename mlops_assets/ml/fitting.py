"""Fit one regression family per series on its training window.

``fit_series`` is the per-series step of a regression family (a scikit-learn Pipeline on lag,
rolling, calendar and exogenous features); ``selection`` calls it for every candidate
regression family of a batch, then scores every candidate by a rolling-origin backtest.
It never raises for a bad series: the outcome is a status (``trained``, ``skipped``,
``failed``) with a reason.

Decisions:

* Training window: every row before the last ``spec.holdout`` periods with a finite target
  and complete features. The backtest's origins all lie in those last periods, so every
  forecast it scores is out of sample.
* Stored model: fit on the training window only, never refit on the evaluation periods, so the
  artifact that is registered is exactly the one whose backtest is compared with the champion.
  Lag features at forecast time still use the newest actuals.
* Model families come from one table (``families``). A family with a closed-form fit (ridge
  with only ``alpha`` set: ``fast_ridge``) takes it; the others use ``Pipeline.fit``.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import sklearn
from pandas.tseries.frequencies import to_offset
from sklearn.pipeline import Pipeline

from mlops_assets.ml.families import family
from mlops_assets.ml.features import feature_names
from mlops_assets.ml.metrics import ERROR_METRICS
from mlops_assets.ml.predict import predict_pipeline
from mlops_assets.ml.spec import ColumnType, DatasetSpec

TRAINED, FALLBACK, SKIPPED, FAILED = "trained", "fallback", "skipped", "failed"
BASELINES = ("naive", "seasonal_naive")
METRIC_NAMES = (
    *ERROR_METRICS,
    "mase",
    "bias",
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


def family_params(spec: DatasetSpec, name: str) -> dict[str, Any]:
    """The spec's ``model.params`` for its own family; other candidates use their defaults."""
    return dict(spec.model.params) if name == spec.model.family else {}


def _fit(X: np.ndarray, y: np.ndarray, spec: DatasetSpec, fast: bool, name: str) -> Pipeline:
    """Family ``name`` fitted: in closed form where it has one for these params."""
    fam, params = family(name), family_params(spec, name)
    closed_form = fam.closed_form if fast and fam.has_closed_form(params) else None
    if closed_form is not None:
        return closed_form(X, y, params)
    with sklearn.config_context(assume_finite=True):
        return fam.pipeline(params).fit(X, y)


def format_time(t: np.datetime64, spec: DatasetSpec) -> str:
    unit = "D" if spec.columns[spec.time].type == ColumnType.date else "s"
    return str(t.astype(f"datetime64[{unit}]"))


def _why_not_trainable(X: np.ndarray, y: np.ndarray, split: int, spec: DatasetSpec) -> str | None:
    missing = ~np.isfinite(X[:split]).any(axis=0)
    if missing.any():
        names = [n for n, m in zip(feature_names(spec), missing, strict=True) if m]
        return f"features with no value in the training window: {names}"
    if not np.isfinite(y[:split]).any():
        return "target has no value in the training window"
    return None


def fit_series(
    X: np.ndarray,
    y: np.ndarray,
    time: np.ndarray,
    spec: DatasetSpec,
    *,
    fast: bool = True,
    family_name: str | None = None,
) -> SeriesFit:
    """Fit one series' regression model on its training window. Never raises for bad data.

    Args:
        X: Features of every row of the series, ``feature_matrix`` order, one row per period.
        y: Target of every row.
        time: Timestamps of every row (``datetime64``).
        spec: The dataset spec (holdout, min_history, model).
        fast: Allow the closed-form ridge path (False forces ``Pipeline.fit``).
        family_name: The regression family to fit (default ``spec.model.family``).

    Returns:
        The fitted Pipeline (or None) with status, reason and training window; the metrics
        are left for the backtest (``selection``).
    """
    started = _time.perf_counter()
    fit = _fit_window(X, y, time, spec, fast, family_name or spec.model.family)
    fit.fit_seconds = _time.perf_counter() - started
    return fit


def complete_rows(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows with every feature and the target known: the rows a model may be fitted on."""
    return np.isfinite(X).all(axis=1) & np.isfinite(y)


def check_window(
    X: np.ndarray,
    y: np.ndarray,
    time: np.ndarray,
    spec: DatasetSpec,
    complete: np.ndarray | None = None,
) -> tuple[SeriesFit, np.ndarray | None]:
    """A series' training window: its fit record without a model, and the rows to fit on
    (None: the record says why it cannot be fitted). What ``fit_series`` checks first.
    ``complete``: ``complete_rows(X, y)`` where the caller has it for a whole batch."""
    n = len(y)
    split = n - spec.holdout
    if n > 1 and np.any(time[1:] <= time[:-1]):
        return SeriesFit(None, FAILED, "duplicate timestamps in the series"), None
    if split < 1:
        return SeriesFit(None, SKIPPED, f"{n} rows: need more than holdout={spec.holdout}"), None
    if complete is None:
        complete = complete_rows(X, y)
    train = np.flatnonzero(complete[:split])
    result = SeriesFit(None, SKIPPED, n_train=len(train))
    if len(train):
        result.train_start = format_time(time[train[0]], spec)
        result.train_end = format_time(time[train[-1]], spec)
    reason = None
    if split < spec.min_history:
        reason = f"{split} training periods < min_history={spec.min_history}"
    if not len(train):  # one complete training row rules out both of its reasons
        reason = reason or _why_not_trainable(X, y, split, spec)
    if reason is None and len(train) < spec.min_history:
        reason = f"{len(train)} complete training rows < min_history={spec.min_history}"
    if reason is None and np.ptp(y[train]) == 0:
        reason = "constant target in the training window"
    if reason is not None:
        result.reason = reason
        return result, None
    return result, train


def _fit_window(
    X: np.ndarray, y: np.ndarray, time: np.ndarray, spec: DatasetSpec, fast: bool, name: str
) -> SeriesFit:
    result, train = check_window(X, y, time, spec)
    if train is None:
        return result
    try:
        model = _fit(X[train], y[train], spec, fast, name)
        fitted = predict_pipeline(model, X[train[-1:]])
    except Exception as exc:  # one bad series must not stop the others
        result.status, result.reason = FAILED, f"{type(exc).__name__}: {exc}"
        return result
    if not np.all(np.isfinite(fitted)):
        result.status, result.reason = FAILED, "non-finite predictions on the training window"
        return result
    result.model, result.status = model, TRAINED
    return result
