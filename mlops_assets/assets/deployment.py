"""QA and release of a production model set to the online endpoint.

* ``[<ds>, "qa"]``: ``domain.serving_qa`` on the prod version (default: the prod registry's
  ``production`` version): an ephemeral local endpoint, smoke tests, a short load profile and a
  sizing recommendation. Any smoke failure fails the asset.
* ``[<ds>, "deployment"]``: releases the version through the ``endpoint`` resource:
  locally the running endpoint's pointer is switched (hot swap); on Azure a blue/green
  Kubernetes deployment with staged traffic, health checks and automatic rollback.

``<ds>_deploy`` runs both; ``sensors.release`` launches it when ``production`` moves.
No ``from __future__ import annotations`` here: Dagster reads the Config classes' annotations.
"""

from dataclasses import replace

import dagster as dg
from pydantic import Field

from mlops_assets.assets.promotion import production_key
from mlops_assets.domain.model_sets import (
    ModelSetError,
    read_manifest,
    registered_model_name,
    write_bundle,
)
from mlops_assets.domain.serving_qa import (
    QAError,
    QAReport,
    QASettings,
    recommend,
    run_qa,
    smoke_records,
)
from mlops_assets.ml.persistence import ModelIntegrityError
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage
from resources.endpoints import (
    EndpointResource,
    ModelSetRelease,
    ReleaseError,
)
from resources.registry import ModelRegistry, ModelSetVersion

__all__ = ["build_deployment_assets", "deploy_job_name", "deploy_run_config", "recommend"]


def deploy_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_deploy"


def qa_key(spec: DatasetSpec) -> dg.AssetKey:
    return dg.AssetKey([spec.name, "qa"])


def deployment_key(spec: DatasetSpec) -> dg.AssetKey:
    return dg.AssetKey([spec.name, "deployment"])


def deploy_run_config(spec: DatasetSpec, version: str | int) -> dict:
    """Run config of ``<ds>_deploy`` for one prod version (what the release sensor sends)."""
    return {
        "ops": {
            key.to_python_identifier(): {"config": {"version": int(version)}}
            for key in (qa_key(spec), deployment_key(spec))
        }
    }


def resolve_version(
    spec: DatasetSpec, registry: ModelRegistry, version: int | None
) -> ModelSetVersion:
    """Prod ``version`` (default: the alias's), which must carry a verifiable ref."""
    name = registered_model_name(spec)
    mv = registry.get_version(name, version) if version else registry.get_alias(name)
    if mv is None:
        raise dg.Failure(
            f"{name}: no version {version or 'under alias ' + registry.alias} in "
            f"{registry.location}"
        )
    try:
        mv.ref  # noqa: B018 - the folder and digest tags must make a ref
    except ModelSetError as exc:
        raise dg.Failure(f"{name} v{mv.version}: {exc}") from exc
    return mv


def qa_metadata(mv: ModelSetVersion, report: QAReport) -> dict:
    profile, rec = report.profile, report.recommendation
    return {
        "version": mv.version,
        "folder": mv.ref.folder,
        "series": report.series,
        "server_start_s": round(report.phases.seconds.get("server_start", 0.0), 2),
        "smoke": dg.MetadataValue.json(report.smoke),
        "load_profile": dg.MetadataValue.json(profile),
        "throughput_rps": max(p["achieved_rps"] or 0 for p in profile),
        "p99_ms_at_max_concurrency": profile[-1]["p99_ms"],
        "server_rss_mb": round(report.rss_bytes / 2**20, 1),
        "cache": dg.MetadataValue.json(report.cache),
        "recommendation": dg.MetadataValue.json(rec),
        "recommended_instance_count": rec["instance_count"],
        **report.phases.metadata(),
    }


