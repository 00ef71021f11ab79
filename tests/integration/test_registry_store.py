"""A local MLflow store survives a kill during its creation (issue 19, item 4), and the
schema kept for the pinned MLflow is the one its migrations build.

A child process creating the store is killed (``os._exit`` from a SQLAlchemy statement hook)
part way through its statements; the store is then used from this process.
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
from resources.registry_store import (
    SCHEMA_FILE,
    RegistryStoreError,
    _build,
    inspect_store,
    kept_schema,
    schema_statements,
)

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
    # Early (first tables), midway and late kills, one after another.
    total = statements_to_create(tmp_path)
    assert total > 100, total
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


def clauses(sql: str) -> tuple:
    """A statement with a CREATE TABLE's clauses (columns, constraints) as a sorted tuple:
    MLflow's migrations rebuild tables with their constraints in varying order."""
    if not sql.startswith("CREATE TABLE"):
        return (sql,)
    head, body = sql.split("(", 1)
    parts, depth, part = [], 0, ""
    for ch in body.rsplit(")", 1)[0]:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(part.strip())
            part = ""
        else:
            part += ch
    parts.append(part.strip())
    return (head.replace('"', "").strip(), *sorted(parts))


def same_statements(a: list[str], b: list[str]) -> bool:
    return sorted(map(clauses, a)) == sorted(map(clauses, b))


def master(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        schema = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        rows = con.execute("SELECT * FROM alembic_version").fetchall()
        return sorted((*r[:3], clauses(r[3] or "")) for r in schema) + rows
    finally:
        con.close()


def test_the_kept_schema_is_what_mlflow_migrations_build(tmp_path):
    """``mlflow_schema.json`` is for the pinned MLflow, and a store built from it is, table
    for table and index for index, the store MLflow's own migrations build."""
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.version import VERSION

    kept = kept_schema()
    assert kept is not None, (
        f"{SCHEMA_FILE.name} was not written for the installed MLflow {VERSION}: "
        "run `python -m resources.registry_store` and commit the file"
    )
    assert kept["head"] == str(_get_latest_schema_revision())
    migrated, from_kept = tmp_path / "migrated.db", tmp_path / "kept.db"
    _build(migrated, None)
    _build(from_kept, kept)
    assert inspect_store(migrated).ok and inspect_store(from_kept).ok
    assert same_statements(schema_statements(migrated), kept["statements"])
    assert master(from_kept) == master(migrated)
    # The kept store is one MLflow uses: a model set registers and its alias resolves.
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{from_kept}", alias="champion")
    version = register_one(registry)
    registry.set_alias("m-models", "champion", version)
    assert registry.get_alias("m-models").version == version


def statements_run(create) -> int:
    """How many SQL statements ``create()`` runs through SQLAlchemy."""
    import sqlalchemy

    count = [0]

    def counted(*args, **kwargs):
        count[0] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", counted)
    try:
        create()
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", counted)
    return count[0]


def test_another_mlflow_version_builds_through_the_migrations(tmp_path, monkeypatch):
    from resources.registry_store import ensure_sqlite_store

    kept = tmp_path / "a" / "dev.db"
    assert statements_run(lambda: ensure_sqlite_store(kept)) == len(kept_schema()["statements"])
    doc = json.loads(SCHEMA_FILE.read_text())
    other = tmp_path / "mlflow_schema.json"
    other.write_text(json.dumps({**doc, "mlflow": "0.0.1"}))
    monkeypatch.setattr("resources.registry_store.SCHEMA_FILE", other)
    assert kept_schema() is None
    migrated = tmp_path / "b" / "dev.db"
    assert statements_run(lambda: ensure_sqlite_store(migrated)) > 1_000  # ~1,700 migrations
    assert inspect_store(migrated).ok
    assert master(migrated) == master(kept)
