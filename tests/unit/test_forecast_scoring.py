"""Scoring series whose model forecasts from history alone, and prediction intervals, in both
scoring paths (``scoring.score_table`` and the real-time ``serving.fast``)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_assets.domain.training_run import run_table
from mlops_assets.ml import param_models
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.features import last_rows, tail_length, to_series_frame
from mlops_assets.ml.intervals import interval_field
from mlops_assets.ml.model_cache import ModelSetReader
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.score_request import RESULT_COLUMNS, bound_fields, result_columns
from mlops_assets.ml.scoring import SeriesModel, score, score_table
from mlops_assets.ml.selection import stored_history
from mlops_assets.ml.spec import DatasetSpec, IntervalSpec, load_spec
from mlops_assets.serving.fast import score_records
from tests.fixtures.model_sets import written_reader

# The sales spec without intervals: a request gets no bounds.
SPEC = load_spec("sales").model_copy(update={"intervals": IntervalSpec()})
ZOO = DatasetSpec.model_validate(
    {
        **SPEC.model_dump(mode="json"),
        "intervals": {"levels": [80, 95]},
        "fallback": ["seasonal_naive", "naive"],
    }
)
FUTURE = 6  # request periods after the history: past the horizon (4), so the last width repeats


def _sales(n_series: int, n_weeks: int, seed: int) -> pd.DataFrame:
    full = sales_table(SalesShape(n_series, n_weeks, seed=seed)).to_pandas()
    full["store"], full["product"] = full.store.astype(str), full["product"].astype(str)
    return full


# ------------------------------------------------------------ models built with fit_many


@pytest.fixture(scope="module")
def fitted():
    """Four series: seasonal naive for two, ETS for two, fitted on all but the last weeks."""
    full = _sales(4, 100, seed=3)
    weeks = np.sort(full.week.unique())
    train = full[full.week < weeks[-FUTURE]].reset_index(drop=True)
    frame = to_series_frame(train, SPEC)
    naive = param_models.fit_many(frame, "seasonal_naive", SPEC)
    ets = param_models.fit_many(frame, "ets", SPEC)
    models = [naive[0], naive[1], ets[2], ets[3]]
    assert all(m is not None for m in models)
    tail = last_rows(frame, stored_history(SPEC))
    o = tail.offsets
    lookup = {
        SPEC.series_id(key): SeriesModel(
            models[i], "v1", str(tail.time[o[i + 1] - 1])[:10], tail.target[o[i] : o[i + 1]]
        )
        for i, key in enumerate(frame.keys)
    }
    future = full[full.week >= weeks[-FUTURE]].reset_index(drop=True)
    return full, future, tail, models, lookup


def _series_number(out: pd.DataFrame, tail) -> np.ndarray:
    ids = [SPEC.series_id(k) for k in tail.keys]
    return np.array([ids.index(s) for s in out.series_id])


def _steps(out: pd.DataFrame, first_week) -> np.ndarray:
    return ((pd.to_datetime(out.time) - pd.Timestamp(first_week)).dt.days // 7).to_numpy()


def test_param_models_are_scored_as_forecast_many_on_the_same_history(fitted):
    _, future, tail, models, lookup = fitted
    requests = future.drop(columns="sales").sample(frac=1.0, random_state=0)  # any order
    out = score(requests, SPEC, lookup.get)
    assert out.error.isna().all(), out.message.dropna().unique()
    expected = np.clip(param_models.forecast_many(models, tail, FUTURE, SPEC), 0, None)
    s, step = _series_number(out, tail), _steps(out, future.week.min())
    np.testing.assert_allclose(out.prediction.to_numpy(), expected[s, step], rtol=1e-12)
    assert set(out.model_version) == {"v1"}
    assert list(out.columns) == list(RESULT_COLUMNS)  # no intervals in the spec: no bounds


def test_request_rows_with_known_targets_extend_the_history(fitted):
    """Rows carrying their target before the first row to predict are history: the rows after
    them are forecast from the tail and them; they get the forecast from the tail alone."""
    full, future, tail, models, lookup = fitted
    weeks = np.sort(future.week.unique())
    known = future.week < weeks[2]
    requests = future.copy()
    requests.loc[~known, "sales"] = np.nan
    out = score(requests, SPEC, lookup.get)
    assert out.error.isna().all(), out.message.dropna().unique()
    s, step = _series_number(out, tail), _steps(out, weeks[0])

    through = to_series_frame(full[full.week < weeks[2]].reset_index(drop=True), SPEC)
    extended = last_rows(through, stored_history(SPEC) + 2)  # the tail, then the known rows
    after = np.clip(param_models.forecast_many(models, extended, FUTURE - 2, SPEC), 0, None)
    before = np.clip(param_models.forecast_many(models, tail, 2, SPEC), 0, None)
    k = known.to_numpy()
    np.testing.assert_allclose(out.prediction[k], before[s[k], step[k]], rtol=1e-12)
    np.testing.assert_allclose(out.prediction[~k], after[s[~k], step[~k] - 2], rtol=1e-12)


def test_param_series_get_the_regression_paths_error_codes(fitted):
    _, future, _, _, lookup = fitted
    first = future[future.week == future.week.min()].drop(columns="sales")
    bad = first.copy()
    bad["week"] = bad.week + pd.Timedelta(days=2)  # a Wednesday on a W-MON calendar
    dup = first.iloc[[0, 0]]
    empty = {
        sid: SeriesModel(m.model, m.version, m.history_end, np.full(len(m.tail), np.nan))
        for sid, m in lookup.items()
    }
    out = score(pd.concat([first.iloc[[1]], bad.iloc[[1]], dup]), SPEC, lookup.get)
    assert out.error.tolist() == [None, "off_calendar", "duplicate_row", "duplicate_row"]
    assert np.isfinite(out.prediction[0])
    nothing = score(first, SPEC, empty.get)  # no observed target to forecast from
    assert (nothing.error == "insufficient_history").all() and nothing.prediction.isna().all()


def test_a_missing_period_after_the_history_is_forecast_over(fitted):
    """A forecast-only model forecasts any step ahead: a request for the third period after the
    history (none in between, fill rule ``none``) is its 3-step forecast, not a gap error."""
    _, future, tail, models, lookup = fitted
    spec = SPEC.model_copy(deep=True)
    spec.calendar.fill["sales"] = "none"
    third = future[future.week == np.sort(future.week.unique())[2]].drop(columns="sales")
    out = score(third, spec, lookup.get)
    assert out.error.isna().all(), out.message.dropna().unique()
    expected = np.clip(param_models.forecast_many(models, tail, 3, SPEC), 0, None)[:, 2]
    np.testing.assert_allclose(out.prediction, expected[_series_number(out, tail)], rtol=1e-12)


# ------------------------------------------------------- a model set trained with intervals


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A set trained with intervals and a fallback chain: four long series get ridge, two short
    ones (14 weeks) fall back to naive. Loaded through ``ModelSetReader`` from its manifest."""
    full = _sales(6, 120, seed=4)
    weeks = np.sort(full.week.unique())
    short = full["product"].isin(["P004", "P005"]) & (full.week < weeks[-14])
    full = full[~short].reset_index(drop=True)
    train = full[full.week < weeks[-FUTURE]].reset_index(drop=True)
    records = train_local(pa.Table.from_pandas(train, preserve_index=False), ZOO, max_workers=1)
    # Intervals are calibrated over the run's series when its manifest is written.
    table = run_table(records, ZOO)
    results = table.to_pandas()
    assert set(results.family) == {"ridge", "naive"}, results[["family", "reason"]]
    root = tmp_path_factory.mktemp("zoo")
    reader, _ = written_reader(table, root, "set", "zoo-1")
    future = full[full.week >= weeks[-FUTURE]].reset_index(drop=True)
    return results.set_index("series_id"), reader, future


