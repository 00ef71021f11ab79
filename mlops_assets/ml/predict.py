"""Predicting rows of many series, each with its own fitted Pipeline, in as few calls as possible.

When every model is ``StandardScaler`` + a linear model (a family with a ``linear`` class, such
as the default ridge), their parameters stack into arrays and all rows are predicted in one
vectorised pass; otherwise each series' rows go to its own ``predict`` once. Both give the same
numbers as ``Pipeline.predict``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.preprocessing import StandardScaler

from mlops_assets.ml.families import linear_types

if TYPE_CHECKING:
    from mlops_assets.ml.spec import DatasetSpec

_CHUNK = 1 << 20  # rows per vectorised step: bounded temporaries on 40M-row batches


def scaled_linear(model: Any) -> tuple[StandardScaler, Any] | None:
    """(scaler, estimator) of a ``StandardScaler`` + linear-family Pipeline, else None."""
    steps = getattr(model, "steps", None)
    if not steps or len(steps) != 2:
        return None
    scaler, linear = steps[0][1], steps[1][1]
    if isinstance(scaler, StandardScaler) and isinstance(linear, linear_types()):
        return scaler, linear
    return None


def clip_to_bounds(values: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Predictions within the target column's ``[min, max]`` of the spec (NaN stays NaN).

    The one place predictions are clipped: training's holdout, evaluation's re-scoring, batch
    and real-time scoring (before a prediction feeds the next period's lags) all call it.
    """
    col = spec.columns[spec.target]
    if col.min is None and col.max is None:
        return values
    return np.clip(values, col.min, col.max)


def predict_pipeline(model: Any, X: np.ndarray) -> np.ndarray:
    """``model.predict(X)``; a scaler + linear Pipeline without scikit-learn's per-call input
    validation, which dominates the cost on a few rows (a holdout, one real-time record)."""
    parts = scaled_linear(model)
    if parts is None:
        return model.predict(X)
    scaler, linear = parts
    return ((X - scaler.mean_) / scaler.scale_) @ linear.coef_ + linear.intercept_


def stack_linear(pipelines: list) -> tuple[np.ndarray, ...] | None:
    """(mean, scale, coef, intercept) per model when all are scaler + linear, else None."""
    parts: list[tuple[Any, Any, Any, float] | None] = []
    for p in pipelines:
        if p is None:
            parts.append(None)
            continue
        found = scaled_linear(p)
        if found is None:
            return None
        scaler, linear = found
        parts.append((scaler.mean_, scaler.scale_, linear.coef_, float(linear.intercept_)))
    p = next((len(x[0]) for x in parts if x is not None), 0)
    fill = (np.zeros(p), np.ones(p), np.zeros(p), np.nan)
    filled = [x if x is not None else fill for x in parts]
    return tuple(np.array([x[i] for x in filled]) for i in range(4))


def predict_rows(
    X: np.ndarray,
    rows: np.ndarray,
    row_model: np.ndarray,
    pipelines: list,
    stacked: tuple[np.ndarray, ...] | None,
) -> np.ndarray:
    """Predictions for ``X[rows]``; row ``r`` uses ``pipelines[row_model[r]]``.

    ``rows`` must be grouped by model (as series rows are) for the per-model path.
    """
    out = np.empty(len(rows))
    if stacked is not None:
        mean, scale, coef, intercept = stacked
        for a in range(0, len(rows), _CHUNK):
            r = rows[a : a + _CHUNK]
            s = row_model[r]
            out[a : a + len(r)] = np.einsum("ij,ij->i", (X[r] - mean[s]) / scale[s], coef[s])
            out[a : a + len(r)] += intercept[s]
        return out
    ms = row_model[rows]
    cuts = np.flatnonzero(np.r_[True, ms[1:] != ms[:-1], True])
    for a, b in itertools.pairwise(cuts.tolist()):
        out[a:b] = pipelines[ms[a]].predict(X[rows[a:b]])
    return out


def fold_linear(stacked: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(weights, bias) per model with the scaler folded in: ``x @ w + b`` is the pipeline's
    ``((x - mean) / scale) @ coef + intercept`` up to rounding (a few ulps)."""
    mean, scale, coef, intercept = stacked
    weights = coef / scale
    return weights, intercept - np.einsum("ij,ij->i", mean, weights)


def predict_grouped(
    columns: list[np.ndarray],
    models: np.ndarray,
    counts: np.ndarray,
    folded: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Predict rows grouped by model, one feature column at a time (no row gathers).

    Rows ``0:counts[0]`` use model ``models[0]``, the next ``counts[1]`` rows ``models[1]``, and
    so on; ``columns`` are the features, one array per feature. Rows with a missing feature
    come out NaN. Three passes over memory per feature: work stays linear and vectorised on
    batches of tens of millions of rows.
    """
    weights, bias = folded
    out = np.repeat(bias[models], counts)
    term = np.empty_like(out)
    for j, col in enumerate(columns):
        np.multiply(col, np.repeat(weights[models, j], counts), out=term)
        out += term
    return out
