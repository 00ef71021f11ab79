"""Promotion decisions, re-scoring on the same backtest folds, the resulting set and the gate.

Also the baselines the gate needs (``selection``: scored on the model's pairs or not at all) and
the history evaluation reads for the champion (``evaluation_run.history_frames``).
"""

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.evaluation_run import history_frames
from mlops_assets.ml import comparison as ev
from mlops_assets.ml import persistence
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.features import to_series_frame
from mlops_assets.ml.sample_data import SalesShape, diabetes_table, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import series_ids as row_series
from mlops_assets.storage import LocalStorage

# Margin and threshold rules alone (no baseline required).
P = ev.Policy(margin=0.05, require_beats_baseline="none")
T = ev.Policy(margin=0.0, max_metric=20.0, require_beats_baseline="none")
N = ev.Policy(margin=0.0, require_beats_baseline="naive")
# The default: beat seasonal naive (naive where it was not scored on the same points).
D = ev.Policy(margin=0.05)
PROMOTE_UNSCORED = ev.Policy(margin=0.05, require_beats_baseline="none", unscored="promote")
NAN = float("nan")


@pytest.mark.parametrize(
    ("challenger", "champion", "policy", "kw", "decision", "promoted"),
    [
        # no champion: the first model of a series is promoted
        (10.0, None, P, {}, ev.NO_CHAMPION, True),
        # better by more than the margin
        (9.0, 10.0, P, {}, ev.BETTER, True),
        # exactly at the bar (10 * 0.95)
        (9.5, 10.0, P, {}, ev.BETTER, True),
        # better, but not by the margin
        (9.8, 10.0, P, {}, ev.NOT_BETTER, False),
        # worse
        (12.0, 10.0, P, {}, ev.NOT_BETTER, False),
        # equal with margin 0 is not better
        (10.0, 10.0, ev.Policy(margin=0.0, require_beats_baseline="none"), {}, ev.NOT_BETTER, 0),
        # business threshold beats everything else
        (25.0, 40.0, T, {}, ev.BELOW_THRESHOLD, False),
        (25.0, None, T, {}, ev.BELOW_THRESHOLD, False),
        (15.0, 40.0, T, {}, ev.BETTER, True),
        (25.0, None, ev.Policy(max_metric=20.0), {"seasonal_naive": 30.0}, ev.BELOW_THRESHOLD, 0),
        # naive baseline rule (was below_threshold before the baseline had its own decision)
        (15.0, 40.0, N, {"naive": 14.0}, ev.BELOW_BASELINE, False),
        (13.0, 40.0, N, {"naive": 14.0}, ev.BETTER, True),
        (13.0, 40.0, N, {"naive": 14.0, "seasonal_naive": 5.0}, ev.BETTER, True),
        # not trained in this run: the champion stays
        (None, 10.0, P, {"trained": False}, ev.SKIPPED, False),
        (None, None, P, {"trained": False}, ev.SKIPPED, False),
        # trained but no finite metric counts as not trained
        (NAN, 10.0, P, {}, ev.SKIPPED, False),
        # a champion that cannot be re-scored keeps its place (it used to be replaced)
        (10.0, NAN, P, {}, ev.KEPT_UNSCORED, False),
        (10.0, NAN, D, {"seasonal_naive": 12.0}, ev.KEPT_UNSCORED, False),
        # ... and so does one scored on other points than the challenger's
        (5.0, 10.0, P, {"points": 8, "champion_points": 5}, ev.KEPT_UNSCORED, False),
        # unless the policy says to promote without a comparison
        (10.0, NAN, PROMOTE_UNSCORED, {}, ev.PROMOTED_UNSCORED, True),
        # a negative margin tolerates a worse challenger (drills only)
        (10.5, 10.0, ev.Policy(margin=-0.1, require_beats_baseline="none"), {}, ev.BETTER, 1),
        # default: seasonal naive must be beaten, on the same points
        (10.0, None, D, {"seasonal_naive": 12.0, "naive": 9.0}, ev.NO_CHAMPION, True),
        (9.0, 10.0, D, {"seasonal_naive": 9.5, "naive": 5.0}, ev.BETTER, True),
        (9.0, 10.0, D, {"seasonal_naive": 8.0, "naive": 20.0}, ev.BELOW_BASELINE, False),
        (9.0, 10.0, D, {"seasonal_naive": 9.0}, ev.BELOW_BASELINE, False),  # a tie does not beat
        # a first model below the baseline is promoted, flagged (a forecast for every series)
        (10.0, None, D, {"seasonal_naive": 8.0}, ev.BELOW_BASELINE, True),
        # seasonal naive not scored (under a season of history): naive judges
        (9.0, 10.0, D, {"naive": 8.0}, ev.BELOW_BASELINE, False),
        (9.0, 10.0, D, {"naive": 12.0}, ev.BETTER, True),
        # no baseline scored on those points: not beaten
        (9.0, 10.0, D, {}, ev.BELOW_BASELINE, False),
        (9.0, None, D, {}, ev.BELOW_BASELINE, True),
        # a worse challenger stays below the baseline whether or not it beats the champion
        (12.0, 10.0, D, {"seasonal_naive": 11.0}, ev.BELOW_BASELINE, False),
    ],
)
def test_decide(challenger, champion, policy, kw, decision, promoted):
    d, p, reason = ev.decide(challenger, champion, policy, **kw)
    assert (d, p) == (decision, bool(promoted))
    assert reason


