"""The Spark engine on a standalone cluster (a master and two workers started from pyspark's
own launcher): its executors read the curated shards, and the models equal the local engine's.

The driver is a process of its own (``tests.fixtures.spark_driver``): this process may already
hold the suite's ``local[2]`` SparkContext.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

import pytest

from mlops_assets.domain.ingest_run import run_ingestion
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.domain.training_run import train_candidate
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.storage import LocalStorage
from resources.training_engine import LocalTrainingEngine
from tests.fixtures.spark_cluster import REPO_ROOT, spark_cluster, start_connect_server
from tests.fixtures.spark_driver import MANIFEST_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

AS_OF = "2026-11-17"


@pytest.fixture(scope="module")
def cluster():
    with spark_cluster(workers=2, cores=1, memory="1g") as started:
        yield started


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> LocalStorage:
    """Six series, curated into four shards."""
    spec = load_spec("sales")
    storage = LocalStorage(tmp_path_factory.mktemp("spark-cluster-store"))
    land_sales(storage, spec, SalesShape(6, 90), n_drops=1)
    run_ingestion(storage, spec, date.fromisoformat(AS_OF), n_shards=4, data_docs=False)
    return storage


def _drive(cluster, storage: LocalStorage, *runs: str, remote: str = "") -> list[dict]:
    env = {**cluster.env(), "MLOPS_SPARK_MASTER": cluster.master_url, "MLOPS_SPARK_REMOTE": remote}
    done = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.spark_driver", str(storage.root), AS_OF, *runs],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-len(runs) :]]


def test_the_cluster_reads_the_shards_and_trains_the_local_engines_models(cluster, curated):
    spec = load_spec("sales")
    local = train_candidate(
        curated, spec, LocalTrainingEngine(max_workers=1), as_of=AS_OF, run_id="local000"
    )
    changed, on_cluster = _drive(cluster, curated, "cluster0+changed", "cluster1")
    assert changed["read_shards"] is True
    # The executors' fingerprints equal the local run's: a changed-only run trains nothing.
    assert changed["trained"] == []
    assert changed["rows"] == on_cluster["rows"] == local.rows
    assert len(on_cluster["trained"]) == 6
    expected = {c: local.manifest[c].to_pylist() for c in MANIFEST_COLUMNS}
    assert on_cluster["manifest"] == expected


@pytest.mark.skipif(
    not os.environ.get("MLOPS_TEST_SPARK_CONNECT"),
    reason="~45 s more (a Spark Connect server): set MLOPS_TEST_SPARK_CONNECT=1",
)
def test_a_spark_connect_session_on_the_cluster_trains_the_same_models(cluster, curated):
    """``MLOPS_SPARK_REMOTE``: the driver is a Spark Connect server (how Databricks is reached)
    and this side only a client; the executors still read the shards. Opt-in: the suite's
    time budget holds the cluster test above only."""
    spec = load_spec("sales")
    local = train_candidate(
        curated, spec, LocalTrainingEngine(max_workers=1), as_of=AS_OF, run_id="local001"
    )
    remote = start_connect_server(cluster)
    (on_connect,) = _drive(cluster, curated, "connect0", remote=remote)
    assert on_connect["read_shards"] is True
    assert on_connect["manifest"]["model_sha256"] == local.manifest["model_sha256"].to_pylist()
