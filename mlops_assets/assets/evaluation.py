"""Evaluation: every challenger against its series' champion on the same backtest, then a gate.

The champion is the model set the dev registry's alias (``champion``) points at. For each series
the candidate trained in this run, the champion's model is loaded (sha256-verified against its
manifest entry) and backtested on the challenger's folds with the same code training used
(the spec's origins, ``horizon`` steps each, recursive), so both numbers describe the same
(origin, step) pairs. ``ml.champion_gate`` decides (fed by ``ml.comparison``),
``domain.evaluation_run`` reads and writes; this module reports. The result is a *release* model
set: the manifest of the resulting set (promoted challengers plus champion entries carried by
reference), written under ``models/<ds>/releases/<version>/``; registration registers exactly
that folder.
"""

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from mlops_assets.assets.plots import histograms
from mlops_assets.domain.evaluation_run import (
    DECISIONS_FILE,
    EvaluationInputError,
    EvaluationOutcome,
    evaluate_candidate,
)
from mlops_assets.domain.model_sets import ModelSetError, registered_model_name
from mlops_assets.ml import comparison as ev
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_partitions, run_as_of
from mlops_assets.pools import writer_pool
from mlops_assets.storage import Storage
from resources.registry import ModelRegistry, RegistryError

__all__ = ["DECISIONS_FILE", "build_evaluation_asset", "registered_model_name"]

QUALITY_CHECK = "aggregate_quality"

_DECISION_TABLE = dg.TableSchema(
    columns=[
        dg.TableColumn("series_id", "string"),
        dg.TableColumn("decision", "string"),
        dg.TableColumn("challenger", "float"),
        dg.TableColumn("champion", "float"),
        dg.TableColumn("naive", "float"),
        dg.TableColumn("baseline", "float"),
        dg.TableColumn("change", "float"),
        dg.TableColumn("reason", "string"),
    ]
)


class EvaluationConfig(dg.Config):
    metric: str = "smape"
    """Error metric compared (lower is better): smape, mae, rmse or mape."""
    margin: float = 0.02
    """Relative improvement a challenger needs over the champion (0.02 = 2% lower error)."""
    max_metric: float | None = None
    """Business threshold: a challenger with a higher error is never promoted (None: off)."""
    require_beats_baseline: str = "seasonal_naive"
    """The baseline a challenger must beat on the same rows to be promoted: seasonal_naive
    (naive where seasonal naive could not be scored there, e.g. under a season of history),
    naive, or none. A first model that does not is still promoted, flagged below_baseline."""
    unscored: str = "keep"
    """A series whose champion cannot be scored on the challenger's rows: keep the champion
    (decision kept_unscored), or promote the challenger without a comparison."""
    max_median_increase: float = 1.0
    """Blocking gate: the resulting set's median metric may exceed the champion set's by at most
    this much (metric points) on the same backtest pairs, else the run fails before registration."""


def _records(df: pd.DataFrame) -> dg.TableMetadataValue:
    def f(x) -> float:
        return round(float(x), 4) if pd.notna(x) else float("nan")

    rows = [
        dg.TableRecord(
            {
                "series_id": r.series_id,
                "decision": r.decision,
                "challenger": f(r.challenger_metric),
                "champion": f(r.champion_metric),
                "naive": f(r.naive_metric),
                "baseline": f(r.baseline_metric),
                "change": f(r.change),
                "reason": r.decision_reason or "",
            }
        )
        for r in df.itertuples()
    ]
    return dg.MetadataValue.table(rows, schema=_DECISION_TABLE)


