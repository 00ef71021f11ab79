"""Spark on a standalone cluster: the engine against a bare ``applyInPandas``, same cluster.

Starts a master and two workers (1 core, 1g each) from pyspark's own launcher
(``tests.fixtures.spark_cluster``), curates generated sales data into Parquet shards, and then,
with this process as the driver, times in one session (``--repeats`` rounds, alternating):

- ``bare``: ``spark.read.parquet(shards).groupBy(keys).applyInPandas(f)`` with ``f`` the
  engine's own per-series function (``engines.spark_group_function``): the floor;
- ``engine``: ``SparkTrainingEngine(read_shards=True).train`` (read, as-of filter, the same
  ``applyInPandas``, results to the driver);
- ``fingerprints``: the engine's per-series fingerprints (what a changed-only run compares);
- ``driver-collect`` (last; ``--skip-collect`` skips it): the path without ``read_shards``, the
  driver reading the table and sending it (``createDataFrame``), for its memory.

Each figure has its wall time, the CPU time of the driver (Python and its JVM) and of the
cluster (daemons, executors and their Python workers), and the load average; the ratio takes
each side's best round (wall time, and the cluster's CPU time) and the medians. The driver's
peak RSS (Python and JVM, sampled) is compared with the curated table's in-memory size: the
run fails if the Python driver grew by more than a quarter of it (a collect would need all).
Writes ``benchmarks/results/spark_cluster.json``.

    python -m benchmarks.bench_spark_cluster --series 2000 --periods 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import dagster as dg
import psutil

from benchmarks.common import write_result
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.ml.engines import spark_group_function, spark_result_schema, train_spark
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.sample_data import SalesShape, iter_sales
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import LocalStorage
from mlops_assets.storage.hadoop import hadoop_uri
from resources.training_engine import spark_engine
from tests.fixtures.spark_cluster import SparkCluster, spark_cluster

AS_OF = "2026-11-17"
TARGET_RATIO = 1.2
MB = 1024 * 1024
# pyspark warns on every pandas UDF that it was not yet tested with pandas 3.
warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)


def _tree(roots: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for root in roots:
        try:
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


class Processes:
    """The driver's processes (this one and its JVM) and the cluster's (daemons, executors,
    Python workers): the cluster's daemons are children of this process too."""

    def __init__(self, cluster: SparkCluster):
        self.me = psutil.Process()
        self.daemons = [psutil.Process(p.pid) for p in cluster.processes]

    def cluster(self) -> list[psutil.Process]:
        return _tree(self.daemons)

    def driver_jvm(self) -> list[psutil.Process]:
        theirs = {p.pid for p in self.cluster()}
        return [p for p in _tree([self.me])[1:] if p.pid not in theirs]


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _cpu(procs: list[psutil.Process]) -> float:
    """User + system seconds of processes (and of their reaped children)."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class RssSampler:
    """Peak RSS of the driver: this process, and its JVM, sampled every ``every_s``."""

    def __init__(self, procs: Processes, every_s: float = 0.05):
        self.procs = procs
        self.every_s = every_s
        self.python_peak = self.jvm_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.every_s)

    def sample(self) -> None:
        self.python_peak = max(self.python_peak, _rss([self.procs.me]))
        self.jvm_peak = max(self.jvm_peak, _rss(self.procs.driver_jvm()))

    def reset(self) -> None:
        self.python_peak = self.jvm_peak = 0
        self.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def curate(root: Path, spec: DatasetSpec, shape: SalesShape, shards: int) -> CuratedStore:
    store = CuratedStore(LocalStorage(root), spec, n_shards=shards)
    for chunk in iter_sales(shape):
        store.merge(chunk)
    return store


def measure(name: str, fn: Callable[[], object], rss: RssSampler) -> dict:
    procs = rss.procs
    rss.reset()
    python_before = rss.python_peak
    driver0 = _cpu([procs.me, *procs.driver_jvm()])
    cluster0, wall0 = _cpu(procs.cluster()), time.perf_counter()
    fn()
    wall = time.perf_counter() - wall0
    rss.sample()
    return {
        "name": name,
        "wall_s": round(wall, 3),
        "driver_cpu_s": round(_cpu([procs.me, *procs.driver_jvm()]) - driver0, 3),
        "cluster_cpu_s": round(_cpu(procs.cluster()) - cluster0, 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "driver_python_peak_mb": round(rss.python_peak / MB, 1),
        "driver_python_growth_mb": round((rss.python_peak - python_before) / MB, 1),
        "driver_jvm_peak_mb": round(rss.jvm_peak / MB, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--periods", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--skip-collect", action="store_true", help="skip the driver-collect run (the old path)"
    )
    args = parser.parse_args(argv)
    spec = load_spec("sales")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        started = time.perf_counter()
        store = curate(Path(tmp), spec, SalesShape(args.series, args.periods), args.shards)
        curate_s = time.perf_counter() - started
        shards = [hadoop_uri(store.storage, n) for n in store.files()]
        with spark_cluster(workers=2, cores=1, memory="1g") as cluster:
            os.environ.update(cluster.env())
            cluster_s = time.perf_counter() - started - curate_s
            result = run_on_cluster(cluster, store, shards, args.repeats, not args.skip_collect)
        # After the Spark figures: this read is what a driver collect would hold.
        table = decode_dictionaries(store.read(until=date.fromisoformat(AS_OF)))
        table_mb = table.nbytes / MB
        pandas_mb = table.to_pandas().memory_usage(deep=True).sum() / MB
        rows = table.num_rows
        del table
    engine_runs = [r for r in result["runs"] if r["name"] == "engine"]
    growth = max(r["driver_python_growth_mb"] for r in engine_runs)
    out = {
        "series": args.series,
        "periods": args.periods,
        "rows": rows,
        "shards": args.shards,
        "cluster": "1 master + 2 workers x 1 core x 1g (standalone, 127.0.0.1)",
        "curate_s": round(curate_s, 2),
        "cluster_start_s": round(cluster_s, 2),
        "table_arrow_mb": round(table_mb, 1),
        "table_pandas_mb": round(pandas_mb, 1),
        "engine_driver_python_growth_mb": growth,
        "collect_driver_python_growth_mb": next(
            (r["driver_python_growth_mb"] for r in result["runs"] if r["name"] == "driver-collect"),
            None,
        ),
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "target_ratio": TARGET_RATIO,
        **result,
    }
    write_result("spark_cluster", out)
    if growth > table_mb / 4:
        raise SystemExit(f"the driver grew by {growth} MB: the table ({table_mb:.0f} MB) came back")
    if not result["same_models"]:
        raise SystemExit("the engine's models differ from the bare applyInPandas's")
    return out


def run_on_cluster(
    cluster: SparkCluster, store: CuratedStore, shards: list[str], repeats: int, collect: bool
) -> dict:
    spec = store.spec
    models: dict[str, list] = {}
    engine_resource = spark_engine(master=cluster.master_url)
    procs = Processes(cluster)
    with dg.build_resources({"training": engine_resource}) as res, RssSampler(procs) as rss:
        engine = res.training
        session = engine.pyspark.spark_session
        session.sparkContext.setLogLevel("ERROR")
        schema = spark_result_schema(spec)

        def bare():
            sdf = session.read.parquet(*shards)
            grouped = sdf.groupBy(*spec.series_keys)
            out = grouped.applyInPandas(spark_group_function(spec), schema=schema).toPandas()
            models["bare"] = sorted(out["model_sha256"].dropna())

        def trained():
            out = engine.train(None, spec, phases=Phases(), as_of=AS_OF, shards=shards)
            models["engine"] = sorted(out["model_sha256"].dropna())

        def collected():
            """The path without ``read_shards``: the driver reads the table and sends it."""
            table = decode_dictionaries(store.read(until=date.fromisoformat(AS_OF)))
            train_spark(session.createDataFrame(table.to_pandas()), spec).toPandas()

        # Executors and their Python workers start on the first job: not part of either figure.
        runs = [measure("warm-up", lambda: engine.fingerprints(shards, spec, AS_OF), rss)]
        for i in range(repeats):  # alternating which goes first
            pair = [("bare", bare), ("engine", trained)]
            runs += [measure(n, f, rss) for n, f in (pair if i % 2 == 0 else pair[::-1])]
        prints = measure("fingerprints", lambda: engine.fingerprints(shards, spec, AS_OF), rss)
        runs.append(prints)
        if collect:  # last: it leaves the table's pages in this process
            runs.append(measure("driver-collect", collected, rss))
    best = {n: min(r["wall_s"] for r in runs if r["name"] == n) for n in ("bare", "engine")}
    cpu = {n: min(r["cluster_cpu_s"] for r in runs if r["name"] == n) for n in ("bare", "engine")}
    median = {
        n: statistics.median(r["wall_s"] for r in runs if r["name"] == n)
        for n in ("bare", "engine")
    }
    return {
        "runs": runs,
        "bare_wall_s": best["bare"],
        "engine_wall_s": best["engine"],
        "fingerprints_wall_s": prints["wall_s"],
        "same_models": models["bare"] == models["engine"],
        "engine_over_bare": round(best["engine"] / best["bare"], 3),
        "engine_over_bare_median": round(median["engine"] / median["bare"], 3),
        # The cluster's CPU seconds move less with the machine's load than wall time does.
        "engine_over_bare_cluster_cpu": round(cpu["engine"] / cpu["bare"], 3),
        "engine_with_fingerprints_over_bare": round(
            (best["engine"] + prints["wall_s"]) / best["bare"], 3
        ),
    }


if __name__ == "__main__":
    main()
