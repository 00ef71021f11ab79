"""The ingestion journal: what a merge is about to write, so a rerun after a crash finishes it.

Curated shards and ledger entries are separate writes. Before its first shard write, an
ingestion writes ``journal/<ds>/ingest.json``: the merge id (a digest of the drop versions, so
shards are byte-identical to an uninterrupted run's), every drop version's outcome as
validated, and the files to quarantine. Each shard the merge writes carries that id and the rows
each drop replaced in it, in its Parquet footer (one write with the rows: ``CuratedStore.merge``).

A run that finds a journal finishes that ingestion first: shards that carry its id keep their
recorded counts; the others are merged from the same drops, which are still in landing and
curate to the same rows (their shards did not change); the ledger gets the journal's outcomes.
So the ledger after a crash and a rerun counts what an uninterrupted run counts, instead of
seeing the rows the crashed run had merged as a re-delivery. The journal goes after the last
ledger entry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from mlops_assets.domain.ledger import DropOutcome
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage


@dataclass
class Journal:
    merge_id: str
    outcomes: list[DropOutcome]
    quarantined_files: list[str] = field(default_factory=list)

    def versions(self) -> set[tuple[str, str]]:
        return {(o.drop, o.etag) for o in self.outcomes}


class IngestJournal:
    """The one pending ingestion of a dataset (runs that write a dataset are serialised)."""

    def __init__(self, storage: Storage, spec: DatasetSpec):
        self.storage, self.name = storage, f"journal/{spec.name}/ingest.json"

    def read(self) -> Journal | None:
        if not self.storage.exists(self.name):
            return None
        doc = json.loads(self.storage.read_text(self.name))
        return Journal(
            merge_id=doc["merge_id"],
            outcomes=[DropOutcome(**o) for o in doc["outcomes"]],
            quarantined_files=list(doc.get("quarantined_files", [])),
        )

    def begin(self, outcomes: list[DropOutcome], quarantined_files: list[str]) -> Journal:
        """Record an ingestion about to merge (atomic write); its journal."""
        versions = json.dumps([[o.drop, o.etag] for o in outcomes])
        merge_id = hashlib.sha256(versions.encode()).hexdigest()[:32]
        journal = Journal(merge_id, outcomes, list(quarantined_files))
        doc = {
            "merge_id": journal.merge_id,
            "outcomes": [asdict(o) for o in outcomes],
            "quarantined_files": journal.quarantined_files,
        }
        self.storage.write_text(self.name, json.dumps(doc))
        return journal

    def end(self) -> None:
        self.storage.delete(self.name)
