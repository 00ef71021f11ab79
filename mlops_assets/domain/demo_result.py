"""What a demo run produced, per dataset, and the result table ``mlops demo`` ends with.

Read from what the runs left behind, not from their logs: the dev champion's release manifest
(family, backtest errors and the evaluation's decision of every series) and both registries.
``DatasetResult`` round-trips through JSON, so a second demo says what changed since the first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlops_assets.domain.model_sets import read_manifest, registered_model_name
from mlops_assets.ml.combination import FAMILY as COMBINATION
from mlops_assets.ml.combination import family_shares
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.storage import Storage

if TYPE_CHECKING:
    from resources.registry import ModelRegistry

BASELINES = ("naive", "seasonal_naive")
_SHOWN_FAMILIES = 3


@dataclass(frozen=True)
class DatasetResult:
    """One dataset after a demo run: the dev champion set and both registries.

    ``replaced``/``kept``/``first`` are the evaluation's gate counts over the champion set's
    series: a challenger promoted over a champion, a champion that stayed, a series' first
    model. ``mae_ratio`` is the pooled backtest MAE of the set over that of the better naive
    baseline (``best_baseline``) on the same series: below 1 beats it.
    """

    dataset: str
    series: int = 0
    series_total: int = 0
    families: dict[str, float] = field(default_factory=dict)
    combined: int = 0
    median_smape: float = float("nan")
    median_naive_smape: float = float("nan")
    median_seasonal_naive_smape: float = float("nan")
    mae_ratio: float = float("nan")
    best_baseline: str = ""
    replaced: int = 0
    kept: int = 0
    first: int = 0
    dev_version: int | None = None
    prod_version: int | None = None
    dev_versions: int = 0
    prod_versions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetResult:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def _median(values: pd.Series) -> float:
    v = values.to_numpy(float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else float("nan")


def pooled_mae_ratio(manifest: pd.DataFrame) -> tuple[float, str]:
    """The set's pooled backtest MAE over the better baseline's, on series where all are
    scored, each series weighted by its backtest pairs (``n_holdout``); (nan, "") if none."""
    columns = ["mae", *(f"{b}_mae" for b in BASELINES)]
    errors = manifest[columns].to_numpy(float)
    weight = manifest["n_holdout"].to_numpy(float)
    ok = np.isfinite(errors).all(axis=1) & (weight > 0)
    if not ok.any():
        return float("nan"), ""
    pooled = (errors[ok] * weight[ok, None]).sum(axis=0) / weight[ok].sum()
    best = int(np.argmin(pooled[1:]))
    if pooled[1 + best] <= 0:
        return float("nan"), ""
    return float(pooled[0] / pooled[1 + best]), BASELINES[best]


def _optional(column: pd.Series) -> list[Any]:
    return column.where(column.notna(), None).tolist()


def summarize_manifest(dataset: str, manifest: pd.DataFrame) -> DatasetResult:
    """The figures of one release manifest (a set after evaluation: every series' family,
    backtest errors and decision); the registries' versions are left unset."""
    served = manifest[manifest["artifact"].notna()]
    promoted = manifest["promoted"].fillna(False).astype(bool)
    had_champion = manifest["champion_version"].notna()
    ratio, best = pooled_mae_ratio(served)
    return DatasetResult(
        dataset=dataset,
        series=len(served),
        series_total=len(manifest),
        families=family_shares(_optional(served["family"]), _optional(served["weights"])),
        combined=int((served["family"] == COMBINATION).sum()),
        median_smape=_median(served["smape"]),
        median_naive_smape=_median(served["naive_smape"]),
        median_seasonal_naive_smape=_median(served["seasonal_naive_smape"]),
        mae_ratio=ratio,
        best_baseline=best,
        replaced=int((promoted & had_champion).sum()),
        kept=int((~promoted).sum()),
        first=int((promoted & ~had_champion).sum()),
    )


