"""Writing a model set, and reading one only after it verifies against its ``ModelSetRef``.

Writes go packs first, then the manifest (a folder with a manifest is complete), then the set's
ref next to it (``model_set.json``), which a folder copied out of the storage (an Azure ML model
asset mounted at ``AZUREML_MODEL_DIR``) carries along. Every read checks the manifest's sha256
against the ref before using it, and each model's sha256 before loading it; errors name the
series and the artifact.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.domain.model_sets.layout import REF_FILE
from mlops_assets.domain.model_sets.ref import ModelSetError, ModelSetRef, sha256
from mlops_assets.faults import fault_point
from mlops_assets.ml import modelset, persistence
from mlops_assets.ml.model_cache import ModelSetReader
from mlops_assets.ml.persistence import ModelIntegrityError
from mlops_assets.storage import Storage


def write_model_set(
    storage: Storage,
    manifest: pa.Table,
    packs: Iterable[tuple[str, bytes]],
    *,
    name: str,
    version: str,
    folder: str,
) -> ModelSetRef:
    """Write ``packs``, then ``manifest`` under ``folder``, then the ref file. Returns the ref,
    its digest computed from the manifest bytes as written."""
    for pack, data in packs:
        storage.write_bytes(pack, data)
        fault_point("model_set.pack")
    data = modelset.manifest_bytes(manifest)
    storage.write_bytes(f"{folder}/{modelset.MANIFEST}", data)
    fault_point("model_set.manifest")
    ref = ModelSetRef(name=name, version=version, folder=folder, manifest_sha256=sha256(data))
    storage.write_text(f"{folder}/{REF_FILE}", ref.to_json())
    return ref


def read_ref_file(storage: Storage, folder: str) -> ModelSetRef:
    """The ref written next to a set's manifest (what a copied-out folder knows of itself)."""
    try:
        return ModelSetRef.from_json(storage.read_text(f"{folder}/{REF_FILE}"))
    except FileNotFoundError:
        raise ModelSetError(f"no {REF_FILE} at {storage.uri(folder)}") from None


def read_manifest_bytes(storage: Storage, ref: ModelSetRef) -> bytes:
    """The manifest's bytes, after checking them against ``ref.manifest_sha256``.

    Raises:
        ModelSetError: No manifest at the reference's folder.
        ModelIntegrityError: The manifest's sha256 differs from the reference's.
    """
    try:
        data = storage.read_bytes(ref.manifest_name)
    except FileNotFoundError:
        raise ModelSetError(
            f"model set {ref.name} {ref.version}: no manifest at {storage.uri(ref.manifest_name)}"
        ) from None
    digest = sha256(data)
    if not hmac.compare_digest(digest, ref.manifest_sha256.lower()):
        raise ModelIntegrityError(
            f"{storage.uri(ref.manifest_name)}: sha256 {digest} differs from the reference's "
            f"{ref.manifest_sha256}; the manifest was changed after it was written: refusing it"
        )
    return data


def read_manifest(storage: Storage, ref: ModelSetRef) -> pa.Table:
    """The manifest of ``ref``, verified (see ``read_manifest_bytes``)."""
    return modelset.read_manifest(read_manifest_bytes(storage, ref))


def _load(data: bytes, sha: str, series_id: str, artifact: str, offset: int):
    try:
        return persistence.load_verified(data, sha)
    except ModelIntegrityError as exc:
        raise ModelIntegrityError(
            f"model of series {series_id} ({artifact}@{offset}): {exc}"
        ) from None


def _by_pack(manifest: pa.Table) -> dict[str, list[tuple[str, int, int, str]]]:
    out: dict[str, list[tuple[str, int, int, str]]] = {}
    for sid, artifact, offset, length, sha in modelset.iter_locations(manifest):
        out.setdefault(artifact, []).append((sid, offset, length, sha))
    return out


def _mismatch(blob: bytes, entries: list[tuple[str, int, int, str]]) -> tuple[str, int, int] | None:
    """The first (series, offset, length) in ``blob`` whose bytes differ from their sha256."""
    for sid, offset, length, sha in entries:
        if not hmac.compare_digest(sha256(blob[offset : offset + length]), sha):
            return sid, offset, length
    return None


