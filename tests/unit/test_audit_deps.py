"""The dependency audit's judgement (scripts/audit_deps.py) on pip-audit reports."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from scripts.audit_deps import REQUIREMENTS, Ignored, judge, load_ignores, merge_reports

TODAY = dt.date(2026, 12, 1)
ENTRY = Ignored("GHSA-aaaa", "some-pkg", "only reachable through X, which we never call", TODAY)


def report(*deps: dict) -> dict:
    return {"dependencies": list(deps), "fixes": []}


def vulnerable(name="Some_Pkg", vid="PYSEC-1", aliases=("GHSA-aaaa",)) -> dict:
    vuln = {"id": vid, "fix_versions": ["2.0"], "aliases": list(aliases), "description": ""}
    return {"name": name, "version": "1.0", "vulns": [vuln]}


CLEAN = {"name": "clean", "version": "1.0", "vulns": []}


def test_an_unreviewed_vulnerability_fails_and_names_its_fix():
    v = judge(report(CLEAN, vulnerable()), [])
    assert len(v.problems) == 1
    assert "some-pkg 1.0: PYSEC-1" in v.problems[0] and "2.0" in v.problems[0]


def test_a_reviewed_entry_matches_by_alias_and_canonical_name():
    v = judge(report(CLEAN, vulnerable()), [ENTRY])
    assert v.problems == [] and len(v.ignored) == 1
    assert "only reachable" in v.ignored[0]


def test_an_entry_for_another_package_does_not_apply():
    other = Ignored("GHSA-aaaa", "other", "r", TODAY)
    assert judge(report(vulnerable()), [other]).problems[0].startswith("some-pkg")


def test_a_stale_entry_and_a_dependency_not_audited_fail():
    skipped = {"name": "gone", "skip_reason": "Dependency not found"}
    v = judge(report(CLEAN, skipped), [ENTRY])
    assert any("stale entry GHSA-aaaa" in p for p in v.problems)
    assert any(p.startswith("not audited: gone") for p in v.problems)
    assert not v.unavailable


def test_a_service_that_audited_nothing_is_unavailable_not_clean():
    skipped = [{"name": n, "skip_reason": "Dependency not found"} for n in ("a", "b")]
    v = judge(report(*skipped), [ENTRY])
    assert v.unavailable and v.audited == 0
    assert v.problems == []  # nothing to judge; the caller says the audit did not run


def test_ignore_entries_need_every_field_a_date_and_an_unexpired_review(tmp_path: Path):
    f = tmp_path / "ignore.toml"
    f.write_text(
        '[[ignore]]\nid = "A"\npackage = "Pkg_X"\nreason = "r"\nreview_by = 2026-12-01\n'
        '[[ignore]]\nid = "B"\npackage = "y"\nreason = "r"\nreview_by = 2026-11-30\n'
        '[[ignore]]\nid = "C"\npackage = "z"\nreview_by = 2027-01-01\n'
        '[[ignore]]\nid = "D"\npackage = "w"\nreason = "r"\nreview_by = "2027-01-01"\n'
    )
    entries, problems = load_ignores(f, TODAY)
    assert [e.id for e in entries] == ["A", "B"]
    assert entries[0].package == "pkg-x"
    assert len(problems) == 3
    assert "review_by 2026-11-30 has passed" in problems[0]
    assert "missing ['reason']" in problems[1]
    assert "TOML date" in problems[2]


def test_the_repository_ignore_file_is_valid():
    root = Path(__file__).resolve().parents[2]
    _, problems = load_ignores(root / ".pip-audit-ignore.toml", dt.date.today())
    assert problems == []


def test_both_pinned_sets_are_audited_and_a_shared_pin_once():
    assert [p.name for p in REQUIREMENTS] == ["requirements.txt", "requirements-dev.txt"]
    runtime = report(CLEAN, vulnerable())
    dev = report(CLEAN, vulnerable(), {"name": "pytest", "version": "9.0", "vulns": []})
    merged = merge_reports([runtime, dev])
    assert [d["name"] for d in merged["dependencies"]] == ["clean", "Some_Pkg", "pytest"]
    v = judge(merged, [ENTRY])
    assert v.audited == 3 and v.problems == [] and len(v.ignored) == 1
