"""The data validation gate: expectations derived from a dataset spec, and how they are run.

One list of expectation configurations (plain dicts in great-expectations 1.x form: ``type``,
``kwargs``, ``meta``) is derived from the spec, in two parts:

* **row-level** expectations (not null, finite, ranges, allowed values, plausible and not-future
  timestamps, unique (series key, time), extra ones from the spec YAML). Failing rows are
  quarantined. They are evaluated by ``row_failures``, which compiles each configuration into a
  vectorised pyarrow/numpy mask (GX itself runs at ~1.2M rows/s per process; the masks reach the
  throughput target). ``tests/unit/test_expectations.py`` runs the same suite through GX and
  asserts both count the same unexpected rows.
* **drop-level** expectations (row-count bounds, freshness, distribution against a reference
  window, in a warn and an error band). GX runs them (``ValidationDefinition.run`` on an
  ephemeral context's pandas data source) on the drop's *profile*: one row of exact aggregates
  (``sales__mean``, ``sales__q90``, ``week__max`` ...) computed vectorised from the drop's good rows.
  A failing ERROR expectation quarantines the whole file.

Nothing here imports Dagster or Azure; great-expectations is imported lazily (it takes seconds).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.drops import ROW, DropRejected, ParsedDrop
from mlops_assets.ml.spec import ColumnType, DatasetSpec

Failure = tuple[str, str, np.ndarray]  # (rule, column, mask of failing rows)

FLOAT_MAX = float(np.finfo(np.float64).max)
QUANTILES = {"q10": 0.1, "q50": 0.5, "q90": 0.9}
DRIFT_STATS = ("mean", "stdev", *QUANTILES)
CONCERNS = ("schema", "keys", "values", "freshness", "distribution", "row_accounting")

# What a rule means and what the sender of the data should do about it.
HINTS = {
    "file": "the file cannot be read as a drop; re-export it (UTF-8, comma-separated CSV or "
    "Parquet, exactly the spec's columns) and land it again",
    "schema": "the file's columns differ from the spec; fix the export or change the spec",
    "type": "the value does not parse as the column's type; fix the value at the source",
    "not_null": "a required value is missing; fill it at the source and re-land the rows",
    "unique": "the same (series key, time) appears more than once in the drop; send one row "
    "per series and period",
    "values.finite": "NaN or infinity in a numeric column; send a finite number",
    "values.range": "the value is outside the spec's [min, max]; correct it or widen the spec",
    "values.allowed": "the value is not one of the spec's allowed values; correct it or add the "
    "category to the spec",
    "time.earliest": "the timestamp is before the earliest plausible date; check the date format",
    "time.not_future": "the timestamp is after the run's as-of date; check the date or clock",
    "custom": "the row fails an extra expectation of the spec; see the expectation",
    "drop.row_count": "the drop has too few or too many rows; check it is complete and not "
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
    return "values"


# ---- the suite, as configurations --------------------------------------------------------------


def _exp(type_: str, rule: str, severity: str = "error", **kwargs: Any) -> dict:
    concern = kwargs.pop("concern", None)
    return {
        "type": type_,
        "kwargs": kwargs,
        "meta": {"rule": rule, "severity": severity, **({"concern": concern} if concern else {})},
    }


def _as_datetime(value: str | date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return datetime.fromisoformat(str(value)).replace(tzinfo=None)


def _end_of_day(value: str | date | datetime) -> datetime:
    """The start of the day after ``value``'s day."""
    day = _as_datetime(value).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1)


def _typed_values(values: list[str], ctype: ColumnType) -> list:
    if ctype is ColumnType.int:
        return [int(v) for v in values]
    if ctype is ColumnType.float:
        return [float(v) for v in values]
    if ctype is ColumnType.bool:
        return [str(v).lower() in ("1", "true") for v in values]
    return [str(v) for v in values]


