"""The scoring endpoint fuzzed under Azure ML's inference server (issue 18, item 4).

Request bodies are drawn from the JSON schema the server itself publishes on ``/swagger.json``
(``from_schema``: the JSON Schema subset that document uses), with known series and valid weeks mixed in so that real scoring runs,
and from hostile shapes outside it: arbitrary JSON, non-finite and huge numbers, nesting far past
the parser's depth, bytes that are not JSON, any content type, any key. Whatever comes in, the
answer is never a 5xx, is JSON with a status the schema documents, and every prediction it
carries is a finite number within the served bound (or null, with an error saying why).

Bounded: a few hundred examples in all, under a minute on a quiet machine; pytest-randomly's seed
reseeds hypothesis, so ``-p randomly --randomly-seed=<seed>`` replays a run.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_assets.domain.model_sets import pointer_name, write_pointer
from mlops_assets.ml.spec import load_spec
from mlops_assets.serving.local import LocalServer
from mlops_assets.serving.service import ServingSettings
from mlops_assets.serving.synthetic import model_set_ref, request_rows, synthetic_model_set
from mlops_assets.storage import LocalStorage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = load_spec("sales")
FOLDER = "models/sales/set-f"
KEY = f"fuzz-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root: Path = tmp_path_factory.mktemp("fuzz")
    manifest = synthetic_model_set(root, FOLDER, SPEC, n_series=12, templates=2)
    ref = model_set_ref(root, FOLDER).registered(1)
    write_pointer(LocalStorage(root), pointer_name("sales", "production"), ref)
    settings_ = ServingSettings(root=str(root), poll_s=0, api_keys=[KEY], max_records=50)
    with LocalServer(settings_, log_path=root / "server.log", workers=2) as srv:
        status, raw = srv.request("GET", "/swagger.json?version=3")
        assert status == 200, raw[:300]
        valid = request_rows(SPEC, manifest, manifest["series_id"].to_pylist(), periods=2)
        yield srv, json.loads(raw), valid


def check_answer(srv: LocalServer, doc: dict, status: int, raw: bytes, n_records: int | None):
    """No 5xx; a JSON answer with a documented status; predictions finite and in bounds."""
    assert status < 500, raw[:500]
    assert str(status) in doc["paths"]["/score"]["post"]["responses"], (status, raw[:300])
    body = json.loads(raw)
    if "predictions" not in body:
        assert body["error"] and body["message"], body
        return
    rows = body["predictions"]
    if n_records is not None:
        assert len(rows) == n_records
    assert body["n_errors"] == sum(r["error"] is not None for r in rows)
    bound = srv.settings.max_abs_value
    for r in rows:
        p = r["prediction"]
        if r["error"] is None:
            assert isinstance(p, float) and math.isfinite(p) and abs(p) <= bound, r
        else:
            assert p is None and r["message"], r


def score(srv: LocalServer, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    return srv.request("POST", "/score", body, {**AUTH, **(headers or {})}, timeout=60)


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values valid under ``schema``: the subset ``serving.openapi`` publishes (objects with
    properties and required, arrays, enums, bounded numbers, dates, strings)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = {k: from_schema(v) for k, v in schema.get("properties", {}).items()}
        required = {k: props.pop(k) for k in schema.get("required", [])}
        return st.fixed_dictionaries(required, optional=props)
    if kind == "array":
        cap = min(schema.get("maxItems", 8), 8)
        return st.lists(
            from_schema(schema["items"]), min_size=schema.get("minItems", 0), max_size=cap
        )
    if kind in ("number", "integer"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if kind == "integer":
            return st.integers(
                None if lo is None else math.ceil(lo), None if hi is None else math.floor(hi)
            )
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if schema.get("format") == "date":
        return st.dates().map(str)
    if schema.get("format") == "date-time":
        return st.datetimes().map(lambda t: t.isoformat())
    assert kind == "string", schema
    return st.text(max_size=20)


@st.composite
def schema_bodies(draw, doc: dict, valid: list[dict]):
    """A body the published schema allows, its records often turned into real series and
    weeks (else nearly all would be unknown series)."""
    schema = doc["components"]["schemas"]["ServiceInput"]
    body = draw(from_schema(schema))
    records = body["data"][:8]
    for i, record in enumerate(records):
        if draw(st.booleans()):
            real = draw(st.sampled_from(valid))
            keep = draw(st.sets(st.sampled_from(sorted(record))))
            records[i] = {**real, **{k: record[k] for k in keep}}
    return {**body, "data": records}


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def hostile_records(draw, valid: list[dict]):
    """Real records with some values replaced by anything JSON can hold (inf, NaN, 1e400,
    lists, objects, huge integers), or not records at all."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 5)) == 0:
            out.append(draw(JSON))
            continue
        record = dict(draw(st.sampled_from(valid)))
        for col in draw(st.sets(st.sampled_from([*SPEC.columns, "extra"]), max_size=3)):
            record[col] = draw(JSON)
        out.append(record)
    return out


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


