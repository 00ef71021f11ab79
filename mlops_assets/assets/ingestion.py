"""Ingestion: drops landed under ``landing/<dataset>/`` become the curated Parquet dataset."""

import dagster as dg

from mlops_assets.assets.checks import (
    as_of_date,
    check_result,
    check_specs,
    gap_metadata,
    gaps_check_result,
)
from mlops_assets.domain.ingest_run import IngestionRun, run_ingestion
from mlops_assets.domain.ledger import DropOutcome
from mlops_assets.domain.validation_report import check_outcomes
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_partitions, run_as_of
from mlops_assets.pools import writer_pool
from mlops_assets.storage import Storage

_OUTCOME_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("drop", "string"),
        dg.TableColumn("status", "string"),
        dg.TableColumn("rows_in", "int"),
        dg.TableColumn("rows_curated", "int"),
        dg.TableColumn("rows_quarantined", "int"),
        dg.TableColumn("rows_duplicate", "int"),
        dg.TableColumn("rows_replaced", "int"),
        dg.TableColumn("why", "string"),
    ]
)


class IngestConfig(dg.Config):
    n_shards: int = 8
    """Shards of the curated dataset (fixed when it is first written; later changes are ignored)."""
    data_docs: bool = True
    """Render GX Data Docs of the run's drop validations to validation/<dataset>/docs/."""


def outcome_table(outcomes: list[DropOutcome], limit: int = 50) -> dg.TableMetadataValue:
    records = [
        dg.TableRecord(
            {
                "drop": o.drop,
                "status": o.status,
                "rows_in": o.rows_in if o.rows_in is not None else 0,
                "rows_curated": o.rows_curated,
                "rows_quarantined": o.rows_quarantined,
                "rows_duplicate": o.rows_duplicate,
                "rows_replaced": o.rows_replaced,
                "why": (o.message or "")[:300],
            }
        )
        for o in outcomes[:limit]
    ]
    return dg.MetadataValue.table(records, schema=_OUTCOME_SCHEMA)


def run_metadata(storage: Storage, run: IngestionRun, as_of: object) -> dict:
    """The curated asset's metadata for one ingestion run."""
    result, summary = run.result, run.summary
    return {
        "dagster/row_count": summary["rows"],
        "series": summary["series"],
        "time_min": summary["time_min"] or "",
        "time_max": summary["time_max"] or "",
        "drops_consumed": len(result.outcomes),
        "drops_quarantined": result.count("quarantined"),
        "drops_partial": result.count("partially_ingested"),
        "drops_deferred": len(result.deferred),
        "drops_duplicate": result.count("duplicate"),
        "rows_in": result.rows_in,
        "rows_curated": result.rows_curated,
        "rows_quarantined": result.rows_quarantined,
        "rows_duplicate": result.rows_duplicate,
        "rows_replaced": result.merge.rows_replaced,
        # A shard takes a new period as a delta file; a restatement rewrites its base.
        "shards_appended": result.merge.deltas_written,
        "shards_rewritten": result.merge.shards_written - result.merge.deltas_written,
        "drops": outcome_table(result.outcomes),
        "curated_uri": dg.MetadataValue.url(storage.uri(run.layout)),
        "as_of": str(as_of),
        **gap_metadata(summary["gaps"]),
        **run.phases.metadata(),
        **({"data_docs": dg.MetadataValue.url(storage.uri(run.docs))} if run.docs else {}),
    }


def build_ingestion_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "curated"],
        group_name=f"{spec.name}_ingestion",
        partitions_def=as_of_partitions(spec),
        kinds={"parquet", "pyarrow", "azure"},
        owners=["team:data-platform"],
        check_specs=check_specs(spec),
        tags={"stage": "ingestion", "dataset": spec.name},
        pool=writer_pool(spec.name),
        description=(
            f"Curated, typed {spec.name} rows: every new drop in landing/{spec.name}/ is parsed "
            "against the dataset spec and upserted on (series key, time); unreadable files and "
            "failing rows go to quarantine with the reason. Each new drop is validated once, as "
            "it is ingested; blocking checks (schema, keys, values, freshness, distribution, row "
            "accounting, quarantine) stop the run's downstream assets on an ERROR: wrong curated "
            "rows, or more quarantined than the spec's validation.max_quarantined_share. "
            "Quarantine within that share only warns."
        ),
    )
    def curated(
        context: dg.AssetExecutionContext, config: IngestConfig, storage: dg.ResourceParam[Storage]
    ) -> dg.MaterializeResult:
        def progress(o: DropOutcome) -> None:
            level = context.log.warning if o.status != "ingested" else context.log.info
            level(f"{o.status}: {o.drop} ({o.rows_curated} rows curated) {o.message or ''}")

        as_of = as_of_date(run_as_of(context, spec))
        run = run_ingestion(
            storage,
            spec,
            as_of,
            n_shards=config.n_shards,
            data_docs=config.data_docs,
            run_id=context.run.run_id,
            on_drop=progress,
            log=context.log.info,
        )
        docs_uri = storage.uri(run.docs) if run.docs else None
        return dg.MaterializeResult(
            metadata=run_metadata(storage, run, as_of),
            check_results=[
                *(
                    check_result(spec, c, docs_uri=docs_uri)
                    for c in check_outcomes(spec, run.result, as_of)
                ),
                gaps_check_result(spec, run.summary["gaps"]),
            ],
        )

    return curated
