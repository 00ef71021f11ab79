"""The model-set core: carrying unchanged series over, the ref and the release record."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from mlops_assets.domain.model_sets import (
    ModelSetError,
    ModelSetRef,
    ReleaseRecord,
    load_model,
    read_manifest,
    read_pointer,
    read_release,
    write_model_set,
    write_pointer,
)
from mlops_assets.ml import modelset
from mlops_assets.ml.persistence import ModelIntegrityError
from mlops_assets.storage import LocalStorage


def manifest(ids, trained_in, artifact="p", extra=None) -> pa.Table:
    cols = {
        "series_id": pa.array(ids, pa.string()),
        "artifact": pa.array([f"{artifact}/pack-000.bin"] * len(ids), pa.string()),
        "trained_in": pa.array([trained_in] * len(ids), pa.string()),
    }
    return pa.table({**cols, **(extra or {})})


def test_carry_over_keeps_fresh_entries_and_carries_the_rest_by_reference():
    previous = manifest(["c", "a", "b"], "v1", artifact="old")
    fresh = manifest(["b", "d"], "v2", artifact="new", extra={"smape": pa.array([1.0, 2.0])})
    out = modelset.carry_over(fresh, previous)
    assert out["series_id"].to_pylist() == ["a", "b", "c", "d"]
    rows = {r["series_id"]: r for r in out.to_pylist()}
    assert rows["b"]["trained_in"] == "v2" and rows["b"]["artifact"] == "new/pack-000.bin"
    assert rows["a"]["trained_in"] == "v1" and rows["a"]["artifact"] == "old/pack-000.bin"
    # A column the older manifest lacks is null on carried rows, kept on fresh ones.
    assert rows["a"]["smape"] is None and rows["d"]["smape"] == 2.0
    assert out.schema.names == fresh.schema.names


def test_carry_over_without_previous_or_fresh():
    fresh = manifest(["b", "a"], "v2")
    assert modelset.carry_over(fresh, None)["series_id"].to_pylist() == ["a", "b"]
    previous = manifest(["z", "y"], "v1")
    assert modelset.carry_over(None, previous)["series_id"].to_pylist() == ["y", "z"]
    with pytest.raises(ValueError, match="nothing to carry over"):
        modelset.carry_over(None, None)


def test_carry_over_drops_columns_fresh_does_not_have():
    previous = manifest(["a"], "v1", extra={"legacy": pa.array([1])})
    out = modelset.carry_over(manifest(["b"], "v2"), previous)
    assert "legacy" not in out.column_names and out.num_rows == 2


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path)


def written(storage) -> tuple[ModelSetRef, pa.Table]:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    from mlops_assets.ml import persistence

    model = Pipeline([("m", Ridge().fit([[0.0], [1.0]], [0.0, 1.0]))])
    data = persistence.dumps(model)
    results = pa.table(
        {
            "series_id": ["s1"],
            "model": pa.array([data], pa.binary()),
            "model_sha256": [persistence.sha256(data)],
        }
    )
    table, packs = modelset.pack_models(results, "models/x/sets/v1")
    ref = write_model_set(
        storage, table, packs, name="x-models", version="v1", folder="models/x/sets/v1"
    )
    return ref, table


def test_write_returns_the_ref_of_the_written_manifest(storage):
    ref, _ = written(storage)
    assert ref.folder == "models/x/sets/v1" and ref.registry_version is None
    manifest_ = read_manifest(storage, ref)
    assert load_model(storage, manifest_, "s1") is not None
    with pytest.raises(ModelIntegrityError, match="differs from the reference"):
        read_manifest(storage, ModelSetRef("x-models", "v1", ref.folder, "0" * 64))


def test_load_model_names_the_series_and_artifact(storage):
    ref, _ = written(storage)
    manifest_ = read_manifest(storage, ref)
    pack = "models/x/sets/v1/pack-000.bin"
    data = bytearray(storage.read_bytes(pack))
    data[-1] ^= 0xFF
    storage.write_bytes(pack, bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"model of series s1 \(models/x/sets/v1/pack"):
        load_model(storage, manifest_, "s1")


def test_pointers_hold_refs(storage):
    ref, _ = written(storage)
    assert read_pointer(storage, "p.json") is None
    write_pointer(storage, "p.json", ref.registered(4))
    back = read_pointer(storage, "p.json")
    assert back == ref.registered(4) and back.label == "4" and ref.label == "v1"
    storage.write_text("bad.json", json.dumps({"folder": "f"}))
    with pytest.raises(ModelSetError, match="lacks"):
        read_pointer(storage, "bad.json")


def test_a_release_record_needs_its_gate_outcome(storage):
    ref, _ = written(storage)
    record = ReleaseRecord(ref=ref, candidate=ref, passed=False, resulting_median=float("nan"))
    storage.write_text("r.json", record.to_json())
    back = read_release(storage, "r.json")
    assert back.passed is False and back.ref == ref and back.resulting_median is None
    data = json.loads(record.to_json())
    for broken in ({k: v for k, v in data.items() if k != "passed"}, {**data, "passed": "yes"}):
        storage.write_text("r.json", json.dumps(broken))
        with pytest.raises(ModelSetError, match="gate outcome"):
            read_release(storage, "r.json")
