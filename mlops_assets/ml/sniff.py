"""What a drop file's bytes are, by content, before any decoding is guessed.

A drop named ``.csv`` may hold anything: a gzip stream, an Excel workbook, a Parquet file, a
picture. ``binary_kind`` recognises such content by its magic number (or by its share of control
bytes) so the file is reported as what it is, with what to do, instead of as a text encoding it
merely fails to decode as.
"""

from __future__ import annotations

from dataclasses import dataclass

SNIFF_BYTES = 4096


@dataclass(frozen=True)
class Magic:
    """A file type recognised by the bytes it starts with."""

    prefix: bytes
    what: str
    todo: str


MAGICS = (
    Magic(b"PAR1", "a Parquet file", "name it .parquet"),
    Magic(b"\x1f\x8b", "gzip-compressed data", "name it .csv.gz, or decompress it"),
    Magic(b"\x28\xb5\x2f\xfd", "zstd-compressed data", "name it .csv.zst, or decompress it"),
    Magic(b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one)", "export the data as CSV"),
    Magic(b"\xd0\xcf\x11\xe0", "an OLE2 document (a legacy .xls workbook)", "export as CSV"),
    Magic(b"BZh", "bzip2-compressed data", "decompress it, or recompress it as .csv.gz"),
    Magic(b"\xfd7zXZ\x00", "xz-compressed data", "decompress it, or recompress it as .csv.gz"),
    Magic(b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "extract the CSV and land that"),
    Magic(b"ARROW1", "an Arrow IPC file", "write it as Parquet"),
    Magic(b"%PDF", "a PDF document", "export the data as CSV"),
    Magic(b"\x89PNG", "a PNG image", "land the data file, not a picture of it"),
    Magic(b"\xff\xd8\xff", "a JPEG image", "land the data file, not a picture of it"),
)
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\v")


def _hex(data: bytes, n: int = 8) -> str:
    return " ".join(f"{b:02x}" for b in data[:n])


def magic_of(data: bytes) -> Magic | None:
    """The known file type ``data`` starts with, if any."""
    return next((m for m in MAGICS if data.startswith(m.prefix)), None)


def utf16_without_bom(head: bytes) -> bool:
    """Whether ``head`` looks like UTF-16 text without a byte-order mark: ASCII characters
    whose other byte is zero, at every even or every odd position."""
    if len(head) < 4:
        return False
    even, odd = head[0::2], head[1::2]
    return any(
        zeros.count(0) >= 0.9 * len(zeros) and sum(32 <= b < 127 for b in text) >= 0.8 * len(text)
        for zeros, text in ((even, odd), (odd, even))
    )


def binary_kind(data: bytes) -> str | None:
    """What ``data`` is when it is not text, said with the evidence; None for text.

    UTF-16 text (with a byte-order mark, or ASCII interleaved with zero bytes) is text: its
    decoding is ``file.encoding``'s business, not this.
    """
    head = data[:SNIFF_BYTES]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or utf16_without_bom(head):
        return None
    magic = magic_of(head)
    if magic is not None:
        return f"{magic.what} (it starts with the bytes {_hex(head)}): {magic.todo}"
    controls = sum(b < 32 and b not in _TEXT_CONTROLS for b in head)
    if controls and (controls >= 0.01 * len(head) or 0 in head):  # text never holds NUL
        return (
            f"binary data, not text ({controls} of its first {len(head)} bytes are control "
            f"bytes; it starts with {_hex(head)}): land the CSV or Parquet export of the data"
        )
    return None


def text_start(data: bytes, n: int = 40) -> str:
    """The first characters of ``data`` as text, for messages."""
    return data[:n].decode("utf-8", errors="replace").splitlines()[0] if data else ""
