"""Small Arrow helpers shared by ingestion, training and scoring."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.spec import DatasetSpec

# Values a Parquet writer encodes at a time (Arrow's default: 1,024). Column statistics are
# gathered once per batch, so on a dictionary or string key column they cost several times
# less in batches of 64K: a 2M-row piece of predictions encodes in 189 ms instead of 203, a
# 5M-row curated shard in 259 ms instead of 303. Pages still close at the data page size
# (1 MB), give or take one batch.
PARQUET_WRITE_BATCH = 1 << 16


def decode_dictionaries(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns as plain ones (for CSV writers and Spark)."""
    fields = [
        f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _plain_column(col):
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def series_ids(table: pa.Table, spec: DatasetSpec) -> pa.Array:
    """``spec.series_id`` of every row, vectorised: ``store=S0001/product=P001``."""
    parts = []
    for i, k in enumerate(spec.series_keys):
        col = pc.cast(_plain_column(table[k]), pa.string())
        parts.append(pc.binary_join_element_wise(("/" if i else "") + k, col, "="))
    out = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "")
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def series_fingerprints(table: pa.Table, spec: DatasetSpec) -> pa.Table:
    """Per series: rows, last time and a checksum of the target and features.

    Two trainings of a series saw the same data exactly when the fingerprints are equal, which
    is how a run retrains only the series whose data changed. Curated data is grouped by
    series already: then this is one pass over run boundaries, a column chunk at a time (no
    sort and no copy of a 40M-row column).
    """
    code = series_codes(table, spec.series_keys)
    n = len(code)
    if n == 0:
        return _fingerprints_by_sorting(table, spec)
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    if len(np.unique(code[starts])) != len(starts):  # not grouped: sort a copy
        return _fingerprints_by_sorting(table, spec)
    del code
    time_col = table[spec.time]
    timestamps = pa.types.is_timestamp(time_col.type)
    t = pc.cast(time_col, pa.int64() if timestamps else pa.int32())
    counts = np.diff(np.r_[starts, n])
    last = _run_reduce(t, starts, np.maximum, np.full(len(starts), np.iinfo(np.int64).min))
    parts = [counts.astype(str), last.astype(str)]
    for c in [spec.target, *spec.features.exogenous]:
        parts.append(_run_reduce(table[c], starts, np.add, np.zeros(len(starts))).astype(str))
    ends = pa.array(last, type=time_col.type if timestamps else pa.int32())
    if not timestamps:
        ends = ends.cast(pa.date32())
    return pa.table(
        {
            "series_id": series_ids(take_rows(table.select(spec.series_keys), starts), spec),
            "n_rows": pa.array(counts, pa.int64()),
            "data_end": pc.cast(ends, pa.string()),
            "data_fingerprint": pa.array(["|".join(p) for p in zip(*parts, strict=True)]),
        }
    ).sort_by("series_id")


def _run_reduce(col, starts: np.ndarray, ufunc, out: np.ndarray) -> np.ndarray:
    """``ufunc`` over each run of rows beginning at ``starts``, a column chunk at a time.

    Float columns are summed as ``round(value * 1000)`` with NaN as 0: integer terms, so the
    sums are exact in any order (and equal to a whole-column ``reduceat``).
    """
    a = 0
    for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
        b = a + len(chunk)
        if b == a:
            continue
        if out.dtype.kind == "f":
            v = pc.cast(chunk, pa.float64()).to_numpy(zero_copy_only=False)
            v = np.nan_to_num(v, nan=0.0) * 1000.0
            np.round(v, out=v)
        else:
            v = chunk.to_numpy(zero_copy_only=False).astype(np.int64)
        i0 = int(np.searchsorted(starts, a, side="right")) - 1
        i1 = int(np.searchsorted(starts, b, side="left"))
        local = np.r_[a, starts[i0 + 1 : i1]] - a
        out[i0:i1] = ufunc(out[i0:i1], ufunc.reduceat(v, local))
        a = b
    return out


def _fingerprints_by_sorting(table: pa.Table, spec: DatasetSpec) -> pa.Table:
    """``series_fingerprints`` of rows not grouped by series: sorts a copy first."""
    code = series_codes(table, spec.series_keys)
    order = None
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if len(code) else code
    if len(np.unique(code[starts])) != len(starts):  # not grouped: group it
        order = np.argsort(code, kind="stable")
        code = code[order]
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])

    def column(name: str, kind) -> np.ndarray:
        values = pc.cast(table[name], kind).to_numpy(zero_copy_only=False)
        return values if order is None else values[order]

    t = column(
        spec.time, pa.int64() if pa.types.is_timestamp(table[spec.time].type) else pa.int32()
    )
    counts = np.diff(np.r_[starts, len(code)])
    last = np.maximum.reduceat(t, starts) if len(starts) else t
    parts = [counts.astype(str), last.astype(str)]
    for c in [spec.target, *spec.features.exogenous]:
        v = np.array(column(c, pa.float64()), dtype=np.float64, copy=True)
        np.nan_to_num(v, copy=False, nan=0.0)  # in place: 40M-row columns, no temporaries
        v *= 1000.0
        np.round(v, out=v)
        parts.append(np.add.reduceat(v, starts).astype(str) if len(starts) else v.astype(str))
    first_rows = starts if order is None else order[starts]
    ends = pa.array(
        last,
        type=table[spec.time].type if pa.types.is_timestamp(table[spec.time].type) else pa.date32(),
    )
    return pa.table(
        {
            "series_id": series_ids(table.take(pa.array(first_rows)), spec),
            "n_rows": pa.array(counts, pa.int64()),
            "data_end": pc.cast(ends, pa.string()),
            "data_fingerprint": pa.array(["|".join(p) for p in zip(*parts, strict=True)]),
        }
    ).sort_by("series_id")


