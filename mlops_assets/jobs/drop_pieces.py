"""Large Parquet drops, grouped by series, read, validated, scored and written in pieces.

The drop is read through a seekable file (``Storage.open_read``: ranged reads on Azure) and the
predictions are written as they are made (``Storage.open_write``: a temp file, or staged blocks
on Azure), so an instance holds about one piece of each at a time, never a whole file.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO

import numpy as np
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
from mlops_assets.ml.tables import run_starts, take_rows

STREAM_MIN_ROWS = 2_000_000  # Parquet drops at least this large are scored in pieces
PIECE_ROWS = 1 << 21  # rows read, typed and scored at a time (whole series, see below)
# The Parquet writer hands its output over a page at a time (~24 KB); buffered natively, the
# sink (a Python file: the GIL, a system call each) gets it this many bytes at a time.
SINK_BUFFER_BYTES = 8 << 20
# A piece is scored as two halves at once: ``scoring.score_table`` is mostly numpy, which lets
# go of the GIL, so the halves use both cores of a small machine through its serial steps.
SCORING_THREADS = min(2, os.cpu_count() or 1)
WRITES_QUEUED = 2  # scored pieces waiting for the writer before scoring waits for it


def stream_source(
    name: str, source: bytes | IO[bytes], spec: DatasetSpec, min_rows: int = STREAM_MIN_ROWS
) -> pq.ParquetFile | None:
    """A Parquet drop worth scoring in pieces: large, with the spec's columns. None sends the
    drop down the whole-file path, which also reports every file-level problem. ``source`` is
    the drop's bytes or a seekable file of them; only the footer is read here. Whether each
    series' rows come together (as in exports by key) is checked as the pieces are read
    (``NotGrouped``): no pass over the whole drop before the first piece."""
    if drop_format(name) != "parquet":
        return None
    try:
        # Keys as dictionaries, as the whole-file path reads them (``drops.parse_drop``).
        pf = pq.ParquetFile(
            pa.BufferReader(source) if isinstance(source, bytes) else source,
            read_dictionary=dictionary_keys(spec),
        )
        if pf.metadata.num_rows < min_rows:
            return None
        sspec = scoring_spec(spec, has_target=spec.target in pf.schema_arrow.names)
        check_columns(name, pf.schema_arrow.empty_table(), sspec)
    except (DropRejected, pa.ArrowException, OSError):
        return None
    return pf


class NotGrouped(Exception):
    """A series' rows do not all come together in the drop (found while reading it in pieces):
    its pieces would each score part of the series without the rest as history. The drop is
    scored whole instead."""


class _SeriesSeen:
    """The series of the pieces handed out so far (a hash of each one's keys, so a drop of a
    million series costs tens of MB, not its key strings): a series found in two runs of rows,
    in one piece or two, raises ``NotGrouped``. A collision of two hashes only sends a grouped
    drop down the slower whole-file path."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        self._seen: set[int] = set()

    def starts(self, piece: pa.Table) -> np.ndarray:
        """Where each run of rows of one series starts in ``piece`` (its dictionaries
        unified, so equal keys have equal indices)."""
        return run_starts(piece.select(self.keys), self.keys)

    def add(self, piece: pa.Table, starts: np.ndarray) -> None:
        """The series of ``piece`` whose runs start at ``starts``.

        Raises:
            NotGrouped: One of them was seen before (or twice here).
        """
        firsts = take_rows(piece.select(self.keys), starts)
        keys = list(zip(*(firsts[k].to_pylist() for k in self.keys), strict=True))
        hashed = {hash(k) for k in keys}
        if len(hashed) < len(keys) or not self._seen.isdisjoint(hashed):
            raise NotGrouped(
                f"the rows of series {dict(zip(self.keys, self._repeated(keys), strict=True))} "
                "come in two separate runs: the drop is not grouped by series (sort it by "
                f"{', '.join(self.keys)} to have it scored in pieces)"
            )
        self._seen |= hashed

    def _repeated(self, keys: list[tuple]) -> tuple:
        """The first of ``keys`` seen before, or twice in ``keys``."""
        here: set[int] = set()
        for k in keys:
            if hash(k) in self._seen or hash(k) in here:
                return k
            here.add(hash(k))
        raise AssertionError("no series repeats")


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


def _write_parts(writer: pq.ParquetWriter, tables: list[pa.Table]) -> None:
    for table in tables:
        _write(writer, table)


