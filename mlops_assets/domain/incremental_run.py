"""A training run between full refits: ridge series refreshed from their statistics.

With ``model.refit`` in the spec, ``training_run.train_candidate`` asks ``daily_plan`` first. A
run is incremental when the latest candidate set holds ridge statistics (``ridge_stats``) of
the spec's features, windows and alpha, its full refit is less than ``full_every_days`` old,
the run is for a later date than that set, the engine trains in this process, and no curated
row the statistics were built from has changed since (``CuratedStore.restated_since``). Else it
is a full refit, and the log says why.

An incremental run reads a window of recent periods (``daily_refit.window_start``), refreshes
every ridge series the window covers (``daily_refit.refresh``), and trains the others (no
statistics: new series, fallbacks; or a window that does not reach back far enough) the full
way, on their whole history read from only the shards that hold them. Series with no row in
the window keep their entries (``modelset.carry_over``): their data did not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedStore, shard_of
from mlops_assets.ml import backtest, daily_refit, ridge_stats
from mlops_assets.ml.engines import result_schema
from mlops_assets.ml.features import to_series_frame
from mlops_assets.ml.incremental import RidgeMoments
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.ridge_stats import RidgeState
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.tables import (
    advance_fingerprints,
    decode_dictionaries,
    keys_per_series,
    series_fingerprints,
    series_ids,
)
from mlops_assets.storage import Storage

if TYPE_CHECKING:
    from mlops_assets.domain.training_run import Engine, TrainingOutcome


# Up to this many series to train whole, their rows are read by key (row-group statistics).
FEW_SERIES = 64


@dataclass(frozen=True)
class DailyPlan:
    """An incremental run: the statistics of every ridge series of the latest set."""

    state: RidgeState


def revisions(storage: Storage, spec: DatasetSpec) -> dict[str, int]:
    """Each curated shard's revision number (what a stats file records having seen)."""
    return {k: int(v["seq"]) for k, v in CuratedStore(storage, spec).revisions().items()}


def daily_plan(
    storage: Storage,
    spec: DatasetSpec,
    engine: Engine,
    latest: ms.ModelSetRef | None,
    previous: pa.Table | None,
    as_of: str,
) -> tuple[DailyPlan | None, str]:
    """An incremental run's plan, or None and why the run is a full refit."""
    assert spec.model.refit is not None
    every = spec.model.refit.full_every_days
    if latest is None or previous is None:
        return None, "full refit: no earlier candidate set"
    if not engine.by_shard:
        return None, f"full refit: the {engine.name} engine trains elsewhere (incremental: local)"
    if "stats_artifact" not in previous.column_names:
        return None, f"full refit: candidate {latest.version} holds no ridge statistics"
    last_as_of = latest.version.split("/", 1)[0]
    if pd.Timestamp(as_of) <= pd.Timestamp(last_as_of):
        return None, f"full refit: as of {as_of} is not after the latest set's {last_as_of}"
    files = sorted(set(previous["stats_artifact"].drop_null().to_pylist()))
    if not files:
        return None, f"full refit: candidate {latest.version} holds no ridge statistics"
    states = []
    for name in files:
        try:
            states.append(ridge_stats.read_stats(storage.read_bytes(name), spec))
        except ValueError as exc:
            return None, f"full refit: {exc}"
    built = {s.full_refit_in for s in states}
    if len(built) != 1:
        return None, f"full refit: statistics from several full refits {sorted(built)}"
    (full_refit_in,) = built
    if daily_refit.full_refit_due(spec, full_refit_in, as_of):
        return None, f"full refit: the last one ({full_refit_in}) is {every}+ days before {as_of}"
    state = _merged(states, files, previous)
    restated = CuratedStore(storage, spec).restated_since(state.curated)
    if restated:
        shard, seq, _ = restated[0]
        return None, (
            f"full refit: curated rows the statistics were built on changed since "
            f"({len(restated)} merge(s) restated earlier periods, e.g. {shard} revision {seq})"
        )
    return DailyPlan(state), (
        f"incremental: {len(state.ids)} ridge series from the statistics of full refit "
        f"{full_refit_in} (every {every} days)"
    )