def series_codes(table: pa.Table, keys: list[str]) -> np.ndarray:
    """An int64 per row that orders rows like sorting by the key columns; equal keys, equal code.

    Works chunk by chunk on dictionary indices (Parquet's encoding of keys): no decoded
    strings and no temporaries the size of the table. Chunks that share a dictionary (those of
    one Parquet column usually do) are ranked once.
    """
    code = np.zeros(table.num_rows, dtype=np.int64)
    for k in keys:
        col = table[k]
        chunks = [
            c if pa.types.is_dictionary(c.type) else pc.dictionary_encode(c)
            for c in (col.chunks if isinstance(col, pa.ChunkedArray) else [col])
            if len(c)
        ]
        if not chunks:
            continue
        distinct: list[pa.Array] = []
        which = []
        for c in chunks:
            d = c.dictionary
            j = next((i for i, u in enumerate(distinct) if u is d or u.equals(d)), None)
            if j is None:
                distinct.append(d)
                j = len(distinct) - 1
            which.append(j)
        values = pc.unique(pa.concat_arrays(distinct))
        values = values.take(pc.array_sort_indices(values))  # sorted: codes order like keys
        ranks = [
            pc.index_in(d, value_set=values).to_numpy(zero_copy_only=False).astype(np.int64)
            for d in distinct
        ]
        a = 0
        for c, j in zip(chunks, which, strict=True):
            part = code[a : a + len(c)]
            part *= len(values)  # in place, a chunk at a time
            part += ranks[j][c.indices.to_numpy(zero_copy_only=False)]
            a += len(c)
    return code


def run_starts(table: pa.Table, keys: list[str]) -> np.ndarray:
    """The rows (row 0 first) whose key columns differ from the row before: where each run of
    equal keys starts. Dictionary chunks are compared by index, within a chunk, and by value
    across chunk edges: no codes and no decoded strings. A dictionary holding a value twice
    may start a run between equal keys (never miss one): callers checking that runs are
    distinct series then see a series twice and take their slower path."""
    n = table.num_rows
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
    for k in keys:
        col = table[k]
        chunks = [c for c in (col.chunks if isinstance(col, pa.ChunkedArray) else [col]) if len(c)]
        a, previous = 0, None
        for c in chunks:
            values = c.indices if pa.types.is_dictionary(c.type) else c
            v = values.to_numpy(zero_copy_only=False)
            change[a + 1 : a + len(c)] |= v[1:] != v[:-1]
            first = c[0].as_py()  # the value, whatever the chunk's dictionary
            if a and first != previous:
                change[a] = True
            previous = c[len(c) - 1].as_py()
            a += len(c)
    return np.flatnonzero(change)


def grouped_run_starts(table: pa.Table, keys: list[str]) -> np.ndarray | None:
    """``run_starts`` when each series' rows come together (no series starts twice), else
    None: only each run's first row is coded."""
    starts = run_starts(table, keys)
    distinct = len(np.unique(series_codes(take_rows(table, starts), keys)))
    return starts if distinct == len(starts) else None


