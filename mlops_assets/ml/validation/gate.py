"""The drop-level gate of an ingestion run: each drop's profile against the spec's bounds.

GX runs the drop-level expectations (``ValidationDefinition.run`` on an ephemeral context's
pandas data source) on the drop's *profile*: one row of exact aggregates computed vectorised
from the drop's kept rows. A failing ERROR expectation quarantines the whole file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

import pyarrow as pa

from mlops_assets.ml.drops import ROW, DropRejected
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.ml.validation.failures import DropFailure, Failure, plain
from mlops_assets.ml.validation.gx import GxRunner, gx_failures
from mlops_assets.ml.validation.masks import columns_of
from mlops_assets.ml.validation.profile import (
    Band,
    distinct,
    last_periods,
    profile,
    reference_bands,
)
from mlops_assets.ml.validation.rows import RowCheck
from mlops_assets.ml.validation.rules import hint
from mlops_assets.ml.validation.suite import (
    build_suite,
    drift_columns,
    drop_expectations,
    extra_drop_expectations,
)


@dataclass
class DropReport:
    """What validation found in one drop (stored in the ledger, reported by asset checks)."""

    failures: list[Failure] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    sample: list[dict] = field(default_factory=list)  # failing rows: file, row, column, value
    gx_statistics: dict[str, Any] = field(default_factory=dict)
    reference: str = ""  # which history the distribution was compared with

    def as_dict(self) -> dict:
        def finite(v):
            return None if isinstance(v, float) and not math.isfinite(v) else plain(v)

        return {
            "failures": [f.to_dict() for f in self.failures],
            "profile": {k: finite(v) for k, v in self.profile.items()},
            "sample": self.sample,
            "gx_statistics": self.gx_statistics,
            "reference": self.reference,
        }


class DropGate:
    """Validates the drops of one ingestion run against the spec's drop-level expectations.

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
        self._cols = [*spec.series_keys, spec.time, *drift_columns(spec)]
        self._reference = [reference.select(self._cols)] if reference is not None else []
        self._window: pa.Table | None = None
        self._window_series: pa.Table | None = None
        self._bands: dict[str, Band] | None = None
        self._runner = runner
        self.docs_dir = docs_dir
        self.sample_rows = sample_rows
        self.reports: dict[str, DropReport] = {}
        self.extra_drop = extra_drop_expectations(spec)

    @property
    def runner(self) -> GxRunner:
        if self._runner is None:
            self._runner = GxRunner(self.docs_dir)
        return self._runner

    def _window_keys(self) -> pa.Table:
        """The distinct series of the reference window."""
        self._window_table()
        if self._window_series is None:
            raise RuntimeError("the reference window has no series table")
        return self._window_series

    def _window_table(self) -> pa.Table:
        """The last ``reference_periods`` periods of the reference, and its distinct series."""
        if self._window is None:
            keys = self.spec.series_keys
            ref = _concat(self._reference) if self._reference else None
            if ref is None or ref.num_rows == 0:
                self._window = pa.table({c: pa.array([], pa.null()) for c in self._cols})
                self._window_series = self._window.select(keys)
                return self._window
            periods = self.spec.validation.drift.reference_periods
            self._window = last_periods(ref, self.spec.time, periods)
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
        series = distinct(good, keys)
        known = self._window_keys().join(series, keys, join_type="inner")
        if known.num_rows == 0:
            return {}, "no reference history for the drop's series"
        note = f"{known.num_rows} of {series.num_rows} drop series have history"
        if known.num_rows == self._window_keys().num_rows:
            return self.bands, note + " (the whole population)"
        sub = window.join(known, keys, join_type="inner")
        return reference_bands(sub, self.spec), note

    def check_drop(self, name: str, rows: RowCheck) -> DropReport:
        """Drop-level expectations on the drop's kept rows (GX on the drop's profile).

        Raises:
            DropRejected: an ERROR drop-level expectation failed; quarantine the whole file.
        """
        import pandas as pd

        report = DropReport()
        self.reports[name] = report
        report.failures += rows.failures(self.spec)
        report.sample = [
            {
                "file": name,
                "row": r[ROW],
                "column": r["_column"],
                "value": r["_value"],
                "rule": r["_rule"],
            }
            for r in rows.quarantined.slice(0, self.sample_rows)
            .select([ROW, "_rule", "_column", "_value"])
            .to_pylist()
        ]
        report.profile = {"rows_in": rows.rows_in, **profile(rows.kept, self.spec)}
        bands, report.reference = self.bands_for(rows.kept)
        configs = drop_expectations(self.spec, self.as_of, bands)
        frame = pd.DataFrame(
            {
                k: pd.Series(
                    [report.profile.get(k)],
                    dtype=None if k.startswith(self.spec.time) else "float64",
                )
                for k in dict.fromkeys(c["kwargs"]["column"] for c in configs)
            }
        )
        suite = build_suite(f"{self.spec.name}.drop.{name.rsplit('/', 1)[-1]}", configs)
        result = self.runner.run(suite, frame)
        report.gx_statistics = dict(result.statistics)
        report.failures += gx_failures(result, report.profile, self.spec)
        if self.extra_drop:
            report.failures += self._extra_drop_level(rows.kept)
        errors = [f for f in report.failures if f.level == "drop" and f.severity == "error"]
        if errors:
            first = _to_report(errors, bands)
            # Reported first, in the drift column's own words, by the checks and the ledger too.
            said = replace(first, message=_moved(first, errors)) if first.level == "drop" else first
            report.failures = [said, *(f for f in report.failures if f is not first)]
            raise DropRejected(
                name,
                first.rule,
                f"{said.message}; the whole file is quarantined: {hint(first.rule)}",
                column=first.column,
                rows=rows.rows_in,
            )
        return report

    def accept(self, good: pa.Table) -> None:
        """Add a curated drop's rows to the reference window (recomputed lazily)."""
        if good.num_rows:
            self._reference.append(good.select(self._cols))
            self._window = self._window_series = self._bands = None

    def _extra_drop_level(self, good: pa.Table) -> list[Failure]:
        cols = sorted({c for e in self.extra_drop for c in columns_of(e["kwargs"])})
        frame = good.select(cols).to_pandas(date_as_object=False)
        result = self.runner.run(build_suite(f"{self.spec.name}.extra", self.extra_drop), frame)
        return list(gx_failures(result, {}, self.spec))


