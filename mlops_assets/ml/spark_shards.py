"""Curated Parquet shards read by Spark executors: rows up to an as-of date and fingerprints.

The driver only names the shards (``spark.read.parquet``); the executors read them, filter
them and compute each series' fingerprint (``tables.series_fingerprints``, the very function
the local path runs, so a changed-series choice is the same on both paths). What comes back to
the driver is one small row per series.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import series_fingerprints

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

FINGERPRINT_SCHEMA = pa.schema(
    [
        pa.field("series_id", pa.string()),
        pa.field("n_rows", pa.int64()),
        pa.field("data_end", pa.string()),
        pa.field("data_fingerprint", pa.string()),
    ]
)


def read_curated(
    session: SparkSession, shards: Sequence[str], spec: DatasetSpec, until: date | str | None
) -> SparkDataFrame:
    """The spec's columns of ``shards`` (Hadoop URIs), rows with time <= ``until``: lazy."""
    from pyspark.sql import functions as F

    sdf = session.read.parquet(*shards).select(*spec.arrow_schema.names)
    if until is not None:
        bound = pd.Timestamp(until).date()
        sdf = sdf.where(F.col(spec.time) <= F.lit(bound))
    return sdf


def _fingerprint_function(spec: DatasetSpec) -> Callable[[pd.DataFrame], pd.DataFrame]:
    spec_json = spec.model_dump_json()

    def fingerprint_bucket(pdf: pd.DataFrame) -> pd.DataFrame:
        group_spec = DatasetSpec.model_validate_json(spec_json)
        schema = group_spec.arrow_schema
        table = pa.Table.from_pandas(pdf[schema.names], schema=schema, preserve_index=False)
        return series_fingerprints(table, group_spec).to_pandas()

    return fingerprint_bucket


def spark_fingerprints(sdf: SparkDataFrame, spec: DatasetSpec, buckets: int) -> pa.Table:
    """``series_fingerprints`` of ``sdf``'s rows, computed on the executors.

    Rows are grouped into ``buckets`` groups of whole series (a hash of the keys): one Python
    call per bucket, not per series. Returns one row per series, sorted by ``series_id``.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    bucket = F.pmod(F.hash(*spec.series_keys), F.lit(buckets))
    out = sdf.groupBy(bucket).applyInPandas(
        _fingerprint_function(spec), schema=from_arrow_schema(FINGERPRINT_SCHEMA)
    )
    pdf = out.toPandas()
    table = pa.Table.from_pandas(pdf, schema=FINGERPRINT_SCHEMA, preserve_index=False)
    return table.sort_by("series_id")
