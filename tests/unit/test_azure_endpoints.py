"""Azure ML entities for the online endpoint, built by our code, round-tripped through YAML with
azure-ai-ml's own loaders; the .cloud/azureml specs load the same way; the staged blue/green
rollout (with its automatic rollback) against a fake endpoint. Nothing here calls Azure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import load_environment, load_model, load_online_deployment, load_online_endpoint
from azure.ai.ml.entities import KubernetesOnlineDeployment, KubernetesOnlineEndpoint

from mlops_assets.domain.model_sets import ModelSetRef
from resources.aml_endpoint import AzureMLKubernetesEndpoint
from resources.aml_entities import (
    SCORING_SCRIPT,
    DeploymentSettings,
    deployment_entity,
    endpoint_entity,
    identity_entity,
    model_entity,
)
from resources.endpoints import (
    ModelSetRelease,
    ReleaseError,
)
from resources.rollout import (
    RolloutOps,
    staged_rollout,
    traffic_stages,
)

REPO = Path(__file__).resolve().parents[2]
CLOUD = REPO / ".cloud" / "azureml"
RELEASE = ModelSetRelease(
    dataset="sales",
    ref=ModelSetRef(
        name="sales-models",
        version="2026-11-21/abcd1234",
        folder="models/sales/releases/2026-11-21",
        manifest_sha256="ab" * 32,
        registry_version=7,
    ),
    smoke_records=[{"store": "S0000", "product": "P000", "week": "2026-11-23"}],
)


def _endpoint_roundtrip(entity, tmp_path: Path) -> KubernetesOnlineEndpoint:
    # azure-ai-ml 1.35: KubernetesOnlineEndpoint.dump() returns a dict instead of writing.
    data = entity.dump()
    path = tmp_path / "endpoint.yml"
    plain = json.loads(json.dumps(dict(data)))  # nested OrderedDicts (identity) to plain YAML
    path.write_text(yaml.safe_dump(plain, sort_keys=False))
    return load_online_endpoint(path)


def test_endpoint_entity_roundtrips(tmp_path):
    ep = endpoint_entity("mlops-sales-scoring", "aks-serving", tags={"dataset": "sales"})
    back = _endpoint_roundtrip(ep, tmp_path)
    assert isinstance(back, KubernetesOnlineEndpoint)
    assert back.name == "mlops-sales-scoring"
    assert back.compute.endswith("aks-serving")
    assert back.auth_mode == "key"  # aad_token is managed-only
    assert back.tags == {"dataset": "sales"}


@pytest.mark.parametrize("color", ["blue", "green"])
def test_deployment_entity_roundtrips(tmp_path, color):
    settings = DeploymentSettings(instance_count=4, cache_models=500)
    dep = deployment_entity(
        color, "mlops-sales-scoring", RELEASE, "azureml:sales-models:7", settings
    )
    path = tmp_path / f"{color}.yml"
    dep.dump(path)
    back = load_online_deployment(path)
    assert isinstance(back, KubernetesOnlineDeployment)
    assert back.name == color and back.endpoint_name == "mlops-sales-scoring"
    assert back.model == "sales-models:7" or back.model.endswith("sales-models:7")
    assert back.code_configuration.scoring_script == SCORING_SCRIPT
    assert (REPO / SCORING_SCRIPT).is_file()
    assert back.instance_count == 4
    assert back.request_settings.request_timeout_ms == 5000
    assert back.readiness_probe.failure_threshold == 30
    assert back.liveness_probe.timeout == 2
    assert back.resources.limits.memory == "2Gi"
    assert back.scale_settings.type == "target_utilization"
    env = back.environment_variables
    assert env["MLOPS_SERVING_SOURCE"] == "model_dir"
    assert env["MLOPS_SERVING_VERSION"] == "7"
    assert env["MLOPS_SERVING_MANIFEST_SHA256"] == RELEASE.ref.manifest_sha256
    assert env["MLOPS_SERVING_CACHE_MODELS"] == "500"
    assert back.tags["folder"] == RELEASE.folder


def test_deployment_colour_is_checked():
    with pytest.raises(ValueError, match="colour"):
        deployment_entity("red", "ep", RELEASE, "azureml:sales-models:7")


def test_traffic_stages_roundtrip_through_the_endpoint(tmp_path):
    stages = traffic_stages("blue", "green", [10, 50])
    assert stages == [
        {"blue": 90, "green": 10},
        {"blue": 50, "green": 50},
        {"blue": 0, "green": 100},
    ]
    for i, traffic in enumerate(stages):
        ep = endpoint_entity("mlops-sales-scoring", "aks-serving", traffic=traffic)
        (tmp_path / str(i)).mkdir()
        back = _endpoint_roundtrip(ep, tmp_path / str(i))
        assert back.traffic == traffic and sum(back.traffic.values()) == 100
    assert traffic_stages(None, "blue", [100]) == [{"blue": 100}]
    with pytest.raises(ValueError):
        traffic_stages("blue", "green", [0])


def test_model_entity_roundtrips(tmp_path):
    model = model_entity(RELEASE, "azureml://datastores/prodmodels/paths/" + RELEASE.folder)
    path = tmp_path / "model.yml"
    model.dump(path)
    back = load_model(path)
    # The registry version and the manifest digest: one AML version is one model set.
    assert back.name == "sales-models" and back.version == f"7-{'ab' * 8}"
    assert back.type == "custom_model"
    assert back.tags["manifest_sha256"] == RELEASE.ref.manifest_sha256


def test_cloud_specs_load():
    ep = load_online_endpoint(CLOUD / "serving-endpoint.yml")
    assert isinstance(ep, KubernetesOnlineEndpoint) and ep.auth_mode == "key"
    names = []
    for color in ("blue", "green"):
        dep = load_online_deployment(CLOUD / f"serving-deployment-{color}.yml")
        assert isinstance(dep, KubernetesOnlineDeployment)
        assert dep.endpoint_name == ep.name
        code = (CLOUD / dep.code_configuration.code).resolve()
        assert (code / dep.code_configuration.scoring_script).is_file()
        names.append(dep.name)
    assert names == ["blue", "green"]
    env = load_environment(CLOUD / "serving-environment.yml")
    assert env.name == "mlops-assets-serving" and env.image and env.conda_file
    assert "azureml-inference-server-http" in yaml.safe_dump(env.conda_file)


class FakeOps(RolloutOps):
    def __init__(self, traffic: dict, fail_at: int | None = None, unhealthy_new=False):
        self.traffic = dict(traffic)
        self.fail_at, self.unhealthy_new = fail_at, unhealthy_new
        self.calls: list = []
        self.deployments = {c for c, p in traffic.items()}

    def ensure_endpoint(self):
        return dict(self.traffic)

    def create_deployment(self, color, release):
        self.calls.append(("create", color, release.version))
        self.deployments.add(color)

    def set_traffic(self, traffic):
        self.calls.append(("traffic", dict(traffic)))
        self.traffic = dict(traffic)

    def health_check(self, color, release):
        if (
            self.unhealthy_new
            and color is not None
            and not any(c[0] == "traffic" for c in self.calls)
        ):
            return "container crashed"
        new_share = max(self.traffic.values(), default=0) if color is None else None
        if self.fail_at is not None and self.traffic.get("green", 0) >= self.fail_at:
            return f"5xx at {new_share}"
        return None

    def delete_deployment(self, color):
        self.calls.append(("delete", color))
        self.deployments.discard(color)


def test_staged_rollout_blue_to_green():
    ops = FakeOps({"blue": 100})
    report = staged_rollout(ops, RELEASE, [10, 50, 100], checks_per_stage=2, log=lambda m: None)
    assert report["old"] == "blue" and report["new"] == "green"
    traffic = [c[1] for c in ops.calls if c[0] == "traffic"]
    assert traffic == [
        {"blue": 90, "green": 10},
        {"blue": 50, "green": 50},
        {"blue": 0, "green": 100},
    ]
    assert ops.calls[-1] == ("delete", "blue")  # only after green holds 100 % and is healthy
    assert ops.deployments == {"green"}


def test_staged_rollout_rolls_back_on_a_failed_stage():
    ops = FakeOps({"blue": 100}, fail_at=50)
    with pytest.raises(ReleaseError, match="rolled back to blue"):
        staged_rollout(ops, RELEASE, [10, 50, 100], log=lambda m: None)
    assert ops.traffic == {"blue": 100, "green": 0}
    assert "blue" in ops.deployments  # never deleted
    assert ("delete", "blue") not in ops.calls


def test_unhealthy_new_deployment_never_gets_traffic():
    ops = FakeOps({"green": 100}, unhealthy_new=True)
    with pytest.raises(ReleaseError, match="before taking traffic"):
        staged_rollout(ops, RELEASE, [10, 100], log=lambda m: None)
    assert not [c for c in ops.calls if c[0] == "traffic"]
    assert ops.calls[-1] == ("delete", "blue") and ops.traffic == {"green": 100}


def test_first_release_on_an_empty_endpoint():
    ops = FakeOps({})
    report = staged_rollout(ops, RELEASE, [100], log=lambda m: None)
    assert report["old"] is None and ops.traffic == {"blue": 100}


def aml_endpoint(**kw) -> AzureMLKubernetesEndpoint:
    return AzureMLKubernetesEndpoint(
        subscription_id="00000000-0000-0000-0000-000000000000",
        resource_group="rg",
        workspace="ws",
        endpoint_name="mlops-sales-scoring",
        compute="aks-serving",
        model_base_uri="azureml://datastores/prodmodels/paths/",
        **kw,
    )


def test_aml_endpoint_resource_builds_without_calling_azure():
    res = aml_endpoint()
    assert "mlops-sales-scoring" in res.describe()
    assert res.settings().instance_count == 3
    # What the deployment asset shows: the endpoint and the colour now taking the traffic.
    where = res.where("sales", {"old": "blue", "new": "green", "stages": []})
    assert where["target"] == "azureml" and where["endpoint"] == "mlops-sales-scoring"
    assert where["deployment"] == "green" and where["workspace"] == "rg/ws"


def test_deployment_runs_the_server_workers_like_mlops_serve(tmp_path):
    """The pod's azmlinfsrv gets the same worker settings as ``mlops serve`` (``worker_env``):
    several sync workers, a worker timeout and our body read timeout, and azureml-fe sends it
    as many requests at once as it has workers."""
    ep = aml_endpoint(workers=3, worker_timeout_s=20)
    dep = deployment_entity(
        "blue", ep.endpoint_name, RELEASE, "azureml:sales-models:7", ep.settings()
    )
    path = tmp_path / "blue.yml"
    dep.dump(path)
    back = load_online_deployment(path)
    env = back.environment_variables
    assert env["WORKER_COUNT"] == "3" and env["WORKER_TIMEOUT"] == "20"
    assert float(env["MLOPS_SERVING_READ_TIMEOUT_S"]) == 10.0
    assert back.request_settings.max_concurrent_requests_per_instance == 3
    default = deployment_entity("green", "ep", RELEASE, "azureml:sales-models:7")
    assert default.environment_variables["WORKER_COUNT"] == "2"
    assert default.environment_variables["WORKER_TIMEOUT"] == "30"
    for color in ("blue", "green"):  # the checked-in YAML says the same
        yml = load_online_deployment(CLOUD / f"serving-deployment-{color}.yml")
        assert yml.environment_variables["WORKER_COUNT"] == "2"
        assert yml.request_settings.max_concurrent_requests_per_instance == 2


@pytest.mark.parametrize(
    ("kind", "resource_id"),
    [
        ("system_assigned", None),
        (
            "user_assigned",
            "/subscriptions/0/resourceGroups/rg/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/mlops-serving",
        ),
    ],
)
def test_endpoint_has_the_configured_managed_identity(tmp_path, kind, resource_id):
    res = aml_endpoint(identity=kind, identity_resource_id=resource_id)
    ep = endpoint_entity(
        res.endpoint_name,
        res.compute,
        identity=identity_entity(res.identity, res.identity_resource_id),
    )
    assert ep.identity.type == kind
    if resource_id:
        assert [i.resource_id for i in ep.identity.user_assigned_identities] == [resource_id]
    else:  # azure-ai-ml dumps a user-assigned identity with null ids its loader refuses
        assert _endpoint_roundtrip(ep, tmp_path).identity.type == kind
    assert aml_endpoint().identity == "system_assigned"  # the default
    assert identity_entity("none") is None
    with pytest.raises(ValueError, match="resource id"):
        identity_entity("user_assigned")


def test_deployment_collects_requests_to_the_prod_storage(tmp_path):
    prod = {
        "kind": "azure",
        "account_url": "https://prod.blob.core.windows.net",
        "container": "prod",
        "prefix": "",
    }
    res = aml_endpoint(collect_rate=0.25, collect_storage=prod, app_insights_enabled=True)
    dep = deployment_entity("blue", res.endpoint_name, RELEASE, "azureml:m:1", res.settings())
    dep.dump(tmp_path / "blue.yml")
    back = load_online_deployment(tmp_path / "blue.yml")
    env = back.environment_variables
    assert env["MLOPS_SERVING_COLLECT_RATE"] == "0.25"
    assert json.loads(env["MLOPS_SERVING_COLLECT_STORAGE"]) == prod
    assert back.app_insights_enabled is True
    off = deployment_entity("blue", "ep", RELEASE, "azureml:m:1")
    assert "MLOPS_SERVING_COLLECT_RATE" not in off.environment_variables
    with pytest.raises(ValueError, match="collect_storage"):
        deployment_entity("blue", "ep", RELEASE, "m:1", DeploymentSettings(collect_rate=1.0))
