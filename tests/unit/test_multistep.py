"""Recursive multi-step forecasts of linear models: equal to a slow per-series reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlops_assets.ml import multistep
from mlops_assets.ml.backtest import make_folds
from mlops_assets.ml.candidates import backtest_models, fit_candidate, forecast_candidate
from mlops_assets.ml.features import SeriesFrame, feature_matrix, feature_names
from mlops_assets.ml.predict import fold_linear, stack_linear
from mlops_assets.ml.spec import load_spec


def _spec(known: list[str]):
    spec = load_spec("sales").model_copy(deep=True)
    spec.features.lags, spec.features.rolling = [1, 2, 5], [3]
    spec.features.calendar, spec.features.exogenous = ["fourier_year"], ["price", "promo"]
    spec.features.known_in_advance = known
    spec.min_history = 5
    return spec


def _random_frame(rng, lengths) -> SeriesFrame:
    starts = rng.integers(0, 30, size=len(lengths))
    weeks = pd.date_range("2021-01-04", periods=200, freq="W-MON").to_numpy()
    time = np.concatenate([weeks[s : s + n] for s, n in zip(starts, lengths, strict=True)])
    time = time.astype("datetime64[us]")
    n = int(sum(lengths))
    return SeriesFrame(
        keys=[(i,) for i in range(len(lengths))],
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        time=time,
        target=rng.normal(10, 3, n),
        exog={"price": rng.uniform(1, 3, n), "promo": rng.integers(0, 2, n).astype(float)},
    )


def _reference(frame, weights, bias, spec, horizon, future_exog):
    """One series at a time, features written out by hand."""
    out = np.full((frame.n_series, horizon), np.nan)
    for i in range(frame.n_series):
        a, b = frame.offsets[i], frame.offsets[i + 1]
        y = list(frame.target[a:b])
        last_time = pd.Timestamp(frame.time[b - 1])
        for j in range(horizon):
            t = last_time + pd.Timedelta(weeks=j + 1)
            x = [y[-k] for k in spec.features.lags]
            x += [sum(y[-w:]) / w for w in spec.features.rolling]
            angle = 2 * np.pi * (t.day_of_year - 1) / 365.25
            x += [np.sin(angle), np.cos(angle)]
            for c in spec.features.exogenous:
                if c in spec.features.known_in_advance:
                    x.append(future_exog[c][i, j])
                else:
                    x.append(frame.exog[c][b - 1])
            value = bias[i] + float(np.dot(x, weights[i]))
            lo, hi = spec.columns[spec.target].min, spec.columns[spec.target].max
            value = min(max(value, -np.inf if lo is None else lo), np.inf if hi is None else hi)
            y.append(value)  # clipped to the target's bounds before it feeds the next lags
            out[i, j] = value
    return out


@pytest.mark.parametrize("known", [[], ["price"], ["price", "promo"]])
def test_recursive_forecast_equals_per_series_reference(known):
    rng = np.random.default_rng(len(known))
    spec = _spec(known)
    frame = _random_frame(rng, [12, 30, 7, 50, 9])
    p = len(feature_names(spec))
    models = multistep.LinearModels(rng.normal(0, 0.3, (frame.n_series, p)), rng.normal(size=5))
    horizon = 6
    future = {c: rng.uniform(1, 3, (frame.n_series, horizon)) for c in known}
    got = multistep.forecast_linear(frame, models, spec, horizon, future)
    want = _reference(frame, models.weights, models.bias, spec, horizon, future)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_known_in_advance_values_are_required_and_others_are_not_used():
    spec = _spec(["price"])
    frame = _random_frame(np.random.default_rng(0), [20, 20])
    models = multistep.LinearModels(np.ones((2, len(feature_names(spec)))), np.zeros(2))
    with pytest.raises(ValueError, match="known-in-advance"):
        multistep.forecast_linear(frame, models, spec, 3)
    no_known = _spec([])
    a = multistep.forecast_linear(frame, models, no_known, 3, {"price": np.zeros((2, 3))})
    b = multistep.forecast_linear(frame, models, no_known, 3, {"price": np.ones((2, 3))})
    np.testing.assert_array_equal(a, b)


def test_a_series_without_model_or_rows_gets_nan():
    spec = _spec([])
    frame = _random_frame(np.random.default_rng(1), [15, 0, 15])
    bias = np.array([1.0, 1.0, np.nan])
    models = multistep.LinearModels(np.zeros((3, len(feature_names(spec)))), bias)
    out = multistep.forecast_linear(frame, models, spec, 2)
    np.testing.assert_array_equal(out[0], [1, 1])
    assert np.isnan(out[1:]).all()


def test_fitted_ridge_pipelines_fold_into_linear_models_equal_to_scikit_learn():
    """Training's ridge per series (``candidates.fit_candidate``: the training window, all but
    the last ``holdout`` periods) folds into the weights ``forecast_pipelines`` uses."""
    spec = _spec([])
    frame = _random_frame(np.random.default_rng(2), [40, 4, 60])
    fitted = fit_candidate("ridge", frame, None, spec)
    assert [m is not None for m in fitted.models] == [True, False, True]
    weights, bias = fold_linear(stack_linear(fitted.models))
    X = feature_matrix(frame, spec)
    for i in (0, 2):
        a, b = frame.offsets[i], frame.offsets[i + 1] - spec.holdout
        ok = np.isfinite(X[a:b]).all(axis=1)
        pipe = Pipeline([("s", StandardScaler()), ("m", Ridge(alpha=1.0))])
        pipe.fit(X[a:b][ok], frame.target[a:b][ok])
        mine = X[a:b][ok] @ weights[i] + bias[i]
        np.testing.assert_allclose(mine, pipe.predict(X[a:b][ok]), rtol=1e-9)


def test_the_backtest_reads_known_values_of_the_fold():
    spec = _spec(["price"])
    frame = _random_frame(np.random.default_rng(3), [40, 45])
    folds = make_folds(frame, 3, origins=2)
    fitted = fit_candidate("ridge", frame, None, spec)
    predicted = backtest_models(
        folds, spec, lambda h, hz, ahead: forecast_candidate(fitted, h, hz, spec, ahead)
    )
    assert np.isfinite(predicted).all()
    k = 0
    train = folds.train_frame(k)
    future = multistep.known_future(frame, train, 3, ["price"])
    np.testing.assert_array_equal(
        future["price"][0], frame.exog["price"][folds.cuts[k][0] + np.arange(3)]
    )
