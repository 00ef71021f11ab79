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

import dagster as dg

from mlops_assets.assets.evaluation import registered_model_name
from mlops_assets.assets.promotion import production_key
from mlops_assets.domain import batch_layout as layout
from mlops_assets.domain.batch_runs import (
    BatchRun,
    batch_key,
    batch_params_name,
    drop_batch,
    production_model_set,
)
from mlops_assets.domain.model_sets import ModelSetError
from mlops_assets.jobs.batch_params import params_json
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage
from resources.compute import BatchCompute
from resources.registry import ModelRegistry
from sensors.blob_drops import BlobDropConfig, make_blob_drop_sensor

__all__ = ["batch_key", "batch_scoring_definitions", "build_batch_scoring_asset"]
URL_KEYS = ("predictions", "quarantine")


class BatchScoringConfig(dg.Config):
    model_version: int | None = None  # pin a prod registry version; default alias production
    alias: str = "production"


def scoring_partitions(spec: DatasetSpec) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}_scoring_drops")


def batch_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_batch_scoring"


def _dagster_metadata(plain: dict) -> dict:
    """Plain metadata with its URLs and JSON values typed for the Dagster UI."""
    out = {}
    for k, v in plain.items():
        if k.startswith(URL_KEYS) and isinstance(v, str):
            v = dg.MetadataValue.url(v)
        elif isinstance(v, dict | list):
            v = dg.MetadataValue.json(v)
        out[k] = v
    return out


def build_batch_scoring_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    partitions = scoring_partitions(spec)

    @dg.asset(
        key=[spec.name, "batch_predictions"],
        deps=[production_key(spec)],
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
        keys = list(context.partition_keys)
        try:
            ref = production_model_set(
                prod_registry, registered_model_name(spec), config.model_version, config.alias
            )
        except ModelSetError as e:
            raise dg.Failure(str(e)) from None
        batch = drop_batch(spec, keys, storage, prod_storage, ref)
        params = params_json(batch, storage, batch_params_name(spec, context.run.run_id))
        context.log.info(f"scoring {len(keys)} drop version(s) in one job with {ref.to_json()}")
        phases = Phases()
        with phases("job"):
            invocation = batch_compute.run_scoring(context, params_json=params, key=batch_key(keys))
        messages = invocation.get_custom_messages()
        run = BatchRun.collect(keys, messages, phases.seconds["job"], storage)
        context.log.info(run.summary_line())
        failure = run.failure()
        if failure is not None:
            for line in run.not_scored:
                context.log.error(line)
            raise dg.Failure(failure[0], metadata=_dagster_metadata(failure[1]))
        metadata = run.metadata()
        if len(keys) == 1:
            return dg.MaterializeResult(metadata=_dagster_metadata(metadata[keys[0]]))
        # Each drop version's own metadata on its partition's materialization; the result's
        # metadata (the run's totals, small) goes on every partition of the range.
        for key, md in metadata.items():
            context.add_asset_metadata(_dagster_metadata(md), partition_key=key)
        return dg.MaterializeResult(metadata=_dagster_metadata({"batch": run.totals()}))

    return batch_predictions


def build_batch_scoring_job(spec: DatasetSpec):
    return dg.define_asset_job(
        batch_job_name(spec),
        selection=dg.AssetSelection.assets(dg.AssetKey([spec.name, "batch_predictions"])),
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
