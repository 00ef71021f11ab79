"""Storage in an Azure Blob Storage / ADLS Gen2 container (through its Blob endpoint)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from mlops_assets.storage.base import BlobInfo, Storage, check_name, check_prefix
from mlops_assets.storage.ranged import open_ranged

# Block size of a streamed write (``open_write``): a blob holds at most 50,000 committed
# blocks, so up to ~400 GB; one block is held in memory at a time.
BLOCK_BYTES = 8 << 20


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


class BlockWriter(io.RawIOBase):
    """A write-only file whose bytes are staged as blocks of ``block_bytes`` (``stage(id,
    data)``); ``finish`` stages the rest and returns the block ids to commit, in order.

    Ids carry a random tag of this writer, so two writers of one blob never stage over each
    other's blocks; the blob is whichever commit comes last, whole.
    """

    def __init__(self, stage: Callable[[str, bytes], Any], block_bytes: int | None = None):
        super().__init__()
        self._stage, self._block_bytes = stage, block_bytes or BLOCK_BYTES
        self._tag = uuid.uuid4().hex[:16]
        self._buf = bytearray()
        self.ids: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        self._buf += b
        while len(self._buf) >= self._block_bytes:
            self._flush(self._block_bytes)
        return n

    def _flush(self, n: int) -> None:
        block_id = f"{self._tag}-{len(self.ids):08d}"  # one length for all ids of a blob
        self._stage(block_id, bytes(self._buf[:n]))
        del self._buf[:n]
        self.ids.append(block_id)

    def finish(self) -> list[str]:
        if self._buf:
            self._flush(len(self._buf))
        return self.ids


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

    @contextmanager
    def open_write(self, name: str, *, overwrite: bool = True) -> Iterator[IO[bytes]]:
        """Blocks staged as they fill (``BlockWriter``), committed when the block ends: readers
        see the old blob or the whole new one. An error in the block commits nothing; its
        staged blocks are never part of a blob and the service drops them (after a week)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        blob = self._container().get_blob_client(self._full(name))
        if not overwrite and blob.exists():
            raise FileExistsError(f"{self.uri(name)} already exists")
        writer = BlockWriter(lambda block_id, data: blob.stage_block(block_id, data))
        yield writer  # type: ignore[misc]
        ids = writer.finish()
        condition = {} if overwrite else {"match_condition": MatchConditions.IfMissing}
        try:
            blob.commit_block_list(ids, **condition)
        except (ResourceExistsError, ResourceModifiedError):
            raise FileExistsError(f"{self.uri(name)} already exists") from None

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._container().delete_blob(self._full(name), delete_snapshots="include")
        except ResourceNotFoundError:
            pass

    def uri(self, name: str) -> str:
        return f"{self.account_url.rstrip('/')}/{self.container}/{self._full(name)}"
