"""``mlops demo`` as a new user runs it: a fresh project home, then the same home again.

The command runs as a subprocess, so what the user would see on the terminal is what is
counted: every warning, progress bar and log line a library prints lands in its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.domain.demo_result import ROWS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIES = 10
ARGS = ["--series", str(SERIES), "--periods", "104", "--as-of", "2026-11-30"]
MAX_LINES = 40  # one screen (issue 16)


def demo(home: Path, args: list[str] = ARGS) -> tuple[int, list[str], str]:
    env = {**os.environ, "MLOPS_HOME": str(home), "MLOPS_PROFILE": "local"}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines(), proc.stderr


def table(lines: list[str]) -> dict[str, list[str]]:
    """The result table's rows by label: the values of the sales and diabetes columns."""
    start = next(i for i, line in enumerate(lines) if line.startswith("result "))
    header = lines[start]
    cols = [header.index("sales"), header.index("diabetes")]
    rows = {}
    for line in lines[start + 1 : start + 1 + len(ROWS)]:
        label = line[: cols[0]].strip()
        rows[label] = [line[cols[0] : cols[1]].strip(), line[cols[1] :].strip()]
    return rows


def test_demo_fits_one_screen_and_ends_with_the_result(tmp_path):
    home = tmp_path / "home"
    rc, lines, stderr = demo(home)
    assert rc == 0, "\n".join(lines)
    assert stderr == "", stderr  # no warning, progress bar or library log line
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    steps = [line.split()[0] for line in lines if line.strip().endswith("s") and " done " in line]
    assert steps.count("curated") == 2 and steps.count("candidate_models") == 2
    rows = table(lines)
    assert rows["series forecast"] == [f"{SERIES} of {SERIES}", "1 of 1"]
    assert all("%" in v for v in rows["by family (share)"])
    assert rows["champions"] == [
        f"0 replaced, 0 kept, {SERIES} first",
        "0 replaced, 0 kept, 1 first",
    ]
    assert rows["registry dev (champion)"] == ["v1 (1 version)"] * 2
    assert rows["registry prod (production)"] == ["v1 (1 version)"] * 2
    ratio = float(rows["pooled MAE / best baseline"][0].split()[0])
    assert 0 < ratio < 1.5
    assert lines[-4] == "next:" and "serve --dataset sales" in lines[-2]
    log = home / "demo" / "dagster.log"
    assert "RUN_SUCCESS" in log.read_text()  # Dagster's events went to its log
    saved = json.loads((home / "demo" / "result.json").read_text())
    assert [r["dataset"] for r in saved] == ["sales", "diabetes"]
    # The UI's as-of axis holds the date the demo ran, and nothing else.
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for ds in ("sales", "diabetes"):
            assert instance.get_dynamic_partitions(f"{ds}_as_of") == ["2026-11-30"]

    # Again on the same home: the evaluation compares against the first run's champions.
    rc, lines, stderr = demo(home)
    assert rc == 0 and stderr == "", "\n".join(lines)
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    rows = table(lines)
    assert rows["champions"] == [f"0 replaced, {SERIES} kept", "0 replaced, 1 kept"]
    assert rows["registry dev (champion)"] == ["v2 (2 versions)"] * 2
    assert rows["registry prod (production)"] == ["v2 (2 versions)"] * 2
    since = lines.index("since the last demo:")
    assert lines[since + 1].startswith("  sales: dev v1 -> v2, prod v1 -> v2")
    assert lines[since + 2].startswith("  diabetes: dev v1 -> v2, prod v1 -> v2")


def test_a_second_demo_on_series_too_short_for_ridge_compares_the_fallback_champions(tmp_path):
    """80 weeks: ridge (lag 52) cannot serve, every series falls back to seasonal naive. The
    second day's fallback challengers are compared with the first day's fallback champions
    (they used not to be re-scored, and the gate failed: "none was compared")."""
    home = tmp_path / "home"
    short = ["--series", "4", "--periods", "80", "--as-of", "2026-11-30"]
    for _ in range(2):
        rc, lines, _ = demo(home, short)
        assert rc == 0, "\n".join(lines)
    rows = table(lines)
    assert rows["champions"][0] == "0 replaced, 4 kept"
