"""The project's real AKS release (``AzureMLKubernetesEndpoint.release``: ``AmlRolloutOps`` +
``staged_rollout``) on the local Azure ML emulation, which runs each deployment under Azure ML's
inference server and routes the endpoint's requests by its traffic.

One emulated workspace and endpoint per module; the fixture releases set 1. Each test starts
from whatever set is live and leaves one set live: blue/green under live load, automatic
rollback when the new colour fails QA, model versions that never collide, requests collected
to Blob (Azurite) where the inference summary reads them, and what Azure refuses.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from azure.ai.ml.entities import AmlCompute, KubernetesCompute, KubernetesOnlineEndpoint
from azure.ai.ml.exceptions import AssetPathException, ValidationException
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from aml_emulation.client import EmulatedMLClient
from aml_emulation.workspace import EmulatedWorkspace
from mlops_assets.domain.inference_summary import read_day
from mlops_assets.ml.spec import load_spec
from mlops_assets.serving.synthetic import model_set_ref, real_model_set, request_rows
from resources.aml_endpoint import AzureMLKubernetesEndpoint
from resources.aml_entities import (
    deployment_entity,
    endpoint_entity,
)
from resources.endpoints import (
    ModelSetRelease,
    ReleaseError,
)
from resources.rollout import AmlRolloutOps
from tests.fixtures.azurite import unique_container_name

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SPEC = load_spec("sales")
ENDPOINT = "mlops-sales-emu"
FOLDERS = ("models/sales/set-1", "models/sales/set-2")


class Load:
    """Requests through the endpoint's front on a thread, until stopped: statuses and who
    served them (the ``azureml-model-deployment`` and ``x-model-set-version`` headers)."""

    def __init__(self, scoring_uri: str, key: str, body: bytes, interval_s: float = 0.02):
        self.uri, self.key, self.body, self.interval_s = (
            urlsplit(scoring_uri),
            key,
            body,
            interval_s,
        )
        self.statuses: Counter = Counter()
        self.served: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection(str(self.uri.hostname), self.uri.port, timeout=10)
            try:
                headers = {
                    "Authorization": f"Bearer {self.key}",
                    "Content-Type": "application/json",
                }
                conn.request("POST", self.uri.path, self.body, headers)
                resp = conn.getresponse()
                resp.read()
                self.statuses[resp.status] += 1
                who = resp.getheader("azureml-model-deployment")
                self.served[(who, resp.getheader("x-model-set-version"))] += 1
            except OSError as exc:
                self.statuses[type(exc).__name__] += 1
            finally:
                conn.close()
            time.sleep(self.interval_s)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory, azurite):
    """(client, endpoint resource, {version: release}, collected-requests storage), set 1 live."""
    root = tmp_path_factory.mktemp("emulation")
    prod = root / "prod"
    manifests = [
        real_model_set(prod, f, SPEC, n_series=4, version=f"train-{i + 1}")[0]
        for i, f in enumerate(FOLDERS)
    ]
    records = request_rows(SPEC, manifests[0], manifests[0]["series_id"].to_pylist()[:3])
    releases = {
        str(i + 1): ModelSetRelease(
            "sales", model_set_ref(prod, f).registered(i + 1), smoke_records=records
        )
        for i, f in enumerate(FOLDERS)
    }
    collected = azurite.storage(unique_container_name("collected"))
    collected.write_bytes("created", b"")
    ws = EmulatedWorkspace(
        root=root / "workspace",
        computes={
            "aks-serving": KubernetesCompute(name="aks-serving"),
            "cpu-batch": AmlCompute(name="cpu-batch", size="Standard_DS3_v2"),
        },
        env={"MLOPS_JOB_CONNECTION_STRING": azurite.connection_string},
        datastores={"prodmodels": prod},
    )
    endpoint = AzureMLKubernetesEndpoint(
        subscription_id="00000000-0000-0000-0000-000000000000",
        resource_group="rg",
        workspace="ws",
        endpoint_name=ENDPOINT,
        compute="aks-serving",
        model_base_uri="azureml://datastores/prodmodels/paths/",
        instance_count=1,
        workers=1,
        stages=[50],
        stage_wait_s=0.6,
        checks_per_stage=2,
        collect_rate=1.0,
        collect_storage=collected.config(),
        qa_load_rps=20,
        qa_load_seconds=1.0,
    )
    with pytest.MonkeyPatch.context() as mp, EmulatedMLClient(ws) as client:
        mp.chdir(REPO)  # the deployment's code folder "." is the repository, as in CD
        endpoint.with_client(client).release(releases["1"], log=lambda m: None)
        yield client, endpoint, releases, collected


def live(client) -> tuple[str, str]:
    """(the colour holding 100 % of the traffic, the set version it serves)."""
    (color,) = [c for c, p in client.online_endpoints.get(ENDPOINT).traffic.items() if p == 100]
    dep = client.online_deployments.get(name=color, endpoint_name=ENDPOINT)
    return color, dep.environment_variables["MLOPS_SERVING_VERSION"]


def test_blue_green_under_live_load(emulated):
    client, endpoint, releases, _ = emulated
    old_color, old_version = live(client)
    new_version = "2" if old_version == "1" else "1"
    ep = client.online_endpoints.get(ENDPOINT)
    key = client.online_endpoints.get_keys(ENDPOINT).primary_key
    body = json.dumps({"data": releases["1"].smoke_records}).encode()
    with Load(str(ep.scoring_uri), key, body) as load:
        time.sleep(0.3)
        report = endpoint.release(releases[new_version], log=lambda m: None)
        time.sleep(0.3)
    new_color = report["new"]
    assert report["old"] == old_color and new_color != old_color
    # QA at 0 %: the load profile went to the new colour only, and failed nothing.
    profile = report["load_profile"]
    assert profile["ok"] == profile["offered"] > 0 and profile["errors"] == 0
    assert [s["traffic"] for s in report["stages"]] == [
        {old_color: 50, new_color: 50},
        {old_color: 0, new_color: 100},
    ]
    assert all(c == "ok" for s in report["stages"] for c in s["checks"])
    # Live load through the endpoint: nothing failed while traffic moved, both colours served.
    assert set(load.statuses) == {200}, load.statuses
    served = {who for who, _ in load.served}
    assert {old_color, new_color} <= served, load.served
    assert (new_color, new_version) in load.served and (old_color, old_version) in load.served
    assert client.online_endpoints.get(ENDPOINT).traffic == {new_color: 100}
    assert [d.name for d in client.online_deployments.list(ENDPOINT)] == [new_color]
    assert report["deleted"] == old_color
    # The deployment Azure got: the model by its digest version, our scoring script and env.
    dep = client.workspace.calls("online_deployments.begin_create_or_update")[-1]
    digest = releases[new_version].ref.manifest_sha256
    assert dep.model == f"azureml:sales-models:{new_version}-{digest[:16]}"
    assert dep.environment_variables["MLOPS_SERVING_MANIFEST_SHA256"] == digest


def test_rollback_when_the_new_colour_fails_qa(emulated):
    """A release whose digest does not match its manifest: init() refuses it, the deployment
    never turns ready, the release fails saying why, and the live colour keeps 100 %."""
    client, endpoint, releases, _ = emulated
    color, version = live(client)
    good = releases[version]
    bad = replace(good, ref=replace(good.ref, manifest_sha256="0" * 64, registry_version=9))
    with pytest.raises(ReleaseError) as failed:
        endpoint.release(bad, log=lambda m: None)
    message = str(failed.value)
    assert "provisioning state Failed" in message and f"{color} untouched" in message
    assert "manifest" in message.lower()  # the init error, from the deployment's log
    assert client.online_endpoints.get(ENDPOINT).traffic == {color: 100}
    assert [d.name for d in client.online_deployments.list(ENDPOINT)] == [color]
    assert live(client) == (color, version)
    answer = json.loads(_invoke(client, good.smoke_records))
    assert answer["model_set_version"] == version and answer["n_errors"] == 0


def _invoke(client, records: list[dict], deployment: str | None = None) -> str:
    path = Path(client.workspace.root) / f"request-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({"data": records}))
    return client.online_endpoints.invoke(
        endpoint_name=ENDPOINT, request_file=str(path), deployment_name=deployment
    )


def test_model_versions_never_collide_and_a_rerelease_reuses_its_model(emulated):
    client, endpoint, releases, _ = emulated
    path = "azureml://datastores/prodmodels/paths/" + FOLDERS[0]
    ops = AmlRolloutOps(client, ENDPOINT, "aks-serving", path, endpoint.settings())
    first = ops.model(releases["1"])
    created = len(client.workspace.calls("models.create_or_update"))
    again = ops.model(releases["1"])  # the same set released again: found, not re-created
    assert (again.name, again.version) == (first.name, first.version)
    assert len(client.workspace.calls("models.create_or_update")) == created
    # Dev and prod registries both at version 1 with other content (same workspace): the
    # digest keeps the AML versions apart instead of colliding.
    dev = replace(releases["2"], ref=releases["2"].ref.registered(1))
    other = AmlRolloutOps(
        client, ENDPOINT, "aks-serving", path.replace("set-1", "set-2"), endpoint.settings()
    ).model(dev)
    assert other.version != first.version and other.version.startswith("1-")
    # What the fix avoids: Azure refuses one name and version for other content.
    clash = client.models.get(first.name, version=first.version)
    clash.path = path.replace("set-1", "set-2")
    with pytest.raises(AssetPathException):
        client.models.create_or_update(clash)


def test_requests_through_the_endpoint_reach_the_inference_summary(emulated):
    client, _, releases, collected = emulated
    _, version = live(client)
    marker = {**releases[version].smoke_records[0], "price": 7.25}
    sent = datetime.now(UTC).date().isoformat()
    answer = json.loads(_invoke(client, [marker]))
    assert answer["n_errors"] == 0
    deadline, rows = time.monotonic() + 20, []
    while time.monotonic() < deadline and not rows:
        # The collector files a request under the day it writes it: the day it was sent, or
        # the next one when midnight UTC passed meanwhile.
        for day in sorted({sent, datetime.now(UTC).date().isoformat()}):
            table = read_day(collected, SPEC, day)
            rows += [] if table is None else [r for r in table.to_pylist() if r["price"] == 7.25]
        time.sleep(0.3)
    assert rows, "the collected request never reached the inference summary's reader"
    assert rows[0]["model_set_version"] == version and rows[0]["prediction"] is not None


def test_azure_refusals(emulated):
    client, _, releases, _ = emulated
    eps, deps = client.online_endpoints, client.online_deployments
    color, version = live(client)
    idle = "green" if color == "blue" else "blue"
    with pytest.raises(ValidationException, match="name for an endpoint"):
        eps.begin_create_or_update(endpoint_entity("bad_name", "aks-serving"))
    with pytest.raises(ResourceNotFoundError, match="no-such-aks"):
        eps.begin_create_or_update(endpoint_entity("mlops-other", "no-such-aks"))
    with pytest.raises(HttpResponseError, match="not an attached Kubernetes"):
        eps.begin_create_or_update(endpoint_entity("mlops-other", "cpu-batch"))
    with pytest.raises(HttpResponseError, match="do not exist"):
        eps.begin_create_or_update(
            endpoint_entity(ENDPOINT, "aks-serving", traffic={color: 50, idle: 50})
        )
    with pytest.raises(HttpResponseError, match="sums to 90"):
        eps.begin_create_or_update(endpoint_entity(ENDPOINT, "aks-serving", traffic={color: 90}))
    with pytest.raises(HttpResponseError, match="do not exist"):
        ep = eps.get(ENDPOINT)
        ep.mirror_traffic = {idle: 10}
        eps.begin_create_or_update(ep)
    with pytest.raises(HttpResponseError, match="has 100%"):
        deps.begin_delete(name=color, endpoint_name=ENDPOINT)
    model = "azureml:sales-models:none"
    with pytest.raises(ValidationException, match="name for a deployment"):
        dep = deployment_entity(color, ENDPOINT, releases[version], model)
        dep.name = "b_1"
        deps.begin_create_or_update(dep)
    with pytest.raises(HttpResponseError, match="instance_count"):
        dep = deployment_entity(idle, ENDPOINT, releases[version], model)
        dep.instance_count = 0
        deps.begin_create_or_update(dep)
    with pytest.raises(ResourceNotFoundError, match="sales-models:none"):
        deps.begin_create_or_update(deployment_entity(idle, ENDPOINT, releases[version], model))
    with pytest.raises(ResourceNotFoundError):
        deps.begin_create_or_update(
            deployment_entity(idle, "mlops-missing", releases[version], model)
        )
    with pytest.raises(ValidationException, match="not found for this endpoint"):
        _invoke(client, releases[version].smoke_records, deployment=idle)
    # The front wants the endpoint key.
    uri = urlsplit(str(eps.get(ENDPOINT).scoring_uri))
    conn = http.client.HTTPConnection(str(uri.hostname), uri.port, timeout=5)
    conn.request("POST", uri.path, b"{}", {"Authorization": "Bearer wrong"})
    assert conn.getresponse().status == 401
    conn.close()
    assert isinstance(eps.get(ENDPOINT), KubernetesOnlineEndpoint)
    assert eps.get(ENDPOINT).traffic == {color: 100}  # nothing refused changed anything


def _settled(read, quiet_s: float = 0.5, timeout_s: float = 10.0) -> int:
    """``read()`` once it has not changed for ``quiet_s``."""
    value, since, deadline = read(), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.05)
        if (now := read()) != value:
            value, since = now, time.monotonic()
    return value


def test_the_endpoint_mirrors_a_share_of_live_requests_to_an_idle_deployment(emulated):
    """Mirror traffic: the live colour answers every request; the mirror deployment gets a copy
    of about its share (answers discarded), and none once the mirror is off."""
    client, endpoint, releases, _ = emulated
    color, version = live(client)
    idle = "green" if color == "blue" else "blue"
    path = f"azureml://datastores/prodmodels/paths/{releases[version].folder}"
    ops = AmlRolloutOps(client, ENDPOINT, "aks-serving", path, endpoint.settings())
    ops.create_deployment(idle, releases[version])
    routing = client.online_endpoints.state.endpoint(ENDPOINT).routing
    try:
        ep = client.online_endpoints.get(ENDPOINT)
        ep.mirror_traffic = {idle: 50}
        client.online_endpoints.begin_create_or_update(ep).result()
        before = routing.stats[f"mirrored:{idle}"]
        answers = [json.loads(_invoke(client, releases[version].smoke_records)) for _ in range(40)]
        assert all(a["n_errors"] == 0 for a in answers)
        deadline = time.monotonic() + 10
        while routing.stats[f"mirrored:{idle}"] - before < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        mirrored = routing.stats[f"mirrored:{idle}"] - before
        assert 8 <= mirrored <= 32, mirrored  # 50 % of 40, binomial bounds far in the tails
        assert routing.stats[f"mirror_failed:{idle}"] == 0
        ep = client.online_endpoints.get(ENDPOINT)
        ep.mirror_traffic = {}
        client.online_endpoints.begin_create_or_update(ep).result()
        after = _settled(lambda: routing.stats[f"mirrored:{idle}"])  # copies still in flight
        _invoke(client, releases[version].smoke_records)
        time.sleep(0.3)
        assert routing.stats[f"mirrored:{idle}"] == after
    finally:
        ep = client.online_endpoints.get(ENDPOINT)
        if ep.mirror_traffic:
            ep.mirror_traffic = {}
            client.online_endpoints.begin_create_or_update(ep).result()
        ops.delete_deployment(idle)
    assert live(client) == (color, version)
