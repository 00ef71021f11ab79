"""Horizon steps of scored rows: periods after each series' history end, on the calendar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.ml.score_intervals import horizon_steps
from mlops_assets.ml.score_request import SeriesModel


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
