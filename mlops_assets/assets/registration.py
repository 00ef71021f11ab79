"""Registration of model-set versions in the dev registry.

``[<ds>, "registered_model_set"]`` (daily chain): registers the evaluated release set as ONE
version of ``<ds>-models`` in the dev registry (source = the release folder's URI, tags =
as-of date, counts, manifest sha256), with one MLflow run in experiment ``<ds>`` holding the
params, aggregate metrics and the manifest; then points the dev alias (``champion``) at it.
Promotion to prod and rollback are in ``assets.promotion`` (re-exported here).

The work is in ``domain.promotion``; this module wires it to Dagster.
"""

import dagster as dg

from mlops_assets.assets.plots import backtest_plots
from mlops_assets.assets.promotion import (
    build_promotion_jobs,
    promote_job_name,
    rollback_job_name,
)
from mlops_assets.domain.model_sets import (
    ModelSetError,
    ReleaseRecord,
    read_manifest,
    read_release,
    registered_model_name,
    release_pointer,
)
from mlops_assets.domain.promotion import (
    GATE_TAG,
    UNCOMPARED_TAG,
    PromotionError,
    promote_version,
    register_release,
    rollback_alias,
)
from mlops_assets.ml import modelset
from mlops_assets.ml.fitting import TRAINED
from mlops_assets.ml.persistence import ModelIntegrityError
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_partitions, run_as_of
from mlops_assets.pools import writer_pool
from mlops_assets.storage import Storage
from resources.registry import ModelRegistry, ModelSetVersion, RegistryError

__all__ = [
    "GATE_TAG",
    "PromotionError",
    "build_promotion_jobs",
    "build_registration_asset",
    "promote_job_name",
    "promote_version",
    "register_release",
    "rollback_alias",
    "rollback_job_name",
]


def registration_metadata(
    version: ModelSetVersion, created: bool, registry: ModelRegistry, phases: Phases
) -> dict:
    return {
        "registered_model": version.name,
        "version": version.version,
        "created": created,
        "alias": registry.alias,
        "registry": registry.location,
        "source": dg.MetadataValue.url(version.source),
        "manifest_sha256": version.tags.get("manifest_sha256", ""),
        "mlflow_run_id": version.run_id or "",
        **phases.metadata(),
        **{k: v for k, v in version.tags.items() if k.startswith(("count_", "gate_"))},
        UNCOMPARED_TAG: version.tags.get(UNCOMPARED_TAG, ""),
    }


_PLOTTED = [
    "status",
    "smape",
    "naive_smape",
    "seasonal_naive_smape",
    "mae_by_step",
    "naive_mae_by_step",
    "seasonal_naive_mae_by_step",
]


def release_plots(storage: Storage, spec: DatasetSpec, release: ReleaseRecord) -> dict:
    """The registered set's families and its backtest distributions over every series with a
    trained model (promoted challengers and carried champions alike)."""
    manifest = read_manifest(storage, release.ref)
    md: dict = {"families": modelset.counts(manifest, "family")}
    if all(c in manifest.column_names for c in _PLOTTED):
        df = manifest.select(_PLOTTED).to_pandas()
        plots = backtest_plots(df[df.status == TRAINED], spec, "registered set")
        md.update({key: dg.MetadataValue.md(plot) for key, plot in plots.items()})
    return md


def build_registration_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "registered_model_set"],
        deps=[dg.AssetKey([spec.name, "evaluation"])],
        group_name=f"{spec.name}_training",
        partitions_def=as_of_partitions(spec),
        kinds={"mlflow", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "registry", "dataset": spec.name},
        pool=writer_pool(spec.name),
        description=(
            f"The evaluated {spec.name} model set registered as ONE version of "
            f"`{registered_model_name(spec)}` in the dev registry, alias moved to it."
        ),
    )
    def registered_model_set(
        context: dg.AssetExecutionContext,
        storage: dg.ResourceParam[Storage],
        registry: ModelRegistry,
    ) -> dg.MaterializeResult:
        as_of = run_as_of(context, spec)
        phases = Phases()
        try:
            release = read_release(storage, release_pointer(spec, as_of))
            if release is None:
                raise dg.Failure(f"no evaluated {spec.name} model set for {as_of}")
            if not release.passed:
                raise dg.Failure(f"the release of {as_of} failed its quality gate; not registering")
            with phases("register"):
                version, created = register_release(
                    storage, registry, spec, release, as_of, context.run.run_id, registry.alias
                )
            with phases("plots"):
                plots = release_plots(storage, spec, release)
        except (RegistryError, ModelSetError, ModelIntegrityError) as exc:
            raise dg.Failure(str(exc)) from exc
        return dg.MaterializeResult(
            metadata={**registration_metadata(version, created, registry, phases), **plots}
        )

    return registered_model_set
