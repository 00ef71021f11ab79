"""The one vocabulary of validation rule names, what to do about each, and who reports it.

A rule name is ``<head>.<detail>``: the head says which concern (asset check) reports it. Most
names are fixed (``Rule``); three families are built from the spec: ``type.<column type>``
(``type_rule``), ``drift.<column>.<stat>`` (``drift_rule``) and ``custom.<expectation>`` (an
extra expectation of the spec, named by ``ExtraExpectation.rule_name``).
"""

from __future__ import annotations

from enum import StrEnum

from mlops_assets.ml.spec import DatasetSpec


class Rule(StrEnum):
    """Fixed rule names (values are what reports, ledgers and quarantined rows store)."""

    FILE_FORMAT = "file.format"
    FILE_NOT_EMPTY = "file.not_empty"
    FILE_ENCODING = "file.encoding"
    FILE_READABLE = "file.readable"
    FILE_DELIMITER = "file.delimiter"
    FILE_HAS_ROWS = "file.has_rows"
    SCHEMA_COLUMNS = "schema.columns"
    SCHEMA_MISSING_COLUMN = "schema.missing_column"
    SCHEMA_EXTRA_COLUMN = "schema.extra_column"
    NOT_NULL = "not_null"
    UNIQUE_KEY_TIME = "unique.key_time"
    VALUES_FINITE = "values.finite"
    VALUES_RANGE = "values.range"
    VALUES_ALLOWED = "values.allowed"
    TIME_EARLIEST = "time.earliest"
    TIME_NOT_FUTURE = "time.not_future"
    TIME_OFF_CALENDAR = "time.off_calendar"
    TIME_DUPLICATE_PERIOD = "time.duplicate_period"
    DROP_ROW_COUNT = "drop.row_count"
    FRESHNESS_MAX_AGE = "freshness.max_age"
    ROWS_IDENTITY = "rows.identity"
    ROWS_MERGED = "rows.merged"
    GX_RAISED = "gx.raised_exception"


def type_rule(type_name: str) -> str:
    """The rule of a value that does not parse as its column's type (``type.float`` ...)."""
    return f"type.{type_name}"


def drift_rule(stat: str) -> str:
    """The rule of a drop statistic ``<column>__<stat>`` outside its band (``drift.sales.mean``)."""
    return "drift." + stat.replace("__", ".")


# Which asset check reports a rule (one per concern on the curated asset).
CONCERNS = ("schema", "keys", "values", "freshness", "distribution", "row_accounting")

# What a rule means and what the sender of the data should do about it.
HINTS = {
    "file": "the file cannot be read as a drop; re-export it (UTF-8, comma-separated CSV or "
    "Parquet, exactly the spec's columns) and land it again",
    "schema": "the file's columns differ from the spec; fix the export or change the spec",
    "type": "the value does not parse as the column's type; fix the value at the source",
    Rule.NOT_NULL: "a required value is missing; fill it at the source and re-land the rows",
    "unique": "the same (series key, time) appears more than once in the drop; send one row "
    "per series and period",
    Rule.VALUES_FINITE: "NaN or infinity in a numeric column; send a finite number",
    Rule.VALUES_RANGE: "the value is outside the spec's [min, max]; correct it or widen the spec",
    Rule.VALUES_ALLOWED: "the value is not one of the spec's allowed values; correct it or add "
    "the category to the spec",
    Rule.TIME_EARLIEST: "the timestamp is before the earliest plausible date; check the date "
    "format",
    Rule.TIME_NOT_FUTURE: "the timestamp is after the run's as-of date; check the date or clock",
    Rule.TIME_OFF_CALENDAR: "the timestamp is not on the spec's calendar (an anchor of its "
    "frequency, e.g. a Monday for W-MON); send the period's anchor date, or set "
    "`calendar.off_calendar: snap` in the spec to move such rows to their period",
    Rule.TIME_DUPLICATE_PERIOD: "snapped to its period, the row lands on a period its series "
    "already has in the drop; send one row per series and period",
    "custom": "the row fails an extra expectation of the spec; see the expectation",
    Rule.DROP_ROW_COUNT: "the drop has too few or too many rows; check it is complete and not "
    "duplicated, then land it again",
    "freshness": "the drop's newest timestamp is older than the freshness limit; send newer data",
    "drift": "the drop's distribution is far from the recent history; check units and "
    "scaling, and re-land it (or move it back from quarantine if the change is real)",
}


def hint(rule: str) -> str:
    """What to do about a failing ``rule`` (longest matching prefix of ``HINTS``)."""
    parts = rule.split(".")
    for i in range(len(parts), 0, -1):
        if (key := ".".join(parts[:i])) in HINTS:
            return HINTS[key]
    return "see the rule's expectation in the suite"


def concern_of(rule: str, column: str | None, spec: DatasetSpec) -> str:
    """Which asset check reports a failing rule."""
    head = rule.split(".", 1)[0]
    if head in ("file", "schema", "type", "drop"):
        return "schema"
    if head == "unique" or (head == "not_null" and column in spec.key_columns):
        return "keys"
    if head in ("time", "freshness"):
        return "freshness"
    if head == "drift":
        return "distribution"
    if head == "rows":
        return "row_accounting"
    return "values"
