"""A local MLflow store survives a kill during its creation (issue 19, item 4).

A child process creating the store is killed (``os._exit`` from a SQLAlchemy statement hook)
part way through MLflow's migrations; the store is then used from this process.
"""

import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resources.registry import MlflowRegistry
from resources.registry_store import RegistryStoreError, inspect_store

pytestmark = pytest.mark.integration

KILLED = 9

CHILD = textwrap.dedent(
    """
    import atexit, os, sys
    import sqlalchemy

    uri, limit, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count = [0]
    atexit.register(lambda: print(f"statements={count[0]}"))

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "before_cursor_execute")
    def die(*args, **kwargs):
        count[0] += 1
        if count[0] >= limit:
            os._exit(9)

    if how == "ours":
        from resources.registry import MlflowRegistry

        MlflowRegistry(tracking_uri=uri).client()
    else:  # MLflow alone, creating the store in place
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    """
)


def killed_during_creation(uri: str, after_statements: int, how: str = "ours") -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, uri, str(after_statements), how],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == KILLED, proc.stderr[-2000:]


def statements_to_create(tmp: Path) -> int:
    """How many SQL statements creating a store takes with the installed MLflow (its
    migrations change between releases), so the kills land early, midway and late."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, f"sqlite:///{tmp / 'count.db'}", str(10**9), "ours"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return int(proc.stdout.strip().rsplit("statements=", 1)[1])


def register_one(registry: MlflowRegistry) -> int:
    return registry.register_model_set("m-models", "file:///set", {"folder": "set"}).version


def test_a_kill_during_creation_leaves_no_half_created_store(tmp_path):
    db = tmp_path / "mlflow" / "prod.db"
    uri = f"sqlite:///{db}"
    # Early (initial tables), mid-migration and late (last revisions) kills, one after another.
    total = statements_to_create(tmp_path)
    assert total > 200, total
    for after in (40, total // 2, total - 20):
        killed_during_creation(uri, after)
        assert not db.exists() or inspect_store(db).ok, f"half-created store after {after}"
    registry = MlflowRegistry(tracking_uri=uri, alias="production")
    assert register_one(registry) == 1
    assert inspect_store(db).ok
    assert not list(db.parent.glob(".tmp-*")), "the dead creators' temporary stores remain"


def test_a_half_created_empty_store_is_rebuilt_with_a_message(tmp_path, caplog):
    db = tmp_path / "mlflow" / "prod.db"
    db.parent.mkdir(parents=True)
    uri = f"sqlite:///{db}"
    killed_during_creation(uri, statements_to_create(tmp_path) // 2, how="mlflow")  # MLflow alone
    assert not inspect_store(db).ok and not inspect_store(db).has_data
    with caplog.at_level(logging.WARNING, logger="resources.registry_store"):
        registry = MlflowRegistry(tracking_uri=uri, alias="production")
        assert register_one(registry) == 1
    assert "half-created" in caplog.text and "rebuilt" in caplog.text
    assert len(list(db.parent.glob("prod.db.broken-*"))) == 1


def test_a_damaged_store_holding_versions_is_refused_with_what_to_do(tmp_path):
    good = tmp_path / "a" / "dev.db"
    register_one(MlflowRegistry(tracking_uri=f"sqlite:///{good}"))
    damaged = tmp_path / "b" / "dev.db"
    damaged.parent.mkdir()
    shutil.copy(good, damaged)
    con = sqlite3.connect(damaged)
    con.execute("CREATE TABLE _alembic_tmp_params (key TEXT)")
    con.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")
    con.commit()
    con.close()
    with pytest.raises(RegistryStoreError) as info:
        MlflowRegistry(tracking_uri=f"sqlite:///{damaged}").client()
    message = str(info.value)
    assert "holds 1 model versions" in message and "mlflow db upgrade" in message
    assert "_alembic_tmp_params" in message
    assert damaged.exists() and not list(damaged.parent.glob("*.broken-*"))  # left as it was


def test_two_processes_creating_the_store_at_once_both_succeed(tmp_path):
    db = tmp_path / "mlflow" / "dev.db"
    code = (
        "import sys; from resources.registry import MlflowRegistry; "
        "MlflowRegistry(tracking_uri=sys.argv[1]).client()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"sqlite:///{db}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    assert inspect_store(db).ok
    assert Path(db).exists() and not list(db.parent.glob(".tmp-*"))


def test_the_schema_head_is_kept_beside_the_store_per_mlflow_version(tmp_path):
    """Finding MLflow's schema head parses every migration (~1 s a process): it is kept."""
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.version import VERSION

    from resources.registry_store import HEAD_CACHE, ensure_sqlite_store

    db = tmp_path / "mlflow" / "dev.db"
    assert ensure_sqlite_store(db) == "created"
    cache = db.parent / HEAD_CACHE
    head = str(_get_latest_schema_revision())
    assert json.loads(cache.read_text()) == {"mlflow": VERSION, "head": head}
    # Another MLflow's head is not trusted: found again, and the store is still whole.
    cache.write_text(json.dumps({"mlflow": "0.0.1", "head": "not-a-revision"}))
    assert inspect_store(db).ok
    assert json.loads(cache.read_text())["head"] == head
    # The kept head is what the check uses: a wrong one for this version marks the store.
    cache.write_text(json.dumps({"mlflow": VERSION, "head": "not-a-revision"}))
    assert not inspect_store(db).ok
