"""Land drops in a storage: files as they are (``land_files``, what ``mlops land`` does), any
table of a spec's columns split by period (``land_table``, e.g. a real panel,
``docs/example-beer.md``), and sample data (for the demo, tests and benchmarks).

Every drop is written in one atomic step (``Storage.write_bytes``: locally a temporary name,
then a rename; on Blob one committed upload), so a sensor never lists half a file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
from mlops_assets.ml.tables import decode_dictionaries, series_ids
from mlops_assets.storage import BlobInfo, Storage


def drop_names(times: list, n_drops: int) -> list[str]:
    """Names of ``split_by_time``'s drops: ``history_until_<date>`` then ``week_<date>``."""
    later = [str(t)[:10] for t in times[len(times) - n_drops + 1 :]] if n_drops > 1 else []
    return [f"history_until_{str(times[len(times) - n_drops])[:10]}"] + [f"week_{d}" for d in later]


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
    names = drop_names(list(shape.weeks), n_drops)
    bufs = [io.BytesIO() for _ in names]
    writers: list = [None] * len(names)
    weeks = pa.array(shape.weeks.values.astype("datetime64[D]"), type=pa.date32())
    for chunk in iter_sales(shape, progress=progress):
        chunk = decode_dictionaries(chunk)
        for i, part in enumerate(split_by_time(chunk, spec.time, n_drops, weeks)):
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


def read_spec_table(path: str, spec: DatasetSpec) -> pa.Table:
    """A Parquet file's columns of ``spec``, cast to its schema (a timestamp to a date column).

    Raises:
        ValueError: the file lacks a column of the spec.
    """
    table = pq.read_table(path)
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks the {spec.name} spec's columns {missing}")
    return decode_dictionaries(table.select(list(spec.columns))).cast(spec.arrow_schema)


def choose_series(table: pa.Table, spec: DatasetSpec, n_series: int) -> pa.Table:
    """The rows of ``n_series`` series spread evenly over history length (shortest to longest,
    ties by id): a deterministic subset that keeps short and ragged series."""
    ids = series_ids(table, spec)
    unique, counts = np.unique(ids.to_numpy(zero_copy_only=False), return_counts=True)
    if n_series >= len(unique):
        return table
    by_length = unique[np.lexsort((unique, counts))]
    picks = by_length[np.linspace(0, len(unique) - 1, n_series).round().astype(int)]
    return table.filter(pc.is_in(ids, pa.array(picks)))


def land_table(
    storage: Storage, spec: DatasetSpec, table: pa.Table, n_drops: int = 1, fmt: str = "parquet"
) -> list[BlobInfo]:
    """``table`` as a history drop then one drop per later period (``split_by_time``)."""
    times = pc.unique(table[spec.time]).sort().to_pylist()
    parts = split_by_time(table, spec.time, n_drops)
    return [
        storage.write_bytes(f"{landing_prefix(spec)}{name}.{fmt}", to_bytes(part, fmt))
        for name, part in zip(drop_names(times, n_drops), parts, strict=True)
    ]
