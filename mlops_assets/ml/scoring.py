"""Scoring rows of many series with their own models: the code batch and real-time scoring share.

A request row names a series (its key columns), a period (the time column) and the exogenous
features; it may carry the target where it is known (a batch drop with history). Features need
the targets before each row: they come from earlier rows of the same request and, before
those, from the series' *history tail* that training stored with its model. Rows whose features
are all known are predicted in one pass; a row that needs a target nobody sent (the second
period ahead, say) waits for the prediction of the period before it: forecasting is recursive.

Every row gets a prediction and the model version used, or an error code and message; one bad
row never fails the others. Nothing here reads storage: the caller passes ``model_for``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.features import SeriesFrame, feature_columns, feature_names, tail_length
from mlops_assets.ml.predict import fold_linear, predict_grouped, predict_rows, stack_linear
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import series_ids, series_numbers, take_rows

UNKNOWN_SERIES = "unknown_series"
NO_MODEL = "no_model"
MISSING_FEATURE = "missing_feature"
INSUFFICIENT_HISTORY = "insufficient_history"
GAP = "gap_after_history"
DUPLICATE = "duplicate_row"
BAD_VALUE = "bad_value"


class RequestError(ValueError):
    """The request as a whole is unusable (not one row of it can be scored)."""


@dataclass(frozen=True)
class SeriesModel:
    """What scoring needs of one series: its model and the targets that precede scoring."""

    model: object  # a fitted scikit-learn Pipeline
    version: str
    history_end: str | None  # ISO date of the last period the tail covers
    tail: np.ndarray  # the last ``tail_length(spec)`` targets, oldest first


ModelLookup = Callable[[str], "SeriesModel | None | str"]


def required_columns(spec: DatasetSpec) -> list[str]:
    return [*spec.series_keys, spec.time, *spec.features.exogenous]


def _column(values) -> pa.Array:
    """A request column as Arrow; values of mixed JSON types become strings, judged per row."""
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None or v != v else str(v) for v in values], pa.string())


def _table(requests: pa.Table | pd.DataFrame | list[dict], spec: DatasetSpec) -> pa.Table:
    if isinstance(requests, pa.Table):
        table = requests
    else:
        df = pd.DataFrame.from_records(list(requests)) if isinstance(requests, list) else requests
        df = df.reset_index(drop=True)
        table = pa.table({str(c): _column(df[c].tolist()) for c in df.columns})
    missing = [c for c in required_columns(spec) if c not in table.column_names]
    if missing:
        raise RequestError(
            f"missing column(s) {missing}; each row needs {required_columns(spec)} "
            f"(and may carry {spec.target!r} where it is known)"
        )
    for k in spec.series_keys:  # an int id and a string id of one series are one series
        kind = table[k].type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            table = table.set_column(table.column_names.index(k), k, pc.cast(table[k], pa.string()))
    return table


def _numbers(col: pa.ChunkedArray) -> np.ndarray:
    """A column as float64, NaN where missing or not a number."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(float, copy=False)
    values = col.to_numpy(zero_copy_only=False)
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(float)


def _times(col: pa.ChunkedArray) -> np.ndarray:
    """A column as datetime64[us], NaT where missing or not a date."""
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        return pc.cast(col, pa.timestamp("us")).to_numpy(zero_copy_only=False)
    values = pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed.to_numpy().astype("datetime64[us]")


def _period_after(end: str, spec: DatasetSpec) -> pd.Timestamp:
    return pd.date_range(start=pd.Timestamp(end), periods=2, freq=spec.frequency)[-1]


