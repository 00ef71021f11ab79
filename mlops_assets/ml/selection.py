"""Each series' model, chosen among the spec's candidate families by a rolling-origin backtest.

For a batch of regular series (one row per period) every candidate family is fitted and
backtested on the same folds (``candidates``: fitted on each series' periods before the last
``spec.holdout``, forecasting ``spec.horizon`` periods recursively from each origin inside them;
the backtest scores exactly the models that are stored).

Per series the candidate with the lowest ``spec.model.select_by`` over every backtest pair wins
(a candidate that cannot forecast one of the pairs is not eligible); the runner-up and every
candidate's score are recorded. With ``model.choice: combine`` a series' model is instead a
weighted mean of its eligible candidates (``combination``; the best single candidate is then
the runner-up), backtested as that mean, with a panel prior estimated once per run
(``with_prior``). A series no candidate can serve takes the first method of the spec's fallback
chain that can forecast it (status ``fallback``); only a series with no observation at all, or
none the chain can serve, has no model. Naive and seasonal-naive baselines are scored on
exactly the chosen model's pairs (or not at all), and the chosen model's backtest residuals
are kept for conformal intervals (``intervals.series_intervals``, calibrated over every series
of a run, not one batch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mlops_assets.ml import backtest, baselines, combination
from mlops_assets.ml.calendar import calendar_series
from mlops_assets.ml.candidates import (
    Backtested,
    Fitted,
    backtest_candidates,
    kind_of,
)
from mlops_assets.ml.features import SeriesFrame, tail_length, take_series
from mlops_assets.ml.fitting import (
    BASELINES,
    FAILED,
    FALLBACK,
    SKIPPED,
    TRAINED,
    SeriesFit,
    season_length,
)
from mlops_assets.ml.metrics import ERROR_METRICS, grouped_metrics
from mlops_assets.ml.predict import clip_to_bounds
from mlops_assets.ml.spec import DatasetSpec


@dataclass
class Selection:
    """What training a batch produced, one entry per series.

    Attributes:
        family: The chosen family per series (None: no model).
        models: The chosen model per series (a Pipeline, a parameter model, or None).
        status: ``trained`` (chosen by the backtest), ``fallback``, ``skipped`` or ``failed``.
        reason: Why a series has no candidate's model (and what it fell back to), else None.
        metrics: ``fitting.METRIC_NAMES`` arrays over the backtest pairs.
        pairs: Backtest (origin, step) pairs each series was scored on.
        runner_up: The second-best eligible family per series (None: no second).
        runner_up_score: Its ``select_by`` score.
        scores: Per series, ``select_by`` of every eligible candidate as a JSON object.
        residuals: The chosen model's backtest residuals (actual - forecast),
            ``[n_series, origins, horizon]`` (NaN: no pair).
        residual_scale: Each series' scale for pooled intervals (its MASE scale).
        fits: The regression fit record of the chosen (or the spec's own) family per series.
        by_step: MAE per horizon step over the origins, ``[n_series, horizon]``, of the chosen
            model (``mae``) and of each baseline on the same pairs (``naive_mae``...).
        weights: Per series, ``{family: weight}`` as JSON where its model is a
            ``combination.Combination`` (family ``combination``), else None.
    """

    family: np.ndarray
    models: list[Any]
    status: np.ndarray
    reason: np.ndarray
    metrics: dict[str, np.ndarray]
    pairs: np.ndarray
    runner_up: np.ndarray
    runner_up_score: np.ndarray
    scores: list[str]
    residuals: np.ndarray
    residual_scale: np.ndarray
    fits: list[SeriesFit | None] = field(default_factory=list)
    by_step: dict[str, np.ndarray] = field(default_factory=dict)
    weights: list[str | None] = field(default_factory=list)
    # The spec's ridge fitted as a batch: the moments of its fitted series (``batch_ridge``).
    moments: Any = None


def step_mae(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``[n_series, horizon]`` MAE of each step over the folds (NaN: no pair at that step)."""
    err = np.abs(predicted - actual)
    ok = np.isfinite(err)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, err, 0.0).sum(axis=0) / ok.sum(axis=0)


