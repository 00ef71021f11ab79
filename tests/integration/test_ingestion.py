"""Ingestion of landed drops into the curated dataset, on a local folder and on Azurite."""

import json

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from as_of import as_of_instance

from mlops_assets.assets.ingestion import build_ingestion_asset
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.curation import ingest, pending_drops
from mlops_assets.domain.ledger import DropLedger
from mlops_assets.domain.sample_drops import land_bad, land_sales
from mlops_assets.ml.sample_data import SalesShape, sales_table, to_bytes
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import LocalStorage

pytestmark = pytest.mark.integration

SALES = load_spec("sales")
PARTITION = "2026-11-17"


@pytest.fixture(params=["local", pytest.param("azurite", marks=pytest.mark.azurite)])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(root=str(tmp_path / "storage"))
    return request.getfixturevalue("blob_storage")


def materialize(storage, expect_checks_pass=True):
    result = dg.materialize(
        [build_ingestion_asset(SALES)],
        resources={"storage": storage},
        partition_key=PARTITION,
        instance=as_of_instance(SALES, PARTITION),
        raise_on_error=False,
    )
    # Bad data curates what is good; the blocking checks fail (with ERROR) only when more was
    # quarantined than the spec's validation.max_quarantined_share; good data passes them.
    assert result.success == expect_checks_pass
    mats = result.asset_materializations_for_node("sales__curated")
    return {k: v.value for k, v in mats[0].metadata.items()}


def curated_rows(storage):
    return CuratedStore(storage, SALES).read()


def test_drops_become_one_typed_sorted_dataset(storage):
    land_sales(storage, SALES, SalesShape(12, 40), n_drops=3)
    meta = materialize(storage)

    assert meta["drops_consumed"] == 3
    assert meta["dagster/row_count"] == meta["rows_curated"] == 12 * 40
    assert meta["series"] == 12
    assert (meta["time_min"], meta["time_max"]) == ("2026-02-16", "2026-11-16")
    table = curated_rows(storage)
    # Series keys are read back dictionary-encoded (as Parquet stores them); values typed.
    assert decode_dictionaries(table).schema.equals(SALES.arrow_schema)
    assert pa.types.is_dictionary(table.schema.field("store").type)
    # Each shard holds whole series, sorted by key then time, with no repeated (key, time).
    store = CuratedStore(storage, SALES)
    seen = set()
    for name in store.shard_names():
        shard = store.read_shard(name).to_pandas()
        keys = list(zip(shard.store, shard["product"], shard.week, strict=True))
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)
        series = set(zip(shard.store, shard["product"], strict=True))
        assert not series & seen, "a series must live in exactly one shard"
        seen |= series
    assert len(seen) == 12


def test_reingesting_a_drop_never_duplicates_rows_and_later_drop_wins(storage):
    land_sales(storage, SALES, SalesShape(5, 20), n_drops=2)
    materialize(storage)
    before = curated_rows(storage)

    # The same last week again, corrected: a new drop version with new values.
    week = pc.max(before["week"])
    table = curated_rows(storage).filter(pc.equal(before["week"], week))
    corrected = table.set_column(3, "sales", pc.add(table["sales"], 0.5))
    storage.write_bytes("landing/sales/week_2026-11-16.parquet", to_bytes(corrected, "parquet"))
    meta = materialize(storage)

    after = curated_rows(storage)
    assert after.num_rows == before.num_rows
    assert meta["drops_consumed"] == 1 and meta["rows_replaced"] == 5
    assert meta["shards_appended"] == 0 and meta["shards_rewritten"] >= 1  # a restatement
    latest = after.filter(pc.equal(after["week"], week))
    assert latest["sales"].equals(corrected["sales"])

    # Nothing new landed: the next run consumes nothing and changes nothing.
    meta = materialize(storage)
    assert meta["drops_consumed"] == 0
    assert curated_rows(storage).equals(after)


