"""Where the scoring server finds the model set it serves, and how it loads one.

Three sources, chosen by ``ServingSettings.source`` (``auto`` picks the first that applies):

* ``model_dir``: ``AZUREML_MODEL_DIR`` (on AKS the deployment's registered model folder). The
  folder holds ``manifest.parquet`` and its packs, possibly one level down; fixed for the life
  of the container (a new set is a new deployment: blue/green).
* ``pointer``: a JSON file ``{"version", "folder", "manifest_sha256"}`` in the storage root
  (``serving/<dataset>/<alias>.json``); a deployment moves the endpoint by rewriting it.
* ``registry``: the MLflow registry alias (``production``) of ``<dataset>-models``; the
  version's ``folder`` tag names the set under the storage root.

Loading reads the manifest, checks its sha256 against the one recorded (pointer or registry
tag), optionally verifies every model's sha256 (one read per pack), and returns a
``ModelSetReader`` that loads models lazily into its bounded cache. No Dagster imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from mlops_assets.ml import modelset
from mlops_assets.ml.model_cache import ModelSetReader
from mlops_assets.ml.persistence import ModelIntegrityError


class SourceError(RuntimeError):
    """No model set can be resolved (nothing configured, alias unset, folder missing)."""


@dataclass(frozen=True)
class ModelSetRef:
    """One model set to serve: a label, where its files are and the manifest's digest."""

    version: str
    folder: str  # relative to ``root``; "" when the manifest sits in ``root`` itself
    root: str
    manifest_sha256: str | None = None
    flat: bool = False  # packs next to the manifest, whatever their recorded folder
    tags: dict = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple:
        return (self.version, self.root, self.folder, self.manifest_sha256)


def pointer_name(dataset: str, alias: str) -> str:
    return f"serving/{dataset}/{alias}.json"


def write_pointer(root: str | Path, name: str, ref: dict) -> Path:
    """Atomically (temp file, rename) point ``name`` at a model set."""
    path = Path(root) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{time.time_ns()}-{path.name}")
    tmp.write_text(json.dumps({**ref, "written_at": time.time()}, sort_keys=True))
    os.replace(tmp, path)
    return path


class Source:
    """Resolves the model set to serve now. ``dynamic`` sources are polled for changes."""

    dynamic = True

    def resolve(self) -> ModelSetRef:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class ModelDirSource(Source):
    dynamic = False

    def __init__(self, model_dir: str, version: str | None = None):
        self.model_dir = model_dir
        self.version = version

    def describe(self) -> str:
        return f"model_dir:{self.model_dir}"

    def resolve(self) -> ModelSetRef:
        base = Path(self.model_dir)
        found = sorted(base.glob(modelset.MANIFEST)) or sorted(base.glob(f"*/{modelset.MANIFEST}"))
        found = found or sorted(base.rglob(modelset.MANIFEST))
        if not found:
            raise SourceError(f"no {modelset.MANIFEST} under AZUREML_MODEL_DIR={self.model_dir}")
        folder = found[0].parent
        meta = folder / "model_set.json"
        info = json.loads(meta.read_text()) if meta.is_file() else {}
        version = self.version or str(info.get("version") or "") or None
        return ModelSetRef(
            version=version or f"sha-{_sha256(found[0].read_bytes())[:12]}",
            folder="",
            root=str(folder),
            manifest_sha256=info.get("manifest_sha256"),
            flat=True,
        )


class PointerSource(Source):
    def __init__(self, root: str, name: str):
        self.root, self.name = root, name

    def describe(self) -> str:
        return f"pointer:{Path(self.root) / self.name}"

    def resolve(self) -> ModelSetRef:
        path = Path(self.root) / self.name
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SourceError(f"no pointer file {path}") from None
        except ValueError as exc:
            raise SourceError(f"pointer file {path} is not JSON: {exc}") from None
        if not data.get("folder"):
            raise SourceError(f"pointer file {path} names no folder")
        return ModelSetRef(
            version=str(data.get("version") or data["folder"]),
            folder=data["folder"],
            root=str(data.get("root") or self.root),
            manifest_sha256=data.get("manifest_sha256"),
            tags=data,
        )


