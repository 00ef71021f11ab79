"""Registry benchmark: register and promote one N-series model set (one version per run).

Builds a model set of N distinct fitted ridge pipelines (packed, with a manifest), then times,
against local MLflow SQLite stores:

* ``register``: one MLflow run (params, metrics, manifest artifact) + one model version with
  tags + the ``champion`` alias, for the whole set;
* ``promote``: verify every model's sha256, copy the packs to the prod storage, register in the
  prod registry and move ``production``;
* ``rollback``: move ``production`` back;
* the baseline in the same run: registering models one version each, measured on a sample and
  extrapolated to N (docs/architecture.md §3: ~4 ms a version locally).

Store creation (MLflow's schema migrations) and imports are reported apart from the target.

    python -m benchmarks.bench_registry --series 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import peak_rss_mb, write_result

TARGET_S = 5.0


def build_model_set(n: int, folder: str) -> tuple[pa.Table, list[tuple[str, bytes]]]:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from mlops_assets.ml import modelset, persistence

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 10)), rng.normal(size=60)
    base = Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=1.0))]).fit(X, y)
    models, shas = [], []
    for _ in range(n):
        base[-1].coef_ = rng.normal(size=10)
        data = persistence.dumps(base)
        models.append(data)
        shas.append(persistence.sha256(data))
    ids = [f"store=S{i // 100:04d}/product=P{i % 100:03d}" for i in range(n)]
    smape = rng.uniform(5, 40, n)
    table = pa.table(
        {
            "series_id": ids,
            "store": [s.split("/")[0][6:] for s in ids],
            "product": [s.split("/")[1][8:] for s in ids],
            "status": ["trained"] * n,
            "smape": smape,
            "naive_smape": smape * 1.2,
            "trained_in": [folder] * n,
            "model_format": ["linear"] * n,
            "model": pa.array(models, pa.binary()),
            "model_sha256": shas,
        }
    )
    return modelset.pack_models(table, folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--baseline-sample", type=int, default=100)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    from mlops_assets.domain.model_sets import ReleaseRecord, write_model_set
    from mlops_assets.domain.promotion import promote_version, register_release, rollback_alias
    from mlops_assets.ml.spec import load_spec
    from mlops_assets.storage import LocalStorage
    from resources.registry import MlflowRegistry

    imports_s = time.perf_counter() - t0
    spec = load_spec("sales")
    out: dict = {"series": args.series, "target_s": TARGET_S, "imports_s": round(imports_s, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        storage = LocalStorage(root=str(home / "storage"))
        prod_storage = LocalStorage(root=str(home / "prod-storage"))
        dev = MlflowRegistry(
            tracking_uri=f"sqlite:///{home}/mlflow/dev.db",
            artifact_root=(home / "storage" / "mlflow-artifacts").as_uri(),
        )
        prod = MlflowRegistry(tracking_uri=f"sqlite:///{home}/mlflow/prod.db", alias="production")

        t0 = time.perf_counter()
        folder = "models/sales/releases/2026-11-17/bench0001"
        manifest, packs = build_model_set(args.series, folder)
        ref = write_model_set(
            storage,
            manifest,
            packs,
            name="sales-models",
            version="2026-11-17/bench0001",
            folder=folder,
        )
        out["build_set_s"] = round(time.perf_counter() - t0, 3)
        out["packs"] = len(packs)
        out["pack_bytes"] = sum(len(d) for _, d in packs)

        t0 = time.perf_counter()
        dev.client()
        prod.client()
        out["store_init_s"] = round(time.perf_counter() - t0, 3)

        release = ReleaseRecord(
            ref=ref,
            candidate=ref,
            passed=True,
            resulting_median=20.0,
            champion_median=21.0,
            policy={"margin": 0.02},
        )
        t0 = time.perf_counter()
        version, created = register_release(
            storage, dev, spec, release, "2026-11-17", "bench", alias="champion"
        )
        register_s = time.perf_counter() - t0
        assert created and version.version == 1

        t0 = time.perf_counter()
        prod_version, stats = promote_version(spec, storage, prod_storage, dev, prod)
        promote_s = time.perf_counter() - t0
        assert stats["models_verified"] == args.series

        t0 = time.perf_counter()
        rollback_alias(spec, prod, "production", prod_version.version)
        rollback_s = time.perf_counter() - t0

        # Baseline: one registry version per model, on a sample, extrapolated.
        from mlflow import MlflowClient

        client: MlflowClient = dev.client()
        client.create_registered_model("per-model-baseline")
        t0 = time.perf_counter()
        for i in range(args.baseline_sample):
            client.create_model_version(
                "per-model-baseline", f"file:///m/{i}", tags={"sha256": "x", "series": str(i)}
            )
        per_version = (time.perf_counter() - t0) / args.baseline_sample

    total = register_s + promote_s
    out.update(
        register_s=round(register_s, 3),
        promote_s=round(promote_s, 3),
        promote_copy_verify_s=round(stats["seconds_copy"], 3),
        promote_registry_s=round(stats["seconds_register"], 3),
        rollback_s=round(rollback_s, 3),
        register_plus_promote_s=round(total, 3),
        meets_target=total <= TARGET_S,
        baseline_per_model_version_ms=round(per_version * 1000, 2),
        baseline_per_model_register_extrapolated_s=round(per_version * args.series, 1),
        speedup_vs_per_model=round(per_version * args.series / register_s, 1),
        peak_rss_mb=peak_rss_mb(),
    )
    write_result("registry", out)
    return 0 if out["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
