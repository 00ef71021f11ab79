"""The as-of partitions a test run needs: they are dynamic, so a run's date must be added to the
instance before it is launched (as the daily sensor, ``mlops demo`` and ``mlops backfill`` do)."""

from __future__ import annotations

import dagster as dg

from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import add_as_of_dates


def as_of_instance(
    spec: DatasetSpec, *days: str, instance: dg.DagsterInstance | None = None
) -> dg.DagsterInstance:
    """``instance`` (default: a new ephemeral one) with ``days`` in ``spec``'s as-of partitions."""
    instance = instance or dg.DagsterInstance.ephemeral()
    add_as_of_dates(instance, spec, days)
    return instance
