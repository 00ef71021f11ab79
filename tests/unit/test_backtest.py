"""Rolling-origin backtests: folds, one call per origin, metrics equal to plain references."""

from __future__ import annotations

import numpy as np
import pytest

from mlops_assets.ml import backtest
from mlops_assets.ml.baselines import naive, seasonal_naive
from mlops_assets.ml.features import SeriesFrame
from tests.fixtures.frames import series_frame as _frame


@pytest.fixture
def series():
    rng = np.random.default_rng(5)
    out = [list(rng.normal(20, 5, n).round(1)) for n in (30, 12, 7, 3, 25)]
    out[0][20] = np.nan
    out[4] = [0.0] * 25  # constant: MASE undefined
    return out


def _mase_scale_reference(y: np.ndarray, season: int) -> float:
    for lag in (season, 1):
        pairs = [abs(y[t] - y[t - lag]) for t in range(lag, len(y))]
        pairs = [p for p in pairs if np.isfinite(p)]
        if pairs:
            scale = float(np.mean(pairs))
            return scale if scale > 0 else np.nan
    return np.nan


def test_folds_cut_each_series_at_its_own_origins(series):
    frame = _frame(series)
    folds = backtest.make_folds(frame, horizon=4, origins=3, step=2, season=5)
    lengths = np.array([len(s) for s in series])
    for k, back in enumerate([4, 2, 0]):
        np.testing.assert_array_equal(folds.cuts[k], lengths - 4 - back)
    assert folds.valid[:, 3].tolist() == [False, False, False]  # 3 rows: no fold
    assert folds.valid[:, 2].tolist() == [False, True, True]
    for k in range(3):
        for i, s in enumerate(series):
            cut = folds.cuts[k, i]
            if cut < 1:
                assert np.isnan(folds.actual[k, i]).all()
                continue
            np.testing.assert_array_equal(folds.actual[k, i], s[cut : cut + 4])
            y = np.array(s[:cut])
            np.testing.assert_allclose(folds.scale[k, i], _mase_scale_reference(y, 5))


def test_run_calls_the_forecaster_once_per_origin_on_all_series(series):
    frame = _frame(series)
    folds = backtest.make_folds(frame, horizon=3, origins=4, season=4)
    calls = []

    def forecaster(train: SeriesFrame, h: int) -> np.ndarray:
        calls.append(train.n_series)
        return seasonal_naive(train, h, 4)

    predicted = backtest.run(folds, forecaster)
    assert calls == [len(series)] * 4
    for k in range(4):
        for i, s in enumerate(series):
            cut = folds.cuts[k, i]
            if cut < 1:
                assert np.isnan(predicted[k, i]).all()
                continue
            want = [s[cut - 4 + j] if cut - 4 + j >= 0 else np.nan for j in range(3)]
            np.testing.assert_array_equal(predicted[k, i], want)


def test_metrics_equal_plain_references(series):
    frame = _frame(series)
    folds = backtest.make_folds(frame, horizon=3, origins=4, season=4)
    predicted = backtest.run(folds, naive)
    got = backtest.backtest_metrics(folds, predicted)
    a, p = folds.actual, predicted
    s = np.broadcast_to(folds.scale[..., None], a.shape)
    ok = np.isfinite(a) & np.isfinite(p)
    e = (p - a)[ok]
    denom = np.abs(a[ok]) + np.abs(p[ok])
    smape = np.where(denom > 0, 2 * np.abs(e) / np.where(denom > 0, denom, 1), 0).mean() * 100
    scaled = ok & np.isfinite(s)
    want = {
        "mae": np.abs(e).mean(),
        "rmse": np.sqrt((e**2).mean()),
        "smape": smape,
        "mase": (np.abs(p - a)[scaled] / s[scaled]).mean(),
        "bias": e.mean(),
        "count": ok.sum(),
    }
    for m, v in want.items():
        np.testing.assert_allclose(got["overall"][m], v, rtol=1e-12)
    for j in range(3):
        okj = ok[:, :, j]
        np.testing.assert_allclose(
            got["per_step"]["mae"][j], np.abs(p - a)[:, :, j][okj].mean(), rtol=1e-12
        )
    per_series = backtest.series_metrics(folds, predicted)
    for i in range(len(series)):
        oki = ok[:, i, :]
        want_i = np.abs(p - a)[:, i, :][oki].mean() if oki.any() else np.nan
        np.testing.assert_allclose(per_series["mae"][i], want_i, rtol=1e-12)
    assert np.isnan(per_series["mase"][4]) and per_series["mae"][4] == 0


def test_head_rows_clips_to_each_series():
    frame = _frame([[1.0, 2, 3], [4.0, 5]])
    head = backtest.head_rows(frame, np.array([2, 5]))
    assert head.offsets.tolist() == [0, 2, 4]
    np.testing.assert_array_equal(head.target, [1, 2, 4, 5])
