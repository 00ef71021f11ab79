"""Prediction intervals of scored rows: each prediction ± the half-width of its horizon step.

Training stores, per series and interval level, conformal half-widths per horizon step
(``SeriesModel.widths``, the manifest's ``interval_<level>`` columns). A scored row's step is
the number of periods between the series' ``history_end`` and the row's period (1: the period
right after the history); a step past the stored horizon takes the last width, and a row at or
before ``history_end`` (re-scoring the history) takes the first. A NaN width or prediction
gives NaN bounds; the lower bound is clipped at the target's ``min`` (the prediction already
is, by ``predict.clip_to_bounds``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlops_assets.ml import calendar
from mlops_assets.ml.intervals import interval_bounds, interval_field
from mlops_assets.ml.score_request import SeriesModel, bound_fields
from mlops_assets.ml.spec import DatasetSpec


def bounds_of(
    point: np.ndarray, width: np.ndarray, spec: DatasetSpec
) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` of ``point ± width``, the lower one clipped at the target's min."""
    return interval_bounds(point, width, spec.columns[spec.target].min)


def horizon_steps(
    time: np.ndarray,
    series_of: np.ndarray,
    models: Sequence[SeriesModel | None],
    frequency: str,
    dates: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Each row's horizon step (1-based, at least 1); 0 where unknown (no date, no model, no
    ``history_end``). Periods are located once per distinct date, not per row; ``dates`` is
    ``calendar.distinct_times(time)`` where the caller has it."""
    ends = np.array(
        [
            np.datetime64(m.history_end, "us")
            if m is not None and m.history_end
            else np.datetime64("NaT", "us")
            for m in models
        ],
        dtype="datetime64[us]",
    )
    has_end = ~np.isnat(ends)
    known = ~np.isnat(time) & has_end[series_of]
    everywhere = bool(known.all())  # the usual case: no row copied out, no mask applied
    steps = np.zeros(len(time), np.int64)
    if not everywhere and not known.any():
        return steps
    # Distinct dates (a batch holds few): no sort of every row's date.
    if dates is None:
        codes, distinct = calendar.distinct_times(time if everywhere else time[known])
    else:
        codes, distinct = dates[0] if everywhere else dates[0][known], dates[1]
    end_dates, end_of = np.unique(ends[has_end], return_inverse=True)  # one per series
    located = np.r_[np.asarray(distinct, "datetime64[us]"), end_dates]
    period = calendar.periods(located, frequency).period  # one grid for both
    end_period = np.zeros(len(ends), np.int64)
    end_period[has_end] = period[len(distinct) :][end_of.ravel()]
    # step = period of the row's date - period of its series' end, at least 1
    ahead = period[: len(distinct)][codes]
    ahead -= end_period[series_of if everywhere else series_of[known]]
    np.maximum(ahead, 1, out=ahead)
    if everywhere:
        return ahead
    steps[known] = ahead
    return steps


def width_table(
    models: Sequence[SeriesModel | None], column: str, steps: int | None = None
) -> np.ndarray:
    """``[n_series, 1 + steps]`` half-widths of ``column``, step ``k`` in column ``k``
    (column 0, an unknown step, is NaN); a shorter row is padded with its last width, a series
    without widths is NaN. ``steps`` defaults to the longest horizon stored."""
    rows = [
        np.asarray(m.widths.get(column, ()), float) if m is not None else np.zeros(0)
        for m in models
    ]
    if steps is None:
        steps = max((len(r) for r in rows), default=0)
    table = np.full((len(rows), 1 + max(steps, 1)), np.nan)
    for i, r in enumerate(rows):
        if len(r):
            r = r[:steps]
            table[i, 1 : 1 + len(r)] = r
            table[i, 1 + len(r) :] = r[-1]
    return table


def row_bounds(
    predicted: np.ndarray,
    time: np.ndarray,
    series_of: np.ndarray,
    models: Sequence[SeriesModel | None],
    spec: DatasetSpec,
    dates: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The bound columns of every row (``score_request.bound_fields`` of each of the spec's
    levels, in order): NaN where the row has no prediction or its series no width. ``dates``:
    ``calendar.distinct_times(time)``, where the caller has it."""
    if not spec.intervals.levels:
        return {}
    fields = [interval_field(level) for level in spec.intervals.levels]
    longest = max(
        (len(m.widths.get(f, ())) for m in models if m is not None for f in fields), default=0
    )
    longest = max(longest, 1)
    # One flat index for every level: row -> (its series, its step), a step past the stored
    # horizon reading the last width and step 0 (unknown) the NaN column.
    at = horizon_steps(time, series_of, models, spec.frequency, dates)
    np.minimum(at, longest, out=at)
    at += series_of.astype(np.int64) * (longest + 1)  # int64: no overflow on many series
    out: dict[str, np.ndarray] = {}
    for level, field in zip(spec.intervals.levels, fields, strict=True):
        width = width_table(models, field, longest).ravel().take(at)
        lower_name, upper_name = bound_fields(level)
        out[lower_name], out[upper_name] = bounds_of(predicted, width, spec)
    return out
