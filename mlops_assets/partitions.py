"""Dagster partitions carry the time axis: one partition per retrain as-of date (UTC).

Series are never Dagster partitions (docs/architecture.md §3): one run trains every series of
a day. Each dataset's as-of dates start at its spec's ``history_start`` (so its past can be
backfilled), or at ``DEFAULT_HISTORY_START`` when the spec names none.
"""

from __future__ import annotations

import functools
from datetime import date

import dagster as dg

from mlops_assets.ml.spec import DatasetSpec

DEFAULT_HISTORY_START = date(2020, 1, 1)


@functools.cache
def _daily_from(start: date) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=start.isoformat(), timezone="UTC", end_offset=1)


def as_of_partitions(spec: DatasetSpec) -> dg.DailyPartitionsDefinition:
    """The as-of dates of ``spec``'s daily chain: from its first as-of date through today.

    ``end_offset=1`` makes today's date a partition, so the daily schedule targets today.
    """
    return _daily_from(spec.history_start or DEFAULT_HISTORY_START)
