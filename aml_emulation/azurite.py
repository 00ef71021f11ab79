"""Azurite (the Azure Storage emulator): start one in memory on free loopback ports, stop it.

The test suite's ``azurite`` fixture (``tests/fixtures/azurite.py``) and ``make demo-azure``
(``mlops demo-azure``) both start it through :func:`running_azurite`. Azurite is installed by
``make tools`` (npm, into ``.tools/azurite``).

Azurite is started with ``--blobPort 0`` (and the same for queue and table), so the operating
system picks the ports while it binds them: no race with another process for a port we probed.
The ports are read back from Azurite's startup lines. Its process group gets SIGTERM, then
SIGKILL, on :func:`stop_azurite`, at interpreter exit, and (Linux) when its parent dies.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlops_assets.process_groups import stop_group
from mlops_assets.storage import AzureBlobStorage


class AzuriteError(RuntimeError):
    """Azurite did not start or answer."""


class AzuriteNotInstalled(AzuriteError):
    """Azurite (or Node.js, which runs it) is not installed: ``make tools``."""


REPO_ROOT = Path(__file__).resolve().parents[1]
AZURITE_BIN = REPO_ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite"

# The well-known development account that every Azurite instance has. Public, documented
# (https://learn.microsoft.com/azure/storage/common/storage-use-azurite), not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

START_TIMEOUT_S = float(os.environ.get("AZURITE_START_TIMEOUT", "60"))
STOP_TIMEOUT_S = 3.0

_LISTENING = re.compile(
    r"Azurite (Blob|Queue|Table) service is successfully listening at https?://[^\s:]+:(\d+)"
)
_SERVICES = ("Blob", "Queue", "Table")


@dataclass
class Azurite:
    """A running Azurite: endpoints for the ``devstoreaccount1`` account."""

    host: str
    blob_port: int
    queue_port: int
    table_port: int
    process: subprocess.Popen | None = field(default=None, repr=False)
    output: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=200), repr=False
    )

    account_name: str = ACCOUNT_NAME
    account_key: str = field(default=ACCOUNT_KEY, repr=False)
    pumper: threading.Thread | None = field(default=None, repr=False)

    @property
    def blob_url(self) -> str:
        return f"http://{self.host}:{self.blob_port}/{self.account_name}"

    @property
    def queue_url(self) -> str:
        return f"http://{self.host}:{self.queue_port}/{self.account_name}"

    @property
    def table_url(self) -> str:
        return f"http://{self.host}:{self.table_port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_url};QueueEndpoint={self.queue_url};"
            f"TableEndpoint={self.table_url};"
        )

    def storage(
        self, container: str, prefix: str = "", *, create_container: bool = True
    ) -> AzureBlobStorage:
        return azure_blob_storage(self, container, prefix, create_container=create_container)

    def log(self) -> str:
        """Azurite's last lines of output, for failure messages."""
        return "\n".join(self.output)


def azure_blob_storage(
    azurite: Azurite, container: str, prefix: str = "", *, create_container: bool = True
) -> AzureBlobStorage:
    """An ``AzureBlobStorage`` on ``container`` (created on first use by default) and ``prefix``."""
    return AzureBlobStorage(
        account_url=azurite.blob_url,
        container=container,
        prefix=prefix,
        connection_string=azurite.connection_string,
        create_container=create_container,
    )


def unique_container_name(hint: str = "t") -> str:
    """A valid container name (3-63 of ``[a-z0-9-]``, no ``--``), unique per call."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-") or "t"
    return f"{slug}-{uuid.uuid4().hex[:12]}"


# --- starting and stopping ---------------------------------------------------------------


def _set_parent_death_signal() -> None:
    """In the child before exec (Linux): get SIGTERM if its parent dies without stopping it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:
        pass


_live: set[subprocess.Popen] = set()  # started and not yet stopped; atexit stops them


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to Azurite's process group, then SIGKILL after a short grace period."""
    if proc not in _live:  # already stopped: its pid may belong to someone else by now
        return
    _live.discard(proc)
    stop_group(proc, STOP_TIMEOUT_S)


@atexit.register
def _stop_all() -> None:
    for proc in list(_live):
        _stop(proc)


