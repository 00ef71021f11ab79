"""Feature building for many series at once, from a dataset spec.

Rows are grouped by series and ordered by time, so a series is a contiguous run of rows and
every feature is one vectorised pass over all rows: a lag is the target shifted by ``k`` rows
with the first ``k`` rows of each series masked, a rolling mean is a sum of such shifts. The
same code runs on one series (a Spark group) and on millions of rows (the local engine) and
gives bit-identical values either way, because each value is computed by the same sequence of
floating-point operations whatever else is in the batch.

Forecast honesty: features are *one-step-ahead*. Lags count whole periods (``>= 1``) and rolling
means cover the ``w`` periods before the row (shifted by one), so a row's features only use
targets known before its period starts. The holdout is evaluated one step ahead with actual
lagged values. Forecasting further than one period (``spec.horizon``) is recursive, or needs
lags ``>= horizon`` in the spec. Lags count rows, not calendar periods: series are expected to
be regular (one row per period), which validation enforces; gaps are not filled here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import decode_dictionaries, series_codes, take_rows

_TIME_UNIT = "datetime64[us]"
_DAYS_PER_YEAR = 365.25
# Calendar values come from a per-day lookup table when the data spans at most this many days.
_MAX_CALENDAR_TABLE_DAYS = 1_000_000


@dataclass(frozen=True)
class SeriesFrame:
    """Columns of many series, grouped by series and ordered by time within each series.

    Attributes:
        keys: One tuple of key values per series, in row order.
        offsets: Row boundaries: series ``i`` is rows ``offsets[i]:offsets[i + 1]``.
        time: Timestamps as ``datetime64[us]``.
        target: Target values as float64 (NaN where missing).
        exog: Exogenous columns named by the spec, as float64.
    """

    keys: list[tuple]
    offsets: np.ndarray
    time: np.ndarray
    target: np.ndarray
    exog: dict[str, np.ndarray]

    @property
    def n_series(self) -> int:
        return len(self.keys)

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def slice_series(self, start: int, stop: int) -> SeriesFrame:
        """Series ``start:stop`` as a new frame (views, no copies)."""
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        return replace(
            self,
            keys=self.keys[start:stop],
            offsets=self.offsets[start : stop + 1] - a,
            time=self.time[a:b],
            target=self.target[a:b],
            exog={k: v[a:b] for k, v in self.exog.items()},
        )

    def chunks(self, max_rows: int, min_chunks: int = 1) -> list[SeriesFrame]:
        """Split into frames of whole series of about ``max_rows`` rows (at least one series)."""
        target_rows = max(1, min(max_rows, -(-self.n_rows // max(1, min_chunks))))
        bounds = [0]
        # First series whose end passes each multiple of target_rows: whole series per chunk.
        for cut in range(target_rows, self.n_rows, target_rows):
            i = int(np.searchsorted(self.offsets, cut, side="left"))
            if i > bounds[-1] and i < self.n_series:
                bounds.append(i)
        bounds.append(self.n_series)
        return [self.slice_series(a, b) for a, b in itertools.pairwise(bounds)]


def feature_names(spec: DatasetSpec) -> list[str]:
    """Feature column names, in the order of the model's input matrix."""
    f = spec.features
    names = [f"lag_{k}" for k in f.lags]
    names += [f"rolling_mean_{w}" for w in f.rolling]
    for c in f.calendar:
        names += ["fourier_year_sin", "fourier_year_cos"] if c == "fourier_year" else [c]
    return names + list(f.exogenous)


def tail_length(spec: DatasetSpec) -> int:
    """How many past targets the features of the next period need."""
    return max([*spec.features.lags, *spec.features.rolling], default=0)


def check_feature_spec(spec: DatasetSpec) -> None:
    """Refuse features that would leak the target of the row they describe.

    Raises:
        ValueError: A lag or rolling window is below one period, or no feature is defined.
    """
    bad = [k for k in spec.features.lags if k < 1] + [w for w in spec.features.rolling if w < 1]
    if bad:
        raise ValueError(f"lags and rolling windows must be >= 1 period (one step ahead): {bad}")
    if not feature_names(spec):
        raise ValueError(f"spec {spec.name!r} defines no features")


