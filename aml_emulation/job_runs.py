"""One emulated command job while it runs: its processes, logs and status.

A :class:`JobRun` starts one process per instance (times ``process_count_per_instance`` for a
PyTorch or MPI distribution) in the job's code folder, each in a session of its own so a
cancel stops its children too, with the environment Azure ML gives the job's processes
(:func:`instance_env`). Its status moves as the service's does: ``NotStarted`` -> ``Queued`` ->
``Running`` -> ``Finalizing`` -> ``Completed`` when every process exits 0, else ``Failed`` (the
first failure stops the other processes, as a failed node ends a distributed job on Azure);
``begin_cancel`` moves it through ``CancelRequested`` to ``Canceled``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from azure.ai.ml import MpiDistribution, PyTorchDistribution

TERMINAL = frozenset({"Completed", "Failed", "Canceled"})
STOP_GRACE_S = 5.0
# Each process is ``sh -c <command>`` started with SIGTERM and SIGINT at their defaults: an
# ignored signal is inherited through exec (a parent started in the background ignores
# SIGINT, and Dagster maps SIGTERM to SIGINT's disposition while it runs), and a job that
# ignores SIGTERM could only be killed, never stopped as Azure ML stops it.
_LAUNCH = (
    "import os, signal, sys\n"
    "for s in (signal.SIGTERM, signal.SIGINT):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "os.execv('/bin/sh', ['/bin/sh', '-c', sys.argv[1]])"
)
# What a process inherits from this machine, as an image would set it; nothing else of the
# caller's environment leaks into a job.
PASSED_THROUGH = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
# The host's settings of its numeric libraries (``OPENBLAS_CORETYPE=Haswell`` on a machine
# whose own detection would pick other kernels): a job's container on that host runs the same
# kernels as the caller, so the same arithmetic gives the same bits on both sides.
PASSED_THROUGH_PREFIXES = ("OPENBLAS_", "GOTO_", "MKL_", "OMP_")


@dataclass(frozen=True)
class Placement:
    """Where one process of a job sits: its node and its rank among all processes."""

    node: int
    local: int
    per_node: int
    nodes: int

    @property
    def rank(self) -> int:
        return self.node * self.per_node + self.local

    @property
    def world(self) -> int:
        return self.nodes * self.per_node


def placements(instance_count: int, distribution: Any) -> list[Placement]:
    """One placement per process of a job on ``instance_count`` nodes."""
    per_node = 1
    if isinstance(distribution, PyTorchDistribution | MpiDistribution):
        per_node = int(distribution.process_count_per_instance or 1)
    return [
        Placement(node, local, per_node, instance_count)
        for node in range(instance_count)
        for local in range(per_node)
    ]


def rank_env(place: Placement, distribution: Any, master_port: int) -> dict[str, str]:
    """The variables Azure ML sets for a process of a job with this ``distribution``.

    PyTorch: ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` (all processes), ``NODE_RANK``,
    ``RANK`` and ``LOCAL_RANK`` (Azure ML's distributed GPU training guide); MPI: Open MPI's
    ``OMPI_COMM_WORLD_*``. Every node gets ``AZUREML_NODE_COUNT``.
    """
    env = {"AZUREML_NODE_COUNT": str(place.nodes)}
    if isinstance(distribution, PyTorchDistribution):
        env |= {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(place.world),
            "NODE_RANK": str(place.node),
            "RANK": str(place.rank),
            "LOCAL_RANK": str(place.local),
        }
    elif isinstance(distribution, MpiDistribution):
        env |= {
            "OMPI_COMM_WORLD_RANK": str(place.rank),
            "OMPI_COMM_WORLD_SIZE": str(place.world),
            "OMPI_COMM_WORLD_LOCAL_RANK": str(place.local),
            "OMPI_COMM_WORLD_LOCAL_SIZE": str(place.per_node),
        }
    return env


def base_env() -> dict[str, str]:
    """The job image's environment: this interpreter's ``python`` first on ``PATH``."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    passed = {
        k: v
        for k, v in os.environ.items()
        if k in PASSED_THROUGH or k.startswith(PASSED_THROUGH_PREFIXES)
    }
    return {"PATH": path, **passed}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JobRun:
    """The processes of one job and its status (thread-safe).

    Args:
        name: The job's name.
        command: The shell command every process runs (placeholders already resolved).
        cwd: The job's code folder.
        envs: One environment per process, rank order.
        log_dir: Folder for ``std_log.txt`` (one process) or ``std_log_process_<rank>.txt``.
    """

    def __init__(
        self, name: str, command: str, cwd: Path, envs: list[dict[str, str]], log_dir: Path
    ):
        self.name, self.command, self.cwd, self.envs = name, command, cwd, envs
        self.log_dir = log_dir
        self.status = "NotStarted"
        self.error: str | None = None
        self.processes: list[subprocess.Popen] = []
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=f"aml-job-{name}", daemon=True)

    @property
    def log_files(self) -> list[Path]:
        if len(self.envs) == 1:
            return [self.log_dir / "std_log.txt"]
        return [self.log_dir / f"std_log_process_{r}.txt" for r in range(len(self.envs))]

    def start(self) -> None:
        self._thread.start()

    def _set(self, status: str) -> bool:
        """Move to ``status`` unless the job was cancelled or already ended."""
        with self._lock:
            if self._cancelled or self.status in TERMINAL:
                return False
            self.status = status
            return True

    def _run(self) -> None:
        try:
            if self._set("Queued") and self._spawn() and self._set("Running"):
                failed = self._wait()
                if self._set("Finalizing"):
                    self._set("Failed" if failed else "Completed")
        except Exception as e:  # the job fails, as a node that cannot start does on Azure
            self.error = f"{type(e).__name__}: {e}"
            self._set("Failed")
        finally:
            self._stop_all()
            with self._lock:
                if self._cancelled:
                    self.status = "Canceled"
            self.done.set()

    def _spawn(self) -> bool:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for env, log in zip(self.envs, self.log_files, strict=True):
            with self._lock:
                if self._cancelled:
                    return False
                out: BinaryIO = open(log, "ab")  # the child holds its own descriptor
                try:
                    self.processes.append(
                        subprocess.Popen(
                            [sys.executable, "-I", "-S", "-c", _LAUNCH, self.command],
                            cwd=self.cwd,
                            env=env,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                finally:
                    out.close()
        return True

    def _wait(self) -> bool:
        """Wait for every process; on the first failure stop the others. True if one failed."""
        pending = list(self.processes)
        while pending:
            for p in list(pending):
                rc = p.poll()
                if rc is None:
                    continue
                pending.remove(p)
                if rc != 0:
                    self.error = f"process {self.processes.index(p)} exited with {rc}"
                    return True
            time.sleep(0.05)
        return False

    def cancel(self) -> None:
        """Request cancellation: the processes are stopped and the status becomes Canceled."""
        with self._lock:
            if self.status in TERMINAL or self._cancelled:
                return
            self._cancelled = True
            self.status = "CancelRequested"
            started = self._thread.is_alive() or self.done.is_set()
        self._stop_all()
        if not started:  # cancelled before it ran
            with self._lock:
                self.status = "Canceled"
            self.done.set()

    def _stop_all(self) -> None:
        for p in list(self.processes):
            _stop_session(p)


def _stop_session(p: subprocess.Popen) -> None:
    """SIGTERM the process's session, SIGKILL it after a grace period, reap it. A process
    already reaped is left alone: its group id may belong to someone else by now."""
    if p.poll() is not None:
        return
    _signal_group(p.pid, signal.SIGTERM)
    try:
        p.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(p.pid, signal.SIGKILL)
        p.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
