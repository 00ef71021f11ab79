"""What the batch scoring job is asked to do: :class:`DropJob`, :class:`DropBatch` (JSON).

The dataset spec travels whole, as the JSON of ``DatasetSpec.model_dump(mode="json")``, and the
model set as a ``ModelSetRef`` dict: the job needs neither a bundled spec file nor a registry,
and both are validated on arrival (``job_spec``, ``job_model_set``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from mlops_assets.domain.model_sets import ModelSetRef
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import open_storage

PARAMS_INLINE_MAX = 16 * 1024  # larger params travel as a file in storage (see DropBatch)
_PER_DROP = ("drop", "etag", "key")


@dataclass
class DropJob:
    """Everything an instance needs to score one drop version.

    ``spec`` is the dataset spec as JSON; ``model_set`` a ``ModelSetRef.to_dict()`` (folder and
    manifest digest in ``model_storage``). ``storage``/``model_storage`` are ``{"kind": "local",
    "root": ...}`` or ``{"kind": "azure", "account_url", "container", "prefix"}``; credentials
    never travel here (managed identity on AML; a connection string for Azurite comes from
    ``MLOPS_JOB_CONNECTION_STRING``).
    """

    spec: dict
    drop: str  # storage name of the drop, e.g. scoring/sales/inbox/2026/11/21/a.parquet
    etag: str
    key: str  # the drop version key (partition key): <drop relative to the inbox>@<etag>
    storage: dict
    model_storage: dict
    model_set: dict
    wait_for_ranks_s: float = 3600.0

    @property
    def dataset(self) -> str:
        return str(self.spec["name"])

    @classmethod
    def from_json(cls, text: str) -> DropJob:
        return cls(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class DropBatch:
    """The drop versions one job scores, in order (JSON in ``MLOPS_JOB_PARAMS``).

    What the drops share is stated once; ``drops`` holds each one's ``drop``, ``etag`` and
    ``key`` (any other :class:`DropJob` field there overrides the shared value)::

        {"spec": {...}, "storage": {...}, "model_storage": {...}, "model_set": {"name": ...,
         "version": ..., "folder": ..., "manifest_sha256": ..., "registry_version": 3},
         "drops": [{"drop": "...", "etag": "...", "key": "..."}, ...]}

    :meth:`from_json` also takes a single :class:`DropJob` (a batch of one) and a reference
    ``{"params_file": <name>, "storage": {...}}`` to params written to storage, which is how a
    batch too large for an environment variable (:func:`params_json`) travels.
    """

    spec: dict
    storage: dict
    model_storage: dict
    model_set: dict
    drops: list[dict] = field(default_factory=list)
    wait_for_ranks_s: float = 3600.0

    @classmethod
    def of(cls, jobs: list[DropJob]) -> DropBatch:
        if not jobs:
            raise ValueError("a batch needs at least one drop")
        shared = {k: v for k, v in asdict(jobs[0]).items() if k not in _PER_DROP}
        drops = []
        for job in jobs:
            d = asdict(job)
            drops.append(
                {k: v for k, v in d.items() if k in _PER_DROP or v != shared.get(k, object())}
            )
        return cls(**shared, drops=drops)

    def jobs(self) -> list[DropJob]:
        shared = {k: v for k, v in asdict(self).items() if k != "drops"}
        return [DropJob(**{**shared, **d}) for d in self.drops]

    @property
    def keys(self) -> list[str]:
        return [d["key"] for d in self.drops]

    @classmethod
    def from_json(cls, text: str) -> DropBatch:
        raw = json.loads(text)
        if "params_file" in raw:
            raw = json.loads(open_storage(raw["storage"]).read_text(raw["params_file"]))
        if "drops" not in raw:
            return cls.of([DropJob(**raw)])
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def params_json(batch: DropBatch, storage, name: str, limit: int = PARAMS_INLINE_MAX) -> str:
    """``batch`` as the value of ``MLOPS_JOB_PARAMS``: inline, or, past ``limit`` characters
    (Linux caps one environment string at 128 KiB; AML job definitions should stay small),
    written to ``name`` in ``storage`` and passed by reference.
    """
    text = batch.to_json()
    if len(text) <= limit:
        return text
    storage.write_text(name, text)
    return json.dumps({"params_file": name, "storage": storage.config()})


@lru_cache(maxsize=8)
def _spec(text: str) -> DatasetSpec:
    return DatasetSpec.model_validate(json.loads(text))


def job_spec(job: DropJob) -> DatasetSpec:
    """The job's dataset spec, validated (once per process: a batch scores many drops).

    Raises:
        pydantic.ValidationError: The spec is not a valid ``DatasetSpec``.
    """
    return _spec(json.dumps(job.spec, sort_keys=True))


def job_model_set(job: DropJob) -> ModelSetRef:
    """The job's model set reference, validated (``ModelSetError`` if incomplete)."""
    return ModelSetRef.from_dict(job.model_set)


def model_set_label(model_set: dict) -> str:
    """How a summary names the model set: its registry version, else its training run."""
    rv = model_set.get("registry_version")
    return str(rv) if rv not in (None, "") else str(model_set.get("version", ""))
