"""The emulated workspace's state: its computes and every entity it received."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError


@dataclass
class Received:
    """One call the emulation received: the operation and the SDK entity (or name) it got."""

    operation: str
    entity: Any


@dataclass
class EmulatedWorkspace:
    """State shared by the emulated operations.

    Args:
        root: Folder for everything the emulation writes (job working folders, outputs, logs).
        computes: The workspace's compute targets, as SDK entities (``AmlCompute``,
            ``KubernetesCompute``), by name.
        env: Environment variables every executed job or deployment process gets, beside its
            own (e.g. the Azurite connection the stand-in for the workspace's storage uses).
        datastores: Local folders standing for the workspace's datastores, by name:
            ``azureml://datastores/<name>/paths/<path>`` is ``datastores[name] / path``.
        environments: The workspace's registered environments (SDK ``Environment`` entities)
            by name; processes run on this interpreter whichever one a job names.
    """

    root: Path
    computes: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    datastores: dict[str, Path] = field(default_factory=dict)
    environments: dict[str, Any] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, operation: str, entity: Any) -> None:
        with self._lock:
            self.received.append(Received(operation, entity))

    def calls(self, operation: str) -> list[Any]:
        """The entities received by ``operation`` (e.g. ``"jobs.create_or_update"``), in order."""
        with self._lock:
            return [r.entity for r in self.received if r.operation == operation]

    def compute(self, name: str) -> Any:
        """The compute target ``name``; raises ``ResourceNotFoundError`` as Azure does."""
        try:
            return self.computes[name]
        except KeyError:
            raise ResourceNotFoundError(
                f"Compute {name!r} not found in the emulated workspace "
                f"(it has: {sorted(self.computes) or 'none'})"
            ) from None

    def environment(self, name: str, version: str | None = None) -> Any:
        """The environment ``name`` (at ``version`` if given, else its latest); raises
        ``ResourceNotFoundError`` as Azure does."""
        env = self.environments.get(name)
        if env is None or (version is not None and str(env.version) != str(version)):
            raise ResourceNotFoundError(
                f"Environment {name}{':' + version if version else ''} not found in the "
                f"emulated workspace (it has: {sorted(self.environments) or 'none'})"
            )
        return env


class ComputeOperations:
    """``MLClient.compute``: get and list."""

    def __init__(self, workspace: EmulatedWorkspace):
        self._ws = workspace

    def get(self, name: str) -> Any:
        self._ws.record("compute.get", name)
        return self._ws.compute(name)

    def list(self) -> list[Any]:
        return list(self._ws.computes.values())
