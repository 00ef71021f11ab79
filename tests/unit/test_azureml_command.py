"""The AML command job our compute resource builds: entity, YAML round trip, same script."""

import json
import threading
import time

import pytest
from azure.ai.ml import load_job

from resources.compute import AzureMLBatchCompute, job_name, whole_lines

STORE = {"kind": "azure", "account_url": "https://acct.blob.core.windows.net", "container": "c"}
PARAMS = json.dumps(  # a DropBatch of two drops, as the batch scoring asset passes it
    {
        "spec": {"name": "sales"},  # the whole DatasetSpec JSON in practice
        "storage": STORE,
        "model_storage": STORE,
        "model_set": {
            "name": "sales-models",
            "version": "2026-11-20/abcd1234",
            "folder": "models/sales/releases/2026-11-20/abcd1234",
            "manifest_sha256": "ab" * 32,
            "registry_version": 3,
        },
        "drops": [
            {"drop": "scoring/sales/inbox/a.csv", "etag": "0x1", "key": "a.csv@0x1"},
            {"drop": "scoring/sales/inbox/b.csv", "etag": "0x2", "key": "b.csv@0x2"},
        ],
    },
    separators=(",", ":"),
)
KEY = "batch:0123456789abcdef"


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
    name = job_name("run-1", KEY)
    cmd = _compute(instance_count=instances, code=str(tmp_path)).build_command(
        params_json=PARAMS, name=name, key=KEY
    )
    assert cmd.name == name and name == job_name("run-1", KEY)  # deterministic
    assert cmd.tags["mlops/key"] == KEY and KEY in cmd.display_name
    assert cmd.compute == "cpu-batch"
    assert cmd.environment == "azureml:mlops-batch:3"
    assert cmd.resources.instance_count == instances
    env = cmd.environment_variables
    assert env["MLOPS_JOB_PARAMS"] == PARAMS and env["MLOPS_X"] == "1"
    assert env["MLOPS_PIPES_TRANSPORT"] == "azure_blob"
    assert cmd.command == "python -m mlops_assets.jobs.score_drops"
    assert (cmd.distribution is not None) == (instances > 1)
    path = tmp_path / "job.yml"
    cmd._to_job().dump(path)  # noqa: SLF001 - the node as the job PipesAzureMLClient submits
    back = load_job(path)
    assert back.compute == "cpu-batch"
    assert back.resources.instance_count == instances
    assert back.environment_variables["MLOPS_JOB_PARAMS"] == PARAMS
    assert json.loads(back.environment_variables["MLOPS_JOB_PARAMS"])["drops"][1]["etag"] == "0x2"
    assert back.command == cmd.command
    assert back.name == name


def test_job_names_differ_per_drop_and_attempt():
    assert job_name("r", "a@1") != job_name("r", "a@2")
    assert job_name("r", "a@1", 0) != job_name("r", "a@1", 1)
    assert job_name("r", KEY) != job_name("r2", KEY)


def test_whole_lines_holds_a_half_written_line(tmp_path):
    """The local Pipes reader never parses part of a message (Dagster's tail_file does)."""
    path = tmp_path / "messages"
    path.write_bytes(b'{"a": 1}\n{"b"')
    closed, got = threading.Event(), []

    def read():
        for line in whole_lines(str(path), closed.is_set, poll_s=0.001):
            got.append(line)

    thread = threading.Thread(target=read)
    thread.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert got == ['{"a": 1}']  # the half line waits for its newline
    with open(path, "ab") as f:
        f.write(b': 2}\n{"c": 3}\n')
    closed.set()
    thread.join(10)
    assert got == ['{"a": 1}', '{"b": 2}', '{"c": 3}']


