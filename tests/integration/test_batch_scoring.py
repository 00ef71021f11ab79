"""Blob drop -> sensor tick -> scoring run (Pipes subprocess) -> predictions, exactly once."""

import io
import json
import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mlops_assets.assets.batch_scoring import (
    batch_key,
    build_batch_scoring_asset,
    scoring_partitions,
)
from mlops_assets.domain import batch_layout as layout
from mlops_assets.domain.demo_model_set import demo_ref, publish_model_set, register_production
from mlops_assets.jobs.batch_params import DropBatch, DropJob, params_json
from mlops_assets.jobs.drop_pieces import stream_source
from mlops_assets.jobs.score_drops import run_instance
from mlops_assets.ml import modelset
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import BlobInfo, LocalStorage
from resources.compute import LocalBatchCompute
from resources.registry import MlflowRegistry
from sensors.blob_drops import BlobDropConfig, Cursor, make_blob_drop_sensor, plan_tick

pytestmark = pytest.mark.integration

SALES = load_spec("sales")
SALES_JSON = SALES.model_dump(mode="json")
INBOX = layout.inbox_prefix("sales")
HISTORY = 120
A_REF = {"name": "sales-models", "version": "v1", "folder": "m/v1", "manifest_sha256": "0" * 64}


@pytest.fixture(scope="module")
def data():
    full = sales_table(SalesShape(6, HISTORY + 12, seed=5))
    weeks = sorted(set(full[SALES.time].to_pylist()))
    cut = weeks[HISTORY]
    hist = full.filter(pc.less(full[SALES.time], cut))
    new = full.filter(pc.greater_equal(full[SALES.time], cut))
    return hist, new


@pytest.fixture(scope="module")
def production(tmp_path_factory, data):
    """The published production model set, shared (read only) by the module's tests."""
    home = tmp_path_factory.mktemp("batch")
    prod_storage = LocalStorage(root=str(home / "prod-storage"))
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{home}/prod.db", alias="production")
    publish_model_set(prod_storage, SALES, data[0], "models/sales/v1")
    register_production(registry, SALES, prod_storage, "models/sales/v1")
    return prod_storage, registry


@pytest.fixture
def env(tmp_path, production):
    """Each test's own inbox and outputs beside the shared production set: any order works."""
    prod_storage, registry = production
    return {
        "storage": LocalStorage(root=str(tmp_path / "storage")),
        "prod_storage": prod_storage,
        "prod_registry": registry,
        "batch_compute": LocalBatchCompute(),
    }


def _drop_job(env, storage, info, key: str, spec: dict = SALES_JSON, **ref) -> DropJob:
    """A job scoring one drop version with the published model set (``ref`` overrides)."""
    model_set = {**demo_ref(env["prod_storage"], SALES, "models/sales/v1").to_dict(), **ref}
    return DropJob(
        spec, info.name, info.etag, key, storage.config(), env["prod_storage"].config(), model_set
    )


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


def _settled_tick(sensor, instance, resources, cursor):
    """Drops just written are young: the first tick only notes them (size, etag), the next
    takes those that did not change in between."""
    first, cursor = _tick(sensor, instance, resources, cursor)
    assert first == []
    return _tick(sensor, instance, resources, cursor)


RANGE_START, RANGE_END = (
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
)


def _run(asset, instance, resources, request, raise_on_error=True):
    """The request's run, with its tags as the daemon gives them: one partition, or (a batch)
    the partition range in its tags."""
    return dg.materialize(
        [asset],
        partition_key=request.partition_key,
        tags=dict(request.tags) or None,
        instance=instance,
        resources=resources,
        raise_on_error=raise_on_error,
    )


def _drops_of(request, partitions: list[str]) -> list[str]:
    """The drop versions (partition keys, in order) a run request covers."""
    if request.partition_key:
        return [request.partition_key]
    start, end = request.tags[RANGE_START], request.tags[RANGE_END]
    return partitions[partitions.index(start) : partitions.index(end) + 1]


def _materializations(result) -> dict[str, dict]:
    """Each materialized partition's metadata."""
    return {
        m.partition: m.metadata
        for m in result.asset_materializations_for_node("sales__batch_predictions")
    }


