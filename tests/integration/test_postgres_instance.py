"""The production instance config (deploy/dagster/dagster.yaml) against a real PostgreSQL.

A private cluster (Debian's ``postgresql``: ``initdb`` + ``pg_ctl``, as the ``postgres`` user
when the tests run as root) starts on a free port under a temp folder; the daily chain runs
on an instance loaded from the deploy config, with compute logs in Azurite. Runs, events and
materializations must be in Postgres, the step logs in the Blob container.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from as_of import as_of_instance

from mlops_assets.definitions import build_definitions, daily_job_name
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.pools import writer_pool
from mlops_assets.profiles import resources_for, storage_for
from tests.integration.test_one_writer_per_dataset import (
    check_one_writer_per_dataset,
    local_env,
    project_workspace,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.azurite]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = ROOT / "deploy" / "dagster" / "dagster.yaml"
AS_OF = "2026-11-16"


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        pytest.fail(f"{name} is missing: `make tools` installs Debian's postgresql")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway cluster with trust auth on 127.0.0.1; stopped and removed afterwards."""
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if as_root:  # initdb refuses to run as root
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd: str) -> None:
        out = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{cmd[0]} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"

    run(_pg_bin("initdb"), "-D", str(data), "-U", "dagster", "--auth=trust", "-E", "UTF8")
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(_pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "pg.log"), "-w", "start")
    try:
        run(_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster")
        yield {"host": "127.0.0.1", "port": str(port), "db": "dagster", "user": "dagster"}
    finally:
        run(_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def pg_env(postgres: dict[str, str]) -> dict[str, str]:
    """The deploy config's database variables for the throwaway cluster."""
    return {
        "DAGSTER_PG_HOST": postgres["host"],
        "DAGSTER_PG_PORT": postgres["port"],
        "DAGSTER_PG_DB": postgres["db"],
        "DAGSTER_PG_USERNAME": postgres["user"],
        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
        "PGSSLMODE": "disable",
    }


@pytest.fixture
def deploy_instance(postgres, azurite, tmp_path, monkeypatch) -> Iterator[dg.DagsterInstance]:
    """An instance from the deploy config; the Blob log manager is pointed at Azurite (its own
    client only builds ``https://<account>.blob.<suffix>`` URLs, Azurite is path-style)."""
    from azure.storage.blob import BlobServiceClient

    container = f"dagster-logs-{uuid.uuid4().hex[:8]}"
    env = {
        **pg_env(postgres),
        "DAGSTER_COMPUTE_LOG_ACCOUNT": azurite.account_name,
        "DAGSTER_COMPUTE_LOG_CONTAINER": container,
        "DAGSTER_ACA_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
        "DAGSTER_ACA_RESOURCE_GROUP": "rg-mlops-dev",
        "DAGSTER_ACA_REGION": "westeurope",
        "DAGSTER_ACA_ENVIRONMENT_ID": "/subscriptions/0/resourceGroups/rg/providers/"
        "Microsoft.App/managedEnvironments/cae-mlops",
        "DAGSTER_ACA_IDENTITY_ID": "/subscriptions/0/resourceGroups/rg/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/id-mlops",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_CONFIG, home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(container)
    logs = instance.compute_log_manager
    # Dagster's log manager has no public hook for an emulator's connection string.
    logs._blob_client = service  # noqa: SLF001
    logs._container_client = service.get_container_client(container)  # noqa: SLF001
    try:
        yield instance
    finally:
        instance.dispose()
        service.delete_container(container)


def test_deploy_config_names_classes_that_exist(deploy_instance):
    from dagster_azure.blob.compute_log_manager import AzureBlobComputeLogManager
    from dagster_azure.container_apps.launcher import AcaRunLauncher
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    assert isinstance(deploy_instance.compute_log_manager, AzureBlobComputeLogManager)
    assert isinstance(deploy_instance.run_launcher, AcaRunLauncher)
    assert isinstance(deploy_instance.run_storage, PostgresRunStorage)
    assert isinstance(deploy_instance.event_log_storage, PostgresEventLogStorage)
    assert type(deploy_instance.schedule_storage).__name__ == "PostgresScheduleStorage"


def test_daily_chain_records_to_postgres_and_logs_to_azurite(deploy_instance, postgres, tmp_path):
    import psycopg2

    spec = load_spec("sales")
    land_sales(
        storage_for("local", tmp_path).process_config_and_initialize(),
        spec,
        SalesShape(20, 120, seed=0),
        n_drops=1,
    )
    defs = build_definitions([spec], resources_for("local", tmp_path))
    job = defs.resolve_job_def(daily_job_name(spec))
    instance = as_of_instance(spec, AS_OF, instance=deploy_instance)
    result = job.execute_in_process(partition_key=AS_OF, instance=instance)
    assert result.success

    conn = psycopg2.connect(
        host=postgres["host"], port=postgres["port"], dbname=postgres["db"], user=postgres["user"]
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
            assert cur.fetchone() == ("SUCCESS",)
            cur.execute(
                "SELECT asset_key FROM event_logs WHERE run_id = %s "
                "AND dagster_event_type = 'ASSET_MATERIALIZATION'",
                (result.run_id,),
            )
            materialized = {row[0] for row in cur.fetchall()}
            cur.execute("SELECT count(*) FROM asset_keys")
            assert cur.fetchone()[0] >= 4
            # The as-of date exists as a dynamic partition in the instance's storage (the
            # module's database is shared: another test may have added its own date).
            cur.execute(
                "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s",
                ("sales_as_of",),
            )
            assert AS_OF in {row[0] for row in cur.fetchall()}
    finally:
        conn.close()
    assert {f'["sales", "{name}"]' for name in ("curated", "candidate_models")} <= materialized

    records = deploy_instance.fetch_materializations(
        dg.AssetKey(["sales", "registered_model_set"]), limit=1
    ).records
    assert records and records[0].partition_key == AS_OF

    logs = deploy_instance.compute_log_manager
    blobs = [b.name for b in logs._container_client.list_blobs()]  # noqa: SLF001 - see above
    assert any(result.run_id in name for name in blobs), blobs
    assert any(name.endswith(".err") for name in blobs), blobs


@pytest.mark.timeout(300)
def test_one_writer_per_dataset_on_the_deploy_instance(postgres, tmp_path, monkeypatch):
    """The deploy config's run queue and pools on PostgreSQL, with the launches of
    tests/integration/test_one_writer_per_dataset.py. Runs start as local processes: the
    Container Apps launcher and the Blob log manager are left out (no Azure here); storage,
    run coordinator and concurrency are the deploy file's."""
    import yaml

    config = yaml.safe_load(DEPLOY_CONFIG.read_text())
    del config["run_launcher"], config["compute_logs"]
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    local_env(monkeypatch, tmp_path)
    for key, value in {**pg_env(postgres), "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)
    # The one-time step of docs/runbook.md ("One writer per dataset") for the dataset under test.
    dagster = Path(sys.executable).with_name("dagster")
    subprocess.run(
        [dagster, "instance", "concurrency", "set", writer_pool("sales"), "1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with project_workspace(tmp_path, home) as workspace:
        assert type(workspace.instance.run_storage).__name__ == "PostgresRunStorage"
        check_one_writer_per_dataset(workspace)


def test_dockerfile_copies_what_exists_and_serves_the_code_location():
    """No Docker here: check the image recipe against the repository instead."""
    lines = (ROOT / "deploy" / "dagster" / "Dockerfile").read_text().splitlines()
    copied = [ln.split()[1:-1] for ln in lines if ln.startswith("COPY ")]
    for sources in copied:
        for src in sources:
            if not src.startswith("${"):
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    cmd = next(ln for ln in lines if ln.startswith("CMD "))
    assert '"mlops_assets.definitions"' in cmd and '"code-server"' in cmd
    assert any("DAGSTER_HOME" in ln and "dagster.yaml" in ln for ln in lines)
