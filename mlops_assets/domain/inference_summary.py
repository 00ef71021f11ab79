"""One day of served requests against the training data: volume, errors, input drift.

The endpoint's collector writes sampled requests under ``inference/<dataset>/date=<day>/`` in the
prod storage; the reference is the curated data of the spec's drift window before that day.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandas.tseries.frequencies import to_offset

from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.ml.drift import feature_drift
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.serving.collector import collected_prefix
from mlops_assets.storage import Storage


@dataclass
class InferenceSummary:
    """What one day's collected requests say (``values`` keeps the compared feature columns)."""

    records: int
    requests: int
    errors: dict[str, int]
    drift: list[dict]
    median_prediction: float | None = None
    values: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return round(sum(self.errors.values()) / self.records, 4) if self.records else 0.0

    @property
    def features_drifting(self) -> list[str]:
        return [d["feature"] for d in self.drift if d["verdict"] == "large"]


def read_day(storage: Storage, spec: DatasetSpec, day: str) -> pa.Table | None:
    names = [b.name for b in storage.list(f"{collected_prefix(spec.name)}/date={day}/")]
    tables = [pq.read_table(pa.BufferReader(storage.read_bytes(n))) for n in names]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def _floats(table: pa.Table, column: str) -> np.ndarray:
    if column not in table.column_names:
        return np.array([])
    return pc.cast(table[column], pa.float64()).to_numpy(zero_copy_only=False)


def _reference(storage: Storage, spec: DatasetSpec, day: str) -> pa.Table:
    """Curated rows of the drift reference window ending at the latest period before ``day``."""
    numeric = [spec.target, *spec.features.exogenous]
    reference = CuratedStore(storage, spec).read(
        columns=[spec.time, *numeric], until=pd.Timestamp(day).date()
    )
    if not reference.num_rows:
        return reference
    last = pc.max(reference[spec.time]).as_py()
    start = pd.Timestamp(last) - spec.validation.drift.reference_periods * to_offset(spec.frequency)
    return reference.filter(
        pc.greater(reference[spec.time], pa.scalar(start.date(), reference[spec.time].type))
    )


def summarize_day(
    storage: Storage, prod_storage: Storage, spec: DatasetSpec, day: str
) -> InferenceSummary | None:
    """The summary of ``day``'s collected requests, or None if nothing was collected."""
    collected = read_day(prod_storage, spec, day)
    if collected is None:
        return None
    reference = _reference(storage, spec, day)
    inputs = [c for c in spec.features.exogenous if c in collected.column_names]
    values = {c: (_floats(reference, c), _floats(collected, c)) for c in inputs}
    errors = pc.value_counts(collected["error"].drop_null()).to_pylist()
    has_ids = "request_id" in collected.column_names
    return InferenceSummary(
        records=collected.num_rows,
        requests=pc.count_distinct(collected["request_id"]).as_py() if has_ids else 0,
        errors={d["values"]: int(d["counts"]) for d in errors},
        drift=feature_drift(
            {c: v[0] for c, v in values.items()}, {c: v[1] for c, v in values.items()}
        ),
        median_prediction=float(np.nanmedian(_floats(collected, "prediction")))
        if "prediction" in collected.column_names
        else None,
        values=values,
    )
