"""``AzureMLKubernetesEndpoint``: releases to a Kubernetes online endpoint on an attached AKS."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from pydantic import Field, PrivateAttr

from mlops_assets.serving.local import WORKER_TIMEOUT_S
from resources.aml_entities import DeploymentSettings, identity_entity
from resources.endpoints import EndpointResource, ModelSetRelease
from resources.rollout import AmlRolloutOps, staged_rollout

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
