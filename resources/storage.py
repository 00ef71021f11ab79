"""One storage interface over a local folder and Azure Blob Storage / ADLS Gen2.

Names are POSIX-style paths relative to the storage root (``landing/sales/2026-11-16.parquet``).
Every write is atomic: readers see the old object or the new one, never a partial one.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

import dagster as dg
from pydantic import Field, PrivateAttr


@dataclass(frozen=True)
class BlobInfo:
    """What a listing says of one object; (name, etag) identifies one version of it."""

    name: str
    size: int
    etag: str
    last_modified: datetime

    @property
    def version_key(self) -> str:
        return f"{self.name}@{self.etag}"


def _check_name(name: str) -> str:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or name.endswith("/") or str(p) == ".":
        raise ValueError(f"invalid storage name {name!r}: use a relative path without '..'")
    return str(p)


def _check_prefix(prefix: str) -> str:
    """A listing prefix is matched as a plain string (``a/b`` matches ``a/bc``), so it is not
    normalised; only what could escape the root or never match a normalised name is refused."""
    parts = prefix.split("/")
    if prefix.startswith("/") or any(p in (".", "..") for p in parts) or "" in parts[:-1]:
        raise ValueError(f"invalid storage prefix {prefix!r}: use a relative path without '..'")
    return prefix


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; a committed object gets the mode a plain open() would give it.
_FILE_MODE = 0o666 & ~_current_umask()


class Storage(dg.ConfigurableResource, ABC):
    """Where landing drops, curated data, quarantine, models and outputs live."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[BlobInfo]:
        """Objects whose name starts with ``prefix``, sorted by name."""

    @abstractmethod
    def info(self, name: str) -> BlobInfo | None:
        """The object's listing entry, or None if it does not exist."""

    @abstractmethod
    def read_bytes(self, name: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, name: str, data: bytes, *, overwrite: bool = True) -> BlobInfo:
        """Write atomically. With ``overwrite=False`` an existing object raises FileExistsError."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def uri(self, name: str) -> str:
        """A URI a person (or another tool) can open."""

    def exists(self, name: str) -> bool:
        return self.info(name) is not None

    def open_read(self, name: str) -> IO[bytes]:
        """A seekable binary file for readers such as pyarrow."""
        return io.BytesIO(self.read_bytes(name))

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``: one model out of a pack, without the rest."""
        return self.read_bytes(name)[offset : offset + length]

    def move(self, src: str, dst: str) -> BlobInfo:
        """Copy then delete: a crash in between leaves both copies, never neither."""
        if _check_name(src) == _check_name(dst):
            info = self.info(dst)
            if info is None:
                raise FileNotFoundError(f"{self.uri(src)} does not exist")
            return info
        info = self.write_bytes(dst, self.read_bytes(src))
        self.delete(src)
        return info

    def write_text(self, name: str, text: str) -> BlobInfo:
        return self.write_bytes(name, text.encode("utf-8"))

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")


