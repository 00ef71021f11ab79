"""Forecast combinations: a series' forecast as a weighted mean of several candidates' forecasts.

With ``model.choice: combine`` a series keeps every eligible candidate whose weight reaches
``combine.min_weight``. The weights come from the candidates' backtest scores (``select_by``):

* each score is taken relative to the series' geometric mean score, on a log scale, so the
  weights do not depend on the series' level;
* that is mixed with the candidate's *panel prior*: its mean relative log score over a
  deterministic sample of the run's series (``sample_ids``), estimated once per run before
  the series are trained in chunks, so every engine and chunking gives the same weights;
* a softmax with ``combine.temperature`` turns the mixed scores into weights.

On 16 backtest pairs a series' own scores are noisy: picking the single best candidate chases
that noise (the winner's curse), while the prior keeps a family that is better across the panel
in every series' mix. ``docs/forecasting.md`` has the figures on the real panels.

A ``Combination`` is stored as its members' own artifacts (``persistence``); every scoring path
forecasts each member as it would alone and takes the weighted mean (``weighted``): the forecast
is NaN wherever any member's is, so a combination forecasts exactly where all its members can.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FAMILY = "combination"


@dataclass(frozen=True, eq=False)
class Combination:
    """A weighted mean of fitted models of one series.

    Attributes:
        families: Each member's family name.
        members: The fitted members (a Pipeline or a ``ParamModel`` each; never a Combination).
        weights: Positive weights summing to 1, one per member.
    """

    families: tuple[str, ...]
    members: tuple[Any, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.families) == len(self.members) == len(self.weights) >= 2):
            raise ValueError("a combination needs two or more members, each with a weight")
        if any(isinstance(m, Combination) for m in self.members):
            raise ValueError("a combination's members are plain models")
        w = np.asarray(self.weights, dtype=float)
        if not (np.all(np.isfinite(w)) and np.all(w > 0) and abs(w.sum() - 1.0) < 1e-9):
            raise ValueError(f"combination weights must be positive and sum to 1: {self.weights}")

    def describe(self) -> dict[str, float]:
        """``{family: weight}``, heaviest first (the manifest's ``weights``)."""
        order = np.argsort(-np.asarray(self.weights), kind="stable")
        return {self.families[i]: round(float(self.weights[i]), 6) for i in order}


def sample_ids(ids: Sequence[str], n: int) -> list[str]:
    """``n`` of ``ids`` chosen by their sha256, sorted: the same sample from any ordering or
    chunking of the same series."""
    ranked = sorted(ids, key=lambda s: hashlib.sha256(s.encode("utf-8")).digest())
    return sorted(ranked[:n])


def _log_relative(scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """``log(score / geometric mean of the series' eligible scores)``; NaN where ineligible.
    A zero score (a perfect backtest) is floored at a millionth of the series' largest."""
    s = np.where(eligible, scores, np.nan)
    with np.errstate(invalid="ignore"):
        top = np.nanmax(np.where(eligible, np.abs(s), -np.inf), axis=0)
    floor = np.where(np.isfinite(top) & (top > 0), top * 1e-6, 1e-12)
    logs = np.log(np.maximum(np.where(eligible, s, 1.0), floor[None]))
    logs = np.where(eligible, logs, np.nan)
    count = eligible.sum(axis=0)
    centre = np.where(count > 0, np.nansum(logs, axis=0) / np.maximum(count, 1), 0.0)
    return logs - centre[None]


def panel_prior(scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Each candidate's mean relative log score over the series where every candidate is
    eligible (``[C]``; zeros where there is none: no prior).

    Args:
        scores: ``[C, n_series]`` backtest scores (lower is better).
        eligible: ``[C, n_series]`` whether each candidate could forecast every pair.
    """
    complete = eligible.all(axis=0) & np.isfinite(scores).all(axis=0)
    if not complete.any():
        return np.zeros(scores.shape[0])
    rel = _log_relative(scores[:, complete], eligible[:, complete])
    return np.round(rel.mean(axis=1), 6)


def weights(
    scores: np.ndarray,
    eligible: np.ndarray,
    prior: np.ndarray,
    shrinkage: float,
    temperature: float,
    min_weight: float,
) -> np.ndarray:
    """``[C, n_series]`` combination weights (zero for ineligible or dropped candidates; a
    series with no eligible candidate has all zeros).

    ``z = (1 - shrinkage) * log-relative score + shrinkage * prior``, weights = softmax(-z / T),
    members under ``min_weight`` dropped and the rest renormalised.
    """
    z = (1.0 - shrinkage) * _log_relative(scores, eligible) + shrinkage * prior[:, None]
    z = np.where(eligible, z, np.inf)
    best = np.min(z, axis=0)
    shifted = np.where(eligible, z - np.where(np.isfinite(best), best, 0.0)[None], np.inf)
    e = np.exp(-shifted / temperature)
    total = e.sum(axis=0)
    w = np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)
    w = np.where(w >= min_weight, w, 0.0)  # the best member always stays (its weight >= 1/C)
    total = w.sum(axis=0)
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.0)


def layers(models: Sequence[Any]) -> list[tuple[list[Any], np.ndarray]]:
    """Per-series models as layers of plain models with their weights.

    Layer 0 holds each plain model (weight 1) and each combination's first member; layer ``j``
    the ``j``-th member of each combination with that many. A series absent from a layer has
    None there (weight 0).
    """
    depth = max((len(m.members) for m in models if isinstance(m, Combination)), default=1)
    n = len(models)
    out = [([None] * n, np.zeros(n)) for _ in range(depth)]
    for i, m in enumerate(models):
        if isinstance(m, Combination):
            for j, (member, w) in enumerate(zip(m.members, m.weights, strict=True)):
                out[j][0][i] = member
                out[j][1][i] = w
        elif m is not None:
            out[0][0][i] = m
            out[0][1][i] = 1.0
    return out


def weighted(
    models: Sequence[Any], forecast: Callable[[list[Any]], np.ndarray], axis: int
) -> np.ndarray:
    """``forecast`` of per-series models where some are combinations: each layer of plain
    models forecast as usual, then the weighted mean per series (``axis`` of the result is
    the series axis). NaN wherever any member with weight is NaN."""
    if not any(isinstance(m, Combination) for m in models):
        return forecast(list(models))
    total: np.ndarray | None = None
    for plain, w in layers(models):
        got = np.asarray(forecast(plain), dtype=float)
        shape = [1] * got.ndim
        shape[axis] = len(w)
        wb = w.reshape(shape)
        term = np.where(wb > 0, got * wb, 0.0)
        term = np.where((wb > 0) & ~np.isfinite(got), np.nan, term)
        total = term if total is None else total + term
    none = np.array([m is None for m in models]).reshape(shape)
    assert total is not None
    return np.where(none, np.nan, total)


def is_combination(model: object) -> bool:
    """Whether ``model`` is a ``Combination``."""
    return isinstance(model, Combination)


def family_shares(families: Sequence[str | None], mixes: Sequence[str | None]) -> dict[str, float]:
    """Each family's share of the run's forecasts: a single-family series counts 1 for its
    family, a combination its weights (the manifest's ``family`` and ``weights`` columns)."""
    total: dict[str, float] = {}
    count = 0
    for fam, mix in zip(families, mixes, strict=True):
        if fam is None:
            continue
        parts = json.loads(mix) if fam == FAMILY and mix else {fam: 1.0}
        for name, w in parts.items():
            total[name] = total.get(name, 0.0) + float(w)
        count += 1
    return {k: round(v / count, 4) for k, v in sorted(total.items(), key=lambda kv: -kv[1])}
