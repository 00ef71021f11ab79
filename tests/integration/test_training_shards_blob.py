"""The local engine's workers read their shards from Blob storage (Azurite) themselves."""

import psutil
import pytest

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.training_run import train_candidate
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.storage import LocalStorage
from resources.training_engine import LocalTrainingEngine

pytestmark = pytest.mark.integration
SPEC = load_spec("sales")


def _train(storage, table, workers):
    CuratedStore(storage, SPEC, n_shards=4).merge(table)
    out = train_candidate(
        storage, SPEC, LocalTrainingEngine(max_workers=workers), as_of="2026-11-17", run_id="r1"
    )
    names = sorted({a for a in out.manifest["artifact"].to_pylist() if a})
    return out, [storage.read_bytes(n) for n in names]


def test_workers_open_their_own_blob_client_and_train_the_same_models(blob_storage, tmp_path):
    """Each forked worker reopens the storage from its configuration (a Blob client is never
    shared across a fork) and reads its shards from the emulator: the models are the bytes
    one process writes from local files."""
    table = sales_table(SalesShape(24, 80, seed=8, realistic=True))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    pooled, pooled_packs = _train(blob_storage, table, workers=2)
    alone, alone_packs = _train(LocalStorage(root=str(tmp_path)), table, workers=1)
    assert pooled.rows == alone.rows == table.num_rows
    assert pooled_packs == alone_packs
    assert pooled.manifest["series_id"].equals(alone.manifest["series_id"])
    assert ms.read_pointer(blob_storage, ms.latest_pointer(SPEC)) is not None
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
