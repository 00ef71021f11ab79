"""The endpoint's HTTP front (what azureml-fe does for a Kubernetes online endpoint), locally.

A small threaded proxy on 127.0.0.1: it requires one of the endpoint's keys
(``Authorization: Bearer <key>``, auth_mode ``key``), sends each request to one running
deployment (the one the ``azureml-model-deployment`` header names, else one drawn by the traffic
weights), copies a share of the requests to the mirror deployment (answers discarded) and
answers with the deployment's answer plus an ``azureml-model-deployment`` header naming who
served it. ``Routing`` holds the live table; a deployment taken out of it is drained (requests
already sent to it finish) before its process is stopped.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEPLOYMENT_HEADER = "azureml-model-deployment"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Routing:
    """The endpoint's live routing table: keys, traffic, mirror, and the running deployments."""

    keys: tuple[str, str]
    traffic: dict[str, int] = field(default_factory=dict)
    mirror: dict[str, int] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # running deployments: name -> port
    timeouts_s: dict[str, float] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)
    _inflight: Counter = field(default_factory=Counter)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _rng: random.Random = field(default_factory=random.Random)

    def set(self, traffic: dict[str, int], mirror: dict[str, int]) -> None:
        with self._cond:
            self.traffic, self.mirror = dict(traffic), dict(mirror)

    def add(self, name: str, port: int, timeout_s: float) -> None:
        with self._cond:
            self.ports[name], self.timeouts_s[name] = port, timeout_s

    def drain(self, name: str, timeout: float = 30.0) -> None:
        """Take ``name`` out of the table and wait for the requests already sent to it."""
        with self._cond:
            self.ports.pop(name, None)
            self._cond.wait_for(lambda: self._inflight[name] == 0, timeout)

    def acquire(self, header: str | None) -> tuple[str, int, float] | tuple[int, str]:
        """(deployment, port, timeout) to send a request to, or (status, why) if none."""
        with self._cond:
            if header:
                name = header.lower()
                if name not in self.ports:
                    return 404, f"deployment {header!r} not found or not running"
            else:
                live = [(d, w) for d, w in self.traffic.items() if w > 0 and d in self.ports]
                if not live:
                    return 404, "No valid deployments to route to (no traffic on a running one)"
                name = self._rng.choices([d for d, _ in live], [w for _, w in live])[0]
            self._inflight[name] += 1
            return name, self.ports[name], self.timeouts_s.get(name, 5.0)

    def release(self, name: str) -> None:
        with self._cond:
            self._inflight[name] -= 1
            self._cond.notify_all()

    def mirror_target(self) -> str | None:
        with self._cond:
            for name, pct in self.mirror.items():
                if name in self.ports and self._rng.random() * 100 < pct:
                    return name
        return None


def _forward(
    port: int, method: str, path: str, body: bytes | None, headers: dict, timeout: float
) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


class _Handler(BaseHTTPRequestHandler):
    server: EndpointFront

    def log_message(self, format: str, *args: object) -> None:
        pass  # the deployments log their requests

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in _HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        body = json.dumps({"message": message}).encode()
        self._reply(status, body, [("Content-Type", "application/json")])

    def _proxy(self) -> None:
        routing = self.server.routing
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        if token not in routing.keys:
            routing.stats["unauthorized"] += 1
            self._error(401, "Authentication failed: a valid endpoint key is required")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "authorization"
        }
        picked = routing.acquire(self.headers.get(DEPLOYMENT_HEADER))
        if isinstance(picked[0], int):
            routing.stats["unroutable"] += 1
            self._error(int(picked[0]), str(picked[1]))
            return
        name, port, timeout = picked
        try:
            status, out_headers, out = _forward(
                port, self.command, self.path, body, headers, timeout
            )
        except TimeoutError:
            status, out_headers, out = 408, [], b'{"message": "request timed out"}'
        except OSError as exc:
            status, out_headers, out = 502, [], json.dumps({"message": repr(exc)}).encode()
        finally:
            routing.release(name)
        routing.stats[name] += 1
        if not self.headers.get(DEPLOYMENT_HEADER):
            self._mirror(body, headers)
        self._reply(status, out, [*out_headers, (DEPLOYMENT_HEADER, name)])

    def _mirror(self, body: bytes | None, headers: dict) -> None:
        routing = self.server.routing
        target = routing.mirror_target()
        if target is None:
            return
        picked = routing.acquire(target)
        if isinstance(picked[0], int):
            return
        name, port, timeout = picked
        method, path = self.command, self.path

        def send() -> None:
            try:
                _forward(port, method, path, body, headers, timeout)
                routing.stats[f"mirrored:{name}"] += 1
            except OSError:
                routing.stats[f"mirror_failed:{name}"] += 1
            finally:
                routing.release(name)

        threading.Thread(target=send, daemon=True).start()

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _proxy


class EndpointFront(ThreadingHTTPServer):
    """The endpoint's scoring front on 127.0.0.1 (``scoring_uri`` = ``url + "/score"``)."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, routing: Routing):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routing = routing
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)
