"""A drop's profile (exact aggregates of its good rows) and the reference bands it is held to.

The profile is one row: ``rows``, ``<time>__min``/``__max`` and, per drift column, ``__mean``,
``__stdev``, ``__q10``/``__q50``/``__q90``; a band per ``<col>__<stat>`` says where that
statistic lay, period by period, over the last ``reference_periods`` periods of history.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.masks import filled, to_numpy
from mlops_assets.ml.validation.suite import as_datetime, drift_columns

QUANTILES = {"q10": 0.1, "q50": 0.5, "q90": 0.9}
DRIFT_STATS = ("mean", "stdev", *QUANTILES)


@dataclass
class Band:
    """Where a drop statistic may lie: center ± k·sigma, measured on the reference window."""

    center: float
    sigma: float
    periods: int

    def bounds(self, sigmas: float) -> tuple[float, float]:
        return self.center - sigmas * self.sigma, self.center + sigmas * self.sigma


_BLOCK = 1 << 20  # values squared at a time for the standard deviation


def _float_copy(col: pa.ChunkedArray) -> np.ndarray:
    """The column as one float64 array of this process's own (nulls as NaN): the only copy
    ``_stats`` makes of it (a 40M-row drop: 320 MB, where each array made afresh costs a
    virtual machine ~1 s to touch)."""
    x = np.empty(len(col))
    at = 0
    for chunk in col.chunks:
        x[at : at + len(chunk)] = chunk.to_numpy(zero_copy_only=False)  # a view, or NaN-filled
        at += len(chunk)
    return x


def _stats(col: pa.ChunkedArray) -> dict[str, float]:
    x = _float_copy(col)
    if len(x) and np.isnan(x.min()):  # min propagates NaN: no mask of every row to find one
        x = x[~np.isnan(x)]
    if len(x) == 0:
        return {s: math.nan for s in DRIFT_STATS}
    mean = float(x.mean())
    stdev = math.nan
    if len(x) > 1:  # the squared deviations a block at a time, not as one more array
        buf = np.empty(min(len(x), _BLOCK))
        total = 0.0
        for a in range(0, len(x), _BLOCK):
            part = buf[: min(_BLOCK, len(x) - a)]
            np.subtract(x[a : a + _BLOCK], mean, out=part)
            total += float(np.dot(part, part))
        stdev = math.sqrt(total / (len(x) - 1))
    # numpy's quantile selects (O(n)) where a sort would be O(n log n), here in place in the
    # copy (after the mean, which it would reorder); linear interpolation is pandas' and GX's
    # default, so the numbers match theirs.
    qs = np.quantile(x, list(QUANTILES.values()), overwrite_input=True)
    out = {"mean": mean, "stdev": stdev}
    out.update(zip(QUANTILES, map(float, qs), strict=True))
    return out


def profile(table: pa.Table, spec: DatasetSpec, workers: int | None = None) -> dict[str, Any]:
    """One drop's exact aggregates: rows, time min/max and the drift statistics."""
    cols = drift_columns(spec)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        stats = dict(zip(cols, pool.map(lambda c: _stats(table[c]), cols), strict=True))
    out: dict[str, Any] = {"rows": table.num_rows}
    if table.num_rows:
        mm = pc.min_max(table[spec.time]).as_py()
        out[f"{spec.time}__min"] = as_datetime(mm["min"])
        out[f"{spec.time}__max"] = as_datetime(mm["max"])
    for c, s in stats.items():
        for k, v in s.items():
            out[f"{c}__{k}"] = v
    return out


def _time_ints(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.int64() if pa.types.is_timestamp(col.type) else pa.int32())
    return to_numpy(col).astype(np.int64, copy=False)


def _period_stats(times: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, stdev and exact quantiles (linear interpolation, as the drop profile) per period."""
    ok = np.isfinite(values)
    t, v = times[ok], values[ok]
    order = np.lexsort((v, t))
    t, v = t[order], v[order]
    if len(t) == 0:
        return {}
    _, start, count = np.unique(t, return_index=True, return_counts=True)
    mean = np.add.reduceat(v, start) / count
    sq = np.add.reduceat((v - np.repeat(mean, count)) ** 2, start)
    with np.errstate(invalid="ignore", divide="ignore"):
        stdev = np.where(count > 1, np.sqrt(sq / np.maximum(count - 1, 1)), np.nan)
    out = {"mean": mean, "stdev": stdev}
    for name, q in QUANTILES.items():
        pos = start + q * (count - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, start + count - 1)
        out[name] = v[lo] + (v[hi] - v[lo]) * (pos - lo)
    return out


def last_periods(table: pa.Table, time: str, periods: int) -> pa.Table:
    """The rows of ``table`` in its last ``periods`` distinct times."""
    times = pc.unique(table[time]).sort()
    cutoff = times[max(0, len(times) - periods)]
    return table.filter(pc.greater_equal(table[time], cutoff))


def reference_bands(reference: pa.Table, spec: DatasetSpec) -> dict[str, Band]:
    """Per-period statistics over the last ``reference_periods`` periods of ``reference``, as
    a band per ``<col>__<stat>`` (mean and spread of that statistic across periods)."""
    d = spec.validation.drift
    if reference.num_rows == 0 or len(pc.unique(reference[spec.time])) < 2:
        return {}
    window = last_periods(reference, spec.time, d.reference_periods)
    t = _time_ints(window[spec.time])
    bands: dict[str, Band] = {}
    for c in drift_columns(spec):
        series = _period_stats(t, to_numpy(pc.cast(window[c], pa.float64())).astype(float))
        for stat, values in series.items():
            values = values[np.isfinite(values)]
            if len(values) < 2:
                continue
            center = float(values.mean())
            sigma = max(float(values.std(ddof=1)), d.min_sigma_fraction * abs(center), 1e-9)
            bands[f"{c}__{stat}"] = Band(center, sigma, len(values))
    return bands


def distinct(table: pa.Table, keys: list[str]) -> pa.Table:
    """Distinct combinations of ``keys`` in ``table``.

    Drops usually hold each series in one run of rows, so the rows where the key changes are
    (nearly) the answer and a hash aggregation over them is cheap; otherwise hash all rows.
    """
    keyed = table.select(keys)
    n = keyed.num_rows
    if n > 1:
        lo, hi = keyed.slice(0, n - 1), keyed.slice(1)
        change = pc.not_equal(lo[keys[0]], hi[keys[0]])
        for k in keys[1:]:
            change = pc.or_(change, pc.not_equal(lo[k], hi[k]))
        starts = np.flatnonzero(filled(change)) + 1
        if len(starts) < n // 4:
            keyed = keyed.take(pa.array(np.concatenate([[0], starts])))
    return keyed.group_by(keys).aggregate([])
