"""Real-time scoring of request records: ``scoring.score``'s answers at real-time cost.

``scoring.score`` handles every case (several periods per series, history in the request,
recursive forecasts, per-row errors) through pandas, which costs ~10 ms per call even for one
row. A real-time request is nearly always simpler: one record per series, for the period right
after the series' stored history. Those records are scored here with numpy only, through the
same feature code (``features.feature_matrix`` over the stored tail plus the record) and the
same model, so the predictions are the ones ``scoring.score`` gives (to the last bits: a scaler +
linear model's prediction is summed as a cached fixed part plus the request's exogenous terms,
in plain floats). Every other record (and every record of a series that has any record the
fast path cannot take) goes to ``scoring.score`` unchanged; one request may mix both. Rows are
independent across series, so the split never changes an answer.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mlops_assets.ml import scoring
from mlops_assets.ml.combination import is_combination
from mlops_assets.ml.features import SeriesFrame, feature_matrix, tail_length
from mlops_assets.ml.intervals import interval_field
from mlops_assets.ml.param_scoring import is_param_model
from mlops_assets.ml.predict import predict_pipeline, scaled_linear
from mlops_assets.ml.score_request import (
    RESULT_COLUMNS,
    ModelLookup,
    SeriesModel,
    bound_fields,
    period_after,
    require_columns,
    required_columns,
    result_columns,
)
from mlops_assets.ml.spec import DatasetSpec


@dataclass
class Scored:
    """Per-record results in request order, plus how many took the fast path."""

    rows: list[dict]
    fast: int
    slow: int


def _next_period(history_end: str, frequency: str) -> str:
    """The period after ``history_end`` as ``YYYY-MM-DD``: the one time the fast path takes
    (asked once per model, when its plan is made; ``period_after`` is cached itself)."""
    return period_after(history_end, frequency).date().isoformat()


def _day(value) -> str | None:
    """A time sent as a string, compared as sent: only the exact ``YYYY-MM-DD`` of a series'
    next period goes fast (any other spelling of that day goes to ``scoring.score``, which
    answers the same). Nothing is parsed on the way: a numpy call costs tens of microseconds
    on the cold CPU of a server idling between requests, a string comparison well under one."""
    return value if isinstance(value, str) else None


_MISS = object()


class PerModel:
    """Values worked out once per loaded model and reused by every request for it.

    Keyed weakly on the model object, so an entry goes when the reader evicts the model. An
    entry holds for as long as it is asked with the same ``deps`` (objects of the served
    model, e.g. its stored tail: compared by identity, and held by the entry so that their ids
    stay theirs) and equal ``args`` (plain values). A model object that cannot be weakly
    referenced is not cached (its value is worked out on each request; ``WeakKeyDictionary``
    raises on it, in a lookup as in a store)."""

    def __init__(self) -> None:
        self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __len__(self) -> int:
        return len(self._memo)

    def lookup(self, model, deps: tuple, args: tuple):
        """The cached value, or ``_MISS``."""
        try:
            hit = self._memo.get(model)
        except TypeError:  # cannot be weakly referenced: never stored
            return _MISS
        if hit is None or hit[1] != args:
            return _MISS
        for held, given in zip(hit[0], deps, strict=True):
            if held is not given:
                return _MISS
        return hit[2]

    def store(self, model, deps: tuple, args: tuple, value) -> None:
        try:
            self._memo[model] = (deps, args, value)
        except TypeError:  # cannot be weakly referenced: not cached
            pass


def _number(value) -> float | None:
    """A JSON number as a finite float, else None (``True`` is not a number here)."""
    if value.__class__ is float:  # the common case, checked first
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def check_columns(records: list[dict], spec: DatasetSpec) -> None:
    """``scoring.score``'s request-level check: a required column no record has."""
    required = required_columns(spec)
    seen: set[str] = set()
    for r in records:
        seen.update(r)
        if seen.issuperset(required):
            return
    require_columns(seen, spec)


def score_records(records: list[dict], spec: DatasetSpec, model_for: ModelLookup) -> Scored:
    """Score request records (dicts); the same answers as ``scoring.score(records, ...)``.

    Raises:
        RequestError: As ``scoring.score``: a column every row needs is missing everywhere.
    """
    n = len(records)
    if n == 0:
        return Scored([], 0, 0)
    check_columns(records, spec)
    keys, time_col, exog_cols = spec.series_keys, spec.time, spec.features.exogenous

    # Pass 1: which series could go fast (one record each, plain values).
    by_series: dict[str, int] = {}
    slow_series: set[str] = set()
    parsed: list[tuple[str, str | None, list[float | None]] | None] = [None] * n
    for i, r in enumerate(records):
        try:
            vals = [r[c] for c in keys]
        except KeyError:
            continue  # slow path decides (missing value)
        if not all(isinstance(v, str) for v in vals):
            continue
        sid = spec.series_id(vals)
        parsed[i] = (sid, _day(r.get(time_col)), [_number(r.get(c)) for c in exog_cols])
        if sid in by_series:
            slow_series.add(sid)
        by_series[sid] = i

    # Pass 2: those whose model has a plan, for the very period the record names.
    idx: list[int] = []
    models: list[SeriesModel] = []
    for sid, i in by_series.items():
        entry = parsed[i]
        if entry is None or sid in slow_series or entry[1] is None or None in entry[2]:
            continue
        m = model_for(sid)
        if isinstance(m, SeriesModel):
            idx.append(i)
            models.append(m)
    fast = [
        (i, m, plan)
        for i, m, plan in zip(idx, models, _plans(models, spec), strict=True)
        if plan is not None and parsed[i][1] == plan.day  # type: ignore[index]
    ]

    out: list[dict | None] = [None] * n
    if fast:
        _score_fast(parsed, fast, spec, out)
    slow_idx = [i for i in range(n) if out[i] is None]
    if slow_idx:
        table = request_table([records[i] for i in slow_idx], spec)
        result = scoring.score(table, spec, model_for)
        for j, row in zip(slow_idx, result.to_dict("records"), strict=True):
            out[j] = _clean(row, spec)
    return Scored(out, n - len(slow_idx), len(slow_idx))  # type: ignore[arg-type]


