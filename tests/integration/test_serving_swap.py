"""Hot swap in one scoring worker: the new set is prepared off the request path.

In process (no server): ``ScoringService.check_for_update`` runs in its own thread, as the
worker's poll thread does, over a storage whose reads of the new set block until released. No
timing is asserted: a request is answered by the old set while the preparation is provably
still under way, then by the new one once it is swapped.
"""

from __future__ import annotations

import gc
import json
import threading
import weakref

import pytest

from mlops_assets.domain.model_sets import pointer_name, write_pointer
from mlops_assets.ml.spec import load_spec
from mlops_assets.serving.service import ScoringService, ServingSettings
from mlops_assets.serving.source import PointerSource
from mlops_assets.serving.synthetic import model_set_ref, request_rows, synthetic_model_set
from mlops_assets.storage import LocalStorage

pytestmark = pytest.mark.integration

SPEC = load_spec("sales")
OLD, NEW = "models/sales/swap-old", "models/sales/swap-new"
POINTER = pointer_name("sales", "production")


class GatedStorage(LocalStorage):
    """A local storage whose reads under ``gated`` wait for ``release`` (a slow Blob store)."""

    def __init__(self, root, gated: str):
        super().__init__(root)
        self.gated = gated
        self.entered, self.release = threading.Event(), threading.Event()

    def _wait(self, name: str) -> None:
        if name.startswith(self.gated):
            self.entered.set()
            assert self.release.wait(60), "never released"

    def read_bytes(self, name: str) -> bytes:
        self._wait(name)
        return super().read_bytes(name)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        self._wait(name)
        return super().read_range(name, offset, length)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    manifest = synthetic_model_set(root, OLD, SPEC, n_series=30, version="old")
    synthetic_model_set(root, NEW, SPEC, n_series=30, version="new", seed=5)
    return root, manifest


def serving(root, storage) -> ScoringService:
    write_pointer(LocalStorage(root), POINTER, model_set_ref(root, OLD).registered(1))
    svc = ScoringService(ServingSettings(root=str(root), poll_s=0))
    svc.source = PointerSource(storage, POINTER)
    return svc.start()


def ask(svc: ScoringService, manifest, n: int = 5) -> tuple[int, dict]:
    records = request_rows(SPEC, manifest, manifest["series_id"].to_pylist()[:n])
    reply = svc.handle("POST", {}, json.dumps({"data": records}).encode())
    return reply.status, json.loads(reply.body())


def test_a_request_during_a_slow_prepare_is_answered_by_the_old_set(sets):
    root, manifest = sets
    storage = GatedStorage(root, NEW)
    svc = serving(root, storage)
    try:
        assert ask(svc, manifest)[1]["model_set_version"] == "1"  # hot series to warm
        write_pointer(LocalStorage(root), POINTER, model_set_ref(root, NEW).registered(2))
        swapped: list = []
        poll = threading.Thread(target=lambda: swapped.append(svc.check_for_update()))
        poll.start()
        assert storage.entered.wait(60), "the preparation never read the new set"
        # The poll thread is blocked inside the preparation; requests go on, on the old set.
        for _ in range(3):
            status, body = ask(svc, manifest)
            assert status == 200 and body["n_errors"] == 0, body
            assert body["model_set_version"] == "1"
        assert poll.is_alive() and svc.info()["model_set_version"] == "1"
        storage.release.set()
        poll.join(60)
        assert swapped == [True] and svc.swaps == 1
        status, body = ask(svc, manifest)
        assert status == 200 and body["model_set_version"] == "2"
        last = svc.info()["last_swap"]
        assert last["version"] == "2" and {"seconds_load", "seconds_warm"} <= set(last)
    finally:
        storage.release.set()
        svc.close()


def test_a_swap_runs_no_collection_and_frees_the_old_set(sets):
    """The swap does no ``gc.collect()`` (it holds the interpreter lock for 100+ ms with the
    ML stack loaded, and every request of the worker would wait): the old set must be freed
    by reference counting alone, so it must hold no reference cycles."""
    root, manifest = sets
    svc = serving(root, LocalStorage(root))
    try:
        ask(svc, manifest, n=30)  # every model of the old set loaded
        old_reader = weakref.ref(svc.active.reader)
        sid = manifest["series_id"][0].as_py()
        old_model = weakref.ref(svc.active.reader.model_for(sid).model)
        write_pointer(LocalStorage(root), POINTER, model_set_ref(root, NEW).registered(2))
        collections: list[int] = []

        def seen(phase: str, info: dict) -> None:
            if phase == "start":
                collections.append(info["generation"])

        gc.disable()  # automatic collections off; an explicit gc.collect() still reports
        gc.callbacks.append(seen)
        try:
            assert svc.check_for_update()
            assert old_reader() is None and old_model() is None
        finally:
            gc.callbacks.remove(seen)
            gc.enable()
        assert collections == []
        assert ask(svc, manifest)[1]["model_set_version"] == "2"
    finally:
        svc.close()
        gc.unfreeze()
