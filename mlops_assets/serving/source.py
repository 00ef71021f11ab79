"""Where the scoring server finds the model set it serves, and how it loads one.

Every source resolves to a ``Served``: the set's ``ModelSetRef`` (with the manifest digest), the
``Storage`` its files are read from, and the version label the server reports. Three sources,
chosen by ``ServingSettings.source`` (``auto`` picks the first that applies):

* ``model_dir``: ``AZUREML_MODEL_DIR`` (on AKS the deployment's registered model folder). The
  folder holds the manifest, its packs and ``model_set.json`` (the set's ref, written with the
  set), possibly one level down; the digest comes from ``MLOPS_SERVING_MANIFEST_SHA256`` (set by
  the deployment) or else that file. Fixed for the life of the container (blue/green).
* ``pointer``: a ``ModelSetRef`` JSON in the storage root (``serving/<dataset>/<alias>.json``);
  a deployment moves the endpoint by rewriting it.
* ``registry``: the MLflow registry alias (``production``) of ``<dataset>-models``; the
  version's ``folder`` and ``manifest_sha256`` tags make its ref.

``load_reader`` verifies the manifest against the ref's digest and, with ``verify_all``, every
model (one read per pack), and returns a ``ModelSetReader`` that loads models lazily into its
bounded cache. No Dagster imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.registry_aliases import Aliases, AliasMode, uses_tags
from mlops_assets.domain.registry_records import ModelSetVersion
from mlops_assets.ml import modelset
from mlops_assets.ml.model_cache import ModelSetReader
from mlops_assets.storage import LocalStorage, Storage
from mlops_assets.storage.base import check_name


class SourceError(RuntimeError):
    """No model set can be resolved (nothing configured, alias unset, no verifiable ref)."""


@dataclass(frozen=True)
class Served:
    """A model set to serve: its ref, where its files are read from, the version it reports."""

    ref: ms.ModelSetRef
    storage: Storage
    label: str

    @property
    def key(self) -> tuple:
        """Equal for the same set at the same place: a poll that finds it again does not swap."""
        return (self.label, self.storage.uri(self.ref.manifest_name), self.ref.manifest_sha256)

    def describe(self) -> str:
        return f"{self.label} ({self.storage.uri(self.ref.folder)})"


class FlatFolderStorage(LocalStorage):
    """A copied-out model-set folder (``AZUREML_MODEL_DIR``): every name is read from the folder
    by its last part, whatever folder the manifest recorded."""

    def _path(self, name: str) -> Path:
        return Path(self.root) / check_name(name).rsplit("/", 1)[-1]


def _walk_for(base: Path, name: str) -> list[Path]:
    """Every ``name`` under ``base``, shallowest first; linked folders are followed (a mounted
    model folder may be a link)."""
    found = [Path(d) / name for d, _, files in os.walk(base, followlinks=True) if name in files]
    return sorted(found, key=lambda p: (len(p.parts), p))


def _reader(folder: Path, ref: ms.ModelSetRef | None) -> LocalStorage:
    """The storage a model folder is read through: rooted where the set's own folder name
    begins (a bundle, ``model_sets.bundle``: every pack under its stored name), or a flat
    folder (every name by its last part) for a folder copied out on its own."""
    tail = ref.folder.strip("/") if ref is not None else ""
    path = folder.as_posix()
    if tail and tail != "." and path.endswith("/" + tail):
        return LocalStorage(path[: -len(tail) - 1])
    return FlatFolderStorage(folder)


class Source:
    """Resolves the model set to serve now. ``dynamic`` sources are polled for changes."""

    dynamic = True

    def resolve(self) -> Served:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class ModelDirSource(Source):
    dynamic = False

    def __init__(
        self, model_dir: str, version: str | None = None, manifest_sha256: str | None = None
    ):
        self.model_dir = model_dir
        self.version = version
        self.manifest_sha256 = manifest_sha256

    def describe(self) -> str:
        return f"model_dir:{self.model_dir}"

    def resolve(self) -> Served:
        base = Path(self.model_dir)
        found = sorted(base.glob(modelset.MANIFEST)) or sorted(base.glob(f"*/{modelset.MANIFEST}"))
        found = found or _walk_for(base, modelset.MANIFEST)
        if not found:
            raise SourceError(f"no {modelset.MANIFEST} under AZUREML_MODEL_DIR={self.model_dir}")
        folder = found[0].parent
        ref = None
        if (folder / ms.REF_FILE).exists():
            ref = ms.ModelSetRef.from_json((folder / ms.REF_FILE).read_text())
        storage = _reader(folder, ref)
        if self.manifest_sha256:
            ref = (
                replace(ref, manifest_sha256=self.manifest_sha256)
                if ref
                else ms.ModelSetRef("model_dir", "model_dir", ".", self.manifest_sha256)
            )
        if ref is None:
            raise SourceError(
                f"{found[0].parent}: no {ms.REF_FILE} and no MLOPS_SERVING_MANIFEST_SHA256: "
                "nothing to verify the manifest against; refusing to serve it"
            )
        return Served(ref, storage, self.version or ref.label)


class PointerSource(Source):
    def __init__(self, storage: Storage, name: str):
        self.storage, self.name = storage, name

    def describe(self) -> str:
        return f"pointer:{self.storage.uri(self.name)}"

    def resolve(self) -> Served:
        try:
            ref = ms.read_pointer(self.storage, self.name)
        except ms.ModelSetError as exc:
            raise SourceError(str(exc)) from None
        if ref is None:
            raise SourceError(f"no pointer file {self.storage.uri(self.name)}")
        return Served(ref, self.storage, ref.label)


class RegistrySource(Source):
    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        alias: str,
        storage: Storage,
        alias_mode: AliasMode | str = "auto",
    ):
        self.tracking_uri, self.model_name, self.alias = tracking_uri, model_name, alias
        self.storage = storage
        self.by_tags = uses_tags(tracking_uri, alias_mode)
        self._client: Any = None

    def describe(self) -> str:
        return f"registry:{self.model_name}@{self.alias}"

    def resolve(self) -> Served:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        try:
            mv = Aliases(self._client, self.by_tags).version(self.model_name, self.alias)
        except Exception as exc:
            raise SourceError(
                f"alias {self.alias!r} of {self.model_name} in {self.tracking_uri}: {exc}"
            ) from None
        if mv is None:
            raise SourceError(
                f"alias {self.alias!r} of {self.model_name} in {self.tracking_uri} points at no "
                "version: promote one first"
            )
        version = ModelSetVersion(self.model_name, int(mv.version), mv.source, dict(mv.tags or {}))
        try:
            ref = version.ref
        except ms.ModelSetError as exc:
            raise SourceError(f"{self.model_name} v{mv.version}: {exc}") from None
        return Served(ref, self.storage, str(mv.version))


def load_reader(
    served: Served, *, max_models: int, max_bytes: int, verify_all: bool = True
) -> ModelSetReader:
    """A reader over the served set, its manifest (and with ``verify_all`` every model) verified.

    Raises:
        ModelSetError: The manifest is missing.
        ModelIntegrityError: The manifest or a model does not match its recorded sha256.
    """
    return ms.open_reader(
        served.storage,
        served.ref,
        max_models=max_models,
        max_bytes=max_bytes,
        verify_all=verify_all,
        label=served.label,
    )
