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
ML sets for distributed jobs (``RANK``/``WORLD_SIZE``, ``OMPI_COMM_WORLD_RANK``/``..._SIZE``).
Rank 0 talks Pipes: per drop it waits for the other instances'
summaries and reports the totals (rows scored, series, unknown series, quarantined rows,
duration) as one custom message carrying the drop's ``key``. Other ranks only write their parts
and summaries.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import pyarrow as pa

from mlops_assets.domain import batch_layout as layout
from mlops_assets.faults import fault_point
from mlops_assets.heap import retain_freed_memory
from mlops_assets.jobs.batch_params import (
    DropBatch,
    DropJob,
    job_model_set,
    job_spec,
    model_set_label,
    params_json,
)
from mlops_assets.jobs.common import PARAMS_ENV, open_pipes, rank_and_world, shard_of_series
from mlops_assets.jobs.drop_pieces import (
    PIECE_ROWS,
    STREAM_MIN_ROWS,
    NotGrouped,
    OutputFailed,
    score_in_pieces,
    stream_source,
)
from mlops_assets.jobs.drop_results import (
    Summary,
    combine,
    count_scored,
    fail_on_integrity,
    wait_for_ranks,
    write_summary,
)
from mlops_assets.jobs.drop_scoring import (
    CHUNK_ROWS,
    model_set_reader,
    quarantine_file,
    quarantine_rows,
    row_series_ids,
    score_drop_rows,
    write_parquet,
)
from mlops_assets.jobs.drop_validation import validate
from mlops_assets.ml.drops import DropRejected, drop_format
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage, open_storage

__all__ = [
    "DropBatch",
    "DropJob",
    "Summary",
    "main",
    "params_json",
    "run_instance",
    "score_one",
    "stream_source",
]


@dataclass
class _Drop:
    """One instance's view of one drop: what it scores, where, and how."""

    job: DropJob
    spec: DatasetSpec
    storage: Storage
    model_storage: Storage
    out: Summary
    phases: Phases
    log: Callable[[str], None]
    chunk_rows: int
    piece_rows: int


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

    A model whose bytes do not match its sha256 fails only its series (rows with error
    ``model_integrity``); the drop's status is then ``failed``, naming the series and artifact.

    Raises:
        ModelSetError, ModelIntegrityError: The model set is missing, or its manifest is not
            what the reference says (no predictions are written).
    """
    out = Summary(key=job.key, rank=rank, world=world, model_version=model_set_label(job.model_set))
    drop = _Drop(
        job=job,
        spec=job_spec(job),
        storage=open_storage(job.storage),
        model_storage=open_storage(job.model_storage),
        out=out,
        phases=Phases(),
        log=log,
        chunk_rows=chunk_rows,
        piece_rows=piece_rows,
    )
    with drop.phases("total"):
        how = _score(drop, stream_min_rows)
    out = drop.out  # a fresh one if scoring in pieces stopped and the drop was scored whole
    out.seconds = drop.phases.metadata(prefix="")
    fail_on_integrity(out)
    if how is not None:
        log(
            f"rank {out.rank}/{out.world}: {out.rows_scored:,} rows scored over {out.series:,} "
            f"series ({out.unknown_series} unknown), {out.rows_quarantined} quarantined, {how}, "
            f"in {out.seconds['total']:.2f}s -> {out.output_uri}"
        )
    return out


def _score(d: _Drop, stream_min_rows: int) -> str | None:
    """Score the drop into ``d.out``: how it was scored, or None if it was not."""
    job, out = d.job, d.out
    info = d.storage.info(job.drop)
    if info is None or info.etag != job.etag:
        out.status = "superseded"
        out.error = (
            f"{job.drop} is no longer version {job.etag} (now "
            f"{'deleted' if info is None else info.etag}); that version is not scored, a newer "
            "one is scored by its own run"
        )
        d.log(out.error)
        return None
    if drop_format(job.drop) == "parquet":
        with d.storage.open_read(job.drop) as f:
            with d.phases("read"):
                pf = stream_source(job.drop, f, d.spec, stream_min_rows)
            if pf is not None:
                try:
                    return _score_in_pieces(d, pf)
                # A corrupt page past the first pieces, or a series' rows in two places.
                except (pa.ArrowException, OSError, NotGrouped) as e:
                    d.log(f"scoring in pieces stopped ({e}); scoring the drop whole")
                    d.out = Summary(
                        key=out.key, rank=out.rank, world=out.world, model_version=out.model_version
                    )
    return _score_whole(d)


def _score_whole(d: _Drop) -> str | None:
    job, out, spec, rank, world = d.job, d.out, d.spec, d.out.rank, d.out.world
    with d.phases("read"):
        data = d.storage.read_bytes(job.drop)
    with d.phases("validate"):
        try:
            parsed = validate(job.drop, data, spec)
        except DropRejected as rejected:
            out.status, out.error = "rejected", rejected.message
            if rank == 0:
                out.quarantine = quarantine_file(d.storage, job, data, rejected)
            d.log(f"malformed drop quarantined, nothing scored: {rejected.message}")
            return None
        out.rows_in = parsed.rows_in
        good, rej = parsed.good, parsed.rejected
        if world > 1:
            good = good.filter(pa.array(_mine(good, spec, rank, world)))
            if rej.num_rows:
                rej = rej.filter(pa.array(_mine(rej, spec, rank, world)))
    with d.phases("models_index"):  # before anything is written: a refused set writes nothing
        reader = model_set_reader(job_model_set(job), d.model_storage)
    with d.phases("validate"):
        _quarantine(d, rej)
    with d.phases("score"):
        scored = score_drop_rows(good, spec, reader, chunk_rows=d.chunk_rows)
        count_scored(scored, out)
    with d.phases("write"):
        fault_point("batch.output")
        name = layout.predictions_name(job.dataset, job.key, rank, world)
        write_parquet(d.storage, name, scored)
        out.output, out.output_uri = name, d.storage.uri(name)
    return f"models loaded {reader.stats.misses}"


def _score_in_pieces(d: _Drop, pf) -> str:
    """``_score_whole`` for a large drop grouped by series (``score_in_pieces``). Raises
    Arrow's error (or OSError) for an unreadable piece."""
    job, out = d.job, d.out
    with d.phases("models_index"):
        reader = model_set_reader(job_model_set(job), d.model_storage)
    name = layout.predictions_name(job.dataset, job.key, out.rank, out.world)
    # The predictions are committed last, after the quarantine, as on the whole-file path; an
    # error before then leaves the previous output, if any, unchanged.
    with ExitStack() as output:
        sink = output.enter_context(d.storage.open_write(name))
        rejected = score_in_pieces(
            pf, d.spec, reader, out, d.phases, sink, d.chunk_rows, d.piece_rows
        )
        if out.world > 1 and rejected.num_rows:
            rejected = rejected.filter(pa.array(_mine(rejected, d.spec, out.rank, out.world)))
        _quarantine(d, rejected)
        with d.phases("write"):
            fault_point("batch.output")
            try:
                output.close()  # the commit
            except OSError as e:
                raise OutputFailed(f"writing the predictions failed: {e}") from e
    out.output, out.output_uri = name, d.storage.uri(name)
    return f"in pieces of {d.piece_rows:,} rows"


