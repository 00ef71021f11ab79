"""The model set: its identity (``ModelSetRef``), where it lives, and verified reading.

A model set is one training run's models for every series: packs of model bytes plus a manifest
(``ml.modelset``). It is referred to everywhere, from training through evaluation, registration,
promotion, serving and batch scoring, by one frozen ``ModelSetRef``; every reader checks the
manifest's sha256 against the reference before using it, and each model's sha256 before loading
it. Storage layout under the storage root::

    models/<dataset>/sets/<as_of>/<run8>/       candidate sets (training)
    models/<dataset>/releases/<as_of>/<run8>/   release sets (evaluation: promoted + carried)
    models/<dataset>/candidates/<as_of>.json    pointer to the as-of date's latest candidate
    models/<dataset>/releases/<as_of>.json      pointer to the as-of date's release
    models/<dataset>/latest.json                pointer to the latest candidate
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import pyarrow as pa

from mlops_assets.ml import modelset
from mlops_assets.ml.persistence import ModelIntegrityError
from mlops_assets.storage import Storage


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


def read_manifest(storage: Storage, ref: ModelSetRef) -> pa.Table:
    """The manifest of ``ref``, after checking its bytes against ``ref.manifest_sha256``.

    Raises:
        ModelSetError: No manifest at the reference's folder.
        ModelIntegrityError: The manifest's sha256 differs from the reference's.
    """
    try:
        data = storage.read_bytes(ref.manifest_name)
    except FileNotFoundError:
        raise ModelSetError(
            f"model set {ref.name} {ref.version}: no manifest at {storage.uri(ref.manifest_name)}"
        ) from None
    digest = sha256(data)
    if digest != ref.manifest_sha256:
        raise ModelIntegrityError(
            f"{storage.uri(ref.manifest_name)}: sha256 {digest} differs from the reference's "
            f"{ref.manifest_sha256}; the manifest was changed after it was written: refusing it"
        )
    return modelset.read_manifest(data)
