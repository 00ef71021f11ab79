"""A run-failure sensor: reports failed runs in the sensor log, as tags on the run itself and,
where a channel is configured (``resources.alerts``), as an alert.

A blocking asset check that fails with ERROR fails its step, so its run fails: the alert names
each check of the run that failed with ERROR (check, asset, description and the ``reason``
metadata), read from the run's ``ASSET_CHECK_EVALUATION`` events.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.events import DagsterEventType

from resources.alerts import Alert, AlertChannel

FAILURE_TAG = "mlops/failure_reported"
SUMMARY_TAG = "mlops/failure_summary"
ALERT_TAG = "mlops/failure_alerted"  # true: the channel took the alert; false: it did not


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


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """``check 'c' on a/b failed: <description> (<reason>)`` for each asset check of the run
    that failed with ERROR severity."""
    out = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        ev = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if (
            not isinstance(ev, dg.AssetCheckEvaluation)
            or ev.passed
            or ev.severity != dg.AssetCheckSeverity.ERROR
        ):
            continue
        reason = ev.metadata.get("reason")
        text = f"check '{ev.check_name}' on {ev.asset_key.to_user_string()} failed"
        text += f": {ev.description}" if ev.description else ""
        text += f" ({reason.value})" if reason is not None else ""
        out.append(text[:500])
    return out


def failure_alert(report: dict[str, str], checks: list[str], link: str | None) -> Alert:
    """The alert of a failed run: job, run, partition, the failed steps' and checks' reasons."""
    return Alert(
        title=f"Run of {report['job']} failed",
        facts={"job": report["job"], "run": report["run_id"], "partition": report["partition"]},
        reasons=[report["summary"], *checks],
        link=link,
    )


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
        description="Reports failed runs: an error in the sensor log, tags on the run and an "
        "alert (job, run, partition, failed steps and checks, link) where a channel is set.",
    )
    def report_failures(context: dg.RunFailureSensorContext, alerts: AlertChannel) -> None:
        report = failure_report(context)
        context.log.error(
            f"run {report['run_id']} of {report['job']} failed"
            + (f" (partition {report['partition']})" if report["partition"] else "")
            + f": {report['summary']}"
        )
        context.instance.add_run_tags(
            report["run_id"], {FAILURE_TAG: "true", SUMMARY_TAG: report["summary"]}
        )
        if alerts.configured:
            checks = failed_checks(context.instance, report["run_id"])
            sent = alerts.send(failure_alert(report, checks, alerts.link(report["run_id"])))
            context.instance.add_run_tags(report["run_id"], {ALERT_TAG: str(sent).lower()})

    return report_failures
