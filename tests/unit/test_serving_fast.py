"""serving.fast's affine form of a scaler + linear model: a request's prediction as a cached
fixed part plus its exogenous terms, in plain floats, equal to the Pipeline's to rounding."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeRegressor

from mlops_assets.ml.predict import predict_pipeline
from mlops_assets.serving.fast import _affine


def _fitted(estimator, p: int = 9, seed: int = 0) -> Pipeline:
    rng = np.random.default_rng(seed)
    X = rng.normal(50, 20, (200, p)) * rng.uniform(0.1, 10, p)
    y = X @ rng.normal(0, 1, p) + rng.normal(0, 5, 200)
    return Pipeline([("scale", StandardScaler()), ("model", estimator)]).fit(X, y)


def _affine_prediction(form, exog) -> float:
    point, terms = form
    for x, (mean, scale, coef) in zip(exog, terms, strict=True):
        point += (x - mean) / scale * coef
    return point


@pytest.mark.parametrize("n_exog", [0, 2, 4])
def test_the_affine_form_predicts_what_the_pipeline_predicts(n_exog):
    rng = np.random.default_rng(1)
    model = _fitted(Ridge(alpha=0.5))
    for _ in range(50):
        row = rng.normal(50, 200, 9)
        base = row.copy()
        if n_exog:
            base[-n_exog:] = np.nan  # as the cached base row holds them
        form = _affine(model, base, n_exog)
        assert form is not None
        want = float(predict_pipeline(model, row.reshape(1, -1))[0])
        got = _affine_prediction(form, row[len(row) - n_exog :].tolist())
        assert got == pytest.approx(want, rel=1e-12, abs=1e-9)


def test_no_affine_form_for_other_models_or_an_unusable_base_row():
    base = np.full(9, 3.0)
    base[-2:] = np.nan
    assert _affine(_fitted(DecisionTreeRegressor(max_depth=3)), base, 2) is None
    ridge = _fitted(Ridge())
    assert _affine(ridge, base, 2) is not None
    gap = base.copy()
    gap[0] = np.nan  # a lag the stored tail cannot give: the numpy path answers (an error)
    assert _affine(ridge, gap, 2) is None
    assert _affine(ridge, base[:-1], 1) is None  # a row of another width than the model's
