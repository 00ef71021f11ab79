"""infra/: the Bicep templates' outputs, parameters files and checkov suppressions, read as text.

No Bicep compiler is installable here (it is a .NET binary, on neither PyPI nor npm), so the
templates are parsed by checkov (tests/integration/test_infra_checkov.py) and read here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
PARAM_FILES = sorted(INFRA.glob("*.bicepparam"))
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))


def outputs(text: str) -> list[str]:
    return re.findall(r"^output\s+(\w+)\s", text, re.M)


def declared_params(text: str) -> dict[str, dict]:
    """``name -> {"default": bool, "secure": bool}`` of a template's ``param`` lines."""
    out = {}
    decorators: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("@"):
            decorators.append(stripped)
            continue
        m = re.match(r"param\s+(\w+)\s+\w+(\s*=)?", stripped)
        if m:
            secure = any(d.startswith("@secure") for d in decorators)
            out[m.group(1)] = {"default": bool(m.group(2)), "secure": secure}
        if stripped and not stripped.startswith("//"):
            decorators = []
    return out


def assigned_params(text: str) -> dict[str, str]:
    """``name -> the expression's first line`` of a ``.bicepparam`` file."""
    return dict(re.findall(r"^param\s+(\w+)\s*=\s*(.+)$", text, re.M))


def deployment_settings() -> set[str]:
    """The MLOPS_* settings a deployment sets: those the production instance passes to every
    run (deploy/dagster/dagster.yaml) and those its workspace file reads."""
    instance = yaml.safe_load((ROOT / "deploy" / "dagster" / "dagster.yaml").read_text())
    passed = {v for v in instance["run_launcher"]["config"]["env_vars"] if v.startswith("MLOPS_")}
    read = set()
    for f in (ROOT / "deploy" / "dagster").glob("*.yaml"):
        read |= set(re.findall(r"\{env:\s*(MLOPS_\w+)\}", f.read_text()))
    return passed | read


# Outputs that are not in `settings`: the webserver's address, known once the Dagster module's
# environment exists; the module sets it on the apps (alert links), CD reads it (`mlops launch`).
APP_OUTPUTS = {"MLOPS_DAGSTER_UI_URL"}


def test_outputs_are_exactly_the_settings_the_code_reads():
    names = outputs(MAIN.read_text())
    assert len(names) == len(set(names)), names
    assert set(names) == deployment_settings() | APP_OUTPUTS
    dagster = (INFRA / "modules" / "dagster.bicep").read_text()
    for name in APP_OUTPUTS:
        assert f"name: '{name}'" in dagster, f"{name} is not set on the Dagster apps"
    cd = (ROOT / ".github" / "workflows" / "cd.yml").read_text()
    assert "vars.MLOPS_DAGSTER_UI_URL" in cd
    profiles = (ROOT / "mlops_assets" / "profiles.py").read_text()
    env_vars = set(re.findall(r"EnvVar\(\"(MLOPS_\w+)\"\)", profiles))
    assert env_vars, "profiles.py reads no MLOPS_* EnvVar: the pattern is stale"
    assert env_vars <= set(names), sorted(env_vars - set(names))


def test_outputs_and_container_settings_are_the_same_object():
    text = MAIN.read_text()
    body = re.search(r"^var settings = \{\n(.*?)^\}", text, re.M | re.S)
    assert body, "main.bicep has no `var settings = {...}`"
    keys = re.findall(r"^\s+(MLOPS_\w+):", body.group(1), re.M)
    assert sorted(keys) == sorted(set(outputs(text)) - APP_OUTPUTS)
    for name in set(outputs(text)) - APP_OUTPUTS:
        assert re.search(rf"^output {name} string = settings\.{name}$", text, re.M), name


def test_modules_exist():
    for path in BICEP_FILES:
        for module in re.findall(r"^module\s+\w+\s+'([^']+)'", path.read_text(), re.M):
            assert (path.parent / module).is_file(), f"{path.name}: no {module}"


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_parameters_files_cover_the_template_and_hold_no_secret(path):
    text = path.read_text()
    assert re.search(r"^using 'main\.bicep'$", text, re.M), path.name
    declared = declared_params(MAIN.read_text())
    assigned = assigned_params(text)
    assert set(assigned) <= set(declared), sorted(set(assigned) - set(declared))
    required = {n for n, p in declared.items() if not p["default"]}
    assert required <= set(assigned), (
        f"{path.name} leaves unset: {sorted(required - set(assigned))}"
    )
    for name, p in declared.items():
        if p["secure"] and name in assigned:
            expr = assigned[name]
            assert expr.startswith(("readEnvironmentVariable(", "az.getSecret(")), (name, expr)


def test_both_environments_have_parameters():
    envs = {assigned_params(p.read_text())["environmentName"].strip("'") for p in PARAM_FILES}
    assert envs == {"dev", "prod"}


def test_every_checkov_suppression_says_why():
    skips = [
        (p.name, m)
        for p in BICEP_FILES
        for m in re.findall(r"#checkov:skip=(.*)$", p.read_text(), re.M)
    ]
    assert skips, "no suppressions found: the pattern is stale"
    for name, skip in skips:
        check, _, reason = skip.partition(":")
        assert re.fullmatch(r"CKV2?_AZURE_\d+", check), (name, skip)
        assert len(reason.split()) >= 5, f"{name}: {check} is skipped without a reason"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.name)
def test_secure_parameters_have_no_default(path):
    for name, p in declared_params(path.read_text()).items():
        assert not (p["secure"] and p["default"]), f"{path.name}: @secure() {name} has a default"