def _as_float(v) -> float | None:
    if v is None:
        return None
    try:
        return float(v)  # numbers, bools and numeric strings, as pandas.to_numeric did
    except (TypeError, ValueError):
        return None


def request_table(records: list[dict], spec: DatasetSpec) -> pa.Table:
    """Request records as a typed Arrow table: keys and time as strings, the target and
    exogenous features as float64 (null where missing or not a number). JSON lets a column mix
    types (``9.5`` in one record, ``"cheap"`` in the next), which Arrow's own inference refuses;
    typed here, a bad value becomes a per-row error in ``scoring.score``, never a failed request.
    Every required column is present (null where a record lacks it: the request-level check was
    done on the whole request); columns the spec does not use are dropped."""
    cols: dict[str, pa.Array] = {}
    for c in [*spec.series_keys, spec.time]:
        cols[c] = pa.array(
            [None if r.get(c) is None else str(r.get(c)) for r in records], pa.string()
        )
    for c in spec.features.exogenous:
        cols[c] = pa.array([_as_float(r.get(c)) for r in records], pa.float64())
    if any(spec.target in r for r in records):
        cols[spec.target] = pa.array([_as_float(r.get(spec.target)) for r in records], pa.float64())
    return pa.table(cols)


def _clean(row: dict, spec: DatasetSpec) -> dict:
    """A ``scoring.score`` row as JSON values: numbers (the prediction and its bounds) as
    floats, the others as strings, None where absent."""
    for f in result_columns(spec):
        v = row.get(f)
        if f not in RESULT_COLUMNS or f == "prediction":
            row[f] = _finite(v)
        elif v is not None and not isinstance(v, str):
            row[f] = None if isinstance(v, float) and math.isnan(v) else str(v)
    return {f: row.get(f) for f in result_columns(spec)}


def _base_rows(models: list[SeriesModel], days: list, spec: DatasetSpec) -> np.ndarray:
    """Each model's feature row for the period after its history, exogenous features NaN:
    ``feature_matrix`` over its stored tail plus that one period (a batch of series)."""
    k = tail_length(spec)
    length = k + 1
    total = len(models) * length
    target = np.full(total, np.nan)
    time = np.empty(total, dtype="datetime64[us]")
    for j, (model, day) in enumerate(zip(models, days, strict=True)):
        a = j * length
        target[a : a + k] = model.tail[len(model.tail) - k :]  # what the features need
        # Only the last row's features are used; its calendar needs its own date only.
        time[a : a + length] = np.datetime64(day, "D")
    frame = SeriesFrame(
        keys=[(j,) for j in range(len(models))],
        offsets=np.arange(0, total + 1, length, dtype=np.int64),
        time=time,
        target=target,
        exog={c: np.full(total, np.nan) for c in spec.features.exogenous},
    )
    return feature_matrix(frame, spec)[k::length]


Affine = tuple[float, tuple[tuple[float, float, float], ...]]


@dataclass(frozen=True, slots=True)
class Plan:
    """What the fast path needs of one served model, worked out once per model (``_PLANS``).

    The fast path only takes the period right after the stored tail, so the lags, rolling
    means and calendar of that period's feature row never change; only the exogenous features
    (the last columns, ``feature_names`` order) come from the request.

    Attributes:
        day: The one time it takes: the period after the tail, ``YYYY-MM-DD``.
        base: That period's feature row with the exogenous features NaN (read-only).
        affine: A scaler + linear model's prediction as ``const`` plus a term per exogenous
            feature (``_affine``); None for other models.
        bounds: Per interval level, the bound columns and the step-1 half-width as a float.
    """

    day: str
    base: np.ndarray
    affine: Affine | None
    bounds: tuple[tuple[str, str, float], ...]


# Per served model: its Plan, or None where the fast path cannot take it (a ParamModel or a
# Combination: not one Pipeline on features; no history end; a tail too short, or not finite
# where the next period's features read it). Made from the model's tail, widths and history end
# under one spec, and remade if any of them changes.
_PLANS = PerModel()


