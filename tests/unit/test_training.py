"""Per-series training: statuses for bad series, baselines, engines, subsets, fast ridge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    root_mean_squared_error,
)

from mlops_assets.ml import persistence
from mlops_assets.ml.engines import TIMING_COLUMNS, result_schema, train_local, train_partition
from mlops_assets.ml.features import feature_matrix, to_series_frame
from mlops_assets.ml.fitting import (
    FAILED,
    FALLBACK,
    SKIPPED,
    TRAINED,
    fit_series,
    season_length,
)
from mlops_assets.ml.metrics import regression_metrics
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.sample_data import SalesShape, diabetes_table, sales_table
from mlops_assets.ml.spec import load_spec


@pytest.fixture(scope="module")
def sales():
    """The sales spec with the regression family alone: no fallback chain to serve the series
    ridge cannot (those are ``skipped``, with the reason)."""
    return load_spec("sales").model_copy(update={"fallback": []})


def _series(n_periods: int = 120, seed: int = 0) -> pd.DataFrame:
    df = sales_table(SalesShape(1, n_periods, seed=seed)).to_pandas()
    return df.astype({"store": str, "product": str})


def _spec_with(spec, **model):
    s = spec.model_copy(deep=True)
    for k, v in model.items():
        setattr(s.model, k, v)
    return s


def _bad(kind: str) -> pd.DataFrame:
    df = _series()
    match kind:
        case "too_short":
            return df.tail(30)
        case "lag_52_unavailable":
            return df.tail(60)
        case "few_complete_rows":
            return df.tail(80)
        case "shorter_than_holdout":
            return df.tail(5)
        case "constant_target":
            return df.assign(sales=7.0)
        case "all_nan_feature":
            return df.assign(price=np.nan)
        case "all_nan_target":
            return df.assign(sales=np.nan)
        case "duplicate_timestamps":
            return pd.concat([df, df.tail(1)])
        case "some_nan_targets":
            df.loc[df.index[[3, 40, 90]], "sales"] = np.nan
            return df
    raise ValueError(kind)


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("too_short", SKIPPED, "22 training periods < min_history=26"),
        ("lag_52_unavailable", SKIPPED, "no value in the training window: ['lag_52']"),
        ("few_complete_rows", SKIPPED, "20 complete training rows < min_history=26"),
        ("shorter_than_holdout", SKIPPED, "need more than holdout=8"),
        ("constant_target", SKIPPED, "constant target"),
        ("all_nan_feature", SKIPPED, "no value in the training window: ['price']"),
        ("all_nan_target", SKIPPED, "no value in the training window"),
        ("duplicate_timestamps", FAILED, "duplicate timestamps"),
        ("some_nan_targets", TRAINED, None),
    ],
)
def test_bad_series_get_a_status_and_reason(sales, kind, status, reason):
    model, info = train_partition(_bad(kind), sales)
    assert info["status"] == status
    assert (model is not None) == (status == TRAINED)
    if reason is None:
        assert info["reason"] is None
    else:
        assert reason in info["reason"]


def test_a_fit_that_raises_is_recorded_as_failed(sales):
    spec = _spec_with(sales, family="hist_gradient_boosting", params={"max_iter": -1})
    model, info = train_partition(_series(), spec)
    assert model is None
    assert info["status"] == FAILED
    assert "InvalidParameterError" in info["reason"]


def test_a_series_the_model_cannot_serve_falls_back_and_is_scored(sales):
    spec = sales.model_copy(update={"fallback": ["seasonal_naive", "naive"]})
    model, info = train_partition(_bad("constant_target"), spec)
    assert info["status"] == FALLBACK
    assert info["family"] == "seasonal_naive"
    assert "constant target" in info["reason"] and "fell back to seasonal_naive" in info["reason"]
    assert model is not None and info["mae"] == 0.0 and info["n_holdout"] == 16


def test_the_backtest_window_is_the_last_periods_and_counts_are_right(sales):
    df = _series(120)
    _, info = train_partition(df, sales)
    weeks = sorted(df["week"])
    assert info["n_holdout"] == 4 * 4  # 4 origins x horizon 4
    assert info["n_train"] == 120 - 8 - 52  # lag_52 needs a year of history
    assert info["train_end"] == str(weeks[-9])
    assert info["train_start"] == str(weeks[52])


def _origins(n: int, spec) -> list[int]:
    """Rows before each backtest origin, oldest first."""
    b = spec.backtest
    return [n - spec.horizon - (b.origins - 1 - k) * b.step for k in range(b.origins)]


def test_baselines_are_backtested_on_the_models_folds(sales):
    df = _series(120)
    _, info = train_partition(df, sales)
    y = df["sales"].to_numpy()
    h = sales.horizon
    naive = [abs(y[c + j] - y[c - 1]) for c in _origins(120, sales) for j in range(h)]
    seasonal = [abs(y[c + j] - y[c + j - 52]) for c in _origins(120, sales) for j in range(h)]
    assert info["naive_mae"] == pytest.approx(np.mean(naive))
    assert info["seasonal_naive_mae"] == pytest.approx(np.mean(seasonal))


def test_the_models_backtest_is_recursive_from_each_origin(sales):
    df = _series(120)
    model, info = train_partition(df, sales)
    y = df["sales"].to_numpy().copy()
    frame = to_series_frame(df, sales)
    errors = []
    for c in _origins(120, sales):
        # Forecast step by step, each prediction standing in for the actual it precedes.
        work = y.copy()
        work[c:] = np.nan
        for j in range(sales.horizon):
            part = frame.__class__(
                frame.keys,
                np.array([0, c + j + 1]),
                frame.time[: c + j + 1],
                work[: c + j + 1],
                {k: v[: c + j + 1] for k, v in frame.exog.items()},
            )
            x = feature_matrix(part, sales)[-1:]
            work[c + j] = max(float(model.predict(x)[0]), 0.0)
            errors.append(abs(y[c + j] - work[c + j]))
    assert info["mae"] == pytest.approx(np.mean(errors), rel=1e-9)


@pytest.mark.parametrize("family", ["ridge", "linear", "hist_gradient_boosting", "random_forest"])
def test_every_family_trains_and_round_trips(sales, family):
    params = {"max_iter": 20} if family == "hist_gradient_boosting" else {}
    params = {"n_estimators": 5} if family == "random_forest" else params
    spec = _spec_with(sales, family=family, params=params)
    df = _series(150)
    model, info = train_partition(df, spec)
    assert info["status"] == TRAINED, info["reason"]
    frame = to_series_frame(df, spec)
    X = feature_matrix(frame, spec)[-8:]
    loaded = persistence.loads(persistence.dumps(model))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("alpha", [0.01, 1.0, 50.0])
def test_fast_ridge_equals_pipeline_fit(sales, alpha):
    spec = _spec_with(sales, params={"alpha": alpha})
    df = _series(300, seed=3)
    frame = to_series_frame(df, spec)
    X = feature_matrix(frame, spec)
    fast = fit_series(X, frame.target, frame.time, spec)
    slow = fit_series(X, frame.target, frame.time, spec, fast=False)
    np.testing.assert_allclose(fast.model[-1].coef_, slow.model[-1].coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fast.model[0].scale_, slow.model[0].scale_, rtol=1e-9)
    rows = X[-8:]
    np.testing.assert_allclose(fast.model.predict(rows), slow.model.predict(rows), rtol=1e-9)


def test_fast_ridge_handles_a_constant_feature(sales):
    df = _series(200).assign(promo=0)
    spec = _spec_with(sales, params={"alpha": 1.0})
    frame = to_series_frame(df, spec)
    X = feature_matrix(frame, spec)
    fast = fit_series(X, frame.target, frame.time, spec)
    slow = fit_series(X, frame.target, frame.time, spec, fast=False)
    np.testing.assert_allclose(fast.model.predict(X[-8:]), slow.model.predict(X[-8:]), rtol=1e-9)
    assert fast.model[-1].coef_[-1] == 0.0


def test_diabetes_single_partition_beats_naive():
    spec = load_spec("diabetes")
    _model, info = train_partition(diabetes_table().to_pandas(), spec)
    assert info["status"] == TRAINED
    assert info["n_holdout"] == 88
    assert info["mae"] < 0.6 * info["naive_mae"]
    assert 35 < info["mae"] < 55  # Ridge on diabetes: MAE ~43


def test_sales_models_beat_naive_on_median(sales):
    results = train_local(sales_table(SalesShape(40, 160)), sales, max_workers=1)
    assert (results["status"] == TRAINED).all()
    assert results["mae"].median() < 0.8 * results["naive_mae"].median()
    assert (results["mae"] < results["naive_mae"]).mean() > 0.8


def test_local_engine_never_raises_for_bad_series(sales):
    good = sales_table(SalesShape(3, 120)).to_pandas().astype({"store": str, "product": str})
    bad = _bad("constant_target").assign(store="BAD")
    short = _bad("too_short").assign(store="SHORT")
    results = train_local(pd.concat([good, bad, short]), sales, max_workers=1)
    by_id = results.set_index("series_id")["status"].to_dict()
    assert by_id["store=BAD/product=P000"] == SKIPPED
    assert by_id["store=SHORT/product=P000"] == SKIPPED
    assert sum(s == TRAINED for s in by_id.values()) == 3
    assert list(results.columns) == result_schema(sales).names


def test_subset_training(sales):
    table = sales_table(SalesShape(12, 100))
    wanted = ["store=S0000/product=P003", ("S0000", "P007")]
    results = train_local(table, sales, series=wanted, max_workers=1)
    assert sorted(results["series_id"]) == ["store=S0000/product=P003", "store=S0000/product=P007"]


def test_pool_gives_the_same_results_as_one_process(sales):
    table = sales_table(SalesShape(24, 150))
    one = train_local(table, sales, max_workers=1)
    two = train_local(table, sales, max_workers=2, chunk_rows=500)
    pd.testing.assert_frame_equal(
        one.drop(columns=list(TIMING_COLUMNS)), two.drop(columns=list(TIMING_COLUMNS))
    )
    assert one["model_sha256"].notna().all()


def test_the_engine_reports_where_its_workers_spent_their_time(sales):
    """Phases summed over the workers: the calendar and features, the candidates' backtests
    and choice, the fits, the records and their models' bytes; none counted twice (the
    backtest's seconds leave out the fits it ran, the records' leave out serialisation)."""
    spent = Phases()
    out = train_local(sales_table(SalesShape(12, 150)), sales, max_workers=2, phases=spent)
    s = spent.seconds
    assert {"prepare", "features", "backtest", "fit", "records", "serialize", "wall"} <= set(s)
    assert min(s[k] for k in ("features", "backtest", "fit", "records", "serialize")) > 0
    assert out["status"].eq("trained").any()  # so fits and serialisation ran
    # The workers' phases cover their work: within the two workers' wall time.
    worked = sum(s[k] for k in ("features", "backtest", "fit", "records", "serialize"))
    assert worked <= 2 * s["wall"]


def test_records_verify_and_load(sales):
    results = train_local(sales_table(SalesShape(3, 100)), sales, max_workers=1)
    for data, digest in zip(results["model"], results["model_sha256"], strict=True):
        assert persistence.load_verified(data, digest)[-1].coef_.shape == (10,)


@pytest.mark.parametrize(
    ("actual", "predicted"),
    [
        ([1.0, 2.0, 4.0], [1.5, 2.0, 3.0]),
        ([10.0, -3.0, 7.5, 2.0], [9.0, -1.0, 7.5, 0.0]),
    ],
)
def test_metrics_match_scikit_learn(actual, predicted):
    a, p = np.array(actual), np.array(predicted)
    m = regression_metrics(a, p)
    assert m["mae"] == pytest.approx(mean_absolute_error(a, p))
    assert m["rmse"] == pytest.approx(root_mean_squared_error(a, p))
    assert m["mape"] == pytest.approx(100 * mean_absolute_percentage_error(a, p))
    assert m["smape"] == pytest.approx(100 * np.mean(2 * np.abs(a - p) / (np.abs(a) + np.abs(p))))


def test_metrics_edge_cases():
    m = regression_metrics(np.array([0.0, 2.0, np.nan]), np.array([0.0, 1.0, 5.0]))
    assert np.isnan(m["mape"])
    assert m["smape"] == pytest.approx(100 * (0 + 2 / 3) / 2)
    assert m["mae"] == pytest.approx(0.5)
    assert all(np.isnan(v) for v in regression_metrics(np.array([]), np.array([])).values())


@pytest.mark.parametrize(("freq", "season"), [("W-MON", 52), ("D", 7), ("MS", 12), ("zz", None)])
def test_season_length(freq, season):
    assert season_length(freq) == season


def _gapped(df: pd.DataFrame, rows: list[int]) -> pd.DataFrame:
    return df.drop(index=df.index[rows])


@pytest.mark.parametrize("fill", ["zero", "none"])
def test_a_series_with_missing_weeks_trains_with_lags_by_period(sales, fill):
    """Missing weeks are laid out as periods (filled per the spec) before features, so lag_k
    is k weeks back: the model equals one trained on the rows filled by hand."""
    spec = sales.model_copy(deep=True)
    spec.calendar.fill = (
        {"sales": "zero", "promo": "zero", "price": "ffill"} if fill == "zero" else {}
    )
    df = _series(120)
    missing = [70, 71, 72]
    by_hand = df.copy()
    if fill == "zero":
        by_hand.loc[by_hand.index[missing], ["sales", "promo"]] = 0
        by_hand.loc[by_hand.index[missing], "price"] = df["price"].iloc[69]
    else:
        by_hand.loc[by_hand.index[missing], ["sales", "price", "promo"]] = np.nan
    got = train_local(_gapped(df, missing), spec, max_workers=1)
    want = train_local(by_hand, spec, max_workers=1)
    assert got["status"].tolist() == [TRAINED]
    assert got["model_sha256"].tolist() == want["model_sha256"].tolist()
    assert got["n_train"].tolist() == want["n_train"].tolist()
    tail = got["history_tail"][0]
    np.testing.assert_array_equal(tail, want["history_tail"][0])
    if fill == "none":  # an unobserved period is never a training row, nor its lags'
        assert got["n_train"][0] < train_local(_gapped(df, []), spec, max_workers=1)["n_train"][0]


def test_a_series_off_the_calendar_fails_alone(sales):
    df = _series(120)
    other = _series(120, seed=1).assign(product="P999")
    df.loc[df.index[10], "week"] = df["week"].iloc[10] + pd.Timedelta(days=3)  # a Thursday
    out = train_local(pd.concat([df, other]), sales, max_workers=1)
    by_status = dict(zip(out["status"], out["reason"], strict=True))
    assert set(by_status) == {FAILED, TRAINED}
    assert "time.off_calendar" in by_status[FAILED]


def test_a_share_without_series_converts_to_its_arrow_schema():
    """A remote training instance whose share of the series is empty (4 series, 2 instances)
    writes an empty part: its list columns must still convert to their Arrow types."""
    import pyarrow as pa

    spec = load_spec("sales")
    results = train_local(sales_table(SalesShape(2, 60, seed=2)), spec, series=[], max_workers=1)
    table = pa.Table.from_pandas(results, schema=result_schema(spec), preserve_index=False)
    assert table.num_rows == 0 and table.schema == result_schema(spec)
