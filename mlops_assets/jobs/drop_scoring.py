"""Scoring a drop's rows with a verified model set, and writing what comes out.

The model set arrives as a ``ModelSetRef``: its manifest is read only if its sha256 is the
reference's (``model_sets.read_manifest``), and each model only if its sha256 is the manifest's
(``ModelSetReader``). A manifest failing its digest refuses the whole set (the drop is not
scored); a model failing its digest fails only its series' rows (error ``model_integrity``).
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.domain import batch_layout as layout
from mlops_assets.domain.model_sets import ModelSetRef, read_manifest
from mlops_assets.jobs.batch_params import DropJob
from mlops_assets.ml.drops import ROW, DropRejected
from mlops_assets.ml.model_cache import ModelSetReader
from mlops_assets.ml.scoring import score_table
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import PARQUET_WRITE_BATCH, series_ids, series_numbers, take_rows

CHUNK_ROWS = 1_000_000  # rows (of whole series) whose features are computed at once
RANGED_READS = 64  # models read one by one before the reader switches to whole packs


def _pack_reader(storage) -> Callable:
    """``read_range`` for ModelSetReader: ranged reads for the first ``RANGED_READS`` models,
    then whole packs, each read once (a drop of many series costs a few large reads, not one
    request per model; a drop of a few series reads only their models)."""
    packs: dict[str, bytes] = {}
    ranged = 0

    def read_range(name: str, offset: int, length: int) -> bytes:
        nonlocal ranged
        if name not in packs and ranged < RANGED_READS:
            ranged += 1
            return storage.read_range(name, offset, length)
        if name not in packs:
            packs[name] = storage.read_bytes(name)
        return packs[name][offset : offset + length]

    return read_range


_READERS: OrderedDict[tuple[str, str], ModelSetReader] = OrderedDict()


def forget_model_set_readers() -> None:
    """Drop the readers kept for the next drop of this process: its next drop reads its
    manifest and loads its models again, as the first drop of a job does."""
    _READERS.clear()


def model_set_reader(ref: ModelSetRef, model_storage) -> ModelSetReader:
    """The verified reader of ``ref``, shared by the drops of a batch: a model set folder never
    changes once written, so its manifest is read (and its digest checked) and each model
    loaded once per process.

    Raises:
        ModelSetError: No manifest where ``ref`` says.
        ModelIntegrityError: The manifest is not the one ``ref`` names.
    """
    key = (json.dumps(model_storage.config(), sort_keys=True), ref.to_json())
    if key in _READERS:
        _READERS.move_to_end(key)
        return _READERS[key]
    manifest = read_manifest(model_storage, ref)
    reader = ModelSetReader(
        manifest,
        _pack_reader(model_storage),
        version=ref.version,
        # Scoring holds each series' model until a drop is done anyway: keep them all.
        max_models=manifest.num_rows + 1,
        max_bytes=1 << 40,
    )
    _READERS[key] = reader
    while len(_READERS) > 2:
        _READERS.popitem(last=False)
    return reader


def row_series_ids(table: pa.Table, spec: DatasetSpec) -> np.ndarray:
    """Each row's series id, built once per series rather than once per row."""
    keys = table.select(spec.series_keys)
    series_of, first = series_numbers(keys, spec.series_keys)
    ids = np.asarray(series_ids(take_rows(keys, first), spec).to_pylist(), dtype=object)
    return ids[series_of]


def score_drop_rows(
    table: pa.Table, spec: DatasetSpec, reader: ModelSetReader, chunk_rows: int = CHUNK_ROWS
) -> pa.Table:
    """``scoring.score_table`` over the drop's good rows, each output row with its source row.

    ``score_table`` works through whole series about ``chunk_rows`` rows at a time, which bounds
    the feature memory on a large drop. A model failing its digest gives its series' rows the
    error ``model_integrity``, the message naming the artifact and the series.
    """
    out = score_table(table, spec, reader.model_for, chunk_rows=chunk_rows)
    source = pa.field("source_row", table[ROW].type, nullable=False)
    return with_provenance(out.add_column(0, source, table[ROW]), reader)


PROVENANCE = ("model_set_version", "family", "history_end")


def with_provenance(scored: pa.Table, reader: ModelSetReader) -> pa.Table:
    """``scored`` with what production monitoring joins actuals on: the model set version
    that scored each row and its series' ``family`` and ``history_end`` from the manifest
    (looked up once per series through the ``series_id`` dictionary).

    The columns never null by construction (``source_row``, ``series_id``,
    ``model_set_version``) are declared so: Parquet then writes no definition levels for them,
    half their encoding time (and a writer refuses a null there rather than writing it)."""
    i = scored.schema.get_field_index("series_id")
    scored = scored.set_column(i, scored.field(i).with_nullable(False), scored.column(i))
    ids = scored["series_id"].combine_chunks()
    if not pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_encode()
    series = ids.dictionary.to_pylist()
    for name in PROVENANCE[1:]:
        # Encoded per series, then each row's index gathered: no string per row is built.
        per_series = pa.array([reader.entry(s, name) for s in series], pa.string())
        encoded = per_series.dictionary_encode()
        rows = pc.take(encoded.indices, ids.indices)
        scored = scored.append_column(
            name, pa.DictionaryArray.from_arrays(rows, encoded.dictionary)
        )
    version = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(scored.num_rows, np.int32)), pa.array([reader.version], pa.string())
    )
    return scored.append_column(pa.field(PROVENANCE[0], version.type, nullable=False), version)


# Predictions: row numbers and dates delta-encoded, text columns dictionary-encoded, all under
# zstd; predictions and bounds byte-stream-split under snappy (random doubles: zstd takes 3%
# fewer bytes for half again the CPU, on the largest columns of the file).
_ENCODINGS = {
    "source_row": "DELTA_BINARY_PACKED",
    "time": "DELTA_BINARY_PACKED",
    "prediction": "BYTE_STREAM_SPLIT",
}


def parquet_options(names: list[str]) -> dict:
    encodings = {c: e for c, e in _ENCODINGS.items() if c in names}
    # Interval bounds (``prediction_lower_80``...) are floats like the prediction.
    encodings.update({c: "BYTE_STREAM_SPLIT" for c in names if c.startswith("prediction_")})
    return {
        "compression": {
            c: "snappy" if encodings.get(c) == "BYTE_STREAM_SPLIT" else "zstd" for c in names
        },
        "use_dictionary": [c for c in names if c not in encodings],
        "column_encoding": encodings,
        # Statistics where readers filter (row, series, time), not on the predictions.
        "write_statistics": [c for c in ("source_row", "series_id", "time") if c in names] or False,
        "write_batch_size": PARQUET_WRITE_BATCH,
    }


def write_parquet(storage, name: str, table: pa.Table | pd.DataFrame) -> None:
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, **parquet_options(table.column_names))
    storage.write_bytes(name, buf.getvalue())


def quarantine_file(storage, job: DropJob, data: bytes, rejected: DropRejected) -> str:
    name = layout.quarantined_file(job.dataset, job.key)
    storage.write_bytes(name, data)
    reason = {**rejected.as_dict(), "drop": job.drop, "etag": job.etag, "key": job.key}
    storage.write_text(f"{name}.reason.json", json.dumps(reason, indent=2))
    return name


def quarantine_rows(storage, job: DropJob, rej: pa.Table, rank: int, world: int) -> str:
    name = layout.quarantined_rows(job.dataset, job.key)
    if world > 1:
        name = name.removesuffix(".parquet") + f".part-{rank:03d}-of-{world:03d}.parquet"
    write_parquet(storage, name, rej)
    return name
