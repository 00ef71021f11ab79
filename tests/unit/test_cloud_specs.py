"""Every AML spec under .cloud/azureml loads with azure-ai-ml's own loader for its schema."""

from __future__ import annotations

from pathlib import Path

import azure.ai.ml as aml
import pytest
import yaml

SPECS = Path(__file__).resolve().parents[2] / ".cloud" / "azureml"

# `$schema` file name (without .schema.json) -> the azure-ai-ml loader and the entity it makes.
LOADERS = {
    "commandJob": (aml.load_job, "Command"),
    "pipelineJob": (aml.load_job, "PipelineJob"),
    "sweepJob": (aml.load_job, "Sweep"),
    "environment": (aml.load_environment, "Environment"),
    "amlCompute": (aml.load_compute, "AmlCompute"),
    "computeInstance": (aml.load_compute, "ComputeInstance"),
    "kubernetesCompute": (aml.load_compute, "KubernetesCompute"),
    "managedOnlineEndpoint": (aml.load_online_endpoint, "ManagedOnlineEndpoint"),
    "kubernetesOnlineEndpoint": (aml.load_online_endpoint, "KubernetesOnlineEndpoint"),
    "managedOnlineDeployment": (aml.load_online_deployment, "ManagedOnlineDeployment"),
    "kubernetesOnlineDeployment": (aml.load_online_deployment, "KubernetesOnlineDeployment"),
    "batchEndpoint": (aml.load_batch_endpoint, "BatchEndpoint"),
    "batchDeployment": (aml.load_batch_deployment, "BatchDeployment"),
    "modelBatchDeployment": (aml.load_batch_deployment, "ModelBatchDeployment"),
    "pipelineComponentBatchDeployment": (
        aml.load_batch_deployment,
        "PipelineComponentBatchDeployment",
    ),
    "model": (aml.load_model, "Model"),
    "data": (aml.load_data, "Data"),
    "commandComponent": (aml.load_component, "CommandComponent"),
    "registry": (aml.load_registry, "Registry"),
    "workspace": (aml.load_workspace, "Workspace"),
}


def _all_specs() -> list[Path]:
    return sorted(SPECS.glob("*.yml")) + sorted(SPECS.glob("*.yaml"))


def _schema(path: Path) -> str | None:
    url = (yaml.safe_load(path.read_text()) or {}).get("$schema")
    return url.rsplit("/", 1)[-1].removesuffix(".schema.json") if url else None


def _conda_files() -> set[str]:
    """Conda files named by an environment spec (they are not AML entities themselves)."""
    named = set()
    for path in _all_specs():
        if _schema(path) == "environment":
            conda = yaml.safe_load(path.read_text()).get("conda_file")
            if conda:
                named.add((path.parent / conda).resolve().name)
    return named


def test_there_are_specs():
    assert any(p.name == "train-job.yml" for p in _all_specs())


@pytest.mark.parametrize("path", _all_specs(), ids=lambda p: p.name)
def test_spec_loads_with_its_azure_ai_ml_loader(path):
    schema = _schema(path)
    if schema is None:
        assert path.name in _conda_files(), (
            f"{path.name} has no $schema and no environment names it as its conda_file"
        )
        conda = yaml.safe_load(path.read_text())
        assert conda.get("dependencies"), path.name
        return
    assert schema in LOADERS, f"{path.name}: no loader known for $schema {schema!r}"
    load, entity = LOADERS[schema]
    loaded = load(source=path)
    assert type(loaded).__name__ == entity, (path.name, type(loaded).__name__)
    assert loaded.name, path.name


def test_compute_clusters_scale_to_zero():
    for path in _all_specs():
        if _schema(path) == "amlCompute":
            compute = aml.load_compute(source=path)
            assert compute.min_instances == 0, path.name
            assert compute.max_instances >= 1, path.name


def test_train_job_runs_the_remote_training_module():
    job = aml.load_job(source=SPECS / "train-job.yml")
    assert job.command == "python -m mlops_assets.jobs.train"
    assert job.resources.instance_count >= 1
    assert Path(SPECS / job.code).resolve() == SPECS.parents[1]


class _Ops:
    def __init__(self, items: dict):
        self.items = items

    def get(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.items:
            raise ResourceNotFoundError(f"{name} was not found")
        return self.items[name]


class _FakeMLClient:
    def __init__(self, workspaces: dict, computes: dict):
        self.workspaces, self.compute = _Ops(workspaces), _Ops(computes)


def _ns(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**kw)


def test_check_azure_reports_a_missing_or_unready_compute():
    from mlops_assets.cli import check_azure

    ws = _ns(name="ws", location="westeurope", mlflow_tracking_uri="azureml://x")
    ready = _ns(
        type="amlcompute",
        size="STANDARD_D4S_V3",
        min_instances=0,
        max_instances=8,
        provisioning_state="Succeeded",
    )
    creating = _ns(
        type="amlcompute",
        size="STANDARD_D4S_V3",
        min_instances=0,
        max_instances=8,
        provisioning_state="Creating",
    )
    client = _FakeMLClient({"ws": ws}, {"cpu-batch": ready, "cpu-train": creating})
    assert check_azure(client, "ws", ["cpu-batch"]) == []
    problems = check_azure(client, "ws", ["cpu-batch", "cpu-train", "gpu"])
    assert [p.split()[1].rstrip(":") for p in problems] == ["'cpu-train'", "'gpu'"]
    assert check_azure(client, "other", ["cpu-batch"])[0].startswith("workspace 'other'")


def test_check_azure_dry_run_needs_no_credentials(monkeypatch, capsys):
    from mlops_assets.cli import main

    for env in ("MLOPS_AML_SUBSCRIPTION_ID", "MLOPS_AML_RESOURCE_GROUP", "MLOPS_AML_WORKSPACE"):
        monkeypatch.delenv(env, raising=False)
    assert main(["check-azure", "--dry-run", "--workspace", "mlw-dev", "--compute", "c1"]) == 0
    out = capsys.readouterr().out
    assert "workspaces/mlw-dev" in out and "GET compute c1" in out
    assert "not set: MLOPS_AML_SUBSCRIPTION_ID, MLOPS_AML_RESOURCE_GROUP" in out
    assert main(["check-azure"]) == 2


def _ref_name(ref: str) -> str:
    """``azureml:name@label`` / ``azureml:name:version`` / ``name`` -> ``name``."""
    return ref.removeprefix("azureml:").split("@")[0].split(":")[0]


def test_jobs_name_environments_and_compute_defined_here():
    environments = {
        aml.load_environment(source=p).name for p in _all_specs() if _schema(p) == "environment"
    }
    clusters = {aml.load_compute(source=p).name for p in _all_specs() if _schema(p) == "amlCompute"}
    for path in _all_specs():
        if _schema(path) != "commandJob":
            continue
        job = aml.load_job(source=path)
        assert isinstance(job.environment, str), f"{path.name}: inline environment"
        assert _ref_name(job.environment) in environments, (path.name, job.environment)
        if clusters:
            assert _ref_name(job.compute) in clusters, (path.name, job.compute)
