"""Where landing drops, curated data, quarantine, models and outputs live: no Dagster import.

``Storage`` is the interface; ``LocalStorage`` (a folder) and ``AzureBlobStorage`` (Blob / ADLS
Gen2) implement it. ``resources.storage`` wraps them as Dagster resources; remote jobs reopen
one from its JSON ``config()`` with ``open_storage``.
"""

from __future__ import annotations

import os
from typing import Any

from mlops_assets.storage.azure import AzureBlobStorage
from mlops_assets.storage.base import BlobInfo, Storage
from mlops_assets.storage.local import LocalStorage

CONNECTION_STRING_ENV = "MLOPS_JOB_CONNECTION_STRING"  # Azurite/tests only

__all__ = ["AzureBlobStorage", "BlobInfo", "LocalStorage", "Storage", "open_storage"]


def open_storage(config: dict[str, Any]) -> Storage:
    """The storage a ``Storage.config()`` describes (a remote job's view of the caller's)."""
    kind = config.get("kind")
    if kind == "local":
        return LocalStorage(root=config["root"])
    if kind == "azure":
        return AzureBlobStorage(
            account_url=config["account_url"],
            container=config["container"],
            prefix=config.get("prefix", ""),
            connection_string=os.environ.get(CONNECTION_STRING_ENV) or None,
        )
    raise ValueError(f"unknown storage kind {kind!r} in {config!r}: expected 'local' or 'azure'")
