"""The training asset in a Dagster run: all series, chosen ones, changed ones, one partition."""

import math

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from as_of import as_of_instance

from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.assets.training import build_training_asset
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.model_sets import latest_pointer, read_manifest, read_pointer
from mlops_assets.domain.sample_drops import land_diabetes, land_sales
from mlops_assets.ml import modelset, persistence
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import IntervalSpec, load_spec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import LocalStorage
from resources.training_engine import LocalTrainingEngine

pytestmark = pytest.mark.integration
SALES, DIABETES = load_spec("sales"), load_spec("diabetes")


def run(storage, spec, day, config=None, instance=None):
    assets = [build_ingestion_asset(spec), build_training_asset(spec)]
    run_config = {"ops": {f"{spec.name}__candidate_models": {"config": config}}} if config else None
    result = dg.materialize(
        assets,
        resources={"storage": storage, "training": LocalTrainingEngine(max_workers=2)},
        partition_key=day,
        run_config=run_config,
        instance=as_of_instance(spec, day, instance=instance),
    )
    assert result.success
    meta = result.asset_materializations_for_node(f"{spec.name}__candidate_models")[0].metadata
    pointer = read_pointer(storage, latest_pointer(spec))
    return {k: v.value for k, v in meta.items()}, read_manifest(storage, pointer)


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(root=str(tmp_path))


def test_all_series_are_trained_packed_and_loadable(storage):
    land_sales(storage, SALES, SalesShape(12, 120), n_drops=1)
    meta, manifest = run(storage, SALES, "2026-11-17")

    assert meta["series_trained"] == 12 and meta["series_total"] == 12
    assert meta["median_smape"] < meta["median_naive_smape"]
    # Both baselines the champion gate uses, scored on each series' holdout rows.
    assert meta["median_smape"] < meta["median_seasonal_naive_smape"]
    assert meta["series_beating_seasonal_naive"] >= 10
    for b in ("naive", "seasonal_naive"):
        assert pc.all(pc.is_finite(manifest[f"{b}_smape"])).as_py()
    assert meta["backtest_smape"].startswith("![")
    assert meta["backtest_mae_by_step"].startswith("![")
    assert meta["families"] == {"ridge": 12} and meta["series_fallback"] == 0
    assert manifest.num_rows == 12
    row = manifest.filter(pc.equal(manifest["series_id"], "store=S0000/product=P005")).to_pylist()[
        0
    ]
    data = storage.read_range(row["artifact"], row["offset"], row["length"])
    model = persistence.load_verified(data, row["model_sha256"])
    assert hasattr(model, "predict")
    # Two seasons (the fallback chain forecasts from the history) and the backtest window.
    assert row["history_end"] == "2026-11-16" and len(row["history_tail"]) == 104 + SALES.holdout


def test_a_backfilled_as_of_date_trains_on_the_data_known_then(storage):
    land_sales(storage, SALES, SalesShape(3, 120), n_drops=1)
    run(storage, SALES, "2026-11-17")
    result = dg.materialize(
        [build_training_asset(SALES)],
        resources={"storage": storage, "training": LocalTrainingEngine(max_workers=1)},
        partition_key="2026-10-01",
        instance=as_of_instance(SALES, "2026-10-01"),
    )
    assert result.success
    pointer = read_pointer(storage, latest_pointer(SALES))
    assert pointer.version.startswith("2026-10-01/")
    manifest = read_manifest(storage, pointer)
    assert set(manifest["history_end"].to_pylist()) == {"2026-09-28"}


def test_chosen_series_only_are_retrained_and_the_rest_carried(storage):
    land_sales(storage, SALES, SalesShape(6, 100), n_drops=1)
    first, m1 = run(storage, SALES, "2026-11-17")
    chosen = ["store=S0000/product=P001", "store=S0000/product=P004"]
    meta, m2 = run(storage, SALES, "2026-11-18", {"series": chosen})

    assert meta["series_trained"] == 2 and meta["series_carried"] == 4
    v1, v2 = first["version"], meta["version"]
    trained_in = dict(zip(m2["series_id"].to_pylist(), m2["trained_in"].to_pylist(), strict=True))
    assert {s for s, v in trained_in.items() if v == v2} == set(chosen)
    assert {s for s, v in trained_in.items() if v == v1} == set(m1["series_id"].to_pylist()) - set(
        chosen
    )
    # Carried entries point at the first set's packs, which still verify.
    carried = m2.filter(pc.equal(m2["trained_in"], v1)).to_pylist()[0]
    persistence.load_verified(
        storage.read_range(carried["artifact"], carried["offset"], carried["length"]),
        carried["model_sha256"],
    )


def test_unknown_chosen_series_fail_the_run_with_what_ids_look_like(storage):
    land_sales(storage, SALES, SalesShape(2, 60), n_drops=1)
    with pytest.raises(dg.Failure, match=r"unknown series \['store=X/product=Y'\]"):
        run(storage, SALES, "2026-11-17", {"series": ["store=X/product=Y"]})