def test_decide_all_judges_each_baseline_on_the_challengers_points():
    """Seasonal naive scored on fewer points than the challenger does not judge it: naive does."""
    challenger = ev.Errors.of([9.0, 9.0, 9.0], [8, 8, 8])
    champion = ev.Errors.of([NAN] * 3, [0] * 3)
    baselines = {
        "seasonal_naive": ev.Errors.of([5.0, 5.0, 12.0], [3, 8, 8]),
        "naive": ev.Errors.of([12.0, 12.0, 5.0], [8, 8, 8]),
    }
    d = ev.decide_all(np.ones(3, bool), challenger, champion, np.zeros(3, bool), baselines, D)
    assert d.baseline.tolist() == ["naive", "seasonal_naive", "seasonal_naive"]
    assert d.decision.tolist() == [ev.NO_CHAMPION, ev.BELOW_BASELINE, ev.NO_CHAMPION]
    assert d.below_baseline.tolist() == [False, True, False]
    assert d.promoted.all()  # first models, the second flagged
    assert "seasonal_naive baseline 5.000" in d.reason[1]


def test_decide_all_is_vectorised_and_agrees_with_the_one_series_form():
    rng = np.random.default_rng(0)
    n = 10_000
    challenger = rng.uniform(5, 15, n)
    champion = np.where(rng.random(n) < 0.2, np.nan, rng.uniform(5, 15, n))
    seasonal = np.where(rng.random(n) < 0.2, np.nan, rng.uniform(5, 15, n))
    naive = rng.uniform(5, 15, n)
    has = rng.random(n) < 0.7
    trained = rng.random(n) < 0.9
    points = np.full(n, 8)
    policy = ev.Policy(margin=0.02, max_metric=14.0)
    d = ev.decide_all(
        trained,
        ev.Errors.of(challenger, points),
        ev.Errors.of(champion, points),
        has,
        {"seasonal_naive": ev.Errors.of(seasonal, points), "naive": ev.Errors.of(naive, points)},
        policy,
    )
    assert set(d.decision) == set(ev.DECISIONS) - {ev.PROMOTED_UNSCORED}
    for i in rng.choice(n, 300, replace=False):
        one = ev.decide(
            challenger[i],
            champion[i] if has[i] else None,
            policy,
            trained=bool(trained[i]),
            naive=naive[i],
            seasonal_naive=seasonal[i],
            points=8,
        )
        assert one == (d.decision[i], d.promoted[i], d.reason[i])


def test_gate_counts():
    decision = np.array(
        [
            *(ev.BETTER, ev.NOT_BETTER, ev.KEPT_UNSCORED, ev.PROMOTED_UNSCORED, ev.NO_CHAMPION),
            *(ev.BELOW_BASELINE, ev.BELOW_BASELINE, ev.SKIPPED),
        ],
        dtype=object,
    )
    promoted = np.array([1, 0, 0, 1, 1, 1, 0, 0], bool)
    compared = np.array([1, 1, 0, 0, 0, 0, 1, 0], bool)
    has = np.array([1, 1, 1, 1, 0, 0, 1, 1], bool)
    assert ev.gate_counts(decision, promoted, compared, has) == {
        "challengers": 7,
        "with_champion": 5,
        "compared": 3,
        "promoted": 4,
        "kept": 3,
        "kept_unscored": 1,
        "below_baseline": 2,
        "below_threshold": 0,
        "no_champion": 1,
        "promoted_first": 2,
        "promoted_below_baseline": 1,
        "promoted_without_comparison": 1,
        "skipped": 1,
    }


