"""What scoring one drop did: each instance's :class:`Summary`, and the totals Dagster gets."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.domain import batch_layout as layout
from mlops_assets.ml.scoring import MODEL_INTEGRITY, UNKNOWN_SERIES

NAMED_INTEGRITY = 3  # bad models named in a drop's error (all are in the rows' messages)


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
    integrity: list[str] = field(default_factory=list)  # the first bad models' messages


def count_scored(scored: pa.Table, out: Summary) -> None:
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
    if errors.get(MODEL_INTEGRITY) and len(out.integrity) < NAMED_INTEGRITY:
        bad = pc.equal(error, MODEL_INTEGRITY).fill_null(False)
        for message in pc.unique(scored["message"].filter(bad)).to_pylist():
            if len(out.integrity) < NAMED_INTEGRITY:
                out.integrity.append(message)


def fail_on_integrity(out: Summary) -> None:
    """A drop with rows refused for a tampered model is ``failed`` (loudly: the run fails),
    though its other series were scored and written: the error names the bad models."""
    rows = out.errors.get(MODEL_INTEGRITY, 0)
    if not rows or out.status != "scored":
        return
    out.status = "failed"
    out.error = (
        f"ModelIntegrityError: {rows} row(s) not scored ({MODEL_INTEGRITY}): "
        + "; ".join(out.integrity)
        + f"; the other series were scored into {out.output_uri}"
    )


_SUMMED = (
    "rows_quarantined",
    "rows_scored",
    "rows_failed",
    "rows_unknown_series",
    "series",
    "unknown_series",
)


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
    for f in _SUMMED:
        total[f] = sum(getattr(s, f) for s in summaries)
    for s in summaries:
        for k, v in s.errors.items():
            total["errors"][k] = total["errors"].get(k, 0) + v
    return total


def write_summary(storage, dataset: str, summary: Summary) -> None:
    """An instance's summary, where rank 0 waits for it (``wait_for_ranks``)."""
    name = layout.summary_name(dataset, summary.key, summary.rank)
    storage.write_text(name, json.dumps(asdict(summary)))


def wait_for_ranks(storage, dataset: str, key: str, world: int, timeout_s: float) -> list[Summary]:
    """The summaries of ranks 1.. for drop version ``key``, as they write them
    (``TimeoutError`` naming the missing ones after ``timeout_s``; 0 looks once)."""
    deadline = time.monotonic() + timeout_s
    names = [layout.summary_name(dataset, key, r) for r in range(1, world)]
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
