"""Score drops with each series' production model: the batch scoring job, run under Pipes.

Run as ``python -m mlops_assets.jobs.score_drops`` (or as a script). Locally Dagster's
``PipesSubprocessClient`` starts it; on Azure ``PipesAzureMLClient`` submits the very same
command as an AML command job (``resources/compute.py``). What to score comes from the
``MLOPS_JOB_PARAMS`` environment variable (JSON, see :class:`DropBatch`; a single
:class:`DropJob` is accepted too), so every instance of a multi-node job gets it whether or not
it talks Pipes. One job scores all the drops of a Dagster run, one after the other: a drop that
is rejected or fails does not stop the others.

Steps per drop: read the drop (checking that its etag is still the one the sensor saw), validate it
against the dataset spec (target column optional or null; bad rows go to quarantine with their
rule; a malformed file goes to quarantine whole, with a clear error, and nothing is predicted),
keep this instance's share of the series (stable crc32 hash of the series id modulo the number
of instances), load each series' production model (sha256-verified, ``ModelSetReader``),
predict (``scoring.score``) and write the predictions Parquet atomically.

Instances: rank and count come from ``MLOPS_RANK``/``MLOPS_WORLD_SIZE``, else the variables Azure
ML sets for distributed jobs (``RANK``/``WORLD_SIZE``, ``OMPI_COMM_WORLD_RANK``/``..._SIZE``,
``AZUREML_PROCESS_ID``). Rank 0 talks Pipes: per drop it waits for the other instances'
summaries and reports the totals (rows scored, series, unknown series, quarantined rows,
duration) as one custom message carrying the drop's ``key``. Other ranks only write their parts
and summaries.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.domain import batch_layout as layout
from mlops_assets.jobs.common import (
    PARAMS_ENV,
    open_pipes,
    rank_and_world,
    shard_of_series,
)
from mlops_assets.ml import modelset
from mlops_assets.ml.drops import (
    ROW,
    DropRejected,
    ParsedDrop,
    check_columns,
    drop_format,
    parse_drop,
    type_rows,
)
from mlops_assets.ml.model_cache import ModelSetReader
from mlops_assets.ml.scoring import UNKNOWN_SERIES, score_table
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.ml.tables import series_codes, series_ids, series_numbers, take_rows
from mlops_assets.ml.validation.rows import validate_rows
from mlops_assets.storage import open_storage

CHUNK_ROWS = 1_000_000  # rows (of whole series) whose features are computed at once


# ---- parameters -----------------------------------------------------------------------------


@dataclass
class DropJob:
    """Everything an instance needs to score one drop version.

    ``storage``/``model_storage`` are ``{"kind": "local", "root": ...}`` or ``{"kind": "azure",
    "account_url", "container", "prefix"}``; credentials never travel here (managed identity on
    AML; a connection string for Azurite comes from ``MLOPS_JOB_CONNECTION_STRING``).
    """

    dataset: str
    drop: str  # storage name of the drop, e.g. scoring/sales/inbox/2026/11/21/a.parquet
    etag: str
    key: str  # the drop version key (partition key): <drop relative to the inbox>@<etag>
    storage: dict
    model_storage: dict
    model_folder: str
    model_version: str
    spec_path: str | None = None  # a spec YAML; default the bundled spec named ``dataset``
    wait_for_ranks_s: float = 3600.0

    @classmethod
    def from_json(cls, text: str) -> DropJob:
        return cls(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


_PER_DROP = ("drop", "etag", "key")
PARAMS_INLINE_MAX = 16 * 1024  # larger params travel as a file in storage (see DropBatch)


@dataclass
class DropBatch:
    """The drop versions one job scores, in order (JSON in ``MLOPS_JOB_PARAMS``).

    What the drops share is stated once; ``drops`` holds each one's ``drop``, ``etag`` and
    ``key`` (any other :class:`DropJob` field there overrides the shared value)::

        {"dataset": "sales", "storage": {...}, "model_storage": {...}, "model_folder": "...",
         "model_version": "3", "drops": [{"drop": "...", "etag": "...", "key": "..."}, ...]}

    :meth:`from_json` also takes a single :class:`DropJob` (a batch of one) and a reference
    ``{"params_file": <name>, "storage": {...}}`` to params written to storage, which is how a
    batch too large for an environment variable (:func:`params_json`) travels.
    """

    dataset: str
    storage: dict
    model_storage: dict
    model_folder: str
    model_version: str
    drops: list[dict] = field(default_factory=list)
    spec_path: str | None = None
    wait_for_ranks_s: float = 3600.0

    @classmethod
    def of(cls, jobs: list[DropJob]) -> DropBatch:
        if not jobs:
            raise ValueError("a batch needs at least one drop")
        shared = {k: v for k, v in asdict(jobs[0]).items() if k not in _PER_DROP}
        drops = []
        for job in jobs:
            d = asdict(job)
            drops.append(
                {k: v for k, v in d.items() if k in _PER_DROP or v != shared.get(k, object())}
            )
        return cls(**shared, drops=drops)

    def jobs(self) -> list[DropJob]:
        shared = {k: v for k, v in asdict(self).items() if k != "drops"}
        return [DropJob(**{**shared, **d}) for d in self.drops]

    @property
    def keys(self) -> list[str]:
        return [d["key"] for d in self.drops]

    @classmethod
    def from_json(cls, text: str) -> DropBatch:
        raw = json.loads(text)
        if "params_file" in raw:
            raw = json.loads(open_storage(raw["storage"]).read_text(raw["params_file"]))
        if "drops" not in raw:
            return cls.of([DropJob(**raw)])
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def params_json(batch: DropBatch, storage, name: str, limit: int = PARAMS_INLINE_MAX) -> str:
    """``batch`` as the value of ``MLOPS_JOB_PARAMS``: inline, or, past ``limit`` characters
    (Linux caps one environment string at 128 KiB; AML job definitions should stay small),
    written to ``name`` in ``storage`` (a ``resources.storage`` object) and passed by reference.
    """
    text = batch.to_json()
    if len(text) <= limit:
        return text
    storage.write_text(name, text)
    return json.dumps({"params_file": name, "storage": storage.config()})


# ---- validation -----------------------------------------------------------------------------


def scoring_spec(spec: DatasetSpec, has_target: bool) -> DatasetSpec:
    """The spec a scoring drop is typed against: the target is optional (nullable) or absent."""
    columns = dict(spec.columns)
    if has_target:
        columns[spec.target] = columns[spec.target].model_copy(update={"nullable": True})
    else:
        columns.pop(spec.target)
    return spec.model_copy(update={"columns": columns})


def _columns_of(name: str, data: bytes) -> list[str] | None:
    """The drop's column names, cheaply (None if it cannot tell: parse_drop will say why)."""
    try:
        if name.lower().endswith((".parquet", ".pq")):
            return pq.read_schema(io.BytesIO(data)).names
        header = data.split(b"\n", 1)[0].decode("utf-8").lstrip("\ufeff").rstrip("\r")
        return [h.strip() for h in header.split(",")]
    except Exception:
        return None


