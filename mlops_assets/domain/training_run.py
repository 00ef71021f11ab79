"""One training run: curated data up to an as-of date -> a candidate model set and its ref.

Series not retrained (chosen or changed-only runs) are carried over from the latest candidate
by reference (``modelset.carry_over``). The set is written through ``model_sets.write_model_set``
and both pointers (the as-of date's candidate, the latest) name its ``ModelSetRef``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.domain.shard_training import (
    ShardResult,
    ShardTask,
    changed_series,
)
from mlops_assets.ml import intervals, modelset, ridge_stats
from mlops_assets.ml.engines import BY_STEP, result_schema
from mlops_assets.ml.intervals import coverage_field, interval_field
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import series_fingerprints
from mlops_assets.storage import Storage
from mlops_assets.storage.hadoop import hadoop_uri


class TrainingInputError(ValueError):
    """The run cannot start: no curated data, or unknown series asked for."""


class Engine(Protocol):
    """What a run needs of a training engine (``resources.training_engine``)."""

    @property
    def name(self) -> str: ...

    @property
    def reads_shards(self) -> bool: ...

    # True: the engine trains on this machine, and its workers read, fingerprint and train
    # the curated shards themselves (``train_shards``): a run that trains every series hands
    # them the shards' names, not their rows.
    @property
    def by_shard(self) -> bool: ...

    def fingerprints(self, shards: Sequence[str], spec: DatasetSpec, as_of: str) -> pa.Table: ...

    def train_shards(self, tasks: Sequence[ShardTask]) -> Generator[ShardResult]: ...

    def train(
        self,
        table: pa.Table | None,
        spec: DatasetSpec,
        series: Sequence[str] | None = None,
        phases: Phases | None = None,
        *,
        context: Any = None,
        as_of: str | None = None,
        shards: Sequence[str] = (),
    ) -> pd.DataFrame: ...


@dataclass(frozen=True)
class TrainingOutcome:
    """A written candidate set: its ref and manifest, this run's training records and timings."""

    ref: ms.ModelSetRef
    manifest: pa.Table
    trained: pd.DataFrame  # one row per series trained now (status, metrics, fit seconds)
    rows: int
    phases: Phases = field(compare=False)
    # How the run trained: "full refit" (and why, with model.refit) or "incremental: ...".
    refit: str = "full refit"


def choose_series(
    series: Sequence[str], changed_only: bool, fingerprints: pa.Table, previous: pa.Table | None
) -> list[str] | None:
    """The series to train: chosen ones, changed ones, or None for all.

    Raises:
        TrainingInputError: A chosen series is not in the data.
    """
    if series:
        unknown = sorted(set(series) - set(fingerprints["series_id"].to_pylist()))
        if unknown:
            raise TrainingInputError(
                f"unknown series {unknown[:5]} (of {len(unknown)}); series ids look like "
                f"{fingerprints['series_id'][0].as_py()!r}"
            )
        return sorted(series)
    before = _fingerprints_before(previous) if changed_only else None
    if before is not None:
        return changed_series(fingerprints, before)
    return None


def _fingerprints_before(previous: pa.Table | None) -> dict[str, str] | None:
    """Each series' data fingerprint in the previous set (changed-only runs), if it has them."""
    if previous is None or "data_fingerprint" not in previous.column_names:
        return None
    return dict(
        zip(
            previous["series_id"].to_pylist(),
            previous["data_fingerprint"].to_pylist(),
            strict=True,
        )
    )


def records_table(results: pd.DataFrame, spec: DatasetSpec) -> pa.Table:
    """An engine's records (``result_schema``) as Arrow: compact, where each is many objects."""
    return pa.Table.from_pandas(results, schema=result_schema(spec), preserve_index=False)


def run_table(results: pd.DataFrame, spec: DatasetSpec) -> pa.Table:
    """A run's engine records (``result_schema``) with its intervals calibrated over them."""
    return with_intervals(records_table(results, spec), spec)