def row_expectations(spec: DatasetSpec, as_of: date | datetime | str | None = None) -> list[dict]:
    """The row-level expectations of ``spec``, in rule precedence order (first failure wins)."""
    v = spec.validation
    out = [
        _exp(
            "expect_table_columns_to_match_set",
            "schema.columns",
            column_set=list(spec.columns),
            exact_match=True,
        ),
    ]
    for name, col in spec.columns.items():
        if not col.nullable:
            out.append(_exp("expect_column_values_to_not_be_null", "not_null", column=name))
    for name, col in spec.columns.items():
        if col.type in (ColumnType.float, ColumnType.int) and not col.allowed:
            out.append(
                _exp(
                    "expect_column_values_to_be_between",
                    "values.finite",
                    column=name,
                    min_value=-FLOAT_MAX,
                    max_value=FLOAT_MAX,
                )
            )
            if col.min is not None or col.max is not None:
                out.append(
                    _exp(
                        "expect_column_values_to_be_between",
                        "values.range",
                        column=name,
                        min_value=col.min,
                        max_value=col.max,
                    )
                )
        if col.allowed:
            out.append(
                _exp(
                    "expect_column_values_to_be_in_set",
                    "values.allowed",
                    column=name,
                    value_set=_typed_values(col.allowed, col.type),
                )
            )
    if v.earliest:
        out.append(
            _exp(
                "expect_column_values_to_be_between",
                "time.earliest",
                column=spec.time,
                min_value=_as_datetime(v.earliest),
            )
        )
    if as_of is not None:
        # Anything on the as-of day itself is allowed, for date and timestamp columns alike.
        out.append(
            _exp(
                "expect_column_values_to_be_between",
                "time.not_future",
                column=spec.time,
                max_value=_end_of_day(as_of),
                strict_max=True,
            )
        )
    out.append(
        _exp(
            "expect_compound_columns_to_be_unique", "unique.key_time", column_list=spec.key_columns
        )
    )
    for extra in v.expectations:
        if extra.type in ROW_EVALUATORS:
            out.append(_exp(extra.type, extra.rule_name, extra.severity, **extra.kwargs))
    return out


@dataclass
class Band:
    """Where a drop statistic may lie: center ± k·sigma, measured on the reference window."""

    center: float
    sigma: float
    periods: int

    def bounds(self, sigmas: float) -> tuple[float, float]:
        return self.center - sigmas * self.sigma, self.center + sigmas * self.sigma


def drift_columns(spec: DatasetSpec) -> list[str]:
    """Target and numeric features (not categorical ones) whose distribution is watched."""
    cols = [spec.target] + [
        n
        for n, c in spec.columns.items()
        if c.type in (ColumnType.float, ColumnType.int)
        and not c.allowed
        and n != spec.target
        and n not in spec.series_keys
    ]
    return cols


def drop_expectations(
    spec: DatasetSpec,
    as_of: date | datetime | str | None = None,
    bands: dict[str, Band] | None = None,
) -> list[dict]:
    """Drop-level expectations on the drop's profile (one row: ``rows_in``, ``<col>__<stat>``)."""
    v = spec.validation
    out = [
        _exp(
            "expect_column_values_to_be_between",
            "drop.row_count",
            column="rows_in",
            min_value=v.min_rows_per_drop,
            max_value=v.max_rows_per_drop,
        ),
    ]
    if v.max_age_days is not None and as_of is not None:
        out.append(
            _exp(
                "expect_column_values_to_be_between",
                "freshness.max_age",
                "warn",
                column=f"{spec.time}__max",
                min_value=_as_datetime(as_of) - timedelta(days=v.max_age_days),
            )
        )
    d = v.drift
    for stat, band in sorted((bands or {}).items()):
        for severity, k in (("warn", d.warn_sigmas), ("error", d.error_sigmas)):
            lo, hi = band.bounds(k)
            out.append(
                _exp(
                    "expect_column_values_to_be_between",
                    "drift." + stat.replace("__", "."),
                    severity,
                    column=stat,
                    min_value=lo,
                    max_value=hi,
                )
            )
    return out


def build_suite(name: str, configs: Iterable[dict]):
    """A great-expectations ``ExpectationSuite`` holding ``configs``."""
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