def _failure(result):
    """The step failure of a run: its message and the dg.Failure's metadata."""
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = event.step_failure_data
    return data.error.message, data.user_failure_data.metadata


def test_drop_to_predictions_exactly_once(env, data):
    storage = env["storage"]
    instance = dg.DagsterInstance.ephemeral()
    asset, job = _job_parts()
    sensor = make_blob_drop_sensor(job, scoring_partitions(SALES), BlobDropConfig(prefix=INBOX))
    new = data[1]

    info = storage.write_bytes(f"{INBOX}2026/11/21/drop-a.parquet", _parquet(new))
    requests, cursor = _settled_tick(sensor, instance, env, None)
    assert [r.run_key for r in requests] == [info.version_key]
    result = _run(asset, instance, env, requests[0])
    assert result.success
    key = requests[0].partition_key
    out = pq.read_table(storage.local_path(layout.predictions_name("sales", key)))
    assert out.num_rows == new.num_rows
    assert out["prediction"].null_count == 0
    (md,) = _materializations(result).values()
    assert md["rows_scored"].value == new.num_rows
    assert md["series"].value == 6 and md["unknown_series"].value == 0

    # the same drop again: nothing new
    again, cursor = _tick(sensor, instance, env, cursor)
    assert again == []

    # overwritten (new etag): scored again, under its own key
    info2 = storage.write_bytes(f"{INBOX}2026/11/21/drop-a.parquet", _parquet(new.slice(0, 7)))
    assert info2.etag != info.etag
    requests, cursor = _settled_tick(sensor, instance, env, cursor)
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
    requests, _ = _settled_tick(sensor, instance, env, None)
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
    assert rej["_rule"].to_pylist() == ["values.range"]
    (md,) = _materializations(partly).values()
    assert md["rows_quarantined"].value == 1


def test_restart_from_cursor_and_1000_drops(env, data, tmp_path):
    """1,000 small drops, 600 of them landed while the sensor was off; capped ticks batch them
    into a handful of runs, each scoring all its drops in ONE Pipes subprocess: 1,000 scored,
    none twice, each drop's metadata present; more ticks (cursor kept or lost) start nothing."""
    storage = LocalStorage(root=str(tmp_path / "storage"))
    res = {**env, "storage": storage}
    instance = dg.DagsterInstance.ephemeral()
    asset, job = _job_parts()
    config = BlobDropConfig(prefix=INBOX, max_per_tick=300, batch_size=250)
    sensor = make_blob_drop_sensor(job, scoring_partitions(SALES), config)
    small = _parquet(data[1].slice(0, 2))
    for i in range(400):
        storage.write_bytes(f"{INBOX}many/d{i:05d}.parquet", small)
    done: list[dg.RunRequest] = []
    requests, cursor = _tick(sensor, instance, res, None)
    assert requests == []  # just written: noted, taken by the next tick if unchanged
    # the sensor is off; 600 more land; it restarts from its stored cursor
    for i in range(400, 1000):
        storage.write_bytes(f"{INBOX}many/d{i:05d}.parquet", small)
    for _ in range(6):
        requests, cursor = _tick(sensor, instance, res, cursor)
        done += requests
    partitions = instance.get_dynamic_partitions("sales_scoring_drops")
    assert len(partitions) == 1000
    run_keys = [r.run_key for r in done]
    assert len(run_keys) == len(set(run_keys)) and 4 <= len(done) <= 8
    covered = [k for r in done for k in _drops_of(r, partitions)]
    assert len(covered) == 1000 and set(covered) == set(partitions)  # each drop in one run

    for r in done:  # every run end to end: one subprocess for all its drops
        keys = _drops_of(r, partitions)
        result = _run(asset, instance, res, r)
        assert result.success
        per_drop = _materializations(result)  # one materialization per drop, its own metadata
        assert sorted(per_drop) == sorted(keys)
        for key, md in per_drop.items():
            assert md["status"].value == "scored" and md["rows_scored"].value == 2
            assert md["predictions"].value == storage.uri(layout.predictions_name("sales", key))
            totals = md["batch"].value
            assert totals["drops"] == len(keys) and totals["rows_scored"] == 2 * len(keys)
            assert totals["statuses"] == {"scored": len(keys)} and totals["unknown_series"] == 0
    materialized = instance.get_materialized_partitions(asset.key)
    assert materialized == set(partitions)
    predictions = storage.list("scoring/sales/predictions/")
    assert len(predictions) == 1000
    assert all(pq.read_metadata(storage.local_path(p.name)).num_rows == 2 for p in predictions)
    # params of the large batches travelled through storage, the small ones inline
    spilled = storage.list("scoring/sales/batches/")
    assert 0 < len(spilled) < len(done)

    again, cursor = _tick(sensor, instance, res, cursor)
    assert again == []
    lost = None  # cursor lost: the drops' partitions exist, so nothing is requested
    for _ in range(4):
        again, lost = _tick(sensor, instance, res, lost)
        assert again == []


