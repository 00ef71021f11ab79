"""What a model registry holds, as plain values: a registered model-set version and the run
logged next to it (the registry itself is the ``resources.registry`` resource)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlops_assets.domain.model_sets import ModelSetError, ModelSetRef

# Two-phase registration: a version is created with STATE_TAG = INCOMPLETE and gets COMPLETE
# as its last write; an interrupted one is ignored by readers and removed by a later run.
STATE_TAG = "mlops_state"
INCOMPLETE = "incomplete"
COMPLETE = "complete"
# "<alias>:<version>": what the alias pointed at before this registration moved it.
REPLACES_TAG = "mlops_replaces"


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
    def complete(self) -> bool:
        """False for a version whose registration was interrupted (versions registered before
        the state tag existed count as complete)."""
        return self.tags.get(STATE_TAG) != INCOMPLETE

    @property
    def folder(self) -> str | None:
        """The model-set folder, relative to the storage root it was registered from."""
        return self.tags.get("folder")

    @property
    def ref(self) -> ModelSetRef:
        """The registered model set, as every reader takes it.

        Raises:
            ModelSetError: The version lacks the ``folder`` or ``manifest_sha256`` tag (it was
                not registered by this project, or its tags were edited): nothing can verify it;
                or its registration was interrupted.
        """
        if not self.complete:
            raise ModelSetError(
                f"{self.name} v{self.version}: its registration was interrupted "
                f"({STATE_TAG}={INCOMPLETE}); the next registration removes it"
            )
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
