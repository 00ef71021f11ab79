"""Batch predictions of each drop landed under ``scoring/<ds>/inbox/``.

``[<ds>, "batch_predictions"]`` is partitioned by drop version (dynamic partitions
``<ds>_scoring_drops``, keys ``<drop>@<etag>``, added by the blob-drop sensor together with the
run request). A run resolves the ``production`` alias in the prod registry once, then runs the
Pipes script ``mlops_assets.batch.score_drop`` on the ``batch_compute`` resource for each of its
drop versions (one, or a range when the sensor batches small drops). Metadata per drop: rows,
series, unknown series, quarantined rows, latency, and a link to the predictions.

A malformed drop is quarantined by the script with a clear error and no predictions; the run
then fails (after scoring the other drops of a batch) so the failure sensor can alert.
"""

import json
import time

import dagster as dg

from mlops_assets.batch import layout
from mlops_assets.batch.score_drop import DropJob
from mlops_assets.evaluation import registered_model_name
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.remote.common import storage_config
from resources.compute import BatchCompute
from resources.registry import ModelRegistry
from resources.storage import Storage
from sensors.blob_drops import BlobDropConfig, make_blob_drop_sensor


class BatchScoringConfig(dg.Config):
    model_version: int | None = None  # pin a prod registry version; default alias production
    alias: str = "production"


def scoring_partitions(spec: DatasetSpec) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}_scoring_drops")


def batch_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_batch_scoring"


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
            f"`{layout.inbox_prefix(spec.name)}`, scored with the production model set."
        ),
    )
    def batch_predictions(
        context: dg.AssetExecutionContext,
        config: BatchScoringConfig,
        storage: Storage,
        prod_storage: Storage,
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
        results, failed = [], []
        for key in context.partition_keys:
            relative, etag = layout.split_key(key)
            job = DropJob(
                dataset=spec.name,
                drop=layout.inbox_prefix(spec.name) + relative,
                etag=etag,
                key=key,
                storage=storage_config(storage),
                model_storage=storage_config(prod_storage),
                model_folder=version.folder,
                model_version=str(version.version),
            )
            t0 = time.perf_counter()
            invocation = batch_compute.run_scoring(context, params_json=job.to_json(), key=key)
            latency = time.perf_counter() - t0
            messages = invocation.get_custom_messages()
            if not messages:
                raise dg.Failure(f"{key}: the scoring script reported nothing")
            stats = messages[-1]
            md = {"latency_s": round(latency, 3), **_metadata(stats, storage)}
            results.append((key, md))
            context.log.info(f"{key}: {json.dumps({k: str(v) for k, v in md.items()})}")
            if stats["status"] == "rejected":
                failed.append(f"{key}: {stats['error']}")
        if failed:
            raise dg.Failure(
                f"{len(failed)} drop(s) quarantined, not scored: " + "; ".join(failed),
                metadata={"quarantined_drops": dg.MetadataValue.json(failed)},
            )
        if len(results) == 1:
            return dg.MaterializeResult(metadata=results[0][1])
        return dg.MaterializeResult(
            metadata={
                "drops": len(results),
                "rows_scored": sum(md["rows_scored"] for _, md in results),
                "per_drop": dg.MetadataValue.json(
                    {k: {m: str(v) for m, v in md.items()} for k, md in results}
                ),
            }
        )

    return batch_predictions


def build_batch_scoring_job(spec: DatasetSpec):
    return dg.define_asset_job(
        batch_job_name(spec),
        selection=dg.AssetSelection.assets(dg.AssetKey([spec.name, "batch_predictions"])),
        partitions_def=scoring_partitions(spec),
        tags={"dataset": spec.name},
        description=f"Score one {spec.name} drop version (or a batch of them).",
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
