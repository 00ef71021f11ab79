"""A daily incremental step: each ridge series refreshed from its statistics and a recent window.

Between full refits (``model.refit.full_every_days``) a series whose model is the spec's ridge
is not refit on its whole history: its stored statistics (``ridge_stats.RidgeState``) take the
training rows that entered its window since they were written (the periods that left the
holdout), and the ridge is solved from them (``incremental.RidgeMoments``). Everything else a
full refit records is recomputed on a window of each series' recent periods, long enough that
every value is the one the whole history gives:

- the backtest of the refreshed model (the same folds, the same recursive forecasts) and the
  baselines on its pairs, with the MASE scale made whole by the stored sums of the periods
  before the window (``backtest.ScalePrefix``);
- the history tail, the intervals' residuals, the fallback chain where the ridge cannot serve.

So a daily record equals what a full refit records for that series (the coefficients to
~1e-12 relative, the metrics to rounding), as long as the curated rows the statistics were
built from did not change (the caller checks the curated store's revisions) and the series'
model family is still the ridge (the family choice is revisited by the full refit).

``covered`` says which series a window holds enough of; the others, and series with no
statistics (new ones, those the ridge could not fit), are trained the full way on their whole
history by the caller. Nothing here reads storage: the caller passes frames and states.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from mlops_assets.ml import backtest, persistence, ridge_stats
from mlops_assets.ml.calendar import calendar_series
from mlops_assets.ml.candidates import Fitted
from mlops_assets.ml.engines import series_record
from mlops_assets.ml.features import (
    SeriesFrame,
    feature_matrix,
    positions,
    tail_length,
    take_series,
)
from mlops_assets.ml.fitting import TRAINED, SeriesFit, format_time, season_length
from mlops_assets.ml.incremental import RidgeMoments
from mlops_assets.ml.ridge_stats import RidgeState
from mlops_assets.ml.selection import select
from mlops_assets.ml.spec import DatasetSpec


def max_new_periods(spec: DatasetSpec) -> int:
    """The most new periods a step may fold in per series: those ``full_every_days`` days
    span, plus one (a full refit is due before more can arrive)."""
    assert spec.model.refit is not None
    days = spec.model.refit.full_every_days
    start = pd.Timestamp("2000-01-03")
    span = pd.date_range(start, start + pd.Timedelta(days=days), freq=to_offset(spec.frequency))
    return max(2, len(span) + 1)


def window_periods(spec: DatasetSpec) -> int:
    """Periods of recent history a step reads per series (``covered`` checks it had them)."""
    season = max(backtest.scale_lags(season_length(spec.frequency)))
    return ridge_stats.scale_margin(spec) + max(season, tail_length(spec)) + max_new_periods(spec)


def window_start(spec: DatasetSpec, as_of: str) -> pd.Timestamp:
    """The first date a step reads for a run as of ``as_of``."""
    return pd.Timestamp(as_of) - window_periods(spec) * to_offset(spec.frequency)


def covered(frame: SeriesFrame, spec: DatasetSpec, state: RidgeState, at: np.ndarray) -> np.ndarray:
    """``[n_series]`` whether a regular window ``frame`` holds enough of each series with
    statistics (``at >= 0``: its row in ``state``) for an exact step: every difference the
    MASE scale adds after the stored ``scale_since`` and every feature lag of the rows that
    enter the training window (the first rows of a window have no lags)."""
    has = at >= 0
    out = np.zeros(frame.n_series, dtype=bool)
    if not has.any() or frame.n_rows == 0:
        return out
    owner = np.repeat(np.arange(frame.n_series), np.diff(frame.offsets))
    rows_at = np.maximum(at, 0)
    pos = positions(frame.offsets)
    since = state.prefix.since[rows_at][owner]
    through = state.through[rows_at][owner]
    # The window's first rows hold no lags: the first row dated at scale_since must have the
    # season's difference, the first row after through (entering) its features' lags.
    first_since = _first_position(frame, owner, pos, frame.time >= since)
    first_new = _first_position(frame, owner, pos, frame.time > through)
    lengths = np.diff(frame.offsets)
    scale_ok = (first_since >= max(state.prefix.sums)) & (first_since < lengths)
    new_ok = (first_new >= tail_length(spec)) | (first_new == lengths)
    return has & scale_ok & new_ok


def _first_position(
    frame: SeriesFrame, owner: np.ndarray, pos: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Per series, the position of its first row where ``mask`` holds (its length if none)."""
    out = np.diff(frame.offsets).astype(np.int64)
    hit = np.flatnonzero(mask)
    if len(hit):
        first = np.minimum.reduceat(
            np.r_[pos[hit], 0], np.searchsorted(owner[hit], np.arange(frame.n_series))
        )
        present = np.bincount(owner[hit], minlength=frame.n_series) > 0
        out[present] = first[: frame.n_series][present]
    return out


@dataclass
class Refreshed:
    """One daily step's records (``engines.result_schema`` with ``ridge_stats.FIELDS``) and
    the series it left to a whole-history training (``left``: series ids)."""

    records: list[dict]
    left: list[str]
    entered: int  # training rows folded in
    seconds: dict[str, float]


