"""``mlops demo-azure`` end to end: the sales chain on the Azure ML emulation, as a user runs it.

One subprocess (exit status, screen output, nothing left running), a handful of series: it
starts its own Azurite and emulated workspace, trains on 2 emulated instances, promotes,
releases blue/green to the emulated Kubernetes endpoint, scores one request through the
endpoint's front and one batch drop, and prints the table asserted here.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--series", "6", "--periods", "80", "--as-of", "2026-11-17"]
JOB = re.compile(r"^  (train|score)\s+(\S+)\s+Completed on cpu-batch, 2 instances$", re.M)


def _processes_under(folder: Path) -> list[str]:
    """Processes whose working folder or command line is under ``folder`` (Linux /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = str((proc / "cwd").resolve())
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        if cwd.startswith(str(folder)) or str(folder) in cmd:
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


def test_demo_azure_runs_the_chain_on_the_emulation(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "MLOPS_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("MLOPS_PROFILE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "demo-azure", *ARGS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    # Every process it started (jobs, inference servers, Azurite) is gone.
    assert not _processes_under(home), _processes_under(home)
    port = re.search(r"started Azurite \(http://127\.0\.0\.1:(\d+)/", out)
    assert port, out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(port.group(1))), timeout=2).close()
    # What runs before the release is asserted whatever happens after it.
    assert "started Azurite" in out and "landed sales 6 series x 80 weeks" in out, out
    for step in ("curated", "candidate_models", "evaluation", "registered_model_set"):
        assert re.search(rf"^  {step}\s+done ", out, re.M), (step, out, proc.stderr)
    assert re.search(r"^  production_model_set\s+done ", out, re.M), (out, proc.stderr)
    assert re.search(r"^  qa\s+done ", out, re.M), (out, proc.stderr)
    assert proc.returncode == 0, (out, proc.stderr)
    assert len(out.splitlines()) <= 40, out
    assert [m.group(1) for m in JOB.finditer(out)] == ["train", "score"], out
    assert re.search(r"^  batch_predictions\s+done ", out, re.M), out
    assert re.search(
        r"^endpoint\s+mlops-sales-demo on aks-serving: traffic (blue|green) 100%$", out, re.M
    ), out
    assert re.search(
        r"^deployment\s+(blue|green) \(1 instance\), model azureml:sales-models:1-", out, re.M
    ), out
    assert re.search(r"^model set\s+v1 \(prod registry\)", out, re.M), out
    answer = re.search(
        r"^request\s+served by (blue|green): (\S+) \S+ -> ([-\d.e]+), 0 error", out, re.M
    )
    assert answer and float(answer.group(3)) == float(answer.group(3)), out  # a number
    assert out.rstrip().endswith("stopped Azurite, the jobs' processes and the inference servers")
    assert (home / "demo-azure" / "dagster.log").stat().st_size > 0
