"""Exact incremental ridge fits (``ml.incremental``) against full refits (``fast_ridge``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops_assets.ml.fast_ridge import fit_ridge
from mlops_assets.ml.incremental import RidgeMoments

RTOL = 1e-9
PARAMS = {"alpha": 1.0}


def panel(rng, n_series, n_periods, p, level=1e6, spread=2e5):
    """Sales-like panels: targets around ``level``, features on their own offsets, a 0/1
    promotion that goes quiet for the last 200 periods and a constant feature."""
    X = rng.normal(size=(n_series, n_periods, p)) * spread / 10 + level / 10
    X[:, :, 0] = rng.normal(size=(n_series, n_periods)) * spread + level
    if p > 2:
        X[:, :, 1] = rng.random((n_series, n_periods)) < 0.2
        X[:, -200:, 1] = 0.0
        X[:, :, 2] = 5.0
    y = rng.normal(size=(n_series, n_periods)) * spread + level + 0.4 * X[:, :, 0]
    return X, y


def first_window(X, y, width):
    n_series, _, p = X.shape
    index = np.repeat(np.arange(n_series), width)
    return RidgeMoments.from_rows(
        X[:, :width].reshape(-1, p), y[:, :width].ravel(), index, n_series
    )


def assert_matches_refit(stats, X, y, start, stop, series=None):
    """Every (or ``series``') solved fit equals ``fit_ridge`` on rows ``start:stop``."""
    fit = stats.solve(PARAMS["alpha"])
    for s in range(len(X)) if series is None else series:
        ref = fit_ridge(X[s, start:stop], y[s, start:stop], PARAMS)
        scaler, ridge = ref[0], ref[-1]
        coef_tol = RTOL * np.max(np.abs(ridge.coef_))
        np.testing.assert_allclose(fit.coef[s], ridge.coef_, rtol=RTOL, atol=coef_tol)
        np.testing.assert_allclose(fit.intercept[s], ridge.intercept_, rtol=RTOL)
        np.testing.assert_allclose(fit.scale[s], scaler.scale_, rtol=RTOL)
        np.testing.assert_allclose(fit.var[s], scaler.var_, rtol=RTOL)
        level = np.max(np.abs(stats.shift[s]))
        np.testing.assert_allclose(fit.mean[s], scaler.mean_, rtol=RTOL, atol=RTOL * level)
        assert fit.n[s] == stop - start == scaler.n_samples_seen_
        assert np.array_equal(fit.var[s] == 0, scaler.var_ == 0)


@pytest.mark.parametrize("window", [None, 156])
@pytest.mark.parametrize("p", [1, 4, 12])
def test_a_year_of_daily_rows_equals_a_full_refit(p, window):
    rng = np.random.default_rng(p)
    n_series, first = 12, 156
    X, y = panel(rng, n_series, first + 365, p)
    stats = first_window(X, y, first)
    every = np.arange(n_series)
    for t in range(first, first + 365):
        stats.update(X[:, t], y[:, t], every)
        if window is not None:
            stats.downdate(X[:, t - window], y[:, t - window], every)
    start = 0 if window is None else first + 365 - window
    assert_matches_refit(stats, X, y, start, first + 365)


def test_a_feature_constant_over_the_window_gets_no_coefficient():
    rng = np.random.default_rng(7)
    X, y = panel(rng, 4, 156 + 365, 5)
    stats = first_window(X, y, 156)
    every = np.arange(4)
    for t in range(156, 156 + 365):
        stats.update(X[:, t], y[:, t], every)
        stats.downdate(X[:, t - 156], y[:, t - 156], every)
    fit = stats.solve(1.0)
    assert (fit.coef[:, 1:3] == 0).all() and (fit.var[:, 1:3] == 0).all()
    assert (fit.scale[:, 1:3] == 1).all()


def test_ragged_batches_of_rows_in_any_order():
    """Several rows per series per step, shuffled across series, some series without any."""
    rng = np.random.default_rng(3)
    n_series, p, periods = 30, 6, 300
    X, y = panel(rng, n_series, periods, p, level=50.0, spread=10.0)
    lengths = rng.integers(20, 60, n_series)  # each series' first window
    index = np.repeat(np.arange(n_series), lengths)
    rows = np.concatenate([np.arange(n) for n in lengths])
    stats = RidgeMoments.from_rows(X[index, rows], y[index, rows], index, n_series)
    ends = lengths.copy()
    for _ in range(20):
        grow = rng.integers(0, 4, n_series)
        grow[rng.random(n_series) < 0.3] = 0
        idx = np.repeat(np.arange(n_series), grow)
        at = np.concatenate([np.arange(e, e + g) for e, g in zip(ends, grow, strict=True)])
        order = rng.permutation(len(idx))
        stats.update(X[idx[order], at[order]], y[idx[order], at[order]], idx[order])
        ends += grow
    fit = stats.solve(1.0)
    for s in range(n_series):
        ref = fit_ridge(X[s, : ends[s]], y[s, : ends[s]], PARAMS)
        np.testing.assert_allclose(fit.coef[s], ref[-1].coef_, rtol=RTOL, atol=RTOL)
        np.testing.assert_allclose(fit.intercept[s], ref[-1].intercept_, rtol=RTOL)


def test_thousands_of_series_at_once():
    rng = np.random.default_rng(11)
    n_series, p, first = 3000, 8, 60
    X, y = panel(rng, n_series, first + 10, p)
    stats = first_window(X, y, first)
    every = np.arange(n_series)
    for t in range(first, first + 10):
        stats.update(X[:, t], y[:, t], every)
        stats.downdate(X[:, t - first], y[:, t - first], every)
    assert_matches_refit(stats, X, y, 10, first + 10, series=rng.choice(n_series, 50))


def test_solved_pipeline_predicts_as_the_refit():
    rng = np.random.default_rng(5)
    X, y = panel(rng, 3, 200, 4)
    stats = first_window(X, y, 150)
    stats.update(X[:, 150:].reshape(-1, 4), y[:, 150:].ravel(), np.repeat(np.arange(3), 50))
    fit = stats.solve(1.0)
    for s in range(3):
        model, ref = fit.pipeline(s, PARAMS), fit_ridge(X[s], y[s], PARAMS)
        np.testing.assert_allclose(model.predict(X[s, -5:]), ref.predict(X[s, -5:]), rtol=RTOL)


def test_statistics_round_trip_through_arrow():
    rng = np.random.default_rng(2)
    X, y = panel(rng, 5, 80, 3)
    stats = first_window(X, y, 80)
    table = stats.to_table([f"s{i}" for i in range(5)])
    back = RidgeMoments.from_table(table)
    assert table["n"].to_pylist() == [80] * 5
    np.testing.assert_array_equal(back.moments, stats.moments)
    np.testing.assert_array_equal(back.shift, stats.shift)


def test_a_series_without_rows_cannot_be_solved():
    stats = RidgeMoments(np.zeros((2, 3)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="no rows"):
        stats.solve(1.0)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    p=st.integers(1, 6),
    first=st.integers(10, 60),
    steps=st.integers(1, 40),
    level=st.sampled_from([0.0, 1.0, 1e3, 1e6]),
)
def test_any_sliding_window_equals_a_refit(seed, p, first, steps, level):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3, first + steps, p)) * max(level, 1.0) * 0.2 + level
    y = X.sum(axis=2) + rng.normal(size=(3, first + steps)) * max(level, 1.0) * 0.2
    stats = first_window(X, y, first)
    every = np.arange(3)
    for t in range(first, first + steps):
        stats.update(X[:, t], y[:, t], every)
        stats.downdate(X[:, t - first], y[:, t - first], every)
    assert_matches_refit(stats, X, y, steps, first + steps)


