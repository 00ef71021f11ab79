"""The calendar row rules of a drop: ``time.off_calendar`` and ``time.duplicate_period``.

A timestamp that is not an anchor of the spec's frequency (a Thursday in a ``W-MON`` spec) is
quarantined under ``time.off_calendar``, or, when the spec says ``calendar.off_calendar: snap``,
moved to its period's anchor; a snapped row that lands on a (series, period) another row of the
drop holds is quarantined under ``time.duplicate_period`` (the on-calendar row is kept).

great-expectations has no expectation for "is an anchor of a pandas frequency", so these rules
are not in the GX suite (``suite.row_expectations``): ``rows.validate_rows`` evaluates them here,
after the suite's masks, for ingestion and scoring drops alike. A drop holds few distinct
timestamps, so only those are located on the calendar (``ml.calendar``), then mapped to rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml import calendar
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.masks import ROW_EVALUATORS, MaskFailure, filled
from mlops_assets.ml.validation.rules import Rule


@dataclass(frozen=True)
class CalendarRows:
    """What the calendar rules make of a drop's rows.

    Attributes:
        failures: (rule, column, mask) of rows to quarantine, as ``masks.row_failures`` gives.
        time: The time column with off-calendar rows snapped (None: nothing to snap).
    """

    failures: list[MaskFailure]
    time: pa.ChunkedArray | None = None


def _as_times(values: pa.Array) -> np.ndarray:
    return pc.cast(values, pa.timestamp("us")).to_numpy(zero_copy_only=False)


def calendar_rows(table: pa.Table, spec: DatasetSpec) -> CalendarRows:
    """The calendar rules on a drop's typed rows (see the module docstring)."""
    col = table[spec.time]
    if table.num_rows == 0:
        return CalendarRows([])
    distinct = pc.drop_null(pc.unique(col))
    if len(distinct) == 0:
        return CalendarRows([])
    on = calendar.periods(_as_times(distinct), spec.frequency).on_calendar
    if on.all():
        return CalendarRows([])
    off = filled(pc.is_in(col, value_set=distinct.filter(pa.array(~on))))
    if spec.calendar.off_calendar != "snap":
        return CalendarRows([(str(Rule.TIME_OFF_CALENDAR), spec.time, off)])
    anchors = pa.array(calendar.snap(_as_times(distinct), spec.frequency), pa.timestamp("us"))
    snapped = pa.chunked_array([anchors.cast(col.type).take(pc.index_in(col, distinct))])
    keyed = table.select(spec.series_keys).append_column(spec.time, snapped)
    shared = ROW_EVALUATORS["expect_compound_columns_to_be_unique"](
        keyed, {"column_list": spec.key_columns}
    )
    dup = shared & off  # every copy is flagged; an on-calendar row keeps its period
    failures: list[MaskFailure] = []
    if dup.any():
        failures.append((str(Rule.TIME_DUPLICATE_PERIOD), spec.time, dup))
    return CalendarRows(failures, snapped)
