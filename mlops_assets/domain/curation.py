"""Curation: new drops in landing become curated rows, or go to quarantine with the reason.

Storage layout under a dataset ``<ds>`` (names relative to the storage root)::

    landing/<ds>/...                  drops as they arrive (CSV or Parquet)
    ledger/<ds>/<drop>@<etag>.json    each drop version's fate (``ledger``)
    curated/<ds>/...                  the curated shards (``curated_store``)
    quarantine/<ds>/files/<drop>      whole files that could not be curated, + <drop>.reason.json
    quarantine/<ds>/rows/<drop>@<etag>.parquet   quarantined rows with rule, column, value, row

A drop whose rows all lie after the run's as-of date (and not after today) waits in landing for
a later as-of date: a backfill can land a dataset's whole history first, then run its as-of
dates in any order, and each run curates only what had arrived by its date.

A drop is merged into a shard by binary search of its rows in the shard's sorted rows (only
the drop's rows are sorted; see ``merge``). Ingesting is idempotent: a crash anywhere leaves
either the old or the new shard, and the ledger entry is written only after the shards, so a
rerun ingests the drop again and, because a later drop replaces equal (key, time) rows, ends in
the same state.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.domain.curated_store import CuratedStore, MergeStats
from mlops_assets.domain.ingest_journal import IngestJournal, Journal
from mlops_assets.domain.ledger import DropLedger, DropOutcome, safe_name
from mlops_assets.faults import fault_point
from mlops_assets.ml.drops import DropRejected, ParsedDrop, parse_drop
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.failures import DropFailure
from mlops_assets.ml.validation.gate import DropGate
from mlops_assets.ml.validation.rows import RowCheck, explain_rows, validate_rows
from mlops_assets.storage import BlobInfo, Storage

# Callers read the curated dataset and the ledger through this module too.


def landing_prefix(spec: DatasetSpec) -> str:
    return f"landing/{spec.name}/"


def pending_drops(storage: Storage, spec: DatasetSpec) -> list[BlobInfo]:
    """Drop versions in landing without a ledger entry, oldest first (later wins on merge)."""
    seen = DropLedger(storage, spec).seen()
    drops = [b for b in storage.list(landing_prefix(spec)) if (b.name, b.etag) not in seen]
    return sorted(drops, key=lambda b: (b.last_modified, b.name))


@dataclass
class IngestResult:
    outcomes: list[DropOutcome]
    merge: MergeStats
    seconds: dict[str, float] = field(default_factory=dict)  # read_validate, merge
    deferred: list[str] = field(default_factory=list)  # drops left for a later as-of date

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def rows_in(self) -> int:
        return sum(o.rows_in or 0 for o in self.outcomes)

    @property
    def rows_curated(self) -> int:
        return sum(o.rows_curated for o in self.outcomes)

    @property
    def rows_quarantined(self) -> int:
        return sum(o.rows_quarantined or 0 for o in self.outcomes)

    @property
    def rows_duplicate(self) -> int:
        return sum(o.rows_duplicate for o in self.outcomes)


class DropDeferred(Exception):
    """A drop dated after the run's as-of date: it stays in landing, unrecorded."""


