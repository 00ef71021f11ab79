"""The Spark engine runs the same per-series function as the local engine, with equal results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from as_of import as_of_instance

from mlops_assets.ml import persistence
from mlops_assets.ml.engines import TIMING_COLUMNS, train_local, train_spark
from mlops_assets.ml.features import feature_matrix, to_series_frame
from mlops_assets.ml.fitting import FALLBACK, TRAINED
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.spark]


@pytest.fixture(scope="module")
def spec():
    return load_spec("sales")


@pytest.fixture(scope="module")
def sales_frame() -> pd.DataFrame:
    """Nine regular series and one too short for ridge (the fallback chain serves it)."""
    df = sales_table(SalesShape(10, 140)).to_pandas().astype({"store": str, "product": str})
    short = df["product"] == "P009"
    return df[~short | (df.groupby("product").cumcount(ascending=False) < 40)]


@pytest.fixture(scope="module")
def both(spark, spec, sales_frame):
    local = train_local(sales_frame, spec, max_workers=1)
    remote = train_spark(spark.createDataFrame(sales_frame), spec).toPandas()
    return local, remote


def _comparable(results: pd.DataFrame) -> pd.DataFrame:
    out = results.drop(columns=list(TIMING_COLUMNS)).sort_values("series_id")
    out["model"] = out["model"].map(lambda b: None if b is None else bytes(b))
    for name in ("reason", "family", "runner_up", "weights", "combine_prior"):  # None or NaN
        out[name] = out[name].astype(object).where(out[name].notna(), None)
    return out.reset_index(drop=True).astype({"n_train": "int64", "n_holdout": "int64"})


def test_spark_and_local_give_identical_records(both):
    local, remote = both
    assert len(remote) == 10
    assert list(remote.columns) == list(local.columns)
    pd.testing.assert_frame_equal(_comparable(remote), _comparable(local), check_dtype=False)
    statuses = remote.set_index("series_id")["status"]
    assert statuses["store=S0000/product=P009"] == FALLBACK  # served by the fallback chain
    assert (statuses.drop("store=S0000/product=P009") == TRAINED).all()


def test_a_combined_run_is_identical_on_spark_and_locally(spark, spec, sales_frame):
    """``choice: combine`` estimates its panel prior once per run (on the driver for Spark):
    each series' weights and combined model are the same as the local engine's."""
    model = spec.model.model_copy(
        update={
            "candidates": ["seasonal_naive", "naive", "mean"],
            "choice": "combine",
            "refit": None,
        }
    )
    combined = spec.model_copy(update={"model": model})
    local = train_local(sales_frame, combined, max_workers=1)
    remote = train_spark(spark.createDataFrame(sales_frame), combined).toPandas()
    assert (local.family == "combination").sum() >= 5
    pd.testing.assert_frame_equal(_comparable(remote), _comparable(local), check_dtype=False)


def test_spark_and_local_models_predict_identically(both, spec, sales_frame):
    local, remote = both
    frame = to_series_frame(sales_frame, spec)
    X = feature_matrix(frame, spec)
    local_by_id = local.set_index("series_id")
    compared = 0
    for row in remote.itertuples():
        if row.status != TRAINED:
            continue
        mine = local_by_id.loc[row.series_id]
        spark_model = persistence.load_verified(bytes(row.model), row.model_sha256)
        local_model = persistence.load_verified(mine["model"], mine["model_sha256"])
        i = frame.keys.index(tuple(row.series_id.replace("store=", "").split("/product=")))
        rows = X[frame.offsets[i] : frame.offsets[i + 1]][-20:]
        np.testing.assert_array_equal(spark_model.predict(rows), local_model.predict(rows))
        compared += 1
    assert compared == 9


def test_spark_trains_only_the_chosen_series(spark, spec, sales_frame):
    wanted = ["store=S0000/product=P002", ("S0000", "P005")]
    out = train_spark(spark.createDataFrame(sales_frame), spec, series=wanted).toPandas()
    assert sorted(out["series_id"]) == ["store=S0000/product=P002", "store=S0000/product=P005"]
    assert (out["status"] == TRAINED).all()


def test_the_spark_engine_resource_trains_the_daily_asset_like_the_local_engine(spark, tmp_path):
    """``MLOPS_TRAINING_ENGINE=spark``: the training asset on Spark, same models as locally."""
    import dagster as dg

    from mlops_assets.assets.ingestion import build_ingestion_asset
    from mlops_assets.assets.training import build_training_asset
    from mlops_assets.domain.model_sets import latest_pointer, read_manifest, read_pointer
    from mlops_assets.domain.sample_drops import land_sales
    from mlops_assets.ml.sample_data import SalesShape
    from mlops_assets.ml.spec import load_spec
    from mlops_assets.storage import LocalStorage
    from resources.training_engine import LocalTrainingEngine, SparkTrainingEngine, local_spark

    sales = load_spec("sales")
    shas = {}
    for name, engine in {
        "spark": SparkTrainingEngine(pyspark=local_spark()),  # reuses the running session
        "local": LocalTrainingEngine(max_workers=1),
    }.items():
        storage = LocalStorage(root=str(tmp_path / name))
        land_sales(storage, sales, SalesShape(6, 90), n_drops=1)
        result = dg.materialize(
            [build_ingestion_asset(sales), build_training_asset(sales)],
            resources={"storage": storage, "training": engine},
            partition_key="2026-11-17",
            instance=as_of_instance(sales, "2026-11-17"),
        )
        assert result.success
        meta = result.asset_materializations_for_node("sales__candidate_models")[0].metadata
        assert meta["engine"].value == name
        manifest = read_manifest(storage, read_pointer(storage, latest_pointer(sales)))
        shas[name] = dict(
            zip(
                manifest["series_id"].to_pylist(), manifest["model_sha256"].to_pylist(), strict=True
            )
        )
    assert shas["spark"] == shas["local"] and len(shas["local"]) == 6
