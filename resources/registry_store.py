"""A local MLflow SQLite store, created and migrated atomically.

MLflow creates a SQLite store in place: a process killed during its ~1,700 migration statements
leaves a half-migrated file ("table `_alembic_tmp_params` already exists", "out-of-date database
schema") that every later open refuses and ``mlflow db upgrade`` cannot repair. Here the store
is built in a temporary file next to it, its schema is verified, and only then is it renamed
into place; a file lock serialises creators across processes.

Building a store runs MLflow's ~60 migration scripts (~1.6 s, most of a fresh home's first
registry call). ``mlflow_schema.json`` holds the statements those migrations leave for the
pinned MLflow (``sqlite3``'s own dump of a store they built: tables, indexes, the
``alembic_version`` and default rows); where the installed MLflow is that version, a store is
built from it in ~0.05 s. Any other MLflow version builds through the migrations, as MLflow
does. The integration tests build one store each way and compare them; after an MLflow
upgrade, ``python -m resources.registry_store`` writes the file again.

An existing file whose schema is not MLflow's current one (a store left half-created by an
older version of this code, or by MLflow itself) is rebuilt when it holds no runs and no model
versions (moved aside, with a warning), and refused with what to do when it holds data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlops_assets.domain.registry_records import RegistryError

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
# The tables a registry needs; MLflow's full list is checked through its metadata as well.
_CORE_TABLES = ("experiments", "runs", "registered_models", "model_versions")
HEAD_CACHE = ".mlflow-schema-head.json"
SCHEMA_FILE = Path(__file__).with_name("mlflow_schema.json")


class RegistryStoreError(RegistryError):
    """A local registry store is damaged and holds data: it is not rebuilt automatically."""


@dataclass(frozen=True)
class SchemaState:
    """What a SQLite file holds, as far as MLflow's schema goes."""

    revision: str | None
    head: str
    missing: tuple[str, ...]
    leftovers: tuple[str, ...]
    runs: int
    versions: int

    @property
    def ok(self) -> bool:
        return self.revision == self.head and not self.missing and not self.leftovers

    @property
    def has_data(self) -> bool:
        return self.runs > 0 or self.versions > 0

    def describe(self) -> str:
        parts = [f"schema revision {self.revision or 'none'} (expected {self.head})"]
        if self.missing:
            parts.append(f"missing tables {', '.join(self.missing[:5])}")
        if self.leftovers:
            parts.append(f"leftover tables {', '.join(self.leftovers)}")
        return "; ".join(parts)


def _kept(path: Path) -> dict | None:
    """A ``{"mlflow", "head", ...}`` file written for the installed MLflow; else None."""
    from mlflow.version import VERSION as installed  # imported with the client anyway

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and doc.get("mlflow") == installed
    return doc if ok and isinstance(doc.get("head"), str) else None


def kept_schema() -> dict | None:
    """``mlflow_schema.json`` (``mlflow``, ``head``, ``statements``) where it was written for
    the installed MLflow; else None."""
    doc = _kept(SCHEMA_FILE)
    return doc if doc is not None and isinstance(doc.get("statements"), list) else None


def _head_revision(folder: Path) -> str:
    """MLflow's latest schema revision. Finding it parses every migration script (~1 s a
    process), and it changes only with MLflow's version: it is kept in ``folder`` (beside the
    store), keyed by that version, and read from ``mlflow_schema.json`` where that was written
    for the installed MLflow."""
    cache = folder / HEAD_CACHE
    doc = _kept(cache)
    if doc is not None:
        return doc["head"]
    schema = kept_schema()
    if schema is not None:
        head = schema["head"]
    else:
        from mlflow.store.db.utils import _get_latest_schema_revision

        head = str(_get_latest_schema_revision())
    from mlflow.version import VERSION as installed

    with contextlib.suppress(OSError):  # a cache: a folder we cannot write costs the parse
        tmp = folder / f"{HEAD_CACHE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"mlflow": installed, "head": head}))
        os.replace(tmp, cache)
    return head


def _expected_tables() -> set[str]:
    from mlflow.store.db.base_sql_model import Base

    return set(Base.metadata.tables) | set(_CORE_TABLES)


