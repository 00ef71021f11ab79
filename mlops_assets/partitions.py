"""Dagster partitions carry the time axis: one partition per retrain as-of date (UTC).

Series are never Dagster partitions (docs/architecture.md §3): one run trains every series of
a day. The as-of axis of each dataset is a dynamic partitions definition, ``<ds>_as_of``, whose
keys (ISO dates) are the days that were launched: the daily retrain sensor adds today's, ``mlops
demo`` and ``mlops backfill`` add theirs, the UI's launch dialog can add one. The UI thus shows
the dates that exist, not thousands of empty days since the spec's ``history_start``;
``history_start`` (default ``DEFAULT_HISTORY_START``) is the earliest date a backfill may add.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import date

import dagster as dg
import pandas as pd

from mlops_assets.ml.spec import DatasetSpec

DEFAULT_HISTORY_START = date(2020, 1, 1)
HOW_TO_ADD = (
    "add one with `mlops backfill --dataset {ds} --from YYYY-MM-DD` or the launch dialog's "
    "'Add partition' in the UI"
)


class AsOfError(ValueError):
    """An as-of partition key that is not a usable date."""


def as_of_partitions_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_as_of"


@functools.cache
def _dynamic(name: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=name)


def as_of_partitions(spec: DatasetSpec) -> dg.DynamicPartitionsDefinition:
    """The as-of dates of ``spec``'s daily chain: only those that were added (launched)."""
    return _dynamic(as_of_partitions_name(spec))


def history_start(spec: DatasetSpec) -> date:
    """The earliest as-of date of ``spec``: its ``history_start`` or the default."""
    return spec.history_start or DEFAULT_HISTORY_START


def as_of_key(spec: DatasetSpec, key: str | None) -> str:
    """``key`` if it is an ISO date (YYYY-MM-DD), else :class:`AsOfError` saying how to add one."""
    try:
        if key and date.fromisoformat(key).isoformat() == key:
            return key
    except ValueError:
        pass
    raise AsOfError(
        f"as-of partition {key!r} is not a date YYYY-MM-DD; " + HOW_TO_ADD.format(ds=spec.name)
    )


def as_of_dates(
    spec: DatasetSpec, start: str, end: str | None = None, every: str | None = None
) -> list[str]:
    """The as-of keys from ``start`` through ``end`` (default: ``start``), one per ``every``
    (a pandas offset alias such as ``W-MON``; default daily), within the spec's history."""
    first = date.fromisoformat(as_of_key(spec, start))
    last = date.fromisoformat(as_of_key(spec, end or start))
    if first > last:
        raise AsOfError(f"--from {first} is after --to {last}")
    if first < history_start(spec):
        raise AsOfError(
            f"{first} is before {spec.name}'s history_start {history_start(spec)} "
            "(set history_start in the spec to go further back)"
        )
    try:
        days = pd.date_range(first, last, freq=every or "D")
    except ValueError as exc:
        raise AsOfError(f"--every {every!r} is not a pandas frequency (e.g. D, W-MON)") from exc
    return [d.date().isoformat() for d in days]


def add_as_of_dates(instance: dg.DagsterInstance, spec: DatasetSpec, keys: Iterable[str]) -> list:
    """Add ``keys`` (validated) to ``spec``'s as-of partitions in ``instance``; the new ones."""
    name = as_of_partitions_name(spec)
    wanted = [as_of_key(spec, k) for k in keys]
    known = set(instance.get_dynamic_partitions(name))
    new = [k for k in dict.fromkeys(wanted) if k not in known]
    if new:
        instance.add_dynamic_partitions(name, new)
    return new


def as_of_request(spec: DatasetSpec, keys: Iterable[str]) -> dg.AddDynamicPartitionsRequest:
    """The request (in a sensor's result) that adds ``keys`` to ``spec``'s as-of partitions."""
    return as_of_partitions(spec).build_add_request([as_of_key(spec, k) for k in keys])


def run_as_of(context: dg.AssetExecutionContext, spec: DatasetSpec) -> str:
    """The run's as-of date (its partition key), or a Failure that says how to add one."""
    try:
        return as_of_key(spec, context.partition_key)
    except AsOfError as exc:
        raise dg.Failure(str(exc)) from None