def validate(name: str, data: bytes, spec: DatasetSpec) -> ParsedDrop:
    """Type the drop against the scoring spec; rows failing a type, null or value rule are
    rejected with it. Raises ``DropRejected`` for a file that cannot be read as a drop."""
    cols = _columns_of(name, data)
    sspec = scoring_spec(spec, has_target=cols is None or spec.target in cols)
    parsed = parse_drop(name, data, sspec, keep_dictionaries=True)
    check = validate_rows(parsed, sspec, for_scoring=True)
    return ParsedDrop(rows_in=check.rows_in, good=check.kept, rejected=check.quarantined)


# ---- scoring --------------------------------------------------------------------------------


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


def _row_series_ids(table: pa.Table, spec: DatasetSpec) -> np.ndarray:
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
    the feature memory on a large drop.
    """
    out = score_table(table, spec, reader.model_for, chunk_rows=chunk_rows)
    return out.add_column(0, "source_row", table[ROW])


# ---- one instance ---------------------------------------------------------------------------


@dataclass
class Summary:
    """What one instance did with its share of a drop."""

    key: str
    rank: int = 0
    world: int = 1
    status: str = "scored"  # scored | rejected | superseded | failed
    rows_in: int = 0
    rows_quarantined: int = 0
    rows_scored: int = 0  # rows with a prediction
    rows_failed: int = 0  # rows of known series that got an error code instead
    rows_unknown_series: int = 0
    series: int = 0
    unknown_series: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    output: str | None = None
    output_uri: str | None = None
    quarantine: str | None = None
    error: str | None = None
    model_version: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


# Predictions: row numbers and dates delta-encoded, predictions byte-stream-split (both compress
# far better under zstd that way), text columns dictionary-encoded.
_ENCODINGS = {
    "source_row": "DELTA_BINARY_PACKED",
    "time": "DELTA_BINARY_PACKED",
    "prediction": "BYTE_STREAM_SPLIT",
}


def _parquet_options(names: list[str]) -> dict:
    encodings = {c: e for c, e in _ENCODINGS.items() if c in names}
    return {
        "compression": "zstd",
        "use_dictionary": [c for c in names if c not in encodings],
        "column_encoding": encodings,
        # Statistics where readers filter (row, series, time), not on the predictions.
        "write_statistics": [c for c in ("source_row", "series_id", "time") if c in names] or False,
    }


def _write_parquet(storage, name: str, table: pa.Table | pd.DataFrame) -> None:
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, **_parquet_options(table.column_names))
    storage.write_bytes(name, buf.getvalue())


def quarantine_file(storage, job: DropJob, data: bytes, rejected: DropRejected) -> str:
    name = layout.quarantined_file(job.dataset, job.key)
    storage.write_bytes(name, data)
    reason = {**rejected.as_dict(), "drop": job.drop, "etag": job.etag, "key": job.key}
    storage.write_text(f"{name}.reason.json", json.dumps(reason, indent=2))
    return name


# ---- large drops, in pieces -----------------------------------------------------------------

STREAM_MIN_ROWS = 2_000_000  # Parquet drops at least this large are scored in pieces
PIECE_ROWS = 1 << 21  # rows read, typed and scored at a time (whole series, see below)


def stream_source(
    name: str, data: bytes, spec: DatasetSpec, min_rows: int = STREAM_MIN_ROWS
) -> pq.ParquetFile | None:
    """A Parquet drop worth scoring in pieces: large, and grouped by series (each series' rows
    together, as exports by key are). None sends the drop down the whole-file path, which also
    reports every file-level problem."""
    if drop_format(name) != "parquet":
        return None
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        if pf.metadata.num_rows < min_rows:
            return None
        sspec = scoring_spec(spec, has_target=spec.target in pf.schema_arrow.names)
        check_columns(name, pf.schema_arrow.empty_table(), sspec)
        keys = pf.read(columns=spec.series_keys)
    except (DropRejected, pa.ArrowException, OSError):
        return None
    if any(keys[k].null_count for k in spec.series_keys):
        return None
    code = series_codes(keys, spec.series_keys)
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    return pf if len(np.unique(code[starts])) == len(starts) else None


def _last_series_start(piece: pa.Table, spec: DatasetSpec) -> int:
    """Where the piece's last series begins (its rows may go on in the next batch)."""
    code = series_codes(piece.select(spec.series_keys), spec.series_keys)
    changes = np.flatnonzero(code[1:] != code[:-1])
    return int(changes[-1]) + 1 if len(changes) else 0


