"""Why a Dagster run failed, in words a user can act on: the failing checks with their file,
row, column, value and rule, what to do next, and the first line of any other step error; no
framework stack trace (``mlops --debug`` shows those)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from mlops_assets.ml.validation.rules import hint

_NEXT = {
    "row_accounting": "this is a bug in ingestion (rows lost or invented): report it with the "
    "run id; nothing was trained on the data",
    "quarantine": "fix the export of the files named above and land them again (quarantined "
    "files are under quarantine/<dataset>/files/ with a .reason.json), or raise "
    "validation.max_quarantined_share in the spec if this much quarantine is expected; then run "
    "the job again",
}
_MAX_SHOWN = 5


def _records(metadata: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = metadata.get(key)
    records = getattr(getattr(value, "value", None), "records", None) or []
    return [r.data for r in records]


def _check_lines(e: dg.AssetCheckEvaluation) -> list[str]:
    asset = "/".join(e.asset_key.path)
    lines = [f"check {e.check_name!r} on {asset} failed: {e.description or 'no description'}"]
    for f in _records(e.metadata, "failures")[:_MAX_SHOWN]:
        where = ", ".join(f"{k} {f[k]}" for k in ("file", "column") if f.get(k) and f.get(k) != "*")
        lines.append(f"  rule {f['rule']} ({where}): {f['message']}")
    for s in _records(e.metadata, "failing_rows_sample")[:_MAX_SHOWN]:
        lines.append(
            f"  {s['file']} row {s['row']}, column {s['column']!r}, value {s['value']!r}: "
            f"rule {s['rule']}"
        )
    rules = [f["rule"] for f in _records(e.metadata, "failures")]
    todo = _NEXT.get(e.check_name) or (hint(rules[0]) if rules else None)
    if todo:
        lines.append(f"  next: {todo}")
    return lines


def _step_errors(result: dg.ExecuteInProcessResult) -> list[str]:
    """First lines of step errors that are not the blocking checks' own failure."""
    out = []
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE" or event.step_failure_data is None:
            continue
        error = event.step_failure_data.error
        if error is None or error.cls_name == "DagsterAssetCheckFailedError":
            continue
        first = (error.message or "").strip().splitlines()
        line = first[0] if first else (error.cls_name or "an error")
        head, sep, rest = line.partition(": ")
        if sep and head.rsplit(".", 1)[-1] == error.cls_name:  # "dagster....Failure: why"
            line = rest
        out.append(f"step {event.step_key} failed: {line}")
    return out


def explain_failure(result: dg.ExecuteInProcessResult) -> list[str]:
    """Lines that say why ``result``'s run failed (empty for a run that succeeded)."""
    if result.success:
        return []
    lines = []
    for e in result.get_asset_check_evaluations():
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR:
            lines += _check_lines(e)
    lines += _step_errors(result)
    return lines or [f"run {result.run_id} failed; see its events in the Dagster UI"]
