"""Scoring rows of many series with their own models: the code batch and real-time scoring share.

A request row names a series (its key columns), a period (the time column) and the exogenous
features; it may carry the target where it is known (a batch drop with history). Features need
the targets before each row: they come from earlier rows of the same request and, before
those, from the series' *history tail* that training stored with its model. Rows whose features
are all known are predicted in one pass; a row that needs a target nobody sent (the second
period ahead, say) waits for the prediction of the period before it: forecasting is recursive.

Every row gets a prediction and the model version used, or an error code and message; one bad
row never fails the others. Nothing here reads storage: the caller passes ``model_for``.

A series whose model forecasts from its history alone (a ``ParamModel``: seasonal naive, ETS,
...) is forecast from the same layout of tail and request rows (``param_scoring``). Where the
manifest has interval half-widths, each prediction comes with its bounds (``score_intervals``).

The request side (columns, typed values, error codes, the result table) is ``score_request``;
the recursive prediction over ranges of series is ``recursive``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml import calendar, combination
from mlops_assets.ml.combination import is_combination
from mlops_assets.ml.features import tail_length
from mlops_assets.ml.param_scoring import forecast_rows, is_param_model
from mlops_assets.ml.persistence import ModelIntegrityError
from mlops_assets.ml.recursive import SeriesRows, predict_recursive
from mlops_assets.ml.score_intervals import row_bounds
from mlops_assets.ml.score_request import (
    BAD_VALUE,
    DUPLICATE,
    GAP,
    INSUFFICIENT_HISTORY,
    MISSING_FEATURE,
    MODEL_INTEGRITY,
    NO_MODEL,
    OFF_CALENDAR,
    RESULT_COLUMNS,
    UNKNOWN_SERIES,
    ModelLookup,
    RequestError,
    RowErrors,
    SeriesModel,
    as_table,
    column_times,
    off_calendar_message,
    required_columns,
    result_columns,
    result_table,
)
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import grouped_run_starts, series_ids, series_numbers, take_rows

__all__ = [
    "BAD_VALUE",
    "DUPLICATE",
    "GAP",
    "INSUFFICIENT_HISTORY",
    "MISSING_FEATURE",
    "MODEL_INTEGRITY",
    "NO_MODEL",
    "OFF_CALENDAR",
    "UNKNOWN_SERIES",
    "ModelLookup",
    "RequestError",
    "SeriesModel",
    "required_columns",
    "score",
    "score_table",
]


def _grouped_order(series_of: np.ndarray, time: np.ndarray) -> np.ndarray | None:
    """Row order by series then time; None when the rows came that way (strictly)."""
    block = 1 << 20  # checked a block at a time: no temporaries the size of the batch
    n = len(series_of)
    for a in range(0, n - 1, block):
        s, t = series_of[a : a + block + 1], time[a : a + block + 1]
        step = np.diff(s)
        if not ((step >= 0).all() and ((step > 0) | (t[1:] > t[:-1])).all()):
            return np.lexsort((time, series_of))
    return None


def score_table(
    requests: pa.Table | pd.DataFrame | list[dict],
    spec: DatasetSpec,
    model_for: ModelLookup,
    *,
    chunk_rows: int = 1_000_000,
) -> pa.Table:
    """Predict every request row with its series' model; Arrow in and out, for large batches.

    Args:
        requests: Rows with the spec's key, time and exogenous columns (target optional).
        spec: The dataset spec.
        model_for: Series id to its ``SeriesModel``; ``None`` for an unknown series, or a
            string saying why a known series has no usable model.
        chunk_rows: Features and predictions are computed for about this many rows (of whole
            series) at a time, which bounds memory on a drop of tens of millions of rows.

    Returns:
        One row per request row, in request order: ``series_id``, ``time``, ``prediction``,
        for each of the spec's interval levels ``prediction_lower_<level>`` and
        ``prediction_upper_<level>`` (``score_intervals``; null where the series has no
        interval), ``model_version``, ``error`` (a code) and ``message`` (null where scored).

    Raises:
        RequestError: A column every row needs is missing.
    """
    table = as_table(requests, spec)
    n = table.num_rows
    if n == 0:
        return result_table(
            np.array([], dtype=object),
            np.zeros(0, np.int64),
            np.array([], "datetime64[us]"),
            np.array([]),
            [],
            RowErrors(0),
            {name: np.zeros(0) for name in result_columns(spec) if name not in RESULT_COLUMNS},
        )
    keys, no_key = _filled_keys(table.select(spec.series_keys))
    series_of, first_row = _number_series(keys, spec.series_keys)
    ids = np.asarray(series_ids(take_rows(keys, first_row), spec).to_pylist(), dtype=object)
    time = column_times(table[spec.time])
    errors = RowErrors(n)
    # Distinct dates (a batch holds few), shared by the calendar check and the interval steps:
    # no sort of every row's date.
    dates = calendar.distinct_times(time)  # NaT: code -1
    time, snapped = _on_calendar(time, dates, spec, errors)
    order = _mark_bad_rows(series_of, time, spec, errors)  # None: rows came grouped in time
    models, why = _look_up(ids, model_for)
    _set_series_errors(errors, series_of, why)
    if no_key.any():  # after the series' errors: this row's own problem comes first
        errors.set(
            np.flatnonzero(no_key),
            BAD_VALUE,
            f"a series key ({', '.join(spec.series_keys)}) is missing: every row needs them all",
        )

    order = _scorable(order, errors)  # rows still clean, grouped by series, in time
    first_time = _first_times(order, series_of, time, len(ids))
    tails = _tails(models, first_time, spec)
    predicted = np.full(n, np.nan)
    _predict(table, spec, order, series_of, time, tails, models, predicted, errors, chunk_rows)
    versions = [m.version if m is not None else None for m in models]
    bounds = row_bounds(predicted, time, series_of, models, spec, None if snapped else dates)
    if pa.types.is_date32(table[spec.time].type) and not snapped:
        time = table[spec.time]  # the request's own dates, not converted back from numpy
    return result_table(ids, series_of, time, predicted, versions, errors, bounds)


def _predict(table, spec, order, series_of, time, tails, models, predicted, errors, chunk_rows):
    """Predict the scorable rows ``order`` (None: all) in place. A series whose model is a
    ``combination.Combination`` gets the weighted mean of its members' predictions, each
    member predicting the rows as it would alone (``_predict_plain``)."""
    if not any(m is not None and is_combination(m.model) for m in models):
        _predict_plain(
            table, spec, order, series_of, time, tails, models, predicted, errors, chunk_rows
        )
        return
    layered = combination.layers([m.model if m is not None else None for m in models])
    scorable = np.arange(len(series_of)) if order is None else order
    total = np.zeros(len(predicted))
    for plain, w in layered:
        layer = [
            replace(m, model=p) if m is not None and p is not None else None
            for m, p in zip(models, plain, strict=True)
        ]
        rows = scorable[w[series_of[scorable]] > 0]  # series with a member in this layer
        got = np.full(len(predicted), np.nan)
        if len(rows):
            _predict_plain(
                table, spec, rows, series_of, time, tails, layer, got, errors, chunk_rows
            )
        row_w = w[series_of]
        total += np.where(row_w > 0, got * row_w, 0.0)  # NaN where a member has none
    has_model = layered[0][1][series_of] > 0
    predicted[:] = np.where(has_model, total, predicted)


def _predict_plain(
    table, spec, order, series_of, time, tails, models, predicted, errors, chunk_rows
):
    """Predict the scorable rows ``order`` (None: all) in place: the rows of series whose
    model forecasts from history alone (``param_scoring``), the others recursively on
    features (``recursive``)."""
    if order is not None and not len(order):
        return
    regression = models
    forecast_only = np.array([is_param_model(m) for m in models], bool)
    if forecast_only.any():
        scorable = np.arange(len(series_of)) if order is None else order
        by_history = forecast_only[series_of[scorable]]
        if by_history.any():
            rows = SeriesRows(table, spec, scorable[by_history], series_of, time, tails)
            forecast_rows(rows, models, predicted, spec, errors, chunk_rows)
        order = scorable[~by_history]
        regression = [None if f else m for m, f in zip(models, forecast_only, strict=True)]
        if not len(order):
            return
    rows = SeriesRows(table, spec, order, series_of, time, tails)
    predict_recursive(rows, regression, predicted, spec, errors, chunk_rows)


def _number_series(keys: pa.Table, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``tables.series_numbers``; or, when each series' rows come together (a drop exported
    by key, a piece of one), the series numbered as they come, from the runs of equal keys:
    a code per series rather than per row."""
    starts = grouped_run_starts(keys, names)
    if starts is None:
        return series_numbers(keys, names)
    counts = np.diff(np.r_[starts, keys.num_rows])
    return np.repeat(np.arange(len(starts), dtype=np.int32), counts), starts


