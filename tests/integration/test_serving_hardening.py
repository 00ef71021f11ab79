"""Hostile and broken clients against the real inference server (issue 19, items 1 and 9).

A stalled client holds one connection, never the endpoint: several gunicorn workers, a per-read
body timeout answered 408, and the server's worker timeout closing a request that never finishes
its headers. Authentication comes before the body is read; a key in the query string is refused
and never logged; out-of-range inputs and non-finite predictions are per-record errors.
"""

from __future__ import annotations

import copy
import json
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mlops_assets.domain.model_sets import pointer_name, write_pointer
from mlops_assets.ml import persistence
from mlops_assets.ml.spec import load_spec
from mlops_assets.serving.local import LocalServer, default_workers
from mlops_assets.serving.service import NON_FINITE_PREDICTION, OUT_OF_RANGE, ServingSettings
from mlops_assets.serving.synthetic import (
    model_set_ref,
    request_rows,
    synthetic_model_set,
    train_records,
    write_model_set,
)
from mlops_assets.storage import LocalStorage

pytestmark = pytest.mark.integration

SPEC = load_spec("sales")
FOLDER = "models/sales/set-h"
KEY = f"hardening-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {KEY}"}
WORKER_TIMEOUT_S = 3  # gunicorn --timeout, through azmlinfsrv's WORKER_TIMEOUT
READ_TIMEOUT_S = 1.0  # MLOPS_SERVING_READ_TIMEOUT_S: one body read that gets no bytes
FAST_S = 2.0  # a normal request on this shared machine answers well within this


def point(root: Path, folder: str, version: int) -> None:
    ref = model_set_ref(root, folder).registered(version)
    write_pointer(LocalStorage(root), pointer_name("sales", "production"), ref)


def start(root: Path, **settings) -> LocalServer:
    """A server with the defaults of ``mlops serve`` (workers included) and short timeouts."""
    s = ServingSettings(root=str(root), poll_s=0, read_timeout_s=READ_TIMEOUT_S, **settings)
    env = {"WORKER_TIMEOUT": str(WORKER_TIMEOUT_S), "AZUREML_LOG_LEVEL": "INFO"}
    return LocalServer(s, log_path=root / "server.log", env=env).start()


@pytest.fixture
def model_set(tmp_path):
    manifest = synthetic_model_set(tmp_path, FOLDER, SPEC, n_series=20)
    point(tmp_path, FOLDER, 1)
    return tmp_path, manifest


def raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got, time.monotonic() - t0


def timed_scores(server: LocalServer, records: list[dict], n: int) -> list[float]:
    payload = json.dumps({"data": records}).encode()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, body = server.request("POST", "/score", payload, timeout=30)
        out.append(time.perf_counter() - t0)
        assert status == 200, body[:300]
    return out


def test_serve_runs_several_workers_by_default():
    assert default_workers() >= 2


