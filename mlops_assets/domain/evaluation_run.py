"""One evaluation: the as-of date's candidate against the champion, written as a release set.

The champion is the set the dev registry's alias points at (read through its registered
``ModelSetRef``, manifest and models verified). Challengers trained in this run are compared with
the champion's models re-scored on the same holdout (``ml.comparison``); the resulting set
(promoted challengers plus carried champion entries) is written under
``models/<ds>/releases/<version>/`` and recorded with its gate outcome as a ``ReleaseRecord``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.tseries.frequencies import to_offset

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.curated_store import CuratedStore
from mlops_assets.ml import comparison as ev
from mlops_assets.ml import modelset
from mlops_assets.ml.features import tail_length, to_series_frame
from mlops_assets.ml.phases import Phases
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


def champion_scores(
    storage: Storage,
    spec: DatasetSpec,
    as_of: str,
    candidate: pa.Table,
    candidate_version: str,
    champion: pa.Table,
) -> dict[str, dict[str, float]]:
    """The champion's models re-scored on the holdout of every challenger trained this run."""
    fresh = pc.and_(
        pc.equal(candidate["trained_in"], candidate_version),
        pc.equal(candidate["status"], "trained"),
    )
    challengers = set(candidate.filter(fresh)["series_id"].to_pylist())
    with_model = champion.filter(pc.is_valid(champion["artifact"]))
    to_score = challengers & set(with_model["series_id"].to_pylist())
    if not to_score:
        return {}
    models = ms.load_models(storage, champion, to_score)
    # Holdout features need holdout + tail_length rows a series; read twice that many periods
    # back, for series with gaps (rescore trims by rows).
    periods = 2 * (spec.holdout + tail_length(spec))
    since = pd.Timestamp(as_of) - periods * to_offset(spec.frequency)
    table = CuratedStore(storage, spec).read(until=pd.Timestamp(as_of).date(), since=since.date())
    frame = to_series_frame(table, spec, series=sorted(to_score))
    return ev.rescore(frame, spec, models.get)


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
        quality = ev.aggregate_quality(decisions, max_median_increase, policy.metric)
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
            policy=dict(config or {}),
            run_id=run_id,
        )
        ms.write_release(storage, ms.release_pointer(spec, as_of), release)
    return EvaluationOutcome(release, decisions, result, quality, phases)
