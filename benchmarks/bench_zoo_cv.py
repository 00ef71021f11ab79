"""The model zoo's backtest against statsforecast's own cross-validation, same series, same folds.

Loads the Dominick's beer panel from ``--data`` (default: the environment variable
MLOPS_REAL_DATA; never copied into the repository), makes ``--max-series`` series
calendar-true as ``bench_forecast_quality`` does (the spec's fill: a week without a row sold
nothing), keeps those with at least ``min_history`` periods before the first backtest origin
(shorter series get no candidate model in training, only the fallback chain) and, in one
process, for every family of the zoo:

* **ours**: the rolling-origin backtest training runs (``candidates.fit_candidate`` once on
  each series' training window, then ``candidates.backtest_models`` forecasting ``horizon``
  periods from each of the spec's ``backtest.origins`` origins, clipped to the target's
  bounds), timed (wall and process CPU) and scored (MAE, MASE: ``backtest.backtest_metrics``);
* **statsforecast**: ``StatsForecast(models=[<the family's model>], freq=..., n_jobs=1)
  .cross_validation(df, h=horizon, step_size=step, n_windows=origins)`` on the same series,
  timed the same way; its cutoffs are checked to be exactly our origins (the same
  calendar week, per series and fold) and its actuals to be ours, and its forecasts are scored
  on our folds with our metric code.

So that the two do the same thing, our models are fitted on the periods up to the first
origin (``holdout = horizon + (origins - 1) * step``, 7 on beer, where the beer spec holds out
8; ``--spec-holdout`` keeps 8) and statsforecast's statistical models fit once at the first
window and re-filter the later ones (``refit=False``: its ``forward``, which is what ours does;
``--sf-refit`` refits them at every window, 4 times the fits). Parameter-free baselines run
with ``refit=True`` (three of them have no ``forward``; with no parameters it changes nothing).
Each statsforecast model gets the spec's season (52 for weekly data), except ARIMA, which
gets the season ours fits with (``param_models.MAX_SEASON`` caps it: a seasonal ARIMA at 52
costs ~1 s per series). Where our fit's settings differ from statsforecast's class defaults
(``AS_OURS``: ETS drops a season over 24, our ``auto_arima_f`` call approximates the
likelihood on long series), a second statsforecast run with our settings is the row
``<family> (sf as ours)``: what is left between those two is the implementation.
``ridge`` (our default family, on features) runs on our side only: statsforecast has none.

Both sides run in this one process, one after the other, for fairness: statsforecast with
``n_jobs=1`` (no worker pool), our backtest with no workers (baselines vectorised over the
series, statistical families one series at a time, as both libraries' cores are), after an
untimed warm-up of every family on two series so that numba's compilation is in nobody's
figure. Costs are ms per series of the whole backtest (ours: fit, the feature matrix for
ridge, and every fold; theirs: the ``cross_validation`` call, its data preparation
included), wall and this process's CPU, each phase with the load average at its start and
end. Forecasts are compared per (series, fold):
the share where every step is identical, within 1e-6 relative, and within 1% (or 0.01
units), on the pairs both forecast; statsforecast's forecasts are clipped to the target's
bounds first, as ours are. Writes ``benchmarks/results/zoo_cv.json`` and prints a table.

    python -m benchmarks.bench_zoo_cv --data "$MLOPS_REAL_DATA" --max-series 500
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import peak_rss_mb, write_result
from mlops_assets.ml import backtest, baselines, calendar, candidates, families, param_models
from mlops_assets.ml.features import SeriesFrame, feature_matrix, take_series, to_series_frame
from mlops_assets.ml.fitting import season_length
from mlops_assets.ml.predict import clip_to_bounds
from mlops_assets.ml.spec import DatasetSpec

ZOO = (*families.names("baseline"), *families.names("statistical"), "ridge")
# Per (series, fold): every step within these of statsforecast's (clipped) forecast.
NUMERIC = {"rtol": 1e-6, "atol": 1e-9}
CLOSE = {"rtol": 0.01, "atol": 0.01}


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


@dataclass
class Cost:
    """Wall and process-CPU seconds of named phases, with the load average around each."""

    seconds: dict[str, dict[str, Any]] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        load, wall, cpu = os.getloadavg()[0], time.perf_counter(), _cpu()
        try:
            yield
        finally:
            self.seconds[name] = {
                "wall_s": time.perf_counter() - wall,
                "cpu_s": _cpu() - cpu,
                "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
            }

    def per_series_ms(self, n: int) -> dict[str, float]:
        wall = sum(p["wall_s"] for p in self.seconds.values())
        cpu = sum(p["cpu_s"] for p in self.seconds.values())
        return {"wall": 1000 * wall / max(n, 1), "cpu": 1000 * cpu / max(n, 1)}


def statsforecast_model(name: str, spec: DatasetSpec, as_ours: bool = False) -> Any | None:
    """The statsforecast model that does what family ``name`` does (None: it has none).

    ``as_ours``: with the settings our fit uses where they differ from the model class's
    defaults (``AS_OURS``); None for a family whose settings do not differ.
    """
    from statsforecast import models as sf

    m = season_length(spec.frequency) or 1
    arima_m = m if m <= (param_models.MAX_SEASON["arima"] or m) else 1
    if as_ours:
        ets_m = m if m <= (param_models.MAX_SEASON["ets"] or m) else 1
        ours = {
            "ets": lambda: sf.AutoETS(season_length=ets_m),
            # auto_arima_f's default: approximate the likelihood over 150 periods.
            "arima": lambda: sf.AutoARIMA(season_length=arima_m, approximation=None),
        }
        return ours[name]() if name in ours else None
    make = {
        "naive": lambda: sf.Naive(),
        "seasonal_naive": lambda: sf.SeasonalNaive(season_length=m),
        "mean": lambda: sf.WindowAverage(window_size=spec.mean_window),
        "croston_sba": lambda: sf.CrostonSBA(),  # alpha 0.1, factor 0.95: baselines.croston_sba
        "tsb": lambda: sf.TSB(alpha_d=baselines.CROSTON_ALPHA, alpha_p=0.1),
        "ets": lambda: sf.AutoETS(season_length=m),
        "theta": lambda: sf.AutoTheta(season_length=m),
        "arima": lambda: sf.AutoARIMA(season_length=arima_m),
    }
    return make[name]() if name in make else None


# The settings ``statsforecast_model(..., as_ours=True)`` changes, in words.
AS_OURS = {
    "ets": "season_length 1 (ours: the season is dropped over MAX_SEASON 24)",
    "arima": "approximation=None (ours: auto_arima_f's default, approximate over 150 periods)",
}


def long_frame(frame: SeriesFrame) -> pd.DataFrame:
    """statsforecast's input: ``unique_id`` (the series' position), ``ds``, ``y``."""
    return pd.DataFrame(
        {
            "unique_id": np.repeat(np.arange(frame.n_series), np.diff(frame.offsets)),
            "ds": frame.time,
            "y": frame.target.astype(np.float64),
        }
    )


def our_cutoffs(folds: backtest.Folds) -> np.ndarray:
    """``[K, n_series]`` the date of each fold's last training row (statsforecast's cutoff)."""
    rows = folds.frame.offsets[:-1][None, :] + folds.cuts - 1
    return folds.frame.time[np.clip(rows, 0, None)]


def cross_validation(
    long: pd.DataFrame,
    name: str,
    folds: backtest.Folds,
    spec: DatasetSpec,
    refit: bool,
    as_ours: bool = False,
) -> tuple[np.ndarray, pd.DataFrame]:
    """statsforecast's cross-validation of family ``name`` on our folds: ``[K, n, horizon]``
    forecasts (NaN where its model failed on a series) and its raw output."""
    from statsforecast import StatsForecast
    from statsforecast.models import NaNModel

    model = statsforecast_model(name, spec, as_ours)
    parameter_free = families.family(name).kind == "baseline"
    sf = StatsForecast(models=[model], freq=spec.frequency, n_jobs=1, fallback_model=NaNModel())
    K = len(folds.cuts)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cv = sf.cross_validation(
            df=long,
            h=folds.horizon,
            step_size=spec.backtest.step,
            n_windows=K,
            refit=True if parameter_free else refit,
        )
    return _as_folds(cv, repr(model), folds), cv


def _as_folds(cv: pd.DataFrame, column: str, folds: backtest.Folds) -> np.ndarray:
    """statsforecast's rows (sorted by series, cutoff, date) as ``[K, n, horizon]``, after
    checking that its series, cutoffs, dates and actuals are our folds' exactly."""
    n, K, h = folds.frame.n_series, len(folds.cuts), folds.horizon
    if len(cv) != n * K * h:
        raise ValueError(f"statsforecast gave {len(cv)} rows for {n} series x {K} folds x {h}")

    def shaped(col: str) -> np.ndarray:
        return cv[col].to_numpy().reshape(n, K, h).transpose(1, 0, 2)

    if not (shaped("unique_id") == np.arange(n)[None, :, None]).all():
        raise ValueError("statsforecast's series are not in our order")
    theirs_cut = shaped("cutoff")[:, :, 0].astype("datetime64[us]")
    check_cutoffs(our_cutoffs(folds), theirs_cut)
    rows = folds.frame.offsets[:-1][None, :, None] + folds.cuts[:, :, None] + np.arange(h)
    if not (shaped("ds").astype("datetime64[us]") == folds.frame.time[rows]).all():
        raise ValueError("statsforecast forecast other dates than our folds")
    if not np.array_equal(shaped("y").astype(np.float64), folds.actual, equal_nan=True):
        raise ValueError("statsforecast's actuals differ from our folds'")
    return shaped(column).astype(np.float64)


