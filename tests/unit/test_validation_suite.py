"""The suite builder: expectations derived from specs, masks that agree with GX, the gate."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from mlops_assets.ml.drops import ROW, DropRejected, split_failures
from mlops_assets.ml.spec import ExtraExpectation, load_spec
from mlops_assets.ml.validation import masks, suite
from mlops_assets.ml.validation import profile as drop_profile
from mlops_assets.ml.validation.gate import DropGate
from mlops_assets.ml.validation.gx import GxRunner
from mlops_assets.ml.validation.profile import Band
from mlops_assets.ml.validation.rows import RowCheck, explain_rows, validate_rows
from mlops_assets.ml.validation.rules import Rule

AS_OF = date(2026, 11, 20)


def _rules(configs):
    return {(c["meta"]["rule"], c["kwargs"].get("column")) for c in configs}


@pytest.mark.parametrize(
    ("spec_name", "expected"),
    [
        (
            "sales",
            {
                ("values.range", "sales"),
                ("values.range", "price"),
                ("values.finite", "sales"),
                ("values.allowed", "promo"),
                ("time.earliest", "week"),
                ("time.not_future", "week"),
                ("unique.key_time", None),
                ("not_null", "store"),
            },
        ),
        (
            "diabetes",
            {
                ("values.range", "progression"),
                ("values.allowed", "cohort"),
                ("values.finite", "bmi"),
                ("time.earliest", "visit_date"),
                ("unique.key_time", None),
            },
        ),
    ],
)
def test_row_suite_from_spec(spec_name, expected):
    configs = suite.row_expectations(load_spec(spec_name), AS_OF)
    assert expected <= _rules(configs)
    built = suite.build_suite(f"{spec_name}.rows", configs)
    assert len(built.expectations) == len(configs)


@pytest.mark.parametrize(
    ("extra", "level"),
    [
        (
            {
                "type": "expect_column_values_to_match_regex",
                "kwargs": {"column": "store", "regex": "^S[0-9]+$"},
            },
            "row",
        ),
        (
            {
                "type": "expect_column_sum_to_be_between",
                "kwargs": {"column": "sales", "min_value": 0},
            },
            "drop",
        ),
    ],
)
def test_extra_expectations_from_yaml(extra, level):
    spec = load_spec("sales")
    spec.validation.expectations = [ExtraExpectation(**extra)]
    rules = _rules(suite.row_expectations(spec, AS_OF))
    in_rows = any(r.startswith("custom.") for r, _ in rules)
    assert in_rows == (level == "row")


def test_drop_suite_bands_and_freshness():
    spec = load_spec("sales")
    bands = {"sales__mean": Band(10.0, 1.0, 52)}
    configs = suite.drop_expectations(spec, AS_OF, bands)
    by_rule = {(c["meta"]["rule"], c["meta"]["severity"]): c["kwargs"] for c in configs}
    d = spec.validation.drift
    assert by_rule[("drift.sales.mean", "warn")]["max_value"] == 10 + d.warn_sigmas
    assert by_rule[("drift.sales.mean", "error")]["min_value"] == 10 - d.error_sigmas
    assert ("freshness.max_age", "warn") in by_rule
    assert by_rule[("drop.row_count", "error")]["min_value"] == spec.validation.min_rows_per_drop


def _table():
    return pa.table(
        {
            "store": ["S1", "S1", "S1", "S2", "S2", "S2", "S3"],
            "product": ["P1"] * 7,
            "week": pa.array(
                [
                    date(2026, 1, 5),
                    date(2026, 1, 12),
                    date(2026, 1, 12),
                    date(1800, 1, 6),
                    date(2100, 1, 4),
                    date(2026, 1, 5),
                    date(2026, 1, 5),
                ],
                pa.date32(),
            ),
            "sales": [1.0, -5.0, 2.0, math.inf, 3.0, float("nan"), 4.0],
            "price": [1.0, 2.0, 20000.0, 1.0, 1.0, 1.0, 0.0],
            "promo": pa.array([0, 1, 7, 0, 0, 1, 0], pa.int64()),
        }
    )


# (rule, column, rows expected to fail)
CASES = [
    ("not_null", "sales", [5]),
    ("values.finite", "sales", [3]),
    ("values.range", "sales", [1]),
    ("values.range", "price", [2, 6]),
    ("values.allowed", "promo", [2]),
    ("time.earliest", "week", [3]),
    ("time.not_future", "week", [4]),
    ("unique.key_time", None, [1, 2]),
]


@pytest.mark.parametrize(("rule", "column", "rows"), CASES)
def test_masks_match_expected_rows(rule, column, rows):
    spec = load_spec("sales")
    table = _table()
    configs = [
        c
        for c in suite.row_expectations(spec, AS_OF)
        if c["meta"]["rule"] == rule and c["kwargs"].get("column") in (column, None)
    ]
    assert configs
    mask = np.zeros(table.num_rows, dtype=bool)
    for c in configs:
        mask |= masks.ROW_EVALUATORS[c["type"]](table, c["kwargs"])
    assert np.flatnonzero(mask).tolist() == rows


def _brute_duplicates(table: pa.Table, cols: list[str]) -> list[int]:
    keys = list(zip(*(table[c].to_pylist() for c in cols), strict=True))
    return [i for i, k in enumerate(keys) if keys.count(k) > 1]


@pytest.mark.parametrize("block", [1 << 20, 3, 5])
@pytest.mark.parametrize("encoded", [False, True])
@pytest.mark.parametrize("case", ["sorted", "sorted_with_copy", "unsorted", "null_key"])
def test_unique_mask_on_sorted_and_unsorted_drops(case, encoded, block, monkeypatch):
    """Drops arrive sorted by key, so uniqueness is proven by one ordered pass over integer
    ranks (dictionary values ranked, not compared as strings); any other drop is counted. Both
    paths flag exactly the rows that share their key with another row, whatever the blocks
    the ordered pass compares at a time."""
    monkeypatch.setattr(masks, "_ORDER_BLOCK", block)
    rng = np.random.default_rng(7)
    # The dictionary's order is not the values' order, and it holds one value twice: ranks
    # must compare values, not dictionary positions.
    dictionary = pa.array(["S2", "S0", "S1", "S0"])
    stores = np.array([1, 1, 3, 3, 2, 2, 2, 2, 0, 0, 0, 0])  # S0 (at 1, then 3), S1, S2
    weeks = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]) * 7 + 20000
    if case == "sorted_with_copy":
        weeks[2] = weeks[1]  # S0 week 1 twice, through two dictionary indices
    if case == "unsorted":
        order = rng.permutation(len(stores))
        stores, weeks = stores[order], weeks[order]
    store = pa.DictionaryArray.from_arrays(pa.array(stores, pa.int32()), dictionary)
    if case == "null_key":
        store = pa.DictionaryArray.from_arrays(
            pa.array([None, *stores[1:]], pa.int32()), dictionary
        )
    table = pa.table(
        {
            "store": store if encoded else store.cast(pa.string()),
            "product": pa.array(["P1"] * len(stores)),
            "week": pa.array(weeks.astype("int32"), pa.int32()).cast(pa.date32()),
        }
    )
    cols = ["store", "product", "week"]
    mask = masks.ROW_EVALUATORS["expect_compound_columns_to_be_unique"](
        table, {"column_list": cols}
    )
    assert np.flatnonzero(mask).tolist() == _brute_duplicates(table, cols)
    assert masks.strictly_increasing(table, cols) == (case == "sorted")


@pytest.mark.parametrize("block", [1 << 20, 2, 4, 7])
def test_ordered_pass_over_chunks_with_their_own_dictionaries(block, monkeypatch):
    """A drop read in row groups: each chunk has its own dictionary, in its own order, one of
    them sorted (its indices compared as they are). The ordered pass compares every adjacent
    pair of rows, those across a chunk or block boundary included."""
    monkeypatch.setattr(masks, "_ORDER_BLOCK", block)

    def chunk(values: list[str], dictionary: list[str]) -> pa.DictionaryArray:
        index = pa.array([dictionary.index(v) for v in values], pa.int32())
        return pa.DictionaryArray.from_arrays(index, pa.array(dictionary))

    def table(stores: list[str], weeks: list[int], cut: int) -> pa.Table:
        store = pa.chunked_array(
            [chunk(stores[:cut], sorted(set(stores[:cut]))), chunk(stores[cut:], ["S9", "S2"])]
        )
        week = pa.array(np.array(weeks, "int32") + 20000, pa.int32()).cast(pa.date32())
        return pa.table({"store": store, "week": week})

    stores = ["S0", "S0", "S1", "S1", "S2", "S2", "S9", "S9"]
    weeks = [0, 7, 0, 7, 0, 7, 0, 7]
    assert masks.strictly_increasing(table(stores, weeks, 5), ["store", "week"])
    for i in range(len(stores) - 1):  # each adjacent pair in turn out of order
        swapped_s, swapped_w = list(stores), list(weeks)
        swapped_s[i], swapped_s[i + 1] = swapped_s[i + 1], swapped_s[i]
        swapped_w[i], swapped_w[i + 1] = swapped_w[i + 1], swapped_w[i]
        if (swapped_s, swapped_w) == (stores, weeks):
            continue
        assert not masks.strictly_increasing(table(swapped_s, swapped_w, 5), ["store", "week"])
    copied = list(weeks)
    copied[5] = copied[4]  # S2 twice on one week, across the chunk boundary
    assert not masks.strictly_increasing(table(stores, copied, 5), ["store", "week"])


@pytest.mark.parametrize("kind", ["float", "float_with_gaps", "int_with_nulls", "empty"])
def test_drift_statistics_are_numpys_over_chunks(kind, monkeypatch):
    """A drop column in several chunks (row groups), its nulls and NaN left out: the mean and
    quantiles are numpy's over the values, the standard deviation (summed a block at a time)
    numpy's to rounding. The column itself is left as it was."""
    monkeypatch.setattr(drop_profile, "_BLOCK", 7)  # blocks that cut chunks
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 30.0, 100)
    if kind == "int_with_nulls":
        values = np.round(values)
    pieces = np.split(values, [10, 45, 46, 80])
    if kind == "float":
        chunks = [pa.array(p) for p in pieces]
    elif kind == "float_with_gaps":
        chunks = [pa.array(p, mask=(np.arange(len(p)) % 5 == 0)) for p in pieces]
        chunks[2] = pa.array([math.nan])
    elif kind == "int_with_nulls":
        chunks = [pa.array(p.astype(np.int64), mask=np.arange(len(p)) % 4 == 1) for p in pieces]
    else:
        chunks = [pa.array([], pa.float64())]
    col = pa.chunked_array(chunks)
    before = col.to_pylist()
    week = pa.array(np.full(len(col), 20000, np.int32), pa.int32()).cast(pa.date32())
    table = pa.table({"week": week, "sales": col, "price": col})
    out = drop_profile.profile(table, load_spec("sales"))
    got = {s: out[f"sales__{s}"] for s in drop_profile.DRIFT_STATS}
    assert {s: out[f"price__{s}"] for s in drop_profile.DRIFT_STATS} == pytest.approx(
        got, nan_ok=True
    )
    assert repr(col.to_pylist()) == repr(before)  # NaN as NaN
    x = np.array([np.nan if v is None else float(v) for v in before])
    x = x[~np.isnan(x)]
    if kind == "empty":
        assert all(math.isnan(v) for v in got.values())
        return
    assert got["mean"] == float(x.mean())
    assert got["stdev"] == pytest.approx(float(x.std(ddof=1)), rel=1e-13)
    for name, q in drop_profile.QUANTILES.items():
        assert got[name] == float(np.quantile(x, q))