class GxRunner:
    """An ephemeral GX context with a pandas data source; runs suites on dataframes.

    Args:
        docs_dir: a local folder for a GX Data Docs site of this context's validations (built by
            ``build_docs``); None for no docs.
    """

    DOCS_SITE = "mlops"

    def __init__(self, docs_dir: str | None = None) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx

        self._gx = gx
        self.context = gx.get_context(mode="ephemeral")
        source = self.context.data_sources.add_pandas("mlops")
        self.batch = source.add_dataframe_asset("drop").add_batch_definition_whole_dataframe("all")
        self._n = 0
        self.docs_dir = docs_dir
        if docs_dir:
            self.context.add_data_docs_site(
                site_name=self.DOCS_SITE,
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": docs_dir,
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )

    def build_docs(self) -> str | None:
        """Render the Data Docs site of every validation run so far; the index's local path."""
        if not self.docs_dir or not self._n:
            return None
        self.context.build_data_docs(site_names=[self.DOCS_SITE])
        return os.path.join(self.docs_dir, "index.html")

    def run(self, suite, frame, result_format: str = "SUMMARY"):
        """Validate ``frame`` against ``suite``; returns GX's ``ExpectationSuiteValidationResult``."""
        self._n += 1
        suite = self.context.suites.add(
            suite.__class__(
                name=f"{suite.name}#{self._n}", expectations=[e.copy() for e in suite.expectations]
            )
        )
        vd = self.context.validation_definitions.add(
            self._gx.ValidationDefinition(name=f"v{self._n}", data=self.batch, suite=suite)
        )
        return vd.run(batch_parameters={"dataframe": frame}, result_format=result_format)


# ---- row-level evaluation ---------------------------------------------------------------------


def _np(arr) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)


def _filled(mask) -> np.ndarray:
    """A pyarrow boolean result as numpy, nulls (null input values) counted as passing."""
    return _np(pc.fill_null(mask, False)).astype(bool, copy=False)


def _scalar_for(col: pa.ChunkedArray, value):
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        value = _as_datetime(value)
        if pa.types.is_date(col.type):
            return pa.scalar(value.date(), col.type)
        return pa.scalar(value, col.type)
    return pa.scalar(value, pa.float64() if pa.types.is_floating(col.type) else col.type)


def _between(table: pa.Table, kw: dict) -> np.ndarray:
    col = table[kw["column"]]
    if pa.types.is_integer(col.type) and any(
        isinstance(kw.get(k), float) for k in ("min_value", "max_value")
    ):
        col = pc.cast(col, pa.float64())
    bad = None
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if lo is not None:
        cmp = pc.less_equal if kw.get("strict_min") else pc.less
        bad = cmp(col, _scalar_for(col, lo))
    if hi is not None:
        cmp = pc.greater_equal if kw.get("strict_max") else pc.greater
        over = cmp(col, _scalar_for(col, hi))
        bad = over if bad is None else pc.or_(bad, over)
    if bad is None:
        return np.zeros(table.num_rows, dtype=bool)
    return _filled(bad)


def _not_null(table: pa.Table, kw: dict) -> np.ndarray:
    col = table[kw["column"]]
    mask = pc.is_null(col, nan_is_null=True) if pa.types.is_floating(col.type) else pc.is_null(col)
    return _filled(mask)


def _in_set(table: pa.Table, kw: dict) -> np.ndarray:
    col = table[kw["column"]]
    values = pa.array(kw["value_set"])
    if values.type != col.type:
        values = pc.cast(values, col.type)
    return _filled(pc.invert(pc.is_in(col, value_set=values)))


def _regex(table: pa.Table, kw: dict, negate: bool = False) -> np.ndarray:
    match = pc.match_substring_regex(table[kw["column"]], kw["regex"])
    return _filled(match if negate else pc.invert(match))


def _lengths(table: pa.Table, kw: dict) -> np.ndarray:
    n = pc.utf8_length(table[kw["column"]])
    return _between(pa.table({"n": n}), {**kw, "column": "n"})


def _column_set(table: pa.Table, kw: dict) -> np.ndarray:
    # A column-set mismatch is a file-level problem (parse_drop raises DropRejected first).
    return np.zeros(table.num_rows, dtype=bool)


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    enc = pc.dictionary_encode(col).combine_chunks()
    return _np(enc.indices).astype(np.int64, copy=False), max(len(enc.dictionary), 1)


def _time_ints(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.int64() if pa.types.is_timestamp(col.type) else pa.int32())
    return _np(col).astype(np.int64, copy=False)