def release_metadata(
    spec: DatasetSpec, mv: ModelSetVersion, endpoint: EndpointResource, report: dict
) -> dict:
    """What the deployment released (model set, registry version, alias) and where."""
    where = endpoint.where(spec.name, report)
    md: dict = {
        "released": f"{mv.name} v{mv.version} (model set {mv.ref.version})",
        "model_set_version": mv.ref.version,
        "registry_version": mv.version,
        "alias": ", ".join(mv.aliases) or "none (a version chosen in the run config)",
        "folder": mv.ref.folder,
        "endpoint": endpoint.describe(),
        **{k: v for k, v in where.items() if v and k != "url"},
        "report": dg.MetadataValue.json(report),
    }
    if where.get("url"):
        md["url"] = dg.MetadataValue.url(where["url"])
    return md


def build_deployment_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    class QAConfig(dg.Config):
        version: int | None = None
        """Prod registry version to test; default: the one ``production`` points at."""
        concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16])
        seconds_per_level: float = 3.0
        target_rps: float = 200.0
        p99_target_ms: float = 100.0
        workers: int = 1

    class DeployConfig(dg.Config):
        version: int | None = None
        """Prod registry version to release; default: the one ``production`` points at."""

    @dg.asset(
        key=qa_key(spec),
        deps=[production_key(spec)],
        group_name=f"{spec.name}_serving",
        kinds={"azureml", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "deployment", "dataset": spec.name},
        description=(
            f"QA of a prod {spec.name} model set on an ephemeral local endpoint: smoke tests "
            "and a short load profile with a sizing recommendation."
        ),
    )
    def serving_qa(
        context: dg.AssetExecutionContext,
        config: QAConfig,
        prod_storage: dg.ResourceParam[Storage],
        prod_registry: ModelRegistry,
    ) -> dg.MaterializeResult:
        mv = resolve_version(spec, prod_registry, config.version)
        try:
            report = run_qa(
                spec, prod_storage, mv.ref, QASettings(**config.model_dump(exclude={"version"}))
            )
        except QAError as exc:
            smoke = {"smoke": dg.MetadataValue.json(exc.smoke)} if exc.smoke else None
            raise dg.Failure(str(exc), metadata=smoke) from exc
        except (ModelSetError, ModelIntegrityError) as exc:
            raise dg.Failure(f"v{mv.version}: {exc}") from exc
        context.log.info(f"v{mv.version}: smoke passed; recommendation {report.recommendation}")
        return dg.MaterializeResult(metadata=qa_metadata(mv, report))

    @dg.asset(
        key=deployment_key(spec),
        deps=[qa_key(spec), production_key(spec)],
        group_name=f"{spec.name}_serving",
        kinds={"azureml", "kubernetes"},
        owners=["team:ml-platform"],
        tags={"stage": "deployment", "dataset": spec.name},
        description=(
            f"The {spec.name} model set serving on the online endpoint (local: pointer switch "
            "with hot swap; Azure: blue/green with staged traffic and automatic rollback)."
        ),
    )
    def serving_deployment(
        context: dg.AssetExecutionContext,
        config: DeployConfig,
        prod_storage: dg.ResourceParam[Storage],
        prod_registry: ModelRegistry,
        endpoint: EndpointResource,
    ) -> dg.MaterializeResult:
        mv = resolve_version(spec, prod_registry, config.version)
        try:
            manifest = read_manifest(prod_storage, mv.ref)
            release = ModelSetRelease(
                spec.name, mv.ref, mv.source, smoke_records(spec, manifest, 5)
            )
            if endpoint.needs_bundle():
                bundle = write_bundle(prod_storage, mv.ref)
                release = replace(release, bundle=bundle)
                context.log.info(f"the set as one folder: {prod_storage.uri(bundle)}")
            report = endpoint.release(release, log=context.log.info)
        except (ReleaseError, ModelSetError, ModelIntegrityError) as exc:
            raise dg.Failure(str(exc)) from exc
        return dg.MaterializeResult(metadata=release_metadata(spec, mv, endpoint, report))

    return [serving_qa, serving_deployment]
