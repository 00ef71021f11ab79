"""Backfilling past years: as-of partitions from the spec's history_start; a past as-of date
curates only the drops that had arrived by then and trains on rows up to it."""

from datetime import date

import dagster as dg
import pyarrow.compute as pc
import pytest

from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.assets.training import build_training_asset
from mlops_assets.definitions import daily_job_name, dataset_definitions
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.model_sets import candidate_pointer, read_manifest, read_pointer
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.partitions import DEFAULT_HISTORY_START, as_of_partitions
from mlops_assets.profiles import resources_for
from mlops_assets.storage import LocalStorage
from resources.training_engine import LocalTrainingEngine

pytestmark = pytest.mark.integration

OLD = load_spec("sales").model_copy(update={"history_start": date(2018, 1, 1)})
# 80 weeks ending Monday 2019-06-03: a history drop until 2019-05-20, then one drop a week.
SHAPE = SalesShape(4, 80, seed=1, end="2019-06-03")


def test_partitions_start_at_the_specs_history_start_or_the_default(tmp_path):
    assert as_of_partitions(OLD).get_first_partition_key() == "2018-01-01"
    default = as_of_partitions(load_spec("sales"))
    assert default.get_first_partition_key() == DEFAULT_HISTORY_START.isoformat()
    # The daily job's partitions are the spec's; the schedule still targets today's date.
    defs = dg.Definitions.merge(
        dataset_definitions(OLD), dg.Definitions(resources=resources_for("local", tmp_path))
    )
    job = defs.resolve_job_def(daily_job_name(OLD))
    assert job.partitions_def == as_of_partitions(OLD)
    today = as_of_partitions(OLD).get_last_partition_key()
    assert today is not None and date.fromisoformat(today) >= date(2026, 1, 1)


def _run(storage, day, instance):
    result = dg.materialize(
        [build_ingestion_asset(OLD), build_training_asset(OLD)],
        resources={"storage": storage, "training": LocalTrainingEngine(max_workers=1)},
        partition_key=day,
        instance=instance,
    )
    assert result.success
    curated = result.asset_materializations_for_node("sales__curated")[0].metadata
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    manifest = read_manifest(storage, read_pointer(storage, candidate_pointer(OLD, day)))
    return {k: v.value for k, v in curated.items()}, checks, manifest


def test_a_past_as_of_date_curates_and_trains_only_what_was_known_then(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    land_sales(storage, OLD, SHAPE, n_drops=3)  # the whole history is landed before the runs
    instance = dg.DagsterInstance.ephemeral()

    meta, checks, manifest = _run(storage, "2019-05-27", instance)
    assert meta["drops_consumed"] == 2 and meta["drops_deferred"] == 1
    assert meta["rows_quarantined"] == 0 and meta["time_max"] == "2019-05-27"
    # Freshness is judged against the as-of date (2019), not today: it passes.
    assert checks["freshness"] and all(checks.values())
    assert set(manifest["history_end"].to_pylist()) == {"2019-05-27"}
    times = CuratedStore(storage, OLD).read(columns=["week"])["week"]
    assert pc.max(times).as_py() == date(2019, 5, 27)

    meta, checks, manifest = _run(storage, "2019-06-03", instance)
    assert meta["drops_consumed"] == 1 and meta["drops_deferred"] == 0
    assert meta["time_max"] == "2019-06-03" and all(checks.values())
    assert set(manifest["history_end"].to_pylist()) == {"2019-06-03"}


def test_rerunning_an_earlier_date_after_a_later_one_trains_on_rows_up_to_it(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    land_sales(storage, OLD, SHAPE, n_drops=3)
    instance = dg.DagsterInstance.ephemeral()
    _run(storage, "2019-06-03", instance)  # everything curated
    meta, _, manifest = _run(storage, "2019-05-21", instance)
    assert meta["drops_consumed"] == 0
    assert set(manifest["history_end"].to_pylist()) == {"2019-05-20"}
