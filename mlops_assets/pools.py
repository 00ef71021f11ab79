"""One writer per dataset: the Dagster concurrency pool each dataset's writers hold.

Every op that writes a dataset's curated data or model sets (ingestion, training, evaluation,
registration, promotion, rollback) declares the pool ``<dataset>_writer``. Both instance
configs the project ships set ``concurrency.pools.granularity: run`` and ``default_limit: 1``
(``RUN_QUEUE`` below, ``deploy/dagster/dagster.yaml``): the daemon's run queue then dequeues a
run only while no other in-progress run holds one of its pools, so two writers of one dataset
never overlap whichever way they were launched (schedule, UI, CLI, backfill, retry), while
writers of other datasets are not held back. docs/runbook.md, "One writer per dataset".
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

# The run queue of the local instance: per-dataset pools held for a whole run (see module doc).
RUN_QUEUE = """concurrency:
  pools:
    granularity: run
    default_limit: 1
"""


def writer_pool(dataset: str) -> str:
    """The pool held by every run that writes ``dataset``'s curated data or model sets."""
    return f"{dataset}_writer"


def ensure_writer_pools(instance: dg.DagsterInstance, datasets: Iterable[str]) -> list[str]:
    """Give each dataset's pool its default limit in ``instance`` now, before any run queues.

    The queue daemon creates a pool's limit only when it first sees a queued run holding the
    pool, and it reads the configured pools before doing so: in that first pass every queued
    run of the new pool is dequeued unchecked. Creating the limits beforehand closes that
    window. Pools that already have a limit keep it.

    Returns:
        The pools that were created.

    Raises:
        ValueError: the instance would not hold the pools for whole runs with limit 1.
    """
    pools = instance.get_concurrency_config().pool_config
    granularity = pools.pool_granularity.value if pools.pool_granularity else None
    if granularity != "run" or pools.default_pool_limit != 1:
        raise ValueError(
            "the Dagster instance must set concurrency.pools.granularity: run and "
            f"default_limit: 1 (found {granularity}, {pools.default_pool_limit})"
        )
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        raise ValueError(f"{type(storage).__name__} cannot hold concurrency pools")
    known = storage.get_concurrency_keys()
    created = []
    for pool in (writer_pool(d) for d in datasets):
        if pool not in known and storage.initialize_concurrency_limit_to_default(pool):
            created.append(pool)
    return created
