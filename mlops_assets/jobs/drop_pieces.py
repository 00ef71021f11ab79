"""Large Parquet drops, grouped by series, read, validated, scored and written in pieces.

The drop is read through a seekable file (``Storage.open_read``: ranged reads on Azure) and the
predictions are written as they are made (``Storage.open_write``: a temp file, or staged blocks
on Azure), so an instance holds about one piece of each at a time, never a whole file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from mlops_assets.jobs.common import shard_of_series
from mlops_assets.jobs.drop_results import Summary, count_scored
from mlops_assets.jobs.drop_scoring import (
    CHUNK_ROWS,
    parquet_options,
    row_series_ids,
    score_drop_rows,
)
from mlops_assets.jobs.drop_validation import apply_value_rules, scoring_spec
from mlops_assets.ml.drops import (
    DropRejected,
    check_columns,
    dictionary_keys,
    drop_format,
    type_rows,
)
from mlops_assets.ml.model_cache import ModelSetReader
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import grouped_run_starts, run_starts

STREAM_MIN_ROWS = 2_000_000  # Parquet drops at least this large are scored in pieces
PIECE_ROWS = 1 << 21  # rows read, typed and scored at a time (whole series, see below)


def stream_source(
    name: str, source: bytes | IO[bytes], spec: DatasetSpec, min_rows: int = STREAM_MIN_ROWS
) -> pq.ParquetFile | None:
    """A Parquet drop worth scoring in pieces: large, and grouped by series (each series' rows
    together, as exports by key are). None sends the drop down the whole-file path, which also
    reports every file-level problem. ``source`` is the drop's bytes or a seekable file of
    them; only the footer and the series key columns are read here."""
    if drop_format(name) != "parquet":
        return None
    try:
        # Keys as dictionaries, as the whole-file path reads them (``drops.parse_drop``).
        pf = pq.ParquetFile(
            io.BytesIO(source) if isinstance(source, bytes) else source,
            read_dictionary=dictionary_keys(spec),
        )
        if pf.metadata.num_rows < min_rows:
            return None
        sspec = scoring_spec(spec, has_target=spec.target in pf.schema_arrow.names)
        check_columns(name, pf.schema_arrow.empty_table(), sspec)
        keys = pf.read(columns=spec.series_keys)
    except (DropRejected, pa.ArrowException, OSError):
        return None
    if any(keys[k].null_count for k in spec.series_keys):
        return None
    return pf if grouped_run_starts(keys, spec.series_keys) is not None else None


def _last_series_start(piece: pa.Table, spec: DatasetSpec) -> int:
    """Where the piece's last series begins (its rows may go on in the next batch). The
    piece's dictionaries are unified, so equal keys have equal indices."""
    starts = run_starts(piece.select(spec.series_keys), spec.series_keys)
    return int(starts[-1]) if len(starts) else 0


class OutputFailed(Exception):
    """Writing the predictions failed (a full disk, a storage error): scoring the drop again,
    whole, would not help."""


def _write(writer: pq.ParquetWriter, table: pa.Table | None) -> None:
    """One piece's predictions to the output (None: the footer, closing it)."""
    try:
        if table is None:
            writer.close()
        else:
            writer.write_table(table)
    except (OSError, pa.ArrowException) as e:
        raise OutputFailed(f"writing the predictions failed: {e}") from e


