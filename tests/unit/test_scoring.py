"""The scoring core shared by batch and real-time scoring, and the model-set reader."""

import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_assets.ml import persistence
from mlops_assets.ml.engines import result_schema, train_local
from mlops_assets.ml.features import feature_matrix, tail_length, to_series_frame
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.scoring import RequestError, SeriesModel, score
from mlops_assets.ml.spec import load_spec
from tests.fixtures.model_sets import written_reader

SPEC = load_spec("sales")
CUT = pd.Timestamp("2026-10-01").date()


@pytest.fixture(scope="module")
def data():
    full = sales_table(SalesShape(6, 140, seed=2)).to_pandas()
    full["store"], full["product"] = full.store.astype(str), full["product"].astype(str)
    train = full[full.week < CUT].reset_index(drop=True)
    results = train_local(pa.Table.from_pandas(train, preserve_index=False), SPEC, max_workers=1)
    table = pa.Table.from_pandas(results, schema=result_schema(SPEC), preserve_index=False)
    table = table.append_column("trained_in", pa.array(["2026-09-28/abc"] * table.num_rows))
    return full, train, table


@pytest.fixture(scope="module")
def models(data):
    _, _, table = data
    return {
        r["series_id"]: SeriesModel(
            persistence.loads(r["model"]),
            r["trained_in"],
            r["history_end"],
            np.array(r["history_tail"]),
        )
        for r in table.to_pylist()
    }


def test_one_step_with_known_history_equals_the_model_on_training_features(data, models):
    full, _, _ = data
    # Score a series' training rows (targets known): the features are the training features.
    series = full[(full.week < CUT) & (full["product"] == "P001")]
    out = score(series, SPEC, models.get)
    X = feature_matrix(to_series_frame(series, SPEC), SPEC)
    complete = np.isfinite(X).all(axis=1)
    expected = models["store=S0000/product=P001"].model.predict(X[complete])
    np.testing.assert_allclose(out.prediction.to_numpy()[complete], expected, rtol=1e-10)
    # Rows whose 52-week lag falls before the series began cannot be scored, and say so.
    assert (out.error[~complete] == "insufficient_history").all()
    assert out.error[complete].isna().all() and complete.sum() == len(series) - 52
    assert set(out.model_version[complete]) == {"2026-09-28/abc"}


def test_future_periods_are_forecast_recursively_from_the_stored_tail(data, models):
    full, _, _ = data
    future = full[full.week >= CUT]
    requests = future.drop(columns=["sales"]).sample(frac=1.0, random_state=0)  # any order
    out = score(requests, SPEC, models.get)
    assert out.error.isna().all()
    assert list(out.series_id.str.contains("store=")) == [True] * len(requests)
    actual = future.set_index(["store", "product", "week"]).loc[
        list(zip(requests.store, requests["product"], requests.week, strict=True)), "sales"
    ]
    mae = np.mean(np.abs(out.prediction.to_numpy() - actual.to_numpy()))
    naive = np.mean(np.abs(actual.to_numpy() - actual.mean()))
    assert mae < naive, (mae, naive)
    # The first future period depends only on the tail: same as a one-row request.
    first = future[future.week == future.week.min()].drop(columns=["sales"])
    alone = score(first, SPEC, models.get).prediction.to_numpy()
    both = out.set_index(requests.index).loc[first.index, "prediction"].to_numpy()
    np.testing.assert_allclose(alone, both)


@pytest.mark.parametrize(
    "row,code",
    [
        ({"store": "S9", "product": "P0", "week": "2026-10-05"}, "unknown_series"),
        ({"store": "S0000", "product": "P000", "week": "2026-10-08"}, "off_calendar"),
        (
            {"store": "S0000", "product": "P001", "week": "2026-10-05", "price": None},
            "missing_feature",
        ),
        ({"store": "S0000", "product": "P002", "week": "not a date"}, "bad_value"),
    ],
)
def test_bad_rows_get_their_own_error_and_the_good_row_is_still_scored(models, row, code):
    good = {"store": "S0000", "product": "P003", "week": "2026-10-05", "price": 5.0, "promo": 0}
    bad = {"price": 5.0, "promo": 0, **row}
    out = score([good, bad], SPEC, models.get)
    assert out.error.tolist() == [None, code]
    assert np.isfinite(out.prediction[0]) and np.isnan(out.prediction[1])
    assert out.message[1]


