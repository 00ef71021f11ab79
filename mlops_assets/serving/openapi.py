"""The scoring API as the server publishes it on ``/swagger.json``, behind the same key as /score.

Azure ML's inference server serves ``/swagger.json`` itself, without any key, and for a
``@rawhttp`` entry script describes ``/score`` as taking any object. ``guard_schema_route``
(called by the entry script's ``init``) puts a hook in front of that route: with API keys
configured, a request without the key is answered 401 like ``/score``; otherwise the answer is
``openapi_document``, the real contract of ``/score`` for the served spec (each record's columns,
types and ranges, the limits, the status codes). ``?version=2`` (the default) gives Swagger 2.0,
``?version=3`` OpenAPI 3.0; the endpoint fuzzer (tests/integration/test_serving_fuzz.py) draws
its request bodies from this document. No Dagster imports.
"""

from __future__ import annotations

import json
import sys

from mlops_assets.ml.score_request import result_columns
from mlops_assets.ml.spec import ColumnType, DatasetSpec
from mlops_assets.serving.service import Reply, ScoringService

SERVER_ROUTES = "azureml_inference_server_http.server.routes"
SCHEMA_ENDPOINT = "get_swagger_specification"  # the server's view function of /swagger.json
ERROR_STATUSES = {
    "400": "Not JSON, no record list, or a query string (the key goes in a header).",
    "401": "API keys are configured and the key is missing or wrong.",
    "404": "Every record names a series the model set does not have.",
    "408": "The body did not arrive within the read timeout.",
    "413": "The body or the number of records is over the limit.",
    "415": "The Content-Type is not application/json (UTF-8).",
    "422": "No record could be scored (each says why), or a column every record needs is missing.",
    "503": "No model set is loaded yet.",
}


def _column_schema(spec: DatasetSpec, name: str, max_abs: float) -> dict:
    col = spec.columns[name]
    if col.type == ColumnType.date:
        return {"type": "string", "format": "date"}
    if col.type == ColumnType.timestamp:
        return {"type": "string", "format": "date-time"}
    if col.type in (ColumnType.float, ColumnType.int):
        out: dict = {"type": "number" if col.type == ColumnType.float else "integer"}
        out["minimum"] = col.min if col.min is not None else -max_abs
        out["maximum"] = col.max if col.max is not None else max_abs
        if col.allowed:
            out["enum"] = [int(v) if col.type == ColumnType.int else float(v) for v in col.allowed]
        return out
    if col.type == ColumnType.bool:
        return {"type": "boolean"}
    return {"type": "string", **({"enum": list(col.allowed)} if col.allowed else {})}


def request_schema(spec: DatasetSpec, max_records: int, max_abs: float) -> dict:
    """The JSON Schema of a ``/score`` body: ``{"data": [record, ...]}``, without references."""
    needed = [*spec.series_keys, spec.time, *spec.features.exogenous]
    record = {
        "type": "object",
        "required": needed,
        "properties": {c: _column_schema(spec, c, max_abs) for c in needed},
    }
    records = {"type": "array", "minItems": 1, "maxItems": max_records, "items": record}
    return {"type": "object", "required": ["data"], "properties": {"data": records}}


def response_schema(spec: DatasetSpec) -> dict:
    """The JSON Schema of a ``/score`` answer that scored records (OpenAPI 3.0 ``nullable``)."""
    row = {}
    for name in result_columns(spec):
        kind = "number" if name.startswith("prediction") else "string"
        row[name] = {"type": kind, "nullable": name != "series_id"}
    predictions = {"type": "array", "items": {"type": "object", "properties": row}}
    return {
        "type": "object",
        "required": ["model_set_version", "predictions", "n_errors"],
        "properties": {
            "model_set_version": {"type": "string"},
            "predictions": predictions,
            "n_errors": {"type": "integer", "minimum": 0},
        },
    }


ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}


def _json_content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def openapi_document(service: ScoringService, version: str = "3") -> dict:
    """The served contract of ``/score``: OpenAPI 3.0 (``version`` 3) or Swagger 2.0 (2)."""
    s = service.settings
    body = request_schema(service.spec, s.max_records, s.max_abs_value)
    answer = response_schema(service.spec)
    info = {"title": f"{service.spec.name} forecasts", "version": "1"}
    desc = f"Forecasts of {service.spec.name} per record; at most {s.max_body_bytes} bytes."
    scored = "Scored; the records that failed say why."
    if version.startswith("3"):
        responses = {"200": {"description": scored, "content": _json_content(answer)}}
        for status, why in ERROR_STATUSES.items():
            responses[status] = {"description": why, "content": _json_content(ERROR_SCHEMA)}
        op = {
            "description": desc,
            "requestBody": {"required": True, "content": _json_content(body)},
        }
        return {
            "openapi": "3.0.3",
            "info": info,
            "paths": {"/score": {"post": {**op, "responses": responses}}},
            "components": {
                "securitySchemes": {"Bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": {"ServiceInput": body, "ServiceOutput": answer},
            },
            "security": [{"Bearer": []}],
        }
    answer2 = json.loads(json.dumps(answer).replace('"nullable"', '"x-nullable"'))
    responses = {"200": {"description": scored, "schema": answer2}}
    for status, why in ERROR_STATUSES.items():
        responses[status] = {"description": why, "schema": ERROR_SCHEMA}
    param = {"name": "body", "in": "body", "required": True, "schema": body}
    post = {"description": desc, "parameters": [param], "responses": responses}
    return {
        "swagger": "2.0",
        "info": info,
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": {"/score": {"post": post}},
        "securityDefinitions": {
            "Bearer": {"type": "apiKey", "name": "Authorization", "in": "header"}
        },
        "security": [{"Bearer": []}],
        "definitions": {"ServiceInput": body, "ServiceOutput": answer2},
    }


def guard_schema_route(service: ScoringService) -> bool:
    """Answer the inference server's ``/swagger.json`` with the key check and our document.

    Runs inside the server's ``init()``, which it calls while registering its Flask blueprint,
    so a hook can still be added to it. Returns False outside the server (nothing to guard).

    Raises:
        RuntimeError: API keys are configured but the server's routes cannot be hooked (a
            server version that changed them): refuse to start rather than serve the schema
            without the key.
    """
    routes = sys.modules.get(SERVER_ROUTES)
    if routes is None:
        return False
    try:
        from flask import Response, request

        blueprint = routes.main_blueprint
        endpoint = f"{blueprint.name}.{SCHEMA_ENDPOINT}"

        @blueprint.before_request
        def _schema():
            if request.endpoint != endpoint:
                return None
            refused = service.refusal("GET", request.headers)
            if refused is None:
                version = request.args.get("version") or "2"
                if version not in ("2", "2.0", "3", "3.0"):
                    return None  # the server's own answer: 404, this version is not served
                refused = Reply(200, openapi_document(service, version))
            return Response(refused.body(), refused.status, refused.headers, "application/json")
    except Exception as exc:
        if service.settings.api_keys:
            raise RuntimeError(f"cannot guard /swagger.json with the API key: {exc}") from exc
        return False
    return True