def _made_from(m: SeriesModel, spec: DatasetSpec) -> tuple[tuple, tuple]:
    """What a model's plan is made from: (objects, plain values), for ``_PLANS``."""
    return (m.tail, m.widths, spec), (m.history_end,)


def _plans(models: list[SeriesModel], spec: DatasetSpec) -> list[Plan | None]:
    """Each model's Plan (or None), those not cached yet made together (``_base_rows``)."""
    out: list = [None] * len(models)
    missing: list[int] = []
    for j, m in enumerate(models):
        out[j] = _PLANS.lookup(m.model, *_made_from(m, spec))
        if out[j] is _MISS:
            missing.append(j)
    if not missing:
        return out
    k = tail_length(spec)
    takes, days = [], []
    for j in missing:
        m = models[j]
        out[j] = None
        if (
            m.history_end is None
            or len(m.tail) < k
            or is_param_model(m)
            or is_combination(m.model)
            or (k and not np.isfinite(m.tail[len(m.tail) - k :]).all())
        ):
            _PLANS.store(m.model, *_made_from(m, spec), None)
        else:
            takes.append(j)
            days.append(_next_period(m.history_end, spec.frequency))
    if takes:
        n_exog = len(spec.features.exogenous)
        for j, day, row in zip(
            takes, days, _base_rows([models[j] for j in takes], days, spec), strict=True
        ):
            m = models[j]
            row.flags.writeable = False
            plan = Plan(day, row, _affine(m.model, row, n_exog), _step1_widths(m, spec))
            _PLANS.store(m.model, *_made_from(m, spec), plan)
            out[j] = plan
    return out


def _affine(model, base: np.ndarray, n_exog: int) -> Affine | None:
    """A scaler + linear model's prediction on ``base`` with its last ``n_exog`` features
    replaced, as ``const + sum((x - mean) / scale * coef)`` over those features: ``const``
    holds the fixed features' terms and the intercept. A request then costs a few float
    operations instead of a dozen numpy calls (each slow on the cold CPU of a server idling
    between requests). None for other models, or a base row with a non-finite value."""
    parts = scaled_linear(model)
    k = len(base) - n_exog  # the exogenous features are NaN in the base row
    if parts is None or not np.isfinite(base[:k]).all():
        return None
    scaler, linear = parts
    mean, scale, coef = scaler.mean_, scaler.scale_, linear.coef_
    if mean is None or scale is None or np.ndim(coef) != 1 or len(coef) != len(base):
        return None
    const = float(((base[:k] - mean[:k]) / scale[:k]) @ coef[:k] + float(linear.intercept_))
    terms = tuple(zip(mean[k:].tolist(), scale[k:].tolist(), coef[k:].tolist(), strict=True))
    values = [const, *(x for t in terms for x in t)]
    if not all(map(math.isfinite, values)) or any(t[1] == 0 for t in terms):
        return None
    return const, terms


def _step1_widths(model: SeriesModel, spec: DatasetSpec) -> tuple[tuple[str, str, float], ...]:
    """Per interval level: its bound columns and the model's step-1 half-width (NaN: none)."""
    levels = []
    for level in spec.intervals.levels:
        widths = model.widths.get(interval_field(level))
        width = float(widths[0]) if widths is not None and len(widths) else math.nan
        levels.append((*bound_fields(level), width))
    return tuple(levels)


def _score_fast(parsed, fast: list[tuple[int, SeriesModel, Plan]], spec: DatasetSpec, out) -> None:
    """Answer rows for the records the fast path takes, in ``result_columns`` order: the
    prediction clipped to the target's bounds (``clip_to_bounds``), and its step-1 interval
    (``score_intervals.bounds_of`` on one value: the lower bound clipped at the target's
    minimum; a NaN width or prediction gives null bounds), all in plain floats."""
    n_exog = len(spec.features.exogenous)
    col = spec.columns[spec.target]
    lo, hi = col.min, col.max
    for i, m, plan in fast:
        sid, day, ex = parsed[i]
        if plan.affine is not None:  # the exogenous values are finite numbers (pass 1)
            point, terms = plan.affine
            for x, (mean, scale, coef) in zip(ex, terms, strict=True):
                point += (x - mean) / scale * coef
        else:
            row = plan.base.reshape(1, -1).copy()
            if n_exog:
                row[0, -n_exog:] = ex
            if not np.isfinite(row).all():  # e.g. a lag longer than the stored tail
                continue  # left to scoring.score
            point = float(predict_pipeline(m.model, row)[0])
        if lo is not None and point < lo:  # NaN stays NaN, as np.clip
            point = float(lo)
        if hi is not None and point > hi:
            point = float(hi)
        answer = {"series_id": sid, "time": day, "prediction": point}
        for lower_name, upper_name, width in plan.bounds:
            lower, upper = point - width, point + width
            if lo is not None and lower < lo:  # False for NaN: NaN stays, as np.maximum
                lower = float(lo)
            answer[lower_name], answer[upper_name] = _finite(lower), _finite(upper)
        answer["model_version"] = m.version
        answer["error"] = answer["message"] = None
        out[i] = answer


def _finite(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
