"""The AML entry script under the real inference server (``azmlinfsrv``) on a local port.

One server per module serves a small trained model set through a pointer file (API keys, small
body cap, fast poll, data collection on); a second one serves a synthetic 10,000-model set with a
small cache. Each is started as a subprocess on a free 127.0.0.1 port and stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mlops_assets.domain.model_sets import open_reader, pointer_name, write_pointer
from mlops_assets.domain.training_run import run_table
from mlops_assets.ml import scoring
from mlops_assets.ml.engines import train_local
from mlops_assets.ml.sample_data import SalesShape, sales_table
from mlops_assets.ml.spec import DatasetSpec, load_spec
from mlops_assets.serving.collector import read_collected
from mlops_assets.serving.local import LocalServer
from mlops_assets.serving.service import ServingSettings
from mlops_assets.serving.synthetic import (
    model_set_ref,
    real_model_set,
    request_rows,
    synthetic_model_set,
    write_model_set,
)
from mlops_assets.storage import LocalStorage

pytestmark = pytest.mark.integration

SPEC = load_spec("sales")
KEYS = ["secret-primary", "secret-secondary"]
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
V1, V2 = "models/sales/set-v1", "models/sales/set-v2"
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    m1, _ = real_model_set(root, V1, SPEC, n_series=20, version="train-1")
    synthetic_model_set(root, V2, SPEC, n_series=20, version="train-2", seed=7)
    point(root, V1, "1")
    settings = ServingSettings(
        root=str(root),
        api_keys=KEYS,
        max_body_bytes=MAX_BODY,
        max_records=200,
        poll_s=0.2,
        collect_rate=1.0,
    )
    # One worker: each worker swaps on its own poll, so with several a client may get the new
    # set from one and the old from another for up to a poll interval; "never back to the old
    # set" (the hot-swap test) is a per-worker property. Several workers: test_serving_hardening.
    server = LocalServer(settings, workers=1, log_path=root / "server.log").start()
    try:
        yield server, root, m1
    finally:
        server.stop()


def point(root: Path, folder: str, label: str) -> None:
    """Point the production pointer at the set in ``root/folder``, served as version ``label``."""
    ref = model_set_ref(root, folder)
    ref = ref.registered(int(label)) if label.isdigit() else replace(ref, version=label)
    write_pointer(LocalStorage(root), pointer_name("sales", "production"), ref)


def _direct(root: Path, folder: str, version: str, records: list[dict]):
    reader = open_reader(
        LocalStorage(root),
        model_set_ref(root, folder),
        max_models=100,
        max_bytes=1 << 30,
        label=version,
    )
    return scoring.score(records, SPEC, reader.model_for)


def test_predictions_for_many_series_equal_direct_scoring(served):
    server, root, manifest = served
    sids = manifest["series_id"].to_pylist()
    # One period ahead for most series (the fast path), three periods for a few (recursive).
    records = request_rows(SPEC, manifest, sids[:12]) + request_rows(
        SPEC, manifest, sids[12:15], periods=3
    )
    status, body = server.score(records)
    assert status == 200, body
    assert body["model_set_version"] == "1"
    assert body["n_errors"] == 0
    got = body["predictions"]
    want = _direct(root, V1, "1", records)
    assert [g["series_id"] for g in got] == want["series_id"].tolist()
    assert [g["time"] for g in got] == want["time"].tolist()
    assert [g["model_version"] for g in got] == want["model_version"].tolist() == ["train-1"] * 21
    np.testing.assert_allclose(
        [g["prediction"] for g in got], want["prediction"].to_numpy(float), rtol=1e-12
    )


def test_a_worker_runs_its_native_thread_pools_on_one_thread(served):
    """A request is a few rows: waking a BLAS pool's idle threads costs more than the work, so a
    worker bounds its pools to MLOPS_SERVING_COMPUTE_THREADS (default 1; docs/serving.md)."""
    server, _, _ = served
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: the libraries' own default is one thread already")
    pools = server.info()["compute_threads"]
    assert any(name.startswith("blas:") for name in pools), pools
    assert set(pools.values()) == {1}, pools


def test_unknown_series_is_a_per_record_error(served):
    server, _, manifest = served
    good = request_rows(SPEC, manifest, manifest["series_id"].to_pylist()[:2])
    unknown = {**good[0], "store": "S9999"}
    status, body = server.score([good[0], unknown, good[1]])
    assert status == 200
    errors = [p["error"] for p in body["predictions"]]
    assert errors == [None, scoring.UNKNOWN_SERIES, None]
    assert "S9999" in body["predictions"][1]["message"]
    status, body = server.score([unknown])
    assert status == 404 and body["predictions"][0]["error"] == scoring.UNKNOWN_SERIES


def test_missing_feature_and_bad_records(served):
    server, _, manifest = served
    good = request_rows(SPEC, manifest, manifest["series_id"].to_pylist()[:3])
    no_price = {k: v for k, v in good[0].items() if k != "price"}
    bad_price = {**good[1], "price": "cheap"}
    status, body = server.score([no_price, bad_price, good[2], "not a record"])
    assert status == 200
    assert [p["error"] for p in body["predictions"]] == [
        scoring.MISSING_FEATURE,
        scoring.MISSING_FEATURE,
        None,
        "bad_record",
    ]
    # JSON mixes types in a column; with records that take the general path (several periods
    # of one series) too: still per-record errors, never a failed request.
    sids = manifest["series_id"].to_pylist()
    mixed = [
        *request_rows(SPEC, manifest, sids[3:4], periods=2),
        {**good[1], "price": "cheap"},
        {**good[2], "store": 5},
        {**good[0], "promo": True, "price": "9.5"},
    ]
    status, body = server.score(mixed)
    assert status == 200, body
    assert [p["error"] for p in body["predictions"]] == [
        None,
        None,
        scoring.MISSING_FEATURE,
        scoring.UNKNOWN_SERIES,
        None,
    ]
    # A column no record has: the request as a whole is unusable.
    status, body = server.score([{k: v for k, v in r.items() if k != "promo"} for r in good])
    assert status == 422 and "promo" in body["message"]


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"\xff\xfe garbage", b"", b'{"rows": []}', b'{"data": []}', b'"text"'],
)
def test_malformed_body_is_400(served, payload):
    server, _, _ = served
    status, body = server.request("POST", "/score", payload, AUTH)
    assert status == 400, body
    assert json.loads(body)["error"] in ("malformed_json", "bad_request")


def test_oversized_body_is_413(served):
    server, _, manifest = served
    sid = manifest["series_id"].to_pylist()[0]
    record = request_rows(SPEC, manifest, [sid])[0]
    big = json.dumps({"data": [{**record, "pad": "x" * 1000}] * 100}).encode()
    assert len(big) > MAX_BODY
    status, body = server.request("POST", "/score", big, AUTH)
    assert status == 413 and json.loads(body)["error"] == "payload_too_large"
    # Under the byte cap but over the record cap.
    status, body = server.score([record] * 201)
    assert status == 413 and body["error"] == "too_many_records"
    # At the caps: accepted (duplicates are per-record errors, not a failure).
    status, body = server.score(request_rows(SPEC, manifest, [sid]) * 2)
    assert status == 422 and {p["error"] for p in body["predictions"]} == {scoring.DUPLICATE}
    # The server is still healthy afterwards.
    assert server.request("GET", "/")[0] == 200


def test_auth_required_accepted_refused(served):
    server, _, manifest = served
    body = json.dumps({"data": request_rows(SPEC, manifest, manifest["series_id"][:1].to_pylist())})
    cases = [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": KEYS[0]}, 401),  # not a bearer token
        ({"x-api-key": "secret-primar"}, 401),
        ({"Authorization": f"Bearer {KEYS[0]}"}, 200),
        ({"Authorization": f"Bearer {KEYS[1]}"}, 200),  # the secondary key (rotation)
        ({"x-api-key": KEYS[1]}, 200),
    ]
    for headers, want in cases:
        conn_headers = (
            {"Authorization": ""} | headers if "Authorization" not in headers else headers
        )
        status, raw = server.request("POST", "/score", body.encode(), conn_headers)
        assert status == want, (headers, raw)
        if want == 401:
            assert json.loads(raw)["error"] == "unauthorized"
    assert server.request("GET", "/score", headers={"Authorization": ""})[0] == 401
    assert server.request("GET", "/", headers={"Authorization": ""})[0] == 200  # liveness


def test_hot_swap_under_concurrent_load(served):
    server, root, manifest = served
    records = request_rows(SPEC, manifest, manifest["series_id"].to_pylist()[:5])
    payload = json.dumps({"data": records}).encode()
    failures: list = []
    seen: list[list[str]] = [[] for _ in range(4)]
    stop = threading.Event()

    def client(k: int) -> None:
        while not stop.is_set():
            try:
                status, raw = server.request("POST", "/score", payload, AUTH, timeout=10)
                body = json.loads(raw)
                if status != 200 or body["n_errors"]:
                    failures.append((status, raw[:300]))
                else:
                    seen[k].append(body["model_set_version"])
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        point(root, V2, "2")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(s and s[-1] == "2" for s in seen):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    for s in seen:
        assert s[0] == "1" and s[-1] == "2", s[:3] + s[-3:]
        first_new = s.index("2")
        assert set(s[first_new:]) == {"2"}  # never back to the old set
    assert sum(len(s) for s in seen) > 20
    info = server.info()
    assert info["model_set_version"] == "2" and info["swaps"] >= 1
    # The answers now come from the new set.
    status, body = server.score(records)
    assert status == 200, body
    want = _direct(root, V2, "2", records)
    np.testing.assert_allclose(
        [p["prediction"] for p in body["predictions"]], want["prediction"].to_numpy(float)
    )
    # A broken set named by the pointer is refused; the server keeps serving the last good one.
    broken = replace(model_set_ref(root, V1).registered(3), manifest_sha256="0" * 64)
    write_pointer(LocalStorage(root), pointer_name("sales", "production"), broken)
    time.sleep(1.0)
    info = server.info()
    assert info["model_set_version"] == "2" and "sha256" in (info["last_error"] or "")
    assert server.score(records)[0] == 200
    point(root, V1, "1")
    deadline = time.monotonic() + 10
    while server.info()["model_set_version"] != "1" and time.monotonic() < deadline:
        time.sleep(0.1)


def test_inference_data_is_collected(served):
    server, root, manifest = served
    records = request_rows(SPEC, manifest, manifest["series_id"].to_pylist()[:3])
    server.score(records, headers={"x-request-id": "collect-me"})
    deadline = time.monotonic() + 10
    table = read_collected(root, "sales")
    while time.monotonic() < deadline:
        table = read_collected(root, "sales")
        if table.num_rows and "collect-me" in table["request_id"].to_pylist():
            break
        time.sleep(0.2)
    rows = [r for r in table.to_pylist() if r["request_id"] == "collect-me"]
    assert len(rows) == 3
    assert all(r["prediction"] is not None and r["store"] for r in rows)
    # What production monitoring joins actuals on: the set's run, the series' family and
    # history end, as the manifest has them.
    by_id = {r["series_id"]: r for r in manifest.to_pylist()}
    for r in rows:
        assert r["model_set_run"] and r["history_end"] == by_id[r["series_id"]]["history_end"]
        assert r["family"] == by_id[r["series_id"]].get("family")


def test_tampered_model_set_is_refused_at_start(tmp_path):
    root = tmp_path
    real_model_set(root, V1, SPEC, n_series=3, version="t")
    pack = next((root / V1).glob("pack-*.bin"))
    data = bytearray(pack.read_bytes())
    data[-5] ^= 0xFF
    pack.write_bytes(bytes(data))
    point(root, V1, "1")
    server = LocalServer(ServingSettings(root=str(root), poll_s=0), log_path=root / "log.txt")
    with pytest.raises(RuntimeError, match="exited"):
        server.start(timeout=60)
    assert "sha256" in (root / "log.txt").read_text()


def test_model_failing_its_hash_at_load_is_a_per_record_error(tmp_path):
    from mlops_assets.serving.service import ScoringService

    manifest, _ = real_model_set(tmp_path, V1, SPEC, n_series=3, version="t")
    pack = next((tmp_path / V1).glob("pack-*.bin"))
    data = bytearray(pack.read_bytes())
    data[-5] ^= 0xFF  # the last series' model
    pack.write_bytes(bytes(data))
    point(tmp_path, V1, "1")
    service = ScoringService(ServingSettings(root=str(tmp_path), poll_s=0, verify_all=False))
    service.start()
    records = request_rows(SPEC, manifest, manifest["series_id"].to_pylist())
    reply = service.handle("POST", {}, json.dumps({"data": records}).encode())
    assert reply.status == 200
    errors = [p["error"] for p in reply.payload["predictions"]]
    assert errors == [None, None, scoring.NO_MODEL]


def test_azureml_model_dir_source(tmp_path, monkeypatch):
    """On AKS the registered model folder is mounted at AZUREML_MODEL_DIR (one level down)."""
    from mlops_assets.serving.service import ScoringService

    manifest, _ = real_model_set(tmp_path / "store", V1, SPEC, n_series=4, version="t")
    model_dir = tmp_path / "azureml-models" / "sales-models" / "7"
    shutil.copytree(tmp_path / "store" / V1, model_dir / "set-v1")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("MLOPS_SERVING_VERSION", "7")
    service = ScoringService(ServingSettings.from_env()).start()
    assert service.info()["source"].startswith("model_dir:")
    records = request_rows(SPEC, manifest, manifest["series_id"].to_pylist())
    reply = service.handle("POST", {}, json.dumps({"data": records}).encode())
    assert reply.status == 200 and reply.payload["model_set_version"] == "7"
    want = _direct(tmp_path / "store", V1, "7", records)
    np.testing.assert_allclose(
        [p["prediction"] for p in reply.payload["predictions"]], want["prediction"].to_numpy(float)
    )


def test_cache_keeps_memory_bounded_with_10k_models(tmp_path):
    root = tmp_path
    manifest = synthetic_model_set(root, "models/sales/big", SPEC, n_series=10_000)
    shutil.copy(root / "models/sales/big/manifest.parquet", root / "manifest-copy.parquet")
    point(root, "models/sales/big", "big")
    settings = ServingSettings(root=str(root), cache_models=300, poll_s=0, max_records=1000)
    # One worker: GET /score reports that worker's cache, which must see every request.
    with LocalServer(settings, workers=1, log_path=root / "server.log") as server:
        before = server.info()
        sids = manifest["series_id"].to_pylist()
        for a in range(0, len(sids), 500):
            status, body = server.score(request_rows(SPEC, manifest, sids[a : a + 500]))
            assert status == 200 and body["n_errors"] == 0
        info = server.info()
    cache = info["cache"]
    assert cache["models"] <= 300
    assert cache["misses"] == 10_000 and cache["evictions"] == 10_000 - cache["models"]
    # 10,000 models passed through; resident memory grew by far less than holding them all.
    assert info["rss_bytes"] - before["rss_bytes"] < 64 << 20, (before, info)


def test_release_sensor_and_deploy_job_switch_the_local_endpoint(tmp_path):
    import dagster as dg

    from mlops_assets.assets.deployment import (
        build_deployment_assets,
        deploy_job_name,
        deploy_run_config,
        deployment_key,
        qa_key,
    )
    from mlops_assets.ml import persistence
    from mlops_assets.storage import LocalStorage
    from resources.endpoints import LocalEndpoint
    from resources.registry import MlflowRegistry
    from sensors.release import make_release_sensor

    root = tmp_path / "prod"
    real_model_set(root, V1, SPEC, n_series=10, version="train-1")
    synthetic_model_set(root, V2, SPEC, n_series=50, version="train-2", seed=3)
    storage = LocalStorage(root=str(root))
    uri = f"sqlite:///{tmp_path / 'prod.db'}"
    registry = MlflowRegistry(tracking_uri=uri, registry_uri=uri, alias="production")
    versions = []
    for folder in (V1, V2):
        sha = persistence.sha256((root / folder / "manifest.parquet").read_bytes())
        versions.append(
            registry.register_model_set(
                "sales-models", storage.uri(folder), {"folder": folder, "manifest_sha256": sha}
            )
        )
    registry.set_alias("sales-models", "production", versions[0].version)
    v1, v2 = (str(v.version) for v in versions)
    point(root, V1, v1)

    assets = build_deployment_assets(SPEC)
    job = dg.define_asset_job(deploy_job_name(SPEC), selection=dg.AssetSelection.assets(*assets))
    sensor = make_release_sensor(
        job, "sales-models", run_config=lambda v: deploy_run_config(SPEC, v)
    )
    # The sensor: a new version launches one run keyed by it; the same version again does not.
    ctx = dg.build_sensor_context(resources={"prod_registry": registry})
    req = sensor(ctx)
    assert isinstance(req, dg.RunRequest) and req.run_key.endswith(f"v{v1}")
    assert ctx.cursor == v1
    assert isinstance(
        sensor(dg.build_sensor_context(cursor=v1, resources={"prod_registry": registry})),
        dg.SkipReason,
    )
    registry.set_alias("sales-models", "production", int(v2))
    ctx = dg.build_sensor_context(cursor=v1, resources={"prod_registry": registry})
    req = sensor(ctx)
    assert req.run_key.endswith(f"v{v2}") and ctx.cursor == v2
    assert req.run_config == deploy_run_config(SPEC, v2)

    settings = ServingSettings(root=str(root), poll_s=0.2)
    with LocalServer(settings, log_path=tmp_path / "endpoint.log") as endpoint:
        assert endpoint.info()["model_set_version"] == v1
        defs = dg.Definitions(
            assets=assets,
            jobs=[job],
            resources={
                "prod_storage": storage,
                "prod_registry": registry,
                "endpoint": LocalEndpoint(root=str(root), url=endpoint.url),
            },
        )
        config = deploy_run_config(SPEC, v2)
        qa_op = qa_key(SPEC).to_python_identifier()
        config["ops"][qa_op]["config"].update({"concurrency": [1, 2], "seconds_per_level": 1.0})
        result = defs.resolve_job_def(deploy_job_name(SPEC)).execute_in_process(
            run_config=config, instance=dg.DagsterInstance.ephemeral()
        )
        assert result.success
        assert endpoint.info()["model_set_version"] == v2
    qa = result.asset_materializations_for_node(qa_op)[0].metadata
    assert all(c["passed"] for c in qa["smoke"].value.values())
    assert qa["recommended_instance_count"].value >= 3
    assert [p["errors"] for p in qa["load_profile"].value] == [0, 0]
    dep = result.asset_materializations_for_node(deployment_key(SPEC).to_python_identifier())[0]
    assert dep.metadata["report"].value["switched"] is True
    assert dep.metadata["registry_version"].value == int(v2)
    assert dep.metadata["url"].value == f"{endpoint.url}/score"
    assert dep.metadata["served_by"].value.endswith("switch confirmed")


@pytest.mark.parametrize("known", ["sales", "diabetes", "path"])
def test_mlops_serve_dataset_is_a_spec_path_or_a_known_name(tmp_path, monkeypatch, known):
    """``mlops serve --dataset`` takes a bundled name or a spec YAML's path; the server gets
    the spec as JSON (its environment), so a spec outside the package serves too."""
    import yaml

    from mlops_assets.cli import build_parser, serve_settings

    value = known
    if known == "path":
        value = str(tmp_path / "shop.yaml")
        Path(value).write_text(yaml.safe_dump({**SPEC.model_dump(mode="json"), "name": "shop"}))
    want = load_spec(value)
    settings = serve_settings(build_parser().parse_args(["serve", "--dataset", value]), tmp_path)
    assert settings.dataset == want.name
    assert settings.dataset_spec() == want
    for name, env in settings.to_env().items():  # as the server process reads them
        monkeypatch.setenv(name, env)
    served = ServingSettings.from_env()
    assert served.dataset == want.name and served.dataset_spec() == want
    assert pointer_name(served.dataset, served.alias) == f"serving/{want.name}/production.json"


def test_mlops_serve_refuses_an_unknown_dataset(tmp_path, monkeypatch, capsys):
    from mlops_assets.cli import build_parser, serve_settings

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    args = build_parser().parse_args(["serve", "--dataset", "nope"])
    with pytest.raises(FileNotFoundError, match="bundled specs"):
        serve_settings(args, tmp_path)
    assert args.func(args) == 2
    assert "no dataset spec" in capsys.readouterr().err


def _zoo_model_set(root: Path, folder: str) -> tuple[DatasetSpec, pa.Table]:
    """A set trained (``train_local``) with intervals at 80 and 95 and a fallback chain: four
    sales series get ridge, two with 14 weeks of history fall back to naive."""
    spec = DatasetSpec.model_validate(
        {
            **SPEC.model_dump(mode="json"),
            "intervals": {"levels": [80, 95]},
            "fallback": ["seasonal_naive", "naive"],
        }
    )
    full = sales_table(SalesShape(6, 120, seed=4)).to_pandas()
    weeks = np.sort(full.week.unique())
    short = full["product"].isin(["P004", "P005"]) & (full.week < weeks[-14])
    history = pa.Table.from_pandas(full[~short], preserve_index=False)
    results = run_table(train_local(history, spec, max_workers=1), spec)
    results = results.append_column("trained_in", pa.array(["zoo-1"] * results.num_rows))
    return spec, write_model_set(root, folder, results, "zoo-1")


def test_the_server_returns_intervals_and_serves_a_fallback_series(tmp_path):
    spec, manifest = _zoo_model_set(tmp_path, V1)
    cols = manifest.select(["series_id", "family"]).to_pydict()
    families = dict(zip(cols["series_id"], cols["family"], strict=True))
    fallback = [s for s, f in families.items() if f == "naive"]
    ridge = [s for s, f in families.items() if f == "ridge"]
    assert len(fallback) == 2 and len(ridge) == 4, families
    point(tmp_path, V1, "1")
    settings = ServingSettings.for_spec(spec, root=str(tmp_path), poll_s=0)
    server = LocalServer(settings, log_path=tmp_path / "server.log").start()
    try:
        # The next week of the ridge series (the fast path), three weeks of the fallback ones.
        records = request_rows(spec, manifest, ridge) + request_rows(
            spec, manifest, fallback, periods=3
        )
        status, body = server.score(records)
    finally:
        server.stop()
    assert status == 200 and body["n_errors"] == 0, body
    got = body["predictions"]
    ref = model_set_ref(tmp_path, V1)
    reader = open_reader(LocalStorage(tmp_path), ref, max_models=10, max_bytes=1 << 30, label="1")
    want = scoring.score(records, spec, reader.model_for)
    bounds = [f"prediction_{side}_{level}" for level in (80, 95) for side in ("lower", "upper")]
    assert all(set(bounds) <= set(g) for g in got)
    for name in ("prediction", *bounds):
        np.testing.assert_allclose(
            np.array([g[name] for g in got], float), want[name].to_numpy(float), rtol=1e-12
        )
    assert all(g["prediction_lower_80"] <= g["prediction"] <= g["prediction_upper_80"] for g in got)
    # A naive fallback forecasts its last observed week for every week ahead.
    for sid in fallback:
        tail = reader.model_for(sid).tail
        served = [g["prediction"] for g in got if g["series_id"] == sid]
        assert served == [pytest.approx(tail[np.isfinite(tail)][-1])] * 3
