"""The production model set (promotion dev -> prod) as an asset, and rollback as an op job.

* ``[<ds>, "production_model_set"]`` (downstream of ``registered_model_set``): copies a dev
  version (manifest + every pack it references, each model verified by sha256) to the prod
  storage, registers it in the prod registry and points ``production`` at it, once its gates
  pass. ``<ds>_promote_to_prod`` is the asset job that materializes it (CD and the docs launch
  it by that name); the QA, deployment and batch-prediction assets are downstream of it, so the
  lineage graph shows the path to production.
* ``<ds>_rollback``: moves an alias back to an earlier version; it creates nothing, so it stays
  an op job.

The work is in ``domain.promotion``; this module wires it to Dagster.
"""

import dagster as dg

from mlops_assets.domain.model_sets import registered_model_name
from mlops_assets.domain.promotion import promote_version, rollback_alias
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.pools import writer_pool
from mlops_assets.storage import Storage
from resources.registry import ModelRegistry

__all__ = [
    "build_production_asset",
    "build_promotion_jobs",
    "production_key",
    "promote_job_name",
    "rollback_job_name",
]


def promote_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_promote_to_prod"


def rollback_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_rollback"


def production_key(spec: DatasetSpec) -> dg.AssetKey:
    return dg.AssetKey([spec.name, "production_model_set"])


class PromoteConfig(dg.Config):
    version: int | None = None
    """Dev version to promote; default: the one the dev alias (champion) points at."""
    alias: str | None = None
    """Prod alias to move; default: the prod registry's (production)."""


def build_production_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=production_key(spec),
        deps=[dg.AssetKey([spec.name, "registered_model_set"])],
        group_name=f"{spec.name}_serving",
        kinds={"mlflow", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "promotion", "dataset": spec.name},
        pool=writer_pool(spec.name),
        description=(
            f"The {spec.name} model set in production: a verified dev version of "
            f"`{registered_model_name(spec)}` copied to prod storage, registered in the prod "
            "registry, alias `production` moved to it."
        ),
    )
    def production_model_set(
        context: dg.AssetExecutionContext,
        config: PromoteConfig,
        storage: dg.ResourceParam[Storage],
        prod_storage: dg.ResourceParam[Storage],
        registry: ModelRegistry,
        prod_registry: ModelRegistry,
    ) -> dg.MaterializeResult:
        prod, stats = promote_version(
            spec, storage, prod_storage, registry, prod_registry, config.version, config.alias
        )
        repaired = stats["packs_repaired"]
        context.log.info(
            f"{prod.name}: dev v{prod.tags.get('dev_version')} -> prod v{prod.version} "
            f"({stats['models_verified']} models verified, {stats['packs_copied']} packs copied, "
            f"{repaired} pack{'' if repaired == 1 else 's'} repaired)"
        )
        return dg.MaterializeResult(
            metadata={
                "prod_version": prod.version,
                "dev_version": prod.tags.get("dev_version", ""),
                "alias": config.alias or prod_registry.alias,
                "registry": prod_registry.location,
                "source": dg.MetadataValue.url(prod.source),
                **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()},
            },
        )

    return production_model_set


def build_promotion_jobs(
    spec: DatasetSpec,
) -> "list[dg.UnresolvedAssetJobDefinition | dg.JobDefinition]":
    """``<ds>_promote_to_prod`` (the production asset's job) and ``<ds>_rollback``."""
    promote_job = dg.define_asset_job(
        promote_job_name(spec),
        selection=dg.AssetSelection.assets(production_key(spec)),
        tags={"dataset": spec.name},
        description=f"Copy a verified {spec.name} model-set version to prod; alias production.",
    )

    class RollbackConfig(dg.Config):
        version: int | None = None
        """Version to point the alias at; default: the previous version that passed its gate."""
        alias: str = "production"
        target: str = "prod"
        """Which registry: prod or dev."""

    @dg.op(
        name=f"{spec.name}_rollback_alias", tags={"dataset": spec.name}, pool=writer_pool(spec.name)
    )
    def rollback(
        context: dg.OpExecutionContext,
        config: RollbackConfig,
        registry: ModelRegistry,
        prod_registry: ModelRegistry,
    ) -> dg.Output:
        if config.target not in ("prod", "dev"):
            raise dg.Failure(f"target must be prod or dev, not {config.target!r}")
        reg = prod_registry if config.target == "prod" else registry
        before, after = rollback_alias(spec, reg, config.alias, config.version)
        context.log.info(f"{config.alias}: v{before} -> v{after} in {reg.location}")
        return dg.Output(after, metadata={"alias": config.alias, "from": before or 0, "to": after})

    @dg.job(
        name=rollback_job_name(spec),
        tags={"dataset": spec.name},
        description=f"Move a {spec.name} alias back to an earlier model-set version.",
    )
    def rollback_job():
        rollback()

    return [promote_job, rollback_job]
