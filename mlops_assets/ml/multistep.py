"""Recursive multi-step forecasts of per-series regression models, for many series at once.

Step ``j`` of every series is predicted in one pass (vectorised for linear models); its
prediction becomes the target of that period, so the lags and rolling means of step ``j + 1``
see it, exactly as the features of training see actuals (the same ``feature_columns`` code
builds both). Exogenous columns the spec declares ``known_in_advance`` take their future values
from the caller; any other one carries its last observed value forward, since its future is not
known at the origin. Models come from training (``candidates.fit_candidate``).

Frames must be regular (one row per period: ``calendar.regularize``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlops_assets.ml import calendar
from mlops_assets.ml.baselines import naive
from mlops_assets.ml.features import (
    SeriesFrame,
    feature_columns_at,
    positions,
    tail_length,
)
from mlops_assets.ml.predict import clip_to_bounds, fold_linear, predict_pipeline, stack_linear
from mlops_assets.ml.spec import DatasetSpec

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


@dataclass(frozen=True)
class LinearModels:
    """Per series ``x @ weights[i] + bias[i]`` (the scaler folded in); NaN bias: no model."""

    weights: np.ndarray
    bias: np.ndarray

    @property
    def fitted(self) -> np.ndarray:
        return np.isfinite(self.bias)


def _extended(
    tail: SeriesFrame,
    spec: DatasetSpec,
    horizon: int,
    future_exog: dict[str, np.ndarray],
) -> tuple[SeriesFrame, np.ndarray]:
    """Each series' tail rows then ``horizon`` future rows; and the future rows' indices."""
    n, lengths = tail.n_series, np.diff(tail.offsets)
    offsets = np.concatenate([[0], np.cumsum(lengths + horizon)]).astype(np.int64)
    old = np.repeat(offsets[:-1], lengths) + positions(tail.offsets)
    future = (offsets[:-1] + lengths)[:, None] + np.arange(horizon)[None, :]

    def place(past: np.ndarray, ahead: np.ndarray, fill) -> np.ndarray:
        out = np.full(int(offsets[-1]), fill, dtype=past.dtype)
        out[old], out[future.ravel()] = past, ahead.ravel()
        return out

    times = calendar.future_times(tail, spec.frequency, horizon)
    exog = {}
    for c, values in tail.exog.items():
        if c in spec.features.known_in_advance:
            ahead = np.asarray(future_exog[c], dtype=float).reshape(n, horizon)
        else:  # not known at the origin: the last observed value holds
            ahead = naive(SeriesFrame(tail.keys, tail.offsets, tail.time, values, {}), horizon)
        exog[c] = place(values, ahead, np.nan)
    frame = SeriesFrame(
        keys=tail.keys,
        offsets=offsets,
        time=place(tail.time, times, np.datetime64("NaT")),
        target=place(tail.target, np.full((n, horizon), np.nan), np.nan),
        exog=exog,
    )
    return frame, future


def forecast_linear(
    frame: SeriesFrame,
    models: LinearModels,
    spec: DatasetSpec,
    horizon: int,
    future_exog: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The next ``horizon`` periods of every series, recursively: ``[n_series, horizon]``.

    Args:
        frame: Each series' history (regular), in the order of ``models``.
        models: One linear model per series (NaN rows out for a series without one).
        spec: The dataset spec (features, frequency, ``features.known_in_advance``).
        horizon: Periods to forecast.
        future_exog: ``[n_series, horizon]`` future values of each known-in-advance column.

    Raises:
        ValueError: A known-in-advance column has no future values.
    """

    def step(idx: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
        value = models.bias[idx].copy()
        for k, col in enumerate(columns):
            value += col * models.weights[idx, k]
        return value

    return _recursive(frame, spec, horizon, future_exog, step)


def forecast_pipelines(
    frame: SeriesFrame,
    pipelines: Sequence[Pipeline | None],
    spec: DatasetSpec,
    horizon: int,
    future_exog: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """``forecast_linear`` for fitted Pipelines of any family (None: no model, NaN out).

    Scaler + linear Pipelines are folded and forecast in one vectorised pass per step; any
    other family predicts each series' next row with its own model, step by step.
    """
    if not any(p is not None for p in pipelines):
        return np.full((frame.n_series, horizon), np.nan)
    stacked = stack_linear(list(pipelines))
    if stacked is not None:
        weights, bias = fold_linear(stacked)
        return forecast_linear(frame, LinearModels(weights, bias), spec, horizon, future_exog)

    def step(idx: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
        X = np.column_stack(columns) if columns else np.empty((len(idx), 0))
        value = np.full(len(idx), np.nan)
        ok = np.isfinite(X).all(axis=1)
        for r in np.flatnonzero(ok):
            model = pipelines[idx[r]]
            if model is not None:
                value[r] = predict_pipeline(model, X[r : r + 1])[0]
        return value

    return _recursive(frame, spec, horizon, future_exog, step)


def _recursive(
    frame: SeriesFrame,
    spec: DatasetSpec,
    horizon: int,
    future_exog: dict[str, np.ndarray] | None,
    step: Callable[[np.ndarray, list[np.ndarray]], np.ndarray],
) -> np.ndarray:
    """Step ``j`` of every series with history: ``step(series, feature columns of its row)``,
    clipped to the target's bounds, written into the target before step ``j + 1``."""
    future_exog = future_exog or {}
    missing = [c for c in spec.features.known_in_advance if c not in future_exog]
    if missing:
        raise ValueError(f"no future values of known-in-advance columns {missing}")
    out = np.full((frame.n_series, horizon), np.nan)
    has_rows = np.diff(frame.offsets) > 0
    if not has_rows.any():
        return out
    idx = np.flatnonzero(has_rows)
    tail = _last_rows_of(frame, idx, max(tail_length(spec), 1))
    ahead = {c: np.asarray(v, dtype=float)[idx] for c, v in future_exog.items()}
    ext, future = _extended(tail, spec, horizon, ahead)
    for j in range(horizon):
        rows = future[:, j]
        columns = feature_columns_at(ext, spec, rows)
        value = clip_to_bounds(step(idx, columns), spec)
        ext.target[rows] = value
        out[idx, j] = value
    return out


def _last_rows_of(frame: SeriesFrame, idx: np.ndarray, n: int) -> SeriesFrame:
    """The last ``n`` rows (all of a shorter one) of the series ``idx``: no copy of the rest."""
    lengths = np.minimum(np.diff(frame.offsets)[idx], n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    starts = frame.offsets[idx + 1] - lengths
    rows = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
    return SeriesFrame(
        keys=[frame.keys[i] for i in idx],
        offsets=offsets,
        time=frame.time[rows],
        target=frame.target[rows],
        exog={c: v[rows] for c, v in frame.exog.items()},
    )


def known_future(full: SeriesFrame, train: SeriesFrame, horizon: int, columns) -> dict:
    """Future values of ``columns`` for each series of ``train`` (a head of ``full``, same
    series), from the rows of ``full`` after it: ``{column: [n_series, horizon]}``."""
    rows = full.offsets[:-1, None] + np.diff(train.offsets)[:, None] + np.arange(horizon)
    inside = rows < full.offsets[1:, None]
    safe = np.where(inside, rows, 0)
    return {c: np.where(inside, full.exog[c][safe], np.nan) for c in columns}
