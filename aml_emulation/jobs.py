"""``MLClient.jobs`` for command jobs: submit, get, stream, cancel, each executed for real.

``create_or_update`` takes the SDK ``Command`` (or ``CommandJob``) that
``resources.compute.AzureMLBatchCompute.build_command`` builds and ``PipesAzureMLClient``
submits. It refuses what Azure would refuse, with the error types the SDK raises: the SDK's own
validation (``_validate``, the REST serialization), a local ``code`` folder that does not exist
(the SDK's ``_validate_path``), a compute that is not in the workspace (``ResourceNotFoundError``
as ``MLClient`` raises it), an environment that is not registered, and, as the service answers
them (``HttpResponseError``): an invalid job name, a name taken, a compute that is not an
``AmlCompute`` cluster, more instances than the cluster's ``max_instances``. Then it runs the
job's command in one process per instance (:class:`~aml_emulation.job_runs.JobRun`) in the job's
code folder, with the job's environment variables, the workspace's, and the rank variables
Azure ML sets for the job's distribution.

``get`` returns what the service would: the job deserialized from its REST form, with its
current ``status``. ``stream`` prints the processes' logs until the job ends (raising
``JobException`` if it failed, as the SDK does). ``begin_cancel`` returns an ``LROPoller``
whose ``result()`` waits until the processes are gone.
"""

from __future__ import annotations

import copy
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from azure.ai.ml import Input, Output
from azure.ai.ml._utils._asset_utils import _validate_path
from azure.ai.ml.entities import AmlCompute, Environment, Job
from azure.ai.ml.entities._job.to_rest_functions import to_rest_job_object
from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, JobException
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.polling import LROPoller, PollingMethod

from aml_emulation.job_runs import (
    TERMINAL,
    JobRun,
    base_env,
    free_port,
    placements,
    rank_env,
)
from aml_emulation.workspace import EmulatedWorkspace

# The service's rule for a job (run) name.
JOB_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,254}$")
_PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")


def service_error(message: str, status: int = 400) -> HttpResponseError:
    """The error the service answers a bad request with (``UserError``, HTTP ``status``)."""
    error = HttpResponseError(message=f"(UserError) {message}")
    error.status_code, error.reason = status, "Bad Request"
    return error