def test_batch_with_a_malformed_drop(env, data, tmp_path):
    """A batch of drops with a malformed one: the others are scored (one of them with a
    quarantined row), the bad one is quarantined with its reason, the run fails naming it."""
    storage = LocalStorage(root=str(tmp_path / "storage"))
    res = {**env, "storage": storage}
    instance = dg.DagsterInstance.ephemeral()
    asset, job = _job_parts()
    config = BlobDropConfig(prefix=INBOX, batch_size=10)
    sensor = make_blob_drop_sensor(job, scoring_partitions(SALES), config)
    good = _parquet(data[1].slice(0, 4))
    for i in range(3):
        storage.write_bytes(f"{INBOX}mix/g{i}.parquet", good)
    storage.write_bytes(f"{INBOX}mix/h-broken.csv", b"store;product;week\nS1;P1;2026-01-05\n")
    rows = data[1].slice(0, 10).drop_columns([SALES.target]).to_pylist()
    rows[3]["price"] = -5.0
    storage.write_bytes(f"{INBOX}mix/i-partly.parquet", _parquet(pa.Table.from_pylist(rows)))
    (request,), _ = _settled_tick(sensor, instance, res, None)
    keys = _drops_of(request, instance.get_dynamic_partitions("sales_scoring_drops"))
    assert len(keys) == 5
    by_name = {k.split("@")[0].rsplit("/", 1)[-1]: k for k in keys}

    result = _run(asset, instance, res, request, raise_on_error=False)
    assert not result.success
    message, metadata = _failure(result)
    broken = by_name["h-broken.csv"]
    assert "1 of 5 drop(s) not scored" in message and broken in message
    assert all(k not in message for k in keys if k != broken)
    assert _materializations(result) == {}  # the run failed: no partition materialized
    per_drop = metadata["per_drop"].value
    assert per_drop[broken]["status"] == "rejected" and "quarantine" in per_drop[broken]
    assert not storage.exists(layout.predictions_name("sales", broken))
    reason = storage.read_text(layout.quarantined_file("sales", broken) + ".reason.json")
    assert "delimit" in reason or "semicolon" in reason
    for i in range(3):
        key = by_name[f"g{i}.parquet"]
        assert per_drop[key]["status"] == "scored" and per_drop[key]["rows_scored"] == 4
        out = pq.read_table(storage.local_path(layout.predictions_name("sales", key)))
        assert out.num_rows == 4
    partly = by_name["i-partly.parquet"]
    assert per_drop[partly]["rows_scored"] == 9 and per_drop[partly]["rows_quarantined"] == 1
    rej = pq.read_table(storage.local_path(layout.quarantined_rows("sales", partly)))
    assert rej["_rule"].to_pylist() == ["values.range"]


def test_a_failing_drop_does_not_stop_the_batch(env, data, tmp_path):
    """An unexpected error in one drop (its model set is gone) is reported as that drop's
    ``failed`` message; the job still scores the others and exits 0."""
    storage = LocalStorage(root=str(tmp_path / "storage"))
    jobs = []
    for i in range(3):
        info = storage.write_bytes(f"{INBOX}f/{i}.parquet", _parquet(data[1].slice(0, 3)))
        jobs.append(_drop_job(env, storage, info, f"f/{i}.parquet@{info.etag}"))
    jobs[1].model_set = {**jobs[1].model_set, "folder": "models/sales/deleted"}
    batch = DropBatch.of(jobs)
    assert batch.drops[1]["model_set"]["folder"] == "models/sales/deleted"  # a per-drop override
    assert [j.to_json() for j in DropBatch.from_json(batch.to_json()).jobs()] == [
        j.to_json() for j in jobs
    ]
    seen: list[dict] = []

    @dg.asset
    def scored(context: dg.AssetExecutionContext):
        inv = LocalBatchCompute().run_scoring(
            context, params_json=batch.to_json(), key=batch_key(batch.keys)
        )
        seen.extend(inv.get_custom_messages())
        return dg.MaterializeResult()

    assert dg.materialize([scored]).success
    assert [m["key"] for m in seen] == batch.keys
    assert [m["status"] for m in seen] == ["scored", "failed", "scored"]
    assert "models/sales/deleted" in seen[1]["error"]
    assert [m["rows_scored"] for m in seen] == [3, 0, 3]


