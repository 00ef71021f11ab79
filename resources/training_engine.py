"""Training engines as resources: the same per-series function, run where configuration says.

``LocalTrainingEngine`` trains in a pool of processes on this machine. ``SparkTrainingEngine``
runs ``groupBy(keys).applyInPandas`` on the session of dagster-pyspark's ``PySparkResource``
(``local[*]`` by default, a standalone cluster or Spark Connect through ``spark_resource``).
With ``read_shards`` its executors read the curated Parquet shards themselves: the run hands
it the shards' addresses (``reads_shards``), never the table.
"""

import os
from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_pyspark import PySparkResource
from pydantic import Field

from mlops_assets.domain.shard_training import ShardResult, ShardTask, train_shards
from mlops_assets.ml.engines import train_local, train_spark
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spark_shards import read_curated, spark_fingerprints
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import Storage
from resources.compute import AzureMLBatchCompute, BatchCompute


class TrainingEngine(dg.ConfigurableResource, ABC):
    """Trains one model per series of a table; returns one ``result_schema`` row per series."""

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    def reads_shards(self) -> bool:
        """Whether the run passes the curated shards' addresses (``shards``), not a table."""
        return False

    @property
    def by_shard(self) -> bool:
        """Whether the engine trains on this machine, its workers reading and training the
        curated shards themselves (``train_shards``): a run that trains every series then
        hands them shard names, not rows (a remote engine reads the curated data itself)."""
        return False

    def fingerprints(self, shards: Sequence[str], spec: DatasetSpec, as_of: str) -> pa.Table:
        """``tables.series_fingerprints`` of the shards' rows up to ``as_of``, computed where
        the engine runs (engines that ``reads_shards``)."""
        raise NotImplementedError(f"the {self.name} engine does not read the shards itself")

    def train_shards(self, tasks: Sequence[ShardTask]) -> Generator[ShardResult]:
        """Each shard task's result (``shard_training.train_shard``), in the tasks' order
        (engines that train ``by_shard``)."""
        raise NotImplementedError(f"the {self.name} engine does not train shards itself")

    @abstractmethod
    def train(
        self,
        table: pa.Table | None,
        spec: DatasetSpec,
        series: Sequence[str] | None = None,
        phases: Phases | None = None,
        *,
        context: dg.AssetExecutionContext | None = None,
        as_of: str | None = None,
        shards: Sequence[str] = (),
    ) -> pd.DataFrame:
        """Result records (``engines.result_schema``) of ``series`` (None: all) in ``table``.

        ``phases``, if given, gets the engine's phase seconds (at least ``wall``). Remote engines
        read the curated data themselves (up to ``as_of``) and report to
        ``context`` through Pipes; in-process engines use ``table``; engines that
        ``reads_shards`` get ``table=None`` and read ``shards`` (Hadoop URIs) up to ``as_of``.
        """


class LocalTrainingEngine(TrainingEngine):
    max_workers: int | None = Field(default=None, description="Processes; default: all cores.")

    @property
    def name(self) -> str:
        return "local"

    @property
    def by_shard(self) -> bool:
        return True

    def train_shards(self, tasks):
        return train_shards(tasks, self.max_workers or os.cpu_count() or 1)

    def train(self, table, spec, series=None, phases=None, *, context=None, as_of=None, shards=()):
        return train_local(table, spec, series=series, max_workers=self.max_workers, phases=phases)


