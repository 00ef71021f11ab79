"""The serving API key is read when a run needs it: never in the config the UI shows, in run
snapshots or in logs (issue 19, item 3).

The code location is loaded as the webserver loads it (workspace.yaml, a code server
subprocess) with ``MLOPS_SERVING_API_KEY`` set to a unique value; its resources are read back
through the webserver's GraphQL schema (``configuredValues``). A run that uses the endpoint
resource against a keyed endpoint must still authenticate, and the instance's storage (runs,
snapshots, event logs, compute logs) must not hold the key afterwards.
"""

import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster_shared.serdes import serialize_value

from mlops_assets.domain.model_sets import pointer_name, write_pointer
from mlops_assets.ml.spec import load_spec
from mlops_assets.profiles import resources_for
from mlops_assets.serving.local import LocalServer
from mlops_assets.serving.service import ServingSettings
from mlops_assets.serving.synthetic import model_set_ref, synthetic_model_set
from mlops_assets.storage import LocalStorage
from resources.endpoints import LocalEndpoint

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec("sales")

RESOURCES_QUERY = """
query Resources($selector: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $selector) {
    __typename
    ... on ResourceDetailsList {
      results { name configuredValues { key value type } }
    }
  }
}
"""


def files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_ui_shows_no_api_key(tmp_path, monkeypatch):
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    key = f"ui-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("MLOPS_SERVING_API_KEY", key)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_PROFILE", "local")
    monkeypatch.chdir(ROOT)
    (tmp_path / "instance").mkdir()
    with (
        dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance,
        define_out_of_process_context(str(ROOT / "workspace.yaml"), None, instance) as context,
    ):
        selector = {"repositoryLocationName": "mlops_assets", "repositoryName": "__repository__"}
        result = execute_dagster_graphql(context, RESOURCES_QUERY, {"selector": selector})
    assert not result.errors, result.errors
    details = result.data["allTopLevelResourceDetailsOrError"]
    assert details["__typename"] == "ResourceDetailsList", details
    resources = {r["name"]: r["configuredValues"] for r in details["results"]}
    assert "endpoint" in resources
    assert key not in str(resources)
    shown = {v["key"]: v for v in resources["endpoint"]}
    assert shown["api_key_env"]["value"] == '"MLOPS_SERVING_API_KEY"'  # the name, not the value


def test_a_run_authenticates_without_storing_the_key(tmp_path, monkeypatch):
    key = f"run-secret-{uuid.uuid4().hex}"
    root = tmp_path / "home" / "prod-storage"
    synthetic_model_set(root, "models/sales/set-s", SPEC, n_series=5)
    ref = model_set_ref(root, "models/sales/set-s").registered(1)
    write_pointer(LocalStorage(root), pointer_name("sales", "production"), ref)
    settings = ServingSettings(root=str(root), poll_s=0, api_keys=[key])
    with LocalServer(settings, log_path=tmp_path / "server.log") as server:
        monkeypatch.setenv("MLOPS_SERVING_API_KEY", key)
        monkeypatch.setenv("MLOPS_ENDPOINT_URL", server.url)
        resources = resources_for("local", tmp_path / "home")

        @dg.op
        def probe(context: dg.OpExecutionContext, endpoint: LocalEndpoint) -> None:
            info = endpoint.info()  # GET /score with the key: 401 without it
            context.log.info(f"{endpoint.describe()} serves v{info['model_set_version']}")

        @dg.job
        def probe_job() -> None:
            probe()

        job = dg.Definitions(
            jobs=[probe_job], resources={"endpoint": resources["endpoint"]}
        ).resolve_job_def("probe_job")
        instance_dir = tmp_path / "instance"
        instance_dir.mkdir()
        with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
            result = job.execute_in_process(instance=instance)
            assert result.success
            run = instance.get_run_by_id(result.run_id)
            assert run is not None and key not in str(run.run_config)
            # Snapshots are stored compressed: read them back as the UI does.
            assert run.job_snapshot_id and run.execution_plan_snapshot_id
            job_snap = instance.get_job_snapshot(run.job_snapshot_id)
            plan_snap = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
            assert key not in serialize_value(job_snap)
            assert key not in serialize_value(plan_snap)
            logs = [e.message for e in instance.all_logs(result.run_id)]
            assert any("serves v1" in (m or "") for m in logs), logs
            assert not any(key in (m or "") for m in logs)
        assert files_holding(instance_dir, key) == []
    assert key not in (tmp_path / "server.log").read_text()
