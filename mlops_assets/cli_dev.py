"""``mlops dev``: the Dagster UI (webserver + daemon) and the reports it links to, locally.

The per-series explorer is an HTML page under the storage's ``reports/`` folder. A browser does
not follow a ``file://`` link from the UI's ``http://`` page, so ``mlops dev`` serves that folder
read-only over HTTP beside ``dg dev`` and sets ``MLOPS_REPORTS_URL``: every run it launches links
its reports there (``mlops_assets.reporting.links``). On Azure the page is a Blob with its own
URL and nothing is served.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from mlops_assets.profiles import current_profile, ensure_dagster_home, project_home, storage_for
from mlops_assets.reporting.links import REPORTS_PREFIX, REPORTS_URL_ENV


class _ReportsHandler(http.server.SimpleHTTPRequestHandler):
    """Read-only files under one folder; no directory listings, logs to nothing."""

    def list_directory(self, path):
        self.send_error(404, "no listing")
        return None

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_reports(root: Path, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """A started read-only HTTP server over ``root`` (in a daemon thread); ``.shutdown()``."""
    root.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_ReportsHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="mlops-reports", daemon=True).start()
    return server


def _project_root() -> Path:
    """The checkout ``dg dev`` loads the code location from (its ``pyproject.toml``)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() else Path.cwd()


def cmd_dev(args: argparse.Namespace) -> int:
    home = project_home()
    ensure_dagster_home(home)
    env = dict(os.environ)
    env.setdefault("VIRTUAL_ENV", sys.prefix)  # dg checks it against the project's venv
    server = None
    if current_profile() == "local" and not args.no_reports:
        storage = storage_for("local", home).process_config_and_initialize()
        root = storage.local_path(REPORTS_PREFIX)
        server = serve_reports(root, args.host, args.reports_port)
        env[REPORTS_URL_ENV] = f"http://{args.host}:{server.server_port}/"
        print(f"reports (the per-series explorer) on {env[REPORTS_URL_ENV]}", flush=True)
    cmd = [str(Path(sys.executable).parent / "dg"), "dev", "-h", args.host, "-p", str(args.port)]
    print(f"Dagster UI on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(cmd, env=env, cwd=_project_root())
    forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        return proc.wait()
    finally:
        if server is not None:
            server.shutdown()


def add_parser(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("dev", help="the Dagster UI (webserver + daemon) and its reports")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000, help="the Dagster UI's port")
    dev.add_argument(
        "--reports-port",
        type=int,
        default=3001,
        help="port serving the reports folder (local profile); 0 picks a free one",
    )
    dev.add_argument("--no-reports", action="store_true", help="serve no reports folder")
    dev.set_defaults(func=cmd_dev)
