"""The validation gate's verdict per concern, from one ingestion run's drop outcomes.

The ingestion asset validates each new drop once, as it ingests it, and reports one blocking
asset check per concern (``rules.CONCERNS``) computed here, so a check describes exactly the
drops the run ingested. ``assets.checks`` only turns each ``CheckOutcome`` into Dagster's form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from mlops_assets.domain.curation import IngestResult
from mlops_assets.domain.ledger import DropOutcome
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.failures import DropFailure, Failure, failure_from_dict
from mlops_assets.ml.validation.rules import CONCERNS, Rule, concern_of
from mlops_assets.ml.validation.suite import drift_columns, drop_expectations, row_expectations

DESCRIPTIONS = {
    "schema": "Each drop is readable, has exactly the spec's columns, its values parse as the "
    "column types, and its row count is within the spec's bounds.",
    "keys": "Series keys and time are never null and (series key, time) is unique in each drop.",
    "values": "Values are finite, within the spec's [min, max] and among the allowed categories.",
    "freshness": "No timestamp after the run's as-of date or before the earliest plausible date; "
    "every timestamp on the spec's calendar (an anchor of its frequency; snapped when the spec "
    "says so); each drop's newest timestamp is within max_age_days of the as-of date.",
    "distribution": "Each drop's mean, stdev and quantiles of the target and numeric features "
    "lie within the warn (WARN) and hard (ERROR) sigma bands of the last reference_periods "
    "periods of curated history.",
    "row_accounting": "For every drop, rows in = rows curated + rows quarantined + rows "
    "re-delivered unchanged (duplicates), and the curated store took exactly the rows reported "
    "as curated.",
}
QUARANTINE = "quarantine"
QUARANTINE_DESCRIPTION = (
    "What the run quarantined (failing rows, and every row of files quarantined whole) is at "
    "most validation.max_quarantined_share of the rows it read: quarantine is handled, so "
    "within the share the concern checks and this one fail with WARN and training goes on; "
    "above it, with ERROR."
)


@dataclass(frozen=True)
class CheckOutcome:
    """One concern's verdict on a run's drops (an asset check result, without Dagster)."""

    concern: str
    passed: bool
    severity: str  # error | warn
    description: str | None
    expectation: str  # the concern's expectations, one per line
    observed: str
    drops_checked: int
    rows_checked: int
    unexpected_count: int
    unexpected_percent: float
    failed_rules: str
    files_quarantined: int
    failures: list[Failure] = field(default_factory=list)  # ERROR first, each with its file
    sample: list[dict[str, Any]] = field(default_factory=list)  # file, row, column, value, rule
    profiles: dict[str, dict] | None = None  # per drop (distribution only)


def expectations_text(spec: DatasetSpec, concern: str, as_of: date) -> str:
    """The expectations a concern's check reports, one line each."""
    configs = row_expectations(spec, as_of) + drop_expectations(spec, as_of)
    lines = sorted(
        {
            f"{c['meta']['rule']}: {c['type']}"
            + "({})".format(
                c["kwargs"].get("column")
                or c["kwargs"].get("column_list")
                or c["kwargs"].get("column_set")
            )
            for c in configs
            if concern_of(c["meta"]["rule"], c["kwargs"].get("column"), spec) == concern
        }
    )
    if concern == "distribution":
        d = spec.validation.drift
        lines.append(
            f"drift.<column>.<mean|stdev|q10|q50|q90>: expect_column_values_to_be_between on "
            f"the drop profile, warn ±{d.warn_sigmas}σ, error ±{d.error_sigmas}σ of the last "
            f"{d.reference_periods} periods, columns {drift_columns(spec)}"
        )
    if concern == "freshness":  # no GX equivalent: ml.validation.calendar_rows
        lines.append(
            f"{Rule.TIME_OFF_CALENDAR}: each timestamp is an anchor of {spec.frequency} "
            f"(off-calendar rows: {spec.calendar.off_calendar}); "
            f"{Rule.TIME_DUPLICATE_PERIOD}: one row per series and period after snapping"
        )
    if concern == "row_accounting":
        lines.append("rows_in == rows_curated + rows_quarantined + rows_duplicate for every drop")
    return "\n".join(lines)


