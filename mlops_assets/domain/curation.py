"""The curated dataset, the drop ledger, quarantine, and the ingestion of new drops.

Storage layout under a dataset ``<ds>`` (names relative to the storage root)::

    landing/<ds>/...                  drops as they arrive (CSV or Parquet)
    ledger/<ds>/<drop>@<etag>.json    each drop version's fate: rows in, curated, quarantined, why
    curated/<ds>/_layout.json         shard count and sort order, fixed when the dataset is created
    curated/<ds>/part-<NNN>.parquet   typed rows, one shard per stable hash of the series key,
                                      sorted by series key then time, unique on (key, time);
                                      keys dictionary-encoded, lz4, and the shard's summary
                                      (rows, series, time range) in the Parquet footer
    quarantine/<ds>/files/<drop>      whole files that could not be curated, + <drop>.reason.json
    quarantine/<ds>/rows/<drop>@<etag>.parquet   rejected rows with rule, column, value, row

A drop is merged into a shard by binary search of its rows in the shard's sorted rows (only
the drop's rows are sorted): a daily week of 10,000 rows into 40M curated rows costs a read and
a write of each shard, not a sort. Every write is atomic (see ``resources.storage``). Ingesting is idempotent: a crash anywhere
leaves either the old or the new shard, and the ledger entry is written only after the shards,
so a rerun ingests the drop again and, because a later drop replaces equal (key, time) rows,
ends in the same state.
"""

from __future__ import annotations

import io
import json
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlops_assets.ml.drops import DropRejected, ParsedDrop, parse_drop, split_failures
from mlops_assets.ml.expectations import DropGate, hint
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import decode_dictionaries, series_codes, series_numbers, take_rows
from mlops_assets.storage import BlobInfo, Storage

SEQ = "_seq"
STATS_KEY = b"mlops.shard_stats"
# Shards are rewritten by every drop: lz4 writes and reads about twice as fast as zstd here,
# for files within a few % of the size (measured on the 40M-row sales data).
SHARD_CODEC = "lz4"
RowRules = Callable[[pa.Table, DatasetSpec], list[tuple[str, str, np.ndarray]]]


def landing_prefix(spec: DatasetSpec) -> str:
    return f"landing/{spec.name}/"


def _safe(name: str) -> str:
    return quote(name, safe="")


# ---- rows ---------------------------------------------------------------------------------


def _shard_hash(values: tuple) -> int:
    h = 0
    for v in values:
        h = (h * 1_000_003 + zlib.crc32(str(v).encode())) % (1 << 32)
    return h


def shard_of(table: pa.Table, keys: list[str], n_shards: int) -> np.ndarray:
    """A stable shard per row: crc32 of each key value, combined; same key, same shard, forever.

    Hashed once per series (from one row of each), then spread to the rows.
    """
    if table.num_rows == 0:
        return np.zeros(0, np.int64)
    series_of, first_rows = series_numbers(table, keys)
    firsts = decode_dictionaries(take_rows(table.select(keys), first_rows))
    values = zip(*(firsts[k].to_pylist() for k in keys), strict=True)
    shard = np.array([_shard_hash(v) % n_shards for v in values], dtype=np.int64)
    return shard[series_of]


def _time_ints(col: pa.ChunkedArray) -> np.ndarray:
    return (
        pc.cast(col, pa.int64() if pa.types.is_timestamp(col.type) else pa.int32())
        .to_numpy(zero_copy_only=False)
        .astype(np.int64)
    )


def sort_and_dedupe(table: pa.Table, spec: DatasetSpec) -> tuple[pa.Table, int]:
    """Sort by (key, time); of rows with equal (key, time), keep the last one in table order.

    Returns the table and how many rows were replaced by a later one.
    """
    if table.num_rows == 0:
        return table, 0
    code = series_codes(table, spec.series_keys)
    t = _time_ints(table[spec.time])
    # A first load arrives sorted and unique already (drops are written in key order): then
    # there is nothing to move, and a 40M-row sort and gather are skipped.
    if bool(np.all((code[1:] > code[:-1]) | ((code[1:] == code[:-1]) & (t[1:] > t[:-1])))):
        return table, 0
    order = np.lexsort((np.arange(table.num_rows), t, code))
    code, t = code[order], t[order]
    last_of_run = np.ones(len(order), dtype=bool)
    last_of_run[:-1] = (code[1:] != code[:-1]) | (t[1:] != t[:-1])
    keep = order[last_of_run]
    return table.take(pa.array(keep)), int(len(order) - len(keep))


