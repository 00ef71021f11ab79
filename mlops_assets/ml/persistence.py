"""Model artifacts: bytes that are safe to load, verified by sha256 and scikit-learn version.

An artifact is ``MAGIC | header length (uint32 LE) | JSON header | payload``. The header names
the payload format and the scikit-learn version that wrote it. Three payload formats:

* ``linear``: a ``[StandardScaler ->] estimator`` pipeline whose estimator is the ``linear``
  class of a family (``families``), as raw float64 arrays (a few hundred bytes, ~20 us to
  write). Loading rebuilds the estimators from that fixed class map and sets their fitted
  arrays; nothing in the payload can name code to run.
* ``skops``: any other pipeline, via ``skops.io`` with the allow-list of type names the families
  pin (``families.trusted_skops_types``). Every type named in the file's schema must be on the
  list, checked before ``skops.io.loads``; ``trusted=True`` is never used (CVE-2024-37065).
* ``params``: a ``ParamModel`` (a forecast-only family of ``families``): the header holds its
  family, its JSON-scalar params and the numpy/statsforecast versions that wrote it; the
  payload is an ``np.savez`` of its float64/int64 arrays, read back with
  ``allow_pickle=False``. A family that is not a baseline or statistical family of the table, or
  an array of any other dtype, is refused. The scikit-learn version does not apply to it.

* ``combination``: a ``combination.Combination``: the header holds the members' families,
  weights, byte lengths and sha256; the payload is the members' own artifacts (``linear``,
  ``skops`` or ``params``, never another combination) one after the other, each checked
  against its recorded sha256 and loaded by the rules above.

Loading refuses anything else, including pickle and joblib files, a bare skops file, a sha256
mismatch and a scikit-learn major.minor version other than the running one.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import io
import json
import struct
import zipfile
from functools import lru_cache
from typing import Any, TypeAlias

import numpy as np
import sklearn
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlops_assets.ml import families
from mlops_assets.ml.combination import Combination
from mlops_assets.ml.param_models import ParamModel

MAGIC = b"MMSKL\x00v1"
LINEAR, SKOPS, PARAMS, COMBINATION = "linear", "skops", "params", "combination"
# What a params artifact's arrays may hold: numbers only, never objects.
PARAM_DTYPES = frozenset({np.dtype("<f8"), np.dtype("<i8")})
Model: TypeAlias = Pipeline | ParamModel | Combination
_HEADER_LEN = struct.Struct("<I")


class ModelLoadError(ValueError):
    """The bytes are not a model artifact this code will load."""


class ModelIntegrityError(ModelLoadError):
    """The bytes do not match the recorded sha256."""


class ModelVersionError(ModelLoadError):
    """The artifact was written by another scikit-learn major.minor version."""


class UntrustedModelError(ModelLoadError):
    """The artifact names a type that is not on the allow-list."""


def sha256(data: bytes) -> str:
    """Hex sha256 of an artifact's bytes, as recorded in the manifest."""
    return hashlib.sha256(data).hexdigest()


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _linear_parts(model: Pipeline) -> tuple[StandardScaler | None, Any] | None:
    steps = [s for _, s in model.steps]
    scaler = steps[0] if len(steps) == 2 else None
    est: Any = steps[-1]
    cls = type(est)
    if len(steps) > 2 or cls is not families.linear_classes().get(cls.__name__):
        return None
    if np.ndim(est.coef_) != 1:
        return None
    if scaler is not None and (
        type(scaler) is not StandardScaler or not (scaler.with_mean and scaler.with_std)
    ):
        return None
    return scaler, est


@lru_cache(maxsize=8)
def _param_names(cls: Any) -> tuple[str, ...]:
    return tuple(cls._get_param_names())


