"""Where the Spark engine runs (``MLOPS_SPARK_MASTER`` / ``MLOPS_SPARK_REMOTE``) and the
addresses its executors read the curated shards at."""

from __future__ import annotations

import pytest

from mlops_assets.profiles import training_engine
from mlops_assets.storage import AzureBlobStorage, LocalStorage
from mlops_assets.storage.hadoop import hadoop_uri
from resources.training_engine import SparkTrainingEngine, spark_engine


def test_by_default_spark_runs_locally_on_the_table_it_is_given():
    engine = spark_engine()
    assert engine.pyspark.spark_config["spark.master"] == "local[*]"
    assert not engine.reads_shards


def test_a_cluster_master_reads_the_shards_on_its_executors():
    engine = spark_engine(master="spark://10.0.0.4:7077")
    assert engine.pyspark.spark_config["spark.master"] == "spark://10.0.0.4:7077"
    assert engine.reads_shards
    assert not spark_engine(master="local[4]").reads_shards


def test_spark_connect_wins_over_a_master():
    remote = "sc://adb-1.azuredatabricks.net:443/;token=t;x-databricks-cluster-id=c"
    engine = spark_engine(master="spark://10.0.0.4:7077", remote=remote)
    assert engine.pyspark.spark_config == {"spark.remote": remote}
    assert engine.reads_shards


def test_the_profile_reads_the_spark_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MLOPS_SPARK_REMOTE", raising=False)
    monkeypatch.setenv("MLOPS_SPARK_MASTER", " spark://127.0.0.1:7077 ")
    engine = training_engine("spark", "local", LocalStorage(tmp_path))
    assert isinstance(engine, SparkTrainingEngine)
    assert engine.pyspark.spark_config["spark.master"] == "spark://127.0.0.1:7077"
    monkeypatch.setenv("MLOPS_SPARK_REMOTE", "sc://synapse.example:15002")
    engine = training_engine("spark", "local", LocalStorage(tmp_path))
    assert engine.pyspark.spark_config == {"spark.remote": "sc://synapse.example:15002"}


def test_local_shards_are_file_uris(tmp_path):
    uri = hadoop_uri(LocalStorage(tmp_path), "curated/sales/part-000.parquet")
    assert uri == (tmp_path / "curated/sales/part-000.parquet").as_uri()


def test_blob_storage_shards_are_abfss_uris():
    storage = AzureBlobStorage("https://mlopsdev.blob.core.windows.net", "data", prefix="/dev/")
    assert hadoop_uri(storage, "curated/sales/part-000.parquet") == (
        "abfss://data@mlopsdev.dfs.core.windows.net/dev/curated/sales/part-000.parquet"
    )
    plain = AzureBlobStorage("https://mlopsdev.blob.core.windows.net/", "data")
    assert hadoop_uri(plain, "a.parquet") == "abfss://data@mlopsdev.dfs.core.windows.net/a.parquet"


def test_an_emulator_url_has_no_hadoop_address():
    azurite = AzureBlobStorage("http://127.0.0.1:10000/devstoreaccount1", "data")
    with pytest.raises(ValueError, match="not an Azure Storage account URL"):
        hadoop_uri(azurite, "a.parquet")