def with_intervals(fresh: pa.Table, spec: DatasetSpec) -> pa.Table:
    """``fresh`` with ``interval_<level>`` half-widths (a list per series, one per horizon
    step) and ``coverage_<level>`` (out of fold), calibrated over every series of the run."""
    levels = spec.intervals.levels
    if not levels or fresh.num_rows == 0:
        return fresh
    k_h = spec.backtest.origins * spec.horizon
    flat = [
        r if r is not None and len(r) == k_h else [np.nan] * k_h
        for r in fresh["backtest_residuals"].to_pylist()
    ]
    residuals = np.array(flat, dtype=float).reshape(fresh.num_rows, -1, spec.horizon)
    scale = np.asarray(fresh["residual_scale"].to_numpy(zero_copy_only=False), dtype=float)
    widths, cover = intervals.series_intervals(
        residuals, scale, levels, spec.intervals.min_residuals, spec.intervals.own_error_weight
    )
    for level in levels:
        fresh = fresh.append_column(
            pa.field(interval_field(level), pa.list_(pa.float64())),
            pa.array(widths[level].tolist()),
        )
        fresh = fresh.append_column(coverage_field(level), pa.array(cover[level], pa.float64()))
    return fresh


def fresh_manifest(
    results: pd.DataFrame | pa.Table,
    fingerprints: pa.Table,
    spec: DatasetSpec,
    version: str,
    folder: str,
    *,
    full_refit_in: str | None = None,
    curated: dict[str, int] | None = None,
) -> tuple[pa.Table, list[tuple[str, bytes]]]:
    """This run's records (an engine's frame, or every batch's ``records_table`` together) as
    manifest rows (with intervals and their data window) and the packs to write.

    ``full_refit_in`` (default: this run) and ``curated`` (the curated shards' revisions the
    run read) go into the ridge statistics' file, where the spec keeps statistics."""
    fresh = (
        run_table(results, spec)
        if isinstance(results, pd.DataFrame)
        else with_intervals(results, spec)
    )
    at = pc.index_in(fresh["series_id"], value_set=fingerprints["series_id"])
    for name in ("n_rows", "data_end", "data_fingerprint"):
        fresh = fresh.append_column(name, fingerprints[name].take(at))
    fresh = fresh.sort_by("series_id")
    fresh = fresh.append_column("trained_in", pa.array([version] * fresh.num_rows))
    fresh, stats_file = ridge_stats.split_stats(
        fresh,
        folder,
        spec,
        full_refit_in=full_refit_in or version,
        curated=curated,
    )
    manifest, packs = modelset.pack_models(fresh, folder)
    return manifest, packs + stats_file


def _remote_batch(
    storage: Storage, spec: DatasetSpec, engine: Engine, as_of: str
) -> tuple[None, list[str], pa.Table]:
    """For an engine that ``reads_shards``: the shards' Hadoop URIs (no table) and the
    fingerprints the engine computed there."""
    shards = [hadoop_uri(storage, name) for name in CuratedStore(storage, spec).files()]
    fingerprints = engine.fingerprints(shards, spec, as_of) if shards else None
    if fingerprints is None:
        fingerprints = series_fingerprints(spec.arrow_schema.empty_table(), spec)
    return None, shards, fingerprints


