"""Storage in an Azure Blob Storage / ADLS Gen2 container (through its Blob endpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

from mlops_assets.storage.base import BlobInfo, Storage, check_name, check_prefix
from mlops_assets.storage.ranged import open_ranged


@dataclass(frozen=True)
class BlobRetry:
    """How Blob calls retry transient errors: the Azure SDK's own ``ExponentialRetry`` policy.

    Retried by the SDK: connection errors and resets, read timeouts, 408 and 5xx but 501 and 505
    (Blob Storage throttles with 503 ``ServerBusy``, or 500 ``OperationTimedOut``). The n-th retry
    waits ``initial_backoff_s + increment_base ** n`` seconds (the first one ``initial_backoff_s``),
    within ``jitter_s`` either way: with the defaults 1, 3, 5, 9, 17 s, about 35 s in all before
    the error reaches the caller. Every write is a whole-object Put or a commit of all blocks, so
    a retry never leaves a partial object, and a Put whose answer was lost is simply repeated
    (a create-if-absent write, ``overwrite=False``, would then fail with FileExistsError: no
    lifecycle write uses one). ``docs/configuration.md`` lists the values."""

    total: int = 5  # retries of one call, whatever the cause
    connect: int = 3  # of them, after a connection could not be made or was reset
    read: int = 3  # after a read timed out or the connection dropped mid-response
    status: int = 5  # after a retryable status (503 ServerBusy, 500, 408)
    initial_backoff_s: float = 1.0
    increment_base: float = 2.0
    jitter_s: float = 0.5
    connection_timeout_s: float = 20.0  # the SDK's default
    read_timeout_s: float = 60.0  # per socket read: a stalled answer becomes a read retry

    def client_kwargs(self) -> dict[str, Any]:
        """``retry_policy`` and timeouts for a Blob client's constructor."""
        from azure.storage.blob import ExponentialRetry

        policy = ExponentialRetry(
            initial_backoff=self.initial_backoff_s,  # type: ignore[arg-type]  # floats work
            increment_base=self.increment_base,  # type: ignore[arg-type]
            retry_total=self.total,
            random_jitter_range=self.jitter_s,  # type: ignore[arg-type]
            retry_connect=self.connect,
            retry_read=self.read,
            retry_status=self.status,
        )
        return {
            "retry_policy": policy,
            "connection_timeout": self.connection_timeout_s,
            "read_timeout": self.read_timeout_s,
        }


