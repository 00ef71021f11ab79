"""The model set a worker serves, and how a new one is prepared beside it (hot swap).

A hot swap runs in the worker's poll thread while its request thread keeps answering from the
set it holds: ``prepare`` reads and verifies the new manifest (and every model with
``verify_all``) and pre-loads the series hot in the old cache, then the caller swaps one
reference. Both threads share the interpreter lock, so preparing must not starve requests:

* the warm-up is paced (``Pacer``: a short sleep after every few ms of loading hands the lock
  to a waiting request at once) and the interpreter's switch interval is lowered meanwhile, so
  a request waits well under a millisecond for the lock instead of up to 5 ms at each step;
* no full collection: ``heap.freeze_loaded`` moves what was just loaded out of the cyclic
  GC's reach (``gc.freeze``), so later collections never scan the models; the swapped-out set
  is freed by reference counting (it holds no cycles: tested), so nothing needs a full
  ``gc.collect()``, which holds the lock for 100+ ms with the ML stack loaded.

No Dagster imports.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlops_assets.heap import freeze_loaded
from mlops_assets.ml.model_cache import ModelSetReader
from mlops_assets.ml.persistence import ModelLoadError
from mlops_assets.ml.phases import Phases
from mlops_assets.serving.source import Served, load_reader

log = logging.getLogger("mlops.serving")
PREPARE_SWITCH_INTERVAL_S = 0.0005  # while preparing; CPython's default is 0.005


@dataclass
class Active:
    """One loaded, verified model set, as a request holds it from start to end."""

    served: Served
    reader: ModelSetReader
    loaded_at: float

    def lookup(self, series_id: str):
        """``reader.model_for``, with a model that fails to load (hash mismatch, unreadable
        pack) answered as a per-record ``no_model`` reason instead of failing the request."""
        try:
            return self.reader.model_for(series_id)
        except (ModelLoadError, OSError, ValueError) as exc:
            log.error("model of %s failed to load: %s", series_id, exc)
            return f"its model failed to load ({type(exc).__name__})"

    def provenance(self, series_id: str) -> dict:
        """What data collection records of a served series: the set's training run and the
        series' family and history end (production monitoring joins actuals on them)."""
        return {
            "model_set_run": self.served.ref.version,
            "family": self.reader.entry(series_id, "family"),
            "history_end": self.reader.entry(series_id, "history_end"),
        }


class Pacer:
    """Call once per unit of background work: sleeps ``rest_s`` after every ``work_s`` of it."""

    def __init__(self, work_s: float = 0.002, rest_s: float = 0.001):
        self.work_s, self.rest_s = work_s, rest_s
        self._since = time.perf_counter()

    def __call__(self) -> None:
        if time.perf_counter() - self._since >= self.work_s:
            time.sleep(self.rest_s)
            self._since = time.perf_counter()


@contextmanager
def yielding_interpreter(interval_s: float = PREPARE_SWITCH_INTERVAL_S) -> Iterator[None]:
    """A shorter switch interval for the block: other threads get the lock sooner."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, interval_s))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def prepare(
    served: Served,
    previous: Active | None,
    *,
    max_models: int,
    max_bytes: int,
    verify_all: bool,
    phases: Phases | None = None,
) -> Active:
    """A new ``Active`` for ``served``, warmed with the series hot in ``previous``.

    Raises:
        ModelSetError: The manifest is missing.
        ModelIntegrityError: The manifest or a model does not match its recorded sha256.
    """
    phases = phases or Phases()
    with yielding_interpreter():
        with phases("load"):
            reader = load_reader(
                served, max_models=max_models, max_bytes=max_bytes, verify_all=verify_all
            )
        if previous is not None:
            with phases("warm"):
                pace = Pacer()
                for sid in previous.reader.hot_series()[-max_models:]:
                    if sid in reader:
                        reader.model_for(sid)
                        pace()
    return Active(served, reader, time.time())


def freeze_heap() -> None:
    """At start, before serving: one full collection, then everything loaded is frozen."""
    gc.collect()
    freeze_loaded()
