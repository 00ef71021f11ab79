"""Deterministic crash points (issue 18, item 1): the process ends (``MLOPS_FAULT``) inside each
multi-step write, then readers and a rerun are checked.

For each point the real step (the domain function its asset calls) runs in a process of its own
on a copy of a prepared home, and dies there with ``faults.EXIT_CODE``. Then:

* every object a reader can reach (pointers, release records, registry aliases and versions,
  curated shards, ledger entries, batch outputs) is either what it was before the step or what
  an uninterrupted run of the step leaves: nothing half-written is visible;
* every reader still works: each pointer, release and registered version resolves to a set
  whose manifest and models verify by sha256; the curated data and the ledger read;
* a rerun without the fault (a new run, as Dagster would start) ends with the same results as
  the uninterrupted run: curated rows, model digests, the registered or promoted set, the
  predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mlops_assets import faults
from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.ledger import DropLedger
from mlops_assets.domain.registry_records import ModelSetVersion
from mlops_assets.ml.tables import decode_dictionaries
from mlops_assets.storage import LocalStorage
from tests.fixtures import fault_chain as fc

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NAME = ms.registered_model_name(fc.SPEC)


@dataclass(frozen=True)
class Case:
    point: str
    n: int
    stage: str  # the prepared home the step starts from
    step: tuple[str, ...]  # the step and its arguments (a run id: the same as the reference's)
    rerun: tuple[str, ...]  # the rerun: a new run where the step takes a run id


TRAIN = ("train", fc.DAY2, "fault000")
TRAIN_AGAIN = ("train", fc.DAY2, "rerun000")
CASES = [
    Case("curated.shard", 1, "day1", ("ingest", fc.DAY2), ("ingest", fc.DAY2)),
    Case("ledger", 1, "day1", ("ingest", fc.DAY2), ("ingest", fc.DAY2)),
    Case("model_set.pack", 1, "ingested", TRAIN, TRAIN_AGAIN),
    Case("model_set.manifest", 1, "ingested", TRAIN, TRAIN_AGAIN),
    Case("pointer", 1, "ingested", TRAIN, TRAIN_AGAIN),
    Case("registration", 1, "evaluated", ("register", fc.DAY2), ("register", fc.DAY2)),
    Case("alias.move", 1, "evaluated", ("register", fc.DAY2), ("register", fc.DAY2)),
    Case("promotion.copy", 1, "registered", ("promote", "2"), ("promote", "2")),
    Case("batch.output", 1, "day1", ("score",), ("score",)),
]


def copy_home(src: Path, dst: Path) -> Path:
    """``src`` as a new home. Storage files are hard links: storage never writes a file in
    place (a new file, then a rename), and a link keeps the inode and mtime, so every etag (and
    with it the ledger and the drop keys) stays the same. The SQLite registries are copied."""

    def link(s: str, d: str) -> None:
        if s.endswith(".db"):
            shutil.copy2(s, d)
        else:
            os.link(s, d)

    shutil.copytree(src, dst, copy_function=link)
    return dst


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, Path]:
    """The prepared homes: day one done, then day two ingested, evaluated, registered (v2)."""
    root = tmp_path_factory.mktemp("fault-stages")
    day1 = root / "day1"
    fc.build_day1(day1)
    ingested = copy_home(day1, root / "ingested")
    fc.ingest(ingested, fc.DAY2)
    evaluated = copy_home(ingested, root / "evaluated")
    fc.train(evaluated, fc.DAY2, "day2run0")
    fc.evaluate(evaluated, fc.DAY2, "day2eval")
    registered = copy_home(evaluated, root / "registered")
    fc.register(registered, fc.DAY2)
    return {"day1": day1, "ingested": ingested, "evaluated": evaluated, "registered": registered}


def run_step(home: Path, step: tuple[str, ...]) -> float:
    started = time.perf_counter()
    fc.STEPS[step[0]](home, *step[1:])
    return time.perf_counter() - started


def crash(home: Path, case: Case) -> subprocess.CompletedProcess:
    env = {**os.environ, faults.FAULT_ENV: f"{case.point}:{case.n}", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "tests.fixtures.fault_chain", str(home), *case.step],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---- what readers see ----------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_pointer(name: str) -> bool:
    """Pointers and release records: the JSON files under models/ that are not a set's ref."""
    return name.endswith(".json") and not name.endswith("/" + ms.REF_FILE)


def _alias(home: Path, env: str) -> dict | None:
    version = fc.registry(home, env).get_alias(NAME)
    return None if version is None else version.ref.to_dict()


