"""The realistic mode of the sample sales data: ragged, gappy, intermittent, deterministic."""

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.ml import ragged_sales
from mlops_assets.ml.sample_data import SalesShape, iter_sales, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.storage import LocalStorage

SHAPE = SalesShape(n_series=2_000, n_periods=120, seed=5, realistic=True)


@pytest.fixture(scope="module")
def per_series() -> pd.DataFrame:
    t = sales_table(SHAPE).to_pandas()
    t["i"] = pd.Index(SHAPE.weeks).get_indexer(pd.to_datetime(t["week"]))
    g = t.groupby(["store", "product"], observed=True)
    return pd.DataFrame(
        {
            "first": g["i"].min(),
            "last": g["i"].max(),
            "rows": g.size(),
            "zero_share": g["sales"].apply(lambda s: float((s == 0).mean())),
        }
    )


def test_every_series_is_there_with_shares_of_each_kind_near_their_targets(per_series):
    s = per_series
    assert len(s) == SHAPE.n_series
    n = SHAPE.n_series
    tol = 4 * np.sqrt(0.25 / n)  # four binomial standard deviations at worst
    assert abs((s["first"] > 0).mean() - ragged_sales.NEW_SHARE) < tol
    # A series that starts in the last week cannot also end early: a little under the target.
    assert abs((s["last"] < SHAPE.n_periods - 1).mean() - ragged_sales.DISCONTINUED_SHARE) < tol
    gappy = s["rows"] < s["last"] - s["first"] + 1
    # Short lives have few inner weeks to miss: fewer than GAPPY_SHARE show a gap.
    assert 0.5 * ragged_sales.GAPPY_SHARE < gappy.mean() <= ragged_sales.GAPPY_SHARE + tol
    slow = (s["zero_share"] > 0.3) & (s["rows"] >= 20)
    assert abs(slow.mean() - ragged_sales.SLOW_SHARE) < 2 * tol
    assert ((s["first"] > 0) | (s["last"] < SHAPE.n_periods - 1)).mean() > 0.25  # ragged


def test_no_row_outside_a_series_life_and_rows_are_unique():
    for first, chunk in zip(range(0, SHAPE.n_series, 250), iter_sales(SHAPE), strict=True):
        rag = ragged_sales.draw(np.random.default_rng([SHAPE.seed, first, 1]), 250, 120)
        df = chunk.to_pandas()
        i = pd.Index(SHAPE.weeks).get_indexer(pd.to_datetime(df["week"]))
        j = (df["store"].str[1:].astype(int) * 100 + df["product"].str[1:].astype(int)) - first
        assert (i >= rag.start[j]).all() and (i < rag.end[j]).all()
        assert not df.duplicated(["store", "product", "week"]).any()
        assert (df["sales"] >= 0).all()


def test_deterministic_and_independent_of_the_number_of_series():
    a = sales_table(SalesShape(300, 60, seed=2, realistic=True))
    assert a.equals(sales_table(SalesShape(300, 60, seed=2, realistic=True)))
    bigger = sales_table(SalesShape(600, 60, seed=2, realistic=True))
    assert a["sales"].equals(bigger["sales"].slice(0, a.num_rows))
    other = sales_table(SalesShape(300, 60, seed=3, realistic=True))
    assert not a["sales"].equals(other["sales"])
    dense = sales_table(SalesShape(300, 60, seed=2))
    assert a.num_rows < dense.num_rows  # rows removed; the default mode is unchanged


def test_land_sales_splits_ragged_chunks_on_the_dataset_weeks(tmp_path):
    spec = load_spec("sales")
    storage = LocalStorage(root=str(tmp_path))
    shape = SalesShape(40, 30, seed=1, realistic=True)
    landed = land_sales(storage, spec, shape, n_drops=3)
    names = [b.name.rsplit("/", 1)[-1] for b in landed]
    weeks = [str(w.date()) for w in shape.weeks]
    assert names == [f"history_until_{weeks[-3]}.parquet"] + [
        f"week_{w}.parquet" for w in weeks[-2:]
    ]
    parts = [pq.read_table(storage.local_path(b.name)) for b in landed]
    assert sum(p.num_rows for p in parts) == sales_table(shape).num_rows
    for p, w in zip(parts[1:], weeks[-2:], strict=True):
        assert {str(d) for d in pc.unique(p["week"]).to_pylist()} <= {w}
