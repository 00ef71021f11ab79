"""Reports: the per-series explorer of each as-of date's release set, linked from its asset page."""

import dagster as dg

from mlops_assets.domain.model_sets import ModelSetError
from mlops_assets.domain.series_explorer import (
    ExplorerInputError,
    ExplorerOutcome,
    write_explorer,
)
from mlops_assets.ml.persistence import ModelIntegrityError
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_partitions, run_as_of
from mlops_assets.reporting.links import report_url
from mlops_assets.storage import Storage


def explorer_metadata(outcome: ExplorerOutcome, storage: Storage) -> dict:
    """The link to the page, what it holds, and a preview of it as Markdown."""
    uri = report_url(storage, outcome.name)
    decisions = ", ".join(f"{k} {v}" for k, v in sorted(outcome.decisions.items()))
    models = ", ".join(f"{k} {v}" for k, v in sorted(outcome.models.items()))
    preview = (
        f"**[Open the per-series explorer]({uri})**: {outcome.series} series of release "
        f"`{outcome.release.ref.version}` (gate {'passed' if outcome.release.passed else 'FAILED'})."
        "\n\nSearch any series for its backtest forecast vs actual, prediction intervals, "
        "family, scores against the naive baselines and the gate's decision with its reason."
        f"\n\n- decisions: {decisions or 'none'}\n- models: {models or 'none'}"
        f"\n- page: {outcome.bytes / 1e6:.2f} MB, works offline\n- `{uri}`"
    )
    return {
        "explorer": dg.MetadataValue.url(uri),
        "explorer_preview": dg.MetadataValue.md(preview),
        "series": outcome.series,
        "page_bytes": outcome.bytes,
        "release": outcome.release.ref.version,
        "manifest_sha256": outcome.release.ref.manifest_sha256,
        **outcome.phases.metadata(),
    }


def build_explorer_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "series_explorer"],
        deps=[dg.AssetKey([spec.name, "evaluation"])],
        group_name=f"{spec.name}_training",
        partitions_def=as_of_partitions(spec),
        kinds={"html", "python"},
        owners=["team:ml-platform"],
        tags={"stage": "report", "dataset": spec.name},
        description=(
            f"Every {spec.name} series of the evaluated (release) set in one offline HTML "
            "page, searchable: backtest forecast vs actual, prediction intervals, the chosen "
            "family or combination, scores against the naive baselines and the champion "
            "gate's decision with its reason. Open it from the `explorer` link."
        ),
    )
    def series_explorer(
        context: dg.AssetExecutionContext, storage: dg.ResourceParam[Storage]
    ) -> dg.MaterializeResult:
        try:
            outcome = write_explorer(storage, spec, run_as_of(context, spec))
        except (ExplorerInputError, ModelSetError, ModelIntegrityError) as exc:
            raise dg.Failure(str(exc)) from exc
        context.log.info(f"{outcome.series} series in {storage.uri(outcome.name)}")
        return dg.MaterializeResult(metadata=explorer_metadata(outcome, storage))

    return series_explorer
