"""The daily retraining sensor and the run-failure sensor, with Dagster's test helpers."""

from datetime import UTC, datetime, timedelta, timezone

import dagster as dg
import pytest

from resources.alerts import NoAlerts
from sensors.failures import FAILURE_TAG, SUMMARY_TAG, failure_report, make_failure_sensor
from sensors.schedules import due_day, make_daily_sensor

days = dg.DynamicPartitionsDefinition(name="thing_as_of")


@dg.asset(partitions_def=days)
def thing() -> None:
    return None


job = dg.define_asset_job("thing_daily", selection=[thing])


def _defs(*sensors):
    return dg.Definitions(assets=[thing], jobs=[job], sensors=list(sensors))


def _at(hour: int, minute: int = 0, day: int = 20) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize("hour", [2, 5])
def test_daily_sensor_adds_and_runs_todays_as_of_partition_once(hour):
    now = [_at(hour, 1)]
    sensor = make_daily_sensor(job, days, hour=hour, clock=lambda: now[0])
    defs = _defs(sensor)
    assert sensor.name == "thing_daily_sensor" and f"{hour:02d}:00 UTC" in sensor.description
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None = None) -> dg.SensorResult:
            """One evaluation, as the daemon's: the run request resolves against the partitions
            added with it. The context is closed after it (it opened an instance)."""
            ctx = dg.build_sensor_context(
                instance_ref=instance.get_ref(), definitions=defs, cursor=cursor
            )
            with ctx:
                return sensor.evaluate_tick(ctx)

        result = tick()
        (request,) = result.run_requests
        assert request.partition_key == "2026-11-20" and request.run_key == "thing_daily:2026-11-20"
        (added,) = result.dynamic_partitions_requests
        assert added.partitions_def_name == "thing_as_of"
        assert list(added.partition_keys) == ["2026-11-20"]
        dg.validate_run_config(defs.resolve_job_def(job.name), request.run_config)
        # The same day again: nothing; before the hour the next day: nothing; after it: a run.
        assert not tick(result.cursor).run_requests
        now[0] = _at(hour - 1, 59, day=21)
        assert not tick(result.cursor).run_requests
        now[0] = _at(23, day=21)  # the daemon was down at the hour: it catches up
        (late,) = tick(result.cursor).run_requests
        assert late.partition_key == "2026-11-21"


def test_due_day_is_the_utc_date_once_the_hour_passed():
    assert due_day(_at(1, 59), 2, 0) is None
    assert due_day(_at(2, 0), 2, 0) == "2026-11-20"
    # A local clock two hours ahead: 01:30 there is 23:30 UTC of the day before.
    ahead = timezone(timedelta(hours=2))
    assert due_day(datetime(2026, 11, 21, 1, 30, tzinfo=ahead), 2, 0) == "2026-11-20"
    assert due_day(datetime(2026, 11, 21, 3, 30, tzinfo=ahead), 2, 0) is None
    assert due_day(datetime(2026, 11, 21, 4, 30, tzinfo=ahead), 2, 0) == "2026-11-21"


def test_invalid_hour_is_refused():
    with pytest.raises(ValueError, match="invalid time"):
        make_daily_sensor(job, days, hour=24)


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
    sensors = {s.name for s in d.sensors}
    assert {"sales_daily_retrain_sensor", "diabetes_daily_retrain_sensor"} <= sensors
    assert "mlops_run_failures" in sensors
    with dg.instance_for_test():
        jobs = {j.name for j in d.resolve_all_job_defs()}
    assert {"sales_promote_to_prod", "sales_rollback"} <= jobs
