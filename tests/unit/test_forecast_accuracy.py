"""The accuracy join and its measures, on hand-made frames (no storage, no Dagster)."""

import numpy as np
import pandas as pd
import pytest

from mlops_assets.domain.forecast_accuracy import join_predictions
from mlops_assets.ml.accuracy import accuracy_table, degraded_series, horizon_steps
from mlops_assets.ml.spec import load_spec

SALES = load_spec("sales")
WEEKS = pd.to_datetime(["2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23"])


def _log(series, version="v1", preds=(10.0, 10.0, 10.0, 10.0), end="2026-10-26"):
    return pd.DataFrame(
        {
            "series_id": series,
            "time": WEEKS[: len(preds)],
            "prediction": list(preds),
            "prediction_lower_80": [p - 2 for p in preds],
            "prediction_upper_80": [p + 2 for p in preds],
            "prediction_lower_95": np.nan,
            "prediction_upper_95": np.nan,
            "model_set_version": version,
            "family": None,
            "history_end": end,
        }
    )


def _truth(series, values):
    return pd.DataFrame({"series_id": series, "time": WEEKS[: len(values)], "actual": values})


def _reference(rows):
    return pd.DataFrame(
        rows, columns=["model_set_version", "series_id", "backtest_mae", "scale", "family"]
    )


def test_steps_count_periods_after_the_history_end():
    steps = horizon_steps(
        pd.Series(WEEKS), pd.Series(["2026-10-26", None, "2026-11-09", None]), "W-MON"
    )
    assert steps.tolist() == [1, 0, 1, 0]


def test_the_join_keeps_predicted_periods_with_actuals_and_fills_from_the_manifest():
    log = _log("s=a")
    truth = _truth("s=a", [11.0, 9.0, 14.0])  # the fourth week has no actual yet
    ref = _reference([("v1", "s=a", 1.0, 2.0, "ridge")])
    joined = join_predictions(log, truth, ref, SALES)
    assert len(joined) == 3 and joined["step"].tolist() == [1, 2, 3]
    assert set(joined["family"]) == {"ridge"} and set(joined["backtest_mae"]) == {1.0}

    table = accuracy_table(joined, SALES.intervals.levels)
    assert table["step"].tolist() == [1, 2, 3] and table["n"].tolist() == [1, 1, 1]
    assert table["mae"].tolist() == [1.0, 1.0, 4.0]
    assert table["scaled_error"].tolist() == [0.5, 0.5, 2.0]
    assert table["coverage_80"].tolist() == [1.0, 1.0, 0.0]
    assert table["coverage_95"].isna().all()  # no 95% bounds were given
    overall = accuracy_table(joined, [80], by=("model_set_version",))
    assert overall["coverage_80"].iloc[0] == pytest.approx(2 / 3)


def test_a_series_is_degraded_past_the_ratio_with_enough_points():
    log = pd.concat([_log("s=a"), _log("s=b"), _log("s=c", preds=(10.0, 10.0))])
    truth = pd.concat(
        [
            _truth("s=a", [11.0, 9.0, 11.0, 9.0]),  # MAE 1 = backtest: healthy
            _truth("s=b", [14.0, 6.0, 14.0, 6.0]),  # MAE 4 > 1.5 x 2: degraded
            _truth("s=c", [20.0, 0.0]),  # far off, but only 2 points
        ]
    )
    ref = _reference(
        [
            ("v1", "s=a", 1.0, 1.0, "ridge"),
            ("v1", "s=b", 2.0, 1.0, "ets"),
            ("v1", "s=c", 1.0, 1.0, "ridge"),
        ]
    )
    joined = join_predictions(log, truth, ref, SALES)
    judged = degraded_series(joined, ratio=1.5, min_points=4).set_index("series_id")
    assert judged["degraded"].to_dict() == {"s=a": False, "s=b": True, "s=c": False}
    assert judged.loc["s=b", "error_ratio"] == 2.0 and judged.loc["s=b", "family"] == "ets"


def test_a_series_is_judged_on_the_model_set_that_predicted_its_latest_period():
    old = _log("s=a", version="v1", preds=(30.0, 30.0))  # v1 was bad...
    new = _log("s=a", version="v2", preds=(10.0, 10.0, 10.0, 10.0))  # ...v2 is not
    new.loc[:, "time"] = WEEKS
    truth = _truth("s=a", [10.0, 10.0, 10.0, 10.0])
    ref = _reference([("v1", "s=a", 1.0, 1.0, "ridge"), ("v2", "s=a", 1.0, 1.0, "ridge")])
    joined = join_predictions(pd.concat([old, new]), truth, ref, SALES)
    judged = degraded_series(joined, ratio=1.5, min_points=2)
    assert judged["model_set_version"].tolist() == ["v2"] and not judged["degraded"].any()


def test_a_series_without_a_backtest_is_never_degraded():
    joined = join_predictions(_log("s=a"), _truth("s=a", [50.0] * 4), _reference([]), SALES)
    judged = degraded_series(joined, ratio=1.5, min_points=1)
    assert judged["n"].tolist() == [4] and not judged["degraded"].any()


def test_the_prediction_log_reads_only_the_lookback_window(tmp_path):
    """A day's measurement reads predictions of the last ``lookback_periods`` periods, from
    files written no earlier than a horizon before that window: old files are not opened."""
    import io
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlops_assets.domain import batch_layout
    from mlops_assets.domain.forecast_accuracy import prediction_log, window_start
    from mlops_assets.storage import LocalStorage

    storage = LocalStorage(root=str(tmp_path))
    as_of = "2026-11-30"
    start = window_start(SALES, as_of)
    assert start == pd.Timestamp(as_of) - pd.Timedelta(weeks=SALES.monitoring.lookback_periods)

    def write(name, weeks, series="s=a"):
        df = pd.DataFrame(
            {"series_id": series, "time": weeks, "prediction": 1.0, "model_set_version": "v1"}
        )
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
        storage.write_bytes(name, buf.getvalue())
        return tmp_path / name

    root = f"{batch_layout.root(SALES.name)}predictions/"
    inside = [start - pd.Timedelta(weeks=1), start, start + pd.Timedelta(weeks=1)]
    write(f"{root}recent.parquet", [str(t.date()) for t in inside])
    # An old file whose rows would fall in the window: skipped by its write time alone.
    old = write(f"{root}old.parquet", [str(start.date())], series="s=b")
    stamp = (start - pd.Timedelta(weeks=SALES.horizon + 1)).timestamp()
    os.utime(old, (stamp, stamp))  # written long before the window

    everything = prediction_log(storage, SALES)
    assert len(everything) == 4
    windowed = prediction_log(storage, SALES, start)
    assert sorted(windowed["time"]) == [start, start + pd.Timedelta(weeks=1)]
    assert set(windowed["series_id"]) == {"s=a"}
