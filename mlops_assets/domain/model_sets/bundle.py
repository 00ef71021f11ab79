"""A model set as one self-contained folder: what an Azure ML model (and so a deployment) holds.

A set's manifest names packs anywhere under the storage root: a set carries the models of
series that did not change by reference to an earlier set's packs, and pack names repeat across
sets (``pack-000.bin``). An Azure ML model is one folder, copied to each pod. The bundle of a
set, ``bundles/<model>/<label>-<digest>/``, holds the manifest, the ref file and every pack the
manifest names, each under its own storage name. The manifest and its digest are unchanged, and
a reader rooted at the bundle reads the same names (``serving.source.ModelDirSource``).

It is written by the promotion's verified copy (``copy_model_set``): every model verifies before
its pack is written, and a rerun keeps what is there and verifies.
"""

from __future__ import annotations

from urllib.parse import quote

from mlops_assets.domain.model_sets.io import copy_model_set
from mlops_assets.domain.model_sets.ref import ModelSetRef
from mlops_assets.storage import Storage


def bundle_folder(ref: ModelSetRef) -> str:
    """Where ``ref``'s bundle lives (one per set: the digest names it)."""
    return (
        f"bundles/{quote(ref.name, safe='')}/{quote(ref.label, safe='')}-{ref.manifest_sha256[:16]}"
    )


def write_bundle(storage: Storage, ref: ModelSetRef) -> str:
    """Write (or complete) ``ref``'s bundle in ``storage``; its folder."""
    folder = bundle_folder(ref)
    copy_model_set(storage, storage.sub(folder), ref)
    return folder