class AzureBlobStorage(Storage):
    """A container in Azure Blob Storage or ADLS Gen2 (through its Blob endpoint).

    Authentication is ``DefaultAzureCredential`` (managed identity, workload identity, az login)
    unless a connection string is given, which is meant for Azurite and never for production.
    """

    def __init__(
        self,
        account_url: str,
        container: str,
        prefix: str = "",
        connection_string: str | None = None,
        create_container: bool = False,
        retry: BlobRetry | None = None,
    ):
        self.account_url = account_url
        self.container = container
        self.prefix = prefix
        self.connection_string = connection_string  # Azurite/tests only: never logged or shown
        self.create_container = create_container
        self.retry = retry or BlobRetry()
        self._client: Any = None

    def __repr__(self) -> str:
        return f"AzureBlobStorage(account_url={self.account_url!r}, container={self.container!r})"

    def __getstate__(self) -> dict[str, Any]:
        # A copy sent to another process (a training worker) opens a client of its own: an
        # SDK client and its connections are never shared across processes.
        return {**self.__dict__, "_client": None}

    def config(self) -> dict[str, Any]:
        return {
            "kind": "azure",
            "account_url": self.account_url,
            "container": self.container,
            "prefix": self.prefix,
        }

    def sub(self, folder: str) -> AzureBlobStorage:
        return AzureBlobStorage(
            self.account_url,
            self.container,
            prefix=self._full(check_name(folder.rstrip("/"))),
            connection_string=self.connection_string,
            create_container=self.create_container,
            retry=self.retry,
        )

    def _container(self):
        if self._client is None:
            from azure.storage.blob import ContainerClient

            options = self.retry.client_kwargs()
            if self.connection_string:
                client = ContainerClient.from_connection_string(
                    self.connection_string, self.container, **options
                )
            else:
                from azure.identity import DefaultAzureCredential

                client = ContainerClient(
                    self.account_url, self.container, credential=DefaultAzureCredential(), **options
                )
            if self.create_container and not client.exists():
                from azure.core.exceptions import ResourceExistsError

                try:
                    client.create_container()
                except ResourceExistsError:
                    pass
            self._client = client
        return self._client

    def _full(self, name: str) -> str:
        name = check_name(name)
        return f"{self.prefix.strip('/')}/{name}" if self.prefix.strip("/") else name

    def _rel(self, full: str) -> str:
        p = self.prefix.strip("/")
        return full[len(p) + 1 :] if p else full

    def _to_info(self, props) -> BlobInfo:
        return BlobInfo(
            name=self._rel(props.name),
            size=props.size,
            etag=props.etag.strip('"'),
            last_modified=props.last_modified,
        )

    def list(self, prefix: str = "") -> list[BlobInfo]:
        # A plain string prefix, as in LocalStorage: "a/b" matches "a/b/x" and "a/bc".
        prefix = check_prefix(prefix)
        base = self.prefix.strip("/")
        full = f"{base}/{prefix}" if base else prefix
        blobs = self._container().list_blobs(name_starts_with=full or None)
        return sorted((self._to_info(b) for b in blobs), key=lambda b: b.name)

    def info(self, name: str) -> BlobInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self._container().get_blob_client(self._full(name)).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return self._to_info(props)

    def read_bytes(self, name: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._container().download_blob(self._full(name)).readall()
        except ResourceNotFoundError:
            raise FileNotFoundError(f"{self.uri(name)} does not exist") from None

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return (
                self._container()
                .download_blob(self._full(name), offset=offset, length=length)
                .readall()
            )
        except ResourceNotFoundError:
            raise FileNotFoundError(f"{self.uri(name)} does not exist") from None

    def open_read(self, name: str) -> IO[bytes]:
        """A seekable file whose reads are ranged downloads of the version current at open:
        a Parquet reader wanting a column or a row group fetches the footer and those column
        chunks, not the blob. ``.raw.requests``/``.raw.bytes_read`` count what was fetched.

        Raises:
            FileNotFoundError: No such blob.
            OSError: The blob was replaced while being read (a read would mix two versions).
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        blob = self._container().get_blob_client(self._full(name))
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError:
            raise FileNotFoundError(f"{self.uri(name)} does not exist") from None
        uri = self.uri(name)

        def read_at(offset: int, length: int) -> bytes:
            try:
                return blob.download_blob(
                    offset=offset,
                    length=length,
                    etag=props.etag,
                    match_condition=MatchConditions.IfNotModified,
                ).readall()
            except (ResourceModifiedError, ResourceNotFoundError) as e:
                raise OSError(f"{uri} changed while being read: {type(e).__name__}") from None

        return open_ranged(read_at, props.size, uri)

    def write_bytes(
        self, name: str, data: bytes, *, overwrite: bool = True, content_type: str | None = None
    ) -> BlobInfo:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        # A blob upload commits all of its blocks at once, so readers never see part of it.
        blob = self._container().get_blob_client(self._full(name))
        settings = ContentSettings(content_type=content_type) if content_type else None
        try:
            result = blob.upload_blob(data, overwrite=overwrite, content_settings=settings)
        except ResourceExistsError:
            raise FileExistsError(f"{self.uri(name)} already exists") from None
        # The version this call wrote, not whatever a second writer put there since.
        return BlobInfo(
            name=check_name(name),
            size=len(data),
            etag=result["etag"].strip('"'),
            last_modified=result["last_modified"],
        )

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._container().delete_blob(self._full(name), delete_snapshots="include")
        except ResourceNotFoundError:
            pass

    def uri(self, name: str) -> str:
        return f"{self.account_url.rstrip('/')}/{self.container}/{self._full(name)}"
