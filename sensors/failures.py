"""A run-failure sensor: reports failed runs in the sensor log and as tags on the run itself.

No outside calls: alerting systems read the ``mlops/failure_*`` run tags or the sensor's log.
"""

from __future__ import annotations

import dagster as dg

FAILURE_TAG = "mlops/failure_reported"
SUMMARY_TAG = "mlops/failure_summary"


def failure_report(context: dg.RunFailureSensorContext) -> dict[str, str]:
    """What a person needs first: job, run, partition and the first failed steps' errors."""
    run = context.dagster_run
    steps = []
    for event in context.get_step_failure_events()[:3]:
        err = event.step_failure_data.error if event.event_specific_data else None
        while err is not None and err.cause is not None:  # the user's error, not the wrapper
            err = err.cause
        msg = err.message.strip().splitlines()[0] if err and err.message else "unknown error"
        steps.append(f"{event.step_key}: {msg}"[:300])
    summary = (
        "; ".join(steps) or (context.failure_event.message or "run failed").splitlines()[0][:300]
    )
    return {
        "job": run.job_name,
        "run_id": run.run_id,
        "partition": run.tags.get("dagster/partition", ""),
        "summary": summary,
    }


def make_failure_sensor(
    jobs: list | None = None,
    name: str = "mlops_run_failures",
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor that reports every failed run of ``jobs`` (all jobs of the location if None)."""

    @dg.run_failure_sensor(
        name=name,
        monitored_jobs=jobs,
        default_status=default_status,
        description="Reports failed runs: an error in the sensor log and tags on the run.",
    )
    def report_failures(context: dg.RunFailureSensorContext) -> None:
        report = failure_report(context)
        context.log.error(
            f"run {report['run_id']} of {report['job']} failed"
            + (f" (partition {report['partition']})" if report["partition"] else "")
            + f": {report['summary']}"
        )
        context.instance.add_run_tags(
            report["run_id"], {FAILURE_TAG: "true", SUMMARY_TAG: report["summary"]}
        )

    return report_failures
