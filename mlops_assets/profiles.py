"""Environment profiles: which implementation of each outside system a deployment uses.

``local`` (default) runs everything on this machine under one project home folder. ``dev`` and
``prod`` use Azure; their settings come from environment variables through ``dg.EnvVar``, which
Dagster resolves when a run starts, so nothing here reads the environment at import time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from mlops_assets.ml.spec import bundled_specs
from mlops_assets.pools import RUN_QUEUE, ensure_writer_pools
from resources.aml_endpoint import AzureMLKubernetesEndpoint
from resources.endpoints import (
    EndpointResource,
    LocalEndpoint,
)
from resources.registry import MlflowRegistry
from resources.storage import AzureBlobStorageResource, LocalStorageResource
from resources.training_engine import (
    LocalTrainingEngine,
    PipesTrainingEngine,
    TrainingEngine,
    spark_engine,
)

PROFILES = ("local", "dev", "prod")
REPO_ROOT = Path(__file__).resolve().parent.parent


def project_home() -> Path:
    """``MLOPS_HOME``, or ``.mlops`` in the repository (git-ignored)."""
    return Path(os.environ.get("MLOPS_HOME") or REPO_ROOT / ".mlops").resolve()


def current_profile() -> str:
    profile = os.environ.get("MLOPS_PROFILE", "local")
    if profile not in PROFILES:
        raise ValueError(f"MLOPS_PROFILE={profile!r} is not one of {PROFILES}")
    return profile


def storage_for(profile: str, home: Path) -> dg.ConfigurableResource:
    if profile == "local":
        return LocalStorageResource(root=str(home / "storage"))
    return AzureBlobStorageResource(
        account_url=dg.EnvVar("MLOPS_STORAGE_ACCOUNT_URL"),
        container=dg.EnvVar("MLOPS_STORAGE_CONTAINER"),
    )


def prod_storage_for(profile: str, home: Path) -> dg.ConfigurableResource:
    """Where promoted model sets are copied: a separate folder locally, the prod account on
    Azure."""
    if profile == "local":
        return LocalStorageResource(root=str(home / "prod-storage"))
    return AzureBlobStorageResource(
        account_url=dg.EnvVar("MLOPS_PROD_STORAGE_ACCOUNT_URL"),
        container=dg.EnvVar("MLOPS_PROD_STORAGE_CONTAINER"),
    )


def registries_for(profile: str, home: Path) -> tuple[MlflowRegistry, MlflowRegistry]:
    """(dev registry with alias champion, prod registry with alias production).

    Local: SQLite stores under the project home, artifacts next to the storage resource's data.
    dev/prod: the AML workspaces' MLflow tracking URIs, from ``MLOPS_MLFLOW_DEV_URI`` and
    ``MLOPS_MLFLOW_PROD_URI`` (``azureml://<region>.api.azureml.ms/mlflow/v1.0/...``).
    """
    if profile == "local":
        mlflow_home = home / "mlflow"
        made = []
        for stage, alias, store in (
            ("dev", "champion", home / "storage"),
            ("prod", "production", home / "prod-storage"),
        ):
            uri = f"sqlite:///{mlflow_home / f'{stage}.db'}"
            made.append(
                MlflowRegistry(
                    tracking_uri=uri,
                    registry_uri=uri,
                    alias=alias,
                    artifact_root=(store / "mlflow-artifacts").as_uri(),
                )
            )
        return made[0], made[1]
    return (
        MlflowRegistry(tracking_uri=dg.EnvVar("MLOPS_MLFLOW_DEV_URI"), alias="champion"),
        MlflowRegistry(tracking_uri=dg.EnvVar("MLOPS_MLFLOW_PROD_URI"), alias="production"),
    )


def training_engine(name: str, profile: str, storage: dg.ConfigurableResource) -> TrainingEngine:
    """``MLOPS_TRAINING_ENGINE``: ``local`` (process pool, default), ``spark`` (applyInPandas on
    a ``local[*]`` session; on a cluster, ``MLOPS_SPARK_MASTER``, or through Spark Connect,
    ``MLOPS_SPARK_REMOTE``, whose executors read the curated shards themselves), or ``azureml`` (a command job on the
    AML compute cluster of ``MLOPS_AML_*``; in the ``local`` profile the same script runs as a
    local subprocess under Pipes)."""
    if name == "local":
        return LocalTrainingEngine()
    if name == "spark":
        return spark_engine(
            master=os.environ.get("MLOPS_SPARK_MASTER", "").strip(),
            remote=os.environ.get("MLOPS_SPARK_REMOTE", "").strip(),
        )
    if name == "azureml":
        return PipesTrainingEngine(compute=batch_compute_for(profile), storage=storage)
    raise ValueError(f"MLOPS_TRAINING_ENGINE={name!r} is not one of ('local', 'spark', 'azureml')")


def endpoint_for(profile: str, home: Path) -> EndpointResource:
    """Where real-time scoring is released. Local: the ``mlops serve`` endpoint on the prod
    storage (``MLOPS_ENDPOINT_URL``, e.g. http://127.0.0.1:5001, makes a release wait for it
    to switch; its key, ``MLOPS_SERVING_API_KEY``, is read when a run calls it). dev/prod: a
    Kubernetes online endpoint, blue/green, settings from ``MLOPS_AML_*``.
    """
    if profile == "local":
        return LocalEndpoint(
            root=str(home / "prod-storage"),
            url=os.environ.get("MLOPS_ENDPOINT_URL") or None,
            api_key_env="MLOPS_SERVING_API_KEY",  # read at run time, never put in the config
        )
    return AzureMLKubernetesEndpoint(
        subscription_id=dg.EnvVar("MLOPS_AML_SUBSCRIPTION_ID"),
        resource_group=dg.EnvVar("MLOPS_AML_RESOURCE_GROUP"),
        workspace=dg.EnvVar("MLOPS_AML_WORKSPACE"),
        endpoint_name=dg.EnvVar("MLOPS_AML_ENDPOINT"),
        compute=dg.EnvVar("MLOPS_AML_AKS_COMPUTE"),
        model_base_uri=dg.EnvVar("MLOPS_AML_MODEL_BASE_URI"),
    )


def resources_for(profile: str, home: Path) -> dict[str, dg.ConfigurableResource]:
    """Every resource the code location needs, for one profile."""
    registry, prod_registry = registries_for(profile, home)
    storage = storage_for(profile, home)
    engine = os.environ.get("MLOPS_TRAINING_ENGINE", "local")
    return {
        "storage": storage,
        "prod_storage": prod_storage_for(profile, home),
        "training": training_engine(engine, profile, storage),
        "registry": registry,
        "prod_registry": prod_registry,
        "endpoint": endpoint_for(profile, home),
        "batch_compute": batch_compute_for(profile),
    }


def batch_compute_for(profile: str):
    """Where batch scoring runs: a local subprocess, or an AML compute cluster (Pipes)."""
    from resources.compute import AzureMLBatchCompute, LocalBatchCompute

    if profile == "local":
        return LocalBatchCompute()
    return AzureMLBatchCompute(
        subscription_id=dg.EnvVar("MLOPS_AML_SUBSCRIPTION_ID"),
        resource_group=dg.EnvVar("MLOPS_AML_RESOURCE_GROUP"),
        workspace=dg.EnvVar("MLOPS_AML_WORKSPACE"),
        compute=dg.EnvVar("MLOPS_AML_BATCH_COMPUTE"),
        pipes_account_url=dg.EnvVar("MLOPS_STORAGE_ACCOUNT_URL"),
    )


# Run monitoring (the daemon) fails runs whose process died: a run STARTING for longer than
# start_timeout_seconds, and a run STARTED for longer than max_runtime_seconds (the local run
# launcher cannot see whether a run's process is alive, so a killed local run is failed when it
# passes this ceiling; the tag dagster/max_runtime_seconds changes it for one run).
RUN_MONITORING = """run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  max_runtime_seconds: 21600
  poll_interval_seconds: 60
"""


# Any of these in dagster.yaml means the instance chose its own storage: it is left as it is.
STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")


def event_log_section(dagster_home: Path) -> str:
    """The ``event_log_storage`` section of a local instance: Dagster's SQLite event log in its
    default folder, keeping its connections open (``mlops_assets.event_log_storage``)."""
    return (
        "event_log_storage:\n"
        "  module: mlops_assets.event_log_storage\n"
        "  class: KeptSqliteEventLogStorage\n"
        "  config:\n"
        f"    base_dir: {json.dumps(str(dagster_home.resolve() / 'storage'))}\n"
    )


def ensure_dagster_home(home: Path) -> Path:
    """The Dagster instance folder under the project home, with a local ``dagster.yaml``
    (telemetry off, run monitoring on, one writer per dataset: ``mlops_assets.pools``; each
    section is added to an existing file without it), and every bundled dataset's writer pool
    created in the instance."""
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster")
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    text = config.read_text() if config.exists() else "telemetry:\n  enabled: false\n"
    for section in (RUN_MONITORING, RUN_QUEUE):
        if not any(line.startswith(section.split()[0]) for line in text.splitlines()):
            text = text.rstrip("\n") + "\n" + section
    if not any(line.split(":")[0] in STORAGE_KEYS for line in text.splitlines()):
        text = text.rstrip("\n") + "\n" + event_log_section(dagster_home)
    config.write_text(text)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        ensure_writer_pools(instance, [spec.name for spec in bundled_specs()])
    return dagster_home