def test_same_script_runs_locally_under_pipes(tmp_path):
    """The command's module, run by PipesSubprocessClient, scores a batch of two drops on two
    instances: one message per drop, each instance's part of each drop written."""
    import io

    import dagster as dg
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mlops_assets.domain import batch_layout as layout
    from mlops_assets.domain.demo_model_set import demo_ref, publish_model_set
    from mlops_assets.jobs.batch_params import DropBatch, DropJob
    from mlops_assets.ml.sample_data import SalesShape, sales_table
    from mlops_assets.ml.spec import load_spec
    from mlops_assets.storage import LocalStorage
    from resources.compute import LocalBatchCompute

    spec = load_spec("sales")
    storage = LocalStorage(root=str(tmp_path))
    full = sales_table(SalesShape(8, 125, seed=1))
    cut = sorted(set(full["week"].to_pylist()))[120]
    publish_model_set(storage, spec, full.filter(pc.less(full["week"], cut)), "m/v1")
    new = full.filter(pc.greater_equal(full["week"], cut))
    cfg = {"kind": "local", "root": str(tmp_path)}
    jobs = []
    for name, table in (("a", new), ("b", new.slice(0, 11))):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        info = storage.write_bytes(f"scoring/sales/inbox/{name}.parquet", buf.getvalue())
        key = f"{name}.parquet@{info.etag}"
        ref = demo_ref(storage, spec, "m/v1").to_dict()
        jobs.append(DropJob(spec.model_dump(mode="json"), info.name, info.etag, key, cfg, cfg, ref))
    batch = DropBatch.of(jobs)
    seen = []

    @dg.asset
    def scored(context: dg.AssetExecutionContext):
        inv = LocalBatchCompute(instance_count=2).run_scoring(
            context, params_json=batch.to_json(), key="batch:test"
        )
        seen.extend(inv.get_custom_messages())
        return dg.MaterializeResult()

    assert dg.materialize([scored]).success
    assert [m["key"] for m in seen] == batch.keys
    assert all(m["status"] == "scored" and m["instances"] == 2 for m in seen)
    assert [m["rows_scored"] for m in seen] == [8 * 5, 11]
    assert seen[0]["series"] == 8
    for job, m in zip(jobs, seen, strict=True):
        rows = sum(
            pq.read_table(
                storage.local_path(layout.predictions_name("sales", job.key, r, 2))
            ).num_rows
            for r in range(2)
        )
        assert rows == m["rows_scored"] and len(m["outputs"]) == 2


def test_jobs_run_under_the_clusters_managed_identity(tmp_path):
    """Default: the cluster's managed identity (no user token needed to submit unattended)."""
    from azure.ai.ml.entities import ManagedIdentityConfiguration

    cmd = _compute(code=str(tmp_path)).build_command(params_json=PARAMS, name="n", key=KEY)
    assert isinstance(cmd.identity, ManagedIdentityConfiguration)
    assert cmd.identity.client_id is None
    assert "AZURE_CLIENT_ID" not in cmd.environment_variables
    path = tmp_path / "job.yml"
    cmd._to_job().dump(path)  # noqa: SLF001 - the job PipesAzureMLClient submits
    assert load_job(path).identity.type == "managed_identity"


def test_a_user_assigned_identity_is_named_by_client_id(tmp_path):
    from azure.ai.ml.entities import ManagedIdentityConfiguration

    client_id = "11111111-2222-3333-4444-555555555555"
    cmd = _compute(code=str(tmp_path), identity_client_id=client_id).build_command(
        params_json=PARAMS, name="n", key=KEY
    )
    assert isinstance(cmd.identity, ManagedIdentityConfiguration)
    assert cmd.identity.client_id == client_id
    # DefaultAzureCredential in the job (Pipes and storage clients) picks the same identity.
    assert cmd.environment_variables["AZURE_CLIENT_ID"] == client_id
    path = tmp_path / "job.yml"
    cmd._to_job().dump(path)  # noqa: SLF001
    back = load_job(path).identity
    assert back.type == "managed_identity" and back.client_id == client_id


def test_the_user_identity_is_a_choice(tmp_path):
    from azure.ai.ml.entities import UserIdentityConfiguration

    cmd = _compute(code=str(tmp_path), identity="user").build_command(
        params_json=PARAMS, name="n", key=KEY
    )
    assert isinstance(cmd.identity, UserIdentityConfiguration)
    with pytest.raises(ValueError, match="identity_client_id"):
        _compute(identity="user", identity_client_id="x").build_command(
            params_json=PARAMS, name="n", key=KEY
        )
