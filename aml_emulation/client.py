"""``EmulatedMLClient``: the ``MLClient`` surface the project calls, over an emulated workspace."""

from __future__ import annotations

import functools
from typing import Any

from aml_emulation.workspace import ComputeOperations, EmulatedWorkspace


class EmulatedMLClient:
    """Stands where ``azure.ai.ml.MLClient`` goes: ``jobs``, ``models``, ``compute``,
    ``online_endpoints`` and ``online_deployments``. Use as a context manager (or call
    :meth:`close`) so every process it started is stopped."""

    def __init__(self, workspace: EmulatedWorkspace):
        self.workspace = workspace

    @functools.cached_property
    def compute(self) -> ComputeOperations:
        return ComputeOperations(self.workspace)

    @functools.cached_property
    def jobs(self) -> Any:
        from aml_emulation.jobs import JobOperations

        return JobOperations(self.workspace)

    @functools.cached_property
    def models(self) -> Any:
        from aml_emulation.online import ModelOperations

        return ModelOperations(self.workspace)

    @functools.cached_property
    def online_endpoints(self) -> Any:
        from aml_emulation.online import OnlineEndpointOperations

        return OnlineEndpointOperations(self.workspace, self.online_deployments)

    @functools.cached_property
    def online_deployments(self) -> Any:
        from aml_emulation.online import OnlineDeploymentOperations

        return OnlineDeploymentOperations(self.workspace, self.models)

    def create_or_update(self, entity: Any, **kwargs: Any) -> Any:
        """``MLClient.create_or_update``: a job goes to ``jobs`` (how ``PipesAzureMLClient``
        submits its command), a model to ``models``."""
        from azure.ai.ml.entities import Job, Model

        if isinstance(entity, Job):
            return self.jobs.create_or_update(entity, **kwargs)
        if isinstance(entity, Model):
            return self.models.create_or_update(entity)
        raise TypeError("Please refer to create_or_update docstring for valid input types.")

    def close(self) -> None:
        """Stop every job and deployment process this client started."""
        for name in ("jobs", "online_endpoints", "online_deployments"):
            ops = self.__dict__.get(name)
            if ops is not None and hasattr(ops, "close"):
                ops.close()

    def __enter__(self) -> EmulatedMLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
