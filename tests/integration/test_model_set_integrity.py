"""The serving source refuses a model set that is not what its ref says, whichever way it is
found: a pointer file, the registry alias, or an ``AZUREML_MODEL_DIR`` folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from mlops_assets.domain.model_sets import REF_FILE, pointer_name, write_pointer
from mlops_assets.ml.persistence import ModelIntegrityError
from mlops_assets.ml.spec import load_spec
from mlops_assets.serving.service import ScoringService, ServingSettings
from mlops_assets.serving.source import SourceError
from mlops_assets.serving.synthetic import model_set_ref, synthetic_model_set
from mlops_assets.storage import LocalStorage
from resources.registry import MlflowRegistry

pytestmark = pytest.mark.integration

SPEC = load_spec("sales")
FOLDER = "models/sales/sets/2026-11-17/abcd1234"
WRONG = "0" * 64


def tamper_pack(folder: Path) -> None:
    """Flip one byte of the last model in the first pack."""
    pack = sorted(folder.glob("pack-*.bin"))[0]
    data = bytearray(pack.read_bytes())
    data[-3] ^= 0xFF
    pack.write_bytes(bytes(data))


@pytest.fixture
def root(tmp_path) -> Path:
    synthetic_model_set(tmp_path, FOLDER, SPEC, n_series=12, version="2026-11-17/abcd1234")
    return tmp_path


def start(settings: ServingSettings) -> ScoringService:
    return ScoringService(settings, SPEC).start()


# ---- pointer -----------------------------------------------------------------------------


def point(root: Path, ref) -> ServingSettings:
    write_pointer(LocalStorage(root), pointer_name("sales", "production"), ref)
    return ServingSettings(root=str(root), source="pointer", poll_s=0)


def test_pointer_source_serves_a_verified_set(root):
    service = start(point(root, model_set_ref(root, FOLDER).registered(3)))
    assert service.info()["model_set_version"] == "3"


def test_pointer_source_refuses_a_wrong_manifest_digest(root):
    ref = replace(model_set_ref(root, FOLDER), manifest_sha256=WRONG)
    with pytest.raises(ModelIntegrityError, match=r"sha256 .* differs from the reference"):
        start(point(root, ref))


def test_pointer_source_refuses_a_wrong_artifact_digest(root):
    tamper_pack(root / FOLDER)
    with pytest.raises(ModelIntegrityError, match=r"model of series store=\S+ \(.*pack-000.bin@"):
        start(point(root, model_set_ref(root, FOLDER)))


def test_pointer_without_a_digest_is_refused(root):
    pointer = root / pointer_name("sales", "production")
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"version": "1", "folder": FOLDER}))
    with pytest.raises(SourceError, match="manifest_sha256"):
        start(ServingSettings(root=str(root), source="pointer", poll_s=0))


# ---- registry ----------------------------------------------------------------------------


def register(tmp_path: Path, root: Path, sha: str) -> ServingSettings:
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = MlflowRegistry(tracking_uri=uri, alias="production")
    registry.register_model_set(
        "sales-models",
        LocalStorage(root).uri(FOLDER),
        {"folder": FOLDER, "manifest_sha256": sha},
        None,
        "production",
    )
    return ServingSettings(root=str(root), source="registry", registry_uri=uri, poll_s=0)


def test_registry_source_serves_a_verified_set(tmp_path, root):
    service = start(register(tmp_path, root, model_set_ref(root, FOLDER).manifest_sha256))
    assert service.info()["model_set_version"] == "1"


def test_registry_source_refuses_a_wrong_manifest_digest(tmp_path, root):
    with pytest.raises(ModelIntegrityError, match="differs from the reference"):
        start(register(tmp_path, root, WRONG))


def test_registry_source_refuses_a_wrong_artifact_digest(tmp_path, root):
    settings = register(tmp_path, root, model_set_ref(root, FOLDER).manifest_sha256)
    tamper_pack(root / FOLDER)
    with pytest.raises(ModelIntegrityError, match="model of series"):
        start(settings)


def test_registry_version_without_a_digest_is_refused(tmp_path, root):
    with pytest.raises(SourceError, match="manifest_sha256"):
        start(register(tmp_path, root, ""))


# ---- AZUREML_MODEL_DIR -------------------------------------------------------------------


def model_dir(tmp_path: Path, root: Path) -> Path:
    """The set's folder as an Azure ML model asset mounts it: one level down, packs beside."""
    out = tmp_path / "azureml-models" / "sales-models" / "7"
    shutil.copytree(root / FOLDER, out / "abcd1234")
    return out


