"""Horizon steps of scored rows: periods after each series' history end, on the calendar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.ml.intervals import interval_field
from mlops_assets.ml.score_intervals import horizon_steps, row_bounds
from mlops_assets.ml.score_request import SeriesModel, bound_fields
from mlops_assets.ml.spec import load_spec


def model(end: str | None) -> SeriesModel:
    return SeriesModel(model=None, version="v", history_end=end, tail=np.zeros(0), widths={})


@pytest.mark.parametrize("frequency", ["W-MON", "D", "MS"])
def test_steps_count_periods_after_each_history_end(frequency):
    rng = np.random.default_rng(1)
    grid = pd.date_range("2024-01-01", periods=60, freq=frequency)
    ends = [grid[10], grid[25], None, grid[0]]
    models = [model(str(e.date())) if e is not None else None for e in ends]
    models[3] = model(None)  # a model without a history end
    series_of = rng.integers(0, len(models), 5_000)
    time = grid.values[rng.integers(0, len(grid), 5_000)].astype("datetime64[us]")
    time[rng.random(5_000) < 0.05] = np.datetime64("NaT")
    steps = horizon_steps(time, series_of, models, frequency)
    shared = horizon_steps(time, series_of, models, frequency, pd.factorize(time))
    assert shared.tolist() == steps.tolist()
    for i in range(0, 5_000, 7):
        s, t = series_of[i], time[i]
        end = ends[s] if s < 2 else None
        if end is None or np.isnat(t):
            assert steps[i] == 0
            continue
        ahead = grid.get_loc(pd.Timestamp(t)) - grid.get_loc(end)
        assert steps[i] == max(ahead, 1), (i, t, end)


def test_no_known_rows_give_zero_steps():
    time = np.array(["NaT", "2024-01-01"], dtype="datetime64[us]")
    assert horizon_steps(time, np.array([0, 0]), [None], "D").tolist() == [0, 0]


def test_row_bounds_equal_each_rows_width_at_its_step():
    """Every row's bounds against a row-by-row reading: the width of its series at its step
    (the last stored one past the horizon; NaN for an unknown step, a series without widths,
    or a NaN prediction); levels with horizons of different lengths; lower clipped at 0."""
    spec = load_spec("sales")
    rng = np.random.default_rng(3)
    grid = pd.date_range("2024-01-01", periods=40, freq=spec.frequency)
    fields = [interval_field(level) for level in spec.intervals.levels]
    models: list[SeriesModel | None] = []
    for s in range(9):
        end = None if s == 7 else str(grid[int(rng.integers(0, 20))].date())
        widths = {f: rng.random(int(rng.integers(1, 6 + 3 * j))) * 5 for j, f in enumerate(fields)}
        if s == 5:
            widths = {}  # no interval stored
        if s == 6:
            widths = {fields[0]: widths[fields[0]]}  # one level only
        models.append(
            SeriesModel(model=None, version="v", history_end=end, tail=np.zeros(0), widths=widths)
        )
    models.append(None)  # an unknown series
    n = 3_000
    series_of = rng.integers(0, len(models), n)
    time = grid.values[rng.integers(0, len(grid), n)].astype("datetime64[us]")
    time[rng.random(n) < 0.03] = np.datetime64("NaT")
    predicted = rng.normal(3, 4, n)
    predicted[rng.random(n) < 0.05] = np.nan
    bounds = row_bounds(predicted, time, series_of, models, spec)
    assert list(bounds) == [name for level in spec.intervals.levels for name in bound_fields(level)]
    for i in range(n):
        m = models[series_of[i]]
        for level, field in zip(spec.intervals.levels, fields, strict=True):
            lower, upper = (bounds[name][i] for name in bound_fields(level))
            widths = m.widths.get(field) if m is not None else None
            if m is None or m.history_end is None or np.isnat(time[i]) or widths is None:
                assert np.isnan(lower) and np.isnan(upper), i
                continue
            ahead = grid.get_loc(pd.Timestamp(time[i])) - grid.get_loc(pd.Timestamp(m.history_end))
            w = widths[min(max(ahead, 1), len(widths)) - 1]
            p = predicted[i]
            np.testing.assert_equal([lower, upper], [max(p - w, 0.0), p + w], err_msg=str(i))
