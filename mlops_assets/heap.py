"""The objects a run process keeps for its whole life, kept out of the garbage collector's scans.

A run process holds about half a million objects that live as long as it does: the modules
of Dagster, pandas, pyarrow and scikit-learn (~270,000 once the code location is loaded),
MLflow (~90,000 more) and great-expectations (~180,000 more). Python's cyclic collector walks
every one of them on each full collection (~0.4 s on a 2-core VM), and a step that builds
many small containers (10,000 model records, a page of the series explorer) triggers several:
in the daily run of 10,000 series, 1.5 s of about 11 s went to the collector.

``gc.freeze`` moves the objects alive at that moment to a permanent generation the collector
never scans; reference counting still frees them. It is called once the code location is
loaded and after each heavy library's lazy import, so collections scan only what the run
itself creates (the daily run's collector time: 1.5 s to ~0.5 s). A frozen object that later
becomes part of a reference cycle is not collected: freezing right after imports keeps that
to the few objects a step held at that moment. Serving workers freeze what they load the same
way: their model set at start and each swap, then models loaded on demand (``serving/``).

A run process's large arrays (a 40M-row drop's columns, masks and shards: hundreds of MB each)
are freed and allocated again many times a step. glibc hands each allocation over 32 MB back to
the kernel when it is freed (``mmap``/``munmap``), so the next one starts from pages the kernel
must find and zero again; on a virtual machine whose host reclaims freed guest memory, that
costs ~3 ms per MB (a 320-MB array: ~1 s to touch, against 0.015 s for memory the process
kept). ``retain_freed_memory`` keeps them: large allocations come from the heap and freed ones
stay for the next, and Arrow allocates through the same heap. The 40M-row ingestion's kernel
time halves (sys 9-13 s to 4-7 s) and its wall falls 10-25%. The price is that a process keeps
its peak memory until it ends (``release_freed_memory`` gives it back, as training does
before it forks its workers): it is set where the code location is loaded (each step's
short-lived process, and the code server, whose peak is small) and in the Azure ML job
scripts; serving workers, which hold their models for days, do not set it.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import sys
from types import ModuleType

# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MMAP_ABOVE = 1 << 30  # only allocations over 1 GB are mapped (and unmapped when freed)
_TRIM_ABOVE = 2**31 - 1  # free memory at the heap's top is kept up to 2 GB (a C int's most)
_retained = False


def freeze_loaded() -> None:
    """Leave every object alive now out of the collector's future scans (O(1))."""
    gc.freeze()


def import_frozen(name: str) -> ModuleType:
    """Import module ``name``, then freeze what the import created (``freeze_loaded``)."""
    module = importlib.import_module(name)
    freeze_loaded()
    return module


def glibc() -> ctypes.CDLL | None:
    """The C library, where it is glibc (whose ``mallopt`` this module sets); else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # musl and others: their own malloc
            return None
        return ctypes.CDLL("libc.so.6")
    except (OSError, ValueError):
        return None


def retain_freed_memory() -> bool:
    """Keep freed memory in this process for its next allocations (see the module's notes);
    whether it is on. Once per process; a no-op but on glibc (Linux). Forked workers inherit
    it. ``MLOPS_RETAIN_MEMORY=0`` turns it off."""
    global _retained
    if _retained:
        return True
    if os.environ.get("MLOPS_RETAIN_MEMORY", "1") == "0":
        return False
    libc = glibc()
    if libc is None:
        return False
    # One arena: threads' large allocations come from the main heap too (each thread arena
    # would map them afresh); then the thresholds that keep them.
    for param, value in (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_THRESHOLD, _MMAP_ABOVE),
        (_M_TRIM_THRESHOLD, _TRIM_ABOVE),
    ):
        if not libc.mallopt(param, value):
            return False
    import pyarrow as pa

    # Arrow's own allocator (mimalloc) returns freed pages to the kernel after a few ms.
    pa.set_memory_pool(pa.system_memory_pool())
    _retained = True
    return True


def release_freed_memory() -> None:
    """Give the memory this process has freed back to the kernel now (glibc's
    ``malloc_trim``), e.g. before forking workers, which would otherwise share and count the
    parent's retained pages. A no-op but on glibc."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)
