"""Runs of equal series keys (``tables.run_starts``) and key codes (``tables.series_codes``)
against a brute-force reading of the decoded keys, over many-chunk tables whose chunks have
dictionaries of their own (as Parquet row groups read with ``read_dictionary`` do)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mlops_assets.ml.tables import grouped_run_starts, run_starts, series_codes, series_numbers


def _brute_starts(rows: list[tuple]) -> list[int]:
    return [i for i in range(len(rows)) if i == 0 or rows[i] != rows[i - 1]]


def _table(rows: list[tuple], cuts: list[int], encode: bool, rng) -> pa.Table:
    """``rows`` as a table of chunks cut at ``cuts``; dictionary chunks each with their own
    dictionary, in a shuffled order."""
    batches = []
    for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True):
        if a == b:
            continue
        columns = {}
        for j, name in enumerate(("store", "product")):
            values = [r[j] for r in rows[a:b]]
            if encode:
                dictionary = sorted(set(values))
                rng.shuffle(dictionary)
                index = {v: i for i, v in enumerate(dictionary)}
                columns[name] = pa.DictionaryArray.from_arrays(
                    pa.array([index[v] for v in values], pa.int32()), pa.array(dictionary)
                )
            else:
                columns[name] = pa.array(values)
        batches.append(pa.record_batch(columns))
    return pa.Table.from_batches(batches)


@pytest.mark.parametrize("encode", [True, False], ids=["dictionary", "plain"])
@pytest.mark.parametrize("seed", range(6))
def test_run_starts_are_where_the_keys_change(encode: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    runs = [(f"S{rng.integers(4)}", f"P{rng.integers(3)}") for _ in range(40)]
    rows = [r for r in runs for _ in range(int(rng.integers(1, 6)))]
    cuts = sorted(set(rng.integers(0, len(rows), size=int(rng.integers(0, 12))).tolist()))
    table = _table(rows, cuts, encode, rng)
    assert run_starts(table, ["store", "product"]).tolist() == _brute_starts(rows)
    # Codes: equal keys, equal code; and codes order rows like the keys.
    codes = series_codes(table, ["store", "product"]).tolist()
    code_of = dict(zip(rows, codes, strict=True))
    assert codes == [code_of[r] for r in rows]
    assert len(set(code_of.values())) == len(code_of)
    assert sorted(code_of, key=code_of.__getitem__) == sorted(code_of)


def test_run_starts_of_an_empty_table_and_of_one_row() -> None:
    empty = pa.table({"store": pa.array([], pa.string())})
    assert run_starts(empty, ["store"]).tolist() == []
    one = pa.table({"store": ["S1"]})
    assert run_starts(one, ["store"]).tolist() == [0]


def test_a_dictionary_holding_a_value_twice_only_adds_runs() -> None:
    """Indices 0 and 2 both mean "S1": a run may start between them (a caller checking for
    distinct runs then falls back), but no real change of key is ever missed."""
    indices = pa.array([0, 0, 2, 2, 1, 1, 0], pa.int32())
    table = pa.table(
        {"store": pa.DictionaryArray.from_arrays(indices, pa.array(["S1", "S2", "S1"]))}
    )
    starts = run_starts(table, ["store"]).tolist()
    assert set(_brute_starts([("S1",)] * 4 + [("S2",)] * 2 + [("S1",)])) <= set(starts)
    assert starts == [0, 2, 4, 6]


@pytest.mark.parametrize("encode", [True, False], ids=["dictionary", "plain"])
def test_grouped_run_starts_only_when_no_series_comes_back(encode: bool) -> None:
    rng = np.random.default_rng(9)
    grouped = [("S1", "P1")] * 3 + [("S0", "P2")] * 2 + [("S1", "P2")] * 4  # not key order
    table = _table(grouped, [2, 4, 7], encode, rng)
    assert grouped_run_starts(table, ["store", "product"]).tolist() == [0, 3, 5]
    back = [*grouped, ("S1", "P1")]  # the first series again, after others
    assert grouped_run_starts(_table(back, [4], encode, rng), ["store", "product"]) is None


@pytest.mark.parametrize("encode", [True, False], ids=["dictionary", "plain"])
@pytest.mark.parametrize("order", ["sorted", "grouped", "shuffled", "doubled_dictionary"])
def test_series_numbers_in_key_order_whether_rows_come_sorted_or_not(encode, order) -> None:
    """Sorted rows are numbered from their runs; any other order through codes. Either way a
    row's number is its series' rank in key order, and the row given for each series is one
    of its own."""
    rng = np.random.default_rng(5)
    series = sorted({(f"S{rng.integers(5)}", f"P{rng.integers(4)}") for _ in range(30)})
    rows = [s for s in series for _ in range(int(rng.integers(1, 5)))]
    if order == "grouped":  # each series together, not in key order
        rows = [s for s in reversed(series) for _ in range(2)]
    if order == "shuffled":
        rows = [rows[i] for i in rng.permutation(len(rows))]
    table = _table(rows, sorted(rng.choice(len(rows), 5, replace=False).tolist()), encode, rng)
    if order == "doubled_dictionary":  # "S1" at two indices: runs split, numbers do not
        if not encode:
            pytest.skip("a plain column has no dictionary")
        store = pa.DictionaryArray.from_arrays(
            pa.array([0, 0, 0, 2, 2, 2, 1, 1], pa.int32()), pa.array(["S1", "S2", "S1"])
        )
        table = pa.table({"store": store, "product": pa.array(["P1"] * 6 + ["P0"] * 2)})
        rows = list(zip(store.to_pylist(), table["product"].to_pylist(), strict=True))
    series_of, row_of = series_numbers(table, ["store", "product"])
    rank = {s: i for i, s in enumerate(sorted(set(rows)))}
    assert series_of.tolist() == [rank[r] for r in rows]
    assert [rows[i] for i in row_of] == sorted(set(rows))
