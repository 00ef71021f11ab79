"""The blue/green release with staged traffic and automatic rollback.

``staged_rollout`` runs over a small ``RolloutOps`` interface; ``AmlRolloutOps`` implements it
on an Azure ML workspace (``MLClient``: the real one, or the emulation's in tests).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resources.aml_entities import (
    COLORS,
    DeploymentSettings,
    deployment_entity,
    endpoint_entity,
    model_entity,
)
from resources.endpoints import ModelSetRelease, ReleaseError

LOG_LINES = 20  # of a failed deployment's log, in the release error


def traffic_stages(old: str | None, new: str, stages: list[int]) -> list[dict[str, int]]:
    """The endpoint traffic after each stage: ``[{blue: 90, green: 10}, ..., {green: 100}]``.

    With nothing live, one stage: ``{new: 100}`` (an endpoint's traffic sums to 0 or 100)."""
    out: list[dict[str, int]] = []
    for p in stages:
        if not 0 < p <= 100:
            raise ValueError(f"traffic stage {p} is not in (0, 100]")
        if old is not None:
            out.append({old: 100 - p, new: p})
    if not out or out[-1].get(new) != 100:
        out.append({new: 100} if old is None else {old: 0, new: 100})
    return out


class RolloutOps(ABC):
    """What a staged rollout needs from an endpoint (AML, or a fake in tests)."""

    @abstractmethod
    def ensure_endpoint(self) -> dict[str, int]:
        """Create the endpoint if missing; returns its current traffic."""

    @abstractmethod
    def create_deployment(self, color: str, release: ModelSetRelease) -> None: ...

    @abstractmethod
    def set_traffic(self, traffic: dict[str, int]) -> None: ...

    @abstractmethod
    def health_check(self, color: str | None, release: ModelSetRelease) -> str | None:
        """None if healthy, else why not. ``color`` None: through the endpoint's routing."""

    @abstractmethod
    def delete_deployment(self, color: str) -> None: ...

    def load_check(self, color: str, release: ModelSetRelease) -> dict | None:
        """A short load profile against ``color`` at 0 % traffic (``loadtest`` figures), or
        None where there is none; its ``errors`` fail the release."""
        return None


def staged_rollout(
    ops: RolloutOps,
    release: ModelSetRelease,
    stages: list[int],
    *,
    checks_per_stage: int = 3,
    stage_wait_s: float = 0.0,
    delete_previous: bool = True,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Blue/green with staged traffic and automatic rollback. Returns a report.

    Raises:
        ReleaseError: A health check failed; traffic is back on the old colour.
    """
    traffic = ops.ensure_endpoint()
    live = [c for c, p in traffic.items() if p > 0]
    old = max(live, key=lambda c: traffic[c]) if live else None
    new = COLORS[1] if old == COLORS[0] else COLORS[0]
    report: dict[str, Any] = {"old": old, "new": new, "stages": []}
    log(f"deploying v{release.version} as {new} (live: {old})")
    ops.create_deployment(new, release)
    problem = ops.health_check(new, release)  # called directly at 0 % traffic
    if problem:
        ops.delete_deployment(new)
        raise ReleaseError(f"{new} unhealthy before taking traffic: {problem}; {old} untouched")
    profile = ops.load_check(new, release)
    if profile is not None:
        report["load_profile"] = profile
        if profile.get("errors"):
            ops.delete_deployment(new)
            raise ReleaseError(
                f"{new} failed {profile['errors']} of {profile['offered']} load-profile requests "
                f"({profile.get('statuses')}); {old} untouched"
            )
    for plan in traffic_stages(old, new, stages):
        ops.set_traffic(plan)
        log(f"traffic {plan}")
        checks: list[str] = []
        stage = {"traffic": plan, "checks": checks}
        report["stages"].append(stage)
        for _ in range(checks_per_stage):
            sleep(stage_wait_s / max(1, checks_per_stage))
            problem = ops.health_check(None, release) or ops.health_check(new, release)
            checks.append(problem or "ok")
            if problem:
                back = {old: 100, new: 0} if old else {new: 0}
                ops.set_traffic(back)
                report["rolled_back_to"] = old
                log(f"health check failed at {plan}: {problem}; traffic back to {old}")
                raise ReleaseError(
                    f"v{release.version} failed a health check at {plan}: {problem}; "
                    f"rolled back to {old}"
                )
    if old and delete_previous:
        ops.delete_deployment(old)
        report["deleted"] = old
    return report


class AmlRolloutOps(RolloutOps):
    """``RolloutOps`` on an Azure ML workspace (``MLClient``); never used in tests."""

    def __init__(
        self,
        ml_client,
        endpoint_name: str,
        compute: str,
        model_path: str,
        settings: DeploymentSettings,
        timeout_s: float = 1800,
        identity=None,
    ):
        self.ml, self.name, self.compute = ml_client, endpoint_name, compute
        self.model_path, self.settings, self.timeout_s = model_path, settings, timeout_s
        self.identity = identity
        self.failures: dict[str, str] = {}

    def load_check(self, color: str, release: ModelSetRelease) -> dict | None:
        """``loadtest.run_profile`` through the endpoint's scoring URI to ``color`` only
        (the ``azureml-model-deployment`` header), with the smoke records as bodies."""
        from urllib.parse import urlsplit

        from mlops_assets.serving.loadtest import run_profile

        s = self.settings
        if s.qa_load_seconds <= 0 or not release.smoke_records:
            return None
        uri = urlsplit(str(self.ml.online_endpoints.get(self.name).scoring_uri))
        key = self.ml.online_endpoints.get_keys(self.name).primary_key
        tls = uri.scheme == "https"
        return run_profile(
            uri.port or (443 if tls else 80),
            [json.dumps({"data": release.smoke_records}).encode()],
            rps=s.qa_load_rps,
            seconds=s.qa_load_seconds,
            headers={"Authorization": f"Bearer {key}", "azureml-model-deployment": color},
            threads=8,
            path=uri.path or "/score",
            host=str(uri.hostname),
            tls=tls,
        )

    def ensure_endpoint(self) -> dict[str, int]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            ep = self.ml.online_endpoints.get(self.name)
        except ResourceNotFoundError:
            ep = self.ml.online_endpoints.begin_create_or_update(
                endpoint_entity(self.name, self.compute, identity=self.identity)
            ).result(timeout=self.timeout_s)
        return dict(ep.traffic or {})

    def model(self, release: ModelSetRelease):
        """The AML model of ``release``: the existing version when this set was released
        before (same digest), else a new one."""
        from azure.core.exceptions import ResourceNotFoundError

        entity = model_entity(release, self.model_path)
        try:
            found = self.ml.models.get(entity.name, version=entity.version)
        except ResourceNotFoundError:
            return self.ml.models.create_or_update(entity)
        if (found.tags or {}).get("manifest_sha256") != release.ref.manifest_sha256:
            raise ReleaseError(
                f"AML model {entity.name}:{entity.version} exists with another manifest digest"
            )
        return found

    def create_deployment(self, color: str, release: ModelSetRelease) -> None:
        from azure.core.exceptions import HttpResponseError

        model = self.model(release)
        dep = deployment_entity(
            color, self.name, release, f"azureml:{model.name}:{model.version}", self.settings
        )
        poller = self.ml.online_deployments.begin_create_or_update(dep)
        try:
            poller.result(timeout=self.timeout_s)
        except HttpResponseError as exc:  # provisioning failed: the health check says why
            self.failures[color] = str(exc).splitlines()[0][:300]

    def set_traffic(self, traffic: dict[str, int]) -> None:
        ep = self.ml.online_endpoints.get(self.name)
        ep.traffic = traffic
        self.ml.online_endpoints.begin_create_or_update(ep).result(timeout=self.timeout_s)

    def health_check(self, color: str | None, release: ModelSetRelease) -> str | None:
        import tempfile

        if color is not None:
            dep = self.ml.online_deployments.get(name=color, endpoint_name=self.name)
            state = str(getattr(dep.provisioning_state, "value", dep.provisioning_state))
            if state != "Succeeded":
                logs = self.ml.online_deployments.get_logs(
                    name=color, endpoint_name=self.name, lines=LOG_LINES
                )
                why = self.failures.get(color) or ""
                return f"{color} provisioning state {state}: {why}; last log lines: {logs[-800:]}"
        if not release.smoke_records:
            return None
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"data": release.smoke_records}, f)
        try:
            raw = self.ml.online_endpoints.invoke(
                endpoint_name=self.name, request_file=f.name, deployment_name=color
            )
        except Exception as exc:
            return f"invoke failed: {exc}"
        finally:
            Path(f.name).unlink(missing_ok=True)
        body = json.loads(raw) if isinstance(raw, str) else raw
        if str(body.get("model_set_version")) != str(release.version) and color is not None:
            return f"{color} serves {body.get('model_set_version')!r}"
        if body.get("n_errors"):
            return f"{body['n_errors']} smoke records failed"
        return None

    def delete_deployment(self, color: str) -> None:
        self.ml.online_deployments.begin_delete(name=color, endpoint_name=self.name).result(
            timeout=self.timeout_s
        )
