"""Ingestion: drops landed under ``landing/<dataset>/`` become the curated Parquet dataset."""

import tempfile
import time

import dagster as dg

from mlops_assets.assets.checks import (
    as_of_date,
    check_results,
    check_specs,
    make_gate,
    publish_docs,
)
from mlops_assets.domain.curation import (
    CuratedStore,
    DropOutcome,
    ingest,
    landing_prefix,
    pending_drops,
)
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.partitions import as_of_days
from mlops_assets.storage import Storage

_OUTCOME_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("drop", "string"),
        dg.TableColumn("status", "string"),
        dg.TableColumn("rows_in", "int"),
        dg.TableColumn("rows_curated", "int"),
        dg.TableColumn("rows_quarantined", "int"),
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
                "why": (o.message or "")[:300],
            }
        )
        for o in outcomes[:limit]
    ]
    return dg.MetadataValue.table(records, schema=_OUTCOME_SCHEMA)


def build_ingestion_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "curated"],
        group_name=f"{spec.name}_ingestion",
        partitions_def=as_of_days,
        kinds={"parquet", "pyarrow", "azure"},
        owners=["team:data-platform"],
        check_specs=check_specs(spec),
        tags={"stage": "ingestion", "dataset": spec.name},
        description=(
            f"Curated, typed {spec.name} rows: every new drop in landing/{spec.name}/ is parsed "
            "against the dataset spec and upserted on (series key, time); unreadable files and "
            "failing rows go to quarantine with the reason. Each new drop is validated once, as "
            "it is ingested; blocking checks (schema, keys, values, freshness, distribution, row "
            "accounting) stop the run's downstream assets on an ERROR."
        ),
    )
    def curated(
        context: dg.AssetExecutionContext, config: IngestConfig, storage: dg.ResourceParam[Storage]
    ) -> dg.MaterializeResult:
        drops = pending_drops(storage, spec)
        context.log.info(f"{len(drops)} new drop version(s) under {landing_prefix(spec)}")

        def progress(o: DropOutcome) -> None:
            level = context.log.warning if o.status != "ingested" else context.log.info
            level(f"{o.status}: {o.drop} ({o.rows_curated} rows curated) {o.message or ''}")

        as_of = as_of_date(context.partition_key if context.has_partition_key else None)
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="gx-docs-") as docs_dir:
            gate = (
                make_gate(storage, spec, as_of, docs_dir if config.data_docs else None)
                if drops
                else None
            )
            seconds["gate"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = ingest(
                storage,
                spec,
                drops,
                n_shards=config.n_shards,
                run_id=context.run_id,
                on_drop=progress,
                gate=gate,
            )
            seconds["ingest"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            docs = publish_docs(storage, spec, gate)
            seconds["docs"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = CuratedStore(storage, spec)
        summary = store.summary()
        seconds["summary"] = time.perf_counter() - t0
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": summary["rows"],
                "series": summary["series"],
                "time_min": summary["time_min"] or "",
                "time_max": summary["time_max"] or "",
                "drops_consumed": len(result.outcomes),
                "drops_quarantined": result.count("quarantined"),
                "drops_partial": result.count("partially_ingested"),
                "rows_in": result.rows_in,
                "rows_curated": result.rows_curated,
                "rows_quarantined": result.rows_quarantined,
                "rows_replaced": result.merge.rows_replaced,
                "drops": outcome_table(result.outcomes),
                "curated_uri": dg.MetadataValue.url(storage.uri(store.prefix + "/_layout.json")),
                "as_of": str(as_of),
                **{f"seconds_{k}": round(v, 3) for k, v in seconds.items()},
                **{f"seconds_{k}": round(v, 3) for k, v in result.seconds.items()},
                **({"data_docs": dg.MetadataValue.url(storage.uri(docs))} if docs else {}),
            },
            check_results=check_results(
                spec, result, as_of, docs_uri=storage.uri(docs) if docs else None
            ),
        )

    return curated
