"""``ModelSetRef``: the one identity of a model set, from training to serving and batch scoring."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from mlops_assets.ml import modelset


class ModelSetError(RuntimeError):
    """A model set cannot be used: missing, unreadable, or not what its reference says."""


@dataclass(frozen=True)
class ModelSetRef:
    """One model set: which registered model and version, where, and its manifest's digest.

    ``version`` is the training run's label (``<as_of>/<run8>``); ``registry_version`` is set once
    the set is registered (``None`` before). ``folder`` is relative to the storage root the set
    was written to (dev or prod storage: promotion copies keep the folder).
    """

    name: str
    version: str
    folder: str
    manifest_sha256: str
    registry_version: int | None = None

    def __post_init__(self) -> None:
        if not self.folder or not self.manifest_sha256:
            raise ModelSetError(f"a model set reference needs a folder and a digest: {self}")

    @property
    def manifest_name(self) -> str:
        return f"{self.folder}/{modelset.MANIFEST}"

    @property
    def label(self) -> str:
        """What a server reports as its model-set version: the registry version once there is
        one, else the training run's label."""
        return str(self.registry_version) if self.registry_version is not None else self.version

    def registered(self, registry_version: int) -> ModelSetRef:
        return replace(self, registry_version=int(registry_version))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSetRef:
        missing = [k for k in ("name", "version", "folder", "manifest_sha256") if not data.get(k)]
        if missing:
            raise ModelSetError(f"model set reference {data!r} lacks {missing}")
        rv = data.get("registry_version")
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            folder=str(data["folder"]),
            manifest_sha256=str(data["manifest_sha256"]),
            registry_version=int(rv) if rv not in (None, "") else None,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSetRef:
        return cls.from_dict(json.loads(text))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