def _set_content(storage: LocalStorage, ref: dict) -> dict:
    """A pointed-at set as a reader takes it: the ref (less its digest) and the manifest's
    content, but for the ``*_seconds`` columns (wall-clock timings, different in every run)."""
    manifest = ms.read_manifest(storage, ms.ModelSetRef.from_dict(ref))
    manifest = manifest.drop_columns([c for c in manifest.column_names if c.endswith("_seconds")])
    rows = json.dumps(manifest.to_pylist(), default=str, sort_keys=True)
    content = _digest(rows.encode())
    return {**{k: v for k, v in ref.items() if k != "manifest_sha256"}, "content": content}


def _pointer(storage: LocalStorage, name: str) -> dict:
    data = json.loads(storage.read_text(name))
    if "/releases/" not in name:
        return _set_content(storage, data)
    return {**data, **{k: _set_content(storage, data[k]) for k in ("ref", "candidate")}}


def visible(home: Path) -> dict[str, object]:
    """Every object a reader reaches, by name: its content (or digest)."""
    dev = fc.dev(home)
    out: dict[str, object] = {}
    for b in dev.list(ms.models_root(fc.SPEC) + "/"):
        if _is_pointer(b.name):
            out[b.name] = _pointer(dev, b.name)
    for prefix in (CuratedStore(dev, fc.SPEC).prefix + "/", "scoring/"):
        for b in dev.list(prefix):
            out[b.name] = _digest(dev.read_bytes(b.name))
    for b in dev.list(f"ledger/{fc.SPEC.name}/"):
        out[b.name] = "present"  # an entry's content carries its run's clock
    for env in ("dev", "prod"):
        out[f"alias:{env}"] = _alias(home, env)
        versions = fc.registry(home, env).list_versions(NAME)
        out[f"versions:{env}"] = [v.ref.to_dict() for v in versions]
    return out


def _verify(storage: LocalStorage, ref: ms.ModelSetRef) -> None:
    ms.verify_models(storage, ms.read_manifest(storage, ref))


def readers_work(home: Path) -> None:
    """Every pointer, release and registered version resolves to a set that verifies by sha256;
    the curated data and the ledger read."""
    dev = fc.dev(home)
    for name in (b.name for b in dev.list(ms.models_root(fc.SPEC) + "/")):
        if not _is_pointer(name):
            continue
        if "/releases/" in name:
            release = ms.read_release(dev, name)
            assert release is not None
            _verify(dev, release.ref)
            _verify(dev, release.candidate)
        else:
            ref = ms.read_pointer(dev, name)
            assert ref is not None
            _verify(dev, ref)
    for env, storage in (("dev", dev), ("prod", fc.prod(home))):
        registry = fc.registry(home, env)
        for version in registry.list_versions(NAME):
            _verify(storage, version.ref)
        alias = registry.get_alias(NAME)
        if alias is not None:
            _verify(storage, alias.ref)
    CuratedStore(dev, fc.SPEC).read()
    DropLedger(dev, fc.SPEC).all()


# ---- what a step leaves --------------------------------------------------------------------


def _ref_key(version: ModelSetVersion | None) -> tuple | None:
    return None if version is None else (version.ref.folder, version.ref.manifest_sha256)


def results(home: Path, step: str) -> dict[str, object]:
    """What the step produced that a rerun must reproduce exactly."""
    dev = fc.dev(home)
    if step == "ingest":
        rows = decode_dictionaries(CuratedStore(dev, fc.SPEC).read())
        rows = rows.sort_by([(k, "ascending") for k in fc.SPEC.key_columns])
        drops = sorted(o.drop for o in DropLedger(dev, fc.SPEC).all())
        return {"rows": rows.to_pydict(), "drops": drops}
    if step == "train":
        latest = ms.read_pointer(dev, ms.latest_pointer(fc.SPEC))
        candidate = ms.read_pointer(dev, ms.candidate_pointer(fc.SPEC, fc.DAY2))
        assert latest is not None and candidate == latest
        manifest = ms.read_manifest(dev, latest)
        ids, digests = manifest["series_id"].to_pylist(), manifest["model_sha256"].to_pylist()
        pairs = zip(ids, digests, strict=True)
        return {"models": dict(pairs)}
    if step == "register":
        registry = fc.registry(home)
        return {
            "champion": _ref_key(registry.get_alias(NAME)),
            "versions": len(registry.list_versions(NAME)),
        }
    if step == "promote":
        return {"production": _ref_key(fc.registry(home, "prod").get_alias(NAME))}
    assert step == "score"
    name = fc.predictions_name(home)
    quarantined = name.replace("/predictions/", "/quarantine/rows/")
    return {
        "predictions": pq.read_table(dev.local_path(name)).to_pydict(),
        "quarantined": pq.read_table(dev.local_path(quarantined)).to_pydict(),
    }