def _on_calendar(
    time: np.ndarray, dates: tuple[np.ndarray, np.ndarray], spec: DatasetSpec, errors: RowErrors
) -> tuple[np.ndarray, bool]:
    """Rows off the spec's calendar get an error, or are snapped when the spec says so (as
    ``validation.calendar_rows`` does to a drop); the periods, and whether any was snapped.

    Only the distinct timestamps (``dates``: ``calendar.distinct_times(time)``) are located on
    the calendar.
    """
    codes, distinct = dates
    if len(distinct) == 0:
        return time, False
    on = calendar.periods(np.asarray(distinct, time.dtype), spec.frequency).on_calendar
    if on.all():
        return time, False
    off = ~on[codes] & (codes >= 0)
    if spec.calendar.off_calendar == "snap":
        time = time.copy()
        time[off] = calendar.snap(time[off], spec.frequency)
        return time, True
    errors.set(np.flatnonzero(off), OFF_CALENDAR, off_calendar_message(spec))
    return time, False


def _filled_keys(keys: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """Key columns with nulls filled by "" (so rows can be numbered) and which rows had one."""
    missing = np.zeros(keys.num_rows, bool)
    columns = []
    for col in keys.columns:
        if col.null_count:
            missing |= col.is_null().to_numpy(zero_copy_only=False)
            col = pc.fill_null(col, "")
        columns.append(col)
    return pa.table(columns, names=keys.column_names), missing


def _mark_bad_rows(
    series_of: np.ndarray, time: np.ndarray, spec: DatasetSpec, errors: RowErrors
) -> np.ndarray | None:
    """Set the errors of rows with no date and of duplicate rows; return ``_grouped_order``."""
    bad_time = np.isnat(time)
    if bad_time.any():
        errors.set(np.flatnonzero(bad_time), BAD_VALUE, f"{spec.time!r} is not a date")
    order = _grouped_order(series_of, time)  # None: the rows are in that order already
    if order is not None:
        s_sorted, t_sorted = series_of[order], time[order]
        same = (
            (s_sorted[1:] == s_sorted[:-1])
            & (t_sorted[1:] == t_sorted[:-1])
            & ~np.isnat(t_sorted[1:])
        )
        if same.any():
            dup = np.zeros(len(series_of), bool)
            dup[order[1:][same]] = dup[order[:-1][same]] = True
            errors.set(
                np.flatnonzero(dup), DUPLICATE, "the request has this series and period twice"
            )
    return order


def _look_up(
    ids: np.ndarray, model_for: ModelLookup
) -> tuple[list[SeriesModel | None], dict[int, tuple[str, str]]]:
    """Each series' model, and the (code, message) of each series that has none; a model
    refused by its digest fails only its own series' rows (the message names the artifact)."""
    models: list[SeriesModel | None] = [None] * len(ids)
    why: dict[int, tuple[str, str]] = {}
    for s, sid in enumerate(ids):
        try:
            found = model_for(sid)
        except ModelIntegrityError as exc:
            why[s] = (MODEL_INTEGRITY, str(exc))
            continue
        if found is None:
            why[s] = (UNKNOWN_SERIES, f"no model set entry for series {sid!r}")
        elif isinstance(found, str):
            why[s] = (NO_MODEL, f"series {sid!r} has no usable model: {found}")
        else:
            models[s] = found
    return models, why


def _first_times(
    order: np.ndarray | None, series_of: np.ndarray, time: np.ndarray, n_series: int
) -> np.ndarray:
    """Each series' first period among the rows ``order`` (NaT for a series with none)."""
    first_time = np.full(n_series, np.datetime64("NaT"), dtype="datetime64[us]")
    if order is None or len(order):
        grouped = series_of if order is None else series_of[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        first_time[grouped[starts]] = time[starts if order is None else order[starts]]
    return first_time


def _scorable(order: np.ndarray | None, errors: RowErrors) -> np.ndarray | None:
    """``order`` without the rows that have an error (None: all rows, as they came)."""
    if not errors.any:
        return order
    clean = errors.clean
    return np.flatnonzero(clean) if order is None else order[clean[order]]


def _set_series_errors(
    errors: RowErrors,
    series_of: np.ndarray,
    why: dict[int, tuple[str, str]],
    only: np.ndarray | None = None,
) -> None:
    """Every row (or every row in ``only``) of each series in ``why`` gets that series' error,
    in one pass over rows."""
    if not why:
        return
    bad = np.array(sorted(why), dtype=np.int64)
    slot = np.full(int(series_of.max()) + 1 if len(series_of) else 0, -1, np.int64)
    slot[bad] = np.arange(len(bad))
    hit = slot[series_of] >= 0
    rows = np.flatnonzero(hit if only is None else hit & only)
    errors.set_groups(rows, slot[series_of[rows]], [why[int(s)] for s in bad])


def score(
    requests: pa.Table | pd.DataFrame | list[dict],
    spec: DatasetSpec,
    model_for: ModelLookup,
) -> pd.DataFrame:
    """``score_table`` as a pandas frame with plain Python values (None where absent)."""
    out = score_table(requests, spec, model_for)
    numeric = [c for c in out.column_names if pa.types.is_floating(out[c].type)]
    columns = {
        c: pd.Series(out[c].cast(pa.string()).to_pylist(), dtype=object)
        for c in out.column_names
        if c not in numeric
    }
    for c in numeric:  # the prediction and its interval bounds, NaN where none
        columns[c] = out[c].to_numpy(zero_copy_only=False)
    return pd.DataFrame(columns)[out.column_names]


def models_tail(models: list[SeriesModel | None], s: int) -> np.ndarray:
    """The history tail of series ``s``'s model as float64, the model's own array where it is
    one (callers only ask for series with a model)."""
    model = models[s]
    if model is None:
        raise ValueError(f"series number {s} has no model")
    return np.asarray(model.tail, dtype=float)


def _tails(
    models: list[SeriesModel | None],
    first_time: np.ndarray,
    spec: DatasetSpec,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per series: (times, targets) of its history tail that precede its first request row.

    Periods between the history and the request are laid out on the calendar with the rows
    (``recursive.on_calendar``) and filled per the spec, as training fills them; where the
    spec leaves the target unknown (``fill: none``) they are forecast over, as the backtest
    forecasts every step after its origin.

    Tail times come from one ``date_range`` per distinct history end (series trained together
    share it), not one per series.
    """
    k = tail_length(spec)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    by_end: dict[str, list[int]] = {}
    for s, m in enumerate(models):
        # A forecast-only model (or a combination with one) forecasts from the tail.
        needed = k or is_param_model(m) or (m is not None and is_combination(m.model))
        if m is not None and m.history_end is not None and needed and not np.isnat(first_time[s]):
            by_end.setdefault(m.history_end, []).append(s)
    for end, members in by_end.items():
        tails = {s: models_tail(models, s) for s in members}
        longest = max(len(t) for t in tails.values())
        grid = pd.date_range(end=end, periods=longest, freq=spec.frequency).to_numpy()
        grid = grid.astype("datetime64[us]")
        for s in members:
            tail = tails[s]
            times = grid[len(grid) - len(tail) :]
            keep = times < first_time[s]
            out[s] = (times[keep], tail[keep])
    return out
