"""checkov's static analysis of infra/*.bicep: no failed check, no file it could not parse.

checkov lives in its own environment (.tools/checkov, from requirements-tools/checkov.txt,
installed by `make tools`): its pins conflict with requirements.txt. A check that does not
apply is suppressed inline with its reason (`#checkov:skip=CKV_...: why`), and
tests/unit/test_infra_bicep.py requires the reason.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"

pytestmark = pytest.mark.integration


def test_bicep_templates_pass_checkov():
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV.relative_to(ROOT)} is missing: run `make tools`")
    # --skip-download: no call to the vendor's platform (offline-safe, and nothing leaves).
    cmd = [str(CHECKOV), "-d", "infra", "--framework", "bicep", "--skip-download"]
    cmd += ["--output", "json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.stdout.strip(), f"checkov printed nothing (rc {proc.returncode}):\n{proc.stderr}"
    report = json.loads(proc.stdout)
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
        for c in report["results"]["failed_checks"]
    ]
    assert summary["parsing_errors"] == 0, "checkov could not parse a template (LOG_LEVEL=DEBUG)"
    assert not failed, "failed checks (fix, or skip inline with a reason):\n" + "\n".join(failed)
    assert summary["resource_count"] >= 30 and summary["passed"] > 0, summary
    assert proc.returncode == 0, proc.stderr
    results = report["results"]
    for skipped in results["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert reason.strip(), f"{skipped['check_id']} skipped without a reason"
    scanned = {
        Path(c["file_path"]).name
        for kind in ("passed_checks", "failed_checks", "skipped_checks")
        for c in results[kind]
    }
    for module in ("storage.bicep", "keyvault.bicep", "aks.bicep", "workspace.bicep"):
        assert module in scanned, f"checkov checked nothing in {module}"
