"""The daily retraining schedule and the run-failure sensor, with Dagster's test helpers."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from resources.alerts import NoAlerts
from sensors.failures import FAILURE_TAG, SUMMARY_TAG, failure_report, make_failure_sensor
from sensors.schedules import make_daily_schedule

days = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)


@dg.asset(partitions_def=days)
def thing() -> None:
    return None


job = dg.define_asset_job("thing_daily", selection=[thing])


def _defs(*extra):
    return dg.Definitions(assets=[thing], jobs=[job], schedules=list(extra))


@pytest.mark.parametrize(("hour", "cron"), [(2, "0 2 * * *"), (5, "0 5 * * *")])
def test_daily_schedule_runs_todays_as_of_partition(hour, cron):
    schedule = make_daily_schedule(job, hour=hour)
    defs = _defs(schedule)
    schedule = defs.resolve_schedule_def(f"{job.name}_schedule")
    assert schedule.cron_schedule == cron and schedule.execution_timezone == "UTC"
    when = datetime(2026, 11, 20, hour, 0, tzinfo=UTC)
    context = dg.build_schedule_context(scheduled_execution_time=when)
    result = schedule.evaluate_tick(context)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.partition_key == "2026-11-20"
    dg.validate_run_config(defs.resolve_job_def(job.name), request.run_config)


def test_invalid_hour_is_refused():
    with pytest.raises(ValueError, match="invalid time"):
        make_daily_schedule(job, hour=24)


@dg.op
def explode():
    raise RuntimeError("curated data missing")


@dg.job
def failing():
    explode()


def test_failure_sensor_reports_failed_runs():
    sensor = make_failure_sensor(jobs=[failing])
    with dg.instance_for_test() as instance:
        result = failing.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        failure = next(e for e in result.all_events if e.is_run_failure)
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=failure,
            resources={"alerts": NoAlerts()},
        ).for_run_failure()
        report = failure_report(context)
        assert report["job"] == "failing" and report["run_id"] == result.run_id
        assert "curated data missing" in report["summary"]
        sensor(context)
        tags = instance.get_run_by_id(result.run_id).tags
        assert tags[FAILURE_TAG] == "true" and "curated data missing" in tags[SUMMARY_TAG]


def test_code_location_wires_schedules_and_sensor(tmp_path):
    from mlops_assets.definitions import build_definitions
    from mlops_assets.ml.spec import bundled_specs
    from mlops_assets.profiles import resources_for

    d = build_definitions(bundled_specs(), resources_for("local", tmp_path))
    names = {s.name for s in d.schedules}
    assert {"sales_daily_retrain_schedule", "diabetes_daily_retrain_schedule"} <= names
    assert "mlops_run_failures" in {s.name for s in d.sensors}
    with dg.instance_for_test():
        jobs = {j.name for j in d.resolve_all_job_defs()}
    assert {"sales_promote_to_prod", "sales_rollback"} <= jobs
