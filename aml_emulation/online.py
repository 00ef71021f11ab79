"""``MLClient.models``, ``.online_endpoints`` and ``.online_deployments``, executed locally.

* ``ModelOperations``: model versions are immutable as in Azure: re-creating an existing
  name and version with another path fails with the SDK's ``AssetPathException``; the same
  path updates tags and description.
* ``OnlineEndpointOperations``: Kubernetes online endpoints. Each one is a real local HTTP front
  (``aml_emulation.front``) that checks the endpoint key, routes by the traffic weights or the
  ``azureml-model-deployment`` header, and mirrors a share of the requests.
* ``OnlineDeploymentOperations``: each Kubernetes deployment runs Azure ML's inference server
  (``aml_emulation.inference``); ``provisioning_state`` is ``Succeeded`` once its readiness
  route answers, ``Failed`` if it exits first (its log is kept for ``get_logs``).
  ``instance_count`` pods are emulated by one process.

Refused as Azure refuses them: what the SDK validates itself (names, through the entities'
``_to_rest_*`` methods; the scoring script's syntax, with its ``validate_scoring_script``), and
what the service checks: the compute exists and is a ``KubernetesCompute``, the endpoint and
the model exist, ``instance_count >= 1``, traffic sums to 0 or 100 over existing deployments,
mirror traffic (at most 50 %) goes to one existing deployment without live traffic, and a
deployment with traffic is not deleted. Errors are azure-core's / the SDK's types. Every
received entity is recorded (a deep copy) on the workspace.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from azure.ai.ml._artifacts._constants import CHANGED_ASSET_PATH_MSG
from azure.ai.ml._utils._endpoint_utils import validate_scoring_script
from azure.ai.ml.constants._endpoint import EndpointInvokeFields
from azure.ai.ml.entities import (
    EndpointAuthKeys,
    KubernetesCompute,
    KubernetesOnlineDeployment,
    KubernetesOnlineEndpoint,
    Model,
    OnlineDeployment,
    OnlineEndpoint,
)
from azure.ai.ml.exceptions import (
    AssetPathException,
    ErrorCategory,
    ErrorTarget,
    ValidationErrorType,
    ValidationException,
)
from azure.ai.ml.operations._online_endpoint_operations import _strip_zeroes_from_traffic
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestTimeoutError,
)

from aml_emulation.front import DEPLOYMENT_HEADER, EndpointFront, Routing
from aml_emulation.inference import InferenceProcess, mount_model
from aml_emulation.workspace import EmulatedWorkspace

LOCATION = "emulated"
ARM_WORKSPACE = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/emulated/providers/"
    "Microsoft.MachineLearningServices/workspaces/emulated"
)
_DATASTORE_URI = re.compile(r"^azureml://(?:.*/)?datastores/(?P<store>[^/]+)/paths/(?P<path>.*)$")
_INVOKE_ERRORS: dict[int, Any] = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    408: ServiceRequestTimeoutError,
    409: ResourceExistsError,
}


def bad_request(message: str) -> HttpResponseError:
    """What the service answers a request it refuses (HTTP 400)."""
    return HttpResponseError(message=f"(BadRequest) {message}")


class Poller:
    """The part of ``azure.core.polling.LROPoller`` the project uses: ``result(timeout)``,
    ``done()``, ``wait(timeout)``, ``status()``. ``work`` runs on a thread; its exception is
    raised by ``result``."""

    def __init__(self, work: Callable[[], Any] | None = None, value: Any = None):
        self._value = value
        self._error: Exception | None = None
        self._done = threading.Event()
        if work is None:
            self._done.set()
        else:
            threading.Thread(target=self._run, args=(work,), daemon=True).start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self._value = work()
        except Exception as exc:  # handed to whoever calls result()
            self._error = exc
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def done(self) -> bool:
        return self._done.is_set()

    def status(self) -> str:
        if not self.done():
            return "InProgress"
        return "Failed" if self._error is not None else "Succeeded"

    def result(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value


# ---- models ------------------------------------------------------------------------------------


class ModelOperations:
    """``MLClient.models``: create_or_update, get, list."""

    def __init__(self, workspace: EmulatedWorkspace):
        self._ws = workspace
        self._models: dict[tuple[str, str], Model] = {}
        self._lock = threading.Lock()

    def create_or_update(self, model: Model, **kwargs: Any) -> Model:
        self._ws.record("models.create_or_update", copy.deepcopy(model))
        model._to_rest_object()  # noqa: SLF001 - the SDK's own serialisation (refuses what it cannot send)
        self.local_path(str(model.path))
        name = str(model.name)
        with self._lock:
            versions = [v for n, v in self._models if n == name]
            version = str(model.version) if model.version else str(len(versions) + 1)
            existing = self._models.get((name, version))
            if existing is not None and str(existing.path) != str(model.path):
                msg = CHANGED_ASSET_PATH_MSG.format(name=model.name, version=version)
                raise AssetPathException(
                    message=msg,
                    target=cast(Any, ErrorTarget.MODEL),
                    no_personal_data_message="The model asset is already linked to an asset.",
                    error_category=cast(Any, ErrorCategory.USER_ERROR),
                )
            stored = copy.deepcopy(existing or model)
            stored.version = version
            stored.tags = dict(model.tags or {})
            stored.description = model.description
            self._models[(name, version)] = stored
            return copy.deepcopy(stored)

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Model:
        self._ws.record("models.get", f"{name}:{version or label or 'latest'}")
        with self._lock:
            if version is None:
                versions = [m for (n, _), m in self._models.items() if n == name]
                if not versions or label not in (None, "latest"):
                    raise ResourceNotFoundError(f"Model {name} ({label or 'latest'}) not found")
                return copy.deepcopy(versions[-1])
            try:
                return copy.deepcopy(self._models[(name, str(version))])
            except KeyError:
                raise ResourceNotFoundError(f"Model {name}:{version} not found") from None

    def list(self, name: str | None = None, **kwargs: Any) -> list[Model]:
        with self._lock:
            return [copy.deepcopy(m) for (n, _), m in self._models.items() if name in (None, n)]

    def resolve(self, ref: str) -> Model:
        """The model a deployment names (``azureml:<name>:<version>`` or ``...@latest``)."""
        ref = ref.removeprefix("azureml:")
        if "@" in ref:
            name, label = ref.split("@", 1)
            return self.get(name, label=label)
        name, _, version = ref.partition(":")
        return self.get(name, version or None)

    def local_path(self, path: str) -> Path:
        """The local folder a model path stands for (a local path, or an ``azureml://`` datastore
        URI through the workspace's ``datastores``)."""
        m = _DATASTORE_URI.match(path)
        if m is None:
            return Path(path)
        try:
            base = self._ws.datastores[m["store"]]
        except KeyError:
            raise ResourceNotFoundError(f"Datastore {m['store']!r} not found") from None
        return Path(base) / m["path"]


# ---- endpoints and deployments -----------------------------------------------------------------


@dataclass
class _Deployment:
    rest: Any  # the deployment as the service keeps it (the SDK's REST model)
    timeout_s: float  # request_timeout_ms
    state: str = "Creating"
    process: InferenceProcess | None = None  # the one serving
    last: InferenceProcess | None = None  # the latest started (its log is get_logs')


@dataclass
class _Endpoint:
    entity: OnlineEndpoint
    routing: Routing
    front: EndpointFront
    deployments: dict[str, _Deployment] = field(default_factory=dict)


class _OnlineState:
    """The endpoints and their deployments, shared by both operation groups."""

    def __init__(self) -> None:
        self.endpoints: dict[str, _Endpoint] = {}
        self.lock = threading.RLock()

    def endpoint(self, name: str) -> _Endpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            raise ResourceNotFoundError(f"Online endpoint {name!r} not found") from None

    def deployment(self, name: str, endpoint_name: str) -> _Deployment:
        try:
            return self.endpoint(endpoint_name).deployments[name]
        except KeyError:
            raise ResourceNotFoundError(
                f"Deployment {name!r} of endpoint {endpoint_name!r} not found"
            ) from None


def _timeout_s(dep: OnlineDeployment) -> float:
    settings = dep.request_settings
    ms = getattr(settings, "request_timeout_ms", None) if settings else None
    return (ms or 5000) / 1000


def _ready_within_s(dep: OnlineDeployment) -> float:
    """How long Kubernetes waits for readiness: initial delay + failures x period."""
    p = dep.readiness_probe
    if p is None:
        return 300.0
    return float((p.initial_delay or 10) + (p.failure_threshold or 30) * (p.period or 10))


class OnlineDeploymentOperations:
    """``MLClient.online_deployments``: begin_create_or_update, get, list, begin_delete,
    get_logs."""

    def __init__(self, workspace: EmulatedWorkspace, models: ModelOperations):
        self._ws, self._models = workspace, models
        self.state = _OnlineState()
        self._started = 0

    def begin_create_or_update(
        self, deployment: OnlineDeployment, *, skip_script_validation: bool = False, **kwargs: Any
    ) -> Poller:
        self._ws.record("online_deployments.begin_create_or_update", copy.deepcopy(deployment))
        code = deployment.code_configuration
        if code is not None and not skip_script_validation:
            validate_scoring_script(deployment)
        ep = self.state.endpoint(str(deployment.endpoint_name))
        rest = cast(Any, deployment)._to_rest_object(location=LOCATION)  # noqa: SLF001 - the SDK's name validation
        if not isinstance(deployment, KubernetesOnlineDeployment) or not isinstance(
            ep.entity, KubernetesOnlineEndpoint
        ):
            raise bad_request("the emulation runs Kubernetes deployments on Kubernetes endpoints")
        if (deployment.instance_count or 0) < 1:
            raise bad_request(f"instance_count must be at least 1, not {deployment.instance_count}")
        if code is None or not code.scoring_script:
            raise bad_request("a Kubernetes deployment here needs code and a scoring script")
        model = self._models.resolve(str(deployment.model))
        name = str(deployment.name)
        rest.id = f"{ARM_WORKSPACE}/onlineEndpoints/{ep.entity.name}/deployments/{name}"
        rest.name = name
        rest.properties.provisioning_state = "Creating"
        folder = self._ws.root / "online" / str(ep.entity.name) / name
        with self.state.lock:
            self._started += 1
            dep = ep.deployments.get(name)
            if dep is None:
                dep = ep.deployments[name] = _Deployment(rest, timeout_s=_timeout_s(deployment))
            dep.rest, dep.state, dep.timeout_s = rest, "Creating", _timeout_s(deployment)
            proc = InferenceProcess(
                code_dir=(Path(deployment.base_path) / str(code.code)).resolve(),
                scoring_script=str(code.scoring_script),
                env={**self._ws.env, **(deployment.environment_variables or {})},
                model_dir=mount_model(
                    folder,
                    str(model.name),
                    str(model.version),
                    self._models.local_path(str(model.path)),
                ),
                log_path=folder / f"inference-server-{self._started}.log",
            )
            dep.last = proc.start()
        return Poller(lambda: self._provision(ep, dep, proc, _ready_within_s(deployment)))

    def _provision(
        self, ep: _Endpoint, dep: _Deployment, proc: InferenceProcess, within_s: float
    ) -> OnlineDeployment:
        why = proc.wait_ready(within_s)
        name = str(dep.rest.name)
        if why is not None:
            proc.stop()
            dep.state = "Failed"
            raise HttpResponseError(
                message=f"(ResourceNotReady) Deployment {name} failed: {why}. "
                f"Last log lines:\n{proc.log_tail(5)}"
            )
        previous, dep.process = dep.process, proc
        ep.routing.add(name, proc.port, dep.timeout_s)
        dep.state = "Succeeded"
        if previous is not None:
            previous.stop()  # SIGTERM: gunicorn finishes the requests it has, then exits
        return self.get(name, str(ep.entity.name))

    def get(self, name: str, endpoint_name: str, **kwargs: Any) -> OnlineDeployment:
        with self.state.lock:
            dep = self.state.deployment(name, endpoint_name)
            dep.rest.properties.provisioning_state = dep.state
            entity = OnlineDeployment._from_rest_object(copy.deepcopy(dep.rest))  # noqa: SLF001
            return cast(OnlineDeployment, entity)

    def list(self, endpoint_name: str, **kwargs: Any) -> list[OnlineDeployment]:
        with self.state.lock:
            names = list(self.state.endpoint(endpoint_name).deployments)
        return [self.get(n, endpoint_name) for n in names]

    def begin_delete(self, name: str, endpoint_name: str, **kwargs: Any) -> Poller:
        self._ws.record("online_deployments.begin_delete", f"{endpoint_name}/{name}")
        with self.state.lock:
            ep = self.state.endpoint(endpoint_name)
            dep = self.state.deployment(name, endpoint_name)
            live = {**ep.routing.traffic, **ep.routing.mirror}
            if live.get(name, 0) > 0:
                raise bad_request(
                    f"deployment {name} has {live[name]}% of endpoint {endpoint_name}'s "
                    "traffic; move the traffic off it before deleting it"
                )
            dep.state = "Deleting"

        def delete() -> None:
            ep.routing.drain(name)
            for proc in {dep.process, dep.last} - {None}:
                proc.stop()  # type: ignore[union-attr]
            with self.state.lock:
                ep.deployments.pop(name, None)

        return Poller(delete)

    def get_logs(self, name: str, endpoint_name: str, lines: int, **kwargs: Any) -> str:
        dep = self.state.deployment(name, endpoint_name)
        return dep.last.log_tail(lines) if dep.last is not None else ""

    def stop_all(self, ep: _Endpoint) -> None:
        for dep in ep.deployments.values():
            for proc in {dep.process, dep.last} - {None}:
                proc.stop()  # type: ignore[union-attr]

    def close(self) -> None:
        with self.state.lock:
            endpoints = list(self.state.endpoints.values())
        for ep in endpoints:
            self.stop_all(ep)


class OnlineEndpointOperations:
    """``MLClient.online_endpoints``: get, list, begin_create_or_update (traffic and mirror
    traffic included), begin_delete, get_keys, invoke."""

    def __init__(self, workspace: EmulatedWorkspace, deployments: OnlineDeploymentOperations):
        self._ws, self._deployments = workspace, deployments
        self.state = deployments.state

    def get(self, name: str, **kwargs: Any) -> OnlineEndpoint:
        with self.state.lock:
            ep = self.state.endpoint(name)
            rest = ep.entity._to_rest_online_endpoint(location=LOCATION)  # noqa: SLF001
            rest.properties.traffic = dict(ep.routing.traffic)
            rest.properties.mirror_traffic = dict(ep.routing.mirror)
            rest.properties.scoring_uri = f"{ep.front.url}/score"
            rest.properties.provisioning_state = "Succeeded"
            rest.id, rest.name = f"{ARM_WORKSPACE}/onlineEndpoints/{name}", name
            return OnlineEndpoint._from_rest_object(rest)  # noqa: SLF001

    def list(self, **kwargs: Any) -> list[OnlineEndpoint]:
        with self.state.lock:
            names = list(self.state.endpoints)
        return [self.get(n) for n in names]

    def begin_create_or_update(self, endpoint: OnlineEndpoint, **kwargs: Any) -> Poller:
        self._ws.record("online_endpoints.begin_create_or_update", copy.deepcopy(endpoint))
        endpoint = copy.deepcopy(endpoint)
        # What the SDK does before it sends the endpoint, then its own validation.
        endpoint.traffic = _strip_zeroes_from_traffic(endpoint.traffic or {})
        endpoint.mirror_traffic = _strip_zeroes_from_traffic(endpoint.mirror_traffic or {})
        if not isinstance(endpoint, KubernetesOnlineEndpoint):
            raise bad_request("the emulation has Kubernetes online endpoints only")
        endpoint._to_rest_online_endpoint(location=LOCATION)  # noqa: SLF001
        compute = self._ws.compute(str(endpoint.compute).split("/")[-1])
        if not isinstance(compute, KubernetesCompute):
            raise bad_request(f"compute {endpoint.compute} is not an attached Kubernetes compute")
        traffic = {k: int(v) for k, v in endpoint.traffic.items()}
        mirror = {k: int(v) for k, v in endpoint.mirror_traffic.items()}
        name = str(endpoint.name)
        with self.state.lock:
            ep = self.state.endpoints.get(name)
            _check_traffic(name, traffic, mirror, set(ep.deployments) if ep else set())
            if ep is None:
                routing = Routing(keys=(secrets.token_urlsafe(24), secrets.token_urlsafe(24)))
                ep = _Endpoint(endpoint, routing, EndpointFront(routing))
                self.state.endpoints[name] = ep
            elif str(getattr(ep.entity, "compute", "")).split("/")[-1] != compute.name:
                raise bad_request(f"the compute of endpoint {name} cannot be changed")
            ep.entity = endpoint
            ep.routing.set(traffic, mirror)
        return Poller(value=self.get(name))

    def begin_delete(self, name: str, **kwargs: Any) -> Poller:
        self._ws.record("online_endpoints.begin_delete", name)
        with self.state.lock:
            ep = self.state.endpoint(name)
            del self.state.endpoints[name]

        def delete() -> None:
            ep.front.stop()
            self._deployments.stop_all(ep)

        return Poller(delete)

    def get_keys(self, name: str) -> EndpointAuthKeys:
        keys = self.state.endpoint(name).routing.keys
        return EndpointAuthKeys(primary_key=keys[0], secondary_key=keys[1])

    def invoke(
        self,
        endpoint_name: str,
        *,
        request_file: str | None = None,
        deployment_name: str | None = None,
        **kwargs: Any,
    ) -> str:
        """POST the request file to the endpoint's front with its primary key, as the SDK
        does; a non-2xx answer raises azure-core's error for its status."""
        self._ws.record(
            "online_endpoints.invoke", {"endpoint": endpoint_name, "deployment": deployment_name}
        )
        with open(str(request_file), "rb") as f:
            data = json.loads(f.read())
        if deployment_name:
            names = [d.name for d in self._deployments.list(endpoint_name)]
            if deployment_name not in names:
                msg = f"Deployment name {deployment_name} not found for this endpoint"
                raise ValidationException(
                    message=msg,
                    target=cast(Any, ErrorTarget.ONLINE_ENDPOINT),
                    no_personal_data_message="Deployment name not found for this endpoint",
                    error_category=cast(Any, ErrorCategory.USER_ERROR),
                    error_type=cast(Any, ValidationErrorType.RESOURCE_NOT_FOUND),
                )
        endpoint = self.get(endpoint_name)
        headers = {
            **EndpointInvokeFields.DEFAULT_HEADER,
            "Authorization": f"Bearer {self.get_keys(endpoint_name).primary_key}",
        }
        if deployment_name:
            headers[DEPLOYMENT_HEADER] = deployment_name
        req = urllib.request.Request(
            str(endpoint.scoring_uri), json.dumps(data).encode(), headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return str(resp.read().decode())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            raise _INVOKE_ERRORS.get(exc.code, HttpResponseError)(
                message=f"({exc.code}) {text[:500]}"
            ) from None

    def close(self) -> None:
        with self.state.lock:
            endpoints = list(self.state.endpoints.values())
        for ep in endpoints:
            ep.front.stop()


def _check_traffic(
    endpoint: str, traffic: dict[str, int], mirror: dict[str, int], deployments: set[str]
) -> None:
    """The service's traffic rules (the SDK has already dropped 0 % entries)."""
    missing = sorted((set(traffic) | set(mirror)) - deployments)
    if missing:
        raise bad_request(
            f"traffic of endpoint {endpoint} names deployments that do not exist: {missing}"
        )
    if sum(traffic.values()) not in (0, 100):
        raise bad_request(
            f"traffic of endpoint {endpoint} sums to {sum(traffic.values())}, not 0 or 100"
        )
    if len(mirror) > 1 or any(not 0 < p <= 50 for p in mirror.values()):
        raise bad_request(f"mirror traffic goes to one deployment, at most 50%: {mirror}")
    if set(mirror) & {d for d, p in traffic.items() if p > 0}:
        raise bad_request(f"a deployment with live traffic cannot get mirror traffic: {mirror}")
