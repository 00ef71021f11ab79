"""Guards around scoring: a JSON content type per request; per record, numeric inputs in range,
single values where columns take one, predictions finite.

A value far outside what a model was trained on (``price: 1e308``) does not fail the
arithmetic; it gives an absurd or non-finite prediction that JSON can only send as ``null``.
``InputBounds`` refuses such records before scoring (``out_of_range``: outside the spec's
``min``/``max``, or beyond ``max_abs_value`` where the column declares no bound, or not finite:
a numeric string such as ``"inf"``, since the body's strict JSON holds no such number);
``shape_problem`` refuses a list or object where a column takes one value, or a missing series
key (``bad_record``); ``flag_non_finite`` turns any prediction that is still not a finite
number, or beyond ``max_abs_value``, into ``non_finite_prediction``. No Dagster imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

from mlops_assets.ml.score_request import RESULT_COLUMNS
from mlops_assets.ml.spec import DatasetSpec

OUT_OF_RANGE = "out_of_range"
NON_FINITE_PREDICTION = "non_finite_prediction"
BAD_RECORD = "bad_record"


def _numeric(value) -> float | None:
    """The value as a number where scoring would read it as one (numbers, numeric strings)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float's range
            return math.inf
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def json_content_type(value: str | None) -> bool:
    """Whether a request's ``Content-Type`` is JSON in UTF-8 (``application/json``, with no
    charset or ``utf-8``). A request without one is read as JSON, as before."""
    if not value:
        return True
    mime, _, params = value.partition(";")
    if mime.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        key, _, v = param.partition("=")
        if key.strip().lower() == "charset" and v.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def shape_problem(
    record: dict, columns, keys: Sequence[str], keys_sent: Callable[[], Collection[str]]
) -> str | None:
    """Why ``record`` cannot be scored as a record, or None: a list or object where one of
    ``columns`` takes one value (it would be stringified into a series id, or read as a missing
    number), or a series key missing or null that some record of the request carries
    (``keys_sent()``, asked only when a key is missing). A key no record carries is left to
    scoring: a 422 for the whole request.
    """
    for name in columns:
        v = record.get(name)
        if isinstance(v, (list, dict)):  # a tuple: cheaper to check than a union
            kind = "a list" if isinstance(v, list) else "an object"
            return f"{name!r} is {kind}; send a single value"
    missing = [k for k in keys if record.get(k) is None]
    if missing:
        sent = keys_sent()
        missing = [k for k in missing if k in sent]
        if missing:
            return f"series key(s) {missing} missing or null"
    return None


class InputBounds:
    """The numeric request columns of a spec (exogenous features, the target) and their range."""

    def __init__(self, spec: DatasetSpec, max_abs_value: float):
        self.bounds: tuple[tuple[str, float, float], ...] = ()
        for name in [*spec.features.exogenous, spec.target]:
            col = spec.columns.get(name)
            lo = col.min if col is not None and col.min is not None else -max_abs_value
            hi = col.max if col is not None and col.max is not None else max_abs_value
            self.bounds += ((name, float(lo), float(hi)),)

    def problem(self, record: dict) -> str | None:
        """Why ``record`` is out of range, or None. Values that are not numbers are left to
        scoring (a per-record ``missing_feature``)."""
        for name, lo, hi in self.bounds:
            v = record.get(name)
            if v.__class__ is not float:  # a JSON number with a fraction needs no conversion
                v = _numeric(v)
                if v is None:
                    continue
            if lo <= v <= hi and math.isfinite(v):
                continue
            if not math.isfinite(v):
                return f"{name!r} is {v}, not a finite number"
            return f"{name!r} is {v:g}, outside [{lo:g}, {hi:g}]"
        return None


def error_row(
    code: str, message: str, series_id=None, time=None, columns: Sequence[str] = RESULT_COLUMNS
) -> dict:
    """An answer row for a record refused before scoring: ``columns`` (those of a scored row:
    ``score_request.result_columns``), None but for the series, time and error."""
    row: dict = dict.fromkeys(columns)
    row.update(series_id=series_id, time=time, error=code, message=message)
    return row


def flag_non_finite(rows: list[dict], max_abs: float = math.inf) -> None:
    """Rows scored without an error whose prediction is missing, not finite, or beyond
    ``max_abs`` (finite, but as absurd: ``1e300`` units sold) get ``non_finite_prediction``
    (in place)."""
    for row in rows:
        if row["error"] is not None:
            continue
        p = row["prediction"]
        if p is None or not math.isfinite(p) or abs(p) > max_abs:
            for f in row:
                if f.startswith("prediction"):  # the prediction and its interval bounds
                    row[f] = None
            row["error"] = NON_FINITE_PREDICTION
            row["message"] = (
                f"the model of {row['series_id']} gave {p} for this record; check its inputs "
                "against the ranges it was trained on"
            )