@pytest.fixture(scope="module")
def runner():
    return GxRunner()


def test_masks_agree_with_great_expectations(runner):
    """Each row-level expectation: our mask counts what GX counts as unexpected."""
    spec = load_spec("sales")
    table = _table()
    configs = suite.row_expectations(spec, AS_OF)
    result = runner.run(
        suite.build_suite("sales.rows", configs), table.to_pandas(date_as_object=False)
    )
    assert len(result.results) == len(configs)
    by_config = {
        (r.expectation_config.meta["rule"], str(r.expectation_config.kwargs.get("column"))): r
        for r in result.results
    }
    for c in configs:
        if c["type"] == "expect_table_columns_to_match_set":
            continue
        r = by_config[(c["meta"]["rule"], str(c["kwargs"].get("column")))]
        gx_count = r.result.get("unexpected_count", 0)
        ours = int(masks.ROW_EVALUATORS[c["type"]](table, c["kwargs"]).sum())
        # GX skips NaN (a pandas null) in value expectations; so do we (NaN is not_null's).
        assert ours == gx_count, (c, r.result)


def _reference(rng):
    weeks = np.repeat(np.arange(60) * 7 + 20000, 20).astype("int32")
    return pa.table(
        {
            "store": [f"S{i}" for i in range(20)] * 60,
            "product": ["P1"] * len(weeks),
            "week": pa.array(weeks, pa.int32()).cast(pa.date32()),
            "sales": rng.normal(50, 5, len(weeks)),
            "price": rng.normal(5, 0.2, len(weeks)),
        }
    )