class _Errors:
    """Per-row error codes and messages, set only where something is wrong.

    Rows hold an index into a list of (code, message) entries, so a batch of tens of millions
    of rows carries one small int per row, not two Python objects.
    """

    def __init__(self, n: int):
        self.n = n
        self._index: np.ndarray | None = None  # allocated with the first error
        self.codes: list[str] = []
        self.messages: list[str] = []

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            self._index = np.full(self.n, -1, dtype=np.int32)
        return self._index

    def set(self, rows: np.ndarray, code: str, message: str) -> None:
        self.index[rows] = len(self.codes)
        self.codes.append(code)
        self.messages.append(message)

    def set_groups(self, rows: np.ndarray, group: np.ndarray, entries: list[tuple[str, str]]):
        """``rows[i]`` gets ``entries[group[i]]``: one call for many series' own messages."""
        self.index[rows] = len(self.codes) + group
        self.codes += [c for c, _ in entries]
        self.messages += [m for _, m in entries]

    @property
    def any(self) -> bool:
        return bool(self.codes) and bool((self.index >= 0).any())

    @property
    def clean(self) -> np.ndarray:
        return self.index < 0 if self.codes else np.ones(self.n, dtype=bool)

    def columns(self) -> tuple[pa.Array, pa.Array]:
        if not self.codes:
            none = pa.nulls(self.n, pa.string())  # one buffer for both all-null columns
            return none, none
        idx = pa.array(self.index, mask=self.index < 0)
        code = pa.DictionaryArray.from_arrays(idx, pa.array(self.codes, pa.string()))
        message = pa.DictionaryArray.from_arrays(idx, pa.array(self.messages, pa.string()))
        return code.cast(pa.string()), message.cast(pa.string())


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
        ``model_version``, ``error`` (a code) and ``message`` (null where scored).

    Raises:
        RequestError: A column every row needs is missing.
    """
    table = _table(requests, spec)
    n = table.num_rows
    if n == 0:
        return _result(
            np.array([], dtype=object),
            np.zeros(0, np.int64),
            np.array([], "datetime64[us]"),
            np.array([]),
            np.array([], dtype=object),
            _Errors(0),
        )
    keys = table.select(spec.series_keys)
    series_of, first_row = series_numbers(keys, spec.series_keys)
    ids = np.asarray(series_ids(take_rows(keys, first_row), spec).to_pylist(), dtype=object)
    n_series = len(ids)
    time = _times(table[spec.time])
    errors = _Errors(n)

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
            dup = np.zeros(n, bool)
            dup[order[1:][same]] = dup[order[:-1][same]] = True
            errors.set(
                np.flatnonzero(dup), DUPLICATE, "the request has this series and period twice"
            )

    models: list[SeriesModel | None] = [None] * n_series
    why: dict[int, tuple[str, str]] = {}
    for s, sid in enumerate(ids):
        found = model_for(sid)
        if found is None:
            why[s] = (UNKNOWN_SERIES, f"no model set entry for series {sid!r}")
        elif isinstance(found, str):
            why[s] = (NO_MODEL, f"series {sid!r} has no usable model: {found}")
        else:
            models[s] = found
    _set_series_errors(errors, series_of, why)

    order = _scorable(order, errors)  # rows still clean, grouped by series, in time
    first_time = np.full(n_series, np.datetime64("NaT"), dtype="datetime64[us]")
    if order is None or len(order):
        grouped = series_of if order is None else series_of[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        first_time[grouped[starts]] = time[starts if order is None else order[starts]]
        del grouped
    tails = _tails(models, ids, first_time, spec, errors, series_of)
    order = _scorable(order, errors)
    predicted = np.full(n, np.nan)
    if order is None or len(order):
        rows = _Rows(table, spec, order, series_of, time, tails)
        _predict_recursive(rows, models, predicted, spec, errors, chunk_rows)
    versions = [m.version if m is not None else None for m in models]
    if pa.types.is_date32(table[spec.time].type):
        time = table[spec.time]  # the request's own dates, not converted back from numpy
    return _result(ids, series_of, time, predicted, versions, errors)


def _scorable(order: np.ndarray | None, errors: _Errors) -> np.ndarray | None:
    """``order`` without the rows that have an error (None: all rows, as they came)."""
    if not errors.any:
        return order
    clean = errors.clean
    return np.flatnonzero(clean) if order is None else order[clean[order]]


def _set_series_errors(
    errors: _Errors, series_of: np.ndarray, why: dict[int, tuple[str, str]]
) -> None:
    """Every row of each series in ``why`` gets that series' error, in one pass over rows."""
    if not why:
        return
    bad = np.array(sorted(why), dtype=np.int64)
    slot = np.full(int(series_of.max()) + 1 if len(series_of) else 0, -1, np.int64)
    slot[bad] = np.arange(len(bad))
    rows = np.flatnonzero(slot[series_of] >= 0)
    errors.set_groups(rows, slot[series_of[rows]], [why[int(s)] for s in bad])


def score(
    requests: pa.Table | pd.DataFrame | list[dict],
    spec: DatasetSpec,
    model_for: ModelLookup,
) -> pd.DataFrame:
    """``score_table`` as a pandas frame with plain Python values (None where absent)."""
    out = score_table(requests, spec, model_for)
    columns = {
        c: pd.Series(out[c].cast(pa.string()).to_pylist(), dtype=object)
        for c in out.column_names
        if c != "prediction"
    }
    columns["prediction"] = out["prediction"].to_numpy(zero_copy_only=False)
    return pd.DataFrame(columns)[out.column_names]