def _column(data: pa.Table | pd.DataFrame, name: str) -> np.ndarray | pd.Series:
    if isinstance(data, pa.Table):
        col = data.column(name)
        if pa.types.is_dictionary(col.type):
            return col.to_pandas()
        return col.to_numpy()
    return data[name]


def _as_time(values: np.ndarray | pd.Series) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind != "M":
        arr = pd.to_datetime(values).to_numpy()
    return arr.astype(_TIME_UNIT)


def _as_float(values: np.ndarray | pd.Series) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64, copy=False)
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )


def _values_at(values: np.ndarray | pd.Series, rows: np.ndarray) -> list:
    if isinstance(values, pd.Series):
        return values.iloc[rows].tolist()
    return np.asarray(values)[rows].tolist()


def _is_constant(values: np.ndarray | pd.Series) -> bool:
    arr = np.asarray(values) if not isinstance(values, pd.Series) else values.to_numpy()
    return len(arr) == 0 or bool((arr == arr[0]).all())


def _group_codes(key_values: list[np.ndarray | pd.Series]) -> np.ndarray:
    combined = np.zeros(len(key_values[0]), dtype=np.int64)
    if all(_is_constant(v) for v in key_values):
        return combined  # one series, e.g. a Spark group: no hashing needed
    for values in key_values:
        codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=False)
        combined = combined * len(uniques) + codes
    return combined


def _run_starts(codes: np.ndarray) -> np.ndarray:
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.flatnonzero(codes[1:] != codes[:-1]) + 1])


def _is_grouped_and_ordered(codes: np.ndarray, time: np.ndarray, starts: np.ndarray) -> bool:
    if len(np.unique(codes[starts])) != len(starts):
        return False
    return bool(np.all((time[1:] > time[:-1]) | (codes[1:] != codes[:-1])))


def _wanted_series(spec: DatasetSpec, series: Iterable[str | Sequence] | None) -> set[str] | None:
    if series is None:
        return None
    return {s if isinstance(s, str) else spec.series_id(tuple(s)) for s in series}


def to_series_frame(
    data: pa.Table | pd.DataFrame,
    spec: DatasetSpec,
    series: Iterable[str | Sequence] | None = None,
) -> SeriesFrame:
    """Group rows by series and order them by time: the input of every feature function.

    Args:
        data: Rows of one or many series with the spec's columns.
        spec: The dataset spec.
        series: Train only these series, given as series ids (``store=S0001/product=P001``) or
            key tuples; ``None`` keeps all.

    Returns:
        The grouped, time-ordered columns. Already grouped input (the usual case) is not copied
        by a sort; anything else is sorted by series and time.
    """
    arrow_keys = isinstance(data, pa.Table) and all(
        data[k].null_count == 0 for k in spec.series_keys
    )
    if arrow_keys:  # codes from Arrow (dictionary indices, chunk by chunk): no Python strings
        key_values = None
        codes = series_codes(data, spec.series_keys)
    else:
        key_values = [_column(data, k) for k in spec.series_keys]
        codes = _group_codes(key_values)
    time = _as_time(_column(data, spec.time))
    starts = _run_starts(codes)
    order = None
    if not _is_grouped_and_ordered(codes, time, starts):
        order = np.lexsort((time, codes))
        codes, time = codes[order], time[order]
        starts = _run_starts(codes)
    first_rows = starts if order is None else order[starts]
    if key_values is None:
        firsts = take_rows(data.select(spec.series_keys), first_rows)
        columns = [decode_dictionaries(firsts)[k].to_pylist() for k in spec.series_keys]
    else:
        columns = [_values_at(v, first_rows) for v in key_values]
    keys = list(zip(*columns, strict=True))
    offsets = np.append(starts, len(codes)).astype(np.int64)

    def take(values: np.ndarray) -> np.ndarray:
        return values if order is None else values[order]

    frame = SeriesFrame(
        keys=keys,
        offsets=offsets,
        time=time,
        target=take(_as_float(_column(data, spec.target))),
        exog={c: take(_as_float(_column(data, c))) for c in spec.features.exogenous},
    )
    return select_series(frame, spec, series)


