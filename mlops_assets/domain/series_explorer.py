"""The per-series explorer of an as-of date's release set, written through the storage.

Reads the evaluated (release) set the date's ``ReleaseRecord`` names (manifest verified against
its ref) and the gate's ``decisions.parquet`` next to it, renders one self-contained HTML page
(``reporting``) and writes it to ``reports/<ds>/series_explorer/<as_of>.html``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlops_assets.domain import model_sets as ms
from mlops_assets.domain.evaluation_run import DECISIONS_FILE
from mlops_assets.ml import modelset
from mlops_assets.ml.phases import Phases
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.reporting.explorer_data import explorer_payload
from mlops_assets.reporting.explorer_page import render_explorer
from mlops_assets.reporting.links import REPORTS_PREFIX
from mlops_assets.storage import Storage


class ExplorerInputError(RuntimeError):
    """There is no release set for the as-of date to explore."""


@dataclass(frozen=True)
class ExplorerOutcome:
    """A written explorer page: where, of which set, how big, and what it holds."""

    name: str
    release: ms.ReleaseRecord
    series: int
    bytes: int
    decisions: dict[str, int]
    models: dict[str, int]
    phases: Phases = field(compare=False)


def explorer_name(spec: DatasetSpec, as_of: str) -> str:
    return f"{REPORTS_PREFIX}/{spec.name}/series_explorer/{as_of}.html"


def write_explorer(storage: Storage, spec: DatasetSpec, as_of: str) -> ExplorerOutcome:
    """Render and write the explorer of ``as_of``'s release set.

    Raises:
        ExplorerInputError: No release set recorded for ``as_of`` (evaluate it first).
        ModelSetError, ModelIntegrityError: The set does not verify against its ref.
    """
    phases = Phases()
    with phases("read"):
        release = ms.read_release(storage, ms.release_pointer(spec, as_of))
        if release is None:
            raise ExplorerInputError(
                f"no evaluated {spec.name} model set for {as_of}: materialize "
                f"{spec.name}/evaluation for that partition first"
            )
        manifest = ms.read_manifest(storage, release.ref)
        decisions_name = f"{release.ref.folder}/{DECISIONS_FILE}"
        decisions = (
            modelset.read_manifest(storage.read_bytes(decisions_name))
            if storage.exists(decisions_name)
            else None
        )
    with phases("render"):
        title = {
            "as of": as_of,
            "release": release.ref.version,
            "gate": "passed" if release.passed else "FAILED",
        }
        payload = explorer_payload(manifest, decisions, spec, title=title)
        data = render_explorer(payload).encode("utf-8")
    name = explorer_name(spec, as_of)
    with phases("write"):
        storage.write_bytes(
            name, data, content_type="text/html; charset=utf-8"
        )  # shown, not downloaded
    return ExplorerOutcome(
        name=name,
        release=release,
        series=manifest.num_rows,
        bytes=len(data),
        decisions=modelset.counts(decisions, "decision") if decisions is not None else {},
        models=modelset.counts(manifest, "family"),
        phases=phases,
    )
