"""QA and release of a production model set to the online endpoint.

* ``[<ds>, "qa"]``: starts an ephemeral local endpoint (the AML entry script under
  azmlinfsrv, 127.0.0.1, free port) on the candidate model set (default: the prod registry's
  ``production`` version), runs input/output smoke tests (predictions equal to in-process
  scoring, unknown series, malformed and oversized bodies), then a short closed-loop load
  profile at a few concurrency levels (throughput, p50/p95/p99, server memory) and recommends an
  instance count (azureml-fe formula) and memory request. Any smoke failure fails the asset.
* ``[<ds>, "deployment"]``: releases the version through the ``endpoint`` resource:
  locally the running endpoint's pointer is switched (hot swap); on Azure a blue/green
  Kubernetes deployment with staged traffic, health checks and automatic rollback.

``<ds>_deploy`` runs both; ``sensors.release`` launches it when ``production`` moves.
No ``from __future__ import annotations`` here: Dagster reads the Config classes' annotations.
"""

import json
import math
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np

from mlops_assets.assets.evaluation import registered_model_name
from mlops_assets.ml import modelset, scoring
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.serving.loadtest import run_concurrency
from mlops_assets.serving.local import LocalServer
from mlops_assets.serving.service import ServingSettings
from mlops_assets.serving.source import ModelSetRef, load_reader, pointer_name, write_pointer
from mlops_assets.serving.synthetic import request_rows
from mlops_assets.storage import Storage
from resources.endpoints import EndpointResource, ModelSetRelease, ReleaseError
from resources.registry import ModelRegistry, ModelSetVersion

SMOKE_SERIES = 20
HA_MIN_INSTANCES = 3  # "for high availability ... at least 3" (AML docs)


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
    name = registered_model_name(spec)
    mv = registry.get_version(name, version) if version else registry.get_alias(name)
    if mv is None:
        raise dg.Failure(
            f"{name}: no version {version or 'under alias ' + registry.alias} in "
            f"{registry.location}"
        )
    if not mv.folder:
        raise dg.Failure(f"{name} v{mv.version} has no folder tag")
    return mv


def local_root(storage: Storage, folder: str, tmp: Path) -> str:
    """A local folder holding ``folder`` (the storage root itself, or a downloaded copy)."""
    root = storage.local_root()
    if root is not None:
        return str(root)
    for blob in storage.list(f"{folder}/"):
        path = tmp / blob.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(storage.read_bytes(blob.name))
    return str(tmp)


