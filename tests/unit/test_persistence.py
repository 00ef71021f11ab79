"""Model artifacts: round trips, and every way a bad artifact is refused."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from mlops_assets.ml import families, persistence
from mlops_assets.ml.persistence import (
    LINEAR,
    MAGIC,
    SKOPS,
    ModelIntegrityError,
    ModelLoadError,
    ModelVersionError,
    UntrustedModelError,
    dumps,
    load_verified,
    loads,
    read_header,
    sha256,
    skops_types,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 4))
Y = X @ [1.0, -2.0, 0.5, 0.0] + RNG.normal(size=200)

PIPELINES = {
    "ridge": (Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=2.0))]), LINEAR),
    "linear": (Pipeline([("scale", StandardScaler()), ("model", LinearRegression())]), LINEAR),
    "unscaled_ridge": (Pipeline([("model", Ridge())]), LINEAR),
    "hgb": (
        Pipeline([("model", HistGradientBoostingRegressor(max_iter=10, random_state=0))]),
        SKOPS,
    ),
    "forest": (
        Pipeline([("model", RandomForestRegressor(n_estimators=3, random_state=0))]),
        SKOPS,
    ),
}


@pytest.fixture(scope="module")
def ridge_bytes() -> bytes:
    return dumps(PIPELINES["ridge"][0].fit(X, Y))


@pytest.mark.parametrize("name", list(PIPELINES))
def test_round_trip_predicts_the_same(name):
    model, fmt = PIPELINES[name]
    model.fit(X, Y)
    data = dumps(model)
    assert read_header(data)[0]["format"] == fmt
    loaded = load_verified(data, sha256(data))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_linear_artifacts_are_small_and_deterministic(ridge_bytes):
    assert len(ridge_bytes) < 600
    assert dumps(PIPELINES["ridge"][0]) == ridge_bytes


def test_batch_linear_artifacts_are_the_bytes_dumps_writes():
    """linear_artifacts writes S models' bytes from stacked arrays; each is what dumps writes
    for that model's Pipeline (so the sha256 recorded for it is the same)."""
    fits = []
    for s in range(5):
        rows = slice(s * 30, s * 30 + 40 + s)  # different row counts: different headers
        fits.append(Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=2.0))]))
        fits[-1].fit(X[rows] * (s + 1), Y[rows])
    scalers = [f.steps[0][1] for f in fits]
    ridges = [f.steps[1][1] for f in fits]
    got = persistence.linear_artifacts(
        fits[0],
        np.array([sc.mean_ for sc in scalers]),
        np.array([sc.var_ for sc in scalers]),
        np.array([sc.scale_ for sc in scalers]),
        np.array([r.coef_ for r in ridges]),
        np.array([r.intercept_ for r in ridges]),
        np.array([sc.n_samples_seen_ for sc in scalers]),
    )
    assert got == [dumps(f) for f in fits]
    assert len({read_header(b)[0]["n_samples_seen"] for b in got}) == 5
    with pytest.raises(ValueError, match="StandardScaler"):
        persistence.linear_artifacts(PIPELINES["unscaled_ridge"][0].fit(X, Y), *[None] * 6)


def test_skops_families_only_name_allow_listed_types():
    for name in ("hgb", "forest"):
        model, _ = PIPELINES[name]
        payload = read_header(dumps(model.fit(X, Y)))[1]
        assert skops_types(payload) <= families.trusted_skops_types()


def test_tampered_bytes_are_refused(ridge_bytes):
    digest = sha256(ridge_bytes)
    tampered = bytearray(ridge_bytes)
    tampered[-3] ^= 0x01
    with pytest.raises(ModelIntegrityError, match="refusing to load"):
        load_verified(bytes(tampered), digest)


def test_pickle_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = pickle.dumps(Payload())
    with pytest.raises(ModelLoadError, match="bad magic"):
        load_verified(data, sha256(data))
    assert not marker.exists()


def test_bare_skops_file_is_refused():
    data = sio.dumps(PIPELINES["ridge"][0].fit(X, Y))
    with pytest.raises(ModelLoadError, match="bad magic"):
        loads(data)


def _repack(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + payload


def test_untrusted_type_in_skops_payload_is_refused():
    model = Pipeline([("log", FunctionTransformer(np.log1p)), ("model", Ridge())]).fit(np.abs(X), Y)
    data = dumps(model)
    assert read_header(data)[0]["format"] == SKOPS
    with pytest.raises(UntrustedModelError, match="FunctionTransformer"):
        load_verified(data, sha256(data))


def test_skops_payload_with_a_non_pipeline_is_refused():
    data = _repack(
        {"format": SKOPS, "sklearn": persistence.sklearn.__version__}, sio.dumps(Ridge())
    )
    with pytest.raises(UntrustedModelError, match="not a Pipeline"):
        loads(data)


@pytest.mark.parametrize(("version", "refused"), [("0.24.2", True), ("1.8.0", True), (None, False)])
def test_other_sklearn_major_minor_is_refused(ridge_bytes, version, refused):
    header, payload = read_header(ridge_bytes)
    running = persistence.sklearn.__version__
    header["sklearn"] = version or running.rsplit(".", 1)[0] + ".99"
    data = _repack(header, payload)
    if refused:
        with pytest.raises(ModelVersionError, match=f"scikit-learn {version}"):
            load_verified(data, sha256(data))
    else:
        assert load_verified(data, sha256(data)) is not None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"format": "pickle"}, "unknown artifact format"),
        ({"format": LINEAR, "estimator": "os.system"}, "unknown linear estimator"),
    ],
)
def test_unknown_formats_and_estimators_are_refused(header, message):
    data = _repack({"sklearn": persistence.sklearn.__version__, **header}, b"")
    with pytest.raises(ModelLoadError, match=message):
        loads(data)


def test_truncated_linear_payload_is_refused(ridge_bytes):
    with pytest.raises(ModelLoadError, match="linear payload holds"):
        loads(ridge_bytes[:-8])


def test_skops_schema_walk_finds_nested_types():
    payload = sio.dumps(PIPELINES["forest"][0].fit(X, Y))
    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        assert "schema.json" in z.namelist()
    assert "sklearn.tree._tree.Tree" in skops_types(payload)


def test_models_sharing_a_header_but_their_sample_count_load_their_own():
    """``loads`` decodes a linear header's repeated part once per process; each model still
    gets its own sample count, a header laid out otherwise is decoded whole, and the dict
    ``read_header`` hands out is the caller's own."""
    fits = [
        Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=2.0))]).fit(X[:n], Y[:n])
        for n in (40, 41, 40, 150)
    ]
    data = [dumps(f) for f in fits]
    for f, b in zip(fits, data, strict=True):
        loaded = loads(b)
        assert loaded.steps[0][1].n_samples_seen_ == f.steps[0][1].n_samples_seen_
        np.testing.assert_array_equal(loaded.predict(X), f.predict(X))
    header = read_header(data[1])[0]
    header["params"]["alpha"] = 99.0  # the caller's copy: later loads do not see it
    assert loads(data[1]).steps[1][1].alpha == 2.0
    # The same header with spaces (another writer's layout): decoded whole, same model.
    spaced = _repack(*read_header(data[3]))  # json.dumps' default separators
    assert b'"n_samples_seen": 150' in spaced
    other = loads(spaced)
    assert other.steps[0][1].n_samples_seen_ == 150
    np.testing.assert_array_equal(other.predict(X), fits[3].predict(X))
