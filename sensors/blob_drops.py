"""A sensor that sees each new version of a drop under a storage prefix once and asks for a run.

Works on any ``resources.storage.Storage`` (a local folder, Blob Storage, ADLS Gen2 through its
Blob endpoint) by listing; Azure delivers no events to a poller and Azurite has no Event Grid.

Exactly once, across ticks, daemon restarts and the sensor being off:

* **cursor**: a high-water mark ``hw`` (the newest ``last_modified`` handled) plus the
  ``(name, etag)`` pairs handled whose ``last_modified`` is within ``lag_s`` of it. A tick takes
  every listed blob with ``last_modified >= hw - lag_s`` that is not in that set, oldest first,
  at most ``max_per_tick`` of them; the rest wait for the next tick (the cursor stops at the last
  one taken). The lag covers blobs whose commit time is earlier than one already seen but which
  became visible later (concurrent uploads, clock granularity).
* **run_key** ``<name>@<etag>``: Dagster never launches two runs for one key, so a cursor that
  is lost or reset cannot score a drop version twice; an overwritten blob has a new etag, hence a
  new key and a new run.
* **dynamic partition** per drop version (``<name relative to prefix>@<etag>``), added in the
  same ``SensorResult`` as the run requests. The daemon adds the partitions, then reserves the
  runs with the tick, then creates and submits them; a daemon killed in between (``kill -9``)
  resumes a tick whose runs were reserved, but not one killed before. So a drop version whose
  partition exists is skipped only once its run is submitted (one drop per run): requested
  again, a partition without a run gets one, and a run left NOT_STARTED is submitted by Dagster
  (same run key, no second run). With ``batch_size > 1`` (run key ``batch:<digest>`` of the
  batch's drop versions, one run over the partition range) each run also carries one tag per
  drop version it covers (``member_tag``), and a known partition is skipped once any run carries
  its tag: a lost or reset cursor, which may cut batches differently, cannot score a drop twice,
  and a partition a kill left without a run is requested again, in a run of its own (a batch is
  a range of partitions in the order they were added, so only one tick's new ones batch).

Only complete drops are taken. Names a writer uses while it writes are ignored (``.tmp-*`` and
other names starting with ``.``, ``_`` or ``~``, ``*.partial``, ``*._COPYING_``, ``*.tmp``), and
a blob is taken once it is **settled**: either its ``last_modified`` is at least ``settle_s``
old, or the previous tick listed it with the same etag and size (a file still being copied
changes between two listings; the cursor keeps ``pending``, the young blobs of the last tick,
so this costs no extra listing). A drop is thus taken one tick (``minimum_interval_seconds``)
after it stops changing, or at once if it is older than ``settle_s``. Producers should still land
atomically (``mlops land``, or write a temporary name and rename; a Blob upload commits at once).

Listing cost: Azure lists by name, not by time, so a tick reads every name under the prefix
(one request per 5,000 blobs). With ``date_subprefix=True`` producers write under
``<prefix>YYYY/MM/DD/`` and a tick lists only the days from ``hw - lag_s`` (minus one day of
slack) to today, so the cost is bounded by the drops of those days, not by the history. A drop
written into an older day folder than that is not seen: say so to producers.

No asset modules are imported here; the job and partitions come from the caller.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from mlops_assets.storage import BlobInfo, Storage

DEFAULT_SUFFIXES = (".csv", ".csv.gz", ".csv.zst", ".parquet", ".pq")
# Names writers use for files not yet complete (matched against the last part of the name).
TEMPORARY_NAMES = (".*", "_*", "~*", "*.partial", "*._COPYING_", "*.tmp")


@dataclass(frozen=True)
class BlobDropConfig:
    """What the sensor watches and how much it does per tick."""

    prefix: str  # e.g. scoring/sales/inbox/
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
    lag_s: float = 600.0
    max_per_tick: int = 1_000
    batch_size: int = 1  # drops per run (consecutive partitions; the asset takes a range)
    date_subprefix: bool = False
    max_days_listed: int = 400
    minimum_interval_seconds: int = 30
    settle_s: float = 60.0  # a blob this old is taken without waiting for a second listing
    ignore: tuple[str, ...] = TEMPORARY_NAMES

    def __post_init__(self) -> None:
        if not 0 <= self.settle_s < self.lag_s:
            raise ValueError(f"settle_s ({self.settle_s}) must be in [0, lag_s={self.lag_s})")

    def wanted(self, name: str) -> bool:
        """A drop's name (suffix), not a temporary one."""
        base = name.rsplit("/", 1)[-1]
        return name.lower().endswith(self.suffixes) and not any(
            fnmatch.fnmatchcase(base, p) for p in self.ignore
        )


