"""The per-series explorer's data and page: what it draws, how small it stays, that it is safe."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest

from mlops_assets.ml.spec import load_spec
from mlops_assets.reporting.explorer_data import FIELDS, SCORES, explorer_payload, model_label
from mlops_assets.reporting.explorer_page import render_explorer

SALES = load_spec("sales")
K, H = SALES.backtest.origins, SALES.horizon
TAIL = 112


def manifest(n: int, seed: int = 0, **overrides) -> pa.Table:
    """``n`` sales-like manifest rows: a tail, its backtest residuals, intervals and scores."""
    rng = np.random.default_rng(seed)
    tails = rng.uniform(10, 500, size=(n, 1)) * (1 + 0.2 * rng.standard_normal((n, TAIL)))
    cols = {
        "series_id": [f"store=S{i // 100:04d}/product=P{i % 100:03d}" for i in range(n)],
        "status": ["trained"] * n,
        "reason": [None] * n,
        "family": ["ridge"] * n,
        "weights": [None] * n,
        "trained_in": ["2026-11-17/abcd1234"] * n,
        "history_end": ["2026-11-16"] * n,
        "history_tail": tails.round(2).tolist(),
        "backtest_residuals": rng.normal(0, 5, size=(n, K * H)).tolist(),
        **{
            name: np.abs(rng.normal(5, 1, size=(n, H))).tolist()
            for name in ("mae_by_step", "naive_mae_by_step", "seasonal_naive_mae_by_step")
        },
        **{name: rng.uniform(1, 40, n) for name in SCORES},
        "interval_80": np.abs(rng.normal(6, 1, size=(n, H))).tolist(),
        "interval_95": np.abs(rng.normal(9, 1, size=(n, H))).tolist(),
        "coverage_80": rng.uniform(0.6, 0.9, n),
        "coverage_95": rng.uniform(0.8, 1.0, n),
    }
    cols.update(overrides)
    return pa.table(cols)


def decisions(table: pa.Table) -> pa.Table:
    n = table.num_rows
    return pa.table(
        {
            "series_id": table["series_id"],
            "decision": ["better", "not_better"] * (n // 2) + ["better"] * (n % 2),
            # As long as the gate's own reasons, each with its numbers: none repeats.
            "decision_reason": [
                f"challenger smape {10 + i / n:.3f} vs champion {12 + i / n:.3f} (margin 2%)"
                for i in range(n)
            ],
            "promoted": [i % 2 == 0 for i in range(n)],
            "challenger_metric": np.full(n, 10.0),
            "champion_metric": [math.nan] + [12.0] * (n - 1),
            "baseline": ["seasonal_naive"] * n,
            "baseline_metric": np.full(n, 20.0),
            "champion_version": ["3"] * n,
        }
    )


def record(payload: dict, series_id: str) -> dict:
    row = next(r for r in payload["series"] if r[0] == series_id)
    return dict(zip(payload["fields"], row, strict=True))


def embedded(page: str) -> dict:
    text = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert text is not None
    return json.loads(text.group(1))


def test_each_origin_forecasts_actual_minus_residual_on_the_rows_the_backtest_scored():
    table = manifest(3)
    payload = explorer_payload(table, decisions(table), SALES, title={"as of": "2026-11-17"})
    row = table.slice(1, 1).to_pylist()[0]
    rec = record(payload, row["series_id"])
    scale, errors = (10.0**e for e in rec["exp"])
    actual = np.array(rec["actual"], float) * scale
    tail = np.array(row["history_tail"])
    # The actuals end at the tail's end: the backtest window and context before it.
    window = H + (K - 1) * SALES.backtest.step
    assert len(actual) == window + max(window, 12)
    # Three significant digits of the largest value drawn: off by half a unit at most.
    np.testing.assert_allclose(actual, tail[-len(actual) :], atol=0.5 * scale)
    assert np.abs(actual).max() / scale < 1000
    forecast = np.array(rec["forecast"], float).reshape(K, H) * scale
    residuals = np.array(row["backtest_residuals"]).reshape(K, H)
    for k in range(K):
        at = len(tail) - H - (K - 1 - k) * SALES.backtest.step
        expected = tail[at : at + H] - residuals[k]
        np.testing.assert_allclose(forecast[k], expected, atol=0.5 * scale)
    # Dated for the axis: the last actual is the tail's end, weekly before it.
    axis = payload["axes"][rec["axis"]]
    assert axis[-1] == "2026-11-16" and axis[-2] == "2026-11-09" and len(axis) == len(actual)
    # Errors (interval half-widths, MAE by step) at three digits of their own largest value.
    widths = np.array(rec["intervals"][0], float) * errors
    np.testing.assert_allclose(widths, row["interval_80"], atol=0.5 * errors)
    assert errors < scale
    by_step = np.array(rec["mae_by_step"][0], float) * errors
    np.testing.assert_allclose(by_step, row["mae_by_step"], atol=0.5 * errors)


def test_the_decision_family_and_scores_come_with_each_series():
    table = manifest(
        4,
        family=["ridge", "combination", "seasonal_naive", None],
        weights=[None, json.dumps({"ridge": 0.25, "ets": 0.75}), None, None],
        status=["trained", "trained", "fallback", "skipped"],
        reason=[None, None, "under min_history: 20 rows", "no rows"],
    )
    payload = explorer_payload(table, decisions(table), SALES)
    strings = payload["strings"]
    first, combo, fallback, skipped = (record(payload, s) for s in table["series_id"].to_pylist())
    assert strings[first["model"]] == "ridge" and strings[first["decision"]] == "better"
    assert strings[first["reason"]] == "challenger smape 10.000 vs champion 12.000 (margin 2%)"
    assert strings[combo["model"]] == "combination: ets 75% + ridge 25%"
    assert strings[fallback["note"]] == "under min_history: 20 rows"
    assert skipped["model"] == -1 and strings[skipped["status"]] == "skipped"
    # [challenger, champion, baseline metric, baseline, champion version, promoted]
    assert first["gate"][0] == 10.0 and first["gate"][1] is None
    assert strings[first["gate"][3]] == "seasonal_naive" and first["gate"][5] is True
    assert combo["gate"][1] == 12.0 and combo["gate"][5] is False
    smape = payload["scores"].index("smape")
    assert first["scores"][smape] == pytest.approx(table["smape"][0].as_py(), rel=5e-3)


def test_a_series_without_a_backtest_or_decision_is_listed_with_what_it_has():
    table = manifest(2, backtest_residuals=[None, [1.0, 2.0]], history_tail=[[], [5.0] * TAIL])
    payload = explorer_payload(table, None, SALES)
    empty, short = (record(payload, s) for s in table["series_id"].to_pylist())
    assert empty["actual"] == [] and empty["axis"] == -1
    assert all(v is None for v in empty["forecast"]) and empty["decision"] == -1
    assert all(v is None for v in short["forecast"])  # residuals of another layout: not drawn


def test_the_page_is_self_contained_and_carries_every_series():
    table = manifest(250)
    page = render_explorer(explorer_payload(table, decisions(table), SALES))
    data = embedded(page)
    assert len(data["series"]) == 250 and data["fields"] == list(FIELDS)
    # Offline: nothing fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "fetch(" not in page
    assert '<input id="search"' in page and '<svg id="chart"' in page


def test_text_from_the_data_cannot_end_the_script():
    table = manifest(1, series_id=["x</script><script>alert(1)</script>"])
    page = render_explorer(explorer_payload(table, None, SALES))
    assert page.count("</script>") == 2  # the data's and the code's
    assert embedded(page)["series"][0][0] == "x</script><script>alert(1)</script>"


def test_ten_thousand_series_fit_in_a_few_megabytes():
    table = manifest(10_000)
    page = render_explorer(explorer_payload(table, decisions(table), SALES))
    assert len(page.encode()) < 4_000_000


def test_model_label_names_a_single_family_as_it_is():
    assert model_label("ridge", None) == "ridge"
    assert model_label(None, None) is None


def test_a_large_set_shows_the_series_worth_a_look_first_and_says_so():
    n = 12
    status = ["trained"] * n
    status[6] = "fallback"
    smape = np.full(n, 10.0)
    smape[4] = 30.0  # the worst against the naive baseline among the promoted
    table = manifest(n, status=status, smape=smape, naive_smape=np.full(n, 20.0))
    payload = explorer_payload(table, decisions(table), SALES, limit=8)
    shown = [r[0] for r in payload["series"]]
    ids = table["series_id"].to_pylist()
    assert len(shown) == 8 and shown == sorted(shown)
    refused = [ids[i] for i in range(n) if i % 2 == 1]  # decisions(): odd series not promoted
    assert set(shown) == set(refused) | {ids[6], ids[4]}
    assert payload["title"]["series"].startswith("8 of 12 shown")
    assert "series" not in explorer_payload(table, decisions(table), SALES)["title"]
