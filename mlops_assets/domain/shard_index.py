"""A curated shard's series index: one row per series, and the shard's summary from it.

Columns: the series key columns (plain values), ``first`` and ``last`` (times of the series'
first and last rows), ``rows``, ``missing`` (periods without a row between first and last) and
``longest`` (the longest run of missing periods); rows in the shard's order (by series key).

A merge that appends rows after each of their series' last rows (``advanced``) updates the
index from the new rows alone, in O(series), and the shard's summary (rows, series, time range,
gaps: ``summary_of``) follows from the index: the same figures a pass over every row gives
(``index_of`` of the whole shard).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml import calendar
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import decode_dictionaries, series_codes, take_rows

COUNTS = ("rows", "missing", "longest")


def _micros(col) -> np.ndarray:
    """The times as numpy: dates as ``datetime64[D]`` (``calendar.periods`` takes them as they
    are), timestamps in microseconds."""
    if pa.types.is_date(col.type):
        return pc.cast(col, pa.date32()).to_numpy(zero_copy_only=False)
    return pc.cast(col, pa.timestamp("us")).to_numpy(zero_copy_only=False)


def _starts(table: pa.Table, spec: DatasetSpec, code: np.ndarray | None = None) -> np.ndarray:
    code = series_codes(table, spec.series_keys) if code is None else code
    if not len(code):
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, code[1:] != code[:-1]]).astype(np.int64)


def _keys(table: pa.Table, rows: np.ndarray, spec: DatasetSpec) -> pa.Table:
    return decode_dictionaries(take_rows(table.select(spec.series_keys), rows)).combine_chunks()


def index_of(table: pa.Table, spec: DatasetSpec, code: np.ndarray | None = None) -> pa.Table:
    """The index of rows sorted by series key then time (key and time columns suffice);
    ``code``: the rows' series codes, where known."""
    starts = _starts(table, spec, code)
    bounds = np.r_[starts, table.num_rows].astype(np.int64)
    time = table[spec.time]
    g = calendar.gaps(bounds, calendar.periods(_micros(time), spec.frequency).period)
    keys = _keys(table, starts, spec)
    ends = bounds[1:] - 1
    return pa.table(
        {
            **{k: keys[k] for k in spec.series_keys},
            "first": take_rows(pa.table({"t": time}), starts)["t"],
            "last": take_rows(pa.table({"t": time}), ends)["t"],
            "rows": pa.array(np.diff(bounds), pa.int64()),
            "missing": pa.array(g.missing, pa.int64()),
            "longest": pa.array(g.longest, pa.int64()),
        }
    )


def summary_of(index: pa.Table, spec: DatasetSpec, top: int = 10) -> dict:
    """The shard's summary: rows, series, time range and gaps (totals, the ``top`` worst)."""
    missing = index["missing"].to_numpy()
    longest = index["longest"].to_numpy()
    totals, worst = calendar.gap_summary(calendar.Gaps(missing, longest, missing * 0), top)
    firsts = index.select(spec.series_keys).take(pa.array(worst, pa.int64()))
    values = zip(*(firsts[k].to_pylist() for k in spec.series_keys), strict=True)
    ids = [spec.series_id(v) for v in values]
    first, last = pc.min(index["first"]).as_py(), pc.max(index["last"]).as_py()
    return {
        "rows": int(index["rows"].to_numpy().sum()),
        "series": index.num_rows,
        "time_min": str(first) if first is not None else None,
        "time_max": str(last) if last is not None else None,
        "gaps": {
            **totals,
            "worst": [
                [i, int(missing[w]), int(longest[w])] for i, w in zip(ids, worst, strict=True)
            ],
        },
    }


def advanced(index: pa.Table, rows: pa.Table, spec: DatasetSpec) -> pa.Table | None:
    """``index`` with ``rows`` (sorted by series key then time, unique) appended to their
    series; None when a row is not after every indexed row of its series."""
    if rows.num_rows == 0:
        return index
    keys = spec.series_keys
    starts = _starts(rows, spec)
    bounds = np.r_[starts, rows.num_rows].astype(np.int64)
    ends = bounds[1:] - 1
    new = _keys(rows, starts, spec)
    where = {t: i for i, t in enumerate(zip(*(index[k].to_pylist() for k in keys), strict=True))}
    at = np.array(
        [where.get(t, -1) for t in zip(*(new[k].to_pylist() for k in keys), strict=True)],
        dtype=np.int64,
    )
    old = at >= 0
    t_new = _micros(rows[spec.time])
    t_first, t_last = _micros(index["first"]), _micros(index["last"])
    if (t_new[starts[old]] <= t_last[at[old]]).any():
        return None  # lands at or before a curated row of its series: not an append
    # Periods on one grid: the new rows', then each old series' first and last.
    p = calendar.periods(np.concatenate([t_new, t_first, t_last]), spec.frequency).period
    n, m = rows.num_rows, index.num_rows
    p_new, p_first, p_last = p[:n], p[n : n + m], p[n + m :]
    step = np.zeros(n, np.int64)  # missing periods just before each new row
    step[1:] = p_new[1:] - p_new[:-1] - 1
    step[starts] = 0
    step[starts[old]] = p_new[starts[old]] - p_last[at[old]] - 1
    longest_new = np.maximum.reduceat(step, starts)
    count = np.diff(bounds)
    # Series indexed already: counts advanced, last row moved.
    rows_col = index["rows"].to_numpy().copy()
    missing = index["missing"].to_numpy().copy()
    longest = index["longest"].to_numpy().copy()
    i = at[old]
    rows_col[i] += count[old]
    missing[i] = (p_new[ends[old]] - p_first[i] + 1) - rows_col[i]
    longest[i] = np.maximum(longest[i], longest_new[old])
    last = np.array(t_last)
    last[i] = t_new[ends[old]]
    time_type = index.schema.field("last").type
    out = index.set_column(
        index.schema.get_field_index("last"), "last", pc.cast(pa.array(last), time_type)
    )
    for name, values in (("rows", rows_col), ("missing", missing), ("longest", longest)):
        out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, pa.int64()))
    if old.all():
        return out
    # Series new to the shard: their own rows only, then the index in key order again.
    fresh = ~old
    span = p_new[ends[fresh]] - p_new[starts[fresh]] + 1
    time = rows[spec.time]
    added = pa.table(
        {
            **{k: new[k].filter(pa.array(fresh)) for k in keys},
            "first": time.take(pa.array(starts[fresh])),
            "last": time.take(pa.array(ends[fresh])),
            "rows": pa.array(count[fresh], pa.int64()),
            "missing": pa.array(span - count[fresh], pa.int64()),
            "longest": pa.array(longest_new[fresh], pa.int64()),
        }
    )
    both = pa.concat_tables([out, added.cast(out.schema)])
    return both.sort_by([(k, "ascending") for k in keys])