def dataset_result(
    spec: DatasetSpec, storage: Storage, registry: ModelRegistry, prod_registry: ModelRegistry
) -> DatasetResult:
    """The dev champion set of ``spec`` (read and verified from ``storage``) and the versions
    in both registries; an empty result where no champion is registered yet."""
    name = registered_model_name(spec)
    champion = registry.get_alias(name)
    production = prod_registry.get_alias(name)
    base = (
        summarize_manifest(spec.name, read_manifest(storage, champion.ref).to_pandas())
        if champion
        else DatasetResult(spec.name)
    )
    data = base.to_dict()
    data.update(
        dev_version=champion.version if champion else None,
        prod_version=production.version if production else None,
        dev_versions=len(registry.list_versions(name)),
        prod_versions=len(prod_registry.list_versions(name)),
    )
    return DatasetResult.from_dict(data)


def dump_results(results: Sequence[DatasetResult]) -> str:
    return json.dumps([r.to_dict() for r in results], indent=1)


def load_results(text: str) -> dict[str, DatasetResult]:
    """Results by dataset from ``dump_results``'s JSON; empty for unreadable text."""
    try:
        return {d["dataset"]: DatasetResult.from_dict(d) for d in json.loads(text)}
    except (ValueError, TypeError, KeyError):
        return {}


def _num(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if np.isfinite(x) else "-"


def _families(r: DatasetResult) -> str:
    """Each family's share of the forecasts (a combination counted by its weights)."""
    if not r.families:
        return "-"
    items = list(r.families.items())
    shown = [f"{k} {v:.0%}" for k, v in items[:_SHOWN_FAMILIES]]
    if len(items) > _SHOWN_FAMILIES:
        shown.append(f"other {sum(v for _, v in items[_SHOWN_FAMILIES:]):.0%}")
    combined = f" ({r.combined} series combine)" if r.combined else ""
    return ", ".join(shown) + combined


def _version(v: int | None, count: int) -> str:
    return f"v{v} ({count} version{'s' if count != 1 else ''})" if v is not None else "none"


def _gate(r: DatasetResult) -> str:
    first = f", {r.first} first" if r.first else ""
    return f"{r.replaced} replaced, {r.kept} kept{first}"


ROWS = (
    ("series forecast", lambda r: f"{r.series} of {r.series_total}"),
    ("by family (share)", _families),
    ("median backtest sMAPE", lambda r: _num(r.median_smape)),
    (
        "  naive / seasonal naive",
        lambda r: f"{_num(r.median_naive_smape)} / {_num(r.median_seasonal_naive_smape)}",
    ),
    (
        "pooled MAE / best baseline",
        lambda r: (
            f"{_num(r.mae_ratio, 2)} ({r.best_baseline.replace('_', ' ')})"
            if r.best_baseline
            else "-"
        ),
    ),
    ("champions", _gate),
    ("registry dev (champion)", lambda r: _version(r.dev_version, r.dev_versions)),
    ("registry prod (production)", lambda r: _version(r.prod_version, r.prod_versions)),
)


def result_table(results: Sequence[DatasetResult]) -> list[str]:
    """One row per figure, one column per dataset."""
    label_w = max(len(label) for label, _ in ROWS)
    cells = [[fmt(r) for r in results] for _, fmt in ROWS]
    widths = [max(len(r.dataset), *(len(row[i]) for row in cells)) for i, r in enumerate(results)]

    def line(label: str, values: Sequence[str]) -> str:
        return "  ".join(
            [label.ljust(label_w), *(v.ljust(w) for v, w in zip(values, widths, strict=True))]
        )

    out = [line("result", [r.dataset for r in results])]
    out += [line(label, row) for (label, _), row in zip(ROWS, cells, strict=True)]
    return [s.rstrip() for s in out]


def changes(previous: Mapping[str, DatasetResult], results: Sequence[DatasetResult]) -> list[str]:
    """What moved since the previous demo's results: one line per dataset it also had."""
    out = []
    for r in results:
        before = previous.get(r.dataset)
        if before is None:
            continue
        out.append(
            f"{r.dataset}: dev {_arrow(before.dev_version, r.dev_version)}, prod "
            f"{_arrow(before.prod_version, r.prod_version)}, median sMAPE "
            f"{_num(before.median_smape)} -> {_num(r.median_smape)} "
            f"({r.replaced} of the previous champions replaced)"
        )
    return out


def _arrow(before: int | None, after: int | None) -> str:
    b, a = (f"v{v}" if v is not None else "none" for v in (before, after))
    return a if b == a else f"{b} -> {a}"
