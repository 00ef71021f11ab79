"""Challenger against champion, per series, on the challenger's backtest folds.

Pure functions (numpy, pyarrow): the evaluation asset, the benchmarks and the tests call them;
nothing here imports Dagster or Azure. The decision rules themselves live in ``champion_gate``
(per-series error arrays in, decisions out); this module feeds them from model-set manifests.

* ``rescore``: the champion's (already verified and loaded) models backtested on the folds the
  challenger's metrics come from (training's ``selection``), pair for pair.
* ``evaluate_sets``: the decision of every series of a candidate set, each with a reason.
* ``resulting_manifest``: the model set after the decisions: promoted series take the
  challenger's entry, the others keep the champion's entry by reference (same pack, offset,
  sha256 and ``trained_in``).
* ``aggregate_quality``: the blocking gate on the resulting set against the champion set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml import combination, modelset
from mlops_assets.ml.backtest import Folds
from mlops_assets.ml.calendar import calendar_series
from mlops_assets.ml.candidates import Fitted, backtest_models, forecast_candidate, make_folds
from mlops_assets.ml.champion_gate import (
    BELOW_BASELINE,
    BELOW_THRESHOLD,
    BETTER,
    DECISIONS,
    KEPT_UNSCORED,
    NO_CHAMPION,
    NOT_BETTER,
    PROMOTED_UNSCORED,
    SKIPPED,
    Errors,
    Policy,
    decide,
    decide_all,
    gate_counts,
)
from mlops_assets.ml.features import SeriesFrame, feature_names
from mlops_assets.ml.fitting import BASELINES as BASELINE_NAMES
from mlops_assets.ml.fitting import FALLBACK, TRAINED
from mlops_assets.ml.metrics import ERROR_METRICS
from mlops_assets.ml.selection import pair_metrics
from mlops_assets.ml.spec import DatasetSpec

__all__ = [
    "BELOW_BASELINE",
    "BELOW_THRESHOLD",
    "BETTER",
    "DECISIONS",
    "DECISION_FIELDS",
    "KEPT_UNSCORED",
    "NOT_BETTER",
    "NO_CHAMPION",
    "PROMOTED_UNSCORED",
    "SKIPPED",
    "Errors",
    "Policy",
    "Quality",
    "aggregate_quality",
    "backtest_stored",
    "decide",
    "decide_all",
    "evaluate_sets",
    "gate_counts",
    "rescore",
    "resulting_manifest",
]

DECISION_FIELDS = [
    pa.field("decision", pa.string()),
    pa.field("decision_reason", pa.string()),
    pa.field("promoted", pa.bool_()),
    pa.field("compared", pa.bool_()),
    pa.field("below_baseline", pa.bool_()),
    pa.field("n_evaluated", pa.int64()),
    pa.field("challenger_metric", pa.float64()),
    pa.field("champion_metric", pa.float64()),
    pa.field("champion_n", pa.int64()),
    pa.field("naive_metric", pa.float64()),
    pa.field("seasonal_naive_metric", pa.float64()),
    pa.field("baseline", pa.string()),
    pa.field("baseline_metric", pa.float64()),
    pa.field("champion_version", pa.string()),
]


def _if_fits(model: object | None, n_features: int) -> object | None:
    n = getattr(model, "n_features_in_", None)
    return model if n is None or n == n_features else None


def backtest_stored(
    frame: SeriesFrame,
    spec: DatasetSpec,
    predictor: Callable[[str], object | None],
) -> tuple[list[str], Folds, np.ndarray]:
    """Forecasts of stored models from every fold origin of training's backtest.

    What ``rescore`` scores: the frame laid out on the calendar as training does, the spec's
    folds, and each series' model ``predictor(series_id)`` forecasting recursively from each
    origin (NaN where a series has no usable model).

    Returns:
        The series ids in frame order, the folds and the ``[K, n_series, horizon]`` forecasts.
    """
    frame = calendar_series(frame, spec).frame  # training's layout: rows are periods
    ids = [spec.series_id(k) for k in frame.keys]
    n_features = len(feature_names(spec))
    loaded = [predictor(sid) for sid in ids]
    folds = make_folds(frame, spec)

    def forecast(plain: list) -> np.ndarray:
        pipelines = [_if_fits(m, n_features) if hasattr(m, "predict") else None for m in plain]
        params = [m if m is not None and not hasattr(m, "predict") else None for m in plain]
        predicted = np.full(folds.actual.shape, np.nan)
        for kind, models in (("regression", pipelines), ("params", params)):
            if any(m is not None for m in models):
                fitted = Fitted("champion", kind, models, [None] * len(models))
                got = backtest_models(
                    folds,
                    spec,
                    lambda h, hz, ahead, f=fitted: forecast_candidate(f, h, hz, spec, ahead),
                )
                predicted = np.where(np.isfinite(predicted), predicted, got)
        return predicted

    # A combination: each member forecast as it would be alone, then the weighted mean.
    return ids, folds, combination.weighted(loaded, forecast, axis=1)


def rescore(
    frame: SeriesFrame,
    spec: DatasetSpec,
    predictor: Callable[[str], object | None],
) -> dict[str, dict[str, float]]:
    """Metrics of the models ``predictor(series_id)`` gives on each series' backtest folds.

    The folds are training's (``candidates.make_folds``: the spec's origins inside the last
    ``holdout`` periods, ``horizon`` steps each, recursive from the actuals up to each origin),
    so a champion is scored on exactly the (origin, step) pairs its challenger was.

    Args:
        frame: The series to score: every row up to the as-of date, or at least the last
            ``holdout + tail_length(spec)`` periods of each.
        spec: The dataset spec (features, holdout, horizon, backtest).
        predictor: The model of a series id (a Pipeline or a parameter model, loaded
            verified: ``persistence.load_verified``), or None to skip the series. A Pipeline
            expecting another number of features than the spec's is skipped too.

    Returns:
        ``{series_id: {"mae", "rmse", "smape", "mape", "n_holdout"}}`` for every scored series
        (``n_holdout``: the pairs scored).
    """
    ids, folds, predicted = backtest_stored(frame, spec, predictor)
    m = pair_metrics(folds.actual, predicted, folds)
    return {
        ids[i]: {**{k: float(m[k][i]) for k in ERROR_METRICS}, "n_holdout": float(m["count"][i])}
        for i in np.flatnonzero(m["count"] > 0)
    }


def _column(table: pa.Table, name: str, n: int) -> np.ndarray:
    if name not in table.column_names:
        return np.full(n, np.nan)
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=np.float64)


def evaluate_sets(
    candidate: pa.Table,
    champion: pa.Table | None,
    champion_scores: Mapping[str, Mapping[str, float]],
    candidate_version: str,
    champion_version: str | None,
    policy: Policy,
) -> pa.Table:
    """One row per series of the candidate set: the inputs of its decision and the decision.

    A challenger counts as trained in this run when its ``trained_in`` is ``candidate_version``
    and its status is ``trained`` or ``fallback``; series the candidate set only carried are
    ``skipped``. Its
    error and points are the manifest's ``<metric>`` and ``n_holdout``; the baselines'
    (``naive_<metric>``, ``seasonal_naive_<metric>``) are scored by training on exactly those
    rows or not at all; the champion's come from ``champion_scores`` (``rescore``).
    """
    ids = candidate["series_id"].to_pylist()
    n = len(ids)
    m = policy.metric
    this_run = pc.equal(candidate["trained_in"], candidate_version)
    status = candidate["status"]

    def mask(expr: pa.ChunkedArray) -> np.ndarray:
        return np.asarray(expr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)

    trained = mask(pc.and_(pc.is_in(status, pa.array([TRAINED, FALLBACK])), this_run))
    fallback = mask(pc.and_(pc.equal(status, FALLBACK), this_run))
    has = np.zeros(n, dtype=bool)
    if champion is not None:
        with_model = champion.filter(pc.is_valid(champion["artifact"]))
        champ_ids = set(with_model["series_id"].to_pylist())
        has = np.array([s in champ_ids for s in ids], dtype=bool)
    nan = float("nan")
    champ_scores = [champion_scores.get(s, {}) for s in ids]
    champ = Errors.of(
        [d.get(m, nan) for d in champ_scores], [d.get("n_holdout", nan) for d in champ_scores]
    )
    points = _column(candidate, "n_holdout", n)
    challenger = Errors.of(_column(candidate, m, n), points)
    baselines = {b: Errors.of(_column(candidate, f"{b}_{m}", n), points) for b in BASELINE_NAMES}
    d = decide_all(trained, challenger, champ, has, baselines, policy, first_unscored=fallback)
    return pa.table(
        {
            "series_id": pa.array(ids, pa.string()),
            "decision": pa.array(d.decision.tolist(), pa.string()),
            "decision_reason": pa.array(d.reason.tolist(), pa.string()),
            "promoted": pa.array(d.promoted),
            "compared": pa.array(d.compared),
            "below_baseline": pa.array(d.below_baseline),
            "n_evaluated": pa.array(challenger.count),
            "challenger_metric": pa.array(challenger.value),
            "champion_metric": pa.array(champ.value),
            "champion_n": pa.array(champ.count),
            "naive_metric": pa.array(baselines["naive"].value),
            "seasonal_naive_metric": pa.array(baselines["seasonal_naive"].value),
            "baseline": pa.array(d.baseline.tolist(), pa.string()),
            "baseline_metric": pa.array(d.baseline_error),
            "champion_version": pa.array(
                [champion_version if h else None for h in has], pa.string()
            ),
        }
    )


def resulting_manifest(
    candidate: pa.Table, champion: pa.Table | None, decisions: pa.Table
) -> pa.Table:
    """The model set after the decisions, in the candidate manifest's schema plus the decision
    columns.

    Promoted series take the candidate's entry. The others keep the champion's entry by
    reference (its pack, offset, length, sha256 and ``trained_in``); a series with neither a
    promoted challenger nor a champion keeps its candidate entry without a model (no artifact),
    so it is known to the set but never served.
    """
    decisions = decisions.select(["series_id", *(f.name for f in DECISION_FIELDS)])
    promoted = decisions["promoted"].to_numpy(zero_copy_only=False)
    ids = decisions["series_id"]
    keep_ids = ids.filter(pa.array(~promoted))
    challengers = candidate.filter(pc.is_in(candidate["series_id"], ids.filter(pa.array(promoted))))
    champ = None
    if champion is not None:
        champ = champion.filter(
            pc.and_(pc.is_in(champion["series_id"], keep_ids), pc.is_valid(champion["artifact"]))
        )
    out = modelset.carry_over(challengers, champ)
    rest = pc.invert(pc.is_in(candidate["series_id"], out["series_id"].combine_chunks()))
    orphan = candidate.filter(rest)
    if orphan.num_rows:
        for name in (
            "artifact",
            "offset",
            "length",
            "model_sha256",
            "model_format",
            "stats_artifact",
        ):
            if name in orphan.column_names:
                i = orphan.column_names.index(name)
                orphan = orphan.set_column(
                    i, orphan.schema.field(i), pa.nulls(orphan.num_rows, orphan.schema[i].type)
                )
        out = modelset.carry_over(out, orphan)
    out = out.drop_columns([f.name for f in DECISION_FIELDS if f.name in out.column_names])
    # One row per candidate series on both sides: align by sorted id (pyarrow's join does not
    # carry list columns).
    decisions = decisions.sort_by("series_id")
    if out["series_id"].to_pylist() != decisions["series_id"].to_pylist():
        raise ValueError("resulting manifest and decisions hold different series")
    for f in DECISION_FIELDS:
        out = out.append_column(f, decisions[f.name].cast(f.type))
    return out


@dataclass(frozen=True)
class Quality:
    """The aggregate gate's outcome.

    Attributes:
        counts: ``champion_gate.gate_counts`` of the decisions (compared, promoted, kept, ...).
    """

    passed: bool
    resulting_median: float
    champion_median: float
    compared_series: int
    tolerance: float
    description: str
    counts: dict[str, int] = field(default_factory=dict)


def aggregate_quality(
    decisions: pa.Table,
    max_median_increase: float,
    metric: str = "smape",
    *,
    allow_uncompared: bool = False,
) -> Quality:
    """Median metric of the resulting set against the champion set, on the series compared.

    The resulting set's value per series is the challenger's metric where it was promoted and
    the champion's re-scored metric where the champion stayed, all on the same points. The gate
    fails when series with a champion got a challenger but not one was compared: a set whose
    champions could not be scored cannot show it is no worse.

    Args:
        decisions: ``evaluate_sets`` output.
        max_median_increase: How much the median may rise (metric points) before the gate fails.
        metric: The metric's name, for the description.
        allow_uncompared: Pass with no comparison at all (the policy's ``unscored: promote``,
            e.g. once after the spec's features changed, which leaves every champion unscored).
    """

    def col(name: str) -> np.ndarray:
        return decisions[name].to_numpy(zero_copy_only=False)

    promoted = col("promoted").astype(bool)
    compared = col("compared").astype(bool)
    chall = col("challenger_metric").astype(float)
    champ = col("champion_metric").astype(float)
    has = pc.is_valid(decisions["champion_version"]).to_numpy(zero_copy_only=False)
    counts = gate_counts(col("decision"), promoted, compared, has)
    result = np.where(promoted, chall, champ)
    both = compared & np.isfinite(result)
    n = int(both.sum())
    tail = (
        f"; {counts['promoted']} promoted ({counts['promoted_first']} first models, "
        f"{counts['promoted_without_comparison']} without a comparison), "
        f"{counts['kept']} champions kept ({counts['kept_unscored']} unscored), "
        f"{counts['below_baseline']} below the baseline"
    )
    if not n:
        ok = counts["with_champion"] == 0 or allow_uncompared
        why = (
            "no champion set to compare with: passes"
            if counts["with_champion"] == 0
            else f"{counts['with_champion']} challengers have a champion but none was compared "
            "on the same points: " + ("passes only as unscored: promote allows" if ok else "FAILS")
        )
        challenger_median = float(np.nanmedian(chall)) if np.isfinite(chall).any() else np.nan
        return Quality(ok, challenger_median, np.nan, 0, max_median_increase, why + tail, counts)
    new, old = float(np.median(result[both])), float(np.median(champ[both]))
    ok = new <= old + max_median_increase
    return Quality(
        ok,
        new,
        old,
        n,
        max_median_increase,
        f"median {metric} of the resulting set {new:.3f} vs champion set {old:.3f} on "
        f"{n} series compared (tolerance +{max_median_increase:g}): "
        + ("passes" if ok else "FAILS")
        + tail,
        counts,
    )
