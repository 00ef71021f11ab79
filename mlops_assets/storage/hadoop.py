"""Addresses of stored files as Hadoop file systems name them (what Spark executors read).

A local folder is a ``file://`` URI (executors on this machine, or a path they all mount);
Azure Blob Storage / ADLS Gen2 is ``abfss://<container>@<account>.dfs.core.windows.net/<path>``,
which Databricks and Synapse read with the cluster's own credentials.
"""

from __future__ import annotations

from urllib.parse import urlparse

from mlops_assets.storage.azure import AzureBlobStorage
from mlops_assets.storage.base import Storage, check_name
from mlops_assets.storage.local import LocalStorage

BLOB_HOST_SUFFIX = ".blob.core.windows.net"


def hadoop_uri(storage: Storage, name: str) -> str:
    """The URI of ``name`` in ``storage`` for ``spark.read``.

    Raises:
        ValueError: The storage has no Hadoop address (an emulator's URL such as Azurite's, or
            an unknown storage kind).
    """
    if isinstance(storage, LocalStorage):
        return storage.uri(name)
    if isinstance(storage, AzureBlobStorage):
        host = urlparse(storage.account_url).hostname or ""
        if not host.endswith(BLOB_HOST_SUFFIX):
            raise ValueError(
                f"{storage.account_url!r} is not an Azure Storage account URL "
                f"(https://<account>{BLOB_HOST_SUFFIX}): Spark cannot read it through abfss"
            )
        account = host.removesuffix(BLOB_HOST_SUFFIX)
        path = "/".join(p for p in (storage.prefix.strip("/"), check_name(name)) if p)
        return f"abfss://{storage.container}@{account}.dfs.core.windows.net/{path}"
    raise ValueError(f"no Hadoop file system address for {storage!r}")
