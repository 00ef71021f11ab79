"""benchmarks.targets: each figure of a run's results against its target, in one verdict."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

from benchmarks import targets

AT = "2026-12-03T19:00:00+00:00"


def _passing() -> targets.Results:
    """Results shaped as the benchmarks write them, every figure within its target."""
    serving_rate = {"p99_ms": 1.1}
    cold = {"p99_ms": 4.0, "errors": 0}
    rates = {r: {"p99_ms": 3.0, "errors": 0} for r in ("100", "200", "500")}
    return {
        "chain": {
            "series": 10_000,
            "rows": 40_000_000,
            "cold_start": {"wall_s": 23.6, "overhead_vs_training": 0.018},
            "daily_retrain": {"wall_s": 8.6, "overhead_vs_training": 0.047},
            "daily_vs_full_refit": {
                "max_relative_coef_difference": 3.2e-13,
                "fingerprints_equal": True,
            },
            "at": AT,
        },
        "scale": {"series": 100_000, "cold_chain": {"wall_s": 45.2}, "peak_pss_mb": 2367, "at": AT},
        "training": {"series": 10_000, "rows": 40_000_000, "local_vs_numpy_floor": 0.5, "at": AT},
        "validation": {
            "results": [
                {"rows": 10_000_000, "gate_rows_per_s": 9_000_000},
                {"rows": 40_000_000, "gate_rows_per_s": 10_000_000},
            ],
            "at": AT,
        },
        "batch_scoring": {"rows": 40_000_000, "ratio_to_baseline": 1.22, "at": AT},
        "serving": {
            "series": 1_000,
            "rounds": 3,
            "vs_bare": {w: {r: dict(serving_rate) for r in ("200", "500")} for w in ("1w", "2w")},
            "configs": {
                "bare/1w": {"rates": copy.deepcopy(rates)},
                "scoring/1w": {"rates": copy.deepcopy(rates), "cold": dict(cold)},
                "bare/2w": {"rates": copy.deepcopy(rates)},
                "scoring/2w": {"rates": copy.deepcopy(rates), "cold": dict(cold)},
            },
            "at": AT,
        },
        "spark_cluster": {
            "rows": 2_000_000,
            "engine_over_bare": 1.03,
            "engine_driver_python_growth_mb": 0.1,
            "table_arrow_mb": 86.3,
            "at": AT,
        },
        "registry": {"series": 10_000, "register_plus_promote_s": 0.23, "at": AT},
    }


def _status(found: list[targets.Verdict], starts: str) -> str:
    return next(v.status for v in found if v.what.startswith(starts))


def test_a_run_within_every_target_meets_them_all_and_says_so():
    found = targets.verdicts(_passing())
    assert len(found) == len(targets.TARGETS)
    assert {v.status for v in found} == {"met"}
    text = targets.report(found, run_minutes=24.0)
    assert text.endswith(f"{len(found)} of {len(found)} figures met their target")
    assert "met     make bench wall time: 24.0 min" in text


def test_one_figure_past_its_target_is_missed_and_the_others_stay_met():
    results = _passing()
    results["chain"]["cold_start"]["wall_s"] = 26.1
    results["serving"]["vs_bare"]["2w"]["200"]["p99_ms"] = 1.33
    results["validation"]["results"][0]["gate_rows_per_s"] = 2_000_000  # the smaller size
    found = targets.verdicts(results)
    assert _status(found, "cold start") == "missed"
    assert _status(found, "serving warm p99 over the bare server, 2 workers, 200/s") == "missed"
    assert _status(found, "validation") == "missed"
    assert sum(v.status == "met" for v in found) == len(found) - 3
    assert "missed  make bench wall time: 31.0 min" in targets.report(found, run_minutes=31.0)


def test_errors_in_any_phase_and_different_data_are_misses():
    results = _passing()
    results["serving"]["configs"]["bare/2w"]["rates"]["500"]["errors"] = 2
    results["serving"]["configs"]["scoring/1w"]["cold"]["errors"] = 1
    results["chain"]["daily_vs_full_refit"]["fingerprints_equal"] = False
    results["spark_cluster"]["engine_driver_python_growth_mb"] = 80.0  # a collect's worth
    found = targets.verdicts(results)
    errors = next(v for v in found if v.what == "serving errors")
    assert (errors.measured, errors.status) == (3.0, "missed")
    assert _status(found, "daily coefficients") == "missed"
    assert _status(found, "Spark driver growth") == "missed"


def test_results_of_an_earlier_run_smaller_sizes_and_missing_fields_never_count_as_met():
    results = _passing()
    results["scale"]["at"] = "2026-12-03T18:00:00+00:00"  # before this run started
    results["batch_scoring"]["rows"] = 120_000  # a --quick run
    results["validation"]["results"][0]["rows"] = 1_000_000
    results["spark_cluster"]["rows"] = 60_000
    results["spark_cluster"]["engine_over_bare"] = 1.31
    del results["registry"]
    del results["serving"]["configs"]["scoring/2w"]["cold"]
    found = targets.verdicts(results, since=datetime(2026, 12, 3, 18, 30, tzinfo=UTC))
    assert _status(found, "100,000 ragged series, cold chain") == "stale"
    assert _status(found, "batch scoring") == "small"
    assert _status(found, "validation") == "small"
    assert _status(found, "Spark standalone cluster") == "small"
    assert _status(found, "register and promote") == "absent"
    assert _status(found, "serving first-request") == "absent"
    assert _status(found, "cold start") == "met"


def test_the_verdict_file_says_whether_all_were_met_and_stays_valid_json(tmp_path):
    results = _passing()
    path = targets.write(targets.verdicts(results), 24.0, folder=tmp_path)
    body = json.loads(path.read_text())
    assert body["all_met"] is True and body["run_minutes"] == 24.0
    assert {f["status"] for f in body["figures"]} == {"met"}

    results["chain"]["daily_vs_full_refit"]["fingerprints_equal"] = False
    body = json.loads(targets.write(targets.verdicts(results), 24.0, folder=tmp_path).read_text())
    assert body["all_met"] is False
    refit = next(f for f in body["figures"] if f["what"].startswith("daily coefficients"))
    assert refit["measured"] == "inf"

    body = json.loads(
        targets.write(targets.verdicts(_passing()), 31.0, folder=tmp_path).read_text()
    )
    assert body["all_met"] is False  # the whole run took longer than 30 minutes


def test_the_command_reads_a_results_folder(tmp_path, capsys):
    for name, result in _passing().items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    (tmp_path / "broken.json").write_text("{not json")
    assert targets.main(["--results", str(tmp_path), "--since", "2026-12-03T18:59:00"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(
        f"{len(targets.TARGETS)} of {len(targets.TARGETS)} figures met their target"
    )
    assert targets.main(["--results", str(tmp_path), "--since", "2026-12-03T19:30:00"]) == 0
    assert "0 of" in capsys.readouterr().out
