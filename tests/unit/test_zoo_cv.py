"""benchmarks.bench_zoo_cv: our backtest folds are statsforecast's cross-validation windows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from benchmarks import bench_zoo_cv
from mlops_assets.ml import backtest
from mlops_assets.ml.spec import load_spec
from tests.fixtures.frames import series_frame

BEER = load_spec("beer")  # W-THU (the fixture's weeks start on Thursdays), season 52, h 4


def _frame():
    """5 noisy weekly series, long enough for a season before the first origin (52 + 7)."""
    rng = np.random.default_rng(7)
    lengths = [60, 64, 71, 80, 95]
    frame = series_frame([list(rng.poisson(5.0, n).astype(float)) for n in lengths])
    return replace(frame, exog={"price": np.full(frame.n_rows, 2.5)})  # the spec's exogenous


def test_naive_and_seasonal_naive_folds_are_statsforecasts_exactly():
    frame = _frame()
    result = bench_zoo_cv.compare(
        frame, BEER, ["naive", "seasonal_naive"], as_ours=False, warm_up=False
    )
    folds = result.folds
    assert folds.cuts.shape == (BEER.backtest.origins, 5)
    for name in ("naive", "seasonal_naive"):
        agreement = result.figures[name]["agreement"]
        assert agreement["pairs_both"] == agreement["pairs"] == 4 * 5
        assert agreement["share_identical"] == 1.0
        np.testing.assert_array_equal(result.ours[name], result.theirs[name])
        assert result.figures[name]["ours"]["mae"] == result.figures[name]["theirs"]["mae"]
    # Each fold forecasts the periods right after its own origin.
    last = result.ours["naive"][:, :, 0]
    origin = frame.offsets[:-1][None, :] + folds.cuts - 1
    np.testing.assert_array_equal(last, frame.target[origin])


def test_folds_other_than_statsforecasts_windows_are_refused():
    frame = _frame()
    long = bench_zoo_cv.long_frame(frame)
    shifted = backtest.make_folds(frame, BEER.horizon, BEER.backtest.origins, step=2)
    with pytest.raises(ValueError, match="cutoffs differ"):
        bench_zoo_cv.cross_validation(long, "naive", shifted, BEER, refit=False)
    ours = bench_zoo_cv.our_cutoffs(backtest.make_folds(frame, BEER.horizon, 4, 1))
    bench_zoo_cv.check_cutoffs(ours, ours.copy())
    theirs = ours.copy()
    theirs[2, 3] -= np.timedelta64(7, "D")
    with pytest.raises(ValueError, match="1 cutoffs differ"):
        bench_zoo_cv.check_cutoffs(ours, theirs)