def test_a_new_week_is_appended_to_the_shards(storage):
    """The daily case: a week after every curated row is a delta file per shard (the shards'
    bases are not rewritten), and the dataset reads back as one merge of all the rows."""
    land_sales(storage, SALES, SalesShape(6, 20, end="2026-11-09"), n_drops=1)
    materialize(storage)
    full = sales_table(SalesShape(6, 21, end="2026-11-16"))
    week = full.filter(pc.equal(full["week"], pc.max(full["week"])))
    storage.write_bytes("landing/sales/week_2026-11-16.parquet", to_bytes(week, "parquet"))
    meta = materialize(storage)
    assert meta["shards_appended"] >= 1 and meta["shards_rewritten"] == 0
    assert meta["rows_curated"] == 6 and meta["rows_replaced"] == 0
    by_key = [("store", "ascending"), ("product", "ascending"), ("week", "ascending")]
    history = sales_table(SalesShape(6, 20, end="2026-11-09"))
    want = decode_dictionaries(pa.concat_tables([history, week])).sort_by(by_key)
    assert decode_dictionaries(curated_rows(storage)).sort_by(by_key).to_pylist() == (
        want.to_pylist()
    )
    assert meta["dagster/row_count"] == 6 * 21 and meta["time_max"] == "2026-11-16"


def test_parquet_drops_of_many_row_groups_with_plain_text_keys(storage):
    """Exports write keys as plain text, in many row groups: each row group's keys are read as
    a dictionary of its own. Two such drops in one run (the second checked against the first
    as its reference), then a week the next day: curated whole, nothing quarantined."""
    full = decode_dictionaries(sales_table(SalesShape(9, 31, end="2026-11-16")))
    last = pc.max(full["week"])
    history = full.filter(pc.less(full["week"], last))
    week = full.filter(pc.equal(full["week"], last))

    def land(name, table):
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, row_group_size=7)  # keys differ from row group to row group
        storage.write_bytes(f"landing/sales/{name}.parquet", buf.getvalue().to_pybytes())

    land("a_first", history.slice(0, 120))
    land("b_rest", history.slice(120))
    meta = materialize(storage)
    assert meta["drops_consumed"] == 2 and meta["rows_quarantined"] == 0
    land("week_2026-11-16", week)
    meta = materialize(storage)
    assert meta["rows_curated"] == 9 and meta["rows_quarantined"] == 0
    by_key = [("store", "ascending"), ("product", "ascending"), ("week", "ascending")]
    got = decode_dictionaries(curated_rows(storage)).sort_by(by_key)
    assert got.to_pylist() == full.sort_by(by_key).to_pylist()


def test_csv_and_parquet_drops_merge_into_the_same_shards(storage):
    """A CSV drop (plain text keys) and Parquet drops (dictionary-encoded keys) in one run,
    then a CSV correction into the dictionary-encoded shards: one dataset, values typed."""
    land_sales(storage, SALES, SalesShape(6, 20, end="2026-11-09"), n_drops=2)
    full = decode_dictionaries(sales_table(SalesShape(6, 21, end="2026-11-16")))
    week = pc.max(full["week"])
    extra = full.filter(pc.equal(full["week"], week))
    storage.write_bytes("landing/sales/next_week.csv", to_bytes(extra, "csv"))
    meta = materialize(storage)
    assert meta["drops_consumed"] == 3 and meta["rows_curated"] == 6 * 21
    fixed = extra.set_column(3, "sales", pc.add(extra["sales"], 1.0))
    storage.write_bytes("landing/sales/next_week_fixed.csv", to_bytes(fixed, "csv"))
    meta = materialize(storage)
    assert meta["rows_replaced"] == 6
    after = decode_dictionaries(curated_rows(storage))
    assert after.schema.equals(SALES.arrow_schema) and after.num_rows == 6 * 21
    by_key = [("store", "ascending"), ("product", "ascending")]
    got = after.filter(pc.equal(after["week"], week)).sort_by(by_key)
    assert got["sales"].to_pylist() == fixed.sort_by(by_key)["sales"].to_pylist()