def series_numbers(table: pa.Table, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's series number (series numbered in key order) and one row of each series.

    Rows sorted by key (an export by key, a curated shard) are numbered from their runs of
    equal keys, coding one row per run. Otherwise codes of dictionary-encoded keys, bounded
    by the dictionaries' sizes, number series with a count, not a sort of every row.
    """
    n = table.num_rows
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    sorted_runs = _sorted_runs(table, keys)
    if sorted_runs is not None:
        counts = np.diff(np.r_[sorted_runs, n])
        return np.repeat(np.arange(len(sorted_runs), dtype=np.int32), counts), sorted_runs
    code = series_codes(table, keys)
    top = int(code.max()) + 1
    if top <= 4 * n + 4096:
        present = np.flatnonzero(np.bincount(code, minlength=top))
        number = np.empty(top, np.int32 if len(present) < 2**31 else np.int64)
        number[present] = np.arange(len(present))
        series_of = number[code]
        del code
        row_of = np.empty(len(present), np.int64)
        block = 1 << 20  # any row of a series names it; aranges a block at a time
        for a in range(0, n, block):
            row_of[series_of[a : a + block]] = np.arange(a, min(a + block, n))
        return series_of, row_of
    _, row_of, series_of = np.unique(code, return_index=True, return_inverse=True)
    return series_of.ravel(), row_of


def _sorted_runs(table: pa.Table, keys: list[str]) -> np.ndarray | None:
    """Where each series' rows start, where the rows come sorted by key (each series one run,
    the runs in key order), else None. Rows in runs of fewer than two on average (shuffled
    rows, or a row per series) are left to the counting path: coding every run would cost
    more than it saves."""
    starts = run_starts(table, keys)
    if 2 * len(starts) > table.num_rows or len(starts) >= 2**31:
        return None
    code = series_codes(take_rows(table.select(keys), starts), keys)
    return starts if bool((code[1:] > code[:-1]).all()) else None


def keys_per_series(table: pa.Table, keys: list[str]) -> tuple[pa.Table, np.ndarray]:
    """The key columns of one row per series, and each row's series (ids are then built per
    series, not per row: a window holds millions of rows)."""
    series_of, first = series_numbers(table, keys)
    return take_rows(table.select(keys), first), series_of


def take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)`` for a few rows of a large, many-chunk table, chunk by chunk.

    Arrow's ``take`` on chunked columns first concatenates each column (a copy of the whole
    column, dictionaries unified) to pick a handful of rows.
    """
    rows = np.asarray(rows, dtype=np.int64)
    batches = table.to_batches()
    if len(batches) <= 1:
        return table.take(pa.array(rows))
    bounds = np.cumsum([0] + [b.num_rows for b in batches])
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    cuts = np.searchsorted(sorted_rows, bounds)
    parts = [
        pa.Table.from_batches([b.take(pa.array(sorted_rows[cuts[i] : cuts[i + 1]] - bounds[i]))])
        for i, b in enumerate(batches)
        if cuts[i + 1] > cuts[i]
    ]
    picked = pa.concat_tables(parts, promote_options="permissive") if parts else table.slice(0, 0)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return picked.take(pa.array(inverse))


def advance_fingerprints(previous: pa.Table, window: pa.Table, spec: DatasetSpec) -> pa.Table:
    """``series_fingerprints`` of whole series, from their ``previous`` fingerprints (series_id,
    n_rows, data_end, data_fingerprint) and a ``window`` of their recent rows: the rows dated
    after each series' previous ``data_end`` are added in (the checksums are sums, counts and a
    maximum, so adding is exact). Valid while no row up to ``data_end`` changed.

    Returns:
        One row per series of ``window`` that is in ``previous``, sorted by series id.
    """
    # Ids per series, not per row: a string per row of a 2M-row window costs more than the
    # rest of this.
    firsts, series_of = keys_per_series(window, spec.series_keys)
    ids = series_ids(firsts, spec)
    at_series = pc.index_in(ids, value_set=previous["series_id"])
    at = at_series.take(pa.array(series_of))
    known = pc.is_valid(at)
    time = window[spec.time]
    ends = pc.cast(previous["data_end"], time.type).take(at.fill_null(0))
    newer = pc.and_(known, pc.greater(time, ends))
    added = series_fingerprints(window.filter(newer), spec)
    seen_ids = pc.unique(ids.filter(pc.is_valid(at_series)))
    seen = previous.filter(pc.is_in(previous["series_id"], value_set=seen_ids))
    row = pc.index_in(seen["series_id"], value_set=added["series_id"])
    out_n, out_end, out_fp = [], [], []
    prev_fp = seen["data_fingerprint"].to_pylist()
    prev_n = seen["n_rows"].to_pylist()
    prev_end = seen["data_end"].to_pylist()
    add_fp = added["data_fingerprint"].to_pylist()
    add_n = added["n_rows"].to_pylist()
    add_end = added["data_end"].to_pylist()
    for i, j in enumerate(row.to_pylist()):
        if j is None:
            out_n.append(prev_n[i])
            out_end.append(prev_end[i])
            out_fp.append(prev_fp[i])
            continue
        a, b = prev_fp[i].split("|"), add_fp[j].split("|")
        sums = np.array([float(x) + float(y) for x, y in zip(a[2:], b[2:], strict=True)])
        parts = [str(int(a[0]) + int(b[0])), str(max(int(a[1]), int(b[1]))), *sums.astype(str)]
        out_n.append(prev_n[i] + add_n[j])
        out_end.append(add_end[j])
        out_fp.append("|".join(parts))
    return pa.table(
        {
            "series_id": seen["series_id"],
            "n_rows": pa.array(out_n, pa.int64()),
            "data_end": pa.array(out_end, pa.string()),
            "data_fingerprint": pa.array(out_fp, pa.string()),
        }
    ).sort_by("series_id")
