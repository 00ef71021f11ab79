"""Azure ML entry script: ``init()`` once per worker, ``run(request)`` per request.

Served by Azure ML's inference server (``azmlinfsrv --entry_script mlops_assets/serving/score.py``)
on a local port and in the AKS deployment alike. ``@rawhttp`` gives ``run`` the HTTP request,
so it can refuse a query string and check the API key before reading the body, bound each
body read by ``MLOPS_SERVING_READ_TIMEOUT_S`` (408), refuse an oversized body before reading
it, and answer with the right status code through ``AMLResponse``. All logic is in
``mlops_assets.serving.service``; configuration is ``MLOPS_SERVING_*`` plus ``AZUREML_MODEL_DIR`` (see docs/serving.md).
"""

import logging
import os
import re
import sys

# The deployment uploads the repository as its code folder: make its packages importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

try:  # inside the inference server these modules are aliased to its own
    from azureml.contrib.services.aml_request import rawhttp
    from azureml.contrib.services.aml_response import AMLResponse
except ImportError:  # pragma: no cover - imported outside the server
    from azureml_inference_server_http.api.aml_request import rawhttp
    from azureml_inference_server_http.api.aml_response import AMLResponse

from threadpoolctl import threadpool_limits  # noqa: E402
from werkzeug.exceptions import ClientDisconnected  # noqa: E402

from mlops_assets.serving.openapi import guard_schema_route  # noqa: E402
from mlops_assets.serving.profiling import profiled  # noqa: E402
from mlops_assets.serving.service import Reply, ScoringService  # noqa: E402
from mlops_assets.serving.settings import ServingSettings  # noqa: E402

service: ScoringService | None = None
_DRAIN_FACTOR = 4  # an oversized body up to this multiple of the cap is read and dropped
_QUERY = re.compile(r"(/[^\s?\"]*)\?[^\s\"]*")


class RedactQueryStrings(logging.Filter):
    """Drop query strings from the request lines the server logs (gunicorn's access log and
    azmlinfsrv's own): a key sent there is refused, and must not be written down either.

    The record leaves with its message formatted (and no arguments), so the handler does not
    format it a second time: the filter costs the request nothing but the check."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        record.msg, record.args = (_QUERY.sub(r"\1?<redacted>", msg) if "?" in msg else msg), ()
        return True


def init() -> None:
    """Bound the worker's native thread pools (``MLOPS_SERVING_COMPUTE_THREADS``); resolve,
    verify and open the model set, and refuse to start if that fails. Then put the key check and
    the real API document in front of the server's ``/swagger.json``."""
    global service
    for name in ("gunicorn.access", "azmlinfsrv"):
        logging.getLogger(name).addFilter(RedactQueryStrings())
    settings = ServingSettings.from_env()
    if settings.compute_threads > 0:
        # A worker scores one request at a time, a few rows each: a multi-threaded BLAS call
        # there wakes the pool's idle threads, ~80 us of wall and twice that of CPU per request
        # at 200 requests/s (the pool sleeps between requests) for 2 us of work.
        threadpool_limits(limits=settings.compute_threads)
    service = ScoringService(settings).start()
    guard_schema_route(service)


def _read_body(request, cap: int, timeout: float) -> tuple[bytes | None, bool]:
    """(the body, whether it is over ``cap``). Raises TimeoutError when one read gets no bytes
    for ``timeout`` seconds (the server's worker timeout bounds a trickling client)."""
    sock = request.environ.get("gunicorn.socket")
    before = sock.gettimeout() if sock is not None else None
    if sock is not None:
        sock.settimeout(timeout)
    try:
        length = request.content_length
        if length is not None and length > cap:
            if length <= cap * _DRAIN_FACTOR:  # let the client finish sending, then answer 413
                while request.stream.read(1 << 20):
                    pass
            return None, True
        data = request.stream.read(cap + 1)  # also bounds a chunked body without a length
        return data, len(data) > cap
    except (OSError, ClientDisconnected) as exc:  # werkzeug wraps the socket's timeout
        raise TimeoutError(str(exc)) from exc
    finally:
        if sock is not None:
            sock.settimeout(before)


def _answer(reply) -> AMLResponse:
    return AMLResponse(
        reply.body(), reply.status, {"Content-Type": "application/json", **reply.headers}
    )


@rawhttp
def run(request):
    return _run(request)


@profiled  # a no-op unless MLOPS_SERVING_PROFILE names a folder (serving/profiling.py)
def _run(request):
    if service is None:
        return AMLResponse('{"error":"not_ready"}', 503, {"Content-Type": "application/json"})
    # The query string and the key first: nothing of the body is read for a refused request.
    refused = service.refusal(request.method, request.headers, request.query_string)
    if refused is not None:
        return _answer(refused)
    body, too_large = None, False
    if request.method == "POST":
        s = service.settings
        try:
            body, too_large = _read_body(request, s.max_body_bytes, s.read_timeout_s)
        except TimeoutError:
            return _answer(
                Reply(
                    408,
                    {
                        "error": "request_timeout",
                        "message": f"the body did not arrive within {s.read_timeout_s}s",
                    },
                    {"Connection": "close"},
                )
            )
    return _answer(service.handle(request.method, request.headers, body, too_large, checked=True))