def _mine(table: pa.Table, spec: DatasetSpec, rank: int, world: int):
    """Which rows belong to this instance's series."""
    return shard_of_series(row_series_ids(table, spec), world) == rank


def _quarantine(d: _Drop, rejected: pa.Table) -> None:
    d.out.rows_quarantined = rejected.num_rows
    if rejected.num_rows:
        d.out.quarantine = quarantine_rows(d.storage, d.job, rejected, d.out.rank, d.out.world)


def score_one(job: DropJob, rank: int, world: int, log: Callable[[str], None]) -> Summary:
    """``run_instance``, with an unexpected error (a model set refused, a storage error)
    turned into a ``failed`` summary that says why (the other drops of the batch are still
    scored; the traceback goes to stderr)."""
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
            model_version=model_set_label(job.model_set),
        )


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


def main(argv: list[str] | None = None) -> int:
    """Score every drop of the batch in turn; rank 0 reports one Pipes message per drop
    (:func:`combine`, carrying the drop's ``key``) and exits 0 even when some drop was rejected
    or failed: the asset decides what fails the run."""
    del argv
    raw = os.environ.get(PARAMS_ENV)
    if not raw:
        _stderr(f"{PARAMS_ENV} is not set: nothing to score")
        return 2
    batch = DropBatch.from_json(raw)
    retain_freed_memory()  # the job reuses its large arrays' memory (see heap)
    jobs = batch.jobs()
    rank, world = rank_and_world()
    storage = open_storage(batch.storage)
    if rank > 0:  # no Pipes: one writer of messages per job (rank 0)
        for job in jobs:
            write_summary(storage, job.dataset, score_one(job, rank, world, log=_stderr))
        return 0
    with open_pipes() as pipes:
        wait_s = batch.wait_for_ranks_s
        for i, job in enumerate(jobs, 1):
            lines: list[str] = []
            summary = score_one(job, rank, world, log=lines.append)
            summaries = [summary]
            if world > 1:
                write_summary(storage, job.dataset, summary)
                if summary.status == "scored":
                    try:
                        summaries += wait_for_ranks(storage, job.dataset, job.key, world, wait_s)
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
