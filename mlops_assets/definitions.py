"""The code location: every asset, check, job, schedule, sensor and resource, for each spec."""

from __future__ import annotations

import dagster as dg

from mlops_assets.ingestion import build_ingestion_asset
from mlops_assets.ml.spec import DatasetSpec, bundled_specs
from mlops_assets.partitions import as_of_days
from mlops_assets.profiles import current_profile, project_home, resources_for
from mlops_assets.training import build_training_asset


def daily_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_daily_retrain"


def dataset_definitions(spec: DatasetSpec) -> dg.Definitions:
    """The lifecycle of one dataset: its assets, checks and jobs."""
    assets = [build_ingestion_asset(spec), build_training_asset(spec)]
    daily = dg.define_asset_job(
        daily_job_name(spec),
        selection=dg.AssetSelection.key_prefixes([spec.name]),
        partitions_def=as_of_days,
        description=(
            f"The daily {spec.name} chain in one run: ingest new drops, validate, train every "
            "series, evaluate against the champions, register (blocking checks stop it)."
        ),
        tags={"dataset": spec.name},
    )
    return dg.Definitions(assets=assets, jobs=[daily])


def build_definitions(specs: list[DatasetSpec], resources: dict) -> dg.Definitions:
    return dg.Definitions.merge(
        *(dataset_definitions(s) for s in specs), dg.Definitions(resources=resources)
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(bundled_specs(), resources_for(current_profile(), project_home()))
