"""Request-boundary guards of the scoring service, in process (issue 18, item 4).

Each test is the regression test of one thing the endpoint fuzzer (or the audit before it) found:
a body nested past the JSON parser's depth answered 500, any content type was read as JSON, a
list or object as a column's value became part of a series id, an absurd finite prediction was
sent as a number, and the key comparison leaked the key's length.
"""

from __future__ import annotations

import hmac
import json
import math

import jsonschema
import pytest

from mlops_assets.domain.model_sets import pointer_name, write_pointer
from mlops_assets.ml.spec import load_spec
from mlops_assets.serving.guards import NON_FINITE_PREDICTION, flag_non_finite, json_content_type
from mlops_assets.serving.openapi import openapi_document, request_schema
from mlops_assets.serving.service import BAD_RECORD, ScoringService, ServingSettings
from mlops_assets.serving.synthetic import model_set_ref, request_rows, synthetic_model_set
from mlops_assets.storage import LocalStorage

SPEC = load_spec("sales")
FOLDER = "models/sales/set-g"
KEY = "guard-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    manifest = synthetic_model_set(root, FOLDER, SPEC, n_series=4, templates=2)
    ref = model_set_ref(root, FOLDER).registered(1)
    write_pointer(LocalStorage(root), pointer_name("sales", "production"), ref)
    service = ScoringService(ServingSettings(root=str(root), poll_s=0, api_keys=[KEY])).start()
    try:
        yield service, request_rows(SPEC, manifest, manifest["series_id"].to_pylist()[:2])
    finally:
        service.close()


def post(service: ScoringService, body: bytes, content_type: str | None = "application/json"):
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    reply = service.handle("POST", headers, body)
    return reply.status, json.loads(reply.body())


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("Application/JSON; charset=UTF-8", True),
        (None, True),  # none sent: read as JSON, as clients without the header always were
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("application/json; charset=latin-1", False),
        ("application/jsonx", False),
    ],
)
def test_only_json_content_types_are_read(served, content_type, ok):
    service, records = served
    assert json_content_type(content_type) is ok
    status, body = post(service, json.dumps({"data": records}).encode(), content_type)
    assert status == (200 if ok else 415), body
    if not ok:
        assert body["error"] == "unsupported_media_type"


def test_the_key_is_checked_before_the_content_type(served):
    service, _ = served
    reply = service.handle("POST", {"Content-Type": "text/plain"}, b"x")
    assert reply.status == 401


@pytest.mark.parametrize("depth", [100_000, 5_000, 1_025])
def test_a_body_nested_past_the_parsers_depth_is_a_400_not_a_500(served, depth):
    service, _ = served
    status, body = post(service, b"[" * depth + b"]" * depth)
    assert status == 400 and body["error"] == "malformed_json", body
    assert "depth limit exceeded" in body["message"]


def test_a_list_or_object_as_a_value_is_a_per_record_error(served):
    service, records = served
    deep: object = 1.0
    for _ in range(200):
        deep = [deep]
    bad = [{**records[1], "store": {"a": 1}}, {**records[1], "price": deep}]
    status, body = post(service, json.dumps({"data": [records[0], *bad]}).encode())
    assert status == 200, body
    rows = body["predictions"]
    assert rows[0]["error"] is None and math.isfinite(rows[0]["prediction"])
    assert [r["error"] for r in rows[1:]] == [BAD_RECORD, BAD_RECORD]
    assert "'store' is an object" in rows[1]["message"] and rows[1]["series_id"] is None
    assert "'price' is a list" in rows[2]["message"]
    assert body["n_errors"] == 2


def test_a_record_missing_a_series_key_others_carry_is_a_per_record_error(served):
    # Found by the fuzzer: [valid, {}] reached the series numbering with a null key (500).
    service, records = served
    no_product = {k: v for k, v in records[1].items() if k != "product"}
    for bad in ({}, no_product, {**records[1], "store": None}):
        status, body = post(service, json.dumps({"data": [records[0], bad]}).encode())
        assert status == 200, body
        rows = body["predictions"]
        assert rows[0]["error"] is None
        assert rows[1]["error"] == BAD_RECORD and "series key" in rows[1]["message"], rows[1]
    # A key no record carries is still the whole request's problem.
    status, body = post(service, json.dumps({"data": [no_product]}).encode())
    assert status == 422 and body["error"] == "bad_request" and "product" in body["message"]