def test_a_series_without_a_model_says_why(models):
    out = score(
        [{"store": "S1", "product": "P1", "week": "2026-10-05", "price": 1.0, "promo": 0}],
        SPEC,
        lambda sid: "skipped: 10 training periods, min_history is 26",
    )
    assert out.error[0] == "no_model" and "min_history" in out.message[0]


def test_a_missing_column_fails_the_request_with_the_columns_it_needs(models):
    with pytest.raises(RequestError, match=r"missing column\(s\) \['price'\]"):
        score(
            [{"store": "S0000", "product": "P001", "week": "2026-10-05", "promo": 0}],
            SPEC,
            models.get,
        )


def _reader(data, tmp_path, **kw):
    _, _, table = data
    return written_reader(table, tmp_path, "models/set", "2026-09-28/abc", pack_bytes=2_000, **kw)


def test_reader_loads_lazily_verifies_and_stays_within_its_bounds(data, tmp_path):
    reader, packs = _reader(data, tmp_path, max_models=2)
    assert len(packs) > 1, "the test needs models spread over several packs"
    assert reader.stats.misses == 0
    for sid in reader.series:
        assert isinstance(reader.model_for(sid), SeriesModel)
    assert reader.stats.models == 2 and reader.stats.evictions == len(reader.series) - 2
    assert reader.model_for("store=nope/product=nope") is None


def test_reader_refuses_a_tampered_model(data, tmp_path):
    reader, packs = _reader(data, tmp_path)
    name = packs[0][0]
    blob = bytearray((tmp_path / name).read_bytes())
    blob[40] ^= 0xFF
    (tmp_path / name).write_bytes(bytes(blob))
    with pytest.raises(persistence.ModelIntegrityError):
        reader.model_for(reader.series[0])


def test_reader_is_safe_under_concurrent_first_requests(data, tmp_path):
    reader, _ = _reader(data, tmp_path, max_models=100)
    errors = []

    def hit():
        try:
            for sid in reader.series:
                assert reader.model_for(sid) is not None
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert reader.stats.misses == len(reader.series)


def test_mixed_json_types_in_a_column_are_judged_row_by_row(models):
    rows = [
        {"store": "S0000", "product": "P003", "week": "2026-10-05", "price": 5.0, "promo": 0},
        {"store": "S0000", "product": "P004", "week": "2026-10-05", "price": "cheap", "promo": 0},
        {"store": 7, "product": "P004", "week": "2026-10-05", "price": 5.0, "promo": 0},
    ]
    out = score(rows, SPEC, models.get)
    assert out.error.tolist() == [None, "missing_feature", "unknown_series"]
    assert out.series_id[2] == "store=7/product=P004"
    assert np.isfinite(out.prediction[0])


def test_the_last_trained_periods_can_be_rescored_from_the_stored_tail(data, models):
    """A drop that repeats the newest trained week (with or without targets) is scorable."""
    _full, train, _ = data
    last_week = train[train.week == train.week.max()]
    for rows in (last_week, last_week.drop(columns=["sales"])):
        out = score(rows, SPEC, models.get)
        assert out.error.isna().all(), out.message.dropna().unique()
        assert np.isfinite(out.prediction.astype(float)).all()


def _gap_request(models, spec, weeks_after: int, target=None):
    """One row ``weeks_after`` periods after series P000's history (1: no gap)."""
    m = models["store=S0000/product=P000"]
    week = pd.Timestamp(m.history_end) + pd.Timedelta(weeks=weeks_after)
    row = {"store": "S0000", "product": "P000", "week": str(week.date()), "price": 5.0, "promo": 0}
    return [row] if target is None else [{**row, "sales": target}]


def test_a_request_after_a_gap_is_scored_per_the_fill_rules(models):
    """sales: fill zero. Two weeks nobody sent are two weeks of zero sales, as in training:
    the same prediction as a request that sends those weeks with zero sales."""
    after_gap = score(_gap_request(models, SPEC, 3), SPEC, models.get)
    assert after_gap.error.isna().all(), after_gap.message.tolist()
    sent = _gap_request(models, SPEC, 1, 0.0) + _gap_request(models, SPEC, 2, 0.0)
    explicit = score(sent + _gap_request(models, SPEC, 3), SPEC, models.get)
    assert after_gap.prediction[0] == pytest.approx(explicit.prediction[2], rel=1e-12)


