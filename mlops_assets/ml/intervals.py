"""Conformal prediction intervals per series and horizon step, from backtest residuals.

Split conformal: the half-width at level ``a`` is the ``ceil((n + 1) a)``-th smallest of the
``n`` absolute residuals of a (series, step), which covers a new error with probability at
least ``a`` when errors are exchangeable. A (series, step) with too few residuals for that
(or fewer than ``min_residuals``) takes the pooled quantile of its step instead: residuals of
every series divided by their series' scale (e.g. the MASE scale), the quantile taken, and
multiplied back by this series' scale, so a large series gets a wide interval and a small one
a narrow one. Intervals are nested: a level's half-width is at least the next lower level's. Residuals are ``[K, n_series, horizon]`` arrays as ``backtest`` produces them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def min_count(level: float) -> int:
    """The fewest residuals for a finite split-conformal quantile at ``level`` (a fraction)."""
    return int(np.ceil(level / (1 - level) - 1e-9))


def _conformal_rank(n: np.ndarray, level: float) -> np.ndarray:
    return np.ceil((n + 1) * level - 1e-9).astype(np.int64)


def _kth_smallest(values: np.ndarray, axis: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Conformal quantile along ``axis`` (NaN ignored) and the count of finite values."""
    ordered = np.sort(values, axis=axis)  # NaN last
    n = np.isfinite(ordered).sum(axis=axis)
    rank = _conformal_rank(n, level)
    ok = (rank <= n) & (n > 0)
    index = np.expand_dims(np.where(ok, rank - 1, 0), axis)
    q = np.take_along_axis(ordered, index, axis=axis).squeeze(axis)
    return np.where(ok, q, np.nan), n


@dataclass(frozen=True)
class Quantiles:
    """Half-widths per level: ``{level: [n_series, horizon]}``, and where each came from.

    Attributes:
        width: Half-width of the interval per (series, step); NaN when none could be made.
        pooled: Whether each (series, step) used the pooled quantile of its step.
    """

    width: dict[float, np.ndarray]
    pooled: dict[float, np.ndarray]


def conformal_quantiles(
    residuals: np.ndarray,
    levels: list[float],
    scale: np.ndarray | None = None,
    min_residuals: int | None = None,
) -> Quantiles:
    """Half-widths of the intervals at each level (percent) per series and step.

    Args:
        residuals: ``[K, n_series, horizon]`` actual - forecast (NaN: no residual).
        levels: Coverage levels in percent, e.g. ``[80, 95]``.
        scale: ``[n_series]`` scale of each series for the pooled fallback (None: 1).
        min_residuals: Fewer finite residuals than this: pooled (default: ``min_count``).
    """
    absolute = np.abs(residuals)
    n_series = absolute.shape[1]
    s = np.ones(n_series) if scale is None else np.asarray(scale, dtype=float)
    usable = np.isfinite(s) & (s > 0)
    scaled = np.where(
        usable[None, :, None], absolute / np.where(usable, s, 1)[None, :, None], np.nan
    )
    pooled_pairs = scaled.transpose(2, 0, 1).reshape(absolute.shape[2], -1)
    width, pooled = {}, {}
    narrower = np.full(absolute.shape[1:], np.nan)
    for level in sorted(levels):
        a = level / 100
        own, n = _kth_smallest(absolute, 0, a)
        fewest = max(min_count(a), min_residuals or 0)
        shared, _ = _kth_smallest(pooled_pairs, 1, a)  # per step, over every series' folds
        use_pool = (n < fewest) | np.isnan(own)
        w = np.where(use_pool, shared[None, :] * s[:, None], own)
        # Nested intervals: a lower level may use its own residuals where a higher one pools.
        w = np.where(np.isfinite(narrower) & np.isfinite(w), np.maximum(w, narrower), w)
        width[level], pooled[level], narrower = w, use_pool, w
    return Quantiles({lv: width[lv] for lv in levels}, {lv: pooled[lv] for lv in levels})


def interval_bounds(
    point: np.ndarray, width: np.ndarray, lower_bound: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` of ``point ± width``; ``lower`` clipped at ``lower_bound`` if given."""
    lower, upper = point - width, point + width
    if lower_bound is not None:
        lower = np.maximum(lower, lower_bound)
    return lower, upper


@dataclass(frozen=True)
class Coverage:
    """Share of actuals inside their interval: overall, per step, and pairs counted."""

    overall: float
    per_step: np.ndarray
    count: int


def coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> Coverage:
    """Empirical coverage of ``[lower, upper]`` over pairs with an actual and an interval.

    Arrays have the same shape with the horizon step last (``[..., horizon]``).
    """
    ok = np.isfinite(actual) & np.isfinite(lower) & np.isfinite(upper)
    inside = ok & (actual >= lower) & (actual <= upper)
    steps = actual.shape[-1]
    ok2, in2 = ok.reshape(-1, steps), inside.reshape(-1, steps)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_step = in2.sum(axis=0) / ok2.sum(axis=0)
        overall = float(in2.sum() / ok2.sum()) if ok2.any() else float("nan")
    return Coverage(overall=overall, per_step=per_step, count=int(ok2.sum()))
