"""One Kubernetes online deployment as a local process: Azure ML's inference server.

``InferenceProcess`` starts ``azmlinfsrv`` (the pinned ``azureml-inference-server-http``) the way
the deployment's container does: working folder and ``AML_APP_ROOT`` = the deployment's code
folder, ``--entry_script`` = its scoring script, its environment variables, and
``AZUREML_MODEL_DIR`` = the model's folder laid out as Azure ML mounts it
(``azureml-models/<name>/<version>/<folder>``). The server binds 127.0.0.1 instead of 0.0.0.0.
It is ready when its readiness route (``GET /``, the route the Kubernetes probes call) answers
200; the server only serves after the entry script's ``init()`` returned, and exits when init
fails, so a failed init shows as an exited process whose log is kept.

One process per deployment: ``instance_count`` pods are emulated by one server (with the
deployment's ``WORKER_COUNT`` workers).
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from mlops_assets.process_groups import stop_group

# azmlinfsrv's own CLI entry point, bound to the loopback (it has no option for the host).
_BOOT = (
    "import sys; from azureml_inference_server_http import amlserver; "
    "amlserver.DEFAULT_HOST = '127.0.0.1'; sys.argv[0] = 'azmlinfsrv'; amlserver.run()"
)
# What the test runner's environment may carry that a deployment's container would not have.
_NOT_INHERITED = ("MLOPS_", "AZUREML_", "AML_", "WORKER_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mount_model(root: Path, name: str, version: str, path: Path) -> Path:
    """The model folder as Azure ML mounts it; returns the ``AZUREML_MODEL_DIR`` to set."""
    model_dir = root / "azureml-models" / name / version
    model_dir.mkdir(parents=True, exist_ok=True)
    link = model_dir / path.name
    if not link.exists():
        link.symlink_to(path.resolve(), target_is_directory=path.is_dir())
    return model_dir


class InferenceProcess:
    """``azmlinfsrv`` serving one deployment on a free 127.0.0.1 port."""

    def __init__(
        self,
        code_dir: Path,
        scoring_script: str,
        env: dict[str, str],
        model_dir: Path | None,
        log_path: Path,
    ):
        self.code_dir, self.scoring_script = code_dir, scoring_script
        self.env, self.model_dir, self.log_path = env, model_dir, log_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> InferenceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
        env.update(self.env)
        env.update({"AML_APP_ROOT": str(self.code_dir), "PYTHONUNBUFFERED": "1"})
        if self.model_dir is not None:
            env["AZUREML_MODEL_DIR"] = str(self.model_dir)
        entry = self.code_dir / self.scoring_script
        cmd = [sys.executable, "-c", _BOOT, "--entry_script", str(entry), "--port", str(self.port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.code_dir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float) -> str | None:
        """None once the readiness route answers 200, else why not (exited, or timed out)."""
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                return f"the inference server exited with code {code} (init failed?)"
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    return None
                last = f"readiness route answered {resp.status}"
            except OSError as exc:
                last = repr(exc)
            finally:
                conn.close()
            time.sleep(0.1)
        return f"not ready after {timeout}s: {last}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
