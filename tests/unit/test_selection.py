"""Per-series model choice by a rolling-origin backtest (``selection.select``).

Covers the cases the forecasting issue names: a candidate chosen by its backtest with the
runner-up recorded, intermittent demand, a series shorter than every family's minimum, a series
with no observation, gaps, conformal intervals with their out-of-fold coverage, and bounds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlops_assets.ml import backtest, baselines, calendar, intervals
from mlops_assets.ml.candidates import (
    backtest_models,
    fit_candidate,
    forecast_candidate,
    make_folds,
)
from mlops_assets.ml.fitting import FALLBACK, SKIPPED, TRAINED
from mlops_assets.ml.selection import select, stored_history
from mlops_assets.ml.spec import DatasetSpec
from tests.fixtures.frames import series_frame


def _spec(**extra) -> DatasetSpec:
    base = {
        "name": "units",
        "series_keys": ["id"],
        "time": "week",
        "target": "y",
        "columns": {
            "id": {"type": "string"},
            "week": {"type": "date"},
            "y": {"type": "float", "min": 0},
        },
        "frequency": "W-THU",
        "horizon": 4,
        "holdout": 8,
        "min_history": 12,
        "features": {"lags": [1, 2], "rolling": [4]},
        "model": {"family": "ridge", "params": {"alpha": 1.0}},
    }
    return DatasetSpec.model_validate({**base, **extra})


def _trend(n: int, slope: float = 2.0, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(50 + slope * np.arange(n) + rng.normal(0, 1, n))


def _intermittent(n: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(np.where(rng.uniform(size=n) < 0.25, rng.integers(1, 4, n), 0).astype(float))


def test_each_series_gets_the_family_with_the_best_backtest():
    spec = _spec(model={"family": "ridge", "candidates": ["naive", "mean"]})
    # A steady trend: ridge on lags follows it, naive lags it, the mean lags it most.
    flat = list(np.random.default_rng(1).normal(20, 0.5, 60))
    sel = select(series_frame([_trend(60), flat]), spec)
    assert list(sel.status) == [TRAINED, TRAINED]
    assert sel.family[0] == "ridge"
    scores = [json.loads(s) for s in sel.scores]
    assert set(scores[0]) == {"ridge", "naive", "mean"}
    assert scores[0]["ridge"] == pytest.approx(sel.metrics["mae"][0])
    # The runner-up is the second-lowest eligible score, recorded with its score.
    ranked = sorted(scores[1].items(), key=lambda kv: kv[1])
    assert sel.family[1] == ranked[0][0]
    assert (sel.runner_up[1], sel.runner_up_score[1]) == (ranked[1][0], pytest.approx(ranked[1][1]))
    assert sel.pairs.tolist() == [16, 16]


def test_intermittent_demand_can_choose_croston_or_tsb():
    spec = _spec(model={"family": "ridge", "candidates": ["naive", "croston_sba", "tsb"]})
    frame = series_frame([_intermittent(80, seed=s) for s in range(6)])
    assert set(baselines.intermittency(frame).label) <= {"intermittent", "lumpy"}
    sel = select(frame, spec)
    assert (sel.status == TRAINED).all()
    chosen = set(sel.family)
    assert chosen & {"croston_sba", "tsb"}, chosen
    # Every choice is the lowest eligible score of its series.
    for i, s in enumerate(sel.scores):
        scores = json.loads(s)
        assert scores[sel.family[i]] == pytest.approx(min(scores.values()))


def test_a_series_shorter_than_every_familys_minimum_falls_back():
    spec = _spec(fallback=["seasonal_naive", "naive", "mean"])
    short = [5.0, 7.0, 6.0, 8.0, 7.0, 9.0]  # 6 weeks: no training window, no season
    nothing = [float("nan")] * 6  # periods on the calendar, not one observed
    sel = select(series_frame([short, nothing, _trend(60)]), spec)
    assert sel.status[0] == FALLBACK and sel.family[0] == "naive"
    assert "ridge:" in sel.reason[0] and "fell back to naive" in sel.reason[0]
    assert "seasonal_naive: fewer than 52 periods" in sel.reason[0]
    assert sel.models[0] is not None and sel.models[0].family == "naive"
    assert sel.status[1] == SKIPPED and sel.models[1] is None
    assert "no observation" in sel.reason[1]
    assert sel.status[2] == TRAINED


def test_without_a_fallback_chain_a_series_the_model_cannot_serve_has_no_model():
    sel = select(series_frame([[5.0, 7.0, 6.0, 8.0, 7.0, 9.0]]), _spec())
    assert sel.status[0] == SKIPPED and sel.models[0] is None
    assert "ridge:" in sel.reason[0]


def test_gaps_are_periods_and_the_backtest_counts_observed_pairs_only():
    spec = _spec(
        calendar={"fill": {"y": "none"}}, model={"family": "ridge", "candidates": ["naive"]}
    )
    y = _trend(60)
    y[54] = float("nan")  # one unobserved week: the history of the two newest origins
    frame = calendar.regularize(series_frame([y]), spec).frame
    sel = select(frame, spec)
    folds = backtest.make_folds(frame, 4, 4, 1, 52)  # origins after rows 52, 53, 54, 55
    observed = int(np.isfinite(folds.actual).sum())
    assert observed == 16 - 2  # the missing week falls in two folds' horizons
    # Ridge's lags need the missing week for later steps: it cannot forecast every pair, naive
    # can, so naive serves the series, scored on every observed pair.
    assert sel.family[0] == "naive"
    assert sel.pairs[0] == observed


def test_intervals_cover_their_level_out_of_fold_and_widen_with_the_level():
    spec = _spec(
        model={"family": "ridge", "candidates": ["naive", "mean"]},
        backtest={"origins": 8, "step": 1},
        holdout=11,
    )
    rng = np.random.default_rng(7)
    frame = series_frame([list(100 + rng.normal(0, 10, 90)) for _ in range(200)])
    sel = select(frame, spec)
    assert sel.residuals.shape == (200, 8, 4)
    # The engines train in chunks: calibrating over the run's series (here two halves that
    # went to different chunks) gives the intervals of all of them.
    widths, cover = intervals.series_intervals(sel.residuals, sel.residual_scale, [80, 95])
    w80, w95 = widths[80], widths[95]
    assert w80.shape == (200, 4) and np.isfinite(w80).all()
    assert (w95 >= w80).all()
    pooled = {lv: float(np.nanmean(cover[lv])) for lv in (80, 95)}
    assert 0.7 < pooled[80] < 0.9
    assert 0.85 < pooled[95] <= 1.0


def test_backtest_forecasts_are_clipped_to_the_targets_bounds():
    # A falling trend: ridge on lags forecasts below zero at the later steps unless clipped.
    y = list(np.maximum(60 - 3.0 * np.arange(30), 0.0) + np.linspace(0, 0.1, 30))
    frame = series_frame([y])

    def backtested(spec: DatasetSpec) -> np.ndarray:
        fitted = fit_candidate("ridge", frame, None, spec)
        return backtest_models(
            make_folds(frame, spec),
            spec,
            lambda h, hz, ahead: forecast_candidate(fitted, h, hz, spec, ahead),
        )

    bounded = _spec(min_history=8)
    unbounded = bounded.model_copy(deep=True)
    unbounded.columns["y"].min = None
    assert np.nanmin(backtested(unbounded)) < 0
    assert np.nanmin(backtested(bounded)) == 0.0


def test_stored_history_keeps_two_seasons_for_forecast_only_families():
    assert stored_history(_spec()) == 4 + 8
    assert stored_history(_spec(fallback=["seasonal_naive"])) == 104 + 8
    assert stored_history(_spec(model={"family": "ridge", "candidates": ["ets"]})) == 104 + 8