def _result(ids, series_of, time, predicted, versions, errors) -> pa.Table:
    """The output table; ``time`` is numpy ``datetime64`` or an Arrow ``date32`` column."""
    prediction = pa.array(predicted, from_pandas=True)  # NaN (not predicted) becomes null
    series_idx = pa.array(series_of, pa.int32())
    # The version of row i is its series' version where it has a prediction: an index per
    # series into the distinct versions, under the prediction's validity bitmap.
    distinct, version_of = np.unique(np.array(versions, dtype=str), return_inverse=True)
    version_of = version_of.ravel().astype(np.int32)
    row_version = version_of[series_of] if len(distinct) > 1 else np.zeros(len(series_of), np.int32)
    version_idx = pa.Array.from_buffers(
        pa.int32(), len(series_idx), [prediction.buffers()[0], pa.py_buffer(row_version)]
    )
    if not isinstance(time, pa.ChunkedArray | pa.Array):
        time = pc.cast(pa.array(time, pa.timestamp("us")), pa.date32())
    error, message = errors.columns()
    return pa.table(
        {
            "series_id": pa.DictionaryArray.from_arrays(
                series_idx, pa.array(list(ids), pa.string())
            ),
            "time": time,
            "prediction": prediction,
            "model_version": pa.DictionaryArray.from_arrays(
                version_idx, pa.array(distinct.tolist(), pa.string())
            ),
            "error": error,
            "message": message,
        }
    )


