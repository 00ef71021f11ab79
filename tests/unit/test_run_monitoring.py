"""Runs left STARTED by a dead process are failed by Dagster's run monitoring: both instance
configs the project ships enable it (issue 19, item 7)."""

import os
from pathlib import Path

import dagster as dg
import yaml

from mlops_assets.profiles import ensure_dagster_home

DEPLOY_CONFIG = Path(__file__).parents[2] / "deploy" / "dagster" / "dagster.yaml"


def test_the_local_instance_monitors_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = ensure_dagster_home(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds <= 300
        # The local launcher cannot check a run's process: a ceiling fails a dead STARTED run.
        assert 0 < instance.run_monitoring_max_runtime_seconds <= 24 * 3600


def test_an_existing_local_instance_gets_run_monitoring_once(tmp_path, monkeypatch):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    ensure_dagster_home(tmp_path)
    ensure_dagster_home(tmp_path)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False}
    assert config["run_monitoring"]["enabled"] is True


def test_the_deployed_instance_monitors_runs():
    config = yaml.safe_load(DEPLOY_CONFIG.read_text())
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True and monitoring["start_timeout_seconds"] > 0
    # The Container Apps launcher checks each run's job: a dead one is failed, not resumed.
    assert monitoring["max_resume_run_attempts"] == 0
    assert config["run_launcher"]["class"] == "AcaRunLauncher"


SLOW_RUN = """
import time
import dagster as dg

@dg.op
def slow():
    time.sleep(120)

@dg.job(tags={"dagster/max_runtime": "2"})
def slow_job():
    slow()

with dg.DagsterInstance.get() as instance:
    slow_job.execute_in_process(instance=instance)
"""


def test_a_run_whose_process_died_is_failed_by_the_monitoring_daemon(tmp_path, monkeypatch):
    """End to end on the local instance config: a real run is killed (SIGKILL) while STARTED,
    and one iteration of the daemon's run monitoring marks it failed. The run carries a 2 s
    runtime ceiling (``dagster/max_runtime``) so the test need not wait for the instance's."""
    import logging
    import subprocess
    import sys
    import time

    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget
    from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = ensure_dagster_home(tmp_path)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN], env=env)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 120
            runs = []
            while time.monotonic() < deadline:
                runs = instance.get_runs()
                if runs and runs[0].status == dg.DagsterRunStatus.STARTED:
                    break
                time.sleep(0.2)
            assert runs and runs[0].status == dg.DagsterRunStatus.STARTED
            proc.kill()  # the process dies; its run stays STARTED in storage
            proc.wait(timeout=30)
            run_id = runs[0].run_id
            time.sleep(2.5)
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
            with create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as ctx:
                list(execute_run_monitoring_iteration(ctx, logging.getLogger("monitoring")))
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    finally:
        if proc.poll() is None:
            proc.kill()
