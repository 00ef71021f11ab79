"""Backfilling past years: the as-of axis holds the dates that were added (no earlier than the
spec's history_start); a past as-of date curates only the drops that had arrived by then and
trains on rows up to it."""

import os
import subprocess
import sys
from datetime import date

import dagster as dg
import pyarrow.compute as pc
import pytest
from as_of import as_of_instance

from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.assets.training import build_training_asset
from mlops_assets.definitions import daily_job_name, dataset_definitions
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.model_sets import candidate_pointer, read_manifest, read_pointer
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.partitions import (
    DEFAULT_HISTORY_START,
    AsOfError,
    add_as_of_dates,
    as_of_dates,
    as_of_key,
    as_of_partitions,
)
from mlops_assets.profiles import resources_for
from mlops_assets.storage import LocalStorage
from resources.training_engine import LocalTrainingEngine

pytestmark = pytest.mark.integration

OLD = load_spec("sales").model_copy(update={"history_start": date(2018, 1, 1)})
# 80 weeks ending Monday 2019-06-03: a history drop until 2019-05-20, then one drop a week.
SHAPE = SalesShape(4, 80, seed=1, end="2019-06-03")


def test_the_as_of_axis_holds_only_the_dates_that_were_added(tmp_path):
    defs = dg.Definitions.merge(
        dataset_definitions(OLD), dg.Definitions(resources=resources_for("local", tmp_path))
    )
    job = defs.resolve_job_def(daily_job_name(OLD))
    assert job.partitions_def == as_of_partitions(OLD)
    assert as_of_partitions(OLD).name == "sales_as_of"
    instance = dg.DagsterInstance.ephemeral()
    assert instance.get_dynamic_partitions("sales_as_of") == []
    mondays = as_of_dates(OLD, "2019-05-01", "2019-06-03", "W-MON")
    assert mondays == ["2019-05-06", "2019-05-13", "2019-05-20", "2019-05-27", "2019-06-03"]
    assert add_as_of_dates(instance, OLD, mondays) == mondays
    assert add_as_of_dates(instance, OLD, ["2019-06-03", "2019-06-04"]) == ["2019-06-04"]
    assert instance.get_dynamic_partitions("sales_as_of") == [*mondays, "2019-06-04"]


def test_as_of_dates_are_validated_with_what_to_do():
    with pytest.raises(AsOfError, match=r"'2019-6-3' is not a date YYYY-MM-DD; add one with"):
        as_of_key(OLD, "2019-6-3")
    with pytest.raises(AsOfError, match="mlops backfill --dataset sales"):
        add_as_of_dates(dg.DagsterInstance.ephemeral(), OLD, ["yesterday"])
    # The spec's history_start (or the default) bounds a backfill.
    with pytest.raises(AsOfError, match="before sales's history_start 2018-01-01"):
        as_of_dates(OLD, "2017-12-31")
    default = load_spec("sales")
    with pytest.raises(AsOfError, match=f"history_start {DEFAULT_HISTORY_START}"):
        as_of_dates(default, "2019-12-31")
    with pytest.raises(AsOfError, match="after --to"):
        as_of_dates(OLD, "2019-06-03", "2019-06-01")
    with pytest.raises(AsOfError, match="not a pandas frequency"):
        as_of_dates(OLD, "2019-06-03", "2019-07-01", "fortnightly")
    # A run for a key that is no date fails with the same message, before any work.
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("sales_as_of", ["latest"])
    result = dg.materialize(
        [build_ingestion_asset(OLD)],
        resources={"storage": LocalStorage(root="unused")},
        partition_key="latest",
        instance=instance,
        raise_on_error=False,
    )
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "as-of partition 'latest' is not a date YYYY-MM-DD" in str(
        failure.event_specific_data.error.message
    )


def _run(storage, day, instance):
    result = dg.materialize(
        [build_ingestion_asset(OLD), build_training_asset(OLD)],
        resources={"storage": storage, "training": LocalTrainingEngine(max_workers=1)},
        partition_key=day,
        instance=as_of_instance(OLD, day, instance=instance),
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


def test_mlops_backfill_adds_the_dates_and_runs_them_in_order(tmp_path):
    """The command a user runs: add past Mondays, then run them (one run per date)."""
    storage = LocalStorage(root=str(tmp_path / "storage"))
    land_sales(storage, load_spec("sales"), SalesShape(3, 70, seed=2), n_drops=3)
    env = {**os.environ, "MLOPS_HOME": str(tmp_path), "MLOPS_PROFILE": "local"}
    env.pop("DAGSTER_HOME", None)

    def mlops(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mlops_assets.cli", "backfill", "--dataset", "sales", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    added = mlops("--from", "2026-10-01", "--to", "2026-10-31", "--every", "W-MON")
    assert added.returncode == 0, added.stderr
    assert "4 as-of date(s) 2026-10-05 .. 2026-10-26 (4 new) in partitions sales_as_of" in (
        added.stdout
    )
    ran = mlops("--from", "2026-11-09", "--to", "2026-11-16", "--every", "W-MON", "--run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [ln for ln in ran.stdout.splitlines() if ln.startswith("sales 2026")] == [
        "sales 2026-11-09:",
        "sales 2026-11-16:",
    ]
    wrong = mlops("--from", "2026-11-9")
    assert wrong.returncode == 1
    assert "as-of partition '2026-11-9' is not a date YYYY-MM-DD" in wrong.stderr
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        days = instance.get_dynamic_partitions("sales_as_of")
        mondays = ["2026-10-05", "2026-10-12", "2026-10-19", "2026-10-26"]
        assert days == [*mondays, "2026-11-09", "2026-11-16"]
        key = dg.AssetKey(["sales", "registered_model_set"])
        assert instance.get_materialized_partitions(key) == {"2026-11-09", "2026-11-16"}
