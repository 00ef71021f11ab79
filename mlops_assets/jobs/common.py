"""What every script run under Dagster Pipes (locally or as an Azure ML job) shares.

Parameters arrive as JSON in ``MLOPS_JOB_PARAMS``; storage is passed as its configuration (never
a secret) and reopened in the job; instances find their rank in the variables Azure ML sets for
distributed jobs; on Azure ML the Pipes context and messages travel through Blob storage.
No Dagster orchestration imports: only ``dagster_pipes``, which the job environment carries.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping

import numpy as np

from mlops_assets.storage import CONNECTION_STRING_ENV

PARAMS_ENV = "MLOPS_JOB_PARAMS"
PIPES_TRANSPORT_ENV = "MLOPS_PIPES_TRANSPORT"  # "azure_blob" on AML; default: Pipes' env/files
PIPES_BLOB_ACCOUNT_URL_ENV = "MLOPS_PIPES_BLOB_ACCOUNT_URL"


def rank_and_world(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's rank and the number of processes: ``MLOPS_RANK``/``MLOPS_WORLD_SIZE``
    (``LocalBatchCompute``), else what Azure ML sets for the job's distribution (PyTorch:
    ``RANK``/``WORLD_SIZE``; MPI: Open MPI's ``OMPI_COMM_WORLD_RANK``/``..._SIZE``), else 0 of 1.
    """
    env = os.environ if environ is None else environ
    for r, w in (
        ("MLOPS_RANK", "MLOPS_WORLD_SIZE"),
        ("RANK", "WORLD_SIZE"),  # AML PyTorch distribution
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # AML MPI distribution
    ):
        if env.get(r) not in (None, "") and env.get(w) not in (None, ""):
            rank, world = int(env[r]), int(env[w])
            if not 0 <= rank < world:
                raise ValueError(f"{r}={rank} is not in [0, {w}={world})")
            return rank, world
    return 0, 1


def shard_of_series(ids: np.ndarray, world: int) -> np.ndarray:
    """A stable instance per series id: crc32(id) mod world (the same in every process)."""
    uniq, inverse = np.unique(ids.astype(str), return_inverse=True)
    crc = np.fromiter((zlib.crc32(s.encode()) for s in uniq), dtype=np.int64, count=len(uniq))
    return (crc % world)[inverse]


def open_pipes(transport: str | None = None):
    """Pipes from Dagster's env vars, or through Blob storage on Azure ML."""
    transport = transport or os.environ.get(PIPES_TRANSPORT_ENV)
    from dagster_pipes import open_dagster_pipes

    if transport != "azure_blob":
        return open_dagster_pipes()
    from azure.storage.blob import BlobServiceClient
    from dagster_pipes import (
        PipesAzureBlobStorageContextLoader,
        PipesAzureBlobStorageMessageWriter,
    )

    conn = os.environ.get(CONNECTION_STRING_ENV)
    if conn:
        client = BlobServiceClient.from_connection_string(conn)
    else:
        from azure.identity import DefaultAzureCredential

        client = BlobServiceClient(
            os.environ[PIPES_BLOB_ACCOUNT_URL_ENV], credential=DefaultAzureCredential()
        )
    return open_dagster_pipes(
        context_loader=PipesAzureBlobStorageContextLoader(client=client),
        message_writer=PipesAzureBlobStorageMessageWriter(client=client),
    )
