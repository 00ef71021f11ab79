"""``MLOPS_FAULT``: a crash point ends the process at its n-th reach, and only there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_assets import faults

REPO = Path(__file__).resolve().parents[2]
REACH_THREE_TIMES = """
import sys
from mlops_assets.faults import fault_point
for i in range(3):
    fault_point("pointer")
    fault_point("ledger")
    print(i, flush=True)
"""


def reach(value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != faults.FAULT_ENV}
    if value is not None:
        env[faults.FAULT_ENV] = value
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", REACH_THREE_TIMES],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_process_ends_at_the_nth_reach_of_its_point():
    done = reach("pointer:2")
    assert done.returncode == faults.EXIT_CODE
    assert done.stdout.split() == ["0"]  # the second reach of "pointer" is before "1"
    assert "ending the process at pointer (reach 2)" in done.stderr


def test_unset_or_another_count_runs_through():
    assert reach(None).stdout.split() == ["0", "1", "2"]
    assert reach("pointer:4").stdout.split() == ["0", "1", "2"]


def test_a_bad_value_fails_the_import():
    done = reach("pointers:1")
    assert done.returncode == 1 and "MLOPS_FAULT='pointers:1'" in done.stderr


def test_a_fault_value_names_a_known_point_and_a_count():
    assert faults.parse(None) is None and faults.parse("") is None
    assert faults.parse("curated.shard:2") == ("curated.shard", 2)
    for bad in ("curated.shard", "curated.shard:0", "nowhere:1", "pointer:x"):
        with pytest.raises(ValueError, match="MLOPS_FAULT"):
            faults.parse(bad)