def _checked(drop: pa.Table, spec) -> RowCheck:
    """``drop``'s rows, all kept (as ``validate_rows`` returns a clean drop)."""
    return RowCheck(drop.num_rows, drop, split_failures(drop.slice(0, 0), None, [], spec).rejected)


def _drop(rng, scale: float = 1.0, shift: float = 0.0, n: int = 20) -> RowCheck:
    spec = load_spec("sales")
    drop = pa.table(
        {
            "store": [f"S{i}" for i in range(n)],
            "product": ["P1"] * n,
            "week": pa.array([date(2026, 1, 5)] * n, pa.date32()),
            "sales": rng.normal(50, 5, n) * scale + shift,
            "price": rng.normal(5, 0.2, n),
            "promo": pa.array([0] * n, pa.int64()),
        }
    )
    drop = drop.append_column(ROW, pa.array(np.arange(n, dtype=np.int64)))
    return _checked(drop, spec)


@pytest.mark.parametrize(
    ("case", "settings", "drop_kw", "rule"),
    [
        ("in band", {}, {}, None),
        ("shifted", {}, {"scale": 25.0, "shift": 1000.0}, "drift.sales."),
        ("too many rows", {"max_rows_per_drop": 10}, {}, "drop.row_count"),
        ("too few rows", {"min_rows_per_drop": 50}, {}, "drop.row_count"),
    ],
)
def test_gate_drop_level_rules(case, settings, drop_kw, rule):
    spec = load_spec("sales")
    for k, v in settings.items():
        setattr(spec.validation, k, v)
    rng = np.random.default_rng(0)
    gate = DropGate(spec, AS_OF, reference=_reference(rng))
    parsed = _drop(rng, **drop_kw)
    if rule is None:
        report = gate.check_drop("ok.csv", parsed)
        assert not [f for f in report.failures if f.severity == "error"], case
        assert report.profile["rows_in"] == 20
        return
    with pytest.raises(DropRejected) as err:
        gate.check_drop("bad.csv", parsed)
    assert err.value.rule.startswith(rule), case
    assert "bad.csv" in err.value.message and "quarantined" in err.value.message


