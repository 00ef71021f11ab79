"""The data validation gate as blocking Dagster asset checks on the curated asset.

The ingestion asset validates each new drop once, as it ingests it (``ml.expectations.DropGate``
inside ``curation.ingest``), and reports one check per concern from this run's drop outcomes,
so a check describes exactly the drops the run ingested. The checks are ``blocking``: when one
fails with ERROR, the downstream assets of the same run (training, evaluation, registration) do
not execute (blocking applies within a run only; see reliability notes 1.4).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc

from mlops_assets.domain.curation import CuratedStore, DropOutcome, IngestResult
from mlops_assets.ml.expectations import (
    CONCERNS,
    DropGate,
    concern_of,
    drift_columns,
    drop_expectations,
    row_expectations,
)
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import Storage

DESCRIPTIONS = {
    "schema": "Each drop is readable, has exactly the spec's columns, its values parse as the "
    "column types, and its row count is within the spec's bounds.",
    "keys": "Series keys and time are never null and (series key, time) is unique in each drop.",
    "values": "Values are finite, within the spec's [min, max] and among the allowed categories.",
    "freshness": "No timestamp after the run's as-of date or before the earliest plausible date; "
    "each drop's newest timestamp is within max_age_days of the as-of date.",
    "distribution": "Each drop's mean, stdev and quantiles of the target and numeric features "
    "lie within the warn (WARN) and hard (ERROR) sigma bands of the last reference_periods "
    "periods of curated history.",
    "row_accounting": "For every drop, rows in = rows curated + rows quarantined, and the curated "
    "store took exactly the rows reported as curated.",
}
ALWAYS_ERROR = {"schema", "keys", "row_accounting"}
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


def check_specs(spec: DatasetSpec) -> list[dg.AssetCheckSpec]:
    """One blocking check per concern on ``[<ds>, "curated"]``."""
    return [
        dg.AssetCheckSpec(
            concern,
            asset=dg.AssetKey([spec.name, "curated"]),
            blocking=True,
            description=DESCRIPTIONS[concern],
        )
        for concern in CONCERNS
    ]


def as_of_date(partition_key: str | None) -> date:
    """The run's as-of date: its daily partition, or today (UTC) outside a partitioned run."""
    if partition_key:
        return date.fromisoformat(partition_key[:10])
    return datetime.now(UTC).date()


def make_gate(
    storage: Storage, spec: DatasetSpec, as_of: date, docs_dir: str | None = None
) -> DropGate:
    """A gate whose distribution reference is the curated history (time and drift columns)."""
    store = CuratedStore(storage, spec)
    reference = None
    if store.shard_names():
        # Only the last reference_periods periods are compared with: read just those.
        times = pc.unique(store.read(columns=[spec.time])[spec.time]).sort()
        n = spec.validation.drift.reference_periods
        since = times[max(0, len(times) - n)] if len(times) else None
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


def _expectations_text(spec: DatasetSpec, concern: str, as_of: date) -> str:
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
    if concern == "row_accounting":
        lines.append("rows_in == rows_curated + rows_quarantined for every drop")
    return "\n".join(lines)


def _failures(outcome: DropOutcome, spec: DatasetSpec) -> list[dict]:
    out = []
    for f in (outcome.validation or {}).get("failures", []):
        concern = f.get("concern") or concern_of(f["rule"], f.get("column"), spec)
        out.append({**f, "concern": concern, "file": outcome.drop})
    return out


