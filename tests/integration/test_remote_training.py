"""The azureml training engine: its AML command job, and the same script run locally."""

import dagster as dg
import pyarrow.compute as pc
import pytest
from as_of import as_of_instance
from azure.ai.ml import load_job

from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.assets.training import build_training_asset
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.model_sets import latest_pointer, read_manifest, read_pointer
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.jobs.train import MODULE, TrainJob
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.sample_data import SalesShape
from mlops_assets.ml.spec import load_spec
from mlops_assets.storage import LocalStorage
from resources.compute import AzureMLBatchCompute, LocalBatchCompute
from resources.training_engine import PipesTrainingEngine

pytestmark = pytest.mark.integration
SALES = load_spec("sales")


def test_remote_engine_trains_the_same_models_as_the_local_engine(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    land_sales(storage, SALES, SalesShape(8, 100), n_drops=1)
    engine = PipesTrainingEngine(compute=LocalBatchCompute(instance_count=2), storage=storage)
    result = dg.materialize(
        [build_ingestion_asset(SALES), build_training_asset(SALES)],
        resources={"storage": storage, "training": engine},
        partition_key="2026-11-17",
        instance=as_of_instance(SALES, "2026-11-17"),
    )
    assert result.success
    meta = result.asset_materializations_for_node("sales__candidate_models")[0].metadata
    assert meta["engine"].value == "subprocess" and meta["series_trained"].value == 8
    # Two instances, each with its share: two parts, every series once.
    run_id = result.run_id
    parts = storage.list(f"models/sales/remote/{run_id}/part-")
    assert len(parts) == 2
    manifest = read_manifest(storage, read_pointer(storage, latest_pointer(SALES)))

    local = train_local(CuratedStore(storage, SALES).read(), SALES, max_workers=1)
    local = local.sort_values("series_id", ignore_index=True)
    assert manifest["series_id"].to_pylist() == local["series_id"].tolist()
    assert manifest["model_sha256"].to_pylist() == local["model_sha256"].tolist()
    assert pc.max(pc.abs(pc.subtract(manifest["smape"], local["smape"].to_numpy()))).as_py() < 1e-12


def test_the_training_job_is_a_valid_azure_ml_command_job(tmp_path):
    compute = AzureMLBatchCompute(
        subscription_id="00000000-0000-0000-0000-000000000000",
        resource_group="rg",
        workspace="ws",
        compute="cpu-train",
        environment="azureml:mlops-train@latest",
        pipes_account_url="https://acct.blob.core.windows.net",
        instance_count=4,
    )
    job = TrainJob(
        spec=SALES.model_dump(mode="json"),
        as_of="2026-11-17",
        storage={
            "kind": "azure",
            "account_url": "https://acct.blob.core.windows.net",
            "container": "mlops",
            "prefix": "",
        },
        output="models/sales/remote/run",
    )
    command = compute.build_command(
        params_json=job.to_json(),
        name="mlops-train-abc-a0",
        key="sales/2026-11-17",
        module=MODULE,
        purpose="train",
    )
    path = tmp_path / "job.yml"
    command._to_job().dump(path)  # noqa: SLF001 - the job PipesAzureMLClient submits
    back = load_job(path)
    assert back.command == f"python -m {MODULE}"
    assert back.compute == "cpu-train" and back.resources.instance_count == 4
    assert back.distribution.process_count_per_instance == 1
    assert TrainJob.from_json(back.environment_variables["MLOPS_JOB_PARAMS"]) == job
    assert back.environment_variables["MLOPS_PIPES_TRANSPORT"] == "azure_blob"
    assert back.tags["mlops/purpose"] == "train"
