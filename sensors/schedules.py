"""The daily retrain: a sensor that launches each day's as-of partition once, after adding it.

The as-of partitions are dynamic (``mlops_assets.partitions``): a Dagster schedule cannot add a
partition with its run request, a sensor can, so the UI's partition axis holds exactly the days
that were launched. No asset modules are imported here; the job and partitions come from the
caller.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg

TRIGGER_TAG = "mlops/trigger"


def due_day(now: datetime, hour: int, minute: int) -> str | None:
    """The as-of date (UTC) due at ``now``: today once ``hour:minute`` UTC has passed, else None."""
    now = now.astimezone(UTC)
    if (now.hour, now.minute) < (hour, minute):
        return None
    return now.date().isoformat()


def make_daily_sensor(
    job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition,
    partitions: dg.DynamicPartitionsDefinition,
    hour: int = 2,
    minute: int = 0,
    *,
    name: str | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dg.SensorDefinition:
    """A sensor that, once a day after ``hour:minute`` UTC, adds today's date to ``partitions``
    and requests one run of ``job`` for it (run key ``<job>:<date>``: once per day, also when
    the daemon was down at that time and catches up later).

    Enable it in the UI (or pass ``default_status=RUNNING``); the daemon must run. ``clock``
    gives the current time (tests pass a fixed one).
    """
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise ValueError(f"invalid time of day {hour}:{minute}")
    if partitions.name is None:
        raise ValueError("the as-of partitions need a name (DynamicPartitionsDefinition(name=))")

    @dg.sensor(
        name=name or f"{job.name}_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=default_status,
        description=(
            f"Runs {job.name} every day at {hour:02d}:{minute:02d} UTC for that day's as-of "
            f"date, adding it to the `{partitions.name}` partitions. Turn it on to retrain "
            "daily: once that time has passed today, today's run starts at its first tick "
            "(within a minute). For another date, use the job's Materialize all… dialog."
        ),
    )
    def daily(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        day = due_day(clock(), hour, minute)
        if day is None:
            return dg.SkipReason(f"today's run is due at {hour:02d}:{minute:02d} UTC")
        if context.cursor == day:
            return dg.SkipReason(f"{job.name} was launched for {day} already")
        request = dg.RunRequest(
            run_key=f"{job.name}:{day}", partition_key=day, tags={TRIGGER_TAG: "daily"}
        )
        return dg.SensorResult(
            run_requests=[request],
            dynamic_partitions_requests=[partitions.build_add_request([day])],
            cursor=day,
        )

    return daily
