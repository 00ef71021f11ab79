"""Registration, promotion dev -> prod and rollback of model-set versions.

* ``[<ds>, "registered_model_set"]`` (daily chain): registers the evaluated release set as ONE
  version of ``<ds>-models`` in the dev registry (source = the release folder's URI, tags =
  as-of date, counts, manifest sha256), with one MLflow run in experiment ``<ds>`` holding the
  params, aggregate metrics and the manifest; then points the dev alias (``champion``) at it.
* ``<ds>_promote_to_prod``: copies a dev version (manifest + every pack it references, each
  model verified by sha256) to the prod storage, registers it in the prod registry and points
  ``production`` at it, once its gates pass.
* ``<ds>_rollback``: moves an alias back to an earlier version (no data moves).

Every registry call here is O(1) in the number of series; copies are O(packs).
"""

import time

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.assets.evaluation import (
    DECISIONS_FILE,
    registered_model_name,
    release_pointer,
)
from mlops_assets.assets.training import read_pointer
from mlops_assets.ml import modelset, persistence
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_days
from mlops_assets.storage import Storage
from resources.registry import ModelRegistry, ModelSetVersion, RegistryError, RunRecord

GATE_TAG = "quality_gate"


class PromotionError(RuntimeError):
    """A version did not pass its promotion gates."""


def promote_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_promote_to_prod"


def rollback_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_rollback"


def _counts(manifest: pa.Table) -> dict[str, int]:
    out = {f"status_{k}": v for k, v in modelset.counts(manifest, "status").items()}
    if "decision" in manifest.column_names:
        out.update({f"decision_{k}": v for k, v in modelset.counts(manifest, "decision").items()})
    out["series"] = manifest.num_rows
    out["with_model"] = int(pc.sum(pc.is_valid(manifest["artifact"])).as_py() or 0)
    return out


def register_release(
    storage: Storage,
    registry: ModelRegistry,
    spec: DatasetSpec,
    release: dict,
    as_of: str,
    run_id: str = "",
    alias: str | None = None,
) -> tuple[ModelSetVersion, bool]:
    """Register the release set of ``release`` (a release pointer) as one version.

    Returns (version, created): a release registered before is returned as it is.
    """
    name = registered_model_name(spec)
    folder = release["folder"]
    existing = registry.find_version(name, "folder", folder)
    if existing is not None:
        if alias and alias not in existing.aliases:
            registry.set_alias(name, alias, existing.version)
        return existing, False
    data = storage.read_bytes(f"{folder}/{modelset.MANIFEST}")
    digest = persistence.sha256(data)
    if digest != release.get("manifest_sha256", digest):
        raise PromotionError(f"{folder}: manifest sha256 {digest} differs from the release's")
    manifest = modelset.read_manifest(data)
    counts = _counts(manifest)
    quality = release.get("quality", {})
    tags = {
        "dataset": spec.name,
        "as_of": as_of,
        "folder": folder,
        "manifest_sha256": digest,
        "candidate_version": str(release.get("version", "")),
        "champion_version": str(release.get("champion_version") or ""),
        "dagster_run_id": run_id,
        GATE_TAG: "passed" if quality.get("passed", True) else "failed",
        **{f"count_{k}": str(v) for k, v in counts.items()},
    }
    artifacts = {modelset.MANIFEST: data}
    if storage.exists(f"{folder}/{DECISIONS_FILE}"):
        artifacts[DECISIONS_FILE] = storage.read_bytes(f"{folder}/{DECISIONS_FILE}")
    metrics = {f"n_{k}": float(v) for k, v in counts.items()}
    for k in ("resulting_median", "champion_median"):
        if quality.get(k) is not None:
            metrics[f"median_{k}"] = float(quality[k])
    run = RunRecord(
        experiment=spec.name,
        run_name=str(release.get("version", as_of)),
        params={
            "as_of": as_of,
            "model_family": spec.model.family,
            "model_params": spec.model.params,
            "holdout": spec.holdout,
            "min_history": spec.min_history,
            **{f"policy_{k}": v for k, v in release.get("policy", {}).items()},
        },
        metrics=metrics,
        artifacts=artifacts,
        tags={"dagster_run_id": run_id, "as_of": as_of},
    )
    version = registry.register_model_set(name, storage.uri(folder), tags, run, alias)
    return version, True