def build_evaluation_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    key = dg.AssetKey([spec.name, "evaluation"])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey([spec.name, "candidate_models"])],
        group_name=f"{spec.name}_training",
        partitions_def=as_of_partitions(spec),
        kinds={"scikit-learn", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "evaluation", "dataset": spec.name},
        pool=writer_pool(spec.name),
        check_specs=[
            dg.AssetCheckSpec(
                QUALITY_CHECK,
                asset=key,
                blocking=True,
                description="Median error of the resulting set vs the champion set on the "
                "same backtest pairs, within the configured tolerance; fails too when challengers "
                "have champions but none was compared. Failing stops registration.",
            )
        ],
        description=(
            f"Each {spec.name} challenger against its champion (backtested on the same folds) "
            "and the seasonal-naive baseline; promote when it beats the baseline, is better by "
            "the margin and within the business threshold. A champion that cannot be scored "
            "stays. Writes the resulting (release) model set."
        ),
    )
    def evaluation(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,
        storage: dg.ResourceParam[Storage],
        registry: ModelRegistry,
    ) -> dg.MaterializeResult:
        try:
            policy = ev.Policy(
                metric=config.metric,
                margin=config.margin,
                max_metric=config.max_metric,
                require_beats_baseline=config.require_beats_baseline,
                unscored=config.unscored,
            )
            outcome = evaluate_candidate(
                storage,
                registry,
                spec,
                as_of=run_as_of(context, spec),
                run_id=context.run.run_id,
                policy=policy,
                max_median_increase=config.max_median_increase,
                config=config.model_dump(),
            )
        except (EvaluationInputError, RegistryError, ModelSetError, ValueError) as exc:
            raise dg.Failure(str(exc)) from exc
        return dg.MaterializeResult(
            metadata=_metadata(spec, outcome, storage), check_results=[quality_check(key, outcome)]
        )

    return evaluation


def _f(x: float) -> float:
    return float(x) if np.isfinite(x) else float("nan")


def quality_check(key: dg.AssetKey, outcome: EvaluationOutcome) -> dg.AssetCheckResult:
    quality = outcome.quality
    return dg.AssetCheckResult(
        check_name=QUALITY_CHECK,
        asset_key=key,
        passed=quality.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=quality.description,
        metadata={
            "resulting_median": _f(quality.resulting_median),
            "champion_median": _f(quality.champion_median),
            "compared_series": quality.compared_series,
            "tolerance": quality.tolerance,
            **{f"series_{k}": v for k, v in quality.counts.items()},
        },
    )


def _metadata(spec: DatasetSpec, outcome: EvaluationOutcome, storage: Storage) -> dict:
    quality, release, result = outcome.quality, outcome.release, outcome.result
    df = outcome.decisions.to_pandas()
    counts = df["decision"].value_counts().to_dict()
    md: dict = {f"decision_{d}": int(counts.get(d, 0)) for d in ev.DECISIONS}
    md.update(
        series_total=len(df),
        series_promoted=int(df["promoted"].sum()),
        promoted_without_comparison=quality.counts.get("promoted_without_comparison", 0),
        promoted_first=quality.counts.get("promoted_first", 0),
        promoted_below_baseline=quality.counts.get("promoted_below_baseline", 0),
        series_compared=quality.counts.get("compared", 0),
        series_with_model=int(pc.sum(pc.is_valid(result["artifact"])).as_py() or 0),
        champion_version=release.champion_version or "none",
        median_resulting=_f(quality.resulting_median),
        median_champion_set=_f(quality.champion_median),
        quality_gate=quality.description,
        release=dg.MetadataValue.url(storage.uri(release.ref.manifest_name)),
        manifest_sha256=release.ref.manifest_sha256,
        **outcome.phases.metadata(),
    )
    chosen = np.where(df.promoted, df.challenger_metric, df.champion_metric)
    md["before_after"] = dg.MetadataValue.md(
        histograms(
            {
                "champion (before)": df.champion_metric.to_numpy(float),
                "resulting set (after)": np.asarray(chosen, float),
                "naive": df.naive_metric.to_numpy(float),
            },
            f"{spec.name}: backtest error across series, before and after",
            "error on the backtest (origins x horizon steps)",
        )
    )
    both = df[np.isfinite(df.champion_metric) & np.isfinite(df.challenger_metric)].copy()
    if len(both):
        both["change"] = both.challenger_metric - both.champion_metric
        md["biggest_gains"] = _records(both.nsmallest(10, "change"))
        md["biggest_regressions"] = _records(both.nlargest(10, "change"))
    for decision in (ev.BELOW_THRESHOLD, ev.BELOW_BASELINE, ev.KEPT_UNSCORED):
        rejected = df[df.decision == decision].head(20).copy()
        if len(rejected):
            rejected["change"] = rejected.challenger_metric - rejected.champion_metric
            md[decision] = _records(rejected)
    return md
