"""Training runs between full refits: incremental, equal to a full refit, and refused when unsafe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.training_run import train_candidate
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.storage import LocalStorage
from resources.training_engine import LocalTrainingEngine

data = load_spec("sales").model_dump()
data["model"] = {**data["model"], "refit": {"full_every_days": 28}}
SPEC = DatasetSpec.model_validate(data)
TABLE = sales_table(SalesShape(40, 300, seed=7, realistic=True))
WEEKS = [pd.Timestamp(w).date() for w in np.unique(TABLE[SPEC.time].to_numpy())]
SKIP = {
    "fit_seconds",
    "serialize_seconds",
    "trained_in",
    "artifact",
    "offset",
    "length",
    "stats_artifact",
    "model_sha256",
}


def rows(lo=None, hi=None) -> pa.Table:
    col = TABLE[SPEC.time]
    keep = pc.less_equal(col, pa.scalar(hi, col.type))
    if lo is not None:
        keep = pc.and_(keep, pc.greater_equal(col, pa.scalar(lo, col.type)))
    return TABLE.filter(keep)


def run(storage, day, run_id):
    said = []
    out = train_candidate(
        storage,
        SPEC,
        LocalTrainingEngine(max_workers=1),
        as_of=str(day),
        run_id=run_id,
        log=said.append,
    )
    return out, " ".join(said)


def coefs(storage, manifest) -> dict[str, np.ndarray]:
    models = ms.load_models(storage, manifest, manifest["series_id"].to_pylist())
    return {s: m[-1].coef_ for s, m in models.items() if hasattr(m, "steps")}


def test_daily_runs_write_the_set_a_full_refit_writes(tmp_path):
    daily = LocalStorage(root=str(tmp_path / "daily"))
    store = CuratedStore(daily, SPEC, n_shards=4)
    d0, d1, d2 = WEEKS[-3:]
    store.merge(rows(hi=d0))
    first, said = run(daily, d0, "run00000")
    assert "full refit: no earlier candidate set" in said
    store.merge(rows(lo=d1, hi=d1))
    _, said = run(daily, d1, "run00001")
    assert "incremental:" in said and "refreshed" in said
    store.merge(rows(lo=d2, hi=d2))
    last, said = run(daily, d2, "run00002")
    assert "incremental:" in said
    assert "refresh_backtest" in last.phases.seconds
    assert last.refit.startswith("incremental:") and first.refit.startswith("full refit")

    full = LocalStorage(root=str(tmp_path / "full"))
    CuratedStore(full, SPEC, n_shards=4).merge(rows(hi=d2))
    ref, said = run(full, d2, "run00009")
    assert "full refit" in said
    a, b = last.manifest, ref.manifest
    assert a["series_id"].equals(b["series_id"]) and a.num_rows == 40
    refreshed = pc.equal(a["trained_in"], pa.scalar(last.ref.version))
    assert pc.sum(refreshed).as_py() >= 20
    for name in b.column_names:
        if name in SKIP:
            continue
        x, y = a[name], b[name]
        if pa.types.is_floating(x.type) or pa.types.is_list(x.type):
            if pa.types.is_list(x.type):
                assert pc.list_value_length(x).equals(pc.list_value_length(y)), name
                x, y = pc.list_flatten(x), pc.list_flatten(y)
            np.testing.assert_allclose(
                np.array(x.to_pylist(), float),
                np.array(y.to_pylist(), float),
                rtol=1e-9,
                atol=1e-9,
                equal_nan=True,
                err_msg=name,
            )
        else:
            assert x.equals(y), name
    got, want = coefs(daily, a), coefs(full, b)
    assert got.keys() == want.keys()
    for sid in want:
        np.testing.assert_allclose(got[sid], want[sid], rtol=1e-9, atol=1e-12, err_msg=sid)


def test_a_restated_period_or_the_schedule_makes_a_full_refit(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    store = CuratedStore(storage, SPEC, n_shards=4)
    d0, d1, d2 = WEEKS[-3:]
    store.merge(rows(hi=d0))
    run(storage, d0, "run00000")
    old = rows(lo=WEEKS[-30], hi=WEEKS[-30]).slice(0, 1)
    changed = old.set_column(
        old.schema.get_field_index(SPEC.target),
        SPEC.target,
        pc.add(old[SPEC.target], pa.scalar(5.0)),
    )
    store.merge(pa.concat_tables([rows(lo=d1, hi=d1), changed]))
    _, said = run(storage, d1, "run00001")
    assert "full refit: curated rows the statistics were built on changed" in said
    store.merge(rows(lo=d2, hi=d2))
    _, said = run(storage, d2, "run00002")
    assert "incremental:" in said  # the restatement was folded in by the full refit
    _, said = run(storage, d1 + pd.Timedelta(days=28), "run00003")
    assert "full refit: the last one" in said
    out = train_candidate(
        storage,
        SPEC,
        LocalTrainingEngine(max_workers=1),
        as_of=str(d1 + pd.Timedelta(days=29)),
        run_id="run00004",
        full_refit=True,
    )
    assert out.refit == "full refit: asked for (full_refit)"


def test_fingerprints_advanced_by_a_window_equal_those_of_the_whole_series():
    """advance_fingerprints over a window that starts before the previous fingerprints' end
    (those rows are not added twice), also in an order not grouped by series, with a series
    the previous fingerprints do not know (left out) and one with no new row (kept as was)."""
    from mlops_assets.ml.tables import advance_fingerprints, series_fingerprints, series_ids

    cut, lo = WEEKS[-5], WEEKS[-12]
    sid, col = series_ids(TABLE, SPEC), TABLE[SPEC.time]
    ids = sorted(set(sid.to_pylist()))
    unknown, stale = ids[0], ids[1]
    old = pc.less_equal(col, pa.scalar(cut, col.type))
    previous = series_fingerprints(TABLE.filter(pc.and_(old, pc.not_equal(sid, unknown))), SPEC)
    kept = pc.invert(pc.and_(pc.equal(sid, stale), pc.invert(old)))  # no new row for `stale`
    everything = TABLE.filter(kept)
    window = everything.filter(pc.greater_equal(everything[SPEC.time], pa.scalar(lo, col.type)))
    shuffled = window.take(pa.array(np.random.default_rng(3).permutation(window.num_rows)))
    want = series_fingerprints(everything, SPEC)  # of the series the window holds
    want = want.filter(pc.is_in(want["series_id"], value_set=series_ids(window, SPEC)))
    want = want.filter(pc.not_equal(want["series_id"], unknown))
    assert stale in want["series_id"].to_pylist() and want.num_rows > len(ids) // 2
    for w in (window, shuffled):
        got = advance_fingerprints(previous, w, SPEC)
        for name in ("series_id", "n_rows", "data_end", "data_fingerprint"):
            assert got[name].to_pylist() == want[name].to_pylist(), name