def _halves(piece: pa.Table, starts: np.ndarray, min_rows: int) -> list[pa.Table]:
    """``piece`` (its series starting at rows ``starts``, row 0 first) cut in two at the
    series start nearest its middle, to be scored at once; whole if under ``min_rows`` rows
    (the last piece of a drop, say) or one series."""
    if SCORING_THREADS < 2 or piece.num_rows < max(min_rows, 2) or len(starts) < 2:
        return [piece]
    middle = piece.num_rows / 2
    i = min(max(int(np.searchsorted(starts, middle)), 1), len(starts) - 1)
    if i > 1 and middle - starts[i - 1] < starts[i] - middle:
        i -= 1
    cut = int(starts[i])
    return [piece.slice(0, cut), piece.slice(cut)]


def _write_through(stream: pa.BufferedOutputStream) -> None:
    """What ``stream`` still buffers, to its sink (which stays open: the caller commits it)."""
    try:
        stream.detach()
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
    predictions Parquet to ``sink`` (a row group per half piece); return the rejected rows.

    Each piece holds whole series (a batch's last series waits for the next batch), so every
    series is scored with all its rows, as on the whole-file path, with the same rules and
    results. Four pieces at most are in hand at once: the next one read and validated on a
    thread, this one scored (as two halves of whole series at once, each its own row group),
    and the last ``WRITES_QUEUED`` scored ones encoded and written, in order, on another thread
    (memory stays bounded by the piece; the cores stay busy: the writer, encoding 14 columns,
    is the slowest of the three, and scoring goes on while it catches up). This instance keeps
    its share of the series (``out.rank`` of ``out.world``).

    Raises:
        OutputFailed: Writing to ``sink`` failed.
        NotGrouped: A series' rows came in two separate runs (the caller scores the drop
            whole; what was written to ``sink`` is to be discarded).
    """
    writer = None
    pending: deque = deque()  # writes queued, oldest first
    # Native buffering: a 40M-row drop's 1.4 GB of predictions reach ``sink`` in ~170 writes,
    # not ~57,000 page-sized ones each taking the GIL from the scoring threads.
    stream = pa.BufferedOutputStream(pa.PythonFile(sink, mode="w"), SINK_BUFFER_BYTES)
    rejected: list[pa.Table] = []
    for name in ("validate", "score", "write"):
        phases.add(name, 0.0)

    def score_part(part: pa.Table) -> pa.Table:
        return score_drop_rows(part, spec, reader, chunk_rows=chunk_rows)

    def score(piece: pa.Table, starts: np.ndarray) -> None:
        nonlocal writer
        with phases("score"):
            scored = list(scorers.map(score_part, _halves(piece, starts, piece_rows // 2)))
            for part in scored:
                count_scored(part, out)
        with phases("write"):
            if writer is None:
                writer = pq.ParquetWriter(
                    stream, scored[0].schema, **parquet_options(scored[0].column_names)
                )
            while len(pending) >= WRITES_QUEUED:
                pending.popleft().result()
            pending.append(pool.submit(_write_parts, writer, scored))

    pieces = _good_pieces(pf, spec, out, phases, rejected, piece_rows)
    try:
        with (
            ThreadPoolExecutor(1) as pool,
            ThreadPoolExecutor(1) as ahead,
            ThreadPoolExecutor(SCORING_THREADS) as scorers,
        ):
            for piece, starts in _one_ahead(pieces, ahead):
                score(piece, starts)
            with phases("write"):
                while pending:
                    pending.popleft().result()
                if writer is None:
                    raise RuntimeError("scoring an empty piece opened no writer")
                _write(writer, None)
                writer = None
                _write_through(stream)
    finally:
        # Stopped part way: the writer lets go of the sink now, which the caller discards
        # (else the writer would write its footer there when collected, after it is closed).
        if writer is not None:
            try:
                writer.close()
            except Exception:  # the error that stopped it is the one raised
                pass
        if not stream.closed:  # stopped part way (else detached above)
            try:
                stream.detach()  # not closed: that would close ``sink``, the caller's
            except Exception:
                pass
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
    (the schema) if no row is left. Sets ``out.rows_in`` when done.

    Raises:
        NotGrouped: A series' rows came in two separate runs.
    """
    sspec = scoring_spec(spec, has_target=spec.target in pf.schema_arrow.names)
    seen = _SeriesSeen(spec.series_keys)
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
            starts = seen.starts(piece)
            # The last series may go on in the next batch: it waits for the next piece.
            cut = int(starts[-1]) if len(starts) else 0
            piece, carry = piece.slice(0, cut), piece.slice(cut)
            seen.add(piece, starts[:-1])
        if piece.num_rows:
            yielded_any = True
            yield piece, starts[:-1]
    if buffered:
        carry = pa.concat_tables(([carry] if carry is not None else []) + buffered)
    out.rows_in = first
    if carry is not None and carry.num_rows:
        carry = carry.unify_dictionaries()
        starts = seen.starts(carry)
        seen.add(carry, starts)
        yield carry, starts
    elif not yielded_any and empty is not None:  # no row to score (all rejected, or others')
        yield empty, np.zeros(0, np.int64)
