"""Evaluation: every challenger against its series' champion on the same holdout, then a gate.

The champion is the model set the dev registry's alias (``champion``) points at. For each series
the candidate trained in this run, the champion's model is loaded (sha256-verified against its
manifest entry) and re-scored on the challenger's holdout rows with the same feature code, so
both numbers describe the same weeks. ``ml.evaluation`` decides; this module reads, writes and
reports. The result is a *release* model set: the manifest of the resulting set (promoted
challengers plus champion entries carried by reference), written under
``models/<ds>/releases/<version>/``; registration registers exactly that folder.
"""

import json
import time

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.tseries.frequencies import to_offset

from mlops_assets.assets.plots import histograms
from mlops_assets.assets.training import candidate_pointer, load_manifest, models_root, read_pointer
from mlops_assets.domain.curation import CuratedStore
from mlops_assets.ml import comparison as ev
from mlops_assets.ml import modelset, persistence
from mlops_assets.ml.features import tail_length, to_series_frame
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_days
from mlops_assets.storage import Storage
from resources.registry import ModelRegistry, RegistryError

DECISIONS_FILE = "decisions.parquet"
QUALITY_CHECK = "aggregate_quality"

_DECISION_TABLE = dg.TableSchema(
    columns=[
        dg.TableColumn("series_id", "string"),
        dg.TableColumn("decision", "string"),
        dg.TableColumn("challenger", "float"),
        dg.TableColumn("champion", "float"),
        dg.TableColumn("naive", "float"),
        dg.TableColumn("change", "float"),
        dg.TableColumn("reason", "string"),
    ]
)


def registered_model_name(spec: DatasetSpec) -> str:
    return f"{spec.name}-models"


def release_pointer(spec: DatasetSpec, as_of: str) -> str:
    """Where the as-of date's evaluated (release) model set folder is recorded."""
    return f"{models_root(spec)}/releases/{as_of}.json"


def release_folder(spec: DatasetSpec, candidate_version: str) -> str:
    return f"{models_root(spec)}/releases/{candidate_version}"


def load_models(storage: Storage, manifest: pa.Table, series: set[str]) -> dict[str, object]:
    """The models of ``series`` from a manifest, each verified by its recorded sha256.

    Each pack is read once. Raises ``persistence.ModelIntegrityError`` for tampered bytes.
    """
    wanted = manifest.filter(
        pc.and_(
            pc.is_in(manifest["series_id"], pa.array(sorted(series), pa.string())),
            pc.is_valid(manifest["artifact"]),
        )
    )
    packs: dict[str, bytes] = {}
    out: dict[str, object] = {}
    for sid, artifact, offset, length, sha in modelset.iter_locations(wanted):
        if artifact not in packs:
            packs[artifact] = storage.read_bytes(artifact)
        data = packs[artifact][offset : offset + length]
        out[sid] = persistence.load_verified(data, sha)
    return out


def load_model(storage: Storage, manifest: pa.Table, series_id: str):
    """One series' model, range-read and verified against the manifest's sha256."""
    loc = modelset.model_location(manifest, series_id)
    if loc is None:
        raise KeyError(f"no model for series {series_id!r} in this model set")
    artifact, offset, length, sha = loc
    return persistence.load_verified(storage.read_range(artifact, offset, length), sha)