def check_cutoffs(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Raise unless every (fold, series) cutoff is the same date on both sides."""
    differ = ours != theirs
    if differ.any():
        k, i = np.argwhere(differ)[0]
        raise ValueError(
            f"{int(differ.sum())} cutoffs differ from statsforecast's, e.g. fold {k} of "
            f"series {i}: ours {ours[k, i]}, statsforecast's {theirs[k, i]}"
        )


def our_backtest(
    name: str, frame: SeriesFrame, folds: backtest.Folds, spec: DatasetSpec, fit_spec: DatasetSpec
) -> tuple[np.ndarray, Cost]:
    """Family ``name``'s rolling-origin backtest as training runs it, and its cost."""
    cost = Cost()
    with cost("fit"):
        X = feature_matrix(frame, spec) if candidates.kind_of(name) == "regression" else None
        fitted = candidates.fit_candidate(name, frame, X, fit_spec)
    with cost("backtest"):
        predicted = candidates.backtest_models(
            folds,
            spec,
            lambda hist, hz, ahead: candidates.forecast_candidate(fitted, hist, hz, spec, ahead),
        )
    return predicted, cost


def agreement(ours: np.ndarray, theirs: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Per (fold, series) pair with a fold: who forecast it, and how close the two are."""
    o_ok, t_ok = np.isfinite(ours).all(axis=2) & valid, np.isfinite(theirs).all(axis=2) & valid
    both = o_ok & t_ok
    a, b = ours[both], theirs[both]

    def share(ok: np.ndarray) -> float | None:
        return float(ok.all(axis=1).mean()) if len(ok) else None

    return {
        "pairs": int(valid.sum()),
        "pairs_both": int(both.sum()),
        "pairs_ours_only": int((o_ok & ~t_ok).sum()),
        "pairs_theirs_only": int((t_ok & ~o_ok).sum()),
        "share_identical": share(a == b),
        "share_within_1e-6": share(np.isclose(a, b, **NUMERIC)),
        "share_within_1pct": share(np.isclose(a, b, **CLOSE)),
        "max_abs_diff": float(np.abs(a - b).max()) if len(a) else None,
    }


@dataclass
class ZooComparison:
    """One run of ``compare``: the folds, each side's forecasts, costs and figures."""

    folds: backtest.Folds
    ours: dict[str, np.ndarray]
    theirs: dict[str, np.ndarray]
    figures: dict[str, dict[str, Any]]


def _scored(folds: backtest.Folds, predicted: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    overall = backtest.backtest_metrics(folds, np.where(pairs[..., None], predicted, np.nan))
    return {m: overall["overall"][m] for m in ("mae", "mase", "count")}


def _against(
    folds: backtest.Folds,
    spec: DatasetSpec,
    ours: np.ndarray,
    ours_ms: dict[str, float],
    raw: np.ndarray,
    cost: Cost,
) -> tuple[np.ndarray, dict[str, Any]]:
    """statsforecast's forecasts clipped as ours are, and the figures comparing them."""
    theirs = clip_to_bounds(raw, spec)
    pairs = np.isfinite(ours).all(axis=2) & np.isfinite(theirs).all(axis=2)
    n = folds.frame.n_series
    fig = {
        "theirs_ms_per_series": cost.per_series_ms(n),
        "theirs_phases": cost.seconds,
        "theirs_over_ours_wall": cost.per_series_ms(n)["wall"] / ours_ms["wall"],
        "theirs": _scored(folds, theirs, folds.valid),
        "theirs_unclipped": _scored(folds, raw, folds.valid),
        "both_pairs": {
            "ours": _scored(folds, ours, pairs),
            "theirs": _scored(folds, theirs, pairs),
        },
        "agreement": agreement(ours, theirs, folds.valid),
    }
    return theirs, fig


def compare(
    frame: SeriesFrame,
    spec: DatasetSpec,
    names: Sequence[str] = ZOO,
    *,
    refit: bool = False,
    spec_holdout: bool = False,
    as_ours: bool = True,
    warm_up: bool = True,
) -> ZooComparison:
    """Every family of ``names`` backtested by us and cross-validated by statsforecast on the
    spec's folds of ``frame`` (a regular frame: ``calendar.regularize``).

    ``as_ours``: where our fit's settings differ from statsforecast's class defaults
    (``AS_OURS``), a second statsforecast run with ours, as the row ``<family> (sf as ours)``.

    Raises:
        ValueError: statsforecast's cutoffs, dates or actuals are not our folds', or a series
            is too short for the folds (statsforecast needs more than ``horizon + (origins -
            1) * step`` periods).
    """
    b = spec.backtest
    window = spec.horizon + (b.origins - 1) * b.step
    fit_spec = spec
    if not spec_holdout:
        fit_spec = DatasetSpec.model_validate({**spec.model_dump(), "holdout": window})
    folds = candidates.make_folds(frame, spec)
    long = long_frame(frame)
    runs = [(name, False) for name in names if statsforecast_model(name, spec) is not None]
    if as_ours:
        runs += [(name, True) for name in names if name in AS_OURS]
    if warm_up:  # numba compiles on first use: in nobody's figure
        few = take_series(frame, np.arange(frame.n_series) < 2)
        few_folds = candidates.make_folds(few, spec)
        for name in names:
            our_backtest(name, few, few_folds, spec, fit_spec)
        for name, variant in runs:
            cross_validation(long_frame(few), name, few_folds, spec, refit, variant)
    n = frame.n_series
    ours: dict[str, np.ndarray] = {}
    theirs: dict[str, np.ndarray] = {}
    figures: dict[str, dict[str, Any]] = {}
    for name in names:
        ours[name], cost = our_backtest(name, frame, folds, spec, fit_spec)
        ours_ms = cost.per_series_ms(n)
        figures[name] = {
            "ours_ms_per_series": ours_ms,
            "ours_phases": cost.seconds,
            "ours": _scored(folds, ours[name], folds.valid),
        }
        for variant in (False, True):
            if (name, variant) not in runs:
                continue
            their_cost = Cost()
            with their_cost("cross_validation"):
                raw, _ = cross_validation(long, name, folds, spec, refit, variant)
            label = f"{name} (sf as ours)" if variant else name
            theirs[label], fig = _against(folds, spec, ours[name], ours_ms, raw, their_cost)
            if variant:
                figures[label] = {
                    "statsforecast_settings": AS_OURS[name],
                    "ours_ms_per_series": ours_ms,
                    "ours": figures[name]["ours"],
                }
            figures[label] |= fig
    return ZooComparison(folds, ours, theirs, figures)


def beer_frame(data: Path, max_series: int, seed: int) -> tuple[SeriesFrame, DatasetSpec, int]:
    """The beer panel's calendar-true series long enough for the folds, the spec and how many
    series of the sample were too short."""
    from benchmarks.bench_forecast_quality import _subset, load_beer

    df, spec = load_beer(data)
    df = _subset(df, spec, max_series, seed)
    kept, _ = calendar.apply_off_calendar(to_series_frame(df, spec), spec)
    frame = calendar.regularize(kept, spec).frame
    b = spec.backtest
    window = spec.horizon + (b.origins - 1) * b.step
    long_enough = np.diff(frame.offsets) >= window + spec.min_history
    return take_series(frame, long_enough), spec, int((~long_enough).sum())


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(figures: dict[str, dict[str, Any]]) -> str:
    """The per-family comparison as a Markdown table (MAE and MASE on the pairs both sides
    forecast; ours alone where statsforecast has no such model)."""
    head = (
        "| family | ours ms/series wall (CPU) | statsforecast ms/series wall (CPU) | theirs/ours "
        "| MAE ours | MAE theirs | MASE ours | MASE theirs | identical | within 1e-6 | within 1% "
        "| pairs both / all |"
    )
    lines = [head, "|" + "---|" * 12]
    for name, f in figures.items():
        o = f["ours_ms_per_series"]
        if "agreement" not in f:
            s = f["ours"]
            lines.append(
                f"| {name} | {o['wall']:.2f} ({o['cpu']:.2f}) | - | - | {_fmt(s['mae'])} | - "
                f"| {_fmt(s['mase'])} | - | - | - | - | - |"
            )
            continue
        t, a = f["theirs_ms_per_series"], f["agreement"]
        bo, bt = f["both_pairs"]["ours"], f["both_pairs"]["theirs"]
        lines.append(
            f"| {name} | {o['wall']:.2f} ({o['cpu']:.2f}) | {t['wall']:.2f} ({t['cpu']:.2f}) "
            f"| {f['theirs_over_ours_wall']:.2f} | {_fmt(bo['mae'])} | {_fmt(bt['mae'])} "
            f"| {_fmt(bo['mase'])} | {_fmt(bt['mase'])} | {_fmt(a['share_identical'])} "
            f"| {_fmt(a['share_within_1e-6'])} | {_fmt(a['share_within_1pct'])} "
            f"| {a['pairs_both']} / {a['pairs']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MLOPS_REAL_DATA"))
    parser.add_argument("--max-series", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="*", default=list(ZOO))
    parser.add_argument("--sf-refit", action="store_true", help="statsforecast refits per fold")
    parser.add_argument("--spec-holdout", action="store_true", help="fit ours on the spec's")
    parser.add_argument(
        "--no-as-ours", action="store_true", help="skip statsforecast runs with our settings"
    )
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data or set MLOPS_REAL_DATA to the folder of the real panels")
    started, load_start = time.perf_counter(), os.getloadavg()
    frame, spec, too_short = beer_frame(Path(args.data), args.max_series, args.seed)
    result = compare(
        frame,
        spec,
        args.families,
        refit=args.sf_refit,
        spec_holdout=args.spec_holdout,
        as_ours=not args.no_as_ours,
    )
    b = spec.backtest
    write_result(
        "zoo_cv",
        {
            "command": (
                f"--data {args.data} --max-series {args.max_series} --seed {args.seed}"
                + (" --sf-refit" if args.sf_refit else "")
                + (" --spec-holdout" if args.spec_holdout else "")
                + (" --no-as-ours" if args.no_as_ours else "")
            ),
            "n_series": frame.n_series,
            "series_too_short": too_short,
            "mean_periods": float(np.diff(frame.offsets).mean()),
            "horizon": spec.horizon,
            "origins": b.origins,
            "step": b.step,
            "fit_holdout": spec.holdout
            if args.spec_holdout
            else spec.horizon + (b.origins - 1) * b.step,
            "statsforecast_refit_statistical": args.sf_refit,
            "cutoffs_match": True,  # compare raises otherwise
            "families": result.figures,
            "wall_s": round(time.perf_counter() - started, 1),
            "load_average_at_start": [round(x, 2) for x in load_start],
            "peak_rss_mb": peak_rss_mb(),
        },
    )
    start, end = (", ".join(f"{x:.2f}" for x in load) for load in (load_start, os.getloadavg()))
    print(f"\n{frame.n_series} series; load average {start} at the start, {end} at the end\n")
    print(table(result.figures))


if __name__ == "__main__":
    main()
