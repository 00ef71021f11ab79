"""Land drops in a storage: files as they are (``land_files``, what ``mlops land`` does), and
sample data in the landing area (for the demo, tests and benchmarks).

Every drop is written in one atomic step (``Storage.write_bytes``: locally a temporary name,
then a rename; on Blob one committed upload), so a sensor never lists half a file."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlops_assets.domain.curation import landing_prefix
from mlops_assets.ml.sample_data import (
    SalesShape,
    diabetes_table,
    iter_sales,
    make_bad_drop,
    split_by_time,
    to_bytes,
)
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import BlobInfo, Storage


def land_files(storage: Storage, prefix: str, paths: list[Path]) -> list[BlobInfo]:
    """Each local file in ``paths`` as the drop ``<prefix><file name>``, written atomically.

    Raises:
        FileNotFoundError: A path is not a file (nothing after it is landed).
    """
    landed = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a file")
        landed.append(storage.write_bytes(f"{prefix}{path.name}", path.read_bytes()))
    return landed


def land_sales(
    storage: Storage,
    spec: DatasetSpec,
    shape: SalesShape,
    n_drops: int = 1,
    fmt: str = "parquet",
    progress: bool = False,
) -> list[BlobInfo]:
    """Write the sales data as a history drop plus one drop per later week, streamed by chunk."""
    weeks = shape.weeks
    cut_names = [str(w.date()) for w in weeks[len(weeks) - n_drops + 1 :]] if n_drops > 1 else []
    names = [f"history_until_{weeks[len(weeks) - n_drops].date()}"] + [
        f"week_{d}" for d in cut_names
    ]
    bufs = [io.BytesIO() for _ in names]
    writers: list = [None] * len(names)
    for chunk in iter_sales(shape, progress=progress):
        chunk = decode_dictionaries(chunk)
        for i, part in enumerate(split_by_time(chunk, spec.time, n_drops)):
            if writers[i] is None:
                writers[i] = (
                    pq.ParquetWriter(bufs[i], part.schema, compression="zstd")
                    if fmt == "parquet"
                    else pacsv.CSVWriter(bufs[i], part.schema)
                )
            writers[i].write_table(part)
    for w in writers:
        w.close()
    return [
        storage.write_bytes(f"{landing_prefix(spec)}{name}.{fmt}", buf.getvalue())
        for name, buf in zip(names, bufs, strict=True)
    ]


def land_diabetes(
    storage: Storage, spec: DatasetSpec, n_drops: int = 1, fmt: str = "parquet"
) -> list[BlobInfo]:
    table = diabetes_table()
    return [
        storage.write_bytes(f"{landing_prefix(spec)}visits_{i:03d}.{fmt}", to_bytes(part, fmt))
        for i, part in enumerate(split_by_time(table, spec.time, n_drops))
    ]


def land_bad(storage: Storage, spec: DatasetSpec, good: pa.Table, kind: str) -> BlobInfo:
    """A drop of named kind of bad data, made from ``good`` rows (see ``BAD_KINDS``)."""
    data, ext = make_bad_drop(decode_dictionaries(good).to_pandas(), spec.target, spec.time, kind)
    return storage.write_bytes(f"{landing_prefix(spec)}bad_{kind}.{ext}", data)
