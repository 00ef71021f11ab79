"""The demo's result figures from a release manifest, and its table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlops_assets.domain.demo_result import (
    DatasetResult,
    changes,
    dump_results,
    load_results,
    pooled_mae_ratio,
    result_table,
    summarize_manifest,
)

NAN = float("nan")


def manifest() -> pd.DataFrame:
    """Four series: a first model, a replaced champion, a kept champion (a combination), and
    one with no model."""
    return pd.DataFrame(
        {
            "series_id": ["a", "b", "c", "d"],
            "family": ["ridge", "ets", "combination", None],
            "weights": [None, None, json.dumps({"ridge": 0.25, "theta": 0.75}), None],
            "artifact": ["p0", "p0", "p1", None],
            "n_holdout": [8, 8, 16, 0],
            "smape": [10.0, 20.0, 30.0, NAN],
            "naive_smape": [20.0, 30.0, 40.0, NAN],
            "seasonal_naive_smape": [15.0, NAN, 35.0, NAN],
            "mae": [1.0, 2.0, 3.0, NAN],
            "naive_mae": [2.0, 4.0, 4.0, NAN],
            "seasonal_naive_mae": [3.0, 3.0, 5.0, NAN],
            "promoted": [True, True, False, False],
            "champion_version": [None, "1", "1", "1"],
        }
    )


def test_summary_counts_series_families_and_the_gate():
    r = summarize_manifest("sales", manifest())
    assert (r.series, r.series_total) == (3, 4)
    # ridge: 1 + 0.25, ets: 1, theta: 0.75, over 3 forecast series
    assert r.families == pytest.approx({"ridge": 1.25 / 3, "ets": 1 / 3, "theta": 0.25}, abs=1e-4)
    assert r.combined == 1
    assert (r.first, r.replaced, r.kept) == (1, 1, 2)
    assert r.median_smape == 20.0 and r.median_naive_smape == 30.0
    assert r.median_seasonal_naive_smape == 25.0  # unscored series left out


def test_pooled_mae_ratio_weighs_series_by_their_pairs_against_the_better_baseline():
    ratio, best = pooled_mae_ratio(manifest())
    model = (1 * 8 + 2 * 8 + 3 * 16) / 32
    naive = (2 * 8 + 4 * 8 + 4 * 16) / 32
    assert best == "naive" and ratio == pytest.approx(model / naive)
    empty = manifest().assign(mae=NAN)
    assert np.isnan(pooled_mae_ratio(empty)[0])


def test_table_has_one_row_per_figure_and_a_column_per_dataset():
    sales = DatasetResult.from_dict(
        {**summarize_manifest("sales", manifest()).to_dict(), "dev_version": 3, "dev_versions": 3}
    )
    lines = result_table([sales, DatasetResult("diabetes")])
    assert lines[0].split() == ["result", "sales", "diabetes"]
    rows = {line[:27].strip(): line[27:].split("  ")[0].strip() for line in lines[1:]}
    assert rows["series forecast"] == "3 of 4"
    assert rows["by family (share)"] == "ridge 42%, ets 33%, theta 25% (1 series combine)"
    assert rows["champions"] == "1 replaced, 2 kept, 1 first"
    assert rows["registry dev (champion)"] == "v3 (3 versions)"
    assert rows["registry prod (production)"] == "none"
    assert lines[-1].endswith("none")  # diabetes: nothing registered yet


def test_results_round_trip_and_changes_name_what_moved():
    before = DatasetResult("sales", dev_version=1, prod_version=1, median_smape=12.0)
    after = DatasetResult("sales", dev_version=2, prod_version=1, median_smape=11.5, replaced=4)
    full = summarize_manifest("d", manifest())
    back = load_results(dump_results([before, full]))
    assert back["sales"].dev_version == 1 and back["sales"].median_smape == 12.0
    assert np.isnan(back["sales"].mae_ratio)
    assert back["d"].families == full.families and back["d"].kept == full.kept
    assert load_results("not json") == {}
    assert changes({}, [after]) == []
    assert changes(load_results(dump_results([before])), [after]) == [
        "sales: dev v1 -> v2, prod v1, median sMAPE 12.0 -> 11.5 "
        "(4 of the previous champions replaced)"
    ]
