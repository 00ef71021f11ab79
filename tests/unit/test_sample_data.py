import numpy as np
import pyarrow.compute as pc
import pytest

from mlops_assets.ml.sample_data import (
    BAD_KINDS,
    SalesShape,
    diabetes_table,
    make_bad_drop,
    sales_table,
    split_by_time,
)
from mlops_assets.ml.spec import load_spec


def test_same_seed_same_data_different_seed_different_data():
    shape = SalesShape(n_series=23, n_periods=60, seed=7)
    a = sales_table(shape)
    assert a.equals(sales_table(shape))
    assert not a.column("sales").equals(sales_table(SalesShape(23, 60, seed=8)).column("sales"))


def test_a_series_does_not_depend_on_how_many_are_generated():
    small = sales_table(SalesShape(n_series=300, n_periods=20, seed=3))
    large = sales_table(SalesShape(n_series=600, n_periods=20, seed=3))
    assert small["sales"].equals(large["sales"].slice(0, small.num_rows))


@pytest.mark.parametrize("n_series,n_periods", [(10, 52), (150, 10), (1, 200)])
def test_sizes_and_shape(n_series, n_periods):
    t = sales_table(SalesShape(n_series, n_periods))
    assert t.num_rows == n_series * n_periods
    keys = set(zip(t["store"].to_pylist(), t["product"].to_pylist(), strict=True))
    assert len(keys) == n_series
    assert pc.count_distinct(t["week"]).as_py() == n_periods
    assert str(pc.max(t["week"]).as_py()) == "2026-11-16"
    assert pc.min(t["sales"]).as_py() >= 0
    assert set(pc.unique(t["promo"]).to_pylist()) <= {0, 1}


def test_sales_have_the_promised_structure():
    t = sales_table(SalesShape(200, 260, seed=1)).to_pandas()
    lifted = t.groupby("promo")["sales"].mean()
    assert lifted[1] > lifted[0] * 1.05, "promotions should lift sales"
    # Yearly seasonality: the same series a year apart correlates more than half a year apart.
    s = t[(t.store == "S0000") & (t["product"] == "P000")]["sales"].to_numpy()
    year, half = np.corrcoef(s[:-52], s[52:])[0, 1], np.corrcoef(s[:-26], s[26:])[0, 1]
    assert year > half


def test_diabetes_is_one_series_with_the_spec_columns():
    spec = load_spec("diabetes")
    t = diabetes_table()
    assert t.num_rows == 442
    assert set(t.column_names) == set(spec.columns)
    assert pc.unique(t["cohort"]).to_pylist() == ["all"]


def test_split_by_time_gives_history_then_one_period_each_and_loses_nothing():
    t = sales_table(SalesShape(4, 30))
    parts = split_by_time(t, "week", 3)
    assert [p.num_rows for p in parts] == [4 * 28, 4, 4]
    assert sum(p.num_rows for p in parts) == t.num_rows


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_bad_kind_differs_from_the_good_drop(kind):
    df = sales_table(SalesShape(3, 12)).to_pandas()
    data, ext = make_bad_drop(df, "sales", "week", kind)
    good = df.to_csv(index=False).encode()
    assert ext in ("csv", "parquet")
    assert data != good
