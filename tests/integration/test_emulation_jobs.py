"""The Azure ML job path, executed: AzureMLBatchCompute -> PipesAzureMLClient -> emulated jobs.

The project's own resources run unchanged against ``EmulatedMLClient`` (the stand-in for Azure
ML) and Azurite (the stand-in for the Pipes container and the project's storage): the Pipes
context injector and the Blob message reader run for real, and every job runs its command in
two processes that find their ranks in the variables Azure ML sets.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from as_of import as_of_instance
from azure.ai.ml.entities import AmlCompute, Environment, KubernetesCompute
from azure.ai.ml.exceptions import ValidationException
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from aml_emulation.client import EmulatedMLClient
from aml_emulation.workspace import EmulatedWorkspace
from mlops_assets.assets.batch_scoring import build_batch_scoring_asset, scoring_partitions
from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.assets.training import build_training_asset
from mlops_assets.domain import batch_layout as layout
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.demo_model_set import publish_model_set, register_production
from mlops_assets.domain.model_sets import latest_pointer, read_manifest, read_pointer
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import CONNECTION_STRING_ENV
from resources.compute import AzureMLBatchCompute, LocalBatchCompute
from resources.registry import MlflowRegistry
from resources.training_engine import PipesTrainingEngine
from tests.fixtures.azurite import unique_container_name

pytestmark = pytest.mark.integration
SALES = load_spec("sales")
AS_OF = "2026-11-17"
COMPUTE = "cpu-batch"


@pytest.fixture(scope="module")
def aml(azurite, tmp_path_factory):
    """One emulated workspace (an AmlCompute cluster of 2 nodes, the batch environment, the
    Azurite connection for its processes) and a Pipes container, for the whole module."""
    pipes = unique_container_name("pipes")
    blob = BlobServiceClient.from_connection_string(azurite.connection_string)
    blob.create_container(pipes)
    ws = EmulatedWorkspace(
        root=tmp_path_factory.mktemp("aml"),
        computes={
            COMPUTE: AmlCompute(name=COMPUTE, size="STANDARD_DS3_V2", max_instances=2),
            "aks": KubernetesCompute(name="aks"),
        },
        environments={"mlops-batch": Environment(name="mlops-batch", version="1", image="py")},
        env={CONNECTION_STRING_ENV: azurite.connection_string},
    )
    with EmulatedMLClient(ws) as ml:
        yield ml, blob, pipes, azurite
    blob.delete_container(pipes)


def _compute(aml, **kw) -> AzureMLBatchCompute:
    ml, blob, pipes, azurite = aml
    fields = {
        "subscription_id": "00000000-0000-0000-0000-000000000000",
        "resource_group": "rg",
        "workspace": "ws",
        "compute": COMPUTE,
        "environment": "azureml:mlops-batch@latest",
        "pipes_account_url": azurite.blob_url,
        "pipes_container": pipes,
        "poll_interval_s": 0.1,
        "instance_count": 2,
    }
    return AzureMLBatchCompute(**{**fields, **kw}).with_clients(ml, blob)


@pytest.fixture(scope="module")
def curated(azurite):
    """Sales curated up to the as-of date on Azurite (a handful of series)."""
    storage = azurite.storage(unique_container_name("train"))
    land_sales(storage, SALES, SalesShape(6, 100), n_drops=1)
    result = dg.materialize(
        [build_ingestion_asset(SALES)],
        resources={"storage": storage},
        partition_key=AS_OF,
        instance=as_of_instance(SALES, AS_OF),
    )
    assert result.success
    return storage


def _train(aml, storage, **kw):
    engine = PipesTrainingEngine(compute=_compute(aml), storage=storage)
    return dg.materialize(
        [build_training_asset(SALES)],
        resources={"storage": storage, "training": engine},
        partition_key=AS_OF,
        instance=as_of_instance(SALES, AS_OF),
        **kw,
    )


def _jobs_submitted(ml, purpose: str) -> list:
    return [j for j in ml.workspace.calls("jobs.create_or_update") if purpose in j.name]


def test_azureml_training_on_two_emulated_instances_equals_the_local_engine(aml, curated):
    ml = aml[0]
    before = len(_jobs_submitted(ml, "-train-"))
    result = _train(aml, curated)
    assert result.success
    meta = result.asset_materializations_for_node("sales__candidate_models")[0].metadata
    assert meta["engine"].value == "azureml" and meta["series_trained"].value == 6

    (job,) = _jobs_submitted(ml, "-train-")[before:]
    assert job.resources.instance_count == 2 and job.identity.type == "managed_identity"
    assert job.environment_variables["DAGSTER_PIPES_CONTEXT"]  # PipesAzureMLClient's bootstrap
    assert ml.jobs.get(job.name).status == "Completed"
    logs = ml.jobs.run(job.name).log_files
    assert [p.name for p in logs] == ["std_log_process_0.txt", "std_log_process_1.txt"]
    assert '"rank": 1, "world": 2' in logs[1].read_text()  # rank 1 from Azure's RANK/WORLD_SIZE
    assert len(curated.list(f"models/sales/remote/{result.run_id}/part-")) == 2

    manifest = read_manifest(curated, read_pointer(curated, latest_pointer(SALES)))
    local = train_local(CuratedStore(curated, SALES).read(), SALES, max_workers=1)
    local = local.sort_values("series_id", ignore_index=True)
    assert manifest["series_id"].to_pylist() == local["series_id"].tolist()
    assert manifest["model_sha256"].to_pylist() == local["model_sha256"].tolist()


def _running_and_polled(ml, name: str) -> bool:
    """The job runs and the Pipes client polls it (so the step is in its polling loop)."""
    try:
        run = ml.jobs.run(name)  # the emulation's view: not recorded as a call
    except ResourceNotFoundError:  # received, not yet accepted
        return False
    return run.status == "Running" and name in ml.workspace.calls("jobs.get")


def test_a_terminated_run_cancels_its_emulated_job(aml, curated):
    """SIGINT mid-job (how Dagster stops a run worker) interrupts the step's polling;
    PipesAzureMLClient cancels the job: status Canceled, every process gone."""
    ml = aml[0]
    before = len(_jobs_submitted(ml, "-train-"))
    fired: list[str] = []

    def interrupt_once_running():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = _jobs_submitted(ml, "-train-")[before:]
            if jobs and _running_and_polled(ml, jobs[0].name):
                fired.append(jobs[0].name)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=interrupt_once_running, daemon=True)
    watcher.start()
    result = _train(aml, curated, raise_on_error=False)
    watcher.join(5)
    assert fired and not result.success
    (name,) = fired
    # The step stops as interrupted, not with whatever the cancelled job had written so far.
    failures = [e.step_failure_data.error.message for e in result.get_step_failure_events()]
    assert any(f"{name} cancelled" in m for m in failures), failures
    assert name in ml.workspace.calls("jobs.begin_cancel")
    assert ml.jobs.get(name).status == "Canceled"
    for p in ml.jobs.run(name).processes:
        assert p.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(p.pid, 0)


@pytest.fixture(scope="module")
def production(azurite, tmp_path_factory):
    """A production sales model set on Azurite, registered in a local MLflow registry."""
    full = sales_table(SalesShape(6, 72, seed=5))
    cut = sorted(set(full[SALES.time].to_pylist()))[60]
    prod = azurite.storage(unique_container_name("prod"))
    registry = MlflowRegistry(
        tracking_uri=f"sqlite:///{tmp_path_factory.mktemp('reg')}/prod.db", alias="production"
    )
    publish_model_set(prod, SALES, full.filter(pc.less(full[SALES.time], cut)), "models/v1")
    register_production(registry, SALES, prod, "models/v1")
    return prod, registry, full.filter(pc.greater_equal(full[SALES.time], cut))


def _score(azurite, production, compute) -> list[pa.Table]:
    """Land the drop on a fresh Azurite container, run the batch scoring asset, return each
    instance's predictions."""
    prod, registry, drop = production
    storage = azurite.storage(unique_container_name("score"))
    buf = io.BytesIO()
    pq.write_table(drop, buf)
    info = storage.write_bytes(f"{layout.inbox_prefix('sales')}d.parquet", buf.getvalue())
    key = f"d.parquet@{info.etag}"
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(scoring_partitions(SALES).name, [key])
    result = dg.materialize(
        [build_batch_scoring_asset(SALES)],
        partition_key=key,
        instance=instance,
        resources={
            "storage": storage,
            "prod_storage": prod,
            "prod_registry": registry,
            "batch_compute": compute,
        },
    )
    assert result.success
    return [
        decode_dictionaries(
            pq.read_table(storage.open_read(layout.predictions_name("sales", key, r, 2)))
        )
        for r in range(2)
    ]