def test_a_gap_the_spec_does_not_fill_is_forecast_over(models):
    """fill none for sales: the weeks nobody sent are unknown. They are forecast recursively,
    as the backtest forecasts every step after its origin: a request for the third week after
    the history gets the same prediction as a request for all three weeks (sales unknown)."""
    spec = SPEC.model_copy(deep=True)
    spec.calendar.fill = {"price": "zero", "promo": "zero"}  # sales: none
    third = score(_gap_request(models, spec, 3), spec, models.get)
    assert third.error.isna().all(), third.message.tolist()
    steps = [{**r, "price": 0.0} for w in (1, 2) for r in _gap_request(models, spec, w)]
    all_three = score(steps + _gap_request(models, spec, 3), spec, models.get)
    assert third.prediction[0] == pytest.approx(all_three.prediction[2], rel=1e-12)
    # Under fill zero for sales the same request reads the two weeks as no sales.
    zero = score(_gap_request(models, SPEC, 3), SPEC, models.get)
    assert zero.prediction[0] != pytest.approx(third.prediction[0], rel=1e-9)


def test_a_gap_that_cannot_be_forecast_over_says_what_to_send(models):
    """The stored history holds targets only: a price the spec forward-fills has no value to
    carry into weeks nobody sent, so they cannot be forecast, and the row behind them says so."""
    spec = SPEC.model_copy(deep=True)
    spec.calendar.fill = {"price": "ffill", "promo": "zero"}  # sales: none
    out = score(_gap_request(models, spec, 3), spec, models.get)
    assert out.error.tolist() == ["gap_after_history"]
    assert "Send those periods with their exogenous values" in out.message[0]
    assert score(_gap_request(models, spec, 1), spec, models.get).error.isna().all()


def test_off_calendar_request_rows_are_snapped_when_the_spec_says_so(models):
    spec = SPEC.model_copy(deep=True)
    spec.calendar.off_calendar = "snap"
    on = _gap_request(models, spec, 1)
    off = [{**on[0], "week": str((pd.Timestamp(on[0]["week"]) + pd.Timedelta(days=3)).date())}]
    snapped = score(off, spec, models.get)
    assert snapped.error.isna().all()
    assert snapped.time[0] == on[0]["week"]
    assert snapped.prediction[0] == score(on, spec, models.get).prediction[0]


def test_predictions_are_clipped_to_the_target_bounds(models):
    spec = SPEC.model_copy(deep=True)
    spec.columns["sales"] = spec.columns["sales"].model_copy(update={"min": 1e9})
    out = score(_gap_request(models, spec, 1), spec, models.get)
    assert out.prediction.tolist() == [1e9]
    spec.columns["sales"] = spec.columns["sales"].model_copy(update={"min": None, "max": -5.0})
    assert score(_gap_request(models, spec, 1), spec, models.get).prediction.tolist() == [-5.0]


def test_training_and_scoring_agree_on_a_series_with_gaps():
    """The features training computes for a period equal those scoring computes for it, on a
    series with missing weeks: scoring the training rows gives the model on training's X."""
    from mlops_assets.ml.calendar import calendar_series

    full = sales_table(SalesShape(1, 140, seed=5)).to_pandas()
    full["store"], full["product"] = full.store.astype(str), full["product"].astype(str)
    gapped = full.drop(index=full.index[[60, 61, 62, 90, 120, *range(130, 140)]])
    results = train_local(gapped, SPEC, max_workers=1)
    r = results.iloc[0]
    assert r["status"] == "trained"
    model = persistence.loads(r["model"])
    cal = calendar_series(to_series_frame(gapped, SPEC), SPEC)
    X = feature_matrix(cal.frame, SPEC)
    observed = cal.source >= 0
    complete = np.isfinite(X).all(axis=1) & observed
    lookup = {r["series_id"]: SeriesModel(model, "v", r["history_end"], r["history_tail"])}
    out = score(gapped.sample(frac=1.0, random_state=1), SPEC, lookup.get)
    by_week = dict(zip(pd.to_datetime(out.time), out.prediction, strict=True))
    got = np.array([by_week[pd.Timestamp(t)] for t in cal.frame.time[complete]])
    np.testing.assert_allclose(got, model.predict(X[complete]), rtol=1e-10)
    # A forecast after the history, from the tail training stored: same as from the rows.
    future = full.iloc[[130]].drop(columns="sales")
    from_tail = score(future, SPEC, lookup.get).prediction[0]
    from_rows = score(pd.concat([gapped, future]), SPEC, lookup.get).prediction.iloc[-1]
    assert from_tail == pytest.approx(from_rows, rel=1e-10)


