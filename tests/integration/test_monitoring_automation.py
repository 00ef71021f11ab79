"""The monitoring loop starts itself: a day's accuracy is requested once its curated actuals
change (the eager condition of ``<ds>/forecast_accuracy``, evaluated by the
``mlops_monitoring_automation`` sensor), and not again until they change again."""

from __future__ import annotations

import dagster as dg
import pytest
from as_of import as_of_instance

from mlops_assets.assets.monitoring import accuracy_key
from mlops_assets.definitions import build_definitions
from mlops_assets.ml.spec import load_spec
from mlops_assets.profiles import resources_for

pytestmark = pytest.mark.integration

DAY, LATER = "2026-11-16", "2026-11-23"


def test_accuracy_follows_its_curated_day(tmp_path):
    spec = load_spec("sales")
    defs = build_definitions([spec], resources_for("local", tmp_path))
    sensor = defs.resolve_sensor_def("mlops_monitoring_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    key, curated = accuracy_key(spec), dg.AssetKey([spec.name, "curated"])
    instance = as_of_instance(spec, DAY, LATER)
    selection = dg.AssetSelection.assets(key)

    def evaluate(cursor=None):
        return dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=cursor
        )

    result = evaluate()
    assert result.total_requested == 0  # nothing curated yet
    instance.report_runless_asset_event(dg.AssetMaterialization(curated, partition=DAY))
    result = evaluate(result.cursor)
    assert result.get_requested_partitions(key) == {DAY}
    instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=DAY))
    result = evaluate(result.cursor)
    assert result.total_requested == 0  # measured; the actuals have not changed since
    instance.report_runless_asset_event(dg.AssetMaterialization(curated, partition=LATER))
    result = evaluate(result.cursor)
    assert result.get_requested_partitions(key) == {LATER}