def test_changed_only_retrains_just_the_series_whose_data_changed(storage):
    land_sales(storage, SALES, SalesShape(5, 100), n_drops=1)
    run(storage, SALES, "2026-11-17")
    # Correct two series' last week: a new drop touching only them.
    curated = CuratedStore(storage, SALES).read()
    last = curated.filter(pc.equal(curated["week"], pc.max(curated["week"])))
    two = last.filter(pc.is_in(last["product"], pa.array(["P000", "P003"])))
    fixed = two.set_column(3, "sales", pc.add(two["sales"], 0.25))
    from mlops_assets.ml.sample_data import to_bytes

    storage.write_bytes(
        "landing/sales/fix.parquet", to_bytes(decode_dictionaries(fixed), "parquet")
    )
    meta, manifest = run(storage, SALES, "2026-11-18", {"changed_only": True})

    assert meta["series_trained"] == 2 and meta["series_carried"] == 3
    retrained = manifest.filter(pc.equal(manifest["trained_in"], meta["version"]))
    assert sorted(retrained["series_id"].to_pylist()) == [
        "store=S0000/product=P000",
        "store=S0000/product=P003",
    ]
    # Nothing changed since: nothing to train, the set carries over whole.
    meta, manifest = run(storage, SALES, "2026-11-19", {"changed_only": True})
    assert meta["series_trained"] == 0 and manifest.num_rows == 5


def test_too_short_series_are_skipped_with_a_reason_and_the_others_trained(storage):
    """Without a fallback chain (the bundled spec has one), a series ridge cannot serve has no
    model, and its reason says why."""
    spec = SALES.model_copy(update={"fallback": []})
    land_sales(storage, spec, SalesShape(3, 120), n_drops=1)
    from mlops_assets.ml.sample_data import sales_table, to_bytes

    young = sales_table(SalesShape(300, 20, seed=9)).slice(20 * 299, 20)  # one 20-week series
    storage.write_bytes(
        "landing/sales/young.parquet", to_bytes(decode_dictionaries(young), "parquet")
    )
    meta, manifest = run(storage, spec, "2026-11-17")
    assert meta["series_trained"] == 3 and meta["series_skipped"] == 1
    skipped = manifest.filter(pc.equal(manifest["status"], "skipped")).to_pylist()[0]
    assert skipped["artifact"] is None and "history" in skipped["reason"]
    # Under a season of history (lag_52 never complete) the model has no backtest pair, so no
    # baseline is scored either (they are scored on the model's pairs or not at all).
    assert skipped["n_holdout"] == 0
    for b in ("naive", "seasonal_naive"):
        assert skipped[f"{b}_smape"] is None or math.isnan(skipped[f"{b}_smape"])


def test_with_a_fallback_chain_every_series_gets_a_model_and_intervals(storage):
    """The zoo, the fallback chain and intervals through the training asset: the young series
    is served by the chain's method, stored as parameters and loadable like any model."""
    spec = SALES.model_copy(
        update={
            "fallback": ["seasonal_naive", "naive", "mean"],
            "intervals": IntervalSpec(levels=[80, 95]),
            "model": SALES.model.model_copy(update={"candidates": ["theta"], "refit": None}),
        }
    )
    # Enough series for a pooled 95% quantile (19 residuals per step) when out of fold.
    land_sales(storage, spec, SalesShape(24, 120), n_drops=1)
    from mlops_assets.ml.sample_data import sales_table, to_bytes

    # One 10-week series: 2 weeks before the backtest window, too few for ridge or theta.
    young = sales_table(SalesShape(300, 20, seed=9)).slice(20 * 299 + 10, 10)
    storage.write_bytes(
        "landing/sales/young.parquet", to_bytes(decode_dictionaries(young), "parquet")
    )
    meta, manifest = run(storage, spec, "2026-11-17")
    assert (meta["series_trained"], meta["series_fallback"], meta["series_skipped"]) == (24, 1, 0)
    assert sum(meta["families"].values()) == 25 and meta["families"]["naive"] == 1
    assert 0 < meta["interval_coverage_80"] <= meta["interval_coverage_95"] <= 1
    rows = {r["series_id"]: r for r in manifest.to_pylist()}
    young_row = next(r for r in rows.values() if r["status"] == "fallback")
    assert young_row["family"] == "naive" and "fell back to naive" in young_row["reason"]
    data = storage.read_range(young_row["artifact"], young_row["offset"], young_row["length"])
    model = persistence.load_verified(data, young_row["model_sha256"])
    assert model.family == "naive"
    for r in rows.values():
        assert len(r["interval_80"]) == spec.horizon and len(r["interval_95"]) == spec.horizon
        assert all(w95 >= w80 for w80, w95 in zip(r["interval_80"], r["interval_95"], strict=True))
        assert r["runner_up"] is None or r["runner_up"] != r["family"]


def test_diabetes_one_partition_trains_end_to_end(storage):
    land_diabetes(storage, DIABETES, n_drops=2)
    meta, manifest = run(storage, DIABETES, "2026-11-17")
    assert meta["series_total"] == 1 and meta["series_trained"] == 1
    row = manifest.to_pylist()[0]
    assert row["series_id"] == "cohort=all"
    assert row["mae"] < row["naive_mae"]
    assert row["mae"] < row["seasonal_naive_mae"]  # daily: a season of 7 days
    assert modelset.counts(manifest) == {"trained": 1}