def test_batch_params_shapes(tmp_path):
    """A single DropJob is a batch of one; a large batch travels by reference to storage."""
    storage = LocalStorage(root=str(tmp_path))
    cfg = storage.config()
    one = DropJob(SALES_JSON, f"{INBOX}a.csv", "e1", "a.csv@e1", cfg, cfg, A_REF)
    batch = DropBatch.from_json(one.to_json())
    assert batch.keys == ["a.csv@e1"] and batch.jobs()[0] == one
    assert batch_key(["a.csv@e1"]) == "a.csv@e1"
    many = [
        DropJob(SALES_JSON, f"{INBOX}{i}.csv", "e", f"{i}.csv@e", cfg, cfg, A_REF)
        for i in range(500)
    ]
    keys = [j.key for j in many]
    assert batch_key(keys) == batch_key(list(keys)) != batch_key(keys[:-1])
    assert batch_key(keys).startswith("batch:")
    big = DropBatch.of(many)
    text = params_json(big, storage, "scoring/sales/batches/run-1.json")
    assert len(text) < 500 and storage.exists("scoring/sales/batches/run-1.json")
    assert DropBatch.from_json(text) == big
    small = DropBatch.of(many[:3])
    assert params_json(small, storage, "unused.json") == small.to_json()
    assert not storage.exists("unused.json")


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
    take, cur2 = plan_tick([*old, a, late], cur, cfg)
    assert take == [] and len(cur2.dump()) < 500


def test_plan_tick_takes_a_drop_once_it_settles_and_never_a_temporary_name():
    """A young blob is taken once a second listing finds the same etag and size; one older than
    ``settle_s`` at once; temporary names never, however old."""
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    cfg = BlobDropConfig(prefix="in/", settle_s=60)
    old = now - timedelta(minutes=5)
    temporary = [
        BlobInfo(n, 9, "t", old)
        for n in ("in/.tmp-a.parquet", "in/_b.parquet", "in/c.parquet.partial", "in/~d.csv")
    ]
    copying = BlobInfo("in/e.parquet._COPYING_", 9, "t", old)
    settled = BlobInfo("in/old.parquet", 9, "o", old)
    growing = BlobInfo("in/new.parquet", 100, "g1", now - timedelta(seconds=1))
    take, cur = plan_tick([*temporary, copying, settled, growing], Cursor(), cfg, now)
    assert take == [settled] and set(cur.pending) == {"in/new.parquet"}
    later = now + timedelta(seconds=30)  # still being written: bigger, another etag
    grown = BlobInfo("in/new.parquet", 200, "g2", later - timedelta(seconds=1))
    take, cur = plan_tick([settled, grown], Cursor.parse(cur.dump()), cfg, later)
    assert take == []
    take, cur = plan_tick([settled, grown], cur, cfg, later + timedelta(seconds=30))
    assert take == [grown] and not cur.pending
    assert plan_tick([settled, grown], cur, cfg, later + timedelta(seconds=60))[0] == []
    with pytest.raises(ValueError, match="settle_s"):
        BlobDropConfig(prefix="in/", settle_s=900, lag_s=600)