# ---- the test ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.point for c in CASES])
def test_a_crash_leaves_the_last_good_state_and_a_rerun_completes(stages, tmp_path, case):
    start = stages[case.stage]
    before = visible(start)
    reference = copy_home(start, tmp_path / "reference")
    run_step(reference, case.step)
    expected = results(reference, case.step[0])
    after_ok = visible(reference)

    home = copy_home(start, tmp_path / "crashed")
    proc = crash(home, case)
    assert proc.returncode == faults.EXIT_CODE, proc.stderr[-3000:]
    assert f"ending the process at {case.point}" in proc.stderr

    seen = visible(home)
    assert seen != after_ok, "the step finished: the fault point was not reached mid-write"
    for name in sorted(set(before) | set(seen) | set(after_ok)):
        value = seen.get(name)
        assert value in (before.get(name), after_ok.get(name)), (
            f"{name}: a reader sees neither the last good state nor the finished write: {value}"
        )
    readers_work(home)

    seconds = run_step(home, case.rerun)
    readers_work(home)
    assert results(home, case.step[0]) == expected
    # The time to recover, for the runbook's table (shown with ``pytest -s``).
    sys.stderr.write(f"\nFAULT {case.point}:{case.n} {case.step[0]}: rerun {seconds:.2f}s\n")


def ledger_counts(home: Path) -> dict[str, tuple]:
    return {
        o.drop: (o.status, o.rows_curated, o.rows_duplicate, o.rows_replaced, o.rows_quarantined)
        for o in DropLedger(fc.dev(home), fc.SPEC).all()
    }


@pytest.mark.parametrize("point", ["curated.shard", "ledger"])
def test_a_rerun_ingestion_records_the_uninterrupted_counts(stages, tmp_path, point):
    case = next(c for c in CASES if c.point == point)
    reference = copy_home(stages[case.stage], tmp_path / "reference")
    run_step(reference, case.step)
    home = copy_home(stages[case.stage], tmp_path / "crashed")
    assert crash(home, case).returncode == faults.EXIT_CODE
    run_step(home, case.rerun)
    assert results(home, "ingest") == results(reference, "ingest")  # the rows are the same
    assert ledger_counts(home) == ledger_counts(reference)


def test_an_interrupted_registration_is_removed_after_its_grace(stages, tmp_path):
    """The version a crash left incomplete is never read, and the next registration past the
    grace period removes it (the rerun above, within the grace, leaves it)."""
    home = copy_home(stages["evaluated"], tmp_path / "home")
    case = next(c for c in CASES if c.point == "alias.move")
    assert crash(home, case).returncode == faults.EXIT_CODE
    run_step(home, case.rerun)
    registry = fc.registry(home, incomplete_grace_s=0)
    assert registry.recover_interrupted(NAME) == [2]
    assert [v.version for v in registry.list_versions(NAME)] == [1, 3]
    assert registry.get_alias(NAME).version == 3


@pytest.mark.parametrize("point", ["model_set.pack", "model_set.manifest"])
def test_the_set_folder_a_crashed_training_left_is_swept_after_its_grace(stages, tmp_path, point):
    """The crashed run's folder (no ref file: unreachable) stays while a run might still be
    writing it, and the first training past the grace removes it, and nothing else."""
    home = copy_home(stages["ingested"], tmp_path / "home")
    case = next(c for c in CASES if c.point == point)
    assert crash(home, case).returncode == faults.EXIT_CODE
    storage = fc.dev(home)
    crashed = f"{ms.set_folder(fc.SPEC, fc.DAY2)}/{case.step[2][:8]}"
    assert list(ms.unfinished_sets(storage, fc.SPEC, grace_s=0)) == [crashed]
    assert ms.unfinished_sets(storage, fc.SPEC) == {}  # within the default grace (an hour)
    run_step(home, case.rerun)  # within the grace: kept
    assert storage.list(f"{crashed}/")
    finished = {b.name for b in storage.list("models/") if not b.name.startswith(crashed)}
    later = datetime.now(UTC) + timedelta(hours=2)
    assert ms.sweep_unfinished_sets(storage, fc.SPEC, now=later) == [crashed]
    assert storage.list(f"{crashed}/") == []
    assert {b.name for b in storage.list("models/")} == finished
    latest = ms.read_pointer(storage, ms.latest_pointer(fc.SPEC))
    assert latest is not None
    assert ms.verify_models(storage, ms.read_manifest(storage, latest)) > 0
