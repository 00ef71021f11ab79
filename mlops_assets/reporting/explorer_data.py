"""What the per-series explorer draws, from a release set's manifest and its decisions.

Every series gets one positional record (``FIELDS``): its recent actuals, the forecast of each
backtest origin (``actual - residual`` on the same rows the backtest scored), the interval
half-widths per step, MAE per step for the model and both baselines, the chosen family (or a
combination's weights) and the gate's decision. Values of a series are stored as integers at
three significant digits of its largest value (``exp``: value = q * 10**exp; errors, which
are smaller, with their own exponent), strings that
repeat (families, decisions, reasons) once in ``strings``: 10,000 series fit in a few MB.

The backtest layout is ``ml.backtest``'s: ``origins`` folds ``step`` periods apart, the newest
ending at the series' last row (``history_tail``'s last value, dated ``history_end``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.combination import FAMILY as COMBINATION
from mlops_assets.ml.intervals import coverage_field, interval_field
from mlops_assets.ml.spec import DatasetSpec

FIELDS = (
    "id",  # series id
    "status",  # string index: trained, fallback, skipped, failed
    "note",  # string index: the status reason (fallback, skipped), or -1
    "model",  # string index: the family, or the combination's weights as text
    "trained_in",  # string index: the training run of the set's entry
    "decision",  # string index, or -1 where the series was not decided
    "reason",  # string index: the decision's reason, or -1
    "gate",  # [challenger, champion, baseline metric, baseline name, champion version, promoted]
    "axis",  # index into ``axes``: the dates of ``actual``
    "exp",  # decimal exponents: [of actual and forecast, of intervals and mae_by_step]
    "actual",  # the last actuals, quantized
    "forecast",  # origins x horizon backtest forecasts (oldest origin first), quantized
    "intervals",  # per level: half-width per step, quantized (errors' exponent)
    "coverage",  # per level: out-of-fold coverage share
    "mae_by_step",  # [model, naive, seasonal naive] per step, quantized (errors' exponent)
    "scores",  # SCORES, in order
)
SCORES = (
    "smape",
    "naive_smape",
    "seasonal_naive_smape",
    "mae",
    "naive_mae",
    "seasonal_naive_mae",
    "mase",
)
BY_STEP = ("mae_by_step", "naive_mae_by_step", "seasonal_naive_mae_by_step")
# A page holds at most this many series (a few MB); past it, the ones to look at first.
MAX_SERIES = 5_000
MIN_CONTEXT = 12  # periods shown before the backtest window, at least


class _Strings:
    """Strings stored once; records hold their index."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, value: Any) -> int:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            return -1
        text = str(value)
        if text not in self._index:
            self._index[text] = len(self.values)
            self.values.append(text)
        return self._index[text]


def _sig(x: Any, digits: int = 3) -> float | None:
    """``x`` at ``digits`` significant digits; None where it is missing or not finite."""
    if x is None:
        return None
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def _exponent(values: Sequence[np.ndarray]) -> int:
    """The exponent that leaves three significant digits on the largest finite value."""
    joined = np.abs(np.concatenate([np.ravel(v) for v in values])) if values else np.empty(0)
    finite = joined[np.isfinite(joined)]
    top = float(finite.max()) if len(finite) else 0.0
    return math.floor(math.log10(top)) - 2 if top > 0 else 0


def _quantize(values: np.ndarray, exp: int) -> list[int | None]:
    scaled = values / 10.0**exp
    return [round(v) if math.isfinite(v) else None for v in scaled.tolist()]


def model_label(family: str | None, weights: str | None) -> str | None:
    """The family, or a combination's members with their weights (``ridge 60% + ets 40%``)."""
    if family == COMBINATION and weights:
        parts = sorted(json.loads(weights).items(), key=lambda kv: -float(kv[1]))
        return "combination: " + " + ".join(f"{k} {float(w):.0%}" for k, w in parts)
    return family


def _column(table: pa.Table, name: str) -> list:
    """A column as one value per row; a list of floats as a NumPy view per row (None where
    null), not Python lists of Python floats."""
    if name not in table.column_names:
        return [None] * table.num_rows
    col = table[name].combine_chunks()
    if not (pa.types.is_list(col.type) and pa.types.is_floating(col.type.value_type)):
        return col.to_pylist()
    offsets = col.offsets.to_numpy()
    values = col.flatten().to_numpy(zero_copy_only=False).astype(float)  # null items: NaN
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    a, b = offsets[:-1] - offsets[0], offsets[1:] - offsets[0]
    return [values[i:j] if ok else None for i, j, ok in zip(a, b, valid, strict=True)]