def _day(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _waits(parsed: ParsedDrop, spec: DatasetSpec, as_of: date | datetime | str | None) -> bool:
    """Whether every typed row is after ``as_of`` and none after today (UTC).

    Rows after today are not deferred: they are dated in the future and fail time.not_future.
    """
    if as_of is None or parsed.good.num_rows == 0:
        return False
    span = pc.min_max(parsed.good[spec.time]).as_py()
    return _day(as_of) < _day(span["min"]) and _day(span["max"]) <= datetime.now(UTC).date()


def _basename(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _quarantine_file(storage: Storage, spec: DatasetSpec, info: BlobInfo, err: DropRejected):
    dest = f"quarantine/{spec.name}/files/{_basename(info.name)}"
    # Reason first, then the copy, then (after the ledger entry) the delete: a crash anywhere
    # leaves the file in landing or in quarantine, never in neither.
    storage.write_text(dest + ".reason.json", json.dumps({**err.as_dict(), "etag": info.etag}))
    storage.write_bytes(dest, storage.read_bytes(info.name))
    return dest


def _quarantine_rows(storage: Storage, spec: DatasetSpec, info: BlobInfo, rows: pa.Table) -> str:
    base = safe_name(_basename(info.name))
    dest = f"quarantine/{spec.name}/rows/{base}@{safe_name(info.etag)}.parquet"
    buf = io.BytesIO()
    pq.write_table(rows, buf)
    storage.write_bytes(dest, buf.getvalue())
    return dest


def _status(check: RowCheck, duplicates: int) -> str:
    if not check.rows_quarantined:
        return "duplicate" if duplicates and not check.kept.num_rows else "ingested"
    return "partially_ingested" if check.kept.num_rows or duplicates else "quarantined"


def _without_duplicates(storage: Storage, spec: DatasetSpec, check: RowCheck) -> RowCheck:
    """``check`` without the kept rows that are curated already with the same values: a
    re-delivery changes nothing, and is not compared with the history's distribution."""
    same = CuratedStore(storage, spec).same_as_curated(check.kept)
    if not same.any():
        return check
    return RowCheck(check.rows_in, check.kept.filter(pa.array(~same)), check.quarantined)


def _curate_one(
    storage: Storage,
    spec: DatasetSpec,
    info: BlobInfo,
    outcome: DropOutcome,
    gate: DropGate | None,
    as_of: date | datetime | str | None,
) -> RowCheck:
    """Validate one drop and fill in ``outcome``; its checked rows.

    Raises:
        DropRejected: the file is quarantined whole (``outcome`` says why).
        DropDeferred: every row is dated after ``as_of`` (see ``_waits``).
    """
    check: RowCheck | None = None
    try:
        parsed = parse_drop(info.name, storage.read_bytes(info.name), spec, keep_dictionaries=True)
        if _waits(parsed, spec, as_of):
            raise DropDeferred(info.name)
        check = explain_rows(validate_rows(parsed, spec, for_scoring=False, as_of=as_of), info.name)
        check = _without_duplicates(storage, spec, check)
        if gate is not None:
            outcome.validation = gate.check_drop(info.name, check).as_dict()
    except DropRejected as err:
        outcome.status, outcome.message, outcome.rules = "quarantined", err.message, {err.rule: 1}
        if check is not None:  # a drop-level rule failed: every row of the file is out
            outcome.rows_in = outcome.rows_quarantined = check.rows_in
            outcome.validation = gate.reports[info.name].as_dict() if gate is not None else None
        else:
            outcome.rows_in, outcome.rows_quarantined = err.rows, err.rows or 0  # None: unread
            failure = DropFailure(
                err.rule, err.message, "schema", column=err.column, level="file", file=err.name
            )
            outcome.validation = {"failures": [failure.to_dict()]}
        outcome.quarantine = _quarantine_file(storage, spec, info, err)
        raise
    return _record_rows(storage, spec, info, outcome, check)


def _record_rows(
    storage: Storage, spec: DatasetSpec, info: BlobInfo, outcome: DropOutcome, check: RowCheck
) -> RowCheck:
    """Fill in ``outcome`` from a drop's checked rows; quarantine the rows that failed."""
    outcome.rows_in, outcome.rows_curated = check.rows_in, check.kept.num_rows
    outcome.rows_quarantined, outcome.rules = check.rows_quarantined, check.rule_counts()
    outcome.rows_duplicate = check.rows_in - check.kept.num_rows - check.rows_quarantined
    outcome.status = _status(check, outcome.rows_duplicate)
    notes = []
    if check.rows_quarantined:
        outcome.quarantine = _quarantine_rows(storage, spec, info, check.quarantined)
        first = check.quarantined["_message"][0].as_py()
        counts = ", ".join(f"{r}: {c}" for r, c in outcome.rules.items())
        notes.append(
            f"{check.rows_quarantined} of {check.rows_in} rows quarantined ({counts}); "
            f"first: {first}"
        )
    if outcome.rows_duplicate:
        some = "all" if outcome.status == "duplicate" else f"{outcome.rows_duplicate} of"
        notes.append(
            f"{some} {check.rows_in} rows are curated already with the same values (a "
            f"re-delivery): {outcome.rows_duplicate} duplicate rows skipped, nothing to do"
        )
    if notes:
        outcome.message = f"{info.name}: " + "; ".join(notes)
    if check.kept.num_rows:
        mm = pc.min_max(check.kept[spec.time]).as_py()
        outcome.time_min, outcome.time_max = str(mm["min"]), str(mm["max"])
    return check


def ingest(
    storage: Storage,
    spec: DatasetSpec,
    drops: Iterable[BlobInfo],
    *,
    n_shards: int = 8,
    run_id: str | None = None,
    on_drop: Callable[[DropOutcome], None] | None = None,
    gate: DropGate | None = None,
    as_of: date | datetime | str | None = None,
) -> IngestResult:
    """Curate ``drops`` in order: parse, validate rows, quarantine failures, upsert the rest.

    Every drop's rows go through ``validate_rows`` (the spec's row-level suite; with ``as_of``,
    or the gate's, later timestamps fail). With a ``gate`` (``ml.validation.gate``), its
    drop-level expectations run on each drop's kept rows: a drop failing an ERROR one (row
    count, distribution beyond the hard band) is quarantined whole, so it never reaches the
    curated data. Each outcome then carries the gate's report in ``validation``. A drop dated
    wholly after ``as_of`` (a backfill's later drops) is left in landing, in ``deferred``.
    """
    phases = Phases()
    as_of = gate.as_of if gate is not None and as_of is None else as_of
    store = CuratedStore(storage, spec, n_shards)
    journal = IngestJournal(storage, spec)
    drops = list(drops)
    finished: IngestResult | None = None
    earlier = journal.read()
    if earlier is not None:  # a crash interrupted that ingestion: finish it first
        versions = earlier.versions()
        with phases("resume"):
            finished = _finish(store, journal, earlier, drops, run_id, on_drop, as_of)
        drops = [d for d in drops if (d.name, d.etag) not in versions]
    outcomes: list[DropOutcome] = []
    good: list[pa.Table] = []
    sources: list[tuple[int, int]] = []  # (index in ``outcomes``, rows) of each good table
    quarantined_files: list[str] = []
    deferred: list[str] = []
    with phases("read_validate"):
        for info in drops:
            outcome = DropOutcome(
                drop=info.name, etag=info.etag, size=info.size, status="", run_id=run_id
            )
            try:
                check = _curate_one(storage, spec, info, outcome, gate, as_of)
            except DropDeferred:
                deferred.append(info.name)
                continue
            except DropRejected:
                outcomes.append(outcome)
                quarantined_files.append(info.name)
                continue
            outcomes.append(outcome)
            if check.kept.num_rows:
                good.append(store.conform(check.kept))  # CSV and Parquet drops alike
                sources.append((len(outcomes) - 1, check.kept.num_rows))
                if gate is not None:
                    gate.accept(check.kept)
    merge = MergeStats()
    with phases("merge"):
        entry = journal.begin(outcomes, quarantined_files) if outcomes else None
        if entry is not None and good:
            new = pa.concat_tables(good)
            merge = store.merge(new, _row_sources(sources), merge_id=entry.merge_id)
    if entry is not None:
        _record(storage, spec, journal, entry, merge, on_drop)
    if finished is not None:
        outcomes = finished.outcomes + outcomes
        merge = _sum_stats(finished.merge, merge, len(finished.outcomes))
    return IngestResult(outcomes=outcomes, merge=merge, seconds=phases.seconds, deferred=deferred)


def _row_sources(sources: list[tuple[int, int]]) -> int | np.ndarray:
    """Each merged row's source (its drop's index in the outcomes), from the (source, rows)
    of the tables concatenated in order: one number where one drop brings every row (a
    40M-row drop needs no array of 40M copies of it), else one small integer per row."""
    if len({j for j, _ in sources}) <= 1:
        return sources[0][0] if sources else 0
    return np.repeat(np.array([j for j, _ in sources], np.int32), [rows for _, rows in sources])


def _record(
    storage: Storage,
    spec: DatasetSpec,
    journal: IngestJournal,
    entry: Journal,
    merge: MergeStats,
    on_drop: Callable[[DropOutcome], None] | None,
    *,
    resume: bool = False,
    run_id: str | None = None,
) -> None:
    """The merged ingestion's ledger entries (after a crash, ``resume``: those not recorded
    yet, by the run that finished them), then the quarantined files' deletes from landing, then
    the end of its journal."""
    ledger = DropLedger(storage, spec)
    recorded = ledger.seen() if resume else set()
    for j, o in enumerate(entry.outcomes):
        if (o.drop, o.etag) in recorded:
            continue
        o.rows_replaced = merge.replaced_by_source.get(j, 0)
        if resume:
            o.run_id = run_id
        ledger.record(o)
        fault_point("ledger")
        if on_drop:
            on_drop(o)
    for name in entry.quarantined_files:
        storage.delete(name)
    journal.end()


def _finish(
    store: CuratedStore,
    journal: IngestJournal,
    earlier: Journal,
    drops: list[BlobInfo],
    run_id: str | None,
    on_drop: Callable[[DropOutcome], None] | None,
    as_of: date | datetime | str | None,
) -> IngestResult:
    """Finish the ingestion a crash interrupted (``ingest_journal``): the journal's outcomes,
    its shards kept or merged again from the same drops, the ledger completed."""
    storage, spec = store.storage, store.spec
    index = {(o.drop, o.etag): j for j, o in enumerate(earlier.outcomes)}
    recorded = DropLedger(storage, spec).seen()
    good: list[pa.Table] = []
    sources: list[tuple[int, int]] = []
    # Ledger entries are written after the last shard: with one of them there, the merge ended.
    if not recorded & set(index):
        for info in drops:
            j = index.get((info.name, info.etag))
            if j is None or not earlier.outcomes[j].rows_curated:
                continue
            scratch = DropOutcome(drop=info.name, etag=info.etag, size=info.size, status="")
            # Row rules only: the journal holds the gate's verdict, taken on the state before
            # the crash; these rows' shards are unchanged since, so they curate the same.
            check = _curate_one(storage, spec, info, scratch, None, as_of)
            if check.kept.num_rows:
                good.append(store.conform(check.kept))
                sources.append((j, check.kept.num_rows))
    new = pa.concat_tables(good) if good else store.conform(spec.arrow_schema.empty_table())
    merge = store.merge(new, _row_sources(sources), merge_id=earlier.merge_id, resume=True)
    _record(storage, spec, journal, earlier, merge, on_drop, resume=True, run_id=run_id)
    return IngestResult(outcomes=earlier.outcomes, merge=merge)


def _sum_stats(first: MergeStats, second: MergeStats, offset: int) -> MergeStats:
    """Two merges' stats as one, the second's sources numbered after the first's ``offset``."""
    by_source = dict(first.replaced_by_source)
    by_source.update({j + offset: c for j, c in second.replaced_by_source.items()})
    return MergeStats(
        rows_added=first.rows_added + second.rows_added,
        rows_replaced=first.rows_replaced + second.rows_replaced,
        shards_written=first.shards_written + second.shards_written,
        deltas_written=first.deltas_written + second.deltas_written,
        replaced_by_source=by_source,
    )
