"""The drop ledger: what became of each version of each landed drop.

One JSON document per drop version, ``ledger/<ds>/<drop>@<etag>.json``: rows in, curated,
quarantined, replaced, the rules that failed and the validation report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage


def safe_name(name: str) -> str:
    """``name`` as one path segment (quoted)."""
    return quote(name, safe="")


@dataclass
class DropOutcome:
    """What became of one version of one drop."""

    drop: str
    etag: str
    size: int
    status: str  # ingested | partially_ingested | quarantined | duplicate
    rows_in: int | None = None  # None: the file could not be read
    rows_curated: int = 0
    rows_quarantined: int = 0
    rows_replaced: int = 0  # curated rows (or an earlier drop's rows) this drop replaced
    rows_duplicate: int = 0  # rows curated already with the same values (a re-delivery)
    rules: dict[str, int] = field(default_factory=dict)  # rule -> rows failing it
    message: str | None = None
    quarantine: str | None = None
    time_min: str | None = None
    time_max: str | None = None
    ingested_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    run_id: str | None = None
    validation: dict | None = None  # the gate's DropReport (failures, profile, failing rows)

    @property
    def version_key(self) -> str:
        return f"{self.drop}@{self.etag}"


class DropLedger:
    def __init__(self, storage: Storage, spec: DatasetSpec):
        self.storage, self.prefix = storage, f"ledger/{spec.name}/"

    def _name(self, drop: str, etag: str) -> str:
        return f"{self.prefix}{safe_name(drop)}@{safe_name(etag)}.json"

    def seen(self) -> set[tuple[str, str]]:
        """(drop, etag) of every recorded drop version: one listing, no reads."""
        out = set()
        for b in self.storage.list(self.prefix):
            stem = b.name[len(self.prefix) : -len(".json")]
            drop, _, etag = stem.rpartition("@")
            out.add((unquote(drop), unquote(etag)))
        return out

    def record(self, outcome: DropOutcome) -> None:
        self.storage.write_text(
            self._name(outcome.drop, outcome.etag), json.dumps(asdict(outcome), indent=1)
        )

    def all(self) -> list[DropOutcome]:
        return [
            DropOutcome(**json.loads(self.storage.read_text(b.name)))
            for b in self.storage.list(self.prefix)
        ]
