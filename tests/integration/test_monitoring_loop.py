"""The closed monitoring loop: train, batch-score the coming weeks, ingest their actuals with
one series deliberately degraded, measure production accuracy, and the sensor retrains that
series only (and alerts)."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from as_of import as_of_instance
from http_receiver import Receiver

from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.assets.monitoring import build_forecast_accuracy_asset
from mlops_assets.assets.training import build_training_asset
from mlops_assets.domain import batch_layout
from mlops_assets.domain.model_sets import latest_pointer, read_pointer
from mlops_assets.jobs.drop_scoring import model_set_reader, score_drop_rows, write_parquet
from mlops_assets.ml.drops import ROW
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import DriftBands, MonitoringSpec, load_spec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import LocalStorage
from resources.alerts import TeamsAlerts
from resources.training_engine import LocalTrainingEngine
from sensors.degradation import make_degradation_sensor, retrain_run_config

pytestmark = pytest.mark.integration
# A wide margin both ways: healthy series stay far below it over 4 points, the degraded one
# (actuals shifted by 12 backtest MAEs) far above.
# The degraded actuals must reach the curated data: drift bands wide enough to let them in.
_SALES = load_spec("sales")
_LOOSE = _SALES.validation.model_copy(
    update={"drift": DriftBands(warn_sigmas=1000.0, error_sigmas=2000.0)}
)
SPEC = _SALES.model_copy(
    update={
        "monitoring": MonitoringSpec(degraded_ratio=4.0, min_points=4),
        "validation": _LOOSE,
    }
)
SHAPE = SalesShape(4, 124, seed=3)
TRAIN_DAY, MEASURE_DAY = "2026-10-20", "2026-11-17"
BAD = "store=S0000/product=P001"


def _land(storage, name: str, table: pa.Table) -> None:
    write_parquet(storage, f"landing/{SPEC.name}/{name}.parquet", table)


def _materialize(assets, storage, day, instance, run_config=None):
    result = dg.materialize(
        assets,
        resources={
            "storage": storage,
            "prod_storage": storage,
            "training": LocalTrainingEngine(max_workers=1),
        },
        partition_key=day,
        instance=as_of_instance(SPEC, day, instance=instance),
        run_config=run_config,
    )
    assert result.success
    return result


def test_a_degraded_series_is_retrained_alone(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    full = decode_dictionaries(sales_table(SHAPE))
    weeks = pc.unique(full[SPEC.time]).sort()
    cut = weeks[120]
    history = full.filter(pc.less(full[SPEC.time], cut))
    future = full.filter(pc.greater_equal(full[SPEC.time], cut))
    ingest, train = build_ingestion_asset(SPEC), build_training_asset(SPEC)
    accuracy = build_forecast_accuracy_asset(SPEC)
    instance = dg.DagsterInstance.ephemeral()
    _land(storage, "history", history)
    _materialize([ingest, train], storage, TRAIN_DAY, instance)

    # The production set batch-scores the four coming weeks (the scoring job's own functions).
    ref = read_pointer(storage, latest_pointer(SPEC))
    requests = future.drop_columns([SPEC.target])
    requests = requests.append_column(ROW, pa.array(np.arange(requests.num_rows)))
    scored = score_drop_rows(requests, SPEC, model_set_reader(ref, storage))
    assert {"model_set_version", "family", "history_end"} <= set(scored.column_names)
    # Each row carries its own series' family and history end from the manifest.
    listed = pq.read_table(storage.local_root() / f"{ref.folder}/manifest.parquet").to_pandas()
    listed = listed.set_index("series_id")
    got = scored.select(["series_id", "family", "history_end"]).to_pandas().astype(str)
    assert (got["family"] == listed.loc[got["series_id"], "family"].astype(str).values).all()
    assert (
        got["history_end"] == listed.loc[got["series_id"], "history_end"].astype(str).values
    ).all()
    assert set(scored["model_set_version"].to_pylist()) == {ref.version}
    write_parquet(storage, batch_layout.predictions_name(SPEC.name, "weeks.parquet@e1"), scored)

    # Their actuals arrive; one series' are far off what its model could have known.
    manifest = pq.read_table(storage.local_root() / f"{ref.folder}/manifest.parquet")
    bad_mae = manifest.filter(pc.equal(manifest["series_id"], BAD))["mae"][0].as_py()
    ids = pc.binary_join_element_wise("store=", future["store"], "/product=", future["product"], "")
    shift = pc.if_else(pc.equal(ids, BAD), 12 * bad_mae, 0.0)
    _land(
        storage,
        "weeks",
        future.set_column(
            future.schema.get_field_index(SPEC.target),
            SPEC.target,
            pc.add(future[SPEC.target], shift),
        ),
    )
    _materialize([ingest], storage, MEASURE_DAY, instance)
    result = _materialize([accuracy], storage, MEASURE_DAY, instance)
    meta = result.asset_materializations_for_node("sales__forecast_accuracy")[0].metadata
    assert meta["points_with_actuals"].value == 16 and meta["series_measured"].value == 4
    assert meta["degraded_series"].value == [BAD]
    assert meta["production_mae_by_step"].value.startswith("![")
    assert 0 <= meta["coverage_80"].value <= 1
    by_group = pq.read_table(
        storage.local_root() / f"monitoring/sales/forecast_accuracy/{MEASURE_DAY}/accuracy.parquet"
    ).to_pandas()
    assert sorted(by_group["step"].unique()) == [1, 2, 3, 4]
    assert set(by_group["model_set_version"]) == {ref.version}

    daily = dg.define_asset_job("sales_daily_retrain", selection=[ingest, train])
    sensor = make_degradation_sensor(SPEC, daily, accuracy.key)
    with Receiver() as rx:
        alerts = TeamsAlerts(webhook_url=rx.url, ui_url="http://ui.test")
        ctx = dg.build_sensor_context(instance=instance, resources={"alerts": alerts})
        tick = sensor(ctx)
        assert BAD in rx.text() and "degraded" in rx.text()
    (request,) = tick.run_requests
    assert request.run_config == retrain_run_config(SPEC, [BAD])
    assert request.partition_key == MEASURE_DAY and request.run_key
    # The date the retrain runs for is (re)added to the as-of partitions with the request.
    (added,) = tick.dynamic_partitions_requests
    assert added.partitions_def_name == "sales_as_of" and list(added.partition_keys) == [
        MEASURE_DAY
    ]
    # The next tick sees nothing new: no second run, no second alert.
    again = sensor(
        dg.build_sensor_context(instance=instance, cursor=tick.cursor, resources={"alerts": alerts})
    )
    assert not getattr(again, "run_requests", None)

    retrain = _materialize([ingest, train], storage, MEASURE_DAY, instance, request.run_config)
    trained = retrain.asset_materializations_for_node("sales__candidate_models")[0].metadata
    assert trained["series_trained"].value == 1 and trained["series_carried"].value == 3
