"""Challenger against champion, per series, on the challenger's holdout window.

Pure functions (numpy, pyarrow): the evaluation asset, the benchmarks and the tests call them;
nothing here imports Dagster or Azure.

* ``holdout_rows``: the rows training evaluated a series on (the last ``spec.holdout`` periods
  with complete features and a finite target), so the champion is re-scored on exactly the rows
  the challenger's metrics come from.
* ``rescore``: the champion's (already verified and loaded) models on those rows.
* ``decide_all``: the promotion decision of every series at once, each with a reason.
* ``resulting_manifest``: the model set after the decisions: promoted series take the
  challenger's entry, the others keep the champion's entry by reference (same pack, offset,
  sha256 and ``trained_in``).
* ``aggregate_quality``: the blocking gate on the resulting set against the champion set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml import modelset
from mlops_assets.ml.calendar import calendar_series
from mlops_assets.ml.features import (
    SeriesFrame,
    feature_matrix,
    last_rows,
    positions,
    tail_length,
)
from mlops_assets.ml.metrics import ERROR_METRICS, grouped_metrics
from mlops_assets.ml.predict import clip_to_bounds, predict_rows, stack_linear
from mlops_assets.ml.spec import DatasetSpec

BETTER = "better"
NOT_BETTER = "not_better"
BELOW_THRESHOLD = "below_threshold"
NO_CHAMPION = "no_champion"
SKIPPED = "skipped"
DECISIONS = (BETTER, NOT_BETTER, BELOW_THRESHOLD, NO_CHAMPION, SKIPPED)

DECISION_FIELDS = [
    pa.field("decision", pa.string()),
    pa.field("decision_reason", pa.string()),
    pa.field("promoted", pa.bool_()),
    pa.field("challenger_metric", pa.float64()),
    pa.field("champion_metric", pa.float64()),
    pa.field("naive_metric", pa.float64()),
    pa.field("champion_version", pa.string()),
]


@dataclass(frozen=True)
class Policy:
    """When a challenger replaces the champion of its series.

    Attributes:
        metric: Error metric compared (lower is better), a manifest column: ``smape``, ``mae``...
        margin: Relative improvement required: the challenger must reach
            ``champion * (1 - margin)`` or less. 0 promotes on any strict improvement; a negative
            margin tolerates a worse challenger (never use it outside tests and drills).
        max_metric: Business threshold: a challenger above it is never promoted (None: off).
        require_beats_naive: Also refuse a challenger that does not beat the naive baseline.
    """

    metric: str = "smape"
    margin: float = 0.02
    max_metric: float | None = None
    require_beats_naive: bool = False


def holdout_rows(X: np.ndarray, y: np.ndarray, holdout: int) -> np.ndarray:
    """Row indices of one series' holdout, as ``training.fit_series`` chooses them."""
    split = len(y) - holdout
    if split < 1:
        return np.empty(0, dtype=np.int64)
    complete = np.isfinite(X).all(axis=1) & np.isfinite(y)
    return np.flatnonzero(complete[split:]) + split


def rescore(
    frame: SeriesFrame,
    spec: DatasetSpec,
    predictor: Callable[[str], object | None],
) -> dict[str, dict[str, float]]:
    """Metrics of the models ``predictor(series_id)`` gives on each series' holdout rows.

    Args:
        frame: The series to score (their rows up to the as-of date).
        spec: The dataset spec (features, holdout).
        predictor: A fitted model (anything with ``predict``) for a series id, or None to skip
            the series. The caller loads it verified (``persistence.load_verified``).

    Returns:
        ``{series_id: {"mae", "rmse", "smape", "mape", "n_holdout"}}`` for every scored series.
    """
    frame = calendar_series(frame, spec).frame  # training's layout: rows are periods
    frame = last_rows(frame, spec.holdout + tail_length(spec))
    X = feature_matrix(frame, spec)
    lengths = np.diff(frame.offsets)
    row_series = np.repeat(np.arange(frame.n_series), lengths)
    split = (lengths - spec.holdout)[row_series]  # as training.fit_series splits each series
    in_holdout = (positions(frame.offsets) >= split) & (split >= 1)
    complete = np.isfinite(X).all(axis=1) & np.isfinite(frame.target)
    ids = [spec.series_id(k) for k in frame.keys]
    models = [predictor(sid) for sid in ids]
    has_model = np.array([m is not None for m in models], dtype=bool)
    rows = np.flatnonzero(in_holdout & complete & has_model[row_series])
    predicted = clip_to_bounds(
        predict_rows(X, rows, row_series, models, stack_linear(models)), spec
    )
    m = grouped_metrics(frame.target[rows], predicted, row_series[rows], frame.n_series)
    return {
        ids[i]: {**{k: float(m[k][i]) for k in ERROR_METRICS}, "n_holdout": float(m["count"][i])}
        for i in np.flatnonzero(m["count"] > 0)
    }