def _pack(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + _HEADER_LEN.pack(len(head)) + head + payload


def _linear_header(scaler: StandardScaler | None, est: Any) -> dict:
    header = {
        "format": LINEAR,
        "sklearn": sklearn.__version__,
        "estimator": type(est).__name__,
        "params": {k: getattr(est, k) for k in _param_names(est.__class__)},
        "n_features": int(est.n_features_in_),
        "scaled": scaler is not None,
    }
    if scaler is not None:
        header["n_samples_seen"] = int(scaler.n_samples_seen_)
    return header


def _dump_linear(scaler: StandardScaler | None, est: Any) -> bytes:
    header = _linear_header(scaler, est)
    arrays = [est.coef_, np.atleast_1d(est.intercept_)]
    if scaler is not None:
        arrays = [scaler.mean_, scaler.var_, scaler.scale_, *arrays]
    payload = np.concatenate([np.asarray(a, dtype="<f8").ravel() for a in arrays]).tobytes()
    return _pack(header, payload)


def linear_artifacts(
    template: Pipeline,
    mean: np.ndarray,
    var: np.ndarray,
    scale: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    n_samples_seen: np.ndarray,
) -> list[bytes]:
    """The ``linear`` artifacts of S scaler + linear models that differ from ``template`` only
    in their fitted arrays (``[S, p]`` each; ``intercept`` and ``n_samples_seen`` ``[S]``).

    Byte for byte what ``dumps`` writes for each model, without building S Pipelines: the
    header is written once, around each model's ``n_samples_seen``.

    Raises:
        ValueError: ``template`` is not a scaler + linear Pipeline of the compact format.
    """
    parts = _linear_parts(template)
    if parts is None or parts[0] is None:
        raise ValueError("linear_artifacts needs a StandardScaler + linear-family Pipeline")
    scaler, est = parts
    p = int(est.n_features_in_)
    if coef.ndim != 2 or coef.shape[1] != p:
        raise ValueError(f"coef is {coef.shape}, expected [S, {p}]")
    head = _linear_header(scaler, est)
    head["n_samples_seen"] = mark = -(2**62)  # no count is negative: found where it goes
    text = json.dumps(head, sort_keys=True, separators=(",", ":"))
    before, after = (t.encode() for t in text.split(str(mark)))
    rows = np.empty((len(coef), 4 * p + 1), dtype="<f8")
    for i, a in enumerate((mean, var, scale, coef)):
        rows[:, i * p : (i + 1) * p] = a
    rows[:, 4 * p] = intercept
    out = []
    for count, payload in zip(np.asarray(n_samples_seen).tolist(), rows, strict=True):
        head_bytes = before + str(int(count)).encode() + after
        out.append(MAGIC + _HEADER_LEN.pack(len(head_bytes)) + head_bytes + payload.tobytes())
    return out


def _param_family(name: Any) -> str:
    try:
        if families.family(str(name)).kind != "regression":
            return str(name)
    except families.UnknownFamilyError:
        pass
    raise UntrustedModelError(f"unknown forecast-only model family {name!r}")


def _checked_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for name, a in arrays.items():
        if a.dtype.newbyteorder("<") not in PARAM_DTYPES:
            raise UntrustedModelError(f"array {name!r} has dtype {a.dtype}, not float64 / int64")
    return arrays


def _checked_params(params: Any) -> dict:
    if not isinstance(params, dict) or not all(
        isinstance(v, str | int | float | bool) for v in params.values()
    ):
        raise ModelLoadError("params artifact: `params` is not an object of JSON scalars")
    return params


@lru_cache(maxsize=16)
def _version(package: str) -> str | None:
    # importlib.metadata scans the installed distributions (~2 ms): once per package, not
    # once per fallback model (12,000 of them in 100,000 ragged series).
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dump_params(model: ParamModel) -> bytes:
    _param_family(model.family)
    _checked_params(model.params)
    arrays = _checked_arrays({k: np.asarray(v) for k, v in model.arrays.items()})
    header = {
        "format": PARAMS,
        "family": model.family,
        "params": model.params,
        "numpy": np.__version__,
        "statsforecast": _version("statsforecast"),
    }
    buffer = io.BytesIO()
    little_endian = {k: v.astype(v.dtype.newbyteorder("<")) for k, v in arrays.items()}
    np.savez(buffer, allow_pickle=False, **little_endian)
    return _pack(header, buffer.getvalue())


def _load_params(header: dict, payload: bytes) -> ParamModel:
    family = _param_family(header.get("family"))
    params = _checked_params(header.get("params"))
    try:
        loaded = np.load(io.BytesIO(payload), allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as z:
                arrays = {name: z[name] for name in z.files}
    except ValueError as exc:  # pickled data (an object array, or not numpy at all): refused
        raise UntrustedModelError(f"params artifact: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelLoadError(f"unreadable params payload: {exc}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ModelLoadError("params payload is not an npz archive")
    return ParamModel(family, params, _checked_arrays(arrays))


def _dump_combination(model: Combination) -> bytes:
    parts = [dumps(m) for m in model.members]
    header = {
        "format": COMBINATION,
        "families": list(model.families),
        "weights": [float(w) for w in model.weights],
        "members": [{"length": len(p), "sha256": sha256(p)} for p in parts],
    }
    return _pack(header, b"".join(parts))


def _load_combination(header: dict, payload: bytes) -> Combination:
    members, families_, weights = (
        header.get("members"),
        header.get("families"),
        header.get("weights"),
    )
    if not (
        isinstance(members, list) and isinstance(families_, list) and isinstance(weights, list)
    ):
        raise ModelLoadError("combination artifact: members, families and weights are lists")
    loaded, at = [], 0
    for i, entry in enumerate(members):
        length, digest = int(entry.get("length", -1)), str(entry.get("sha256", ""))
        part = payload[at : at + length]
        at += length
        if length < 0 or len(part) != length:
            raise ModelLoadError(f"combination artifact: member {i} is truncated")
        if not hmac.compare_digest(sha256(part), digest.lower()):
            raise ModelIntegrityError(f"combination artifact: member {i} fails its sha256")
        if read_header(part)[0].get("format") == COMBINATION:
            raise UntrustedModelError("combination artifact: a member is itself a combination")
        loaded.append(loads(part))
    if at != len(payload):
        raise ModelLoadError("combination artifact: bytes after the last member")
    try:
        return Combination(
            tuple(str(f) for f in families_), tuple(loaded), tuple(float(w) for w in weights)
        )
    except ValueError as exc:
        raise ModelLoadError(f"combination artifact: {exc}") from exc


def dumps(model: Model) -> bytes:
    """Serialize a fitted model: a ``ParamModel`` as ``params``; a ``Combination`` as its
    members' artifacts; a Pipeline in the compact ``linear`` format where it applies, else
    skops."""
    if isinstance(model, Combination):
        return _dump_combination(model)
    if isinstance(model, ParamModel):
        return _dump_params(model)
    parts = _linear_parts(model)
    if parts is not None:
        return _dump_linear(*parts)
    import skops.io as sio  # ~1 s at import (its trusted-type scan): only where skops runs

    return _pack({"format": SKOPS, "sklearn": sklearn.__version__}, sio.dumps(model))


def _split(data: bytes) -> tuple[bytes, bytes]:
    """The artifact's header bytes and payload."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEADER_LEN.size:
        raise ModelLoadError("not a model artifact (bad magic); pickle and joblib are refused")
    start = len(MAGIC) + _HEADER_LEN.size
    (n,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    return data[start : start + n], data[start + n :]


def _decode(head: bytes) -> dict:
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise ModelLoadError(f"unreadable artifact header: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelLoadError("artifact header is not an object")
    return header


# The models of a set share their header but for the scaler's sample count
# (``linear_artifacts``): each distinct rest is decoded once, the count read from its digits.
# Read only, never handed out (``read_header`` decodes its own copy).
_shared_header = lru_cache(maxsize=256)(_decode)
_COUNT_KEY = b'"n_samples_seen":'


def _loaded_header(head: bytes) -> dict:
    """``_decode(head)``, a linear header's repeated part decoded once per process."""
    at = head.find(_COUNT_KEY)
    if at < 0:
        return _shared_header(head)
    start = stop = at + len(_COUNT_KEY)
    while stop < len(head) and 48 <= head[stop] <= 57:  # the count's digits
        stop += 1
    shared = _shared_header(head[:start] + b"0" + head[stop:]) if stop > start else None
    if shared is None or shared.get("n_samples_seen") != 0:  # not our compact layout
        return _decode(head)
    return {**shared, "n_samples_seen": int(head[start:stop])}


def read_header(data: bytes) -> tuple[dict, bytes]:
    """The artifact's header and payload, without loading the model.

    Raises:
        ModelLoadError: Not an artifact of this format (e.g. a pickle or a bare skops file).
    """
    head, payload = _split(data)
    return _decode(head), payload


def _load_linear(header: dict, payload: bytes) -> Pipeline:
    cls = families.linear_classes().get(str(header.get("estimator")))
    if cls is None:
        raise UntrustedModelError(f"unknown linear estimator {header.get('estimator')!r}")
    p = int(header["n_features"])
    values = np.frombuffer(payload, dtype="<f8").astype(np.float64)
    expected = p + 1 + (3 * p if header["scaled"] else 0)
    if len(values) != expected:
        raise ModelLoadError(f"linear payload holds {len(values)} values, expected {expected}")
    est = cls(**header["params"])
    est.coef_, est.intercept_ = values[-p - 1 : -1].copy(), float(values[-1])
    est.n_features_in_ = p
    steps: list[tuple[str, Any]] = [("model", est)]
    if header["scaled"]:
        scaler = StandardScaler()
        scaler.mean_, scaler.var_, scaler.scale_ = (values[i * p : (i + 1) * p] for i in range(3))
        scaler.n_features_in_ = p
        scaler.n_samples_seen_ = np.int64(header["n_samples_seen"])
        steps.insert(0, ("scale", scaler))
    return Pipeline(steps)


def skops_types(payload: bytes) -> set[str]:
    """Every ``module.Class`` named in a skops file's schema."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as z:
            schema = json.loads(z.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ModelLoadError(f"unreadable skops payload: {exc}") from exc
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node:
                found.add(f"{node.get('__module__')}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _load_skops(payload: bytes) -> Pipeline:
    trusted = families.trusted_skops_types()
    untrusted = skops_types(payload) - trusted
    if untrusted:
        raise UntrustedModelError(
            f"artifact names types not on the allow-list: {sorted(untrusted)}"
        )
    import skops.io as sio

    model = sio.loads(payload, trusted=sorted(trusted))
    if not isinstance(model, Pipeline):
        raise UntrustedModelError(f"artifact holds a {type(model).__name__}, not a Pipeline")
    return model


def loads(data: bytes) -> Model:
    """Load an artifact written by ``dumps``. Prefer ``load_verified``.

    Raises:
        ModelLoadError: Not an artifact, an unknown format or a malformed payload.
        ModelVersionError: A Pipeline written by another scikit-learn major.minor.
        UntrustedModelError: It names a type that is not allow-listed, a family that is not a
            forecast-only one of the table, or an array that is not float64 / int64.
    """
    head, payload = _split(data)
    header = _loaded_header(head)
    if header.get("format") == PARAMS:
        return _load_params(_decode(head), payload)
    if header.get("format") == COMBINATION:
        return _load_combination(_decode(head), payload)
    written = str(header.get("sklearn", "?"))
    if _major_minor(written) != _major_minor(sklearn.__version__):
        raise ModelVersionError(
            f"artifact written by scikit-learn {written}; running {sklearn.__version__}"
        )
    fmt = header.get("format")
    if fmt == LINEAR:
        return _load_linear(header, payload)
    if fmt == SKOPS:
        return _load_skops(payload)
    raise ModelLoadError(f"unknown artifact format {fmt!r}")


def as_pipeline(model: Model) -> Pipeline:
    """``model`` where a caller needs a scikit-learn Pipeline.

    Raises:
        ModelLoadError: It is a ``ParamModel``.
    """
    if isinstance(model, ParamModel):
        raise ModelLoadError(f"a {model.family!r} model has parameters, not a Pipeline")
    if isinstance(model, Combination):
        raise ModelLoadError(f"a combination of {list(model.families)} is not one Pipeline")
    return model


def load_verified(data: bytes, expected_sha256: str) -> Model:
    """Load an artifact only if its sha256 is the one recorded for it.

    Raises:
        ModelIntegrityError: The bytes differ from what was recorded.
        ModelLoadError: See ``loads``.
    """
    actual = sha256(data)
    if not hmac.compare_digest(actual, expected_sha256.lower()):
        raise ModelIntegrityError(
            f"model bytes have sha256 {actual}, expected {expected_sha256}: refusing to load"
        )
    return loads(data)
