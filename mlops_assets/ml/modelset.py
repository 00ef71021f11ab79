"""The model set: every series' model of one training run, packed, plus a manifest.

Writing 10,000 models as 10,000 objects costs 10,000 storage calls; a model set instead packs
them into a few ``pack-NNN.bin`` files and records, per series, where its bytes are::

    <folder>/pack-000.bin ...        model bytes, back to back
    <folder>/manifest.parquet        one row per series: identity, status, metrics, data window,
                                     the pack, offset, length and sha256 of its model

Readers range-read one model and verify its sha256 before loading (``persistence``). The
manifest is written last, so a folder with a manifest is complete. Nothing here does I/O: the
caller passes bytes to and from its storage.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MANIFEST = "manifest.parquet"
PACK_BYTES = 64 << 20  # a pack is closed once it holds this many bytes

LOCATION_FIELDS = [
    pa.field("artifact", pa.string()),  # pack name relative to the storage root
    pa.field("offset", pa.int64()),
    pa.field("length", pa.int64()),
]


def pack_models(
    results: pa.Table, folder: str, pack_bytes: int = PACK_BYTES
) -> tuple[pa.Table, list[tuple[str, bytes]]]:
    """Split ``results`` (with a binary ``model`` column) into a manifest and pack files.

    Returns:
        The manifest (``results`` without ``model``, plus artifact/offset/length) and the pack
        files as (name, bytes), to be written before the manifest.
    """
    models = results["model"].to_pylist()
    artifact: list[str | None] = []
    offset: list[int | None] = []
    length: list[int | None] = []
    packs: list[tuple[str, bytes]] = []
    buf, pos = io.BytesIO(), 0

    def close() -> None:
        nonlocal buf, pos
        if pos:
            packs.append((f"{folder}/pack-{len(packs):03d}.bin", buf.getvalue()))
            buf, pos = io.BytesIO(), 0

    for m in models:
        if m is None:
            artifact.append(None)
            offset.append(None)
            length.append(None)
            continue
        if pos and pos + len(m) > pack_bytes:
            close()
        artifact.append(f"{folder}/pack-{len(packs):03d}.bin")
        offset.append(pos)
        length.append(len(m))
        buf.write(m)
        pos += len(m)
    close()
    manifest = results.drop_columns(["model"])
    for f, values in zip(LOCATION_FIELDS, (artifact, offset, length), strict=True):
        manifest = manifest.append_column(f, pa.array(values, type=f.type))
    return manifest, packs


def manifest_bytes(manifest: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(manifest, buf, compression="zstd")
    return buf.getvalue()


def read_manifest(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))


def model_location(manifest: pa.Table, series_id: str) -> tuple[str, int, int, str] | None:
    """(artifact, offset, length, sha256) of a series' model, or None if it has none."""
    hit = manifest.filter(pc.equal(manifest["series_id"], series_id))
    if hit.num_rows == 0 or hit["artifact"][0].as_py() is None:
        return None
    row = hit.slice(0, 1).to_pylist()[0]
    return row["artifact"], row["offset"], row["length"], row["model_sha256"]


def iter_locations(manifest: pa.Table) -> Iterator[tuple[str, str, int, int, str]]:
    """(series_id, artifact, offset, length, sha256) of every series that has a model."""
    has = manifest.filter(pc.is_valid(manifest["artifact"]))
    cols = [has[c].to_pylist() for c in ("series_id", "artifact", "offset", "length")]
    yield from zip(*cols, has["model_sha256"].to_pylist(), strict=True)


def counts(manifest: pa.Table, column: str = "status") -> dict[str, int]:
    values, n = np.unique(
        np.asarray(manifest[column].fill_null("none").to_pylist(), dtype=object).astype(str),
        return_counts=True,
    )
    return {str(v): int(c) for v, c in zip(values, n, strict=True)}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns (missing ones null, extra ones dropped), cast to it,
    every field nullable (so conformed tables concatenate)."""
    cols = [
        table[f.name].cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=pa.schema([f.with_nullable(True) for f in schema]))


def carry_over(fresh: pa.Table | None, previous: pa.Table | None) -> pa.Table:
    """The manifest of ``fresh``'s series plus ``previous``'s entries for every other series.

    Carried entries keep their pack, offset, sha256 and ``trained_in`` (by reference, no copy),
    in ``fresh``'s schema: columns an older manifest lacks are null. Sorted by series id.

    Raises:
        ValueError: Both are None.
    """
    if fresh is None:
        if previous is None:
            raise ValueError("nothing to carry over: no fresh and no previous manifest")
        return previous.sort_by("series_id")
    parts = [conform(fresh, fresh.schema)]
    if previous is not None:
        done = pa.array(sorted(set(fresh["series_id"].to_pylist())), pa.string())
        carried = previous.filter(pc.invert(pc.is_in(previous["series_id"], value_set=done)))
        parts.append(conform(carried, fresh.schema))
    return pa.concat_tables(parts).sort_by("series_id")