def decide_all(
    challenger_trained: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    has_champion: np.ndarray,
    naive: np.ndarray,
    policy: Policy,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decision of every series, vectorised.

    Args:
        challenger_trained: The challenger was trained in this run (status ``trained``).
        challenger: Challenger metric on its holdout (NaN if none).
        champion: Champion metric re-scored on the same holdout (NaN if it could not be).
        has_champion: The series has a champion entry with a model.
        naive: Naive-baseline metric on the same holdout.
        policy: Margin, business threshold and baseline rule.

    Returns:
        (decision, promoted, reason) arrays: a ``DECISIONS`` value, whether the challenger
        becomes the series' model, and a sentence a person can read.
    """
    n = len(challenger)
    challenger = np.asarray(challenger, dtype=np.float64)
    champion = np.asarray(champion, dtype=np.float64)
    naive = np.asarray(naive, dtype=np.float64)
    trained = np.asarray(challenger_trained, dtype=bool) & np.isfinite(challenger)
    has = np.asarray(has_champion, dtype=bool)
    decision = np.full(n, SKIPPED, dtype=object)
    promoted = np.zeros(n, dtype=bool)
    reason = np.empty(n, dtype=object)
    m = policy.metric
    for i in range(n):
        c, k, z = challenger[i], champion[i], naive[i]
        if not trained[i]:
            decision[i] = SKIPPED
            reason[i] = "no challenger trained in this run" + (
                "; the champion stays" if has[i] else ""
            )
            continue
        if policy.max_metric is not None and not c <= policy.max_metric:
            decision[i] = BELOW_THRESHOLD
            reason[i] = f"{m} {c:.3f} above the business threshold {policy.max_metric:g}"
            continue
        if policy.require_beats_naive and np.isfinite(z) and not c < z:
            decision[i] = BELOW_THRESHOLD
            reason[i] = f"{m} {c:.3f} does not beat the naive baseline {z:.3f}"
            continue
        if not has[i]:
            decision[i], promoted[i] = NO_CHAMPION, True
            reason[i] = f"first model of the series ({m} {c:.3f})"
            continue
        if not np.isfinite(k):
            # A champion that cannot be scored on today's holdout cannot defend its place.
            decision[i], promoted[i] = BETTER, True
            reason[i] = f"champion could not be scored on the holdout; challenger {m} {c:.3f}"
            continue
        bar = k * (1.0 - policy.margin)
        if c <= bar and (c < k or policy.margin < 0):
            decision[i], promoted[i] = BETTER, True
            reason[i] = f"{m} {c:.3f} vs champion {k:.3f} (needs <= {bar:.3f})"
        else:
            decision[i] = NOT_BETTER
            reason[i] = f"{m} {c:.3f} vs champion {k:.3f} (needs <= {bar:.3f})"
    return decision, promoted, reason


def decide(
    challenger: float | None,
    champion: float | None,
    policy: Policy,
    *,
    trained: bool = True,
    naive: float | None = None,
) -> tuple[str, bool, str]:
    """``decide_all`` for one series (None: no value / no champion)."""
    nan = float("nan")
    d, p, r = decide_all(
        np.array([trained]),
        np.array([nan if challenger is None else challenger]),
        np.array([nan if champion is None else champion]),
        np.array([champion is not None]),
        np.array([nan if naive is None else naive]),
        policy,
    )
    return str(d[0]), bool(p[0]), str(r[0])


def _column(table: pa.Table, name: str, n: int, dtype=np.float64) -> np.ndarray:
    if name not in table.column_names:
        return np.full(n, np.nan)
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=dtype)


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
    and its status is ``trained``; series the candidate set only carried are ``skipped``.
    """
    ids = candidate["series_id"].to_pylist()
    n = len(ids)
    m = policy.metric
    trained = np.asarray(
        pc.and_(
            pc.equal(candidate["status"], "trained"),
            pc.equal(candidate["trained_in"], candidate_version),
        )
        .fill_null(False)
        .to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    has = np.zeros(n, dtype=bool)
    if champion is not None:
        with_model = champion.filter(pc.is_valid(champion["artifact"]))
        champ_ids = set(with_model["series_id"].to_pylist())
        has = np.array([s in champ_ids for s in ids], dtype=bool)
    champ_metric = np.array(
        [champion_scores.get(s, {}).get(m, np.nan) for s in ids], dtype=np.float64
    )
    challenger = _column(candidate, m, n)
    naive = _column(candidate, f"naive_{m}", n)
    decision, promoted, reason = decide_all(trained, challenger, champ_metric, has, naive, policy)
    return pa.table(
        {
            "series_id": pa.array(ids, pa.string()),
            "decision": pa.array(decision.tolist(), pa.string()),
            "decision_reason": pa.array(reason.tolist(), pa.string()),
            "promoted": pa.array(promoted),
            "challenger_metric": pa.array(challenger),
            "champion_metric": pa.array(champ_metric),
            "naive_metric": pa.array(naive),
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
        for name in ("artifact", "offset", "length", "model_sha256", "model_format"):
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
    passed: bool
    resulting_median: float
    champion_median: float
    compared_series: int
    tolerance: float
    description: str


def aggregate_quality(
    decisions: pa.Table, max_median_increase: float, metric: str = "smape"
) -> Quality:
    """Median metric of the resulting set against the champion set, on the series both have.

    The resulting set's value per series is the challenger's metric where it was promoted and
    the champion's re-scored metric where the champion stayed, all on today's holdout.

    Args:
        decisions: ``evaluate_sets`` output.
        max_median_increase: How much the median may rise (metric points) before the gate fails.
    """
    promoted = decisions["promoted"].to_numpy(zero_copy_only=False).astype(bool)
    chall = decisions["challenger_metric"].to_numpy(zero_copy_only=False).astype(float)
    champ = decisions["champion_metric"].to_numpy(zero_copy_only=False).astype(float)
    result = np.where(promoted, chall, champ)
    both = np.isfinite(champ) & np.isfinite(result)
    if not both.any():
        return Quality(
            True,
            float(np.nanmedian(chall)) if np.isfinite(chall).any() else float("nan"),
            float("nan"),
            0,
            max_median_increase,
            "no champion set to compare with: passes",
        )
    new, old = float(np.median(result[both])), float(np.median(champ[both]))
    ok = new <= old + max_median_increase
    return Quality(
        ok,
        new,
        old,
        int(both.sum()),
        max_median_increase,
        f"median {metric} of the resulting set {new:.3f} vs champion set {old:.3f} on "
        f"{int(both.sum())} series (tolerance +{max_median_increase:g}): "
        + ("passes" if ok else "FAILS"),
    )
