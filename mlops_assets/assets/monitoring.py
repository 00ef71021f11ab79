"""Monitoring of served predictions: what the endpoint's data collection gathered each day, and
production forecast accuracy once the actuals arrive."""

import dagster as dg

from mlops_assets.assets.plots import histograms, lines
from mlops_assets.domain.forecast_accuracy import AccuracyOutcome, measure_accuracy
from mlops_assets.domain.inference_summary import InferenceSummary, summarize_day
from mlops_assets.ml.accuracy import accuracy_table
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_partitions, run_as_of
from mlops_assets.storage import Storage

DEGRADED_KEY = "degraded_series"  # the metadata the degradation sensor reads
_DRIFT_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("feature", "string"),
        dg.TableColumn("reference_mean", "float"),
        dg.TableColumn("current_mean", "float"),
        dg.TableColumn("smd", "float"),
        dg.TableColumn("psi", "float"),
        dg.TableColumn("verdict", "string"),
    ]
)


def summary_metadata(spec: DatasetSpec, summary: InferenceSummary) -> dict:
    md: dict = {
        "records": summary.records,
        "requests": summary.requests,
        "errors": summary.errors,
        "error_rate": summary.error_rate,
        "features_drifting": summary.features_drifting,
        "input_drift": dg.MetadataValue.table(
            [dg.TableRecord(d) for d in summary.drift], schema=_DRIFT_SCHEMA
        ),
    }
    if summary.median_prediction is not None:
        md["median_prediction"] = summary.median_prediction
    if summary.values:
        first, (training, served) = next(iter(summary.values.items()))
        md[f"{first}_distribution"] = dg.MetadataValue.md(
            histograms(
                {"training": training, "served": served},
                f"{spec.name}: {first}, training vs served",
                first,
            )
        )
    return md


def build_inference_summary_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "inference_summary"],
        group_name=f"{spec.name}_serving",
        partitions_def=as_of_partitions(spec),
        kinds={"parquet", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "monitoring", "dataset": spec.name},
        description=(
            f"One day of {spec.name} requests the endpoint sampled (inference/{spec.name}/): "
            "volume, errors by code, predictions, and drift of the inputs against the training "
            "data (standardised mean difference and PSI per feature)."
        ),
    )
    def inference_summary(
        context: dg.AssetExecutionContext,
        storage: dg.ResourceParam[Storage],
        prod_storage: dg.ResourceParam[Storage],
    ) -> dg.MaterializeResult:
        day = run_as_of(context, spec)
        summary = summarize_day(storage, prod_storage, spec, day)
        if summary is None:
            context.log.info(f"no requests were collected on {day}")
            return dg.MaterializeResult(metadata={"records": 0, "requests": 0})
        return dg.MaterializeResult(metadata=summary_metadata(spec, summary))

    return inference_summary


def accuracy_metadata(
    spec: DatasetSpec, outcome: AccuracyOutcome, storage: Storage, as_of: str
) -> dict:
    """Counts, overall MAE and coverage, the degraded series and a plot of MAE per step."""
    joined, series = outcome.joined, outcome.series
    md: dict = {
        "as_of": as_of,
        "predictions": outcome.predictions,
        "points_with_actuals": len(joined),
        "series_measured": len(series),
        "series_degraded": len(outcome.degraded),
        DEGRADED_KEY: dg.MetadataValue.json(outcome.degraded),
        "degraded_ratio": spec.monitoring.degraded_ratio,
    }
    for name in outcome.written:
        md[name.rsplit("/", 1)[-1].removesuffix(".parquet")] = dg.MetadataValue.url(
            storage.uri(name)
        )
    if len(joined):
        md["mae"] = float((joined["prediction"] - joined["actual"]).abs().mean())
        overall = accuracy_table(joined.assign(all="all"), spec.intervals.levels, by=("all",))
        for col in overall.columns:
            if col.startswith("coverage_"):
                md[col] = float(overall[col].iloc[0])
        steps = outcome.by_step[outcome.by_step["step"] > 0]
        curves = {
            f"model set {v}": g.sort_values("step")["mae"].to_numpy(float)
            for v, g in steps.groupby("model_set_version")
        }
        if curves:
            md["production_mae_by_step"] = dg.MetadataValue.md(
                lines(curves, f"{spec.name}: production MAE by horizon step", "step", "MAE")
            )
        worst = series.sort_values("error_ratio", ascending=False).head(10)
        md["worst_series"] = dg.MetadataValue.json(
            worst.astype(object).where(worst.notna(), None).to_dict("records")
        )
    return md


def build_forecast_accuracy_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=accuracy_key(spec),
        deps=[dg.AssetKey([spec.name, "curated"])],
        group_name=f"{spec.name}_serving",
        partitions_def=as_of_partitions(spec),
        # Measured as soon as a day's actuals are curated (the monitoring automation sensor).
        automation_condition=dg.AutomationCondition.eager(),
        kinds={"parquet", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "monitoring", "dataset": spec.name},
        description=(
            f"Production accuracy of {spec.name}: batch-scored and served predictions joined "
            "with the curated actuals known at the as-of date; MAE, scaled error and interval "
            "coverage per series, horizon step and model set version; series whose error "
            "exceeds their backtest by spec.monitoring.degraded_ratio are degraded (the "
            "degradation sensor retrains them)."
        ),
    )
    def forecast_accuracy(
        context: dg.AssetExecutionContext,
        storage: dg.ResourceParam[Storage],
        prod_storage: dg.ResourceParam[Storage],
    ) -> dg.MaterializeResult:
        as_of = run_as_of(context, spec)
        outcome = measure_accuracy(storage, spec, as_of, [prod_storage])
        context.log.info(
            f"{len(outcome.joined)} predictions with actuals, "
            f"{len(outcome.degraded)} degraded series"
        )
        return dg.MaterializeResult(metadata=accuracy_metadata(spec, outcome, storage, as_of))

    return forecast_accuracy


def accuracy_key(spec: DatasetSpec) -> dg.AssetKey:
    return dg.AssetKey([spec.name, "forecast_accuracy"])
