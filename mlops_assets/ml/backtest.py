"""Rolling-origin backtests at the horizon, for many series at once.

A fold of a series is (train on its rows up to an origin, forecast the ``horizon`` periods
after it). Each series has ``origins`` folds, their origins ``step`` periods apart, the newest
leaving exactly ``horizon`` periods to forecast. Folds are numbered oldest first, and fold ``k``
of every series is forecast by one call of the forecaster on a frame holding each series'
rows up to its own origin: the forecaster sees many series at once, never one at a time.

Frames must be regular (one row per period: ``calendar.regularize``) so that rows are periods.
Metrics pool every (fold, series, step) pair with a finite actual and prediction; MASE scales
each error by the in-sample seasonal-naive MAE of its series' training part (lag 1 where the
season is unknown or longer than the training part).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlops_assets.ml.features import SeriesFrame

BACKTEST_METRICS = ("mae", "rmse", "smape", "mase", "bias")
Forecaster = Callable[[SeriesFrame, int], np.ndarray]


def head_rows(frame: SeriesFrame, counts: np.ndarray) -> SeriesFrame:
    """The first ``counts[i]`` rows of each series ``i`` (clipped to ``[0, length]``)."""
    lengths = np.diff(frame.offsets)
    keep = np.clip(counts, 0, lengths).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    rows = np.repeat(frame.offsets[:-1] - offsets[:-1], keep) + np.arange(int(offsets[-1]))
    return SeriesFrame(
        keys=frame.keys,
        offsets=offsets,
        time=frame.time[rows],
        target=frame.target[rows],
        exog={c: v[rows] for c, v in frame.exog.items()},
    )


def _window_sums(values: np.ndarray, frame: SeriesFrame, cuts: np.ndarray) -> np.ndarray:
    """Per fold and series, the sum of ``values`` over the series' first ``cuts`` rows."""
    prefix = np.concatenate([[0.0], np.cumsum(values)])
    start = frame.offsets[:-1][None, :]
    end = start + np.clip(cuts, 0, np.diff(frame.offsets)[None, :])
    return prefix[end] - prefix[start]


def _lag_abs_diff(frame: SeriesFrame, lag: int) -> np.ndarray:
    y = frame.target
    d = np.full(len(y), np.nan)
    if lag < len(y):
        d[lag:] = np.abs(y[lag:] - y[:-lag])
    within = np.arange(len(y)) - np.repeat(frame.offsets[:-1], np.diff(frame.offsets))
    d[within < lag] = np.nan
    return d


@dataclass(frozen=True)
class ScalePrefix:
    """The MASE scale's sums over each series' rows before ``since``, for a frame that holds
    only a recent window of each series (a daily incremental step, ``daily_refit``).

    Attributes:
        since: ``[n_series]`` (``datetime64[us]``): the frame's differences at rows dated
            before it are left out and these sums stand for them.
        sums: ``{lag: [n_series, 2]}`` the total and the count of the valid absolute
            ``lag``-differences at rows dated before ``since``, for lag 1 and the season.
    """

    since: np.ndarray
    sums: dict[int, np.ndarray]


def scale_lags(season: int | None) -> list[int]:
    """The lags the MASE scale is made of: 1, and the season where it is longer."""
    return [1] + ([season] if season and season > 1 else [])


def lag_sums(
    frame: SeriesFrame, lag: int, since: np.ndarray | None, until: np.ndarray
) -> np.ndarray:
    """``[n_series, 2]`` total and count of the valid absolute ``lag``-differences at rows
    dated in ``[since, until)`` (per series; ``since`` None: from the first row)."""
    d = _lag_abs_diff(frame, lag)
    owner = np.repeat(np.arange(frame.n_series), np.diff(frame.offsets))
    ok = np.isfinite(d) & (frame.time < until[owner])
    if since is not None:
        ok &= frame.time >= since[owner]
    total = np.bincount(owner[ok], weights=d[ok], minlength=frame.n_series)
    count = np.bincount(owner[ok], minlength=frame.n_series).astype(float)
    return np.column_stack([total, count])


