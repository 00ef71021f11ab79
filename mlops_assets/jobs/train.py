"""Train a dataset's series as a remote job: an Azure ML command job, or a local subprocess.

The job reads the curated dataset up to the as-of date from storage, takes its share of the
series (a stable hash of the series id modulo the instance count, so several instances of one
AML job split the work without talking to each other), trains them with the local engine
(``train_local``: the same function every engine runs) and writes one Parquet part of result
records per instance. Rank 0 reports through Dagster Pipes; the caller reads every part.

    MLOPS_JOB_PARAMS='{"dataset": ...}' python -m mlops_assets.jobs.train
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.heap import retain_freed_memory
from mlops_assets.jobs.common import (
    PARAMS_ENV,
    open_pipes,
    rank_and_world,
    shard_of_series,
)
from mlops_assets.ml.engines import result_schema, train_local
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import series_codes, series_ids
from mlops_assets.storage import open_storage

MODULE = "mlops_assets.jobs.train"


@dataclass
class TrainJob:
    """Everything an instance needs (JSON in ``MLOPS_JOB_PARAMS``; no secrets)."""

    spec: dict
    as_of: str
    storage: dict
    output: str  # folder for part-<rank>.parquet
    series: list[str] | None = None
    max_workers: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        return cls(**json.loads(text))


def part_name(output: str, rank: int) -> str:
    return f"{output}/part-{rank:03d}.parquet"


def run_instance(job: TrainJob, rank: int, world: int) -> dict:
    started = time.perf_counter()
    spec = DatasetSpec.model_validate(job.spec)
    storage = open_storage(job.storage)
    table = CuratedStore(storage, spec).read(until=pd.Timestamp(job.as_of).date())
    _, first = np.unique(series_codes(table, spec.series_keys), return_index=True)
    ids = np.asarray(series_ids(table.take(pa.array(first)), spec).to_pylist(), dtype=object)
    chosen = np.asarray(sorted(job.series), dtype=object) if job.series is not None else ids
    mine = chosen[shard_of_series(chosen, world) == rank] if len(chosen) else chosen
    results = train_local(table, spec, series=list(mine), max_workers=job.max_workers)
    buf = io.BytesIO()
    pq.write_table(
        pa.Table.from_pandas(results, schema=result_schema(spec), preserve_index=False), buf
    )
    storage.write_bytes(part_name(job.output, rank), buf.getvalue())
    return {
        "rank": rank,
        "world": world,
        "series": len(mine),
        "trained": int((results["status"] == "trained").sum()) if len(results) else 0,
        "rows": table.num_rows,
        "seconds": round(time.perf_counter() - started, 3),
    }


def main() -> int:
    raw = os.environ.get(PARAMS_ENV)
    if not raw:
        sys.stderr.write(f"{PARAMS_ENV} is not set: nothing to train\n")
        return 2
    job = TrainJob.from_json(raw)
    retain_freed_memory()  # the job reuses its large arrays' memory (see heap)
    rank, world = rank_and_world()
    if rank > 0:  # one writer of Pipes messages per job (rank 0)
        sys.stderr.write(json.dumps(run_instance(job, rank, world)) + "\n")
        return 0
    with open_pipes() as pipes:
        summary = run_instance(job, rank, world)
        pipes.log.info(f"rank 0 of {world}: trained {summary['trained']} of {summary['series']}")
        pipes.report_custom_message(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
