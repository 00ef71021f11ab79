"""A seekable read-only file over ranged reads: readers such as pyarrow fetch only what they need.

A Parquet reader that wants one column or one row group seeks to the footer, then to that
column chunk; over :class:`RangedFile` each such read is one ranged request for those bytes
(plus read-ahead up to the buffer size), not a download of the whole object.
"""

from __future__ import annotations

import io
from collections.abc import Callable

ReadAt = Callable[[int, int], bytes]  # (offset, length) -> at most length bytes from offset

BUFFER_BYTES = 256 << 10  # read-ahead of small reads; larger reads go straight through


class RangedFile(io.RawIOBase):
    """A raw binary file of ``size`` bytes whose reads are ``read_at(offset, length)`` calls.

    ``requests`` and ``bytes_read`` count what was fetched (tests and benchmarks check that a
    column or row-group read fetched less than the object).
    """

    def __init__(self, read_at: ReadAt, size: int, name: str = ""):
        super().__init__()
        self._read_at = read_at
        self.size = size
        self.name = name
        self._pos = 0
        self.requests = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(f"negative seek position {pos} in {self.name or 'ranged file'}")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), max(0, self.size - self._pos))
        if want == 0:
            return 0
        data = self._read_at(self._pos, want)
        if not data:
            raise OSError(
                f"{self.name or 'ranged file'}: no bytes at offset {self._pos} of {self.size}"
            )
        n = len(data)
        self.requests += 1
        self.bytes_read += n
        memoryview(buffer)[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        data = self._read_at(self._pos, self.size - self._pos) if self._pos < self.size else b""
        if data:
            self.requests += 1
            self.bytes_read += len(data)
            self._pos += len(data)
        return data


def open_ranged(read_at: ReadAt, size: int, name: str = "") -> io.BufferedReader:
    """:class:`RangedFile` behind a read-ahead buffer; its counters are on ``.raw``."""
    return io.BufferedReader(RangedFile(read_at, size, name), buffer_size=BUFFER_BYTES)