def test_batch_scoring_on_two_emulated_instances_equals_local_scoring(aml, production):
    azurite = aml[3]
    emulated = _score(azurite, production, _compute(aml))
    local = _score(
        azurite,
        production,
        LocalBatchCompute(
            instance_count=2, extra_env={CONNECTION_STRING_ENV: azurite.connection_string}
        ),
    )
    assert sum(t.num_rows for t in emulated) == production[2].num_rows
    assert all(t.num_rows for t in emulated)  # both instances had series to score
    for ours, theirs in zip(emulated, local, strict=True):
        assert ours.equals(theirs)
    (job,) = _jobs_submitted(aml[0], "-score-")
    assert aml[0].jobs.get(job.name).status == "Completed"


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        ({"compute": "gpu-missing"}, ResourceNotFoundError, "gpu-missing"),
        ({"compute": "aks"}, HttpResponseError, "AmlCompute"),
        ({"instance_count": 3}, HttpResponseError, "maximum of 2"),
        ({"environment": "azureml:mlops-other@latest"}, ResourceNotFoundError, "mlops-other"),
        ({"name": "bad name!"}, HttpResponseError, "Invalid job name"),
        ({"code": "/nonexistent/code"}, ValidationException, "nonexistent"),
    ],
)
def test_the_emulation_refuses_what_azure_refuses(aml, change, error, says):
    fields = dict(change)
    name = fields.pop("name", "mlops-refused-1")
    cmd = _compute(aml, **fields).build_command(params_json="{}", name=name, key="k")
    with pytest.raises(error, match=says):
        aml[0].create_or_update(cmd)
    with pytest.raises(ResourceNotFoundError):
        aml[0].jobs.get(name)
