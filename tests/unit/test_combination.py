"""Forecast combinations (``model.choice: combine``): weights, the panel prior, training, storage
and every scoring path, each checked against the members forecasting alone."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_assets.domain.training_run import run_table
from mlops_assets.ml import combination, comparison, persistence
from mlops_assets.ml.calendar import calendar_series
from mlops_assets.ml.combination import (
    Combination,
    family_shares,
    panel_prior,
    sample_ids,
    weights,
)
from mlops_assets.ml.engines import TIMING_COLUMNS, train_local
from mlops_assets.ml.features import to_series_frame
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.scoring import SeriesModel, score
from mlops_assets.ml.selection import select, with_prior
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.serving.fast import score_records
from tests.fixtures.model_sets import written_reader

SALES = load_spec("sales")
COMBINE = DatasetSpec.model_validate(
    {
        **SALES.model_dump(mode="json"),
        "model": {
            "family": "ridge",
            "params": {"alpha": 1.0},
            "candidates": ["seasonal_naive", "naive", "mean"],
            "choice": "combine",
            "combine": {"min_weight": 0.02},
        },
    }
)
FUTURE = 6


def _sales(n_series: int, n_weeks: int, seed: int) -> pd.DataFrame:
    full = sales_table(SalesShape(n_series, n_weeks, seed=seed)).to_pandas()
    full["store"], full["product"] = full.store.astype(str), full["product"].astype(str)
    return full


# ------------------------------------------------------------------------- weights and prior


def test_weights_are_a_softmax_of_log_relative_scores():
    scores = np.array([[1.0, 3.0], [2.0, 3.0]])
    eligible = np.ones_like(scores, bool)
    w = weights(scores, eligible, np.zeros(2), shrinkage=0.0, temperature=0.25, min_weight=0.0)
    # Twice the error at T=0.25: 2**-4 of the weight; equal scores: equal weights.
    np.testing.assert_allclose(w[:, 0], [16 / 17, 1 / 17])
    np.testing.assert_allclose(w[:, 1], [0.5, 0.5])
    # Members under min_weight are dropped and the rest renormalised.
    w = weights(scores, eligible, np.zeros(2), shrinkage=0.0, temperature=0.25, min_weight=0.1)
    np.testing.assert_allclose(w[:, 0], [1.0, 0.0])


def test_the_prior_pulls_every_series_toward_the_panels_better_family():
    scores = np.array([[1.0, 1.0], [1.0, 1.0]])
    eligible = np.ones_like(scores, bool)
    prior = np.array([-0.2, 0.2])
    own = weights(scores, eligible, prior, shrinkage=0.0, temperature=0.25, min_weight=0.0)
    np.testing.assert_allclose(own, 0.5)
    shrunk = weights(scores, eligible, prior, shrinkage=0.5, temperature=0.25, min_weight=0.0)
    e = np.exp(0.5 * 0.4 / 0.25)
    np.testing.assert_allclose(shrunk[:, 0], [e / (1 + e), 1 / (1 + e)])
    # Full shrinkage: the same weights whatever the series' own scores.
    other = np.array([[5.0, 1.0], [1.0, 5.0]])
    full = weights(other, eligible, prior, shrinkage=1.0, temperature=0.25, min_weight=0.0)
    np.testing.assert_allclose(full[:, 0], full[:, 1])


def test_ineligible_candidates_and_perfect_backtests():
    scores = np.array([[0.0, 2.0, np.nan], [0.0, 1.0, np.nan], [np.nan, 4.0, np.nan]])
    eligible = np.isfinite(scores)
    w = weights(scores, eligible, np.zeros(3), shrinkage=0.0, temperature=0.25, min_weight=0.0)
    np.testing.assert_allclose(w[:, 0], [0.5, 0.5, 0.0])  # two perfect backtests: equal
    np.testing.assert_allclose(w[:, 1].sum(), 1.0)
    assert w[1, 1] > w[0, 1] > w[2, 1]
    np.testing.assert_allclose(w[:, 2], 0.0)  # no eligible candidate: no weight at all


def test_panel_prior_is_the_mean_relative_log_score_over_complete_series():
    scores = np.array([[1.0, 2.0, 5.0], [4.0, 2.0, np.nan]])
    eligible = np.isfinite(scores)
    # Series 0: logs 0, log 4 -> relative -log2, +log2; series 1: 0, 0; series 2 incomplete.
    np.testing.assert_allclose(
        panel_prior(scores, eligible), [-np.log(2) / 2, np.log(2) / 2], atol=1e-6
    )
    assert panel_prior(scores[:, 2:], eligible[:, 2:]).tolist() == [0.0, 0.0]


def test_the_prior_sample_does_not_depend_on_order_or_chunking():
    ids = [f"store=S{i:04d}/product=P{i % 7:03d}" for i in range(1000)]
    first = sample_ids(ids, 50)
    assert first == sample_ids(list(reversed(ids)), 50) and len(first) == 50
    assert set(sample_ids(first, 50)) == set(first)  # the sample of the sample is itself


def test_a_combination_needs_plain_members_and_weights_that_sum_to_one():
    with pytest.raises(ValueError, match="two or more"):
        Combination(("naive",), (object(),), (1.0,))
    with pytest.raises(ValueError, match="sum to 1"):
        Combination(("naive", "mean"), (object(), object()), (0.5, 0.6))


# ------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six sales series trained with ``choice: combine``; the set written and read back."""
    full = _sales(6, 120, seed=5)
    weeks = np.sort(full.week.unique())
    train = full[full.week < weeks[-FUTURE]].reset_index(drop=True)
    records = train_local(pa.Table.from_pandas(train, preserve_index=False), COMBINE, max_workers=1)
    table = run_table(records, COMBINE)
    root = tmp_path_factory.mktemp("combine")
    reader, _ = written_reader(table, root, "set", "c-1")
    future = full[full.week >= weeks[-FUTURE]].reset_index(drop=True)
    return train, records, reader, future


