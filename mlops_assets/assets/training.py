"""Training: one scikit-learn model per series, many series per run, as a candidate model set."""

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from mlops_assets.assets.plots import backtest_plots
from mlops_assets.domain.training_run import (
    TrainingInputError,
    TrainingOutcome,
    interval_coverage,
    train_candidate,
)
from mlops_assets.ml.combination import family_shares
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_partitions, run_as_of
from mlops_assets.pools import writer_pool
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
    series: list[str] = Field(default_factory=list)
    """Train only these series ids (e.g. ``store=S0001/product=P001``); empty: all series."""
    changed_only: bool = False
    """Train only series whose data changed since the latest model set; carry the others."""
    full_refit: bool = False
    """With ``model.refit`` in the spec: refit every series in full now (backtest, family
    choice, fresh statistics) even where an incremental run would do."""


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


def build_training_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "candidate_models"],
        deps=[dg.AssetKey([spec.name, "curated"])],
        group_name=f"{spec.name}_training",
        partitions_def=as_of_partitions(spec),
        kinds={"scikit-learn", "spark", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "training", "dataset": spec.name},
        pool=writer_pool(spec.name),
        description=(
            f"One model per {spec.name} series, trained on curated data up to the as-of date: "
            "each series keeps the candidate family with the best rolling-origin backtest at "
            "the horizon (or the fallback chain's method), packed as one candidate model set "
            "(models + manifest with family, backtest metrics, intervals, data window and "
            "sha256 per series)."
        ),
    )
    def candidate_models(
        context: dg.AssetExecutionContext,
        config: TrainConfig,
        storage: dg.ResourceParam[Storage],
        training: TrainingEngine,
    ) -> dg.MaterializeResult:
        try:
            outcome = train_candidate(
                storage,
                spec,
                training,
                as_of=run_as_of(context, spec),
                run_id=context.run.run_id,
                series=config.series,
                changed_only=config.changed_only,
                full_refit=config.full_refit,
                context=context,
                log=context.log.info,
            )
        except TrainingInputError as exc:
            raise dg.Failure(str(exc)) from exc
        return dg.MaterializeResult(
            metadata=training_metadata(spec, outcome, training.name, storage)
        )

    return candidate_models


def training_metadata(
    spec: DatasetSpec, outcome: TrainingOutcome, engine: str, storage: Storage
) -> dict:
    """What the candidate set's materialization shows: counts, timings, error distributions."""
    trained, manifest = outcome.trained, outcome.manifest
    status = trained["status"].value_counts().to_dict()
    md: dict = {
        "version": outcome.ref.version,
        "series_total": manifest.num_rows,
        "series_trained": int(status.get("trained", 0)),
        "series_fallback": int(status.get("fallback", 0)),
        "series_skipped": int(status.get("skipped", 0)),
        "series_failed": int(status.get("failed", 0)),
        "series_carried": manifest.num_rows - len(trained),
        "engine": engine,
        # "incremental: ..." between full refits (model.refit), else "full refit" and why.
        "refit": outcome.refit,
        "rows": outcome.rows,
        **outcome.phases.metadata(),
        "manifest": dg.MetadataValue.url(storage.uri(outcome.ref.manifest_name)),
        "manifest_sha256": outcome.ref.manifest_sha256,
    }
    if len(trained) and "family" in trained:
        md["families"] = {str(k): int(v) for k, v in trained["family"].value_counts().items()}
        if "weights" in trained and trained["weights"].notna().any():
            # Combinations: what each family contributes over the run's forecasts.
            md["family_shares"] = family_shares(
                trained["family"].where(trained["family"].notna(), None).tolist(),
                trained["weights"].where(trained["weights"].notna(), None).tolist(),
            )
        md.update(interval_coverage(manifest, outcome.ref.version, spec))
    if len(trained) and "smape" in trained:
        ok = trained[trained.status == "trained"]
        md["median_smape"] = float(np.nanmedian(ok.smape)) if len(ok) else float("nan")
        md["median_naive_smape"] = float(np.nanmedian(ok.naive_smape)) if len(ok) else float("nan")
        # Seasonal naive is the baseline the champion gate requires by default; NaN where it
        # could not be scored on a series' backtest pairs (under a season of history).
        seasonal = ok.seasonal_naive_smape.to_numpy(float)
        scored = np.isfinite(seasonal)
        md["median_seasonal_naive_smape"] = (
            float(np.median(seasonal[scored])) if scored.any() else float("nan")
        )
        md["series_beating_seasonal_naive"] = int(np.sum(ok.smape.to_numpy(float) < seasonal))
        plots = backtest_plots(ok, spec, "candidates")
        md.update({key: dg.MetadataValue.md(plot) for key, plot in plots.items()})
        md["worst_series"] = _series_table(ok.nlargest(10, "smape"))
        md["slowest_series"] = _series_table(trained.nlargest(10, "fit_seconds"))
        bad = trained[trained.status != "trained"]
        if len(bad):
            md["not_trained"] = _series_table(bad.head(20))
    return md
