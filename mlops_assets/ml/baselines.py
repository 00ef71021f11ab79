"""Forecasts that need no fitting, for many series at once, and the fallback chain.

Every method takes a regular ``SeriesFrame`` (one row per period: see ``calendar.regularize``)
and forecasts the ``horizon`` periods after each series' last row, as a ``[n_series, horizon]``
array (NaN where a method cannot forecast a series). Missing targets (NaN) are periods nobody
observed: methods skip them. Work is vectorised over series; Croston and TSB walk time once,
a column of every series at a time.

Croston-SBA and TSB follow statsforecast's definitions (``CrostonSBA``, ``TSB``): simple
exponential smoothing seeded with the first value, SBA's bias factor ``1 - alpha / 2``.
The intermittency classes are Syntetos-Boylan's (ADI 1.32, CV² 0.49).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mlops_assets.ml.features import SeriesFrame
from mlops_assets.ml.fitting import season_length
from mlops_assets.ml.spec import DatasetSpec

METHODS = ("seasonal_naive", "naive", "mean", "croston_sba", "tsb")
ADI_CUTOFF, CV2_CUTOFF = 1.32, 0.49
CROSTON_ALPHA = 0.1

Forecaster = Callable[[SeriesFrame, int], np.ndarray]


def right_aligned(frame: SeriesFrame, values: np.ndarray, width: int) -> np.ndarray:
    """The last ``width`` values of each series as ``[n_series, width]``, NaN-padded left."""
    idx = frame.offsets[1:, None] - width + np.arange(width)[None, :]
    ok = idx >= frame.offsets[:-1, None]
    out = np.full(idx.shape, np.nan)
    out[ok] = values[idx[ok]]
    return out


def _series_of_rows(frame: SeriesFrame) -> np.ndarray:
    return np.repeat(np.arange(frame.n_series), np.diff(frame.offsets))


def observed_counts(frame: SeriesFrame) -> np.ndarray:
    """Finite targets per series."""
    ok = np.isfinite(frame.target)
    return np.bincount(_series_of_rows(frame)[ok], minlength=frame.n_series)


def _flat(values: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(values[:, None], horizon, axis=1)


def naive(frame: SeriesFrame, horizon: int) -> np.ndarray:
    """The last observed value of each series, for every step."""
    n = frame.n_rows
    finite_at = np.where(np.isfinite(frame.target), np.arange(n), -1)
    newest = np.maximum.accumulate(finite_at) if n else finite_at
    last = np.full(frame.n_series, np.nan)
    nonempty = np.diff(frame.offsets) > 0
    at = newest[frame.offsets[1:][nonempty] - 1]
    ok = at >= frame.offsets[:-1][nonempty]
    last[np.flatnonzero(nonempty)[ok]] = frame.target[at[ok]]
    return _flat(last, horizon)


def seasonal_naive(frame: SeriesFrame, horizon: int, season: int) -> np.ndarray:
    """Step ``j`` is the value one season before it (``j`` counted from 1)."""
    last_season = right_aligned(frame, frame.target, season)
    return last_season[:, np.arange(horizon) % season]


def window_mean(frame: SeriesFrame, horizon: int, window: int) -> np.ndarray:
    """The mean of each series' last ``window`` observed values, for every step."""
    finite = np.isfinite(frame.target)
    series = _series_of_rows(frame)
    seen = np.cumsum(finite)
    total = np.zeros(frame.n_series, np.int64)
    ends = frame.offsets[1:] - 1
    nonempty = np.diff(frame.offsets) > 0
    before = seen - finite
    start_seen = np.zeros(frame.n_series, np.int64)
    start_seen[nonempty] = before[frame.offsets[:-1][nonempty]]
    total[nonempty] = seen[ends[nonempty]] - start_seen[nonempty]
    from_end = total[series] - (before - start_seen[series])  # 1 for the newest observed
    use = finite & (from_end <= window)
    sums = np.bincount(series[use], weights=frame.target[use], minlength=frame.n_series)
    counts = np.bincount(series[use], minlength=frame.n_series)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _flat(sums / counts, horizon)


def _history(frame: SeriesFrame) -> np.ndarray:
    return right_aligned(frame, frame.target, int(np.diff(frame.offsets).max(initial=0)))


def _ses_step(level: np.ndarray, x: np.ndarray, update: np.ndarray, alpha: float) -> np.ndarray:
    """One simple-exponential-smoothing update where ``update``, seeded with the first ``x``."""
    seeded = np.where(np.isnan(level), x, level)
    return np.where(update, alpha * x + (1 - alpha) * seeded, level)


def croston_sba(frame: SeriesFrame, horizon: int, alpha: float = CROSTON_ALPHA) -> np.ndarray:
    """Croston with the Syntetos-Boylan bias correction: ``(1 - alpha / 2) * size / interval``.

    A series with no demand (only zeros) forecasts 0; one with no observation, NaN.
    """
    size = np.full(frame.n_series, np.nan)
    interval = np.full(frame.n_series, np.nan)
    since = np.zeros(frame.n_series)
    for y in _history(frame).T:
        observed = np.isfinite(y)
        since += observed
        demand = observed & (y > 0)
        size = _ses_step(size, y, demand, alpha)
        interval = _ses_step(interval, since, demand, alpha)
        since[demand] = 0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (1 - alpha / 2) * size / interval
    out[np.isnan(size) & (observed_counts(frame) > 0)] = 0.0
    return _flat(out, horizon)