def build_registration_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "registered_model_set"],
        deps=[dg.AssetKey([spec.name, "evaluation"])],
        group_name=f"{spec.name}_training",
        partitions_def=as_of_days,
        kinds={"mlflow", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "registry", "dataset": spec.name},
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
        as_of = context.partition_key
        release = read_pointer(storage, release_pointer(spec, as_of))
        if release is None:
            raise dg.Failure(f"no evaluated {spec.name} model set for {as_of}")
        if not release.get("quality", {}).get("passed", True):
            raise dg.Failure(f"the release of {as_of} failed its quality gate; not registering")
        t0 = time.perf_counter()
        try:
            version, created = register_release(
                storage, registry, spec, release, as_of, context.run_id, registry.alias
            )
        except RegistryError as exc:
            raise dg.Failure(str(exc)) from exc
        took = time.perf_counter() - t0
        return dg.MaterializeResult(
            metadata={
                "registered_model": version.name,
                "version": version.version,
                "created": created,
                "alias": registry.alias,
                "registry": registry.location,
                "source": dg.MetadataValue.url(version.source),
                "manifest_sha256": version.tags.get("manifest_sha256", ""),
                "mlflow_run_id": version.run_id or "",
                "seconds_register": round(took, 3),
                **{k: v for k, v in version.tags.items() if k.startswith("count_")},
            }
        )

    return registered_model_set


# ---- promotion dev -> prod ------------------------------------------------------------------


def verify_and_copy(src: Storage, dst: Storage, folder: str, expected_sha256: str) -> dict:
    """Copy a model set (manifest + referenced packs) from ``src`` to ``dst``, same names.

    The manifest must match ``expected_sha256`` and every model its recorded sha256, else
    nothing is copied. Packs already in ``dst`` with the same size are not copied again.
    Returns counts.
    """
    data = src.read_bytes(f"{folder}/{modelset.MANIFEST}")
    digest = persistence.sha256(data)
    if digest != expected_sha256:
        raise PromotionError(
            f"{folder}/{modelset.MANIFEST} has sha256 {digest}, registered {expected_sha256}"
        )
    manifest = modelset.read_manifest(data)
    has = manifest.filter(pc.is_valid(manifest["artifact"]))
    by_pack: dict[str, list[tuple[int, int, str]]] = {}
    for _sid, artifact, offset, length, sha in modelset.iter_locations(has):
        by_pack.setdefault(artifact, []).append((offset, length, sha))
    packs: dict[str, bytes] = {}
    for artifact, entries in by_pack.items():
        blob = src.read_bytes(artifact)
        for offset, length, sha in entries:
            if persistence.sha256(blob[offset : offset + length]) != sha:
                raise PromotionError(
                    f"{artifact}@{offset}+{length}: model bytes differ from their recorded "
                    "sha256; refusing to promote"
                )
        packs[artifact] = blob
    copied = 0
    for artifact, blob in packs.items():
        info = dst.info(artifact)
        if info is None or info.size != len(blob):
            dst.write_bytes(artifact, blob)
            copied += 1
    dst.write_bytes(f"{folder}/{modelset.MANIFEST}", data)  # last: the set is complete
    return {"models_verified": has.num_rows, "packs": len(packs), "packs_copied": copied}


