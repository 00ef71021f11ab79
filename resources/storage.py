"""Storage as Dagster resources: configuration shown in the UI, the plain ``Storage`` to code.

The implementations live in ``mlops_assets.storage`` (no Dagster import, so Pipes jobs and Spark
workers use them as they are); these resources only carry their configuration and vend the plain
object at run time (``create_resource``, Dagster's documented pattern for that). Assets and other
resources take ``dg.ResourceParam[Storage]``, so a test may pass a plain ``LocalStorage`` too.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from mlops_assets.storage import AzureBlobStorage, LocalStorage, Storage


class LocalStorageResource(dg.ConfigurableResource):
    """A folder on this machine: the embedded default."""

    root: str = Field(description="Folder that holds everything; created on first use.")

    def create_resource(self, context: dg.InitResourceContext) -> Storage:
        return LocalStorage(root=self.root)


class AzureBlobStorageResource(dg.ConfigurableResource):
    """A container in Azure Blob Storage or ADLS Gen2 (through its Blob endpoint).

    Authentication is ``DefaultAzureCredential`` (managed identity, workload identity, az login)
    unless a connection string is given, which is meant for Azurite and never for production.
    """

    account_url: str = Field(description="e.g. https://<account>.blob.core.windows.net")
    container: str
    prefix: str = Field(default="", description="Folder inside the container for everything.")
    connection_string: str | None = Field(
        default=None, description="Only for Azurite/tests; set through an EnvVar, never inline."
    )
    create_container: bool = False

    def create_resource(self, context: dg.InitResourceContext) -> Storage:
        return AzureBlobStorage(
            account_url=self.account_url,
            container=self.container,
            prefix=self.prefix,
            connection_string=self.connection_string,
            create_container=self.create_container,
        )