def _manifest(rows, seasonal=None):
    """A manifest of (series_id, status, trained_in, smape, naive_smape, artifact, offset) rows,
    each scored on 8 holdout points; ``seasonal``: seasonal-naive sMAPE per row (None: none)."""
    cols = ["series_id", "status", "trained_in", "smape", "naive_smape", "artifact", "offset"]
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})
    table = table.append_column("n_holdout", pa.array([8] * len(rows), pa.int64()))
    return table.append_column(
        "seasonal_naive_smape", pa.array(seasonal or [None] * len(rows), pa.float64())
    )


def _scored(**smape):
    """Champion scores on the challenger's 8 points."""
    return {s: {"smape": v, "n_holdout": 8.0} for s, v in smape.items()}


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
    scores = _scored(a=8.0, b=8.0)
    # Margin rules only: b does not beat its naive baseline (11 vs 9).
    policy = ev.Policy(margin=0.02, require_beats_baseline="none")
    decisions = ev.evaluate_sets(cand, champ, scores, "v2", "1", policy)
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
    strong = _scored(a=4.0, b=8.0)
    drill = ev.Policy(margin=-10, require_beats_baseline="none")
    worse = ev.evaluate_sets(cand, champ, strong, "v2", "1", drill)
    # Both worse challengers promoted: median 8 vs 6.
    assert not ev.aggregate_quality(worse, max_median_increase=0.5).passed


def test_gate_passes_without_a_champion():
    decisions = ev.evaluate_sets(
        _manifest([("a", "trained", "v1", 5.0, 9.0, "p", 0)]), None, {}, "v1", None, ev.Policy()
    )
    q = ev.aggregate_quality(decisions, 0.0)
    assert q.passed and q.compared_series == 0 and math.isnan(q.champion_median)
    assert q.counts["promoted_first"] == 1 and q.counts["promoted_without_comparison"] == 0


def _champion_set(*ids):
    return _manifest([(s, "trained", "v1", 6.0, 9.0, "v1/pack-000.bin", 0) for s in ids])


def test_a_champion_that_cannot_be_scored_keeps_its_place():
    cand = _manifest(
        [
            ("a", "trained", "v2", 5.0, 9.0, "v2/pack-000.bin", 0),
            ("b", "trained", "v2", 5.0, 9.0, "v2/pack-000.bin", 10),
            ("c", "trained", "v2", 5.0, 9.0, "v2/pack-000.bin", 20),
        ],
        seasonal=[7.0, 7.0, 7.0],
    )
    champ = _champion_set("a", "b", "c")
    # a: not scored at all; b: scored on 5 of the challenger's 8 points; c: compared.
    scores = {"b": {"smape": 8.0, "n_holdout": 5.0}, **_scored(c=8.0)}
    decisions = ev.evaluate_sets(cand, champ, scores, "v2", "1", ev.Policy())
    got = {r["series_id"]: r for r in decisions.to_pylist()}
    assert [got[s]["decision"] for s in "abc"] == [ev.KEPT_UNSCORED, ev.KEPT_UNSCORED, ev.BETTER]
    assert [got[s]["compared"] for s in "abc"] == [False, False, True]
    assert "(not scored)" in got["a"]["decision_reason"]
    assert "challenger's 8 points (scored on 5 points)" in got["b"]["decision_reason"]
    result = {r["series_id"]: r for r in ev.resulting_manifest(cand, champ, decisions).to_pylist()}
    assert result["a"]["trained_in"] == "v1" and result["b"]["trained_in"] == "v1"
    q = ev.aggregate_quality(decisions, 0.0)
    assert q.passed and q.compared_series == 1
    assert {k: q.counts[k] for k in ("compared", "kept_unscored", "promoted")} == {
        "compared": 1,
        "kept_unscored": 2,
        "promoted": 1,
    }
    assert q.counts["promoted_without_comparison"] == 0
    # The policy may promote instead: measured as promotions without a comparison.
    promote = ev.evaluate_sets(cand, champ, scores, "v2", "1", ev.Policy(unscored="promote"))
    assert ev.aggregate_quality(promote, 0.0).counts["promoted_without_comparison"] == 2


