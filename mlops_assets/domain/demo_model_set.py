"""A production model set to score against, without the daily chain (tests, benchmarks)."""

from __future__ import annotations

import pyarrow as pa

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.training_run import run_table
from mlops_assets.ml import modelset
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage


def publish_model_set(
    storage: Storage, spec: DatasetSpec, history: pa.Table, folder: str, max_workers: int = 1
) -> pa.Table:
    """Train every series of ``history`` and write the set (packs, manifest, ref) under
    ``folder``. Returns the manifest; ``model_sets.read_ref_file`` gives its ref."""
    table = run_table(train_local(history, spec, max_workers=max_workers), spec)
    manifest, packs = modelset.pack_models(table, folder)
    version = folder.rstrip("/").rsplit("/", 1)[-1]
    ms.write_model_set(
        storage,
        manifest,
        packs,
        name=ms.registered_model_name(spec),
        version=version,
        folder=folder,
    )
    return manifest


def register_production(registry, spec: DatasetSpec, storage: Storage, folder: str):
    """Register the set at ``folder`` as a version of ``<ds>-models`` (tags from its ref, so
    ``ModelSetVersion.ref`` verifies it) and point ``production`` at it."""
    ref = ms.read_ref_file(storage, folder)
    return registry.register_model_set(
        ref.name,
        storage.uri(folder),
        {
            "folder": folder,
            "dataset": spec.name,
            "manifest_sha256": ref.manifest_sha256,
            "candidate_version": ref.version,
        },
        None,
        "production",
    )


def demo_ref(storage: Storage, spec: DatasetSpec, folder: str) -> ms.ModelSetRef:
    """The reference of a set ``publish_model_set`` wrote (read back from its ref file)."""
    ref = ms.read_ref_file(storage, folder)
    if ref.name != ms.registered_model_name(spec):
        raise ms.ModelSetError(f"{folder} holds a set of {ref.name}, not of {spec.name}")
    return ref
