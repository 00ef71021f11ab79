"""``mlops demo-azure`` (``make demo-azure``): the sales chain on the local Azure ML emulation.

No Azure account and no network: Azurite stands for the storage account (dev data and the
Pipes container), ``aml_emulation`` for the Azure ML workspace (an AmlCompute cluster of 2
nodes, an attached Kubernetes compute, the prod model datastore). The project's own Azure
resources run against them unchanged except for client injection: training through
``PipesTrainingEngine`` over ``AzureMLBatchCompute`` (2 instances), the promotion, the
blue/green release of ``AzureMLKubernetesEndpoint``, one request through the endpoint's front
and one batch-scored drop. One line per step, then a table of what ran where; Dagster's events
go to ``$MLOPS_HOME/demo-azure/dagster.log``. Every process it started stops at the end, on
an error and on Ctrl-C (SIGTERM too).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aml_emulation.azurite import Azurite, running_azurite
from aml_emulation.client import EmulatedMLClient
from aml_emulation.workspace import EmulatedWorkspace
from mlops_assets.assets.batch_scoring import batch_job_name, scoring_partitions
from mlops_assets.assets.deployment import deploy_job_name, deploy_run_config, qa_key
from mlops_assets.assets.registration import promote_job_name
from mlops_assets.definitions import build_definitions, daily_job_name
from mlops_assets.demo_run import Say, run_with_progress
from mlops_assets.domain import batch_layout as layout
from mlops_assets.domain.model_sets import read_manifest, registered_model_name
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.domain.serving_qa import smoke_records
from mlops_assets.logging_setup import file_logger, log_to_file
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.partitions import add_as_of_dates
from mlops_assets.profiles import project_home, registries_for
from mlops_assets.run_report import explain_failure
from mlops_assets.storage import CONNECTION_STRING_ENV, LocalStorage, Storage

BATCH, AKS, DATASTORE, ENDPOINT = "cpu-batch", "aks-serving", "prodmodels", "mlops-sales-demo"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
SCORED_WEEKS = 4  # the batch drop: this many weeks after the training data


@dataclass(frozen=True)
class AzureDemoSettings:
    """What ``mlops demo-azure`` generates and runs.

    Args:
        series: Sales series generated.
        periods: Weeks of history per series.
        as_of: The daily job's partition (YYYY-MM-DD); None: today, UTC.
        home: Folder for its state and log (emptied first); None: ``$MLOPS_HOME/demo-azure``.
    """

    series: int = 12
    periods: int = 104
    as_of: str | None = None
    home: Path | None = None


@dataclass
class Emulation:
    """The running stand-ins: Azurite, the emulated workspace's client, its folders."""

    azurite: Azurite
    ml: EmulatedMLClient
    storage: Storage
    prod_storage: Storage
    pipes_container: str


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo the way Ctrl-C does, so every ``finally`` runs: it raises SIGINT,
    whose handler is Dagster's while a run executes (the step is interrupted, and
    ``PipesAzureMLClient`` cancels its job), Python's KeyboardInterrupt otherwise."""

    def interrupt(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def emulation(folder: Path) -> Iterator[Emulation]:
    """Azurite and an emulated workspace (AmlCompute ``cpu-batch`` of 2 nodes, Kubernetes
    ``aks-serving``, datastore ``prodmodels`` on ``folder/prod-storage``); both stopped after."""
    from azure.ai.ml.entities import AmlCompute, Environment, KubernetesCompute
    from azure.storage.blob import BlobServiceClient

    prod_root = folder / "prod-storage"
    prod_root.mkdir(parents=True, exist_ok=True)
    with running_azurite() as azurite:
        blob = BlobServiceClient.from_connection_string(azurite.connection_string)
        blob.create_container("dagster-pipes")
        ws = EmulatedWorkspace(
            root=folder / "workspace",
            computes={
                BATCH: AmlCompute(name=BATCH, size="STANDARD_DS3_V2", max_instances=2),
                AKS: KubernetesCompute(name=AKS),
            },
            environments={
                name: Environment(name=name, version="1", image="mlops-assets")
                for name in ("mlops-batch", "mlops-assets-serving")
            },
            env={CONNECTION_STRING_ENV: azurite.connection_string},
            datastores={DATASTORE: prod_root},
        )
        with EmulatedMLClient(ws) as ml:
            yield Emulation(
                azurite,
                ml,
                azurite.storage("mlops-dev"),
                LocalStorage(str(prod_root)),
                "dagster-pipes",
            )


def emulated_resources(emu: Emulation, folder: Path) -> dict[str, Any]:
    """The code location's resources as ``MLOPS_PROFILE=dev`` with ``MLOPS_TRAINING_ENGINE=
    azureml`` builds them, on the emulation instead of Azure (MLflow registries: SQLite)."""
    from azure.storage.blob import BlobServiceClient

    from resources.aml_endpoint import AzureMLKubernetesEndpoint
    from resources.compute import AzureMLBatchCompute
    from resources.training_engine import PipesTrainingEngine

    workspace: dict[str, Any] = {
        "subscription_id": SUBSCRIPTION,
        "resource_group": "rg",
        "workspace": "ws",
    }
    blob = BlobServiceClient.from_connection_string(emu.azurite.connection_string)
    compute = AzureMLBatchCompute(
        **workspace,
        compute=BATCH,
        pipes_account_url=emu.azurite.blob_url,
        pipes_container=emu.pipes_container,
        instance_count=2,
        poll_interval_s=0.2,
    ).with_clients(emu.ml, blob)
    endpoint = AzureMLKubernetesEndpoint(
        **workspace,
        endpoint_name=ENDPOINT,
        compute=AKS,
        model_base_uri=f"azureml://datastores/{DATASTORE}/paths/",
        instance_count=1,
        workers=1,
        stages=[50, 100],
        stage_wait_s=0.5,
        checks_per_stage=1,
        qa_load_seconds=1.0,
    ).with_client(emu.ml)
    registry, prod_registry = registries_for("local", folder)
    return {
        "storage": emu.storage,
        "prod_storage": emu.prod_storage,
        "training": PipesTrainingEngine(compute=compute, storage=emu.storage),
        "registry": registry,
        "prod_registry": prod_registry,
        "endpoint": endpoint,
        "batch_compute": compute,
    }


def _land_batch_drop(storage: Storage, spec: DatasetSpec, settings: AzureDemoSettings) -> str:
    """The weeks after the training data as one drop in the scoring inbox; its partition key."""
    shape = SalesShape(settings.series, settings.periods + SCORED_WEEKS, seed=0)
    full = sales_table(shape)
    cut = sorted(set(full[spec.time].to_pylist()))[settings.periods]
    buf = io.BytesIO()
    pq.write_table(full.filter(pc.greater_equal(full[spec.time], cut)), buf)
    info = storage.write_bytes(f"{layout.inbox_prefix(spec.name)}next.parquet", buf.getvalue())
    return f"next.parquet@{info.etag}"


def _score_one(emu: Emulation, spec: DatasetSpec, prod_registry: Any) -> dict:
    """One POST through the endpoint's front (its scoring URI, its key): the answer."""
    ref = prod_registry.get_alias(registered_model_name(spec)).ref
    records = smoke_records(spec, read_manifest(emu.prod_storage, ref), 1)
    ep = emu.ml.online_endpoints.get(ENDPOINT)
    key = emu.ml.online_endpoints.get_keys(ENDPOINT).primary_key
    request = urllib.request.Request(
        str(ep.scoring_uri),
        data=json.dumps({"data": records}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    with opener.open(request, timeout=30) as resp:
        answer = json.loads(resp.read())
        answer["served_by"] = resp.headers.get("azureml-model-deployment")
    return answer


def summary_table(emu: Emulation, answer: dict) -> list[str]:
    """What ran where: the jobs, the endpoint's traffic and deployment, the model, the answer."""
    ml = emu.ml
    rows = ["Azure ML jobs (emulated)"]
    for job in ml.workspace.calls("jobs.create_or_update"):
        status = ml.jobs.get(job.name).status
        rows.append(
            f"  {job.tags.get('mlops/purpose', ''):<6} {job.name:<40} "
            f"{getattr(status, 'value', status)} on {job.compute}, "
            f"{job.resources.instance_count} instances"
        )
    ep = ml.online_endpoints.get(ENDPOINT)
    traffic = ", ".join(f"{c} {p}%" for c, p in sorted(ep.traffic.items()))
    (color,) = [c for c, p in ep.traffic.items() if p == 100]
    dep = ml.online_deployments.get(name=color, endpoint_name=ENDPOINT)
    first = (answer.get("predictions") or [{}])[0]
    rows += [
        f"endpoint     {ENDPOINT} on {AKS}: traffic {traffic}",
        f"deployment   {dep.name} ({dep.instance_count} instance), model {dep.model}",
        f"model set    v{dep.environment_variables['MLOPS_SERVING_VERSION']} "
        f"(prod registry), {len(ml.workspace.calls('online_deployments.begin_create_or_update'))}"
        " deployment(s) created",
        f"request      served by {answer.get('served_by')}: {first.get('series_id')} "
        f"{first.get('time')} -> {first.get('prediction')}, {answer.get('n_errors')} error(s)",
    ]
    return rows


def _run(definitions: dg.Definitions, name: str, spec, log, say, **kwargs) -> None:
    job = definitions.resolve_job_def(name)
    result = run_with_progress(job, spec, log, say, **kwargs)
    if not result.success:
        raise DemoFailed(name, result)


class DemoFailed(RuntimeError):
    """A Dagster run of the demo failed."""

    def __init__(self, name: str, result: dg.ExecuteInProcessResult):
        super().__init__(f"{name} failed (run {result.run_id})")
        self.lines = explain_failure(result)


def run_demo_azure(settings: AzureDemoSettings, say: Say, err: Say) -> int:
    """The chain on the emulation; 0, or 1 if a run failed (``err`` says why)."""
    spec = load_spec("sales")
    folder = settings.home or project_home() / "demo-azure"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh emulated workspace every time
    (folder / "dagster").mkdir(parents=True)
    log_path = folder / "dagster.log"
    partition = settings.as_of or datetime.now(UTC).strftime("%Y-%m-%d")
    say(f"mlops demo-azure in {folder}; Dagster's events go to {log_path}")
    with (
        _sigterm_as_interrupt(),
        emulation(folder) as emu,
        dg.DagsterInstance.local_temp(str(folder / "dagster")) as instance,
        log_to_file(log_path) as handler,
    ):
        say(f"started Azurite ({emu.azurite.blob_url}) and the emulated workspace")
        resources = emulated_resources(emu, folder)
        definitions = build_definitions([spec], resources)
        land_sales(emu.storage, spec, SalesShape(settings.series, settings.periods, seed=0), 2)
        add_as_of_dates(instance, spec, [partition])
        say(f"landed sales {settings.series} series x {settings.periods} weeks on Azurite")
        log = file_logger(handler)
        qa = {"concurrency": [1], "seconds_per_level": 0.5}
        try:
            say(f"sales: daily retrain for {partition} (training: 2 AML instances)")
            _run(
                definitions,
                daily_job_name(spec),
                spec,
                log,
                say,
                instance=instance,
                partition_key=partition,
            )
            say("sales: promotion to prod")
            _run(definitions, promote_job_name(spec), spec, log, say, instance=instance)
            version = resources["prod_registry"].get_alias(registered_model_name(spec)).version
            config = deploy_run_config(spec, version)
            config["ops"][qa_key(spec).to_python_identifier()]["config"].update(qa)
            say(f"sales: QA and blue/green release of prod v{version} to {ENDPOINT}")
            _run(
                definitions,
                deploy_job_name(spec),
                spec,
                log,
                say,
                instance=instance,
                run_config=config,
            )
            answer = _score_one(emu, spec, resources["prod_registry"])
            say("sales: one request through the endpoint's front")
            key = _land_batch_drop(emu.storage, spec, settings)
            instance.add_dynamic_partitions(str(scoring_partitions(spec).name), [key])
            say(f"sales: batch scoring of {key.split('@')[0]} (2 AML instances)")
            _run(
                definitions,
                batch_job_name(spec),
                spec,
                log,
                say,
                instance=instance,
                partition_key=key,
            )
        except DemoFailed as failed:
            err(str(failed))
            for line in failed.lines:
                err(f"  {line}")
            err(f"Dagster's events are in {log_path}; the emulated jobs' and inference")
            err(f"servers' logs under {folder / 'workspace'}")
            return 1
        say("")
        for line in summary_table(emu, answer):
            say(line)
    say("stopped Azurite, the jobs' processes and the inference servers")
    return 0