def score_in_pieces(
    pf: pq.ParquetFile,
    name: str,
    spec: DatasetSpec,
    reader: ModelSetReader,
    out: Summary,
    seconds: dict[str, float],
    rank: int = 0,
    world: int = 1,
    chunk_rows: int = CHUNK_ROWS,
    piece_rows: int = PIECE_ROWS,
) -> tuple[bytes, pa.Table]:
    """Validate and score a large drop grouped by series a piece at a time; return the
    predictions Parquet (one row group per piece) and the rejected rows.

    Each piece holds whole series (a batch's last series waits for the next batch), so every
    series is scored with all its rows, as on the whole-file path, with the same rules and
    results; memory stays bounded by the piece and the writer encodes one piece while the next
    is scored.
    """
    sspec = scoring_spec(spec, has_target=spec.target in pf.schema_arrow.names)
    buf, writer, pending = io.BytesIO(), None, None
    rejected: list[pa.Table] = []
    carry: pa.Table | None = None
    first = 0
    empty = None
    buffered: list[pa.Table] = []
    for k in ("validate", "score", "write"):
        seconds.setdefault(k, 0.0)

    def score(piece: pa.Table) -> None:
        nonlocal writer, pending
        t = time.perf_counter()
        scored = score_drop_rows(piece, spec, reader, chunk_rows=chunk_rows)
        _count(scored, out)
        seconds["score"] += time.perf_counter() - t
        t = time.perf_counter()
        if writer is None:
            writer = pq.ParquetWriter(buf, scored.schema, **_parquet_options(scored.column_names))
        if pending is not None:
            pending.result()
        pending = pool.submit(writer.write_table, scored)
        seconds["write"] += time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=1) as pool:
        for batch in pf.iter_batches(batch_size=piece_rows):
            t = time.perf_counter()
            raw = pa.Table.from_batches([batch])
            parsed = type_rows(raw, sspec, first, keep_dictionaries=True)
            first += raw.num_rows
            check = validate_rows(parsed, sspec, for_scoring=True)
            good = check.kept
            rejected.append(check.quarantined)
            if world > 1:
                good = good.filter(
                    pa.array(shard_of_series(_row_series_ids(good, spec), world) == rank)
                )
            buffered.append(good)
            empty = good.slice(0, 0)
            seconds["validate"] += time.perf_counter() - t
            if sum(b.num_rows for b in buffered) < piece_rows:
                continue  # Parquet batches end at row groups: gather a piece's worth
            t = time.perf_counter()
            good = pa.concat_tables(buffered).unify_dictionaries()
            buffered = []
            piece = good if carry is None else pa.concat_tables([carry, good]).unify_dictionaries()
            cut = _last_series_start(piece, spec) if piece.num_rows else 0
            piece, carry = piece.slice(0, cut), piece.slice(cut)
            seconds["validate"] += time.perf_counter() - t
            if piece.num_rows:
                score(piece)
        if buffered:
            carry = pa.concat_tables(([carry] if carry is not None else []) + buffered)
        if carry is not None and carry.num_rows:
            score(carry.unify_dictionaries())
        if writer is None:  # no row to score (all rejected, or other instances' series)
            score(empty)
        t = time.perf_counter()
        if pending is not None:
            pending.result()
        seconds["write"] += time.perf_counter() - t
    out.rows_in = first
    writer.close()
    return buf.getvalue(), pa.concat_tables(rejected)


