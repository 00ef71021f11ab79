import pyarrow as pa

from mlops_assets.curation import sort_and_dedupe
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
