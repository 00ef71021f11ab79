"""One batch scoring run, without Dagster: what the job is asked, and what its reports mean.

A run scores one or more drop versions (partition keys ``<drop>@<etag>``) with one model set in
ONE job. :func:`drop_batch` builds the job's params (the spec as JSON, the model set as a
``ModelSetRef``); :class:`BatchRun` turns the job's per-drop messages into each drop's metadata,
the run's totals and, when some drop was not scored, the failure to raise. Metadata values are
plain JSON; the asset wraps URLs and tables for Dagster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mlops_assets.domain import batch_layout as layout
from mlops_assets.domain.model_sets import ModelSetError, ModelSetRef
from mlops_assets.jobs.batch_params import DropBatch, DropJob
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage

NOT_SCORED = {"rejected": "quarantined", "failed": "failed"}  # statuses that fail the run
NAMED_IN_FAILURE = 20  # drops named in the failure's text; all of them are in its metadata
_COUNTS = ("rows_in", "rows_scored", "rows_failed", "rows_quarantined", "series", "unknown_series")


def batch_key(keys: list[str]) -> str:
    """The compute key of a run's drops: the drop version itself, or ``batch:<digest>`` of
    all of them (stable, so a retry of the run gets the same deterministic AML job name)."""
    if len(keys) == 1:
        return keys[0]
    return "batch:" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def batch_params_name(spec: DatasetSpec, run_id: str) -> str:
    """Where a run's params go when they are too large for an environment variable."""
    return f"{layout.root(spec.name)}batches/{run_id}.json"


def production_model_set(
    registry, name: str, version: int | None = None, alias: str = "production"
) -> ModelSetRef:
    """The model set a run scores with: registry ``version`` if pinned, else ``alias``'s.

    Raises:
        ModelSetError: No such version or alias, or it lacks the folder/digest tags.
    """
    if version is not None:
        found = registry.get_version(name, version)
    else:
        found = registry.get_alias(name, alias)
    if found is None or not found.folder:
        what = f"version {version}" if version is not None else f"{alias!r} model set"
        raise ModelSetError(f"no {what} of {name} in {registry.location}: promote one first")
    return found.ref


def drop_batch(
    spec: DatasetSpec, keys: list[str], storage: Storage, model_storage: Storage, ref: ModelSetRef
) -> DropBatch:
    """The job params that score drop versions ``keys`` of ``spec`` with model set ``ref``."""
    jobs = []
    for key in keys:
        relative, etag = layout.split_key(key)
        jobs.append(
            DropJob(
                spec=spec.model_dump(mode="json"),
                drop=layout.inbox_prefix(spec.name) + relative,
                etag=etag,
                key=key,
                storage=storage.config(),
                model_storage=model_storage.config(),
                model_set=ref.to_dict(),
            )
        )
    return DropBatch.of(jobs)


def drop_metadata(stats: dict, storage: Storage, latency: float) -> dict:
    """One drop's materialization metadata (``predictions*`` and ``quarantine`` are URLs)."""
    md: dict = {
        "latency_s": round(latency, 3),
        "status": stats["status"],
        **{k: stats.get(k, 0) for k in _COUNTS},
        "instances": stats.get("instances", 1),
        "model_version": stats.get("model_version", ""),
        "script_seconds": stats.get("seconds", {}),
    }
    if stats.get("errors"):
        md["row_errors"] = stats["errors"]
    for i, uri in enumerate(stats.get("output_uris") or []):
        md["predictions" if i == 0 else f"predictions_{i}"] = uri
    if stats.get("quarantine"):
        md["quarantine"] = storage.uri(stats["quarantine"][0])
    if stats.get("error"):
        md["error"] = stats["error"]
    return md


def drop_summary(stats: dict, storage: Storage) -> dict:
    """One drop's entry in a failure's ``per_drop`` (plain JSON)."""
    out = {k: stats.get(k, 0) for k in ("status", *_COUNTS)}
    out["seconds"] = (stats.get("seconds") or {}).get("total")
    if stats.get("output_uris"):
        out["predictions"] = stats["output_uris"]
    if stats.get("quarantine"):
        out["quarantine"] = [storage.uri(q) for q in stats["quarantine"]]
    if stats.get("errors"):
        out["row_errors"] = stats["errors"]
    if stats.get("error"):
        out["error"] = stats["error"]
    return out


@dataclass
class BatchRun:
    """What the job reported for each drop version of a run (a drop it did not report on
    counts as ``failed``), in the run's order."""

    keys: list[str]
    results: dict[str, dict]
    latency: float
    storage: Storage

    @classmethod
    def collect(cls, keys: list[str], messages: list, latency: float, storage: Storage) -> BatchRun:
        wanted = set(keys)
        reported = {m["key"]: m for m in messages if isinstance(m, dict) and m.get("key") in wanted}
        missing = "the scoring job reported nothing for it"
        results = {
            k: reported.get(k) or {"key": k, "status": "failed", "error": missing} for k in keys
        }
        return cls(keys, results, latency, storage)

    @property
    def not_scored(self) -> list[str]:
        """``<key>: quarantined|failed: <why>`` for each drop that was not scored."""
        return [
            f"{k}: {NOT_SCORED[s['status']]}: {s.get('error')}"
            for k, s in self.results.items()
            if s["status"] in NOT_SCORED
        ]

    def metadata(self) -> dict[str, dict]:
        """Each drop version's own metadata."""
        return {k: drop_metadata(s, self.storage, self.latency) for k, s in self.results.items()}

    def totals(self) -> dict:
        """What a run of several drops did, in a few numbers (on each drop's materialization)."""
        stats = list(self.results.values())
        statuses: dict[str, int] = {}
        for s in stats:
            statuses[s["status"]] = statuses.get(s["status"], 0) + 1
        fields = (*_COUNTS[:4], "rows_unknown_series", "unknown_series")
        return {
            "key": batch_key(self.keys),
            "drops": len(stats),
            "job_seconds": round(self.latency, 3),
            **{f: sum(s.get(f, 0) for s in stats) for f in fields},
            "statuses": statuses,
        }

    def summary_line(self) -> str:
        """One log line for the run."""
        if len(self.keys) == 1:
            md = self.metadata()[self.keys[0]]
            return f"{self.keys[0]}: " + ", ".join(f"{k}={v}" for k, v in md.items())
        t = self.totals()
        return (
            f"{len(self.keys)} drops in one job ({self.latency:.1f}s): {t['rows_scored']:,} rows "
            f"scored, {t['rows_quarantined']:,} quarantined, {len(self.not_scored)} drop(s) "
            "not scored"
        )

    def failure(self) -> tuple[str, dict] | None:
        """The run's failure (message, metadata) when some drop was not scored, else None."""
        lines = self.not_scored
        if not lines:
            return None
        more = len(lines) - NAMED_IN_FAILURE
        message = (
            f"{len(lines)} of {len(self.keys)} drop(s) not scored (quarantined or failed): "
            + "; ".join(lines[:NAMED_IN_FAILURE])
            + (f"; and {more} more (see metadata)" if more > 0 else "")
        )
        metadata = {
            "not_scored_drops": lines,
            "per_drop": {k: drop_summary(s, self.storage) for k, s in self.results.items()},
        }
        if len(self.keys) > 1:
            metadata["batch"] = self.totals()
        return message, metadata