@pytest.mark.parametrize(
    ("stores", "expected"),
    [
        ([f"S{i}" for i in range(20)], "(the whole population)"),
        (["S0", "S1"], "2 of 2 drop series have history"),
        (["NEW1", "NEW2"], "no reference history for the drop's series"),
    ],
)
def test_distribution_compares_like_with_like(stores, expected):
    """A correction of a few series is compared with those series' history, not everyone's."""
    spec = load_spec("sales")
    rng = np.random.default_rng(1)
    ref = _reference(rng)
    # Series differ in level: S0 and S1 sell far more than the others.
    level = np.where(np.isin(ref["store"].to_numpy(zero_copy_only=False), ["S0", "S1"]), 20, 1)
    ref = ref.set_column(2 + 1, "sales", pa.array(ref["sales"].to_numpy() * level))
    gate = DropGate(spec, AS_OF, reference=ref)
    n = len(stores)
    drop = pa.table(
        {
            "store": stores,
            "product": ["P1"] * n,
            "week": pa.array([date(2026, 1, 5)] * n, pa.date32()),
            "sales": rng.normal(50, 5, n) * np.where(np.isin(stores, ["S0", "S1", "NEW1"]), 20, 1),
            "price": rng.normal(5, 0.2, n),
            "promo": pa.array([0] * n, pa.int64()),
        }
    ).append_column(ROW, pa.array(np.arange(n, dtype=np.int64)))
    report = gate.check_drop(
        "drop.csv", _checked(drop, spec)
    )  # raises if compared with the wrong history
    assert report.reference.endswith(expected)