def select_series(
    frame: SeriesFrame, spec: DatasetSpec, series: Iterable[str | Sequence] | None
) -> SeriesFrame:
    """Only the chosen series (ids or key tuples) of a frame; all of them for ``None``."""
    wanted = _wanted_series(spec, series)
    if wanted is None:
        return frame
    return take_series(frame, np.array([spec.series_id(k) in wanted for k in frame.keys], bool))


def take_series(frame: SeriesFrame, keep: np.ndarray) -> SeriesFrame:
    """The series of a frame where ``keep`` (one bool per series) is True."""
    lengths = np.diff(frame.offsets)
    rows = np.repeat(keep, lengths)
    return SeriesFrame(
        keys=[k for k, ok in zip(frame.keys, keep, strict=True) if ok],
        offsets=np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64),
        time=frame.time[rows],
        target=frame.target[rows],
        exog={c: v[rows] for c, v in frame.exog.items()},
    )


def last_rows(frame: SeriesFrame, n: int) -> SeriesFrame:
    """Only the last ``n`` rows of each series (all of a shorter one).

    The features of a series' last ``n - tail_length(spec)`` rows are the same in the trimmed
    frame as in the whole one, so evaluation needs no more history than this.
    """
    lengths = np.diff(frame.offsets)
    keep_n = np.minimum(lengths, n)
    starts = frame.offsets[1:] - keep_n
    rows = np.repeat(starts - np.concatenate([[0], np.cumsum(keep_n)[:-1]]), keep_n)
    rows += np.arange(int(keep_n.sum()))
    return SeriesFrame(
        keys=frame.keys,
        offsets=np.concatenate([[0], np.cumsum(keep_n)]).astype(np.int64),
        time=frame.time[rows],
        target=frame.target[rows],
        exog={c: v[rows] for c, v in frame.exog.items()},
    )


def positions(offsets: np.ndarray) -> np.ndarray:
    """Each row's index within its series (0 for the first period)."""
    lengths = np.diff(offsets)
    return np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lengths)


def _shifted(y: np.ndarray, k: int) -> np.ndarray:
    out = np.empty_like(y)
    out[:k] = np.nan
    out[k:] = y[: len(y) - k] if k < len(y) else y[:0]
    return out


def _lag_and_rolling(y: np.ndarray, pos: np.ndarray, spec: DatasetSpec) -> list[np.ndarray]:
    lags = {k: np.where(pos >= k, _shifted(y, k), np.nan) for k in spec.features.lags}
    rolling: dict[int, np.ndarray] = {}
    windows = sorted(set(spec.features.rolling))
    acc = np.zeros_like(y)
    for j in range(1, (windows[-1] if windows else 0) + 1):
        # Sums grow one shift at a time, in the same order for any batch: identical values.
        acc += _shifted(y, j)
        if j in windows:
            rolling[j] = np.where(pos >= j, acc / j, np.nan)
    return [lags[k] for k in spec.features.lags] + [rolling[w] for w in spec.features.rolling]


def _day_fields(days: np.ndarray, name: str) -> np.ndarray:
    """An integer calendar field of days counted from 1970-01-01 (a Thursday)."""
    d = days.astype("datetime64[D]")
    match name:
        case "fourier_year":
            return (d - d.astype("datetime64[Y]")).astype(np.int64) + 1
        case "month":
            return d.astype("datetime64[M]").astype(np.int64) % 12 + 1
        case "day_of_week":
            return (days + 3) % 7
    week = pd.DatetimeIndex(d.astype("datetime64[s]")).isocalendar().week
    return np.asarray(week, dtype=np.int64)


