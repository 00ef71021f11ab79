"""Candidate families fitted on each series' training window and backtested on the same folds.

What ``selection`` chooses from, and what the gate re-scores a stored champion with: every
family of ``spec.model.candidate_names`` is fitted on each series' periods before the last
``spec.holdout``; from each fold's origin every fitted model forecasts ``spec.horizon``
periods recursively from the actuals up to that origin (exogenous values as the spec declares
them known in advance), clipped to the target's bounds. Models are not refit per origin, so
the backtest scores exactly the models that are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_assets.ml import backtest, batch_ridge
from mlops_assets.ml.families import family
from mlops_assets.ml.fast_ridge import fit_ridge
from mlops_assets.ml.features import SeriesFrame, feature_matrix
from mlops_assets.ml.fitting import SeriesFit, family_params, fit_series, season_length
from mlops_assets.ml.multistep import forecast_pipelines, known_future
from mlops_assets.ml.predict import clip_to_bounds
from mlops_assets.ml.spec import DatasetSpec


@dataclass
class Fitted:
    """One candidate family's models of a batch: a model or the reason why not, per series."""

    name: str
    kind: str
    models: list[Any]
    reasons: list[str | None]
    fits: list[SeriesFit] | None = None  # regression families: the per-series fit record
    # The closed-form ridge fitted as a batch: its series' moments (``batch_ridge``).
    moments: Any = None


def kind_of(name: str) -> str:
    """The kind of family ``name`` (``families``)."""
    return family(name).kind


def fit_candidate(name: str, frame: SeriesFrame, X: np.ndarray | None, spec: DatasetSpec) -> Fitted:
    """Family ``name`` fitted on each series' training window (all but the last ``holdout``
    periods)."""
    kind = kind_of(name)
    if kind == "regression":
        if X is None:
            X = feature_matrix(frame, spec)
        if family(name).closed_form is fit_ridge and family(name).has_closed_form(
            family_params(spec, name)
        ):
            fits, moments = batch_ridge.fit_batch(name, frame, X, spec)
            models = [f.model for f in fits]
            return Fitted(name, kind, models, [f.reason for f in fits], fits, moments)
        off = frame.offsets
        fits = [
            fit_series(X[a:b], frame.target[a:b], frame.time[a:b], spec, family_name=name)
            for a, b in zip(off[:-1].tolist(), off[1:].tolist(), strict=True)
        ]
        return Fitted(name, kind, [f.model for f in fits], [f.reason for f in fits], fits)
    from mlops_assets.ml import param_models

    window = np.maximum(np.diff(frame.offsets) - spec.holdout, 0)
    models = param_models.fit_many(backtest.head_rows(frame, window), name, spec)
    reasons: list[str | None] = [
        None if m is not None else f"{name} could not be fitted on the training window"
        for m in models
    ]
    return Fitted(name, kind, models, reasons)


def forecast_candidate(
    fitted: Fitted,
    history: SeriesFrame,
    horizon: int,
    spec: DatasetSpec,
    future_exog: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """``[n_series, horizon]`` forecasts of ``fitted``'s models after each series' history."""
    if fitted.kind == "regression":
        out = forecast_pipelines(history, fitted.models, spec, horizon, future_exog)
    else:
        from mlops_assets.ml import param_models

        out = param_models.forecast_many(fitted.models, history, horizon, spec)
    return clip_to_bounds(out, spec)


def backtest_models(folds: backtest.Folds, spec: DatasetSpec, forecast: Any) -> np.ndarray:
    """``[K, n_series, horizon]`` forecasts of fixed models from every fold's origin.

    Args:
        folds: The folds (``backtest.make_folds`` of the whole regular frame).
        spec: The dataset spec (known-in-advance columns).
        forecast: ``(history, horizon, future_exog) -> [n_series, horizon]``.
    """
    known = spec.features.known_in_advance
    out = np.full(folds.actual.shape, np.nan)
    for k in range(len(folds.cuts)):
        history = folds.train_frame(k)
        ahead = known_future(folds.frame, history, folds.horizon, known)
        predicted = np.asarray(forecast(history, folds.horizon, ahead), dtype=float)
        out[k] = np.where(folds.valid[k][:, None], predicted, np.nan)
    return out


def make_folds(
    frame: SeriesFrame, spec: DatasetSpec, prefix: backtest.ScalePrefix | None = None
) -> backtest.Folds:
    """The spec's backtest folds of a regular frame (``prefix``: of a recent window of it)."""
    b = spec.backtest
    return backtest.make_folds(
        frame, spec.horizon, b.origins, b.step, season_length(spec.frequency), prefix
    )


@dataclass
class Backtested:
    """Every candidate family of a batch, fitted and backtested on the same folds."""

    names: list[str]
    fitted: list[Fitted]
    folds: backtest.Folds
    predictions: np.ndarray  # [C, K, n_series, horizon]
    scores: np.ndarray  # [C, n_series] select_by over every pair
    eligible: np.ndarray  # [C, n_series] forecast every pair the series needs
    missing: np.ndarray  # [C, n_series] some needed pair has no forecast
    has_need: np.ndarray  # [n_series] some backtest pair was observed


def backtest_candidates(
    frame: SeriesFrame,
    spec: DatasetSpec,
    given: dict[str, Fitted] | None = None,
    prefix: backtest.ScalePrefix | None = None,
    X: np.ndarray | None = None,
) -> Backtested:
    """Fit every candidate of ``spec`` on a regular batch and backtest each on its folds.

    ``given``: candidates fitted already (a daily incremental step's ridges), backtested as
    they are. ``prefix``: ``frame`` holds a recent window of each series (``make_folds``).
    ``X``: ``frame``'s feature matrix, where the caller has it.
    """
    given = given or {}
    names = list(spec.model.candidate_names)
    needs_x = any(kind_of(c) == "regression" and c not in given for c in names)
    if X is None and needs_x:
        X = feature_matrix(frame, spec)
    folds = make_folds(frame, spec, prefix)
    need = np.isfinite(folds.actual)  # folds.actual is NaN outside valid folds
    has_need = need.any(axis=(0, 2))
    fitted = [given[c] if c in given else fit_candidate(c, frame, X, spec) for c in names]
    predictions = np.stack(
        [
            backtest_models(
                folds,
                spec,
                lambda hist, hz, ahead, f=f: forecast_candidate(f, hist, hz, spec, ahead),
            )
            for f in fitted
        ]
    )
    missing = (need[None] & ~np.isfinite(predictions)).any(axis=(1, 3))
    has_model = np.array([[m is not None for m in f.models] for f in fitted], dtype=bool)
    eligible = has_model & ~missing & has_need[None]
    metric = spec.model.select_by
    scores = np.stack([backtest.series_metrics(folds, p)[metric] for p in predictions])
    eligible &= np.isfinite(scores)
    return Backtested(names, fitted, folds, predictions, scores, eligible, missing, has_need)
