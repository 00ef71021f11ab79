"""The ``azure-ai-ml`` entities of a Kubernetes online release: endpoint, model, deployment.

Pure: they are built, never sent, here (``resources.rollout`` sends them); tested by dumping them
to YAML and loading them back with azure-ai-ml, and executed on the emulation
(``aml_emulation``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_assets.serving.local import WORKER_TIMEOUT_S, worker_env
from mlops_assets.serving.settings import ServingSettings
from resources.endpoints import ModelSetRelease

COLORS = ("blue", "green")
SCORING_SCRIPT = "mlops_assets/serving/score.py"


def identity_entity(kind: str, resource_id: str | None = None):
    """The endpoint's managed identity: ``system_assigned``, ``user_assigned`` (with the
    identity's ARM resource id) or ``none``; pods use it to read the model and write the
    collected requests (docs/azure.md lists its roles)."""
    from azure.ai.ml.entities import IdentityConfiguration, ManagedIdentityConfiguration

    if kind == "none":
        return None
    if kind == "system_assigned":
        return IdentityConfiguration(type="system_assigned")
    if kind == "user_assigned":
        if not resource_id:
            raise ValueError("a user-assigned identity needs its resource id")
        return IdentityConfiguration(
            type="user_assigned",
            user_assigned_identities=[ManagedIdentityConfiguration(resource_id=resource_id)],
        )
    raise ValueError(f"identity {kind!r} is not system_assigned, user_assigned or none")


def endpoint_entity(
    name: str, compute: str, *, traffic: dict | None = None, tags=None, identity=None
):
    from azure.ai.ml.entities import KubernetesOnlineEndpoint

    return KubernetesOnlineEndpoint(
        name=name,
        compute=compute,
        auth_mode="key",  # key or aml_token on Kubernetes; aad_token is managed-only
        traffic=traffic or {},
        identity=identity,
        description="Many-models real-time scoring (mlops-assets): one model set per deployment.",
        tags=tags or {},
    )


def model_version(release: ModelSetRelease) -> str:
    """The AML model version of a release: the registry version and the manifest digest.

    Versions of an AML model are immutable, and dev and prod registries (or a re-registered
    version) can reuse a number for other content: with the digest in it, one AML version
    always means one model set, and releasing the same set again finds it."""
    return f"{release.version}-{release.ref.manifest_sha256[:16]}"


def model_entity(release: ModelSetRelease, path: str):
    from azure.ai.ml.entities import Model

    return Model(
        name=f"{release.dataset}-models",
        version=model_version(release),
        path=path,
        type="custom_model",
        description=f"{release.dataset} model set (manifest + packs), as registered in MLflow.",
        tags={
            "folder": release.folder,
            "manifest_sha256": release.ref.manifest_sha256,
            "registry_version": str(release.version),
        },
    )


@dataclass
class DeploymentSettings:
    """Sizing and behaviour of one Kubernetes deployment."""

    environment: str = "azureml:mlops-assets-serving@latest"
    # The repository root, whatever the working folder (the entry script imports mlops_assets).
    code: str = str(Path(__file__).resolve().parents[1])
    instance_type: str = "defaultinstancetype"
    instance_count: int = 3
    cpu_request: str = "1"
    memory_request: str = "1Gi"
    cpu_limit: str = "2"
    memory_limit: str = "2Gi"
    request_timeout_ms: int = 5000
    # gunicorn sync workers per pod (WORKER_COUNT), as `mlops serve` runs locally: one per CPU
    # of the limit; azureml-fe then sends each pod as many requests at once (docs/serving.md).
    worker_count: int = 2
    worker_timeout_s: int = WORKER_TIMEOUT_S
    read_timeout_s: float = ServingSettings.read_timeout_s
    max_concurrent_requests_per_instance: int | None = None  # None: worker_count
    cache_models: int = 2000
    cache_bytes: int = 256 << 20
    min_instances: int = 2
    max_instances: int = 10
    target_utilization_percentage: int = 70
    app_insights_enabled: bool = False  # the inference server's logs and metrics to App Insights
    # Request collection (serving/collector.py): the share of requests kept, and the storage
    # they go to as Storage.config() (the prod storage, where the inference summary reads them).
    collect_rate: float = 0.0
    collect_storage: dict[str, Any] | None = None
    # The QA load profile against the new deployment at 0 % traffic (0 s: none).
    qa_load_rps: float = 20.0
    qa_load_seconds: float = 0.0


def collection_env(s: DeploymentSettings) -> dict[str, str]:
    """What the entry script's collector needs to write sampled requests to ``collect_storage``
    (``MLOPS_SERVING_COLLECT_*``); nothing when collection is off."""
    if s.collect_rate <= 0:
        return {}
    if not s.collect_storage:
        raise ValueError("collect_rate > 0 needs collect_storage (where the records go)")
    return {
        "MLOPS_SERVING_COLLECT_RATE": str(s.collect_rate),
        "MLOPS_SERVING_COLLECT_STORAGE": json.dumps(s.collect_storage, sort_keys=True),
    }


def deployment_entity(
    color: str,
    endpoint_name: str,
    release: ModelSetRelease,
    model: str,
    settings: DeploymentSettings | None = None,
):
    """The blue or green ``KubernetesOnlineDeployment`` of ``release``."""
    from azure.ai.ml.entities import (
        CodeConfiguration,
        KubernetesOnlineDeployment,
        OnlineRequestSettings,
        ProbeSettings,
        ResourceRequirementsSettings,
        ResourceSettings,
        TargetUtilizationScaleSettings,
    )

    if color not in COLORS:
        raise ValueError(f"deployment colour must be one of {COLORS}, not {color!r}")
    s = settings or DeploymentSettings()
    probe = dict(initial_delay=10, period=10, timeout=2, success_threshold=1)
    return KubernetesOnlineDeployment(
        name=color,
        endpoint_name=endpoint_name,
        model=model,
        code_configuration=CodeConfiguration(code=s.code, scoring_script=SCORING_SCRIPT),
        environment=s.environment,
        instance_type=s.instance_type,
        instance_count=s.instance_count,
        request_settings=OnlineRequestSettings(
            request_timeout_ms=s.request_timeout_ms,
            max_concurrent_requests_per_instance=s.max_concurrent_requests_per_instance
            or s.worker_count,
        ),
        # Failing readiness until init() has verified the model set; liveness restarts faster
        # than the 30 x 10 s default.
        liveness_probe=ProbeSettings(failure_threshold=6, **probe),
        readiness_probe=ProbeSettings(failure_threshold=30, **probe),
        resources=ResourceRequirementsSettings(
            requests=ResourceSettings(cpu=s.cpu_request, memory=s.memory_request),
            limits=ResourceSettings(cpu=s.cpu_limit, memory=s.memory_limit),
        ),
        scale_settings=TargetUtilizationScaleSettings(
            min_instances=s.min_instances,
            max_instances=s.max_instances,
            polling_interval=1,
            target_utilization_percentage=s.target_utilization_percentage,
        ),
        app_insights_enabled=s.app_insights_enabled,
        environment_variables={
            "MLOPS_SERVING_DATASET": release.dataset,
            "MLOPS_SERVING_SOURCE": "model_dir",
            "MLOPS_SERVING_VERSION": str(release.version),
            # The model directory's manifest must match the registered digest (model_dir source).
            "MLOPS_SERVING_MANIFEST_SHA256": release.ref.manifest_sha256,
            "MLOPS_SERVING_CACHE_MODELS": str(s.cache_models),
            "MLOPS_SERVING_CACHE_BYTES": str(s.cache_bytes),
            # A stalled client holds one worker for at most these (docs/serving.md).
            "MLOPS_SERVING_READ_TIMEOUT_S": str(s.read_timeout_s),
            **worker_env(s.worker_count, s.worker_timeout_s),
            **collection_env(s),
        },
        tags={"model_set_version": str(release.version), "folder": release.folder},
    )