@dataclass
class Cursor:
    hw: datetime | None = None
    seen: dict[str, tuple[str, float]] | None = None  # name -> (etag, last_modified ts)
    pending: dict[str, tuple[str, int]] | None = None  # young, not taken: name -> (etag, size)

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        if not text:
            return cls(None, {}, {})
        raw = json.loads(text)
        hw = datetime.fromisoformat(raw["hw"]) if raw.get("hw") else None
        return cls(
            hw,
            {n: (e, float(t)) for n, e, t in raw.get("seen", [])},
            {n: (e, int(z)) for n, e, z in raw.get("pending", [])},
        )

    def dump(self) -> str:
        seen = sorted([n, e, t] for n, (e, t) in (self.seen or {}).items())
        pending = sorted([n, e, z] for n, (e, z) in (self.pending or {}).items())
        return json.dumps(
            {"hw": self.hw.isoformat() if self.hw else None, "seen": seen, "pending": pending}
        )


def _ts(dt: datetime) -> float:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def list_prefixes(config: BlobDropConfig, cursor: Cursor, now: datetime) -> list[str]:
    """The prefixes one tick lists: the whole prefix, or the day folders that can hold news."""
    if not config.date_subprefix or cursor.hw is None:
        return [config.prefix]
    start = (cursor.hw - timedelta(seconds=config.lag_s) - timedelta(days=1)).date()
    end = (now + timedelta(days=1)).date()  # producers' clocks may run ahead
    days = min((end - start).days + 1, config.max_days_listed)
    return [f"{config.prefix}{start + timedelta(days=i):%Y/%m/%d}/" for i in range(days)]


def plan_tick(
    listing: Sequence[BlobInfo],
    cursor: Cursor,
    config: BlobDropConfig,
    now: datetime | None = None,
) -> tuple[list[BlobInfo], Cursor]:
    """The settled drop versions to request now (oldest first) and the cursor after this tick."""
    seen = dict(cursor.seen or {})
    was_pending = cursor.pending or {}
    floor = _ts(cursor.hw) - config.lag_s if cursor.hw else float("-inf")
    young_from = _ts(now or datetime.now(UTC)) - config.settle_s
    fresh = [
        b
        for b in listing
        if config.wanted(b.name)
        and _ts(b.last_modified) >= floor
        and seen.get(b.name, (None,))[0] != b.etag
    ]
    fresh.sort(key=lambda b: (_ts(b.last_modified), b.name))
    settled = [
        b
        for b in fresh
        if _ts(b.last_modified) <= young_from or was_pending.get(b.name) == (b.etag, b.size)
    ]
    take = settled[: config.max_per_tick]
    taken = {b.name for b in take}
    pending = {
        b.name: (b.etag, b.size)
        for b in fresh
        if b.name not in taken and _ts(b.last_modified) > young_from
    }
    if not take:
        return [], Cursor(cursor.hw, seen, pending)
    for b in take:
        seen[b.name] = (b.etag, _ts(b.last_modified))
    hw = max([b.last_modified for b in take] + ([cursor.hw] if cursor.hw else []), key=_ts)
    keep_from = _ts(hw) - config.lag_s
    seen = {n: (e, t) for n, (e, t) in seen.items() if t >= keep_from}
    return take, Cursor(hw, seen, pending)


def partition_key(blob: BlobInfo, prefix: str) -> str:
    return f"{blob.name.removeprefix(prefix)}@{blob.etag}"


def member_tag(blob: BlobInfo) -> str:
    """The tag a batch run carries for each drop version it covers (a valid tag key: a digest)."""
    return "mlops/drop." + hashlib.sha256(blob.version_key.encode()).hexdigest()[:24]


def run_requests(blobs: list[BlobInfo], keys: list[str], batch_size: int) -> list[dg.RunRequest]:
    """One run per drop version, or per ``batch_size`` of them (a range of the partitions added
    in this tick, in this order); run keys are stable, so a drop is requested once."""
    requests = []
    for i in range(0, len(blobs), max(1, batch_size)):
        group, ks = blobs[i : i + batch_size], keys[i : i + batch_size]
        if len(group) == 1:
            requests.append(
                dg.RunRequest(
                    run_key=group[0].version_key,
                    partition_key=ks[0],
                    tags={
                        "mlops/drop": group[0].name,
                        "mlops/etag": group[0].etag,
                        member_tag(group[0]): "1",
                    },
                )
            )
            continue
        digest = hashlib.sha256("\n".join(b.version_key for b in group).encode())
        requests.append(
            dg.RunRequest(
                run_key=f"batch:{digest.hexdigest()[:32]}",
                tags={
                    "dagster/asset_partition_range_start": ks[0],
                    "dagster/asset_partition_range_end": ks[-1],
                    "mlops/drops": str(len(group)),
                    **{member_tag(b): "1" for b in group},
                },
            )
        )
    return requests


