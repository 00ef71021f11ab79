"""Dagster's SQLite event log, with one engine kept per recently used database file.

Dagster's ``SqliteEventLogStorage`` keeps one SQLite file per run plus an index file, and for
every statement it builds a new SQLAlchemy engine, opens the file, runs the statement and
closes it again. A run writes about 60 events, most of them to two files, so a daily run spends
about a quarter of a second building engines, recompiling the same INSERT statements (the
compiled cache lives on the engine) and checkpointing the write-ahead log (SQLite checkpoints
when the last connection to a WAL file closes). That fixed cost is most of the orchestration
overhead of a short incremental run.

Creating each run's file costs another ~70 ms: Dagster creates a dozen tables and indexes and
loads every alembic migration script to stamp the revision.

``KeptSqliteEventLogStorage`` changes only that handling, and otherwise is Dagster's class,
with the same files, schema and migrations, so an instance can switch to it and back:

- it keeps the engines of the few most recently used files, each holding one open connection.
  Statements are still serialised by the storage's own lock; SQLite's locking between
  processes (webserver, daemon, run workers) is unchanged, since an idle open connection holds
  no lock. A forked child drops the parent's connections without closing them, as SQLAlchemy
  asks;
- a new run's file is a copy of a template that Dagster's own initialisation made once per
  Dagster version (kept beside the run files), linked into place so that an existing file is
  never overwritten;
- ``has_table`` remembers the tables it has seen (tables are only ever added, by migrations).

``ensure_dagster_home`` writes it into the local ``dagster.yaml`` unless the file configures
its own storage (PostgreSQL in production: ``deploy/dagster/dagster.yaml``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import __version__ as dagster_version
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import create_db_conn_string
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool

# Engines kept open: the index file, the run being written and a few the webserver reads.
KEPT_ENGINES = 4

_LIVE: weakref.WeakSet[KeptSqliteEventLogStorage] = weakref.WeakSet()


class KeptSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that keeps an engine, and one open connection, for each of
    the ``KEPT_ENGINES`` most recently used database files (see the module docstring).

    dagster.yaml::

        event_log_storage:
          module: mlops_assets.event_log_storage
          class: KeptSqliteEventLogStorage
          config:
            base_dir: /path/to/dagster_home/storage
    """

    def __init__(self, base_dir: str, inst_data=None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._template_bytes: bytes | None = None
        self._tables_seen: set[str] = set()
        self._probe: Engine | None = None
        super().__init__(base_dir, inst_data=inst_data)
        _LIVE.add(self)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> KeptSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        """The kept engine of ``shard``'s file, created (and the file initialised) on first
        use; the least recently used engine past ``KEPT_ENGINES`` is disposed of."""
        engine = self._engines.pop(shard, None)
        if engine is None:
            if shard not in self._initialized_dbs and self.create_from_template(shard):
                self._initialized_dbs.add(shard)
            engine = create_engine(
                self.conn_string_for_shard(shard),
                poolclass=QueuePool,
                pool_size=1,
                max_overflow=8,  # _initdb inspects on a second connection
                connect_args={
                    "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                    # Used from whichever thread holds the storage lock (the webserver's
                    # event watcher as well as the run's own thread).
                    "check_same_thread": False,
                },
            )
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > KEPT_ENGINES:
            _, old = self._engines.popitem(last=False)
            old.dispose()
        return engine

    def _template(self) -> bytes:
        """An empty run database as Dagster's own ``_initdb`` creates it (tables, indexes,
        alembic stamp, WAL mode), kept beside the run files for this Dagster version."""
        if self._template_bytes is None:
            path = os.path.join(self._base_dir, f".run-template-{dagster_version}.sqlite")
            if not os.path.exists(path):
                with tempfile.TemporaryDirectory(dir=self._base_dir) as tmp:
                    engine = create_engine(create_db_conn_string(tmp, "run"), poolclass=NullPool)
                    self._initdb(engine)
                    engine.dispose()
                    # The image as SQLite reads it, write-ahead log included.
                    with contextlib.closing(sqlite3.connect(os.path.join(tmp, "run.db"))) as db:
                        image = db.serialize()
                    with open(os.path.join(tmp, "image"), "wb") as f:
                        f.write(image)
                    os.replace(os.path.join(tmp, "image"), path)
            with open(path, "rb") as f:
                self._template_bytes = f.read()
        return self._template_bytes

    def create_from_template(self, shard: str) -> bool:
        """Create ``shard``'s file as a copy of the template, unless a file is there already
        (made by another process, or an older run's): False then, and Dagster's own
        initialisation checks that file."""
        if shard == INDEX_SHARD_NAME:
            return False
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return False
        part = f"{path}.{os.getpid()}.part"
        try:
            with open(part, "wb") as f:
                f.write(self._template())
            os.link(part, path)  # fails if the file appeared meanwhile: never overwritten
        except OSError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        return True

    def has_table(self, table_name: str) -> bool:
        # Dagster asks before most asset and partition statements, building an engine each
        # time; tables only ever appear (migrations), so a table once seen is remembered.
        # Called inside ``_connect`` too, so this neither takes the lock nor a kept engine.
        if table_name in self._tables_seen:
            return True
        if self._probe is None:
            self._probe = create_engine(
                self.conn_string_for_shard(INDEX_SHARD_NAME),
                poolclass=NullPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
        with self._probe.connect() as conn:
            found = bool(self._probe.dialect.has_table(conn, table_name))
        if found:
            self._tables_seen.add(table_name)
        return found

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    @property
    def kept_files(self) -> tuple[str, ...]:
        """The database files (run ids, and ``index``) whose connections are kept open."""
        return tuple(self._engines)

    def close_engines(self) -> None:
        """Close every kept connection (the files stay as they are)."""
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def drop_inherited_connections(self) -> None:
        """In a forked child: forget the parent's connections, neither using nor closing them."""
        for engine in self._engines.values():
            engine.dispose(close=False)
        self._engines = OrderedDict()
        self._db_lock = threading.Lock()

    def dispose(self) -> None:
        self.close_engines()
        super().dispose()

    def wipe(self) -> None:
        self.close_engines()
        super().wipe()

    def upgrade(self) -> None:
        self.close_engines()
        super().upgrade()


def _after_fork_in_child() -> None:
    for storage in list(_LIVE):
        storage.drop_inherited_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)