def sales_frames(n_series, n_periods):
    """The sales spec and its sample panel laid out, whole and without its last period."""
    from mlops_assets.ml.features import feature_matrix, to_series_frame
    from mlops_assets.ml.sample_data import SalesShape, sales_table
    from mlops_assets.ml.spec import load_spec

    spec = load_spec("sales")
    df = sales_table(SalesShape(n_series, n_periods, seed=4)).to_pandas()
    df = df.astype({"store": str, "product": str})
    shorter = df[df[spec.time] < df[spec.time].max()]
    frames = [to_series_frame(d, spec) for d in (shorter, df)]
    return spec, [(f, feature_matrix(f, spec)) for f in frames]


def assert_equals_fit_series(fit, frame, X, spec):
    from mlops_assets.ml.fitting import fit_series

    for s in range(frame.n_series):
        a, b = frame.offsets[s], frame.offsets[s + 1]
        ref = fit_series(X[a:b], frame.target[a:b], frame.time[a:b], spec).model
        scale = np.max(np.abs(ref[-1].coef_))
        np.testing.assert_allclose(fit.coef[s], ref[-1].coef_, rtol=RTOL, atol=RTOL * scale)
        np.testing.assert_allclose(fit.intercept[s], ref[-1].intercept_, rtol=RTOL)
        np.testing.assert_allclose(fit.scale[s], ref[0].scale_, rtol=RTOL)


def test_training_moments_hold_what_fit_series_fits_and_a_new_period_folds_in():
    from mlops_assets.ml.ridge_stats import entering_rows, series_of, training_moments

    spec, [(before, X0), (after, X1)] = sales_frames(8, 120)
    alpha = spec.model.params["alpha"]
    stats = training_moments(before, X0, spec)
    assert_equals_fit_series(stats.solve(alpha), before, X0, spec)
    rows = entering_rows(after, X1, spec)
    assert len(rows) == after.n_series
    stats.update(X1[rows], after.target[rows], series_of(after, rows))
    assert_equals_fit_series(stats.solve(alpha), after, X1, spec)
