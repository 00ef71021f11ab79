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

The AKS side lives in ``resources.aml_entities`` (the azure-ai-ml entities, pure),
``resources.rollout`` (``staged_rollout`` over ``RolloutOps``; ``AmlRolloutOps`` on an
``MLClient``) and ``resources.aml_endpoint`` (the resource).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mlops_assets.domain.model_sets import ModelSetRef, pointer_name, read_pointer, write_pointer
from mlops_assets.storage import LocalStorage


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
