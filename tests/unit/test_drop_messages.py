"""Each drop message says what the file or row is and what to do (issue 16, item 5)."""

from __future__ import annotations

import gzip
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.curation import ingest, pending_drops
from mlops_assets.domain.ledger import DropLedger
from mlops_assets.domain.merge import merge_counted, sort_and_dedupe
from mlops_assets.ml.drops import ROW, DropRejected, parse_drop
from mlops_assets.ml.sample_data import SalesShape, sales_table, to_bytes
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.ml.validation.gate import DropGate
from mlops_assets.ml.validation.rows import RowCheck
from mlops_assets.storage import LocalStorage

SPEC = load_spec("sales")
AS_OF = date(2026, 11, 20)


def _csv(table: pa.Table | None = None) -> bytes:
    table = table if table is not None else decode_dictionaries(sales_table(SalesShape(3, 4)))
    return to_bytes(table, "csv")


def _rejected(name: str, data: bytes) -> DropRejected:
    with pytest.raises(DropRejected) as err:
        parse_drop(name, data, SPEC)
    return err.value


@pytest.mark.parametrize(
    ("data", "rule", "says"),
    [
        (gzip.compress(b"store,product\n"), "file.format", "gzip-compressed data"),
        (b"PK\x03\x04" + bytes(200), "file.format", "a ZIP archive (an .xlsx workbook is one)"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "file.format", "a PNG image"),
        (b"PAR1" + bytes(100) + b"PAR1", "file.format", "a Parquet file"),
        (bytes(range(256)) * 4, "file.format", "binary data, not text"),
    ],
)
def test_a_binary_file_is_named_for_what_it_is_not_a_text_encoding(data, rule, says):
    err = _rejected("landing/sales/week.csv", data)
    assert err.rule == rule
    assert "the file is not a CSV: it is " + says in err.message
    assert "UTF-16" not in err.message
    assert "it starts with" in err.message  # the evidence: the first bytes


def test_utf16_text_is_still_an_encoding_problem():
    text = "store,product,week,sales,price,promo\n"
    for data in (text.encode("utf-16"), text.encode("utf-16-le")):  # with and without a BOM
        err = _rejected("w.csv", data)
        assert err.rule == "file.encoding"
        assert "UTF-16 text" in err.message and "re-export it as UTF-8" in err.message


