"""Wall-clock time of the named phases of one piece of work (for metadata, logs, benchmarks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class Phases:
    """``with phases("read"): ...`` adds the block's seconds to ``phases.seconds["read"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()  # phases may run on several threads at once

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def update(self, other: Mapping[str, float] | Phases, prefix: str = "") -> None:
        """Fold in another piece of work's phases (an engine's, a job's), names prefixed."""
        items = other.seconds if isinstance(other, Phases) else other
        for name, seconds in items.items():
            self.add(f"{prefix}{name}", float(seconds))

    def metadata(self, prefix: str = "seconds_") -> dict[str, float]:
        """``{"seconds_read": 1.234, ...}``: the shape assets and benchmarks report."""
        return {f"{prefix}{k}": round(v, 3) for k, v in self.seconds.items()}
