"""The code location image's code server listens where its environment says (issue 19, item 9).

No Docker here: the Dockerfile's CMD is run as it is, with the image's environment and an
override of ``DAGSTER_CODE_SERVER_HOST``, and the listening socket is read from /proc.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "dagster" / "Dockerfile"


def image_env() -> dict[str, str]:
    """The ``ENV`` lines of the Dockerfile (``KEY=value`` pairs, continued lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                out[key] = value
    return out


def image_cmd() -> list[str]:
    line = next(ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD "))
    return json.loads(line[4:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _address(hex_addr: str) -> str:
    """A /proc/net/tcp{,6} address as text; IPv4-mapped and unspecified IPv6 as IPv4."""
    raw = bytes.fromhex(hex_addr)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
    if len(raw) == 4:
        return socket.inet_ntoa(raw)
    if raw == bytes(16):
        return "0.0.0.0"
    if raw[:12] == bytes(10) + b"\xff\xff":
        return socket.inet_ntoa(raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def listening_hosts(port: int) -> set[str]:
    """Addresses with a socket listening on ``port`` (state 0A in /proc/net/tcp and tcp6)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, p = fields[1].split(":")
            if fields[3] == "0A" and int(p, 16) == port:
                hosts.add(_address(addr))
    return hosts


def test_the_image_takes_the_code_server_address_from_its_environment():
    cmd = image_cmd()
    assert not {"-h", "--host", "-p", "--port"} & set(cmd), cmd
    env = image_env()
    assert env["DAGSTER_CODE_SERVER_HOST"] == "0.0.0.0"  # reached from the webserver's app
    assert env["DAGSTER_CODE_SERVER_PORT"] == "4000"


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_the_image_command_binds_loopback_when_told(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        **image_env(),
        "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
        "DAGSTER_CODE_SERVER_PORT": str(port),
        "DAGSTER_HOME": str(tmp_path),
        "MLOPS_HOME": str(tmp_path),
        "MLOPS_PROFILE": "local",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.Popen(
        image_cmd(),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not listening_hosts(port) and time.monotonic() < deadline:
            assert proc.poll() is None, "the code server exited"
            time.sleep(0.2)
        assert listening_hosts(port) == {"127.0.0.1"}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