def test_bad_files_are_quarantined_with_a_reason_and_good_drops_still_ingested(storage):
    land_sales(storage, SALES, SalesShape(6, 30), n_drops=1)
    good = sales_table(SalesShape(6, 30)).slice(0, 20)
    for kind in ("truncated_parquet", "missing_column", "other_delimiter", "empty_file"):
        land_bad(storage, SALES, good, kind)
    # 40 of 220 rows quarantined (with the files whose rows could be read): within the share.
    meta = materialize(storage, expect_checks_pass=True)

    assert meta["rows_curated"] == 6 * 30
    assert meta["drops_quarantined"] == 4
    assert meta["rows_in"] == 6 * 30 + 20 + 20 and meta["rows_quarantined"] == 20 + 20
    files = {b.name for b in storage.list("quarantine/sales/files/")}
    for name in (
        "bad_truncated_parquet.parquet",
        "bad_missing_column.csv",
        "bad_other_delimiter.csv",
        "bad_empty_file.csv",
    ):
        assert f"quarantine/sales/files/{name}" in files
        reason = json.loads(storage.read_text(f"quarantine/sales/files/{name}.reason.json"))
        assert reason["file"] == f"landing/sales/{name}"
        assert reason["rule"].startswith(("file.", "schema."))
    # Moved, not copied: landing holds only the good drop; nothing was deleted outright.
    assert [b.name for b in storage.list("landing/sales/")] == [
        "landing/sales/history_until_2026-11-16.parquet"
    ]
    missing = json.loads(
        storage.read_text("quarantine/sales/files/bad_missing_column.csv.reason.json")
    )
    assert missing["column"] == "promo" and "missing column(s) ['promo']" in missing["message"]


def test_rows_in_equal_rows_curated_plus_rows_quarantined(storage):
    good = sales_table(SalesShape(4, 10))
    land_bad(storage, SALES, good, "wrong_types")
    land_bad(storage, SALES, good, "duplicate_key_time")
    materialize(storage, expect_checks_pass=True)  # 9 of 83 rows quarantined: handled

    outcomes = {o.drop.rsplit("/", 1)[-1]: o for o in DropLedger(storage, SALES).all()}
    for o in outcomes.values():
        assert o.rows_in == o.rows_curated + o.rows_quarantined
        assert o.status == "partially_ingested"
    wrong = outcomes["bad_wrong_types.csv"]
    assert wrong.rules == {"type.float": 3}
    rows = pq.read_table(storage.open_read(wrong.quarantine)).to_pylist()
    assert [(r["_row"], r["_column"], r["_value"], r["_rule"]) for r in rows] == [
        (2, "sales", "n/a", "type.float"),
        (3, "sales", "n/a", "type.float"),
        (4, "sales", "n/a", "type.float"),
    ]
    assert "row 2, column 'sales'" in rows[0]["_message"]
    dup = outcomes["bad_duplicate_key_time.csv"]
    assert dup.rows_in == 43 and dup.rows_quarantined == 6


def test_a_crash_before_the_ledger_is_written_is_completed_by_a_rerun(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    land_sales(storage, SALES, SalesShape(3, 15), n_drops=2)
    drops = pending_drops(storage, SALES)

    class Crash(Exception):
        pass

    def crash(_outcome):
        raise Crash

    with pytest.raises(Crash):
        ingest(storage, SALES, drops, on_drop=crash)
    # The shards were written but the first ledger entry only: a rerun finishes the work.
    assert len(pending_drops(storage, SALES)) == 1
    ingest(storage, SALES, pending_drops(storage, SALES))
    assert pending_drops(storage, SALES) == []
    assert curated_rows(storage).num_rows == 3 * 15
