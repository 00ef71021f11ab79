"""Monitoring of served predictions: what the endpoint's data collection gathered each day."""

import io

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandas.tseries.frequencies import to_offset

from mlops_assets.assets.plots import histograms
from mlops_assets.domain.curation import CuratedStore
from mlops_assets.ml.drift import feature_drift
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_days
from mlops_assets.serving.collector import collected_prefix
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


def read_day(storage: Storage, spec: DatasetSpec, day: str) -> pa.Table | None:
    names = [b.name for b in storage.list(f"{collected_prefix(spec.name)}/date={day}/")]
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(n))) for n in names]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def build_inference_summary_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    numeric = [spec.target, *spec.features.exogenous]

    @dg.asset(
        key=[spec.name, "inference_summary"],
        group_name=f"{spec.name}_serving",
        partitions_def=as_of_days,
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
        collected = read_day(prod_storage, spec, day)
        if collected is None:
            context.log.info(f"no requests were collected on {day}")
            return dg.MaterializeResult(metadata={"records": 0, "requests": 0})
        reference = CuratedStore(storage, spec).read(
            columns=[spec.time, *numeric], until=pd.Timestamp(day).date()
        )
        if reference.num_rows:
            last = pc.max(reference[spec.time]).as_py()
            window = spec.validation.drift.reference_periods * to_offset(spec.frequency)
            start = pd.Timestamp(last) - window
            reference = reference.filter(
                pc.greater(reference[spec.time], pa.scalar(start.date(), reference[spec.time].type))
            )

        def values(table: pa.Table, c: str) -> np.ndarray:
            if c not in table.column_names:
                return np.array([])
            return pc.cast(table[c], pa.float64()).to_numpy(zero_copy_only=False)

        inputs = [c for c in spec.features.exogenous if c in collected.column_names]
        drift = feature_drift(
            {c: values(reference, c) for c in inputs}, {c: values(collected, c) for c in inputs}
        )
        errors = pc.value_counts(collected["error"].drop_null()).to_pylist()
        md: dict = {
            "records": collected.num_rows,
            "requests": pc.count_distinct(collected["request_id"]).as_py()
            if "request_id" in collected.column_names
            else 0,
            "errors": {d["values"]: int(d["counts"]) for d in errors},
            "error_rate": round(sum(d["counts"] for d in errors) / collected.num_rows, 4),
            "features_drifting": [d["feature"] for d in drift if d["verdict"] == "large"],
            "input_drift": dg.MetadataValue.table(
                [dg.TableRecord(d) for d in drift], schema=_DRIFT_SCHEMA
            ),
        }
        if "prediction" in collected.column_names:
            md["median_prediction"] = float(np.nanmedian(values(collected, "prediction")))
        if inputs:
            first = inputs[0]
            md[f"{first}_distribution"] = dg.MetadataValue.md(
                histograms(
                    {"training": values(reference, first), "served": values(collected, first)},
                    f"{spec.name}: {first}, training vs served",
                    first,
                )
            )
        return dg.MaterializeResult(metadata=md)

    return inference_summary