def test_score_table_returns_intervals_with_the_widths_of_the_manifest(trained):
    results, reader, future = trained
    requests = future.drop(columns="sales").sample(frac=1.0, random_state=2)
    out = score_table(requests, ZOO, reader.model_for).to_pandas()
    assert tuple(out.columns) == result_columns(ZOO)
    assert out.error.isna().all(), out.message.dropna().unique()
    step = _steps(out, future.week.min())  # 0-based: the first future week is step 1
    for level in ZOO.intervals.levels:
        widths = np.array(
            [
                results.loc[s, interval_field(level)][min(k, 3)]
                for s, k in zip(out.series_id, step, strict=True)
            ]
        )
        lower, upper = bound_fields(level)
        np.testing.assert_allclose(out[upper], out.prediction + widths, rtol=1e-12)
        np.testing.assert_allclose(out[lower], np.maximum(out.prediction - widths, 0.0), rtol=1e-12)
    assert out.prediction_upper_80.notna().all() and (out.prediction_lower_80 >= 0).all()
    both = out.prediction_upper_95.notna()  # a NaN width (too few residuals) gives null bounds
    assert (out.prediction_lower_95[both] <= out.prediction_lower_80[both]).all()
    assert (out.prediction_upper_80[both] <= out.prediction_upper_95[both]).all()
    assert (out.prediction_lower_95.isna() == ~both).all()


