"""Calendar-true series: off-calendar rows, missing periods, regular layout, lags by period."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.ml import calendar
from mlops_assets.ml.features import SeriesFrame, feature_matrix, feature_names, to_series_frame
from mlops_assets.ml.spec import load_spec


def _times(*dates: str) -> np.ndarray:
    return pd.to_datetime(list(dates), format="ISO8601").to_numpy().astype("datetime64[us]")


def _spec(**update):
    spec = load_spec("sales").model_copy(deep=True)
    for k, v in update.items():
        setattr(spec, k, v)
    return spec


def test_off_calendar_rows_per_frequency():
    # 2024-01-01 is a Monday, 2024-01-04 a Thursday.
    t = _times("2024-01-01", "2024-01-04", "2024-01-08", "2024-01-08 12:00")
    assert calendar.off_calendar_rows(t, "W-MON").tolist() == [False, True, False, True]
    assert calendar.off_calendar_rows(t, "W-THU").tolist() == [True, False, True, True]
    assert calendar.off_calendar_rows(t, "D").tolist() == [False, False, False, True]
    m = _times("2024-01-01", "2024-01-31", "2024-02-01", "2024-02-29")
    assert calendar.off_calendar_rows(m, "MS").tolist() == [False, True, False, True]
    assert calendar.off_calendar_rows(m, "ME").tolist() == [True, False, True, False]


def test_snap_goes_to_the_period_anchor():
    t = _times("2024-01-04", "2024-01-08", "2024-01-14")
    assert calendar.snap(t, "W-MON").tolist() == list(
        _times("2024-01-01", "2024-01-08", "2024-01-08")
    )
    # End-anchored periods are labelled by the anchor that closes them.
    assert calendar.snap(_times("2024-02-10"), "ME").tolist() == list(_times("2024-02-29"))
    assert calendar.snap(_times("2024-02-10"), "MS").tolist() == list(_times("2024-02-01"))


def test_period_differences_are_calendar_distances():
    t = _times("2023-12-25", "2024-01-01", "2025-01-06")
    p = calendar.periods(t, "W-MON").period
    assert np.diff(p).tolist() == [1, 53]


def _frame(series: dict[str, list[tuple[str, float, float]]]) -> SeriesFrame:
    """Series name -> [(date, target, price)], already time-ordered."""
    rows = [r for rs in series.values() for r in rs]
    lengths = [len(rs) for rs in series.values()]
    return SeriesFrame(
        keys=[(k,) for k in series],
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        time=_times(*(r[0] for r in rows)),
        target=np.array([r[1] for r in rows], float),
        exog={"price": np.array([r[2] for r in rows], float)},
    )


def test_gaps_count_and_longest_per_series():
    frame = _frame(
        {
            "a": [("2024-01-01", 1, 1), ("2024-01-08", 2, 1), ("2024-02-05", 3, 1)],
            "b": [("2024-01-01", 1, 1)],
            "c": [("2024-01-01", 1, 1), ("2024-01-15", 1, 1), ("2024-01-29", 1, 1)],
        }
    )
    g = calendar.series_gaps(frame, "W-MON")
    assert g.missing.tolist() == [3, 0, 2]
    assert g.longest.tolist() == [3, 0, 1]
    assert g.span.tolist() == [6, 1, 5]


def test_regularize_fills_each_column_by_its_rule():
    frame = _frame(
        {
            "a": [("2024-01-01", 5, 2.0), ("2024-01-22", 7, np.nan), ("2024-01-29", 1, 3.0)],
            "b": [("2024-01-08", 4, 9.0), ("2024-01-22", 6, 8.0)],
        }
    )
    spec = _spec()
    spec.calendar.fill = {"sales": "zero", "price": "ffill"}
    reg = calendar.regularize(frame, spec)
    out = reg.frame
    assert out.offsets.tolist() == [0, 5, 8]
    assert out.time.tolist() == list(
        _times(*pd.date_range("2024-01-01", periods=5, freq="W-MON"))
    ) + list(_times("2024-01-08", "2024-01-15", "2024-01-22"))
    np.testing.assert_array_equal(out.target, [5, 0, 0, 7, 1, 4, 0, 6])
    # An observed NaN stays NaN; an inserted price carries the last finite one forward.
    np.testing.assert_array_equal(out.exog["price"], [2, 2, 2, np.nan, 3, 9, 9, 8])
    assert reg.observed.tolist() == [True, False, False, True, True, True, False, True]
    spec.calendar.fill = {}
    none = calendar.regularize(frame, spec).frame
    np.testing.assert_array_equal(none.target, [5, np.nan, np.nan, 7, 1, 4, np.nan, 6])
    spec.calendar.fill = {"default": "zero"}
    assert calendar.regularize(frame, spec).frame.exog["price"][1] == 0


def test_regularize_refuses_off_calendar_and_duplicate_periods():
    spec = _spec()
    off = _frame({"a": [("2024-01-01", 1, 1), ("2024-01-04", 2, 1)]})
    with pytest.raises(ValueError, match=calendar.OFF_CALENDAR_RULE):
        calendar.regularize(off, spec)
    dup = calendar.apply_off_calendar(
        off,
        spec.model_copy(
            update={"calendar": spec.calendar.model_copy(update={"off_calendar": "snap"})}
        ),
    )[0]
    with pytest.raises(ValueError, match=calendar.DUPLICATE_PERIOD_RULE):
        calendar.regularize(dup, spec)
    p = calendar.periods(dup.time, "W-MON").period
    assert calendar.duplicate_period_rows(dup.offsets, p).tolist() == [False, True]


def test_apply_off_calendar_quarantines_or_snaps():
    spec = _spec()
    frame = _frame(
        {
            "a": [("2024-01-01", 1, 1), ("2024-01-11", 2, 1), ("2024-01-15", 3, 1)],
            "b": [("2024-01-04", 4, 1)],
        }
    )
    kept, out = calendar.apply_off_calendar(frame, spec)
    assert out.tolist() == [False, True, False, True]
    assert kept.offsets.tolist() == [0, 2, 2]
    np.testing.assert_array_equal(kept.target, [1, 3])
    spec.calendar.off_calendar = "snap"
    snapped, out = calendar.apply_off_calendar(frame, spec)
    assert out.tolist() == [False, True, False, True]
    assert snapped.time.tolist() == list(
        _times("2024-01-01", "2024-01-08", "2024-01-15", "2024-01-01")
    )


def test_lag_52_after_regularization_is_52_calendar_weeks_back():
    rng = np.random.default_rng(3)
    spec = _spec()
    spec.features.lags, spec.features.rolling = [1, 52], [4]
    spec.features.calendar, spec.features.exogenous = [], []
    spec.calendar.fill = {}  # a missing week is unknown (NaN), not zero
    weeks = pd.date_range("2020-01-06", periods=160, freq="W-MON")
    rows = []
    for s, (start, stop) in enumerate([(0, 160), (10, 130), (40, 158)]):
        keep = rng.random(stop - start) > 0.15  # ragged: missing weeks
        keep[0] = keep[-1] = True
        for w in weeks[start:stop][keep]:
            rows.append({"store": "S", "product": f"P{s}", "week": w, "sales": rng.random()})
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    raw = to_series_frame(df, spec)
    assert calendar.series_gaps(raw, "W-MON").missing.min() > 0
    frame = calendar.regularize(raw, spec).frame
    lag = feature_matrix(frame, spec)[:, feature_names(spec).index("lag_52")]
    value = {(p, w): v for p, w, v in zip(df["product"], df["week"], df["sales"], strict=True)}
    series = np.repeat([k[1] for k in frame.keys], np.diff(frame.offsets))
    expected = [
        value.get((p, pd.Timestamp(t) - pd.Timedelta(weeks=52)), np.nan)
        for p, t in zip(series, frame.time, strict=True)
    ]
    np.testing.assert_array_equal(lag, expected)
    assert np.isfinite(lag).sum() > 100
    # Without regularization, 52 rows back is not 52 weeks back on these series.
    raw_lag = feature_matrix(raw, spec)[:, 1]
    raw_series = np.repeat([k[1] for k in raw.keys], np.diff(raw.offsets))
    raw_truth = np.array(
        [
            value.get((p, pd.Timestamp(t) - pd.Timedelta(weeks=52)), np.nan)
            for p, t in zip(raw_series, raw.time, strict=True)
        ]
    )
    assert not np.array_equal(raw_lag, raw_truth, equal_nan=True)


def test_future_times_continue_each_series_calendar():
    frame = _frame({"a": [("2024-01-01", 1, 1)], "b": [("2024-03-25", 1, 1)]})
    out = calendar.future_times(frame, "W-MON", 3)
    assert out.shape == (2, 3)
    assert out[0].tolist() == list(_times("2024-01-08", "2024-01-15", "2024-01-22"))
    assert out[1].tolist() == list(_times("2024-04-01", "2024-04-08", "2024-04-15"))
    m = _frame({"a": [("2024-01-31", 1, 1)]})
    assert calendar.future_times(m, "ME", 2)[0].tolist() == list(_times("2024-02-29", "2024-03-31"))


@pytest.mark.parametrize("frequency", ["W-MON", "W-THU", "D", "MS", "ME", "QS"])
def test_periods_of_dates_equal_periods_of_the_same_timestamps(frequency):
    """Dates are located as days (no conversion to microseconds); the periods, anchors and
    on-calendar flags are those of the same instants as timestamps, whatever the range."""
    rng = np.random.default_rng(3)
    short = rng.integers(19_000, 19_800, 5_000)
    wide = np.r_[short[:10], 0, 40_000]  # a range wider than the rows: searched, not gathered
    for days in (short, wide):
        dates = days.astype("datetime64[D]")
        a = calendar.periods(dates, frequency)
        b = calendar.periods(dates.astype("datetime64[us]"), frequency)
        assert np.array_equal(a.grid[a.period], b.grid[b.period])
        assert np.array_equal(a.on_calendar, b.on_calendar)
        assert np.array_equal(np.diff(a.period), np.diff(b.period))


@pytest.mark.parametrize("frequency", ["W-MON", "D", "MS"])
def test_periods_of_timestamps_off_midnight_are_located_not_taken_as_days(frequency):
    """Timestamps at noon, or midnights with one a microsecond past, are located as instants
    (not gathered from a table of days): the periods and flags the general search finds."""
    days = np.random.default_rng(5).integers(19_000, 19_400, 2_000).astype("datetime64[D]")
    midnights = days.astype("datetime64[us]")
    for t in (midnights + np.timedelta64(12, "h"), np.r_[midnights, midnights[:1] + 1]):
        got, want = calendar.periods(t, frequency), calendar._located(t, frequency)  # noqa: SLF001
        assert np.array_equal(got.period, want.period)
        assert np.array_equal(got.on_calendar, want.on_calendar)
        assert not got.on_calendar[-1]


@pytest.mark.parametrize("unit", ["D", "s", "us"])
@pytest.mark.parametrize(
    "shape", ["days", "with_nat", "with_hours", "at_noon", "at_noon_with_nat", "long_range"]
)
def test_distinct_times_is_a_sorted_factorize(unit, shape):
    """Day-table counting (whole days after the first time, short range) and hashing
    (anything else) agree with ``pd.factorize(sort=True)``: the same codes (NaT: -1) and
    distinct timestamps."""
    rng = np.random.default_rng(7)
    days = rng.integers(18_000, 18_000 + 3_000, 20_000)
    if shape == "long_range":
        days[:3] = [0, 40_000, 200_000]  # a range far longer than the rows
    t = days.astype("datetime64[D]").astype(f"datetime64[{unit}]")
    if shape == "with_nat":
        t[rng.choice(len(t), 500, replace=False)] = np.datetime64("NaT")
    if shape == "with_hours" and unit != "D":
        t[::97] += np.timedelta64(3600, "s").astype(f"timedelta64[{unit}]")
    if shape.startswith("at_noon") and unit != "D":
        t += np.timedelta64(12 * 3600, "s").astype(f"timedelta64[{unit}]")
        if shape.endswith("with_nat"):
            t[rng.choice(len(t), 50, replace=False)] = np.datetime64("NaT")
    codes, distinct = calendar.distinct_times(t)
    want_codes, want = pd.factorize(t, sort=True)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(distinct, np.asarray(want, t.dtype))
    assert distinct.dtype == t.dtype


def test_distinct_times_of_nothing_and_of_only_nat():
    codes, distinct = calendar.distinct_times(np.array([], "datetime64[us]"))
    assert len(codes) == len(distinct) == 0
    codes, distinct = calendar.distinct_times(np.array(["NaT", "NaT"], "datetime64[us]"))
    assert codes.tolist() == [-1, -1] and len(distinct) == 0
