"""Models that forecast a series from its own history, stored as parameters.

The ``baseline`` and ``statistical`` families of ``families`` need no feature matrix:

* baselines (``naive``, ``seasonal_naive``, ``mean``, ``croston_sba``, ``tsb``) are the
  vectorised functions of ``baselines``; "fitting" one records the settings it forecasts with
  (season, window, smoothing) and whether the series can be served at all;
* statistical families are statsforecast's AutoETS (``ets``), AutoTheta (``theta``) and
  AutoARIMA (``arima``), fitted per series. What is stored are the estimated parameters (ETS:
  components, season, smoothing parameters and initial states; Theta: model type and its three
  parameters; ARIMA: orders, coefficients, sigma²), never a pickled object. Forecasting
  re-filters those parameters through the history it is given, without re-estimating them
  (statsforecast's ``forward``), so actuals that arrived after training move the forecast.

A ``ParamModel`` holds only JSON scalars and float64/int64 arrays: ``persistence`` writes it in
its ``params`` format. Two ParamModels with equal fields forecast the same, whether fitted here
or loaded from bytes.

Missing targets (NaN: periods nobody observed) inside a series are filled by linear
interpolation for the statistical families (statsforecast's ETS and Theta take no gaps); leading
missing periods are dropped; trailing ones are forecast over, so a forecast always covers the
``horizon`` periods after the last row of the history. Baselines skip missing periods as their
functions do.

statsforecast (and numba, ~4 s) is imported on the first statistical fit or forecast only.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_assets.ml import baselines, families
from mlops_assets.ml.features import SeriesFrame, take_series
from mlops_assets.ml.fitting import season_length
from mlops_assets.ml.spec import DatasetSpec

Scalar = float | int | str | bool

# Fewest observed periods (from the first to the last observation) a statistical family is
# fitted on: statsforecast's own floors (ETS: more than its parameters + 4; Theta: more than 3)
# with room for a trend; ARIMA needs enough for its differencing tests.
MIN_OBSERVED = {"ets": 8, "theta": 4, "arima": 8}
# Longest season a family is seasonal with; longer ones (weekly data's 52) fit it without
# seasonality. ETS keeps one state per season period and, like R's forecast::ets, stops at 24;
# seasonal ARIMA's Kalman state grows with the season (on the beer panel 1.15 s per series at
# 52 against 0.13 s non-seasonal). Theta deseasonalises by classical decomposition at any length.
MAX_SEASON = {"ets": 24, "theta": None, "arima": 24}


@dataclass(frozen=True)
class ParamModel:
    """A fitted forecast-only model: everything it needs to forecast from a history.

    Attributes:
        family: A ``baseline`` or ``statistical`` family name of ``families``.
        params: JSON scalars (orders, smoothing parameters, names).
        arrays: float64 or int64 arrays (states, coefficients).
    """

    family: str
    params: dict[str, Scalar]
    arrays: dict[str, np.ndarray]

    def __eq__(self, other: object) -> bool:
        """Equal family and params, and arrays of equal names, dtypes and values (NaN too)."""
        if not isinstance(other, ParamModel):
            return NotImplemented
        return (
            self.family == other.family
            and self.params == other.params
            and self.arrays.keys() == other.arrays.keys()
            and all(
                self.arrays[k].dtype == other.arrays[k].dtype
                and np.array_equal(self.arrays[k], other.arrays[k], equal_nan=True)
                for k in self.arrays
            )
        )

    __hash__ = None  # type: ignore[assignment]  # holds dicts and arrays


def _kind(family: str) -> str:
    kind = families.family(family).kind
    if kind == "regression":
        raise ValueError(f"{family!r} is a regression family: fit it on features (ml.fitting)")
    return kind


# ---------------------------------------------------------------- baselines


def _baseline_params(family: str, spec: DatasetSpec) -> dict[str, Scalar] | None:
    """The settings a baseline forecasts with; None when the spec gives it none."""
    if family == "seasonal_naive":
        season = season_length(spec.frequency)
        return None if season is None else {"season": season}
    if family == "mean":
        return {"window": spec.mean_window}
    if family == "croston_sba":
        return {"alpha": baselines.CROSTON_ALPHA}
    if family == "tsb":
        return {"alpha_d": baselines.CROSTON_ALPHA, "alpha_p": 0.1}
    return {}


_BASELINE_FORECASTS: dict[str, Callable[..., np.ndarray]] = {
    "naive": baselines.naive,
    "seasonal_naive": lambda f, h, season: baselines.seasonal_naive(f, h, int(season)),
    "mean": lambda f, h, window: baselines.window_mean(f, h, int(window)),
    "croston_sba": lambda f, h, alpha: baselines.croston_sba(f, h, float(alpha)),
    "tsb": lambda f, h, alpha_d, alpha_p: baselines.tsb(f, h, float(alpha_d), float(alpha_p)),
}


def _fit_baselines(frame: SeriesFrame, family: str, spec: DatasetSpec) -> list[ParamModel | None]:
    params = _baseline_params(family, spec)
    if params is None:
        return [None] * frame.n_series
    servable = baselines.observed_counts(frame) > 0
    if family == "seasonal_naive":  # under a season, some step has no value a season back
        servable &= np.diff(frame.offsets) >= int(params["season"])
    return [ParamModel(family, dict(params), {}) if ok else None for ok in servable]


# ---------------------------------------------------------------- statistical


def _observed_span(y: np.ndarray) -> tuple[np.ndarray, int] | None:
    """``y`` from its first to its last observation, gaps interpolated linearly, and the
    number of missing periods after the last observation; None without an observation."""
    seen = np.flatnonzero(np.isfinite(y))
    if not len(seen):
        return None
    span = y[seen[0] : seen[-1] + 1].astype(np.float64)
    gaps = ~np.isfinite(span)
    if gaps.any():
        at = np.arange(len(span))
        span[gaps] = np.interp(at[gaps], at[~gaps], span[~gaps])
    return span, len(y) - 1 - int(seen[-1])


def _season(spec: DatasetSpec, n: int, family: str) -> int:
    """The spec's season length; 1 when unknown, under two seasons of data, or longer than
    the family's ``MAX_SEASON``."""
    m = season_length(spec.frequency) or 1
    longest = MAX_SEASON[family]
    return m if n >= 2 * m and (longest is None or m <= longest) else 1