class JobOperations:
    """``MLClient.jobs`` over an emulated workspace (command jobs)."""

    def __init__(self, workspace: EmulatedWorkspace):
        self._ws = workspace
        self._jobs: dict[str, tuple[Any, JobRun]] = {}  # name -> (REST job, its run)
        self._lock = threading.Lock()

    # -- submit ---------------------------------------------------------------------------

    def create_or_update(self, job: Any, **kwargs: Any) -> Job:
        """Validate ``job`` as Azure would, start it, return it as the service does."""
        self._ws.record("jobs.create_or_update", job)
        for key in ("description", "compute", "tags", "experiment_name"):
            if kwargs.get(key) is not None:
                setattr(job, key, kwargs[key])
        name = str(job.name or "")
        if not JOB_NAME.match(name):
            raise service_error(
                f"Invalid job name {name!r}: 1-255 letters, digits, '-' and '_', "
                "starting with a letter or digit."
            )
        if not kwargs.get("skip_validation"):
            job._validate(raise_error=True)  # noqa: SLF001 - the SDK's own check, as it runs it
        compute = self._compute_for(job)
        self._check_environment(job.environment)
        code = self._code_folder(job)
        rest = to_rest_job_object(job)
        rest.properties.status = "NotStarted"
        with self._lock:
            if name in self._jobs:
                raise ResourceExistsError(f"(UserError) A job named {name!r} already exists.")
            run = self._new_run(job, name, code, compute)
            self._jobs[name] = (rest, run)
        submitted = self.get(name, _record=False)  # NotStarted, as the service answers
        run.start()
        return submitted

    def _compute_for(self, job: Any) -> AmlCompute:
        compute = self._ws.compute(str(job.compute))  # ResourceNotFoundError as MLClient's
        if not isinstance(compute, AmlCompute):
            raise service_error(
                f"Compute {job.compute!r} is a {type(compute).__name__}: command jobs of this "
                "project run on an AmlCompute cluster."
            )
        wanted = int(job.resources.instance_count or 1) if job.resources else 1
        if wanted > int(compute.max_instances or 1):
            raise service_error(
                f"Requested {wanted} nodes but compute {compute.name!r} has a maximum of "
                f"{compute.max_instances} nodes."
            )
        return compute

    def _check_environment(self, environment: Any) -> None:
        if isinstance(environment, Environment):
            if not (environment.image or environment.build):
                raise service_error("An inline environment needs an image or a build context.")
            return
        ref = str(environment or "")
        if not ref.startswith("azureml:"):
            raise service_error(f"Environment {ref!r} is not an 'azureml:<name>...' reference.")
        ref = ref.removeprefix("azureml:")
        if "@" in ref:
            name, label = ref.split("@", 1)
            if label != "latest":
                raise service_error(f"Environment label {label!r}: only 'latest' is supported.")
            self._ws.environment(name)
        else:
            name, _, version = ref.partition(":")
            self._ws.environment(name, version or None)

    @staticmethod
    def _code_folder(job: Any) -> Path:
        code = getattr(job, "code", None)
        if code is None:
            raise service_error("The emulation runs local code only: the job has no 'code'.")
        _validate_path(str(code), ErrorTarget.CODE)  # the SDK's check before it uploads
        path = Path(str(code)).resolve()
        return path if path.is_dir() else path.parent

    def _new_run(self, job: Any, name: str, code: Path, compute: AmlCompute) -> JobRun:
        root = self._ws.root / "jobs" / name
        command, io_env = _bind_io(job, root)
        shared = {
            **base_env(),
            **self._ws.env,
            **{k: str(v) for k, v in (job.environment_variables or {}).items()},
            **io_env,
            "AZUREML_RUN_ID": name,
        }
        client_id = _cluster_identity_client_id(compute)
        if client_id:
            shared["DEFAULT_IDENTITY_CLIENT_ID"] = client_id
        instances = int(job.resources.instance_count or 1) if job.resources else 1
        port = free_port()
        envs = [
            {**shared, **rank_env(place, job.distribution, port)}
            for place in placements(instances, job.distribution)
        ]
        return JobRun(name, command, code, envs, root / "user_logs")

    # -- read -----------------------------------------------------------------------------

    def _entry(self, name: str) -> tuple[Any, JobRun]:
        with self._lock:
            entry = self._jobs.get(name)
        if entry is None:
            raise ResourceNotFoundError(f"Job {name!r} not found in the emulated workspace")
        return entry

    def get(self, name: str, *, _record: bool = True) -> Job:
        """The job as the service returns it, with its current status."""
        if _record:
            self._ws.record("jobs.get", name)
        rest, run = self._entry(name)
        rest = copy.deepcopy(rest)
        rest.properties.status = run.status
        return Job._from_rest_object(rest)  # noqa: SLF001 - what MLClient.jobs.get returns

    def list(self) -> list[Job]:
        with self._lock:
            names = list(self._jobs)
        return [self.get(n, _record=False) for n in names]

    def run(self, name: str) -> JobRun:
        """The emulation's view of a job: processes, log files, error (for tests)."""
        return self._entry(name)[1]

    def stream(self, name: str) -> None:
        """Print the job's logs as they grow until it ends, then its summary (as the SDK)."""
        self._ws.record("jobs.stream", name)
        _, run = self._entry(name)
        out = sys.stdout
        out.write(f"RunId: {name}\nWeb View: {run.log_dir}\n")
        offsets: dict[Path, int] = {}
        while True:
            ended = run.done.is_set()
            for log in run.log_files:
                if log.exists():
                    with open(log, "rb") as f:
                        f.seek(offsets.get(log, 0))
                        chunk = f.read()
                    offsets[log] = offsets.get(log, 0) + len(chunk)
                    out.write(chunk.decode("utf-8", "replace"))
            if ended:
                break
            out.flush()
            time.sleep(0.2)
        out.write(f"\nExecution Summary\n=================\nRunId: {name}\n\n")
        out.flush()
        if run.status == "Failed":
            # The SDK's ErrorTarget/ErrorCategory are classes of str constants, typed as classes.
            raise JobException(
                message=f"Exception : \n {run.error or 'the job failed; see its logs'} ",
                target=ErrorTarget.JOB,  # type: ignore[arg-type]
                no_personal_data_message="Exception raised on failed job.",
                error_category=ErrorCategory.SYSTEM_ERROR,  # type: ignore[arg-type]
            )

    # -- cancel ---------------------------------------------------------------------------

    def begin_cancel(self, name: str, **kwargs: Any) -> LROPoller[None]:
        """Request cancellation; the poller's ``result()`` returns once the job is Canceled."""
        self._ws.record("jobs.begin_cancel", name)
        _, run = self._entry(name)
        threading.Thread(target=run.cancel, name=f"cancel-{name}", daemon=True).start()
        return LROPoller(None, None, lambda _: None, _UntilEnded(run))

    def close(self) -> None:
        """Cancel every job still running and wait for its processes to be gone."""
        with self._lock:
            runs = [run for _, run in self._jobs.values()]
        for run in runs:
            run.cancel()
        for run in runs:
            run.done.wait()


