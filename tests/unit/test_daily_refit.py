"""A daily incremental step records what a full refit of the same data records, series by series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mlops_assets.domain.training_run import fresh_manifest
from mlops_assets.ml import daily_refit, persistence
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.features import to_series_frame
from mlops_assets.ml.fitting import METRIC_NAMES
from mlops_assets.ml.ridge_stats import STATS_FILE, RidgeState, read_stats
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.ml.tables import series_fingerprints


def refit_spec(**model) -> DatasetSpec:
    data = load_spec("sales").model_dump()
    data["model"] = {**data["model"], "refit": {"full_every_days": 7}, **model}
    return DatasetSpec.model_validate(data)


SPEC = refit_spec()


def upto(table: pa.Table, day) -> pa.Table:
    col = table[SPEC.time]
    return table.filter(pc.less_equal(col, pa.scalar(day, col.type)))


def full_refit(table: pa.Table) -> tuple[pd.DataFrame, RidgeState, pa.Table]:
    results = train_local(table, SPEC, max_workers=1)
    manifest, packs = fresh_manifest(results, series_fingerprints(table, SPEC), SPEC, "v", "f")
    return (
        results.set_index("series_id"),
        read_stats(dict(packs)[f"f/{STATS_FILE}"], SPEC),
        manifest,
    )


def step(table: pa.Table, day, state: RidgeState, manifest: pa.Table):
    since = daily_refit.window_start(SPEC, str(day)).date()
    recent = upto(table, day)
    col = recent[SPEC.time]
    window = recent.filter(pc.greater_equal(col, pa.scalar(since, col.type)))
    starts = dict(
        zip(manifest["series_id"].to_pylist(), manifest["train_start"].to_pylist(), strict=False)
    )
    out = daily_refit.refresh(to_series_frame(window, SPEC), SPEC, state, starts)
    records = pd.DataFrame(out.records)
    _, packs = fresh_manifest(records, series_fingerprints(window, SPEC), SPEC, "d", "g")
    return out, records.set_index("series_id"), read_stats(dict(packs)[f"g/{STATS_FILE}"], SPEC)


def assert_same_records(daily: pd.DataFrame, full: pd.DataFrame) -> None:
    for sid, row in daily.iterrows():
        ref = full.loc[sid]
        for col in (
            "status",
            "family",
            "n_train",
            "n_holdout",
            "train_start",
            "train_end",
            "history_end",
        ):
            assert row[col] == ref[col], (sid, col, row[col], ref[col])
        got = persistence.loads(row["model"])[-1].coef_
        want = persistence.loads(ref["model"])[-1].coef_
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=sid)
        for col in (*METRIC_NAMES, "residual_scale"):
            np.testing.assert_allclose(row[col], ref[col], rtol=1e-9, atol=1e-9, err_msg=col)
        for col in ("history_tail", "backtest_residuals", "mae_by_step", "naive_mae_by_step"):
            np.testing.assert_allclose(
                np.asarray(row[col], float),
                np.asarray(ref[col], float),
                rtol=1e-9,
                atol=1e-9,
                err_msg=f"{sid} {col}",
            )


def test_two_daily_steps_equal_full_refits_on_ragged_series():
    table = sales_table(SalesShape(40, 320, seed=5, realistic=True))
    weeks = np.unique(table[SPEC.time].to_numpy())
    day0, day1, day2 = (pd.Timestamp(w).date() for w in weeks[-3:])
    _, state, manifest = full_refit(upto(table, day0))
    assert len(state.ids) >= 20

    out1, daily1, state1 = step(table, day1, state, manifest)
    full1, _, _ = full_refit(upto(table, day1))
    assert len(daily1) >= 20 and out1.entered >= len(daily1) // 2
    assert_same_records(daily1, full1)
    # Series without statistics (short ones on a fallback, new ones) go the full way.
    no_stats = set(full1.index) - set(state.ids)
    assert no_stats and no_stats <= set(out1.left) | (set(full1.index) - set(daily1.index))

    _out2, daily2, _ = step(table, day2, state1, manifest)
    full2, _, _ = full_refit(upto(table, day2))
    assert len(daily2) == len(daily1)
    assert_same_records(daily2, full2)


def test_a_window_too_short_for_a_series_leaves_it_to_a_full_training():
    table = sales_table(SalesShape(6, 260, seed=2))
    weeks = np.unique(table[SPEC.time].to_numpy())
    _, state, _manifest = full_refit(upto(table, pd.Timestamp(weeks[-2]).date()))
    day = pd.Timestamp(weeks[-1]).date()
    recent = upto(table, day)
    col = recent[SPEC.time]
    short = recent.filter(
        pc.greater_equal(col, pa.scalar(pd.Timestamp(weeks[-40]).date(), col.type))
    )
    out = daily_refit.refresh(to_series_frame(short, SPEC), SPEC, state, {})
    assert out.records == [] and len(out.left) == 6


@pytest.mark.parametrize(
    ("built", "as_of", "due"),
    [
        ("2026-11-02/ab", "2026-11-05", False),
        ("2026-11-02/ab", "2026-11-09", True),
        ("2026-11-02/ab", "2026-11-02", True),
        ("", "2026-11-02", True),
    ],
)
def test_full_refit_schedule(built, as_of, due):
    assert daily_refit.full_refit_due(SPEC, built, as_of) is due
