"""Run the entry script under Azure ML's own inference server (``azmlinfsrv``) on this machine.

``LocalServer`` starts ``azmlinfsrv`` as a subprocess on 127.0.0.1 and a free port with the
``MLOPS_SERVING_*`` environment of a ``ServingSettings``, waits until ``GET /`` (liveness) and
``GET /score`` (readiness: the model set is loaded) answer, and stops it. Used by ``mlops
serve``, the QA asset, the tests and the benchmark. No Dagster imports.

The server runs gunicorn's sync workers: one connection at a time each. Two of the server's own
settings keep one slow or stalled client from holding the endpoint: ``WORKER_COUNT`` (several
workers, ``default_workers``) and ``WORKER_TIMEOUT`` (gunicorn ``--timeout``: a worker that
spends longer than this on one connection, e.g. on headers that never finish, is killed and
replaced, which closes that connection). A body that stops arriving is answered 408 sooner by
the entry script (``MLOPS_SERVING_READ_TIMEOUT_S``).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from mlops_assets.process_groups import stop_group
from mlops_assets.serving.service import ServingSettings

ENTRY_SCRIPT = Path(__file__).with_name("score.py")
WORKER_TIMEOUT_S = 30  # gunicorn's default; azmlinfsrv's own default is 300


def default_workers() -> int:
    """Several workers (each loads the model set and has its own cache): 2 to 4 by CPUs."""
    return max(2, min(4, os.cpu_count() or 1))


def worker_env(workers: int, worker_timeout_s: int) -> dict[str, str]:
    """The inference server's own worker settings, as the environment it reads them from: the
    same for ``mlops serve`` (``LocalServer``) and the AKS deployment (``deployment_entity``)."""
    return {"WORKER_COUNT": str(workers), "WORKER_TIMEOUT": str(worker_timeout_s)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    def __init__(
        self,
        settings: ServingSettings,
        *,
        port: int | None = None,
        workers: int | None = None,
        worker_timeout_s: int = WORKER_TIMEOUT_S,
        entry_script: str | Path = ENTRY_SCRIPT,
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.port = port or free_port()
        self.workers = workers or default_workers()
        self.worker_timeout_s = worker_timeout_s
        self.entry_script = Path(entry_script)
        self.log_path = Path(log_path) if log_path else None
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _headers(self) -> dict[str, str]:
        keys = self.settings.api_keys
        return {"Authorization": f"Bearer {keys[0]}"} if keys else {}

    def start(self, timeout: float = 60.0) -> LocalServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_SERVING_")}
        env.pop("AZUREML_MODEL_DIR", None)
        env.update(self.settings.to_env())
        if self.settings.model_dir:
            env["AZUREML_MODEL_DIR"] = self.settings.model_dir
        env.update(worker_env(self.workers, self.worker_timeout_s))
        env.update(
            {
                "AZUREML_LOG_LEVEL": env.get("AZUREML_LOG_LEVEL", "WARNING"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        # azmlinfsrv itself, bound to 127.0.0.1 (see launch.py)
        cmd = [
            sys.executable,
            "-m",
            "mlops_assets.serving.launch",
            "--entry_script",
            str(self.entry_script),
            "--port",
            str(self.port),
        ]
        out: IO[bytes] | int
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            out = self._log
        else:
            out = subprocess.DEVNULL
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"azmlinfsrv exited with code {self.proc.returncode} before it was ready"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                status, body = self.request("GET", "/score", timeout=2)
                if status == 200:
                    return json.loads(body)
                last = f"{status} {body[:200]!r}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"azmlinfsrv on {self.url} not ready after {timeout}s: {last}")

    def request(
        self,
        method: str,
        path: str = "/score",
        body: bytes | None = None,
        headers: dict | None = None,
        timeout: float = 30,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            h = {**self._headers(), **(headers or {})}
            if body is not None:
                h.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def score(self, records: list[dict], headers: dict | None = None) -> tuple[int, dict]:
        status, body = self.request(
            "POST", "/score", json.dumps({"data": records}).encode(), headers
        )
        return status, json.loads(body)

    def info(self) -> dict:
        status, body = self.request("GET", "/score")
        if status != 200:
            raise RuntimeError(f"GET /score: {status} {body[:200]!r}")
        return json.loads(body)

    def pids(self) -> list[int]:
        """The server's processes (gunicorn master and workers)."""
        if self.proc is None:
            return []
        out = [self.proc.pid]
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            out += [int(p) for p in kids.split()]
        except OSError:
            pass
        return out

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                total += pages * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                continue
        return total

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