def test_a_drop_copied_in_place_is_scored_once_complete(env, data):
    """A plain ``cp`` into the inbox: the sensor never takes the half-written file; it takes
    the complete one once two listings agree, and it scores every row."""
    storage = env["storage"]
    instance = dg.DagsterInstance.ephemeral()
    asset, job = _job_parts()
    sensor = make_blob_drop_sensor(job, scoring_partitions(SALES), BlobDropConfig(prefix=INBOX))
    body = _parquet(data[1])
    path = storage.local_path(f"{INBOX}cp/drop.parquet")
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.write(body[: len(body) // 2])
        f.flush()
        requests, cursor = _tick(sensor, instance, env, None)
        assert requests == []  # half a file
        f.write(body[len(body) // 2 :])
    requests, cursor = _tick(sensor, instance, env, cursor)
    assert requests == []  # changed since the last listing: not settled yet
    requests, cursor = _tick(sensor, instance, env, cursor)
    (request,) = requests
    assert request.run_key == storage.info(f"{INBOX}cp/drop.parquet").version_key
    result = _run(asset, instance, env, request)
    (md,) = _materializations(result).values()
    assert md["status"].value == "scored" and md["rows_scored"].value == data[1].num_rows
    assert _tick(sensor, instance, env, cursor)[0] == []


def test_mlops_land_writes_each_drop_atomically(env, data, tmp_path, monkeypatch):
    from mlops_assets.cli import main

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_PROFILE", "local")
    files = []
    for i in range(2):
        files.append(tmp_path / f"week_{i}.parquet")
        files[-1].write_bytes(_parquet(data[1].slice(i, 5)))
    assert main(["land", *map(str, files), "--under", "2026/11/21"]) == 0
    storage = LocalStorage(root=str(tmp_path / "home" / "storage"))
    landed = storage.list(INBOX)
    assert [b.name for b in landed] == [f"{INBOX}2026/11/21/week_{i}.parquet" for i in range(2)]
    assert [storage.read_bytes(b.name) for b in landed] == [f.read_bytes() for f in files]
    assert not [p for p in (tmp_path / "home").rglob(".tmp-*")]
    assert main(["land", str(tmp_path / "missing.parquet")]) == 2


@pytest.mark.azurite
def test_sensor_on_azurite_etag_versions(blob_storage, env, data):
    instance = dg.DagsterInstance.ephemeral()
    _, job = _job_parts()
    sensor = make_blob_drop_sensor(job, scoring_partitions(SALES), BlobDropConfig(prefix=INBOX))
    res = {"storage": blob_storage}
    body = _parquet(data[1].slice(0, 3))
    for i in range(30):
        blob_storage.write_bytes(f"{INBOX}x/{i:03d}.parquet", body)
    blob_storage.write_bytes(f"{INBOX}x/.tmp-upload.parquet", body)  # temporary names: never
    blob_storage.write_bytes(f"{INBOX}x/031.parquet._COPYING_", body)
    requests, cursor = _settled_tick(sensor, instance, res, None)
    assert len({r.run_key for r in requests}) == 30
    assert _tick(sensor, instance, res, cursor)[0] == []
    info = blob_storage.write_bytes(f"{INBOX}x/007.parquet", body + b"")
    requests, cursor = _settled_tick(sensor, instance, res, cursor)
    assert [r.run_key for r in requests] == [info.version_key]


def _score_once(env, storage, table: pa.Table, name: str, row_group_size: int, **kw):
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    info = storage.write_bytes(f"{INBOX}{name}", buf.getvalue())
    key = f"{name}@{info.etag}"
    summary = run_instance(_drop_job(env, storage, info, key), **kw)
    out = pq.read_table(storage.local_path(layout.predictions_name("sales", key)))
    rejected = pq.read_table(storage.local_path(summary.quarantine)) if summary.quarantine else None
    return summary, decode_dictionaries(out), rejected


def test_a_large_grouped_drop_scored_in_pieces_equals_scoring_it_whole(env, data, tmp_path):
    """Pieces of whole series (a series split across Parquet batches waits for the next
    piece): the same predictions, errors, counts and quarantined rows as the whole-file path."""
    storage = LocalStorage(root=str(tmp_path / "storage"))
    new = decode_dictionaries(data[1])
    bad_price = new.slice(5, 1).set_column(4, "price", pa.array([-1.0]))
    unknown = new.slice(0, 3).set_column(0, "store", pa.array(["S999"] * 3))
    drop = pa.concat_tables(
        [new.slice(0, 5), bad_price, new.slice(5, 1), new.slice(5), unknown]
    )  # a quarantined row, a duplicate (series, week), an unknown series; grouped by series
    assert stream_source("d.parquet", _bytes(drop, 7), SALES, min_rows=1) is not None
    whole = _score_once(env, storage, drop, "whole.parquet", 7, stream_min_rows=10**9)
    parts = _score_once(env, storage, drop, "parts.parquet", 7, stream_min_rows=1, piece_rows=16)
    s_whole, s_parts = whole[0], parts[0]
    for f in ("rows_in", "rows_scored", "rows_failed", "rows_unknown_series", "series"):
        assert getattr(s_parts, f) == getattr(s_whole, f), f
    assert s_parts.unknown_series == s_whole.unknown_series == 1
    assert s_parts.errors == s_whole.errors and s_whole.errors["duplicate_row"] == 2
    assert s_parts.rows_quarantined == s_whole.rows_quarantined == 1
    assert parts[1].equals(whole[1]) and parts[2].equals(whole[2])


_WRITE_LIMITED = """
import json, pickle, resource, signal, sys
from mlops_assets.jobs.score_drops import run_instance

job = pickle.loads(sys.stdin.buffer.read())
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
lines, raised = [], None
try:
    run_instance(job, log=lines.append, stream_min_rows=1, piece_rows=16)
except Exception as e:
    raised = [type(e).__name__, str(e)]
print(json.dumps({"raised": raised, "log": lines}))
"""


def test_predictions_that_cannot_be_written_fail_the_drop_and_leave_the_last_output(
    env, data, tmp_path
):
    """Scoring in pieces streams the predictions to storage. A write that fails there (here a
    4 KB file size limit: EFBIG, as a full disk gives ENOSPC) fails the drop with what to do;
    the drop is not scored again whole, and the output of an earlier run of the same drop
    stays as it was, with no temp file left."""
    storage = LocalStorage(root=str(tmp_path / "storage"))
    drop = decode_dictionaries(data[1]).sort_by([(k, "ascending") for k in SALES.series_keys])
    assert stream_source("d.parquet", _bytes(drop, 7), SALES, min_rows=1) is not None
    info = storage.write_bytes(f"{INBOX}big.parquet", _bytes(drop, 7))
    key = f"big.parquet@{info.etag}"
    job = _drop_job(env, storage, info, key)
    name = layout.predictions_name("sales", key)
    earlier = storage.write_bytes(name, b"an earlier run's predictions")
    proc = subprocess.run(
        [sys.executable, "-c", _WRITE_LIMITED],
        input=pickle.dumps(job),
        capture_output=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().splitlines()[-1])
    kind, error = out["raised"]
    assert kind == "OutputFailed" and error.startswith("writing the predictions failed"), out
    assert "File too large" in error or "file size limit reached" in error, error
    assert not any("scoring the drop whole" in line for line in out["log"]), out["log"]
    assert storage.info(name) == earlier
    assert not [p for p in Path(storage.root).rglob(".tmp-*")]


@pytest.mark.azurite
def test_a_drop_in_blob_storage_scored_in_pieces_streams_its_predictions_as_blocks(
    env, data, tmp_path, azurite, blob_storage, monkeypatch
):
    """On Blob storage the pieces' predictions go up as staged blocks committed at the end
    (1 KiB blocks here, so several): the same predictions as a whole-file scoring of the
    same drop on local files, and no uncommitted block left on the blob."""
    import mlops_assets.storage.azure as azure_storage
    from mlops_assets.storage import CONNECTION_STRING_ENV

    monkeypatch.setattr(azure_storage, "BLOCK_BYTES", 1024)
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    drop = decode_dictionaries(data[1]).sort_by([(k, "ascending") for k in SALES.series_keys])
    local = LocalStorage(root=str(tmp_path / "storage"))
    whole = _score_once(env, local, drop, "d.parquet", 7, stream_min_rows=10**9)
    info = blob_storage.write_bytes(f"{INBOX}d.parquet", _bytes(drop, 7))
    key = f"d.parquet@{info.etag}"
    summary = run_instance(
        _drop_job(env, blob_storage, info, key), stream_min_rows=1, piece_rows=16
    )
    assert summary.status == "scored" and summary.rows_scored == whole[0].rows_scored
    name = layout.predictions_name("sales", key)
    pieces = decode_dictionaries(pq.read_table(io.BytesIO(blob_storage.read_bytes(name))))
    assert pieces.equals(whole[1])
    blob = blob_storage._container().get_blob_client(name)  # noqa: SLF001 - raw SDK
    committed, uncommitted = blob.get_block_list("all")
    assert len(committed) > 1 and not uncommitted


def test_an_ungrouped_drop_is_found_out_in_pieces_and_scored_whole(env, data, tmp_path):
    """Whether a large drop's series come together is checked as its pieces are read (no pass
    over the whole drop first). A drop whose rows are interleaved (found in its first piece),
    or with one series' rows in two places far apart (found in its last piece), is scored
    whole instead: the same predictions as the whole-file path, and the log says why."""
    storage = LocalStorage(root=str(tmp_path / "storage"))
    new = decode_dictionaries(data[1])
    n = new.num_rows
    interleaved = new.take(pa.array(list(range(0, n, 2)) + list(range(1, n, 2))))
    split = pa.concat_tables([new.slice(3), new.slice(0, 3)])  # series 1's first weeks last
    first = new.slice(0, 1).to_pylist()[0]
    for name, drop in (("interleaved", interleaved), ("split", split)):
        assert stream_source("d.parquet", _bytes(drop, 7), SALES, min_rows=1) is not None
        whole = _score_once(env, storage, drop, f"{name}-w.parquet", 7, stream_min_rows=10**9)
        lines: list[str] = []
        parts = _score_once(
            env,
            storage,
            drop,
            f"{name}-p.parquet",
            7,
            stream_min_rows=1,
            piece_rows=16,
            log=lines.append,
        )
        stopped = [line for line in lines if "scoring in pieces stopped" in line]
        assert len(stopped) == 1 and "not grouped by series" in stopped[0], lines
        assert "sort it by store, product" in stopped[0]
        if name == "split":
            assert f"'store': '{first['store']}', 'product': '{first['product']}'" in stopped[0]
        assert parts[0].rows_scored == whole[0].rows_scored == n
        assert parts[1].equals(whole[1])
    assert stream_source("d.csv", b"store,product\n", SALES, min_rows=1) is None


def _bytes(table: pa.Table, row_group_size: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


def _prod(tmp_path, spec, history: pa.Table, folder: str = "models/v1") -> dict:
    """A prod storage and registry of their own, with ``folder`` registered as production."""
    prod_storage = LocalStorage(root=str(tmp_path / "prod"))
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{tmp_path}/prod.db", alias="production")
    publish_model_set(prod_storage, spec, history, folder)
    register_production(registry, spec, prod_storage, folder)
    return {
        "storage": LocalStorage(root=str(tmp_path / "storage")),
        "prod_storage": prod_storage,
        "prod_registry": registry,
        "batch_compute": LocalBatchCompute(),
    }


def _score_drop_through_the_asset(spec, res: dict, table: pa.Table):
    """Land ``table`` as one drop of ``spec`` and run the batch scoring asset on it."""
    info = res["storage"].write_bytes(f"{layout.inbox_prefix(spec.name)}d.parquet", _parquet(table))
    key = f"d.parquet@{info.etag}"
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(scoring_partitions(spec).name, [key])
    result = dg.materialize(
        [build_batch_scoring_asset(spec)],
        partition_key=key,
        instance=instance,
        resources=res,
        raise_on_error=False,
    )
    return result, key


def test_a_spec_from_a_path_is_batch_scored(data, tmp_path):
    """A dataset added from a spec YAML (no bundled spec of that name): the spec travels as
    JSON to the Pipes job, which scores the drop with it."""
    import yaml

    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump({**SALES.model_dump(mode="json"), "name": "shop"}))
    shop = load_spec(str(path))
    assert shop.name == "shop"
    with pytest.raises(FileNotFoundError):
        load_spec("shop")  # not a bundled name: only its JSON can tell the job about it
    res = _prod(tmp_path, shop, data[0])
    result, key = _score_drop_through_the_asset(shop, res, data[1])
    assert result.success
    out = pq.read_table(res["storage"].local_path(layout.predictions_name("shop", key)))
    assert out.num_rows == data[1].num_rows and out["prediction"].null_count == 0
    (md,) = [m.metadata for m in result.asset_materializations_for_node("shop__batch_predictions")]
    assert md["rows_scored"].value == data[1].num_rows and md["model_version"].value == "1"


def test_a_model_set_with_a_wrong_manifest_digest_is_refused(data, tmp_path):
    res = _prod(tmp_path, SALES, data[0])
    manifest = "models/v1/" + modelset.MANIFEST
    prod = res["prod_storage"]
    prod.write_bytes(manifest, prod.read_bytes(manifest) + b"\n")  # edited after registration
    result, key = _score_drop_through_the_asset(SALES, res, data[1])
    assert not result.success
    message, metadata = _failure(result)
    assert "1 of 1 drop(s) not scored" in message and key in message
    assert "ModelIntegrityError" in message and "manifest" in message
    assert metadata["per_drop"].value[key]["status"] == "failed"
    assert not res["storage"].exists(layout.predictions_name("sales", key))


def test_a_tampered_model_fails_only_its_series_loudly(data, tmp_path):
    """One model's bytes changed in its pack: its series' rows get ``model_integrity`` (the
    message names the series and the artifact), the other series are scored, and the run fails
    with the drop ``failed`` and its counts in the metadata."""
    res = _prod(tmp_path, SALES, data[0])
    prod = res["prod_storage"]
    entries = modelset.read_manifest(prod.read_bytes("models/v1/" + modelset.MANIFEST))
    first = entries.slice(0, 1).to_pylist()[0]  # one series' model bytes changed in its pack
    pack = bytearray(prod.read_bytes(first["artifact"]))
    pack[first["offset"] + first["length"] // 2] ^= 0xFF
    prod.write_bytes(first["artifact"], bytes(pack))
    result, key = _score_drop_through_the_asset(SALES, res, data[1])
    assert not result.success
    message, metadata = _failure(result)
    assert key in message and "ModelIntegrityError" in message and "model_integrity" in message
    assert first["artifact"] in message and repr(first["series_id"]) in message
    per_drop = metadata["per_drop"].value[key]
    assert per_drop["status"] == "failed" and per_drop["predictions"]
    out = decode_dictionaries(
        pq.read_table(res["storage"].local_path(layout.predictions_name("sales", key)))
    )
    bad = pc.equal(out["series_id"], first["series_id"])
    assert set(out.filter(bad)["error"].to_pylist()) == {"model_integrity"}
    assert all(first["artifact"] in m for m in out.filter(bad)["message"].to_pylist())
    good = out.filter(pc.invert(bad))
    assert good.num_rows > 0 and good["prediction"].null_count == 0
    assert per_drop["row_errors"] == {"model_integrity": out.num_rows - good.num_rows}
    assert per_drop["rows_scored"] == good.num_rows


def test_a_drop_scored_with_intervals_carries_their_bounds(data, tmp_path):
    """A set trained with intervals and a fallback chain (one series too short for ridge falls
    back to naive): the drop's predictions carry each level's bounds around the prediction."""
    zoo = DatasetSpec.model_validate(
        {
            **SALES_JSON,
            "name": "zoo",
            "intervals": {"levels": [80, 95]},
            "fallback": ["seasonal_naive", "naive"],
        }
    )
    hist, new = data
    weeks = sorted(set(hist[SALES.time].to_pylist()))
    short = pc.and_(pc.equal(hist["product"], "P005"), pc.less(hist[SALES.time], weeks[-14]))
    res = _prod(tmp_path, zoo, hist.filter(pc.invert(short)))
    manifest = modelset.read_manifest(
        res["prod_storage"].read_bytes("models/v1/" + modelset.MANIFEST)
    )
    assert "naive" in manifest["family"].to_pylist()
    result, key = _score_drop_through_the_asset(zoo, res, new)
    assert result.success
    out = pq.read_table(res["storage"].local_path(layout.predictions_name("zoo", key)))
    bounds = [f"prediction_{side}_{level}" for level in (80, 95) for side in ("lower", "upper")]
    assert set(bounds) <= set(out.column_names)
    assert out.num_rows == new.num_rows and out["prediction"].null_count == 0
    assert out["prediction_lower_80"].null_count == 0
    p, lo, hi = (
        out[c].to_numpy() for c in ("prediction", "prediction_lower_80", "prediction_upper_80")
    )
    assert (lo <= p).all() and (p <= hi).all() and (lo >= 0).all()
