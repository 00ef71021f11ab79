"""A production model set to score against, without the daily chain (tests, benchmarks)."""

from __future__ import annotations

import pyarrow as pa

from mlops_assets.domain.model_sets import ModelSetRef
from mlops_assets.ml import modelset
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.persistence import sha256
from mlops_assets.ml.spec import DatasetSpec


def publish_model_set(
    storage, spec: DatasetSpec, history: pa.Table, folder: str, max_workers: int = 1
) -> pa.Table:
    """Train every series of ``history`` and write manifest + packs under ``folder``."""
    results = train_local(history, spec, max_workers=max_workers)
    table = pa.Table.from_pandas(results, preserve_index=False)
    manifest, packs = modelset.pack_models(table, folder)
    for name, data in packs:
        storage.write_bytes(name, data)
    storage.write_bytes(f"{folder}/{modelset.MANIFEST}", modelset.manifest_bytes(manifest))
    return manifest


def demo_ref(storage, spec: DatasetSpec, folder: str, version: str = "demo") -> ModelSetRef:
    """The reference of a set ``publish_model_set`` wrote (its manifest digest as stored)."""
    return ModelSetRef(
        name=f"{spec.name}-models",
        version=version,
        folder=folder,
        manifest_sha256=sha256(storage.read_bytes(f"{folder}/{modelset.MANIFEST}")),
    )


def register_production(registry, spec: DatasetSpec, storage, folder: str):
    """Register ``folder`` as a version of ``<ds>-models`` (with the folder and manifest
    digest tags every reader verifies against) and point ``production`` at it."""
    from mlops_assets.assets.evaluation import registered_model_name

    ref = demo_ref(storage, spec, folder)
    return registry.register_model_set(
        registered_model_name(spec),
        storage.uri(folder),
        {"folder": folder, "dataset": spec.name, "manifest_sha256": ref.manifest_sha256},
        None,
        "production",
    )
