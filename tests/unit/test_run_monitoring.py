"""Runs left STARTED by a dead process are failed by Dagster's run monitoring: both instance
configs the project ships enable it (issue 19, item 7)."""

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