def test_a_null_passes_value_rules_as_in_great_expectations(runner):
    """Nulls (and NaN) of a nullable column are not a value rule's business, in GX or ours."""
    spec = load_spec("sales")
    for name in ("promo", "price"):
        spec.columns[name] = spec.columns[name].model_copy(update={"nullable": True})
    table = _table().slice(0, 3)
    table = table.set_column(5, "promo", pa.array([None, 1, 7], pa.int64()))
    table = table.set_column(4, "price", pa.array([None, float("nan"), -1.0]))
    configs = [
        c
        for c in suite.row_expectations(spec, AS_OF)
        if c["meta"]["rule"] in ("values.allowed", "values.range")
        and c["kwargs"]["column"] in ("promo", "price")
    ]
    assert len(configs) == 2
    result = runner.run(suite.build_suite("nulls", configs), table.to_pandas(date_as_object=False))
    for c, r in zip(configs, result.results, strict=True):
        mask = masks.ROW_EVALUATORS[c["type"]](table, c["kwargs"])
        assert np.flatnonzero(mask).tolist() == [2]
        assert int(mask.sum()) == r.result.get("unexpected_count", 0)


def _typed(table: pa.Table) -> pa.Table:
    return table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))


def test_validate_rows_keeps_or_quarantines_every_row_with_its_first_rule():
    spec = load_spec("sales")
    check = validate_rows(_typed(_table()), spec, for_scoring=False, as_of=AS_OF)
    assert check.rows_in == 7 and check.kept.num_rows + check.rows_quarantined == 7
    assert check.kept[ROW].to_pylist() == [0]
    got = {r[ROW]: r["_rule"] for r in check.quarantined.to_pylist()}
    # precedence: not_null, then the value rules column by column, time, then uniqueness
    assert got == {
        1: Rule.VALUES_RANGE,
        2: Rule.VALUES_RANGE,
        3: Rule.VALUES_FINITE,
        4: Rule.TIME_NOT_FUTURE,
        5: Rule.NOT_NULL,
        6: Rule.VALUES_RANGE,
    }
    assert check.rule_counts() == {
        "values.range": 3,
        "values.finite": 1,
        "time.not_future": 1,
        "not_null": 1,
    }
    by_rule = {(f.rule, f.column): f for f in check.failures(spec)}
    assert by_rule[("values.range", "price")].count == 2
    assert by_rule[("values.range", "price")].concern == "values"
    assert by_rule[("not_null", "sales")].to_dict()["unexpected_count"] == 1


