"""Two-phase registration: a registration killed half way is ignored, then cleaned up
(issue 19, item 7). The child process is killed (``os._exit``) inside an MLflow client call."""

import subprocess
import sys
import textwrap

import pytest

from mlops_assets.domain.model_sets import ModelSetError
from mlops_assets.domain.registry_records import ModelSetVersion, RunRecord
from resources.registry import MlflowRegistry

pytestmark = pytest.mark.integration

NAME = "sales-models"

CHILD = textwrap.dedent(
    """
    import os, sys
    from mlflow import MlflowClient
    from mlops_assets.domain.registry_records import ModelSetVersion, RunRecord
    from resources.registry import MlflowRegistry

    uri, artifacts, die_in = sys.argv[1:4]
    setattr(MlflowClient, die_in, lambda *a, **k: os._exit(9))
    MlflowRegistry(tracking_uri=uri, artifact_root=artifacts).register_model_set(
        "sales-models", "file:///v2", {"folder": "v2", "quality_gate": "passed"},
        RunRecord(experiment="sales", run_name="v2"), "champion",
    )
    """
)


def registry_at(tmp_path, **kwargs) -> MlflowRegistry:
    return MlflowRegistry(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow/dev.db",
        artifact_root=(tmp_path / "artifacts").as_uri(),
        **kwargs,
    )


def register(registry: MlflowRegistry, folder: str) -> int:
    run = RunRecord(experiment="sales", run_name=folder)
    tags = {"folder": folder, "quality_gate": "passed", "manifest_sha256": "0" * 64}
    return registry.register_model_set(NAME, f"file:///{folder}", tags, run, "champion").version


def killed_registration(registry: MlflowRegistry, die_in: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, registry.tracking_uri, registry.artifact_root, die_in],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 9, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "die_in",
    ["set_registered_model_alias", "set_terminated"],
    ids=["before-the-alias-move", "after-the-alias-move"],
)
def test_an_interrupted_registration_is_ignored_then_cleaned_up(tmp_path, die_in):
    registry = registry_at(tmp_path)
    assert register(registry, "v1") == 1
    killed_registration(registry, die_in)
    client = registry.client()
    raw = client.get_model_version(NAME, "2")  # the half-registered version is there ...
    assert raw.tags["mlops_state"] == "incomplete"
    run_id = raw.run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    # ... and no reader takes it.
    assert registry.get_alias(NAME).version == 1
    assert registry.find_version(NAME, "folder", "v2") is None
    assert [v.version for v in registry.list_versions(NAME)] == [1]
    assert registry.get_version(NAME, 2) is None
    with pytest.raises(ModelSetError, match="interrupted"):
        ModelSetVersion(NAME, 2, raw.source, dict(raw.tags)).ref  # noqa: B018
    # A registration within the grace period leaves it (it may still be running) ...
    assert register(registry, "v3") == 3
    assert client.get_model_version(NAME, "2").tags["mlops_state"] == "incomplete"
    # ... a later one removes it and ends its run as FAILED.
    late = registry_at(tmp_path, incomplete_grace_s=0)
    assert late.recover_interrupted(NAME) == [2]
    assert client.get_run(run_id).info.status == "FAILED"
    assert [v.version for v in late.list_versions(NAME)] == [1, 3]
    assert late.get_alias(NAME).version == 3
    assert late.get_alias(NAME).tags["mlops_state"] == "complete"


def test_cleanup_restores_an_alias_moved_to_the_interrupted_version(tmp_path):
    registry = registry_at(tmp_path, incomplete_grace_s=0)
    assert register(registry, "v1") == 1
    killed_registration(registry, "set_terminated")
    client = registry.client()
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2
    assert register(registry, "v3") == 3  # cleans v2 first: champion back on v1, then v3
    versions = [int(mv.version) for mv in client.search_model_versions(f"name = '{NAME}'")]
    assert sorted(versions) == [1, 3]
    assert registry.get_alias(NAME).version == 3
