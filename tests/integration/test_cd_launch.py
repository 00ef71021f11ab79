"""CD's launch path (issue 15, item 2) against a local production-like deployment.

What runs here is what the deployment runs, as separate processes: the code location's gRPC
server, the webserver and the daemon, on an instance loaded from ``deploy/dagster/dagster.yaml``
with its PostgreSQL storage (a throwaway cluster), run queue and writer pools, and the
workspace file of ``deploy/dagster/workspace.yaml``. Only the run launcher is the default one
(each run a local process) instead of Container Apps jobs, and step logs stay local: no Azure
here. The client is the ``mlops launch`` command CD calls, over HTTP to the webserver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.pools import writer_pool
from mlops_assets.profiles import storage_for
from tests.integration.test_postgres_instance import _free_port, pg_env, postgres  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy" / "dagster"
AS_OF = "2026-11-16"
JOB = "sales_daily_retrain"


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def _wait_http(url: str, procs: list[subprocess.Popen], logs: Path, deadline: float) -> None:
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            dead = [p.args[0] for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}"
                    for f in logs.glob("*.log")
                )
                pytest.fail(f"the deployment did not come up (ended: {dead}):\n{tails}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def deployment(postgres, tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:  # noqa: F811
    """The webserver's address and the environment of its processes."""
    tmp_path = tmp_path_factory.mktemp("deployment")
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    del config["run_launcher"], config["compute_logs"]
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    code_port, web_port = _free_port(), _free_port()
    workspace["load_from"][0]["grpc_server"]["port"] = code_port
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    mlops_home = tmp_path / "mlops"
    land_sales(
        storage_for("local", mlops_home).process_config_and_initialize(),
        load_spec("sales"),
        SalesShape(4, 60, seed=0),
        n_drops=1,
    )
    env = {
        **os.environ,
        **pg_env(postgres),
        "DAGSTER_HOME": str(home),
        "MLOPS_HOME": str(mlops_home),
        "MLOPS_PROFILE": "local",
        "MLOPS_TRAINING_ENGINE": "local",
        "MLOPS_CODE_LOCATION_HOST": "127.0.0.1",
    }
    # The one-time step of docs/runbook.md for the dataset's writer pool.
    subprocess.run(
        [BIN / "dagster", "instance", "concurrency", "set", writer_pool("sales"), "1"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    ws = str(tmp_path / "workspace.yaml")
    commands = {
        "code-server": [
            BIN / "dagster",
            "code-server",
            "start",
            "-m",
            "mlops_assets.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(code_port),
            "--location-name",
            "mlops_assets",
        ],
        "webserver": [BIN / "dagster-webserver", "-w", ws, "-h", "127.0.0.1", "-p", str(web_port)],
        "daemon": [BIN / "dagster-daemon", "run", "-w", ws],
    }
    procs = []
    try:
        for name, cmd in commands.items():
            with (tmp_path / f"{name}.log").open("w") as log:
                procs.append(
                    subprocess.Popen(
                        cmd,
                        cwd=tmp_path,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        base = f"http://127.0.0.1:{web_port}"
        _wait_http(f"{base}/server_info", procs, tmp_path, time.monotonic() + 120)
        yield base, env
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _mlops(env: dict[str, str], *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "mlops", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(420)
def test_a_cd_launch_runs_in_the_deployment_through_its_queue(deployment, postgres):  # noqa: F811
    import psycopg2

    base, env = deployment
    out = _mlops(
        env,
        "launch",
        JOB,
        "--partition",
        AS_OF,
        "--url",
        base,
        "--reload",
        "--poll",
        "1",
        "--timeout",
        "300",
        "--tag",
        "mlops/launched_by=cd",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reloaded code location 'mlops_assets'" in out.stdout
    assert f"{base}/runs/" in out.stdout and out.stdout.rstrip().endswith("SUCCESS")
    run_id = out.stdout.split(f"{base}/runs/")[1].split()[0]

    conn = psycopg2.connect(
        host=postgres["host"], port=postgres["port"], dbname=postgres["db"], user=postgres["user"]
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
            assert cur.fetchone() == ("SUCCESS",)
            cur.execute("SELECT key, value FROM run_tags WHERE run_id = %s", (run_id,))
            tags = dict(cur.fetchall())
            cur.execute(
                "SELECT dagster_event_type FROM event_logs WHERE run_id = %s "
                "AND dagster_event_type IS NOT NULL ORDER BY id",
                (run_id,),
            )
            events = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    assert tags["dagster/partition"] == AS_OF and tags["mlops/launched_by"] == "cd"
    # Queued by the deploy config's run coordinator (ENQUEUED), taken off the queue by the
    # daemon and handed to the instance's run launcher (STARTING), run in the launched process
    # (START): the client executed nothing.
    lifecycle = [e for e in events if e.startswith("PIPELINE_")]
    assert lifecycle == [
        "PIPELINE_ENQUEUED",
        "PIPELINE_STARTING",
        "PIPELINE_START",
        "PIPELINE_SUCCESS",
    ], lifecycle
    assert "ASSET_MATERIALIZATION" in events


def test_a_launch_the_deployment_refuses_says_why(deployment):
    base, env = deployment
    out = _mlops(env, "launch", "no_such_job", "--url", base, timeout=120)
    assert out.returncode == 1
    assert "launching 'no_such_job'" in out.stderr and "code location" in out.stderr