def _fourier_table() -> tuple[np.ndarray, np.ndarray]:
    # One fixed table for every batch, so sin/cos values never depend on the batch's size.
    angle = 2 * np.pi * np.arange(366, dtype=np.float64) / _DAYS_PER_YEAR
    return np.sin(angle), np.cos(angle)


_FOURIER_SIN, _FOURIER_COS = _fourier_table()


def _calendar(time: np.ndarray, spec: DatasetSpec) -> list[np.ndarray]:
    if len(time) == 0:
        return [np.empty(0) for _ in range(_n_calendar(spec))]
    days = time.astype("datetime64[D]").astype(np.int64)
    lo, hi = int(days.min()), int(days.max())
    if hi - lo > min(len(days), _MAX_CALENDAR_TABLE_DAYS):
        return _calendar_of_days(days, spec)
    # Calendar features depend on the date alone: computed once per day of the range (a few
    # thousand for millions of rows) and gathered, the same values as computed row by row.
    at = days - lo
    return [column[at] for column in _calendar_of_days(np.arange(lo, hi + 1), spec)]


def _calendar_of_days(days: np.ndarray, spec: DatasetSpec) -> list[np.ndarray]:
    out = []
    for name in spec.features.calendar:
        field = _day_fields(days, name)
        if name == "fourier_year":
            out += [_FOURIER_SIN[field - 1], _FOURIER_COS[field - 1]]
        else:
            out.append(field.astype(np.float64))
    return out


def _n_calendar(spec: DatasetSpec) -> int:
    return sum(2 if c == "fourier_year" else 1 for c in spec.features.calendar)


def feature_columns(frame: SeriesFrame, spec: DatasetSpec) -> list[np.ndarray]:
    """The model input as one float64 array per feature (in ``feature_names`` order).

    Rows whose lags or rolling windows reach before the series start hold NaN there.
    """
    check_feature_spec(spec)
    pos = positions(frame.offsets)
    columns = _lag_and_rolling(frame.target, pos, spec)
    columns += _calendar(frame.time, spec)
    columns += [np.asarray(frame.exog[c], dtype=np.float64) for c in spec.features.exogenous]
    return columns


def feature_columns_at(frame: SeriesFrame, spec: DatasetSpec, rows: np.ndarray) -> list[np.ndarray]:
    """``[c[rows] for c in feature_columns(frame, spec)]``, computed at ``rows`` only: the
    same values bit for bit (a rolling sum adds its lags in the same order), at a cost that
    follows the rows asked for, not the frame (one step of a recursive forecast)."""
    check_feature_spec(spec)
    rows = np.asarray(rows, dtype=np.int64)
    pos = rows - frame.offsets[np.searchsorted(frame.offsets, rows, side="right") - 1]
    y = frame.target

    def back(k: int) -> np.ndarray:  # y[r - k] (NaN before the frame's first row)
        at = rows - k
        return np.where(at >= 0, y[np.maximum(at, 0)], np.nan)

    columns = [np.where(pos >= k, back(k), np.nan) for k in spec.features.lags]
    rolling: dict[int, np.ndarray] = {}
    windows = sorted(set(spec.features.rolling))
    acc = np.zeros(len(rows))
    for j in range(1, (windows[-1] if windows else 0) + 1):
        acc += back(j)
        if j in windows:
            rolling[j] = np.where(pos >= j, acc / j, np.nan)
    columns += [rolling[w] for w in spec.features.rolling]
    columns += _calendar(frame.time[rows], spec)
    columns += [np.asarray(frame.exog[c], dtype=np.float64)[rows] for c in spec.features.exogenous]
    return columns


def feature_matrix(frame: SeriesFrame, spec: DatasetSpec) -> np.ndarray:
    """The model input for every row: shape ``(n_rows, len(feature_names(spec)))``, float64.

    Rows whose lags or rolling windows reach before the series start hold NaN there.
    """
    columns = feature_columns(frame, spec)
    out = np.empty((frame.n_rows, len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        out[:, j] = col
    return out