def stored_history(spec: DatasetSpec) -> int:
    """Targets kept per series for scoring and re-scoring (the manifest's ``history_tail``).

    The features of the next period need ``tail_length``; a forecast-only family forecasts from
    the history itself, so a spec with any (as a candidate or in the fallback chain) keeps two
    seasons (a year where the season is unknown) as well. Plus the backtest window, so the
    last trained periods can be re-scored.
    """
    need = tail_length(spec)
    forecast_only = [c for c in spec.model.candidate_names if kind_of(c) != "regression"]
    if forecast_only or spec.fallback:
        need = max(need, 2 * (season_length(spec.frequency) or 52), spec.mean_window)
    return need + spec.holdout


def _baseline_predictions(folds: backtest.Folds, spec: DatasetSpec) -> dict[str, np.ndarray]:
    season = season_length(spec.frequency)
    out = {}
    for name in BASELINES:
        if name == "seasonal_naive" and season is None:
            out[name] = np.full(folds.actual.shape, np.nan)
            continue
        method = baselines.method_forecaster(name, season, spec.mean_window)
        out[name] = clip_to_bounds(backtest.run(folds, method), spec)
    return out


def pair_metrics(
    actual: np.ndarray, predicted: np.ndarray, folds: backtest.Folds
) -> dict[str, np.ndarray]:
    """``ERROR_METRICS``, ``mase``, ``bias`` and ``count`` per series over finite pairs."""
    n = actual.shape[1]
    group = np.broadcast_to(np.arange(n)[None, :, None], actual.shape).ravel()
    m = grouped_metrics(actual.ravel(), predicted.ravel(), group, n)
    masked = replace_actual(folds, actual)
    extra = backtest.series_metrics(masked, predicted)
    return {**m, "mase": extra["mase"], "bias": extra["bias"]}


def replace_actual(folds: backtest.Folds, actual: np.ndarray) -> backtest.Folds:
    """``folds`` with other actuals (e.g. masked to some pairs)."""
    return replace(folds, actual=actual)


