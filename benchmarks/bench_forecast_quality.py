"""Forecast quality on real panels, measured through the training chain's own functions.

Loads the Dominick's beer panel and the Walmart store sales from ``--data`` (default: the
environment variable MLOPS_REAL_DATA; the files are never copied into the repository) and, per
panel:

* **day 1 / day 2**: trains every series with ``engines.train_local`` (calendar, candidate
  families, backtest choice, fallback chain, conformal intervals: what the training asset runs)
  on the panel with each series' last 8 (day 1) or 7 (day 2) periods cut off, so the newest 4
  origins at horizon 4 are never seen by the day-2 models;
* **out of sample**: the day-2 models, loaded from the records' bytes (``persistence.loads``),
  forecast recursively from each series' 4 newest origins of the full data with the gate's
  backtest code (``comparison.backtest_stored``, what ``comparison.rescore`` scores); the
  baselines and each candidate family fitted alone on every series (``selection.
  fit_candidate`` on the day-2 data; where one cannot forecast a pair the spec's fallback chain
  fills it, as training would) are scored on the same pairs;
* **intervals**: the stored half-widths around those forecasts, coverage on the same pairs;
* **gate**: day 2's set against day 1's as champion, the champion re-scored on day 2's folds
  (``comparison.rescore``, ``evaluate_sets``, ``aggregate_quality``: the evaluation asset's
  path with its default policy);
* **cost**: seconds per series of training and of each family (wall and CPU, load average).

``--windows 0,2,4`` repeats the whole measurement with that many weeks removed from the end of
each panel first, to show how much the figures move between evaluation windows (written to
``benchmarks/results/forecast_quality_windows.json``).

Beer uses the bundled ``specs/beer.yaml``; Walmart a spec built here. ``--candidates``
overrides both specs' ``model.candidates`` (to try the zoo). Writes
``benchmarks/results/forecast_quality.json``.

    python -m benchmarks.bench_forecast_quality --data "$MLOPS_REAL_DATA" --max-series 300
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandas.tseries.frequencies import to_offset

from benchmarks.common import peak_rss_mb, write_result
from mlops_assets.domain.training_run import run_table
from mlops_assets.ml import backtest, baselines, comparison, engines, intervals, persistence
from mlops_assets.ml.calendar import calendar_series
from mlops_assets.ml.candidates import fit_candidate
from mlops_assets.ml.features import to_series_frame
from mlops_assets.ml.fitting import FALLBACK, TRAINED
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.predict import clip_to_bounds
from mlops_assets.ml.spec import DatasetSpec, load_spec

HORIZON, ORIGINS = 4, 4
UNSEEN = HORIZON + ORIGINS - 1  # periods the day-2 models never see: the 4 newest origins
BASELINE_FAMILIES = ("naive", "seasonal_naive")
WALMART_CANDIDATES = ["seasonal_naive", "theta", "ets"]
# The evaluation asset's defaults (EvaluationConfig).
POLICY = comparison.Policy()
MAX_MEDIAN_INCREASE = 1.0


class Clock:
    """Wall seconds (``Phases``) and CPU seconds, this process and its finished children."""

    def __init__(self) -> None:
        self.wall, self.cpu = Phases(), Phases()

    @staticmethod
    def _cpu() -> float:
        own, kids = (
            resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        cpu = self._cpu()
        with self.wall(name):
            yield
        self.cpu.add(name, self._cpu() - cpu)

    def per_series(self, n: int) -> dict[str, dict[str, float]]:
        return {
            k: {"wall": w / max(n, 1), "cpu": self.cpu.seconds[k] / max(n, 1)}
            for k, w in self.wall.seconds.items()
        }


def load_beer(data: Path) -> tuple[pd.DataFrame, DatasetSpec]:
    return pq.read_table(data / "dominicks_beer_dev.parquet").to_pandas(), load_spec("beer")


def walmart_spec(candidates: list[str]) -> DatasetSpec:
    """Walmart's 45 complete weekly store series: holidays are known in advance."""
    return DatasetSpec.model_validate(
        {
            "name": "walmart",
            "series_keys": ["Store"],
            "time": "Date",
            "target": "Weekly_Sales",
            "columns": {
                "Store": {"type": "string"},
                "Date": {"type": "timestamp"},
                "Weekly_Sales": {"type": "float", "min": 0},
                "Holiday_Flag": {"type": "float"},
            },
            "frequency": "W-FRI",
            "horizon": HORIZON,
            "holdout": 8,
            "min_history": 26,
            "features": {
                "lags": [1, 2, 4, 52],
                "rolling": [4, 13],
                "calendar": ["fourier_year"],
                "exogenous": ["Holiday_Flag"],
                "known_in_advance": ["Holiday_Flag"],
            },
            "model": {
                "family": "ridge",
                "params": {"alpha": 1.0},
                "candidates": candidates,
                "choice": "combine",
            },
            "fallback": ["seasonal_naive", "naive", "mean"],
            "mean_window": 13,
            "backtest": {"origins": ORIGINS, "step": 1},
            "intervals": {"levels": [80, 95]},
        }
    )


