"""Transient Blob faults (issue 18, item 3): the SDK's retry policy absorbs them, end state unchanged.

Dev and prod storage are containers in Azurite reached through :mod:`tests.fixtures.fault_proxy`.
The lifecycle's own domain functions run: ingestion (a drop curated into shards and the ledger),
training (model packs, manifest and pointers written through ``Storage``), evaluation and
registration, then promotion (the set copied to prod storage, verified, registered). During
ingestion, training and promotion the proxy answers 503 ``ServerBusy``, resets connections before
and after the request reached Azurite, and holds answers back past the client's read timeout.
The curated rows, the ledger, the trained model digests and the promoted set in prod are the
same as those of a run without faults, and the proxy's log shows each fault followed by a
successful retry of the same request.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError, ServiceResponseError

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.curation import landing_prefix
from mlops_assets.domain.evaluation_run import evaluate_candidate
from mlops_assets.domain.ingest_run import run_ingestion
from mlops_assets.domain.ledger import DropLedger
from mlops_assets.domain.promotion import promote_version, register_release
from mlops_assets.domain.sample_drops import land_sales
from mlops_assets.domain.training_run import train_candidate
from mlops_assets.ml.champion_gate import Policy
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import LocalStorage, Storage
from mlops_assets.storage.azure import AzureBlobStorage, BlobRetry
from resources.training_engine import LocalTrainingEngine
from tests.fixtures import fault_chain as fc
from tests.fixtures.azurite import Azurite, unique_container_name
from tests.fixtures.fault_proxy import FaultProxy, Rule

pytestmark = [pytest.mark.integration, pytest.mark.azurite]

NAME = ms.registered_model_name(fc.SPEC)
AS_OF = fc.DAY1
READ_TIMEOUT_S = 1.0
# Short waits, so that the test is quick; the policy (which errors, how many times) is the
# production one, only the backoff is scaled down.
RETRY = BlobRetry(initial_backoff_s=0.05, increment_base=0.1, jitter_s=0.0, read_timeout_s=1.0)


def phase_faults(blob_path: str) -> list[Rule]:
    """One of each fault on the phase's writes and reads (the matches are counted per rule,
    retries included, so a fault's own retry goes through)."""
    return [
        Rule("503", "PUT", blob_path, at=(1,)),
        Rule("reset", "PUT", blob_path, at=(3,)),
        Rule("reset_after", "PUT", blob_path, at=(5,)),
        Rule("503", "GET", at=(1,)),
        Rule("delay", "GET", at=(3,), delay_s=READ_TIMEOUT_S + 0.5),
    ]


@pytest.fixture
def proxy(azurite: Azurite):
    proxy = FaultProxy(azurite.host, azurite.blob_port).start()
    yield proxy
    proxy.stop()


def through(proxy: FaultProxy, azurite: Azurite, hint: str) -> AzureBlobStorage:
    """A storage on a new container whose every call goes through the proxy."""
    url = proxy.url(azurite.account_name)
    return AzureBlobStorage(
        account_url=url,
        container=unique_container_name(hint),
        connection_string=azurite.connection_string.replace(azurite.blob_url, url),
        create_container=True,
        retry=RETRY,
    )


def lifecycle(
    home: Path, dev: AzureBlobStorage, prod: AzureBlobStorage, proxy: FaultProxy, faults: bool
) -> dict:
    """Ingest, train, evaluate, register and promote one dataset; faults during the phases."""
    drops = LocalStorage(home / "drops")
    land_sales(drops, fc.SPEC, fc.SHAPE, n_drops=3)
    drop = landing_prefix(fc.SPEC) + fc.HISTORY
    dev.write_bytes(drop, drops.read_bytes(drop))
    registry, prod_registry = fc.registry(home), fc.registry(home, "prod")

    def phase(name: str, blob_path: str):
        return proxy.armed(name, *(phase_faults(blob_path) if faults else []))

    with phase("ingestion", "/(curated|ledger)/"):
        run_ingestion(dev, fc.SPEC, date.fromisoformat(AS_OF), n_shards=4, data_docs=False)
    with phase("training", "/models/"):
        engine = LocalTrainingEngine(max_workers=1)
        train_candidate(dev, fc.SPEC, engine, as_of=AS_OF, run_id="run00000")
    evaluate_and_register(home, dev, registry)
    with phase("promotion", f"/{prod.container}/"):
        promote_version(fc.SPEC, dev, prod, registry, prod_registry, 1)

    rows = decode_dictionaries(CuratedStore(dev, fc.SPEC).read())
    rows = rows.sort_by([(k, "ascending") for k in fc.SPEC.key_columns])
    latest = ms.read_pointer(dev, ms.latest_pointer(fc.SPEC))
    assert latest is not None
    production = prod_registry.get_alias(NAME)
    assert production is not None
    prod_manifest = ms.read_manifest(prod, production.ref)
    ms.verify_models(prod, prod_manifest)
    return {
        "rows": rows.to_pydict(),
        "ledger": sorted(
            (o.drop, o.status, o.rows_curated) for o in DropLedger(dev, fc.SPEC).all()
        ),
        "models": digests(ms.read_manifest(dev, latest)),
        "production": (production.version, digests(prod_manifest)),
        "prod objects": sorted(
            b.name.removeprefix(production.ref.folder) for b in prod.list(production.ref.folder)
        ),
    }


