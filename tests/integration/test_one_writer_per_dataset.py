"""One writer per dataset (issue 18, item 2): the scenario, and the local instance's settings.

``check_one_writer_per_dataset`` runs on a real instance (``test_postgres_instance.py`` runs it
on the deploy instance: QueuedRunCoordinator, pools held for whole runs, the bundled datasets'
pools created; the test here checks the local instance has the same); the code location is the project's, served
by a gRPC code server as in ``dagster dev``. Runs are launched through the webserver's own
GraphQL mutations (the Launchpad's ``launchRun`` and the asset graph's "Materialize all…
Launch backfill", ``launchPartitionBackfill``), all before the queue is served; then the
daemon's backfill and run-queue iterations are ticked here until every run has ended, each
run executing in its own process (``DefaultRunLauncher``).

- sales daily run (as-of 2026-11-16, the job the schedule launches, with its ``dataset`` tag);
- diabetes curated data (same date) materialized from the asset graph: another dataset, must
  not wait;
- an asset backfill of sales' curated data for 2026-11-15, created by the backfill daemon as a
  run of the implicit asset job without any ``dataset`` tag: it holds ``sales_writer`` through
  its step, so it must wait until the daily run has ended.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest
from as_of import as_of_instance

from mlops_assets.domain.sample_drops import land_diabetes, land_sales
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.pools import writer_pool
from mlops_assets.profiles import ensure_dagster_home, storage_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
AS_OF, EARLIER = "2026-11-16", "2026-11-15"
LOCATION = "mlops_assets"
# Three run processes on a 2-core CI machine: about 60 s here, half as much again on CI.
DEADLINE_S = 240
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


@contextlib.contextmanager
def project_workspace(mlops_home: Path, dagster_home: Path) -> Iterator:
    """The project's code location (a gRPC code server, as ``dagster dev`` starts it) on the
    instance in ``dagster_home``, with small sales and diabetes drops landed under
    ``mlops_home``. The caller sets ``MLOPS_HOME`` and ``DAGSTER_HOME`` for the processes."""
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget

    storage = storage_for("local", mlops_home).process_config_and_initialize()
    land_sales(storage, load_spec("sales"), SalesShape(4, 60, seed=0), n_drops=1)
    land_diabetes(storage, load_spec("diabetes"), n_drops=1)
    target = ModuleTarget(
        module_name="mlops_assets.definitions",
        attribute=None,
        working_directory=str(ROOT),
        location_name=LOCATION,
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            with create_test_daemon_workspace_context(target, instance) as context:
                yield context
    finally:
        # The code server stops on its own once told to; wait for it (and any run process)
        # here, while the instance's database is still up, and end what outlives the wait.
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        _, alive = psutil.wait_procs(started, timeout=30)
        for proc in alive:
            proc.kill()


def local_env(monkeypatch, mlops_home: Path) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(mlops_home))
    monkeypatch.setenv("MLOPS_PROFILE", "local")
    monkeypatch.setenv("MLOPS_TRAINING_ENGINE", "local")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def _graphql(context, query: str, params: dict) -> dict:
    from dagster_graphql.test.utils import execute_dagster_graphql

    result = execute_dagster_graphql(context.create_request_context(), query, {"params": params})
    assert not result.errors, result.errors
    return next(iter(result.data.values()))


def _launch(context, job: str, assets: list[list[str]] | None = None) -> str:
    """A run of ``job`` for ``AS_OF`` as the Launchpad (or, with ``assets``, the asset
    graph's Materialize button) launches it."""
    selector: dict = {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "jobName": job,
    }
    if assets:
        selector["assetSelection"] = [{"path": path} for path in assets]
    answer = _graphql(
        context,
        LAUNCH_RUN,
        {
            "selector": selector,
            # One process per run (not one per step) keeps the test short.
            "runConfigData": {"execution": {"config": {"in_process": {}}}},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": AS_OF}]},
        },
    )
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def _launch_backfill(context) -> str:
    with warnings.catch_warnings():
        # Dagster's own launchPartitionBackfill resolver calls its deprecated
        # AssetSelection.sources (the suite turns deprecations into errors).
        warnings.filterwarnings(
            "ignore", "Function `AssetSelection.sources` is deprecated", DeprecationWarning
        )
        answer = _graphql(
            context,
            LAUNCH_BACKFILL,
            {"partitionNames": [EARLIER], "assetSelection": [{"path": ["sales", "curated"]}]},
        )
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    return answer["backfillId"]


def _step_span(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    """(first step start, last step end) of a run, from its event log."""
    starts, ends = [], []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts.append(record.timestamp)
        elif event.event_type in (
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        ):
            ends.append(record.timestamp)
    assert starts and ends, f"run {run_id} executed no step"
    return min(starts), max(ends)


def check_one_writer_per_dataset(workspace) -> None:
    """Launch the three runs at once, serve the queue until they end, and check the spans."""
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    instance = workspace.instance
    assert instance.event_log_storage.get_concurrency_info(writer_pool("sales")).slot_count == 1
    # The as-of dates exist before they are launched (as the daily sensor adds them).
    as_of_instance(load_spec("sales"), AS_OF, EARLIER, instance=instance)
    as_of_instance(load_spec("diabetes"), AS_OF, instance=instance)

    started = time.monotonic()
    daily = _launch(workspace, "sales_daily_retrain")
    other = _launch(workspace, "__ASSET_JOB", assets=[["diabetes", "curated"]])
    backfill_id = _launch_backfill(workspace)
    logger = logging.getLogger("one_writer")
    list(execute_backfill_iteration(workspace, logger))  # submits the backfill's run: QUEUED
    backfill_runs = instance.get_run_ids(dg.RunsFilter.for_backfill(backfill_id))
    assert len(backfill_runs) == 1
    backfill = backfill_runs[0]
    assert "dataset" not in instance.get_run_by_id(backfill).tags

    seen_waiting = False
    runs = [daily, other, backfill]
    with QueuedRunCoordinatorDaemon(interval_seconds=1) as queue:
        while True:
            list(queue.run_iteration(workspace))
            status = {r: instance.get_run_by_id(r).status for r in runs}
            if status[daily] == dg.DagsterRunStatus.STARTED:
                # The backfill's run waits in the queue while the daily run writes.
                assert status[backfill] == dg.DagsterRunStatus.QUEUED
                seen_waiting = True
            if all(s in FINISHED for s in status.values()):
                break
            assert time.monotonic() - started < DEADLINE_S, status
            time.sleep(0.5)

    assert seen_waiting
    assert all(s == dg.DagsterRunStatus.SUCCESS for s in status.values()), status
    daily_span, backfill_span = _step_span(instance, daily), _step_span(instance, backfill)
    other_span = _step_span(instance, other)
    # The two sales writers: no step of one between the first and last step of the other.
    assert daily_span[1] < backfill_span[0], (daily_span, backfill_span)
    # diabetes was written while the sales daily run wrote.
    assert other_span[0] < daily_span[1] and daily_span[0] < other_span[1]


def test_the_local_instance_serialises_writers_as_the_deploy_instance_does(tmp_path, monkeypatch):
    """The scenario above runs on the deploy instance (PostgreSQL,
    ``test_postgres_instance.py``); the local instance ``make dev`` and ``mlops demo`` use
    (SQLite) has the same queue and pool settings, and every bundled dataset's pool, so it
    behaves the same."""
    import yaml

    local_env(monkeypatch, tmp_path)
    home = ensure_dagster_home(tmp_path)
    deploy = yaml.safe_load((REPO / "deploy" / "dagster" / "dagster.yaml").read_text())
    local = yaml.safe_load((home / "dagster.yaml").read_text())
    assert local["concurrency"]["pools"] == deploy["concurrency"]["pools"]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        for ds in ("sales", "diabetes"):
            info = instance.event_log_storage.get_concurrency_info(writer_pool(ds))
            assert info.slot_count == 1, ds
