"""Batch predictions of each drop landed under ``scoring/<ds>/inbox/``.

``[<ds>, "batch_predictions"]`` is partitioned by drop version (dynamic partitions
``<ds>_scoring_drops``, keys ``<drop>@<etag>``, added by the blob-drop sensor together with the
run request). A run resolves the ``production`` alias in the prod registry once, then runs the
Pipes script ``mlops_assets.jobs.score_drops`` ONCE on the ``batch_compute`` resource for all of
its drop versions (one, or a range when the sensor batches small drops or a backfill runs): one
subprocess or one Azure ML job per run, not per drop. The script reports one message per drop
(matched by ``key``). Each drop version's materialization carries that drop's metadata: rows,
series, unknown series, quarantined rows, latency, and a link to the predictions; in a run of
several drops also ``batch``, the run's totals (drops, rows, statuses, job seconds). Per-drop
metadata goes through ``add_asset_metadata(..., partition_key=...)``: the metadata of a range's
``MaterializeResult`` is copied onto every partition, so a per-drop table there would grow as
the square of the drops.

A malformed drop is quarantined by the script with a clear error and no predictions; the run
then fails, after scoring the other drops of a batch, naming each drop that was not scored
(every drop's summary is in the failure's ``per_drop`` metadata), so the failure sensor can
alert.
"""

import hashlib
import json
import time

import dagster as dg

from mlops_assets.assets.evaluation import registered_model_name
from mlops_assets.domain import batch_layout as layout
from mlops_assets.jobs.score_drops import DropBatch, DropJob, params_json
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage
from resources.compute import BatchCompute
from resources.registry import ModelRegistry
from sensors.blob_drops import BlobDropConfig, make_blob_drop_sensor

NOT_SCORED = {"rejected": "quarantined", "failed": "failed"}  # statuses that fail the run
NAMED_IN_FAILURE = 20  # drops named in the failure's text; all of them are in its metadata


class BatchScoringConfig(dg.Config):
    model_version: int | None = None  # pin a prod registry version; default alias production
    alias: str = "production"


def scoring_partitions(spec: DatasetSpec) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}_scoring_drops")


def batch_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_batch_scoring"


def batch_key(keys: list[str]) -> str:
    """The compute key of a run's drops: the drop version itself, or ``batch:<digest>`` of
    all of them (stable, so a retry of the run gets the same deterministic AML job name)."""
    if len(keys) == 1:
        return keys[0]
    return "batch:" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def batch_params_name(spec: DatasetSpec, run_id: str) -> str:
    """Where a run's params go when they are too large for an environment variable."""
    return f"{layout.root(spec.name)}batches/{run_id}.json"


def _metadata(stats: dict, storage: Storage) -> dict:
    md: dict = {
        "status": stats["status"],
        "rows_in": stats.get("rows_in", 0),
        "rows_scored": stats.get("rows_scored", 0),
        "rows_failed": stats.get("rows_failed", 0),
        "rows_quarantined": stats.get("rows_quarantined", 0),
        "series": stats.get("series", 0),
        "unknown_series": stats.get("unknown_series", 0),
        "instances": stats.get("instances", 1),
        "model_version": stats.get("model_version", ""),
        "script_seconds": dg.MetadataValue.json(stats.get("seconds", {})),
    }
    if stats.get("errors"):
        md["row_errors"] = dg.MetadataValue.json(stats["errors"])
    for i, uri in enumerate(stats.get("output_uris") or []):
        md["predictions" if i == 0 else f"predictions_{i}"] = dg.MetadataValue.url(uri)
    if stats.get("quarantine"):
        md["quarantine"] = dg.MetadataValue.url(storage.uri(stats["quarantine"][0]))
    if stats.get("error"):
        md["error"] = stats["error"]
    return md


def _drop_summary(stats: dict, storage: Storage) -> dict:
    """One drop's entry in ``per_drop`` (plain JSON)."""
    out = {
        k: stats.get(k, 0)
        for k in (
            "status",
            "rows_in",
            "rows_scored",
            "rows_failed",
            "rows_quarantined",
            "series",
            "unknown_series",
        )
    }
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


def _missing(key: str) -> dict:
    return {"key": key, "status": "failed", "error": "the scoring job reported nothing for it"}


def _batch_totals(results: dict[str, dict], key: str, latency: float) -> dict:
    """What a run of several drops did, in a few numbers (on each drop's materialization)."""
    stats = list(results.values())
    statuses: dict[str, int] = {}
    for s in stats:
        statuses[s["status"]] = statuses.get(s["status"], 0) + 1
    totals = {
        f: sum(s.get(f, 0) for s in stats)
        for f in (
            "rows_in",
            "rows_scored",
            "rows_failed",
            "rows_quarantined",
            "rows_unknown_series",
            "unknown_series",
        )
    }
    return {
        "key": key,
        "drops": len(stats),
        "job_seconds": round(latency, 3),
        **totals,
        "statuses": statuses,
    }


