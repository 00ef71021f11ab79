"""The table of model families: every family works end to end, and one entry adds a family."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import skops.io as sio
from pydantic import ValidationError
from sklearn.linear_model import ElasticNet, Lasso

from mlops_assets.ml import families, persistence
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.families import COMMON_SKOPS_TYPES, Family
from mlops_assets.ml.features import feature_matrix, to_series_frame
from mlops_assets.ml.fitting import TRAINED, fit_series
from mlops_assets.ml.predict import predict_pipeline, stack_linear
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.scoring import SeriesModel, score
from mlops_assets.ml.spec import DatasetSpec, load_spec

SALES = load_spec("sales")
# Small models keep the table-driven test quick; any family not named here uses its defaults.
SMALL = {"hist_gradient_boosting": {"max_iter": 20}, "random_forest": {"n_estimators": 5}}

# Two families a test adds through the table only: one with the linear shortcut (stored as
# arrays, predicted stacked), one without (stored through skops with its allow-listed type).
LASSO = Family(
    "test_lasso",
    lambda params: Lasso(**{"random_state": 0, **params}),
    scaled=True,
    skops_types=frozenset({"sklearn.linear_model._coordinate_descent.Lasso"}),
    linear=Lasso,
)
ELASTIC_NET = Family(
    "test_elastic_net",
    lambda params: ElasticNet(**{"random_state": 0, **params}),
    scaled=True,
    skops_types=frozenset({"sklearn.linear_model._coordinate_descent.ElasticNet"}),
)


def _spec(family: str, params: dict | None = None) -> DatasetSpec:
    """The sales spec with another model, validated as a spec from YAML would be."""
    return DatasetSpec.model_validate(
        {**SALES.model_dump(), "model": {"family": family, "params": params or {}}}
    )


def _series(n_series: int = 3, n_periods: int = 120) -> pd.DataFrame:
    df = sales_table(SalesShape(n_series, n_periods, seed=4)).to_pandas()
    return df.astype({"store": str, "product": str})


@pytest.fixture
def added():
    """Registers the two test families for one test, and removes them afterwards."""
    for f in (LASSO, ELASTIC_NET):
        families.register(f)
    yield
    for f in (LASSO, ELASTIC_NET):
        families.unregister(f.name)


@pytest.mark.parametrize("name", families.names("regression"))
def test_every_family_in_the_table_builds_fits_persists_and_predicts(name):
    fam = families.family(name)
    spec = _spec(name, SMALL.get(name))
    frame = to_series_frame(_series(1, 150), spec)
    X = feature_matrix(frame, spec)
    fit = fit_series(X, frame.target, frame.time, spec, fast=False)
    assert fit.status == TRAINED, fit.reason
    model = fit.model
    assert [n for n, _ in model.steps] == (["scale", "model"] if fam.scaled else ["model"])
    data = persistence.dumps(model)
    header, _payload = persistence.read_header(data)
    assert header["format"] == (persistence.LINEAR if fam.linear else persistence.SKOPS)
    # Each family's own entry allows every type its files name.
    assert persistence.skops_types(sio.dumps(model)) <= COMMON_SKOPS_TYPES | fam.skops_types
    loaded = persistence.load_verified(data, persistence.sha256(data))
    rows = X[-8:]
    np.testing.assert_array_equal(loaded.predict(rows), model.predict(rows))
    np.testing.assert_allclose(predict_pipeline(loaded, rows), model.predict(rows), rtol=1e-12)
    assert (stack_linear([loaded]) is not None) == (fam.linear is not None)


@pytest.mark.parametrize("name", [n for n in families.names() if families.family(n).closed_form])
def test_closed_form_fits_equal_pipeline_fit(name):
    spec = _spec(name)
    frame = to_series_frame(_series(1, 150), spec)
    X = feature_matrix(frame, spec)
    fast = fit_series(X, frame.target, frame.time, spec)
    slow = fit_series(X, frame.target, frame.time, spec, fast=False)
    np.testing.assert_allclose(fast.model.predict(X[-8:]), slow.model.predict(X[-8:]), rtol=1e-9)


@pytest.mark.parametrize(("family", "fmt"), [(LASSO, "linear"), (ELASTIC_NET, "skops")])
def test_a_family_added_to_the_table_only_trains_persists_loads_and_scores(added, family, fmt):
    spec = _spec(family.name, {"alpha": 0.1})
    df = _series()
    results = train_local(pa.Table.from_pandas(df, preserve_index=False), spec, max_workers=1)
    assert (results["status"] == TRAINED).all(), results["reason"].tolist()
    assert set(results["model_format"]) == {fmt}

    models = {}
    for r in results.to_dict("records"):
        loaded = persistence.load_verified(r["model"], r["model_sha256"])
        assert type(loaded[-1]) is type(family.build({}))
        models[r["series_id"]] = SeriesModel(
            loaded, "v1", r["history_end"], np.array(r["history_tail"])
        )
    # The loaded model is the one training fitted and evaluated.
    one = df[(df["store"] == "S0000") & (df["product"] == "P000")]
    frame = to_series_frame(one, spec)
    X = feature_matrix(frame, spec)
    fit = fit_series(X, frame.target, frame.time, spec)
    series_id = spec.series_id(("S0000", "P000"))
    np.testing.assert_array_equal(
        models[series_id].model.predict(X[-8:]), fit.model.predict(X[-8:])
    )
    assert (stack_linear([m.model for m in models.values()]) is not None) == (fmt == "linear")

    # Scoring a series' own recent rows gives every row a prediction from that model.
    recent = df.groupby(["store", "product"]).tail(4)
    out = score(recent, spec, models.get)
    assert out["error"].isna().all(), out["message"].tolist()
    mine = (recent["store"] == "S0000").to_numpy() & (recent["product"] == "P000").to_numpy()
    np.testing.assert_allclose(
        out["prediction"].to_numpy()[mine], fit.model.predict(X[-4:]), rtol=1e-9
    )


def test_a_removed_family_is_refused_by_the_spec_and_by_loading():
    families.register(LASSO)
    try:
        spec = _spec(LASSO.name)
        frame = to_series_frame(_series(1), spec)
        fit = fit_series(feature_matrix(frame, spec), frame.target, frame.time, spec)
        data = persistence.dumps(fit.model)
    finally:
        families.unregister(LASSO.name)
    with pytest.raises(ValidationError, match="unknown model family 'test_lasso'"):
        _spec(LASSO.name)
    with pytest.raises(persistence.UntrustedModelError, match="unknown linear estimator 'Lasso'"):
        persistence.load_verified(data, persistence.sha256(data))
    assert "sklearn.linear_model._coordinate_descent.Lasso" not in families.trusted_skops_types()


def test_registration_refuses_clashes():
    with pytest.raises(ValueError, match="already registered"):
        families.register(families.family("ridge"))
    with pytest.raises(ValueError, match="already stores Ridge"):
        ridge = families.family("ridge")
        families.register(Family("ridge_again", ridge.build, linear=ridge.linear))
    with pytest.raises(ValueError, match="built in"):
        families.unregister("ridge")
    with pytest.raises(families.UnknownFamilyError, match="known families"):
        families.family("nope")


FORECAST_ONLY = families.names("baseline") + families.names("statistical")


@pytest.mark.parametrize("name", FORECAST_ONLY)
def test_a_forecast_only_family_has_a_kind_and_no_pipeline(name):
    fam = families.family(name)
    assert fam.kind in ("baseline", "statistical") and name not in families.names("regression")
    with pytest.raises(families.NotARegressionFamilyError, match=f"{name!r} is a {fam.kind}"):
        fam.pipeline({})


def test_the_spec_lists_candidate_families_and_the_metric_that_chooses():
    spec = DatasetSpec.model_validate(
        {
            **SALES.model_dump(),
            "model": {"family": "ridge", "candidates": ["ets", "naive", "ridge", "ets"]},
        }
    )
    assert spec.model.candidate_names == ("ridge", "ets", "naive")
    assert spec.model.select_by == "mae"
    assert SALES.model.candidate_names == ("ridge",)
    with pytest.raises(ValidationError, match="unknown model family 'nope'"):
        DatasetSpec.model_validate({**SALES.model_dump(), "model": {"candidates": ["nope"]}})
    with pytest.raises(ValidationError, match=r"model\.family 'ets' is a statistical family"):
        DatasetSpec.model_validate({**SALES.model_dump(), "model": {"family": "ets"}})
    with pytest.raises(ValidationError, match="select_by"):
        DatasetSpec.model_validate({**SALES.model_dump(), "model": {"select_by": "r2"}})
