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

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.features import SeriesFrame, feature_matrix, feature_names, tail_length
from mlops_assets.ml.predict import predict_rows, stack_linear
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import series_codes, series_ids

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
    keys = {k: pc.cast(table[k], pa.string()) for k in spec.series_keys}
    for k, col in keys.items():  # an int id and a string id of one series are one series
        table = table.set_column(table.column_names.index(k), k, col)
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
    """Per-row error codes and messages, set only where something is wrong."""

    def __init__(self, n: int):
        self.code = np.full(n, None, dtype=object)
        self.message = np.full(n, None, dtype=object)

    def set(self, rows: np.ndarray, code: str, message: str) -> None:
        self.code[rows] = code
        self.message[rows] = message

    @property
    def clean(self) -> np.ndarray:
        return np.equal(self.code, None)


def score_table(
    requests: pa.Table | pd.DataFrame | list[dict],
    spec: DatasetSpec,
    model_for: ModelLookup,
) -> pa.Table:
    """Predict every request row with its series' model; Arrow in and out, for large batches.

    Args:
        requests: Rows with the spec's key, time and exogenous columns (target optional).
        spec: The dataset spec.
        model_for: Series id to its ``SeriesModel``; ``None`` for an unknown series, or a
            string saying why a known series has no usable model.

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
    keys = pa.table({k: table[k] for k in spec.series_keys})
    code = series_codes(keys, spec.series_keys)
    _, first_row, series_of = np.unique(code, return_index=True, return_inverse=True)
    ids = np.asarray(series_ids(keys.take(first_row), spec).to_pylist(), dtype=object)
    n_series = len(ids)
    time = _times(table[spec.time])
    target = (
        _numbers(table[spec.target]) if spec.target in table.column_names else np.full(n, np.nan)
    )
    exog = {c: _numbers(table[c]) for c in spec.features.exogenous}
    errors = _Errors(n)

    bad_time = np.isnat(time)
    if bad_time.any():
        errors.set(np.flatnonzero(bad_time), BAD_VALUE, f"{spec.time!r} is not a date")
    order = np.lexsort((time, series_of))
    s_sorted, t_sorted = series_of[order], time[order]
    same = (
        (s_sorted[1:] == s_sorted[:-1]) & (t_sorted[1:] == t_sorted[:-1]) & ~np.isnat(t_sorted[1:])
    )
    if same.any():
        dup = np.zeros(n, bool)
        dup[order[1:][same]] = dup[order[:-1][same]] = True
        errors.set(np.flatnonzero(dup), DUPLICATE, "the request has this series and period twice")

    models: list[SeriesModel | None] = [None] * n_series
    why: list[tuple[str, str] | None] = [None] * n_series
    for s, sid in enumerate(ids):
        found = model_for(sid)
        if found is None:
            why[s] = (UNKNOWN_SERIES, f"no model set entry for series {sid!r}")
        elif isinstance(found, str):
            why[s] = (NO_MODEL, f"series {sid!r} has no usable model: {found}")
        else:
            models[s] = found
    has_model = np.array([m is not None for m in models], dtype=bool)
    for s in np.flatnonzero(~has_model):
        errors.set(np.flatnonzero(series_of == s) if n_series > 1 else np.arange(n), *why[s])

    order = order[errors.clean[order]]  # scorable rows, grouped by series, time-ordered
    first_time = np.full(n_series, np.datetime64("NaT"), dtype="datetime64[us]")
    if len(order):
        starts = np.flatnonzero(np.r_[True, series_of[order][1:] != series_of[order][:-1]])
        first_time[series_of[order][starts]] = time[order][starts]
    tails = _tails(models, ids, first_time, spec, errors, series_of)
    order = order[errors.clean[order]]
    predicted = np.full(n, np.nan)
    if len(order):
        frame, request_row = _merge(order, series_of, time, target, exog, tails, ids, spec)
        _predict_recursive(frame, request_row, models, predicted, spec, errors)
    versions = np.array([m.version if m is not None else None for m in models], dtype=object)
    return _result(ids, series_of, time, predicted, versions, errors)


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
    ok = np.isfinite(predicted)
    version_idx = np.where(ok, series_of, 0).astype(np.int32)
    return pa.table(
        {
            "series_id": pa.DictionaryArray.from_arrays(
                pa.array(series_of, pa.int32()), pa.array(list(ids), pa.string())
            ),
            "time": pc.cast(pa.array(time, pa.timestamp("us")), pa.date32()),
            "prediction": pa.array(predicted, mask=~ok),
            "model_version": pa.DictionaryArray.from_arrays(
                pa.array(version_idx, mask=~ok), pa.array(list(versions), pa.string())
            ),
            "error": pa.array(errors.code, pa.string()),
            "message": pa.array(errors.message, pa.string()),
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
                errors.set(
                    np.flatnonzero(series_of == s),
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
    return out


def _merge(
    order, series_of, time, target, exog, tails, ids, spec
) -> tuple[SeriesFrame, np.ndarray]:
    """One series frame: each series' tail rows, then its request rows, by computed position."""
    req_series = series_of[order]
    present = np.unique(req_series)
    req_counts = np.bincount(req_series, minlength=len(ids))[present]
    tail_counts = np.array([len(tails[s][0]) if s in tails else 0 for s in present], np.int64)
    offsets = np.concatenate([[0], np.cumsum(req_counts + tail_counts)]).astype(np.int64)
    n_rows = int(offsets[-1])
    rank = np.full(len(ids), -1, np.int64)
    rank[present] = np.arange(len(present))
    # Request row j of series s goes after the series' tail rows.
    start_of = offsets[:-1] + tail_counts
    within = np.arange(len(order)) - np.repeat(np.cumsum(req_counts) - req_counts, req_counts)
    dest = start_of[rank[req_series]] + within
    t = np.empty(n_rows, "datetime64[us]")
    y = np.full(n_rows, np.nan)
    ex = {c: np.full(n_rows, np.nan) for c in exog}
    request_row = np.full(n_rows, -1, np.int64)
    t[dest], y[dest], request_row[dest] = time[order], target[order], order
    for c, v in exog.items():
        ex[c][dest] = v[order]
    for i, s in enumerate(present):
        if tail_counts[i]:
            a = offsets[i]
            t[a : a + tail_counts[i]], y[a : a + tail_counts[i]] = tails[s]
    frame = SeriesFrame(
        keys=[(int(s),) for s in present], offsets=offsets, time=t, target=y, exog=ex
    )
    return frame, request_row