def train_candidate(
    storage: Storage,
    spec: DatasetSpec,
    engine: Engine,
    *,
    as_of: str,
    run_id: str,
    series: Sequence[str] = (),
    changed_only: bool = False,
    full_refit: bool = False,
    context: Any = None,
    log: Callable[[str], None] = lambda _: None,
) -> TrainingOutcome:
    """Train (all, chosen or changed series) on curated data up to ``as_of``; write the set.

    With ``model.refit`` in the spec a run over all series is incremental where
    ``incremental_run.daily_plan`` allows (else, or with ``full_refit``, a full refit).

    Raises:
        TrainingInputError: No curated rows up to ``as_of``, or unknown chosen series.
    """
    phases = Phases()
    with phases("sweep"):
        swept = ms.sweep_unfinished_sets(storage, spec)
    if swept:
        log(f"removed {len(swept)} unfinished set folder(s) a crashed run left: {swept[:3]}")
    with phases("read"):
        latest = ms.read_pointer(storage, ms.latest_pointer(spec))
        previous = ms.read_manifest(storage, latest) if latest else None
        plan, revisions, why = None, None, "full refit"
        if spec.model.refit is not None:
            from mlops_assets.domain import incremental_run as inc

            # Read before the data: a merge in between makes the next run refit, not miss it.
            revisions = inc.revisions(storage, spec)
            if full_refit:
                why = "full refit: asked for (full_refit)"
                log(why)
            elif not series and not changed_only:
                plan, why = inc.daily_plan(storage, spec, engine, latest, previous, as_of)
                log(why)
    if plan is not None:
        assert previous is not None and revisions is not None
        return inc.train_daily(
            storage,
            spec,
            engine,
            plan,
            previous,
            as_of=as_of,
            run_id=run_id,
            curated=revisions,
            phases=phases,
            context=context,
            log=log,
            why=why,
        )
    if _by_shard(spec, engine, series):
        before = _fingerprints_before(previous) if changed_only else None
        with phases("train"):
            got = _train_shards(storage, spec, engine, as_of, before, log)
    else:
        run = _Run(as_of, series, changed_only, previous, context, phases, log)
        got = _train_once(storage, spec, engine, run)
    rows, parts, prints, engine_phases = got.rows, got.parts, got.prints, got.phases
    if rows == 0:
        raise TrainingInputError(
            f"no curated {spec.name} rows up to {as_of}: land drops under "
            f"landing/{spec.name}/ (e.g. `mlops generate {spec.name}`) and ingest them first"
        )
    phases.update(engine_phases, prefix="engine_")
    version = f"{as_of}/{run_id[:8]}"
    folder = ms.set_folder(spec, version)
    with phases("write"):
        fresh = None
        packs: list[tuple[str, bytes]] = []
        records = pa.concat_tables(parts) if parts else None
        if records is not None:
            fps = pa.concat_tables(prints)
            fresh, packs = fresh_manifest(records, fps, spec, version, folder, curated=revisions)
        ref, manifest = write_candidate(storage, spec, fresh, packs, previous, version, as_of)
    trained = trained_frame(records) if records is not None else pd.DataFrame(columns=["status"])
    return TrainingOutcome(ref, manifest, trained, rows, phases, refit=why)


def write_candidate(
    storage: Storage,
    spec: DatasetSpec,
    fresh: pa.Table | None,
    packs: list[tuple[str, bytes]],
    previous: pa.Table | None,
    version: str,
    as_of: str,
) -> tuple[ms.ModelSetRef, pa.Table]:
    """Write a run's set (its fresh entries, the others carried from ``previous``) under
    version ``version``, and point the as-of date's candidate and the latest at it."""
    manifest = modelset.carry_over(fresh, previous)
    ref = ms.write_model_set(
        storage,
        manifest,
        packs,
        name=ms.registered_model_name(spec),
        version=version,
        folder=ms.set_folder(spec, version),
    )
    ms.write_pointer(storage, ms.candidate_pointer(spec, as_of), ref)
    ms.write_pointer(storage, ms.latest_pointer(spec), ref)
    return ref, manifest


@dataclass
class _Trained:
    """What a run's training collects: each batch's records (Arrow) and series fingerprints,
    the curated rows read and the engine's phase seconds."""

    parts: list[pa.Table] = field(default_factory=list)
    prints: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    phases: Phases = field(default_factory=Phases)


@dataclass(frozen=True)
class _Run:
    """A training run's settings that its batches need."""

    as_of: str
    series: Sequence[str]
    changed_only: bool
    previous: pa.Table | None
    context: Any
    phases: Phases
    log: Callable[[str], None]


def _by_shard(spec: DatasetSpec, engine: Engine, series: Sequence[str]) -> bool:
    """Whether the run trains shard by shard: an engine that trains here, every series, and
    no series' model depending on another's data (no panel prior to estimate)."""
    needs_prior = spec.model.choice == "combine" and spec.model.combine.prior is None
    return engine.by_shard and not series and not needs_prior