@lru_cache(maxsize=8)
def _spec(name: str) -> DatasetSpec:
    """Specs by name or path, parsed once per process (a batch scores many drops)."""
    return load_spec(name)


_READERS: OrderedDict[tuple[str, str, str], ModelSetReader] = OrderedDict()


def _reader(job: DropJob, model_storage) -> ModelSetReader:
    """The model set's reader, shared by the drops of a batch: a model set folder never
    changes once written, so its manifest is read and each model loaded once per process."""
    key = (json.dumps(job.model_storage, sort_keys=True), job.model_folder, job.model_version)
    if key in _READERS:
        _READERS.move_to_end(key)
        return _READERS[key]
    manifest = modelset.read_manifest(
        model_storage.read_bytes(f"{job.model_folder}/{modelset.MANIFEST}")
    )
    reader = ModelSetReader(
        manifest,
        _pack_reader(model_storage),
        version=job.model_version,
        # Scoring holds each series' model until a drop is done anyway: keep them all.
        max_models=manifest.num_rows + 1,
        max_bytes=1 << 40,
    )
    _READERS[key] = reader
    while len(_READERS) > 2:
        _READERS.popitem(last=False)
    return reader


def run_instance(
    job: DropJob,
    rank: int = 0,
    world: int = 1,
    log: Callable[[str], None] = lambda _m: None,
    chunk_rows: int = CHUNK_ROWS,
    piece_rows: int = PIECE_ROWS,
    stream_min_rows: int = STREAM_MIN_ROWS,
) -> Summary:
    """Score this instance's share of the drop and write its part; return what it did.

    A Parquet drop of at least ``stream_min_rows`` rows, grouped by series, is read, validated,
    scored and written about ``piece_rows`` rows at a time (``score_in_pieces``); any other
    drop whole. Both give the same predictions.
    """
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    storage = open_storage(job.storage)
    model_storage = open_storage(job.model_storage)
    spec = _spec(job.spec_path or job.dataset)
    out = Summary(key=job.key, rank=rank, world=world, model_version=job.model_version)

    info = storage.info(job.drop)
    if info is None or info.etag != job.etag:
        out.status = "superseded"
        out.error = (
            f"{job.drop} is no longer version {job.etag} (now "
            f"{'deleted' if info is None else info.etag}); that version is not scored, a newer "
            "one is scored by its own run"
        )
        log(out.error)
        return out
    data = storage.read_bytes(job.drop)
    seconds["read"] = time.perf_counter() - t0
    pieces = stream_source(job.drop, data, spec, stream_min_rows)
    if pieces is not None:
        try:
            return _run_in_pieces(
                job,
                pieces,
                replace(out, errors=dict(out.errors)),
                dict(seconds),
                storage,
                model_storage,
                spec,
                t0,
                log,
                (rank, world, chunk_rows, piece_rows),
            )
        except (pa.ArrowException, OSError) as e:  # e.g. a corrupt page past the first pieces:
            log(f"scoring in pieces stopped ({e}); scoring the drop whole")  # whole says why

    t = time.perf_counter()
    try:
        parsed = validate(job.drop, data, spec)
    except DropRejected as rejected:
        out.status, out.error = "rejected", rejected.message
        if rank == 0:
            out.quarantine = quarantine_file(storage, job, data, rejected)
        seconds["validate"] = time.perf_counter() - t
        out.seconds = {k: round(v, 4) for k, v in seconds.items()}
        log(f"malformed drop quarantined, nothing scored: {rejected.message}")
        return out
    out.rows_in = parsed.rows_in
    good = parsed.good
    if world > 1:
        mine = shard_of_series(_row_series_ids(good, spec), world)
        good = good.filter(pa.array(mine == rank))
        if parsed.rows_rejected:
            rsid = _row_series_ids(parsed.rejected, spec)
            rej = parsed.rejected.filter(pa.array(shard_of_series(rsid, world) == rank))
        else:
            rej = parsed.rejected
    else:
        rej = parsed.rejected
    out.rows_quarantined = rej.num_rows
    if rej.num_rows:
        out.quarantine = _quarantine_rows(storage, job, rej, rank, world)
    seconds["validate"] = time.perf_counter() - t

    t = time.perf_counter()
    reader = _reader(job, model_storage)
    seconds["models_index"] = time.perf_counter() - t

    t = time.perf_counter()
    scored = score_drop_rows(good, spec, reader, chunk_rows=chunk_rows)
    seconds["score"] = time.perf_counter() - t
    seconds["models_load"] = 0.0  # inside score; cache stats below
    _count(scored, out)
    t = time.perf_counter()
    name = layout.predictions_name(job.dataset, job.key, rank, world)
    _write_parquet(storage, name, scored)
    out.output, out.output_uri = name, storage.uri(name)
    seconds["write"] = time.perf_counter() - t
    return _finish(out, seconds, t0, log, f"models loaded {reader.stats.misses}")


