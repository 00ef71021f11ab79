"""One ingestion run of a dataset: new drops validated and curated, GX Data Docs published.

The ingestion asset calls ``run_ingestion`` and reports what it returns; nothing here imports
Dagster.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
from pandas.tseries.frequencies import to_offset

from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.curation import IngestResult, ingest, pending_drops
from mlops_assets.domain.ledger import DropOutcome
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import ColumnType, DatasetSpec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.ml.validation import gx
from mlops_assets.ml.validation.gate import DropGate
from mlops_assets.ml.validation.suite import drift_columns
from mlops_assets.storage import Storage


def make_gate(
    storage: Storage, spec: DatasetSpec, as_of: date, docs_dir: str | None = None
) -> DropGate:
    """A gate whose distribution reference is the curated history (time and drift columns)."""
    gx.prefetch()  # the gate runs GX on the first drop: import it while the drop is read
    store = CuratedStore(storage, spec)
    reference = None
    if store.shard_names():
        # Only the last reference_periods periods are compared with: read just those (the
        # newest curated time comes from the shards' footers, not from 40M rows).
        latest = store.summary()["time_max"]
        n = spec.validation.drift.reference_periods
        since = None
        if latest is not None:
            first = pd.Timestamp(latest) - (n - 1) * to_offset(spec.frequency)
            dated = spec.columns[spec.time].type == ColumnType.date
            since = first.date() if dated else first.to_pydatetime()
        reference = decode_dictionaries(  # compared with drops, whose keys are plain strings
            store.read(columns=[*spec.series_keys, spec.time, *drift_columns(spec)], since=since)
        )
    return DropGate(spec, as_of, reference=reference, docs_dir=docs_dir)


def docs_prefix(spec: DatasetSpec) -> str:
    return f"validation/{spec.name}/docs/"


def publish_docs(storage: Storage, spec: DatasetSpec, gate: DropGate | None) -> str | None:
    """Build the run's GX Data Docs and copy them to storage; the index's storage name.

    Pages are written every run; the site's static assets (~4 MB) only when missing.
    """
    index = gate.runner.build_docs() if gate is not None and gate.docs_dir else None
    if index is None:
        return None
    root = Path(index).parent
    prefix = docs_prefix(spec)
    have = {b.name for b in storage.list(prefix + "static/")}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = prefix + path.relative_to(root).as_posix()
        if name.startswith(prefix + "static/") and name in have:
            continue
        storage.write_bytes(name, path.read_bytes())
    return prefix + "index.html"


@dataclass
class IngestionRun:
    """What one run did: the drops' outcomes, the curated summary, where the Data Docs are."""

    result: IngestResult
    summary: dict  # rows, series, time_min, time_max of the curated dataset
    docs: str | None  # storage name of the Data Docs index
    layout: str  # storage name of the curated dataset's layout document
    phases: Phases


def run_ingestion(
    storage: Storage,
    spec: DatasetSpec,
    as_of: date,
    *,
    n_shards: int = 8,
    data_docs: bool = True,
    run_id: str | None = None,
    on_drop: Callable[[DropOutcome], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> IngestionRun:
    """Validate and curate the dataset's new drops (see ``curation.ingest``) as of ``as_of``."""
    drops = pending_drops(storage, spec)
    if log:
        log(f"{len(drops)} new drop version(s) under landing/{spec.name}/")
    phases = Phases()
    with tempfile.TemporaryDirectory(prefix="gx-docs-") as docs_dir:
        with phases("gate"):
            gate = (
                make_gate(storage, spec, as_of, docs_dir if data_docs else None) if drops else None
            )
        with phases("ingest"):
            result = ingest(
                storage,
                spec,
                drops,
                n_shards=n_shards,
                run_id=run_id,
                on_drop=on_drop,
                gate=gate,
                as_of=as_of,
            )
        if log and result.deferred:
            log(f"{len(result.deferred)} drop(s) dated after {as_of} wait for a later as-of date")
        with phases("docs"):
            docs = publish_docs(storage, spec, gate)
    with phases("summary"):
        store = CuratedStore(storage, spec)
        summary = store.summary()
    phases.update(result.seconds)
    return IngestionRun(result, summary, docs, store.prefix + "/_layout.json", phases)
