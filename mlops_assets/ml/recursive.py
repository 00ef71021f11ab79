"""Recursive prediction over ranges of whole series: the heart of ``scoring.score_table``.

Rows whose features are all known are predicted in one pass; a row that needs a target nobody
sent (the second period ahead, say) waits for the prediction of the period before it, which
fills that target; this repeats until no row can move. Each range of series is scored as one
``SeriesFrame``: each series' stored history tail, then its request rows.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from mlops_assets.ml.calendar import calendar_series
from mlops_assets.ml.features import SeriesFrame, feature_columns, feature_names, positions
from mlops_assets.ml.predict import (
    clip_to_bounds,
    fold_linear,
    predict_grouped,
    predict_rows,
    stack_linear,
)
from mlops_assets.ml.score_request import (
    GAP,
    INSUFFICIENT_HISTORY,
    MISSING_FEATURE,
    OFF_CALENDAR,
    RowErrors,
    SeriesModel,
    column_numbers,
    off_calendar_message,
)
from mlops_assets.ml.spec import DatasetSpec

INSERTED = -2  # the request row of a period laid out between rows that nobody sent


class SeriesRows:
    """The scorable rows grouped by series (in ``order``), read one range of series at a time.

    Targets and exogenous columns stay Arrow until a range is scored: a batch of tens of
    millions of rows is never copied whole into numpy, only each range of about a million.
    """

    def __init__(
        self,
        table: pa.Table,
        spec: DatasetSpec,
        order: np.ndarray | None,
        series_of: np.ndarray,
        time: np.ndarray,
        tails: dict[int, tuple[np.ndarray, np.ndarray]],
    ):
        """The rows ``order`` (None: all, as they came) of ``table``, grouped by series.

        Args:
            table: The request.
            spec: The dataset spec.
            order: Row numbers grouped by series then time, or None for all rows as they are.
            series_of: Series number of each request row.
            time: Period of each request row.
            tails: Per series number: (times, targets) of the history before its first row.
        """
        self.table, self.spec, self.order, self.identity = table, spec, order, order is None
        self.time, self.tails = time, tails
        grouped = series_of if order is None else series_of[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        self.present = grouped[starts]  # series numbers, in order
        self.bounds = np.r_[starts, len(grouped)]  # rows of present[i]: bounds[i]:bounds[i + 1]

    def ranges(self, max_rows: int) -> list[tuple[int, int]]:
        """Ranges of ``present`` of about ``max_rows`` rows (whole series, at least one)."""
        step = max(1, max_rows)
        cuts = np.searchsorted(self.bounds, np.arange(step, int(self.bounds[-1]), step))
        edges = np.unique(np.r_[0, cuts, len(self.present)])
        return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]

    def _numbers(self, name: str, rows) -> np.ndarray:
        if name not in self.table.column_names:
            n = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
            return np.full(n, np.nan)
        col = self.table[name]
        part = (
            col.slice(rows.start, rows.stop - rows.start)
            if isinstance(rows, slice)
            else (col.take(rows))
        )
        return column_numbers(part)

    def frame(self, i0: int, i1: int) -> tuple[SeriesFrame, np.ndarray, np.ndarray]:
        """Series ``present[i0:i1]`` as one frame: each one's tail rows, then its request rows,
        laid out on the calendar (``on_calendar``); the request row of each frame row (-1 for
        tail rows and inserted periods), and the request rows of series left out."""
        a, b = int(self.bounds[i0]), int(self.bounds[i1])
        rows: slice | np.ndarray = slice(a, b) if self.order is None else self.order[a:b]
        request_rows = np.arange(a, b) if isinstance(rows, slice) else rows
        present, bounds = self.present[i0:i1], self.bounds[i0 : i1 + 1] - a
        with_tail = [int(s) for s in present if int(s) in self.tails]
        tail_len = np.array([len(self.tails[s][0]) if s in self.tails else 0 for s in present])
        counts = np.diff(bounds)
        offsets = np.concatenate([[0], np.cumsum(counts + tail_len)]).astype(np.int64)
        # Each series' tail rows, then its request rows: request rows are shifted by the tails
        # of their series and of the series before them; tail rows fill the rest.
        is_request = np.ones(offsets[-1], bool)
        tail_pos = positions(np.concatenate([[0], np.cumsum(tail_len)]))  # 0..k-1 per tail
        is_request[np.repeat(offsets[:-1], tail_len) + tail_pos] = False

        def interleave(values: np.ndarray, tail_values: np.ndarray | float) -> np.ndarray:
            out = np.empty(offsets[-1], values.dtype)
            out[is_request] = values
            out[~is_request] = tail_values
            return out

        def tail_part(k: int) -> np.ndarray:
            parts = [self.tails[s][k] for s in with_tail]
            return np.concatenate(parts) if parts else np.zeros(0)

        frame = SeriesFrame(
            keys=[(int(s),) for s in present],
            offsets=offsets,
            time=interleave(self.time[rows], tail_part(0).astype(self.time.dtype)),
            target=interleave(self._numbers(self.spec.target, rows), tail_part(1)),
            exog={
                c: interleave(self._numbers(c, rows), np.nan) for c in self.spec.features.exogenous
            },
        )
        return on_calendar(frame, interleave(request_rows, -1), self.spec)


def on_calendar(
    frame: SeriesFrame, request_row: np.ndarray, spec: DatasetSpec
) -> tuple[SeriesFrame, np.ndarray, np.ndarray]:
    """Tail and request rows one row per period, as training lays series out
    (``calendar.calendar_series``, the spec's fill rules): a period missing between the
    history and the request, or between request rows, is filled per the spec.

    Returns:
        The frame, the request row of each of its rows (-1: tail; ``INSERTED``: a period
        nobody sent), and the request rows of series that cannot be laid out (a row off the
        calendar).
    """
    cal = calendar_series(frame, spec)
    left_out = np.zeros(0, np.int64)
    if cal.invalid:
        bad = np.zeros(frame.n_series, bool)
        bad[list(cal.invalid)] = True
        rows = request_row[np.repeat(bad, np.diff(frame.offsets))]
        left_out = rows[rows >= 0]
        if cal.source is None:
            request_row = request_row[np.repeat(~bad, np.diff(frame.offsets))]
    if cal.source is not None:
        request_row = np.where(cal.source >= 0, request_row[cal.source], INSERTED)
    return cal.frame, request_row, left_out


def _all_finite(columns: list[np.ndarray]) -> np.ndarray:
    ok = np.isfinite(columns[0])
    for col in columns[1:]:
        ok &= np.isfinite(col)
    return ok


def _known_features(predicted: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
    """``_all_finite(columns)`` from a linear prediction over them: a missing feature (NaN)
    makes the prediction NaN whatever its weight, so only rows predicted NaN or infinite (an
    overflow) have their features looked at. One pass over the rows, not one per feature."""
    known = np.isfinite(predicted)
    odd = np.flatnonzero(~known)
    if len(odd):
        known[odd] = _all_finite([c[odd] for c in columns])
    return known


def _predict_chunk(frame, model_of, request_row, pipelines, folded, spec):
    """Recursive prediction of one frame of whole series (its target is updated in place).

    Returns the values of every row (NaN where not predicted), and the request rows left
    unscored with the pattern of their missing features.
    """
    counts = np.diff(frame.offsets)
    # A period nobody sent whose target the spec leaves unknown (fill ``none``) is forecast
    # over, as the backtest forecasts every step after its origin: its prediction feeds the
    # lags of the rows after it but is not returned.
    pending = (request_row >= 0) | ((request_row == INSERTED) & np.isnan(frame.target))
    values = np.full(frame.n_rows, np.nan)
    columns = feature_columns(frame, spec)
    while pending.any():
        if folded is not None:
            got = predict_grouped(columns, model_of, counts, folded)
            ready = pending & _known_features(got, columns)
            if not ready.any():
                break
            values[ready] = got[ready]
        else:
            ready = pending & _all_finite(columns)
            if not ready.any():
                break
            rows = np.flatnonzero(ready)
            X = np.column_stack(columns)
            values[rows] = predict_rows(X, rows, np.repeat(model_of, counts), pipelines, None)
        values[ready] = clip_to_bounds(values[ready], spec)  # what is served feeds the lags
        fill = ready & np.isnan(frame.target)
        frame.target[fill] = values[fill]
        pending &= ~ready
        if not fill.any():
            break
        if pending.any():
            columns = feature_columns(frame, spec)
    left = np.flatnonzero(pending & (request_row >= 0))
    missing = np.column_stack([~np.isfinite(c[left]) for c in columns])
    # Rows behind a period nobody sent that could not be forecast over: the gap is why.
    stuck = pending & (request_row == INSERTED)
    series = np.repeat(np.arange(frame.n_series), counts)
    first_stuck = np.full(frame.n_series, frame.n_rows)
    np.minimum.at(first_stuck, series[stuck], np.flatnonzero(stuck))
    behind = left[left > first_stuck[series[left]]]
    return values, request_row[left], missing, request_row[behind]


def predict_recursive(
    rows: SeriesRows,
    models: list[SeriesModel | None],
    predicted: np.ndarray,
    spec: DatasetSpec,
    errors: RowErrors,
    chunk_rows: int,
) -> None:
    """Predict rows whose features are known; fill unknown targets with predictions; repeat.

    Series are independent, so this runs over ranges of whole series of about ``chunk_rows``
    rows: memory stays bounded, and two ranges run at once (numpy releases the GIL).

    Args:
        rows: The scorable rows, grouped by series.
        models: Each series number's model (None: none; its rows are not among ``rows``).
        predicted: Filled in place: the prediction of each request row.
        spec: The dataset spec.
        errors: Filled in place: rows whose features stay unknown.
        chunk_rows: About how many rows (of whole series) are scored at a time.
    """
    pipelines = [m.model if m is not None else None for m in models]
    stacked = stack_linear(pipelines)
    folded = fold_linear(stacked) if stacked is not None else None

    def one(bounds: tuple[int, int]):
        frame, request_row, left_out = rows.frame(*bounds)
        model_of = np.array([k[0] for k in frame.keys], dtype=np.int64)
        values, unscored, missing, behind_gap = _predict_chunk(
            frame, model_of, request_row, pipelines, folded, spec
        )
        done = (request_row >= 0) & np.isfinite(values)
        return request_row[done], values[done], unscored, missing, left_out, behind_gap

    ranges = rows.ranges(chunk_rows)
    workers = min(2, os.cpu_count() or 1, len(ranges))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done_rows, values, unscored, missing, left_out, behind_gap in pool.map(one, ranges):
            predicted[done_rows] = values
            _explain_unscored(unscored, missing, spec, errors)
            if len(behind_gap):
                errors.set(behind_gap, GAP, gap_message(spec))
            if len(left_out):
                errors.set(left_out, OFF_CALENDAR, off_calendar_message(spec))


def gap_message(spec: DatasetSpec) -> str:
    """Why a row behind periods nobody sent could not be scored."""
    return (
        "periods between the stored history and this row were not sent, and they could not "
        f"be forecast over: the spec's fill rules leave {spec.target!r} or an exogenous "
        f"column ({', '.join(spec.features.exogenous) or 'none'}) unknown there. Send those "
        "periods with their exogenous values (and targets where known)"
    )


def _explain_unscored(rows, missing, spec, errors) -> None:
    """One message per set of missing features, not one call per row."""
    if not len(rows):
        return
    names = feature_names(spec)
    patterns, which = np.unique(missing, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        cols = [names[j] for j in np.flatnonzero(pattern)]
        exog_missing = [c for c in cols if c in spec.features.exogenous]
        target_rows = rows[which.ravel() == p]
        if exog_missing:
            errors.set(
                target_rows, MISSING_FEATURE, f"feature(s) {exog_missing} missing or not numbers"
            )
        else:
            errors.set(
                target_rows,
                INSUFFICIENT_HISTORY,
                f"not enough history before this period for {cols}",
            )
