"""Calendar-true series: every row on its period of the spec's ``frequency``, one row per period.

The frequency (a pandas offset alias: ``W-MON``, ``W-THU``, ``D``, ``MS``, ``ME``...) defines
one calendar for every series. A timestamp is *on the calendar* when it is an anchor of that
frequency (a Monday at midnight for ``W-MON``); its *period* is the span from one anchor to the
next. Periods are numbered on one grid of anchors spanning the data, so period differences are
calendar distances, equal across series. Everything is one vectorised pass over all rows:
timestamps are located on the (small) grid of anchors with ``searchsorted``.

``regularize`` gives each series one row per period from its first to its last observation,
filling each column of an inserted row per the spec's ``calendar.fill`` rule. After it, a lag
of ``k`` rows is a lag of ``k`` periods, which is what ``features`` assumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from mlops_assets.ml.features import SeriesFrame, take_series
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.rules import Rule

OFF_CALENDAR_RULE = Rule.TIME_OFF_CALENDAR
DUPLICATE_PERIOD_RULE = Rule.TIME_DUPLICATE_PERIOD
_TIME_UNIT = "datetime64[us]"
_DAY = 86_400_000_000  # microseconds


def _is_end_anchored(offset: pd.DateOffset) -> bool:
    # MonthEnd, QuarterEnd, YearEnd...: a period is labelled by the anchor that closes it.
    return type(offset).__name__.endswith("End")


def anchor_grid(time: np.ndarray, frequency: str) -> np.ndarray:
    """Anchors of ``frequency`` covering every timestamp of ``time`` (plus one on each side).

    Read-only: grids are cached by range (every fold of a backtest asks for the same one).
    """
    ticks = np.asarray(time).astype(_TIME_UNIT).view(np.int64)
    return _anchor_grid(int(ticks.min()), int(ticks.max()), frequency)


@lru_cache(maxsize=256)
def _anchor_grid(lo_us: int, hi_us: int, frequency: str) -> np.ndarray:
    offset = to_offset(frequency)
    lo = pd.Timestamp(np.datetime64(lo_us, "us"))
    hi = pd.Timestamp(np.datetime64(hi_us, "us"))
    if isinstance(offset, pd.offsets.Tick):
        start, end = lo.floor(offset), hi.ceil(offset)
    else:
        start, end = offset.rollback(lo.normalize()), offset.rollforward(hi)
    grid = pd.date_range(start - offset, end + offset, freq=offset).to_numpy().astype(_TIME_UNIT)
    grid.flags.writeable = False
    return grid


@dataclass(frozen=True)
class Periods:
    """Where timestamps fall on the calendar.

    Attributes:
        grid: The anchors (``datetime64[us]``), ascending.
        period: Each timestamp's period, an index into ``grid``.
        on_calendar: Whether the timestamp is its period's anchor exactly.
    """

    grid: np.ndarray
    period: np.ndarray
    on_calendar: np.ndarray


def periods(time: np.ndarray, frequency: str) -> Periods:
    """Each timestamp's period on the calendar of ``frequency``, and whether it is on it.

    Dates (``datetime64[D]``, as a date column reads) are taken as they are: no conversion to
    microseconds and back, which costs more than the periods themselves on a large shard.
    """
    time = np.asarray(time)
    if len(time) == 0:
        empty = np.zeros(0, np.int64)
        return Periods(np.zeros(0, _TIME_UNIT), empty, np.zeros(0, bool))
    if time.dtype == np.dtype("datetime64[D]"):
        days = time.view(np.int64)
        lo, hi = int(days.min()), int(days.max())
        if hi - lo <= max(len(time), 1 << 16):
            return _by_day(days, lo, hi, frequency)
    time = time.astype(_TIME_UNIT)
    ticks = time.view(np.int64)
    lo, hi = int(ticks.min()), int(ticks.max())
    if (hi - lo) // _DAY <= max(len(time), 1 << 16) and lo % _DAY == 0:
        # Midnights only: whole days after a midnight (a division and a product by a
        # constant, several times faster than a remainder per row).
        after = ticks - lo
        days = after // _DAY
        if np.array_equal(days * _DAY, after):
            return _by_day(days, 0, (hi - lo) // _DAY, frequency, lo // _DAY)
    return _located(time, frequency)


def _by_day(days: np.ndarray, lo: int, hi: int, frequency: str, origin: int = 0) -> Periods:
    """``periods`` of whole days (day numbers from ``origin``, within ``[lo, hi]``) over a short
    range (dates: the usual case): each day of the range is located once and gathered, O(rows),
    instead of a binary search per row."""
    grid_days = np.arange(origin + lo, origin + hi + 1).astype("datetime64[D]")
    p = _located(grid_days.astype(_TIME_UNIT), frequency)
    day = days - lo if lo else days
    return Periods(p.grid, p.period[day], p.on_calendar[day])


def _located(time: np.ndarray, frequency: str) -> Periods:
    grid = anchor_grid(time, frequency)
    if _is_end_anchored(to_offset(frequency)):
        period = np.searchsorted(grid, time, side="left")
    else:
        period = np.searchsorted(grid, time, side="right") - 1
    return Periods(grid, period.astype(np.int64), grid[period] == time)


def distinct_times(time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(time)`` with the distinct timestamps ascending: each timestamp's code
    into them (NaT: -1). Whole days over a short range (dates: the usual case) are counted on a
    table of the range's days, a few vectorised passes with no hashing (several times faster
    on millions of rows); anything else is hashed."""
    time = np.asarray(time)
    unit = np.datetime_data(time.dtype)[0] if time.dtype.kind == "M" else ""
    per_day = {"D": 1, "s": 86_400, "ms": 86_400_000, "us": _DAY}.get(unit)
    if per_day is None or len(time) == 0:
        return _hashed(time)
    nat = np.isnat(time)
    any_nat = bool(nat.any())
    ticks = time.view(np.int64)
    valid = ticks[~nat] if any_nat else ticks
    if len(valid) == 0:
        return np.full(len(time), -1, np.int64), time[:0]
    lo, hi = int(valid.min()), int(valid.max())
    if (hi - lo) // per_day > max(len(time), 1 << 16):
        return _hashed(time)
    day = ticks - lo
    if per_day > 1:
        day //= per_day  # a division by a constant: several times faster than a remainder
    if any_nat:
        day[nat] = 0
    present = np.zeros((hi - lo) // per_day + 1, bool)
    present[day[~nat] if any_nat else day] = True
    codes = (np.cumsum(present) - 1)[day]
    distinct = lo + np.flatnonzero(present) * per_day
    if per_day > 1:  # whole days after the first time: each time is its code's day
        same = distinct[codes] == ticks
        if not (same[~nat] if any_nat else same).all():
            return _hashed(time)
    if any_nat:
        codes[nat] = -1
    return codes, distinct.view(time.dtype)


def _hashed(time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, distinct = pd.factorize(time, sort=True)
    return codes, np.asarray(distinct, time.dtype)


def off_calendar_rows(time: np.ndarray, frequency: str) -> np.ndarray:
    """Rows whose timestamp is not an anchor of ``frequency``: rule ``OFF_CALENDAR_RULE``."""
    return ~periods(time, frequency).on_calendar


def snap(time: np.ndarray, frequency: str) -> np.ndarray:
    """Each timestamp moved to its period's anchor (on-calendar ones stay as they are)."""
    p = periods(time, frequency)
    return p.grid[p.period]


def _series_of_rows(offsets: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def duplicate_period_rows(offsets: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Rows in the same period as the row before them in their series (time-ordered rows):
    rule ``DUPLICATE_PERIOD_RULE``. The first row of each period is kept."""
    dup = np.zeros(len(period), dtype=bool)
    if len(period) > 1:
        same_series = _series_of_rows(offsets)
        dup[1:] = (period[1:] == period[:-1]) & (same_series[1:] == same_series[:-1])
    return dup


@dataclass(frozen=True)
class Gaps:
    """Missing periods per series between its first and last row.

    Attributes:
        missing: Periods with no row, per series.
        longest: The longest run of consecutive missing periods, per series.
        span: Periods from the first to the last row, inclusive (0 for an empty series).
    """

    missing: np.ndarray
    longest: np.ndarray
    span: np.ndarray


def gaps(offsets: np.ndarray, period: np.ndarray) -> Gaps:
    """Missing periods of each series (rows time-ordered, one per period) as arrays."""
    n_series = len(offsets) - 1
    lengths = np.diff(offsets)
    nonempty = lengths > 0
    first = np.zeros(n_series, np.int64)
    last = np.full(n_series, -1, np.int64)
    first[nonempty] = period[offsets[:-1][nonempty]]
    last[nonempty] = period[offsets[1:][nonempty] - 1]
    span = last - first + 1
    step_gap = np.zeros(len(period), np.int64)  # missing periods just before each row
    step_gap[1:] = period[1:] - period[:-1] - 1
    step_gap[offsets[:-1][nonempty]] = 0
    longest = np.zeros(n_series, np.int64)
    if nonempty.any():  # reduceat over each nonempty series' rows (ufunc.at is ~10x slower)
        longest[nonempty] = np.maximum.reduceat(step_gap, offsets[:-1][nonempty])
    return Gaps(missing=span - lengths, longest=longest, span=span)


def gap_summary(gaps: Gaps, top: int = 10) -> tuple[dict, np.ndarray]:
    """Totals of ``gaps`` (series with gaps, missing periods, longest gap) and the indices of
    the ``top`` series with the most missing periods (worst first; only series with gaps)."""
    missing = np.maximum(gaps.missing, 0)  # rows sharing a period (not validated) count none
    worst = np.argsort(-missing, kind="stable")[:top]
    worst = worst[missing[worst] > 0]
    totals = {
        "series_with_gaps": int((missing > 0).sum()),
        "missing_periods": int(missing.sum()),
        "longest_gap": int(gaps.longest.max(initial=0)),
    }
    return totals, worst


def series_gaps(frame: SeriesFrame, frequency: str) -> Gaps:
    """``gaps`` of a frame's series on the calendar of ``frequency``."""
    return gaps(frame.offsets, periods(frame.time, frequency).period)


def apply_off_calendar(frame: SeriesFrame, spec: DatasetSpec) -> tuple[SeriesFrame, np.ndarray]:
    """The spec's off-calendar policy applied: snap the rows, or take them out.

    Returns:
        The frame with every row on the calendar, and the mask of input rows taken out
        (quarantined under ``OFF_CALENDAR_RULE``; all False when the spec says ``snap``).
    """
    off = off_calendar_rows(frame.time, spec.frequency)
    if spec.calendar.off_calendar == "snap":
        return _with(frame, np.ones(frame.n_rows, bool), snap(frame.time, spec.frequency)), off
    return _with(frame, ~off, frame.time), off


def _with(frame: SeriesFrame, keep: np.ndarray, time: np.ndarray) -> SeriesFrame:
    counts = np.bincount(_series_of_rows(frame.offsets)[keep], minlength=frame.n_series)
    return SeriesFrame(
        keys=frame.keys,
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        time=time[keep],
        target=frame.target[keep],
        exog={c: v[keep] for c, v in frame.exog.items()},
    )


def fill_rule(spec: DatasetSpec, column: str) -> str:
    """The spec's fill rule of a column for a missing period: zero, ffill or none."""
    fill = spec.calendar.fill
    return fill.get(column, fill.get("default", "none"))


@dataclass(frozen=True)
class Layout:
    """Where each row of a regular layout comes from.

    Attributes:
        offsets: Row boundaries of each series in the regular layout.
        time: The period anchor of each regular row.
        source: The input row of each regular row, -1 for an inserted (missing) period.
        last_source: The newest input row at or before each regular row (for ffill).
    """

    offsets: np.ndarray
    time: np.ndarray
    source: np.ndarray
    last_source: np.ndarray

    @property
    def observed(self) -> np.ndarray:
        """Whether each regular row was in the input."""
        return self.source >= 0


def regular_layout(
    offsets: np.ndarray, time: np.ndarray, frequency: str, p: Periods | None = None
) -> Layout:
    """One row per period from each series' first to last row (time-ordered rows on the
    calendar, at most one per period); ``p``: ``periods(time, frequency)`` if known.

    Raises:
        ValueError: A row is off the calendar, or two rows of a series share a period.
    """
    p = p if p is not None else periods(time, frequency)
    if not p.on_calendar.all():
        raise ValueError(
            f"{int((~p.on_calendar).sum())} rows are off the {frequency} calendar: "
            f"snap them or quarantine them ({OFF_CALENDAR_RULE}) first"
        )
    if duplicate_period_rows(offsets, p.period).any():
        raise ValueError(f"two rows of a series share a period ({DUPLICATE_PERIOD_RULE})")
    g = gaps(offsets, p.period)
    span = np.maximum(g.span, 0)
    new_offsets = np.concatenate([[0], np.cumsum(span)]).astype(np.int64)
    lengths = np.diff(offsets)
    # Row r of series s lands at new_offsets[s] + (period[r] - first period of s).
    series = _series_of_rows(offsets)
    first = p.period[offsets[:-1][lengths > 0]]
    first_of = np.zeros(len(lengths), np.int64)
    first_of[lengths > 0] = first
    target_row = new_offsets[series] + p.period - first_of[series]
    n = int(new_offsets[-1])
    source = np.full(n, -1, np.int64)
    source[target_row] = np.arange(len(time))
    # Each series' first regular row is observed, so the running max never crosses series.
    last_source = np.maximum.accumulate(np.where(source >= 0, source, -1)) if n else source
    within = np.arange(n) - np.repeat(new_offsets[:-1], span)
    grid_period = np.repeat(first_of, span) + within
    return Layout(new_offsets, p.grid[grid_period], source, last_source)


def fill_column(values: np.ndarray, layout: Layout, rule: str) -> np.ndarray:
    """A float column laid out regularly; an inserted row gets ``rule``'s value.

    ``zero``: 0; ``none``: NaN; ``ffill``: the newest finite value of the series before it.
    """
    out = np.full(len(layout.source), np.nan)
    observed = layout.observed
    out[observed] = values[layout.source[observed]]
    if rule == "zero":
        out[~observed] = 0.0
    elif rule == "ffill":
        n = len(out)
        finite_at = np.where(np.isfinite(out), np.arange(n), -1)
        newest = np.maximum.accumulate(finite_at) if n else finite_at
        series_start = np.repeat(layout.offsets[:-1], np.diff(layout.offsets))
        use = ~observed & (newest >= series_start)
        out[use] = out[newest[use]]
    elif rule != "none":
        raise ValueError(f"unknown fill rule {rule!r}: zero, ffill or none")
    return out


@dataclass(frozen=True)
class Regularized:
    """A frame with one row per period, which of its rows were observed, and the input row
    of each (-1 for an inserted period)."""

    frame: SeriesFrame
    observed: np.ndarray
    source: np.ndarray


def regularize(frame: SeriesFrame, spec: DatasetSpec, p: Periods | None = None) -> Regularized:
    """Each series as one row per period between its first and last row, filled per spec.

    The target and each exogenous column of an inserted row follow ``fill_rule``; with
    ``none`` the target is NaN, so the row keeps lags in step but is no training row.
    ``p``: ``periods(frame.time, spec.frequency)`` if known.

    Raises:
        ValueError: A row is off the calendar or two share a period (see ``regular_layout``).
    """
    layout = regular_layout(frame.offsets, frame.time, spec.frequency, p)
    out = SeriesFrame(
        keys=frame.keys,
        offsets=layout.offsets,
        time=layout.time,
        target=fill_column(frame.target, layout, fill_rule(spec, spec.target)),
        exog={c: fill_column(v, layout, fill_rule(spec, c)) for c, v in frame.exog.items()},
    )
    return Regularized(out, layout.observed, layout.source)


def future_times(frame: SeriesFrame, frequency: str, horizon: int) -> np.ndarray:
    """The ``horizon`` period anchors after each series' last row: ``[n_series, horizon]``.

    Raises:
        ValueError: A series has no row, or a last row is off the calendar.
    """
    if (np.diff(frame.offsets) == 0).any():
        raise ValueError("a series with no row has no next period")
    last = frame.time[frame.offsets[1:] - 1]
    p = periods(last, frequency)
    if not p.on_calendar.all():
        raise ValueError(f"a series ends off the {frequency} calendar")
    ahead = pd.date_range(pd.Timestamp(p.grid[-1]), periods=horizon + 1, freq=to_offset(frequency))
    grid = np.concatenate([p.grid, ahead[1:].to_numpy().astype(_TIME_UNIT)])
    return grid[p.period[:, None] + np.arange(1, horizon + 1)[None, :]]


@dataclass(frozen=True)
class CalendarSeries:
    """A frame's series on the calendar: the one layout training, evaluation and scoring use.

    Attributes:
        frame: The series that could be laid out, one row per period (the input frame itself,
            not a copy, when it was regular already).
        source: The input row of each row of ``frame``, -1 for an inserted period (None:
            ``frame`` is the input, or its rows of the ``kept`` series, row for row).
        kept: Index in the input frame of each series of ``frame``.
        invalid: Why each left-out series (by input index) could not be laid out.
    """

    frame: SeriesFrame
    source: np.ndarray | None
    kept: np.ndarray
    invalid: dict[int, str]


def calendar_series(frame: SeriesFrame, spec: DatasetSpec) -> CalendarSeries:
    """Each series regularized (``regularize``, the spec's fill rules), so that lags and
    rolling windows count periods; a series with a row off the calendar or two rows in one
    period is left out with its reason (validation quarantines or snaps such rows first).
    """
    p = periods(frame.time, spec.frequency)
    dup = duplicate_period_rows(frame.offsets, p.period)
    bad_rows = ~p.on_calendar | dup
    invalid: dict[int, str] = {}
    if bad_rows.any():
        series_of = _series_of_rows(frame.offsets)
        for s in np.unique(series_of[dup]):
            invalid[int(s)] = (
                f"duplicate timestamps in the series: two rows in one {spec.frequency} period "
                f"({DUPLICATE_PERIOD_RULE})"
            )
        for s in np.unique(series_of[~p.on_calendar]):
            invalid[int(s)] = (
                f"rows off the {spec.frequency} calendar ({OFF_CALENDAR_RULE}): validate the "
                "data (quarantine or snap them) before training or scoring"
            )
    keep = np.ones(frame.n_series, bool)
    keep[list(invalid)] = False
    rows = None
    if invalid:
        rows = np.flatnonzero(np.repeat(keep, np.diff(frame.offsets)))
        frame = take_series(frame, keep)
        p = Periods(p.grid, p.period[rows], p.on_calendar[rows])
    kept = np.flatnonzero(keep)
    if not gaps(frame.offsets, p.period).missing.any():
        return CalendarSeries(frame, None, kept, invalid)
    reg = regularize(frame, spec, p)
    source = reg.source if rows is None else np.where(reg.source >= 0, rows[reg.source], -1)
    return CalendarSeries(reg.frame, source, kept, invalid)