def _fit_ets(y: np.ndarray, m: int) -> ParamModel:
    from statsforecast.ets import ets_f

    fit = ets_f(y, m=m, model="ZZZ")
    if fit.get("components") is None:
        raise ValueError("no ETS model could be fitted")
    return ParamModel(
        "ets",
        {"components": str(fit["components"]), "m": int(fit["m"])},
        {"par": np.asarray(fit["par"], dtype=np.float64)},
    )


def _forecast_ets(model: ParamModel, y: np.ndarray, h: int) -> np.ndarray:
    from statsforecast.ets import etsforecast, pegelsresid_C, switch

    components, m = str(model.params["components"]), int(model.params["m"])
    error, trend, season, damped = components[0], components[1], components[2], components[3]
    par = model.arrays["par"]
    alpha, beta, gamma, phi = (float(v) for v in par[:4])
    _, _, states, _ = pegelsresid_C(
        y, m, par[4:], error, trend, season, damped != "N", alpha, beta, gamma, phi, 3
    )
    out = np.full(h, np.nan)
    phi_used = 1.0 if damped == "N" else phi
    etsforecast(states[-1], m, switch(trend), switch(season), phi_used, h, out)
    return out


def _fit_theta(y: np.ndarray, m: int) -> ParamModel:
    from statsforecast.theta import auto_theta

    fit = auto_theta(y, m)
    par = fit["par"]
    return ParamModel(
        "theta",
        {
            "model": str(fit["modeltype"]),
            "m": int(fit["m"]),
            "initial_smoothed": float(par["initial_smoothed"]),
            "alpha": float(par["alpha"]),
            "theta": float(par["theta"]),
        },
        {},
    )


def _forecast_theta(model: ParamModel, y: np.ndarray, h: int) -> np.ndarray:
    from statsforecast.theta import auto_theta, forecast_theta

    # statsforecast's forward_theta: the parameters fixed, the seasonal test and decomposition
    # (not estimated parameters) made again on the history.
    p = model.params
    fit = auto_theta(
        y,
        int(p["m"]),
        model=str(p["model"]),
        initial_smoothed=float(p["initial_smoothed"]),
        alpha=float(p["alpha"]),
        theta=float(p["theta"]),
    )
    return np.asarray(forecast_theta(fit, h)["mean"], dtype=np.float64)


def _fit_arima(y: np.ndarray, m: int) -> ParamModel:
    from statsforecast.arima import auto_arima_f

    fit = auto_arima_f(y, period=m)
    coef = fit["coef"]
    return ParamModel(
        "arima",
        {
            "coef_names": ",".join(coef),
            "sigma2": float(fit["sigma2"]),
            "n_fit": len(y),
        },
        {
            "arma": np.asarray(fit["arma"], dtype=np.int64),
            "coef": np.asarray(list(coef.values()), dtype=np.float64),
        },
    )