def test_scoring_checks_value_bounds_of_inputs_with_the_same_rule_names():
    """Batch scoring: only value bounds, not on the (optional) target; keys may repeat."""
    spec = load_spec("sales")
    columns = {k: c for k, c in spec.columns.items() if k != spec.target}
    spec = spec.model_copy(update={"columns": columns})  # a drop without its target
    table = _typed(_table()).drop_columns([spec.target])
    check = validate_rows(table, spec, for_scoring=True)
    got = {r[ROW]: (r["_rule"], r["_column"]) for r in check.quarantined.to_pylist()}
    # row 2 fails values.allowed (promo 7) too, but price comes first in column order
    assert got == {2: ("values.range", "price"), 6: ("values.range", "price")}
    assert check.kept[ROW].to_pylist() == [0, 1, 3, 4, 5]
    i = table.schema.get_field_index("price")
    fair = table.set_column(i, "price", pa.array([1.0] * table.num_rows))
    only_promo = validate_rows(fair, spec, for_scoring=True)
    assert [r["_rule"] for r in only_promo.quarantined.to_pylist()] == [Rule.VALUES_ALLOWED]


def _weekly(weeks: list[date], stores: list[str] | None = None) -> pa.Table:
    n = len(weeks)
    return _typed(
        pa.table(
            {
                "store": stores or ["S1"] * n,
                "product": ["P1"] * n,
                "week": pa.array(weeks, pa.date32()),
                "sales": [1.0] * n,
                "price": [1.0] * n,
                "promo": pa.array([0] * n, pa.int64()),
            }
        )
    )


def test_calendar_rules_have_no_great_expectations_equivalent():
    """GX has no "timestamp is an anchor of a frequency" expectation: the calendar rules are
    not in the GX suite (the contract above covers the suite); ``validate_rows`` applies them."""
    rules = {c["meta"]["rule"] for c in suite.row_expectations(load_spec("sales"), AS_OF)}
    assert Rule.TIME_OFF_CALENDAR not in rules and Rule.TIME_DUPLICATE_PERIOD not in rules


@pytest.mark.parametrize("for_scoring", [False, True])
def test_off_calendar_rows_are_quarantined_with_the_rule(for_scoring):
    """2026-01-08 is a Thursday on a W-MON calendar: ingestion and scoring drops alike."""
    spec = load_spec("sales")
    table = _weekly([date(2026, 1, 5), date(2026, 1, 8), date(2026, 1, 12)])
    check = validate_rows(table, spec, for_scoring=for_scoring, as_of=AS_OF)
    assert check.kept[ROW].to_pylist() == [0, 2]
    (row,) = check.quarantined.to_pylist()
    assert (row[ROW], row["_rule"], row["_column"]) == (1, "time.off_calendar", "week")
    explained = explain_rows(check, "landing/sales/d.csv").quarantined["_message"][0].as_py()
    assert explained.startswith("landing/sales/d.csv: row 1, column 'week'")
    assert "calendar.off_calendar: snap" in explained  # says what to do
    (failure,) = check.failures(spec)
    assert (failure.rule, failure.count, failure.concern) == ("time.off_calendar", 1, "freshness")


def test_off_calendar_rows_are_snapped_when_the_spec_says_so():
    spec = load_spec("sales")
    spec.calendar.off_calendar = "snap"
    # S1: Thursday 8th snaps onto Monday 5th, which S1 has: a duplicate period, quarantined.
    # S2: Thursday 8th snaps onto Monday 5th, which S2 lacks: kept, snapped.
    weeks = [date(2026, 1, 5), date(2026, 1, 8), date(2026, 1, 8), date(2026, 1, 12)]
    table = _weekly(weeks, ["S1", "S1", "S2", "S2"])
    check = validate_rows(table, spec, for_scoring=False, as_of=AS_OF)
    assert check.kept[ROW].to_pylist() == [0, 2, 3]
    assert check.kept["week"].to_pylist() == [date(2026, 1, 5), date(2026, 1, 5), date(2026, 1, 12)]
    (row,) = check.quarantined.to_pylist()
    assert (row[ROW], row["_rule"], row["_value"]) == (1, "time.duplicate_period", "2026-01-08")
    on_calendar = validate_rows(_weekly([date(2026, 1, 5)]), spec, for_scoring=False)
    assert on_calendar.rows_quarantined == 0