def _merged(states: list[RidgeState], files: list[str], previous: pa.Table) -> RidgeState:
    """One state of every series whose manifest entry names each file (each file's own rows:
    a series carried over keeps the statistics of the set it was trained in). The curated
    revisions are each shard's oldest among the files (what every one of them had seen)."""
    owner = dict(
        zip(previous["series_id"].to_pylist(), previous["stats_artifact"].to_pylist(), strict=True)
    )
    parts = []
    for state, name in zip(states, files, strict=True):
        rows = np.array([i for i, s in enumerate(state.ids) if owner.get(s) == name], np.int64)
        parts.append(state.take(rows))
    curated: dict[str, int] = {}
    for state in states:
        for shard, seq in state.curated.items():
            curated[shard] = min(seq, curated.get(shard, seq))
    first = parts[0]
    return RidgeState(
        ids=[s for p in parts for s in p.ids],
        moments=RidgeMoments(
            np.concatenate([p.moments.shift for p in parts]),
            np.concatenate([p.moments.moments for p in parts]),
        ),
        through=np.concatenate([p.through for p in parts]),
        prefix=backtest.ScalePrefix(
            np.concatenate([p.prefix.since for p in parts]),
            {k: np.concatenate([p.prefix.sums[k] for p in parts]) for k in first.prefix.sums},
        ),
        full_refit_in=first.full_refit_in,
        curated=curated,
    )


def train_daily(
    storage: Storage,
    spec: DatasetSpec,
    engine: Engine,
    plan: DailyPlan,
    previous: pa.Table,
    *,
    as_of: str,
    run_id: str,
    curated: dict[str, int],
    phases: Phases,
    context: Any = None,
    log=lambda _: None,
    why: str = "incremental",
) -> TrainingOutcome:
    """Refresh the covered ridge series, train the others of the window whole; write the set."""
    from mlops_assets.domain import training_run as tr

    store = CuratedStore(storage, spec)
    until = pd.Timestamp(as_of).date()
    with phases("read"):
        window = store.read(until=until, since=daily_refit.window_start(spec, as_of).date())
    if window.num_rows == 0:
        raise tr.TrainingInputError(f"no curated {spec.name} rows up to {as_of} in the window")
    starts = dict(
        zip(previous["series_id"].to_pylist(), previous["train_start"].to_pylist(), strict=True)
    )
    with phases("refresh"):
        out = daily_refit.refresh(to_series_frame(window, spec), spec, plan.state, starts)
    phases.update(out.seconds, prefix="refresh_")
    with phases("records"):  # straight to Arrow: no DataFrame of 10,000 dicts of lists
        parts = (
            [pa.Table.from_pylist(out.records, schema=result_schema(spec))] if out.records else []
        )
    with phases("fingerprints"):
        prints = [advance_fingerprints(previous, window, spec)]
    log(
        f"refreshed {len(out.records)} ridge series ({out.entered} new training rows); "
        f"training {len(out.left)} more on their whole history"
    )
    if out.left:
        with phases("read_left"):
            whole = _whole_series(store, window, out.left, until)
        with phases("train_left"):
            results = engine.train(whole, spec, series=out.left, context=context, as_of=as_of)
        parts.append(tr.records_table(results, spec))
        left_prints = series_fingerprints(whole, spec)
        prints = [
            prints[0].filter(pc.invert(pc.is_in(prints[0]["series_id"], left_prints["series_id"]))),
            left_prints,
        ]
    version = f"{as_of}/{run_id[:8]}"
    folder = ms.set_folder(spec, version)
    with phases("write"):
        records = pa.concat_tables(parts)
        fresh, packs = tr.fresh_manifest(
            records,
            pa.concat_tables(prints),
            spec,
            version,
            folder,
            full_refit_in=plan.state.full_refit_in,
            curated=curated,
        )
        ref, manifest = tr.write_candidate(storage, spec, fresh, packs, previous, version, as_of)
    return tr.TrainingOutcome(
        ref, manifest, tr.trained_frame(records), window.num_rows, phases, refit=why
    )


def _whole_series(store: CuratedStore, window: pa.Table, series: Sequence[str], until) -> pa.Table:
    """Every curated row up to ``until`` of ``series`` (ids of series in ``window``), read
    from only the shards that hold them (and, for a few series, only the row groups that
    may: shards are sorted by key, so their statistics narrow the read)."""
    spec, keys = store.spec, store.spec.series_keys
    wanted = pa.array(sorted(set(series)), pa.string())
    firsts, _ = keys_per_series(window, spec.series_keys)
    hit = pc.is_in(series_ids(firsts, spec), value_set=wanted).to_numpy(zero_copy_only=False)
    mine = firsts.filter(pa.array(hit))
    shards = np.unique(shard_of(mine, keys, store.n_shards))
    names = [store.shard_name(int(i)) for i in shards]
    key_tuples = None
    if len(wanted) <= FEW_SERIES:
        plain = decode_dictionaries(mine)
        key_tuples = list(zip(*(plain[k].to_pylist() for k in keys), strict=True))
    table = store.read(until=until, shards=names, series=key_tuples)
    firsts, series_of = keys_per_series(table, spec.series_keys)
    keep = pc.is_in(series_ids(firsts, spec), value_set=wanted).to_numpy(zero_copy_only=False)
    return table.filter(pa.array(keep[series_of]))
