"""The sample notebooks run top to bottom on the local default profile (small data)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """One project home for all three (the later ones reuse the landed data); the kernel
    inherits it."""
    home = tmp_path_factory.mktemp("mlops_home")
    saved = dict(os.environ)
    os.environ.update(
        MLOPS_HOME=str(home),
        MLOPS_PROFILE="local",
        DAGSTER_HOME=str(home / "dagster"),
        MPLBACKEND="Agg",
    )
    os.environ.pop("MLOPS_TRAINING_ENGINE", None)
    (home / "dagster").mkdir()
    try:
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_there_are_three_notebooks():
    assert len(NOTEBOOKS) == 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel_env):
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # The kernel is this interpreter (the venv), whatever kernels Jupyter knows of: a kernel
    # spec of our own, in a folder only this manager searches.
    spec_dir = kernel_env / "kernels" / "mlops-venv"
    spec_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "mlops venv", "language": "python"})
    )
    km = KernelManager(
        kernel_name="mlops-venv",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]),
    )
    client = NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(ROOT)}}
    )
    try:
        client.execute()
    finally:
        # nbclient leaves a kernel it was handed running (it only stops kernels it made).
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
