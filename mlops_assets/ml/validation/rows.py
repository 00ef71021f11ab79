"""The one row-validation entry point, used by ingestion and batch scoring alike.

``validate_rows`` takes a drop's typed rows (or ``parse_drop``'s result, whose rows that did
not type are quarantined already), evaluates the spec's row-level suite as vectorised masks and
splits the rows into kept and quarantined, each quarantined row with the first rule it fails,
its column, its value as text and a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.drops import ParsedDrop, split_failures
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.calendar_rows import calendar_rows
from mlops_assets.ml.validation.failures import RowFailure, row_failures_of
from mlops_assets.ml.validation.masks import row_failures
from mlops_assets.ml.validation.rules import hint
from mlops_assets.ml.validation.suite import row_expectations


@dataclass(frozen=True)
class RowCheck:
    """What row validation made of a drop's rows (every row is kept or quarantined).

    Attributes:
        rows_in: rows in the drop.
        kept: rows that pass every rule, typed to the spec (plus the source row number).
        quarantined: rows that fail a rule: source columns as text, the row number, and
            ``_rule``, ``_column``, ``_value``, ``_message`` (``drops.REJECT_COLUMNS``).
    """

    rows_in: int
    kept: pa.Table
    quarantined: pa.Table

    @property
    def rows_quarantined(self) -> int:
        return self.quarantined.num_rows

    def rule_counts(self) -> dict[str, int]:
        """Quarantined rows per rule."""
        if self.quarantined.num_rows == 0:
            return {}
        return {
            d["values"]: d["counts"] for d in pc.value_counts(self.quarantined["_rule"]).to_pylist()
        }

    def failures(self, spec: DatasetSpec) -> list[RowFailure]:
        """One failure per (rule, column), with its row count and first row."""
        return row_failures_of(self.quarantined, spec)


def validate_rows(
    rows: pa.Table | ParsedDrop,
    spec: DatasetSpec,
    *,
    for_scoring: bool,
    as_of: date | datetime | str | None = None,
) -> RowCheck:
    """Split a drop's typed rows into kept and quarantined by the spec's row-level suite and
    its calendar rules (``calendar_rows``: off-calendar rows quarantined, or snapped).

    Args:
        rows: typed rows (the spec's columns and the row number), or a ``ParsedDrop`` whose
            rows that did not type are quarantined ahead of the others.
        spec: the dataset spec.
        for_scoring: batch scoring's subset of the suite (value bounds on the model's inputs;
            the target may be null or absent); else ingestion's whole suite.
        as_of: the run's as-of date: later timestamps fail ``time.not_future``.
    """
    parsed = (
        rows if isinstance(rows, ParsedDrop) else split_failures(rows, None, [], spec)  # nothing
    )
    good = kept = parsed.good
    failures = row_failures(good, row_expectations(spec, as_of, for_scoring=for_scoring))
    on_calendar = calendar_rows(good, spec)  # after the suite's rules: they win a tie
    failures += on_calendar.failures
    if on_calendar.time is not None:  # kept rows snapped; quarantined ones show their own time
        kept = good.set_column(good.schema.get_field_index(spec.time), spec.time, on_calendar.time)
    if not failures:
        return RowCheck(parsed.rows_in, kept, parsed.rejected)
    # Split only the failing rows (usually few): building the quarantined table formats every
    # column as text, which costs seconds on a 10M-row drop if done for all rows.
    bad = np.zeros(good.num_rows, dtype=bool)
    for _, _, mask in failures:
        bad |= mask
    idx = np.flatnonzero(bad)
    more = split_failures(
        good.take(pa.array(idx)), None, [(r, c, m[idx]) for r, c, m in failures], spec
    )
    quarantined = pa.concat_tables(
        [parsed.rejected, more.rejected.select(parsed.rejected.column_names)]
    )
    return RowCheck(parsed.rows_in, kept.filter(pa.array(~bad)), quarantined)


def explain_rows(check: RowCheck, name: str) -> RowCheck:
    """Quarantined rows' messages name the file and say what to do about the rule."""
    q = check.quarantined
    if q.num_rows == 0:
        return check
    messages = [
        f"{name}: {m}; {hint(r)}"
        for m, r in zip(q["_message"].to_pylist(), q["_rule"].to_pylist(), strict=True)
    ]
    i = q.schema.get_field_index("_message")
    explained = q.set_column(i, "_message", pa.array(messages, type=pa.string()))
    return RowCheck(check.rows_in, check.kept, explained)
