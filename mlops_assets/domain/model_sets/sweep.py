"""Removing the set folders a crashed training or evaluation left behind.

A set is finished when its ref file (``model_set.json``) is written, after its packs and its
manifest; only then can a pointer name it, and only sets a pointer names are carried over or
registered. A folder without the ref file is the remains of a process that died mid-write: no
reader can reach it, and the rerun wrote its own folder. It is removed once its newest file is
older than a grace period (runs that write a dataset are serialised, so no live run is writing
it then).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from mlops_assets.domain.model_sets.layout import REF_FILE, Named, models_root
from mlops_assets.storage import BlobInfo, Storage

SET_KINDS = ("sets", "releases")  # candidate sets (training), release sets (evaluation)


def unfinished_sets(
    storage: Storage, spec: Named, *, grace_s: float = 3600, now: datetime | None = None
) -> dict[str, list[BlobInfo]]:
    """Set folders with no ref file whose newest file is older than ``grace_s``: their files."""
    now = now or datetime.now(UTC)
    folders: dict[str, list[BlobInfo]] = defaultdict(list)
    for kind in SET_KINDS:
        prefix = f"{models_root(spec)}/{kind}/"
        for blob in storage.list(prefix):
            parts = blob.name[len(prefix) :].split("/")
            if len(parts) >= 3:  # <as_of>/<run8>/<file>; <as_of>.json is a pointer
                folders[prefix + "/".join(parts[:2])].append(blob)
    cutoff = now - timedelta(seconds=grace_s)
    return {
        folder: blobs
        for folder, blobs in folders.items()
        if not any(b.name == f"{folder}/{REF_FILE}" for b in blobs)
        and max(b.last_modified for b in blobs) < cutoff
    }


def sweep_unfinished_sets(
    storage: Storage, spec: Named, *, grace_s: float = 3600, now: datetime | None = None
) -> list[str]:
    """Delete the folders ``unfinished_sets`` names; the folders removed."""
    found = unfinished_sets(storage, spec, grace_s=grace_s, now=now)
    for blobs in found.values():
        for blob in blobs:
            storage.delete(blob.name)
    return sorted(found)