def from_model_dir(monkeypatch, path: Path, sha: str | None = None) -> ScoringService:
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(path))
    monkeypatch.setenv("MLOPS_SERVING_VERSION", "7")
    if sha is not None:
        monkeypatch.setenv("MLOPS_SERVING_MANIFEST_SHA256", sha)
    return start(ServingSettings.from_env())


def test_model_dir_source_verifies_against_the_ref_file(tmp_path, root, monkeypatch):
    path = model_dir(tmp_path, root)
    assert (path / "abcd1234" / REF_FILE).is_file()  # written with the set
    service = from_model_dir(monkeypatch, path)
    assert service.info()["model_set_version"] == "7"


def test_model_dir_source_refuses_a_wrong_manifest_digest(tmp_path, root, monkeypatch):
    path = model_dir(tmp_path, root)
    with pytest.raises(ModelIntegrityError, match="differs from the reference"):
        from_model_dir(monkeypatch, path, sha=WRONG)  # the deployment's digest wins
    ref_file = path / "abcd1234" / REF_FILE
    ref_file.write_text(replace(model_set_ref(root, FOLDER), manifest_sha256=WRONG).to_json())
    monkeypatch.delenv("MLOPS_SERVING_MANIFEST_SHA256")
    with pytest.raises(ModelIntegrityError, match="differs from the reference"):
        from_model_dir(monkeypatch, path)


def test_model_dir_source_refuses_a_wrong_artifact_digest(tmp_path, root, monkeypatch):
    path = model_dir(tmp_path, root)
    tamper_pack(path / "abcd1234")
    with pytest.raises(ModelIntegrityError, match="model of series"):
        from_model_dir(monkeypatch, path)


def test_model_dir_without_any_digest_is_refused(tmp_path, root, monkeypatch):
    path = model_dir(tmp_path, root)
    (path / "abcd1234" / REF_FILE).unlink()
    with pytest.raises(SourceError, match="nothing to verify"):
        from_model_dir(monkeypatch, path)


def test_a_bundle_serves_a_set_whose_packs_live_in_other_sets_folders(tmp_path, root, monkeypatch):
    """A release set carries models by reference to other sets' packs, and pack names repeat
    across sets; its bundle (what an Azure ML model is made from) holds every pack under its
    stored name, and the model-dir source reads it through a linked mount, every model
    verified."""
    import pyarrow as pa

    from mlops_assets.domain import model_sets as ms
    from mlops_assets.ml import modelset

    other = "models/sales/sets/2026-11-10/ffff0000"
    synthetic_model_set(root, other, SPEC, n_series=5, version="2026-11-10/ffff0000", seed=1)
    storage = LocalStorage(root)
    first = ms.read_manifest(storage, model_set_ref(root, FOLDER))
    second = ms.read_manifest(storage, model_set_ref(root, other))
    mixed = pa.concat_tables([first.slice(0, 6), second.slice(0, 3)]).combine_chunks()
    assert len(set(mixed["artifact"].to_pylist())) == 2  # both sets' pack-000.bin
    release = ms.write_model_set(
        storage,
        mixed,
        [],
        name=ms.registered_model_name(SPEC),
        version="2026-11-17/rel00000",
        folder="models/sales/releases/2026-11-17/rel00000",
    ).registered(4)
    bundle = ms.write_bundle(storage, release)
    assert bundle == ms.bundle_folder(release) and ms.write_bundle(storage, release) == bundle
    mount = tmp_path / "azureml-models" / "sales-models" / "4"
    mount.mkdir(parents=True)
    (mount / "bundle").symlink_to(root / bundle, target_is_directory=True)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(mount))
    monkeypatch.setenv("MLOPS_SERVING_VERSION", "4")
    monkeypatch.setenv("MLOPS_SERVING_MANIFEST_SHA256", release.manifest_sha256)
    service = start(ServingSettings.from_env())
    assert service.info()["model_set_version"] == "4"
    active = service.active
    assert active is not None
    served = active.served.storage
    manifest = modelset.read_manifest(served.read_bytes(release.manifest_name))
    assert ms.verify_models(served, manifest) == 9
