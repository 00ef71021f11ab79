import numpy as np
import pyarrow as pa
import pytest

from mlops_assets.domain.merge import merge_sorted, sort_and_dedupe
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import decode_dictionaries

SPEC = load_spec("sales")


def test_sorted_unique_input_is_returned_as_is():
    table = decode_dictionaries(sales_table(SalesShape(4, 10)))
    out, replaced = sort_and_dedupe(table, SPEC)
    assert out is table and replaced == 0


def test_unsorted_input_is_sorted_and_the_later_of_equal_rows_wins():
    table = decode_dictionaries(sales_table(SalesShape(3, 5)))
    later = table.slice(2, 1).set_column(3, "sales", pa.array([999.0]))
    shuffled = pa.concat_tables([table.slice(7), table.slice(0, 7), later])
    out, replaced = sort_and_dedupe(shuffled, SPEC)
    assert replaced == 1 and out.num_rows == table.num_rows
    expected = table.set_column(
        3,
        "sales",
        pa.array([999.0 if i == 2 else v for i, v in enumerate(table["sales"].to_pylist())]),
    )
    assert out.equals(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_into_sorted_rows_equals_a_full_sort(seed):
    """Placing new rows by binary search gives exactly sort_and_dedupe of old + new: new
    periods, replaced periods, duplicates inside the new rows (the later wins), new series."""
    rng = np.random.default_rng(seed)
    old = decode_dictionaries(sales_table(SalesShape(6, 30, seed=seed)))
    more = decode_dictionaries(sales_table(SalesShape(8, 34, seed=seed + 10)))
    pick = rng.choice(more.num_rows, size=60, replace=True)  # repeats: duplicates in new
    new = more.take(pa.array(pick))
    new = new.set_column(3, "sales", pa.array(rng.normal(size=new.num_rows) + 1000))
    expected, expected_replaced = sort_and_dedupe(pa.concat_tables([old, new]), SPEC)
    merged, replaced = merge_sorted(old, new, SPEC)
    assert replaced == expected_replaced
    assert merged.equals(expected)


def test_merge_with_timestamps_too_wide_for_one_search_key():
    """Microsecond timestamps far apart: the per-series search path gives the same result."""
    t0 = 1_700_000_000_000_000
    old = pa.table(
        {
            "store": ["a", "a", "b"],
            "product": ["x", "x", "x"],
            "week": pa.array([t0, t0 + 10**15, t0], pa.timestamp("us")),
            "sales": [1.0, 2.0, 3.0],
        }
    )
    new = pa.table(
        {
            "store": ["a", "b", "c"],
            "product": ["x", "x", "x"],
            "week": pa.array([t0 + 10**15, -(4 * 10**18), t0], pa.timestamp("us")),
            "sales": [9.0, 8.0, 7.0],
        }
    )
    expected, n_expected = sort_and_dedupe(pa.concat_tables([old, new]), SPEC)
    merged, n = merge_sorted(old, new, SPEC)
    assert merged.equals(expected) and n == n_expected == 1
