"""Where model sets and the pointers to them live under a storage root.

::

    models/<dataset>/sets/<as_of>/<run8>/       candidate sets (training)
    models/<dataset>/releases/<as_of>/<run8>/   release sets (evaluation: promoted + carried)
    models/<dataset>/candidates/<as_of>.json    the as-of date's latest candidate (ModelSetRef)
    models/<dataset>/releases/<as_of>.json      the as-of date's release (ReleaseRecord)
    models/<dataset>/latest.json                the latest candidate (ModelSetRef)
    serving/<dataset>/<alias>.json              what a pointer-sourced endpoint serves

Every pointer holds a ``ModelSetRef`` as JSON: a reader gets the digest with the folder.
"""

from __future__ import annotations

from typing import Protocol

from mlops_assets.domain.model_sets.ref import ModelSetError, ModelSetRef
from mlops_assets.faults import fault_point
from mlops_assets.storage import Storage

REF_FILE = "model_set.json"  # next to the manifest: the set's ref, for a copied-out folder


class Named(Protocol):
    @property
    def name(self) -> str: ...


def registered_model_name(spec: Named | str) -> str:
    """The registered model (one version per model set) of a dataset."""
    return f"{spec if isinstance(spec, str) else spec.name}-models"


def models_root(spec: Named) -> str:
    return f"models/{spec.name}"


def set_folder(spec: Named, version: str) -> str:
    """Where training writes the candidate set of run label ``version`` (``<as_of>/<run8>``)."""
    return f"{models_root(spec)}/sets/{version}"


def candidate_pointer(spec: Named, as_of: str) -> str:
    """Where the ref of the as-of date's latest candidate model set is recorded."""
    return f"{models_root(spec)}/candidates/{as_of}.json"


def latest_pointer(spec: Named) -> str:
    return f"{models_root(spec)}/latest.json"


def release_pointer(spec: Named, as_of: str) -> str:
    """Where the as-of date's evaluated (release) model set is recorded."""
    return f"{models_root(spec)}/releases/{as_of}.json"


def release_folder(spec: Named, candidate_version: str) -> str:
    return f"{models_root(spec)}/releases/{candidate_version}"


def pointer_name(dataset: str, alias: str) -> str:
    """The serving pointer of ``dataset``'s endpoint alias (``production``, ``qa``)."""
    return f"serving/{dataset}/{alias}.json"


def write_pointer(storage: Storage, name: str, ref: ModelSetRef) -> None:
    """Point ``name`` at ``ref`` (an atomic write: readers see the old ref or the new one)."""
    storage.write_text(name, ref.to_json())
    fault_point("pointer")


def read_pointer(storage: Storage, name: str) -> ModelSetRef | None:
    """The ref ``name`` points at, or None if there is no such pointer.

    Raises:
        ModelSetError: The pointer is not a model-set reference (not JSON, fields missing).
    """
    try:
        text = storage.read_text(name)
    except FileNotFoundError:
        return None
    try:
        return ModelSetRef.from_json(text)
    except ValueError as exc:
        raise ModelSetError(f"{storage.uri(name)} is not a model-set reference: {exc}") from None