def evaluate_and_register(home: Path, dev: Storage, registry) -> None:
    outcome = evaluate_candidate(
        dev,
        registry,
        fc.SPEC,
        as_of=AS_OF,
        run_id="eval0000",
        policy=Policy(),
        max_median_increase=1.0,
    )
    assert outcome.release.passed, outcome.quality
    release = ms.read_release(dev, ms.release_pointer(fc.SPEC, AS_OF))
    assert release is not None
    register_release(dev, registry, fc.SPEC, release, AS_OF, f"register-{AS_OF}", registry.alias)


def digests(manifest) -> dict[str, str]:
    ids, shas = manifest["series_id"].to_pylist(), manifest["model_sha256"].to_pylist()
    return dict(zip(ids, shas, strict=True))


def timed_lifecycle(tmp_path: Path, azurite: Azurite, proxy: FaultProxy, faults: bool):
    """The lifecycle on new dev and prod containers: its end state and how long it took."""
    name = "faulty" if faults else "clean"
    dev, prod = through(proxy, azurite, f"{name}-dev"), through(proxy, azurite, f"{name}-prod")
    started = time.perf_counter()
    state = lifecycle(tmp_path / name, dev, prod, proxy, faults=faults)
    return state, time.perf_counter() - started


def test_transient_blob_faults_are_retried_and_leave_the_same_end_state(azurite, proxy, tmp_path):
    clean, clean_s = timed_lifecycle(tmp_path, azurite, proxy, faults=False)
    assert proxy.faults() == []
    proxy.log.clear()
    faulty, faulty_s = timed_lifecycle(tmp_path, azurite, proxy, faults=True)
    assert faulty == clean

    log = proxy.log
    for phase in ("ingestion", "training", "promotion"):
        injected = proxy.faults(phase)
        actions = {e.action for e in injected}
        assert actions == {"503", "reset", "reset_after", "delay"}, (phase, injected)
        for fault in injected:  # the same call again, later, and answered
            retried = [
                e
                for e in log[fault.n :]
                if (e.method, e.path) == (fault.method, fault.path) and e.action == "forward"
            ]
            assert retried and retried[0].status is not None and retried[0].status < 500, fault
    print(  # the figures for the runbook (pytest -s)
        f"\nSTORAGE FAULTS {len(proxy.faults())} injected over {len(log)} requests: "
        f"{faulty_s:.1f}s with faults, {clean_s:.1f}s without"
    )


def test_without_retries_the_same_faults_reach_the_caller(azurite, proxy):
    """The control: what absorbs the faults above is the configured retry policy."""
    storage = through(proxy, azurite, "no-retry")
    storage.retry = BlobRetry(total=0, connect=0, read=0, status=0)
    storage.write_bytes("warm/up.txt", b"container created")
    with proxy.armed("busy", Rule("503", "PUT")), pytest.raises(HttpResponseError) as busy:
        storage.write_bytes("a/b.txt", b"x")
    assert busy.value.error_code == "ServerBusy"
    with proxy.armed("reset", Rule("reset", "PUT")), pytest.raises(ServiceResponseError):
        storage.write_bytes("a/b.txt", b"x")
    assert [e.action for e in proxy.faults()] == ["503", "reset"]
    assert not storage.exists("a/b.txt")
