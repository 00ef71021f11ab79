"""Sorting and merging curated rows: unique on (series key, time), a later row wins."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import series_codes

# Up to this many new rows a merge places them one by one and splices slices of the old rows.
FEW_ROWS = 50_000


def _time_ints(col: pa.ChunkedArray) -> np.ndarray:
    return (
        pc.cast(col, pa.int64() if pa.types.is_timestamp(col.type) else pa.int32())
        .to_numpy(zero_copy_only=False)
        .astype(np.int64)
    )


def dedupe_counted(
    table: pa.Table, spec: DatasetSpec, code: np.ndarray | None = None
) -> tuple[pa.Table, np.ndarray, slice | np.ndarray]:
    """``sort_and_dedupe``, with how many rows each row of ``table`` replaced (its run of equal
    (key, time) rows less one for the last of a run, which is kept; 0 for the others), and
    which rows of ``table`` the result holds, in its order. ``code``: the rows' series codes
    (``series_codes``, or any integers that order rows like their keys), where known."""
    replaced = np.zeros(table.num_rows, dtype=np.int64)
    if table.num_rows == 0:
        return table, replaced, slice(None)
    code = series_codes(table, spec.series_keys) if code is None else code
    t = _time_ints(table[spec.time])
    # A first load arrives sorted and unique already (drops are written in key order): then
    # there is nothing to move, and a 40M-row sort and gather are skipped.
    if bool(np.all((code[1:] > code[:-1]) | ((code[1:] == code[:-1]) & (t[1:] > t[:-1])))):
        return table, replaced, slice(None)
    order = np.lexsort((np.arange(table.num_rows), t, code))
    code, t = code[order], t[order]
    last_of_run = np.ones(len(order), dtype=bool)
    last_of_run[:-1] = (code[1:] != code[:-1]) | (t[1:] != t[:-1])
    keep = order[last_of_run]
    ends = np.flatnonzero(last_of_run)
    replaced[keep] = np.diff(ends, prepend=-1) - 1
    return table.take(pa.array(keep)), replaced, keep


def sort_and_dedupe(table: pa.Table, spec: DatasetSpec) -> tuple[pa.Table, int]:
    """Sort by (key, time); of rows with equal (key, time), keep the last one in table order.

    Returns the table and how many rows were replaced by a later one.
    """
    out, replaced, _ = dedupe_counted(table, spec)
    return out, int(replaced.sum())


def _search_sorted_pairs(code: np.ndarray, t: np.ndarray, c: np.ndarray, v: np.ndarray):
    """For each (c, v), its insertion point in rows sorted by (code, t): per row within the
    row's series for a few rows (no pass over the old rows), else one searchsorted on a
    combined key when it fits in int64."""
    if len(c) > FEW_ROWS:
        pos = _search_combined(code, t, c, v)
        if pos is not None:
            return pos
    lo, hi = np.searchsorted(code, c, "left"), np.searchsorted(code, c, "right")
    pos = lo.copy()
    for j in np.flatnonzero(hi > lo):
        pos[j] = lo[j] + np.searchsorted(t[lo[j] : hi[j]], v[j])
    return pos


def _search_combined(code: np.ndarray, t: np.ndarray, c: np.ndarray, v: np.ndarray):
    lo_t = min(int(t.min()), int(v.min()))
    span = max(int(t.max()), int(v.max())) - lo_t + 1
    top = max(int(code.max()), int(c.max())) + 1
    if top * span < (1 << 62):
        return np.searchsorted(code * span + (t - lo_t), c * span + (v - lo_t))
    return None


def _spliced(
    old: pa.Table, new: pa.Table, order: np.ndarray, pos: np.ndarray, replaces: np.ndarray
) -> pa.Table:
    """``old`` with the rows ``new[order]`` inserted before old rows ``pos`` (ascending), each
    replacing that old row where ``replaces``: slices of ``old`` around the insertion points,
    not a gather of every row (a daily drop into a 5M-row shard copies nothing)."""
    ins = new.take(pa.array(order))
    pieces, prev, j = [], 0, 0
    while j < len(pos):
        k = j
        while k + 1 < len(pos) and pos[k + 1] == pos[j]:
            k += 1
        pieces.append(old.slice(prev, int(pos[j]) - prev))
        pieces.append(ins.slice(j, k - j + 1))
        prev = int(pos[j]) + int(replaces[k])  # only the last of a run can match the old row
        j = k + 1
    pieces.append(old.slice(prev))
    return pa.concat_tables([p for p in pieces if p.num_rows] or [old.slice(0, 0)])


def merge_sorted(old: pa.Table, new: pa.Table, spec: DatasetSpec) -> tuple[pa.Table, int]:
    """``merge_counted`` with the replaced rows counted in all."""
    merged, replaced = merge_counted(old, new, spec)
    return merged, int(replaced.sum())


def merge_counted(old: pa.Table, new: pa.Table, spec: DatasetSpec) -> tuple[pa.Table, np.ndarray]:
    """``merge_restating`` without the restated time."""
    merged, replaced, _ = merge_restating(old, new, spec)
    return merged, replaced


def merge_restating(
    old: pa.Table, new: pa.Table, spec: DatasetSpec
) -> tuple[pa.Table, np.ndarray, int | None]:
    """``sort_and_dedupe(concat(old, new))`` when ``old`` is already sorted and unique on
    (key, time), as a curated shard is: only the new rows are sorted, and they are placed by
    binary search (a daily drop into 40M curated rows moves no old row but to copy it).

    Returns the merged table and, per row of ``new``, how many rows it replaced (an old row
    and earlier rows of ``new`` with its (key, time); 0 for a row replaced itself), so the
    replacements can be told per drop; and the earliest time (the time column as an integer)
    at which a new row restates its series (lands before one of its curated rows), else None.
    """
    n_old, n_new = old.num_rows, new.num_rows
    if n_old == 0 or n_new > max(1_000_000, n_old // 4):
        merged, replaced, _ = dedupe_counted(pa.concat_tables([old, new]), spec)
        restated = None
        if n_old and n_new:  # conservatively: any new row not after every curated row
            t_new, latest = _time_ints(new[spec.time]), int(_time_ints(old[spec.time]).max())
            early = t_new[t_new <= latest]
            restated = int(early.min()) if len(early) else None
        return merged, replaced[n_old:], restated  # old rows are unique: runs end in new rows
    both = pa.concat_tables([old, new])
    code = series_codes(both, spec.series_keys)
    t = _time_ints(both[spec.time])
    co, to, cn, tn = code[:n_old], t[:n_old], code[n_old:], t[n_old:]
    order = np.lexsort((np.arange(n_new), tn, cn))  # new rows by (key, time), later wins
    cn, tn = cn[order], tn[order]
    last = np.ones(n_new, dtype=bool)
    last[:-1] = (cn[1:] != cn[:-1]) | (tn[1:] != tn[:-1])
    run = np.diff(np.flatnonzero(last), prepend=-1)  # new rows per (key, time)
    order, cn, tn = order[last], cn[last], tn[last]
    pos = _search_sorted_pairs(co, to, cn, tn)
    at = np.minimum(pos, n_old - 1)
    replaces = (pos < n_old) & (co[at] == cn) & (to[at] == tn)
    replaced = np.zeros(n_new, dtype=np.int64)
    replaced[order] = run - 1 + replaces
    # A new row lands before a curated row of its own series: it restates (replaces or fills
    # in) a period its series had curated rows after, which incremental fits must not miss.
    inside = (pos < n_old) & (co[at] == cn)
    restated = int(tn[inside].min()) if inside.any() else None
    if len(order) <= FEW_ROWS:
        return _spliced(old, new, order, pos, replaces), replaced, restated
    rows = np.insert(np.arange(n_old), pos, n_old + order)  # new rows before old row pos
    dropped = np.zeros(n_old + n_new, dtype=bool)
    dropped[pos[replaces]] = True  # the old row a new one replaces comes right after it
    rows = rows[~dropped[rows]]
    return both.take(pa.array(rows)), replaced, restated
