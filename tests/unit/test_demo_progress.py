"""The demo's step lines and Dagster's events in a log file, on a two-step job."""

from __future__ import annotations

import logging

import dagster as dg

from mlops_assets.demo_run import run_with_progress
from mlops_assets.logging_setup import file_logger, log_to_file
from mlops_assets.ml.spec import load_spec
from mlops_assets.run_report import explain_failure

SPEC = load_spec("sales")


@dg.asset(key=["sales", "curated"])
def curated() -> None:
    return None


@dg.asset(key=["sales", "candidate_models"], deps=[curated])
def candidate_models() -> None:
    raise dg.Failure("no series has enough history")


def test_one_line_per_step_and_dagster_events_only_in_the_log(tmp_path, capsys):
    job = dg.Definitions(
        assets=[curated, candidate_models],
        jobs=[dg.define_asset_job("sales_daily_retrain")],
    ).resolve_job_def("sales_daily_retrain")
    said: list[str] = []
    log_path = tmp_path / "demo" / "dagster.log"
    with log_to_file(log_path) as handler:
        result = run_with_progress(
            job, SPEC, file_logger(handler), said.append, instance=dg.DagsterInstance.ephemeral()
        )
        assert logging.getLogger("mlflow").handlers == [handler]
    assert logging.getLogger("mlflow").handlers != [handler]  # given back
    assert not result.success
    assert [line.split()[:2] for line in said] == [
        ["curated", "done"],
        ["candidate_models", "FAILED"],
    ]
    (why,) = explain_failure(result)  # what the demo prints on stderr before exiting 1
    # The reason, without the exception's class path.
    assert why == "step sales__candidate_models failed: no series has enough history"
    text = log_path.read_text()
    assert "RUN_START" in text and "STEP_FAILURE" in text
    out = capsys.readouterr()
    assert "RUN_START" not in out.out + out.err  # nothing from Dagster on the console