def _finish(out: Summary, seconds: dict, t0: float, log: Callable, how: str) -> Summary:
    seconds["total"] = time.perf_counter() - t0
    out.seconds = {k: round(v, 4) for k, v in seconds.items()}
    log(
        f"rank {out.rank}/{out.world}: {out.rows_scored:,} rows scored over {out.series:,} "
        f"series ({out.unknown_series} unknown), {out.rows_quarantined} quarantined, {how}, "
        f"in {seconds['total']:.2f}s -> {out.output_uri}"
    )
    return out


def _quarantine_rows(storage, job: DropJob, rej: pa.Table, rank: int, world: int) -> str:
    name = layout.quarantined_rows(job.dataset, job.key)
    if world > 1:
        name = name.removesuffix(".parquet") + f".part-{rank:03d}-of-{world:03d}.parquet"
    _write_parquet(storage, name, rej)
    return name


def _run_in_pieces(job, pf, out, seconds, storage, model_storage, spec, t0, log, shape) -> Summary:
    """``run_instance`` for a large drop grouped by series (``score_in_pieces``); ``shape`` is
    (rank, world, chunk_rows, piece_rows). Raises Arrow's error for an unreadable piece."""
    rank, world, chunk_rows, piece_rows = shape
    t = time.perf_counter()
    reader = _reader(job, model_storage)
    seconds["models_index"] = time.perf_counter() - t
    data, rejected = score_in_pieces(
        pf, job.drop, spec, reader, out, seconds, rank, world, chunk_rows, piece_rows
    )
    if world > 1 and rejected.num_rows:
        mine = shard_of_series(_row_series_ids(rejected, spec), world) == rank
        rejected = rejected.filter(pa.array(mine))
    out.rows_quarantined = rejected.num_rows
    if rejected.num_rows:
        out.quarantine = _quarantine_rows(storage, job, rejected, rank, world)
    t = time.perf_counter()
    name = layout.predictions_name(job.dataset, job.key, rank, world)
    storage.write_bytes(name, data)
    out.output, out.output_uri = name, storage.uri(name)
    seconds["write"] += time.perf_counter() - t
    return _finish(out, seconds, t0, log, f"in pieces of {piece_rows:,} rows")