def _choose(
    names: list[str], scores: np.ndarray, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best and runner-up candidate per series (-1: none) and the runner-up's score."""
    masked = np.where(eligible, scores, np.inf)
    order = np.argsort(masked, axis=0, kind="stable")  # ties: the earlier candidate
    n = scores.shape[1]
    best = np.where(eligible.any(axis=0), order[0], -1)
    second = order[1] if len(names) > 1 else np.full(n, -1)
    has_second = (len(names) > 1) & (eligible.sum(axis=0) >= 2)
    second = np.where(has_second, second, -1)
    second_score = np.where(second >= 0, masked[np.maximum(second, 0), np.arange(n)], np.nan)
    return best, second, second_score


def panel_prior(frame: SeriesFrame, spec: DatasetSpec) -> dict[str, float]:
    """The candidates' panel prior for ``choice: combine`` (``combination.panel_prior``),
    estimated on a deterministic sample of ``frame``'s series (``combination.sample_ids``),
    laid out on the calendar as training lays them out.

    Args:
        frame: The run's series as read (``features.to_series_frame``), not yet regular.
        spec: The dataset spec.
    """
    ids = [spec.series_id(k) for k in frame.keys]
    wanted = set(combination.sample_ids(ids, spec.model.combine.prior_series))
    keep = np.array([sid in wanted for sid in ids], dtype=bool)
    b = backtest_candidates(calendar_series(take_series(frame, keep), spec).frame, spec)
    prior = combination.panel_prior(b.scores, b.eligible)
    return {name: float(v) for name, v in zip(b.names, prior, strict=True)}


def with_prior(spec: DatasetSpec, frame: SeriesFrame) -> DatasetSpec:
    """``spec`` with its combination prior estimated on ``frame`` (every series of the run,
    as read) where ``choice: combine`` needs one and the spec does not fix it."""
    c = spec.model.combine
    if spec.model.choice != "combine" or c.prior is not None or frame.n_series == 0:
        return spec
    combine = c.model_copy(update={"prior": panel_prior(frame, spec)})
    return spec.model_copy(update={"model": spec.model.model_copy(update={"combine": combine})})


def select(
    frame: SeriesFrame,
    spec: DatasetSpec,
    given: dict[str, Fitted] | None = None,
    prefix: backtest.ScalePrefix | None = None,
    X: np.ndarray | None = None,
) -> Selection:
    """Fit, backtest and choose every series' model of a regular batch (see the module).

    ``given``, ``prefix``, ``X``: as ``candidates.backtest_candidates`` takes them (a daily
    incremental step passes its ridges fitted from their statistics, on a recent window).
    """
    n = frame.n_series
    cands = backtest_candidates(frame, spec, given, prefix, X)
    names, fitted, folds, predictions = cands.names, cands.fitted, cands.folds, cands.predictions
    scores, eligible, missing, has_need = (
        cands.scores,
        cands.eligible,
        cands.missing,
        cands.has_need,
    )
    need = np.isfinite(folds.actual)
    best, second, second_score = _choose(names, scores, eligible)
    chosen = np.full(folds.actual.shape, np.nan)
    has = best >= 0
    chosen[:, has] = predictions[best[has], :, np.flatnonzero(has)].transpose(1, 0, 2)
    mixes = _combine(cands, spec, chosen) if spec.model.choice == "combine" else {}
    status = np.where(has, TRAINED, SKIPPED).astype(object)
    failed = [
        all(f.fits is not None and f.fits[i].status == FAILED for f in fitted) for i in range(n)
    ]
    status[~has & np.array(failed, dtype=bool)] = FAILED
    family_of = np.array([names[c] if c >= 0 else None for c in best], dtype=object)
    models = [fitted[c].models[i] if c >= 0 else None for i, c in enumerate(best)]
    runner_up = np.array([names[c] if c >= 0 else None for c in second], dtype=object)
    for i, mix in mixes.items():  # the best single candidate becomes the runner-up
        models[i], family_of[i] = mix, combination.FAMILY
        runner_up[i], second_score[i] = names[best[i]], scores[best[i], i]
    reason = np.array(
        [
            None if c >= 0 else _why_none(fitted, i, has_need[i], missing[:, i])
            for i, c in enumerate(best)
        ],
        dtype=object,
    )
    _fall_back(frame, folds, spec, ~has, chosen, status, family_of, models, reason)

    actual = folds.actual  # NaN where unobserved or outside a valid fold
    metrics = pair_metrics(actual, chosen, folds)
    result_metrics = {m: metrics[m] for m in (*ERROR_METRICS, "mase", "bias")}
    scored = np.isfinite(chosen) & need
    by_step = {"mae": step_mae(actual, chosen)}
    for b, p in _baseline_predictions(folds, spec).items():
        on_pairs = np.where(scored, actual, np.nan)
        bm = pair_metrics(on_pairs, p, folds)
        complete = ~(scored & ~np.isfinite(p)).any(axis=(0, 2))
        for m in ERROR_METRICS:
            result_metrics[f"{b}_{m}"] = np.where(complete, bm[m], np.nan)
        by_step[f"{b}_mae"] = np.where(complete[:, None], step_mae(on_pairs, p), np.nan)
    residuals = np.where(scored, actual - chosen, np.nan)
    fits = _fits_of(fitted, best, n)
    score_json = [
        json.dumps(
            {names[c]: round(float(scores[c, i]), 6) for c in range(len(names)) if eligible[c, i]}
        )
        for i in range(n)
    ]
    return Selection(
        family=family_of,
        models=models,
        status=status,
        reason=reason,
        metrics=result_metrics,
        pairs=metrics["count"].astype(np.int64),
        runner_up=runner_up,
        runner_up_score=second_score,
        scores=score_json,
        residuals=residuals.transpose(1, 0, 2),
        residual_scale=folds.scale[-1],
        fits=fits,
        by_step=by_step,
        weights=[json.dumps(mixes[i].describe()) if i in mixes else None for i in range(n)],
        moments=next((f.moments for f in fitted if f.name == spec.model.family), None),
    )


def _combine(b: Backtested, spec: DatasetSpec, chosen: np.ndarray) -> dict[int, Any]:
    """``choice: combine``: the series whose weights keep two or more candidates, as
    ``Combination`` models; their backtest forecasts (the weighted means) replace ``chosen``'s.
    The prior is the spec's (resolved for the whole run by the engines), else this batch's."""
    c = spec.model.combine
    if c.prior is None:
        prior = combination.panel_prior(b.scores, b.eligible)
    else:
        prior = np.array([c.prior.get(name, 0.0) for name in b.names])
    w = combination.weights(b.scores, b.eligible, prior, c.shrinkage, c.temperature, c.min_weight)
    wb = w[:, None, :, None]
    mean = np.where(wb > 0, b.predictions * wb, 0.0).sum(axis=0)  # NaN if a member's is
    out: dict[int, Any] = {}
    for i in np.flatnonzero((w > 0).sum(axis=0) >= 2):
        keep = np.flatnonzero(w[:, i] > 0)
        out[int(i)] = combination.Combination(
            families=tuple(b.names[k] for k in keep),
            members=tuple(b.fitted[k].models[i] for k in keep),
            weights=tuple(float(x) for x in w[keep, i] / w[keep, i].sum()),
        )
        chosen[:, i] = mean[:, i]
    return out


def _why_none(fitted: list[Fitted], i: int, has_need: bool, missing: np.ndarray) -> str:
    parts = [] if has_need else ["no actual observed in the backtest periods"]
    for f, miss in zip(fitted, missing, strict=True):
        why = f.reasons[i] or ("cannot forecast every backtest period" if miss else None)
        if why is not None:
            parts.append(f"{f.name}: {why}")
    return "; ".join(parts)


def _fall_back(
    frame: SeriesFrame,
    folds: backtest.Folds,
    spec: DatasetSpec,
    open_: np.ndarray,
    chosen: np.ndarray,
    status: np.ndarray,
    family_of: np.ndarray,
    models: list[Any],
    reason: np.ndarray,
) -> None:
    """Series no candidate serves take the first method of the fallback chain that can
    forecast them from their whole history; scored on whichever backtest pairs it can make."""
    if not open_.any() or not spec.fallback:
        return
    from mlops_assets.ml import param_models

    season = season_length(spec.frequency)
    chain = baselines.fallback_chain(frame, spec.horizon, spec.fallback, season, spec.mean_window)
    for method in dict.fromkeys(m for m in chain.method[open_] if m is not None):
        take = open_ & (chain.method == method)
        idx = np.flatnonzero(take)
        fits = param_models.fit_many(frame, method, spec)
        forecaster = baselines.method_forecaster(method, season, spec.mean_window)
        predicted = clip_to_bounds(backtest.run(folds, forecaster), spec)
        chosen[:, idx] = predicted[:, idx]
        for i in idx:
            models[i] = fits[i]
            family_of[i] = method
            status[i] = FALLBACK
            why = f"; {chain.reason[i]}" if chain.reason[i] else ""
            reason[i] = f"{reason[i]}; fell back to {method}{why}"
    unserved = open_ & np.array([m is None for m in chain.method], dtype=bool)
    for i in np.flatnonzero(unserved):
        reason[i] = f"{reason[i]}; fallback chain: {chain.reason[i]}"


def _fits_of(fitted: list[Fitted], best: np.ndarray, n: int) -> list[SeriesFit | None]:
    """The regression fit record of each series' chosen family, else of the first regression
    candidate (its training window and why it could not serve)."""
    first = next((f for f in fitted if f.fits is not None), None)
    out: list[SeriesFit | None] = []
    for i in range(n):
        f = fitted[best[i]] if best[i] >= 0 else None
        src = f if f is not None and f.fits is not None else first
        out.append(src.fits[i] if src is not None and src.fits is not None else None)
    return out
