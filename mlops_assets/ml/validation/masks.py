"""Row-level expectation configurations compiled to vectorised pyarrow/numpy row masks.

GX itself runs at ~1.2M rows/s per process; these masks reach the throughput target and count
exactly the rows GX counts as unexpected (``tests/unit/test_validation_suite.py`` runs the same
suite through both). A null value passes every value rule, as in GX: it is ``not_null``'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.ml.validation.suite import ROW_TYPES, as_datetime

# (rule, column, mask of failing rows)
MaskFailure = tuple[str, str, np.ndarray]


def to_numpy(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)


def filled(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A pyarrow boolean result as numpy, nulls (null input values) counted as passing."""
    return to_numpy(pc.fill_null(mask, False)).astype(bool, copy=False)


def _scalar_for(col: pa.ChunkedArray, value):
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        value = as_datetime(value)
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
    return filled(bad)


def _missing(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Null values, and NaN in a float column (GX reads both as a pandas null)."""
    return pc.is_null(col, nan_is_null=True) if pa.types.is_floating(col.type) else pc.is_null(col)


def _not_null(table: pa.Table, kw: dict) -> np.ndarray:
    return filled(_missing(table[kw["column"]]))


def _in_set(table: pa.Table, kw: dict) -> np.ndarray:
    col = table[kw["column"]]
    value_type = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    values = pa.array(kw["value_set"])
    if values.type != value_type:
        values = pc.cast(values, value_type)
    outside = pc.invert(pc.is_in(col, value_set=values))
    return filled(pc.and_(outside, pc.invert(_missing(col))))


def _regex(table: pa.Table, kw: dict, negate: bool = False) -> np.ndarray:
    match = pc.match_substring_regex(table[kw["column"]], kw["regex"])
    return filled(match if negate else pc.invert(match))


def _lengths(table: pa.Table, kw: dict) -> np.ndarray:
    n = pc.utf8_length(table[kw["column"]])
    return _between(pa.table({"n": n}), {**kw, "column": "n"})


def _column_set(table: pa.Table, kw: dict) -> np.ndarray:
    # A column-set mismatch is a file-level problem (parse_drop raises DropRejected first).
    return np.zeros(table.num_rows, dtype=bool)


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Each row's value as an integer code (equal values, equal codes; a null, a code of its
    own) and the number of codes."""
    enc = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_dictionary(enc.type):
        enc = pc.dictionary_encode(enc)
    size = len(enc.dictionary)
    codes = to_numpy(pc.fill_null(enc.indices, size)).astype(np.int64, copy=False)
    # A dictionary may hold one value at two indices (Arrow does not forbid it): code values.
    ranks = _dictionary_ranks(enc.dictionary, {})
    ranks = np.arange(size) if ranks is None else ranks.astype(np.int64)
    return np.append(ranks, size)[codes], size + 1


def _order_keys(col: pa.ChunkedArray | pa.Array, ranked: dict | None = None) -> np.ndarray | None:
    """Integers ordered as ``col``'s values are (equal values, equal integers), or None where
    the column has nulls. Text is ranked through its dictionary, so comparing rows costs two
    integer arrays, not two columns of strings; a dictionary already in order (as an export
    sorted by key reads: values in order of first appearance) gives its indices themselves.
    Numbers and dates are viewed in place, not copied. ``ranked`` keeps each dictionary's
    ranks for the caller's next block of the same column (``_dictionary_ranks``)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        return None
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.dictionary_encode(arr)
    if pa.types.is_dictionary(arr.type):
        if arr.dictionary.null_count:
            return None
        index = to_numpy(arr.indices)  # no nulls: a view of the indices
        ranks = _dictionary_ranks(arr.dictionary, {} if ranked is None else ranked)
        return index if ranks is None else ranks.astype(index.dtype)[index]
    if pa.types.is_date32(arr.type) or pa.types.is_time32(arr.type):
        return to_numpy(arr.view(pa.int32()))
    if any(is_(arr.type) for is_ in _INT64_TIMES):
        return to_numpy(arr.view(pa.int64()))
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return to_numpy(arr)  # a NaN compares unequal and unordered: not proven, as it should
    return None


def _dictionary_ranks(dictionary: pa.Array, ranked: dict) -> np.ndarray | None:
    """Dense ranks of a dictionary's values (it may hold one value at two indices); None where
    they are its indices already (sorted, each value once). Kept in ``ranked`` under the
    dictionary's buffers, with the dictionary itself (so no other array takes those buffers
    while the entry lives): the blocks of one column share them, and a dictionary of a million
    keys is ranked once, not once per block."""
    buffers = tuple(b.address if b is not None else 0 for b in dictionary.buffers())
    key = (*buffers, dictionary.offset, len(dictionary))
    if key not in ranked:
        ranks = to_numpy(pc.rank(dictionary, tiebreaker="dense")) - 1
        ranked[key] = (dictionary, None if np.array_equal(ranks, np.arange(len(ranks))) else ranks)
    return ranked[key][1]


_INT64_TIMES = (pa.types.is_timestamp, pa.types.is_date64, pa.types.is_time64, pa.types.is_duration)
_ORDER_BLOCK = 1 << 20  # rows compared at a time: no key or mask the size of the drop


def strictly_increasing(table: pa.Table, cols: list[str]) -> bool:
    """Whether rows are strictly increasing in ``cols`` (lexicographically): then unique.

    Compared a block of rows at a time, each block overlapping the next by one row (so every
    adjacent pair is compared within one block, whose keys are ranked together): a 40M-row
    drop costs no array of its size, only the blocks'. False where it cannot tell (a null key,
    a column type without an integer order): the caller then counts keys instead."""
    n = table.num_rows
    ranked: dict = {}  # dictionary ranks, kept across blocks
    for start in range(0, n - 1, _ORDER_BLOCK):
        block = table.slice(start, _ORDER_BLOCK + 1)
        after = np.zeros(block.num_rows - 1, dtype=bool)  # ordered by an earlier column
        undecided = np.ones(block.num_rows - 1, dtype=bool)
        for c in cols:
            k = _order_keys(block[c], ranked)
            if k is None:
                return False
            a, b = k[:-1], k[1:]
            after |= undecided & (a < b)
            undecided &= a == b
        if not after.all():
            return False
    return True


def _unique(table: pa.Table, kw: dict) -> np.ndarray:
    """Rows sharing their compound key with another row (every copy is flagged, as GX does).

    This is the one duplicate-key check: ingestion quarantines every copy, since inside one
    drop there is no later row to prefer.
    """
    cols = kw["column_list"]
    n = table.num_rows
    # Drops usually arrive sorted: one pass proves it (and stops at the first block that is not).
    if n < 2 or strictly_increasing(table, cols):
        return np.zeros(n, dtype=bool)
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
assert set(ROW_EVALUATORS) == ROW_TYPES, "every row-level expectation type needs a mask"


def row_failures(
    table: pa.Table, configs: list[dict], workers: int | None = None
) -> list[MaskFailure]:
    """Evaluate row-level expectation configs on ``table``: [(rule, column, mask)], in order.

    Each expectation's mask is computed in a thread pool (pyarrow and numpy kernels release the
    GIL), so a large drop uses every core. Configs whose columns ``table`` lacks are skipped (a
    scoring drop may come without its target).
    """
    have = set(table.column_names)
    configs = [c for c in configs if set(columns_of(c["kwargs"])) <= have]
    if not configs:
        return []
    workers = workers or os.cpu_count() or 1

    def one(c: dict) -> MaskFailure | None:
        kw = c["kwargs"]
        mask = ROW_EVALUATORS[c["type"]](table, kw)
        if not mask.any():
            return None
        column = kw.get("column") or (kw.get("column_list") or [None])[-1]
        return c["meta"]["rule"], column, mask

    with ThreadPoolExecutor(max_workers=min(workers, len(configs))) as pool:
        results = list(pool.map(one, configs))
    return [r for r in results if r is not None]


def columns_of(kw: dict) -> list[str]:
    """The columns an expectation's kwargs name."""
    return [kw["column"]] if "column" in kw else list(kw.get("column_list", []))