class RegistrySource(Source):
    def __init__(self, tracking_uri: str, model_name: str, alias: str, root: str):
        self.tracking_uri, self.model_name, self.alias, self.root = (
            tracking_uri,
            model_name,
            alias,
            root,
        )
        self._client = None

    def describe(self) -> str:
        return f"registry:{self.model_name}@{self.alias}"

    def resolve(self) -> ModelSetRef:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        try:
            mv = self._client.get_model_version_by_alias(self.model_name, self.alias)
        except Exception as exc:
            raise SourceError(
                f"alias {self.alias!r} of {self.model_name} in {self.tracking_uri}: {exc}"
            ) from None
        tags = dict(mv.tags or {})
        if not tags.get("folder"):
            raise SourceError(f"{self.model_name} v{mv.version} has no 'folder' tag")
        return ModelSetRef(
            version=str(mv.version),
            folder=tags["folder"],
            root=self.root,
            manifest_sha256=tags.get("manifest_sha256"),
            tags=tags,
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Files:
    """``read_range`` over a local folder (a storage root, or a flat model directory)."""

    def __init__(self, ref: ModelSetRef):
        self.root = Path(ref.root)
        self.flat = ref.flat

    def path(self, name: str) -> Path:
        if self.flat:
            return self.root / name.rsplit("/", 1)[-1]
        p = (self.root / name).resolve()
        if self.root.resolve() not in p.parents:
            raise ValueError(f"artifact {name!r} escapes the model root")
        return p

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with open(self.path(name), "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise ModelIntegrityError(f"{name}@{offset}+{length}: file too short")
        return data


def manifest_path(ref: ModelSetRef) -> Path:
    base = Path(ref.root) / ref.folder if ref.folder else Path(ref.root)
    return base / modelset.MANIFEST


def verify_models(manifest, files: _Files) -> int:
    """Check every model's sha256 against the manifest (one read per pack). Returns the count.

    Raises:
        ModelIntegrityError: A model's bytes differ from their recorded sha256.
    """
    has = manifest.filter(pc.is_valid(manifest["artifact"]))
    by_pack: dict[str, list] = {}
    for sid, artifact, offset, length, sha in modelset.iter_locations(has):
        by_pack.setdefault(artifact, []).append((sid, offset, length, sha))
    n = 0
    for artifact, entries in by_pack.items():
        blob = files.path(artifact).read_bytes()
        for sid, offset, length, sha in entries:
            if _sha256(blob[offset : offset + length]) != sha:
                raise ModelIntegrityError(
                    f"model of {sid} ({artifact}@{offset}) does not match its sha256; "
                    "refusing to serve this model set"
                )
            n += 1
    return n


def load_reader(
    ref: ModelSetRef,
    *,
    max_models: int,
    max_bytes: int,
    verify_all: bool = True,
) -> ModelSetReader:
    """A reader over ``ref``'s model set, manifest (and models) verified.

    Raises:
        SourceError: The manifest is missing.
        ModelIntegrityError: The manifest or a model does not match its recorded sha256.
    """
    path = manifest_path(ref)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"model set {ref.version}: no manifest at {path}") from None
    if ref.manifest_sha256 and _sha256(data) != ref.manifest_sha256:
        raise ModelIntegrityError(
            f"{path}: sha256 {_sha256(data)} differs from the recorded {ref.manifest_sha256}"
        )
    manifest = modelset.read_manifest(data)
    files = _Files(ref)
    if verify_all:
        verify_models(manifest, files)
    return ModelSetReader(
        manifest, files.read_range, version=ref.version, max_models=max_models, max_bytes=max_bytes
    )