def build_batch_scoring_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    partitions = scoring_partitions(spec)

    @dg.asset(
        key=[spec.name, "batch_predictions"],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=f"{spec.name}_scoring",
        kinds={"python", "parquet"},
        owners=["team:ml-platform"],
        tags={"stage": "batch_scoring", "dataset": spec.name},
        description=(
            f"Predictions for each {spec.name} drop version under "
            f"`{layout.inbox_prefix(spec.name)}`, scored with the production model set "
            "(one scoring job per run, for all of its drop versions)."
        ),
    )
    def batch_predictions(
        context: dg.AssetExecutionContext,
        config: BatchScoringConfig,
        storage: dg.ResourceParam[Storage],
        prod_storage: dg.ResourceParam[Storage],
        prod_registry: ModelRegistry,
        batch_compute: BatchCompute,
    ) -> dg.MaterializeResult:
        name = registered_model_name(spec)
        version = (
            prod_registry.get_version(name, config.model_version)
            if config.model_version is not None
            else prod_registry.get_alias(name, config.alias)
        )
        if version is None or not version.folder:
            raise dg.Failure(
                f"no {config.alias!r} model set of {name} in {prod_registry.location}: "
                "promote one first"
            )
        keys = list(context.partition_keys)
        jobs = []
        for key in keys:
            relative, etag = layout.split_key(key)
            jobs.append(
                DropJob(
                    dataset=spec.name,
                    drop=layout.inbox_prefix(spec.name) + relative,
                    etag=etag,
                    key=key,
                    storage=storage.config(),
                    model_storage=prod_storage.config(),
                    model_folder=version.folder,
                    model_version=str(version.version),
                )
            )
        params = params_json(DropBatch.of(jobs), storage, batch_params_name(spec, context.run_id))
        if len(keys) > 1:
            context.log.info(f"scoring {len(keys)} drop versions in one job")
        bkey = batch_key(keys)
        t0 = time.perf_counter()
        invocation = batch_compute.run_scoring(context, params_json=params, key=bkey)
        latency = time.perf_counter() - t0

        wanted = set(keys)
        reported = {
            m["key"]: m
            for m in invocation.get_custom_messages()
            if isinstance(m, dict) and m.get("key") in wanted
        }
        results = {k: reported.get(k) or _missing(k) for k in keys}
        not_scored = [
            f"{k}: {NOT_SCORED[s['status']]}: {s.get('error')}"
            for k, s in results.items()
            if s["status"] in NOT_SCORED
        ]
        metadata = {
            k: {"latency_s": round(latency, 3), **_metadata(st, storage)}
            for k, st in results.items()
        }
        if len(keys) == 1:
            md = metadata[keys[0]]
            context.log.info(f"{keys[0]}: {json.dumps({k: str(v) for k, v in md.items()})}")
            totals = {}
        else:
            totals = {"batch": dg.MetadataValue.json(_batch_totals(results, bkey, latency))}
            b = totals["batch"].data
            context.log.info(
                f"{len(keys)} drops in one job ({latency:.1f}s): {b['rows_scored']:,} rows "
                f"scored, {b['rows_quarantined']:,} quarantined, {len(not_scored)} drop(s) "
                "not scored"
            )
        if not_scored:
            for line in not_scored:
                context.log.error(line)
            named = "; ".join(not_scored[:NAMED_IN_FAILURE])
            more = len(not_scored) - NAMED_IN_FAILURE
            raise dg.Failure(
                f"{len(not_scored)} of {len(keys)} drop(s) not scored (quarantined or failed): "
                + named
                + (f"; and {more} more (see metadata)" if more > 0 else ""),
                metadata={
                    "not_scored_drops": dg.MetadataValue.json(not_scored),
                    "per_drop": dg.MetadataValue.json(
                        {k: _drop_summary(st, storage) for k, st in results.items()}
                    ),
                    **totals,
                },
            )
        if len(keys) == 1:
            return dg.MaterializeResult(metadata=metadata[keys[0]])
        # Each drop version's own metadata on its partition's materialization; the result's
        # metadata (the run's totals, small) goes on every partition of the range.
        for key, md in metadata.items():
            context.add_asset_metadata(md, partition_key=key)
        return dg.MaterializeResult(metadata=totals)

    return batch_predictions


def build_batch_scoring_job(spec: DatasetSpec):
    return dg.define_asset_job(
        batch_job_name(spec),
        selection=dg.AssetSelection.assets(dg.AssetKey([spec.name, "batch_predictions"])),
        partitions_def=scoring_partitions(spec),
        tags={"dataset": spec.name},
        description=f"Score one {spec.name} drop version (or a batch of them, in one job).",
    )


def batch_scoring_definitions(
    spec: DatasetSpec, sensor_config: BlobDropConfig | None = None
) -> dg.Definitions:
    job = build_batch_scoring_job(spec)
    sensor = make_blob_drop_sensor(
        job,
        scoring_partitions(spec),
        sensor_config or BlobDropConfig(prefix=layout.inbox_prefix(spec.name)),
        name=f"{spec.name}_scoring_drops_sensor",
    )
    return dg.Definitions(assets=[build_batch_scoring_asset(spec)], jobs=[job], sensors=[sensor])
