"""Pipes job modules run in a lean environment: they import no Dagster beyond dagster-pipes."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_MODULES = sorted(
    f"mlops_assets.jobs.{p.stem}"
    for p in (REPO_ROOT / "mlops_assets" / "jobs").glob("*.py")
    if p.stem != "__init__"
)


def test_the_job_modules_are_the_known_ones():
    assert {"mlops_assets.jobs.train", "mlops_assets.jobs.score_drops"} <= set(JOB_MODULES)


@pytest.mark.parametrize("module", JOB_MODULES)
def test_a_job_module_imports_no_dagster(module):
    """Imported in a fresh interpreter: ``dagster`` stays out of ``sys.modules``."""
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} imports Dagster: {done.stdout.strip()}"