def load_walmart(data: Path) -> tuple[pd.DataFrame, DatasetSpec]:
    df = pd.read_csv(data / "walmart_store_sales.csv")
    df["Date"] = pd.to_datetime(df["Date"], format="%d-%m-%Y")
    df["Store"] = df["Store"].astype(str)
    df["Holiday_Flag"] = df["Holiday_Flag"].astype(float)
    return df, walmart_spec(WALMART_CANDIDATES)


def _subset(df: pd.DataFrame, spec: DatasetSpec, max_series: int | None, seed: int):
    ids = df[spec.series_keys].drop_duplicates()
    if max_series is not None and len(ids) > max_series:
        ids = ids.sample(max_series, random_state=seed)
    return df.merge(ids, on=spec.series_keys)


def cut_last(df: pd.DataFrame, spec: DatasetSpec, periods: int) -> pd.DataFrame:
    """Each series without its last ``periods`` calendar periods (as of its own last row)."""
    last = pd.to_datetime(df.groupby(spec.series_keys)[spec.time].transform("max"))
    return df[pd.to_datetime(df[spec.time]) <= last - periods * to_offset(spec.frequency)]


def _regular(df: pd.DataFrame, spec: DatasetSpec):
    return calendar_series(to_series_frame(df, spec), spec).frame


def _mae(actual: np.ndarray, predicted: np.ndarray, pairs: np.ndarray) -> dict:
    """Pooled overall and per-step MAE over ``pairs`` (``[K, n, h]`` booleans)."""
    err = np.where(pairs, np.abs(predicted - actual), 0.0)
    per_step = err.sum(axis=(0, 1)) / np.maximum(pairs.sum(axis=(0, 1)), 1)
    return {"overall": float(err.sum() / max(pairs.sum(), 1)), "per_step": per_step.tolist()}


def _interval_coverage(
    records: pd.DataFrame, ids: list[str], choice: np.ndarray, actual: np.ndarray, spec
) -> dict:
    """Coverage of the stored half-widths around the out-of-sample forecasts."""
    by_id = records.set_index("series_id")
    out = {}
    for level in spec.intervals.levels:
        col = intervals.interval_field(level)
        width = np.full(choice.shape[1:], np.nan)
        for i, sid in enumerate(ids):
            w = by_id[col].get(sid) if sid in by_id.index else None
            if w is not None and len(w) == HORIZON:
                width[i] = np.asarray(w, dtype=float)
        low = spec.columns[spec.target].min
        lower, upper = intervals.interval_bounds(choice, width[None], low)
        c = intervals.coverage(actual, lower, upper)
        with_pair = np.isfinite(actual) & np.isfinite(choice)
        out[f"{level:g}"] = {
            "overall": c.overall,
            "per_step": c.per_step.tolist(),
            "pairs": c.count,
            "share_of_pairs_with_an_interval": c.count / max(int(with_pair.sum()), 1),
            "in_sample_out_of_fold": _pooled_oof(records, level),
        }
    return out


def _pooled_oof(records: pd.DataFrame, level: float) -> float:
    share = records[intervals.coverage_field(level)].to_numpy(float)
    weight = records["n_holdout"].to_numpy(float)
    ok = np.isfinite(share) & (weight > 0)
    return float(np.sum(share[ok] * weight[ok]) / np.sum(weight[ok])) if ok.any() else np.nan