def _predict_recursive(frame, request_row, models, predicted, spec, errors) -> None:
    """Predict rows whose features are known; fill unknown targets with predictions; repeat."""
    frame = replace(frame, target=np.array(frame.target, dtype=float, copy=True))
    row_model = np.repeat([k[0] for k in frame.keys], np.diff(frame.offsets)).astype(np.int64)
    pipelines = [m.model if m is not None else None for m in models]
    stacked = stack_linear(pipelines)
    pending = request_row >= 0
    values = np.full(len(pending), np.nan)
    X = feature_matrix(frame, spec)
    while pending.any():
        ready = np.flatnonzero(pending & np.isfinite(X).all(axis=1))
        if not len(ready):
            break
        values[ready] = predict_rows(X, ready, row_model, pipelines, stacked)
        fill = ready[np.isnan(frame.target[ready])]
        frame.target[fill] = values[fill]
        pending[ready] = False
        if pending.any() and len(fill):
            X = feature_matrix(frame, spec)
    done = np.flatnonzero((request_row >= 0) & np.isfinite(values))
    predicted[request_row[done]] = values[done]
    _explain_unscored(np.flatnonzero(pending), X, request_row, spec, errors)


def _explain_unscored(rows, X, request_row, spec, errors) -> None:
    """One message per set of missing features, not one call per row."""
    if not len(rows):
        return
    names = feature_names(spec)
    missing = ~np.isfinite(X[rows])
    patterns, which = np.unique(missing, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        cols = [names[j] for j in np.flatnonzero(pattern)]
        exog_missing = [c for c in cols if c in spec.features.exogenous]
        target_rows = request_row[rows[which.ravel() == p]]
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