@pytest.mark.timeout(300)
def test_schema_drawn_and_hostile_bodies_never_get_a_5xx(server):
    srv, doc, valid = server

    @FUZZ
    @given(data=st.data())
    def run(data):
        kind = data.draw(st.sampled_from(["schema", "records", "json", "deep", "bytes"]))
        n = None
        if kind == "schema":
            body = data.draw(schema_bodies(doc, valid))
            raw, n = json.dumps(body).encode(), len(body["data"])
        elif kind == "records":
            records = data.draw(hostile_records(valid))
            raw, n = json.dumps({"data": records}).encode(), len(records)
        elif kind == "json":
            raw = json.dumps(data.draw(JSON)).encode()
        elif kind == "deep":
            depth = data.draw(st.integers(1, 200_000))
            raw = b'{"data": ' + nested(depth, json.dumps(valid[0]).encode()) + b"}"
        else:
            raw = data.draw(st.binary(max_size=200))
        status, reply = score(srv, raw)
        check_answer(srv, doc, status, reply, n if status in (200, 404, 422) else None)

    run()


@pytest.mark.timeout(60)
def test_any_content_type_but_json_is_refused_415(server):
    srv, doc, valid = server
    body = json.dumps({"data": valid[:2]}).encode()
    types = st.sampled_from(
        [
            "text/plain",
            "application/xml",
            "multipart/form-data",
            "application/json; charset=latin-1",
            "application/x-www-form-urlencoded",
        ]
    ) | st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
    )

    @settings(FUZZ, max_examples=40)
    @given(content_type=types)
    def run(content_type):
        mime = content_type.split(";")[0].strip().lower()
        status, reply = score(srv, body, {"Content-Type": content_type})
        check_answer(srv, doc, status, reply, None)
        if mime != "application/json":
            assert status == 415, (content_type, reply[:200])

    run()


@pytest.mark.timeout(60)
def test_without_the_right_key_score_and_schema_answer_401(server):
    srv, _, valid = server
    body = json.dumps({"data": valid[:1]}).encode()
    keys = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80)

    @settings(FUZZ, max_examples=40)
    @given(key=keys, header=st.sampled_from(["Authorization", "x-api-key"]))
    def run(key, header):
        value = f"Bearer {key}" if header == "Authorization" else key
        h = {"Authorization": "", header: value}
        status, _ = srv.request("POST", "/score", body, h)
        assert status == (200 if key == KEY else 401)
        for path in ("/swagger.json", "/swagger.json?version=3"):
            assert srv.request("GET", path, headers=h)[0] == (200 if key == KEY else 401)

    run()
    assert srv.request("GET", "/swagger.json", headers={"Authorization": ""})[0] == 401
    assert srv.request("GET", "/", headers={"Authorization": ""})[0] == 200  # liveness stays open
