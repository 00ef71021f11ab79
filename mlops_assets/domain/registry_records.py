"""What a model registry holds, as plain values: a registered model-set version and the run
logged next to it (the registry itself is the ``resources.registry`` resource)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlops_assets.domain.model_sets import ModelSetRef


class RegistryError(RuntimeError):
    """A registry operation failed."""


class RegistryUnavailableError(RegistryError):
    """The registry cannot be reached (wrong URI, network, permissions)."""


@dataclass(frozen=True)
class ModelSetVersion:
    name: str
    version: int
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    run_id: str | None = None

    @property
    def folder(self) -> str | None:
        """The model-set folder, relative to the storage root it was registered from."""
        return self.tags.get("folder")

    @property
    def ref(self) -> ModelSetRef:
        """The registered model set, as every reader takes it.

        Raises:
            ModelSetError: The version lacks the ``folder`` or ``manifest_sha256`` tag (it was
                not registered by this project, or its tags were edited): nothing can verify it.
        """
        return ModelSetRef.from_dict(
            {
                "name": self.name,
                "version": self.tags.get("candidate_version") or str(self.version),
                "folder": self.tags.get("folder"),
                "manifest_sha256": self.tags.get("manifest_sha256"),
                "registry_version": self.version,
            }
        )


@dataclass
class RunRecord:
    """What one training run logs next to its version: params, metrics and artifacts."""

    experiment: str
    run_name: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
