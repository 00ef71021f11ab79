"""Scoring requests: the columns a request needs, its rows as typed columns, per-row errors, and
the result table. The request side that batch and real-time scoring (``scoring``,
``serving.fast``) share.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.intervals import INTERVAL_PREFIX, interval_field
from mlops_assets.ml.spec import DatasetSpec

RESULT_COLUMNS = ("series_id", "time", "prediction", "model_version", "error", "message")
UNKNOWN_SERIES = "unknown_series"
NO_MODEL = "no_model"
MISSING_FEATURE = "missing_feature"
GAP = "gap_after_history"
INSUFFICIENT_HISTORY = "insufficient_history"
DUPLICATE = "duplicate_row"
BAD_VALUE = "bad_value"
MODEL_INTEGRITY = "model_integrity"  # the series' model bytes do not match their sha256
OFF_CALENDAR = "off_calendar"


@lru_cache  # per row and level on the real-time path: the names once per level
def bound_fields(level: float) -> tuple[str, str]:
    """The result columns of the interval at ``level`` percent, named after ``prediction``:
    ``prediction_lower_80`` and ``prediction_upper_80``."""
    suffix = interval_field(level).removeprefix(INTERVAL_PREFIX)
    return f"prediction_lower_{suffix}", f"prediction_upper_{suffix}"


def result_columns(spec: DatasetSpec) -> tuple[str, ...]:
    """``RESULT_COLUMNS`` with the bounds of each of the spec's interval levels after
    ``prediction``."""
    bounds = [name for level in spec.intervals.levels for name in bound_fields(level)]
    return (*RESULT_COLUMNS[:3], *bounds, *RESULT_COLUMNS[3:])


def off_calendar_message(spec: DatasetSpec) -> str:
    """The message of a request row whose period is not on the spec's calendar."""
    return (
        f"{spec.time!r} is not on the {spec.frequency} calendar (rule time.off_calendar): send "
        "the period's anchor date, or set `calendar.off_calendar: snap` in the spec"
    )


class RequestError(ValueError):
    """The request as a whole is unusable (not one row of it can be scored)."""


@dataclass(frozen=True)
class SeriesModel:
    """What scoring needs of one series: its model and the targets that precede scoring.

    Attributes:
        model: A fitted scikit-learn Pipeline (predicts from features) or a
            ``param_models.ParamModel`` (forecasts from the history alone).
        version: The model set version that trained it.
        history_end: ISO date of the last period the tail covers.
        tail: The last targets before scoring starts (the manifest's ``history_tail``),
            oldest first.
        widths: Interval half-widths per horizon step (step 1 first), by manifest column
            (``intervals.interval_field(level)``: ``interval_80``); empty without intervals.
    """

    model: object
    version: str
    history_end: str | None
    tail: np.ndarray
    widths: dict[str, np.ndarray] = field(default_factory=dict)


ModelLookup = Callable[[str], "SeriesModel | str | None"]


def required_columns(spec: DatasetSpec) -> list[str]:
    """The columns every request row needs: series keys, time and exogenous features."""
    return [*spec.series_keys, spec.time, *spec.features.exogenous]


def require_columns(present: Collection[str], spec: DatasetSpec) -> None:
    """The request-level check: every required column is among ``present``.

    Raises:
        RequestError: A required column is missing.
    """
    missing = [c for c in required_columns(spec) if c not in present]
    if missing:
        raise RequestError(
            f"missing column(s) {missing}; each row needs {required_columns(spec)} "
            f"(and may carry {spec.target!r} where it is known)"
        )


def _column(values) -> pa.Array:
    """A request column as Arrow; values of mixed JSON types become strings, judged per row."""
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None or v != v else str(v) for v in values], pa.string())


def as_table(requests: pa.Table | pd.DataFrame | list[dict], spec: DatasetSpec) -> pa.Table:
    """The request as an Arrow table with string series keys.

    Raises:
        RequestError: A column every row needs is missing.
    """
    if isinstance(requests, pa.Table):
        table = requests
    else:
        df = pd.DataFrame.from_records(list(requests)) if isinstance(requests, list) else requests
        df = df.reset_index(drop=True)
        table = pa.table({str(c): _column(df[c].tolist()) for c in df.columns})
    require_columns(table.column_names, spec)
    for k in spec.series_keys:  # an int id and a string id of one series are one series
        kind = table[k].type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            table = table.set_column(table.column_names.index(k), k, pc.cast(table[k], pa.string()))
    return table


def column_numbers(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column as float64, NaN where missing or not a number."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(float, copy=False)
    values = col.to_numpy(zero_copy_only=False)
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(float)


def column_times(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column as datetime64[us], NaT where missing or not a date."""
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        return pc.cast(col, pa.timestamp("us")).to_numpy(zero_copy_only=False)
    values = pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed.to_numpy().astype("datetime64[us]")


@lru_cache(maxsize=4096)
def period_after(end: str, frequency: str) -> pd.Timestamp:
    """The period after ``end`` (an ISO date) at the series' frequency."""
    return pd.date_range(start=pd.Timestamp(end), periods=2, freq=frequency)[-1]


class RowErrors:
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


def _nan_as_null(values: np.ndarray) -> pa.Array:
    """Floats with NaN as null; with no NaN, the array as it is (no copy, no validity map)."""
    values = np.asarray(values, dtype=np.float64)
    nan = np.isnan(values)
    return pa.array(values, mask=nan) if nan.any() else pa.array(values)


def result_table(
    ids: np.ndarray,
    series_of: np.ndarray,
    time: np.ndarray | pa.ChunkedArray,
    predicted: np.ndarray,
    versions: list[str | None],
    errors: RowErrors,
    bounds: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """The output table, one row per request row (``RESULT_COLUMNS``, and the interval
    bounds after ``prediction``: ``result_columns``).

    Args:
        ids: Series id of each series number.
        series_of: Series number of each row.
        time: Each row's period: numpy ``datetime64`` or an Arrow ``date32`` column.
        predicted: Each row's prediction, NaN where none.
        versions: Model version of each series number (None where it has no model).
        errors: Each row's error.
        bounds: Interval bounds of each row by result column (NaN where none), in order.
    """
    prediction = _nan_as_null(predicted)  # not predicted: null
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
            **{name: _nan_as_null(v) for name, v in (bounds or {}).items()},
            "model_version": pa.DictionaryArray.from_arrays(
                version_idx, pa.array(distinct.tolist(), pa.string())
            ),
            "error": error,
            "message": message,
        }
    )
