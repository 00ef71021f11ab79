"""Blob drop -> sensor tick -> scoring run (Pipes subprocess) -> predictions, exactly once."""

import io
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mlops_assets.batch import layout
from mlops_assets.batch.demo import publish_model_set, register_production
from mlops_assets.batch_scoring import (
    build_batch_scoring_asset,
    scoring_partitions,
)
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import load_spec
from resources.compute import LocalBatchCompute
from resources.registry import MlflowRegistry
from resources.storage import BlobInfo, LocalStorage
from sensors.blob_drops import BlobDropConfig, Cursor, make_blob_drop_sensor, plan_tick

pytestmark = pytest.mark.integration

SALES = load_spec("sales")
INBOX = layout.inbox_prefix("sales")
HISTORY = 120


@pytest.fixture(scope="module")
def data():
    full = sales_table(SalesShape(6, HISTORY + 12, seed=5))
    weeks = sorted(set(full[SALES.time].to_pylist()))
    cut = weeks[HISTORY]
    hist = full.filter(pc.less(full[SALES.time], cut))
    new = full.filter(pc.greater_equal(full[SALES.time], cut))
    return hist, new


@pytest.fixture(scope="module")
def env(tmp_path_factory, data):
    home = tmp_path_factory.mktemp("batch")
    storage = LocalStorage(root=str(home / "storage"))
    prod_storage = LocalStorage(root=str(home / "prod-storage"))
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{home}/prod.db", alias="production")
    publish_model_set(prod_storage, SALES, data[0], "models/sales/v1")
    register_production(registry, SALES, prod_storage, "models/sales/v1")
    return {
        "storage": storage,
        "prod_storage": prod_storage,
        "prod_registry": registry,
        "batch_compute": LocalBatchCompute(),
    }


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _job_parts():
    asset = build_batch_scoring_asset(SALES)
    job = dg.define_asset_job("sales_batch_scoring", selection=[asset.key])
    return asset, job


def _tick(sensor, instance, resources, cursor):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = sensor(ctx)
    if isinstance(result, dg.SkipReason) or result is None:
        return [], cursor
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return list(result.run_requests or []), result.cursor


def _run(asset, instance, resources, request, raise_on_error=True):
    return dg.materialize(
        [asset],
        partition_key=request.partition_key,
        instance=instance,
        resources=resources,
        raise_on_error=raise_on_error,
    )


def test_drop_to_predictions_exactly_once(env, data):
    storage = env["storage"]
    instance = dg.DagsterInstance.ephemeral()
    asset, job = _job_parts()
    sensor = make_blob_drop_sensor(job, scoring_partitions(SALES), BlobDropConfig(prefix=INBOX))
    new = data[1]

    info = storage.write_bytes(f"{INBOX}2026/11/21/drop-a.parquet", _parquet(new))
    requests, cursor = _tick(sensor, instance, env, None)
    assert [r.run_key for r in requests] == [info.version_key]
    result = _run(asset, instance, env, requests[0])
    assert result.success
    key = requests[0].partition_key
    out = pq.read_table(storage.local_path(layout.predictions_name("sales", key)))
    assert out.num_rows == new.num_rows
    assert out["prediction"].null_count == 0
    md = result.asset_materializations_for_node("sales__batch_predictions")[0].metadata
    assert md["rows_scored"].value == new.num_rows
    assert md["series"].value == 6 and md["unknown_series"].value == 0

    # the same drop again: nothing new
    again, cursor = _tick(sensor, instance, env, cursor)
    assert again == []

    # overwritten (new etag): scored again, under its own key
    info2 = storage.write_bytes(f"{INBOX}2026/11/21/drop-a.parquet", _parquet(new.slice(0, 7)))
    assert info2.etag != info.etag
    requests, cursor = _tick(sensor, instance, env, cursor)
    assert [r.run_key for r in requests] == [info2.version_key]
    assert _run(asset, instance, env, requests[0]).success
    out2 = pq.read_table(
        storage.local_path(layout.predictions_name("sales", requests[0].partition_key))
    )
    assert out2.num_rows == 7


