"""The curated store's delta files: appends cost the new rows, and read back as one merge would."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mlops_assets.domain import curated_store as cs
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import LocalStorage

SPEC = load_spec("sales")
# Ragged series (late starts, early ends, missing weeks): appends that open gaps, new series.
TABLE = sales_table(SalesShape(30, 60, seed=3, realistic=True))
WEEKS = sorted(set(TABLE[SPEC.time].to_pylist()))


def weeks(lo: int, hi: int) -> pa.Table:
    """The rows of weeks ``lo`` to ``hi - 1`` (indices into WEEKS)."""
    col = TABLE[SPEC.time]
    first, last = (pa.scalar(WEEKS[i], col.type) for i in (lo, hi - 1))
    return TABLE.filter(pc.and_(pc.greater_equal(col, first), pc.less_equal(col, last)))


def stores(tmp_path, n_shards: int = 4) -> tuple[CuratedStore, CuratedStore]:
    return (
        CuratedStore(LocalStorage(tmp_path / "a"), SPEC, n_shards),
        CuratedStore(LocalStorage(tmp_path / "b"), SPEC, n_shards),
    )


def plain(table: pa.Table) -> pa.Table:
    return decode_dictionaries(table).combine_chunks()


def deltas_on_storage(store: CuratedStore) -> list[str]:
    return [b.name for b in store.storage.list(f"{store.prefix}/part-") if ".delta-" in b.name]


def assert_same_dataset(a: CuratedStore, b: CuratedStore) -> None:
    """Rows, order, summary (gaps included) of ``a`` and ``b``, shard by shard too."""
    assert plain(a.read()).equals(plain(b.read()))
    assert a.summary() == b.summary()
    for name in b.shard_names():
        assert plain(a.read_shard(name)).equals(plain(b.read_shard(name)))


def test_appends_write_deltas_and_read_back_as_one_merge(tmp_path):
    a, b = stores(tmp_path)
    a.merge(weeks(0, 40))
    for w in range(40, 45):  # a week at a time, as the daily drops land
        stats = a.merge(weeks(w, w + 1), merge_id=f"m{w}")
        assert stats.deltas_written == stats.shards_written > 0
        assert stats.rows_replaced == 0
    b.merge(weeks(0, 45))
    assert_same_dataset(a, b)
    # A delta holds only its week; the base was written once.
    names = deltas_on_storage(a)
    assert len(names) >= 5
    first = a.read_file(sorted(names)[0])
    assert len(np.unique(first[SPEC.time].to_numpy())) == 1
    # Each shard's revision counts every merge into it; appends restate nothing.
    assert all(r["restated"] == [] for r in a.revisions().values())
    assert max(r["seq"] for r in a.revisions().values()) == 6
    # Spark reads the live files as they are: no (key, time) in two of them.
    raw = plain(pa.concat_tables([decode_dictionaries(a.read_file(f)) for f in a.files()]))
    assert raw.num_rows == b.read().num_rows
    keys = list(zip(*(raw[c].to_pylist() for c in SPEC.key_columns), strict=True))
    assert len(set(keys)) == len(keys)


def test_a_restating_merge_compacts_the_shard_and_deletes_its_deltas(tmp_path):
    a, b = stores(tmp_path)
    a.merge(weeks(0, 40))
    a.merge(weeks(40, 41))
    a.merge(weeks(41, 42))
    assert deltas_on_storage(a)
    # A week curated already, with new values, re-delivered: it replaces rows.
    late = weeks(35, 36)
    late = late.set_column(
        late.schema.get_field_index("sales"), "sales", pc.add(late["sales"], 1.0)
    )
    stats = a.merge(late, merge_id="restate")
    assert stats.deltas_written == 0 and stats.rows_replaced == late.num_rows
    assert deltas_on_storage(a) == []
    b.merge(weeks(0, 42))
    b.merge(late)
    assert_same_dataset(a, b)
    restated = {s: r["restated"] for s, r in a.revisions().items() if r["restated"]}
    assert restated and all(t for kept in restated.values() for (_, t) in kept)


def test_a_shard_is_compacted_when_it_holds_max_deltas(tmp_path, monkeypatch):
    monkeypatch.setattr(cs, "MAX_DELTAS", 2)
    a, b = stores(tmp_path, n_shards=1)
    a.merge(weeks(0, 40))
    a.merge(weeks(40, 41))
    a.merge(weeks(41, 42))
    assert len(deltas_on_storage(a)) == 2
    stats = a.merge(weeks(42, 43))
    assert stats.deltas_written == 0
    assert deltas_on_storage(a) == []
    b.merge(weeks(0, 43))
    assert_same_dataset(a, b)


def test_a_delta_a_crashed_compaction_left_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(cs, "MAX_DELTAS", 1)
    a, b = stores(tmp_path, n_shards=1)
    a.merge(weeks(0, 40))
    a.merge(weeks(40, 41))
    [delta] = deltas_on_storage(a)
    kept = a.storage.read_bytes(delta)
    a.merge(weeks(41, 42))  # compacts; then the crash "between" the base write and the delete:
    a.storage.write_bytes(delta, kept)
    assert a.files() == a.shard_names()
    b.merge(weeks(0, 42))
    assert_same_dataset(a, b)
    a.merge(weeks(42, 43))  # an append after it: read back whole, the stale delta ignored
    b.merge(weeks(42, 43))
    assert_same_dataset(a, b)


def test_resume_keeps_the_deltas_written_and_writes_the_missing_one(tmp_path):
    a, b = stores(tmp_path)
    a.merge(weeks(0, 40))
    week = weeks(40, 41)
    first = a.merge(week, merge_id="daily")
    [lost, *_] = sorted(deltas_on_storage(a))
    a.storage.delete(lost)  # as if the run ended before writing it
    again = a.merge(week, merge_id="daily", resume=True)
    assert (again.rows_added, again.rows_replaced) == (first.rows_added, first.rows_replaced)
    assert len(deltas_on_storage(a)) == first.deltas_written
    b.merge(weeks(0, 41))
    assert_same_dataset(a, b)


def test_re_delivered_rows_in_a_delta_are_seen_as_curated(tmp_path):
    a, _ = stores(tmp_path)
    a.merge(weeks(0, 40))
    a.merge(weeks(40, 41))
    week = weeks(40, 41)
    assert a.same_as_curated(week).all()
    changed = week.set_column(
        week.schema.get_field_index("sales"), "sales", pc.add(week["sales"], 1.0)
    )
    assert not a.same_as_curated(changed).any()


@pytest.mark.parametrize("columns", [None, ["store", "week", "sales"], ["week", "sales"]])
def test_windowed_and_column_reads_merge_deltas(tmp_path, columns):
    a, b = stores(tmp_path)
    a.merge(weeks(0, 40))
    a.merge(weeks(40, 41))
    a.merge(weeks(41, 42))
    b.merge(weeks(0, 42))
    since, until = WEEKS[30], WEEKS[40]
    got = a.read(columns=columns, since=since, until=until)
    want = b.read(columns=columns, since=since, until=until)
    assert plain(got).equals(plain(want))
    keys = [("S0000", "P000")]
    some = b.read(series=keys)
    assert plain(a.read(series=keys)).equals(plain(some))


def recent_files(store: CuratedStore) -> list[str]:
    return [b.name for b in store.storage.list(f"{store.prefix}/part-") if ".recent." in b.name]


def reads_of(store: CuratedStore, monkeypatch) -> list[str]:
    seen: list[str] = []
    real = store.read_file

    def spy(name, *args, **kwargs):
        seen.append(name.rsplit("/", 1)[-1])
        return real(name, *args, **kwargs)

    monkeypatch.setattr(store, "read_file", spy)
    return seen


def test_recent_rows_are_read_from_the_recent_copy_and_equal_the_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(cs, "recent_periods", lambda spec: 10)
    a, b = stores(tmp_path)
    a.merge(weeks(0, 40))  # compacted write: the copy cut from the rows
    a.merge(weeks(40, 41))  # appends: the copy advanced from the previous one
    a.merge(weeks(41, 42))
    b.merge(weeks(0, 42))
    for name in recent_files(b):
        b.storage.delete(name)  # b reads its shards only
    assert len(recent_files(a)) == len(a.shard_names())
    seen = reads_of(a, monkeypatch)
    for since in (WEEKS[33], WEEKS[40]):  # the copy starts at week 32 (10 periods back)
        seen.clear()
        assert plain(a.read(since=since)).equals(plain(b.read(since=since)))
        assert seen and all(".recent." in n for n in seen), seen
    seen.clear()
    older = a.read(since=WEEKS[20])  # before the copy: read from the shards
    assert plain(older).equals(plain(b.read(since=WEEKS[20])))
    assert not any(".recent." in n for n in seen)


def test_a_recent_copy_of_an_earlier_revision_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(cs, "recent_periods", lambda spec: 10)
    a, b = stores(tmp_path, n_shards=1)
    a.merge(weeks(0, 40))
    [copy] = recent_files(a)
    kept = a.storage.read_bytes(copy)
    a.merge(weeks(40, 41))
    a.storage.write_bytes(copy, kept)  # as if the run ended before writing the new copy
    b.merge(weeks(0, 41))
    since = WEEKS[35]
    seen = reads_of(a, monkeypatch)
    assert plain(a.read(since=since)).equals(plain(b.read(since=since)))
    assert not any(".recent." in n for n in seen)
    a.merge(weeks(41, 42))  # the next merge rebuilds the copy from the shard
    b.merge(weeks(41, 42))
    seen.clear()
    assert plain(a.read(since=since)).equals(plain(b.read(since=since)))
    assert seen and all(".recent." in n for n in seen)


def test_the_series_index_an_append_advances_equals_one_of_the_whole_shard(tmp_path):
    """Appends that open gaps (a series skips weeks, then returns) and bring new series."""
    from mlops_assets.domain import shard_index

    a, b = stores(tmp_path, n_shards=2)
    first = weeks(0, 40)
    newcomers = pc.is_in(first["store"], pa.array(["S0001"]))
    a.merge(first.filter(pc.invert(newcomers)))  # S0001's series arrive with the appends
    b.merge(first.filter(pc.invert(newcomers)))
    for w in range(40, 46):
        week = weeks(w, w + 1)
        if w in (41, 42):  # P001's series miss two weeks
            week = week.filter(pc.invert(pc.equal(week["product"], "P001")))
        if w == 43:
            week = pa.concat_tables([week, first.filter(newcomers)])  # whole new series
        assert a.merge(week).deltas_written == 2  # a new series' history is an append too
        b.merge(week)
    assert_same_dataset(a, b)
    worst = {sid: missing for sid, missing, _ in a.summary()["gaps"]["worst"]}
    assert any("P001" in sid and missing >= 2 for sid, missing in worst.items()), worst
    for name in a.shard_names():
        stored = a.series_index(name)
        assert stored is not None
        whole = shard_index.index_of(a.read_shard(name), SPEC)
        assert stored.equals(whole)


def test_an_index_of_an_earlier_revision_is_rebuilt_from_the_shard(tmp_path):
    a, b = stores(tmp_path, n_shards=1)
    a.merge(weeks(0, 40))
    [name] = a.shard_names()
    kept = a.storage.read_bytes(a.index_name(name))
    a.merge(weeks(40, 41))
    a.storage.write_bytes(a.index_name(name), kept)  # the run ended before the new index
    assert a.series_index(name) is None
    assert a.merge(weeks(41, 42)).deltas_written == 1
    b.merge(weeks(0, 42))
    assert_same_dataset(a, b)


def test_a_first_load_out_of_order_with_copies_merges_as_sort_and_dedupe(tmp_path):
    """A first load reuses the series numbers it shards by to sort, dedupe and index each
    shard: shuffled rows with repeated (key, time) rows (the later wins) give the rows, the
    replacement counts and the series index that sorting and deduplicating give."""
    from mlops_assets.domain import shard_index
    from mlops_assets.domain.merge import sort_and_dedupe

    rng = np.random.default_rng(11)
    again = TABLE.take(pa.array(rng.choice(TABLE.num_rows, 40, replace=False)))
    again = again.set_column(
        again.schema.get_field_index("sales"), "sales", pc.add(again["sales"], 1.0)
    )
    both = pa.concat_tables([TABLE, again])
    order = rng.permutation(both.num_rows)
    sources = np.r_[np.zeros(TABLE.num_rows, np.int64), np.ones(40, np.int64)][order]
    store = CuratedStore(LocalStorage(tmp_path), SPEC, 4)
    stats = store.merge(both.take(pa.array(order)), sources)
    assert stats.rows_added == TABLE.num_rows and stats.rows_replaced == 40
    # Later rows win: a copy placed before its original by the shuffle loses to it.
    expected, replaced = sort_and_dedupe(both.take(pa.array(order)), SPEC)
    assert replaced == 40
    by = [(c, "ascending") for c in [*SPEC.series_keys, SPEC.time]]
    got = plain(store.read()).sort_by(by)  # shard after shard: sorted within each
    assert got.to_pydict() == plain(expected).sort_by(by).to_pydict()
    for name in store.shard_names():
        index = store.series_index(name)
        assert index is not None
        assert index.equals(shard_index.index_of(store.read_shard(name), SPEC))