def test_select_combines_the_candidates_by_their_backtest(trained):
    train, records, _, _ = trained
    spec = with_prior(COMBINE, to_series_frame(train, COMBINE))
    prior = spec.model.combine.prior
    assert prior is not None and set(prior) == {"ridge", "seasonal_naive", "naive", "mean"}
    combined = records[records.family == combination.FAMILY]
    assert len(combined) >= 4, records[["family", "weights"]]
    for r in combined.to_dict("records"):
        scores = json.loads(r["family_scores"])
        mix = json.loads(r["weights"])
        names = list(scores)
        expected = weights(
            np.array([[scores[n]] for n in names]),
            np.ones((len(names), 1), bool),
            np.array([prior[n] for n in names]),
            0.5,
            0.25,
            0.02,
        )[:, 0]
        got = np.array([mix.get(n, 0.0) for n in names])
        np.testing.assert_allclose(got, expected, atol=1e-6)
        # The runner-up is the single candidate ``best`` would have kept.
        assert r["runner_up"] == min(scores, key=scores.__getitem__)
        assert r["runner_up_score"] == pytest.approx(min(scores.values()))
        model = persistence.loads(r["model"])
        assert isinstance(model, Combination) and r["model_format"] == "combination"
        assert model.describe() == pytest.approx(mix)


def test_the_stored_combination_reproduces_trainings_backtest(trained):
    """The gate re-scores a champion with ``comparison.rescore``: a stored combination must
    score exactly what training recorded for it."""
    train, records, _, _ = trained
    models = {r.series_id: persistence.loads(r.model) for r in records.itertuples()}
    scores = comparison.rescore(to_series_frame(train, COMBINE), COMBINE, models.get)
    for r in records[records.family == combination.FAMILY].itertuples():
        np.testing.assert_allclose(scores[r.series_id]["mae"], r.mae, rtol=1e-9)
        np.testing.assert_allclose(scores[r.series_id]["smape"], r.smape, rtol=1e-9)


def test_the_choice_best_is_unchanged_by_the_combine_settings(trained):
    train, records, _, _ = trained
    best = COMBINE.model_copy(update={"model": COMBINE.model.model_copy(update={"choice": "best"})})
    sel = select(calendar_series(to_series_frame(train, best), best).frame, best)
    assert combination.FAMILY not in set(sel.family)
    assert all(w is None for w in sel.weights)
    by_id = records.set_index("series_id")
    ids = [best.series_id(k) for k in to_series_frame(train, best).keys]
    # Where the combined run mixed, ``best`` keeps what it recorded as the runner-up.
    single = [
        by_id.loc[s, "runner_up" if by_id.loc[s, "family"] == combination.FAMILY else "family"]
        for s in ids
    ]
    assert list(sel.family) == single