def score_in_pieces(
    pf: pq.ParquetFile,
    spec: DatasetSpec,
    reader: ModelSetReader,
    out: Summary,
    phases: Phases,
    sink: IO[bytes],
    chunk_rows: int = CHUNK_ROWS,
    piece_rows: int = PIECE_ROWS,
) -> pa.Table:
    """Validate and score a large drop grouped by series a piece at a time, writing the
    predictions Parquet to ``sink`` (one row group per piece); return the rejected rows.

    Each piece holds whole series (a batch's last series waits for the next batch), so every
    series is scored with all its rows, as on the whole-file path, with the same rules and
    results. Three pieces at most are in hand at once: the next one read and validated on a
    thread, this one scored, the last one encoded and written on another thread (memory stays
    bounded by the piece; the cores stay busy). This instance keeps its share of the series
    (``out.rank`` of ``out.world``).

    Raises:
        OutputFailed: Writing to ``sink`` failed.
    """
    writer, pending = None, None
    rejected: list[pa.Table] = []
    for name in ("validate", "score", "write"):
        phases.add(name, 0.0)

    def score(piece: pa.Table) -> None:
        nonlocal writer, pending
        with phases("score"):
            scored = score_drop_rows(piece, spec, reader, chunk_rows=chunk_rows)
            count_scored(scored, out)
        with phases("write"):
            if writer is None:
                writer = pq.ParquetWriter(
                    sink, scored.schema, **parquet_options(scored.column_names)
                )
            if pending is not None:
                pending.result()
            pending = pool.submit(_write, writer, scored)

    pieces = _good_pieces(pf, spec, out, phases, rejected, piece_rows)
    with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
        for piece in _one_ahead(pieces, ahead):
            score(piece)
        with phases("write"):
            if pending is not None:
                pending.result()
            if writer is None:
                raise RuntimeError("scoring an empty piece opened no writer")
            _write(writer, None)
    return pa.concat_tables(rejected)


_END = object()


def _one_ahead(items: Iterator[pa.Table], pool: ThreadPoolExecutor) -> Iterator[pa.Table]:
    """``items``, the next one made on ``pool`` while the caller works on this one (an error
    making it is raised where the caller asks for it)."""
    coming = pool.submit(next, items, _END)
    while (item := coming.result()) is not _END:
        coming = pool.submit(next, items, _END)
        yield item


def _good_pieces(
    pf: pq.ParquetFile,
    spec: DatasetSpec,
    out: Summary,
    phases: Phases,
    rejected: list[pa.Table],
    piece_rows: int,
) -> Iterator[pa.Table]:
    """The drop's rows typed and validated (rejected rows appended to ``rejected``), this
    instance's share, in pieces of about ``piece_rows`` rows of whole series; one empty piece
    (the schema) if no row is left. Sets ``out.rows_in`` when done."""
    sspec = scoring_spec(spec, has_target=spec.target in pf.schema_arrow.names)
    carry: pa.Table | None = None
    first = 0
    empty = None
    buffered: list[pa.Table] = []
    yielded_any = False
    for batch in pf.iter_batches(batch_size=piece_rows):
        with phases("validate"):
            raw = pa.Table.from_batches([batch])
            parsed = apply_value_rules(type_rows(raw, sspec, first, keep_dictionaries=True), sspec)
            first += raw.num_rows
            rejected.append(parsed.rejected)
            good = parsed.good
            if out.world > 1:
                mine = shard_of_series(row_series_ids(good, spec), out.world) == out.rank
                good = good.filter(pa.array(mine))
            buffered.append(good)
            empty = good.slice(0, 0)
        if sum(b.num_rows for b in buffered) < piece_rows:
            continue  # Parquet batches end at row groups: gather a piece's worth
        with phases("validate"):
            good = pa.concat_tables(buffered).unify_dictionaries()
            buffered = []
            piece = good if carry is None else pa.concat_tables([carry, good]).unify_dictionaries()
            cut = _last_series_start(piece, spec) if piece.num_rows else 0
            piece, carry = piece.slice(0, cut), piece.slice(cut)
        if piece.num_rows:
            yielded_any = True
            yield piece
    if buffered:
        carry = pa.concat_tables(([carry] if carry is not None else []) + buffered)
    out.rows_in = first
    if carry is not None and carry.num_rows:
        yield carry.unify_dictionaries()
    elif not yielded_any and empty is not None:  # no row to score (all rejected, or others')
        yield empty
