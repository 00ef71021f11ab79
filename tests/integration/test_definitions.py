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
        # Only the as-of dates that were launched (the daily sensor, demo, backfill add them).
        assert isinstance(job.partitions_def, dg.DynamicPartitionsDefinition)
        assert job.partitions_def.name == f"{spec.name}_as_of"
        assert {n.name for n in job.graph.node_defs} >= {
            f"{spec.name}__curated",
            f"{spec.name}__candidate_models",
        }


def test_the_path_to_production_is_lineage(defs):
    """registered set -> production set -> QA, deployment and batch predictions."""
    graph = defs.resolve_asset_graph()
    for spec in bundled_specs():

        def key(name: str, ds: str = spec.name) -> dg.AssetKey:
            return dg.AssetKey([ds, name])

        production = graph.get(key("production_model_set"))
        assert production.parent_keys == {key("registered_model_set")}
        assert production.partitions_def is None
        for down in ("qa", "deployment", "batch_predictions"):
            assert key("production_model_set") in graph.get(key(down)).parent_keys, down
        promote = defs.resolve_job_def(f"{spec.name}_promote_to_prod")
        assert [n.name for n in promote.graph.node_defs] == [f"{spec.name}__production_model_set"]


def test_assets_are_described_grouped_and_owned(defs):
    for spec in defs.resolve_all_asset_specs():
        assert spec.description, f"{spec.key} has no description"
        assert spec.group_name and spec.group_name != "default", spec.key
        assert spec.owners, spec.key
        assert spec.kinds, spec.key


def test_profiles_pick_implementations_without_touching_the_network(tmp_path):
    local = resources_for("local", tmp_path)
    assert type(local["storage"]).__name__ == "LocalStorageResource"
    azure = resources_for("prod", tmp_path)
    assert type(azure["storage"]).__name__ == "AzureBlobStorageResource"


def _venv_command(home: Path, command: str, *args: str) -> str:
    """Run one of the venv's commands from the repository root; its output, after exit 0."""
    bin_dir = Path(sys.executable).parent
    out = subprocess.run(
        [str(bin_dir / command), *args],
        cwd=ROOT,
        env={"MLOPS_HOME": str(home), "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_dg_check_defs_passes_from_the_repo_root(tmp_path):
    """`dg check defs` finds the project through pyproject's [tool.dg] and loads it."""
    output = _venv_command(tmp_path, "dg", "check", "defs")
    assert "All definitions loaded successfully" in output


def test_workspace_yaml_still_loads_the_code_location(tmp_path):
    """workspace.yaml (dagster dev -w, dagster-webserver) names the same code location."""
    output = _venv_command(tmp_path, "dagster", "definitions", "validate", "-w", "workspace.yaml")
    assert "All code locations passed validation" in output


def _user_jobs(defs):
    return [j for j in defs.resolve_all_job_defs() if not j.name.startswith("__")]


def test_jobs_are_described_and_tagged_with_their_dataset(defs):
    datasets = {s.name for s in bundled_specs()}
    for job in _user_jobs(defs):
        assert job.description, f"job {job.name} has no description"
        assert job.tags.get("dataset") in datasets, f"job {job.name} has no dataset tag"


def test_schedules_and_sensors_are_described_and_target_real_jobs(defs):
    jobs = {j.name for j in _user_jobs(defs)}
    # A schedule of an asset job resolves with the Definitions (its partitions come from the assets).
    schedules = [defs.resolve_schedule_def(s.name) for s in defs.schedules or []]
    automations = [*schedules, *(defs.sensors or [])]
    assert automations
    for auto in automations:
        assert auto.description, f"{auto.name} has no description"
        targets = auto.targets if isinstance(auto, dg.SensorDefinition) else [auto.target]
        for target in targets:
            assert target.job_name in jobs, f"{auto.name} targets unknown job {target.job_name}"
    for spec in bundled_specs():
        daily = defs.resolve_sensor_def(f"{daily_job_name(spec)}_sensor")
        assert daily.job_name == daily_job_name(spec)


# Checks that only warn by design (missing periods are filled by the spec's rules, not errors).
WARN_ONLY_CHECKS = {"calendar_gaps"}


def test_asset_checks_are_described_and_block(defs):
    graph = defs.resolve_asset_graph()
    assert graph.asset_check_keys
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        assert spec.description, f"check {key} has no description"
        if key.name in WARN_ONLY_CHECKS:
            assert not spec.blocking, f"check {key} only warns: it must not block"
        else:
            assert spec.blocking, f"check {key} does not block its downstream assets"


def test_assets_carry_stage_and_dataset_tags(defs):
    datasets = {s.name for s in bundled_specs()}
    for spec in defs.resolve_all_asset_specs():
        assert spec.tags.get("stage"), spec.key
        assert spec.tags.get("dataset") in datasets, spec.key
        assert spec.tags["dataset"] in spec.group_name, (spec.key, spec.group_name)


def test_the_architecture_page_names_every_sales_definition(defs):
    """docs/architecture.md draws the sales graph: it must not fall behind the Definitions."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    names = [s.key.to_user_string() for s in defs.resolve_all_asset_specs()]
    names += [k.name for k in defs.resolve_asset_graph().asset_check_keys]
    names += [j.name for j in _user_jobs(defs)]
    names += [a.name for a in [*(defs.schedules or []), *(defs.sensors or [])]]
    others = [s.name for s in bundled_specs() if s.name != "sales"]  # diabetes, beer
    missing = sorted({n for n in names if not any(o in n for o in others) and n not in page})
    assert not missing, f"docs/architecture.md does not show: {missing}"
