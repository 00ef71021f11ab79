"""Training: one scikit-learn model per series, many series per run, as a candidate model set."""

import json
import time

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.assets.plots import histograms
from mlops_assets.domain.curation import CuratedStore
from mlops_assets.ml import modelset
from mlops_assets.ml.engines import result_schema
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import series_fingerprints
from mlops_assets.partitions import as_of_days
from mlops_assets.storage import Storage
from resources.training_engine import TrainingEngine

_SERIES_TABLE = dg.TableSchema(
    columns=[
        dg.TableColumn("series_id", "string"),
        dg.TableColumn("status", "string"),
        dg.TableColumn("smape", "float"),
        dg.TableColumn("naive_smape", "float"),
        dg.TableColumn("fit_ms", "float"),
        dg.TableColumn("reason", "string"),
    ]
)


class TrainConfig(dg.Config):
    series: list[str] = []
    """Train only these series ids (e.g. ``store=S0001/product=P001``); empty: all series."""
    changed_only: bool = False
    """Train only series whose data changed since the latest model set; carry the others."""


def models_root(spec: DatasetSpec) -> str:
    return f"models/{spec.name}"


def candidate_pointer(spec: DatasetSpec, as_of: str) -> str:
    """Where the folder of the as-of date's latest candidate model set is recorded."""
    return f"{models_root(spec)}/candidates/{as_of}.json"


def latest_pointer(spec: DatasetSpec) -> str:
    return f"{models_root(spec)}/latest.json"


def read_pointer(storage: Storage, name: str) -> dict | None:
    return json.loads(storage.read_text(name)) if storage.exists(name) else None


def load_manifest(storage: Storage, folder: str) -> pa.Table:
    return modelset.read_manifest(storage.read_bytes(f"{folder}/{modelset.MANIFEST}"))


def _series_table(df: pd.DataFrame) -> dg.TableMetadataValue:
    records = [
        dg.TableRecord(
            {
                "series_id": r.series_id,
                "status": r.status,
                "smape": float(r.smape) if pd.notna(r.smape) else float("nan"),
                "naive_smape": float(r.naive_smape) if pd.notna(r.naive_smape) else float("nan"),
                "fit_ms": round(float(r.fit_seconds) * 1000, 2),
                "reason": r.reason or "",
            }
        )
        for r in df.itertuples()
    ]
    return dg.MetadataValue.table(records, schema=_SERIES_TABLE)


def choose_series(
    config: TrainConfig, fingerprints: pa.Table, previous: pa.Table | None
) -> list[str] | None:
    """The series to train: chosen ones, changed ones, or None for all."""
    if config.series:
        known = set(fingerprints["series_id"].to_pylist())
        unknown = sorted(set(config.series) - known)
        if unknown:
            raise dg.Failure(
                f"unknown series {unknown[:5]} (of {len(unknown)}); series ids look like "
                f"{fingerprints['series_id'][0].as_py()!r}"
            )
        return sorted(config.series)
    if config.changed_only and previous is not None and "data_fingerprint" in previous.column_names:
        before = dict(
            zip(
                previous["series_id"].to_pylist(),
                previous["data_fingerprint"].to_pylist(),
                strict=True,
            )
        )
        return [
            s
            for s, fp in zip(
                fingerprints["series_id"].to_pylist(),
                fingerprints["data_fingerprint"].to_pylist(),
                strict=True,
            )
            if before.get(s) != fp
        ]
    return None