def _in_a_batch(context: dg.SensorEvaluationContext, blob: BlobInfo) -> bool:
    """A batch run (of any status) covers ``blob``. Dagster resumes a tick whose runs it had
    reserved, so a run that exists is never missing; one killed before has none."""
    runs = context.instance.get_runs(dg.RunsFilter(tags={member_tag(blob): "1"}), limit=1)
    return bool(runs)


def _submitted(context: dg.SensorEvaluationContext, run_key: str) -> bool:
    """A run holds ``run_key`` and was submitted. A daemon killed between adding a tick's
    partitions and creating its runs leaves a partition without a run, and one killed between
    creating a run and submitting it leaves the run NOT_STARTED; requesting the key again
    creates the missing run, or makes Dagster submit the NOT_STARTED one (not a second run)."""
    runs = context.instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    return bool(runs) and runs[0].status != dg.DagsterRunStatus.NOT_STARTED


def make_blob_drop_sensor(
    job,
    partitions_def: dg.DynamicPartitionsDefinition,
    config: BlobDropConfig,
    *,
    name: str | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """One run (or one run per ``batch_size`` drops) per new drop version under the prefix."""
    partitions_name = partitions_def.name
    if partitions_name is None:
        raise ValueError("the drop partitions need a name (DynamicPartitionsDefinition(name=...))")

    @dg.sensor(
        name=name or f"{job.name}_blob_drops",
        job=job,
        minimum_interval_seconds=config.minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Each new drop version under `{config.prefix}` once: run key `<name>@<etag>`, "
            f"one dynamic partition of `{partitions_name}` per drop version."
        ),
    )
    def blob_drop_sensor(
        context: dg.SensorEvaluationContext, storage: dg.ResourceParam[Storage]
    ) -> dg.SensorResult:
        cursor = Cursor.parse(context.cursor)
        now = datetime.now(UTC)
        listing: list[BlobInfo] = []
        for p in list_prefixes(config, cursor, now):
            listing.extend(storage.list(p))
        take, after = plan_tick(listing, cursor, config, now)
        if not take:
            waiting = f", {len(after.pending)} settling" if after.pending else ""
            return dg.SensorResult(
                skip_reason=f"no new drop under {config.prefix} ({len(listing)} listed{waiting})",
                cursor=after.dump(),
            )
        keys = [partition_key(b, config.prefix) for b in take]
        known = set(context.instance.get_existing_dynamic_partitions(partitions_name, keys))
        if known:  # requested by an earlier tick (a lost or reset cursor): not again, unless
            # that tick died before its run was submitted (one drop per run) or created
            # (batches)
            batched = config.batch_size > 1
            done = {
                k
                for b, k in zip(take, keys, strict=True)
                if k in known
                and (_in_a_batch(context, b) if batched else _submitted(context, b.version_key))
            }
            take = [b for b, k in zip(take, keys, strict=True) if k not in done]
            keys = [k for k in keys if k not in done]
        if not take:
            return dg.SensorResult(
                skip_reason=f"{len(known)} drop version(s) under {config.prefix} already requested",
                cursor=after.dump(),
            )
        # A batch is a range of partitions, in the order they were added: only this tick's new
        # ones are consecutive; a drop requested again runs alone.
        again = [k in known for k in keys]
        requests = run_requests(
            [b for b, a in zip(take, again, strict=True) if not a],
            [k for k, a in zip(keys, again, strict=True) if not a],
            config.batch_size,
        ) + run_requests(
            [b for b, a in zip(take, again, strict=True) if a],
            [k for k, a in zip(keys, again, strict=True) if a],
            1,
        )
        context.log.info(
            f"{len(take)} new drop version(s) under {config.prefix} -> {len(requests)} run(s)"
        )
        new = [k for k in keys if k not in known]
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[partitions_def.build_add_request(new)] if new else [],
            cursor=after.dump(),
        )

    return blob_drop_sensor
