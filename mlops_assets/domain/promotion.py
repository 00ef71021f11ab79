"""Registration of a release set, promotion dev -> prod, and rollback of an alias.

* ``register_release``: the release set of a ``ReleaseRecord`` as ONE version of
  ``<ds>-models`` (source = the folder's URI; tags = as-of date, counts, the champion gate's
  counts, the ref's folder and manifest sha256, the gate outcome), with one run holding params,
  metrics and the manifest.
* ``promote_version``: a dev version's set copied (verified) to prod storage under the same
  folder, registered in the prod registry: the prod ref is the dev ref with the prod version.
* ``rollback_alias``: an alias moved back to an earlier version (no data moves).

Every registry call is O(1) in the number of series; copies are O(packs). No Dagster imports:
the registries are passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.evaluation_run import DECISIONS_FILE
from mlops_assets.domain.registry_records import ModelSetVersion, RunRecord
from mlops_assets.ml import modelset
from mlops_assets.ml.persistence import ModelIntegrityError
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage

if TYPE_CHECKING:
    from resources.registry import ModelRegistry

GATE_TAG = "quality_gate"
# Challengers that replaced a champion never scored on their points (target 0).
UNCOMPARED_TAG = "promoted_without_comparison"


class PromotionError(RuntimeError):
    """A version did not pass its gates (quality, integrity), or does not exist."""


def set_counts(manifest: pa.Table) -> dict[str, int]:
    out = {f"status_{k}": v for k, v in modelset.counts(manifest, "status").items()}
    if "decision" in manifest.column_names:
        out.update({f"decision_{k}": v for k, v in modelset.counts(manifest, "decision").items()})
    out["series"] = manifest.num_rows
    out["with_model"] = int(pc.sum(pc.is_valid(manifest["artifact"])).as_py() or 0)
    return out


def _run_record(
    spec: DatasetSpec, release: ms.ReleaseRecord, as_of: str, run_id: str, counts: dict, data: dict
) -> RunRecord:
    metrics = {f"n_{k}": float(v) for k, v in counts.items()}
    metrics.update({f"gate_{k}": float(v) for k, v in release.gate_counts.items()})
    for k, v in (
        ("resulting_median", release.resulting_median),
        ("champion_median", release.champion_median),
    ):
        if v is not None:
            metrics[f"median_{k}"] = float(v)
    return RunRecord(
        experiment=spec.name,
        run_name=release.ref.version,
        params={
            "as_of": as_of,
            "model_family": spec.model.family,
            "model_params": spec.model.params,
            "holdout": spec.holdout,
            "min_history": spec.min_history,
            **{f"policy_{k}": v for k, v in release.policy.items()},
        },
        metrics=metrics,
        artifacts=data,
        tags={"dagster_run_id": run_id, "as_of": as_of},
    )


def register_release(
    storage: Storage,
    registry: ModelRegistry,
    spec: DatasetSpec,
    release: ms.ReleaseRecord,
    as_of: str,
    run_id: str = "",
    alias: str | None = None,
) -> tuple[ModelSetVersion, bool]:
    """Register ``release.ref`` as one version (manifest verified against the ref first).

    Returns (version, created): a release registered before is returned as it is.
    """
    name = ms.registered_model_name(spec)
    ref = release.ref
    existing = registry.find_version(name, "folder", ref.folder)
    if existing is not None:
        if alias and alias not in existing.aliases:
            registry.set_alias(name, alias, existing.version)
        return existing, False
    data = ms.read_manifest_bytes(storage, ref)
    counts = set_counts(modelset.read_manifest(data))
    tags = {
        "dataset": spec.name,
        "as_of": as_of,
        "folder": ref.folder,
        "manifest_sha256": ref.manifest_sha256,
        "candidate_version": ref.version,
        "champion_version": str(release.champion_version or ""),
        "dagster_run_id": run_id,
        GATE_TAG: "passed" if release.passed else "failed",
        **{f"count_{k}": str(v) for k, v in counts.items()},
        **{f"gate_{k}": str(v) for k, v in release.gate_counts.items()},
    }
    if "promoted_without_comparison" in release.gate_counts:
        tags[UNCOMPARED_TAG] = str(release.gate_counts["promoted_without_comparison"])
    artifacts = {modelset.MANIFEST: data}
    if storage.exists(f"{ref.folder}/{DECISIONS_FILE}"):
        artifacts[DECISIONS_FILE] = storage.read_bytes(f"{ref.folder}/{DECISIONS_FILE}")
    run = _run_record(spec, release, as_of, run_id, counts, artifacts)
    return registry.register_model_set(name, storage.uri(ref.folder), tags, run, alias), True


def gated_version(
    spec: DatasetSpec, registry: ModelRegistry, version: int | None
) -> ModelSetVersion:
    """Dev ``version`` (default: the alias's), once it exists, passed its gate and has a ref."""
    name = ms.registered_model_name(spec)
    mv = registry.get_version(name, version) if version else registry.get_alias(name)
    if mv is None:
        raise PromotionError(
            f"{name}: no dev version {version if version else 'under alias ' + registry.alias}"
        )
    if mv.tags.get(GATE_TAG) != "passed":
        raise PromotionError(f"{name} v{mv.version}: quality gate {mv.tags.get(GATE_TAG)!r}")
    try:
        mv.ref  # noqa: B018 - the folder and digest tags must make a ref
    except ms.ModelSetError as exc:
        raise PromotionError(f"{name} v{mv.version}: {exc}") from None
    return mv


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
    Returns the prod version and counts with ``seconds_copy`` / ``seconds_register``.
    """
    mv = gated_version(spec, registry, version)
    name, alias = mv.name, alias or prod_registry.alias
    phases = Phases()
    with phases("copy"):
        try:
            counts = ms.copy_model_set(storage, prod_storage, mv.ref)
        except (ModelIntegrityError, ms.ModelSetError) as exc:
            raise PromotionError(f"{name} v{mv.version}: {exc}") from exc
    with phases("register"):
        prod = prod_registry.find_version(name, "dev_version", str(mv.version))
        if prod is None:
            tags = {**mv.tags, "dev_version": str(mv.version), "dev_registry": registry.location}
            prod = prod_registry.register_model_set(
                name, prod_storage.uri(mv.ref.folder), tags, None, alias
            )
        else:
            prod_registry.set_alias(name, alias, prod.version)
    return prod, {**counts, **{f"seconds_{k}": v for k, v in phases.seconds.items()}}


def rollback_alias(
    spec: DatasetSpec, registry: ModelRegistry, alias: str, version: int | None
) -> tuple[int | None, int]:
    """Point ``alias`` at ``version`` (default: the newest version older than the current one
    that passed its gate). Returns (from_version, to_version)."""
    name = ms.registered_model_name(spec)
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
