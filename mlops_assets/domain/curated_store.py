"""The curated dataset of one spec: typed Parquet shards by stable hash of the series key.

Layout under ``curated/<ds>/`` (names relative to the storage root)::

    _layout.json                    shard count and sort order, fixed when the dataset is created
    part-<NNN>.parquet              a shard's base: typed rows, one shard per stable hash of the
                                    series key, sorted by series key then time, unique on
                                    (key, time); keys dictionary-encoded, lz4
    part-<NNN>.delta-<SEQ>.parquet  rows a later merge appended to the shard, sorted the same way:
                                    each of them dated after every earlier row of its series
    part-<NNN>.series.parquet       the shard's series index (``shard_index``): first and last
                                    time, rows and gaps of each series, which an append updates
                                    in O(series) and the shard's summary follows from
    part-<NNN>.recent.parquet       a copy of the shard's last ``recent_periods`` periods (what
                                    the daily steps read: training's window, evaluation's
                                    history, the drift gate's reference), rewritten by each merge

A merge whose new rows all come after their series' curated rows (a new period: the daily
case) writes them as one delta file per shard, so its cost follows the new rows, not the
history; a merge that restates (replaces or fills in a period before a curated row of its
series), a large one, or one that finds ``MAX_DELTAS`` deltas already rewrites the base with
every row (compaction) and then deletes the deltas. The newest file of a shard carries the
shard's summary (rows, series, time range, gaps), its revision and the merge that wrote it in
its Parquet footer. Readers merge a base with its deltas into the rows a compacted shard would
hold (``read``); a delta whose revision is not above its base's (left by a crash between a
compaction's write and its deletes) is ignored. Spark executors read the live files as they
are (``files``): a delta never repeats a row of its base. A read of recent rows only
(``since``) reads the recent copy where it holds them and was written by the shard's latest
merge (its footer says which revision it copies, and from which time).

Every write is atomic (see ``mlops_assets.storage``): a crash leaves the old or the new file.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandas.tseries.frequencies import to_offset

from mlops_assets.domain import shard_index
from mlops_assets.domain.merge import dedupe_counted, merge_restating
from mlops_assets.faults import fault_point
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import (
    PARQUET_WRITE_BATCH,
    decode_dictionaries,
    series_codes,
    series_numbers,
    take_rows,
)
from mlops_assets.storage import Storage

STATS_KEY = b"mlops.shard_stats"
# The merge that wrote a shard: its id, the rows it brought and how many each source replaced
# (``merge``; ``ingest_journal`` reads it back after a crash).
MERGE_KEY = b"mlops.merge"
# Each shard's revision: a sequence number each merge into it increments, and the merges that
# restated rows (landed before a curated row of the same series): [[seq, time], ...], the last
# MAX_RESTATED of them. Incremental fits compare it with the revisions they were built on.
REVISION_KEY = b"mlops.revision"
MAX_RESTATED = 64
# Shards are rewritten by every drop: lz4 writes and reads about twice as fast as zstd here,
# for files within a few % of the size (measured on the 40M-row sales data).
SHARD_CODEC = "lz4"
# Deltas a shard may hold before a merge compacts it into its base.
MAX_DELTAS = 16
# A recent copy's footer: {"since": first time it holds (ISO), "seq": the revision it copies}.
RECENT_KEY = b"mlops.recent"
# Periods a recent copy holds beyond the daily steps' windows: runs as of a date a little
# behind the newest data read it too.
RECENT_MARGIN = 8
INDEX_KEY = b"mlops.series_index"  # {"seq": the shard revision the index is of}
_DELTA = re.compile(r"^(?P<base>.*/part-\d+)\.delta-(?P<seq>\d+)\.parquet$")
_BASE = re.compile(r"^.*/part-\d+\.parquet$")


def recent_periods(spec: DatasetSpec) -> int:
    """Periods a shard's recent copy holds, back from its newest row: the longest window a
    daily step reads (evaluation's history, the drift gate's reference, an incremental
    training run's window) and ``RECENT_MARGIN`` more."""
    from mlops_assets.ml import daily_refit
    from mlops_assets.ml.selection import stored_history

    need = [2 * stored_history(spec), spec.validation.drift.reference_periods]
    if spec.model.refit is not None:
        need.append(daily_refit.window_periods(spec))
    return max(need) + RECENT_MARGIN


def merge_gaps(parts: list[dict], top: int = 10) -> dict:
    """The gap totals of shards (disjoint series) as one: sums, the longest, the worst."""
    worst = sorted((w for p in parts for w in p.get("worst", [])), key=lambda w: (-w[1], w[0]))
    return {
        "series_with_gaps": sum(p["series_with_gaps"] for p in parts),
        "missing_periods": sum(p["missing_periods"] for p in parts),
        "longest_gap": max((p["longest_gap"] for p in parts), default=0),
        "worst": worst[:top],
    }


def _shard_hash(values: tuple) -> int:
    h = 0
    for v in values:
        h = (h * 1_000_003 + zlib.crc32(str(v).encode())) % (1 << 32)
    return h


def shard_of(table: pa.Table, keys: list[str], n_shards: int) -> np.ndarray:
    """A stable shard per row: crc32 of each key value, combined; same key, same shard, forever.

    Hashed once per series (from one row of each), then spread to the rows.
    """
    return shards_and_series(table, keys, n_shards)[0]


def shards_and_series(
    table: pa.Table, keys: list[str], n_shards: int
) -> tuple[np.ndarray, np.ndarray]:
    """``shard_of`` and each row's series number (series numbered in key order: codes that
    order rows like their keys, as ``series_codes`` do, which a merge reuses per shard)."""
    if table.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    series_of, first_rows = series_numbers(table, keys)
    firsts = decode_dictionaries(take_rows(table.select(keys), first_rows))
    values = zip(*(firsts[k].to_pylist() for k in keys), strict=True)
    # A row's shard in the smallest integer that holds it: each shard's rows are found by a
    # pass over this array, a 40M-row drop's of 40 MB, not 320.
    small = np.int8 if n_shards <= 2**7 else np.int16 if n_shards <= 2**15 else np.int64
    shard = np.array([_shard_hash(v) % n_shards for v in values], dtype=small)
    return shard[series_of], series_of


class CuratedReadError(RuntimeError):
    """A curated file that cannot be read."""


@dataclass
class MergeStats:
    rows_added: int = 0
    rows_replaced: int = 0
    shards_written: int = 0
    deltas_written: int = 0  # of the shards written, those that took a delta file
    replaced_by_source: dict[int, int] = field(default_factory=dict)  # see ``merge``


class CuratedStore:
    """The curated, typed Parquet dataset of one spec, sharded by series key."""

    def __init__(self, storage: Storage, spec: DatasetSpec, n_shards: int = 8):
        self.storage, self.spec = storage, spec
        self.prefix = f"curated/{spec.name}"
        self._n_shards = n_shards

    @property
    def n_shards(self) -> int:
        layout = f"{self.prefix}/_layout.json"
        if self.storage.exists(layout):
            return int(json.loads(self.storage.read_text(layout))["shards"])
        return self._n_shards

    def _write_layout(self, n: int) -> None:
        layout = f"{self.prefix}/_layout.json"
        if not self.storage.exists(layout):
            doc = {"shards": n, "sort": self.spec.key_columns, "hash": "crc32-combined"}
            self.storage.write_text(layout, json.dumps(doc))

    def shard_name(self, i: int) -> str:
        return f"{self.prefix}/part-{i:03d}.parquet"

    def shard_names(self) -> list[str]:
        """The shards' base files (a shard's deltas: ``shard_files``)."""
        return sorted(
            b.name for b in self.storage.list(f"{self.prefix}/part-") if _BASE.match(b.name)
        )

    def _deltas(self) -> dict[str, list[tuple[int, str]]]:
        """Every delta file on storage by its base's name: ``[(seq, name)]``, oldest first."""
        out: dict[str, list[tuple[int, str]]] = {}
        for b in self.storage.list(f"{self.prefix}/part-"):
            m = _DELTA.match(b.name)
            if m:
                out.setdefault(f"{m['base']}.parquet", []).append((int(m["seq"]), b.name))
        return {k: sorted(v) for k, v in out.items()}

    def _live(self, name: str, deltas: list[tuple[int, str]]) -> list[str]:
        """Shard ``name``'s base and the deltas written after it (a delta not above the base's
        revision is one a compaction took in before a crash kept it from deleting it)."""
        if not deltas:
            return [name]
        seq = self._revision_seq([name])
        return [name, *(d for s, d in deltas if s > seq)]

    @staticmethod
    def _recent_name(name: str) -> str:
        return f"{name.removesuffix('.parquet')}.recent.parquet"

    def _revision_seq(self, files: list[str]) -> int:
        """The revision of a shard whose live files are ``files`` (its newest file's)."""
        return int((self._footer(files[-1], REVISION_KEY) or {"seq": 0})["seq"])

    def _recent_holds(self, name: str, since, seq: int) -> bool:
        """Whether shard ``name``'s recent copy holds every row dated ``since`` or later: it
        copies the shard's revision ``seq`` and starts at or before ``since``."""
        recent = self._recent_name(name)
        if not self.storage.exists(recent):
            return False
        doc = self._footer(recent, RECENT_KEY)
        return (
            doc is not None
            and int(doc["seq"]) == seq
            and pd.Timestamp(doc["since"]) <= pd.Timestamp(since)
        )

    def _recent_since(self, time_max: str | None):
        """The first time a recent copy holds: ``recent_periods`` periods back from
        ``time_max`` (None: an empty shard)."""
        if time_max is None:
            return None
        back = recent_periods(self.spec) - 1
        first = pd.Timestamp(time_max) - back * to_offset(self.spec.frequency)
        dated = pa.types.is_date(self.spec.arrow_schema.field(self.spec.time).type)
        return first.date() if dated else first.to_pydatetime()

    def _write_recent(
        self, name: str, files: list[str], rows: pa.Table, appended: bool, stats: dict, seq: int
    ) -> None:
        """Shard ``name``'s recent copy after a merge wrote revision ``seq``: from the full
        rows it wrote (``appended`` False), else its previous copy (or, stale, a read of the
        shard's earlier ``files``) with the appended ``rows``."""
        since = self._recent_since(stats["time_max"])
        if since is None:
            return
        keys = self.spec.series_keys

        def from_since(table: pa.Table) -> pa.Table:
            col = table[self.spec.time]
            return table.filter(pc.greater_equal(col, pa.scalar(since, col.type)))

        if appended:
            if self._recent_holds(name, since, seq - 1):  # the revision before this merge
                prev = self.conform(self.read_file(self._recent_name(name), dictionary=keys))
            else:
                prev = self.conform(
                    self.read_shard(name, None, [(self.spec.time, ">=", since)], keys, files)
                )
            # The old rows trimmed before the splice (one contiguous filter), the new ones
            # (few) after it: a filter of the spliced table, a slice per series, costs ten
            # times as much.
            rows = merge_restating(from_since(prev), from_since(rows), self.spec)[0]
        else:
            rows = from_since(rows)
        meta = {RECENT_KEY: json.dumps({"since": str(since), "seq": seq}).encode()}
        # One chunk per column: Parquet writes a table of a few thousand slices 4x slower.
        recent = rows.combine_chunks().replace_schema_metadata(meta)
        self._write_parquet(self._recent_name(name), recent)

    def _write_parquet(self, name: str, table: pa.Table) -> None:
        """``table`` (with its schema's metadata) as one Parquet file, written atomically."""
        buf = io.BytesIO()
        pq.write_table(table, buf, **self._parquet_options(table.schema))
        self.storage.write_bytes(name, buf.getvalue())

    def _parquet_options(self, schema: pa.Schema) -> dict:
        """Statistics only where readers filter (the series keys and the time: a shard read
        from a date, a series looked up), not on the values (a fifth of the write's time);
        an integer-like time delta-encoded (sorted within each series: a few bits a row, no
        dictionary of every period to build)."""
        names = schema.names
        filtered = [c for c in [*self.spec.series_keys, self.spec.time] if c in names]
        options: dict = {
            "compression": SHARD_CODEC,
            "row_group_size": 1 << 20,
            "write_statistics": filtered or False,
            "write_batch_size": PARQUET_WRITE_BATCH,
        }
        time = schema.field(self.spec.time).type if self.spec.time in names else None
        if time is not None and (pa.types.is_date32(time) or pa.types.is_timestamp(time)):
            options["use_dictionary"] = [c for c in names if c != self.spec.time]
            options["column_encoding"] = {self.spec.time: "DELTA_BINARY_PACKED"}
        return options

    def shard_files(self, name: str) -> list[str]:
        """Shard ``name``'s live files: its base, then its deltas, oldest first."""
        return self._live(name, self._deltas().get(name, []))

    def files(self) -> list[str]:
        """Every live file of every shard (no row is in two of them): what Spark reads."""
        deltas = self._deltas()
        return [f for n in self.shard_names() for f in self._live(n, deltas.get(n, []))]

    def read_file(
        self, name: str, columns: list[str] | None = None, filters=None, dictionary=None
    ) -> pa.Table:
        """One Parquet file of the dataset (a base or a delta), as it is stored.

        Raises:
            CuratedReadError: The file is not readable Parquet (damaged after it was written).
        """
        with self.storage.open_read(name) as f, self._readable(name):
            return pq.read_table(f, columns=columns, filters=filters, read_dictionary=dictionary)

    @contextmanager
    def _readable(self, name: str) -> Iterator[None]:
        """Arrow's error for a file that is not Parquet, as one that names it and the fix."""
        try:
            yield
        except pa.ArrowInvalid as exc:
            raise CuratedReadError(
                f"curated file {self.storage.uri(name)} cannot be read ({exc}). It was changed "
                "or damaged after it was written: restore it from a backup or the storage "
                "account's blob versioning (a .series or .recent file may simply be deleted: it "
                "is rebuilt); see docs/runbook.md, 'Curated files'."
            ) from exc

    def read_shard(
        self,
        name: str,
        columns: list[str] | None = None,
        filters=None,
        dictionary=None,
        files: list[str] | None = None,
    ) -> pa.Table:
        """Shard ``name`` (its base merged with its deltas: sorted by series key then time,
        unique on (key, time)), its ``columns`` and rows that pass ``filters``."""
        files = self.shard_files(name) if files is None else files
        if len(files) == 1:
            return self.read_file(files[0], columns, filters, dictionary)
        order = [*self.spec.series_keys, self.spec.time]
        wanted = None if columns is None else [*order, *(c for c in columns if c not in order)]
        base, *deltas = (self.read_file(f, wanted, filters, dictionary) for f in files)
        if any(d.num_rows for d in deltas):
            appended = pa.concat_tables(deltas)
            base = merge_restating(base, appended, self.spec)[0].combine_chunks()
        return base if columns is None else base.select(columns)

    def read(
        self,
        columns: list[str] | None = None,
        until=None,
        since=None,
        shards=None,
        series: list[tuple] | None = None,
    ) -> pa.Table:
        """The whole dataset, or the shards named in ``shards`` (optionally only rows with
        ``since`` <= time <= ``until``; only the series whose key tuples are in ``series``,
        read from the row groups their keys' statistics allow, where given)."""
        names = self.shard_names() if shards is None else list(shards)
        if not names:
            return self.spec.arrow_schema.empty_table()
        base = [(self.spec.time, ">=", since)] if since is not None else []
        filters: list | None = base or None
        if series is not None:
            keys = self.spec.series_keys
            filters = [
                base + [(k, "=", v) for k, v in zip(keys, key, strict=True)] for key in series
            ]
            if not filters:
                return self.spec.arrow_schema.empty_table()
        # Series keys come back dictionary-encoded, as Parquet stores them: grouping 40M rows
        # by their codes is cheap, by Python strings it is not.
        keys = [k for k in self.spec.series_keys if columns is None or k in columns]
        deltas = self._deltas()

        def one(name: str) -> pa.Table:
            files = self._live(name, deltas.get(name, []))
            if since is not None and self._recent_holds(name, since, self._revision_seq(files)):
                return self.read_file(self._recent_name(name), columns, filters, keys)
            return self.read_shard(name, columns, filters, keys, files)

        with ThreadPoolExecutor(max_workers=4) as pool:
            tables = list(pool.map(one, names))
        table = pa.concat_tables(tables).unify_dictionaries()
        if until is not None:
            col = table[self.spec.time]
            bound = pa.scalar(until, col.type)
            latest = pc.max(col)
            if latest.is_valid and pc.greater(latest, bound).as_py():  # else: no row to drop
                table = table.filter(pc.less_equal(col, bound))
        return table

    def _schema(self) -> pa.Schema:
        """The shards' schema: the spec's, with series keys dictionary-encoded (as Parquet
        stores them, so reading and merging never decode them to Python strings)."""
        fields = [
            f.with_type(pa.dictionary(pa.int32(), f.type)) if f.name in self.spec.series_keys else f
            for f in self.spec.arrow_schema
        ]
        return pa.schema(fields)

    def conform(self, table: pa.Table) -> pa.Table:
        """``table`` in the shards' schema (its other columns, such as row numbers, dropped)."""
        schema = self._schema()
        columns = []
        for f in schema:
            col = table[f.name]
            if pa.types.is_dictionary(f.type) and not pa.types.is_dictionary(col.type):
                col = pc.dictionary_encode(col.cast(f.type.value_type))
            columns.append(col.cast(f.type) if col.type != f.type else col)
        return pa.table(columns, schema=schema)

    def _footer(self, name: str, key: bytes) -> dict | None:
        with self.storage.open_read(name) as f, self._readable(name):
            meta = pq.read_schema(f).metadata or {}
        return json.loads(meta[key]) if key in meta else None

    def revisions(self) -> dict[str, dict]:
        """Each shard's revision (``REVISION_KEY``): ``{"seq": n, "restated": [[seq, t]...]}``
        (seq 0 and nothing restated for a shard written before revisions were kept)."""
        out = {}
        deltas = self._deltas()
        for name in self.shard_names():
            newest = self._live(name, deltas.get(name, []))[-1]
            rev = self._footer(newest, REVISION_KEY) or {"seq": 0, "restated": []}
            out[name.rsplit("/", 1)[-1]] = rev
        return out

    def restated_since(self, seen: dict[str, int]) -> list[tuple[str, int, int]]:
        """The merges that restated curated rows after the revisions ``seen`` (shard -> seq):
        ``(shard, seq, time)``. A shard whose kept restatements may not reach back to its
        seen revision counts as restated (time -1)."""
        out = []
        for shard, rev in self.revisions().items():
            since = seen.get(shard, 0)
            restated = [(int(s), int(t)) for s, t in rev["restated"]]
            out += [(shard, s, t) for s, t in restated if s > since]
            if len(restated) >= MAX_RESTATED and restated[0][0] > since + 1:
                out.append((shard, restated[0][0], -1))
        return out

    @staticmethod
    def index_name(name: str) -> str:
        return f"{name.removesuffix('.parquet')}.series.parquet"

    def series_index(self, name: str, seq: int | None = None) -> pa.Table | None:
        """Shard ``name``'s series index (``shard_index``), if it is of the shard's revision
        (``seq``, where known), else None."""
        index = self.index_name(name)
        if not self.storage.exists(index):
            return None
        seq = self._revision_seq(self.shard_files(name)) if seq is None else seq
        doc = self._footer(index, INDEX_KEY)
        if doc is None or int(doc["seq"]) != seq:
            return None
        return self.read_file(index)

    def _write_index(self, name: str, index: pa.Table, seq: int) -> None:
        meta = {INDEX_KEY: json.dumps({"seq": seq}).encode()}
        self._write_parquet(self.index_name(name), index.replace_schema_metadata(meta))

    def _write_shard(
        self, name: str, table: pa.Table, stats: dict, merge: dict | None, revision: dict
    ) -> None:
        """Write a shard file with the shard's summary (``stats``) in the Parquet footer, so
        ``summary()`` reads footers, not data, the merge that wrote it (``merge``) and the
        shard's revision."""
        meta = {**(table.schema.metadata or {}), STATS_KEY: json.dumps(stats).encode()}
        meta.pop(MERGE_KEY, None)
        if merge is not None:
            meta[MERGE_KEY] = json.dumps(merge).encode()
        meta[REVISION_KEY] = json.dumps(revision).encode()
        self._write_parquet(name, table.replace_schema_metadata(meta))

    def _gaps(self, table: pa.Table) -> dict:
        """Missing periods of a shard's series (rows sorted by series then time): totals and
        the worst series (``[series_id, missing, longest]``), for the footer."""
        index = shard_index.index_of(table, self.spec)
        return shard_index.summary_of(index, self.spec)["gaps"]

    def merge(
        self,
        new: pa.Table,
        sources: np.ndarray | int = 0,
        *,
        merge_id: str | None = None,
        resume: bool = False,
    ) -> MergeStats:
        """Upsert rows (later rows in ``new`` win over earlier ones and over curated rows).

        ``sources`` numbers each row's source (a drop), or is the one source of every row;
        the stats then say how many rows each source replaced (``replaced_by_source``; a
        curated row, or a row of an earlier source).
        Each shard written records ``merge_id`` and its counts in its footer. ``resume``
        finishes the merge ``merge_id`` that a crash interrupted: a shard that records it is
        kept, with its recorded counts; the others merge their rows of ``new``.
        """
        stats = MergeStats()
        if new.num_rows == 0 and not resume:
            return stats
        n = self.n_shards
        names = set(self.shard_names())
        if new.num_rows:
            self._write_layout(n)
        shards, series_of = shards_and_series(new, self.spec.series_keys, n)
        src = None if np.isscalar(sources) else np.asarray(sources)
        only = int(sources) if src is None else 0  # the source of every row, where one

        def replaced_by(mine: np.ndarray, replaced: np.ndarray) -> np.ndarray:
            if src is None:
                return np.bincount([only], weights=[replaced.sum()], minlength=1)
            return np.bincount(src[mine], weights=replaced, minlength=1)

        keys = self.spec.series_keys

        deltas = self._deltas()

        def one(i: int) -> tuple[int, np.ndarray, bool]:
            name = self.shard_name(i)
            files = self._live(name, deltas.get(name, [])) if name in names else []
            if resume and files:
                done = self._footer(files[-1], MERGE_KEY)
                if done is not None and done["id"] == merge_id:
                    return int(done["rows"]), np.asarray(done["replaced"], dtype=float), False
            mine = shards == i
            if not mine.any():
                return 0, np.zeros(1), False
            part = self.conform(new.filter(pa.array(mine)))
            revision: dict[str, Any] = {"seq": 0, "restated": []}
            appended = None
            if files:
                revision = self._footer(files[-1], REVISION_KEY) or revision
                appended = self._appended(name, files, part, int(revision["seq"]))
            seq = int(revision["seq"]) + 1
            if appended is not None:  # every new row after its series' rows: a delta file
                rows, replaced, index = appended
                restated = None
                target = f"{name.removesuffix('.parquet')}.delta-{seq:06d}.parquet"
            else:  # a restatement, a large merge, or deltas to take in: rewrite the base
                old = self._schema().empty_table()
                if files:
                    old = self.conform(self.read_shard(name, dictionary=keys, files=files))
                if old.num_rows:
                    rows, replaced, restated = merge_restating(old, part, self.spec)
                    index = shard_index.index_of(rows, self.spec)
                else:  # a first load: the series numbers sharding gave serve as codes
                    codes = series_of[mine]
                    rows, replaced, taken = dedupe_counted(part, self.spec, codes)
                    restated = None
                    index = shard_index.index_of(rows, self.spec, codes[taken])
                target = name
            by = replaced_by(mine, replaced)
            record = {"id": merge_id, "rows": part.num_rows, "replaced": [int(c) for c in by]}
            kept = list(revision["restated"]) + ([[seq, restated]] if restated is not None else [])
            revision = {"seq": seq, "restated": kept[-MAX_RESTATED:]}
            stats = shard_index.summary_of(index, self.spec)
            self._write_shard(target, rows, stats, record if merge_id else None, revision)
            fault_point("curated.shard")
            self._write_index(name, index, seq)
            self._write_recent(name, files, rows, target != name, stats, seq)
            if target == name:  # the base holds every row now: its deltas go
                for _, delta in deltas.get(name, []):
                    self.storage.delete(delta)
            return part.num_rows, by, target != name

        touched = {int(i) for i in np.flatnonzero(np.bincount(shards, minlength=n))}
        if resume:
            touched |= {int(name.rsplit("-", 1)[1].split(".")[0]) for name in names}
        by_source = np.zeros(int(src.max()) + 1 if src is not None and len(src) else only + 1)
        written = 0
        with ThreadPoolExecutor(max_workers=2) as pool:
            for rows, replaced, delta in pool.map(one, sorted(touched)):
                written += rows > 0
                stats.deltas_written += delta
                stats.rows_added += rows - int(replaced.sum())
                if len(replaced) > len(by_source):
                    by_source = np.r_[by_source, np.zeros(len(replaced) - len(by_source))]
                by_source[: len(replaced)] += replaced
        stats.rows_replaced = int(by_source.sum())
        stats.replaced_by_source = {int(j): int(c) for j, c in enumerate(by_source) if c}
        stats.shards_written = written
        return stats

    def _appended(
        self, name: str, files: list[str], part: pa.Table, seq: int
    ) -> tuple[pa.Table, np.ndarray, pa.Table] | None:
        """``part`` (rows of shard ``name``) as a delta: sorted, deduplicated, how many rows
        each row replaced (among ``part``'s own) and the shard's series index with them; None
        when a row lands at or before a curated row of its series, when the merge is large
        against the shard, or when the shard holds ``MAX_DELTAS`` deltas (the base is
        rewritten then). Reads the shard's series index (its key and time columns where the
        index is missing or of another revision)."""
        if len(files) - 1 >= MAX_DELTAS:
            return None
        index = self.series_index(name, seq)
        if index is None:
            keys = self.spec.series_keys
            old = self.read_shard(name, [*keys, self.spec.time], dictionary=keys, files=files)
            index = shard_index.index_of(old, self.spec)
        if part.num_rows > max(1_000, int(pc.sum(index["rows"]).as_py() or 0) // 4):
            return None
        rows, replaced, _ = dedupe_counted(part, self.spec)
        index = shard_index.advanced(index, rows, self.spec)
        if index is None:  # a row replaces or fills in a period: not an append
            return None
        return rows, replaced, index

    def same_as_curated(self, rows: pa.Table) -> np.ndarray:
        """Which of ``rows`` (unique on (key, time)) are curated already with the same values:
        a re-delivery. Only the shards of their series, in their time range, are read; rows
        dated after every curated row (a new period) cost one look at row-group statistics.
        """
        same = np.zeros(rows.num_rows, dtype=bool)
        names = set(self.shard_names())
        if rows.num_rows == 0 or not names:
            return same
        spec, keys = self.spec, self.spec.key_columns
        mm = pc.min_max(rows[spec.time]).as_py()
        span = [(spec.time, ">=", mm["min"]), (spec.time, "<=", mm["max"])]
        shards = np.unique(shard_of(rows, spec.series_keys, self.n_shards))
        parts = [
            self.read_shard(n, list(spec.columns), span)
            for n in (self.shard_name(int(i)) for i in shards)
            if n in names
        ]
        if not parts or not sum(p.num_rows for p in parts):
            return same
        values = [c for c in spec.columns if c not in keys]
        old = decode_dictionaries(pa.concat_tables(parts).unify_dictionaries())
        old = old.rename_columns([c if c in keys else f"{c}__curated" for c in old.column_names])
        mine = decode_dictionaries(self.conform(rows)).append_column(
            "__i", pa.array(np.arange(rows.num_rows))
        )
        both = mine.join(old, keys, join_type="inner")
        equal = pa.array(np.ones(both.num_rows, dtype=bool))
        for c in values:
            a, b = both[c], both[f"{c}__curated"]
            same_value = pc.or_kleene(pc.equal(a, b), pc.and_(pc.is_null(a), pc.is_null(b)))
            equal = pc.and_(equal, pc.fill_null(same_value, False))
        same[both["__i"].filter(equal).to_numpy()] = True
        return same

    def _footer_stats(self, name: str) -> dict | None:
        """The summary a shard carries in its footer (None for a shard written without)."""
        info = self.storage.info(name)
        if info is None:
            raise FileNotFoundError(f"{self.storage.uri(name)} does not exist")
        size = info.size
        tail = self.storage.read_range(name, size - 8, 8)
        length = int.from_bytes(tail[:4], "little")
        footer = self.storage.read_range(name, size - 8 - length, length + 8)
        meta = pq.read_metadata(io.BytesIO(b"PAR1" + footer)).metadata or {}
        raw = meta.get(STATS_KEY)
        return json.loads(raw) if raw else None

    def summary(self) -> dict:
        """Rows, series and time range: from the shards' footers (shards hold disjoint
        series), else read from the key and time columns."""
        names, deltas = self.shard_names(), self._deltas()
        newest = [self._live(n, deltas.get(n, []))[-1] for n in names]
        parts = [p for p in (self._footer_stats(n) for n in newest) if p is not None]
        if len(parts) == len(names):
            times = [p for p in parts if p["rows"]]
            columns = [*self.spec.series_keys, self.spec.time]
            gaps = [  # a shard written before gaps were in the footer is read once here
                p.get("gaps") or self._gaps(self.read_shard(n, columns, dictionary=columns[:-1]))
                for n, p in zip(names, parts, strict=True)
            ]
            return {
                "rows": sum(p["rows"] for p in parts),
                "series": sum(p["series"] for p in parts),
                "time_min": min((p["time_min"] for p in times), default=None),
                "time_max": max((p["time_max"] for p in times), default=None),
                "gaps": merge_gaps(gaps),
            }
        t = self.read(columns=[*self.spec.series_keys, self.spec.time])
        if t.num_rows == 0:
            return {
                "rows": 0,
                "series": 0,
                "time_min": None,
                "time_max": None,
                "gaps": merge_gaps([]),
            }
        mm = pc.min_max(t[self.spec.time]).as_py()
        series = len(np.unique(series_codes(t, self.spec.series_keys)))
        return {
            "rows": t.num_rows,
            "series": series,
            "time_min": str(mm["min"]),
            "time_max": str(mm["max"]),
            "gaps": self._gaps(t),
        }
