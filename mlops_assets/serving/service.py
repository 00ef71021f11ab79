"""The scoring service behind the AML entry script: settings, hot swap, auth, limits, answers.

``ScoringService.handle(method, headers, body)`` turns one HTTP request into a ``Reply``; the
entry script (``score.py``) only adapts it to the inference server. Everything a request can get
wrong is answered, never raised:

===========================================  ======================================
problem                                      answer
===========================================  ======================================
a query string (a key there would be logged)  400 ``query_string_refused``
API keys configured, key missing or wrong    401 (``Authorization: Bearer <key>`` or
                                             ``x-api-key``); ``/swagger.json`` too
a POST whose Content-Type is not JSON        415 (none at all is read as JSON)
the body did not arrive in time              408 (``score.py``, ``read_timeout_s``)
body over ``max_body_bytes``                 413
more than ``max_records`` records            413
not strict JSON (NaN, 1e400, too deep)       400
no record list                               400
a column every record needs is missing       422
unknown series, missing feature, input out   200, with ``error``/``message`` on those
of range, a list where a value goes, non-    records (others are scored)
finite or absurd prediction, ...
no record could be scored                    404 if every record named an unknown
                                             series, else 422; the records say why
no model set loaded                          503
===========================================  ======================================

A body is ``{"data": [record, ...]}`` (``input_data`` is accepted too) or a bare list; a record
is a dict with the dataset's key, time and exogenous columns. The answer is
``{"model_set_version", "predictions": [{series_id, time, prediction, model_version, error,
message}], "n_errors"}``; with interval levels in the spec, each prediction also has
``prediction_lower_<level>`` and ``prediction_upper_<level>`` (null where none).

Hot swap: a background thread polls the source (registry alias or pointer file); when it names
a new set, it builds and verifies a new reader, pre-loads the series that are hot in the old
cache, then swaps one reference. A request holds the set it started with, so none fails during
a swap; a set that fails to load is logged and the old one keeps serving. No Dagster imports.

Order of the checks: query string, then the key (``refusal``), both before the entry script
reads the body, so an unauthenticated client cannot make the server read or wait for a body.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import resource
import threading
import uuid
from dataclasses import asdict, dataclass, field

import orjson
from threadpoolctl import threadpool_info

from mlops_assets.heap import freeze_loaded
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.score_request import result_columns
from mlops_assets.ml.scoring import UNKNOWN_SERIES, RequestError
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.serving.collector import Collector
from mlops_assets.serving.fast import score_records
from mlops_assets.serving.guards import (
    BAD_RECORD,
    NON_FINITE_PREDICTION,
    OUT_OF_RANGE,
    InputBounds,
    error_row,
    flag_non_finite,
    json_content_type,
    shape_problem,
)
from mlops_assets.serving.settings import ServingSettings
from mlops_assets.serving.source import Served
from mlops_assets.serving.swap import Active, freeze_heap, prepare

__all__ = [
    "BAD_RECORD",
    "NON_FINITE_PREDICTION",
    "OUT_OF_RANGE",
    "Active",
    "Reply",
    "ScoringService",
    "ServingSettings",
]

log = logging.getLogger("mlops.serving")
FREEZE_EVERY_LOADS = 1_000  # models loaded between two GC freezes (heap.freeze_loaded)


@dataclass
class Reply:
    status: int
    payload: dict
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        """The payload as compact JSON. A non-finite number (JSON has none) is sent as null;
        numpy scalars (in ``info()``) as their values."""
        return orjson.dumps(self.payload, default=_plain)


def _plain(value):
    """``orjson``'s fallback for what it does not serialise itself: numpy scalars."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def collected_columns(spec: DatasetSpec) -> dict[str, str]:
    """The request columns data collection keeps, typed for Parquet."""
    out = {}
    for name, col in spec.columns.items():
        kind = str(getattr(col.type, "value", col.type))
        out[name] = "float" if kind in ("float", "int") else "string"
    return out


def _error(status: int, code: str, message: str, **extra) -> Reply:
    return Reply(status, {"error": code, "message": message, **extra})


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