def _strictly_increasing(table: pa.Table, cols: list[str]) -> bool:
    """Whether rows are strictly increasing in ``cols`` (lexicographically): then unique."""
    n = table.num_rows
    lo, hi = table.slice(0, n - 1), table.slice(1)
    after = pa.scalar(False)  # rows already known to be ordered by an earlier column
    undecided = pa.scalar(True)
    for c in cols:
        a, b = lo[c], hi[c]
        after = pc.or_(after, pc.and_(undecided, pc.less(a, b)))
        undecided = pc.and_(undecided, pc.equal(a, b))
    return bool(pc.all(pc.fill_null(after, False)).as_py())


def _unique(table: pa.Table, kw: dict) -> np.ndarray:
    """Rows sharing their compound key with another row (every copy is flagged, as GX does)."""
    cols = kw["column_list"]
    n = table.num_rows
    if n < 2 or (
        _strictly_increasing(table.slice(0, 4096), cols) and _strictly_increasing(table, cols)
    ):
        return np.zeros(n, dtype=bool)  # drops usually arrive sorted: one pass proves it
    with ThreadPoolExecutor(max_workers=len(cols)) as pool:
        parts = list(pool.map(lambda c: _codes(table[c]), cols))
    key = np.zeros(n, dtype=np.int64)
    span = 1
    for codes, size in parts:
        if span * size >= 2**62:  # too wide for one int64 key: fall back to a lexsort
            return _unique_lexsort([p[0] for p in parts])
        key = key * size + codes
        span *= size
    if span <= 4 * n + 1024:  # dense keys (the usual case): count them, O(n + span), no sort
        return np.bincount(key, minlength=span)[key] > 1
    import pandas as pd

    return pd.Series(key).duplicated(keep=False).to_numpy()  # hashing: O(n), no sort


def _unique_lexsort(codes: list[np.ndarray]) -> np.ndarray:
    order = np.lexsort(codes[::-1])
    same = np.ones(len(order) - 1, dtype=bool)
    for c in codes:
        cs = c[order]
        same &= cs[1:] == cs[:-1]
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    mask = np.empty(len(order), dtype=bool)
    mask[order] = dup
    return mask


ROW_EVALUATORS: dict[str, Callable[[pa.Table, dict], np.ndarray]] = {
    "expect_table_columns_to_match_set": _column_set,
    "expect_column_values_to_not_be_null": _not_null,
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_match_regex": _regex,
    "expect_column_values_to_not_match_regex": lambda t, kw: _regex(t, kw, negate=True),
    "expect_column_value_lengths_to_be_between": _lengths,
    "expect_compound_columns_to_be_unique": _unique,
}


def row_failures(table: pa.Table, configs: list[dict], workers: int | None = None) -> list[Failure]:
    """Evaluate row-level expectation configs on ``table``: [(rule, column, mask)], in order.

    Each expectation's mask is computed in a thread pool (pyarrow and numpy kernels release the
    GIL), so a large drop uses every core.
    """
    workers = workers or os.cpu_count() or 1

    def one(c: dict) -> Failure | None:
        kw = c["kwargs"]
        mask = ROW_EVALUATORS[c["type"]](table, kw)
        if not mask.any():
            return None
        column = kw.get("column") or (kw.get("column_list") or [None])[-1]
        return c["meta"]["rule"], column, mask

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, configs))
    return [r for r in results if r is not None]


# ---- drop profiles and the reference window ----------------------------------------------------


def _stats(col: pa.ChunkedArray) -> dict[str, float]:
    x = _np(pc.cast(col, pa.float64())) if not pa.types.is_floating(col.type) else _np(col)
    x = x[~np.isnan(x)] if col.null_count or np.isnan(x).any() else x
    if len(x) == 0:
        return {s: math.nan for s in DRIFT_STATS}
    # numpy's quantile selects (O(n)) where a sort would be O(n log n); linear interpolation
    # is pandas' and GX's default, so the numbers match theirs.
    qs = np.quantile(x, list(QUANTILES.values()))
    out = {"mean": float(x.mean()), "stdev": float(x.std(ddof=1)) if len(x) > 1 else math.nan}
    out.update(zip(QUANTILES, map(float, qs), strict=True))
    return out


