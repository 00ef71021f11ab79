"""The code location loads, validates, and wires what the README promises."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.definitions import build_definitions, daily_job_name
from mlops_assets.ml.spec import bundled_specs
from mlops_assets.profiles import resources_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return build_definitions(bundled_specs(), resources_for("local", home))


def test_every_dataset_has_its_daily_chain(defs):
    keys = {a.key for a in defs.resolve_all_asset_specs()}
    for spec in bundled_specs():
        assert dg.AssetKey([spec.name, "curated"]) in keys
        assert dg.AssetKey([spec.name, "candidate_models"]) in keys
        job = defs.resolve_job_def(daily_job_name(spec))
        assert job.partitions_def is not None
        assert {n.name for n in job.graph.node_defs} >= {
            f"{spec.name}__curated",
            f"{spec.name}__candidate_models",
        }


def test_assets_are_described_grouped_and_owned(defs):
    for spec in defs.resolve_all_asset_specs():
        assert spec.description, f"{spec.key} has no description"
        assert spec.group_name and spec.group_name != "default", spec.key
        assert spec.owners, spec.key
        assert spec.kinds, spec.key


def test_profiles_pick_implementations_without_touching_the_network(tmp_path):
    local = resources_for("local", tmp_path)
    assert type(local["storage"]).__name__ == "LocalStorage"
    azure = resources_for("prod", tmp_path)
    assert type(azure["storage"]).__name__ == "AzureBlobStorage"


def test_dagster_definitions_validate_passes_from_the_repo_root(tmp_path):
    env = {"MLOPS_HOME": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "All code locations passed validation" in out.stdout + out.stderr
