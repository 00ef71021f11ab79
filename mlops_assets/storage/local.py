"""Storage in a folder on this machine: temp file, fsync, rename.

A large write asks the kernel to start writing each ``WRITEBACK_BYTES`` it is given as it goes
and to free the pages of what already reached the disk (``_EarlyWriteback``), so its closing
fsync waits for the last part only (a 1.4 GB output no longer waits seconds at its end for all
of it to reach the disk) and it holds a bounded amount of page cache, reused as it goes.

A write killed before its rename leaves a ``.tmp-*`` file (never listed, never readable by
name); the next writer in that folder removes those older than ``TMP_GRACE_S`` (younger ones
may belong to a write still under way), at most once per ``SWEEP_EVERY_S`` per folder.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from mlops_assets.storage.base import BlobInfo, Storage, check_name, check_prefix


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


TMP_PREFIX = ".tmp-"
WRITEBACK_BYTES = 64 << 20
_FADVISE = getattr(os, "posix_fadvise", None)  # Linux, the BSDs; not macOS
TMP_GRACE_S = 3600.0
SWEEP_EVERY_S = 60.0
_SWEPT: dict[Path, float] = {}  # folder -> monotonic time of its last sweep, in this process


def sweep_stale_tmp(folder: Path, grace_s: float = TMP_GRACE_S) -> int:
    """Remove ``.tmp-*`` files in ``folder`` last modified more than ``grace_s`` ago: what
    interrupted writes left. Returns how many were removed."""
    cutoff = time.time() - grace_s
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # finished or removed by another writer meanwhile
            continue
    return removed


class _EarlyWriteback(io.BufferedWriter):
    """A file that has the kernel start writing each ``WRITEBACK_BYTES`` it was given, and
    lets go of the cached pages of the range before, which reached the disk meanwhile.

    One ``POSIX_FADV_DONTNEED`` a range, over it and the range before: on the new range (still
    dirty) it starts writeback without waiting, as PostgreSQL's ``pg_flush_data`` does; on the
    one before (clean by then) it frees the pages. The fsync that commits the file then waits
    for what came after the last range only, and the disk works while the writer computes the
    next part. A large write so holds at most about two ranges of page cache, and takes its
    pages from those it just freed: pages the kernel has not yet given back to a virtual
    machine's host, which cost ~3 ms per MB to touch again once it has (a 1.4 GB output's
    kernel time: ~4 s to ~1 s on such a VM). The price: a file streamed in many writes is not
    left cached for a reader that comes next (but its last two ranges); one written in a single
    call (``write_bytes``) is advised once, over all of it, and stays cached, as do small ones."""

    def __init__(self, fd: int) -> None:
        super().__init__(io.FileIO(fd, "wb", closefd=True))
        self._started = 0  # bytes whose writeback was started
        self._kept = 0  # bytes before this were advised twice (freed); after, maybe cached

    def write(self, b: Any) -> int:
        n = super().write(b)
        if _FADVISE is not None and self.tell() - self._started >= WRITEBACK_BYTES:
            self.flush()
            end = self.tell()
            _FADVISE(self.fileno(), self._kept, end - self._kept, os.POSIX_FADV_DONTNEED)
            self._kept, self._started = self._started, end
        return n


def _sweep_now(folder: Path) -> None:
    now = time.monotonic()
    last = _SWEPT.get(folder)
    if last is not None and now - last < SWEEP_EVERY_S:
        return
    _SWEPT[folder] = now
    sweep_stale_tmp(folder)


# No space left, quota exceeded, or the process's file size limit (RLIMIT_FSIZE).
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _full_error(error: OSError, path: Path) -> OSError:
    """The error a full disk gives a caller: which file, that nothing changed, what to do."""
    if error.errno == errno.EFBIG:
        what, todo = "file size limit reached", "raise the process's file size limit (ulimit -f)"
    else:
        what, todo = "disk full", "free space on that file system (or raise the quota)"
    return OSError(
        error.errno,
        f"{what} at {path}: {todo}, then rerun; this write left nothing behind and the "
        f"previous version of the file, if any, is unchanged ({os.strerror(error.errno or 0)})",
    )


# mkstemp creates 0600 files; a committed object gets the mode a plain open() would give it.
_FILE_MODE = 0o666 & ~_current_umask()


class LocalStorage(Storage):
    """A folder on this machine: the embedded default."""

    def __init__(self, root: str | Path):
        self.root = str(root)

    def __repr__(self) -> str:
        return f"LocalStorage(root={self.root!r})"

    def config(self) -> dict[str, Any]:
        return {"kind": "local", "root": self.root}

    def sub(self, folder: str) -> LocalStorage:
        return LocalStorage(self._path(check_name(folder.rstrip("/"))))

    def _path(self, name: str) -> Path:
        name = check_name(name)
        if name.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
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
        prefix = check_prefix(prefix)
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
                if f.startswith(TMP_PREFIX):
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
            return self._info(path, check_name(name))
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

    def write_bytes(
        self, name: str, data: bytes, *, overwrite: bool = True, content_type: str | None = None
    ) -> BlobInfo:
        with self.open_write(name, overwrite=overwrite) as f:
            f.write(data)
        return self._info(self._path(name), check_name(name))

    @contextmanager
    def open_write(self, name: str, *, overwrite: bool = True) -> Iterator[IO[bytes]]:
        path = self._path(name)
        try:
            with self._atomic(path, name, overwrite) as f:
                yield f
        except OSError as e:
            if e.errno in _FULL:
                raise _full_error(e, path) from e
            raise

    @contextmanager
    def _atomic(self, path: Path, name: str, overwrite: bool) -> Iterator[IO[bytes]]:
        """Temp file, fsync, rename (or link: create-if-absent). The temp file goes on any
        error, a full disk included, so a failed write leaves nothing a sweep must find."""
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_now(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        f = _EarlyWriteback(fd)
        try:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)
            self._stamp(tmp, path)
            os.fsync(f.fileno())
            f.close()
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
            # Closing flushes what is still buffered, which fails again on a full disk: the
            # error that stopped the write is the one that counts.
            with suppress(OSError):
                f.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

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
            return self._info(d, check_name(dst))
        d.parent.mkdir(parents=True, exist_ok=True)
        # A moved object is a new version at dst (as a blob copy would be): a poller whose
        # cursor is on (last_modified, name, etag) must see it.
        try:
            self._stamp(s, d)
            os.replace(s, d)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(src)} does not exist") from None
        return self._info(d, check_name(dst))

    def uri(self, name: str) -> str:
        return self._path(name).resolve().as_uri()

    def local_root(self) -> Path:
        return Path(self.root)

    def local_path(self, name: str) -> Path:
        return self._path(name)