@pytest.mark.parametrize(
    ("literal", "reason"),
    [("1e400", "infinity"), ("Infinity", "unexpected character"), ("NaN", "unexpected character")],
)
def test_numbers_json_cannot_hold_are_refused_with_where_they_are(served, literal, reason):
    """The body is strict JSON: a number beyond a double, and the NaN / Infinity literals
    Python's own json module would read, are refused whole (400, naming the place), never read
    as a non-finite input or sent on as a null prediction."""
    service, records = served
    raw = json.dumps({"data": records[:1]}).replace("9.5", literal).encode()
    assert literal in raw.decode()
    status, body = post(service, raw)
    assert status == 400 and body["error"] == "malformed_json", body
    assert reason in body["message"] and "line 1 column" in body["message"], body


def test_a_finite_value_beyond_the_bounds_is_out_of_range_on_its_record(served):
    service, records = served
    raw = json.dumps({"data": records[:1]}).replace("9.5", "1e300").encode()
    status, body = post(service, raw)
    assert status == 422 and body["predictions"][0]["error"] == "out_of_range", body


def test_a_finite_but_absurd_prediction_is_flagged():
    rows = [
        {"series_id": "a", "prediction": 1e300, "prediction_lower_80": 1.0, "error": None},
        {"series_id": "b", "prediction": 12.5, "prediction_lower_80": 1.0, "error": None},
    ]
    flag_non_finite(rows, max_abs=1e15)
    assert rows[0]["error"] == NON_FINITE_PREDICTION and rows[0]["prediction"] is None
    assert rows[0]["prediction_lower_80"] is None and "1e+300" in rows[0]["message"]
    assert rows[1]["error"] is None and rows[1]["prediction"] == 12.5


def test_keys_are_compared_in_constant_time_as_equal_length_digests(served, monkeypatch):
    service, _ = served
    seen: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a, b):
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    for given in ("", "x", KEY, KEY * 50, "\ud800"):
        assert service.authorized({"x-api-key": given}) is (given == KEY)
    assert seen and all(a == b == 32 for a, b in seen)  # SHA-256 digests: no length leaks


def test_the_published_schema_accepts_real_requests_and_refuses_broken_ones(served):
    service, records = served
    schema = request_schema(SPEC, 10, 1e15)
    jsonschema.validate({"data": records}, schema)
    for bad in ({"data": []}, {"data": [{**records[0], "price": -1.0}]}, [records[0]]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    v3, v2 = openapi_document(service, "3"), openapi_document(service, "2")
    assert v3["components"]["schemas"]["ServiceInput"] == v2["definitions"]["ServiceInput"]
    assert {"401", "413", "415"} <= set(v3["paths"]["/score"]["post"]["responses"])
    assert v2["paths"]["/score"]["post"]["parameters"][0]["in"] == "body"


def test_the_log_filter_redacts_query_strings_and_leaves_each_record_formatted_once():
    """serving/score.py's filter on the server's request-line loggers: a query string becomes
    ``?<redacted>``; every record leaves formatted, with no arguments left for the handler to
    format again (gunicorn's access record is a format over a dict of atoms)."""
    import logging

    from mlops_assets.serving.score import RedactQueryStrings

    def record(line: str) -> logging.LogRecord:
        atoms = {"r": line, "s": "400"}
        return logging.LogRecord(
            "gunicorn.access", logging.INFO, __file__, 1, '"%(r)s" %(s)s', (atoms,), None
        )

    keyed, plain = record("POST /score?key=s3cret HTTP/1.1"), record("POST /score HTTP/1.1")
    for r in (keyed, plain):
        assert RedactQueryStrings().filter(r) is True and r.args == ()
    assert keyed.getMessage() == '"POST /score?<redacted> HTTP/1.1" 400'
    assert plain.getMessage() == '"POST /score HTTP/1.1" 400'