def test_malformed_and_bad_rows(env, data):
    storage = env["storage"]
    instance = dg.DagsterInstance.ephemeral()
    asset, job = _job_parts()
    sensor = make_blob_drop_sensor(job, scoring_partitions(SALES), BlobDropConfig(prefix=INBOX))
    storage.write_bytes(f"{INBOX}bad/broken.csv", b"store;product;week\nS1;P1;2026-01-05\n")
    rows = data[1].slice(0, 10).drop_columns([SALES.target]).to_pylist()
    rows[3]["price"] = -5.0  # value rule: quarantined row, the other 9 scored
    storage.write_bytes(f"{INBOX}bad/partly.parquet", _parquet(pa.Table.from_pylist(rows)))
    requests, _ = _tick(sensor, instance, env, None)
    by_name = {r.tags["mlops/drop"].rsplit("/", 1)[-1]: r for r in requests}

    broken = _run(asset, instance, env, by_name["broken.csv"], raise_on_error=False)
    assert not broken.success
    key = by_name["broken.csv"].partition_key
    assert not storage.exists(layout.predictions_name("sales", key))
    reason = storage.read_text(layout.quarantined_file("sales", key) + ".reason.json")
    assert "semicolon" in reason or "';'-delimited" in reason or "delimit" in reason

    partly = _run(asset, instance, env, by_name["partly.parquet"])
    key = by_name["partly.parquet"].partition_key
    out = pq.read_table(storage.local_path(layout.predictions_name("sales", key)))
    assert out.num_rows == 9
    rej = pq.read_table(storage.local_path(layout.quarantined_rows("sales", key)))
    assert rej["_rule"].to_pylist() == ["range.min"]
    md = partly.asset_materializations_for_node("sales__batch_predictions")[0].metadata
    assert md["rows_quarantined"].value == 1


def test_restart_from_cursor_and_1000_drops(env, data, tmp_path):
    """Drops land while the sensor is off; 1,000 drops over capped ticks: each once."""
    storage = LocalStorage(root=str(tmp_path / "storage"))
    res = {**env, "storage": storage}
    instance = dg.DagsterInstance.ephemeral()
    asset, job = _job_parts()
    config = BlobDropConfig(prefix=INBOX, max_per_tick=300)
    sensor = make_blob_drop_sensor(job, scoring_partitions(SALES), config)
    small = _parquet(data[1].slice(0, 2))
    for i in range(400):
        storage.write_bytes(f"{INBOX}many/d{i:05d}.parquet", small)
    done: list[dg.RunRequest] = []
    requests, cursor = _tick(sensor, instance, res, None)
    done += requests
    # the sensor is off; 600 more land; it restarts from its stored cursor
    for i in range(400, 1000):
        storage.write_bytes(f"{INBOX}many/d{i:05d}.parquet", small)
    for _ in range(6):
        requests, cursor = _tick(sensor, instance, res, cursor)
        done += requests
    keys = [r.run_key for r in done]
    assert len(keys) == 1000 and len(set(keys)) == 1000
    assert len(instance.get_dynamic_partitions("sales_scoring_drops")) == 1000
    for r in (done[0], done[500], done[-1]):  # a subset end to end
        assert _run(asset, instance, res, r).success
        out = storage.local_path(layout.predictions_name("sales", r.partition_key))
        assert pq.read_table(out).num_rows == 2


def test_plan_tick_late_visible_blob_and_cost():
    """A blob committed earlier than the high-water mark but listed later is still taken."""
    t = datetime(2026, 11, 21, 12, tzinfo=UTC)
    cfg = BlobDropConfig(prefix="in/", lag_s=600)
    a = BlobInfo("in/a.csv", 1, "e1", t)
    take, cur = plan_tick([a], Cursor(), cfg)
    assert take == [a]
    late = BlobInfo("in/b.csv", 1, "e2", t - timedelta(seconds=30))
    take, cur = plan_tick([a, late], Cursor.parse(cur.dump()), cfg)
    assert take == [late]
    take, _ = plan_tick([a, late], cur, cfg)
    assert take == []
    # 10,000 existing old blobs: a tick's work is a filter over the listing, cursor stays small
    old = [BlobInfo(f"in/o{i}.csv", 1, "x", t - timedelta(days=9)) for i in range(10_000)]
    take, cur2 = plan_tick(old + [a, late], cur, cfg)
    assert take == [] and len(cur2.dump()) < 500


@pytest.mark.azurite
def test_sensor_on_azurite_etag_versions(blob_storage, env, data):
    instance = dg.DagsterInstance.ephemeral()
    _, job = _job_parts()
    sensor = make_blob_drop_sensor(job, scoring_partitions(SALES), BlobDropConfig(prefix=INBOX))
    res = {"storage": blob_storage}
    body = _parquet(data[1].slice(0, 3))
    for i in range(30):
        blob_storage.write_bytes(f"{INBOX}x/{i:03d}.parquet", body)
    requests, cursor = _tick(sensor, instance, res, None)
    assert len({r.run_key for r in requests}) == 30
    assert _tick(sensor, instance, res, cursor)[0] == []
    info = blob_storage.write_bytes(f"{INBOX}x/007.parquet", body + b"")
    requests, cursor = _tick(sensor, instance, res, cursor)
    assert [r.run_key for r in requests] == [info.version_key]
