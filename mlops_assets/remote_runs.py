"""Launch and follow runs on a deployed Dagster instance, through its webserver's GraphQL API.

Continuous delivery goes through here, never ``dagster job execute`` on the CI runner: a run
launched this way is created in the production instance's run storage (PostgreSQL), waits in
its run queue behind the dataset's writer pool, is started by its run launcher (a Container
Apps job) and shows in the production UI, with its logs where every other run's are.

Authentication: the webserver's ingress sits behind Container Apps authentication (Entra ID).
With ``token_scope`` set (``api://<app id>/.default``), each request carries a bearer token
from ``DefaultAzureCredential``: in GitHub Actions, the OpenID Connect federated identity of
``azure/login``; nothing secret is stored or printed. Without it, no header is sent (a local
instance).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests
from dagster import DagsterRunStatus
from dagster_graphql import (
    DagsterGraphQLClient,
    DagsterGraphQLClientError,
    ReloadRepositoryLocationStatus,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger("mlops.remote_runs")

PARTITION_TAG = "dagster/partition"
REPOSITORY = "__repository__"  # the repository of a code location built from dg.Definitions
_DYNAMIC_NAMES = """query($job: String!, $repo: String!, $loc: String!) {
  assetNodes(pipeline: {pipelineName: $job, repositoryName: $repo, repositoryLocationName: $loc})
  { partitionDefinition { dimensionTypes { dynamicPartitionsDefinitionName } } } }"""
_ADD_PARTITION = """mutation($repo: String!, $loc: String!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: {repositoryName: $repo, repositoryLocationName: $loc},
    partitionsDefName: $name, partitionKey: $key) {
    __typename ... on PythonError { message } ... on UnauthorizedError { message } } }"""
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


class RemoteRunError(RuntimeError):
    """A launch, reload or run on the deployment did not succeed; the message says where to
    look (the run's page in the UI)."""


class _BearerAuth(requests.auth.AuthBase):
    """A fresh token per request: ``azure-identity`` caches it and renews it before expiry, so
    waiting on a run for hours never sends an expired one."""

    def __init__(self, credential: TokenCredential, scope: str) -> None:
        self.credential, self.scope = credential, scope

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.credential.get_token(self.scope).token}"
        return request


@dataclass(frozen=True)
class Deployment:
    """A Dagster webserver, e.g. ``https://dagster.<env>.azurecontainerapps.io``.

    Attributes:
        url: the webserver's base address (scheme, host, optional port and path prefix).
        location: the code location the jobs are in.
        token_scope: the Entra ID scope of the webserver's authentication, or None.
        timeout_s: per-request timeout.
    """

    url: str
    location: str = "mlops_assets"
    token_scope: str | None = None
    timeout_s: int = 60

    def client(self) -> DagsterGraphQLClient:
        parts = urlsplit(self.url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"Dagster webserver URL {self.url!r} is not an http(s) address: set "
                "MLOPS_DAGSTER_UI_URL (or --url) to e.g. https://dagster.example.net"
            )
        auth = None
        if self.token_scope:
            from azure.identity import DefaultAzureCredential

            auth = _BearerAuth(DefaultAzureCredential(), self.token_scope)
        return DagsterGraphQLClient(
            parts.hostname,
            port_number=parts.port,
            use_https=parts.scheme == "https",
            timeout=self.timeout_s,
            auth=auth,
            path_prefix=parts.path,
        )

    def run_url(self, run_id: str) -> str:
        return f"{self.url.rstrip('/')}/runs/{run_id}"

    def reload_location(self, *, wait_s: float = 300, poll_s: float = 5) -> None:
        """Make the webserver and daemon load the code location again (after its container
        was rolled to a new image), so the next launch runs the new code.

        A container that was just rolled takes a while to serve: a failed reload is retried
        until ``wait_s`` has passed, then reported with the last error.
        """
        client, deadline = self.client(), time.monotonic() + wait_s
        while True:
            info = client.reload_repository_location(self.location)
            if info.status == ReloadRepositoryLocationStatus.SUCCESS:
                return
            if time.monotonic() > deadline:
                raise RemoteRunError(
                    f"reloading code location {self.location!r} failed for {wait_s:.0f}s "
                    f"({info.failure_type}): {info.message}. Check the code location "
                    "container's log, then reload it from the UI's Deployment page."
                )
            log.info("code location %r not loaded yet: %s", self.location, info.message)
            time.sleep(poll_s)

    def add_partition(self, job: str, key: str) -> list[str]:
        """Add ``key`` to the dynamic partitions of ``job``'s assets (the as-of dates of a
        daily job), so a launch for it is valid; the partitions definitions' names."""
        client = self.client()
        ids = {"repo": REPOSITORY, "loc": self.location}
        # The client has no public call for other queries; _execute keeps its transport, auth
        # and error wrapping.
        try:
            nodes = client._execute(_DYNAMIC_NAMES, {"job": job, **ids})  # noqa: SLF001
            nodes = nodes["assetNodes"]
            names = sorted(
                {
                    d["dynamicPartitionsDefinitionName"]
                    for n in nodes
                    for d in (n["partitionDefinition"] or {}).get("dimensionTypes", [])
                    if d["dynamicPartitionsDefinitionName"]
                }
            )
            for name in names:
                out = client._execute(_ADD_PARTITION, {"name": name, "key": key, **ids})  # noqa: SLF001
                result = out["addDynamicPartition"]
                if result["__typename"] in ("PythonError", "UnauthorizedError"):
                    raise DagsterGraphQLClientError(result["message"])
        except DagsterGraphQLClientError as exc:
            raise RemoteRunError(
                f"adding partition {key!r} for {job!r} on {self.url} failed: {exc}"
            ) from exc
        return names

    def launch(
        self,
        job: str,
        *,
        partition: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_config: Mapping | None = None,
    ) -> str:
        """Submit ``job`` (for ``partition``, added first where the job's partitions are
        dynamic) to the deployment's run queue; the run id."""
        if partition:
            self.add_partition(job, partition)
        all_tags = {**(tags or {}), **({PARTITION_TAG: partition} if partition else {})}
        try:
            return self.client().submit_job_execution(
                job,
                repository_location_name=self.location,
                run_config=dict(run_config or {}),
                tags=all_tags,
            )
        except DagsterGraphQLClientError as exc:
            raise RemoteRunError(
                f"launching {job!r} on {self.url} failed: {exc}. Is the job in code location "
                f"{self.location!r} (see the UI's Jobs list) and the partition valid?"
            ) from exc

    def wait(
        self,
        run_id: str,
        *,
        timeout_s: float = 7200,
        poll_s: float = 10,
        on_status: Callable[[DagsterRunStatus], None] | None = None,
    ) -> DagsterRunStatus:
        """Poll the run until it ends; SUCCESS, else :class:`RemoteRunError` naming its page."""
        client, last, deadline = self.client(), None, time.monotonic() + timeout_s
        while True:
            status = client.get_run_status(run_id)
            if status != last and on_status is not None:
                on_status(status)
            last = status
            if status in FINISHED:
                break
            if time.monotonic() > deadline:
                raise RemoteRunError(
                    f"run {run_id} still {status.value} after {timeout_s:.0f}s; it goes on in "
                    f"the deployment: {self.run_url(run_id)}"
                )
            time.sleep(poll_s)
        if status != DagsterRunStatus.SUCCESS:
            raise RemoteRunError(
                f"run {run_id} ended {status.value}: its steps' errors are on "
                f"{self.run_url(run_id)}"
            )
        return status
