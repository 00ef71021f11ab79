"""Ridge statistics stored beside each ridge model when the spec asks for incremental fits."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from mlops_assets.domain.training_run import fresh_manifest
from mlops_assets.ml import persistence
from mlops_assets.ml.engines import result_schema, train_local
from mlops_assets.ml.ridge_stats import FIELDS, STATS_FILE, read_stats
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.ml.tables import series_fingerprints


def with_model(**model) -> DatasetSpec:
    spec = load_spec("sales")
    data = spec.model_dump()
    data["model"] = {**data["model"], **model}
    return DatasetSpec.model_validate(data)


def test_refit_needs_the_closed_form_ridge():
    with pytest.raises(ValidationError, match="model\\.refit needs"):
        with_model(family="linear", refit={"full_every_days": 7})
    assert with_model(refit={"full_every_days": 7}).model.refit.full_every_days == 7
    with pytest.raises(ValidationError, match="the ridge alone"):
        with_model(candidates=["ets"], refit={"full_every_days": 7})
    assert load_spec("sales").model.refit is not None  # the default chain is incremental


def test_a_spec_without_refit_records_no_statistics():
    spec = with_model(refit=None)
    names = {f.name for f in FIELDS}
    assert not names & set(result_schema(spec).names)
    table = sales_table(SalesShape(3, 100, seed=1))
    results = train_local(table, spec, max_workers=1)
    manifest, packs = fresh_manifest(results, series_fingerprints(table, spec), spec, "v", "f")
    assert "stats_artifact" not in manifest.column_names
    assert not [name for name, _ in packs if name.endswith(STATS_FILE)]


def test_each_ridge_model_has_statistics_that_solve_to_it():
    spec = with_model(refit={"full_every_days": 7})
    table = sales_table(SalesShape(10, 120, seed=4))
    results = train_local(table, spec, max_workers=1)
    manifest, packs = fresh_manifest(results, series_fingerprints(table, spec), spec, "v", "f")
    files = dict(packs)
    assert f"f/{STATS_FILE}" in files
    assert not {f.name for f in FIELDS} & set(manifest.column_names)
    state = read_stats(files[f"f/{STATS_FILE}"], spec)
    ids, stats = state.ids, state.moments
    assert state.full_refit_in == "v"
    with pytest.raises(ValueError, match="do not match"):
        read_stats(files[f"f/{STATS_FILE}"], with_model(params={"alpha": 2.0}))
    ridge = results[results["family"] == spec.model.family].set_index("series_id")
    assert sorted(ids) == sorted(ridge.index) and len(ids) > 0
    with_stats = manifest.filter(manifest["stats_artifact"].is_valid())
    assert sorted(with_stats["series_id"].to_pylist()) == sorted(ids)
    fit = stats.solve(spec.model.params["alpha"])
    for j, sid in enumerate(ids):
        model = persistence.loads(ridge.loc[sid, "model"])
        np.testing.assert_allclose(fit.coef[j], model[-1].coef_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fit.intercept[j], model[-1].intercept_, rtol=1e-9)
        np.testing.assert_allclose(fit.scale[j], model[0].scale_, rtol=1e-9)
        assert fit.n[j] == ridge.loc[sid, "n_train"]
