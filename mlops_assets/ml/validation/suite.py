"""The expectation suite of a dataset spec, as great-expectations 1.x configurations.

Configurations are plain dicts (``type``, ``kwargs``, ``meta`` with the rule name and
severity), in two parts:

* **row-level** (not null, finite, ranges, allowed values, plausible and not-future
  timestamps, unique (series key, time), extra ones from the spec YAML): failing rows are
  quarantined; ``masks`` evaluates them vectorised.
* **drop-level** (row-count bounds, freshness, distribution against reference bands, in a warn
  and an error band): GX runs them on a drop's one-row profile (``profile``, ``gate``).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops_assets.ml.spec import ColumnType, DatasetSpec
from mlops_assets.ml.validation.rules import Rule, drift_rule

if TYPE_CHECKING:
    from mlops_assets.ml.validation.profile import Band

FLOAT_MAX = float(np.finfo(np.float64).max)

# Expectation types evaluated row by row (``masks``); an extra expectation of another type
# is evaluated on the whole drop by GX itself.
ROW_TYPES = frozenset(
    {
        "expect_table_columns_to_match_set",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_match_regex",
        "expect_column_values_to_not_match_regex",
        "expect_column_value_lengths_to_be_between",
        "expect_compound_columns_to_be_unique",
    }
)

# What batch scoring checks on top of parsing (types, nulls): the spec's value bounds on the
# model's inputs. Keys may repeat (scored, reported as duplicate rows), time is not bounded by an
# as-of date, and non-finite inputs are the model's business, as they always were.
SCORING_RULES = frozenset({Rule.VALUES_RANGE, Rule.VALUES_ALLOWED})


def expectation(type_: str, rule: str, severity: str = "error", **kwargs: Any) -> dict:
    """One expectation configuration; ``concern=`` (optional) goes to its ``meta``."""
    concern = kwargs.pop("concern", None)
    return {
        "type": type_,
        "kwargs": kwargs,
        "meta": {
            "rule": str(rule),
            "severity": severity,
            **({"concern": concern} if concern else {}),
        },
    }


def as_datetime(value: str | date | datetime) -> datetime:
    """``value`` as a naive datetime (a date at midnight)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return datetime.fromisoformat(str(value)).replace(tzinfo=None)


def _end_of_day(value: str | date | datetime) -> datetime:
    """The start of the day after ``value``'s day."""
    day = as_datetime(value).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1)


def _typed_values(values: list[str], ctype: ColumnType) -> list:
    if ctype is ColumnType.int:
        return [int(v) for v in values]
    if ctype is ColumnType.float:
        return [float(v) for v in values]
    if ctype is ColumnType.bool:
        return [str(v).lower() in ("1", "true") for v in values]
    return [str(v) for v in values]


def _value_expectations(spec: DatasetSpec) -> list[dict]:
    out = []
    between = "expect_column_values_to_be_between"
    for name, col in spec.columns.items():
        if col.type in (ColumnType.float, ColumnType.int) and not col.allowed:
            out.append(
                expectation(
                    between,
                    Rule.VALUES_FINITE,
                    column=name,
                    min_value=-FLOAT_MAX,
                    max_value=FLOAT_MAX,
                )
            )
            if col.min is not None or col.max is not None:
                out.append(
                    expectation(
                        between,
                        Rule.VALUES_RANGE,
                        column=name,
                        min_value=col.min,
                        max_value=col.max,
                    )
                )
        if col.allowed:
            out.append(
                expectation(
                    "expect_column_values_to_be_in_set",
                    Rule.VALUES_ALLOWED,
                    column=name,
                    value_set=_typed_values(col.allowed, col.type),
                )
            )
    return out