def test_a_request_scores_the_same_grouped_by_series_in_any_order_or_shuffled(trained):
    """Rows grouped by series (in key order, in reverse key order) are numbered from their
    runs of equal keys; shuffled rows through ``series_numbers``: every row gets the same
    answer either way."""
    _, reader, future = trained
    requests = future.drop(columns="sales")
    by_key = requests.sort_values(["store", "product", "week"]).reset_index(drop=True)
    reverse = requests.sort_values(["store", "product", "week"], ascending=[False, False, True])
    shuffled = by_key.sample(frac=1.0, random_state=5)
    answers = []
    for rows in (by_key, reverse, shuffled):
        out = score_table(rows, ZOO, reader.model_for).to_pandas()
        out.index = rows.index  # each answer beside its request row
        answers.append(out.sort_index())
    assert answers[0].error.isna().all()
    for other in answers[1:]:
        pd.testing.assert_frame_equal(
            other.astype({"series_id": str, "model_version": str}),
            answers[0].astype({"series_id": str, "model_version": str}),
        )


def test_a_reader_takes_widths_and_tails_from_the_manifest_and_none_where_null(trained, tmp_path):
    """The reader slices each series' tail and widths out of one array per list column: the
    same values as the manifest's rows; a null entry, or a level with no width anywhere (a
    column of nulls), gives no width and an empty tail."""
    _, reader, _ = trained
    table = reader._cols._table  # noqa: SLF001 - the manifest the fixture's reader was built on
    assert table.num_rows == 6
    ids = table["series_id"].to_pylist()
    for i, sid in enumerate(ids):
        model = reader.model_for(sid)
        expected_tail = table["history_tail"][i].as_py() or []
        np.testing.assert_array_equal(model.tail, np.asarray(expected_tail, float))
        for level in ZOO.intervals.levels:
            field = interval_field(level)
            stored = table[field][i].as_py()
            if stored:
                np.testing.assert_array_equal(model.widths[field], np.asarray(stored, float))
            else:
                assert field not in model.widths
    first = interval_field(ZOO.intervals.levels[0])
    tails = table["history_tail"].to_pylist()
    tails[0] = None
    hollow = table.set_column(
        table.schema.get_field_index(first), first, pa.nulls(table.num_rows)
    ).set_column(
        table.schema.get_field_index("history_tail"),
        "history_tail",
        pa.array(tails, table.schema.field("history_tail").type),
    )
    bare = ModelSetReader(hollow, reader._read, version="hollow")  # noqa: SLF001
    model = bare.model_for(ids[0])
    assert first not in model.widths and len(model.tail) == 0
    assert bare.model_for(ids[1]).tail.tolist() == (table["history_tail"][1].as_py() or [])


def test_a_fallback_series_is_scored_as_its_chosen_baseline(trained):
    results, reader, future = trained
    sid = "store=S0000/product=P004"
    m = reader.model_for(sid)
    assert isinstance(m, SeriesModel) and isinstance(m.model, param_models.ParamModel)
    assert m.model.family == results.loc[sid, "family"] == "naive"
    rows = future[future["product"] == "P004"].drop(columns="sales")
    alone = score(rows, ZOO, reader.model_for)
    last = m.tail[np.isfinite(m.tail)][-1]
    np.testing.assert_allclose(alone.prediction, last)
    # Scoring it beside ridge series changes neither.
    mixed = score(future.drop(columns="sales"), ZOO, reader.model_for)
    ridge = future["product"] == "P000"
    np.testing.assert_allclose(mixed.prediction[(future["product"] == "P004")], last)
    np.testing.assert_allclose(
        mixed.prediction[ridge],
        score(future[ridge].drop(columns="sales"), ZOO, reader.model_for).prediction,
        rtol=1e-12,
    )


def test_the_real_time_paths_return_the_intervals_of_the_shared_path(trained):
    """One record per series for the next period: ridge series take the fast path (with the
    full stored tail), forecast-only ones the shared path; both as ``score`` answers."""
    _, reader, future = trained
    first = future[future.week == future.week.min()].drop(columns="sales")
    records = [{**r, "week": str(r["week"])} for r in first.to_dict("records")]
    assert len(reader.model_for("store=S0000/product=P000").tail) > tail_length(ZOO)
    scored = score_records(records, ZOO, reader.model_for)
    assert (scored.fast, scored.slow) == (4, 2)
    batch = score(first, ZOO, reader.model_for)
    for name in ("prediction", *bound_fields(80), *bound_fields(95)):
        np.testing.assert_allclose(
            np.array([r[name] for r in scored.rows], float), batch[name].to_numpy(float), rtol=1e-12
        )
    assert list(scored.rows[0]) == list(result_columns(ZOO))