def profile(table: pa.Table, spec: DatasetSpec, workers: int | None = None) -> dict[str, Any]:
    """One drop's exact aggregates: rows, time min/max and the drift statistics."""
    cols = drift_columns(spec)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        stats = dict(zip(cols, pool.map(lambda c: _stats(table[c]), cols), strict=True))
    out: dict[str, Any] = {"rows": table.num_rows}
    if table.num_rows:
        mm = pc.min_max(table[spec.time]).as_py()
        out[f"{spec.time}__min"], out[f"{spec.time}__max"] = (
            _as_datetime(mm["min"]),
            _as_datetime(mm["max"]),
        )
    for c, s in stats.items():
        for k, v in s.items():
            out[f"{c}__{k}"] = v
    return out


def _period_stats(times: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, stdev and exact quantiles (linear interpolation, as the drop profile) per period."""
    ok = np.isfinite(values)
    t, v = times[ok], values[ok]
    order = np.lexsort((v, t))
    t, v = t[order], v[order]
    if len(t) == 0:
        return {}
    _, start, count = np.unique(t, return_index=True, return_counts=True)
    mean = np.add.reduceat(v, start) / count
    sq = np.add.reduceat((v - np.repeat(mean, count)) ** 2, start)
    with np.errstate(invalid="ignore", divide="ignore"):
        stdev = np.where(count > 1, np.sqrt(sq / np.maximum(count - 1, 1)), np.nan)
    out = {"mean": mean, "stdev": stdev}
    for name, q in QUANTILES.items():
        pos = start + q * (count - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, start + count - 1)
        out[name] = v[lo] + (v[hi] - v[lo]) * (pos - lo)
    return out


def reference_bands(reference: pa.Table, spec: DatasetSpec) -> dict[str, Band]:
    """Per-period statistics over the last ``reference_periods`` periods of ``reference``, as
    a band per ``<col>__<stat>`` (mean and spread of that statistic across periods)."""
    d = spec.validation.drift
    if reference.num_rows == 0:
        return {}
    times = pc.unique(reference[spec.time]).sort()
    if len(times) < 2:
        return {}
    cutoff = times[max(0, len(times) - d.reference_periods)]
    window = reference.filter(pc.greater_equal(reference[spec.time], cutoff))
    t = _time_ints(window[spec.time])
    bands: dict[str, Band] = {}
    for c in drift_columns(spec):
        series = _period_stats(t, _np(pc.cast(window[c], pa.float64())).astype(float))
        for stat, values in series.items():
            values = values[np.isfinite(values)]
            if len(values) < 2:
                continue
            center = float(values.mean())
            sigma = max(float(values.std(ddof=1)), d.min_sigma_fraction * abs(center), 1e-9)
            bands[f"{c}__{stat}"] = Band(center, sigma, len(values))
    return bands


def _distinct(table: pa.Table, keys: list[str]) -> pa.Table:
    """Distinct combinations of ``keys`` in ``table``.

    Drops usually hold each series in one run of rows, so the rows where the key changes are
    (nearly) the answer and a hash aggregation over them is cheap; otherwise hash all rows.
    """
    keyed = table.select(keys)
    n = keyed.num_rows
    if n > 1:
        lo, hi = keyed.slice(0, n - 1), keyed.slice(1)
        change = pc.not_equal(lo[keys[0]], hi[keys[0]])
        for k in keys[1:]:
            change = pc.or_(change, pc.not_equal(lo[k], hi[k]))
        starts = np.flatnonzero(_filled(change)) + 1
        if len(starts) < n // 4:
            keyed = keyed.take(pa.array(np.concatenate([[0], starts])))
    return keyed.group_by(keys).aggregate([])


# ---- the gate ---------------------------------------------------------------------------------


@dataclass
class DropReport:
    """What validation found in one drop (stored in the ledger, reported by asset checks)."""

    failures: list[dict] = field(default_factory=list)  # rule, column, level, severity, count...
    profile: dict[str, Any] = field(default_factory=dict)
    sample: list[dict] = field(default_factory=list)  # failing rows: file, row, column, value
    gx_statistics: dict[str, Any] = field(default_factory=dict)
    reference: str = ""  # which history the distribution was compared with

    def as_dict(self) -> dict:
        def plain(v):
            return (
                v.isoformat()
                if isinstance(v, datetime | date)
                else (None if isinstance(v, float) and not math.isfinite(v) else v)
            )

        return {
            "failures": self.failures,
            "profile": {k: plain(v) for k, v in self.profile.items()},
            "sample": self.sample,
            "gx_statistics": self.gx_statistics,
            "reference": self.reference,
        }


class DropGate:
    """Validates the drops of one ingestion run against the spec's expectations.

    Args:
        spec: the dataset spec.
        as_of: the run's as-of date (future timestamps and freshness are relative to it).
        reference: curated history (series keys, time and drift columns) for the distribution
            bands; drops accepted during the run extend it, so a cold start still compares
            later drops.
        runner: a ``GxRunner`` to share (one is created on first use otherwise).
        sample_rows: failing rows kept per drop for reports.
        docs_dir: where the runner it creates renders GX Data Docs (see ``GxRunner``).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        as_of: date | datetime | str | None,
        reference: pa.Table | None = None,
        runner: GxRunner | None = None,
        sample_rows: int = 5,
        docs_dir: str | None = None,
    ):
        self.spec, self.as_of = spec, as_of
        self.row_configs = row_expectations(spec, as_of)
        self._cols = [*spec.series_keys, spec.time, *drift_columns(spec)]
        self._reference = [reference.select(self._cols)] if reference is not None else []
        self._window: pa.Table | None = None
        self._window_series: pa.Table | None = None
        self._bands: dict[str, Band] | None = None
        self._runner = runner
        self.docs_dir = docs_dir
        self.sample_rows = sample_rows
        self.reports: dict[str, DropReport] = {}
        self.extra_drop = [e for e in spec.validation.expectations if e.type not in ROW_EVALUATORS]

    @property
    def runner(self) -> GxRunner:
        if self._runner is None:
            self._runner = GxRunner(self.docs_dir)
        return self._runner

    def _window_table(self) -> pa.Table:
        """The last ``reference_periods`` periods of the reference, and its distinct series."""
        if self._window is None:
            keys, time = self.spec.series_keys, self.spec.time
            ref = pa.concat_tables(self._reference) if self._reference else None
            if ref is None or ref.num_rows == 0:
                self._window = pa.table({c: pa.array([], pa.null()) for c in self._cols})
                self._window_series = self._window.select(keys)
                return self._window
            times = pc.unique(ref[time]).sort()
            cutoff = times[max(0, len(times) - self.spec.validation.drift.reference_periods)]
            self._window = ref.filter(pc.greater_equal(ref[time], cutoff))
            self._window_series = self._window.select(keys).group_by(keys).aggregate([])
        return self._window

    @property
    def bands(self) -> dict[str, Band]:
        """Bands of the whole reference population (every series)."""
        if self._bands is None:
            window = self._window_table()
            self._bands = reference_bands(window, self.spec) if window.num_rows else {}
        return self._bands

    def bands_for(self, good: pa.Table) -> tuple[dict[str, Band], str]:
        """Bands from the reference rows of the series in ``good``, and which those are.

        A drop of every series compares with the whole population; a correction of a few series
        or a drop of new ones compares with those series' own history (or with nothing, when
        none of them has any), so that only like is compared with like.
        """
        window = self._window_table()
        if window.num_rows == 0 or good.num_rows == 0:
            return {}, "no reference history yet"
        keys = self.spec.series_keys
        series = _distinct(good, keys)
        known = self._window_series.join(series, keys, join_type="inner")
        if known.num_rows == 0:
            return {}, "no reference history for the drop's series"
        note = f"{known.num_rows} of {series.num_rows} drop series have history"
        if known.num_rows == self._window_series.num_rows:
            return self.bands, note + " (the whole population)"
        sub = window.join(known, keys, join_type="inner")
        return reference_bands(sub, self.spec), note

    def row_rules(self, table: pa.Table, spec: DatasetSpec) -> list[Failure]:
        """The ``row_rules`` hook of ``curation.ingest``."""
        return row_failures(table, self.row_configs)

    def check_drop(self, name: str, parsed: ParsedDrop) -> DropReport:
        """Drop-level expectations on the drop's good rows (GX on the drop's profile).

        Raises:
            DropRejected: an ERROR drop-level expectation failed; quarantine the whole file.
        """
        import pandas as pd

        report = DropReport()
        self.reports[name] = report
        report.failures += _row_failure_counts(parsed.rejected, self.spec)
        report.sample = [
            {
                "file": name,
                "row": r[ROW],
                "column": r["_column"],
                "value": r["_value"],
                "rule": r["_rule"],
            }
            for r in parsed.rejected.slice(0, self.sample_rows)
            .select([ROW, "_rule", "_column", "_value"])
            .to_pylist()
        ]
        report.profile = {"rows_in": parsed.rows_in, **profile(parsed.good, self.spec)}
        bands, report.reference = self.bands_for(parsed.good)
        configs = drop_expectations(self.spec, self.as_of, bands)
        frame = pd.DataFrame(
            {
                k: pd.Series(
                    [report.profile.get(k)],
                    dtype=None if k.startswith(self.spec.time) else "float64",
                )
                for k in _columns_of(configs)
            }
        )
        suite = build_suite(f"{self.spec.name}.drop.{name.rsplit('/', 1)[-1]}", configs)
        result = self.runner.run(suite, frame)
        report.gx_statistics = dict(result.statistics)
        report.failures += _gx_failures(result, report.profile)
        if self.extra_drop:
            report.failures += self._extra_drop_level(parsed.good)
        errors = [f for f in report.failures if f["level"] == "drop" and f["severity"] == "error"]
        if errors:
            first = errors[0]
            raise DropRejected(
                name,
                first["rule"],
                f"{first['message']}; the whole file is quarantined: {hint(first['rule'])}",
                column=first.get("column"),
            )
        return report

    def accept(self, good: pa.Table) -> None:
        """Add a curated drop's rows to the reference window (recomputed lazily)."""
        if good.num_rows:
            self._reference.append(good.select(self._cols))
            self._window = self._window_series = self._bands = None

    def _extra_drop_level(self, good: pa.Table) -> list[dict]:
        cols = sorted({c for e in self.extra_drop for c in _kw_columns(e.kwargs)})
        frame = good.select(cols).to_pandas(date_as_object=False)
        configs = [_exp(e.type, e.rule_name, e.severity, **e.kwargs) for e in self.extra_drop]
        result = self.runner.run(build_suite(f"{self.spec.name}.extra", configs), frame)
        return _gx_failures(result, {})