def refresh(
    frame: SeriesFrame,
    spec: DatasetSpec,
    state: RidgeState,
    train_start: dict[str, str | None],
) -> Refreshed:
    """Refresh every series of ``frame`` (a recent window, as read) that has statistics in
    ``state`` and that the window covers; the others are ``left``.

    Args:
        frame: Each series' rows since ``window_start`` (or its whole history).
        spec: The dataset spec (``model.refit`` set).
        state: The statistics of the last step or full refit.
        train_start: Each series' first training period, as its record has it.
    """
    seconds: dict[str, float] = {}
    t0 = _time.perf_counter()
    cal = calendar_series(frame, spec)
    reg = cal.frame
    ids = [spec.series_id(k) for k in reg.keys]
    where = {s: i for i, s in enumerate(state.ids)}
    at = np.array([where.get(s, -1) for s in ids], dtype=np.int64)
    ok = covered(reg, spec, state, at)
    left = [s for s, k in zip(ids, ok, strict=True) if not k]
    left += [spec.series_id(frame.keys[i]) for i in cal.invalid]
    sub = take_series(reg, ok)
    st = state.take(at[ok])
    seconds["layout"] = _time.perf_counter() - t0
    if sub.n_series == 0:
        return Refreshed([], left, 0, seconds)

    t0 = _time.perf_counter()
    X = feature_matrix(sub, spec)
    rows = ridge_stats.training_rows(sub, X, spec)
    owner = ridge_stats.series_of(sub, rows)
    entering = rows[sub.time[rows] > st.through[owner]]
    moments = RidgeMoments(st.moments.shift.copy(), st.moments.moments.copy())
    moments.update(X[entering], sub.target[entering], ridge_stats.series_of(sub, entering))
    params = dict(spec.model.params)
    arrays = moments.solve(float(params.get("alpha", 1.0)))
    models = [arrays.pipeline(j, params) for j in range(sub.n_series)]
    last_train = np.full(sub.n_series, -1, dtype=np.int64)
    np.maximum.at(last_train, owner, rows)
    seconds["update_solve"] = _time.perf_counter() - t0
    per_series = seconds["update_solve"] / sub.n_series
    fits = [
        SeriesFit(
            models[j],
            TRAINED,
            n_train=int(arrays.n[j]),
            train_start=train_start.get(ids_j),
            train_end=format_time(sub.time[last_train[j]], spec) if last_train[j] >= 0 else None,
            fit_seconds=per_series,
        )
        for j, ids_j in enumerate(spec.series_id(k) for k in sub.keys)
    ]
    given = Fitted(spec.model.family, "regression", models, [None] * sub.n_series, fits)

    t0 = _time.perf_counter()
    sel = select(sub, spec, given={spec.model.family: given}, prefix=st.prefix, X=X)
    seconds["backtest"] = _time.perf_counter() - t0

    t0 = _time.perf_counter()
    through = ridge_stats.window_end(sub, spec)
    prefix = _advanced_prefix(sub, spec, st.prefix)
    chosen = sel.family == spec.model.family
    stats = ridge_stats.stats_records(moments, through, prefix, chosen)
    # The refreshed ridges' bytes in one pass (a series whose chosen model is another, such
    # as its fallback, is dumped by series_record).
    artifacts = persistence.linear_artifacts(
        models[0], arrays.mean, arrays.var, arrays.scale, arrays.coef, arrays.intercept, arrays.n
    )
    records = [
        series_record(
            spec, sub.keys[j], sel, j, sub, artifacts[j] if sel.models[j] is models[j] else None
        )
        | stats[j]
        for j in range(sub.n_series)
    ]
    seconds["records"] = _time.perf_counter() - t0
    return Refreshed(records, left, len(entering), seconds)


def _advanced_prefix(
    frame: SeriesFrame, spec: DatasetSpec, old: backtest.ScalePrefix
) -> backtest.ScalePrefix:
    """The MASE scale's sums moved to the new ``scale_since`` (``scale_margin`` periods before
    each series' new end): the old sums plus the differences dated in between."""
    new = ridge_stats.scale_prefix_since(frame, spec)
    since = np.maximum(new, old.since)
    sums = {
        lag: old.sums[lag] + backtest.lag_sums(frame, lag, old.since, since) for lag in old.sums
    }
    return backtest.ScalePrefix(since, sums)


def full_refit_due(spec: DatasetSpec, full_refit_in: str, as_of: str) -> bool:
    """Whether the run as of ``as_of`` is a full refit: ``full_every_days`` or more after the
    as-of date of the full refit the statistics come from (a version ``<as_of>/<run>``)."""
    assert spec.model.refit is not None
    built = full_refit_in.split("/", 1)[0]
    try:
        days = (pd.Timestamp(as_of) - pd.Timestamp(built)).days
    except ValueError:
        return True
    return not 0 < days < spec.model.refit.full_every_days