def _floats(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return np.asarray([np.nan if v is None else v for v in (value or [])], dtype=float)


class _Axes:
    """Date labels per (last date, length): series that end together share one."""

    def __init__(self, frequency: str) -> None:
        self.frequency = frequency
        self.values: list[list[str]] = []
        self._index: dict[tuple[str, int], int] = {}

    def __call__(self, end: str | None, n: int) -> int:
        if not end or n == 0:
            return -1
        key = (end, n)
        if key not in self._index:
            try:
                dates = pd.date_range(end=pd.Timestamp(end), periods=n, freq=self.frequency)
                labels = [d.strftime("%Y-%m-%d") for d in dates]
            except ValueError:
                labels = [f"t-{n - 1 - i}" for i in range(n)]
            self._index[key] = len(self.values)
            self.values.append(labels)
        return self._index[key]


def _window(spec: DatasetSpec) -> int:
    return spec.horizon + (spec.backtest.origins - 1) * spec.backtest.step


def _series_values(row: dict, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """(shown actuals, backtest forecasts origins x horizon) of one manifest row."""
    tail = _floats(row.get("history_tail"))
    k, h, step = spec.backtest.origins, spec.horizon, spec.backtest.step
    window = _window(spec)
    shown = tail[-min(len(tail), window + max(window, MIN_CONTEXT)) :]
    forecast = np.full((k, h), np.nan)
    residuals = _floats(row.get("backtest_residuals"))
    if len(residuals) == k * h and len(tail) >= window:
        residuals = residuals.reshape(k, h)
        for origin in range(k):
            start = len(tail) - h - (k - 1 - origin) * step
            forecast[origin] = tail[start : start + h] - residuals[origin]
    return shown, forecast


def _record(
    row: dict, decision: dict, spec: DatasetSpec, strings: _Strings, axes: _Axes
) -> list[Any]:
    actual, forecast = _series_values(row, spec)
    levels = spec.intervals.levels
    widths = [_floats(row.get(interval_field(level))) for level in levels]
    by_step = [_floats(row.get(name)) for name in BY_STEP]
    exp = _exponent([actual, forecast.ravel()])
    errors = _exponent([*widths, *by_step])
    gate = [
        _sig(decision.get("challenger_metric")),
        _sig(decision.get("champion_metric")),
        _sig(decision.get("baseline_metric")),
        strings(decision.get("baseline")),
        decision.get("champion_version"),
        decision.get("promoted"),
    ]
    return [
        row["series_id"],
        strings(row.get("status")),
        strings(row.get("reason")),
        strings(model_label(row.get("family"), row.get("weights"))),
        strings(row.get("trained_in")),
        strings(decision.get("decision")),
        strings(decision.get("decision_reason")),
        gate,
        axes(row.get("history_end"), len(actual)),
        [exp, errors],
        _quantize(actual, exp),
        _quantize(forecast.ravel(), exp),
        [_quantize(w, errors) for w in widths],
        [_sig(row.get(coverage_field(level)), 2) for level in levels],
        [_quantize(v, errors) for v in by_step],
        [_sig(row.get(name)) for name in SCORES],
    ]


def explorer_payload(
    manifest: pa.Table,
    decisions: pa.Table | None,
    spec: DatasetSpec,
    *,
    title: dict[str, Any] | None = None,
    limit: int | None = MAX_SERIES,
) -> dict[str, Any]:
    """The explorer's data: one record per series of ``manifest`` (``FIELDS``), sorted by id;
    of at most ``limit`` series (``worth_a_look``), the page's title saying how many.

    Args:
        manifest: The release set's manifest (``history_tail``, ``backtest_residuals``, ...).
        decisions: The gate's ``decisions.parquet`` (None: no decision shown).
        spec: The dataset's spec (horizon, backtest layout, interval levels, frequency).
        title: What the page header says of the set (dataset, as-of date, version...).
    """
    strings, axes = _Strings(), _Axes(spec.frequency)
    title = dict(title or {})
    total = manifest.num_rows
    if limit is not None and total > limit:
        manifest = manifest.take(worth_a_look(manifest, decisions, limit))
        title["series"] = (
            f"{limit:,} of {total:,} shown: the gate's refusals, failures and fallbacks "
            "first, then the worst sMAPE against the naive baseline"
        )
        if decisions is not None:
            decisions = decisions.filter(
                pc.is_in(decisions["series_id"], value_set=manifest["series_id"])
            )
    by_series: dict[str, dict] = {}
    if decisions is not None:
        by_series = {d["series_id"]: d for d in decisions.to_pylist()}
    columns = {name: _column(manifest, name) for name in _wanted(spec)}
    rows = [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
    records = [
        _record(row, by_series.get(row["series_id"], {}), spec, strings, axes)
        for row in sorted(rows, key=lambda r: r["series_id"])
    ]
    return {
        "title": title,
        "dataset": spec.name,
        "target": spec.target,
        "metric": "smape",
        "horizon": spec.horizon,
        "origins": spec.backtest.origins,
        "step": spec.backtest.step,
        "levels": list(spec.intervals.levels),
        "fields": list(FIELDS),
        "scores": list(SCORES),
        "strings": strings.values,
        "axes": axes.values,
        "series": records,
    }


def worth_a_look(manifest: pa.Table, decisions: pa.Table | None, limit: int) -> np.ndarray:
    """Row numbers of the ``limit`` series to show first: those the gate did not promote, the
    failed, skipped and fallback ones, then the worst sMAPE relative to the naive baseline's."""
    n = manifest.num_rows
    flagged = np.asarray(
        pc.fill_null(
            pc.is_in(manifest["status"], pa.array(["failed", "skipped", "fallback"])),
            True,
        ).to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    if decisions is not None and "promoted" in decisions.column_names:
        refused = decisions.filter(pc.invert(pc.fill_null(decisions["promoted"], False)))
        flagged |= np.asarray(
            pc.is_in(manifest["series_id"], value_set=refused["series_id"]).to_numpy(
                zero_copy_only=False
            ),
            dtype=bool,
        )
    smape = np.asarray(manifest["smape"].to_numpy(zero_copy_only=False), dtype=float)
    naive = np.asarray(manifest["naive_smape"].to_numpy(zero_copy_only=False), dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.nan_to_num(smape / naive, nan=np.inf, posinf=np.inf)
    order = np.lexsort((np.arange(n), -ratio, ~flagged))
    return np.sort(order[:limit])


def _wanted(spec: DatasetSpec) -> list[str]:
    return [
        "series_id",
        "status",
        "reason",
        "family",
        "weights",
        "trained_in",
        "history_end",
        "history_tail",
        "backtest_residuals",
        *BY_STEP,
        *SCORES,
        *(interval_field(level) for level in spec.intervals.levels),
        *(coverage_field(level) for level in spec.intervals.levels),
    ]
