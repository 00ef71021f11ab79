"""Schedules: daily retraining of the as-of partitions, built from the job (no asset imports)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    # What Dagster returns for an asset job whose partitions resolve with the Definitions.
    from dagster._core.definitions.partitions.partitioned_schedule import (
        UnresolvedPartitionedAssetScheduleDefinition,
    )


def make_daily_schedule(
    job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition,
    hour: int = 2,
    minute: int = 0,
    *,
    name: str | None = None,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition | UnresolvedPartitionedAssetScheduleDefinition:
    """A schedule that runs ``job`` (daily-partitioned) at ``hour:minute`` UTC for the as-of
    partition of that day.

    The partitions' timezone is UTC, so the time is UTC. Enable it in the UI (or pass
    ``default_status=RUNNING``); the daemon must run.
    """
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise ValueError(f"invalid time of day {hour}:{minute}")
    return dg.build_schedule_from_partitioned_job(
        job,
        hour_of_day=hour,
        minute_of_hour=minute,
        name=name or f"{job.name}_schedule",
        default_status=default_status,
        description=f"Runs {job.name} every day at {hour:02d}:{minute:02d} UTC.",
    )
