"""Azure ML entry script: ``init()`` once per worker, ``run(request)`` per request.

Served by Azure ML's inference server (``azmlinfsrv --entry_script mlops_assets/serving/score.py``)
on a local port and in the AKS deployment alike. ``@rawhttp`` gives ``run`` the HTTP request,
so it can check the API key, refuse an oversized body before reading it, and answer with the
right status code through ``AMLResponse``. All logic is in ``mlops_assets.serving.service``;
configuration is ``MLOPS_SERVING_*`` plus ``AZUREML_MODEL_DIR`` (see docs/serving.md).
"""

import os
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

from mlops_assets.serving.service import ScoringService  # noqa: E402

service: ScoringService | None = None
_DRAIN_FACTOR = 4  # an oversized body up to this multiple of the cap is read and dropped


def init() -> None:
    """Resolve, verify and open the model set; refuse to start if that fails."""
    global service
    service = ScoringService.from_env().start()


def _read_body(request, cap: int) -> tuple[bytes | None, bool]:
    length = request.content_length
    if length is not None and length > cap:
        if length <= cap * _DRAIN_FACTOR:  # let the client finish sending, then answer 413
            while request.stream.read(1 << 20):
                pass
        return None, True
    data = request.stream.read(cap + 1)  # also bounds a chunked body without a length
    return data, len(data) > cap


@rawhttp
def run(request):
    if service is None:
        return AMLResponse('{"error":"not_ready"}', 503, {"Content-Type": "application/json"})
    body, too_large = None, False
    if request.method == "POST":
        body, too_large = _read_body(request, service.settings.max_body_bytes)
    reply = service.handle(request.method, request.headers, body, too_large)
    return AMLResponse(
        reply.body(), reply.status, {"Content-Type": "application/json", **reply.headers}
    )