def test_a_client_stalled_in_its_headers_blocks_nobody_and_is_closed(model_set):
    root, manifest = model_set
    records = request_rows(SPEC, manifest, manifest["series_id"].to_pylist()[:2])
    with start(root) as server:
        timed_scores(server, records, 4)  # warm
        stalled = raw(server.port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Le")
        time.sleep(0.3)  # accepted by a worker, which now waits for the rest
        latencies = timed_scores(server, records, 20)
        assert max(latencies) < FAST_S, latencies
        # The server's worker timeout ends the stalled request: the connection is closed.
        _, closed_after = read_until_closed(stalled, timeout=WORKER_TIMEOUT_S + 20)
        assert closed_after < WORKER_TIMEOUT_S + 15
        assert max(timed_scores(server, records, 5)) < FAST_S  # and the endpoint is fine


def test_a_client_stalled_in_its_body_gets_408_and_blocks_nobody(model_set):
    root, manifest = model_set
    records = request_rows(SPEC, manifest, manifest["series_id"].to_pylist()[:2])
    body = json.dumps({"data": records}).encode()
    with start(root, api_keys=[KEY]) as server:
        timed_scores(server, records, 4)
        head = (
            f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        stalled = raw(server.port, head + body[: len(body) // 2])
        time.sleep(0.2)
        assert max(timed_scores(server, records, 10)) < FAST_S
        reply, closed_after = read_until_closed(stalled, timeout=WORKER_TIMEOUT_S + 20)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"request_timeout" in reply
        assert closed_after < WORKER_TIMEOUT_S  # our read timeout, not the worker's


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed")
    results, _ = train_records(SPEC, 3)
    rows = results.to_pylist()
    # The third series' model predicts +inf (a corrupt but correctly registered model).
    model = copy.deepcopy(persistence.loads(rows[2]["model"]))
    model[-1].intercept_ = float("inf")
    rows[2]["model"] = persistence.dumps(model)
    rows[2]["model_sha256"] = persistence.sha256(rows[2]["model"])
    for r in rows:
        r["trained_in"] = "t"
    manifest = write_model_set(root, FOLDER, pa.Table.from_pylist(rows), "t")
    point(root, FOLDER, 1)
    server = start(root, api_keys=[KEY])
    try:
        yield server, root, manifest
    finally:
        server.stop()


def test_unauthenticated_body_is_refused_before_it_is_read(keyed):
    server, _, _ = keyed
    length = server.settings.max_body_bytes - 1  # a body the server would otherwise read
    head = (
        f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    sock = raw(server.port, head + b"[" + b" " * 4096)  # far less than announced, then waits
    sock.settimeout(5)
    reply = sock.recv(65536)
    assert time.monotonic() - t0 < FAST_S
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    rest, _ = read_until_closed(sock, timeout=10)  # the server closes; the body is never read
    assert b'"error":"unauthorized"' in reply + rest


def test_a_key_in_the_query_string_is_refused_and_never_logged(keyed):
    server, root, manifest = keyed
    records = request_rows(SPEC, manifest, manifest["series_id"].to_pylist()[:1])
    body = json.dumps({"data": records}).encode()
    for path in (f"/score?key={KEY}", f"/score?api_key={KEY}", f"/score?{KEY}"):
        for headers in (AUTH, {"Authorization": ""}):  # with or without a good header key
            status, raw_reply = server.request("POST", path, body, headers)
            assert status == 400, (path, raw_reply[:200])
            reply = json.loads(raw_reply)
            assert reply["error"] == "query_string_refused"
            assert "Authorization" in reply["message"]
    status, _ = server.request("GET", f"/score?key={KEY}")
    assert status == 400
    assert server.request("POST", "/score", body, AUTH)[0] == 200
    time.sleep(0.5)  # the access log is written after the answer
    log = (root / "server.log").read_text()
    assert "POST /score" in log  # the requests are logged ...
    assert KEY not in log  # ... without their query strings


def test_out_of_range_inputs_and_non_finite_predictions_are_per_record_errors(keyed):
    server, _, manifest = keyed
    sids = manifest["series_id"].to_pylist()
    good = request_rows(SPEC, manifest, sids[:2])
    huge = {**good[1], "price": 1e308}
    negative = {**good[1], "price": -5.0}
    status, body = server.score([good[0], huge])
    assert status == 200, body
    rows = body["predictions"]
    assert rows[0]["error"] is None and np.isfinite(rows[0]["prediction"])
    assert rows[1]["error"] == OUT_OF_RANGE and rows[1]["prediction"] is None
    assert "price" in rows[1]["message"]
    status, body = server.score([negative])
    assert status == 422 and body["predictions"][0]["error"] == OUT_OF_RANGE
    # JSON's non-standard Infinity/NaN literals (Python's json accepts them) and numbers beyond
    # a double are not JSON: the whole body is refused, naming the place.
    for literal in ("Infinity", "NaN", "1e400"):
        raw_body = json.dumps({"data": [good[0]]}).replace("9.5", literal).encode()
        assert literal.encode() in raw_body
        status, raw_reply = server.request("POST", "/score", raw_body, AUTH)
        answer = json.loads(raw_reply)
        assert status == 400 and answer["error"] == "malformed_json", answer
        assert "line 1 column" in answer["message"], answer
    # A model that predicts +inf: an error code on its records, fast path and recursive alike
    # (a later period, whose lags would be that prediction, says which feature is unknown).
    inf_series = request_rows(SPEC, manifest, sids[2:3])
    for records in (inf_series, request_rows(SPEC, manifest, sids[2:3], periods=2)):
        status, body = server.score(good[:1] + records)
        assert status == 200, body
        bad = body["predictions"][1:]
        assert bad[0]["error"] == NON_FINITE_PREDICTION, bad
        assert all(r["error"] and r["message"] and r["prediction"] is None for r in bad), bad
        assert body["n_errors"] == len(records)
