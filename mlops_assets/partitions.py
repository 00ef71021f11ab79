"""Dagster partitions carry the time axis: one partition per retrain as-of date (UTC).

Series are never Dagster partitions (docs/architecture.md §3): one run trains every series of
a day.
"""

import dagster as dg

AS_OF_START = "2026-01-01"

as_of_days = dg.DailyPartitionsDefinition(start_date=AS_OF_START, timezone="UTC", end_offset=1)