def test_a_parquet_name_on_csv_text_or_a_truncated_parquet_says_which():
    err = _rejected("w.parquet", _csv())
    assert err.rule == "file.format" and "not Parquet (no PAR1 magic number)" in err.message
    assert 'text starting \'"store","product"' in err.message and "name it .csv" in err.message
    whole = to_bytes(sales_table(SalesShape(3, 4)), "parquet")
    err = _rejected("w.parquet", whole[: len(whole) // 2])
    assert err.rule == "file.readable" and "truncated: it has no closing PAR1 footer" in err.message


@pytest.mark.parametrize(("ext", "codec"), [(".csv.gz", "gzip"), (".csv.zst", "zstd")])
def test_compressed_csv_drops_are_read(ext, codec):
    plain = _csv()
    packed = pa.compress(plain, codec=codec, asbytes=True)
    if codec == "gzip":
        packed = gzip.compress(plain)
    parsed = parse_drop(f"landing/sales/week{ext}", packed, SPEC)
    assert parsed.rows_in == 12 and parsed.rows_rejected == 0
    assert parsed.good.num_rows == parse_drop("w.csv", plain, SPEC).good.num_rows
    err = _rejected(f"w{ext}", plain)  # named compressed, but plain text
    assert err.rule == "file.readable"
    assert f"named as {codec}-compressed but is not a readable {codec} stream" in err.message
    assert '"store","product"' in err.message


def test_a_column_mismatch_lists_the_columns_found_and_case_insensitive_renames():
    table = decode_dictionaries(sales_table(SalesShape(3, 4)))
    cased = table.rename_columns(
        [c.capitalize() if c != "week" else " week " for c in table.column_names]
    )
    err = _rejected("w.csv", _csv(cased))
    assert err.rule == "schema.missing_column"
    assert "the file has ['Store', 'Product', ' week ', 'Sales', 'Price', 'Promo']" in err.message
    assert "differ only in case or spaces, rename them: 'Store' -> 'store'" in err.message
    assert "' week ' -> 'week'" in err.message
    assert err.rows == 12  # readable: its rows are known and quarantined with it


def test_every_failing_column_of_a_row_is_named():
    text = b"store,product,week,sales,price,promo\nS1,P1,2026-01-05,,,\nS1,P1,2026-01-12,1,2,1\n"
    parsed = parse_drop("w.csv", text, SPEC)
    assert parsed.rows_rejected == 1
    row = parsed.rejected.to_pylist()[0]
    assert (row["_rule"], row["_column"]) == ("not_null", "sales")  # the first, as before
    assert row["_message"].startswith("row 2, 3 columns fail: column 'sales': value None")
    for column in ("sales", "price", "promo"):
        assert f"column {column!r}: value None fails rule not_null" in row["_message"]


def test_drift_is_named_on_the_column_that_moved():
    """Sales x1000 while price's q10 is also a little outside its very narrow band: sorted by
    name, price q10 came first; the report names sales, by how much it moved."""
    rng = np.random.default_rng(0)
    weeks = np.repeat(np.arange(30) * 7 + 20000, 20).astype("int32")
    reference = pa.table(
        {
            "store": [f"S{i}" for i in range(20)] * 30,
            "product": ["P1"] * len(weeks),
            "week": pa.array(weeks, pa.int32()).cast(pa.date32()),
            "sales": rng.normal(50, 5, len(weeks)),
            "price": np.full(len(weeks), 5.0),
        }
    )
    n = 20
    drop = pa.table(
        {
            "store": [f"S{i}" for i in range(n)],
            "product": ["P1"] * n,
            "week": pa.array([date(2026, 1, 5)] * n, pa.date32()),
            "sales": rng.normal(50, 5, n) * 1000,
            "price": [4.0] * 3 + [5.0] * (n - 3),
            "promo": pa.array([0] * n, pa.int64()),
        }
    ).append_column(ROW, pa.array(np.arange(n, dtype=np.int64)))
    gate = DropGate(SPEC, AS_OF, reference=reference)
    empty = parse_drop("e.csv", _csv(), SPEC).rejected.slice(0, 0)
    with pytest.raises(DropRejected) as err:
        gate.check_drop("x1000.csv", RowCheck(n, drop, empty))
    failing = {f.rule for f in gate.reports["x1000.csv"].failures if f.severity == "error"}
    assert "drift.price.q10" in failing  # price is out of its band too ...
    assert err.value.rule == "drift.sales.mean" and err.value.column == "sales"  # ... but
    assert "column 'sales' moved: its mean is" in err.value.message
    assert "times the recent level" in err.value.message
    assert "also out of band: 'price'" in err.value.message
    # The checks and the ledger report the drop by the same failure, first.
    assert gate.reports["x1000.csv"].failures[0].message.startswith("column 'sales' moved")
    assert err.value.rows == n


@pytest.fixture()
def curated(tmp_path):
    storage = LocalStorage(root=str(tmp_path / "s"))
    table = decode_dictionaries(sales_table(SalesShape(4, 30)))
    storage.write_bytes("landing/sales/history.parquet", to_bytes(table, "parquet"))
    ingest(storage, SPEC, pending_drops(storage, SPEC), as_of=AS_OF)
    return storage, table


def _outcomes(storage) -> dict:
    return {o.drop.rsplit("/", 1)[-1]: o for o in DropLedger(storage, SPEC).all()}


def test_a_redelivered_file_is_recognised_as_duplicates_with_their_count(curated):
    storage, table = curated
    # Bands so narrow that any drop of old rows would be quarantined as drift if compared.
    spec = SPEC.model_copy(deep=True)
    spec.validation.drift.warn_sigmas, spec.validation.drift.error_sigmas = 0.001, 0.002
    from mlops_assets.domain.ingest_run import make_gate

    storage.write_bytes("landing/sales/old_again.csv", to_bytes(table.slice(0, 50), "csv"))
    ingest(storage, spec, pending_drops(storage, spec), gate=make_gate(storage, spec, AS_OF))
    again = _outcomes(storage)["old_again.csv"]
    assert again.status == "duplicate" and again.rows_duplicate == 50 and again.rows_curated == 0
    assert "all 50 rows are curated already with the same values (a re-delivery)" in again.message
    assert not again.rules and again.quarantine is None  # not drift, not quarantined

    changed = table.slice(50, 10)
    changed = changed.set_column(3, "sales", pc.add(changed["sales"], 1.0))
    mixed = pa.concat_tables([table.slice(60, 30), changed])
    storage.write_bytes("landing/sales/mixed.parquet", to_bytes(mixed, "parquet"))
    result = ingest(storage, SPEC, pending_drops(storage, SPEC), as_of=AS_OF)
    mixed = _outcomes(storage)["mixed.parquet"]
    assert (mixed.rows_duplicate, mixed.rows_curated, mixed.rows_replaced) == (30, 10, 10)
    assert mixed.status == "ingested"
    assert "30 of 40 rows are curated already with the same values" in mixed.message
    assert result.merge.rows_replaced == 10


def test_a_file_quarantined_whole_records_the_rows_it_read(curated):
    storage, table = curated
    storage.write_bytes(
        "landing/sales/wide.csv",
        to_bytes(table.slice(0, 7).append_column("x", pa.array([1] * 7)), "csv"),
    )
    storage.write_bytes("landing/sales/broken.parquet", b"PAR1 not really")
    ingest(storage, SPEC, pending_drops(storage, SPEC), as_of=AS_OF)
    got = _outcomes(storage)
    assert (got["wide.csv"].rows_in, got["wide.csv"].rows_quarantined) == (7, 7)
    assert got["broken.parquet"].rows_in is None  # unreadable: its rows are unknown
    assert got["broken.parquet"].status == "quarantined"


def test_rows_replaced_is_counted_per_drop(curated):
    storage, table = curated
    first = table.slice(0, 20)
    first = first.set_column(3, "sales", pc.add(first["sales"], 1.0))
    second = table.slice(10, 20)  # 10 rows of the first drop again, 10 curated ones
    second = second.set_column(3, "sales", pc.add(second["sales"], 2.0))
    storage.write_bytes("landing/sales/a.parquet", to_bytes(first, "parquet"))
    storage.write_bytes("landing/sales/b.parquet", to_bytes(second, "parquet"))
    result = ingest(storage, SPEC, pending_drops(storage, SPEC), as_of=AS_OF)
    got = _outcomes(storage)
    # a replaces curated rows 0-9 (its rows 10-19 are replaced in turn by b's); b replaces
    # curated rows 10-29 and a's rows 10-19.
    assert got["a.parquet"].rows_replaced == 10 and got["b.parquet"].rows_replaced == 30
    assert result.merge.rows_replaced == 40 == result.merge.rows_replaced
    assert CuratedStore(storage, SPEC).read().num_rows == table.num_rows


@pytest.mark.parametrize("n_new", [60, 2_000])  # binary-search path, and the full re-sort
def test_merge_counts_replacements_per_new_row(n_new):
    rng = np.random.default_rng(n_new)
    old = decode_dictionaries(sales_table(SalesShape(6, 30)))
    more = decode_dictionaries(sales_table(SalesShape(8, 34, seed=3)))
    new = more.take(pa.array(rng.choice(more.num_rows, size=n_new, replace=True)))
    merged, per_row = merge_counted(old, new, SPEC)
    expected, total = sort_and_dedupe(pa.concat_tables([old, new]), SPEC)
    assert merged.equals(expected) and int(per_row.sum()) == total
    assert len(per_row) == n_new and (per_row >= 0).all()
