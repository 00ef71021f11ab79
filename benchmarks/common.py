"""Shared helpers for benchmarks: results as JSON under benchmarks/results/, and the process
tree's memory, CPU and the load average sampled in a thread (``TreeSampler``)."""

from __future__ import annotations

import json
import os
import platform
import resource
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine_speed() -> dict:
    """Seconds of two fixed pieces of work, best of three: a pure-Python loop (what
    orchestration and per-model code pay) and a numpy kernel (what vectorised work pays). Two
    VMs of the same kind have differed threefold on the first; results are comparable across
    runs only where these are."""

    def best(work) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            work()
            times.append(time.perf_counter() - t)
        return round(min(times), 4)

    import numpy as np

    a = np.random.default_rng(0).random((1_000, 1_000))
    return {
        "python_loop_2m_s": best(lambda: sum(i for i in range(2_000_000))),
        "numpy_matmul_1000_s": best(lambda: a @ a),
    }


def write_result(name: str, result: dict, path: Path | None = None) -> Path:
    """Writes ``result`` to ``benchmarks/results/<name>.json`` (or ``path``) with the machine,
    the load average, the run's CPU time and when it was written (``at``: a summary tells this
    run's results from an earlier run's by it)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    result = {
        **result,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "speed": machine_speed(),
        },
        # Every result says how busy the machine was and how much CPU the whole run took (this
        # process and its reaped children), beside its wall times.
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "process_cpu_s": round(
            own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 2
        ),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return path


class TreeSampler:
    """Samples this process and all its descendants every ``interval`` seconds in a thread:
    their memory, their CPU seconds (reaped children's included) and the 1-min load average.

    Memory is summed two ways: RSS, which counts a page once per process that maps it (a
    forked pool's workers each count the parent's pages they share: an upper bound), and PSS,
    which splits a shared page between its processes (what the tree really holds).
    ``window(t0, t1)`` reports a span of wall-clock time (``time.time()``): the peaks, the CPU
    seconds spent in it and the load average at its start and end. A peak between two
    samples can be missed (``interval``).
    """

    def __init__(self, interval: float = 0.2):
        import psutil

        self.interval = interval
        self._me = psutil.Process()
        self._samples: list[tuple[float, float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        import psutil

        rss, pss, cpu = 0, 0, 0.0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                with p.oneshot():
                    mem = p.memory_full_info()
                    t = p.cpu_times()
            except psutil.Error:  # a worker that exited between listing and reading
                continue
            rss += mem.rss
            pss += getattr(mem, "pss", mem.rss)  # PSS is Linux's; elsewhere RSS
            cpu += t.user + t.system + t.children_user + t.children_system
        mib = 2**20
        self._samples.append((time.time(), pss / mib, rss / mib, cpu, os.getloadavg()[0]))

    def window(self, t0: float | None = None, t1: float | None = None) -> dict:
        """Peak PSS and RSS sums (MiB), CPU seconds and load average in ``[t0, t1]``."""
        inside = [
            s for s in self._samples if (t0 is None or s[0] >= t0) and (t1 is None or s[0] <= t1)
        ]
        if not inside:
            return {}
        return {
            "peak_pss_mb": round(max(s[1] for s in inside), 1),
            "peak_rss_sum_mb": round(max(s[2] for s in inside), 1),
            "cpu_s": round(inside[-1][3] - inside[0][3], 2),
            "load_avg_1m": [round(inside[0][4], 2), round(inside[-1][4], 2)],
            "samples": len(inside),
        }