def _verified_packs(
    storage: Storage, manifest: pa.Table
) -> Iterator[tuple[str, bytes, list[tuple[str, int, int, str]]]]:
    """(pack name, bytes, its manifest entries) for every pack, each model checked by sha256.

    Raises:
        ModelIntegrityError: A model's bytes differ from their recorded sha256.
    """
    for artifact, entries in _by_pack(manifest).items():
        blob = storage.read_bytes(artifact)
        bad = _mismatch(blob, entries)
        if bad is not None:
            sid, offset, length = bad
            raise ModelIntegrityError(
                f"model of series {sid} ({storage.uri(artifact)}@{offset}+{length}) does not "
                "match its recorded sha256: refusing this model set"
            )
        yield artifact, blob, entries


def verify_models(storage: Storage, manifest: pa.Table) -> int:
    """Check every model's sha256 (one read per pack). Returns how many were checked."""
    return sum(len(entries) for _, _, entries in _verified_packs(storage, manifest))


def load_models(storage: Storage, manifest: pa.Table, series: set[str]) -> dict[str, object]:
    """The models of ``series`` from a (verified) manifest, each checked by its sha256; each
    pack is read once."""
    wanted = manifest.filter(pc.is_in(manifest["series_id"], pa.array(sorted(series), pa.string())))
    out: dict[str, object] = {}
    for artifact, entries in _by_pack(wanted).items():
        blob = storage.read_bytes(artifact)
        for sid, offset, length, sha in entries:
            out[sid] = _load(blob[offset : offset + length], sha, sid, artifact, offset)
    return out


def load_model(storage: Storage, manifest: pa.Table, series_id: str):
    """One series' model, range-read and checked against the manifest's sha256."""
    loc = modelset.model_location(manifest, series_id)
    if loc is None:
        raise KeyError(f"no model for series {series_id!r} in this model set")
    artifact, offset, length, sha = loc
    return _load(storage.read_range(artifact, offset, length), sha, series_id, artifact, offset)


def _needs_write(dst: Storage, artifact: str, blob: bytes, entries) -> str | None:
    """Why ``dst``'s copy of a pack must be (re)written: "missing", "corrupt", or None when
    every model in it matches its recorded sha256."""
    info = dst.info(artifact)
    if info is None:
        return "missing"
    if info.size != len(blob) or _mismatch(dst.read_bytes(artifact), entries) is not None:
        return "corrupt"
    return None


def copy_model_set(src: Storage, dst: Storage, ref: ModelSetRef) -> dict[str, int]:
    """Copy ``ref``'s set (packs, manifest, ref file) from ``src`` to ``dst`` under the same
    names, once the manifest and every model in ``src`` verify; else nothing is copied.

    What ``dst`` already holds is verified too: a pack whose models all match their sha256 is
    kept, a missing one is copied, a corrupt one (changed on ``dst`` after an earlier copy) is
    replaced by the verified ``src`` copy. Returns counts (``packs_copied``, ``packs_repaired``).

    Raises:
        ModelSetError: No manifest in ``src``.
        ModelIntegrityError: The manifest or a model in ``src`` does not verify (nothing written).
    """
    data = read_manifest_bytes(src, ref)
    manifest = modelset.read_manifest(data)
    packs, verified = [], 0
    for artifact, blob, entries in _verified_packs(src, manifest):
        packs.append((artifact, blob, entries))
        verified += len(entries)
    copied = repaired = 0
    for artifact, blob, entries in packs:
        why = _needs_write(dst, artifact, blob, entries)
        if why is not None:
            dst.write_bytes(artifact, blob)
            fault_point("promotion.copy")
            copied += why == "missing"
            repaired += why == "corrupt"
    dst.write_bytes(ref.manifest_name, data)  # after the packs: the set is complete
    dst.write_text(f"{ref.folder}/{REF_FILE}", ref.to_json())
    return {
        "models_verified": verified,
        "packs": len(packs),
        "packs_copied": copied,
        "packs_repaired": repaired,
    }


def open_reader(
    storage: Storage,
    ref: ModelSetRef,
    *,
    max_models: int,
    max_bytes: int,
    verify_all: bool = True,
    label: str | None = None,
) -> ModelSetReader:
    """A lazily loading reader over ``ref``'s set: manifest verified, and with ``verify_all``
    every model too (else each model is verified when first loaded).

    Raises:
        ModelSetError: The manifest is missing.
        ModelIntegrityError: The manifest or a model does not match its recorded sha256.
    """
    manifest = read_manifest(storage, ref)
    if verify_all:
        verify_models(storage, manifest)
    return ModelSetReader(
        manifest,
        storage.read_range,
        version=label or ref.label,
        max_models=max_models,
        max_bytes=max_bytes,
    )
