"""Opt-in cProfile of the entry script's ``run()`` inside a server worker.

``MLOPS_SERVING_PROFILE=<folder>`` makes ``score.py`` wrap ``run()`` in ``profiled``: each
worker profiles its requests and rewrites ``<folder>/run-<pid>.prof`` every ``every`` requests
(a worker is killed, not shut down, so there is no exit hook to rely on). Read them with
``pstats.Stats(*paths)``. Off by default: profiling costs more than the request itself.
"""

from __future__ import annotations

import cProfile
import functools
import os
from collections.abc import Callable
from pathlib import Path

ENV = "MLOPS_SERVING_PROFILE"


def profiled(fn: Callable, folder: str | None = None, every: int = 200) -> Callable:
    """``fn`` itself when no folder is configured, else ``fn`` under a per-process profiler."""
    folder = folder if folder is not None else os.environ.get(ENV)
    if not folder:
        return fn
    state: dict = {"calls": 0, "profiler": None, "pid": None}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if state["pid"] != os.getpid():  # a forked worker starts its own profile
            state.update(pid=os.getpid(), calls=0, profiler=cProfile.Profile())
        prof = state["profiler"]
        prof.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            prof.disable()
            state["calls"] += 1
            if state["calls"] % every == 0:
                Path(folder).mkdir(parents=True, exist_ok=True)
                prof.dump_stats(str(Path(folder) / f"run-{os.getpid()}.prof"))

    return wrapper
