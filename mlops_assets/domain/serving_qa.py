"""QA of a registered model set on an ephemeral local endpoint, before it is released.

``run_qa`` copies the set (verified) into a temporary storage root, points a ``qa`` pointer at
its ref, starts the AML entry script under azmlinfsrv on 127.0.0.1, runs input/output smoke
tests (predictions equal to in-process scoring, versions, unknown series, malformed, oversized
and unauthorised bodies), then a short closed-loop load profile at a few concurrency levels,
and recommends an instance count (azureml-fe formula) and memory request. No Dagster imports.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.domain import model_sets as ms
from mlops_assets.ml import scoring
from mlops_assets.ml.model_cache import ModelSetReader
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.serving.loadtest import run_concurrency
from mlops_assets.serving.local import LocalServer
from mlops_assets.serving.settings import ServingSettings
from mlops_assets.serving.synthetic import request_rows
from mlops_assets.storage import LocalStorage, Storage

SMOKE_SERIES = 20
HA_MIN_INSTANCES = 3  # "for high availability ... at least 3" (AML docs)
QA_KEY = "qa-key"


class QAError(RuntimeError):
    """The endpoint did not start on the set, or a smoke test failed (``smoke`` says which)."""

    def __init__(self, message: str, smoke: dict | None = None):
        super().__init__(message)
        self.smoke = smoke


@dataclass(frozen=True)
class QASettings:
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    seconds_per_level: float = 3.0
    target_rps: float = 200.0
    p99_target_ms: float = 100.0
    workers: int = 1


@dataclass(frozen=True)
class QAReport:
    series: int
    smoke: dict
    profile: list[dict]
    rss_bytes: int
    cache: dict
    recommendation: dict
    phases: Phases


def smoke_records(spec: DatasetSpec, manifest: pa.Table, n: int = SMOKE_SERIES) -> list[dict]:
    """Request records for up to ``n`` series spread over the set (those with a model)."""
    has = manifest.filter(pc.is_valid(manifest["artifact"]))
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
    good = [
        p["achieved_rps"] or 0
        for p in profile
        if p["errors"] == 0 and (p["p99_ms"] or 1e9) <= p99_target_ms
    ]
    sustained = max(good) if good else 0
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


def run_smoke_tests(
    spec: DatasetSpec, server: LocalServer, manifest: pa.Table, reader: ModelSetReader
) -> dict:
    """Input/output checks against a running endpoint. {name: {passed, detail}}."""
    out: dict = {}

    def check(name: str, ok: bool, detail) -> None:
        out[name] = {"passed": bool(ok), "detail": detail}

    records = smoke_records(spec, manifest)
    status, body = server.score(records)
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
        and body.get("model_set_version") == reader.version
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


def _profile(spec: DatasetSpec, server: LocalServer, manifest: pa.Table, qa: QASettings):
    bodies = [json.dumps({"data": [r]}).encode() for r in smoke_records(spec, manifest, 200)]
    auth = {"Authorization": f"Bearer {QA_KEY}"}
    return [
        run_concurrency(
            server.port, bodies, concurrency=c, seconds=qa.seconds_per_level, headers=auth
        )
        for c in qa.concurrency
    ]


def run_qa(spec: DatasetSpec, storage: Storage, ref: ms.ModelSetRef, qa: QASettings) -> QAReport:
    """Smoke-test and load-profile ``ref`` (read from ``storage``) on an ephemeral endpoint.

    Raises:
        QAError: The endpoint did not start, or a smoke test failed.
        ModelSetError, ModelIntegrityError: The set does not verify against ``ref``.
    """
    phases = Phases()
    with tempfile.TemporaryDirectory(prefix="mlops-qa-") as tmp:
        local = LocalStorage(Path(tmp) / "root")
        with phases("copy"):
            ms.copy_model_set(storage, local, ref)
        ms.write_pointer(local, ms.pointer_name(spec.name, "qa"), ref)
        settings = ServingSettings(
            dataset=spec.name,
            source="pointer",
            root=str(local.root),
            alias="qa",
            api_keys=[QA_KEY],
            poll_s=0,
            max_body_bytes=1 << 20,
            max_records=1000,
        )
        log_path = Path(tmp) / "log"
        server = LocalServer(settings, workers=qa.workers, log_path=log_path)
        try:
            with phases("server_start"):
                server.start(timeout=120)
        except (RuntimeError, TimeoutError) as exc:
            raise QAError(
                f"the endpoint did not start on v{ref.label}: {exc}\n{log_path.read_text()[-3000:]}"
            ) from exc
        try:
            manifest = ms.read_manifest(local, ref)
            reader = ms.open_reader(
                local, ref, max_models=SMOKE_SERIES + 1, max_bytes=1 << 30, verify_all=False
            )
            smoke = run_smoke_tests(spec, server, manifest, reader)
            failed = [name for name, ok in smoke.items() if not ok["passed"]]
            if failed:
                raise QAError(f"smoke tests failed on v{ref.label}: {failed}", smoke)
            profile = _profile(spec, server, manifest, qa)
            rss, info = server.rss_bytes(), server.info()
        finally:
            server.stop()
    rec = recommend(profile, rss, qa.target_rps, qa.p99_target_ms)
    return QAReport(manifest.num_rows, smoke, profile, rss, info.get("cache") or {}, rec, phases)