def _count(scored: pa.Table, out: Summary) -> None:
    """Add a scored table's rows scored, failed and of unknown series, and its series, to
    ``out`` (its ``series_id`` dictionary holds exactly its series; no per-row decoding).
    Pieces of one drop hold disjoint series, so their counts add up."""
    scored_rows = scored.num_rows - scored["prediction"].null_count
    out.rows_scored += scored_rows
    series = scored["series_id"].combine_chunks()
    out.series += len(series.dictionary)
    error = scored["error"]
    if error.null_count == len(error):
        return
    errors = {d["values"]: int(d["counts"]) for d in pc.value_counts(error.drop_null()).to_pylist()}
    for k, v in errors.items():
        out.errors[k] = out.errors.get(k, 0) + v
    unknown_rows = errors.get(UNKNOWN_SERIES, 0)
    out.rows_unknown_series += unknown_rows
    out.rows_failed += scored.num_rows - scored_rows - unknown_rows
    if unknown_rows:
        unknown = pc.equal(error, UNKNOWN_SERIES).fill_null(False)
        out.unknown_series += int(pc.count_distinct(series.indices.filter(unknown)).as_py())


def combine(summaries: list[Summary]) -> dict:
    """Totals over every instance's summary of one drop, as reported to Dagster.

    The status is rank 0's, unless rank 0 scored and another instance did not: then the drop
    ``failed`` with that instance's error.
    """
    first = summaries[0]
    status, error = first.status, first.error
    if status == "scored":
        other = next((s for s in summaries[1:] if s.status != "scored"), None)
        if other is not None:
            who = f"rank {other.rank}" if other.rank >= 0 else "instances"
            status, error = "failed", f"{who}: {other.status}: {other.error}"
    total: dict[str, Any] = {
        "key": first.key,
        "status": status,
        "instances": first.world,
        "rows_in": first.rows_in,
        "model_version": first.model_version,
        "error": error,
        "outputs": [s.output for s in summaries if s.output],
        "output_uris": [s.output_uri for s in summaries if s.output_uri],
        "quarantine": [s.quarantine for s in summaries if s.quarantine],
        "errors": {},
        "seconds": {k: max(s.seconds.get(k, 0.0) for s in summaries) for k in first.seconds},
    }
    for f in (
        "rows_quarantined",
        "rows_scored",
        "rows_failed",
        "rows_unknown_series",
        "series",
        "unknown_series",
    ):
        total[f] = sum(getattr(s, f) for s in summaries)
    for s in summaries:
        for k, v in s.errors.items():
            total["errors"][k] = total["errors"].get(k, 0) + v
    return total


