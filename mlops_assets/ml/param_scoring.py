"""Scoring the rows of series whose model forecasts from history alone (``ParamModel``).

A forecast-only model (seasonal naive, ETS, ...: ``param_models``) needs no features: its
request rows are laid out exactly as the regression path lays them out (``SeriesRows.frame``:
the stored tail, then the request rows, on the calendar with the spec's fill rules), and each
series is forecast from its *history*: the tail plus the request rows that carry a known
target before its first row to predict (the first request row whose target is unknown). One
``param_models.forecast_many`` call per range of series covers every series' rows from there
to its last request row; baselines are vectorised over the series of one family.

Request rows inside that history (their targets known) get the forecast made from the stored
tail alone, as the model stood before they arrived: a second call, for those series only.
A missing period between the history and a row to predict is forecast over (steps count
periods), so a request need not send the periods in between. A row the model cannot forecast
(a series with no observed target) gets ``insufficient_history``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlops_assets.ml import param_models
from mlops_assets.ml.backtest import head_rows
from mlops_assets.ml.features import SeriesFrame, positions, take_series
from mlops_assets.ml.predict import clip_to_bounds
from mlops_assets.ml.recursive import SeriesRows
from mlops_assets.ml.score_request import (
    INSUFFICIENT_HISTORY,
    OFF_CALENDAR,
    RowErrors,
    SeriesModel,
    off_calendar_message,
)
from mlops_assets.ml.spec import DatasetSpec


def is_param_model(model: SeriesModel | None) -> bool:
    """Whether a series' model forecasts from history alone (a ``ParamModel``)."""
    return model is not None and isinstance(model.model, param_models.ParamModel)


def _forecast_from(
    frame: SeriesFrame,
    models: Sequence[param_models.ParamModel | None],
    origin: np.ndarray,
    stop: np.ndarray,
    spec: DatasetSpec,
) -> np.ndarray:
    """Per row of ``frame``: the forecast made from each series' first ``origin`` rows, for
    rows at positions ``origin <= p < stop`` of their series (NaN elsewhere)."""
    out = np.full(frame.n_rows, np.nan)
    steps = np.maximum(stop - origin, 0)
    todo = steps > 0
    if not todo.any():
        return out
    history = take_series(head_rows(frame, origin), todo)
    chosen = [m for m, ok in zip(models, todo, strict=True) if ok]
    forecast = param_models.forecast_many(chosen, history, int(steps.max()), spec)
    counts = np.diff(frame.offsets)
    series = np.repeat(np.arange(frame.n_series), counts)
    step = positions(frame.offsets) - origin[series]
    rows = np.flatnonzero(todo[series] & (step >= 0) & (step < steps[series]))
    slot = np.cumsum(todo) - 1  # index of each forecast series among those forecast
    out[rows] = forecast[slot[series[rows]], step[rows]]
    return out


def _first(flags: np.ndarray, frame: SeriesFrame) -> np.ndarray:
    """Per series: the position of its first row where ``flags``, else its length."""
    counts = np.diff(frame.offsets)
    at = np.where(flags, positions(frame.offsets), np.repeat(counts, counts))
    if not frame.n_rows:
        return np.zeros(frame.n_series, np.int64)
    first = np.minimum.reduceat(at, np.minimum(frame.offsets[:-1], frame.n_rows - 1))
    return np.where(counts > 0, first, 0).astype(np.int64)


def forecast_chunk(
    frame: SeriesFrame,
    request_row: np.ndarray,
    models: Sequence[param_models.ParamModel | None],
    spec: DatasetSpec,
) -> np.ndarray:
    """The value of every row of ``frame`` (NaN for rows that are not request rows or that the
    model could not forecast), clipped to the spec's target bounds.

    Args:
        frame: Series on the calendar: each one's tail, then its request rows.
        request_row: The request row of each frame row (-1: tail or inserted period).
        models: Each series' model, in the frame's order.
        spec: The dataset spec.
    """
    requested = request_row >= 0
    start = _first(requested, frame)  # the first request row: after the stored tail
    cut = _first(requested & np.isnan(frame.target), frame)  # the first row to predict
    end = np.diff(frame.offsets)
    ahead = _forecast_from(frame, models, cut, end, spec)
    within = _forecast_from(frame, models, start, cut, spec)
    values = np.where(np.isnan(ahead), within, ahead)
    values[~requested] = np.nan
    return clip_to_bounds(values, spec)


def forecast_rows(
    rows: SeriesRows,
    models: list[SeriesModel | None],
    predicted: np.ndarray,
    spec: DatasetSpec,
    errors: RowErrors,
    chunk_rows: int,
) -> None:
    """Forecast the request rows of series with a ``ParamModel``, a range of series at a time.

    Args:
        rows: The scorable rows of those series, grouped by series.
        models: Each series number's model.
        predicted: Filled in place: the prediction of each request row.
        spec: The dataset spec.
        errors: Filled in place: rows off the calendar, rows with no forecast.
        chunk_rows: About how many rows (of whole series) are forecast at a time.
    """
    for i0, i1 in rows.ranges(chunk_rows):
        frame, request_row, left_out = rows.frame(i0, i1)
        chunk_models: list[param_models.ParamModel | None] = []
        for key in frame.keys:
            m = models[key[0]]
            model = m.model if m is not None else None
            chunk_models.append(model if isinstance(model, param_models.ParamModel) else None)
        values = forecast_chunk(frame, request_row, chunk_models, spec)
        done = (request_row >= 0) & np.isfinite(values)
        predicted[request_row[done]] = values[done]
        unscored = request_row[(request_row >= 0) & ~done]
        if len(unscored):
            errors.set(
                unscored,
                INSUFFICIENT_HISTORY,
                "the series' model forecasts from its history, and there is no observed target "
                "before this period to forecast from",
            )
        if len(left_out):
            errors.set(left_out, OFF_CALENDAR, off_calendar_message(spec))
