"""The code location's long-lived objects are frozen out of the collector's scans."""

from __future__ import annotations

import gc

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
