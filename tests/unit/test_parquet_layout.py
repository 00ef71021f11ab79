"""What readers of our Parquet files rely on: statistics on the columns they filter on (row
group pruning), correct over many write batches, and none on the value columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.jobs.drop_scoring import write_parquet
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from mlops_assets.ml.tables import PARQUET_WRITE_BATCH, decode_dictionaries
from mlops_assets.storage import LocalStorage

SPEC = load_spec("sales")


def _stats(path) -> dict[str, list]:
    """Per column: each row group's (min, max), or None where it has no statistics."""
    meta = pq.read_metadata(path)
    out: dict[str, list] = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            s = col.statistics
            has = s is not None and s.has_min_max
            out.setdefault(col.path_in_schema, []).append((s.min, s.max) if has else None)
    return out


def _expected(path, column: str) -> list:
    pf = pq.ParquetFile(path)
    got = []
    for g in range(pf.num_row_groups):
        values = decode_dictionaries(pf.read_row_group(g, columns=[column]))[column]
        mm = pc.min_max(values)
        got.append((mm["min"].as_py(), mm["max"].as_py()))
    return got


def test_curated_shards_carry_statistics_on_keys_and_time_only(tmp_path):
    # Several write batches per row group: statistics merged across batches must still be
    # the row group's own min and max.
    rows = sales_table(SalesShape(60, 2 * PARQUET_WRITE_BATCH // 60 + 7, seed=5))
    store = CuratedStore(LocalStorage(tmp_path), SPEC, n_shards=1)
    store.merge(rows)
    (name,) = store.shard_names()
    (path,) = [store.storage.local_path(f) for f in store.shard_files(name)]
    assert pq.read_metadata(path).num_rows == rows.num_rows > 2 * PARQUET_WRITE_BATCH
    stats = _stats(path)
    for column in [*SPEC.series_keys, SPEC.time]:
        got = stats[column]
        assert all(s is not None for s in got), column
        expected = _expected(path, column)
        assert got == expected, column
    for column in (SPEC.target, *SPEC.features.exogenous):
        assert all(s is None for s in stats[column]), column


def test_predictions_carry_statistics_on_row_series_and_time_only(tmp_path):
    n = 3 * PARQUET_WRITE_BATCH + 11
    rng = np.random.default_rng(0)
    series = np.sort(rng.integers(0, 500, n))
    table = pa.table(
        {
            "source_row": pa.array(np.arange(n, dtype=np.int64)),
            "series_id": pa.array([f"store=S{s:04d}" for s in series]).dictionary_encode(),
            "time": pa.array(
                (np.datetime64("2026-01-05") + rng.integers(0, 400, n)).astype("datetime64[D]")
            ),
            "prediction": rng.normal(size=n),
        }
    )
    storage = LocalStorage(tmp_path)
    write_parquet(storage, "p.parquet", table)
    path = storage.local_path("p.parquet")
    stats = _stats(path)
    for column in ("source_row", "series_id", "time"):
        assert stats[column] == _expected(path, column), column
    assert stats["prediction"] == [None] * len(stats["prediction"])
    assert pq.read_table(path).equals(table)