def tsb(
    frame: SeriesFrame, horizon: int, alpha_d: float = CROSTON_ALPHA, alpha_p: float = 0.1
) -> np.ndarray:
    """Teunter-Syntetos-Babai: smoothed demand probability (``alpha_p``, every observed period)
    times smoothed demand size (``alpha_d``, demand periods only)."""
    size = np.full(frame.n_series, np.nan)
    probability = np.full(frame.n_series, np.nan)
    for y in _history(frame).T:
        observed = np.isfinite(y)
        probability = _ses_step(probability, (y != 0).astype(float), observed, alpha_p)
        size = _ses_step(size, y, observed & (y > 0), alpha_d)
    out = probability * size
    out[np.isnan(size) & (observed_counts(frame) > 0)] = 0.0
    return _flat(out, horizon)


@dataclass(frozen=True)
class Intermittency:
    """Syntetos-Boylan demand classes per series.

    Attributes:
        adi: Average inter-demand interval: observed periods / periods with demand.
        cv2: Squared coefficient of variation of the non-zero demand sizes.
        label: ``smooth``, ``erratic``, ``intermittent``, ``lumpy``, or ``no_demand``.
    """

    adi: np.ndarray
    cv2: np.ndarray
    label: np.ndarray


def intermittency(frame: SeriesFrame) -> Intermittency:
    """ADI and CV² of every series, and its class."""
    series = _series_of_rows(frame)
    y = frame.target
    demand = np.isfinite(y) & (y > 0)
    n_demand = np.bincount(series[demand], minlength=frame.n_series).astype(float)
    s1 = np.bincount(series[demand], weights=y[demand], minlength=frame.n_series)
    s2 = np.bincount(series[demand], weights=y[demand] ** 2, minlength=frame.n_series)
    with np.errstate(invalid="ignore", divide="ignore"):
        adi = observed_counts(frame) / n_demand
        mean = s1 / n_demand
        cv2 = np.maximum(s2 / n_demand - mean**2, 0.0) / mean**2
    long_gaps, variable = adi >= ADI_CUTOFF, cv2 >= CV2_CUTOFF
    label = np.where(
        long_gaps,
        np.where(variable, "lumpy", "intermittent"),
        np.where(variable, "erratic", "smooth"),
    ).astype(object)
    label[n_demand == 0] = "no_demand"
    return Intermittency(adi=adi, cv2=cv2, label=label)


def method_forecaster(method: str, season: int | None, window: int) -> Forecaster:
    """A ``(frame, horizon) -> [n_series, horizon]`` function for one method of ``METHODS``.

    Raises:
        ValueError: An unknown method, or ``seasonal_naive`` without a season.
    """
    if method == "seasonal_naive":
        if season is None:
            raise ValueError("seasonal_naive needs a season length")
        return lambda frame, h: seasonal_naive(frame, h, season)
    simple = {"naive": naive, "croston_sba": croston_sba, "tsb": tsb}
    if method in simple:
        return simple[method]
    if method == "mean":
        return lambda frame, h: window_mean(frame, h, window)
    raise ValueError(f"unknown baseline method {method!r}; known: {list(METHODS)}")


@dataclass(frozen=True)
class ChainForecast:
    """The fallback chain's forecast per series.

    Attributes:
        predictions: ``[n_series, horizon]``; NaN rows for series with no forecast.
        method: The method chosen per series (None: no method could forecast it).
        reason: Why the methods before it were passed over ("" when the first one served).
    """

    predictions: np.ndarray
    method: np.ndarray
    reason: np.ndarray


def _why_not(method: str, frame: SeriesFrame, season: int | None) -> np.ndarray:
    """Per series, why ``method`` cannot forecast it ("" when it can, as far as history goes)."""
    counts = observed_counts(frame)
    out = np.where(counts == 0, "no observation", "").astype(object)
    if method == "seasonal_naive":
        lengths = np.diff(frame.offsets)
        if season is None:
            out[:] = "no season length for this frequency"
        else:
            out[(lengths < season) & (counts > 0)] = f"fewer than {season} periods of history"
    return out


def fallback_chain(
    frame: SeriesFrame, horizon: int, methods: Sequence[str], season: int | None, window: int
) -> ChainForecast:
    """Per series, the forecast of the first method in ``methods`` that can make it.

    A method passes a series over when its history is too short (``seasonal_naive``: under a
    season) or its forecast has a missing step (a value one season back was not observed).
    """
    n = frame.n_series
    predictions = np.full((n, horizon), np.nan)
    chosen = np.full(n, None, dtype=object)
    reason = np.full(n, "", dtype=object)
    open_ = np.ones(n, dtype=bool)
    for method in methods:
        why = _why_not(method, frame, None if method != "seasonal_naive" else season)
        if method == "seasonal_naive" and season is None:
            forecast = np.full((n, horizon), np.nan)
        else:
            forecast = method_forecaster(method, season, window)(frame, horizon)
        gaps = (why == "") & ~np.isfinite(forecast).all(axis=1)
        why[gaps] = "a value it needs was not observed"
        take = open_ & (why == "")
        predictions[take], chosen[take] = forecast[take], method
        passed = open_ & ~take & (why != "no observation")
        sep = np.where(reason[passed] == "", "", "; ").astype(object)
        reason[passed] = reason[passed] + sep + f"{method}: " + why[passed]
        open_ &= ~take
    reason[open_] = "no observation"
    reason[open_ & (observed_counts(frame) > 0)] = "no method in the chain could forecast it"
    return ChainForecast(predictions, chosen, reason)


def spec_fallback(spec: DatasetSpec) -> Forecaster:
    """The spec's fallback chain as a forecaster (predictions only)."""
    season = season_length(spec.frequency)

    def forecast(frame: SeriesFrame, horizon: int) -> np.ndarray:
        return fallback_chain(frame, horizon, spec.fallback, season, spec.mean_window).predictions

    return forecast
