"""Monitoring of served predictions: what the endpoint's data collection gathered each day."""

import dagster as dg

from mlops_assets.assets.plots import histograms
from mlops_assets.domain.inference_summary import InferenceSummary, summarize_day
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_partitions
from mlops_assets.storage import Storage

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
        day = context.partition_key
        summary = summarize_day(storage, prod_storage, spec, day)
        if summary is None:
            context.log.info(f"no requests were collected on {day}")
            return dg.MaterializeResult(metadata={"records": 0, "requests": 0})
        return dg.MaterializeResult(metadata=summary_metadata(spec, summary))

    return inference_summary
