"""An open-loop HTTP load generator for the scoring endpoint (stdlib only).

Requests are scheduled at a fixed rate (``rps``) whatever the server's speed, so a slow server
shows up as latency and lateness rather than as a lower offered rate (no coordinated omission:
``latency`` is measured from the scheduled send time; ``service`` from the actual send). Each
request opens a connection, as the inference server's gunicorn sync workers close it after
every answer. With ``timeline`` the answer also lists every request as ``[scheduled second,
latency ms, status, x-model-set-version]`` (the benchmark's hot-swap window). Run it in its own
process so the client does not share the server's interpreter::

    python -m mlops_assets.serving.loadtest '{"port": 5001, "rps": 200, "seconds": 10,
        "bodies": "/tmp/bodies.jsonl"}'

and it prints one JSON object of figures. ``run_profile`` is the in-process entry point.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections import Counter


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def percentile_ms(values: list[float], q: float) -> float | None:
    v = _percentile(values, q)
    return None if v is None else round(v, 2)


def summarize(
    lat_ms: list[float], service_ms: list[float], statuses: Counter, wall: float, offered: int
) -> dict:
    ok = statuses.get(200, 0)
    return {
        "offered": offered,
        "completed": sum(statuses.values()),
        "ok": ok,
        "errors": offered - ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "achieved_rps": round(sum(statuses.values()) / wall, 1) if wall else None,
        **{f"p{q}_ms": percentile_ms(lat_ms, q) for q in (50, 95, 99)},
        "max_ms": round(max(lat_ms), 2) if lat_ms else None,
        "service_p50_ms": percentile_ms(service_ms, 50),
        "service_p99_ms": percentile_ms(service_ms, 99),
    }


def run_profile(
    port: int,
    bodies: list[bytes],
    *,
    rps: float,
    seconds: float,
    headers: dict | None = None,
    threads: int = 64,
    path: str = "/score",
    timeout: float = 10.0,
    timeline: bool = False,
    host: str = "127.0.0.1",
    tls: bool = False,
) -> dict:
    """Send ``rps`` requests a second for ``seconds`` (bodies in turn) to ``host:port``
    (HTTPS with ``tls``); figures as a dict."""
    n = max(1, int(rps * seconds))
    h = {"Content-Type": "application/json", **(headers or {})}
    connection = http.client.HTTPSConnection if tls else http.client.HTTPConnection
    lock = threading.Lock()
    next_i = [0]
    lat: list[float] = []
    svc: list[float] = []
    statuses: Counter = Counter()
    samples: list[list] = []
    start = time.perf_counter() + 0.05

    def worker() -> None:
        while True:
            with lock:
                i = next_i[0]
                if i >= n:
                    return
                next_i[0] += 1
            due = start + i / rps
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            status: int | str
            version = None
            try:
                conn = connection(host, port, timeout=timeout)
                conn.request("POST", path, body=bodies[i % len(bodies)], headers=h)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                version = resp.getheader("x-model-set-version")
                conn.close()
            except Exception as exc:
                status = type(exc).__name__
            done = time.perf_counter()
            with lock:
                statuses[status] += 1
                lat.append((done - due) * 1e3)
                svc.append((done - sent) * 1e3)
                if timeline:
                    samples.append(
                        [round(due - start, 4), round((done - due) * 1e3, 2), status, version]
                    )

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    out = {"rps_target": rps, "seconds": seconds, **summarize(lat, svc, statuses, wall, n)}
    if timeline:
        out["timeline"] = sorted(samples, key=lambda s: s[0])
    return out


def run_concurrency(
    port: int,
    bodies: list[bytes],
    *,
    concurrency: int,
    seconds: float,
    headers: dict | None = None,
    path: str = "/score",
    timeout: float = 10.0,
) -> dict:
    """Closed loop: ``concurrency`` clients each sending the next request when the last is
    answered, for ``seconds``. Throughput is what the server sustains at that concurrency."""
    h = {"Content-Type": "application/json", **(headers or {})}
    lock = threading.Lock()
    lat: list[float] = []
    statuses: Counter = Counter()
    counter = [0]
    end = time.perf_counter() + seconds

    def worker() -> None:
        while time.perf_counter() < end:
            with lock:
                i = counter[0]
                counter[0] += 1
            sent = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                conn.request("POST", path, body=bodies[i % len(bodies)], headers=h)
                resp = conn.getresponse()
                resp.read()
                status: int | str = resp.status
                conn.close()
            except Exception as exc:
                status = type(exc).__name__
            with lock:
                statuses[status] += 1
                lat.append((time.perf_counter() - sent) * 1e3)

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    n = sum(statuses.values())
    return {"concurrency": concurrency, **summarize(lat, lat, statuses, wall, n)}


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    with open(args.pop("bodies"), "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    port = args.pop("port")
    out = run_profile(port, bodies, **args)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
