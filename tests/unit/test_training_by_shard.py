"""Training shard by shard (the local engine) writes the same model set as training all at once."""

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedReadError, CuratedStore
from mlops_assets.domain.training_run import TrainingInputError, train_candidate
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.storage import LocalStorage
from resources.training_engine import LocalTrainingEngine

SPEC = load_spec("sales")
AS_OF = "2026-11-17"
TIMING = {"fit_seconds", "serialize_seconds"}


def _floats(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or (pa.types.is_list(t) and pa.types.is_floating(t.value_type))


def _assert_same_manifest(one: pa.Table, other: pa.Table) -> None:
    for name in one.column_names:
        a, b = one[name], other[name]
        if name in TIMING:
            continue
        if _floats(a.type):  # scales and metrics summed over a batch: same to rounding
            if pa.types.is_list(a.type):
                assert pc.list_value_length(a).equals(pc.list_value_length(b)), name
                a, b = pc.list_flatten(a), pc.list_flatten(b)
            x, y = (np.array(c.to_pylist(), dtype=float) for c in (a, b))
            np.testing.assert_allclose(x, y, rtol=1e-9, equal_nan=True, err_msg=name)
        else:
            assert a.equals(b), name


def _children() -> set[int]:
    """This process's child processes (servers other tests started stay out of the count)."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _train(root, table, series=(), workers=1):
    storage = LocalStorage(root=str(root))
    CuratedStore(storage, SPEC, n_shards=4).merge(table)
    engine = LocalTrainingEngine(max_workers=workers)
    out = train_candidate(storage, SPEC, engine, as_of=AS_OF, run_id="run00000", series=series)
    packs = {
        name.rsplit("/", 1)[-1]: storage.read_bytes(name)
        for name in sorted({a for a in out.manifest["artifact"].to_pylist() if a})
    }
    return out, packs


def test_by_shard_and_all_at_once_write_the_same_models(tmp_path):
    table = sales_table(SalesShape(60, 90, seed=4, realistic=True))
    keys = zip(table["store"].to_pylist(), table["product"].to_pylist(), strict=True)
    ids = sorted({SPEC.series_id(k) for k in keys})
    streamed, streamed_packs = _train(tmp_path / "a", table)
    whole, whole_packs = _train(tmp_path / "b", table, series=ids)  # chosen series: one read
    assert streamed.rows == whole.rows == table.num_rows
    assert streamed.manifest.num_rows == 60
    assert streamed_packs == whole_packs  # the same models, byte for byte
    _assert_same_manifest(streamed.manifest, whole.manifest)
    assert streamed.phases.seconds["read"] > 0 and "engine_wall" in streamed.phases.seconds
    assert set(streamed.trained["status"]) <= {"trained", "fallback", "skipped", "failed"}
    assert "model" not in streamed.trained  # the bytes are in the packs, not the report


def test_a_pool_of_workers_reads_and_trains_the_shards(tmp_path):
    """With two workers each shard is read, fingerprinted and trained in a worker (the run's
    process reads none): the same models and records as one process, shard after shard."""
    table = sales_table(SalesShape(40, 80, seed=5, realistic=True))
    before = _children()
    pooled, pooled_packs = _train(tmp_path / "a", table, workers=2)
    alone, alone_packs = _train(tmp_path / "b", table, workers=1)
    assert pooled_packs == alone_packs
    _assert_same_manifest(pooled.manifest, alone.manifest)
    seconds = pooled.phases.seconds
    assert seconds["engine_wall"] > 0 and seconds["engine_read"] > 0  # read by the workers
    # The workers' own phases come back with their results (fit and serialize may be 0 here:
    # series this short mostly fall back).
    assert {f"engine_{p}" for p in ("fit", "serialize")} <= set(seconds)
    for phase in ("features", "backtest", "records"):
        assert seconds[f"engine_{phase}"] > 0, phase
    assert pooled.rows == table.num_rows
    assert _children() <= before  # the pool was shut down


def test_a_shard_that_cannot_be_read_stops_the_pool_training_the_one_before(tmp_path):
    """The second shard's file is unreadable: the run fails naming it (the worker's error),
    and the pool that was training the other shards meanwhile is stopped, not left running."""
    storage = LocalStorage(root=str(tmp_path))
    store = CuratedStore(storage, SPEC, n_shards=4)
    store.merge(sales_table(SalesShape(40, 80, seed=6)))
    broken = store.shard_files(store.shard_names()[1])[0]
    storage.write_bytes(broken, b"not parquet")
    engine = LocalTrainingEngine(max_workers=2)
    before = _children()
    with pytest.raises(CuratedReadError, match=r"part-001\.parquet cannot be read.*restore it"):
        train_candidate(storage, SPEC, engine, as_of=AS_OF, run_id="run00000")
    assert _children() <= before
    assert ms.read_pointer(storage, ms.latest_pointer(SPEC)) is None


def test_no_curated_rows_up_to_the_as_of_date_is_refused(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    CuratedStore(storage, SPEC, n_shards=2).merge(sales_table(SalesShape(3, 10)))
    engine = LocalTrainingEngine(max_workers=1)
    with pytest.raises(TrainingInputError, match="no curated sales rows"):
        train_candidate(storage, SPEC, engine, as_of="2020-01-06", run_id="run00000")
    assert ms.read_pointer(storage, ms.latest_pointer(SPEC)) is None
