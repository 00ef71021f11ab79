"""Features: vectorised across series, equal to pandas groupby references, no leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.ml.features import (
    feature_columns,
    feature_columns_at,
    feature_matrix,
    feature_names,
    positions,
    select_series,
    to_series_frame,
)
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec


@pytest.fixture(scope="module")
def spec():
    return load_spec("sales").model_copy(deep=True)


def _ragged_sales(seed: int = 0) -> pd.DataFrame:
    """Five series of different lengths, shuffled, with a few missing targets."""
    df = sales_table(SalesShape(5, 80, seed=seed)).to_pandas()
    df["store"], df["product"] = df["store"].astype(str), df["product"].astype(str)
    keep = dict(zip(df["product"].unique(), [80, 60, 55, 70, 57], strict=True))
    from_end = df.groupby("product").cumcount(ascending=False)
    df = df[from_end < df["product"].map(keep)]
    df.loc[df.sample(6, random_state=1).index, "sales"] = np.nan
    return df.sample(frac=1.0, random_state=2).reset_index(drop=True)


def _pandas_reference(df: pd.DataFrame, spec) -> pd.DataFrame:
    df = df.sort_values([*spec.series_keys, spec.time]).reset_index(drop=True)
    g = df.groupby(spec.series_keys, sort=False)[spec.target]
    out = pd.DataFrame(index=df.index)
    for k in spec.features.lags:
        out[f"lag_{k}"] = g.shift(k)
    for w in spec.features.rolling:
        out[f"rolling_mean_{w}"] = g.transform(
            lambda s, w=w: s.shift(1).rolling(w, min_periods=w).mean()
        )
    return out


def test_feature_names_follow_the_spec(spec):
    assert feature_names(spec) == [
        "lag_1",
        "lag_2",
        "lag_4",
        "lag_52",
        "rolling_mean_4",
        "rolling_mean_13",
        "fourier_year_sin",
        "fourier_year_cos",
        "price",
        "promo",
    ]


def test_lags_and_rolling_means_equal_pandas_groupby(spec):
    df = _ragged_sales()
    frame = to_series_frame(df, spec)
    X = feature_matrix(frame, spec)
    ref = _pandas_reference(df, spec)
    names = feature_names(spec)
    for col in ref.columns:
        np.testing.assert_allclose(X[:, names.index(col)], ref[col].to_numpy(), rtol=1e-12)
    assert frame.n_series == 5
    assert np.diff(frame.offsets).tolist() == [80, 60, 55, 70, 57]


def test_shuffled_input_is_grouped_and_time_ordered(spec):
    frame = to_series_frame(_ragged_sales(), spec)
    pos = positions(frame.offsets)
    same = pos[1:] > 0
    assert np.all(frame.time[1:][same] > frame.time[:-1][same])
    assert frame.keys == sorted(frame.keys)


def test_features_never_see_the_row_or_the_future(spec):
    df = sales_table(SalesShape(3, 120)).to_pandas()
    X = feature_matrix(to_series_frame(df, spec), spec)
    changed = df.copy()
    later = changed.groupby("product", observed=True).cumcount() >= 100
    changed.loc[later, "sales"] = 1e6
    X2 = feature_matrix(to_series_frame(changed, spec), spec)
    frame = to_series_frame(df, spec)
    upto = positions(frame.offsets) <= 100
    np.testing.assert_array_equal(X[upto], X2[upto])
    assert not np.array_equal(X[~upto], X2[~upto])


def test_batches_give_bit_identical_features(spec):
    frame = to_series_frame(sales_table(SalesShape(7, 150)), spec)
    whole = feature_matrix(frame, spec)
    parts = [feature_matrix(c, spec) for c in frame.chunks(max_rows=300)]
    assert len(parts) > 2
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    one = [feature_matrix(frame.slice_series(i, i + 1), spec) for i in range(frame.n_series)]
    np.testing.assert_array_equal(np.concatenate(one), whole)


def test_features_at_some_rows_equal_the_whole_frames_bit_for_bit(spec):
    """What a recursive forecast computes at each step: the features of a few rows only."""
    df = _ragged_sales(seed=4)
    frame = to_series_frame(df, spec)
    whole = feature_columns(frame, spec)
    rng = np.random.default_rng(0)
    for rows in (np.arange(frame.n_rows), np.sort(rng.choice(frame.n_rows, 40, replace=False))):
        at = feature_columns_at(frame, spec, rows)
        assert len(at) == len(whole)
        for a, w in zip(at, whole, strict=True):
            np.testing.assert_array_equal(a, w[rows])
    # Every series' first rows: lags and windows reaching before the series are NaN.
    firsts = frame.offsets[:-1]
    assert np.isnan(feature_columns_at(frame, spec, firsts)[0]).all()


@pytest.mark.parametrize(
    ("calendar", "day", "expected"),
    [
        (["fourier_year"], "2024-01-01", [0.0, 1.0]),
        (["month"], "2024-03-15", [3.0]),
        (["day_of_week"], "2024-03-15", [4.0]),
        (["week_of_year"], "2024-12-30", [1.0]),
    ],
)
def test_calendar_features(spec, calendar, day, expected):
    s = spec.model_copy(deep=True)
    s.features.lags, s.features.rolling, s.features.exogenous = [], [], []
    s.features.calendar = calendar
    df = pd.DataFrame(
        {"store": ["S"], "product": ["P"], "week": [pd.Timestamp(day).date()], "sales": [1.0]}
    )
    X = feature_matrix(to_series_frame(df, s), s)
    np.testing.assert_allclose(X[0], expected, atol=1e-12)


@pytest.mark.parametrize(
    "calendar", [["fourier_year"], ["month"], ["day_of_week"], ["week_of_year"]]
)
def test_calendar_features_are_the_same_per_day_table_or_row_by_row(spec, calendar):
    """Many rows over a short range of days go through a per-day table; two rows years apart
    (a range longer than the rows) are computed row by row: the same values, bit for bit."""
    s = spec.model_copy(deep=True)
    s.features.lags, s.features.rolling, s.features.exogenous = [], [], []
    s.features.calendar = calendar
    rng = np.random.default_rng(3)
    days = pd.Timestamp("2019-12-20") + pd.to_timedelta(rng.integers(0, 800, 5_000), "D")
    many = pd.DataFrame(  # one series per row, in row order
        {"store": "S", "product": [f"P{i:05d}" for i in range(5_000)], "week": days.date}
    ).assign(sales=1.0)
    table = feature_matrix(to_series_frame(many, s), s)
    far = many.iloc[[0]].assign(product="Z", week=pd.Timestamp("2031-06-01").date())
    for row in rng.choice(5_000, 25, replace=False):
        alone = feature_matrix(to_series_frame(pd.concat([many.iloc[[row]], far]), s), s)
        np.testing.assert_array_equal(table[row], alone[0])


@pytest.mark.parametrize("field", ["lags", "rolling"])
def test_leaking_features_are_refused(spec, field):
    s = spec.model_copy(deep=True)
    setattr(s.features, field, [0, 1])
    frame = to_series_frame(sales_table(SalesShape(1, 10)), s)
    with pytest.raises(ValueError, match=">= 1 period"):
        feature_matrix(frame, s)


def test_select_series_by_id_or_key_tuple(spec):
    frame = to_series_frame(sales_table(SalesShape(6, 20)), spec)
    picked = select_series(frame, spec, ["store=S0000/product=P004", ("S0000", "P001")])
    assert picked.keys == [("S0000", "P001"), ("S0000", "P004")]
    assert picked.n_rows == 40
    expected = [frame.slice_series(i, i + 1).target for i in (1, 4)]
    np.testing.assert_array_equal(picked.target, np.concatenate(expected))
