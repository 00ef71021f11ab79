"""Typed validation failures, and their stored form (the ledger's JSON, check metadata).

A ``RowFailure`` counts the rows of one drop that failed one rule on one column (the rows
themselves are quarantined); a ``DropFailure`` is a finding about a whole file: it cannot be
read (``level="file"``) or one of its aggregates is outside its bounds (``level="drop"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pyarrow as pa

from mlops_assets.ml.drops import ROW
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.rules import concern_of, hint


def plain(value: Any) -> Any:
    """``value`` as JSON holds it (dates as ISO text)."""
    return value.isoformat() if isinstance(value, datetime | date) else value


@dataclass(frozen=True)
class RowFailure:
    """Rows of one drop failing one rule on one column; they were quarantined."""

    rule: str
    column: str | None
    count: int
    first_row: int
    message: str
    concern: str
    file: str | None = None
    level: str = "row"
    severity: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "column": self.column,
            "level": self.level,
            "concern": self.concern,
            "severity": self.severity,
            "unexpected_count": self.count,
            "first_row": self.first_row,
            "message": self.message,
            **({"file": self.file} if self.file is not None else {}),
        }


@dataclass(frozen=True)
class DropFailure:
    """A finding about a whole drop: unreadable (level ``file``) or out of bounds (``drop``)."""

    rule: str
    message: str
    concern: str
    observed: Any = None
    column: str | None = None
    severity: str = "error"
    level: str = "drop"
    expectation: str | None = None
    expected: dict[str, Any] = field(default_factory=dict)
    file: str | None = None

    @property
    def count(self) -> int:
        return 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "column": self.column,
            "level": self.level,
            "concern": self.concern,
            "severity": self.severity,
            "message": self.message,
        }
        if self.expectation is not None:
            out["expectation"] = self.expectation
            out["observed"] = plain(self.observed)
            out["expected"] = {k: plain(v) for k, v in self.expected.items()}
        if self.file is not None:
            out["file"] = self.file
        return out


Failure = RowFailure | DropFailure


def failure_from_dict(d: dict[str, Any], spec: DatasetSpec, file: str | None = None) -> Failure:
    """A stored failure (``to_dict``'s form, as the ledger holds it) read back."""
    concern = d.get("concern") or concern_of(d["rule"], d.get("column"), spec)
    file = d.get("file", file)
    if d.get("level") == "row":
        return RowFailure(
            rule=d["rule"],
            column=d.get("column"),
            count=int(d.get("unexpected_count") or 0),
            first_row=int(d.get("first_row") or 0),
            message=d.get("message") or d["rule"],
            concern=concern,
            file=file,
            severity=d.get("severity") or "error",
        )
    return DropFailure(
        rule=d["rule"],
        message=d.get("message") or d["rule"],
        concern=concern,
        observed=d.get("observed"),
        column=d.get("column"),
        severity=d.get("severity") or "error",
        level=d.get("level") or "drop",
        expectation=d.get("expectation"),
        expected=d.get("expected") or {},
        file=file,
    )


def row_failures_of(quarantined: pa.Table, spec: DatasetSpec) -> list[RowFailure]:
    """One ``RowFailure`` per (rule, column) of quarantined rows (``_rule``, ``_column``, ROW)."""
    if quarantined.num_rows == 0:
        return []
    counts = quarantined.group_by(["_rule", "_column"]).aggregate([(ROW, "count"), (ROW, "min")])
    out = []
    for r in counts.to_pylist():
        rule, column, n, first = r["_rule"], r["_column"], r[f"{ROW}_count"], r[f"{ROW}_min"]
        out.append(
            RowFailure(
                rule=rule,
                column=column,
                count=n,
                first_row=first,
                concern=concern_of(rule, column, spec),
                message=f"rule {rule} on column {column!r}: {n} row(s) quarantined, first at "
                f"row {first}; {hint(rule)}",
            )
        )
    return out