def promote_version(
    spec: DatasetSpec,
    storage: Storage,
    prod_storage: Storage,
    registry: ModelRegistry,
    prod_registry: ModelRegistry,
    version: int | None = None,
    alias: str | None = None,
) -> tuple[ModelSetVersion, dict]:
    """Copy dev ``version`` (default: the dev alias's) to prod and point the prod alias at it.

    Gates: the version exists, passed its quality gate, its manifest and every model verify by
    sha256. Idempotent: a version promoted before is found by its ``dev_version`` tag.
    """
    name = registered_model_name(spec)
    mv = registry.get_version(name, version) if version else registry.get_alias(name)
    if mv is None:
        raise PromotionError(
            f"{name}: no dev version {version if version else 'under alias ' + registry.alias}"
        )
    if mv.tags.get(GATE_TAG) != "passed":
        raise PromotionError(f"{name} v{mv.version}: quality gate {mv.tags.get(GATE_TAG)!r}")
    folder = mv.folder
    if not folder or "manifest_sha256" not in mv.tags:
        raise PromotionError(f"{name} v{mv.version}: no folder/manifest_sha256 tags")
    alias = alias or prod_registry.alias
    t0 = time.perf_counter()
    stats = verify_and_copy(storage, prod_storage, folder, mv.tags["manifest_sha256"])
    stats["seconds_copy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prod = prod_registry.find_version(name, "dev_version", str(mv.version))
    if prod is None:
        tags = {**mv.tags, "dev_version": str(mv.version), "dev_registry": registry.location}
        prod = prod_registry.register_model_set(
            name,
            prod_storage.uri(folder),
            tags,
            None,
            alias,
        )
    else:
        prod_registry.set_alias(name, alias, prod.version)
    stats["seconds_register"] = time.perf_counter() - t0
    return prod, stats


def rollback_alias(
    spec: DatasetSpec, registry: ModelRegistry, alias: str, version: int | None
) -> tuple[int | None, int]:
    """Point ``alias`` at ``version`` (default: the newest version older than the current one
    that passed its gate). Returns (from_version, to_version)."""
    name = registered_model_name(spec)
    current = registry.get_alias(name, alias)
    if version is None:
        if current is None:
            raise PromotionError(f"{name}: alias {alias!r} is not set; give a version")
        older = [
            v
            for v in registry.list_versions(name)
            if v.version < current.version and v.tags.get(GATE_TAG) == "passed"
        ]
        if not older:
            raise PromotionError(f"{name}: no version before v{current.version} to roll back to")
        version = older[-1].version
    target = registry.get_version(name, version)
    if target is None:
        raise PromotionError(f"{name}: version {version} does not exist in {registry.location}")
    registry.set_alias(name, alias, target.version)
    return (current.version if current else None), target.version


def build_promotion_jobs(spec: DatasetSpec) -> list[dg.JobDefinition]:
    class PromoteConfig(dg.Config):
        version: int | None = None
        """Dev version to promote; default: the one the dev alias (champion) points at."""
        alias: str | None = None
        """Prod alias to move; default: the prod registry's (production)."""

    @dg.op(name=f"{spec.name}_promote_model_set", tags={"dataset": spec.name})
    def promote(
        context: dg.OpExecutionContext,
        config: PromoteConfig,
        storage: dg.ResourceParam[Storage],
        prod_storage: dg.ResourceParam[Storage],
        registry: ModelRegistry,
        prod_registry: ModelRegistry,
    ) -> dg.Output:
        prod, stats = promote_version(
            spec, storage, prod_storage, registry, prod_registry, config.version, config.alias
        )
        context.log.info(
            f"{prod.name}: dev v{prod.tags.get('dev_version')} -> prod v{prod.version} "
            f"({stats['models_verified']} models verified, {stats['packs_copied']} packs copied)"
        )
        return dg.Output(
            prod.version,
            metadata={
                "prod_version": prod.version,
                "dev_version": prod.tags.get("dev_version", ""),
                "alias": config.alias or prod_registry.alias,
                "registry": prod_registry.location,
                "source": dg.MetadataValue.url(prod.source),
                **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()},
            },
        )

    @dg.job(
        name=promote_job_name(spec),
        tags={"dataset": spec.name},
        description=f"Copy a verified {spec.name} model-set version to prod; alias production.",
    )
    def promote_job():
        promote()

    class RollbackConfig(dg.Config):
        version: int | None = None
        """Version to point the alias at; default: the previous version that passed its gate."""
        alias: str = "production"
        target: str = "prod"
        """Which registry: prod or dev."""

    @dg.op(name=f"{spec.name}_rollback_alias", tags={"dataset": spec.name})
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
