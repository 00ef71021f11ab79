"""Where remote scripts run: a local subprocess, or an Azure ML compute cluster.

Batch scoring (``mlops_assets.jobs.score_drops``, one job for all the drop versions of a
Dagster run) and remote training (``mlops_assets.jobs.train``) run as ``python -m <module>``
under Dagster Pipes with the job's parameters in ``MLOPS_JOB_PARAMS``; ``run_module`` returns
the Pipes invocation.

* ``LocalBatchCompute``: ``PipesSubprocessClient`` (rank 0) with a message reader that only
  parses whole lines (``WholeLineFileMessageReader``); with ``instance_count > 1`` the other
  ranks run as plain subprocesses next to it, as the nodes of an AML job would.
* ``AzureMLBatchCompute``: an ``azure-ai-ml`` ``command(...)`` job on a named compute cluster
  (instance count, environment, env vars; PyTorch distribution with one process per node so AML
  sets ``RANK``/``WORLD_SIZE``) submitted by dagster-azure's ``PipesAzureMLClient`` with the Blob
  context injector and message reader. On top of that client: a deterministic job name (run id +
  key + attempt, the key being the drop version or ``batch:<digest>`` of the run's drop
  versions; an earlier attempt still running is cancelled first), an overall timeout that
  cancels the job, retries of transient status reads, and cancellation when the Dagster run is
  stopped (the client's ``forward_termination``). The job's code runs as the cluster's managed
  identity (``identity="managed"``; ``identity_client_id`` picks a user-assigned one, also
  given to the job as ``AZURE_CLIENT_ID`` for ``DefaultAzureCredential``), or as the
  submitting user (``identity="user"``).

Nothing here contacts Azure until ``run_scoring`` is called on the Azure implementation; tests
and ``make demo-azure`` hand it clients of their own with ``with_clients`` (the emulated
workspace of ``aml_emulation`` and an Azurite blob client).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from mlops_assets.jobs.common import PARAMS_ENV

MODULE = "mlops_assets.jobs.score_drops"
TERMINAL = {"Completed", "Canceled", "Failed"}
_GIVEN_CLIENTS: dict[str, tuple[Any, Any]] = {}  # AzureMLBatchCompute.with_clients


def job_name(run_id: str, key: str, attempt: int = 0, purpose: str = "score") -> str:
    """A deterministic AML job name (letters, digits, '_' and '-', at most 255 chars)."""
    digest = hashlib.sha256(f"{run_id}\n{key}".encode()).hexdigest()[:20]
    return f"mlops-{purpose}-{digest}-a{attempt}"


class BatchCompute(dg.ConfigurableResource, ABC):
    """Runs a remote script (batch scoring of drops, training of a dataset) under Pipes."""

    instance_count: int = Field(default=1, ge=1, description="Instances sharing the series.")
    timeout_s: float = Field(default=3600.0, description="Overall limit for one job.")

    @abstractmethod
    def run_module(
        self,
        context: dg.AssetExecutionContext,
        *,
        module: str,
        params_json: str,
        key: str,
        purpose: str,
    ) -> Any:
        """Run ``python -m module``; return the ``PipesClientCompletedInvocation``."""

    def run_scoring(self, context: dg.AssetExecutionContext, *, params_json: str, key: str) -> Any:
        """Run the batch scoring script once for a batch of drop versions.

        ``params_json``: a ``score_drops.DropBatch`` (or one ``DropJob``, or a reference to
        params in storage), as ``score_drops.params_json`` makes it; ``key``: the drop version,
        or ``batch:<digest>`` of the run's drop versions (``batch_scoring.batch_key``), which
        names the job. The script reports one custom message per drop, carrying its ``key``.
        """
        return self.run_module(
            context, module=MODULE, params_json=params_json, key=key, purpose="score"
        )


def whole_lines(path: str, should_stop: Callable[[], bool], poll_s: float = 0.01) -> Iterator[str]:
    """The lines appended to ``path``, each once it is complete, until ``should_stop()`` and
    the file is read to its end (a last line without its newline is yielded as it is).

    Dagster's ``tail_file`` yields whatever ``readline`` returns, and a reader can see part of
    a write that straddles a page boundary (ext4 grows the file page by page): that half line
    fails to parse, Dagster's reader thread dies, and every later message of the session is
    lost. With one message per drop this lost the last 85 drops of a 250-drop run under load.
    """
    rest = b""
    with open(path, "rb") as f:
        while True:
            stopping = should_stop()  # before the read: after it, an empty read means the end
            chunk = f.read(1 << 20)
            if chunk:
                *lines, rest = (rest + chunk).split(b"\n")
                yield from (line.decode("utf-8") for line in lines if line.strip())
            elif stopping:
                if rest.strip():
                    yield rest.decode("utf-8")
                return
            else:
                time.sleep(poll_s)


class WholeLineFileMessageReader(dg.PipesMessageReader):
    """``PipesTempFileMessageReader`` that hands the handler whole lines only (``whole_lines``),
    so a long-running script's many messages all arrive."""

    @contextmanager
    def read_messages(self, handler) -> Iterator[dict]:
        from dagster_pipes import PipesDefaultMessageWriter

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "messages")
            open(path, "wb").close()
            closed = threading.Event()
            thread = threading.Thread(
                target=self._read, args=(path, handler, closed.is_set), daemon=True
            )
            thread.start()
            try:
                yield {
                    PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                    PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False,
                }
            finally:
                closed.set()
                thread.join()

    def _read(self, path: str, handler, should_stop: Callable[[], bool]) -> None:
        try:
            for line in whole_lines(path, should_stop):
                handler.handle_message(json.loads(line))
        except Exception:
            handler.report_pipes_framework_exception(
                f"{type(self).__name__} reader thread", sys.exc_info()
            )
            raise

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a local temporary file."