class EvaluationConfig(dg.Config):
    metric: str = "smape"
    """Error metric compared (lower is better): smape, mae, rmse or mape."""
    margin: float = 0.02
    """Relative improvement a challenger needs over the champion (0.02 = 2% lower error)."""
    max_metric: float | None = None
    """Business threshold: a challenger with a higher error is never promoted (None: off)."""
    require_beats_naive: bool = False
    """Also refuse challengers that do not beat the naive (last value) baseline."""
    max_median_increase: float = 1.0
    """Blocking gate: the resulting set's median metric may exceed the champion set's by at most
    this much (metric points) on the same holdout, else the run fails before registration."""


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
        partitions_def=as_of_days,
        kinds={"scikit-learn", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "evaluation", "dataset": spec.name},
        check_specs=[
            dg.AssetCheckSpec(
                QUALITY_CHECK,
                asset=key,
                blocking=True,
                description="Median error of the resulting set vs the champion set on the "
                "same holdout, within the configured tolerance; failing stops registration.",
            )
        ],
        description=(
            f"Each {spec.name} challenger against its champion (re-scored on the same holdout) "
            "and the naive baseline; promote when better by the margin and within the business "
            "threshold. Writes the resulting (release) model set."
        ),
    )
    def evaluation(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,
        storage: dg.ResourceParam[Storage],
        registry: ModelRegistry,
    ) -> dg.MaterializeResult:
        as_of = context.partition_key
        phases: dict[str, float] = {}
        t0 = time.perf_counter()
        pointer = read_pointer(storage, candidate_pointer(spec, as_of))
        if pointer is None:
            raise dg.Failure(f"no candidate model set for {spec.name} as of {as_of}")
        candidate = load_manifest(storage, pointer["folder"])
        try:
            champ_version = registry.get_alias(registered_model_name(spec))
        except RegistryError as exc:
            raise dg.Failure(str(exc)) from exc
        champion = None
        if champ_version is not None and champ_version.folder:
            champion = load_manifest(storage, champ_version.folder)
        phases["read"] = time.perf_counter() - t0
        policy = ev.Policy(
            metric=config.metric,
            margin=config.margin,
            max_metric=config.max_metric,
            require_beats_naive=config.require_beats_naive,
        )

        t0 = time.perf_counter()
        scores: dict[str, dict[str, float]] = {}
        if champion is not None:
            fresh = pc.and_(
                pc.equal(candidate["trained_in"], pointer["version"]),
                pc.equal(candidate["status"], "trained"),
            )
            challengers = set(candidate.filter(fresh)["series_id"].to_pylist())
            with_model = champion.filter(pc.is_valid(champion["artifact"]))
            to_score = challengers & set(with_model["series_id"].to_pylist())
            if to_score:
                models = load_models(storage, champion, to_score)
                # Holdout features need holdout + tail_length rows a series; read twice that
                # many periods back, for series with gaps (rescore trims by rows).
                periods = 2 * (spec.holdout + tail_length(spec))
                since = pd.Timestamp(as_of) - periods * to_offset(spec.frequency)
                table = CuratedStore(storage, spec).read(
                    until=pd.Timestamp(as_of).date(), since=since.date()
                )
                frame = to_series_frame(table, spec, series=sorted(to_score))
                scores = ev.rescore(frame, spec, models.get)
        phases["rescore_champion"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        decisions = ev.evaluate_sets(
            candidate,
            champion,
            scores,
            pointer["version"],
            str(champ_version.version) if champ_version else None,
            policy,
        )
        result = ev.resulting_manifest(candidate, champion, decisions)
        quality = ev.aggregate_quality(decisions, config.max_median_increase, config.metric)
        folder = release_folder(spec, pointer["version"])
        storage.write_bytes(f"{folder}/{DECISIONS_FILE}", modelset.manifest_bytes(decisions))
        manifest_data = modelset.manifest_bytes(result)
        storage.write_bytes(f"{folder}/{modelset.MANIFEST}", manifest_data)
        doc = {
            "folder": folder,
            "version": pointer["version"],
            "run_id": context.run_id,
            "candidate": pointer["folder"],
            "champion_version": champ_version.version if champ_version else None,
            "manifest_sha256": persistence.sha256(manifest_data),
            "policy": config.model_dump(),
            "quality": {
                "passed": quality.passed,
                "resulting_median": quality.resulting_median,
                "champion_median": quality.champion_median,
            },
        }
        storage.write_text(release_pointer(spec, as_of), json.dumps(doc))
        phases["decide_write"] = time.perf_counter() - t0

        md = _metadata(spec, decisions, result, quality, doc, phases, storage)
        check = dg.AssetCheckResult(
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
            },
        )
        return dg.MaterializeResult(metadata=md, check_results=[check])

    return evaluation


def _f(x: float) -> float:
    return float(x) if np.isfinite(x) else float("nan")


def _metadata(spec, decisions, result, quality, doc, phases, storage) -> dict:
    df = decisions.to_pandas()
    counts = df["decision"].value_counts().to_dict()
    md: dict = {f"decision_{d}": int(counts.get(d, 0)) for d in ev.DECISIONS}
    md.update(
        series_total=len(df),
        series_promoted=int(df["promoted"].sum()),
        series_with_model=int(pc.sum(pc.is_valid(result["artifact"])).as_py() or 0),
        champion_version=doc["champion_version"] if doc["champion_version"] else "none",
        median_resulting=_f(quality.resulting_median),
        median_champion_set=_f(quality.champion_median),
        quality_gate=quality.description,
        release=dg.MetadataValue.url(storage.uri(f"{doc['folder']}/{modelset.MANIFEST}")),
        manifest_sha256=doc["manifest_sha256"],
        **{f"seconds_{k}": round(v, 3) for k, v in phases.items()},
    )
    chosen = np.where(df.promoted, df.challenger_metric, df.champion_metric)
    md["before_after"] = dg.MetadataValue.md(
        histograms(
            {
                "champion (before)": df.champion_metric.to_numpy(float),
                "resulting set (after)": np.asarray(chosen, float),
                "naive": df.naive_metric.to_numpy(float),
            },
            f"{spec.name}: holdout error across series, before and after",
            "error on the holdout",
        )
    )
    both = df[np.isfinite(df.champion_metric) & np.isfinite(df.challenger_metric)].copy()
    if len(both):
        both["change"] = both.challenger_metric - both.champion_metric
        md["biggest_gains"] = _records(both.nsmallest(10, "change"))
        md["biggest_regressions"] = _records(both.nlargest(10, "change"))
    rejected = df[df.decision.isin([ev.BELOW_THRESHOLD])].head(20).copy()
    if len(rejected):
        rejected["change"] = rejected.challenger_metric - rejected.champion_metric
        md["below_threshold"] = _records(rejected)
    return md