class LocalStorage(Storage):
    """A folder on this machine: the embedded default."""

    root: str = Field(description="Folder that holds everything; created on first use.")

    def _path(self, name: str) -> Path:
        name = _check_name(name)
        if name.rsplit("/", 1)[-1].startswith(".tmp-"):
            raise ValueError(f"invalid storage name {name!r}: '.tmp-*' is kept for partial writes")
        return Path(self.root) / name

    def _info(self, path: Path, name: str) -> BlobInfo:
        st = path.stat()
        ns = st.st_mtime_ns
        return BlobInfo(
            name=name,
            size=st.st_size,
            # Like an HTTP server's weak etag. Every write and move stamps an mtime strictly
            # later than the version it replaces (see _stamp), so a rewrite of the same size
            # whose temp file reuses a freed inode still gets a new etag.
            etag=f"{st.st_ino:x}-{ns:x}-{st.st_size:x}",
            last_modified=datetime.fromtimestamp(ns // 10**9, tz=UTC).replace(
                microsecond=(ns // 1000) % 10**6
            ),
        )

    @staticmethod
    def _stamp(new: str | Path, replaces: Path) -> None:
        """Set ``new``'s mtime to now, and later than that of the version it replaces: file
        timestamps can be as coarse as a clock tick, and inodes are reused."""
        now = time.time_ns()
        try:
            now = max(now, replaces.stat().st_mtime_ns + 1)
        except FileNotFoundError:
            pass
        os.utime(new, ns=(now, now))

    def list(self, prefix: str = "") -> list[BlobInfo]:
        prefix = _check_prefix(prefix)
        root = Path(self.root)
        if not root.exists():
            return []
        # Walk only the deepest folder the prefix names, so a narrow prefix stays cheap.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = root / folder
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                if f.startswith(".tmp-"):
                    continue
                path = Path(dirpath) / f
                name = path.relative_to(root).as_posix()
                if name.startswith(prefix):
                    try:
                        out.append(self._info(path, name))
                    except FileNotFoundError:  # deleted or moved by someone else meanwhile
                        continue
        return sorted(out, key=lambda b: b.name)

    def info(self, name: str) -> BlobInfo | None:
        path = self._path(name)
        if not path.is_file():
            return None
        try:
            return self._info(path, _check_name(name))
        except FileNotFoundError:
            return None

    def read_bytes(self, name: str) -> bytes:
        with self.open_read(name) as f:
            return f.read()

    def open_read(self, name: str) -> IO[bytes]:
        path = self._path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri(name)} does not exist")
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(name)} does not exist") from None

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with self.open_read(name) as f:
            f.seek(offset)
            return f.read(length)

    def write_bytes(self, name: str, data: bytes, *, overwrite: bool = True) -> BlobInfo:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), _FILE_MODE)
                self._stamp(tmp, path)
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                # link() fails if the target exists: an atomic create-if-absent.
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise FileExistsError(f"{self.uri(name)} already exists") from None
                os.unlink(tmp)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return self._info(path, _check_name(name))

    def delete(self, name: str) -> None:
        path = self._path(name)
        if path.is_dir():  # a folder is not an object: like a missing blob
            return
        path.unlink(missing_ok=True)

    def move(self, src: str, dst: str) -> BlobInfo:
        s, d = self._path(src), self._path(dst)
        if not s.is_file():
            raise FileNotFoundError(f"{self.uri(src)} does not exist")
        if s == d:
            return self._info(d, _check_name(dst))
        d.parent.mkdir(parents=True, exist_ok=True)
        # A moved object is a new version at dst (as a blob copy would be): a poller whose
        # cursor is on (last_modified, name, etag) must see it.
        try:
            self._stamp(s, d)
            os.replace(s, d)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(src)} does not exist") from None
        return self._info(d, _check_name(dst))

    def uri(self, name: str) -> str:
        return self._path(name).resolve().as_uri()

    def local_path(self, name: str) -> Path:
        return self._path(name)


class AzureBlobStorage(Storage):
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

    _client: Any = PrivateAttr(default=None)

    def _container(self):
        if self._client is None:
            from azure.storage.blob import ContainerClient

            if self.connection_string:
                client = ContainerClient.from_connection_string(
                    self.connection_string, self.container
                )
            else:
                from azure.identity import DefaultAzureCredential

                client = ContainerClient(
                    self.account_url, self.container, credential=DefaultAzureCredential()
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
        name = _check_name(name)
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
        prefix = _check_prefix(prefix)
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

    def write_bytes(self, name: str, data: bytes, *, overwrite: bool = True) -> BlobInfo:
        from azure.core.exceptions import ResourceExistsError

        # A blob upload commits all of its blocks at once, so readers never see part of it.
        blob = self._container().get_blob_client(self._full(name))
        try:
            result = blob.upload_blob(data, overwrite=overwrite)
        except ResourceExistsError:
            raise FileExistsError(f"{self.uri(name)} already exists") from None
        # The version this call wrote, not whatever a second writer put there since.
        return BlobInfo(
            name=_check_name(name),
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
