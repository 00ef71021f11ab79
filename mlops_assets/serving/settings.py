"""What a scoring server serves and its limits: ``ServingSettings`` (``MLOPS_SERVING_*``).

``make_source`` turns the settings into the ``Source`` the service polls (``serving.source``).
No Dagster imports.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from mlops_assets.domain.model_sets import pointer_name, registered_model_name
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.serving.source import (
    ModelDirSource,
    PointerSource,
    RegistrySource,
    Source,
    SourceError,
)
from mlops_assets.storage import LocalStorage, Storage, open_storage

ENV_PREFIX = "MLOPS_SERVING_"


def _env(name: str) -> str | None:
    v = os.environ.get(ENV_PREFIX + name)
    return v if v not in (None, "") else None


def _env_or(name: str, default: str) -> str:
    return _env(name) or default


@dataclass
class ServingSettings:
    """What the server serves and its limits; ``from_env`` reads ``MLOPS_SERVING_*``."""

    dataset: str = "sales"  # the spec's name (a bundled spec, unless spec_json says otherwise)
    spec_json: str | None = None  # the DatasetSpec as JSON: any spec, not only bundled ones
    source: str = "auto"  # auto | model_dir | pointer | registry
    root: str | None = None  # storage root (local folder) holding model sets and pointers
    alias: str = "production"
    pointer: str | None = None  # relative to root; default serving/<dataset>/<alias>.json
    registry_uri: str | None = None
    registry_alias_mode: str = "auto"  # auto | native | tags (domain/registry_aliases.py)
    model_name: str | None = None  # default <dataset>-models
    model_dir: str | None = None  # AZUREML_MODEL_DIR
    api_keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 << 20
    max_records: int = 10_000
    read_timeout_s: float = 10.0  # one body read that gets no bytes for this long: 408
    max_abs_value: float = 1e15  # bound of numeric inputs whose column declares no min/max
    cache_models: int = 2_000
    cache_bytes: int = 256 << 20
    verify_all: bool = True
    poll_s: float = 2.0
    collect_rate: float = 0.0
    collect_root: str | None = None
    collect_storage: str | None = None  # Storage.config() as JSON (wins over collect_root)
    collect_queue: int = 1_000
    # Threads of each native pool (BLAS, OpenMP) in a worker; 0 leaves the libraries' defaults.
    # One: a request is a few rows, and an idle pool's threads cost more to wake than the work.
    compute_threads: int = 1

    @classmethod
    def from_env(cls) -> ServingSettings:
        keys = [k.strip() for k in (_env("API_KEYS") or _env("API_KEY") or "").split(",")]
        return cls(
            dataset=_env_or("DATASET", "sales"),
            spec_json=_env("SPEC_JSON"),
            source=_env_or("SOURCE", "auto"),
            root=_env("ROOT"),
            alias=_env_or("ALIAS", "production"),
            pointer=_env("POINTER"),
            registry_uri=_env("REGISTRY_URI"),
            registry_alias_mode=_env_or("REGISTRY_ALIAS_MODE", "auto"),
            model_name=_env("MODEL_NAME"),
            model_dir=os.environ.get("AZUREML_MODEL_DIR") or None,
            api_keys=[k for k in keys if k],
            max_body_bytes=int(_env_or("MAX_BODY_BYTES", str(4 << 20))),
            max_records=int(_env_or("MAX_RECORDS", "10000")),
            read_timeout_s=float(_env_or("READ_TIMEOUT_S", "10")),
            max_abs_value=float(_env_or("MAX_ABS_VALUE", "1e15")),
            cache_models=int(_env_or("CACHE_MODELS", "2000")),
            cache_bytes=int(_env_or("CACHE_BYTES", str(256 << 20))),
            verify_all=_env_or("VERIFY_ALL", "1") not in ("0", "false", "no"),
            poll_s=float(_env_or("POLL_S", "2.0")),
            collect_rate=float(_env_or("COLLECT_RATE", "0")),
            collect_root=_env("COLLECT_ROOT"),
            collect_storage=_env("COLLECT_STORAGE"),
            collect_queue=int(_env_or("COLLECT_QUEUE", "1000")),
            compute_threads=int(_env_or("COMPUTE_THREADS", "1")),
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes ``from_env`` give these settings back."""
        out = {}
        for k, v in asdict(self).items():
            if v is None or k == "model_dir":
                continue
            name = ENV_PREFIX + ("API_KEYS" if k == "api_keys" else k.upper())
            if isinstance(v, bool):
                v = "1" if v else "0"
            elif isinstance(v, list):
                v = ",".join(v)
            out[name] = str(v)
        return out

    @classmethod
    def for_spec(cls, spec: DatasetSpec, **kw) -> ServingSettings:
        """Settings serving ``spec``, which travels whole (as validated JSON) to the server."""
        return cls(dataset=spec.name, spec_json=spec.model_dump_json(), **kw)

    def collect_target(self) -> Storage | str | None:
        """Where collected requests go: ``collect_storage`` (a ``Storage.config()``, e.g. the
        prod Blob container on AKS), else the local ``collect_root`` or the served root."""
        if self.collect_storage:
            return open_storage(json.loads(self.collect_storage))
        return self.collect_root or self.root

    def dataset_spec(self) -> DatasetSpec:
        """The served spec: ``spec_json`` validated, else the bundled spec ``dataset``.

        Raises:
            pydantic.ValidationError: ``spec_json`` is not a valid spec.
            ValueError: ``spec_json`` names another dataset than ``dataset``.
        """
        if not self.spec_json:
            return load_spec(self.dataset)
        spec = DatasetSpec.model_validate_json(self.spec_json)
        if spec.name != self.dataset:
            raise ValueError(f"the spec JSON is {spec.name!r}'s, not {self.dataset!r}'s")
        return spec

    def make_source(self) -> Source:
        kind = self.source
        pointer = self.pointer or pointer_name(self.dataset, self.alias)
        if kind == "auto":
            if self.model_dir:
                kind = "model_dir"
            elif self.root and LocalStorage(self.root).exists(pointer):
                kind = "pointer"
            elif self.registry_uri and self.root:
                kind = "registry"
            elif self.root:
                kind = "pointer"
            else:
                raise SourceError(
                    "nothing to serve: set AZUREML_MODEL_DIR, or MLOPS_SERVING_ROOT with a "
                    "pointer file or MLOPS_SERVING_REGISTRY_URI"
                )
        if kind == "model_dir":
            if not self.model_dir:
                raise SourceError("source model_dir needs AZUREML_MODEL_DIR")
            return ModelDirSource(self.model_dir, _env("VERSION"), _env("MANIFEST_SHA256"))
        if not self.root:
            raise SourceError(f"source {kind} needs MLOPS_SERVING_ROOT (the storage root)")
        storage = LocalStorage(self.root)
        if kind == "pointer":
            return PointerSource(storage, pointer)
        if kind == "registry":
            if not self.registry_uri:
                raise SourceError("source registry needs MLOPS_SERVING_REGISTRY_URI")
            name = self.model_name or registered_model_name(self.dataset)
            return RegistrySource(
                self.registry_uri, name, self.alias, storage, self.registry_alias_mode
            )
        raise SourceError(f"unknown source {kind!r}: auto, model_dir, pointer or registry")