def wait_for_ranks(storage, job: DropJob, world: int, timeout_s: float) -> list[Summary]:
    """The summaries of ranks 1.. for ``job``'s drop, as they write them (``TimeoutError``
    naming the missing ones after ``timeout_s``; 0 looks once)."""
    deadline = time.monotonic() + timeout_s
    names = [layout.summary_name(job.dataset, job.key, r) for r in range(1, world)]
    found: dict[str, Summary] = {}
    pause = 0.02  # ranks go through a batch's drops together: usually a short wait
    while len(found) < len(names):
        for n in names:
            if n not in found and storage.exists(n):
                found[n] = Summary(**json.loads(storage.read_text(n)))
        if len(found) < len(names):
            if time.monotonic() >= deadline:
                missing = [n for n in names if n not in found]
                raise TimeoutError(f"instances did not finish within {timeout_s:.0f}s: {missing}")
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 1.0)
    return [found[n] for n in names]


def score_one(job: DropJob, rank: int, world: int, log: Callable[[str], None]) -> Summary:
    """``run_instance``, with an unexpected error turned into a ``failed`` summary (the other
    drops of the batch are still scored; the traceback goes to stderr)."""
    try:
        return run_instance(job, rank, world, log=log)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        error = f"{type(e).__name__}: {e}"
        log(f"{job.key}: scoring failed: {error}")
        return Summary(
            key=job.key,
            rank=rank,
            world=world,
            status="failed",
            error=error,
            model_version=job.model_version,
        )


# ---- entry point ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Score every drop of the batch in turn; rank 0 reports one Pipes message per drop
    (:func:`combine`, carrying the drop's ``key``) and exits 0 even when some drop was rejected
    or failed: the asset decides what fails the run."""
    del argv
    raw = os.environ.get(PARAMS_ENV)
    if not raw:
        sys.stderr.write(f"{PARAMS_ENV} is not set: nothing to score\n")
        return 2
    batch = DropBatch.from_json(raw)
    jobs = batch.jobs()
    rank, world = rank_and_world()
    storage = open_storage(batch.storage)
    if rank > 0:  # no Pipes: one writer of messages per job (rank 0)
        for job in jobs:
            summary = score_one(job, rank, world, log=lambda m: sys.stderr.write(m + "\n"))
            storage.write_text(
                layout.summary_name(job.dataset, job.key, rank), json.dumps(asdict(summary))
            )
        return 0
    with open_pipes() as pipes:
        wait_s = batch.wait_for_ranks_s
        for i, job in enumerate(jobs, 1):
            lines: list[str] = []
            summary = score_one(job, rank, world, log=lines.append)
            summaries = [summary]
            if world > 1:
                storage.write_text(
                    layout.summary_name(job.dataset, job.key, 0), json.dumps(asdict(summary))
                )
                if summary.status == "scored":
                    try:
                        summaries += wait_for_ranks(storage, job, world, wait_s)
                    except TimeoutError as e:  # later drops only look once: ranks are gone
                        wait_s = 0.0
                        summaries.append(
                            Summary(job.key, rank=-1, world=world, status="failed", error=str(e))
                        )
            total = combine(summaries)
            pipes.log.info(
                f"{i}/{len(jobs)} drops scored; {job.key}: {total['status']}"
                + (f": {' '.join(lines)}" if lines else "")
            )
            pipes.report_custom_message(total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