def _search_sorted_pairs(code: np.ndarray, t: np.ndarray, c: np.ndarray, v: np.ndarray):
    """For each (c, v), its insertion point in rows sorted by (code, t): one searchsorted on a
    combined key when it fits in int64, else per row within the row's series."""
    lo_t = min(int(t.min()), int(v.min()))
    span = max(int(t.max()), int(v.max())) - lo_t + 1
    top = max(int(code.max()), int(c.max())) + 1
    if top * span < (1 << 62):
        return np.searchsorted(code * span + (t - lo_t), c * span + (v - lo_t))
    lo, hi = np.searchsorted(code, c, "left"), np.searchsorted(code, c, "right")
    pos = lo.copy()
    for j in np.flatnonzero(hi > lo):
        pos[j] = lo[j] + np.searchsorted(t[lo[j] : hi[j]], v[j])
    return pos


def merge_sorted(old: pa.Table, new: pa.Table, spec: DatasetSpec) -> tuple[pa.Table, int]:
    """``sort_and_dedupe(concat(old, new))`` when ``old`` is already sorted and unique on
    (key, time), as a curated shard is: only the new rows are sorted, and they are placed by
    binary search (a daily drop into 40M curated rows moves no old row but to copy it).

    Returns the merged table and how many rows were replaced by a later one.
    """
    n_old, n_new = old.num_rows, new.num_rows
    if n_old == 0 or n_new > max(1_000_000, n_old // 4):
        return sort_and_dedupe(pa.concat_tables([old, new]), spec)
    both = pa.concat_tables([old, new])
    code = series_codes(both, spec.series_keys)
    t = _time_ints(both[spec.time])
    co, to, cn, tn = code[:n_old], t[:n_old], code[n_old:], t[n_old:]
    order = np.lexsort((np.arange(n_new), tn, cn))  # new rows by (key, time), later wins
    cn, tn = cn[order], tn[order]
    last = np.ones(n_new, dtype=bool)
    last[:-1] = (cn[1:] != cn[:-1]) | (tn[1:] != tn[:-1])
    order, cn, tn = order[last], cn[last], tn[last]
    pos = _search_sorted_pairs(co, to, cn, tn)
    at = np.minimum(pos, n_old - 1)
    replaces = (pos < n_old) & (co[at] == cn) & (to[at] == tn)
    rows = np.insert(np.arange(n_old), pos, n_old + order)  # new rows before old row pos
    dropped = np.zeros(n_old + n_new, dtype=bool)
    dropped[pos[replaces]] = True  # the old row a new one replaces comes right after it
    rows = rows[~dropped[rows]]
    return both.take(pa.array(rows)), int(n_new - len(order) + replaces.sum())


def duplicate_key_rows(table: pa.Table, spec: DatasetSpec) -> list[tuple[str, str, np.ndarray]]:
    """Rows of one drop that share (key, time) with another row of the same drop.

    Inside one drop there is no 'later' row to prefer, so every copy is quarantined.
    """
    if table.num_rows < 2:
        return []
    code = series_codes(table, spec.series_keys)
    t = _time_ints(table[spec.time])
    order = np.lexsort((t, code))
    cs, ts = code[order], t[order]
    same_next = np.zeros(len(order), dtype=bool)
    same_next[:-1] = (cs[1:] == cs[:-1]) & (ts[1:] == ts[:-1])
    dup_sorted = same_next.copy()
    dup_sorted[1:] |= same_next[:-1]
    if not dup_sorted.any():
        return []
    mask = np.zeros(len(order), dtype=bool)
    mask[order] = dup_sorted
    return [("unique.key_time", spec.time, mask)]


# ---- the curated dataset -------------------------------------------------------------------


@dataclass
class MergeStats:
    rows_added: int = 0
    rows_replaced: int = 0
    shards_written: int = 0


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
        return [b.name for b in self.storage.list(f"{self.prefix}/part-")]

    def read_shard(
        self, name: str, columns: list[str] | None = None, filters=None, dictionary=None
    ) -> pa.Table:
        with self.storage.open_read(name) as f:
            return pq.read_table(f, columns=columns, filters=filters, read_dictionary=dictionary)

    def read(self, columns: list[str] | None = None, until=None, since=None) -> pa.Table:
        """The whole dataset (optionally only rows with ``since`` <= time <= ``until``)."""
        names = self.shard_names()
        if not names:
            return self.spec.arrow_schema.empty_table()
        filters = [(self.spec.time, ">=", since)] if since is not None else None
        # Series keys come back dictionary-encoded, as Parquet stores them: grouping 40M rows
        # by their codes is cheap, by Python strings it is not.
        keys = [k for k in self.spec.series_keys if columns is None or k in columns]
        with ThreadPoolExecutor(max_workers=4) as pool:
            tables = list(pool.map(lambda n: self.read_shard(n, columns, filters, keys), names))
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

    def _write_shard(self, name: str, table: pa.Table) -> None:
        """Write a shard with its own summary (rows, series, time range) in the Parquet footer,
        so ``summary()`` reads footers, not data."""
        code = series_codes(table, self.spec.series_keys)
        mm = pc.min_max(table[self.spec.time]).as_py()
        stats = {
            "rows": table.num_rows,
            "series": int(np.count_nonzero(np.r_[True, code[1:] != code[:-1]])) if len(code) else 0,
            "time_min": str(mm["min"]) if mm["min"] is not None else None,
            "time_max": str(mm["max"]) if mm["max"] is not None else None,
        }
        meta = {**(table.schema.metadata or {}), STATS_KEY: json.dumps(stats).encode()}
        buf = io.BytesIO()
        pq.write_table(
            table.replace_schema_metadata(meta),
            buf,
            compression=SHARD_CODEC,
            row_group_size=1 << 20,
        )
        self.storage.write_bytes(name, buf.getvalue())

    def merge(self, new: pa.Table) -> MergeStats:
        """Upsert rows (later rows in ``new`` win over earlier ones and over curated rows)."""
        stats = MergeStats()
        if new.num_rows == 0:
            return stats
        n = self.n_shards
        self._write_layout(n)
        shards = shard_of(new, self.spec.series_keys, n)
        names = set(self.shard_names())
        keys = self.spec.series_keys

        def one(i: int) -> tuple[int, int]:
            part = self.conform(new.filter(pa.array(shards == i)))
            name = self.shard_name(i)
            if name in names:
                old = self.conform(self.read_shard(name, dictionary=keys))
            else:
                old = self._schema().empty_table()
            merged, replaced = merge_sorted(old, part, self.spec)
            self._write_shard(name, merged)
            return part.num_rows - replaced, replaced

        touched = [int(i) for i in np.unique(shards)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            for added, replaced in pool.map(one, touched):
                stats.rows_added += added
                stats.rows_replaced += replaced
        stats.shards_written = len(touched)
        return stats

    def _footer_stats(self, name: str) -> dict | None:
        """The summary a shard carries in its footer (None for a shard written without)."""
        size = self.storage.info(name).size
        tail = self.storage.read_range(name, size - 8, 8)
        length = int.from_bytes(tail[:4], "little")
        footer = self.storage.read_range(name, size - 8 - length, length + 8)
        meta = pq.read_metadata(io.BytesIO(b"PAR1" + footer)).metadata or {}
        raw = meta.get(STATS_KEY)
        return json.loads(raw) if raw else None

    def summary(self) -> dict:
        """Rows, series and time range: from the shards' footers (shards hold disjoint
        series), else read from the key and time columns."""
        parts = [self._footer_stats(n) for n in self.shard_names()]
        if all(p is not None for p in parts):
            times = [p for p in parts if p["rows"]]
            return {
                "rows": sum(p["rows"] for p in parts),
                "series": sum(p["series"] for p in parts),
                "time_min": min((p["time_min"] for p in times), default=None),
                "time_max": max((p["time_max"] for p in times), default=None),
            }
        t = self.read(columns=[*self.spec.series_keys, self.spec.time])
        if t.num_rows == 0:
            return {"rows": 0, "series": 0, "time_min": None, "time_max": None}
        mm = pc.min_max(t[self.spec.time]).as_py()
        series = len(np.unique(series_codes(t, self.spec.series_keys)))
        return {
            "rows": t.num_rows,
            "series": series,
            "time_min": str(mm["min"]),
            "time_max": str(mm["max"]),
        }


# ---- the ledger of drops ---------------------------------------------------------------------


@dataclass
class DropOutcome:
    """What became of one version of one drop."""

    drop: str
    etag: str
    size: int
    status: str  # ingested | partially_ingested | quarantined
    rows_in: int | None = None
    rows_curated: int = 0
    rows_quarantined: int = 0
    rows_replaced: int = 0
    rules: dict[str, int] = field(default_factory=dict)  # rule -> rows failing it
    message: str | None = None
    quarantine: str | None = None
    time_min: str | None = None
    time_max: str | None = None
    ingested_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    run_id: str | None = None
    validation: dict | None = None  # the gate's DropReport (failures, profile, failing rows)

    @property
    def version_key(self) -> str:
        return f"{self.drop}@{self.etag}"


class DropLedger:
    def __init__(self, storage: Storage, spec: DatasetSpec):
        self.storage, self.prefix = storage, f"ledger/{spec.name}/"

    def _name(self, drop: str, etag: str) -> str:
        return f"{self.prefix}{_safe(drop)}@{_safe(etag)}.json"

    def seen(self) -> set[tuple[str, str]]:
        """(drop, etag) of every recorded drop version: one listing, no reads."""
        out = set()
        for b in self.storage.list(self.prefix):
            stem = b.name[len(self.prefix) : -len(".json")]
            drop, _, etag = stem.rpartition("@")
            out.add((unquote(drop), unquote(etag)))
        return out

    def record(self, outcome: DropOutcome) -> None:
        self.storage.write_text(
            self._name(outcome.drop, outcome.etag), json.dumps(asdict(outcome), indent=1)
        )

    def all(self) -> list[DropOutcome]:
        return [
            DropOutcome(**json.loads(self.storage.read_text(b.name)))
            for b in self.storage.list(self.prefix)
        ]


# ---- ingestion -----------------------------------------------------------------------------


@dataclass
class IngestResult:
    outcomes: list[DropOutcome]
    merge: MergeStats
    seconds: dict[str, float] = field(default_factory=dict)  # read_validate, merge

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def rows_in(self) -> int:
        return sum(o.rows_in or 0 for o in self.outcomes)

    @property
    def rows_curated(self) -> int:
        return sum(o.rows_curated for o in self.outcomes)

    @property
    def rows_quarantined(self) -> int:
        return sum(o.rows_quarantined for o in self.outcomes)


def _basename(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _quarantine_file(storage: Storage, spec: DatasetSpec, info: BlobInfo, err: DropRejected):
    dest = f"quarantine/{spec.name}/files/{_basename(info.name)}"
    # Reason first, then the copy, then (after the ledger entry) the delete: a crash anywhere
    # leaves the file in landing or in quarantine, never in neither.
    storage.write_text(dest + ".reason.json", json.dumps({**err.as_dict(), "etag": info.etag}))
    storage.write_bytes(dest, storage.read_bytes(info.name))
    return dest


def _write_rejected_rows(storage: Storage, spec: DatasetSpec, info: BlobInfo, rejected: pa.Table):
    dest = f"quarantine/{spec.name}/rows/{_safe(_basename(info.name))}@{_safe(info.etag)}.parquet"
    buf = io.BytesIO()
    pq.write_table(rejected, buf)
    storage.write_bytes(dest, buf.getvalue())
    return dest


def _rule_counts(rejected: pa.Table) -> dict[str, int]:
    if rejected.num_rows == 0:
        return {}
    vc = pc.value_counts(rejected["_rule"]).to_pylist()
    return {d["values"]: d["counts"] for d in vc}


def pending_drops(storage: Storage, spec: DatasetSpec) -> list[BlobInfo]:
    """Drop versions in landing without a ledger entry, oldest first (later wins on merge)."""
    seen = DropLedger(storage, spec).seen()
    drops = [b for b in storage.list(landing_prefix(spec)) if (b.name, b.etag) not in seen]
    return sorted(drops, key=lambda b: (b.last_modified, b.name))


def ingest(
    storage: Storage,
    spec: DatasetSpec,
    drops: Iterable[BlobInfo],
    *,
    n_shards: int = 8,
    row_rules: Iterable[RowRules] = (duplicate_key_rows,),
    run_id: str | None = None,
    on_drop: Callable[[DropOutcome], None] | None = None,
    gate: DropGate | None = None,
) -> IngestResult:
    """Curate ``drops`` in order: parse, apply row rules, quarantine failures, upsert the rest.

    With a ``gate`` (see ``mlops_assets.ml.expectations``), its row-level expectations join the
    row rules, and its drop-level expectations run on each drop's good rows: a drop failing an
    ERROR one (row count, distribution beyond the hard band) is quarantined whole, so it never
    reaches the curated data. Each outcome then carries the gate's report in ``validation``.
    """
    t_start = time.perf_counter()
    ledger = DropLedger(storage, spec)
    store = CuratedStore(storage, spec, n_shards)
    outcomes: list[DropOutcome] = []
    good: list[pa.Table] = []
    quarantined_files: list[tuple[DropOutcome, str]] = []
    rules = tuple(row_rules)
    if gate is not None:
        # The gate's suite includes the (key, time) uniqueness rule: don't compute it twice.
        rules = (gate.row_rules, *(r for r in rules if r is not duplicate_key_rows))
    for info in drops:
        base = DropOutcome(drop=info.name, etag=info.etag, size=info.size, status="", run_id=run_id)
        parsed = None
        try:
            data = storage.read_bytes(info.name)
            parsed = parse_drop(info.name, data, spec, keep_dictionaries=True)
            parsed = _apply_rules(parsed, spec, rules)
            parsed = _explain_rows(parsed, info.name)
            if gate is not None:
                base.validation = gate.check_drop(info.name, parsed).as_dict()
        except DropRejected as err:
            base.status, base.message = "quarantined", err.message
            base.rules = {err.rule: 1}
            if parsed is not None:  # a drop-level rule failed: every row of the file is out
                base.rows_in = base.rows_quarantined = parsed.rows_in
                base.validation = gate.reports[info.name].as_dict() if gate is not None else None
            else:
                base.validation = {
                    "failures": [
                        {
                            **err.as_dict(),
                            "level": "file",
                            "severity": "error",
                            "concern": "schema",
                        }
                    ]
                }
            base.quarantine = _quarantine_file(storage, spec, info, err)
            outcomes.append(base)
            quarantined_files.append((base, info.name))
            continue
        base.rows_in = parsed.rows_in
        base.rows_curated = parsed.good.num_rows
        base.rows_quarantined = parsed.rows_rejected
        base.rules = _rule_counts(parsed.rejected)
        if parsed.rows_rejected:
            base.quarantine = _write_rejected_rows(storage, spec, info, parsed.rejected)
            first = parsed.rejected["_message"][0].as_py()
            base.message = (
                f"{info.name}: {parsed.rows_rejected} of {parsed.rows_in} rows quarantined "
                f"({', '.join(f'{r}: {c}' for r, c in base.rules.items())}); first: {first}"
            )
        base.status = (
            "ingested"
            if parsed.good.num_rows == parsed.rows_in
            else ("partially_ingested" if parsed.good.num_rows else "quarantined")
        )
        if parsed.good.num_rows:
            mm = pc.min_max(parsed.good[spec.time]).as_py()
            base.time_min, base.time_max = str(mm["min"]), str(mm["max"])
            good.append(store.conform(parsed.good))  # CSV and Parquet drops alike
            if gate is not None:
                gate.accept(parsed.good)
        outcomes.append(base)

    t_merge = time.perf_counter()
    merge = store.merge(pa.concat_tables(good)) if good else MergeStats()
    seconds = {"read_validate": t_merge - t_start, "merge": time.perf_counter() - t_merge}
    for o in outcomes:
        ledger.record(o)
        if on_drop:
            on_drop(o)
    for _, name in quarantined_files:
        storage.delete(name)
    return IngestResult(outcomes=outcomes, merge=merge, seconds=seconds)


def _explain_rows(parsed: ParsedDrop, name: str) -> ParsedDrop:
    """Rejected rows' messages name the file and say what to do about the rule."""
    rej = parsed.rejected
    if rej.num_rows == 0:
        return parsed
    messages = [
        f"{name}: {m}; {hint(r)}"
        for m, r in zip(rej["_message"].to_pylist(), rej["_rule"].to_pylist(), strict=True)
    ]
    i = rej.schema.get_field_index("_message")
    rejected = rej.set_column(i, "_message", pa.array(messages, type=pa.string()))
    return ParsedDrop(rows_in=parsed.rows_in, good=parsed.good, rejected=rejected)


def _apply_rules(parsed: ParsedDrop, spec: DatasetSpec, rules: Iterable[RowRules]) -> ParsedDrop:
    failures = [f for rule in rules for f in rule(parsed.good, spec)]
    if not failures:
        return parsed
    # Split only the failing rows (usually few): building a rejected table formats every column
    # as text, which costs seconds on a 10M-row drop if done for all rows.
    bad = np.zeros(parsed.good.num_rows, dtype=bool)
    for _, _, mask in failures:
        bad |= mask
    idx = np.flatnonzero(bad)
    more = split_failures(
        parsed.good.take(pa.array(idx)),
        None,
        [(r, c, m[idx]) for r, c, m in failures],
        spec,
        rows_in=len(idx),
    )
    return ParsedDrop(
        rows_in=parsed.rows_in,
        good=parsed.good.filter(pa.array(~bad)),
        rejected=pa.concat_tables([parsed.rejected, more.rejected]),
    )
