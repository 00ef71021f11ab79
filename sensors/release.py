"""Release trigger: launch the deployment job when the prod alias moves to a new version.

The cursor is the last version a run was launched for; the run key is the version, so a
restarted daemon or a re-evaluated tick never launches a version twice. A rollback (the alias
moving back to an older version) is a move too and is released the same way. Built from the
job, so this module imports no asset module.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from resources.registry import ModelRegistry, RegistryError


def make_release_sensor(
    job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition,
    model_name: str,
    *,
    alias: str = "production",
    run_config: Callable[[str], dict] | None = None,
    name: str | None = None,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """A sensor on ``model_name@alias`` in the ``prod_registry`` resource.

    ``run_config(version) -> dict`` gives the launched run's config (default: none); the run is
    tagged with the model, alias and version either way.
    """

    @dg.sensor(
        name=name or f"{job.name}_on_{alias}",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Launches {job.name} when {model_name}@{alias} moves to a new version.",
    )
    def release_sensor(context: dg.SensorEvaluationContext, prod_registry: ModelRegistry):
        try:
            current = prod_registry.get_alias(model_name, alias)
        except RegistryError as exc:
            return dg.SkipReason(f"registry unavailable: {exc}")
        if current is None:
            return dg.SkipReason(f"{model_name}@{alias} is not set")
        version = str(current.version)
        if context.cursor == version:
            return dg.SkipReason(f"{model_name}@{alias} is still v{version} (released)")
        context.update_cursor(version)
        return dg.RunRequest(
            run_key=f"{model_name}@{alias}:v{version}",
            run_config=run_config(version) if run_config else {},
            tags={"model": model_name, "alias": alias, "model_set_version": version},
        )

    return release_sensor