@pytest.mark.parametrize("unscored", ["keep", "promote"])
def test_gate_fails_when_champions_exist_and_none_was_compared(unscored):
    cand = _manifest(
        [
            ("a", "trained", "v2", 5.0, 9.0, "v2/pack-000.bin", 0),
            ("b", "trained", "v2", 5.0, 9.0, "v2/pack-000.bin", 10),
            ("c", "trained", "v2", 5.0, 9.0, "v2/pack-000.bin", 20),  # a first model
        ]
    )
    decisions = ev.evaluate_sets(
        cand, _champion_set("a", "b"), {}, "v2", "1", ev.Policy(unscored=unscored)
    )
    q = ev.aggregate_quality(decisions, 1.0)
    assert not q.passed and q.compared_series == 0
    assert "2 challengers have a champion but none was compared" in q.description
    # Only the policy that promotes unscored challengers lets such a set through, counted.
    allowed = ev.aggregate_quality(decisions, 1.0, allow_uncompared=unscored == "promote")
    assert allowed.passed == (unscored == "promote")
    assert q.counts["compared"] == 0 and q.counts["with_champion"] == 2
    assert q.counts["promoted_first"] == 1
    assert q.counts["promoted_without_comparison"] == (2 if unscored == "promote" else 0)
    # No challenger where the champions are: nothing was due for a comparison.
    only_c = ev.evaluate_sets(
        cand.slice(2), _champion_set("a", "b"), {}, "v2", "1", ev.Policy(unscored=unscored)
    )
    assert ev.aggregate_quality(only_c, 1.0).passed


def test_a_first_model_below_the_baseline_is_promoted_flagged():
    cand = _manifest(
        [
            ("a", "trained", "v1", 10.0, 12.0, "v1/pack-000.bin", 0),  # seasonal naive 8: loses
            ("b", "trained", "v1", 10.0, 12.0, "v1/pack-000.bin", 10),  # seasonal naive 11
        ],
        seasonal=[8.0, 11.0],
    )
    decisions = ev.evaluate_sets(cand, None, {}, "v1", None, ev.Policy())
    result = {r["series_id"]: r for r in ev.resulting_manifest(cand, None, decisions).to_pylist()}
    a, b = result["a"], result["b"]
    assert (a["decision"], a["promoted"], a["below_baseline"]) == (ev.BELOW_BASELINE, True, True)
    assert (a["baseline"], a["baseline_metric"]) == ("seasonal_naive", 8.0)
    assert a["artifact"] == "v1/pack-000.bin"  # served until the baseline can serve instead
    assert "promoted flagged below_baseline" in a["decision_reason"]
    assert (b["decision"], b["promoted"], b["below_baseline"]) == (ev.NO_CHAMPION, True, False)
    q = ev.aggregate_quality(decisions, 0.0)
    assert q.passed
    assert (q.counts["promoted_first"], q.counts["promoted_below_baseline"]) == (2, 1)
    assert q.counts["promoted_without_comparison"] == 0


def _trained(table, spec) -> dict:
    """Training's record and loaded model per series id, through the engines' own path."""
    results = train_local(table, spec, max_workers=1)
    out = {}
    for r in results.to_dict("records"):
        model = persistence.loads(r["model"]) if r["model"] is not None else None
        out[r["series_id"]] = (model, r)
    return out


def test_rescore_backtests_the_champion_on_the_challengers_folds():
    spec = load_spec("sales")
    table = sales_table(SalesShape(3, 90, seed=1))
    trained = _trained(table, spec)
    frame = to_series_frame(table, spec)
    scores = ev.rescore(frame, spec, lambda s: trained[s][0])
    for sid, (_, info) in trained.items():
        # The champion re-scored on the same data reproduces the metrics training recorded.
        assert info["status"] == "trained" and info["n_holdout"] == 16
        assert scores[sid]["n_holdout"] == info["n_holdout"]
        np.testing.assert_allclose(scores[sid]["smape"], info["smape"], rtol=1e-9)
    assert ev.rescore(frame, spec, lambda s: None) == {}
    # Champions fitted on another feature set (the spec gained a lag) are left unscored.
    wider = spec.model_copy(deep=True)
    wider.features.lags = [*spec.features.lags, 3]
    assert ev.rescore(frame, wider, lambda s: trained[s][0]) == {}


def _one_series(y) -> pa.Table:
    n = len(y)
    return pa.table(
        {
            "store": ["S"] * n,
            "product": ["P"] * n,
            "week": pd.date_range(end="2026-11-16", periods=n, freq="W-MON").date,
            "sales": y,
            "price": [1.0] * n,
            "promo": [0] * n,
        }
    )


def _short_lags(spec):
    s = spec.model_copy(deep=True)
    s.features.lags, s.features.rolling, s.min_history = [1, 2], [4], 10
    return s


