"""Audit the pinned requirements for known vulnerabilities (the last step of ``make lint``).

Runs ``pip-audit`` over each pinned file, ``requirements.txt`` (runtime: what the images
install) and ``requirements-dev.txt`` (development and test tools on top of it), with exact
pins, so ``--no-deps --disable-pip``: no resolver, no temporary environment. It asks its
default vulnerability service, merges the reports (a pin found in both files is audited once)
and judges them against the reviewed exceptions in ``.pip-audit-ignore.toml``::

    [[ignore]]
    id = "GHSA-xxxx-xxxx-xxxx"      # the advisory (or any of its aliases, e.g. a CVE or PYSEC id)
    package = "somepackage"
    reason = "why it does not apply here, or why the pin cannot move yet"
    review_by = 2027-06-30          # a TOML date; past it the entry fails until reviewed again

It fails (exit 1) on a vulnerability without an entry, on a malformed or expired entry, on an
entry that no longer matches a reported vulnerability (remove it), and on a dependency the
service could not audit while it audited others. When the service audited nothing at all
(unreachable, or a package index that does not serve its per-release data), the audit could
not run: that is said loudly and exits 0, or 2 with ``MLOPS_AUDIT_STRICT=1`` (set where the
service is known to answer, e.g. the GitHub lint job).

    python scripts/audit_deps.py [--requirements FILE ...] [--ignore-file FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = (ROOT / "requirements.txt", ROOT / "requirements-dev.txt")
FIELDS = ("id", "package", "reason", "review_by")
UNAVAILABLE = 2


@dataclass(frozen=True)
class Ignored:
    """One reviewed exception: an advisory of a package that the audit lets through."""

    id: str
    package: str
    reason: str
    review_by: dt.date


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)  # each fails the audit
    ignored: list[str] = field(default_factory=list)  # reported, let through by an entry
    audited: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def unavailable(self) -> bool:
        """Nothing was audited: the service did not answer for any dependency."""
        return self.audited == 0 and bool(self.skipped)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def load_ignores(path: Path, today: dt.date) -> tuple[list[Ignored], list[str]]:
    """(the entries of ``path``, what is wrong with them). A missing file has no entries."""
    if not path.exists():
        return [], []
    data = tomllib.loads(path.read_text())
    entries, problems = [], []
    for i, raw in enumerate(data.get("ignore", []), start=1):
        where = f"{path.name} entry {i}"
        missing = [f for f in FIELDS if not str(raw.get(f, "")).strip()]
        unknown = sorted(set(raw) - set(FIELDS))
        if missing or unknown:
            problems.append(f"{where}: missing {missing}, unknown {unknown}; needs {FIELDS}")
            continue
        if not isinstance(raw["review_by"], dt.date):
            problems.append(f"{where}: review_by must be a TOML date (2027-06-30, unquoted)")
            continue
        entry = Ignored(raw["id"], _canonical(raw["package"]), raw["reason"], raw["review_by"])
        if entry.review_by < today:
            problems.append(
                f"{where} ({entry.id}, {entry.package}): review_by {entry.review_by} has "
                "passed; review it (upgrade the pin, or renew the date with the reason)"
            )
        entries.append(entry)
    return entries, problems


def judge(report: dict, ignores: list[Ignored]) -> Verdict:
    """The verdict on a ``pip-audit --format json`` report given the reviewed exceptions."""
    v = Verdict()
    used: set[Ignored] = set()
    for dep in report.get("dependencies", []):
        name = _canonical(dep["name"])
        if "skip_reason" in dep:
            v.skipped.append(f"{name}: {dep['skip_reason']}")
            continue
        v.audited += 1
        for vuln in dep.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            entry = next((e for e in ignores if e.package == name and e.id in ids), None)
            label = f"{name} {dep['version']}: {vuln['id']}"
            if entry is not None:
                used.add(entry)
                v.ignored.append(f"{label} (reviewed until {entry.review_by}: {entry.reason})")
                continue
            fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
            v.problems.append(f"{label}, fixed in {fixes}; upgrade the pin or add a reviewed entry")
    if v.audited:
        if v.skipped:
            v.problems += [f"not audited: {s}" for s in v.skipped]
        v.problems += [
            f"stale entry {e.id} ({e.package}): no longer reported; remove it"
            for e in ignores
            if e not in used
        ]
    return v


def run_pip_audit(requirements: Path) -> dict:
    """pip-audit's JSON report over ``requirements`` (exact pins)."""
    cmd = [sys.executable, "-m", "pip_audit", "-r", str(requirements), "--no-deps"]
    cmd += ["--disable-pip", "--progress-spinner", "off", "--format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):  # 1: vulnerabilities found, judged below
        raise RuntimeError(f"pip-audit failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def merge_reports(reports: list[dict]) -> dict:
    """One report from several: each (package, version) once, the first report's entry kept."""
    seen: set[tuple[str, str]] = set()
    deps = []
    for report in reports:
        for dep in report.get("dependencies", []):
            key = (_canonical(dep["name"]), str(dep.get("version", "")))
            if key not in seen:
                seen.add(key)
                deps.append(dep)
    return {"dependencies": deps, "fixes": [f for r in reports for f in r.get("fixes", [])]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--requirements", type=Path, nargs="+", default=list(REQUIREMENTS), help="pinned files"
    )
    p.add_argument("--ignore-file", type=Path, default=ROOT / ".pip-audit-ignore.toml")
    args = p.parse_args(argv)
    ignores, problems = load_ignores(args.ignore_file, dt.date.today())
    v = judge(merge_reports([run_pip_audit(f) for f in args.requirements]), ignores)
    for line in v.ignored:
        print(f"ignored: {line}")
    if v.unavailable and not problems:
        print(
            f"dependency audit NOT RUN: the vulnerability service audited none of the "
            f"{len(v.skipped)} pins (first: {v.skipped[0]})",
            file=sys.stderr,
        )
        return UNAVAILABLE if os.environ.get("MLOPS_AUDIT_STRICT") == "1" else 0
    problems += v.problems
    for line in problems:
        print(f"audit: {line}", file=sys.stderr)
    if not problems:
        print(f"dependency audit: {v.audited} pins, no unreviewed known vulnerability")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