class SparkTrainingEngine(TrainingEngine):
    pyspark: PySparkResource
    read_shards: bool = Field(
        default=False,
        description="Executors read the curated Parquet shards (and fingerprint the series) "
        "themselves; otherwise the driver sends them the table it was given.",
    )

    @property
    def name(self) -> str:
        return "spark"

    @property
    def reads_shards(self) -> bool:
        return self.read_shards

    def _session(self):
        session = self.pyspark.spark_session
        session.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
        return session

    def fingerprints(self, shards, spec, as_of):
        session = self._session()
        buckets = int(session.conf.get("spark.sql.shuffle.partitions") or 200)
        return spark_fingerprints(read_curated(session, shards, spec, as_of), spec, buckets)

    def train(self, table, spec, series=None, phases=None, *, context=None, as_of=None, shards=()):
        with (phases or Phases())("wall"):
            session = self._session()
            if self.read_shards:
                sdf = read_curated(session, shards, spec, as_of)
            else:
                sdf = session.createDataFrame(decode_dictionaries(table).to_pandas())
            out: pd.DataFrame = train_spark(sdf, spec, series=series).toPandas()
        return out.sort_values("series_id", ignore_index=True)


def local_spark(app_name: str = "mlops-assets", master: str = "local[*]") -> PySparkResource:
    """A session on ``master`` (``local[*]``: this machine) with settings that suit many small
    groups."""
    return PySparkResource(
        spark_config={
            "spark.master": master,
            "spark.app.name": app_name,
            "spark.sql.shuffle.partitions": "8",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "4g",
        }
    )


def spark_engine(master: str = "", remote: str = "") -> SparkTrainingEngine:
    """The Spark engine on a Spark Connect server (``remote``: ``sc://host:15002/;token=...``,
    e.g. Databricks or Synapse), else on ``master`` (``spark://host:7077``, ``yarn``;
    empty: ``local[*]``).

    On a cluster (anything but ``local``) the executors read the curated shards themselves
    (``read_shards``); on this machine the driver hands them the table, as before.
    """
    if remote:
        return SparkTrainingEngine(
            pyspark=PySparkResource(spark_config={"spark.remote": remote}), read_shards=True
        )
    master = master or "local[*]"
    return SparkTrainingEngine(
        pyspark=local_spark(master=master), read_shards=not master.startswith("local")
    )


class PipesTrainingEngine(TrainingEngine):
    """Training as a remote job (``mlops_assets.jobs.train``) on the ``compute`` resource.

    With ``AzureMLBatchCompute`` it is an Azure ML command job on a compute cluster whose
    instances split the series; with ``LocalBatchCompute`` the very same script runs as a
    local subprocess under Pipes (how the tests run it).
    """

    compute: BatchCompute
    storage: dg.ResourceDependency[Storage]
    max_workers: int | None = Field(default=None, description="Processes per instance.")

    @property
    def name(self) -> str:
        return "azureml" if isinstance(self.compute, AzureMLBatchCompute) else "subprocess"

    def train(self, table, spec, series=None, phases=None, *, context=None, as_of=None, shards=()):
        if context is None or as_of is None:
            raise ValueError("a remote training engine needs the asset's context and as-of date")
        with (phases or Phases())("wall"):
            return self._run_job(spec, series, context, as_of)

    def _run_job(self, spec, series, context, as_of: str) -> pd.DataFrame:
        from mlops_assets.jobs.train import MODULE, TrainJob

        output = f"models/{spec.name}/remote/{context.run.run_id}"
        job = TrainJob(
            spec=spec.model_dump(mode="json"),
            as_of=as_of,
            storage=self.storage.config(),
            output=output,
            series=list(series) if series is not None else None,
            max_workers=self.max_workers,
        )
        self.compute.run_module(
            context,
            module=MODULE,
            params_json=job.to_json(),
            key=f"{spec.name}/{as_of}",
            purpose="train",
        )
        parts = [b.name for b in self.storage.list(f"{output}/part-")]
        if len(parts) != self.compute.instance_count:
            raise RuntimeError(
                f"the training job wrote {len(parts)} of {self.compute.instance_count} result "
                f"parts under {self.storage.uri(output)}; see the job's logs"
            )
        tables = [pq.read_table(self.storage.open_read(p)) for p in parts]
        return pa.concat_tables(tables).to_pandas().sort_values("series_id", ignore_index=True)