def test_real_time_fast_path_clips_and_agrees_with_batch_after_a_gap(models):
    """serving.fast: the next period takes the fast path, a request after a gap the shared
    path; both clipped to the bounds, both as ``score`` answers."""
    from mlops_assets.serving.fast import score_records

    spec = SPEC.model_copy(deep=True)
    spec.columns["sales"] = spec.columns["sales"].model_copy(update={"min": 1e9})
    nxt = _gap_request(models, spec, 1)
    other = {**_gap_request(models, spec, 3)[0], "product": "P001"}
    m = models["store=S0000/product=P001"]
    other["week"] = str((pd.Timestamp(m.history_end) + pd.Timedelta(weeks=3)).date())
    k = tail_length(SPEC)  # the fast path takes a tail of exactly what the features need
    served = {
        sid: SeriesModel(m.model, m.version, m.history_end, m.tail[-k:])
        for sid, m in models.items()
    }
    scored = score_records([*nxt, other], spec, served.get)
    assert (scored.fast, scored.slow) == (1, 1)
    assert [r["prediction"] for r in scored.rows] == [1e9, 1e9]
    unclipped = score_records([*nxt, other], SPEC, served.get).rows
    batch = score([*nxt, other], SPEC, models.get)
    assert [r["error"] for r in unclipped] == [None, None]
    np.testing.assert_allclose([r["prediction"] for r in unclipped], batch.prediction, rtol=1e-12)


def test_a_row_without_a_series_key_is_a_bad_value_and_the_others_are_scored(models):
    """A null key used to reach the series numbering and fail the whole request."""
    good = _gap_request(models, SPEC, 1)
    rows = pa.Table.from_pylist([*good, {**good[0], "product": None}])
    out = score(rows, SPEC, models.get)
    assert out.error.tolist()[1] == "bad_value"
    assert "series key (store, product) is missing" in out.message[1]
    assert out.error.isna()[0] and np.isfinite(float(out.prediction[0]))


def test_the_fast_path_takes_the_next_period_as_sent_and_its_cached_checks_follow_the_tail(
    models,
):
    """serving.fast compares the time as sent with the next period's ``YYYY-MM-DD`` (no
    parsing on the request path): another spelling of that day goes to the shared path and
    gets the same answer. Its per-model checks are cached against the tail they were made on:
    the same model served with a tail that cannot give the features goes to the shared path."""
    from mlops_assets.serving.fast import score_records

    k = tail_length(SPEC)
    m = models["store=S0000/product=P000"]
    served = {"store=S0000/product=P000": SeriesModel(m.model, m.version, m.history_end, m.tail)}
    (row,) = _gap_request(models, SPEC, 1)
    fast = score_records([row], SPEC, served.get)
    spelled = score_records([{**row, "week": row["week"] + "T00:00:00"}], SPEC, served.get)
    assert (fast.fast, spelled.fast) == (1, 0)
    assert fast.rows[0]["time"] == row["week"] and fast.rows[0]["error"] is None
    assert spelled.rows[0]["prediction"] == pytest.approx(fast.rows[0]["prediction"], rel=1e-12)

    gap = m.tail.astype(float)
    gap[len(gap) - k] = np.nan  # a target the next period's lags need
    served["store=S0000/product=P000"] = SeriesModel(m.model, m.version, m.history_end, gap)
    assert score_records([row], SPEC, served.get).fast == 0
    served["store=S0000/product=P000"] = SeriesModel(m.model, m.version, m.history_end, m.tail)
    assert score_records([row], SPEC, served.get).fast == 1


def test_a_per_model_value_holds_while_asked_with_the_same_objects_and_goes_with_the_model():
    """serving.fast's per-model memo: a hit needs the very objects it was made from (an equal
    copy of a tail is not the same tail) and equal plain arguments; an entry goes when its
    model is collected, and a model that cannot be weakly referenced is never cached."""
    import gc

    from mlops_assets.serving.fast import _MISS, PerModel

    class Model:
        pass

    memo, model, tail = PerModel(), Model(), np.arange(3.0)
    assert memo.lookup(model, (tail,), (2,)) is _MISS
    memo.store(model, (tail,), (2,), "v")
    assert memo.lookup(model, (tail,), (2,)) == "v"
    assert memo.lookup(model, (tail.copy(),), (2,)) is _MISS
    assert memo.lookup(model, (tail,), (3,)) is _MISS
    assert memo.lookup(Model(), (tail,), (2,)) is _MISS

    del model
    gc.collect()
    assert len(memo) == 0
    memo.store(7, (tail,), (), "v")  # an int cannot be weakly referenced: not cached
    assert memo.lookup(7, (tail,), ()) is _MISS
