"""The online endpoint a model set is released to: local inference server or AKS via Azure ML.

``EndpointResource.release(...)`` moves the endpoint to a new model-set version and returns a
report; a failed release leaves the previous version serving.

* ``LocalEndpoint``: the ``mlops serve`` endpoint (azmlinfsrv on 127.0.0.1). Releasing rewrites
  the pointer file it polls (``serving/<dataset>/<alias>.json`` under the prod storage root, a
  ``ModelSetRef``);
  the server hot-swaps. With ``url`` set, the release waits until the endpoint answers with the
  new version, and puts the pointer back if it does not within ``switch_timeout_s``. Its API
  key is read from the environment variable ``api_key_env`` when a run calls the endpoint: the
  config (shown by the UI, stored in run snapshots) holds only the variable's name.
* ``AzureMLKubernetesEndpoint``: a ``KubernetesOnlineEndpoint`` on an attached AKS compute with
  two deployments, ``blue`` and ``green``. The idle colour gets the new model set (registered
  as an AML model asset) at 0 % traffic, is health-checked by direct calls (the
  ``azureml-model-deployment`` header), then traffic moves in stages (10 %, 50 %, 100 % by
  default), each followed by health checks; a failed check puts 100 % back on the old colour
  (automatic rollback). The old deployment is deleted only after the new one holds 100 % and is
  healthy (``delete_previous``). Mirror traffic is not used: Kubernetes endpoints lack it.

The entities are built by ``endpoint_entity`` / ``deployment_entity`` / ``traffic_stages``
(pure, tested by dumping them to YAML and loading them back with azure-ai-ml); the staged
rollout logic is ``staged_rollout`` over a small ``RolloutOps`` interface, so it is tested with
a fake; only ``AmlRolloutOps`` talks to Azure (``DefaultAzureCredential``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from mlops_assets.domain.model_sets import ModelSetRef, pointer_name, read_pointer, write_pointer
from mlops_assets.serving.local import WORKER_TIMEOUT_S, worker_env
from mlops_assets.serving.settings import ServingSettings
from mlops_assets.storage import LocalStorage

COLORS = ("blue", "green")
LOG_LINES = 20  # of a failed deployment's log, in the release error
SCORING_SCRIPT = "mlops_assets/serving/score.py"


class ReleaseError(RuntimeError):
    """The release did not complete; the previous version is serving (rolled back)."""


@dataclass(frozen=True)
class ModelSetRelease:
    """What to release: a registered model set (its ref has the prod registry version) and
    records to smoke-test it with."""

    dataset: str
    ref: ModelSetRef
    source_uri: str | None = None  # the registry version's source (a folder URI)
    smoke_records: list[dict] = field(default_factory=list)
    # The set as one self-contained folder (``model_sets.bundle``), for endpoints that copy a
    # folder to their servers (``EndpointResource.needs_bundle``).
    bundle: str | None = None

    @property
    def version(self) -> str:
        """The version the endpoint reports (the registry version)."""
        return self.ref.label

    @property
    def folder(self) -> str:
        return self.ref.folder


class EndpointResource(dg.ConfigurableResource, ABC):
    """Where real-time scoring runs."""

    @abstractmethod
    def release(self, release: ModelSetRelease, log: Callable[[str], None] = print) -> dict:
        """Serve ``release``; returns a report (stages, timings). Raises ReleaseError."""

    @abstractmethod
    def describe(self) -> str: ...

    def needs_bundle(self) -> bool:
        """Whether ``release`` needs the set as one folder (``ModelSetRelease.bundle``): an
        Azure ML model is one folder; a local endpoint reads the storage itself."""
        return False

    @abstractmethod
    def where(self, dataset: str, report: dict) -> dict[str, str]:
        """Where ``release``'s report says ``dataset`` now serves, for the deployment asset:
        ``target`` (local or azureml), how to reach it, and what serves it."""


# ---- local ------------------------------------------------------------------------------------


def _get_json(url: str, api_key: str | None, timeout: float = 5) -> dict:
    req = urllib.request.Request(url)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def key_from_env(name: str) -> str | None:
    """The first key of the comma-separated list in ``$name`` (the one clients send)."""
    keys = [k.strip() for k in (os.environ.get(name) or "").split(",")]
    return next((k for k in keys if k), None)


class LocalEndpoint(EndpointResource):
    """The local azmlinfsrv endpoint started by ``mlops serve``, switched by a pointer file."""

    root: str = Field(description="The storage root the endpoint serves from (prod storage).")
    alias: str = "production"
    url: str | None = Field(
        default=None, description="e.g. http://127.0.0.1:5001 ; None: only write the pointer."
    )
    api_key_env: str = Field(
        default="MLOPS_SERVING_API_KEY",
        description="The environment variable holding the endpoint's API key(s), read when a "
        "run calls the endpoint; the key itself is never part of this config.",
    )
    switch_timeout_s: float = 30.0

    def info(self) -> dict:
        """``GET /score`` of the endpoint (version served, cache, last error).

        Raises:
            ValueError: No ``url`` is configured.
            OSError: The endpoint did not answer (``urllib.error.HTTPError`` for 401 and the
                like).
        """
        if not self.url:
            raise ValueError(f"{self.describe()} has no url to call")
        return _get_json(f"{self.url.rstrip('/')}/score", key_from_env(self.api_key_env))

    def describe(self) -> str:
        served = f"the server at {self.url}" if self.url else "`mlops serve`"
        return f"local endpoint: {served} follows alias {self.alias!r} on {self.root}"

    def where(self, dataset: str, report: dict) -> dict[str, str]:
        follow = f"mlops serve --dataset {dataset} --alias {self.alias} --root {self.root}"
        return {
            "target": "local",
            "url": f"{self.url.rstrip('/')}/score" if self.url else "",
            "pointer": str(self.pointer(dataset)),
            "served_by": (
                f"the local server follows alias {self.alias!r}: it re-reads the pointer every "
                f"poll and hot-swaps (`{follow}`)"
                + ("; switch confirmed" if report.get("switched") else "")
            ),
        }

    def pointer(self, dataset: str) -> Path:
        return Path(self.root) / pointer_name(dataset, self.alias)

    def current(self, dataset: str) -> ModelSetRef | None:
        return read_pointer(LocalStorage(self.root), pointer_name(dataset, self.alias))

    def release(self, release: ModelSetRelease, log: Callable[[str], None] = print) -> dict:
        t0 = time.perf_counter()
        storage, name = LocalStorage(self.root), pointer_name(release.dataset, self.alias)
        previous = self.current(release.dataset)
        write_pointer(storage, name, release.ref)
        log(f"pointer {self.pointer(release.dataset)} -> v{release.version} ({release.folder})")
        report: dict[str, Any] = {
            "endpoint": self.describe(),
            "previous_version": previous.label if previous else None,
            "version": release.version,
            "switched": False,
        }
        if self.url:
            deadline = time.monotonic() + self.switch_timeout_s
            info: dict = {}
            while time.monotonic() < deadline:
                try:
                    info = self.info()
                    if str(info.get("model_set_version")) == str(release.version):
                        break
                except OSError as exc:
                    info = {"error": repr(exc)}
                time.sleep(0.2)
            else:
                if previous:
                    write_pointer(storage, name, previous)
                raise ReleaseError(
                    f"{self.url} still serves {info.get('model_set_version')!r} after "
                    f"{self.switch_timeout_s}s (last error: {info.get('last_error') or info.get('error')}); "
                    f"pointer put back to v{previous.label if previous else None}"
                )
            report["switched"] = True
            report["endpoint_info"] = {
                k: info.get(k) for k in ("model_set_version", "swaps", "series", "source")
            }
        report["seconds"] = round(time.perf_counter() - t0, 3)
        return report


# ---- Azure ML (AKS) ----------------------------------------------------------------------------


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


def traffic_stages(old: str | None, new: str, stages: list[int]) -> list[dict[str, int]]:
    """The endpoint traffic after each stage: ``[{blue: 90, green: 10}, ..., {green: 100}]``.

    With nothing live, one stage: ``{new: 100}`` (an endpoint's traffic sums to 0 or 100)."""
    out: list[dict[str, int]] = []
    for p in stages:
        if not 0 < p <= 100:
            raise ValueError(f"traffic stage {p} is not in (0, 100]")
        if old is not None:
            out.append({old: 100 - p, new: p})
    if not out or out[-1].get(new) != 100:
        out.append({new: 100} if old is None else {old: 0, new: 100})
    return out


class RolloutOps(ABC):
    """What a staged rollout needs from an endpoint (AML, or a fake in tests)."""

    @abstractmethod
    def ensure_endpoint(self) -> dict[str, int]:
        """Create the endpoint if missing; returns its current traffic."""

    @abstractmethod
    def create_deployment(self, color: str, release: ModelSetRelease) -> None: ...

    @abstractmethod
    def set_traffic(self, traffic: dict[str, int]) -> None: ...

    @abstractmethod
    def health_check(self, color: str | None, release: ModelSetRelease) -> str | None:
        """None if healthy, else why not. ``color`` None: through the endpoint's routing."""

    @abstractmethod
    def delete_deployment(self, color: str) -> None: ...

    def load_check(self, color: str, release: ModelSetRelease) -> dict | None:
        """A short load profile against ``color`` at 0 % traffic (``loadtest`` figures), or
        None where there is none; its ``errors`` fail the release."""
        return None


def staged_rollout(
    ops: RolloutOps,
    release: ModelSetRelease,
    stages: list[int],
    *,
    checks_per_stage: int = 3,
    stage_wait_s: float = 0.0,
    delete_previous: bool = True,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Blue/green with staged traffic and automatic rollback. Returns a report.

    Raises:
        ReleaseError: A health check failed; traffic is back on the old colour.
    """
    traffic = ops.ensure_endpoint()
    live = [c for c, p in traffic.items() if p > 0]
    old = max(live, key=lambda c: traffic[c]) if live else None
    new = COLORS[1] if old == COLORS[0] else COLORS[0]
    report: dict[str, Any] = {"old": old, "new": new, "stages": []}
    log(f"deploying v{release.version} as {new} (live: {old})")
    ops.create_deployment(new, release)
    problem = ops.health_check(new, release)  # called directly at 0 % traffic
    if problem:
        ops.delete_deployment(new)
        raise ReleaseError(f"{new} unhealthy before taking traffic: {problem}; {old} untouched")
    profile = ops.load_check(new, release)
    if profile is not None:
        report["load_profile"] = profile
        if profile.get("errors"):
            ops.delete_deployment(new)
            raise ReleaseError(
                f"{new} failed {profile['errors']} of {profile['offered']} load-profile requests "
                f"({profile.get('statuses')}); {old} untouched"
            )
    for plan in traffic_stages(old, new, stages):
        ops.set_traffic(plan)
        log(f"traffic {plan}")
        checks: list[str] = []
        stage = {"traffic": plan, "checks": checks}
        report["stages"].append(stage)
        for _ in range(checks_per_stage):
            sleep(stage_wait_s / max(1, checks_per_stage))
            problem = ops.health_check(None, release) or ops.health_check(new, release)
            checks.append(problem or "ok")
            if problem:
                back = {old: 100, new: 0} if old else {new: 0}
                ops.set_traffic(back)
                report["rolled_back_to"] = old
                log(f"health check failed at {plan}: {problem}; traffic back to {old}")
                raise ReleaseError(
                    f"v{release.version} failed a health check at {plan}: {problem}; "
                    f"rolled back to {old}"
                )
    if old and delete_previous:
        ops.delete_deployment(old)
        report["deleted"] = old
    return report


class AmlRolloutOps(RolloutOps):
    """``RolloutOps`` on an Azure ML workspace (``MLClient``); never used in tests."""

    def __init__(
        self,
        ml_client,
        endpoint_name: str,
        compute: str,
        model_path: str,
        settings: DeploymentSettings,
        timeout_s: float = 1800,
        identity=None,
    ):
        self.ml, self.name, self.compute = ml_client, endpoint_name, compute
        self.model_path, self.settings, self.timeout_s = model_path, settings, timeout_s
        self.identity = identity
        self.failures: dict[str, str] = {}

    def load_check(self, color: str, release: ModelSetRelease) -> dict | None:
        """``loadtest.run_profile`` through the endpoint's scoring URI to ``color`` only
        (the ``azureml-model-deployment`` header), with the smoke records as bodies."""
        from urllib.parse import urlsplit

        from mlops_assets.serving.loadtest import run_profile

        s = self.settings
        if s.qa_load_seconds <= 0 or not release.smoke_records:
            return None
        uri = urlsplit(str(self.ml.online_endpoints.get(self.name).scoring_uri))
        key = self.ml.online_endpoints.get_keys(self.name).primary_key
        tls = uri.scheme == "https"
        return run_profile(
            uri.port or (443 if tls else 80),
            [json.dumps({"data": release.smoke_records}).encode()],
            rps=s.qa_load_rps,
            seconds=s.qa_load_seconds,
            headers={"Authorization": f"Bearer {key}", "azureml-model-deployment": color},
            threads=8,
            path=uri.path or "/score",
            host=str(uri.hostname),
            tls=tls,
        )

    def ensure_endpoint(self) -> dict[str, int]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            ep = self.ml.online_endpoints.get(self.name)
        except ResourceNotFoundError:
            ep = self.ml.online_endpoints.begin_create_or_update(
                endpoint_entity(self.name, self.compute, identity=self.identity)
            ).result(timeout=self.timeout_s)
        return dict(ep.traffic or {})

    def model(self, release: ModelSetRelease):
        """The AML model of ``release``: the existing version when this set was released
        before (same digest), else a new one."""
        from azure.core.exceptions import ResourceNotFoundError

        entity = model_entity(release, self.model_path)
        try:
            found = self.ml.models.get(entity.name, version=entity.version)
        except ResourceNotFoundError:
            return self.ml.models.create_or_update(entity)
        if (found.tags or {}).get("manifest_sha256") != release.ref.manifest_sha256:
            raise ReleaseError(
                f"AML model {entity.name}:{entity.version} exists with another manifest digest"
            )
        return found

    def create_deployment(self, color: str, release: ModelSetRelease) -> None:
        from azure.core.exceptions import HttpResponseError

        model = self.model(release)
        dep = deployment_entity(
            color, self.name, release, f"azureml:{model.name}:{model.version}", self.settings
        )
        poller = self.ml.online_deployments.begin_create_or_update(dep)
        try:
            poller.result(timeout=self.timeout_s)
        except HttpResponseError as exc:  # provisioning failed: the health check says why
            self.failures[color] = str(exc).splitlines()[0][:300]

    def set_traffic(self, traffic: dict[str, int]) -> None:
        ep = self.ml.online_endpoints.get(self.name)
        ep.traffic = traffic
        self.ml.online_endpoints.begin_create_or_update(ep).result(timeout=self.timeout_s)

    def health_check(self, color: str | None, release: ModelSetRelease) -> str | None:
        import tempfile

        if color is not None:
            dep = self.ml.online_deployments.get(name=color, endpoint_name=self.name)
            state = str(getattr(dep.provisioning_state, "value", dep.provisioning_state))
            if state != "Succeeded":
                logs = self.ml.online_deployments.get_logs(
                    name=color, endpoint_name=self.name, lines=LOG_LINES
                )
                why = self.failures.get(color) or ""
                return f"{color} provisioning state {state}: {why}; last log lines: {logs[-800:]}"
        if not release.smoke_records:
            return None
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"data": release.smoke_records}, f)
        try:
            raw = self.ml.online_endpoints.invoke(
                endpoint_name=self.name, request_file=f.name, deployment_name=color
            )
        except Exception as exc:
            return f"invoke failed: {exc}"
        finally:
            Path(f.name).unlink(missing_ok=True)
        body = json.loads(raw) if isinstance(raw, str) else raw
        if str(body.get("model_set_version")) != str(release.version) and color is not None:
            return f"{color} serves {body.get('model_set_version')!r}"
        if body.get("n_errors"):
            return f"{body['n_errors']} smoke records failed"
        return None

    def delete_deployment(self, color: str) -> None:
        self.ml.online_deployments.begin_delete(name=color, endpoint_name=self.name).result(
            timeout=self.timeout_s
        )


_GIVEN_CLIENTS: dict[str, Any] = {}  # AzureMLKubernetesEndpoint.with_client


class AzureMLKubernetesEndpoint(EndpointResource):
    """A Kubernetes online endpoint (AKS attached to the AML workspace), blue/green."""

    subscription_id: str
    resource_group: str
    workspace: str
    endpoint_name: str = Field(description="6-62 characters with the deployment name")
    compute: str = Field(description="The attached Kubernetes compute's name in the workspace.")
    model_base_uri: str = Field(
        description="Datastore URI of the prod storage root, e.g. "
        "azureml://datastores/prodmodels/paths/ ; the model set folder is appended."
    )
    environment: str = "azureml:mlops-assets-serving@latest"
    instance_type: str = "defaultinstancetype"
    instance_count: int = 3
    workers: int = Field(default=2, description="gunicorn workers per pod (WORKER_COUNT)")
    worker_timeout_s: int = Field(
        default=WORKER_TIMEOUT_S,
        description="seconds a worker may spend on one connection before it is replaced "
        "(WORKER_TIMEOUT)",
    )
    stages: list[int] = Field(default_factory=lambda: [10, 50, 100])
    stage_wait_s: float = 60.0
    checks_per_stage: int = 3
    delete_previous: bool = True
    identity: str = Field(
        default="system_assigned",
        description="The endpoint's managed identity: system_assigned, user_assigned (set "
        "identity_resource_id) or none. It reads the model and writes collected requests.",
    )
    identity_resource_id: str | None = Field(
        default=None, description="ARM id of the user-assigned identity (identity=user_assigned)"
    )
    app_insights_enabled: bool = False
    collect_rate: float = Field(
        default=0.0, description="Share of requests the collector writes to collect_storage."
    )
    collect_storage: dict[str, Any] | None = Field(
        default=None,
        description="Storage.config() of the prod storage (kind azure: account_url, container, "
        "prefix) where collected requests land under inference/<dataset>/ for the inference "
        "summary; written with the endpoint's identity.",
    )
    qa_load_rps: float = 20.0
    qa_load_seconds: float = Field(
        default=5.0, description="Load profile against the new colour at 0 % traffic (0: none)."
    )

    clients: str = Field(
        default="",
        description=(
            "Set by with_client (tests, make demo-azure): the key of the client given in this "
            "process; empty: a client built with DefaultAzureCredential."
        ),
    )

    _client: Any = PrivateAttr(default=None)

    def with_client(self, ml_client: Any) -> AzureMLKubernetesEndpoint:
        """Use this ``MLClient`` (tests, or one built elsewhere) instead of
        DefaultAzureCredential's: this resource does, and so does the copy returned, which
        keeps it through Dagster's rebuild of a resource from its fields (the client is held
        by key in a process-wide table, as ``AzureMLBatchCompute.with_clients`` does)."""
        self._client = ml_client
        key = uuid.uuid4().hex
        _GIVEN_CLIENTS[key] = ml_client
        return type(self)(**{**self.model_dump(), "clients": key})

    def describe(self) -> str:
        return f"AML Kubernetes endpoint {self.endpoint_name} ({self.workspace}/{self.compute})"

    def needs_bundle(self) -> bool:
        return True

    def where(self, dataset: str, report: dict) -> dict[str, str]:
        return {
            "target": "azureml",
            "endpoint": self.endpoint_name,
            "deployment": str(report.get("new") or ""),
            "workspace": f"{self.resource_group}/{self.workspace}",
            "served_by": f"Kubernetes online deployment on {self.compute}, 100% of traffic",
        }

    def ml_client(self):
        if self._client is None and self.clients:
            self._client = _GIVEN_CLIENTS[self.clients]
        if self._client is None:
            from azure.ai.ml import MLClient
            from azure.identity import DefaultAzureCredential

            self._client = MLClient(
                DefaultAzureCredential(), self.subscription_id, self.resource_group, self.workspace
            )
        return self._client

    def settings(self) -> DeploymentSettings:
        return DeploymentSettings(
            environment=self.environment,
            instance_type=self.instance_type,
            instance_count=self.instance_count,
            worker_count=self.workers,
            worker_timeout_s=self.worker_timeout_s,
            app_insights_enabled=self.app_insights_enabled,
            collect_rate=self.collect_rate,
            collect_storage=self.collect_storage,
            qa_load_rps=self.qa_load_rps,
            qa_load_seconds=self.qa_load_seconds,
        )

    def release(self, release: ModelSetRelease, log: Callable[[str], None] = print) -> dict:
        path = f"{self.model_base_uri.rstrip('/')}/{release.bundle or release.folder}"
        ops = AmlRolloutOps(
            self.ml_client(),
            self.endpoint_name,
            self.compute,
            path,
            self.settings(),
            identity=identity_entity(self.identity, self.identity_resource_id),
        )
        return staged_rollout(
            ops,
            release,
            self.stages,
            checks_per_stage=self.checks_per_stage,
            stage_wait_s=self.stage_wait_s,
            delete_previous=self.delete_previous,
            log=log,
        )