class ScoringService:
    def __init__(self, settings: ServingSettings, spec: DatasetSpec | None = None):
        self.settings = settings
        self.spec = spec or settings.dataset_spec()
        self.source = settings.make_source()
        self.bounds = InputBounds(self.spec, settings.max_abs_value)
        self._columns = result_columns(self.spec)  # an answer row's fields, in order
        self._column_names = tuple(self.spec.columns)  # a request record's columns
        self._active: Active | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._swap_lock = threading.Lock()
        self.swaps = 0
        self._frozen_at = 0
        self.last_error: str | None = None
        self.last_swap: dict | None = None
        self.requests = 0
        self.collector: Collector | None = None
        if settings.collect_rate > 0:
            root = settings.collect_target()
            if root:
                self.collector = Collector(
                    root,
                    self.spec.name,
                    settings.collect_rate,
                    max_queue=settings.collect_queue,
                    columns=collected_columns(self.spec),
                    bounds=list(result_columns(self.spec)[3:-3]),
                )

    @classmethod
    def from_env(cls) -> ScoringService:
        return cls(ServingSettings.from_env())

    @property
    def active(self) -> Active | None:
        """The set served now (a request holds the one it started with)."""
        return self._active

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> ScoringService:
        """Load the current model set (raises if it cannot: the server must not turn ready),
        then start polling for a new one."""
        served = self.source.resolve()
        self._active = self._load(served, previous=None)
        freeze_heap()
        log.info("serving %s model set %s", self.spec.name, served.describe())
        if self.source.dynamic and self.settings.poll_s > 0:
            self._poller = threading.Thread(target=self._poll, name="modelset-poll", daemon=True)
            self._poller.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        if self.collector is not None:
            self.collector.close()

    def _load(self, served: Served, previous: Active | None) -> Active:
        """The set prepared off the request path (``swap.prepare``), its phases kept for
        ``info()``; warmed with the series hot in ``previous``: no latency step at swap."""
        s = self.settings
        phases = Phases()
        active = prepare(
            served,
            previous,
            max_models=s.cache_models,
            max_bytes=s.cache_bytes,
            verify_all=s.verify_all,
            phases=phases,
        )
        self.last_swap = {"version": served.label, **phases.metadata()}
        return active

    def check_for_update(self) -> bool:
        """Resolve the source once; load and swap if it names another set. True if swapped."""
        with self._swap_lock:
            served = self.source.resolve()
            current = self._active
            if current is not None and served.key == current.served.key:
                return False
            new = self._load(served, previous=current)
            self._active = new  # the swap: one reference
            self.swaps += 1
            self._frozen_at = new.reader.stats.misses
            freeze_loaded()
            old = current.served.label if current else None
            log.info("hot swap: %s -> %s", old, served.label)
            return True

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.poll_s):
            try:
                self.check_for_update()
                self.last_error = None
            except Exception as exc:  # keep serving the old set
                msg = f"{type(exc).__name__}: {exc}"
                if msg != self.last_error:
                    log.error("model set update failed, still serving the old one: %s", msg)
                self.last_error = msg

    # ---- requests ------------------------------------------------------------------------

    def authorized(self, headers) -> bool:
        keys = self.settings.api_keys
        if not keys:
            return True
        given = headers.get("x-api-key") or ""
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        # Against every key (primary and secondary), in constant time: digests of equal
        # length, so not even the key's length shows in the time taken.
        digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
        ok = False
        for k in keys:
            ok |= hmac.compare_digest(digest, hashlib.sha256(k.encode()).digest())
        return ok

    def info(self) -> dict:
        a = self._active
        out = {
            "dataset": self.spec.name,
            "source": self.source.describe(),
            "model_set_version": a.served.label if a else None,
            "folder": a.served.ref.folder if a else None,
            "loaded_at": a.loaded_at if a else None,
            "series": len(a.reader.series) if a else 0,
            "swaps": self.swaps,
            "last_error": self.last_error,
            "last_swap": self.last_swap,
            "requests": self.requests,
            "limits": {
                "max_body_bytes": self.settings.max_body_bytes,
                "max_records": self.settings.max_records,
                "cache_models": self.settings.cache_models,
                "cache_bytes": self.settings.cache_bytes,
            },
            "cache": asdict(a.reader.stats) if a else None,
            # Each native thread pool of this worker and its size (MLOPS_SERVING_COMPUTE_THREADS).
            "compute_threads": {
                f"{p['user_api']}:{p['internal_api']}": p["num_threads"] for p in threadpool_info()
            },
            "rss_bytes": rss_bytes(),
            "peak_rss_bytes": peak_rss_bytes(),
            "pid": os.getpid(),
        }
        if self.collector is not None:
            out["collector"] = dict(self.collector.stats)
        return out

    def refusal(self, method: str, headers, query: bytes | str = b"") -> Reply | None:
        """The answer to a request refused before its body is read (a query string, a missing
        or wrong key), or None."""
        if query:
            return _error(
                400,
                "query_string_refused",
                "/score takes no query string: send the key in the Authorization header "
                "(Bearer) or x-api-key, never in the URL (URLs are logged)",
            )
        if not self.authorized(headers):
            r = _error(401, "unauthorized", "missing or wrong API key")
            r.headers["WWW-Authenticate"] = 'Bearer realm="score"'
            return r
        if method == "POST" and not json_content_type(headers.get("Content-Type")):
            return _error(
                415,
                "unsupported_media_type",
                "send the records as Content-Type: application/json (UTF-8)",
            )
        return None

    def handle(
        self,
        method: str,
        headers,
        body: bytes | None,
        too_large: bool = False,
        *,
        query: bytes | str = b"",
        checked: bool = False,
    ) -> Reply:
        """One request; never raises. ``checked``: ``refusal`` already let it through."""
        try:
            refused = None if checked else self.refusal(method, headers, query)
            reply = refused or self._handle(method, headers, body, too_large)
        except Exception as exc:  # a bug, not the caller's fault: 500 with a reference
            ref = uuid.uuid4().hex[:12]
            log.exception("scoring failed (ref %s)", ref)
            reply = _error(500, "internal_error", f"{type(exc).__name__} (ref {ref})")
        a = self._active
        if a is not None:
            reply.headers.setdefault("x-model-set-version", a.served.label)
        return reply

    def _refused_records(self, records: list) -> tuple[list[dict], list[int]]:
        """(answer rows with the records refused before scoring filled in, indexes of the
        records to score): not an object, a list or object as a column's value, a series key
        missing, or a numeric input out of range."""
        columns = self._columns
        # Filled in below for the records refused here, by the caller for the others.
        rows: list[dict] = [None] * len(records)  # type: ignore[list-item]
        good = []
        keys = self.spec.series_keys

        @functools.cache  # asked only when a record lacks a key; worked out once per request
        def keys_sent() -> set[str]:
            return {k for k in keys if any(isinstance(r, dict) and k in r for r in records)}

        for i, r in enumerate(records):
            if not isinstance(r, dict):
                rows[i] = error_row(BAD_RECORD, "a record must be a JSON object", columns=columns)
                continue
            nested = shape_problem(r, self._column_names, keys, keys_sent)
            problem = None if nested else self.bounds.problem(r)
            if nested is None and problem is None:
                good.append(i)
                continue
            vals = [r.get(k) for k in keys]
            sid = self.spec.series_id(vals) if all(isinstance(v, str) for v in vals) else None
            t = r.get(self.spec.time)
            t = t if isinstance(t, str) else None
            code, message = (BAD_RECORD, nested) if nested else (OUT_OF_RANGE, problem)
            rows[i] = error_row(code, str(message), sid, t, columns)
        return rows, good

    def _handle(self, method: str, headers, body: bytes | None, too_large: bool) -> Reply:
        if method == "GET":
            return Reply(200, self.info())
        if method != "POST":
            return _error(405, "method_not_allowed", f"{method} is not supported; POST records")
        s = self.settings
        if too_large or (body is not None and len(body) > s.max_body_bytes):
            return _error(
                413, "payload_too_large", f"the body is over {s.max_body_bytes} bytes; split it"
            )
        self.requests += 1
        try:
            # Strict RFC 8259 JSON in UTF-8: NaN, Infinity and numbers beyond a double (1e400)
            # are refused here, like a nesting deeper than orjson's 1,024 levels.
            parsed = orjson.loads(body or b"")
        except orjson.JSONDecodeError as exc:
            return _error(400, "malformed_json", f"the body is not JSON: {exc}")
        records = parsed
        if isinstance(parsed, dict):
            records = parsed.get("data", parsed.get("input_data"))
        if not isinstance(records, list):
            return _error(
                400, "bad_request", 'send {"data": [record, ...]} or a JSON list of records'
            )
        if not records:
            return _error(400, "bad_request", "no records")
        if len(records) > s.max_records:
            return _error(
                413, "too_many_records", f"{len(records)} records; at most {s.max_records}"
            )
        active = self._active  # held for the whole request: a swap cannot change it
        if active is None:
            return _error(503, "not_ready", "no model set loaded")
        loaded = active.reader.stats.misses
        if loaded - self._frozen_at >= FREEZE_EVERY_LOADS:
            # Models loaded on demand since the last freeze: one collection now, then the GC
            # never scans them again (instead of a full collection every so often, forever).
            self._frozen_at = loaded
            freeze_loaded()
        rows, good = self._refused_records(records)
        try:
            to_score = records if len(good) == len(records) else [records[i] for i in good]
            scored = score_records(to_score, self.spec, active.lookup)
        except RequestError as exc:
            return _error(422, "bad_request", str(exc))
        flag_non_finite(scored.rows, s.max_abs_value)
        for i, row in zip(good, scored.rows, strict=True):
            rows[i] = row
        n_err = sum(1 for r in rows if r["error"] is not None)
        status = 200
        if n_err == len(rows):
            status = 404 if all(r["error"] == UNKNOWN_SERIES for r in rows) else 422
        if self.collector is not None:
            rid = headers.get("x-request-id") or ""
            self.collector.offer(records, rows, active.served.label, rid, active.provenance)
        return Reply(
            status,
            {"model_set_version": active.served.label, "predictions": rows, "n_errors": n_err},
        )
