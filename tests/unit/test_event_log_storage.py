"""The local instance's event log (``mlops_assets.event_log_storage``): Dagster's SQLite event
log with kept connections and template run files. Its files must be exactly what Dagster's own
class writes and reads, whichever of the two opened them first."""

import multiprocessing
import os
import sqlite3
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from mlops_assets.event_log_storage import KEPT_ENGINES, KeptSqliteEventLogStorage
from mlops_assets.profiles import ensure_dagster_home


@dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="numbers")])
def numbers():
    yield dg.Output([1, 2, 3])
    yield dg.AssetCheckResult(passed=True, check_name="positive")


@dg.asset
def total(numbers):
    return sum(numbers)


JOB = dg.define_asset_job("numbers_job", selection=[numbers, total])
DEFS = dg.Definitions(assets=[numbers, total], jobs=[JOB])


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return ensure_dagster_home(tmp_path)


def _run(instance) -> str:
    result = DEFS.resolve_job_def("numbers_job").execute_in_process(instance=instance)
    assert result.success
    return result.run_id


def _events(storage, run_id: str) -> list[tuple]:
    return [
        (r.dagster_event.event_type_value if r.dagster_event else None, r.step_key)
        for r in storage.get_logs_for_run(run_id)
    ]


def _schema(path: Path) -> tuple:
    with sqlite3.connect(path) as db:
        tables = sorted(db.execute("select type, name, sql from sqlite_master").fetchall())
        stamp = db.execute("select version_num from alembic_version").fetchall()
        mode = db.execute("pragma journal_mode").fetchone()
    return tables, stamp, mode


def test_the_local_instance_uses_it_and_dagster_reads_what_it_wrote(home):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, KeptSqliteEventLogStorage)
        run_ids = [_run(instance) for _ in range(KEPT_ENGINES + 2)]
        mine = {run_id: _events(storage, run_id) for run_id in run_ids}
        assert len(storage.kept_files) <= KEPT_ENGINES
        record = instance.get_latest_materialization_event(dg.AssetKey("total"))
        assert record.run_id == run_ids[-1]
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("numbers"), "positive")]
        )
        assert check[dg.AssetCheckKey(dg.AssetKey("numbers"), "positive")].run_id == run_ids[-1]
        base_dir = str(Path(storage.path_for_shard(run_ids[0])).parent)

    dagsters = SqliteEventLogStorage(base_dir)
    for run_id, events in mine.items():
        assert _events(dagsters, run_id) == events
        assert ("ASSET_CHECK_EVALUATION", "numbers") in events
        assert ("STEP_SUCCESS", "total") in events
    assert (
        dagsters.get_latest_materialization_events([dg.AssetKey("total")])[
            dg.AssetKey("total")
        ].run_id
        == list(mine)[-1]
    )


def test_a_templated_run_file_is_the_file_dagster_creates(home, tmp_path):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_id = _run(instance)
        base_dir = Path(instance.event_log_storage.path_for_shard(run_id)).parent
    reference = tmp_path / "reference"
    reference.mkdir()
    engine = create_engine(f"sqlite:///{reference / 'run.db'}", poolclass=NullPool)
    SqliteEventLogStorage(str(reference))._initdb(engine)  # noqa: SLF001 (Dagster's own)
    engine.dispose()
    ours, dagsters = _schema(base_dir / f"{run_id}.db"), _schema(reference / "run.db")
    assert ours == dagsters
    assert ours[2] == ("wal",) and ours[1]  # write-ahead log, alembic head stamped
    # The template sits beside the run files without being taken for one.
    assert list(base_dir.glob(".run-template-*.sqlite"))
    assert run_id in SqliteEventLogStorage(str(base_dir)).get_all_run_ids()
    assert all(not name.endswith(".part") for name in os.listdir(base_dir))


def test_an_existing_run_file_is_never_replaced(home):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_id = _run(instance)
        base_dir = str(Path(instance.event_log_storage.path_for_shard(run_id)).parent)
        before = _events(instance.event_log_storage, run_id)
    # A fresh storage (another process) sees the file and keeps what it holds.
    other = KeptSqliteEventLogStorage(base_dir)
    assert other.create_from_template(run_id) is False
    assert _events(other, run_id) == before and before


def _write_in_child(storage: KeptSqliteEventLogStorage, run_id: str) -> None:
    if storage.kept_files:  # inherited connections must not be used (nor closed) here
        raise SystemExit(3)
    storage.store_event(
        dg.EventLogEntry(
            error_info=None,
            level="INFO",
            user_message="from the child",
            run_id=run_id,
            timestamp=1.0,
        )
    )


def test_a_forked_child_uses_its_own_connections(home):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_id = _run(instance)
        storage = instance.event_log_storage
        assert storage.kept_files  # the parent holds open connections
        child = multiprocessing.get_context("fork").Process(
            target=_write_in_child, args=(storage, run_id)
        )
        child.start()
        child.join(60)
        assert child.exitcode == 0
        messages = [r.user_message for r in storage.get_logs_for_run(run_id)]
        assert "from the child" in messages
        _run(instance)  # the parent's kept connections still work


def test_wipe_closes_and_removes_the_run_files(home):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_id = _run(instance)
        storage = instance.event_log_storage
        storage.wipe()
        assert run_id not in storage.kept_files  # (the index is open again: wipe clears it)
        assert not Path(storage.path_for_shard(run_id)).exists()
        assert _events(storage, run_id) == []
        assert _events(storage, _run(instance))


def test_an_instance_with_its_own_storage_is_left_alone(tmp_path, monkeypatch):
    home = tmp_path / "dagster"
    home.mkdir()
    own = "storage:\n  sqlite:\n    base_dir: " + str(tmp_path / "elsewhere") + "\n"
    (home / "dagster.yaml").write_text(own)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    ensure_dagster_home(tmp_path)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert "event_log_storage" not in config
    assert config["storage"] == {"sqlite": {"base_dir": str(tmp_path / "elsewhere")}}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.event_log_storage) is SqliteEventLogStorage