def _gate(day1: pd.DataFrame, day2: pd.DataFrame, day2_df: pd.DataFrame, spec) -> dict:
    """Day 2's candidate against day 1's set as champion, as the evaluation asset decides."""
    schema = engines.result_schema(spec)
    cand = pa.Table.from_pandas(day2, schema=schema, preserve_index=False)
    cand = cand.append_column("trained_in", pa.array(["day2"] * cand.num_rows))
    champ = pa.Table.from_pandas(day1, schema=schema, preserve_index=False)
    champ = champ.append_column("artifact", pa.array(["day1"] * champ.num_rows)).filter(
        pc.is_valid(champ["model"])
    )
    fresh = set(day2.loc[day2.status == TRAINED, "series_id"])
    models = {
        s: persistence.loads(b)
        for s, b in zip(day1.series_id, day1.model, strict=True)
        if b is not None and s in fresh
    }
    scores = comparison.rescore(to_series_frame(day2_df, spec), spec, models.get)
    decisions = comparison.evaluate_sets(cand, champ, scores, "day2", "day1", POLICY)
    quality = comparison.aggregate_quality(decisions, MAX_MEDIAN_INCREASE, POLICY.metric)
    return {
        "policy": {
            "metric": POLICY.metric,
            "margin": POLICY.margin,
            "require_beats_baseline": POLICY.require_beats_baseline,
            "unscored": POLICY.unscored,
        },
        "champions_rescored": len(scores),
        "counts": quality.counts,
        "decisions": pd.Series(decisions["decision"].to_pylist()).value_counts().to_dict(),
        "passed": quality.passed,
        "description": quality.description,
    }


def with_origins(spec: DatasetSpec, origins: int) -> DatasetSpec:
    """``spec`` backtesting at ``origins`` origins (its holdout widened to fit them)."""
    b = spec.backtest.model_copy(update={"origins": origins})
    need = spec.horizon + (origins - 1) * b.step
    return spec.model_copy(update={"backtest": b, "holdout": max(spec.holdout, need)})


def with_candidates(spec: DatasetSpec, candidates: list[str]) -> DatasetSpec:
    return spec.model_copy(
        update={"model": spec.model.model_copy(update={"candidates": candidates})}
    )


def evaluate_panel(df: pd.DataFrame, spec: DatasetSpec, workers: int) -> dict:
    """Train day 1 and day 2 with ``spec``; score day 2 out of sample on the 4 newest origins
    (``spec`` itself may choose on more origins)."""
    clock = Clock()
    scoring = with_origins(spec, ORIGINS)
    day1_df, day2_df = cut_last(df, spec, UNSEEN + 1), cut_last(df, spec, UNSEEN)
    records = {}
    for day, data in (("day1", day1_df), ("day2", day2_df)):
        with clock(f"train_{day}"):
            # As the manifest writer does: intervals calibrated over the run's series.
            records[day] = run_table(
                engines.train_local(data, spec, max_workers=workers), spec
            ).to_pandas()
    day2 = records["day2"]

    # Out of sample: the day-2 models from their bytes, on the 4 newest origins of every series.
    with clock("evaluate_choice"):
        stored = {
            s: persistence.loads(b) for s, b in zip(day2.series_id, day2.model, strict=True) if b
        }
        ids, folds, choice = comparison.backtest_stored(
            to_series_frame(df, scoring), scoring, stored.get
        )
    chain = clip_to_bounds(backtest.run(folds, baselines.spec_fallback(spec)), spec)

    # Each family alone on every series, fitted on the day-2 data as training fits it.
    day2_frame = _regular(day2_df, spec)
    day2_ids = [spec.series_id(k) for k in day2_frame.keys]
    families = list(dict.fromkeys([*BASELINE_FAMILIES, *spec.model.candidate_names]))
    single, own = {}, {}
    for name in families:
        with clock(f"fit_{name}"):
            fitted = fit_candidate(name, day2_frame, None, spec)
        models = dict(zip(day2_ids, fitted.models, strict=True))
        with clock(f"forecast_{name}"):
            _, _, p = comparison.backtest_stored(to_series_frame(df, scoring), scoring, models.get)
        own[name] = p
        single[name] = np.where(np.isfinite(p), p, chain)

    actual = folds.actual
    pairs = np.isfinite(actual) & np.isfinite(choice)
    for p in single.values():
        pairs &= np.isfinite(p)
    mae = {"per_series_choice": _mae(actual, choice, pairs)}
    mae |= {n: _mae(actual, p, pairs) for n, p in single.items()}
    overall = {n: m["overall"] for n, m in mae.items()}
    naive_best = min(overall[b] for b in BASELINE_FAMILIES)
    single_best = min(overall[n] for n in families)
    eval_pairs = np.isfinite(actual)

    n = len(ids)
    observed = baselines.observed_counts(day2_frame) > 0
    with_data = {s for s, o in zip(day2_ids, observed, strict=True) if o}
    got = day2.status.isin([TRAINED, FALLBACK]) & day2.model.notna()
    forecast = set(day2.series_id[got]) & with_data
    return {
        "series": n,
        "rows": len(df),
        "series_with_data_day2": len(with_data),
        "share_of_series_forecast": len(forecast) / max(len(with_data), 1),
        "status_day2": day2.status.value_counts().to_dict(),
        "status_day1": records["day1"].status.value_counts().to_dict(),
        "families_day2": day2.family.value_counts().to_dict(),
        "runner_up_day2": day2.runner_up.value_counts().to_dict(),
        "evaluation_pairs": int(eval_pairs.sum()),
        "pairs_scored": int(pairs.sum()),
        "pairs_without_a_stored_forecast": int((eval_pairs & ~np.isfinite(choice)).sum()),
        "own_forecast_share_of_pairs": {
            n_: float((np.isfinite(p) & pairs).sum() / max(pairs.sum(), 1)) for n_, p in own.items()
        },
        "pooled_mae": overall,
        "per_step_mae": {k: m["per_step"] for k, m in mae.items()},
        "choice_vs_best_naive": overall["per_series_choice"] / naive_best,
        "choice_vs_best_single_family": overall["per_series_choice"] / single_best,
        "best_naive": min(BASELINE_FAMILIES, key=overall.__getitem__),
        "best_single_family": min(families, key=overall.__getitem__),
        "interval_coverage": _interval_coverage(day2, ids, choice, actual, spec),
        "gate_day2_vs_day1": _gate(records["day1"], day2, day2_df, spec),
        "seconds": {k: round(v, 3) for k, v in clock.wall.seconds.items()},
        "cpu_seconds": {k: round(v, 3) for k, v in clock.cpu.seconds.items()},
        "seconds_per_series": clock.per_series(n),
    }