def row_expectations(
    spec: DatasetSpec,
    as_of: date | datetime | str | None = None,
    *,
    for_scoring: bool = False,
) -> list[dict]:
    """The row-level expectations of ``spec``, in rule precedence order (first failure wins).

    With ``for_scoring``, only ``SCORING_RULES`` on the columns other than the target.
    """
    if for_scoring:
        return [
            c
            for c in _value_expectations(spec)
            if c["meta"]["rule"] in SCORING_RULES and c["kwargs"]["column"] != spec.target
        ]
    v = spec.validation
    out = [
        expectation(
            "expect_table_columns_to_match_set",
            Rule.SCHEMA_COLUMNS,
            column_set=list(spec.columns),
            exact_match=True,
        ),
    ]
    for name, col in spec.columns.items():
        if not col.nullable:
            out.append(
                expectation("expect_column_values_to_not_be_null", Rule.NOT_NULL, column=name)
            )
    out += _value_expectations(spec)
    between = "expect_column_values_to_be_between"
    if v.earliest:
        out.append(
            expectation(
                between, Rule.TIME_EARLIEST, column=spec.time, min_value=as_datetime(v.earliest)
            )
        )
    if as_of is not None:
        # Anything on the as-of day itself is allowed, for date and timestamp columns alike.
        out.append(
            expectation(
                between,
                Rule.TIME_NOT_FUTURE,
                column=spec.time,
                max_value=_end_of_day(as_of),
                strict_max=True,
            )
        )
    out.append(
        expectation(
            "expect_compound_columns_to_be_unique",
            Rule.UNIQUE_KEY_TIME,
            column_list=spec.key_columns,
        )
    )
    for extra in v.expectations:
        if extra.type in ROW_TYPES:
            out.append(expectation(extra.type, extra.rule_name, extra.severity, **extra.kwargs))
    return out


def drift_columns(spec: DatasetSpec) -> list[str]:
    """Target and numeric features (not categorical ones) whose distribution is watched."""
    return [spec.target] + [
        n
        for n, c in spec.columns.items()
        if c.type in (ColumnType.float, ColumnType.int)
        and not c.allowed
        and n != spec.target
        and n not in spec.series_keys
    ]


def drop_expectations(
    spec: DatasetSpec,
    as_of: date | datetime | str | None = None,
    bands: dict[str, Band] | None = None,
) -> list[dict]:
    """Drop-level expectations on the drop's profile (one row: ``rows_in``, ``<col>__<stat>``)."""
    v = spec.validation
    between = "expect_column_values_to_be_between"
    out = [
        expectation(
            between,
            Rule.DROP_ROW_COUNT,
            column="rows_in",
            min_value=v.min_rows_per_drop,
            max_value=v.max_rows_per_drop,
        ),
    ]
    if v.max_age_days is not None and as_of is not None:
        out.append(
            expectation(
                between,
                Rule.FRESHNESS_MAX_AGE,
                "warn",
                column=f"{spec.time}__max",
                min_value=as_datetime(as_of) - timedelta(days=v.max_age_days),
            )
        )
    d = v.drift
    for stat, band in sorted((bands or {}).items()):
        for severity, k in (("warn", d.warn_sigmas), ("error", d.error_sigmas)):
            lo, hi = band.bounds(k)
            out.append(
                expectation(
                    between, drift_rule(stat), severity, column=stat, min_value=lo, max_value=hi
                )
            )
    return out


def extra_drop_expectations(spec: DatasetSpec) -> list[dict]:
    """The spec's extra expectations GX evaluates on a whole drop (not row by row)."""
    return [
        expectation(e.type, e.rule_name, e.severity, **e.kwargs)
        for e in spec.validation.expectations
        if e.type not in ROW_TYPES
    ]


def build_suite(name: str, configs: list[dict]):
    """A great-expectations ``ExpectationSuite`` holding ``configs`` (imports GX)."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    return gx.ExpectationSuite(
        name=name,
        expectations=[
            ExpectationConfiguration(
                type=c["type"], kwargs=c["kwargs"], meta=c["meta"]
            ).to_domain_obj()
            for c in configs
        ],
    )
