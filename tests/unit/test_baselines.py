"""Baselines without fitting: equal to per-series references, and the fallback chain."""

from __future__ import annotations

import numpy as np
import pytest

from mlops_assets.ml import baselines
from tests.fixtures.frames import series_frame as _frame


def _ses(x: list[float], alpha: float) -> float:
    """statsforecast's ``_ses_forecast``: seeded with the first value."""
    level = x[0]
    for v in x:
        level = alpha * v + (1 - alpha) * level
    return level


def _croston_sba_reference(y: np.ndarray) -> float:
    y = y[np.isfinite(y)]
    idx = np.flatnonzero(y > 0)
    if not len(idx):
        return 0.0
    intervals = np.diff(idx + 1, prepend=0).astype(float)
    return 0.95 * _ses(list(y[idx]), 0.1) / _ses(list(intervals), 0.1)


def _tsb_reference(y: np.ndarray, alpha_d: float, alpha_p: float) -> float:
    y = y[np.isfinite(y)]
    if (y == 0).all():
        return 0.0
    return _ses(list((y != 0).astype(float)), alpha_p) * _ses(list(y[y > 0]), alpha_d)


@pytest.fixture
def intermittent():
    rng = np.random.default_rng(7)
    series = []
    for n in rng.integers(1, 60, size=40):
        y = rng.poisson(3, n) * (rng.random(n) < rng.uniform(0.1, 0.9))
        y = y.astype(float)
        y[rng.random(n) < 0.1] = np.nan
        series.append(list(y))
    series += [[0.0, 0.0, 0.0], [np.nan, np.nan], [5.0]]
    return series


def test_naive_mean_and_seasonal_naive_against_references(intermittent):
    frame = _frame(intermittent)
    got_naive = baselines.naive(frame, 3)
    got_mean = baselines.window_mean(frame, 2, window=5)
    got_season = baselines.seasonal_naive(frame, 6, season=4)
    for i, s in enumerate(intermittent):
        y = np.array(s)
        seen = y[np.isfinite(y)]
        last = seen[-1] if len(seen) else np.nan
        np.testing.assert_array_equal(got_naive[i], [last] * 3)
        mean = seen[-5:].mean() if len(seen) else np.nan
        np.testing.assert_allclose(got_mean[i], [mean] * 2, rtol=1e-12)
        back = [len(y) - 4 + j % 4 for j in range(6)]  # one season before step j + 1
        expected = [y[b] if b >= 0 else np.nan for b in back]
        np.testing.assert_array_equal(got_season[i], expected)


def test_croston_sba_and_tsb_equal_statsforecast_definitions(intermittent):
    frame = _frame(intermittent)
    sba = baselines.croston_sba(frame, 2)
    tsb = baselines.tsb(frame, 2, alpha_d=0.2, alpha_p=0.05)
    for i, s in enumerate(intermittent):
        y = np.array(s)
        if not np.isfinite(y).any():
            assert np.isnan(sba[i]).all() and np.isnan(tsb[i]).all()
            continue
        np.testing.assert_allclose(sba[i], _croston_sba_reference(y), rtol=1e-12)
        np.testing.assert_allclose(tsb[i], _tsb_reference(y, 0.2, 0.05), rtol=1e-12)


def test_intermittency_classes():
    smooth = [10.0, 11, 9, 10, 12, 10]
    erratic = [1.0, 30, 2, 50, 1, 40]
    intermittent = [5.0, 0, 0, 6, 0, 0, 5, 0, 0, 6]
    lumpy = [1.0, 0, 0, 50, 0, 0, 2, 0, 0, 60]
    got = baselines.intermittency(_frame([smooth, erratic, intermittent, lumpy, [0.0, 0.0]]))
    assert got.label.tolist() == ["smooth", "erratic", "intermittent", "lumpy", "no_demand"]
    np.testing.assert_allclose(got.adi[2], 10 / 4)
    y = np.array(erratic)
    np.testing.assert_allclose(got.cv2[1], y.var() / y.mean() ** 2)


def test_fallback_chain_serves_every_series_with_an_observation():
    series = [
        list(np.arange(10.0)),  # long enough for a season of 4
        [1.0, 2.0],  # too short for the season
        [1.0, 2, np.nan, 4, 5, 6],  # a value one season back is missing
        [np.nan, np.nan],  # never observed
        [],  # no row at all
    ]
    chain = baselines.fallback_chain(
        _frame(series), 3, ["seasonal_naive", "naive", "mean"], season=4, window=3
    )
    assert chain.method.tolist() == ["seasonal_naive", "naive", "naive", None, None]
    np.testing.assert_array_equal(chain.predictions[0], [6, 7, 8])
    np.testing.assert_array_equal(chain.predictions[1], [2, 2, 2])
    assert chain.reason[0] == ""
    assert chain.reason[1] == "seasonal_naive: fewer than 4 periods of history"
    assert chain.reason[2] == "seasonal_naive: a value it needs was not observed"
    assert chain.reason[3] == chain.reason[4] == "no observation"
    assert np.isnan(chain.predictions[3:]).all()


def test_fallback_chain_without_a_season_goes_on():
    chain = baselines.fallback_chain(_frame([[1.0, 3.0]]), 2, ["seasonal_naive", "mean"], None, 5)
    assert chain.method.tolist() == ["mean"]
    assert chain.reason[0] == "seasonal_naive: no season length for this frequency"
    np.testing.assert_array_equal(chain.predictions[0], [2, 2])


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.method_forecaster("prophet", 52, 4)