def describe(failure: Failure) -> str:
    """A failure's message, naming its file."""
    message = failure.message or failure.rule
    if not message.startswith(failure.file or ""):
        message = f"{failure.file}: {message}"
    return message[:1000]


def _observed(failures: list[Failure]) -> str:
    if not failures:
        return "no failures"
    shown = [
        f"{f.file}: {f.rule}"
        + (f" observed {f.observed}" if isinstance(f, DropFailure) and f.expectation else "")
        + (f" ({f.count} rows)" if f.count else "")
        for f in failures[:10]
    ]
    return "; ".join(shown)


def row_accounting(result: IngestResult) -> list[DropFailure]:
    """Rows lost or invented by ingestion: a bug, reported as the row_accounting concern."""
    out = []
    for o in result.outcomes:
        if o.rows_in is None:
            continue  # unreadable file: no rows known, the whole file is in quarantine
        if o.rows_in != o.rows_curated + o.rows_quarantined + o.rows_duplicate:
            message = (
                f"{o.drop}: rows in {o.rows_in} != curated {o.rows_curated} + quarantined "
                f"{o.rows_quarantined} + duplicate {o.rows_duplicate}; report a bug in ingestion"
            )
            out.append(DropFailure(Rule.ROWS_IDENTITY, message, "row_accounting", file=o.drop))
    merged = result.merge.rows_added + result.merge.rows_replaced
    if merged != result.rows_curated:
        message = (
            f"the curated store took {merged} rows but drops report {result.rows_curated} "
            "curated; report a bug in ingestion"
        )
        out.append(DropFailure(Rule.ROWS_MERGED, message, "row_accounting", file="*"))
    return out


def _failures(outcome: DropOutcome, spec: DatasetSpec) -> list[Failure]:
    stored = (outcome.validation or {}).get("failures", [])
    return [failure_from_dict({**f, "file": outcome.drop}, spec) for f in stored]


def _blocks(f: Failure) -> bool:
    """A whole file quarantined by an ERROR file- or drop-level rule."""
    return f.level in ("file", "drop") and f.severity == "error"


@dataclass(frozen=True)
class QuarantineShare:
    """How much of a run's rows and files went to quarantine, against the spec's limit."""

    rows_in: int
    rows_quarantined: int
    files_quarantined: int
    files_unreadable: int  # quarantined whole before their rows could be counted
    limit: float

    @classmethod
    def of(cls, spec: DatasetSpec, result: IngestResult) -> QuarantineShare:
        whole = [o for o in result.outcomes if o.status == "quarantined"]
        return cls(
            rows_in=result.rows_in,
            rows_quarantined=result.rows_quarantined,
            files_quarantined=len(whole),
            files_unreadable=sum(o.rows_in is None for o in whole),
            limit=spec.validation.max_quarantined_share,
        )

    @property
    def share(self) -> float:
        """Rows quarantined over rows read; 1 when files arrived and none could be read."""
        if self.rows_in:
            return self.rows_quarantined / self.rows_in
        return 1.0 if self.files_quarantined else 0.0

    @property
    def over(self) -> bool:
        return self.share > self.limit

    def describe(self) -> str:
        unreadable = f", {self.files_unreadable} unreadable" if self.files_unreadable else ""
        verdict = (
            f"over validation.max_quarantined_share {self.limit:.0%}: the run stops here; fix "
            "the sender's export (the failures below say what) or raise the share in the spec"
            if self.over
            else f"within validation.max_quarantined_share {self.limit:.0%}: handled, nothing "
            "that failed reached the curated data and training goes on"
        )
        return (
            f"{self.rows_quarantined:,} of {self.rows_in:,} rows ({self.share:.1%}) quarantined, "
            f"{self.files_quarantined} file(s) whole{unreadable}; {verdict}"
        )


