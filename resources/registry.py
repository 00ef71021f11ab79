"""The model registry: one model-set version per training run, aliases to serve and roll back.

A version's source is the URI of a model-set folder (manifest + packs); its tags carry what a
person or a gate needs without opening it (as-of date, counts, manifest sha256, the storage
folder). Registering costs a fixed number of calls whatever the number of series (docs/architecture.md §3).

``MlflowRegistry`` talks to any MLflow tracking/registry server: locally a SQLite store under the
project home (``sqlite:///<home>/mlflow/dev.db``), on Azure the AML workspace's MLflow tracking
URI (``azureml://...``, given by configuration only; the ``azureml-mlflow`` plugin must then be
installed). An unreachable registry raises ``RegistryUnavailableError`` with the URI in the
message, and a registration that fails half way removes the version it created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import dagster as dg
from pydantic import Field

from mlops_assets.domain.registry_aliases import Aliases, uses_tags
from mlops_assets.domain.registry_records import (
    COMPLETE,
    INCOMPLETE,
    REPLACES_TAG,
    STATE_TAG,
    ModelSetVersion,
    RegistryError,
    RegistryUnavailableError,
    RunRecord,
)
from mlops_assets.faults import fault_point
from mlops_assets.heap import import_frozen
from resources.registry_store import RegistryStoreError, ensure_sqlite_store

__all__ = [
    "MlflowRegistry",
    "ModelRegistry",
    "ModelSetVersion",
    "RegistryError",
    "RegistryStoreError",
    "RegistryUnavailableError",
    "RunRecord",
]


class ModelRegistry(dg.ConfigurableResource, ABC):
    """Where model-set versions are registered and which one each alias points at."""

    alias: str = Field(
        default="champion",
        description="The alias this registry serves from: `champion` in dev, `production` in prod.",
    )

    @abstractmethod
    def register_model_set(
        self,
        name: str,
        source: str,
        tags: dict[str, str],
        run: RunRecord | None = None,
        alias: str | None = None,
    ) -> ModelSetVersion:
        """Create one version (tags included) and optionally point ``alias`` at it.

        Raises:
            RegistryUnavailableError: The registry cannot be reached; nothing was registered.
            RegistryError: Registration failed; the version created (if any) was removed.
        """

    @abstractmethod
    def get_version(self, name: str, version: int) -> ModelSetVersion | None: ...

    @abstractmethod
    def get_alias(self, name: str, alias: str | None = None) -> ModelSetVersion | None:
        """The version ``alias`` (default: this registry's alias) points at, if any."""

    @abstractmethod
    def set_alias(self, name: str, alias: str, version: int) -> None: ...

    @abstractmethod
    def find_version(self, name: str, tag: str, value: str) -> ModelSetVersion | None:
        """The newest version whose tag ``tag`` equals ``value`` (for idempotent re-runs)."""

    @abstractmethod
    def list_versions(self, name: str) -> list[ModelSetVersion]:
        """Every version, oldest first (for rollback and the UI; O(versions), not series)."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the registry is, for messages."""


log = logging.getLogger(__name__)

_CLIENTS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def refuse_aml_registry(uri: str) -> None:
    """Dev -> prod is two workspaces' MLflow registries with a verified copy between them
    (docs/registry.md): an Azure ML *registry* (``.../registries/<name>``) is the other design,
    which MLflow model management does not support; configuring one is refused at once."""
    if "/registries/" in uri.lower() and uri.lower().startswith("azureml:"):
        raise RegistryError(
            f"{_redact(uri)} is an Azure ML registry, not a workspace: MLflow model management "
            "does not support organizational registries. Promotion copies verified model sets "
            "between two workspaces; set MLOPS_MLFLOW_DEV_URI / MLOPS_MLFLOW_PROD_URI to the "
            "workspaces' MLflow tracking URIs (az ml workspace show --query mlflow_tracking_uri)."
        )


def _redact(uri: str) -> str:
    p = urlparse(uri)
    if p.password:
        return uri.replace(p.password, "***")
    return uri


class MlflowRegistry(ModelRegistry):
    """An MLflow tracking server and model registry (SQLite locally, AML workspace on Azure)."""

    tracking_uri: str = Field(description="e.g. sqlite:////abs/path/dev.db or azureml://...")
    registry_uri: str | None = Field(default=None, description="Defaults to tracking_uri.")
    artifact_root: str | None = Field(
        default=None,
        description="Base URI for new experiments' artifacts (locally the storage resource's "
        "folder); None leaves it to the server (AML workspace).",
    )
    http_max_retries: int | None = Field(
        default=None, description="MLFLOW_HTTP_REQUEST_MAX_RETRIES for http(s) servers."
    )
    http_timeout_s: int | None = Field(
        default=None, description="MLFLOW_HTTP_REQUEST_TIMEOUT for http(s) servers."
    )
    alias_mode: Literal["auto", "native", "tags"] = Field(
        default="auto",
        description="Where aliases live: `native` MLflow aliases, or `tags` (one registered-model "
        "tag per alias, `mlops_alias.<alias>`) where a registry does not document aliases; "
        "`auto`: tags on `azureml://` registries, native elsewhere (docs/registry.md).",
    )
    incomplete_grace_s: int = Field(
        default=600,
        description="A registration interrupted (version left `mlops_state=incomplete`) longer "
        "ago than this is removed by the next registration; a younger one may still be running.",
    )

    @property
    def location(self) -> str:
        return _redact(self.registry_uri or self.tracking_uri)

    def _unavailable(self, exc: BaseException) -> RegistryUnavailableError:
        return RegistryUnavailableError(
            f"model registry at {self.location} cannot be reached: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        )

    def client(self):
        """The MlflowClient of these stores (cached per URI pair, both stores probed once)."""
        key = (self.tracking_uri, self.registry_uri or self.tracking_uri)
        with _LOCK:
            client = _CLIENTS.get(key)
            if client is not None:
                return client
            if self.http_max_retries is not None:
                os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(self.http_max_retries)
            if self.http_timeout_s is not None:
                os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(self.http_timeout_s)
            for uri in set(key):
                refuse_aml_registry(uri)
            try:
                for uri in set(key):
                    if uri.startswith("sqlite:///"):
                        # Created atomically (a kill mid-migration leaves nothing half-made).
                        ensure_sqlite_store(Path(uri.removeprefix("sqlite:///")))
                mlflow = import_frozen("mlflow")  # the rest of the process's life
                client = mlflow.MlflowClient(tracking_uri=key[0], registry_uri=key[1])
                # Probe both stores once: a wrong URI fails here, before anything is written.
                client.search_experiments(max_results=1)
                client.search_registered_models(max_results=1)
            except RegistryStoreError:
                raise
            except Exception as exc:
                raise self._unavailable(exc) from exc
            _CLIENTS[key] = client
            return client

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _is_not_found(exc):
                return None
            if _is_connection_error(exc):
                raise self._unavailable(exc) from exc
            raise RegistryError(f"{fn.__name__} on {self.location} failed: {exc}") from exc

    def _aliases(self, client) -> Aliases:
        return Aliases(client, uses_tags(self.registry_uri or self.tracking_uri, self.alias_mode))

    def _versions(self, client, name: str, found) -> list[ModelSetVersion]:
        """Records of MLflow ``ModelVersion``s of ``name``, each with its aliases."""
        found = [mv for mv in found or [] if mv is not None]
        by_version = self._call(self._aliases(client).by_version, name) if found else None
        return [
            ModelSetVersion(
                name=mv.name,
                version=int(mv.version),
                source=mv.source,
                tags=dict(mv.tags or {}),
                aliases=tuple(
                    getattr(mv, "aliases", None) or ()
                    if by_version is None
                    else by_version.get(str(mv.version), ())
                ),
                run_id=mv.run_id or None,
            )
            for mv in found
        ]

    def _experiment_id(self, client, name: str) -> str:
        exp = self._call(client.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{name}" if self.artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by another run
            exp = self._call(client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def register_model_set(
        self,
        name: str,
        source: str,
        tags: dict[str, str],
        run: RunRecord | None = None,
        alias: str | None = None,
    ) -> ModelSetVersion:
        from mlflow.entities import Metric, Param, RunTag

        client = self.client()
        run_id = None
        created = None
        try:
            if run is not None:
                exp_id = self._experiment_id(client, run.experiment)
                r = client.create_run(exp_id, run_name=run.run_name, tags=run.tags)
                run_id = r.info.run_id
                now = int(time.time() * 1000)
                client.log_batch(
                    run_id,
                    params=[Param(k, str(v)[:6000]) for k, v in run.params.items()],
                    metrics=[
                        Metric(k, float(v), now, 0)
                        for k, v in run.metrics.items()
                        if v is not None and v == v
                    ],
                    tags=[RunTag("mlflow.runName", run.run_name)],
                )
                if run.artifacts:
                    with tempfile.TemporaryDirectory() as tmp:
                        for fname, data in run.artifacts.items():
                            (Path(tmp) / fname).write_bytes(data)
                        client.log_artifacts(run_id, tmp, artifact_path="model_set")
            if self._call(client.get_registered_model, name) is None:
                try:
                    client.create_registered_model(
                        name, description="One version per training run: a whole model set."
                    )
                except Exception:
                    if self._call(client.get_registered_model, name) is None:
                        raise
            self.recover_interrupted(name)
            # Our state tags are this registration's own (a promotion copies a dev version's).
            tags = {k: str(v) for k, v in tags.items() if k not in (STATE_TAG, REPLACES_TAG)}
            tags[STATE_TAG] = INCOMPLETE
            if alias:
                before = self._call(self._aliases(client).version, name, alias)
                tags[REPLACES_TAG] = f"{alias}:{before.version if before is not None else ''}"
            # Phase one: the version with every tag, marked incomplete (readers skip it).
            mv = client.create_model_version(name, source, run_id=run_id, tags=tags)
            created = mv.version
            fault_point("registration")
            if alias:
                self._aliases(client).point(name, alias, mv.version)
                fault_point("alias.move")
            if run_id:
                client.set_terminated(run_id, "FINISHED")
            # Phase two, the last write: the version is complete.
            client.set_model_version_tag(name, mv.version, STATE_TAG, COMPLETE)
            return self._versions(client, name, [client.get_model_version(name, mv.version)])[0]
        except Exception as exc:
            if created is not None:
                with contextlib.suppress(Exception):
                    self._restore_alias(client, name, created)
            self._undo(client, name, created, run_id)
            if isinstance(exc, RegistryError):
                raise
            if _is_connection_error(exc):
                raise self._unavailable(exc) from exc
            raise RegistryError(
                f"registering {name} at {self.location} failed (nothing left registered): {exc}"
            ) from exc

    def recover_interrupted(self, name: str) -> list[int]:
        """Remove the versions of ``name`` whose registration was interrupted (a killed
        process) more than ``incomplete_grace_s`` ago: an alias moved to one goes back to the
        version it replaced, its tracking run is ended as FAILED. Returns the versions removed.
        """
        client = self.client()
        found = self._call(
            client.search_model_versions,
            f"name = '{name}' and tags.`{STATE_TAG}` = '{INCOMPLETE}'",
        )
        cutoff_ms = (time.time() - self.incomplete_grace_s) * 1000
        removed = []
        for mv in found or []:
            if (mv.last_updated_timestamp or mv.creation_timestamp or 0) > cutoff_ms:
                continue
            self._restore_alias(client, name, mv.version)
            self._undo(client, name, mv.version, mv.run_id or None)
            removed.append(int(mv.version))
            log.warning(
                "%s v%s at %s: its registration was interrupted; removed it (run %s ended FAILED)",
                name,
                mv.version,
                self.location,
                mv.run_id or "-",
            )
        return removed

    def _restore_alias(self, client, name: str, version) -> None:
        """Point the alias an unfinished registration moved back where it was."""
        mv = self._call(client.get_model_version, name, str(version))
        replaced = (mv.tags or {}).get(REPLACES_TAG, "") if mv is not None else ""
        alias, _, before = replaced.partition(":")
        if not alias:
            return
        aliases = self._aliases(client)
        current = self._call(aliases.version, name, alias)
        if current is None or str(current.version) != str(version):
            return
        if before:
            aliases.point(name, alias, before)
        else:
            aliases.drop(name, alias)

    @staticmethod
    def _undo(client, name: str, version, run_id: str | None) -> None:
        if version is not None:
            try:
                client.delete_model_version(name, version)
            except Exception:
                pass
        if run_id is not None:
            try:
                client.set_terminated(run_id, "FAILED")
            except Exception:
                pass

    def get_version(self, name: str, version: int) -> ModelSetVersion | None:
        """Version ``version``; None if it does not exist or its registration was interrupted."""
        client = self.client()
        mv = self._call(client.get_model_version, name, str(version))
        found = self._versions(client, name, [mv])
        return found[0] if found and found[0].complete else None

    def get_alias(self, name: str, alias: str | None = None) -> ModelSetVersion | None:
        """The version ``alias`` points at; if its registration was interrupted after the alias
        moved, the complete version the alias pointed at before."""
        alias = alias or self.alias
        client = self.client()
        mv = self._call(self._aliases(client).version, name, alias)
        found = next(iter(self._versions(client, name, [mv])), None)
        if found is None or found.complete:
            return found
        moved, _, before = found.tags.get(REPLACES_TAG, "").partition(":")
        return self.get_version(name, int(before)) if moved == alias and before else None

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._call(self._aliases(self.client()).point, name, alias, str(version))

    def find_version(self, name: str, tag: str, value: str) -> ModelSetVersion | None:
        safe = value.replace("'", "")
        client = self.client()
        found = self._call(
            client.search_model_versions, f"name = '{name}' and tags.`{tag}` = '{safe}'"
        )
        versions = [v for v in self._versions(client, name, found) if v.complete]
        return max(versions, key=lambda v: v.version) if versions else None

    def list_versions(self, name: str) -> list[ModelSetVersion]:
        client = self.client()
        found = self._call(client.search_model_versions, f"name = '{name}'")
        versions = self._versions(client, name, found)
        return sorted((v for v in versions if v.complete), key=lambda v: v.version)


def _is_not_found(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def _is_connection_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(
        s in text
        for s in (
            "connection",
            "unable to open database",
            "max retries",
            "timed out",
            "operationalerror",
            "name or service not known",
        )
    )
