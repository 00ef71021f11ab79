"""The closed monitoring loop: a degraded series is retrained alone, and people are told.

The sensor watches each dataset's ``forecast_accuracy`` asset. For a new materialization that
names degraded series, it requests one run of the dataset's daily job for that as-of date with
the training asset configured to train only those series (``TrainConfig.series``: the others
are carried over from the latest set), keyed by the materialization so it runs once, and
sends an alert through the ``alerts`` resource.
"""

from __future__ import annotations

import hashlib

import dagster as dg

from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_request
from resources.alerts import Alert, AlertChannel

TRAINING_OP = "{name}__candidate_models"


def retrain_run_config(spec: DatasetSpec, series: list[str]) -> dict:
    """The daily job's run config that trains ``series`` only."""
    op = TRAINING_OP.format(name=spec.name)
    return {"ops": {op: {"config": {"series": list(series), "changed_only": False}}}}


def degradation_alert(
    spec: DatasetSpec, as_of: str, series: list[str], retrain: bool, link: str | None
) -> Alert:
    shown = series[:20]
    more = len(series) - len(shown)
    return Alert(
        title=f"{spec.name}: {len(series)} series degraded in production",
        facts={
            "dataset": spec.name,
            "as of": as_of,
            "threshold": f"production MAE > {spec.monitoring.degraded_ratio} x backtest MAE "
            f"over at least {spec.monitoring.min_points} actuals",
            "action": "retrain of these series requested" if retrain else "alert only",
        },
        reasons=[*shown, *([f"and {more} more"] if more > 0 else [])],
        link=link,
    )


def make_degradation_sensor(
    spec: DatasetSpec,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    accuracy_key: dg.AssetKey,
    degraded_key: str = "degraded_series",
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor that turns each new ``accuracy_key`` materialization naming degraded series
    into a retrain of those series (``job``, one run per materialization) and an alert."""

    @dg.sensor(
        name=f"{spec.name}_degraded_series_retrain",
        job=job,
        minimum_interval_seconds=300,
        default_status=default_status,
        description=f"Retrains only the {spec.name} series the forecast_accuracy asset found "
        "degraded (spec monitoring section), and alerts.",
    )
    def degraded_series_retrain(context: dg.SensorEvaluationContext, alerts: AlertChannel):
        records = context.instance.fetch_materializations(accuracy_key, limit=1, ascending=False)
        if not records.records:
            return dg.SkipReason(f"{accuracy_key.to_user_string()} was never materialized")
        record = records.records[0]
        if context.cursor and int(context.cursor) >= record.storage_id:
            return dg.SkipReason("no new accuracy measurement")
        mat = record.asset_materialization
        meta = mat.metadata if mat is not None else {}
        found = meta[degraded_key].value if degraded_key in meta else []
        degraded = [str(s) for s in found] if isinstance(found, list) else []
        as_of = mat.partition if mat is not None and mat.partition else ""
        cursor = str(record.storage_id)
        if not degraded:
            return dg.SensorResult(skip_reason="no degraded series", cursor=cursor)
        series = degraded[: spec.monitoring.max_series]
        retrain = spec.monitoring.retrain and bool(as_of)
        alerts.send(degradation_alert(spec, as_of, series, retrain, alerts.link(record.run_id)))
        context.log.info(f"{len(degraded)} degraded {spec.name} series at {as_of}")
        if not retrain:
            return dg.SensorResult(skip_reason="retrain disabled by the spec", cursor=cursor)
        digest = hashlib.sha256("\n".join(series).encode()).hexdigest()[:12]
        request = dg.RunRequest(
            run_key=f"{spec.name}-degraded-{record.storage_id}-{digest}",
            partition_key=as_of,
            run_config=retrain_run_config(spec, series),
            tags={"dataset": spec.name, "mlops/trigger": "degraded_series"},
        )
        # The date was materialized, so it exists; adding it again keeps the run launchable
        # even if someone deleted the partition since.
        return dg.SensorResult(
            run_requests=[request],
            dynamic_partitions_requests=[as_of_request(spec, [as_of])],
            cursor=cursor,
        )

    return degraded_series_retrain