def _kw_columns(kw: dict) -> list[str]:
    return [kw["column"]] if "column" in kw else list(kw.get("column_list", []))


def _columns_of(configs: list[dict]) -> list[str]:
    return list(dict.fromkeys(c["kwargs"]["column"] for c in configs))


def _row_failure_counts(rejected: pa.Table, spec: DatasetSpec) -> list[dict]:
    if rejected.num_rows == 0:
        return []
    counts = rejected.group_by(["_rule", "_column"]).aggregate([(ROW, "count"), (ROW, "min")])
    return [
        {
            "rule": r["_rule"],
            "column": r["_column"],
            "level": "row",
            "concern": concern_of(r["_rule"], r["_column"], spec),
            "severity": "error",
            "unexpected_count": r[f"{ROW}_count"],
            "first_row": r[f"{ROW}_min"],
            "message": f"rule {r['_rule']} on column "
            f"{r['_column']!r}: {r[f'{ROW}_count']} row(s) quarantined, first at row "
            f"{r[f'{ROW}_min']}; {hint(r['_rule'])}",
        }
        for r in counts.to_pylist()
    ]


def _gx_failures(result, observed: dict) -> list[dict]:
    out = []
    for r in result.results:
        cfg = r.expectation_config
        raised = (r.exception_info or {}).get("raised_exception", False)
        if r.success and not raised:
            continue
        kw = dict(cfg.kwargs)
        col = kw.get("column")
        value = observed.get(col) if col in observed else ((r.result or {}).get("observed_value"))
        rule = "gx.raised_exception" if raised else cfg.meta["rule"]
        shown = value.isoformat() if isinstance(value, datetime) else value
        bounds = f"[{kw.get('min_value')}, {kw.get('max_value')}]"
        out.append(
            {
                "rule": rule,
                "column": (col or "").split("__")[0] or None,
                "level": "drop",
                "severity": cfg.meta["severity"],
                "expectation": cfg.type,
                "observed": shown,
                "expected": {
                    k: (v.isoformat() if isinstance(v, datetime) else v)
                    for k, v in kw.items()
                    if k in ("min_value", "max_value")
                },
                "message": (
                    f"{col.replace('__', ' ')} = {shown} is outside {bounds} ({cfg.meta['severity']} band)"
                    if not raised
                    else f"GX raised: {r.exception_info}"
                ),
            }
        )
    return out
