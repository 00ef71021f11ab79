"""``ReleaseRecord``: the evaluated (release) model set's ref with its quality-gate outcome.

Evaluation writes one per as-of date (``layout.release_pointer``); registration reads it and
registers only a release whose gate ``passed``. ``passed`` is required: a record without it is
refused, never read as a pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from mlops_assets.domain.model_sets.ref import ModelSetError, ModelSetRef
from mlops_assets.faults import fault_point
from mlops_assets.storage import Storage


@dataclass(frozen=True)
class ReleaseRecord:
    """A release set and how it was decided.

    Attributes:
        ref: The release set (promoted challengers plus carried champion entries).
        candidate: The candidate set it was decided from.
        passed: Whether the aggregate quality gate passed (required).
        resulting_median: Median metric of the release set on the holdout (None: not measured).
        champion_median: Same for the champion set (None: no champion to compare with).
        champion_version: Registry version of the champion compared against, if any.
        policy: The evaluation configuration used.
        run_id: The run that evaluated it.
        gate_counts: What the champion gate did, counted (``champion_gate.gate_counts``:
            compared, promoted, kept, promoted_without_comparison, ...).
    """

    ref: ModelSetRef
    candidate: ModelSetRef
    passed: bool
    resulting_median: float | None = None
    champion_median: float | None = None
    champion_version: int | None = None
    policy: dict[str, Any] = field(default_factory=dict, compare=False)
    run_id: str = ""
    gate_counts: dict[str, int] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        def finite(x: float | None) -> float | None:
            return x if x is not None and math.isfinite(x) else None

        return {
            "ref": self.ref.to_dict(),
            "candidate": self.candidate.to_dict(),
            "passed": self.passed,
            "resulting_median": finite(self.resulting_median),
            "champion_median": finite(self.champion_median),
            "champion_version": self.champion_version,
            "policy": self.policy,
            "run_id": self.run_id,
            "gate_counts": self.gate_counts,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleaseRecord:
        """Raises ModelSetError if the gate outcome or a ref is missing."""
        if not isinstance(data.get("passed"), bool):
            raise ModelSetError(
                f"release record lacks its gate outcome ('passed': true/false): {data!r:.300}"
            )
        for key in ("ref", "candidate"):
            if not isinstance(data.get(key), dict):
                raise ModelSetError(f"release record lacks {key!r}: {data!r:.300}")
        cv = data.get("champion_version")
        return cls(
            ref=ModelSetRef.from_dict(data["ref"]),
            candidate=ModelSetRef.from_dict(data["candidate"]),
            passed=data["passed"],
            resulting_median=data.get("resulting_median"),
            champion_median=data.get("champion_median"),
            champion_version=int(cv) if cv not in (None, "") else None,
            policy=dict(data.get("policy") or {}),
            run_id=str(data.get("run_id") or ""),
            gate_counts={k: int(v) for k, v in (data.get("gate_counts") or {}).items()},
        )


def write_release(storage: Storage, name: str, record: ReleaseRecord) -> None:
    storage.write_text(name, record.to_json())
    fault_point("pointer")


def read_release(storage: Storage, name: str) -> ReleaseRecord | None:
    """The release recorded at ``name``, or None if there is none.

    Raises:
        ModelSetError: The record is not JSON or lacks the gate outcome or a ref.
    """
    try:
        text = storage.read_text(name)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ModelSetError(f"{storage.uri(name)} is not a release record: {exc}") from None
    if not isinstance(data, dict):
        raise ModelSetError(f"{storage.uri(name)} is not a release record")
    return ReleaseRecord.from_dict(data)