def _severity(concern: str, mine: list[Failure], quarantine: QuarantineShare) -> str:
    """ERROR for wrong curated data (row accounting), or for quarantine over the spec's share;
    else WARN (what failed was quarantined, or was only a warning)."""
    if concern == "row_accounting":
        return "error"
    if not any(f.severity == "error" for f in mine):
        return "warn"
    return "error" if quarantine.over else "warn"


def _description(concern: str, mine: list[Failure], quarantine: QuarantineShare) -> str | None:
    if not mine:
        return None
    if concern == "row_accounting" or not any(f.severity == "error" for f in mine):
        return describe(mine[0])
    return f"{describe(mine[0])} [quarantined; {quarantine.describe()}]"


def check_outcomes(spec: DatasetSpec, result: IngestResult, as_of: date) -> list[CheckOutcome]:
    """One outcome per concern, computed from this run's drop outcomes, then the quarantine
    check's (``quarantine_outcome``)."""
    rows_in = result.rows_in
    failures = [f for o in result.outcomes for f in _failures(o, spec)] + row_accounting(result)
    samples = [
        {**s, "value": None if s.get("value") is None else str(s["value"])}
        for o in result.outcomes
        for s in (o.validation or {}).get("sample", [])
    ]
    quarantine = QuarantineShare.of(spec, result)
    out = []
    for concern in CONCERNS:
        # ERROR findings first, so the check's description names what blocks.
        mine = sorted(
            (f for f in failures if f.concern == concern), key=lambda f: f.severity != "error"
        )
        blocked = {f.file for f in mine if _blocks(f)}
        file_rows = sum(
            o.rows_in or 0
            for o in result.outcomes
            if o.status == "quarantined" and o.drop in blocked
        )
        unexpected = sum(f.count for f in mine if f.level == "row") + file_rows
        pct = 100.0 * unexpected / rows_in if rows_in else 0.0
        rules = {f.rule + (f"[{f.column}]" if f.column else "") for f in mine}
        out.append(
            CheckOutcome(
                concern=concern,
                passed=not mine,
                severity=_severity(concern, mine, quarantine),
                description=_description(concern, mine, quarantine),
                expectation=expectations_text(spec, concern, as_of),
                observed=_observed(mine),
                drops_checked=len(result.outcomes),
                rows_checked=rows_in,
                unexpected_count=unexpected,
                unexpected_percent=round(pct, 6),
                failed_rules=", ".join(sorted(rules)) or "none",
                files_quarantined=len(blocked),
                failures=mine,
                sample=[s for s in samples if concern_of(s["rule"], s["column"], spec) == concern],
                profiles=(
                    {o.drop: (o.validation or {}).get("profile", {}) for o in result.outcomes[:20]}
                    if concern == "distribution"
                    else None
                ),
            )
        )
    return [*out, quarantine_outcome(result, failures, samples, quarantine)]


def quarantine_outcome(
    result: IngestResult,
    failures: list[Failure],
    samples: list[dict[str, Any]],
    quarantine: QuarantineShare,
) -> CheckOutcome:
    """The quarantine check: passed when nothing was quarantined, WARN within the spec's
    share, ERROR above it."""
    quarantined = [f for f in failures if f.severity == "error" and f.concern != "row_accounting"]
    return CheckOutcome(
        concern=QUARANTINE,
        passed=not quarantine.rows_quarantined and not quarantine.files_quarantined,
        severity="error" if quarantine.over else "warn",
        description=quarantine.describe() if quarantined else None,
        expectation=f"rows quarantined <= {quarantine.limit} x rows read "
        "(validation.max_quarantined_share)",
        observed=quarantine.describe(),
        drops_checked=len(result.outcomes),
        rows_checked=quarantine.rows_in,
        unexpected_count=quarantine.rows_quarantined,
        unexpected_percent=round(100 * quarantine.share, 6),
        failed_rules=", ".join(sorted({f.rule for f in quarantined})) or "none",
        files_quarantined=quarantine.files_quarantined,
        failures=quarantined,
        sample=samples,
    )
