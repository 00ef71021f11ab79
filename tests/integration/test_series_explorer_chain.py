"""The daily chain's report assets: the per-series explorer page and the registered set's plots."""

from __future__ import annotations

import json
import re

import dagster as dg
import numpy as np
import pytest
from as_of import as_of_instance

from mlops_assets.assets.evaluation import build_evaluation_asset
from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.assets.registration import build_registration_asset
from mlops_assets.assets.reports import build_explorer_asset
from mlops_assets.assets.training import build_training_asset
from mlops_assets.domain.model_sets import read_manifest, read_release, release_pointer
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.storage import LocalStorage
from resources.registry import MlflowRegistry
from resources.training_engine import LocalTrainingEngine

pytestmark = pytest.mark.integration
SALES = load_spec("sales")
AS_OF = "2026-11-17"


def materialize(home, assets):
    storage = LocalStorage(root=str(home / "storage"))
    registry = MlflowRegistry(
        tracking_uri=f"sqlite:///{home}/dev.db",
        artifact_root=(home / "storage" / "mlflow-artifacts").as_uri(),
    )
    result = dg.materialize(
        assets,
        resources={
            "storage": storage,
            "training": LocalTrainingEngine(max_workers=1),
            "registry": registry,
        },
        partition_key=AS_OF,
        instance=as_of_instance(SALES, AS_OF),
        raise_on_error=False,
    )
    return result, storage


def metadata(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_the_explorer_draws_every_series_of_the_release_on_the_rows_its_backtest_scored(tmp_path):
    storage = LocalStorage(root=str(tmp_path / "storage"))
    land_sales(storage, SALES, SalesShape(6, 120), n_drops=1)
    result, storage = materialize(
        tmp_path,
        [
            build_ingestion_asset(SALES),
            build_training_asset(SALES),
            build_evaluation_asset(SALES),
            build_registration_asset(SALES),
            build_explorer_asset(SALES),
        ],
    )
    assert result.success

    meta = metadata(result, "sales__series_explorer")
    name = f"reports/sales/series_explorer/{AS_OF}.html"
    assert meta["explorer"] == storage.uri(name) and meta["series"] == 6
    assert meta["explorer_preview"].startswith(
        f"**[Open the per-series explorer]({meta['explorer']})"
    )
    page = storage.read_text(name)
    assert meta["page_bytes"] == len(page.encode())
    text = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert text is not None
    data = json.loads(text.group(1))
    release = read_release(storage, release_pointer(SALES, AS_OF))
    assert data["title"] == {"as of": AS_OF, "release": release.ref.version, "gate": "passed"}
    manifest = {r["series_id"]: r for r in read_manifest(storage, release.ref).to_pylist()}
    assert sorted(manifest) == [r[0] for r in data["series"]]
    k, h = SALES.backtest.origins, SALES.horizon
    for row in data["series"]:
        rec = dict(zip(data["fields"], row, strict=True))
        scale, errors = (10.0**e for e in rec["exp"])
        actual = np.array(rec["actual"], float) * scale
        forecast = np.array(rec["forecast"], float).reshape(k, h) * scale
        # Each origin's forecast against the actuals it was scored on: the manifest's MAE by step.
        at = [len(actual) - h - (k - 1 - o) * SALES.backtest.step for o in range(k)]
        drawn = np.mean([np.abs(actual[a : a + h] - forecast[o]) for o, a in enumerate(at)], 0)
        np.testing.assert_allclose(drawn, manifest[rec["id"]]["mae_by_step"], atol=scale)
        assert data["strings"][rec["decision"]] == "no_champion"  # the first set: no champion
        assert data["strings"][rec["model"]] == manifest[rec["id"]]["family"]
        assert len(rec["intervals"]) == 2 and len(rec["intervals"][0]) == h
        assert errors <= scale

    registered = metadata(result, "sales__registered_model_set")
    assert registered["families"] == {"ridge": 6}
    for key in ("backtest_smape", "backtest_mae_by_step"):
        assert registered[key].startswith("![sales registered set: backtest")


def test_without_an_evaluated_set_the_explorer_says_what_to_run_first(tmp_path):
    result, _ = materialize(tmp_path, [build_explorer_asset(SALES)])
    assert not result.success
    failure = result.failure_data_for_node("sales__series_explorer")
    assert failure is not None
    assert "materialize sales/evaluation for that partition first" in str(
        failure.user_failure_data.description if failure.user_failure_data else failure.error
    )