def smoke_records(spec: DatasetSpec, manifest, n: int = SMOKE_SERIES) -> list[dict]:
    has = manifest.filter(
        np.asarray([a is not None for a in manifest["artifact"].to_pylist()], dtype=bool)
    )
    sids = has["series_id"].to_pylist()
    step = max(1, len(sids) // n)
    return request_rows(spec, has, sids[::step][:n])


def recommend(
    profile: list[dict],
    rss_bytes: int,
    target_rps: float,
    p99_target_ms: float,
    max_concurrent: int = 1,
    utilization: float = 0.7,
) -> dict:
    """Instance count (azureml-fe formula) and memory request from the measured profile."""
    service_s = (profile[0]["p50_ms"] or 1.0) / 1e3
    sustained = (
        max(
            (p["achieved_rps"] or 0)
            for p in profile
            if p["errors"] == 0 and (p["p99_ms"] or 1e9) <= p99_target_ms
        )
        if any(p["errors"] == 0 and (p["p99_ms"] or 1e9) <= p99_target_ms for p in profile)
        else 0
    )
    by_formula = math.ceil(target_rps * service_s / utilization / max_concurrent)
    by_throughput = math.ceil(target_rps / (sustained * 0.85)) if sustained else None
    count = max(HA_MIN_INSTANCES, by_formula, by_throughput or 0)
    mem_mi = int(math.ceil(rss_bytes * 1.5 / 2**20 / 256) * 256)
    return {
        "target_rps": target_rps,
        "p99_target_ms": p99_target_ms,
        "service_time_ms": round(service_s * 1e3, 2),
        "sustained_rps_per_instance": sustained,
        "instance_count": count,
        "instance_count_formula": by_formula,
        "memory_request": f"{max(mem_mi, 512)}Mi",
        "cpu_request": "1",
        "instance_type_hint": "2 vCPU / 4 GiB node pool" if mem_mi <= 2048 else "4 vCPU / 16 GiB",
    }


def build_deployment_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    class QAConfig(dg.Config):
        version: int | None = None
        """Prod registry version to test; default: the one ``production`` points at."""
        concurrency: list[int] = [1, 4, 16]
        seconds_per_level: float = 3.0
        target_rps: float = 200.0
        p99_target_ms: float = 100.0
        workers: int = 1

    class DeployConfig(dg.Config):
        version: int | None = None
        """Prod registry version to release; default: the one ``production`` points at."""

    @dg.asset(
        key=qa_key(spec),
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
        with tempfile.TemporaryDirectory(prefix="mlops-qa-") as tmp:
            root = local_root(prod_storage, mv.folder, Path(tmp) / "models")
            ref = {
                "version": str(mv.version),
                "folder": mv.folder,
                "root": root,
                "manifest_sha256": mv.tags.get("manifest_sha256"),
            }
            write_pointer(tmp, pointer_name(spec.name, "qa"), ref)
            key = "qa-key"
            settings = ServingSettings(
                dataset=spec.name,
                source="pointer",
                root=tmp,
                alias="qa",
                api_keys=[key],
                poll_s=0,
                max_body_bytes=1 << 20,
                max_records=1000,
            )
            t0 = time.perf_counter()
            server = LocalServer(settings, workers=config.workers, log_path=Path(tmp) / "log")
            try:
                server.start(timeout=120)
            except (RuntimeError, TimeoutError) as exc:
                log = (Path(tmp) / "log").read_text()[-3000:]
                raise dg.Failure(
                    f"the endpoint did not start on v{mv.version}: {exc}\n{log}"
                ) from exc
            try:
                start_s = time.perf_counter() - t0
                manifest = modelset.read_manifest(
                    (Path(root) / mv.folder / modelset.MANIFEST).read_bytes()
                )
                smoke = run_smoke_tests(spec, server, manifest, ModelSetRef(**ref))
                failed = [name for name, ok in smoke.items() if not ok["passed"]]
                if failed:
                    raise dg.Failure(
                        f"smoke tests failed on v{mv.version}: {failed}",
                        metadata={"smoke": dg.MetadataValue.json(smoke)},
                    )
                bodies = [
                    json.dumps({"data": [r]}).encode() for r in smoke_records(spec, manifest, 200)
                ]
                auth = {"Authorization": f"Bearer {key}"}
                profile = []
                for c in config.concurrency:
                    profile.append(
                        run_concurrency(
                            server.port,
                            bodies,
                            concurrency=c,
                            seconds=config.seconds_per_level,
                            headers=auth,
                        )
                    )
                rss = server.rss_bytes()
                info = server.info()
            finally:
                server.stop()
        rec = recommend(profile, rss, config.target_rps, config.p99_target_ms)
        context.log.info(f"v{mv.version}: smoke passed; recommendation {rec}")
        return dg.MaterializeResult(
            metadata={
                "version": mv.version,
                "folder": mv.folder,
                "series": manifest.num_rows,
                "server_start_s": round(start_s, 2),
                "smoke": dg.MetadataValue.json(smoke),
                "load_profile": dg.MetadataValue.json(profile),
                "throughput_rps": max(p["achieved_rps"] or 0 for p in profile),
                "p99_ms_at_max_concurrency": profile[-1]["p99_ms"],
                "server_rss_mb": round(rss / 2**20, 1),
                "cache": dg.MetadataValue.json(info.get("cache") or {}),
                "recommendation": dg.MetadataValue.json(rec),
                "recommended_instance_count": rec["instance_count"],
            }
        )

    @dg.asset(
        key=deployment_key(spec),
        deps=[qa_key(spec)],
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
        manifest = modelset.read_manifest(
            prod_storage.read_bytes(f"{mv.folder}/{modelset.MANIFEST}")
        )
        release = ModelSetRelease(
            dataset=spec.name,
            version=str(mv.version),
            folder=mv.folder,
            manifest_sha256=mv.tags.get("manifest_sha256"),
            source_uri=mv.source,
            smoke_records=smoke_records(spec, manifest, 5),
        )
        try:
            report = endpoint.release(release, log=context.log.info)
        except ReleaseError as exc:
            raise dg.Failure(str(exc)) from exc
        return dg.MaterializeResult(
            metadata={
                "version": mv.version,
                "folder": mv.folder,
                "endpoint": endpoint.describe(),
                "report": dg.MetadataValue.json(report),
            }
        )

    return [serving_qa, serving_deployment]


def run_smoke_tests(spec: DatasetSpec, server: LocalServer, manifest, ref: ModelSetRef) -> dict:
    """Input/output checks against a running endpoint. {name: {passed, detail}}."""
    out: dict = {}

    def check(name: str, ok: bool, detail) -> None:
        out[name] = {"passed": bool(ok), "detail": detail}

    records = smoke_records(spec, manifest)
    status, body = server.score(records)
    reader = load_reader(ref, max_models=len(records) + 1, max_bytes=1 << 30, verify_all=False)
    want = scoring.score(records, spec, reader.model_for)
    got = body.get("predictions", []) if isinstance(body, dict) else []
    same = (
        status == 200
        and len(got) == len(want)
        and np.allclose(
            [g["prediction"] if g["prediction"] is not None else np.nan for g in got],
            want["prediction"].to_numpy(float),
            rtol=1e-9,
            equal_nan=True,
        )
    )
    check("predictions_match_in_process", same, {"status": status, "records": len(records)})
    check(
        "versions",
        status == 200
        and body.get("model_set_version") == ref.version
        and all(g["model_version"] for g in got if g["error"] is None),
        {"model_set_version": body.get("model_set_version") if isinstance(body, dict) else None},
    )
    unknown = {**records[0], spec.series_keys[0]: "__no_such_series__"}
    status, body = server.score([unknown])
    check("unknown_series_404", status == 404, {"status": status})
    status, _ = server.request("POST", "/score", b"{not json")
    check("malformed_400", status == 400, {"status": status})
    status, _ = server.request("POST", "/score", b"[" + b" " * (2 << 20) + b"]")
    check("oversized_413", status == 413, {"status": status})
    status, _ = server.request("POST", "/score", b"[]", headers={"Authorization": "Bearer no"})
    check("wrong_key_401", status == 401, {"status": status})
    return out