def mase_scale(
    frame: SeriesFrame, cuts: np.ndarray, season: int | None, prefix: ScalePrefix | None = None
) -> np.ndarray:
    """In-sample MAE of the seasonal naive forecast on each fold's training rows: ``[K, n]``.

    Lag 1 where the training part has no seasonal pair; NaN where the scale is 0 or undefined.
    With ``prefix`` the frame's differences dated before ``prefix.since`` are replaced by the
    prefix's sums (the same scale as on the whole series).
    """
    out = np.full(cuts.shape, np.nan)
    for lag in scale_lags(season):
        d = _lag_abs_diff(frame, lag)
        if prefix is not None:
            owner = np.repeat(np.arange(frame.n_series), np.diff(frame.offsets))
            d[frame.time < prefix.since[owner]] = np.nan
        ok = np.isfinite(d)
        total = _window_sums(np.where(ok, d, 0.0), frame, cuts)
        count = _window_sums(ok.astype(float), frame, cuts)
        if prefix is not None:
            total = total + prefix.sums[lag][None, :, 0]
            count = count + prefix.sums[lag][None, :, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = total / count
        out = np.where(count > 0, scale, out)  # seasonal wins where it has pairs
    out[~(out > 0)] = np.nan
    return out


@dataclass(frozen=True)
class Folds:
    """The folds of every series and their actuals.

    Attributes:
        frame: The whole (regular) frame.
        horizon: Periods forecast per fold.
        cuts: ``[K, n_series]`` training rows per fold (its origin is row ``cut - 1``).
        valid: ``[K, n_series]`` whether the fold has at least one training row.
        actual: ``[K, n_series, horizon]`` actual values (NaN: not observed or no fold).
        scale: ``[K, n_series]`` MASE scale of each fold's training part.
    """

    frame: SeriesFrame
    horizon: int
    cuts: np.ndarray
    valid: np.ndarray
    actual: np.ndarray
    scale: np.ndarray
    # Fold k's frame, made once: every candidate and baseline forecasts from the same ones.
    _heads: dict[int, SeriesFrame] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def train_frame(self, k: int) -> SeriesFrame:
        """Every series' rows up to its origin in fold ``k`` (the same object on every call)."""
        if k not in self._heads:
            self._heads[k] = head_rows(self.frame, self.cuts[k])
        return self._heads[k]

    def future_rows(self, k: int) -> np.ndarray:
        """Frame row of each (series, step) forecast in fold ``k`` (-1 outside the frame)."""
        rows = self.frame.offsets[:-1, None] + self.cuts[k][:, None] + np.arange(self.horizon)
        inside = self.valid[k][:, None] & (rows < self.frame.offsets[1:, None])
        return np.where(inside, rows, -1)


def make_folds(
    frame: SeriesFrame,
    horizon: int,
    origins: int = 4,
    step: int = 1,
    season: int | None = None,
    prefix: ScalePrefix | None = None,
) -> Folds:
    """Folds of every series: origins ``step`` apart, the newest ``horizon`` before the end.
    ``prefix``: the frame is a recent window of each series (``mase_scale``)."""
    lengths = np.diff(frame.offsets)
    back = (origins - 1 - np.arange(origins))[:, None] * step  # oldest fold first
    cuts = lengths[None, :] - horizon - back
    valid = cuts >= 1
    rows = frame.offsets[:-1][None, :, None] + cuts[:, :, None] + np.arange(horizon)
    actual = np.where(valid[:, :, None], frame.target[np.clip(rows, 0, None)], np.nan)
    scale = mase_scale(frame, cuts, season, prefix)
    return Folds(frame, horizon, cuts, valid, actual, scale)


def run(folds: Folds, forecaster: Forecaster) -> np.ndarray:
    """Predictions ``[K, n_series, horizon]`` of one forecaster on every fold (one call each)."""
    out = np.full(folds.actual.shape, np.nan)
    for k in range(len(folds.cuts)):
        predicted = np.asarray(forecaster(folds.train_frame(k), folds.horizon), dtype=float)
        out[k] = np.where(folds.valid[k][:, None], predicted, np.nan)
    return out


def _grouped(
    actual: np.ndarray, predicted: np.ndarray, scale: np.ndarray, group: np.ndarray, n: int
) -> dict[str, np.ndarray]:
    a, p = actual.ravel(), predicted.ravel()
    s, g = np.broadcast_to(scale[..., None], actual.shape).ravel(), group.ravel()
    ok = np.isfinite(a) & np.isfinite(p)
    a, p, s, g = a[ok], p[ok], s[ok], g[ok]
    err = p - a
    absolute = np.abs(err)
    denom = np.abs(a) + np.abs(p)
    smape = np.divide(2 * absolute, denom, out=np.zeros_like(err), where=denom > 0)
    scaled = np.isfinite(s)

    def total(w: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        if where is None:
            return np.bincount(g, weights=w, minlength=n)
        return np.bincount(g[where], weights=w[where], minlength=n)

    count = np.bincount(g, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "mae": total(absolute) / count,
            "rmse": np.sqrt(total(err * err) / count),
            "smape": total(smape) / count * 100,
            "mase": total(absolute / np.where(scaled, s, 1.0), scaled)
            / np.bincount(g[scaled], minlength=n),
            "bias": total(err) / count,
            "count": count,
        }


def backtest_metrics(folds: Folds, predicted: np.ndarray) -> dict:
    """MAE, RMSE, sMAPE (percent), MASE and bias (forecast - actual), pooled over series.

    Returns:
        ``{"overall": {metric: float}, "per_step": {metric: [horizon floats]}}``.
    """
    shape = folds.actual.shape
    one = np.zeros(shape, np.int64)
    steps = np.broadcast_to(np.arange(shape[2]), shape)
    overall = _grouped(folds.actual, predicted, folds.scale, one, 1)
    per_step = _grouped(folds.actual, predicted, folds.scale, steps, shape[2])
    return {
        "overall": {m: float(v[0]) for m, v in overall.items()},
        "per_step": {m: v.tolist() for m, v in per_step.items()},
    }


def series_metrics(folds: Folds, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric per series over its folds and steps: arrays of ``n_series`` (NaN: no pair)."""
    shape = folds.actual.shape
    series = np.broadcast_to(np.arange(shape[1])[None, :, None], shape)
    return _grouped(folds.actual, predicted, folds.scale, series, shape[1])
