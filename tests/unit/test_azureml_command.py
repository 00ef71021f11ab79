"""The AML command job our compute resource builds: entity, YAML round trip, same script."""

import json

import pytest
from azure.ai.ml import load_job

from resources.compute import AzureMLBatchCompute, job_name

PARAMS = json.dumps({"dataset": "sales", "drop": "scoring/sales/inbox/a.csv", "etag": "0x1"})


def _compute(**kw):
    return AzureMLBatchCompute(
        subscription_id="00000000-0000-0000-0000-000000000000",
        resource_group="rg",
        workspace="ws",
        compute="cpu-batch",
        environment="azureml:mlops-batch:3",
        pipes_account_url="https://acct.blob.core.windows.net",
        env_vars={"MLOPS_X": "1"},
        **kw,
    )


@pytest.mark.parametrize("instances", [1, 4])
def test_command_entity_round_trips(tmp_path, instances):
    name = job_name("run-1", "a.csv@0x1")
    cmd = _compute(instance_count=instances, code=str(tmp_path)).build_command(
        params_json=PARAMS, name=name, key="a.csv@0x1"
    )
    assert cmd.name == name and name == job_name("run-1", "a.csv@0x1")  # deterministic
    assert cmd.compute == "cpu-batch"
    assert cmd.environment == "azureml:mlops-batch:3"
    assert cmd.resources.instance_count == instances
    env = cmd.environment_variables
    assert env["MLOPS_JOB_PARAMS"] == PARAMS and env["MLOPS_X"] == "1"
    assert env["MLOPS_PIPES_TRANSPORT"] == "azure_blob"
    assert cmd.command == "python -m mlops_assets.batch.score_drop"
    assert (cmd.distribution is not None) == (instances > 1)
    path = tmp_path / "job.yml"
    cmd._to_job().dump(path)  # the node as the job PipesAzureMLClient submits
    back = load_job(path)
    assert back.compute == "cpu-batch"
    assert back.resources.instance_count == instances
    assert back.environment_variables["MLOPS_JOB_PARAMS"] == PARAMS
    assert back.command == cmd.command
    assert back.name == name


def test_job_names_differ_per_drop_and_attempt():
    assert job_name("r", "a@1") != job_name("r", "a@2")
    assert job_name("r", "a@1", 0) != job_name("r", "a@1", 1)


def test_same_script_runs_locally_under_pipes(tmp_path):
    """The command's module, run by PipesSubprocessClient, scores a drop (2 instances)."""
    import io

    import dagster as dg
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mlops_assets.batch import layout
    from mlops_assets.batch.demo import publish_model_set
    from mlops_assets.batch.score_drop import DropJob
    from mlops_assets.ml.sample_data import SalesShape, sales_table
    from mlops_assets.ml.spec import load_spec
    from resources.compute import LocalBatchCompute
    from resources.storage import LocalStorage

    spec = load_spec("sales")
    storage = LocalStorage(root=str(tmp_path))
    full = sales_table(SalesShape(8, 125, seed=1))
    cut = sorted(set(full["week"].to_pylist()))[120]
    publish_model_set(storage, spec, full.filter(pc.less(full["week"], cut)), "m/v1")
    buf = io.BytesIO()
    pq.write_table(full.filter(pc.greater_equal(full["week"], cut)), buf)
    info = storage.write_bytes("scoring/sales/inbox/a.parquet", buf.getvalue())
    key = f"a.parquet@{info.etag}"
    cfg = {"kind": "local", "root": str(tmp_path)}
    job = DropJob("sales", info.name, info.etag, key, cfg, cfg, "m/v1", "1")
    seen = {}

    @dg.asset
    def scored(context: dg.AssetExecutionContext):
        inv = LocalBatchCompute(instance_count=2).run_scoring(
            context, params_json=job.to_json(), key=key
        )
        seen.update(inv.get_custom_messages()[-1])
        return dg.MaterializeResult()

    assert dg.materialize([scored]).success
    assert seen["status"] == "scored" and seen["instances"] == 2
    assert seen["rows_scored"] == 8 * 5 and seen["series"] == 8
    rows = sum(
        pq.read_table(storage.local_path(layout.predictions_name("sales", key, r, 2))).num_rows
        for r in range(2)
    )
    assert rows == 40