def _count(con: sqlite3.Connection, table: str, tables: set[str]) -> int:
    if table not in tables:
        return 0
    return int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def inspect_store(path: Path) -> SchemaState:
    """The schema state of the SQLite file at ``path`` (read only)."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        revision = None
        if "alembic_version" in tables:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        return SchemaState(
            revision=revision,
            head=_head_revision(path.parent),
            missing=tuple(sorted(_expected_tables() - tables)),
            leftovers=tuple(sorted(t for t in tables if t.startswith("_alembic_tmp"))),
            runs=_count(con, "runs", tables),
            versions=_count(con, "model_versions", tables),
        )
    finally:
        con.close()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``'s creation, across processes (released at exit or kill)."""
    lock = path.parent / f".{path.name}.lock"
    with open(lock, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unsynced(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA synchronous=OFF")
    dbapi_connection.execute("PRAGMA journal_mode=MEMORY")


def _create_schema(engine, schema: dict | None) -> None:
    """The tables of a fresh store: ``schema``'s statements in one transaction, or MLflow's
    own creation (initial tables, then every migration) where ``schema`` is None."""
    if schema is None:
        from mlflow.store.db.utils import _initialize_tables

        _initialize_tables(engine)
        return
    with engine.begin() as con:
        for statement in schema["statements"]:
            con.exec_driver_sql(statement)


def _build(path: Path, schema: dict | None = None) -> None:
    """Create a fresh store at ``path`` from ``schema`` (``kept_schema()``; None: MLflow's
    migrations): in a temporary file, verified, renamed."""
    import sqlalchemy

    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
        # No per-commit fsync while building: a killed build is discarded whole, and the
        # finished file is synced once before the rename.
        sqlalchemy.event.listen(engine, "connect", _unsynced)
        try:
            _create_schema(engine, schema)
        finally:
            engine.dispose()
        state = inspect_store(tmp)
        if not state.ok:
            raise RegistryError(f"creating registry store {path} failed: {state.describe()}")
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_tmp(path: Path) -> None:
    """Temporary stores of creators that died (we hold the lock: none is alive)."""
    for stale in path.parent.glob(f"{TMP_PREFIX}{path.name}-*"):
        stale.unlink(missing_ok=True)


def ensure_sqlite_store(path: Path) -> str:
    """Make sure ``path`` holds a complete MLflow store. Returns what was done, for logs:
    ``"ok"``, ``"created"`` or ``"rebuilt"``.

    Raises:
        RegistryStoreError: The file's schema is incomplete and it holds runs or versions.
    """
    if path.is_file() and inspect_store(path).ok:  # the common case: no lock taken
        return "ok"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        _remove_stale_tmp(path)
        if not path.exists():
            _build(path, kept_schema())
            return "created"
        state = inspect_store(path)
        if state.ok:
            return "ok"
        if state.has_data:
            uri = f"sqlite:///{path}"
            raise RegistryStoreError(
                f"registry store {path} is damaged ({state.describe()}) and holds "
                f"{state.versions} model versions and {state.runs} runs, so it is not rebuilt. "
                f"Stop the processes using it and back it up; then drop the leftover "
                f"`_alembic_tmp_*` tables and run `mlflow db upgrade {uri}`, or move the file "
                "aside to start an empty registry (re-promote the versions you need)."
            )
        aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        _build(path, kept_schema())
        log.warning(
            "registry store %s was left half-created (%s) and held no runs or model versions: "
            "moved aside to %s and rebuilt",
            path,
            state.describe(),
            aside.name,
        )
        return "rebuilt"


def schema_statements(path: Path) -> list[str]:
    """The SQL statements that rebuild the store at ``path`` (``sqlite3``'s dump, without its
    transaction statements)."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return [s for s in con.iterdump() if s not in ("BEGIN TRANSACTION;", "COMMIT;")]
    finally:
        con.close()


def write_schema_file(target: Path = SCHEMA_FILE) -> dict:
    """Build a store with the installed MLflow's migrations and keep its statements in
    ``target`` (``mlflow_schema.json``)."""
    import tempfile

    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.version import VERSION

    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "schema.db"
        _build(db, None)
        doc = {
            "mlflow": VERSION,
            "head": str(_get_latest_schema_revision()),
            "statements": schema_statements(db),
        }
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, target)
    return doc


if __name__ == "__main__":
    written = write_schema_file()
    sys.stdout.write(
        f"{SCHEMA_FILE}: MLflow {written['mlflow']}, head {written['head']}, "
        f"{len(written['statements'])} statements\n"
    )