def _forecast_arima(model: ParamModel, y: np.ndarray, h: int) -> np.ndarray:
    from statsforecast.arima import forecast_arima, forward_arima

    names = [n for n in str(model.params["coef_names"]).split(",") if n]
    n_fit = int(model.params["n_fit"])
    drift = "drift" in names
    fitted = {
        "arma": tuple(int(v) for v in model.arrays["arma"]),
        "coef": dict(zip(names, (float(v) for v in model.arrays["coef"]), strict=True)),
        "sigma2": float(model.params["sigma2"]),
        # Only the drift regressor (1..n of the fitting series) and its length are read.
        "x": np.zeros(n_fit),
        "xreg": np.arange(1.0, n_fit + 1).reshape(-1, 1) if drift else None,
        "lambda": None,
    }
    refiltered = forward_arima(fitted, y)
    return np.asarray(forecast_arima(refiltered, h=h)["mean"], dtype=np.float64)


_STATISTICAL: dict[str, tuple[Callable[[np.ndarray, int], ParamModel], Callable[..., Any]]] = {
    "ets": (_fit_ets, _forecast_ets),
    "theta": (_fit_theta, _forecast_theta),
    "arima": (_fit_arima, _forecast_arima),
}


def _quietly(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, with the numeric warnings of a poorly conditioned series silenced (the
    caller turns a failure into None / NaN)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)


def _fit_statistical(y: np.ndarray, family: str, spec: DatasetSpec) -> ParamModel | None:
    span = _observed_span(y)
    if span is None or len(span[0]) < MIN_OBSERVED[family]:
        return None
    observed, _ = span
    try:
        return _quietly(_STATISTICAL[family][0], observed, _season(spec, len(observed), family))
    except Exception:  # statsforecast raises bare Exceptions for series it cannot fit
        return None


def _forecast_statistical(model: ParamModel, y: np.ndarray, horizon: int) -> np.ndarray:
    span = _observed_span(y)
    if span is None:
        return np.full(horizon, np.nan)
    observed, trailing = span
    try:
        path = _quietly(_STATISTICAL[model.family][1], model, observed, horizon + trailing)
    except Exception:  # a history the stored parameters cannot filter: no forecast
        return np.full(horizon, np.nan)
    out = np.asarray(path[trailing:], dtype=np.float64)
    return np.where(np.isfinite(out), out, np.nan)


# ---------------------------------------------------------------- public API


def fit_many(frame: SeriesFrame, family: str, spec: DatasetSpec) -> list[ParamModel | None]:
    """One model per series of ``frame``, fitted on all its rows.

    A series gets None when the family cannot serve it: no observed target; ``seasonal_naive``
    with fewer rows than a season (or no season for the frequency); a statistical family with
    fewer than ``MIN_OBSERVED[family]`` periods from its first to its last observation
    (``ets`` 8, ``theta`` 4, ``arima`` 8), or statsforecast failing on it.

    Args:
        frame: A regular SeriesFrame (``calendar.regularize``): the training window.
        family: A ``baseline`` or ``statistical`` family.
        spec: The dataset spec (frequency for the season, ``mean_window``).

    Raises:
        ValueError: ``family`` is a regression family.
        UnknownFamilyError: ``family`` is not in the table.
    """
    if _kind(family) == "baseline":
        return _fit_baselines(frame, family, spec)
    o = frame.offsets
    return [
        _fit_statistical(frame.target[o[i] : o[i + 1]], family, spec) for i in range(frame.n_series)
    ]


def forecast_many(
    models: Sequence[ParamModel | None], history: SeriesFrame, horizon: int, spec: DatasetSpec
) -> np.ndarray:
    """The ``horizon`` periods after the end of each series of ``history``.

    Args:
        models: One model (or None) per series of ``history``, in its order; families may mix.
        history: A regular SeriesFrame, possibly longer than the fitting frame.
        horizon: Periods to forecast.
        spec: The dataset spec (unused by the stored models; kept for a uniform signature).

    Returns:
        ``[n_series, horizon]`` float64; NaN rows where a series has no model or its model
        cannot forecast from this history (e.g. no observation).

    Raises:
        ValueError: ``models`` and ``history`` hold different numbers of series.
    """
    del spec
    if len(models) != history.n_series:
        raise ValueError(f"{len(models)} models for {history.n_series} series")
    out = np.full((history.n_series, horizon), np.nan)
    groups: dict[tuple, list[int]] = defaultdict(list)
    o = history.offsets
    for i, model in enumerate(models):
        if model is None:
            continue
        if _kind(model.family) == "statistical":
            out[i] = _forecast_statistical(model, history.target[o[i] : o[i + 1]], horizon)
        else:
            groups[(model.family, *sorted(model.params.items()))].append(i)
    for (family, *params), rows in groups.items():
        keep = np.zeros(history.n_series, dtype=bool)
        keep[rows] = True
        forecast = _BASELINE_FORECASTS[family]
        out[rows] = forecast(take_series(history, keep), horizon, **dict(params))
    return out