def _window_summary(result: dict) -> dict:
    """The headline figures of one evaluation window."""
    return {
        "choice_vs_best_naive": result["choice_vs_best_naive"],
        "choice_vs_best_single_family": result["choice_vs_best_single_family"],
        "best_single_family": result["best_single_family"],
        **{f"coverage_{level}": c["overall"] for level, c in result["interval_coverage"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MLOPS_REAL_DATA"))
    parser.add_argument("--max-series", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--panels", default="beer,walmart")
    parser.add_argument("--workers", type=int, default=None, help="train_local's processes")
    parser.add_argument(
        "--candidates", default=None, help="comma-separated model.candidates for both specs"
    )
    parser.add_argument(
        "--origins", type=int, default=None, help="backtest origins training chooses on"
    )
    parser.add_argument(
        "--windows",
        default=None,
        help="comma-separated weeks to remove from the end of each panel first, one run each "
        "(e.g. 0,2,4,6,8): how stable the figures are across evaluation windows",
    )
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data or set MLOPS_REAL_DATA to the folder of the real panels")
    data = Path(args.data)
    load_before = os.getloadavg()
    started, cpu = time.perf_counter(), time.process_time()
    loaders = {"beer": load_beer, "walmart": load_walmart}
    panels = {}
    for name in args.panels.split(","):
        df, spec = loaders[name](data)
        if args.candidates is not None:
            spec = with_candidates(spec, args.candidates.split(","))
        if args.origins is not None:
            spec = with_origins(spec, args.origins)
        df = _subset(df, spec, args.max_series, args.seed)
        workers = args.workers or os.cpu_count() or 1
        panels[name] = {
            "candidates": list(spec.model.candidate_names),
            "choice": spec.model.choice,
            "backtest_origins_for_choice": spec.backtest.origins,
            "fallback": list(spec.fallback),
            **evaluate_panel(df, spec, workers),
        }
        if args.windows:
            panels[name]["windows"] = {
                w: _window_summary(evaluate_panel(cut_last(df, spec, int(w)), spec, workers))
                for w in args.windows.split(",")
            }
    write_result(
        "forecast_quality_windows" if args.windows else "forecast_quality",
        {
            "command": "python -m benchmarks.bench_forecast_quality "
            f"--data {args.data} --max-series {args.max_series} --seed {args.seed} "
            f"--panels {args.panels} --workers {args.workers} --candidates {args.candidates} "
            f"--origins {args.origins} --windows {args.windows}",
            "horizon": HORIZON,
            "origins": ORIGINS,
            "targets": {
                "share_of_series_forecast": 1.0,
                "choice_vs_best_naive": "<= 0.85",
                "choice_vs_best_single_family": "<= 0.97",
                "coverage_80": "0.75-0.85",
                "coverage_95": "0.91-0.98",
                "promoted_without_comparison": 0,
            },
            "panels": panels,
            "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
