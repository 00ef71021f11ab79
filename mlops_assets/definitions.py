"""The code location: every asset, check, job, schedule, sensor and resource, for each spec."""

from __future__ import annotations

import functools
import os

import dagster as dg

from mlops_assets.assets.batch_scoring import batch_scoring_definitions
from mlops_assets.assets.deployment import (
    build_deployment_assets,
    deploy_job_name,
    deploy_run_config,
)
from mlops_assets.assets.evaluation import build_evaluation_asset
from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.assets.monitoring import (
    accuracy_key,
    build_forecast_accuracy_asset,
    build_inference_summary_asset,
)
from mlops_assets.assets.promotion import build_production_asset, build_promotion_jobs
from mlops_assets.assets.registration import build_registration_asset
from mlops_assets.assets.reports import build_explorer_asset
from mlops_assets.assets.training import build_training_asset
from mlops_assets.domain.model_sets import registered_model_name
from mlops_assets.heap import freeze_loaded, retain_freed_memory
from mlops_assets.logging_setup import silence_third_party_warnings
from mlops_assets.ml.spec import DatasetSpec, bundled_specs
from mlops_assets.partitions import as_of_partitions
from mlops_assets.profiles import current_profile, project_home, resources_for
from resources.alerts import alerts_from_env
from sensors.degradation import make_degradation_sensor
from sensors.failures import make_failure_sensor
from sensors.release import make_release_sensor
from sensors.schedules import make_daily_sensor


def daily_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_daily_retrain"


def dataset_definitions(spec: DatasetSpec) -> dg.Definitions:
    """The lifecycle of one dataset: its assets, checks and jobs, the daily retrain's sensor
    (it adds each day's as-of partition) and the promotion to production."""
    assets = [
        build_ingestion_asset(spec),
        build_training_asset(spec),
        build_evaluation_asset(spec),
        build_registration_asset(spec),
        build_explorer_asset(spec),
    ]
    daily = dg.define_asset_job(
        daily_job_name(spec),
        selection=dg.AssetSelection.assets(*assets),
        description=(
            f"The daily {spec.name} chain in one run: ingest new drops, validate, train every "
            "series, evaluate against the champions, register (blocking checks stop it) and "
            "write the per-series explorer of the evaluated set."
        ),
        tags={"dataset": spec.name},
    )
    accuracy = build_forecast_accuracy_asset(spec)
    return dg.Definitions(
        assets=[*assets, accuracy, build_production_asset(spec)],
        jobs=[daily, *build_promotion_jobs(spec)],
        sensors=[
            make_daily_sensor(daily, as_of_partitions(spec), hour=schedule_hour()),
            make_degradation_sensor(spec, daily, accuracy.key),
        ],
    )


def serving_definitions(spec: DatasetSpec) -> dg.Definitions:
    """Real-time serving of one dataset: QA + release assets, their job and release sensor."""
    assets = build_deployment_assets(spec)
    summary = build_inference_summary_asset(spec)
    deploy = dg.define_asset_job(
        deploy_job_name(spec),
        selection=dg.AssetSelection.assets(*assets),
        description=f"QA a prod {spec.name} model set on a local endpoint, then release it.",
        tags={"dataset": spec.name},
    )
    return dg.Definitions(
        assets=[*assets, summary],
        jobs=[deploy],
        sensors=[
            make_release_sensor(
                deploy,
                registered_model_name(spec),
                run_config=functools.partial(deploy_run_config, spec),
            )
        ],
    )


def schedule_hour() -> int:
    """Hour (UTC) of the daily retrain: ``MLOPS_RETRAIN_HOUR``, default 2."""
    return int(os.environ.get("MLOPS_RETRAIN_HOUR", "2"))


def build_definitions(specs: list[DatasetSpec], resources: dict) -> dg.Definitions:
    """Every dataset's definitions with ``resources`` (``alerts`` from the environment unless
    given: ``resources.alerts.alerts_from_env``)."""
    resources = {"alerts": alerts_from_env(), **resources}
    # The accuracy of each dataset is measured when its curated actuals change (eager), so the
    # degradation sensor sees it without anyone launching it.
    monitoring = dg.AutomationConditionSensorDefinition(
        "mlops_monitoring_automation",
        target=dg.AssetSelection.assets(*(accuracy_key(s) for s in specs)),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        description="Materializes <dataset>/forecast_accuracy after its curated data changes.",
    )
    return dg.Definitions.merge(
        *(dataset_definitions(s) for s in specs),
        *(serving_definitions(s) for s in specs),
        *(batch_scoring_definitions(s) for s in specs),
        dg.Definitions(resources=resources, sensors=[make_failure_sensor(), monitoring]),
    )


@dg.definitions
def defs() -> dg.Definitions:
    silence_third_party_warnings()  # the code server's log shows what a user can act on
    retain_freed_memory()  # steps reuse their large arrays' memory (see heap)
    built = build_definitions(bundled_specs(), resources_for(current_profile(), project_home()))
    freeze_loaded()  # the code location lives as long as the process: out of the GC's scans
    return built
