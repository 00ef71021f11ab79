"""The data validation gate as blocking Dagster asset checks on the curated asset.

The ingestion asset validates each new drop once, as it ingests it, and reports one check per
concern from this run's drop outcomes (``domain.validation_report`` computes each verdict), so
a check describes exactly the drops the run ingested, and a ``quarantine`` check of how much
went to quarantine. The checks are ``blocking``: when one fails with ERROR, the downstream
assets of the same run (training, evaluation, registration) do not execute (blocking applies
within a run only; see reliability notes 1.4). Quarantine is handled: what failed and was
quarantined fails its check with WARN only, up to the spec's
``validation.max_quarantined_share`` of the run's rows; wrong curated data (row accounting) or
quarantine above that share fails with ERROR.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import dagster as dg

from mlops_assets.domain.validation_report import (
    DESCRIPTIONS,
    QUARANTINE,
    QUARANTINE_DESCRIPTION,
    CheckOutcome,
    describe,
)
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.rules import CONCERNS

_SAMPLE = dg.TableSchema(
    columns=[
        dg.TableColumn(n, t)
        for n, t in (
            ("file", "string"),
            ("row", "int"),
            ("column", "string"),
            ("value", "string"),
            ("rule", "string"),
        )
    ]
)
_FAILURES = dg.TableSchema(
    columns=[
        dg.TableColumn(n, t)
        for n, t in (
            ("file", "string"),
            ("rule", "string"),
            ("column", "string"),
            ("level", "string"),
            ("severity", "string"),
            ("count", "int"),
            ("message", "string"),
        )
    ]
)
_SEVERITY = {"error": dg.AssetCheckSeverity.ERROR, "warn": dg.AssetCheckSeverity.WARN}


GAPS_CHECK = "calendar_gaps"
_WORST = dg.TableSchema(
    columns=[
        dg.TableColumn("series_id", "string"),
        dg.TableColumn("missing_periods", "int"),
        dg.TableColumn("longest_gap", "int"),
    ]
)


def check_specs(spec: DatasetSpec) -> list[dg.AssetCheckSpec]:
    """One blocking check per concern on ``[<ds>, "curated"]``, the blocking ``quarantine``
    check, and the non-blocking ``calendar_gaps`` warning."""
    described = {**DESCRIPTIONS, QUARANTINE: QUARANTINE_DESCRIPTION}
    return [
        dg.AssetCheckSpec(
            name,
            asset=dg.AssetKey([spec.name, "curated"]),
            blocking=True,
            description=described[name],
        )
        for name in (*CONCERNS, QUARANTINE)
    ] + [
        dg.AssetCheckSpec(
            GAPS_CHECK,
            asset=dg.AssetKey([spec.name, "curated"]),
            blocking=False,
            description=f"Series of the curated data have no missing {spec.frequency} period "
            "between their first and last row (WARN only: training and scoring fill a missing "
            "period per the spec's calendar.fill).",
        )
    ]


def gap_metadata(gaps: dict) -> dict[str, Any]:
    """Missing periods of the curated series (``CuratedStore.summary()['gaps']``) as metadata."""
    worst = [
        dg.TableRecord({"series_id": w[0], "missing_periods": w[1], "longest_gap": w[2]})
        for w in gaps.get("worst", [])
    ]
    return {
        "series_with_gaps": gaps["series_with_gaps"],
        "missing_periods": gaps["missing_periods"],
        "longest_gap": gaps["longest_gap"],
        "gaps_worst_series": dg.MetadataValue.table(worst, schema=_WORST),
    }


def gaps_check_result(spec: DatasetSpec, gaps: dict) -> dg.AssetCheckResult:
    """The ``calendar_gaps`` warning: passed when no curated series misses a period."""
    n = gaps["series_with_gaps"]
    return dg.AssetCheckResult(
        check_name=GAPS_CHECK,
        passed=n == 0,
        severity=dg.AssetCheckSeverity.WARN,
        asset_key=dg.AssetKey([spec.name, "curated"]),
        metadata=gap_metadata(gaps),
        description=None
        if n == 0
        else f"{n} series miss {gaps['missing_periods']} {spec.frequency} periods in all "
        f"(longest gap {gaps['longest_gap']}); they are filled per calendar.fill "
        f"{spec.calendar.fill or '(none: unknown)'}",
    )


def as_of_date(partition_key: str | None) -> date:
    """The run's as-of date: its daily partition, or today (UTC) outside a partitioned run."""
    if partition_key:
        return date.fromisoformat(partition_key[:10])
    return datetime.now(UTC).date()


def _failures_table(c: CheckOutcome) -> dg.TableMetadataValue:
    records = [
        dg.TableRecord(
            {
                "file": f.file or "",
                "rule": f.rule,
                "column": f.column or "",
                "level": f.level,
                "severity": f.severity,
                "count": int(f.count or 1),
                "message": describe(f)[:400],
            }
        )
        for f in c.failures[:20]
    ]
    return dg.MetadataValue.table(records, schema=_FAILURES)


def check_result(
    spec: DatasetSpec, c: CheckOutcome, sample_rows: int = 10, docs_uri: str | None = None
) -> dg.AssetCheckResult:
    """A concern's verdict as Dagster's check result (failing rows and Data Docs linked)."""
    keys = ("file", "row", "column", "value", "rule")
    sample = [dg.TableRecord({k: s.get(k) for k in keys}) for s in c.sample[:sample_rows]]
    metadata: dict[str, Any] = {
        "expectation": dg.MetadataValue.md(c.expectation),
        "observed_value": c.observed,
        "drops_checked": c.drops_checked,
        "rows_checked": c.rows_checked,
        "unexpected_count": c.unexpected_count,
        "unexpected_percent": c.unexpected_percent,
        "failed_rules": c.failed_rules,
        "files_quarantined": c.files_quarantined,
        "failures": _failures_table(c),
        "failing_rows_sample": dg.MetadataValue.table(sample, schema=_SAMPLE),
    }
    if docs_uri:
        metadata["data_docs"] = dg.MetadataValue.url(docs_uri)
    if c.profiles is not None:
        metadata["drop_profiles"] = dg.MetadataValue.json(c.profiles)
    return dg.AssetCheckResult(
        check_name=c.concern,
        passed=c.passed,
        severity=_SEVERITY[c.severity],
        asset_key=dg.AssetKey([spec.name, "curated"]),
        metadata=metadata,
        description=c.description,
    )