class LocalBatchCompute(BatchCompute):
    """The script as a local subprocess through ``PipesSubprocessClient``."""

    python: str = Field(default="", description="Interpreter; default the running one.")
    extra_env: dict[str, str] = Field(default_factory=dict)

    def _env(self, params_json: str, rank: int) -> dict[str, str]:
        return {
            **self.extra_env,
            PARAMS_ENV: params_json,
            "MLOPS_RANK": str(rank),
            "MLOPS_WORLD_SIZE": str(self.instance_count),
        }

    def run_module(self, context, *, module: str, params_json: str, key: str, purpose: str):
        cmd = [self.python or sys.executable, "-m", module]
        cwd = str(_repo_root())
        others = [
            subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **self._env(params_json, r)})
            for r in range(1, self.instance_count)
        ]
        try:
            client = dg.PipesSubprocessClient(cwd=cwd, message_reader=WholeLineFileMessageReader())
            invocation = client.run(context=context, command=cmd, env=self._env(params_json, 0))
            for p in others:
                rc = p.wait(self.timeout_s)
                if rc != 0:
                    raise dg.Failure(f"{purpose} instance pid {p.pid} exited with {rc}")
            return invocation
        finally:
            for p in others:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


class AzureMLBatchCompute(BatchCompute):
    """The script as an Azure ML command job on a compute cluster, through Pipes."""

    subscription_id: str
    resource_group: str
    workspace: str
    compute: str = Field(default="cpu-batch", description="Name of the AML compute cluster.")
    environment: str = Field(
        default="azureml:mlops-batch@latest", description="AML environment (name@label)."
    )
    code: str = Field(default="", description="Folder uploaded as the job's code; default repo.")
    experiment_name: str = "mlops-batch-scoring"
    pipes_account_url: str = Field(description="Storage account for Pipes context + messages.")
    pipes_container: str = "dagster-pipes"
    env_vars: dict[str, str] = Field(default_factory=dict)
    identity: Literal["managed", "user"] = Field(
        default="managed",
        description=(
            "Identity the job's code runs as: 'managed' (the cluster's managed identity, for "
            "unattended runs) or 'user' (the submitter's, for interactive debugging)."
        ),
    )
    identity_client_id: str = Field(
        default="",
        description=(
            "Client id of the cluster's user-assigned managed identity to run as; empty: the "
            "cluster's default (system-assigned, or its only user-assigned) identity."
        ),
    )
    poll_interval_s: float = 10.0
    status_retries: int = 5

    clients: str = Field(
        default="",
        description=(
            "Set by with_clients (tests, make demo-azure): the key of clients given in this "
            "process; empty: clients built with DefaultAzureCredential."
        ),
    )

    _ml_client: Any = PrivateAttr(default=None)
    _blob_client: Any = PrivateAttr(default=None)

    def with_clients(self, ml_client: Any, blob_client: Any) -> AzureMLBatchCompute:
        """This resource using these clients instead of DefaultAzureCredential ones.

        The clients are held by key in a process-wide table, as Dagster rebuilds a resource
        from its fields (private attributes do not survive that) before a run uses it.
        """
        key = uuid.uuid4().hex
        _GIVEN_CLIENTS[key] = (ml_client, blob_client)
        return type(self)(**{**self.model_dump(), "clients": key})

    def _given(self, which: int) -> Any:
        return _GIVEN_CLIENTS[self.clients][which] if self.clients else None

    def ml_client(self):
        if self._ml_client is None:
            self._ml_client = self._given(0)
        if self._ml_client is None:
            from azure.ai.ml import MLClient
            from azure.identity import DefaultAzureCredential

            self._ml_client = MLClient(
                DefaultAzureCredential(), self.subscription_id, self.resource_group, self.workspace
            )
        return self._ml_client

    def blob_client(self):
        if self._blob_client is None:
            self._blob_client = self._given(1)
        if self._blob_client is None:
            from azure.identity import DefaultAzureCredential
            from azure.storage.blob import BlobServiceClient

            self._blob_client = BlobServiceClient(
                self.pipes_account_url, credential=DefaultAzureCredential()
            )
        return self._blob_client

    def build_command(
        self, *, params_json: str, name: str, key: str, module: str = MODULE, purpose: str = "score"
    ):
        """The ``azure-ai-ml`` Command entity (pure: no Azure call)."""
        from azure.ai.ml import PyTorchDistribution, command

        env = {
            **self.env_vars,
            PARAMS_ENV: params_json,
            "MLOPS_PIPES_TRANSPORT": "azure_blob",
            "MLOPS_PIPES_BLOB_ACCOUNT_URL": self.pipes_account_url,
        }
        kwargs: dict[str, Any] = {"identity": self._identity()}
        if self.identity_client_id:  # DefaultAzureCredential in the job takes it from here
            env["AZURE_CLIENT_ID"] = self.identity_client_id
        if self.instance_count > 1:
            kwargs["distribution"] = PyTorchDistribution(process_count_per_instance=1)
        return command(
            name=name,
            display_name=f"{purpose} {key}"[:250],
            experiment_name=self.experiment_name,
            description=f"{purpose} {key} (Dagster Pipes: python -m {module}).",
            command=f"python -m {module}",
            code=self.code or str(_repo_root()),
            environment=self.environment,
            compute=self.compute,
            instance_count=self.instance_count,
            environment_variables=env,
            tags={"mlops/key": key[:250], "mlops/purpose": purpose},
            **kwargs,
        )

    def _identity(self):
        from azure.ai.ml.entities import ManagedIdentityConfiguration, UserIdentityConfiguration

        if self.identity == "user":
            if self.identity_client_id:
                raise ValueError("identity_client_id applies to identity='managed' only")
            return UserIdentityConfiguration()
        return ManagedIdentityConfiguration(client_id=self.identity_client_id or None)

    def run_module(self, context, *, module: str, params_json: str, key: str, purpose: str):
        from dagster_azure.pipes import (
            PipesAzureBlobStorageContextInjector,
            PipesAzureBlobStorageMessageReader,
        )

        attempt = getattr(context, "retry_number", 0) or 0
        name = job_name(context.run.run_id, key, attempt, purpose)
        ml = self.ml_client()
        for earlier in range(attempt):  # a step retry: no orphaned job from an earlier attempt
            self._cancel_if_running(
                ml, job_name(context.run.run_id, key, earlier, purpose), context
            )
        client = TimedAzureMLClient(
            client=ml,
            context_injector=PipesAzureBlobStorageContextInjector(
                container=self.pipes_container, client=self.blob_client()
            ),
            message_reader=PipesAzureBlobStorageMessageReader(
                container=self.pipes_container, client=self.blob_client()
            ),
            poll_interval_seconds=self.poll_interval_s,
            forward_termination=True,
        )
        client.timeout_s, client.status_retries = self.timeout_s, self.status_retries
        cmd = self.build_command(
            params_json=params_json, name=name, key=key, module=module, purpose=purpose
        )
        return client.run(context=context, command=cmd)

    @staticmethod
    def _cancel_if_running(ml, name: str, context) -> None:
        try:
            status = ml.jobs.get(name).status
        except Exception:  # never submitted
            return
        if status not in TERMINAL:
            context.log.warning(f"cancelling AML job {name} of an earlier attempt ({status})")
            ml.jobs.begin_cancel(name)


