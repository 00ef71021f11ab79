"""Deterministic crash points for fault-injection tests: ``MLOPS_FAULT=<point>:<n>``.

Every multi-step write calls ``fault_point("<point>")`` between its steps (after data is
written, before what publishes it). With ``MLOPS_FAULT=<point>:<n>`` set when this module is
first imported, the process ends abruptly (``os._exit(70)``: no cleanup, no ``finally``, like a
``kill -9`` or a lost node) the ``n``-th time execution reaches that point. Unset, a fault point
is one global lookup and a return. ``docs/runbook.md`` lists the points, what a crash at each
leaves and what a rerun does.
"""

from __future__ import annotations

import os
import sys
import threading

FAULT_ENV = "MLOPS_FAULT"
EXIT_CODE = 70  # EX_SOFTWARE: tells an injected crash from a real failure
POINTS = (
    "curated.shard",  # a curated shard written, before the next shards and the ledger entries
    "ledger",  # a drop's ledger entry written, before the next drops' entries
    "model_set.pack",  # a model pack written, before the next packs and the manifest
    "model_set.manifest",  # a set's manifest written, before its ref file and the pointers
    "pointer",  # a pointer (candidate, latest, release) written, before the next one
    "registration",  # a registry version created (incomplete), before the alias moves
    "alias.move",  # the alias moved to the new version, before the version is marked complete
    "promotion.copy",  # a pack copied to prod storage, before the manifest and prod version
    "batch.output",  # a drop's quarantined rows written, before its predictions
)


def parse(value: str | None) -> tuple[str, int] | None:
    """``(point, n)`` of a ``MLOPS_FAULT`` value (None when unset or empty).

    Raises:
        ValueError: Not ``<point>:<n>`` with a known point and ``n >= 1``: a test that meant to
            crash must not silently run through.
    """
    if not value:
        return None
    point, sep, count = value.rpartition(":")
    if not sep or point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(
            f"{FAULT_ENV}={value!r}: expected <point>:<n> with n >= 1 and a point among "
            f"{', '.join(POINTS)}"
        )
    return point, int(count)


_TARGET = parse(os.environ.get(FAULT_ENV))  # read once: a fault point costs nothing unset
_HITS: dict[str, int] = {}
_LOCK = threading.Lock()  # shards are written by a thread pool


def fault_point(point: str) -> None:
    """End the process here if ``MLOPS_FAULT`` names this point and this is its n-th reach."""
    if _TARGET is None:
        return
    target, n = _TARGET
    if point != target:
        return
    with _LOCK:
        hits = _HITS[point] = _HITS.get(point, 0) + 1
        if hits == n:
            sys.stderr.write(f"{FAULT_ENV}: ending the process at {point} (reach {n})\n")
            sys.stderr.flush()
            os._exit(EXIT_CODE)