def moved_by(f: Failure, bands: dict[str, Band]) -> float:
    """How far a failing drop statistic lies from its band's center, in units of its column's
    level (the center of the column's mean band): a x1000 shift in sales is ~1000, a flat
    price history's stdev moving from 0 to 0.4 on a price of 5 is 0.08. 0 when not known."""
    if not isinstance(f, DropFailure) or not isinstance(f.observed, int | float):
        return 0.0
    lo, hi = f.expected.get("min_value"), f.expected.get("max_value")
    if lo is None or hi is None:
        return 0.0
    mean = bands.get(f"{f.column}__mean")
    level = abs(mean.center) if mean is not None and mean.center else max(abs(hi - lo), 1e-9)
    return abs(f.observed - (lo + hi) / 2) / level


def _to_report(errors: list[Failure], bands: dict[str, Band]) -> Failure:
    """The drop-level error a quarantined file is reported by: one that is not drift, else the
    mean of the column that moved furthest for its level (its worst statistic without one)."""
    plain_errors = [f for f in errors if not f.rule.startswith("drift.")]
    if plain_errors:
        return plain_errors[0]
    worst = max(errors, key=lambda f: moved_by(f, bands))
    mean = [f for f in errors if f.column == worst.column and f.rule.endswith(".mean")]
    return mean[0] if mean else worst


def _moved(worst: Failure, errors: list[Failure]) -> str:
    """``worst``'s message; for drift, first the column that moved, by what factor, and the
    other columns out of their hard band."""
    if not worst.rule.startswith("drift.") or not isinstance(worst, DropFailure):
        return worst.message
    lo, hi = worst.expected.get("min_value"), worst.expected.get("max_value")
    center = (lo + hi) / 2 if lo is not None and hi is not None else None
    stat = worst.rule.rsplit(".", 1)[-1]
    text = f"column {worst.column!r} moved: its {stat} is {worst.observed:.6g}"
    if center and isinstance(worst.observed, int | float):
        ratio = worst.observed / center
        times = f"{ratio:,.0f}" if abs(ratio) >= 10 else f"{ratio:.2g}"
        text += f", {times} times the recent level {center:.6g}"
    others = sorted({str(f.column) for f in errors if f.rule.startswith("drift.")} - {worst.column})
    also = f"; also out of band: {', '.join(map(repr, others))}" if others else ""
    return f"{text} ({worst.message}){also}"


def _concat(tables: list[pa.Table]) -> pa.Table:
    """The reference's tables as one. Keys come dictionary-encoded from Parquet and plain from
    CSV: tables that differ so are decoded to plain text first (only then)."""
    if len({t.schema for t in tables}) > 1:
        tables = [decode_dictionaries(t) for t in tables]
    return pa.concat_tables(tables)
