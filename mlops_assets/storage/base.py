"""The storage interface: objects named by POSIX-style paths under one root, atomic writes.

Names are POSIX-style paths relative to the storage root (``landing/sales/2026-11-16.parquet``).
Every write is atomic: readers see the old object or the new one, never a partial one.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any


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


def check_name(name: str) -> str:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or name.endswith("/") or str(p) == ".":
        raise ValueError(f"invalid storage name {name!r}: use a relative path without '..'")
    return str(p)


def check_prefix(prefix: str) -> str:
    """A listing prefix is matched as a plain string (``a/b`` matches ``a/bc``), so it is not
    normalised; only what could escape the root or never match a normalised name is refused."""
    parts = prefix.split("/")
    if prefix.startswith("/") or any(p in (".", "..") for p in parts) or "" in parts[:-1]:
        raise ValueError(f"invalid storage prefix {prefix!r}: use a relative path without '..'")
    return prefix


class Storage(ABC):
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
    def write_bytes(
        self, name: str, data: bytes, *, overwrite: bool = True, content_type: str | None = None
    ) -> BlobInfo:
        """Write atomically. With ``overwrite=False`` an existing object raises FileExistsError.
        ``content_type`` is what a browser is told the object is, where the store keeps one (a
        blob's Content-Type; files have none)."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def sub(self, folder: str) -> Storage:
        """The same storage rooted at ``folder``: its names are relative to it."""

    @abstractmethod
    def uri(self, name: str) -> str:
        """A URI a person (or another tool) can open."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The JSON form a remote job reopens this storage from (``open_storage``): no secrets."""

    def local_root(self) -> Path | None:
        """The root as a folder on this machine, where it is one (files can be opened in place)."""
        return None

    def exists(self, name: str) -> bool:
        return self.info(name) is not None

    def open_read(self, name: str) -> IO[bytes]:
        """A seekable binary file for readers such as pyarrow."""
        return io.BytesIO(self.read_bytes(name))

    @contextmanager
    def open_write(self, name: str, *, overwrite: bool = True) -> Iterator[IO[bytes]]:
        """A binary file (write-only, not seekable) whose bytes become ``name`` atomically
        when the ``with`` block ends; an error in the block writes nothing. A large output is
        written as it is made rather than held whole in memory (``LocalStorage``: a temp file
        renamed at the end; ``AzureBlobStorage``: staged blocks committed at the end). This
        default gathers the bytes and writes them at the end."""
        buf = io.BytesIO()
        yield buf
        self.write_bytes(name, buf.getvalue(), overwrite=overwrite)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``: one model out of a pack, without the rest."""
        return self.read_bytes(name)[offset : offset + length]

    def move(self, src: str, dst: str) -> BlobInfo:
        """Copy then delete: a crash in between leaves both copies, never neither."""
        if check_name(src) == check_name(dst):
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
