"""One evaluation: the as-of date's candidate against the champion, written as a release set.

The champion is the set the dev registry's alias points at (read through its registered
``ModelSetRef``, manifest and models verified). Challengers trained in this run are compared with
the champion's models re-scored on the same evaluation rows (``ml.comparison``), read with all
the history their features need; the resulting set (promoted challengers plus carried champion
entries) is written under ``models/<ds>/releases/<version>/`` and recorded with its gate
outcome as a ``ReleaseRecord``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.tseries.frequencies import to_offset

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.ml import comparison as ev
from mlops_assets.ml import modelset
from mlops_assets.ml.features import SeriesFrame, select_series, to_series_frame
from mlops_assets.ml.fitting import FALLBACK, TRAINED
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.selection import stored_history
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage

if TYPE_CHECKING:
    from resources.registry import ModelRegistry

DECISIONS_FILE = "decisions.parquet"


class EvaluationInputError(RuntimeError):
    """There is nothing to evaluate (no candidate for the as-of date)."""


@dataclass(frozen=True)
class EvaluationOutcome:
    release: ms.ReleaseRecord
    decisions: pa.Table
    result: pa.Table  # the release set's manifest
    quality: ev.Quality
    phases: Phases = field(compare=False)


def history_frames(
    storage: Storage, spec: DatasetSpec, as_of: str, series: Iterable[str]
) -> list[SeriesFrame]:
    """Every row the features of the series' evaluation rows need, up to ``as_of``.

    The backtest's origins lie in each series' last ``holdout`` rows; forecasting from them needs
    the rows before (``selection.stored_history``: the features' tail, or two seasons for a
    forecast-only family). One read of a window twice that many periods long covers a
    regular series; a series with fewer rows in it (gaps, or no row in the window at all) may
    have older rows the window cut off, so those series are read again with no lower bound.
    A series shorter than the window is read whole either way.

    Returns:
        One or two frames (the windowed one, then the re-read one), no series in both.
    """
    wanted = sorted(series)
    need = stored_history(spec)  # the backtest window and what forecasting from it needs
    store = CuratedStore(storage, spec)
    until = pd.Timestamp(as_of).date()
    since = (pd.Timestamp(as_of) - 2 * need * to_offset(spec.frequency)).date()
    window = to_series_frame(store.read(until=until, since=since), spec, series=wanted)
    full = np.diff(window.offsets) >= need
    ids = [spec.series_id(k) for k in window.keys]
    covered = [s for s, ok in zip(ids, full, strict=True) if ok]
    frames = [select_series(window, spec, covered)]
    again = set(wanted) - set(covered)
    if again:
        frames.append(to_series_frame(store.read(until=until), spec, series=sorted(again)))
    return frames


def champion_scores(
    storage: Storage,
    spec: DatasetSpec,
    as_of: str,
    candidate: pa.Table,
    candidate_version: str,
    champion: pa.Table,
) -> dict[str, dict[str, float]]:
    """The champion's models re-scored on the evaluation rows of every challenger trained this
    run (chosen by the backtest, or served by the fallback chain and scored on the pairs it
    could make: the gate judges both), whatever the series' length (``history_frames``)."""
    fresh = pc.and_(
        pc.equal(candidate["trained_in"], candidate_version),
        pc.is_in(candidate["status"], pa.array([TRAINED, FALLBACK])),
    )
    challengers = set(candidate.filter(fresh)["series_id"].to_pylist())
    with_model = champion.filter(pc.is_valid(champion["artifact"]))
    to_score = challengers & set(with_model["series_id"].to_pylist())
    if not to_score:
        return {}
    models = ms.load_models(storage, champion, to_score)
    scores: dict[str, dict[str, float]] = {}
    for frame in history_frames(storage, spec, as_of, to_score):
        if frame.n_series:
            scores.update(ev.rescore(frame, spec, models.get))
    return scores


def evaluate_candidate(
    storage: Storage,
    registry: ModelRegistry,
    spec: DatasetSpec,
    *,
    as_of: str,
    run_id: str,
    policy: ev.Policy,
    max_median_increase: float,
    config: dict[str, Any] | None = None,
) -> EvaluationOutcome:
    """Decide every series of the as-of date's candidate; write and record the release set.

    Raises:
        EvaluationInputError: No candidate set for ``as_of``.
        RegistryError: The registry cannot be read.
        ModelSetError, ModelIntegrityError: A set does not verify against its ref.
    """
    phases = Phases()
    with phases("read"):
        cand_ref = ms.read_pointer(storage, ms.candidate_pointer(spec, as_of))
        if cand_ref is None:
            raise EvaluationInputError(f"no candidate model set for {spec.name} as of {as_of}")
        candidate = ms.read_manifest(storage, cand_ref)
        champ_version = registry.get_alias(ms.registered_model_name(spec))
        champion = ms.read_manifest(storage, champ_version.ref) if champ_version else None
    with phases("rescore_champion"):
        scores = {}
        if champion is not None:
            scores = champion_scores(storage, spec, as_of, candidate, cand_ref.version, champion)
    with phases("decide_write"):
        champ_label = str(champ_version.version) if champ_version else None
        decisions = ev.evaluate_sets(
            candidate, champion, scores, cand_ref.version, champ_label, policy
        )
        result = ev.resulting_manifest(candidate, champion, decisions)
        quality = ev.aggregate_quality(
            decisions,
            max_median_increase,
            policy.metric,
            allow_uncompared=policy.unscored == "promote",
        )
        folder = ms.release_folder(spec, cand_ref.version)
        storage.write_bytes(f"{folder}/{DECISIONS_FILE}", modelset.manifest_bytes(decisions))
        ref = ms.write_model_set(
            storage, result, [], name=cand_ref.name, version=cand_ref.version, folder=folder
        )
        release = ms.ReleaseRecord(
            ref=ref,
            candidate=cand_ref,
            passed=quality.passed,
            resulting_median=quality.resulting_median,
            champion_median=quality.champion_median,
            champion_version=champ_version.version if champ_version else None,
            gate_counts=quality.counts,
            policy=dict(config or {}),
            run_id=run_id,
        )
        ms.write_release(storage, ms.release_pointer(spec, as_of), release)
    return EvaluationOutcome(release, decisions, result, quality, phases)
