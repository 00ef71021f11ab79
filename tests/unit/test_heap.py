"""The code location's long-lived objects are frozen out of the collector's scans."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest

from mlops_assets import heap


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_import_frozen_freezes_what_is_alive(unfrozen):
    kept = [[i] for i in range(1000)]  # tracked containers alive at the freeze
    module = heap.import_frozen("json")
    assert module.dumps([1]) == "[1]"
    assert gc.get_freeze_count() >= len(kept)
    # Reference counting still frees a frozen object; the collector no longer scans it.
    assert all(not any(o is k for o in gc.get_objects()) for k in kept[:3])


def test_loading_the_code_location_freezes_it(unfrozen):
    from mlops_assets.definitions import defs

    assert gc.get_freeze_count() == 0
    defs()
    assert gc.get_freeze_count() > 100_000


_RETAIN = """
import json, numpy as np, pyarrow as pa
from mlops_assets import heap
on = heap.retain_freed_memory()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
before = rss()
a = np.ones(64 << 17)  # 64 MB: glibc maps it apart unless told otherwise
del a
kept = (rss() - before) / 2**20
heap.release_freed_memory()  # as before forking workers: the kept memory goes back
print(json.dumps({"on": on, "again": heap.retain_freed_memory(), "kept_mb": kept,
                  "released_mb": (rss() - before) / 2**20,
                  "arrow": pa.default_memory_pool().backend_name}))
"""


@pytest.mark.skipif(not heap.glibc(), reason="glibc's malloc only")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_retained_memory_is_kept_for_the_next_allocation(setting):
    """With retention on, a freed 64-MB array's memory stays in the process (the next large
    array reuses it, with no page to fault in), and Arrow allocates through the same heap;
    ``release_freed_memory`` gives it back (before a pool forks); ``MLOPS_RETAIN_MEMORY=0``
    leaves glibc and Arrow as they are (the memory goes back at once)."""
    out = subprocess.run(
        [sys.executable, "-c", _RETAIN],
        env={**os.environ, "MLOPS_RETAIN_MEMORY": setting},
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if setting == "1":
        assert got["on"] and got["again"]
        assert got["kept_mb"] > 60
        assert got["released_mb"] < 8
        assert got["arrow"] == "system"
    else:
        assert not got["on"]
        assert got["kept_mb"] < 8
        assert got["arrow"] != "system"