class _UntilEnded(PollingMethod[None]):
    """The cancel operation's polling: done once the run has ended."""

    def __init__(self, run: JobRun):
        self._run = run

    def initialize(self, client: Any, initial_response: Any, deserialization_callback: Any):
        pass

    def run(self) -> None:
        self._run.done.wait()

    def status(self) -> str:
        return "Succeeded" if self.finished() else "InProgress"

    def finished(self) -> bool:
        return self._run.done.is_set() and self._run.status in TERMINAL

    def resource(self) -> None:
        return None


def _cluster_identity_client_id(compute: AmlCompute) -> str | None:
    """The client id of the cluster's user-assigned identity, which Azure ML exposes to jobs
    as ``DEFAULT_IDENTITY_CLIENT_ID``."""
    identity = getattr(compute, "identity", None)
    for uai in getattr(identity, "user_assigned_identities", None) or []:
        if getattr(uai, "client_id", None):
            return str(uai.client_id)
    return None


def _bind_io(job: Any, root: Path) -> tuple[str, dict[str, str]]:
    """The command with ``${{inputs.x}}``/``${{outputs.y}}`` resolved, and the
    ``AZURE_ML_INPUT_<x>``/``AZURE_ML_OUTPUT_<y>`` variables: local paths for inputs (a job's
    inputs here must be local files or folders, or plain values), a folder under the job's root
    for each output."""
    values: dict[tuple[str, str], str] = {}
    for name, value in (getattr(job, "_job_inputs", None) or {}).items():
        if isinstance(value, Input):
            path = str(value.path or "")
            if "://" in path or path.startswith("azureml:"):
                raise NotImplementedError(
                    f"input {name!r} is {path!r}: the emulation maps local paths only"
                )
            values["inputs", name] = str(Path(path).resolve())
        elif value is not None:
            values["inputs", name] = str(value)
    for name, value in (getattr(job, "_job_outputs", None) or {}).items():
        if isinstance(value, Output) or value is None:
            folder = root / "outputs" / name
            folder.mkdir(parents=True, exist_ok=True)
            values["outputs", name] = str(folder)

    def resolve(m: re.Match) -> str:
        key = (m.group(1), m.group(2))
        if key not in values:
            raise service_error(f"The command refers to {m.group(0)}, which the job lacks.")
        return values[key]

    command = _PLACEHOLDER.sub(resolve, str(job.command))
    env = {
        f"AZURE_ML_{'INPUT' if kind == 'inputs' else 'OUTPUT'}_{name}": value
        for (kind, name), value in values.items()
    }
    return command, env