def test_chunking_does_not_change_a_combined_run(trained):
    """The prior is estimated once per run: many chunks and one chunk give the same records."""
    train, records, _, _ = trained
    table = pa.Table.from_pandas(train, preserve_index=False)
    chunked = train_local(table, COMBINE, max_workers=1, chunk_rows=150)
    pd.testing.assert_frame_equal(
        chunked.drop(columns=list(TIMING_COLUMNS)), records.drop(columns=list(TIMING_COLUMNS))
    )


# ------------------------------------------------------------------------- storage


def test_persistence_round_trip_and_tampering(trained):
    _, records, _, _ = trained
    blob = records[records.family == combination.FAMILY].model.iloc[0]
    model = persistence.loads(blob)
    assert persistence.dumps(model) == blob
    header, _ = persistence.read_header(blob)
    # A flipped byte inside a member fails that member's digest.
    spoilt = bytearray(blob)
    spoilt[-10] ^= 0xFF
    with pytest.raises(persistence.ModelIntegrityError, match="member"):
        persistence.loads(bytes(spoilt))
    with pytest.raises(persistence.ModelLoadError, match="truncated"):
        persistence.loads(blob[:-5])
    # A combination nested inside a combination is refused.
    head = json.dumps(
        {**header, "members": [{"length": len(blob), "sha256": persistence.sha256(blob)}] * 2}
    ).encode()
    nested = persistence.MAGIC + struct.pack("<I", len(head)) + head + blob + blob
    with pytest.raises(persistence.UntrustedModelError, match="itself a combination"):
        persistence.loads(nested)
    with pytest.raises(persistence.ModelLoadError, match="not one Pipeline"):
        persistence.as_pipeline(model)


# ------------------------------------------------------------------------- scoring paths


def test_batch_and_real_time_scoring_are_the_weighted_mean_of_the_members(trained):
    _, records, reader, future = trained
    requests = future.drop(columns="sales")
    out = score(requests, COMBINE, reader.model_for)
    assert out.error.isna().all(), out.message.dropna().unique()
    sid = records[records.family == combination.FAMILY].series_id.iloc[0]
    m = reader.model_for(sid)
    assert isinstance(m, SeriesModel) and isinstance(m.model, Combination)
    mine = np.array(
        [
            COMBINE.series_id((s, p)) == sid
            for s, p in zip(requests.store, requests["product"], strict=True)
        ]
    )
    expected = np.zeros(int(mine.sum()))
    for member, w in zip(m.model.members, m.model.weights, strict=True):
        alone = replace(m, model=member)
        got = score(requests[mine], COMBINE, lambda s, a=alone: a if s == sid else None)
        expected += w * got.prediction.to_numpy(float)
    np.testing.assert_allclose(out.prediction[mine], expected, rtol=1e-10)
    # The real-time path answers the same for the next period (combinations take the shared
    # path: the fast path is for one Pipeline on features).
    first = future[future.week == future.week.min()].drop(columns="sales")
    rows = [{**r, "week": str(r["week"])} for r in first.to_dict("records")]
    scored = score_records(rows, COMBINE, reader.model_for)
    batch = score(first, COMBINE, reader.model_for)
    np.testing.assert_allclose(
        np.array([r["prediction"] for r in scored.rows], float),
        batch.prediction.to_numpy(float),
        rtol=1e-12,
    )
    assert np.isfinite(batch.prediction_upper_80.to_numpy(float)).all()


def test_family_shares_count_single_families_and_combination_weights():
    shares = family_shares(
        ["theta", "combination", None, "combination"],
        [None, '{"theta": 0.75, "tsb": 0.25}', None, '{"tsb": 0.5, "ridge": 0.5}'],
    )
    expected = {"theta": 1.75 / 3, "tsb": 0.25, "ridge": 0.5 / 3}
    assert shares == pytest.approx(expected, abs=1e-4)
    assert list(shares) == ["theta", "tsb", "ridge"]  # largest share first