def _train_shards(
    storage: Storage,
    spec: DatasetSpec,
    engine: Engine,
    as_of: str,
    before: dict[str, str] | None,
    log: Callable[[str], None],
) -> _Trained:
    """Every shard trained by the engine's workers, which read the shards themselves
    (``shard_training``); ``before``: changed-only, the previous set's fingerprints."""
    got = _Trained()
    until = pd.Timestamp(as_of).date()
    tasks = [
        ShardTask(storage, spec.model_dump_json(), name, until, before)
        for name in CuratedStore(storage, spec).shard_names()
    ]
    with got.phases("wall"), closing(engine.train_shards(tasks)) as results:
        for done in results:
            got.rows += done.rows
            got.prints.append(done.fingerprints)
            got.phases.update(done.seconds)
            if done.records is not None and done.records.num_rows:
                got.parts.append(done.records)
                log(
                    f"trained {done.records.num_rows} of {done.fingerprints.num_rows} series of "
                    f"{done.shard} ({done.rows:,} rows) with the {engine.name} engine"
                )
    return got


def _train_once(storage: Storage, spec: DatasetSpec, engine: Engine, run: _Run) -> _Trained:
    """Training in one batch: the curated rows up to the as-of date, read here (an engine
    that ``reads_shards`` gets the shards' addresses instead, and no table)."""
    got = _Trained()
    with run.phases("read"):
        if engine.reads_shards:
            table, shards, fingerprints = _remote_batch(storage, spec, engine, run.as_of)
        else:
            table = CuratedStore(storage, spec).read(until=pd.Timestamp(run.as_of).date())
            shards, fingerprints = [], series_fingerprints(table, spec)
    n = table.num_rows if table is not None else int(pc.sum(fingerprints["n_rows"]).as_py())
    got.rows = n
    got.prints.append(fingerprints)
    chosen = choose_series(run.series, run.changed_only, fingerprints, run.previous)
    if n == 0 or chosen == []:
        return got
    run.log(
        f"training {'all' if chosen is None else len(chosen)} of {fingerprints.num_rows} "
        f"series on {n:,} rows with the {engine.name} engine"
    )
    with run.phases("train"):
        results = engine.train(
            table,
            spec,
            series=chosen,
            phases=got.phases,
            context=run.context,
            as_of=run.as_of,
            shards=shards,
        )
    if len(results):
        got.parts.append(records_table(results, spec))
    return got


# What the run reports per series trained; the heavy per-series columns stay in the manifest.
_NOT_REPORTED = {
    "model",
    "backtest_residuals",
    "history_tail",
    *(f.name for f in ridge_stats.FIELDS),
}


def trained_frame(records: pa.Table) -> pd.DataFrame:
    return records.drop_columns([c for c in records.column_names if c in _NOT_REPORTED]).to_pandas()


def mae_by_step(trained: pd.DataFrame, spec: DatasetSpec) -> dict[str, list[float]]:
    """Mean over series of each step's backtest MAE, for the model and both baselines, on the
    series trained in this run (each series' baselines on its model's pairs)."""
    out = {}
    ok = trained[trained["status"] == "trained"]
    for name in BY_STEP:
        rows = [r for r in ok[f"{name}_by_step"] if r is not None and len(r) == spec.horizon]
        values = np.array(rows, dtype=float).reshape(-1, spec.horizon)
        with np.errstate(invalid="ignore"):
            out[name] = [float(np.nanmean(c)) if np.isfinite(c).any() else np.nan for c in values.T]
    return out


def interval_coverage(manifest: pa.Table, version: str, spec: DatasetSpec) -> dict[str, float]:
    """Pooled out-of-fold coverage per interval level (``interval_coverage_80``...) of the
    series trained in run ``version``."""
    out: dict[str, float] = {}
    fresh = manifest.filter(pc.equal(manifest["trained_in"], version))
    if fresh.num_rows == 0:
        return out
    weights = np.asarray(fresh["n_holdout"].to_numpy(zero_copy_only=False), dtype=float)
    for level in spec.intervals.levels:
        share = np.asarray(fresh[coverage_field(level)].to_numpy(zero_copy_only=False), dtype=float)
        ok = np.isfinite(share) & (weights > 0)
        pooled = (
            float(np.sum(share[ok] * weights[ok]) / np.sum(weights[ok])) if ok.any() else np.nan
        )
        out[f"interval_coverage_{level:g}"] = pooled
    return out