def _tails(
    models, ids, first_time, spec, errors, series_of
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per series: (times, targets) of its history tail that precede its first request row.

    Tail times come from one ``date_range`` per distinct history end (series trained together
    share it), not one per series.
    """
    k = tail_length(spec)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    by_end: dict[str, list[int]] = {}
    gaps: dict[int, tuple[str, str]] = {}
    for s, m in enumerate(models):
        if m is not None and m.history_end is not None and k and not np.isnat(first_time[s]):
            by_end.setdefault(m.history_end, []).append(s)
    for end, members in by_end.items():
        end_t = np.datetime64(pd.Timestamp(end).to_datetime64(), "us")
        expected = np.datetime64(_period_after(end, spec).to_datetime64(), "us")
        longest = max(len(models[s].tail) for s in members)
        grid = pd.date_range(end=end, periods=longest, freq=spec.frequency).to_numpy()
        grid = grid.astype("datetime64[us]")
        for s in members:
            first = first_time[s]
            if first > end_t and first != expected:
                gaps[s] = (
                    GAP,
                    f"series {ids[s]!r} has history until {str(end_t)[:10]}; the next period is "
                    f"{str(expected)[:10]} but the request starts at {str(first)[:10]}: send the "
                    "periods in between (with their targets where known)",
                )
                continue
            tail = np.asarray(models[s].tail, dtype=float)
            times = grid[len(grid) - len(tail) :]
            keep = times < first
            out[s] = (times[keep], tail[keep])
    _set_series_errors(errors, series_of, gaps)
    return out


class _Rows:
    """The scorable rows grouped by series (in ``order``), read one range of series at a time.

    Targets and exogenous columns stay Arrow until a range is scored: a batch of tens of
    millions of rows is never copied whole into numpy, only each range of about a million.
    """

    def __init__(self, table, spec, order, series_of, time, tails):
        self.table, self.spec, self.order, self.identity = table, spec, order, order is None
        self.time, self.tails = time, tails
        grouped = series_of if order is None else series_of[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        self.present = grouped[starts]  # series numbers, in order
        self.bounds = np.r_[starts, len(grouped)]  # rows of present[i]: bounds[i]:bounds[i + 1]

    def ranges(self, max_rows: int) -> list[tuple[int, int]]:
        """Ranges of ``present`` of about ``max_rows`` rows (whole series, at least one)."""
        step = max(1, max_rows)
        cuts = np.searchsorted(self.bounds, np.arange(step, int(self.bounds[-1]), step))
        edges = np.unique(np.r_[0, cuts, len(self.present)])
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def _numbers(self, name: str, rows) -> np.ndarray:
        if name not in self.table.column_names:
            n = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
            return np.full(n, np.nan)
        col = self.table[name]
        part = (
            col.slice(rows.start, rows.stop - rows.start)
            if isinstance(rows, slice)
            else (col.take(rows))
        )
        return _numbers(part)

    def frame(self, i0: int, i1: int) -> tuple[SeriesFrame, np.ndarray]:
        """Series ``present[i0:i1]`` as one frame: each one's tail rows, then its request rows;
        and the request row of each frame row (-1 for tail rows)."""
        a, b = int(self.bounds[i0]), int(self.bounds[i1])
        rows = slice(a, b) if self.identity else self.order[a:b]
        request_rows = np.arange(a, b) if self.identity else rows
        present, bounds = self.present[i0:i1], self.bounds[i0 : i1 + 1] - a
        tails = self.tails
        tail_len = np.array([len(tails[s][0]) if s in tails else 0 for s in present], np.int64)
        offsets = np.concatenate([[0], np.cumsum(np.diff(bounds) + tail_len)]).astype(np.int64)
        longest = int(tail_len.max()) if len(tail_len) else 0
        no_value, no_row = np.full(longest, np.nan), np.full(longest, -1, np.int64)

        def interleave(values: np.ndarray, tail_part) -> np.ndarray:
            pieces = []
            for i, s in enumerate(present):
                if tail_len[i]:
                    pieces.append(tail_part(int(s), int(tail_len[i])))
                pieces.append(values[bounds[i] : bounds[i + 1]])
            return np.concatenate(pieces, out=np.empty(offsets[-1], values.dtype))

        frame = SeriesFrame(
            keys=[(int(s),) for s in present],
            offsets=offsets,
            time=interleave(self.time[rows], lambda s, k: tails[s][0]),
            target=interleave(self._numbers(self.spec.target, rows), lambda s, k: tails[s][1]),
            exog={
                c: interleave(self._numbers(c, rows), lambda s, k: no_value[:k])
                for c in self.spec.features.exogenous
            },
        )
        return frame, interleave(request_rows, lambda s, k: no_row[:k])


def _all_finite(columns: list[np.ndarray]) -> np.ndarray:
    ok = np.isfinite(columns[0])
    for col in columns[1:]:
        ok &= np.isfinite(col)
    return ok


def _predict_chunk(frame, model_of, request_row, pipelines, folded, spec):
    """Recursive prediction of one frame of whole series (its target is updated in place).

    Returns the values of every row (NaN where not predicted), and the request rows left
    unscored with the pattern of their missing features.
    """
    counts = np.diff(frame.offsets)
    pending = request_row >= 0
    values = np.full(frame.n_rows, np.nan)
    columns = feature_columns(frame, spec)
    while pending.any():
        ready = pending & _all_finite(columns)
        if not ready.any():
            break
        if folded is not None:
            values[ready] = predict_grouped(columns, model_of, counts, folded)[ready]
        else:
            rows = np.flatnonzero(ready)
            X = np.column_stack(columns)
            values[rows] = predict_rows(X, rows, np.repeat(model_of, counts), pipelines, None)
        fill = ready & np.isnan(frame.target)
        frame.target[fill] = values[fill]
        pending &= ~ready
        if not fill.any():
            break
        if pending.any():
            columns = feature_columns(frame, spec)
    left = np.flatnonzero(pending)
    missing = np.column_stack([~np.isfinite(c[left]) for c in columns])
    return values, request_row[left], missing


def _predict_recursive(rows: _Rows, models, predicted, spec, errors, chunk_rows) -> None:
    """Predict rows whose features are known; fill unknown targets with predictions; repeat.

    Series are independent, so this runs over ranges of whole series of about ``chunk_rows``
    rows: memory stays bounded, and two ranges run at once (numpy releases the GIL).
    """
    pipelines = [m.model if m is not None else None for m in models]
    stacked = stack_linear(pipelines)
    folded = fold_linear(stacked) if stacked is not None else None

    def one(bounds: tuple[int, int]):
        frame, request_row = rows.frame(*bounds)
        model_of = np.array([k[0] for k in frame.keys], dtype=np.int64)
        values, unscored, missing = _predict_chunk(
            frame, model_of, request_row, pipelines, folded, spec
        )
        done = (request_row >= 0) & np.isfinite(values)
        return request_row[done], values[done], unscored, missing

    ranges = rows.ranges(chunk_rows)
    workers = min(2, os.cpu_count() or 1, len(ranges))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done_rows, values, unscored, missing in pool.map(one, ranges):
            predicted[done_rows] = values
            _explain_unscored(unscored, missing, spec, errors)


def _explain_unscored(rows, missing, spec, errors) -> None:
    """One message per set of missing features, not one call per row."""
    if not len(rows):
        return
    names = feature_names(spec)
    patterns, which = np.unique(missing, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        cols = [names[j] for j in np.flatnonzero(pattern)]
        exog_missing = [c for c in cols if c in spec.features.exogenous]
        target_rows = rows[which.ravel() == p]
        if exog_missing:
            errors.set(
                target_rows, MISSING_FEATURE, f"feature(s) {exog_missing} missing or not numbers"
            )
        else:
            errors.set(
                target_rows,
                INSUFFICIENT_HISTORY,
                f"not enough history before this period for {cols}",
            )