def build_training_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "candidate_models"],
        deps=[dg.AssetKey([spec.name, "curated"])],
        group_name=f"{spec.name}_training",
        partitions_def=as_of_days,
        kinds={"scikit-learn", "spark", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "training", "dataset": spec.name},
        description=(
            f"One fitted scikit-learn Pipeline per {spec.name} series, trained on curated data "
            "up to the as-of date with a time-based holdout, packed as one candidate model set "
            "(models + manifest with metrics, data window and sha256 per series)."
        ),
    )
    def candidate_models(
        context: dg.AssetExecutionContext,
        config: TrainConfig,
        storage: dg.ResourceParam[Storage],
        training: TrainingEngine,
    ) -> dg.MaterializeResult:
        as_of = context.partition_key
        phases: dict[str, float] = {}
        t0 = time.perf_counter()
        table = CuratedStore(storage, spec).read(until=pd.Timestamp(as_of).date())
        if table.num_rows == 0:
            raise dg.Failure(
                f"no curated {spec.name} rows up to {as_of}: land drops under "
                f"landing/{spec.name}/ (e.g. `mlops generate {spec.name}`) and ingest them first"
            )
        fingerprints = series_fingerprints(table, spec)
        phases["read"] = time.perf_counter() - t0

        latest = read_pointer(storage, latest_pointer(spec))
        previous = load_manifest(storage, latest["folder"]) if latest else None
        chosen = choose_series(config, fingerprints, previous)
        context.log.info(
            f"training {'all' if chosen is None else len(chosen)} of {fingerprints.num_rows} "
            f"series on {table.num_rows:,} rows with the {training.name} engine"
        )
        stats: dict = {}
        t0 = time.perf_counter()
        results = (
            training.train(table, spec, series=chosen, stats=stats, context=context, as_of=as_of)
            if chosen != []
            else None
        )
        phases["train"] = time.perf_counter() - t0
        version = f"{as_of}/{context.run_id[:8]}"
        folder = f"{models_root(spec)}/sets/{version}"

        t0 = time.perf_counter()
        if results is not None and len(results):
            fresh = pa.Table.from_pandas(results, schema=result_schema(spec), preserve_index=False)
            at = pc.index_in(fresh["series_id"], value_set=fingerprints["series_id"])
            for name in ("n_rows", "data_end", "data_fingerprint"):
                fresh = fresh.append_column(name, fingerprints[name].take(at))
            fresh = fresh.sort_by("series_id")
            fresh = fresh.append_column("trained_in", pa.array([version] * fresh.num_rows))
            manifest, packs = modelset.pack_models(fresh, folder)
        else:
            manifest, packs = None, []
        for name, data in packs:
            storage.write_bytes(name, data)
        if previous is not None:
            # Series not retrained keep their latest entry, by reference to its pack.
            done = set(manifest["series_id"].to_pylist()) if manifest is not None else set()
            keep = pc.invert(pc.is_in(previous["series_id"], pa.array(sorted(done), pa.string())))
            carried = previous.filter(keep)
            if manifest is None:
                manifest = carried
            else:
                # Older sets may lack newer columns: carry them with nulls there.
                for f in manifest.schema:
                    if f.name not in carried.column_names:
                        carried = carried.append_column(f, pa.nulls(carried.num_rows, f.type))
                carried = carried.select(manifest.column_names).cast(manifest.schema)
                manifest = pa.concat_tables([manifest, carried])
        manifest = manifest.sort_by("series_id")
        storage.write_bytes(f"{folder}/{modelset.MANIFEST}", modelset.manifest_bytes(manifest))
        pointer = json.dumps({"folder": folder, "version": version, "run_id": context.run_id})
        storage.write_text(candidate_pointer(spec, as_of), pointer)
        storage.write_text(latest_pointer(spec), pointer)
        phases["write"] = time.perf_counter() - t0

        trained_now = results if results is not None else pd.DataFrame(columns=["status"])
        status = trained_now["status"].value_counts().to_dict()
        md: dict = {
            "version": version,
            "series_total": manifest.num_rows,
            "series_trained": int(status.get("trained", 0)),
            "series_skipped": int(status.get("skipped", 0)),
            "series_failed": int(status.get("failed", 0)),
            "series_carried": manifest.num_rows - len(trained_now),
            "engine": training.name,
            "rows": table.num_rows,
            **{f"seconds_{k}": round(v, 3) for k, v in {**phases, **_num(stats)}.items()},
            "manifest": dg.MetadataValue.url(storage.uri(f"{folder}/{modelset.MANIFEST}")),
        }
        if len(trained_now) and "smape" in trained_now:
            ok = trained_now[trained_now.status == "trained"]
            md["median_smape"] = float(np.nanmedian(ok.smape)) if len(ok) else float("nan")
            md["median_naive_smape"] = (
                float(np.nanmedian(ok.naive_smape)) if len(ok) else float("nan")
            )
            md["holdout_smape"] = dg.MetadataValue.md(
                histograms(
                    {"model": ok.smape.to_numpy(float), "naive": ok.naive_smape.to_numpy(float)},
                    f"{spec.name}: holdout sMAPE across series",
                    "sMAPE (%)",
                )
            )
            md["worst_series"] = _series_table(ok.nlargest(10, "smape"))
            md["slowest_series"] = _series_table(trained_now.nlargest(10, "fit_seconds"))
            bad = trained_now[trained_now.status != "trained"]
            if len(bad):
                md["not_trained"] = _series_table(bad.head(20))
        return dg.MaterializeResult(metadata=md)

    return candidate_models


def _num(stats: dict) -> dict[str, float]:
    return {f"engine_{k[:-2]}": float(v) for k, v in stats.items() if k.endswith("_s")}