def test_baselines_are_scored_on_the_models_folds_or_not_at_all():
    spec = load_spec("sales")
    y = np.random.default_rng(3).uniform(10, 20, 120)
    ((_, info),) = _trained(_one_series(y), spec).values()
    assert info["n_holdout"] == 16
    origins = [113, 114, 115, 116]  # 4 origins, the newest 4 periods before the end
    seasonal = [abs(y[c + j] - y[c + j - 52]) for c in origins for j in range(4)]
    assert info["seasonal_naive_mae"] == pytest.approx(np.mean(seasonal))
    # Under a season of history: seasonal naive cannot forecast every backtest pair, so it is
    # not scored at all (not on the few it could) and the gate falls back to naive.
    ((_, short),) = _trained(_one_series(y[:40]), _short_lags(spec)).values()
    assert short["status"] == "trained" and short["n_holdout"] == 16
    assert math.isnan(short["seasonal_naive_mae"])
    naive = [abs(y[c + j] - y[c - 1]) for c in (33, 34, 35, 36) for j in range(4)]
    assert short["naive_mae"] == pytest.approx(np.mean(naive))


def _store_with(tmp_path, table):
    storage = LocalStorage(root=str(tmp_path))
    CuratedStore(storage, SALES).merge(table)
    return storage


SALES = load_spec("sales")


def test_champion_is_rescored_on_the_challengers_rows_whatever_the_series_length(tmp_path):
    """A long series with gaps (fewer rows in the old fixed window than its features need) and a
    short one: re-scored, both reproduce the metrics training recorded on the same rows."""
    long_gappy = sales_table(SalesShape(2, 300, seed=5))
    ids = row_series(long_gappy, SALES).to_numpy(zero_copy_only=False)
    week = pd.to_datetime(long_gappy["week"].to_numpy(zero_copy_only=False))
    recent = week > week.max() - pd.Timedelta(weeks=150)
    # Series 0 keeps one week in three of its last 150: 50 rows there, < holdout + 52.
    drop = (ids == ids[0]) & recent & (np.arange(len(ids)) % 3 != 0)
    long_gappy = long_gappy.filter(pa.array(~drop))
    short = sales_table(SalesShape(3, 100, seed=6)).slice(200, 100)  # one 100-week series
    storage = _store_with(tmp_path, pa.concat_tables([long_gappy, short]))
    as_of = str((week.max() + pd.Timedelta(days=1)).date())
    trained = _trained(CuratedStore(storage, SALES).read(), SALES)
    assert all(info["status"] == "trained" for _, info in trained.values()) and len(trained) == 3
    frames = history_frames(storage, SALES, as_of, trained)
    # The window holds the regular long series and the whole short one; the gapped one is
    # read again with all its history.
    assert [f.n_series for f in frames] == [2, 1]
    scores = {}
    for frame in frames:
        scores.update(ev.rescore(frame, SALES, lambda s: trained[s][0]))
    for sid, (_, info) in trained.items():
        assert scores[sid]["n_holdout"] == info["n_holdout"] > 0
        np.testing.assert_allclose(scores[sid]["smape"], info["smape"], rtol=1e-9)


def test_a_series_without_lag_features_is_rescored_on_its_folds():
    """No lags or rolling windows (diabetes): the champion is still re-scored on the folds
    training evaluated (it used to score nothing, so a day-2 retrain could not compare)."""
    spec = load_spec("diabetes")
    ((model, info),) = _trained(diabetes_table(), spec).values()
    assert info["status"] == "trained"
    frame = to_series_frame(diabetes_table(), spec)
    (score,) = ev.rescore(frame, spec, lambda s: model).values()
    assert score["n_holdout"] == info["n_holdout"] == spec.holdout
    np.testing.assert_allclose(score["smape"], info["smape"], rtol=1e-9)


def test_a_fallback_challenger_too_short_to_score_serves_only_a_series_without_champion():
    nan = float("nan")
    unscored = ev.Errors.of([nan, nan], [0, 0])
    d = ev.decide_all(
        np.array([True, True]),
        unscored,
        ev.Errors.of([5.0, nan], [16, 0]),
        np.array([True, False]),
        {"naive": unscored, "seasonal_naive": unscored},
        D,
        first_unscored=np.array([True, True]),
    )
    assert d.decision.tolist() == [ev.SKIPPED, ev.NO_CHAMPION]
    assert d.promoted.tolist() == [False, True]
    assert "fallback method" in d.reason[0] and "champion stays" in d.reason[0]
    assert "fallback method" in d.reason[1]
