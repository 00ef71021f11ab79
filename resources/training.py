"""Training engines as resources: the same per-series function, run where configuration says.

``LocalTrainingEngine`` trains in a pool of processes on this machine. ``SparkTrainingEngine``
runs ``groupBy(keys).applyInPandas`` on the session of dagster-pyspark's ``PySparkResource``
(``local[*]`` by default, a remote cluster through its Spark config or Spark Connect).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster_pyspark import PySparkResource
from pydantic import Field

from mlops_assets.ml.engines import train_local, train_spark
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import decode_dictionaries


class TrainingEngine(dg.ConfigurableResource, ABC):
    """Trains one model per series of a table; returns one ``result_schema`` row per series."""

    @property
    @abstractmethod
    def name(self) -> str: ...

    @abstractmethod
    def train(
        self,
        table: pa.Table,
        spec: DatasetSpec,
        series: Sequence[str] | None = None,
        stats: dict[str, Any] | None = None,
    ) -> pd.DataFrame: ...


class LocalTrainingEngine(TrainingEngine):
    max_workers: int | None = Field(default=None, description="Processes; default: all cores.")

    @property
    def name(self) -> str:
        return "local"

    def train(self, table, spec, series=None, stats=None) -> pd.DataFrame:
        return train_local(table, spec, series=series, max_workers=self.max_workers, stats=stats)


class SparkTrainingEngine(TrainingEngine):
    pyspark: dg.ResourceDependency[PySparkResource]

    @property
    def name(self) -> str:
        return "spark"

    def train(self, table, spec, series=None, stats=None) -> pd.DataFrame:
        import time

        started = time.perf_counter()
        session = self.pyspark.spark_session
        session.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
        sdf = session.createDataFrame(decode_dictionaries(table).to_pandas())
        out = train_spark(sdf, spec, series=series).toPandas()
        if stats is not None:
            stats.update(wall_s=time.perf_counter() - started, series=len(out))
        return out.sort_values("series_id", ignore_index=True)


def local_spark(app_name: str = "mlops-assets") -> PySparkResource:
    """A ``local[*]`` session with settings that suit many small groups on one machine."""
    return PySparkResource(
        spark_config={
            "spark.master": "local[*]",
            "spark.app.name": app_name,
            "spark.sql.shuffle.partitions": "8",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "4g",
        }
    )