def _answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True once the port speaks HTTP (any status; no proxy is consulted)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", f"/{ACCOUNT_NAME}?comp=properties&restype=service")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def start_azurite(workdir: Path, host: str = "127.0.0.1") -> Azurite:
    """Start Azurite (blob, queue, table) in memory on OS-chosen ports and wait until it answers.

    The caller must call :func:`stop_azurite` (or use :func:`running_azurite`).

    Raises:
        AzuriteNotInstalled: Azurite or Node.js is missing.
        AzuriteError: it did not start or answer within ``AZURITE_START_TIMEOUT`` seconds.
    """
    if not AZURITE_BIN.exists():
        raise AzuriteNotInstalled(
            f"Azurite is not installed ({AZURITE_BIN} is missing). Run `make tools` in "
            f"{REPO_ROOT} to install it (npm azurite into .tools/azurite)."
        )
    node = shutil.which("node")
    if node is None:
        raise AzuriteNotInstalled(
            "Azurite needs Node.js, but `node` is not on PATH. Install Node.js (>= 18), then "
            "run `make tools`."
        )
    cmd = [
        node,
        str(AZURITE_BIN.resolve()),
        *("--blobHost", host, "--blobPort", "0"),
        *("--queueHost", host, "--queuePort", "0"),
        *("--tableHost", host, "--tablePort", "0"),
        "--inMemoryPersistence",  # nothing on disk; everything goes when the process does
        "--skipApiVersionCheck",  # the Python SDK may be newer than this Azurite
        "--loose",  # ignore headers Azurite does not know instead of failing the request
        "--silent",  # no access log
        "--disableTelemetry",
    ]
    env = dict(os.environ)
    env.pop("AZURITE_ACCOUNTS", None)  # only the default devstoreaccount1
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,  # Azurite's default workspace: keep anything it writes out of the repo
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        start_new_session=True,  # its own process group, so that _stop reaches all of it
        preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux") else None,
    )
    _live.add(proc)

    output: collections.deque[str] = collections.deque(maxlen=200)
    ports: dict[str, int] = {}
    all_listening = threading.Event()

    def pump() -> None:
        # Read until EOF, so that Azurite never blocks on a full pipe.
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line.rstrip())
            m = _LISTENING.search(line)
            if m:
                ports[m.group(1)] = int(m.group(2))
                if all(s in ports for s in _SERVICES):
                    all_listening.set()
        all_listening.set()  # EOF: it exited; wake the waiter

    pumper = threading.Thread(target=pump, name="azurite-output", daemon=True)
    pumper.start()

    def fail(why: str) -> None:
        _stop(proc)
        log = "\n".join(output) or "(no output)"
        raise AzuriteError(f"Azurite did not start: {why}.\nCommand: {' '.join(cmd)}\n{log}")

    if not all_listening.wait(START_TIMEOUT_S):
        fail(f"no 'successfully listening' lines within {START_TIMEOUT_S:.0f} s")
    if not all(s in ports for s in _SERVICES):
        fail(f"it exited with status {proc.wait(STOP_TIMEOUT_S)}")

    instance = Azurite(
        host=host,
        blob_port=ports["Blob"],
        queue_port=ports["Queue"],
        table_port=ports["Table"],
        process=proc,
        output=output,
        pumper=pumper,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    for port in (instance.blob_port, instance.queue_port):
        while not _answers(host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                fail(f"port {port} does not answer HTTP")
            time.sleep(0.05)
    return instance


def stop_azurite(instance: Azurite) -> None:
    proc, pumper = instance.process, instance.pumper
    if proc is None:
        return
    _stop(proc)
    if pumper is not None:
        pumper.join(STOP_TIMEOUT_S)  # it reads to EOF now that Azurite is gone
    if proc.stdout is not None and (pumper is None or not pumper.is_alive()):
        proc.stdout.close()


@contextlib.contextmanager
def no_proxy_for(host: str) -> Iterator[None]:
    """A CI's HTTP(S)_PROXY must not capture requests to the local emulator."""
    names = ("NO_PROXY", "no_proxy")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        current = [h for h in (saved[n] or "").split(",") if h]
        os.environ[n] = ",".join(dict.fromkeys([*current, host, "localhost"]))
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


@contextlib.contextmanager
def running_azurite(host: str = "127.0.0.1") -> Iterator[Azurite]:
    """An in-memory Azurite on ``host`` for the ``with`` block (requests to ``host`` bypass any
    HTTP proxy meanwhile); stopped at its end, also on an exception or Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="azurite-") as workdir, no_proxy_for(host):
        instance = start_azurite(Path(workdir), host)
        try:
            yield instance
        finally:
            stop_azurite(instance)