def _make_timed_client():
    from dagster_azure.pipes import PipesAzureMLClient

    class _Timed(PipesAzureMLClient):
        """``PipesAzureMLClient`` with an overall timeout and retried status reads."""

        timeout_s: float = 3600.0
        status_retries: int = 5

        def _status(self, job: str) -> str:
            for i in range(self.status_retries + 1):
                try:
                    return self.client.jobs.get(job).status
                except Exception:
                    if i == self.status_retries:
                        raise
                    time.sleep(min(2**i, 30))
            raise AssertionError("unreachable")

        def _poll_til_success(self, context, job_name: str) -> None:
            from dagster._core.errors import DagsterPipesExecutionError

            deadline = time.monotonic() + self.timeout_s
            last = None
            while True:
                status = self._status(job_name)
                if status != last:
                    context.log.info(f"[pipes] Azure ML job {job_name}: {status}")
                last = status
                if status == "Completed":
                    return
                if status in {"Canceled", "Failed"}:
                    raise DagsterPipesExecutionError(f"Azure ML job {job_name}: {status}")
                if time.monotonic() > deadline:
                    context.log.error(f"Azure ML job {job_name} exceeded {self.timeout_s}s")
                    self.client.jobs.begin_cancel(job_name)
                    raise DagsterPipesExecutionError(
                        f"Azure ML job {job_name} did not finish within {self.timeout_s:.0f}s "
                        f"(last status {status}); cancelled"
                    )
                time.sleep(self.poll_interval_seconds)

        def _poll_til_terminating(self, job_name: str) -> None:
            """Called only once an interrupted run has cancelled its job: wait until the job
            stops, then interrupt the step. dagster-azure returns a completed invocation here,
            so the step went on with whatever the cancelled job had written, and the run with
            its next steps (seen with Ctrl-C in ``mlops demo-azure``)."""
            from dagster._core.errors import DagsterExecutionInterruptedError

            super()._poll_til_terminating(job_name)
            raise DagsterExecutionInterruptedError(f"Azure ML job {job_name} cancelled")

    return _Timed


def TimedAzureMLClient(**kwargs):
    """A ``PipesAzureMLClient`` with an overall timeout; the class is made (and dagster_azure
    imported) on first use."""
    return _timed_client_class()(**kwargs)


_timed_client_class = functools.cache(_make_timed_client)