def check_results(
    spec: DatasetSpec,
    result: IngestResult,
    as_of: date,
    sample_rows: int = 10,
    docs_uri: str | None = None,
) -> list[dg.AssetCheckResult]:
    """One result per concern, computed from this run's drop outcomes.

    Args:
        spec: the dataset spec.
        result: what ``curation.ingest`` did with this run's drops.
        as_of: the run's as-of date.
        sample_rows: failing rows shown per check.
        docs_uri: where the run's GX Data Docs are, linked from every check.
    """
    rows_in = sum(o.rows_in or 0 for o in result.outcomes)
    failures = [f for o in result.outcomes for f in _failures(o, spec)]
    accounting = _row_accounting(result)
    failures += accounting
    samples = [
        {**s, "value": None if s.get("value") is None else str(s["value"])}
        for o in result.outcomes
        for s in (o.validation or {}).get("sample", [])
    ]
    tolerance = spec.validation.max_quarantined_pct
    out = []
    for concern in CONCERNS:
        # ERROR findings first, so the check's description names what blocks.
        mine = sorted(
            (f for f in failures if f["concern"] == concern),
            key=lambda f: f.get("severity") != "error",
        )
        row_count = sum(f.get("unexpected_count", 0) for f in mine if f.get("level") == "row")
        file_rows = sum(
            (o.rows_in or 0)
            for o in result.outcomes
            if o.status == "quarantined"
            and any(
                f["file"] == o.drop
                and f.get("level") in ("drop", "file")
                and f.get("severity") == "error"
                for f in mine
            )
        )
        unexpected = row_count + file_rows
        pct = 100.0 * unexpected / rows_in if rows_in else 0.0
        if concern in ALWAYS_ERROR:
            severity = dg.AssetCheckSeverity.ERROR
        elif any(f.get("severity") == "error" and f.get("level") != "row" for f in mine):
            severity = dg.AssetCheckSeverity.ERROR
        elif concern == "distribution" or pct <= tolerance:
            severity = dg.AssetCheckSeverity.WARN
        else:
            severity = dg.AssetCheckSeverity.ERROR
        rules = {f"{f['rule']}" + (f"[{f['column']}]" if f.get("column") else "") for f in mine}
        sample = [s for s in samples if concern_of(s["rule"], s["column"], spec) == concern]
        metadata = {
            "expectation": dg.MetadataValue.md(_expectations_text(spec, concern, as_of)),
            "observed_value": _observed(mine, concern),
            "drops_checked": len(result.outcomes),
            "rows_checked": rows_in,
            "unexpected_count": unexpected,
            "unexpected_percent": round(pct, 6),
            "failed_rules": ", ".join(sorted(rules)) or "none",
            "files_quarantined": len(
                {
                    f["file"]
                    for f in mine
                    if f.get("level") in ("file", "drop") and f.get("severity") == "error"
                }
            ),
            "failures": dg.MetadataValue.table(
                [
                    dg.TableRecord(
                        {
                            "file": f["file"],
                            "rule": f["rule"],
                            "column": f.get("column") or "",
                            "level": f.get("level") or "",
                            "severity": f.get("severity") or "",
                            "count": int(f.get("unexpected_count") or 1),
                            "message": _describe(f)[:400],
                        }
                    )
                    for f in mine[:20]
                ],
                schema=_FAILURES,
            ),
            "failing_rows_sample": dg.MetadataValue.table(
                [
                    dg.TableRecord(
                        {k: s.get(k) for k in ("file", "row", "column", "value", "rule")}
                    )
                    for s in sample[:sample_rows]
                ],
                schema=_SAMPLE,
            ),
        }
        if docs_uri:
            metadata["data_docs"] = dg.MetadataValue.url(docs_uri)
        if concern == "distribution":
            metadata["drop_profiles"] = dg.MetadataValue.json(
                {o.drop: (o.validation or {}).get("profile", {}) for o in result.outcomes[:20]}
            )
        out.append(
            dg.AssetCheckResult(
                check_name=concern,
                passed=not mine,
                severity=severity,
                asset_key=dg.AssetKey([spec.name, "curated"]),
                metadata=metadata,
                description=_describe(mine[0]) if mine else None,
            )
        )
    return out


def _describe(failure: dict) -> str:
    message = failure.get("message") or failure["rule"]
    if not message.startswith(failure["file"]):
        message = f"{failure['file']}: {message}"
    return message[:1000]


def _observed(failures: list[dict], concern: str) -> str:
    if not failures:
        return "no failures"
    shown = [
        f"{f['file']}: {f['rule']}"
        + (f" observed {f['observed']}" if "observed" in f else "")
        + (f" ({f['unexpected_count']} rows)" if f.get("unexpected_count") else "")
        for f in failures[:10]
    ]
    return "; ".join(shown)


def _row_accounting(result: IngestResult) -> list[dict]:
    out = []
    for o in result.outcomes:
        if o.rows_in is None:
            continue  # unreadable file: no rows known, the whole file is in quarantine
        if o.rows_in != o.rows_curated + o.rows_quarantined:
            out.append(
                {
                    "file": o.drop,
                    "rule": "rows.identity",
                    "column": None,
                    "level": "drop",
                    "severity": "error",
                    "concern": "row_accounting",
                    "message": f"{o.drop}: rows in {o.rows_in} != curated {o.rows_curated} + "
                    f"quarantined {o.rows_quarantined}; report a bug in ingestion",
                }
            )
    merged = result.merge.rows_added + result.merge.rows_replaced
    if merged != result.rows_curated:
        out.append(
            {
                "file": "*",
                "rule": "rows.merged",
                "column": None,
                "level": "drop",
                "severity": "error",
                "concern": "row_accounting",
                "message": f"the curated store took {merged} rows but drops report "
                f"{result.rows_curated} curated; report a bug in ingestion",
            }
        )
    return out
