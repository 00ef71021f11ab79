"""Promotion decisions, re-scoring on the same holdout, the resulting set and the gate."""

import math

import numpy as np
import pyarrow as pa
import pytest

from mlops_assets.ml import comparison as ev
from mlops_assets.ml.features import feature_matrix, to_series_frame
from mlops_assets.ml.fitting import fit_series
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec

P = ev.Policy(margin=0.05)
T = ev.Policy(margin=0.0, max_metric=20.0)
N = ev.Policy(margin=0.0, require_beats_naive=True)


@pytest.mark.parametrize(
    ("challenger", "champion", "policy", "trained", "naive", "decision", "promoted"),
    [
        # no champion: the first model of a series is promoted
        (10.0, None, P, True, None, ev.NO_CHAMPION, True),
        # better by more than the margin
        (9.0, 10.0, P, True, None, ev.BETTER, True),
        # exactly at the bar (10 * 0.95)
        (9.5, 10.0, P, True, None, ev.BETTER, True),
        # better, but not by the margin
        (9.8, 10.0, P, True, None, ev.NOT_BETTER, False),
        # worse
        (12.0, 10.0, P, True, None, ev.NOT_BETTER, False),
        # equal with margin 0 is not better
        (10.0, 10.0, ev.Policy(margin=0.0), True, None, ev.NOT_BETTER, False),
        # business threshold beats everything else
        (25.0, 40.0, T, True, None, ev.BELOW_THRESHOLD, False),
        (25.0, None, T, True, None, ev.BELOW_THRESHOLD, False),
        (15.0, 40.0, T, True, None, ev.BETTER, True),
        # naive baseline rule
        (15.0, 40.0, N, True, 14.0, ev.BELOW_THRESHOLD, False),
        (13.0, 40.0, N, True, 14.0, ev.BETTER, True),
        # not trained in this run: the champion stays
        (None, 10.0, P, False, None, ev.SKIPPED, False),
        (None, None, P, False, None, ev.SKIPPED, False),
        # trained but no finite metric counts as not trained
        (float("nan"), 10.0, P, True, None, ev.SKIPPED, False),
        # a champion that cannot be re-scored does not defend its place
        (10.0, float("nan"), P, True, None, ev.BETTER, True),
        # a negative margin tolerates a worse challenger (drills only)
        (10.5, 10.0, ev.Policy(margin=-0.1), True, None, ev.BETTER, True),
    ],
)
def test_decide(challenger, champion, policy, trained, naive, decision, promoted):
    d, p, reason = ev.decide(challenger, champion, policy, trained=trained, naive=naive)
    assert (d, p) == (decision, promoted)
    assert reason


def _manifest(rows):
    cols = ["series_id", "status", "trained_in", "smape", "naive_smape", "artifact", "offset"]
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})


def test_resulting_set_carries_champion_entries_by_reference():
    cand = _manifest(
        [
            ("a", "trained", "v2", 5.0, 9.0, "v2/pack-000.bin", 0),
            ("b", "trained", "v2", 11.0, 9.0, "v2/pack-000.bin", 10),
            ("c", "trained", "v2", 7.0, 9.0, "v2/pack-000.bin", 20),
            ("d", "skipped", "v2", None, None, None, None),
            ("e", "trained", "v1", 6.0, 9.0, "v1/pack-000.bin", 40),
        ]
    )
    champ = _manifest(
        [
            ("a", "trained", "v1", 6.0, 9.0, "v1/pack-000.bin", 0),
            ("b", "trained", "v1", 6.0, 9.0, "v1/pack-000.bin", 10),
            ("e", "trained", "v1", 6.0, 9.0, "v1/pack-000.bin", 40),
        ]
    )
    scores = {"a": {"smape": 8.0}, "b": {"smape": 8.0}}
    decisions = ev.evaluate_sets(cand, champ, scores, "v2", "1", ev.Policy(margin=0.02))
    got = {r["series_id"]: r for r in decisions.to_pylist()}
    assert {s: r["decision"] for s, r in got.items()} == {
        "a": ev.BETTER,
        "b": ev.NOT_BETTER,
        "c": ev.NO_CHAMPION,
        "d": ev.SKIPPED,
        "e": ev.SKIPPED,  # carried by the candidate, not trained in this run
    }
    result = {r["series_id"]: r for r in ev.resulting_manifest(cand, champ, decisions).to_pylist()}
    assert result["a"]["artifact"] == "v2/pack-000.bin"  # promoted
    assert (result["b"]["artifact"], result["b"]["trained_in"]) == ("v1/pack-000.bin", "v1")
    assert result["c"]["artifact"] == "v2/pack-000.bin"
    assert result["d"]["artifact"] is None and result["d"]["status"] == "skipped"
    assert result["e"]["trained_in"] == "v1"
    assert result["b"]["decision_reason"].startswith("smape 11.000 vs champion 8.000")

    q = ev.aggregate_quality(decisions, max_median_increase=0.0)
    # a: 5 (challenger) vs 8; b: 8 (champion kept) vs 8 -> median 6.5 <= 8
    assert q.passed and q.resulting_median == 6.5 and q.champion_median == 8.0
    strong = {"a": {"smape": 4.0}, "b": {"smape": 8.0}}
    worse = ev.evaluate_sets(cand, champ, strong, "v2", "1", ev.Policy(margin=-10))
    # Both worse challengers promoted: median 8 vs 6.
    assert not ev.aggregate_quality(worse, max_median_increase=0.5).passed


def test_gate_passes_without_a_champion():
    decisions = ev.evaluate_sets(
        _manifest([("a", "trained", "v1", 5.0, 9.0, "p", 0)]), None, {}, "v1", None, ev.Policy()
    )
    q = ev.aggregate_quality(decisions, 0.0)
    assert q.passed and q.compared_series == 0 and math.isnan(q.champion_median)


def test_rescore_uses_the_challengers_holdout_rows():
    spec = load_spec("sales")
    frame = to_series_frame(sales_table(SalesShape(3, 90, seed=1)), spec)
    X = feature_matrix(frame, spec)
    fits = {}
    for i, key in enumerate(frame.keys):
        a, b = int(frame.offsets[i]), int(frame.offsets[i + 1])
        fits[spec.series_id(key)] = fit_series(X[a:b], frame.target[a:b], frame.time[a:b], spec)
    scores = ev.rescore(frame, spec, lambda s: fits[s].model)
    for sid, fit in fits.items():
        # The champion re-scored on the same data reproduces the metrics training recorded.
        assert scores[sid]["n_holdout"] == fit.n_holdout
        np.testing.assert_allclose(scores[sid]["smape"], fit.metrics["smape"], rtol=1e-9)
    assert ev.rescore(frame, spec, lambda s: None) == {}
