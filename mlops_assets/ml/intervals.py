"""Conformal prediction intervals per series and horizon step, from backtest residuals.

Split conformal: the half-width at level ``a`` is the ``ceil((n + 1) a)``-th smallest of the
``n`` absolute residuals of a (series, step), which covers a new error with probability at
least ``a`` when errors are exchangeable. A (series, step) with too few residuals for that
(or fewer than ``min_residuals``) takes the pooled quantile of its step instead: residuals of
every series divided by their series' scale (e.g. the MASE scale), the quantile taken, and
multiplied back by this series' scale, so a large series gets a wide interval and a small one
a narrow one. Intervals are nested: a higher level is never narrower than a lower one. Residuals are ``[K, n_series, horizon]`` arrays as ``backtest`` produces them.

The scale of a series for the pooled quantile can lean on its own backtest error
(``own_weight`` w): ``scale^(1-w) x mean|residual|^w``. The MASE scale alone (w = 0) measures
how hard the series is for a naive forecast, not for its model, so series the model forecasts
far better than naive got intervals too wide; the own error alone (w = 1) rests on a handful
of residuals. A geometric blend shrinks the noisy own error toward the stable panel scale.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

INTERVAL_PREFIX = "interval_"  # the manifest's columns of half-widths per level


@functools.cache  # called per row and level when scoring: the name once per level
def interval_field(level: float) -> str:
    """The manifest column of the half-widths at ``level`` percent (``interval_80``)."""
    return INTERVAL_PREFIX + f"{level:g}".replace(".", "_")


def coverage_field(level: float) -> str:
    """The manifest column of the out-of-fold coverage at ``level`` (``coverage_80``)."""
    return f"coverage_{level:g}".replace(".", "_")


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


def blended_scale(residuals: np.ndarray, scale: np.ndarray, own_weight: float) -> np.ndarray:
    """``scale^(1-w) x own MAE^w`` per series (``residuals`` ``[K, n_series, horizon]``); the
    plain ``scale`` where the series has no finite positive own error or ``w`` is 0."""
    s = np.asarray(scale, dtype=float)
    if own_weight <= 0:
        return s
    absolute = np.abs(residuals)
    finite = np.isfinite(absolute)
    count = finite.sum(axis=(0, 2))
    with np.errstate(all="ignore"):
        own = np.where(finite, absolute, 0.0).sum(axis=(0, 2)) / count  # NaN where count is 0
        ok = np.isfinite(own) & (own > 0) & np.isfinite(s) & (s > 0)
        return np.where(ok, s ** (1 - own_weight) * np.where(ok, own, 1) ** own_weight, s)


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
    for level in levels:
        a = level / 100
        own, n = _kth_smallest(absolute, 0, a)
        fewest = max(min_count(a), min_residuals or 0)
        shared, _ = _kth_smallest(pooled_pairs, 1, a)  # per step, over every series' folds
        use_pool = (n < fewest) | np.isnan(own)
        width[level] = np.where(use_pool, shared[None, :] * s[:, None], own)
        pooled[level] = use_pool
    # A series' own quantile at one level and the pooled one at a higher level can cross:
    # nest them, so an interval never narrows as its level rises.
    wider = None
    for level in sorted(levels):
        if wider is not None:
            width[level] = np.fmax(width[level], wider)
        wider = width[level]
    return Quantiles(width, pooled)


def interval_bounds(
    point: np.ndarray, width: np.ndarray, lower_bound: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` of ``point ± width``; ``lower`` clipped at ``lower_bound`` if given."""
    lower, upper = point - width, point + width
    if lower_bound is not None:
        np.maximum(lower, lower_bound, out=lower)
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


def series_intervals(
    residuals: np.ndarray,
    scale: np.ndarray,
    levels: list[float],
    min_residuals: int | None = None,
    own_weight: float = 0.0,
) -> tuple[dict[float, np.ndarray], dict[float, np.ndarray]]:
    """Half-widths per series and step, and each series' out-of-fold coverage, for a whole run.

    Calibrated over every series given at once, so the pooled fallback sees the run's series,
    not one batch of them (engines train in chunks, Spark one series per group).

    Args:
        residuals: ``[n_series, K, horizon]`` backtest residuals (NaN: no pair).
        scale: ``[n_series]`` each series' scale for the pooled quantile.
        levels: Coverage levels in percent.
        min_residuals: As ``conformal_quantiles``.
        own_weight: Weight of each series' own backtest error in its pooled scale
            (``blended_scale``); the out-of-fold check blends without the held-out fold.

    Returns:
        ``({level: [n_series, horizon]}, {level: [n_series]})``: the half-widths from every
        fold, and the share of each series' residuals within the half-width calibrated
        without their fold (NaN: nothing to check). A residual within the half-width is an
        actual inside the interval; clipping the lower bound at the target's minimum never
        excludes an actual, which respects that minimum.
    """
    by_fold = np.asarray(residuals, dtype=float).transpose(1, 0, 2)  # [K, n, h]
    q = conformal_quantiles(
        by_fold, levels, blended_scale(by_fold, scale, own_weight), min_residuals
    )
    cover: dict[float, np.ndarray] = {}
    k_folds, n = by_fold.shape[0], by_fold.shape[1]
    for level in levels:
        inside, checked = np.zeros(n), np.zeros(n)
        for k in range(k_folds if k_folds > 1 else 0):
            others = np.delete(by_fold, k, axis=0)
            s = blended_scale(others, scale, own_weight)
            width = conformal_quantiles(others, [level], s, min_residuals).width[level]
            ok = np.isfinite(by_fold[k]) & np.isfinite(width)
            checked += ok.sum(axis=1)
            inside += (ok & (np.abs(by_fold[k]) <= width)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cover[level] = np.where(checked > 0, inside / checked, np.nan)
    return q.width, cover
